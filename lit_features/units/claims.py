"""A job taking work units one after another through the store (rank 0 of the job claims for all its ranks).

Each job starts its walk over the unit list at its own place (from its id), so jobs started together do not
all race for the first units; it remembers units it saw done and comes back to units other jobs hold only when
nothing else is left. With ``wait``, a job that finds only units held by live jobs polls until they are done
or their lease expires (then takes them over), so the store is complete when the last job ends; without it,
such a job ends and leaves them to their owners.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from lit_features.units import lease
from lit_features.units.unit_list import DONE_FILE, Unit, UnitList, unit_dir

log = logging.getLogger(__name__)

FINISHED_PREFIX = "finished-g"
#: :meth:`UnitClaimer.next_unit` found only units that other live jobs hold, and waits for them.
WAIT = "wait"
ELSEWHERE, OURS = -1, -2


def new_job_id() -> str:
    """A job's name in leases and markers: host, pid and randomness (unique across hosts and restarts)."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in os.uname().nodename)[:40]
    return f"{host}-{os.getpid()}-{os.urandom(3).hex()}"


def finished_marker(unit_folder: Path, generation: int, rank: int) -> Path:
    return unit_folder / f"{FINISHED_PREFIX}{generation}-rank-{rank}"


def mark_rank_finished(output_dir: Path, uid: str, generation: int, rank: int, world_size: int) -> bool:
    """Note that ``rank`` wrote its whole share of the unit (its rows are durable); when every rank of the
    job has, mark the unit done. Returns whether the unit is now done."""
    folder = unit_dir(output_dir, uid)
    finished_marker(folder, generation, rank).touch()
    return settle_if_finished(output_dir, uid, generation, world_size)


def settle_if_finished(output_dir: Path, uid: str, generation: int, world_size: int) -> bool:
    folder = unit_dir(output_dir, uid)
    if (folder / DONE_FILE).exists():
        return True
    prefix = f"{FINISHED_PREFIX}{generation}-rank-"
    ranks = {n[len(prefix) :] for n in os.listdir(folder) if n.startswith(prefix)}
    if len(ranks) < world_size:
        return False
    lease.write_done(folder, {"generation": generation, "ranks": world_size, "time": time.time()})
    return True


class UnitClaimer:
    """Claims units for one job (see the module docstring).

    Args:
        output_dir: the job's output directory (holds ``units/``).
        units: the store's unit list.
        job: this job's id (:func:`new_job_id`).
        world_size: ranks of the job (recorded in its leases: a unit is done when that many ranks finished).
        expiry_s: after how long without a heartbeat this job's leases may be taken over.
        wait: poll for units held by other live jobs instead of ending while they are unfinished.
        sleep: how to wait between polls (``time.sleep``).
    """

    def __init__(
        self,
        output_dir: Path,
        units: UnitList,
        job: str,
        world_size: int,
        expiry_s: float = lease.DEFAULT_EXPIRY_S,
        wait: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.output_dir = Path(output_dir)
        self.units = units
        self.job = job
        self.world_size = world_size
        self.expiry_s = expiry_s
        self.wait = wait
        self.sleep = sleep
        self.keeper = lease.LeaseKeeper(heartbeat_s=max(min(expiry_s / 10.0, 30.0), 0.05))
        self.poll_s = max(min(expiry_s / 4.0, 10.0), 0.05)
        self.known_done: set[int] = set()
        self.claimed: list[tuple[str, int]] = []
        count = max(len(units), 1)
        self._next = int(hashlib.sha1(job.encode()).hexdigest(), 16) % count

    def _order(self) -> list[Unit]:
        units = self.units.units
        return units[self._next :] + units[: self._next]

    def next_unit(self) -> tuple[Unit, int] | str | None:
        """Claim the next unit: ``(unit, generation)``; :data:`WAIT` when only units of other live jobs are
        left and this job waits for them (after sleeping one poll interval); ``None`` when no unit is left.

        Never blocks for longer than one poll: the caller keeps its own pipeline moving between polls (its
        last samples must be written while it waits, or two waiting jobs would wait for each other).
        """
        held_elsewhere = False
        for unit in self._order():
            if unit.number in self.known_done:
                continue
            claimed = self._try(unit)
            if claimed is None:
                continue
            if claimed < 0:
                held_elsewhere = held_elsewhere or claimed == ELSEWHERE
                continue
            self._next = (unit.number + 1) % len(self.units.units)
            self.claimed.append((unit.uid, claimed))
            self.keeper.hold(unit.uid, unit_dir(self.output_dir, unit.uid), claimed)
            return unit, claimed
        if not (held_elsewhere and self.wait):
            return None
        self.sleep(self.poll_s)
        return WAIT

    def _try(self, unit: Unit) -> int | None:
        """The generation claimed; ``None``: done; ``ELSEWHERE``: another live job holds it; ``OURS``: we do."""
        folder = unit_dir(self.output_dir, unit.uid)
        view = lease.inspect_unit(folder)
        if view.done:
            self.known_done.add(unit.number)
            return None
        generation = 0
        if view.generation is not None:
            reason = view.stale_reason()
            if reason is None:
                return OURS if isinstance(view.info, dict) and view.info.get("job") == self.job else ELSEWHERE
            generation = view.generation + 1
        info = lease.owner_info(self.job, self.world_size, self.expiry_s)
        if not lease.try_create(folder, generation, info):
            return ELSEWHERE  # another job claimed it this instant: it is alive
        if view.generation is not None:
            log.warning(
                "unit %s: taking it over from %s: %s", unit.uid, lease.describe_owner(view.info), view.stale_reason()
            )
        return generation

    def finish(self, uid: str) -> None:
        """Mark a unit done whose remaining work turned out empty (everything was done or settled)."""
        lease.write_done(unit_dir(self.output_dir, uid), {"job": self.job, "time": time.time(), "empty": True})
        self.keeper.drop(uid)

    def settle(self) -> None:
        """At the end of the job (after every rank's writes): mark done what every rank finished."""
        for uid, generation in self.claimed:
            try:
                settle_if_finished(self.output_dir, uid, generation, self.world_size)
            except OSError as err:
                log.debug("could not settle unit %s: %s", uid, err)

    def release(self) -> None:
        """Stop heartbeats; unfinished leases expire at once (another job continues them)."""
        self.keeper.release_all()
