"""Live extraction metrics: every few seconds, each rank's progress, throughput, stage times, queue and ETA.

Each rank writes its counts (read from the feature writer: :meth:`FeatureWriter.progress`) to its own small
snapshot file in the store (:mod:`lit_features.dashboards.progress`); rank 0 reads every rank's snapshot and
the new rows of the per-rank failure logs and logs them as one step. Nothing runs inside ``predict_step`` and
nothing waits for another rank: ranks that run different numbers of batches never block each other, a rank
that stalls shows as a snapshot that stops getting younger (``snapshot_age_s``), and what a run that dies
early had logged stays in the logger's files.

Logged (W&B sections by the part before ``/``): ``job/*`` for the whole job (written, failed, skipped, to do,
done fraction, samples/s, ETA, ranks reporting, elapsed seconds: the x axis), ``<metric>/rank<r>`` per rank
(``samples_per_s``, ``written``, ``failed``, ``eta_s``, ``queue_depth``, ``seconds_decode``,
``seconds_transform``, ``seconds_model``, ``seconds_writing``, ``snapshot_age_s``), ``samples_per_s/node<n>``
per node on several nodes, and ``job/failures``: a table (key, source, stage, error, message, rank, preview)
that grows as failures happen; ``preview`` is a thumbnail of the failing sample's frame when one was decoded,
stored with the run.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DistributedSampler

from lit_features.dashboards import progress
from lit_features.dashboards.sink import Sink, image, wandb_runs
from lit_features.store.writer import FeatureWriter

log = logging.getLogger(__name__)

RANK_METRICS = (
    "samples_per_s", "written", "failed", "eta_s", "queue_depth",
    "seconds_decode", "seconds_transform", "seconds_model", "seconds_writing", "snapshot_age_s",
)  # fmt: skip
FAILURE_COLUMNS = ["key", "source", "stage", "error", "message", "rank", "preview"]


def feature_writer(trainer: pl.Trainer) -> FeatureWriter | None:
    """The callback that writes the store and reports its progress (:meth:`FeatureWriter.progress`), if any."""
    return next((c for c in trainer.callbacks if isinstance(c, FeatureWriter)), None)


def rank_share(trainer: pl.Trainer) -> int:
    """How many samples this rank was dealt (its sampler's length; the whole dataset on one rank)."""
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    batches = getattr(loader, "batch_sampler", None)
    samplers = [getattr(loader, "sampler", None), getattr(batches, "sampler", None)]
    samplers.append(getattr(getattr(batches, "_batch_sampler", None), "sampler", None))  # Lightning's index wrapper
    # A distributed sampler holds this rank's share; Lightning may present a plain one over the whole dataset.
    for sampler in sorted((s for s in samplers if s is not None), key=lambda s: not isinstance(s, DistributedSampler)):
        try:
            return len(sampler)
        except TypeError:
            continue
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if dataset is not None else 0


def job_metrics(snapshots: dict[int, dict[str, Any]], now: float, skipped: int) -> dict[str, float]:
    """The metrics of one tick from every rank's latest snapshot (``now``: wall-clock seconds).

    A rank's ETA is what it has left over its own rate so far; the job's is the slowest rank's, since the job
    ends when its last rank does (ranks were dealt different amounts of work).
    """
    metrics: dict[str, float] = {}
    etas, nodes = [], {}
    for rank, s in snapshots.items():
        elapsed = max(float(s["elapsed_s"]), 1e-9)
        done = s["written"] + s["failed"]
        rate = done / elapsed
        per_rank = {
            "samples_per_s": s["written"] / elapsed,
            "written": s["written"],
            "failed": s["failed"],
            "queue_depth": s["queue_depth"],
            "snapshot_age_s": max(0.0, now - float(s["time"])),
            **{k: s[k] for k in ("seconds_decode", "seconds_transform", "seconds_model", "seconds_writing")},
        }
        left = max(0, s["to_do"] - done)
        if left == 0:
            per_rank["eta_s"] = 0.0
        elif rate > 0:
            per_rank["eta_s"] = left / rate
        etas.append(per_rank.get("eta_s"))
        metrics.update({f"{name}/rank{rank}": float(value) for name, value in per_rank.items()})
        nodes[s["node_rank"]] = nodes.get(s["node_rank"], 0.0) + per_rank["samples_per_s"]
    written = sum(s["written"] for s in snapshots.values())
    failed = sum(s["failed"] for s in snapshots.values())
    to_do = sum(s["to_do"] for s in snapshots.values())
    metrics.update(
        {
            "job/written": float(written),
            "job/failed": float(failed),
            "job/skipped": float(skipped),
            "job/to_do": float(to_do),
            "job/done_fraction": (written + failed) / to_do if to_do else 1.0,
            "job/samples_per_s": sum(metrics[f"samples_per_s/rank{r}"] for r in snapshots),
            "job/ranks_reporting": float(len(snapshots)),
        }
    )
    if etas and all(e is not None for e in etas):
        metrics["job/eta_s"] = float(max(etas))  # type: ignore[type-var]
    if len(nodes) > 1:
        metrics.update({f"samples_per_s/node{n}": rate for n, rate in sorted(nodes.items())})
    return metrics


class LiveExtractionMetrics(Callback):
    """Logs a predict run's progress while it runs (see the module docstring), every ``interval_s`` seconds.

    Added by the trainer when a logger is configured; list it under ``trainer.callbacks`` to change its
    settings. Does nothing without a logger, outside ``predict``, or without a feature writer.

    Args:
        interval_s: seconds between two snapshots of a rank (and two logged steps); each rank checks the clock
            when a batch ends.
        failures_table: log the growing failures table (W&B only).
        max_failure_rows: rows the table takes at most (``failures.jsonl`` in the store lists them all).
        previews: attach a thumbnail of the failing frame where one was decoded.
    """

    def __init__(
        self,
        interval_s: float = 30.0,
        failures_table: bool = True,
        max_failure_rows: int = 10000,
        previews: bool = True,
    ):
        self.interval_s = interval_s
        self.failures_table = failures_table
        self.max_failure_rows = max_failure_rows
        self.previews = previews
        self._active = False
        self._root: Path | None = None
        self._writer: Any = None

    # -- every rank -------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = False
        if stage != "predict" or not trainer.loggers:
            return
        self._writer = feature_writer(trainer)
        if self._writer is None:
            return
        self._root = Path(self._writer.output_dir)
        self._since = time.time()
        # A folder of its own per run (named by rank 0): jobs working in units share the store at the same time.
        run = trainer.strategy.broadcast(uuid.uuid4().hex[:12] if trainer.is_global_zero else None)
        self._live = progress.live_dir(self._root, run)
        if trainer.is_global_zero:  # before the writer's set-up, whose barrier the other ranks wait at
            progress.clear(self._root)
            wandb_runs(trainer.loggers)  # start W&B now (seconds), not inside the run's timed predict
        self._active = True

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._started = time.monotonic()
        self._share = rank_share(trainer)
        self._identity = {
            "rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "local_rank": trainer.local_rank,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self._next = self._started + self.interval_s
        if trainer.is_global_zero:
            self._sink = Sink(trainer.loggers, "job/elapsed_s")
            units = getattr(self._writer, "units", None)  # in units, this job's claims hold its failure logs
            self._failures = progress.FailureTail(self._root, self._since, getattr(units, "job", None) or None)
            self._table_rows = 0
            self._hosts: dict[int, str] = {}
        self._tick(trainer)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active:
            return
        if self.previews:
            for failure in getattr(outputs, "failures", None) or []:
                if getattr(failure, "preview", None) is not None:
                    try:  # before the writer sees the batch: its failure row never precedes the preview
                        progress.write_preview(self._live, failure.key, failure.preview)
                    except OSError as err:
                        log.debug("no preview for %s: %s", failure.key, err)
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            self._tick(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._active and hasattr(self, "_started"):
            self._tick(trainer, state="crashed")  # what the dashboard shows of a run that died
            self._active = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # After the writer's on_predict_end: its queue is drained, so the counts are final.
        if stage == "predict" and self._active and hasattr(self, "_started"):
            self._tick(trainer, state="finished")
        self._active = False

    def _snapshot(self, state: str) -> dict[str, Any]:
        counts = self._writer.progress()
        return {
            **self._identity,
            "state": state,
            "time": time.time(),
            "elapsed_s": time.monotonic() - self._started,
            "to_do": self._share,
            **counts,
        }

    def _tick(self, trainer: pl.Trainer, state: str = "running") -> None:
        assert self._root is not None
        snapshot = self._snapshot(state)
        try:
            progress.write_snapshot(self._live, trainer.global_rank, snapshot)
        except OSError as err:  # e.g. a read-only store: the dashboard is not worth failing a run for
            log.debug("live snapshot not written: %s", err)
        if trainer.is_global_zero:
            self._log_job(trainer, snapshot, final=state != "running")

    # -- rank 0 ---------------------------------------------------------------------------------------------
    def _log_job(self, trainer: pl.Trainer, own: dict[str, Any], final: bool) -> None:
        assert self._root is not None
        snapshots = self._read_snapshots(own, trainer.world_size if final else 0)
        metrics = job_metrics(snapshots, time.time(), int(own.get("skipped", 0)))
        tables = {}
        if self.failures_table and self._sink.takes_tables:
            tables["job/failures"] = (FAILURE_COLUMNS, self._new_failure_rows())
        self._sink.log(metrics, own["elapsed_s"], tables)
        hosts = {r: s["host"] for r, s in snapshots.items()}
        if hosts != self._hosts:
            self._hosts = hosts
            self._sink.update_config({"ranks": {str(r): h for r, h in hosts.items()}})

    def _read_snapshots(self, own: dict[str, Any], wait_for: int) -> dict[int, dict[str, Any]]:
        """This run's snapshots (rank 0's: ``own``); at the end, wait up to 5 s until ``wait_for`` ranks have
        written their last one (the ranks end together; one that died or hangs is shown as it was)."""
        assert self._root is not None
        deadline = time.monotonic() + 5.0
        while True:
            snapshots = {r: s for r, s in progress.read_snapshots(self._live).items() if s["time"] >= self._since}
            snapshots[own["rank"]] = own
            settled = sum(1 for s in snapshots.values() if s["state"] != "running")
            if settled >= wait_for or time.monotonic() > deadline:
                return dict(sorted(snapshots.items()))
            time.sleep(0.1)

    def _new_failure_rows(self) -> list[list[Any]]:
        assert self._root is not None
        rows = []
        for row in self._failures.new_rows():
            if self._table_rows >= self.max_failure_rows:
                break
            preview = progress.read_preview(self._live, row["key"]) if self.previews else None
            rows.append(
                [
                    row.get("key"), row.get("source"), row.get("stage"), row.get("error"), row.get("message"),
                    row.get("rank"), image(preview, row["key"]) if preview is not None else None,
                ]
            )  # fmt: skip
            self._table_rows += 1
        return rows
