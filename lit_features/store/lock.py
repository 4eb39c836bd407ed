"""One job per store: an exclusive lock on ``<store>/.lock`` held for the whole job, naming its holder.

The lock is a kernel file lock (``flock``): the kernel drops it when the holder dies, even by ``kill -9``, so
a crashed job never leaves a stale lock on its own host, and on NFSv4 the server drops it when the holder's
client stops renewing its lease. The file's content names the holder (host, pid, start time, command) for the
refusal message, and a heartbeat thread refreshes it. That content is a second line of defence where kernel
locks do not reach across hosts (e.g. Lustre mounted with ``localflock``): a holder on another host counts as
alive while its heartbeat is younger than :data:`STALE_AFTER_S`; a holder on this host whose process is gone
is stale and replaced. Only rank 0 of a job takes the lock; the job's other ranks share it.

The file is never deleted (deleting a locked file lets a third job lock a new file of the same name); an
empty file means "free".
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lit_features.errors import UserError

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0
#: errno values meaning "this filesystem has no (working) flock": fall back on the heartbeat alone.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class StoreLockedError(UserError, RuntimeError):
    """Another job is writing this store."""


class StoreNotWritableError(UserError, PermissionError):
    """The store cannot be written (read-only filesystem or no permission) and there is work left to do."""


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live holder from a new process that reused its pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def describe_holder(info: dict[str, Any]) -> str:
    """``pid 123 on host h (started 2026-..., heartbeat 3 s ago, command ...)``."""
    parts = [f"started {info.get('started', '?')}"]
    if isinstance(info.get("heartbeat"), (int, float)):
        parts.append(f"heartbeat {max(0.0, time.time() - info['heartbeat']):.0f} s ago")
    if info.get("slurm_job_id"):
        parts.append(f"SLURM job {info['slurm_job_id']}")
    if info.get("command"):
        parts.append(f"command: {info['command']}")
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} ({', '.join(parts)})"


def _parse(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not text:
        return None
    try:
        # raw_decode: a heartbeat rewrite that shrank the content may leave old bytes after the object.
        info, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return {"host": "?", "pid": "?", "unreadable": True}
    return info if isinstance(info, dict) else None


def read_holder(path: Path) -> dict[str, Any] | None:
    """Who holds the lock at ``path`` according to its content (``None``: free or absent)."""
    try:
        return _parse(path.read_text(errors="replace"))
    except OSError:
        return None


def holder_is_alive(info: dict[str, Any], kernel_lock_granted: bool) -> bool:
    """Whether the holder named in a lock file may still be running (we could take the kernel lock or not)."""
    if info.get("unreadable"):
        return not kernel_lock_granted
    if info.get("host") == socket.gethostname():
        if info.get("pid") == os.getpid():
            return False  # this very process, e.g. a second run in one notebook after an unclean end
        if kernel_lock_granted:
            return False  # the kernel would not have granted it to us while the holder lived
        pid = info.get("pid")
        started = process_start_time(pid) if isinstance(pid, int) else None
        return started is not None and started == info.get("pid_start")
    heartbeat = info.get("heartbeat")
    return not isinstance(heartbeat, (int, float)) or time.time() - heartbeat < STALE_AFTER_S


class StoreLock:
    """The exclusive lock of one store (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / ".lock"
        self._fd: int | None = None
        self._info: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shared = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, shared: bool = False) -> None:
        """Take the lock or raise :class:`StoreLockedError` naming the holder.

        ``shared``: for jobs writing work units, which may run together (each claims its own units) but
        never beside a job that needs the store alone. A shared holder writes no content and no heartbeat.

        Raises:
            StoreLockedError: another live job holds it.
            StoreNotWritableError: the store's folder cannot be written.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreNotWritableError(f"{self.root} cannot be written ({err.strerror})") from None
            raise
        granted = True
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            granted = False
            info = read_holder(self.path) or {}
            os.close(fd)
            raise self._refusal(info) from None
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            granted = False
            log.warning(
                "%s: the filesystem has no file locks (%s); relying on the lock file's heartbeat", self.path, err
            )
        info = read_holder(self.path)
        if info is not None and holder_is_alive(info, granted):
            os.close(fd)
            raise self._refusal(info)
        if shared:  # the content stays what it is: it names the last exclusive holder, or nobody
            self._fd, self._shared = fd, True
            return
        if info is not None:
            log.warning("%s: taking over the lock of a job that is gone: %s", self.root, describe_holder(info))
        self._fd = fd
        self._info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": process_start_time(os.getpid()),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "command": " ".join(sys.argv)[:300],
        }
        self._write()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="store-lock-heartbeat", daemon=True)
        self._thread.start()

    def _refusal(self, info: dict[str, Any]) -> StoreLockedError:
        if not info:
            return StoreLockedError(
                f"{self.root} is being written by jobs working in units (see {self.root}/units/*/lease.*). Wait for "
                "them to finish, or give this job --data.unit_size to work beside them."
            )
        return StoreLockedError(
            f"{self.root} is being written by another job: {describe_holder(info)}. One job per store at a time: "
            "wait for it to finish (this job would then resume what is left), or write to another "
            f"--writer.output_dir. If that job is gone and its host cannot run it any more, empty {self.path}."
        )

    def _write(self) -> None:
        assert self._fd is not None
        data = json.dumps({**self._info, "heartbeat": time.time()}).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        os.fsync(self._fd)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except (OSError, AssertionError):  # released meanwhile, or a transient filesystem error
                continue

    def release(self) -> None:
        """Empty the file and drop the lock (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._shared:
            self._shared = False
            os.close(fd)
            return
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing drops the flock
