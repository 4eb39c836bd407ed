"""Manifest locations that may be URLs: a path-like :class:`RemotePath` and helpers that take either kind.

Manifest reading works on ``pathlib.Path`` for local files; a URL (``s3://bucket/data/meta.json``) becomes a
:class:`RemotePath` with the few path operations that reading needs (``parent``, ``suffix``, ``stem``,
``exists``, ``is_dir``), so one code path parses both. Relative entries resolve against a remote root as
they do against a local one, and keys come from the path relative to the root in both cases, so the same
dataset gives the same keys on a disk and in a bucket.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lit_features import remote


@dataclass(frozen=True)
class RemotePath:
    """A file or folder URL with the ``pathlib`` operations manifest reading uses (no ``__fspath__``: never a
    local path by accident)."""

    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def parent(self) -> RemotePath:
        return RemotePath(remote.parent(self.url))

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    def exists(self) -> bool:
        return remote.exists(self.url)

    def is_dir(self) -> bool:
        return remote.is_dir(self.url)


MANIFEST_SUFFIXES = (".json", ".jsonl", ".csv", ".txt", ".list")


def must_exist(path: Location) -> bool:
    """Whether to check that ``path`` exists before reading it: not for a remote manifest file, whose read
    says more precisely what is wrong (missing object, credentials, endpoint) than a yes/no ``exists``."""
    return not (isinstance(path, RemotePath) and path.suffix.lower() in MANIFEST_SUFFIXES)


Location = Path | RemotePath


def as_location(path: str | os.PathLike | RemotePath) -> Location:
    """A :class:`RemotePath` for a URL, a ``Path`` otherwise."""
    if isinstance(path, RemotePath):
        return path
    return RemotePath(os.fspath(path)) if remote.is_remote(path) else Path(path)


def resolve(root: Location | str, rel: str) -> str | None:
    """``rel`` against a remote ``root`` (or ``rel`` itself when it is a URL); ``None`` when both are local."""
    if remote.is_remote(rel):
        return rel
    if isinstance(root, RemotePath) or remote.is_remote(str(root)):
        return remote.join(str(root), rel)
    return None


def relative_name(root: Location | str, rel: str) -> str | None:
    """The name a key is made from for a URL entry: relative to a remote root, else its last two components;
    the query string is left out.

    ``None`` for a local entry under a local root (the local rules apply).
    """
    if remote.is_remote(rel):
        # without the query: a presigned URL's signature changes from run to run, the object does not (two
        # URLs differing only in their query still get distinct keys, from their full identities)
        rel = rel.split("?", 1)[0].split("#", 1)[0]
        base = str(root).rstrip("/") + "/"
        if rel.startswith(base):
            return rel[len(base) :]
        return "/".join(rel.partition("://")[2].split("/")[-2:])
    if isinstance(root, RemotePath):
        return rel
    return None


@contextmanager
def open_text(path: Location, newline: str | None = None) -> Iterator[IO[str]]:
    """Open a manifest file as text, locally or through fsspec (read whole: manifests are small)."""
    if isinstance(path, RemotePath):
        data = remote.read_bytes(path.url)  # RemoteAccessError names the URL and the cause
        yield io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=newline)
        return
    with open(path, encoding="utf-8", newline=newline) as fh:
        yield fh


def files_below(folder: RemotePath) -> list[str]:
    """Paths of every file below a remote folder, relative to it, sorted."""
    base = folder.url.rstrip("/") + "/"
    return [url[len(base) :] for url in remote.list_files(folder.url) if url.startswith(base)]
