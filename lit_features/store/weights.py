"""Weights identified by content: a SHA-256 per file, computed once and cached by (path, size, mtime, inode).

A fine-tuned or retrained checkpoint saved under the same names has the same sizes, so names and sizes are no
identity. Hashing every byte is: it changes when any tensor changes, in any file format (safetensors shards,
``.bin``/``.pt``/``.pth``/``.ckpt`` single files, tokenizer and config files). The cost is one read of the
weights, paid once per file version: the digest is cached in a per-user folder (``$LIT_FEATURES_CACHE``, else
``$XDG_CACHE_HOME/lit_features``, else ``~/.cache/lit_features``) under the file's real path, and reused while
its size, mtime, ctime and inode are unchanged (ctime, which no tool can set back, catches a rewrite that kept
the mtime). Several processes starting together (the ranks of one node) hash a file once: the others wait on
a lock and read the cached digest. Files are hashed in parallel threads (hashlib releases the GIL).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Files that can change what a model computes: weights, configs, tokenizers, chat templates, remote code.
IDENTITY_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".tar", ".ckpt", ".npz", ".model", ".json", ".txt", ".py", ".jinja",
    ".tiktoken",
)  # fmt: skip
DIGEST_CHARS = 32  # 128 bits of SHA-256: collisions are not a practical concern for telling checkpoints apart
_PRUNE_ABOVE = 2000  # cache entries kept before entries of vanished files are dropped


def cache_dir() -> Path:
    """Where digests are cached (see the module docstring)."""
    if os.environ.get("LIT_FEATURES_CACHE"):
        return Path(os.environ["LIT_FEATURES_CACHE"]) / "weight_digests"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lit_features" / "weight_digests"


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def sha256_file(path: str | os.PathLike, chars: int = DIGEST_CHARS) -> str:
    """Hex SHA-256 of a file's bytes (its first ``chars`` characters)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:chars]


class DigestCache:
    """Per-user cache of file digests: one small JSON per file, named by a hash of its real path."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder if folder is not None else cache_dir()
        self._usable: bool | None = None

    def usable(self) -> bool:
        if self._usable is None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._usable = os.access(self.folder, os.W_OK)
            except OSError:
                self._usable = False
            if not self._usable:
                log.warning("cannot write the weight digest cache %s: weights are hashed on every run", self.folder)
        return self._usable

    def _entry(self, real: str) -> Path:
        return self.folder / (hashlib.sha1(real.encode()).hexdigest() + ".json")

    def _lookup(self, entry: Path, real: str, key: dict[str, int]) -> str | None:
        try:
            cached = json.loads(entry.read_text())
        except (OSError, ValueError):
            return None
        if cached.get("path") == real and cached.get("stat") == key:
            return cached.get("sha256")
        return None

    def digest(self, path: Path) -> str:
        """The file's digest, from the cache when its stat key still matches, else hashed (and cached)."""
        real = os.path.realpath(path)
        key = _stat_key(os.stat(real))
        if not self.usable():
            return sha256_file(real)
        entry = self._entry(real)
        found = self._lookup(entry, real, key)
        if found:
            return found
        with open(entry.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process hashing this file: wait and reuse its result
            found = self._lookup(entry, real, key)
            if found:
                return found
            digest = sha256_file(real)
            if _stat_key(os.stat(real)) == key:  # unchanged while we read it: safe to remember
                tmp = entry.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"path": real, "stat": key, "sha256": digest}))
                os.replace(tmp, entry)
                self._prune()
            return digest

    def _prune(self) -> None:
        entries = list(self.folder.glob("*.json"))
        if len(entries) <= _PRUNE_ABOVE:
            return
        for entry in entries:
            try:
                if not os.path.exists(json.loads(entry.read_text()).get("path", "")):
                    entry.unlink(missing_ok=True)
                    entry.with_suffix(".lock").unlink(missing_ok=True)
            except (OSError, ValueError):
                continue


def identity_files(path: Path) -> list[Path]:
    """The files of a weights folder that take part in its identity (sorted), or the file itself."""
    if path.is_file():
        return [path]
    return sorted(
        f
        for f in path.rglob("*")
        if f.is_file()
        and f.suffix in IDENTITY_SUFFIXES
        and not any(p.startswith(".") for p in f.relative_to(path).parts)
    )


def weight_identity(
    path: str | os.PathLike, cache: DigestCache | None = None, threads: int | None = None
) -> dict[str, Any]:
    """Content identity of a weights folder (``{"files": {relative path: sha256}}``) or of one checkpoint file
    (``{"file": name, "sha256": ...}``). The location is not part of it: moved weights keep their identity.
    """
    path = Path(path)
    cache = cache if cache is not None else DigestCache()
    files = identity_files(path)
    workers = max(1, min(len(files), threads or min(8, os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:
        digests = list(pool.map(cache.digest, files))
    if path.is_file():
        return {"file": path.name, "sha256": digests[0]}
    return {"files": {str(f.relative_to(path)): d for f, d in zip(files, digests, strict=True)}}
