"""One export per output folder at a time: a lock file with a heartbeat, usable on local disks and object stores.

Object stores have no locks, so this is a lease: ``_lit_features_export.lock`` names its holder and is
rewritten (heartbeat) as shards are published. Another export finding a fresh lease refuses to start; a lease
older than :data:`STALE_SECONDS` belongs to an export that died and is taken over. After writing its lease an
export reads it back, so of two starting together at most one goes on (the other sees the winner's lease).
Two exports writing one folder would otherwise remove each other's unlisted shards and both claim the same
part number.
"""

from __future__ import annotations

import json
import os
import socket
import time

from lit_features.errors import UserError
from lit_features.export.target import ExportTarget

LOCK_NAME = "_lit_features_export.lock"
STALE_SECONDS = 600.0
HEARTBEAT_SECONDS = 60.0


class ExportBusyError(UserError, RuntimeError):
    """Another export is writing to the same output."""


class ExportLock:
    def __init__(self, target: ExportTarget):
        self.target = target
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._beat = 0.0

    def _read(self) -> dict | None:
        data = self.target.read_bytes(LOCK_NAME)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None  # a torn lease (local disk, killed mid-write) holds nobody

    def _write(self) -> None:
        self._beat = time.time()
        self.target.write_bytes(LOCK_NAME, json.dumps({"owner": self.owner, "heartbeat": self._beat}).encode())

    def acquire(self) -> None:
        held = self._read()
        if held is not None and held.get("owner") != self.owner:
            age = time.time() - float(held.get("heartbeat", 0))
            if age < STALE_SECONDS:
                raise ExportBusyError(
                    f"{self.target.child(LOCK_NAME)}: another export ({held.get('owner')}, active {age:.0f} s ago) is "
                    f"writing to this output; wait for it to finish (a dead export's lock expires after "
                    f"{STALE_SECONDS:.0f} s, or delete the lock file if you know it is dead)"
                )
        self._write()
        if (self._read() or {}).get("owner") != self.owner:
            raise ExportBusyError(f"{self.target.url}: another export started writing to this output at the same time")

    def heartbeat(self) -> None:
        if time.time() - self._beat >= HEARTBEAT_SECONDS:
            self._write()

    def release(self) -> None:
        if (self._read() or {}).get("owner") == self.owner:
            self.target.remove(LOCK_NAME)
