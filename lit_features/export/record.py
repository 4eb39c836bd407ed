"""The record an export keeps beside its shards: format, store fingerprint, parts, and which keys each part holds.

``_lit_features_export.json`` lists every part (its shard files, sample count, bytes) and is rewritten as one
step after a part's shards are published: it is the commit point. Each part's keys live in
``_lit_features_keys/part-NNNNN.tsv`` (``key<TAB>row digest``), so the record stays small for large stores and
a later export can tell which samples are new and whether an exported one changed in the store since.
Names starting with ``_`` are skipped by Parquet dataset readers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from lit_features.errors import UserError
from lit_features.export.target import ExportTarget

RECORD_NAME = "_lit_features_export.json"
KEYS_DIR = "_lit_features_keys"
RECORD_VERSION = 1
# Index-row fields that identify a sample's content (not where the store keeps it, which may change).
CONTENT_FIELDS = ("source", "shapes", "dtypes", "bytes", "meta")


class ExportMismatchError(UserError, ValueError):
    """The output already holds an export of another store, configuration or format."""


class ExportOutOfDateError(UserError, ValueError):
    """Samples already exported changed in (or left) the store since: shards are immutable, so refuse."""


def row_digest(row: dict[str, Any]) -> str:
    """Digest of what a store index row says about a sample's content (source, shapes, dtypes, bytes, meta)."""
    content = {name: row.get(name) for name in CONTENT_FIELDS}
    text = json.dumps(content, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class ExportRecord:
    """What the output folder holds, read from and written to :data:`RECORD_NAME`."""

    format: str
    fingerprint: str
    store: dict[str, Any]
    parts: list[dict[str, Any]] = field(default_factory=list)
    version: int = RECORD_VERSION

    @property
    def samples(self) -> int:
        return sum(int(p["samples"]) for p in self.parts)

    def files(self) -> list[str]:
        """Every shard file of every part, in order."""
        return [f for p in self.parts for f in p["files"]]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "format": self.format,
            "fingerprint": self.fingerprint,
            "store": self.store,
            "samples": self.samples,
            "parts": self.parts,
        }

    @staticmethod
    def keys_name(part: int) -> str:
        return f"{KEYS_DIR}/part-{part:05d}.tsv"


def load_record(target: ExportTarget) -> ExportRecord | None:
    """The record of the export in ``target``, or ``None`` when there is none."""
    data = target.read_bytes(RECORD_NAME)
    if data is None:
        return None
    try:
        raw = json.loads(data)
        return ExportRecord(raw["format"], raw["fingerprint"], raw.get("store", {}), raw["parts"], raw["version"])
    except (ValueError, KeyError, TypeError) as err:
        raise ExportMismatchError(f"{target.child(RECORD_NAME)}: not a readable export record ({err})") from None


def save_record(target: ExportTarget, record: ExportRecord) -> None:
    target.write_bytes(RECORD_NAME, json.dumps(record.to_json(), indent=1).encode("utf-8"))


def read_exported_keys(target: ExportTarget, record: ExportRecord) -> dict[str, str]:
    """``{key: row digest}`` of every exported sample."""
    keys: dict[str, str] = {}
    for part in record.parts:
        name = part["keys_file"]
        data = target.read_bytes(name)
        if data is None:
            raise ExportMismatchError(f"{target.child(name)}: the key list of part {part['part']} is missing")
        for line in data.decode("utf-8").splitlines():
            if line:
                key, _, digest = line.partition("\t")
                keys[key] = digest
    return keys


def write_keys(target: ExportTarget, part: int, digests: dict[str, str]) -> str:
    name = ExportRecord.keys_name(part)
    target.write_bytes(name, "".join(f"{k}\t{d}\n" for k, d in digests.items()).encode("utf-8"))
    return name


def check_compatible(record: ExportRecord, target: ExportTarget, format: str, fingerprint: str) -> None:
    """Refuse to add to an export of another format or of a store with another fingerprint."""
    where = target.child(RECORD_NAME)
    if record.format != format:
        raise ExportMismatchError(
            f"{where}: the output holds a {record.format} export, not {format}; export {format} to another output"
        )
    if record.fingerprint != fingerprint:
        raise ExportMismatchError(
            f"{where}: the output holds an export of a store with fingerprint {record.fingerprint}, this store has "
            f"{fingerprint} (another extractor, model or preprocessing); export it to another output"
        )


def check_up_to_date(exported: dict[str, str], current: dict[str, str], target: ExportTarget) -> None:
    """Every exported key must still be in the store with the content it had when it was exported."""
    gone = sorted(k for k in exported if k not in current)
    changed = sorted(k for k in exported if k in current and current[k] != exported[k])
    if not gone and not changed:
        return
    parts = []
    if changed:
        parts.append(f"{len(changed)} exported sample(s) were rewritten in the store since (e.g. {changed[:3]})")
    if gone:
        parts.append(f"{len(gone)} exported sample(s) are no longer in the store (e.g. {gone[:3]})")
    raise ExportOutOfDateError(
        f"{target.url}: {'; '.join(parts)}. Shards cannot be edited in place: export the store to a new output"
    )


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def shard_urls(url: str, format: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Full URLs of every shard of the ``format`` export at ``url``, in order (for the streaming readers)."""
    target = ExportTarget(url, storage_options)
    record = load_record(target)
    if record is None:
        raise ExportMismatchError(f"{target.child(RECORD_NAME)}: not found; {url} is not a lit_features export")
    if record.format != format:
        raise ExportMismatchError(f"{url} holds a {record.format} export, not {format}")
    return [target.child(name) for name in record.files()]
