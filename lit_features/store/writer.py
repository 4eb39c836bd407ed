"""The feature writer: a ``BasePredictionWriter`` that persists each sample atomically from a background thread.

A sample is done exactly when its file was renamed into place *and* its index row appended (both durable).
Each rank writes its own files and its own ``index/rank-<r>.jsonl`` / ``failures/rank-<r>.jsonl``; rank 0 merges
the small index files after a barrier at the end.

Start-up, before any model loads (Lightning runs callbacks' ``setup`` before ``configure_model``): rank 0
refuses what would make the store silently wrong (another configuration or other weights, two keys on one
file, a stored key from another input), takes the store's lock for the whole job, checks that every done
row's file is still there with its size, and cleans what a killed job left. Every rank then learns which keys
are settled, so the DataModule drops them before the sampler shards the rest.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_features.errors import UserError
from lit_features.interfaces import WorkItem, run_samples, run_units
from lit_features.records import Failure, PredictionOutput
from lit_features.store import layout, run_summary
from lit_features.store.codecs import EXTENSIONS
from lit_features.store.exports import export_entries_jsonl, export_run_manifest
from lit_features.store.host_copy import copy_to_host
from lit_features.store.lock import StoreLock, StoreNotWritableError
from lit_features.store.merge import merge_store_logs
from lit_features.store.opening import open_stores, store_states
from lit_features.store.poison import note_worker_death
from lit_features.store.resume import adoptable_rows
from lit_features.store.sample_writer import SampleWriter, StoreWriteError
from lit_features.store.shared import StoreNotSharedError, check_shared_store
from lit_features.store.state import StoreMismatchError, StoreState
from lit_features.store.vfm_report import report_models

__all__ = [
    "FeatureWriter",
    "StoreMismatchError",
    "StoreNotSharedError",
    "StoreRefusedError",
    "StoreWriteError",
    "check_shared_store",
]

log = logging.getLogger(__name__)


class StoreRefusedError(UserError, RuntimeError):
    """Rank 0 refused to open the store; the other ranks stop with its message."""


class FeatureWriter(BasePredictionWriter):
    """Writes every sample of ``trainer.predict`` to a resumable feature store.

    Args:
        output_dir: the store's folder.
        codec: ``safetensors`` (default), ``pt`` (a ``torch.save`` dict), ``pt_bare`` (one bare tensor per
            file; use ``{name}`` in the template), ``npz`` or ``npz_compressed``.
        path_template: file path of a sample inside ``output_dir`` (see :func:`layout.resolve_sample_path`):
            placeholders ``{key}``, ``{shard}``, ``{stem}``, ``{name}``, ``{ext}``; a template starting with
            ``{source_dir}`` writes beside the source media instead. A template that gives two samples one file
            is refused at start.
        overwrite: replace a store made with a different configuration instead of refusing.
        accept_weights: the configured weights made this store's features although their identity differs
            from the recorded one (e.g. a store from lit_features before weights were identified by content):
            record the new identity and resume. Everything else in the configuration must match.
        retry_failed: try samples recorded as failed by an earlier run again (write errors and out-of-memory
            failures are always retried).
        max_attempts: a sample whose DataLoader worker died on it this many times while the job went on is
            recorded as ``RepeatedWorkerCrash`` and not scheduled again, also with ``retry_failed`` (raise it
            to try once more). Interrupting or killing the job does not count.
        queue_size: batches waiting for the writer thread before the model waits for the disk.
        fsync: make sample files, their renames and the index appends durable before a sample counts as
            written (a power loss then never loses an acknowledged sample).
        skip_existing: also count a sample as done when its file is already at its destination and reads as
            complete (headers checked, so a file cut short is redone), and record it in the index as adopted.
            For files made outside this store, e.g. by an earlier tool writing beside the sources. Ignored
            with ``overwrite``; needs a ``path_template`` without ``{name}``.
        export_manifest: at the end, also write this JSON (relative paths: inside ``output_dir``): an object
            mapping every sample key to its manifest entry with the absolute paths of its feature files added
            (entries that have no features yet are kept unchanged).
        export_fields: entry field for each tensor name's file, e.g. ``{hidden_states: hidden_states_path}``;
            only the listed names are added. Default: ``<name>_path`` per tensor file with a ``{name}``
            template, else ``feature_path``.
        export_done_only: leave entries without features (failed, or not processed yet) out of
            ``export_manifest`` and list them, with the reason recorded for each, in ``<name>.missing.json``
            beside it, so a consumer never meets an entry without its feature paths.
        embed_meta: also store each sample's metadata inside its file (the index always has it); turn off for
            consumers that expect tensors only (e.g. MindSpeed-MM's ``.pt`` feature dicts).
        export_jsonl: at the end, write this JSON Lines file in each store folder: one row per stored sample,
            its manifest entry (the ``entry`` of its index metadata) plus ``file`` (its path relative to the
            store), the ``data.jsonl`` form MindSpeed-MM's feature dataset reads.
    """

    def __init__(
        self,
        output_dir: str,
        codec: Literal["safetensors", "pt", "pt_bare", "npz", "npz_compressed"] = "safetensors",
        path_template: str = "{shard}/{key}{ext}",
        overwrite: bool = False,
        accept_weights: bool = False,
        retry_failed: bool = False,
        max_attempts: int = 3,
        queue_size: int = 8,
        fsync: bool = True,
        skip_existing: bool = False,
        export_manifest: str | None = None,
        export_fields: dict[str, str] | None = None,
        export_done_only: bool = False,
        embed_meta: bool = True,
        export_jsonl: str | None = None,
    ):
        super().__init__(write_interval="batch")
        if skip_existing and "{name}" in path_template:
            raise ValueError("writer.skip_existing needs a path_template without {name} (one file per sample)")
        self.output_dir = Path(output_dir)
        self.codec = codec
        self.path_template = path_template
        self.overwrite = overwrite
        self.accept_weights = accept_weights
        self.retry_failed = retry_failed
        self.max_attempts = max_attempts
        self.queue_size = queue_size
        self.fsync = fsync
        self.skip_existing = skip_existing
        self.export_manifest = export_manifest
        self.export_fields = export_fields
        self.export_done_only = export_done_only
        self.embed_meta = embed_meta
        if export_jsonl is not None and (Path(export_jsonl).is_absolute() or ".." in Path(export_jsonl).parts):
            raise ValueError(f"export_jsonl must be a file name inside the output directory, got {export_jsonl!r}")
        self.export_jsonl = export_jsonl
        self.stores: dict[str, StoreState] = {}
        self.rank = 0
        self.world_size = 1
        self.read_only: str | None = None  # why the store cannot be written, when it cannot
        self.skipped = 0
        self.summary: dict[str, Any] = {}
        self._lock: StoreLock | None = None
        self._writer: SampleWriter | None = None
        self._by_key: dict[str, WorkItem] = {}
        self._plan: tuple[Sequence[WorkItem], set[str]] | None = None
        self._started = 0.0
        self._set_up = False
        self._finished = False
        self._crashed = False
        self.run_summary: dict[str, Any] = {}  # over all ranks, on rank 0 at the end of a run
        self.units: Any = None  # a units.writing.UnitWriting when the DataModule works in units

    def units_root(self) -> Path:
        """Where a DataModule working in units keeps the unit list (``<output_dir>/units``'s parent)."""
        return self.output_dir

    def claim_unit(self) -> Any:
        """Rank 0, working in units: the next claimed unit with work left (see :meth:`UnitJob.claim`)."""
        job = getattr(self.units, "unit_job", None)
        if job is None:
            raise RuntimeError("the feature writer has not opened the store in units on this rank")
        return job.claim()

    # -- set-up ------------------------------------------------------------------------------------------------
    @property
    def ext(self) -> str:
        return EXTENSIONS[self.codec]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        self.rank, self.world_size = trainer.global_rank, trainer.world_size
        self.stores = store_states(self.output_dir, pl_module, self.codec, self.path_template)
        unit_list = run_units(trainer)
        if unit_list is not None:
            self._setup_units(trainer, unit_list)
            return
        self.units = None
        samples = run_samples(trainer)  # read and validated by the DataModule's setup
        self._by_key = {s.key: s for s in samples} if samples else {}
        self.read_only, self._plan = None, None
        invalid: dict[str, list[str]] = {}
        failure: BaseException | None = None
        if self.rank == 0:
            try:
                invalid = self._open_on_rank_zero(samples)
            except BaseException as err:  # told to the other ranks, then raised here
                failure = err
        if self.world_size > 1:
            verdict = None if failure is None else (str(failure), isinstance(failure, UserError))
            verdict, invalid, self.read_only = trainer.strategy.broadcast((verdict, invalid, self.read_only), 0)
            if failure is None and verdict is not None:
                raise (StoreRefusedError if verdict[1] else RuntimeError)(verdict[0])
        if failure is not None:
            self._release_lock()
            raise failure
        if self.read_only is None:
            trainer.strategy.barrier("lit_features_store_ready")
            check_shared_store(trainer, next(iter(self.stores.values())).root)
        if self.rank != 0:
            for name, store in self.stores.items():
                store.load(rows=False)
                store.forget(invalid.get(name, ()))
        if self.read_only is None:
            self._writer = SampleWriter(
                self.stores, self.codec, self.path_template, self.rank, self._input_identity,
                self.fsync, self.embed_meta, self.queue_size,
            )  # fmt: skip
        if samples is not None:
            self.skip_keys(samples)
        self._started = time.monotonic()
        self._set_up, self._finished, self._crashed = True, False, False
        self.run_summary = {}

    def _setup_units(self, trainer: pl.Trainer, unit_list: Any) -> None:
        from lit_features.units.writing import UnitWriting  # units build on the store package: import late

        data = trainer.datamodule
        self.units = UnitWriting(self.output_dir, self.stores, unit_list, self.rank, self.world_size)
        self.read_only, self._plan, self.skipped = None, None, 0
        self._writer = self.units.open(trainer, self, data.lease_expiry_s, data.wait_for_units)
        self._started = time.monotonic()
        self._set_up, self._finished, self._crashed = True, False, False
        self.run_summary = {}

    def _open_on_rank_zero(self, samples: Sequence[WorkItem] | None) -> dict[str, list[str]]:
        """Refuse, lock, verify and prepare (see :func:`open_stores`); returns the keys whose rows lie."""
        from lit_features.units.job import refuse_old_layout  # units build on the store package: import late

        refuse_old_layout(self.stores, units_given=False)
        opened = open_stores(
            self.output_dir, self.stores, self.path_template, self.codec, samples, self.overwrite, self.accept_weights
        )
        self._lock, self.read_only = opened.lock, opened.read_only
        if self.read_only is None:
            run_summary.clear_rank_summaries(self._first_root())  # per-rank summaries of this run only
        return opened.invalid

    def _input_identity(self, key: str) -> dict[str, Any] | None:
        sample = self._by_key.get(key)
        return sample.identity() if sample is not None else None

    def _first_root(self) -> Path:
        """The store that keeps the run's own files (summaries, attempt logs) when a run writes several."""
        return next(iter(self.stores.values())).root

    def skip_keys(self, samples: Sequence[WorkItem] | None = None) -> set[str]:
        """Keys the DataModule must not schedule: settled in every store (see :meth:`StoreState.settled`).

        Args:
            samples: the run's samples (objects with ``key`` and ``source``); with ``skip_existing``, those
                whose destination file already holds a complete sample are adopted as done.

        Raises:
            StoreNotWritableError: the store is read-only and some of ``samples`` are not in it.
        """
        if self._plan is not None and (samples is None or samples is self._plan[0]):
            return self._plan[1]
        samples = list(samples or [])
        by_key = {s.key: s for s in samples}
        sets = []
        for name, store in self.stores.items():
            skip, poisoned = store.settled(by_key, self.retry_failed, self.max_attempts)
            if self.rank == 0 and self._writer is not None:
                self._record_poisoned(name, store, poisoned)
            if self.skip_existing and not self.overwrite and samples:
                skip |= self._adopt_existing(name, store, [s for s in samples if s.key not in skip])
            sets.append(skip)
        skip = set.intersection(*sets) if sets else set()
        self.skipped = sum(1 for s in samples if s.key in skip)
        if self.read_only is not None and self.skipped < len(samples):
            todo = [s.key for s in samples if s.key not in skip]
            raise StoreNotWritableError(
                f"{self.read_only}, and {len(todo)} of {len(samples)} samples are not in it yet (e.g. {todo[0]!r}). "
                "Make it writable, or write to another --writer.output_dir."
            )
        self._plan = (samples, skip)
        return skip

    def _record_poisoned(self, name: str, store: StoreState, poisoned: dict[str, int]) -> None:
        assert self._writer is not None
        rows = []
        for key, n in sorted(poisoned.items()):
            if store.failures.get(key, {}).get("error") == "RepeatedWorkerCrash":
                continue
            source = getattr(self._by_key.get(key), "source", None)
            failure = Failure(key, source, "decode", "RepeatedWorkerCrash", f"its worker died {n} times on it")
            rows.append(self._writer.failure_row(failure))
            store.failures[key] = rows[-1]
        self._writer.append_rows(name, rows, failures=True)

    def _adopt_existing(self, name: str, store: StoreState, samples: Sequence[WorkItem]) -> set[str]:
        """Keys of ``samples`` whose file is already complete at its destination; rank 0 indexes them."""
        rows = adoptable_rows(store.root, self.path_template, self.codec, samples)
        keys = {r["key"] for r in rows}
        store.done.update((k, None) for k in keys)
        if rows and self.rank == 0 and self._writer is not None:  # every rank finds the same files; one records
            self._writer.append_rows(name, rows)
            log.info("%s: %d samples already at their destination counted as done", store.root, len(rows))
        return keys

    def progress(self) -> dict[str, Any]:
        """This rank's counts so far, cheap to read while the run goes on (live dashboards poll it).

        ``written`` / ``failed`` / ``skipped`` samples (``skipped``: already settled, the same on every rank),
        seconds spent decoding, transforming, in the model and writing, and ``queue_depth``: batches waiting for
        the writer thread.
        """
        writer = self._writer
        counts, timing = (writer.counts, writer.timing) if writer is not None else ({}, {})
        return {
            "written": counts.get("written", 0),
            "failed": counts.get("failed", 0),
            "write_failed": counts.get("write_failed", 0),
            "skipped": self.skipped,
            "seconds_decode": timing.get("decode_s", 0.0),
            "seconds_transform": timing.get("transform_s", 0.0),
            "seconds_model": timing.get("model_s", 0.0),
            "seconds_writing": writer.seconds_writing if writer is not None else 0.0,
            "queue_depth": writer.queue_depth if writer is not None else 0,
        }

    def attempt_log_path(self) -> str | None:
        """Where this rank's DataLoader workers log the samples they start and finish."""
        first = next(iter(self.stores.values()), None)
        if first is None or self.read_only is not None:
            return None
        if self.units is not None:
            return self.units.attempt_log()
        return str(layout.rank_file(first.root, layout.ATTEMPTS_DIR, self.rank))

    # -- writing -------------------------------------------------------------------------------------------------
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        copied = None
        if prediction is not None:
            if not isinstance(prediction, PredictionOutput):
                raise TypeError(f"predict_step must return a PredictionOutput, got {type(prediction).__name__}")
            copied = copy_to_host(prediction.records)  # the thread waits for the copies, not this one
            assert self._writer is not None
            self._writer.timing["model_s"] += prediction.model_seconds
            self._writer.timing["decode_s"] += prediction.decode_seconds
            self._writer.timing["transform_s"] += prediction.transform_seconds
        if self.units is not None:
            assert self._writer is not None
            routes, ends = self.units.note_batch(batch)
            self._writer.put(prediction or PredictionOutput([], []), routes, ends, copied)
        elif prediction is not None:
            self._writer.put(prediction, copied=copied)
        if getattr(trainer, "received_sigterm", False):
            # Lightning notes SIGTERM but its predict loop runs on: stop here (what is queued gets written).
            log.warning("SIGTERM received: stopping; finished samples are kept and a rerun does the rest")
            raise SystemExit(128 + signal.SIGTERM)

    # -- end of run ----------------------------------------------------------------------------------------------
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Drain the writer, then (after a barrier) let rank 0 merge the per-rank logs and write the reports."""
        self._finished = True
        if self.read_only is not None:
            log.info(
                "feature store %s: read-only, nothing to do (%d samples already in it)", self.output_dir, self.skipped
            )
            return
        assert self._writer is not None
        self._writer.close()
        self._writer.raise_if_failed()
        try:
            if self.units is None:
                run = self._merge(trainer)
            else:
                elapsed = time.monotonic() - self._started
                self.summary = run_summary.rank_summary(self._writer, self.rank, self.skipped, elapsed)
                run = self.units.finish(trainer, self.summary)
            if self.rank == 0 and not run["write_failed"]:
                report_models(self.output_dir, pl_module, trainer.datamodule)  # for extractors that ask
        except OSError as err:
            self._release_lock()
            raise StoreWriteError(
                f"finishing the feature store {self.output_dir} failed: {err}; rerun to finish"
            ) from err
        self._release_lock()
        if run["write_failed"]:
            first = next((f for f in run["failures"] if f.get("stage") == "write"), {})
            raise StoreWriteError(
                f"{run['write_failed']} samples could not be written to {self.output_dir} (e.g. {first.get('key')!r}: "
                f"{first.get('message')}). They are recorded as failed and the next run retries them: free space "
                "or fix the filesystem, then rerun."
            )

    def _merge(self, trainer: pl.Trainer) -> dict[str, Any]:
        """Every rank records its summary; after a barrier all reduce them, and rank 0 merges and exports."""
        assert self._writer is not None
        first = self._first_root()
        self.summary = run_summary.rank_summary(self._writer, self.rank, self.skipped, time.monotonic() - self._started)
        run_summary.write_rank_summary(first, self.summary)
        trainer.strategy.barrier("lit_features_store_merge")
        run = run_summary.reduce_run_summaries(first)  # every rank: all must fail alike when some writes failed
        if self.rank == 0:
            for store in self.stores.values():
                merge_store_logs(store.root)
            if self.export_jsonl:
                for store in self.stores.values():
                    export_entries_jsonl(store.root, self.export_jsonl)
            run_summary.write_run_summary(first, run)
            run_summary.log_run_summary(trainer, run)
            self.run_summary = run  # the run's last log line says it (lit_features.predict_report)
            log.debug(
                "feature store %s: written %d, failed %d, skipped %d (already done), %.2f samples/s",
                self.output_dir, run["written"], run["failed"], run["skipped"], run["samples_per_s"],
            )  # fmt: skip
            if self.export_manifest:
                export_run_manifest(
                    self.output_dir, run_samples(trainer), self.export_manifest, self.path_template,
                    self.export_fields, self.export_done_only,
                )  # fmt: skip
        return run

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._crashed = True
        if self._writer is not None:
            self._writer.close()  # persist what was already computed before the run goes down
        self._note_worker_death(trainer, exception)
        if self.units is not None:
            self.units.stop()
        self._release_lock()

    def _note_worker_death(self, trainer: pl.Trainer, exception: BaseException) -> None:
        """Count a crash for the samples a dead DataLoader worker was preparing, if the job itself was not stopped."""
        attempts = self.attempt_log_path()
        if attempts is not None:
            stopping = bool(getattr(trainer, "received_sigterm", False))  # Lightning's SIGTERM flag
            logs = self.units.crash_logs() if self.units is not None else None
            note_worker_death(
                exception, Path(attempts), list(self.stores.values()), stopping, self.rank, self.max_attempts, logs
            )

    def _release_lock(self) -> None:
        if self.units is not None:
            self.units.release_lock()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if self._set_up and not self._finished and not self._crashed:
            # Lightning skips the predict loop (and on_predict_end) when nothing is left to do: still merge
            # and report (the inputs may differ from the last run's).
            self._finish(trainer, pl_module)
        elif self._writer is not None:
            self._writer.close()
        self._release_lock()
