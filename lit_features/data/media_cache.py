"""Local copies of remote media (``s3://``, ``gs://``, ``hf://``, ``https://``) for the decoders, fetched ahead.

Decoders (decord, PyAV, PIL) read local files, so each DataLoader worker downloads a sample's media into its own
cache folder before decoding: whole files, through a temporary name (a cut download never looks complete).
A batch's media are fetched concurrently by a small thread pool while earlier samples decode
(:meth:`MediaCache.prefetch`); the DataLoader's own ``prefetch_factor`` keeps later batches coming. The cache
is bounded: past ``max_bytes`` the least recently used files are deleted (never the one being handed out).
The folder is removed when the dataset that made it is garbage-collected or the process exits.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lit_features.remote import download, is_remote

DEFAULT_MAX_BYTES = 8 * 2**30
PREFETCH_THREADS = 4


def _remove_in_owner(folder: str, owner: int) -> None:
    # a forked DataLoader worker inherits this finalizer: only the process that made the folder removes it
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


class MediaCache:
    """Remote URL -> local file, per process, bounded in bytes.

    Args:
        folder: where the copies go (default: a new temporary folder); each process uses its own subfolder.
        max_bytes: soft bound of the cached bytes per process.
    """

    def __init__(self, folder: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self._owned = folder is None
        self.folder = folder if folder is not None else tempfile.mkdtemp(prefix="lit_features_media_")
        if self._owned:
            weakref.finalize(self, _remove_in_owner, self.folder, os.getpid())
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers receive a copy: threads, futures and locks are made again in each process.
        return {"max_bytes": self.max_bytes, "_owned": False, "folder": self.folder, "_pid": None}

    def _process_state(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._dir = os.path.join(self.folder, f"p{self._pid}")
        os.makedirs(self._dir, exist_ok=True)
        self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="media-fetch")
        self._futures: dict[str, Future] = {}
        self._files: OrderedDict[str, tuple[str, int]] = OrderedDict()  # url -> (local path, bytes), LRU first
        self._lock = threading.Lock()

    def _local_name(self, url: str) -> str:
        # the extension stays: some decoders pick a demuxer from it
        suffix = posixpath.splitext(url.split("?", 1)[0])[1][:16]
        return os.path.join(self._dir, hashlib.sha1(url.encode()).hexdigest()[:20] + suffix)

    def _fetch(self, url: str) -> tuple[str, int]:
        path = self._local_name(url)
        return path, download(url, path)

    def prefetch(self, urls: Iterable[str | None]) -> None:
        """Start downloading the remote ones among ``urls`` (local paths and ``None`` are ignored)."""
        self._process_state()
        with self._lock:
            for url in urls:
                if url and is_remote(url) and url not in self._files and url not in self._futures:
                    self._futures[url] = self._pool.submit(self._fetch, url)

    def local_path(self, url: str) -> str:
        """A local copy of ``url`` (downloaded now unless prefetched); raises RemoteAccessError naming the URL."""
        self._process_state()
        with self._lock:
            if url in self._files:
                self._files.move_to_end(url)
                return self._files[url][0]
            future = self._futures.get(url)
        try:
            path, size = future.result() if future is not None else self._fetch(url)
        finally:
            with self._lock:
                self._futures.pop(url, None)
        with self._lock:
            self._files[url] = (path, size)
            self._evict(keep=url)
        return path

    def _evict(self, keep: str) -> None:
        total = sum(size for _, size in self._files.values())
        for url in list(self._files):
            if total <= self.max_bytes:
                break
            if url == keep or url in self._futures:
                continue
            path, size = self._files.pop(url)
            try:
                os.unlink(path)
            except OSError:
                pass
            total -= size
