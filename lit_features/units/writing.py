"""The feature writer's work-unit mode: open the store for a job among others, route rows, settle units.

Called by :class:`~lit_features.store.writer.FeatureWriter` when the DataModule works in units. Every rank
writes its sample files as always; its rows go to the claim folder of the sample's unit
(``units/<uid>/g<g>/index/rank-<r>.jsonl``); once the batch that closes its share of a unit is durable it
marks that share finished, and whoever sees every rank's share finished marks the unit done. Per-job files
(attempt logs, temporary files, run summaries, the shared-store token) live under ``units/jobs/<job>/`` and
``.tmp/<job>-rank-<r>/``, so jobs never share a file. There is no merge at the end.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lit_features.errors import UserError
from lit_features.store import layout, run_summary
from lit_features.store.lock import StoreLock
from lit_features.store.sample_writer import SampleWriter
from lit_features.store.shared import check_shared_store
from lit_features.store.state import StoreState
from lit_features.units.claims import UnitClaimer, mark_rank_finished, new_job_id
from lit_features.units.job import UnitJob, UnitRefusedError, check_unit_options, refuse_old_layout
from lit_features.units.unit_list import UNITS_DIR, UnitList, claim_dir

log = logging.getLogger(__name__)

JOBS_DIR = "jobs"


def job_dir(output_dir: Path, job: str) -> Path:
    return Path(output_dir) / UNITS_DIR / JOBS_DIR / job


def broadcast_verdict(trainer: pl.Trainer, failure: BaseException | None, value: Any) -> Any:
    """Send rank 0's ``value`` (or its failure) to every rank; every rank raises rank 0's failure."""
    if trainer.world_size > 1:
        verdict = None if failure is None else (str(failure), isinstance(failure, UserError))
        verdict, value = trainer.strategy.broadcast((verdict, value), 0)
        if failure is None and verdict is not None:
            raise (UnitRefusedError if verdict[1] else RuntimeError)(verdict[0])
    if failure is not None:
        raise failure
    return value


class UnitWriting:
    """One rank's unit-mode state inside the feature writer."""

    def __init__(self, output_dir: Path, stores: dict[str, StoreState], units: UnitList, rank: int, world_size: int):
        self.output_dir = output_dir
        self.stores = stores
        self.units = units
        self.rank = rank
        self.world_size = world_size
        self.job = ""
        self.lock: StoreLock | None = None
        self.unit_job: UnitJob | None = None
        self.identities: dict[str, Any] = {}
        self.in_flight: set[tuple[str, int]] = set()

    def open(self, trainer: pl.Trainer, writer: Any, expiry_s: float, wait: bool) -> SampleWriter:
        """Refuse, lock (shared), record the fingerprint (rank 0); agree on the job's id; make the rank's writer."""
        failure: BaseException | None = None
        job = None
        if self.rank == 0:
            try:
                exports = [writer.export_manifest, writer.export_jsonl]
                check_unit_options(writer.path_template, writer.overwrite, exports, writer.skip_existing)
                for store in self.stores.values():
                    store.check(False, writer.accept_weights)
                refuse_old_layout(self.stores, units_given=True)
                self.lock = StoreLock(self.output_dir)
                self.lock.acquire(shared=True)
                for store in self.stores.values():
                    store.record_meta()
                job = new_job_id()
            except BaseException as err:  # told to the other ranks, then raised here
                failure = err
                self.release_lock()
        self.job = broadcast_verdict(trainer, failure, job)
        folder = job_dir(self.output_dir, self.job)
        folder.mkdir(parents=True, exist_ok=True)
        check_shared_store(trainer, self.output_dir, marker=folder / layout.RUN_TOKEN)
        if self.rank == 0:
            claimer = UnitClaimer(self.output_dir, self.units, self.job, self.world_size, expiry_s, wait)
            self.unit_job = UnitJob(
                self.output_dir, self.stores, self.units, claimer, writer.retry_failed, writer.max_attempts
            )
            log.info("job %s: working in units of %s (%d units)", self.job, self.output_dir, len(self.units))
        return SampleWriter(
            self.stores, writer.codec, writer.path_template, self.rank, self.identity,
            writer.fsync, writer.embed_meta, writer.queue_size,
            log_dir=lambda root, claim: claim_dir(root, *claim),
            on_route_end=self.share_written,
            tmp_name=f"{self.job}-rank-{self.rank}",
        )  # fmt: skip

    def identity(self, key: str) -> dict[str, Any] | None:
        return self.identities.pop(key, None)

    def note_batch(self, batch: Any) -> tuple[dict[str, Any], list[Any]]:
        """Remember the batch's input identities and claims; the routes and ends for the sample writer."""
        self.identities.update(getattr(batch, "identities", {}))
        routes = getattr(batch, "units", {})
        ends = getattr(batch, "unit_ends", [])
        self.in_flight.update(routes.values())
        self.in_flight.difference_update(ends)
        return routes, ends

    def share_written(self, claim: tuple[str, int]) -> None:
        """On the writer thread: this rank's share of a unit is durable."""
        uid, generation = claim
        if mark_rank_finished(self.output_dir, uid, generation, self.rank, self.world_size):
            log.debug("unit %s done", uid)

    def attempt_log(self) -> str:
        return str(job_dir(self.output_dir, self.job) / layout.ATTEMPTS_DIR / f"rank-{self.rank}.jsonl")

    def crash_logs(self) -> list[Path]:
        """Crash logs of the claims this rank was working on (a dead worker's samples belong to one of them)."""
        return [
            layout.rank_file(claim_dir(store.root, *claim), layout.CRASHES_DIR, self.rank)
            for store in self.stores.values()
            for claim in sorted(self.in_flight)
        ]

    def finish(self, trainer: pl.Trainer, counts: dict[str, Any]) -> dict[str, Any]:
        """After every rank's writes: settle this job's units, sum up the job (no merge)."""
        folder = job_dir(self.output_dir, self.job)
        run_summary.write_rank_summary(folder, counts)
        trainer.strategy.barrier("lit_features_units_finished")
        run = run_summary.reduce_run_summaries(folder)
        if self.rank == 0:
            assert self.unit_job is not None
            self.unit_job.claimer.settle()
            self.unit_job.claimer.release()
            run["job"] = self.job
            run["units_claimed"] = len(self.unit_job.claimer.claimed)
            run["redone"] = self.unit_job.redone
            run["skipped"] = self.unit_job.skipped
            run_summary.write_run_summary(folder, run)
            run_summary.write_run_summary(self.output_dir, run)  # the latest job's, where it always was
            run_summary.log_run_summary(trainer, run)
        shutil.rmtree(self.output_dir / layout.TMP_DIR / f"{self.job}-rank-{self.rank}", ignore_errors=True)
        return run

    def stop(self) -> None:
        """The job is going down: leases of unfinished units expire at once, so other jobs continue them."""
        if self.unit_job is not None:
            self.unit_job.claimer.release()
        self.release_lock()

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
