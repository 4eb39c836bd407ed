"""Where things live in a store: names of its files, sample path templates, atomic writes, temp-file hygiene."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any

from lit_features.errors import UserError

# 2: weights identified by content (format 1 used file names and sizes), index rows carry the sample's input
# identity, interrupted jobs no longer count as crashes.
STORE_FORMAT_VERSION = 2
STORE_JSON = "store.json"
INDEX_DIR = "index"
FAILURES_DIR = "failures"
ATTEMPTS_DIR = "attempts"  # samples started / finished by each DataLoader worker of the running job
CRASHES_DIR = "crashes"  # samples whose worker died while the job survived (the poison count)
TMP_DIR = ".tmp"
MERGED_INDEX = "index.jsonl"
MERGED_FAILURES = "failures.jsonl"
RUN_SUMMARY = "run_summary.json"
RUN_SUMMARY_DIR = "run_summary"
LOCK_FILE = ".lock"
RUN_TOKEN = ".run_token"  # rewritten by rank 0 at every start: proves each rank sees the same store
LIVE_DIR = "live"  # per-rank progress snapshots and failure previews of the running job (live dashboards)
UNITS_DIR = "units"  # work units: the unit list, leases and per-unit logs (lit_features.units)
PREMIGRATION_DIR = ".premigration"  # logs of the layout before units, once migrated

#: Names a store keeps for itself: a sample path must not start with one, and none may be a symbolic link.
INTERNAL_NAMES = (
    STORE_JSON, INDEX_DIR, FAILURES_DIR, ATTEMPTS_DIR, CRASHES_DIR, TMP_DIR, MERGED_INDEX, MERGED_FAILURES,
    RUN_SUMMARY, RUN_SUMMARY_DIR, LOCK_FILE, RUN_TOKEN, LIVE_DIR, UNITS_DIR, PREMIGRATION_DIR,
)  # fmt: skip

# ``.<final name>.<pid>.<8 hex>.tmp``: what :func:`atomic_write` writes before renaming (and nothing else).
_TEMP_NAME = re.compile(r"^\.(?P<final>.+)\.\d+\.[0-9a-f]{8}\.tmp$")


class UnsafePathError(UserError, ValueError):
    """A path template or key would write outside the output directory, or onto the store's own files."""


class StoreLayoutError(UserError, RuntimeError):
    """The store's own files are not what the store made (e.g. a symbolic link in place of its log folder)."""


def rank_file(root: Path, folder: str, rank: int) -> Path:
    return root / folder / f"rank-{rank}.jsonl"


def rank_files(root: Path, folder: str) -> list[Path]:
    return sorted((root / folder).glob("rank-*.jsonl"))


def read_jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSON Lines file; a torn last line (a write cut by a kill) is skipped, not fatal."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    return
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return


def latest_rows(root: Path, folder: str, exclude: Container[str] = ()) -> dict[str, dict[str, Any]]:
    """``{key: row}`` over every rank's log in ``root/folder`` (e.g. :data:`INDEX_DIR`): the latest row per key.

    Rank files are read in rank order and each from start to end, so a later row for a key replaces an earlier
    one (a redo after a failure, an adopted file). Keys in ``exclude`` are left out (e.g. failures of keys that
    are done). The one reading of "what a store holds" that the writer, the reader and the merge share.
    """
    rows: dict[str, dict[str, Any]] = {}
    for path in rank_files(root, folder):
        for row in read_jsonl_rows(path):
            if row["key"] not in exclude:
                rows[row["key"]] = row
    return rows


def repair_torn_tail(path: Path) -> None:
    """Cut a partial last line so the next append starts on a fresh line."""
    if not path.exists():
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def shard_of(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:2]


def format_template(template: str, key: str, source: str | None, ext: str, name: str, root: Path) -> str:
    """The text of ``template`` for one sample (no checks; see :func:`resolve_sample_path`)."""
    stem = Path(source).stem if source else key
    source_dir = str(Path(source).parent) if source else str(root)
    return template.format(key=key, shard=shard_of(key), stem=stem, source_dir=source_dir, name=name, ext=ext)


def writes_beside_sources(template: str) -> bool:
    return template.startswith("{source_dir}")


def resolve_sample_path(root: Path, template: str, key: str, source: str | None, ext: str, name: str = "") -> Path:
    """Format ``template`` for one sample and check it stays inside ``root`` and off the store's own files.

    Placeholders: ``{key}``, ``{shard}`` (2 hex digits of the key's hash: 256 folders), ``{stem}`` (source
    file name without extension), ``{source_dir}`` (the source's folder: the only way to write outside the
    store, e.g. IIANet's ``{source_dir}/{stem}_embedding.npz``), ``{name}`` (tensor name, one file per tensor)
    and ``{ext}``.
    """
    text = format_template(template, key, source, ext, name, root)
    if writes_beside_sources(template):
        return Path(text)
    path = Path(text)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafePathError(f"path template {template!r} gives {text!r}, which leaves the output directory {root}")
    full = (root / path).resolve()
    if not full.is_relative_to(root.resolve()):
        raise UnsafePathError(f"path template {template!r} gives {full}, outside the output directory {root}")
    if path.parts and path.parts[0] in INTERNAL_NAMES:
        raise UnsafePathError(
            f"path template {template!r} gives {text!r} for key {key!r}, which is one of the store's own files "
            f"({', '.join(INTERNAL_NAMES)}); put sample files under a folder, e.g. 'features/{{key}}{{ext}}'"
        )
    return root / path


def fsync_dir(folder: Path) -> None:
    """Make renames into ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is then as durable as it gets
        pass
    finally:
        os.close(fd)


def temp_path(final: Path, folder: Path | None = None) -> Path:
    """A fresh temporary name for ``final`` (in ``folder``, default beside it) that :func:`is_temp_name` knows."""
    return (folder if folder is not None else final.parent) / f".{final.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"


def is_temp_name(name: str, final_name: str | None = None) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_write` (for ``final_name``, when given)."""
    match = _TEMP_NAME.match(name)
    return match is not None and (final_name is None or match["final"] == final_name)


def atomic_write(final: Path, data: bytes, tmp_dir: Path | None = None, fsync: bool = True) -> None:
    """Write to a temporary name, flush (+fsync), then rename onto ``final``: readers see all or nothing.

    The caller makes the rename itself durable (:func:`fsync_dir` on ``final.parent``), once per batch.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = tmp_dir if tmp_dir is not None else final.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final, folder)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(final: Path, text: str, fsync: bool = True) -> None:
    """:func:`atomic_write` of a small text file, rename made durable too (store.json, merged logs, summaries)."""
    atomic_write(final, text.encode("utf-8"), fsync=fsync)
    if fsync:
        fsync_dir(final.parent)


def remove_temp_files(folder: Path, final_names: Iterable[str] | None = None) -> int:
    """Delete :func:`atomic_write` leftovers in ``folder`` (only those for ``final_names``, when given).

    Only call this while holding the store's lock: a temporary file of a live writer would vanish under it.
    """
    wanted = set(final_names) if final_names is not None else None
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or (wanted is not None and match["final"] not in wanted):
            continue
        try:
            os.unlink(entry.path)
            removed += 1
        except OSError:
            pass
    return removed


def remove_temp_files_of(finals: Iterable[Path]) -> int:
    """Delete :func:`atomic_write` leftovers of the files ``finals`` (one listing per folder)."""
    names: dict[Path, set[str]] = {}
    for final in finals:
        names.setdefault(final.parent, set()).add(final.name)
    return sum(remove_temp_files(folder, wanted) for folder, wanted in names.items())


def refuse_symlinks(root: Path) -> None:
    """A store's own files and folders are never symbolic links: cleaning ``.tmp`` or appending to the index
    would otherwise act on whatever the link points at."""
    for name in INTERNAL_NAMES:
        path = root / name
        if path.is_symlink():
            raise StoreLayoutError(
                f"{path} is a symbolic link (to {os.readlink(path)}); a store keeps its own {name!r} and never "
                "follows links there. Remove the link (the store recreates what it needs), or write to another "
                "--writer.output_dir."
            )
