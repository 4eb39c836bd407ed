"""Leases on work units: exclusive-create files with a heartbeat and an expiry, taken over by generation.

A job owns unit ``u`` while it holds ``units/u/lease.<g>``, the highest generation present. Claiming is
creating ``lease.0`` with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFS v3+, Lustre and GPFS:
exactly one creator wins). The owner touches the file's modification time every heartbeat; a lease whose
heartbeat is older than its expiry (written in the lease, so jobs with other settings agree), whose content is
unreadable for longer than a write takes, or whose owner ran on this host and is gone, is taken over by creating
``lease.<g+1>`` — again exclusive, so of several jobs seeing the same dead lease exactly one wins, and no lease
file is ever deleted or renamed (nothing to race on). Each takeover is logged with the reason.

``done`` marks a finished unit (written atomically once every rank of the claiming job finished its share; see
:mod:`lit_features.units.claims`). Expiry compares the file's modification time, set by the file server, with
this host's clock: keep clocks in sync (NTP) and the expiry far above their skew and above the attribute
caching of network filesystems (the default 300 s is).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lit_features.store.lock import process_start_time
from lit_features.units.unit_list import DONE_FILE

log = logging.getLogger(__name__)

LEASE_PREFIX = "lease."
DEFAULT_EXPIRY_S = 300.0
#: A lease may read empty between its exclusive create and its content's write: unreadable only counts after.
UNREADABLE_GRACE_S = 10.0


@dataclass
class LeaseView:
    """What a unit's folder says: ``done``, or the newest lease (``generation`` None: never claimed)."""

    done: bool
    generation: int | None = None
    info: dict[str, Any] | None = None
    age_s: float = 0.0

    def stale_reason(self) -> str | None:
        """Why the newest lease may be taken over (``None``: its owner counts as alive)."""
        if self.generation is None or self.done:
            return None
        info = self.info
        expiry = DEFAULT_EXPIRY_S
        if info is None or not isinstance(info, dict) or "job" not in info:
            if self.age_s > min(UNREADABLE_GRACE_S, _expiry(info)):
                return f"its lease file is unreadable (corrupt) and {self.age_s:.0f} s old"
            return None
        expiry = _expiry(info)
        if self.age_s > 10 * 365 * 86400:  # dated back to 1970 by its owner
            return "its job stopped before finishing it (lease released)"
        if self.age_s > expiry:
            return f"its heartbeat is {self.age_s:.1f} s old (expiry {expiry:g} s)"
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            started = process_start_time(info["pid"])
            if started is None or started != info.get("pid_start"):
                return f"its owner (pid {info['pid']} on this host) is gone"
        return None


def _expiry(info: dict[str, Any] | None) -> float:
    value = info.get("expiry_s") if isinstance(info, dict) else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_EXPIRY_S


def lease_path(unit_dir: Path, generation: int) -> Path:
    return unit_dir / f"{LEASE_PREFIX}{generation}"


def describe_owner(info: dict[str, Any] | None) -> str:
    if not isinstance(info, dict) or "job" not in info:
        return "an unknown owner"
    return f"job {info['job']} (pid {info.get('pid')} on host {info.get('host')})"


def inspect_unit(unit_dir: Path) -> LeaseView:
    """One listing of the unit's folder (and one read of the newest lease)."""
    try:
        names = os.listdir(unit_dir)
    except FileNotFoundError:
        return LeaseView(done=False)
    if DONE_FILE in names:
        return LeaseView(done=True)
    generations = [int(n[len(LEASE_PREFIX) :]) for n in names if n.startswith(LEASE_PREFIX) and n[6:].isdigit()]
    if not generations:
        return LeaseView(done=False)
    generation = max(generations)
    path = lease_path(unit_dir, generation)
    try:
        age = time.time() - os.stat(path).st_mtime
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return LeaseView(done=False, generation=generation, info=None, age_s=0.0)
    try:
        info = json.loads(text) if text.strip() else None
    except ValueError:
        info = None
    return LeaseView(done=False, generation=generation, info=info, age_s=age)


def owner_info(job: str, world_size: int, expiry_s: float) -> dict[str, Any]:
    """What a lease says about its owner (read by takers and in log lines)."""
    return {
        "job": job,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": process_start_time(os.getpid()),
        "world_size": world_size,
        "expiry_s": expiry_s,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def try_create(unit_dir: Path, generation: int, info: dict[str, Any]) -> bool:
    """Create ``lease.<generation>`` exclusively; ``False`` when another job created it first."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = lease_path(unit_dir, generation)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps({**info, "generation": generation}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def write_done(unit_dir: Path, info: dict[str, Any]) -> None:
    """Mark the unit finished (idempotent: any rank or job that sees it finished may write it)."""
    from lit_features.store import layout

    layout.atomic_write_text(unit_dir / DONE_FILE, json.dumps(info))


class LeaseKeeper:
    """Heartbeats the leases a job holds from a background thread, until each unit is done or released.

    A lease that another job took over (a ``lease.<g+1>`` appeared: this job's heartbeat stalled past the
    expiry) is logged and dropped; the rows this job still writes for it are superseded by the new owner's.
    """

    def __init__(self, heartbeat_s: float):
        self.heartbeat_s = heartbeat_s
        self.held: dict[str, tuple[Path, int]] = {}
        self.lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, uid: str, unit_dir: Path, generation: int) -> None:
        with self._lock:
            self.held[uid] = (unit_dir, generation)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="unit-lease-heartbeat", daemon=True)
            self._thread.start()

    def drop(self, uid: str) -> None:
        with self._lock:
            self.held.pop(uid, None)

    def beat(self) -> None:
        with self._lock:
            held = list(self.held.items())
        for uid, (unit_dir, generation) in held:
            try:
                if (unit_dir / DONE_FILE).exists():
                    self.drop(uid)
                    continue
                if lease_path(unit_dir, generation + 1).exists():
                    log.warning("unit %s was taken over by another job (this job's heartbeat stalled)", uid)
                    self.lost.add(uid)
                    self.drop(uid)
                    continue
                os.utime(lease_path(unit_dir, generation))
            except OSError as err:  # a transient filesystem error: the next beat tries again
                log.debug("heartbeat of unit %s failed: %s", uid, err)

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.beat()

    def release_all(self) -> None:
        """Stop beating; leases of unfinished units are dated back so other jobs take them over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            held, self.held = list(self.held.values()), {}
        for unit_dir, generation in held:
            if (unit_dir / DONE_FILE).exists():
                continue
            try:
                os.utime(lease_path(unit_dir, generation), (0, 0))
            except OSError:
                pass
