"""Where things live in a store: file names of the per-rank logs and the path templates of sample files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lit_features.errors import UserError

STORE_FORMAT_VERSION = 1
STORE_JSON = "store.json"
INDEX_DIR = "index"
FAILURES_DIR = "failures"
ATTEMPTS_DIR = "attempts"
TMP_DIR = ".tmp"
MERGED_INDEX = "index.jsonl"
MERGED_FAILURES = "failures.jsonl"
RUN_TOKEN = ".run_token"  # rewritten by rank 0 at every start: proves each rank sees the same store


class UnsafePathError(UserError, ValueError):
    """A path template or key would write outside the output directory."""


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


def resolve_sample_path(root: Path, template: str, key: str, source: str | None, ext: str, name: str = "") -> Path:
    """Format ``template`` for one sample and check it stays inside ``root``.

    Placeholders: ``{key}``, ``{shard}`` (2 hex digits of the key's hash: 256 folders), ``{stem}`` (source
    file name without extension), ``{source_dir}`` (the source's folder: the only way to write outside the
    store, e.g. IIANet's ``{source_dir}/{stem}_embedding.npz``), ``{name}`` (tensor name, one file per tensor)
    and ``{ext}``.
    """
    stem = Path(source).stem if source else key
    source_dir = str(Path(source).parent) if source else str(root)
    text = template.format(key=key, shard=shard_of(key), stem=stem, source_dir=source_dir, name=name, ext=ext)
    if template.startswith("{source_dir}"):
        return Path(text)
    path = Path(text)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafePathError(f"path template {template!r} gives {text!r}, which leaves the output directory {root}")
    full = (root / path).resolve()
    if not full.is_relative_to(root.resolve()):
        raise UnsafePathError(f"path template {template!r} gives {full}, outside the output directory {root}")
    return root / path


def atomic_write(final: Path, data: bytes, tmp_dir: Path | None = None, fsync: bool = True) -> None:
    """Write to a temporary name, flush (+fsync), then rename onto ``final``: readers see all or nothing."""
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = tmp_dir if tmp_dir is not None else final.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{final.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
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


def atomic_write_text(final: Path, text: str) -> None:
    atomic_write(final, text.encode("utf-8"))
