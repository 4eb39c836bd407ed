"""Cut manifests into work units in one streaming pass, and read one unit's samples back.

JSON Lines files are read in place (a unit is a byte range of the file); every other form (a JSON list, a CSV,
a ``<root>,<json>`` list file, a folder) is read once by the usual readers and streamed into a compact JSON
Lines copy under ``units/``. The pass validates every entry (a broken manifest stops before any model loads)
and keeps 16 bytes per entry: what key assignment needs across the whole manifest. A key is its entry's
sanitised relative name, with a hash suffix when two different inputs share that name (see
:func:`lit_features.data.keys.assign_keys`), so the pass records the colliding names; entries listed twice
are merged when identical (recorded so units skip them) and refused when they differ, as for a whole manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lit_features.data.keys import MAX_KEY_LENGTH, sanitize_key, short_hash
from lit_features.data.manifest import (
    ManifestError,
    RawEntry,
    check_duplicate,
    entry_identity,
    iter_csv,
    make_sample,
    read_manifest_entries,
)
from lit_features.data.remote import as_location
from lit_features.data.sample import Sample, validate_entry
from lit_features.progress import progress
from lit_features.store import layout
from lit_features.units.unit_list import Unit, UnitList, file_identity

log = logging.getLogger(__name__)

DEFAULT_UNIT_SIZE = 10_000


def name_hash(plain_key: str) -> str:
    """Stable 64-bit hash of a sanitised name (recorded in the unit list for names that collide)."""
    return hashlib.blake2b(plain_key.encode(), digest_size=8).hexdigest()


def unit_key(plain_key: str, identity: str, collided: frozenset[str]) -> str:
    """The key of an entry whose sanitised name is ``plain_key`` (what ``assign_keys`` gives over the whole
    manifest)."""
    if name_hash(plain_key) in collided:
        return f"{plain_key[: MAX_KEY_LENGTH - 9]}~{short_hash(identity)}"
    return plain_key


def _parse_line(line: bytes, file: Path, index: int) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise ManifestError(file, f"invalid JSON: {err.msg}", entry=index) from None
    except ValueError as err:
        raise ManifestError(file, f"invalid JSON: {err}", entry=index) from None
    return validate_entry(entry, file, index)


class _Cutter:
    """Accumulates units and the 16 bytes per entry that key assignment needs across units."""

    def __init__(self, units_dir: Path, unit_size: int, check: Callable[[RawEntry], None] | None = None):
        if unit_size < 1:
            raise ValueError(f"unit_size must be >= 1, got {unit_size}")
        self.units_dir = units_dir
        self.unit_size = unit_size
        self.sources: list[dict[str, Any]] = []
        self.units: list[Unit] = []
        self.names = array("Q")  # stable hash of each entry's sanitised name
        self.idents = array("q")  # this process's hash of each entry's absolute identity
        self.check = check

    def note(self, r: RawEntry) -> None:
        if self.check is not None:
            self.check(r)
        plain, ident = entry_identity(r)
        self.names.append(int(name_hash(sanitize_key(plain)), 16))
        self.idents.append(hash(ident))

    def close_unit(self, source: int, start: int, end: int, first_index: int, count: int) -> None:
        self.units.append(Unit(len(self.units), source, start, end, first_index, count))

    def add_jsonl(self, path: Path, root: str | None) -> None:
        """Cut a local JSON Lines file in place: units are byte ranges of it."""
        source = len(self.sources)
        self.sources.append({"path": os.path.abspath(path), "kind": "jsonl", "root": root})
        base = as_location(root) if root is not None else path.parent
        count = start = first = offset = 0
        with open(path, "rb") as fh:
            for lineno, line in enumerate(progress(fh, desc=f"cutting {path.name}", unit="lines"), start=1):
                begin, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                if count == 0:
                    start, first = begin, lineno
                self.note(RawEntry(_parse_line(line, path, lineno), base, path, lineno))
                count += 1
                if count == self.unit_size:
                    self.close_unit(source, start, offset, first, count)
                    count = 0
        if count:
            self.close_unit(source, start, offset, first, count)

    def add_compact(self, entries: Iterable[RawEntry], given: str) -> None:
        """Stream entries read by the usual readers into a compact JSON Lines copy, cut as it is written."""
        source = len(self.sources)
        name = f"manifest-{source}.jsonl"
        self.sources.append({"path": name, "kind": "compact", "root": None, "original": given})
        final = self.units_dir / name
        tmp = layout.temp_path(final)
        count = start = offset = 0
        try:
            with open(tmp, "wb") as out:
                for n, r in enumerate(entries):
                    row = {"i": r.index, "r": str(r.root), "f": str(r.file), "e": r.entry}
                    line = (json.dumps(row) + "\n").encode()
                    if count == 0:
                        start = offset
                    out.write(line)
                    offset += len(line)
                    self.note(r)
                    count += 1
                    if count == self.unit_size:
                        self.close_unit(source, start, offset, n - count + 1, count)
                        count = 0
                if count:
                    self.close_unit(source, start, offset, n - count + 1, count)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def finish(self, inputs: list[dict[str, Any]], root: str | None) -> UnitList:
        names = np.frombuffer(self.names, dtype=np.uint64) if len(self.names) else np.zeros(0, np.uint64)
        idents = np.frombuffer(self.idents, dtype=np.int64) if len(self.idents) else np.zeros(0, np.int64)
        order = np.lexsort((idents, names))  # stable: within one (name, identity) group, manifest order
        n, i = names[order], idents[order]
        same_name = n[1:] == n[:-1]
        same_ident = i[1:] == i[:-1]
        collided = frozenset(f"{int(h):016x}" for h in np.unique(n[1:][same_name & ~same_ident]))
        units = UnitList(self.units_dir, self.unit_size, inputs, root, self.sources, self.units, collided)
        units.entries = len(names)
        repeats = np.nonzero(same_name & same_ident)[0]
        if len(repeats):
            self._check_repeats(units, order, repeats)
        return units

    def _check_repeats(self, units: UnitList, order: np.ndarray, repeats: np.ndarray) -> None:
        """Entries listed more than once: identical ones are dropped (counted), differing ones refused."""
        firsts: dict[int, int] = {}  # a repeated entry's position -> the first position of its sample
        for k in repeats.tolist():
            a, b = int(order[k]), int(order[k + 1])
            firsts[b] = firsts.get(a, a)
        starts = np.cumsum([0] + [u.count for u in units.units])
        wanted = sorted(set(firsts) | set(firsts.values()))
        raw = {}
        for unit_number in sorted({int(np.searchsorted(starts, o, side="right") - 1) for o in wanted}):
            for pos, r in enumerate(raw_entries(units, units.units[unit_number])):
                raw[int(starts[unit_number]) + pos] = r
        for again, first in sorted(firsts.items()):
            plain, ident = entry_identity(raw[first])
            key = unit_key(sanitize_key(plain), ident, units.collided)
            check_duplicate(raw[first], raw[again], key, "path")
            unit_number = int(np.searchsorted(starts, again, side="right") - 1)
            units.dropped.setdefault(unit_number, []).append(again - int(starts[unit_number]))
        log.info(
            "manifest: %d entries listed a sample already listed (identical); each sample is done once", len(firsts)
        )


def _entries_of(manifest: str | os.PathLike, root: str | None) -> Iterator[RawEntry]:
    location = as_location(manifest)
    if isinstance(location, Path) and location.suffix.lower() == ".csv" and location.is_file():
        yield from iter_csv(location, as_location(root) if root is not None else None)
    else:
        yield from read_manifest_entries(manifest, root)


def manifest_inputs(manifests: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The identity of the manifests a job gives (local files: size and time; URLs and folders: the name)."""
    out = []
    for m in manifests:
        location = as_location(m)
        if isinstance(location, Path) and location.is_file():
            out.append(file_identity(location))
        elif isinstance(location, Path) and not location.exists():
            raise ManifestError(location, "manifest not found")
        else:
            out.append({"path": str(location) if not isinstance(location, Path) else os.path.abspath(location)})
    return out


def cut_manifests(
    manifests: str | os.PathLike | Sequence[str | os.PathLike],
    units_dir: Path,
    unit_size: int,
    root: str | None,
    check: Callable[[RawEntry], None] | None = None,
) -> UnitList:
    """Cut ``manifests`` into units of ``unit_size`` entries (not yet published: see :meth:`UnitList.write`).

    ``check`` is called on every entry (e.g. the extractor's own validation), before any model loads.

    Raises:
        ManifestError: an entry is invalid, a manifest is empty, or two entries give one key differently.
    """
    if isinstance(manifests, (str, os.PathLike)):
        manifests = [manifests]
    root = os.path.abspath(root) if root is not None and as_location(root).__class__ is Path else root
    units_dir.mkdir(parents=True, exist_ok=True)
    cutter = _Cutter(units_dir, unit_size, check)
    inputs = manifest_inputs(manifests)
    for m in manifests:
        before = len(cutter.names)
        location = as_location(m)
        if isinstance(location, Path) and location.suffix.lower() == ".jsonl" and location.is_file():
            cutter.add_jsonl(location, root)
        else:
            cutter.add_compact(_entries_of(m, root), str(m))
        if len(cutter.names) == before:
            what = "no video or image files below this folder" if Path(m).is_dir() else "no entries"
            raise ManifestError(m, f"{what} (the manifest is empty); a manifest lists at least one sample")
    return cutter.finish(inputs, root)


def raw_entries(units: UnitList, unit: Unit) -> list[RawEntry]:
    """The entries of one unit as read from its manifest slice (duplicates included)."""
    source = units.sources[unit.source]
    path = units.source_path(unit)
    with open(path, "rb") as fh:
        fh.seek(unit.start)
        data = fh.read(unit.end - unit.start)
    lines = data.splitlines()
    out = []
    if source["kind"] == "jsonl":
        base = as_location(source["root"]) if source["root"] is not None else path.parent
        for n, line in enumerate(lines):
            if line.strip():
                index = unit.first_index + n
                out.append(RawEntry(_parse_line(line, path, index), base, path, index))
    else:
        for line in lines:
            row = json.loads(line)
            out.append(RawEntry(row["e"], as_location(row["r"]), as_location(row["f"]), row["i"]))
    if len(out) != unit.count:
        raise ManifestError(
            path,
            f"unit {unit.uid} (bytes {unit.start}-{unit.end}) now holds {len(out)} entries, {unit.count} when the "
            "store was cut: the manifest changed. Give the manifest the store was cut from.",
        )
    return out


def unit_samples(units: UnitList, unit: Unit) -> list[Sample]:
    """The samples of one unit, keyed as over the whole manifest, repeated entries left out."""
    dropped = set(units.dropped.get(unit.number, ()))
    out = []
    for pos, r in enumerate(raw_entries(units, unit)):
        if pos in dropped:
            continue
        plain, ident = entry_identity(r)
        out.append(make_sample(r, unit_key(sanitize_key(plain), ident, units.collided)))
    return out
