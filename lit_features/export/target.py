"""The folder an export writes to, local or remote (fsspec): whole files appear at once or not at all.

A shard is built in a local staging folder and then published: renamed into place on a local disk (after an
fsync), or uploaded as one object (an object store PUT is atomic per object). Readers therefore never see a
partly written shard, only, after a crash, a complete shard that no record lists yet (the next export removes
it; the readers here list shards from the record).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from typing import Any

from lit_features.remote import filesystem, is_remote, remote_error

STAGING = ".lit_features_staging"


class ExportTarget:
    """Files inside one output folder (a local path or a URL such as ``s3://bucket/prefix``)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url.rstrip("/") if is_remote(url) else os.path.abspath(url)
        self.remote = is_remote(url)
        self.storage_options = dict(storage_options or {})
        self.fs, self.path = filesystem(self.url, self.storage_options)
        self._staging: str | None = None

    def child(self, name: str) -> str:
        """The full URL (or path) of ``name`` inside the folder."""
        return f"{self.url}/{name}" if self.remote else os.path.join(self.url, name)

    def _path(self, name: str) -> str:
        return posixpath.join(self.path, name) if self.remote else os.path.join(self.url, name)

    # -- reading -------------------------------------------------------------------------------------------
    def read_bytes(self, name: str) -> bytes | None:
        """Content of ``name``, or ``None`` when it does not exist."""
        try:
            return self.fs.cat_file(self._path(name))
        except FileNotFoundError:
            return None
        except Exception as err:
            raise remote_error(self.child(name), err) from err

    def list_names(self) -> list[str]:
        """Every file in the folder (recursively), relative to it; staging files excluded."""
        if not self.remote and not os.path.isdir(self.url):
            return []
        try:
            found = self.fs.find(self.path)
        except FileNotFoundError:
            return []
        except Exception as err:
            raise remote_error(self.url, err) from err
        prefix = self.path.rstrip("/") + "/"
        names = [p[len(prefix) :] if p.startswith(prefix) else p for p in found]
        return sorted(n for n in names if not n.startswith(STAGING))

    def check_writable(self) -> None:
        """Fail early (before reading the store) when the bucket is missing or unreachable."""
        if not self.remote:
            os.makedirs(self.url, exist_ok=True)
            return
        bucket = self.path.split("/", 1)[0]
        try:
            self.fs.info(bucket)  # not exists(): that answers False for missing credentials too
        except Exception as err:
            raise remote_error(self.url, err) from err

    # -- writing -------------------------------------------------------------------------------------------
    def staging_dir(self) -> str:
        """A local folder for shards being built: inside the output when local (same disk, so rename is atomic)."""
        if self._staging is None:
            if self.remote:
                self._staging = tempfile.mkdtemp(prefix="lit_features_export_")
            else:
                self._staging = os.path.join(self.url, STAGING)
                shutil.rmtree(self._staging, ignore_errors=True)  # left by a killed export: never published
                os.makedirs(self._staging)
        return self._staging

    def publish(self, local_file: str, name: str) -> int:
        """Move a finished local file to ``name`` in the folder; returns its size in bytes."""
        size = os.path.getsize(local_file)
        if self.remote:
            try:
                self.fs.put_file(local_file, self._path(name))
            except Exception as err:
                raise remote_error(self.child(name), err) from err
            os.unlink(local_file)
        else:
            final = self._path(name)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            with open(local_file, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(local_file, final)
        return size

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace ``name`` with ``data`` as one step (temporary file + rename, or one object PUT)."""
        if self.remote:
            try:
                self.fs.pipe_file(self._path(name), data)
            except Exception as err:
                raise remote_error(self.child(name), err) from err
            return
        final = self._path(name)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(name)}.{os.urandom(4).hex()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass
        except Exception as err:
            raise remote_error(self.child(name), err) from err

    def close(self) -> None:
        """Remove the staging folder."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
