"""The local cache of remote media: bounded (least recently used copies go), prefetched, errors name the URL, and
only the process that made the folder removes it."""

from __future__ import annotations

import gc
import os
import pickle

import fsspec
import pytest

from lit_features.data.media_cache import MediaCache
from lit_features.remote import RemoteAccessError


@pytest.fixture()
def objects():
    """Four 1000-byte objects in fsspec's in-memory filesystem (a remote protocol, no server needed)."""
    fs = fsspec.filesystem("memory")
    urls = []
    for name in "abcd":
        fs.pipe_file(f"/media/{name}.mp4", name.encode() * 1000)
        urls.append(f"memory://media/{name}.mp4")
    yield urls
    fs.rm("/media", recursive=True)


def test_cache_is_bounded_and_keeps_what_was_used_last(objects, tmp_path) -> None:
    cache = MediaCache(str(tmp_path), max_bytes=2500)
    a, b, c, d = objects
    path_a = cache.local_path(a)
    assert open(path_a, "rb").read() == b"a" * 1000 and path_a.endswith(".mp4")
    path_b = cache.local_path(b)
    assert cache.local_path(a) == path_a  # a hit: used again, so b is now the oldest
    path_c = cache.local_path(c)
    assert not os.path.exists(path_b) and os.path.exists(path_a) and os.path.exists(path_c)
    cache.prefetch([d, None, "/local/file.mp4"])  # only the remote one is fetched
    assert d in cache._futures
    assert open(cache.local_path(d), "rb").read() == b"d" * 1000
    assert not [n for n in os.listdir(os.path.dirname(path_a)) if n.endswith(".part")]


def test_a_missing_object_names_its_url(objects, tmp_path) -> None:
    cache = MediaCache(str(tmp_path))
    with pytest.raises(RemoteAccessError, match=r"memory://media/nope.mp4: no such object"):
        cache.local_path("memory://media/nope.mp4")
    cache.prefetch(["memory://media/gone.mp4"])  # a failed prefetch surfaces when the sample asks for it
    with pytest.raises(RemoteAccessError, match=r"memory://media/gone.mp4: no such object"):
        cache.local_path("memory://media/gone.mp4")


def test_only_the_process_that_made_the_folder_removes_it() -> None:
    cache = MediaCache()
    folder = cache.folder
    copy = pickle.loads(pickle.dumps(cache))  # what a spawned DataLoader worker receives
    assert copy.folder == folder and not copy._owned
    # a forked child inherits the finalizer; when it collects its copy the folder must survive
    pid = os.fork()
    if pid == 0:  # the child drops its copy of the cache, as a finishing DataLoader worker does
        del cache
        gc.collect()
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.path.isdir(folder)
    del cache
    gc.collect()
    assert not os.path.exists(folder)
