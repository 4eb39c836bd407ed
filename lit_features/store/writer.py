"""The feature writer: a ``BasePredictionWriter`` that persists each sample atomically from a background thread.

A sample is done exactly when its file was renamed into place *and* its index row appended. Each rank writes
its own files and its own ``index/rank-<r>.jsonl`` / ``failures/rank-<r>.jsonl``; rank 0 merges the small index
files after a barrier at the end. At start-up every rank reads the index files of all ranks to learn which
keys are done, so the DataModule can drop them before the sampler shards the rest.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_features import __version__
from lit_features.errors import UserError
from lit_features.records import Failure, FeatureRecord, PredictionOutput
from lit_features.store import layout
from lit_features.store.codecs import EXTENSIONS, encode, probe
from lit_features.store.fingerprint import describe_difference, fingerprint_hash

log = logging.getLogger(__name__)


class StoreMismatchError(UserError, RuntimeError):
    """The output directory holds features made with a different configuration."""


class _SubStore:
    """One feature set on disk (the output directory, or a named folder inside it)."""

    def __init__(self, root: Path, fingerprint: dict[str, Any], extras: dict[str, Any]):
        self.root = root
        self.fingerprint = fingerprint
        self.extras = extras
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.poisoned: dict[str, int] = {}

    # rank 0, before the barrier
    def check(self, overwrite: bool) -> None:
        meta_path = self.root / layout.STORE_JSON
        if not meta_path.exists() or overwrite:
            return
        stored = json.loads(meta_path.read_text())
        if stored.get("fingerprint_hash") != fingerprint_hash(self.fingerprint):
            raise StoreMismatchError(
                f"{self.root} holds features made with a different configuration:\n"
                f"{describe_difference(stored.get('fingerprint', {}), self.fingerprint)}\n"
                "Write to a new --writer.output_dir, or pass --writer.overwrite true to replace this store."
            )

    def prepare(self, overwrite: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if overwrite and (self.root / layout.STORE_JSON).exists():
            # Forget what was done: old sample files are replaced as they are rewritten.
            for folder in (layout.INDEX_DIR, layout.FAILURES_DIR, layout.ATTEMPTS_DIR):
                shutil.rmtree(self.root / folder, ignore_errors=True)
            for name in (layout.MERGED_INDEX, layout.MERGED_FAILURES, layout.STORE_JSON):
                (self.root / name).unlink(missing_ok=True)
        for folder in (layout.INDEX_DIR, layout.FAILURES_DIR, layout.ATTEMPTS_DIR):
            (self.root / folder).mkdir(exist_ok=True)
            for path in layout.rank_files(self.root, folder):
                layout.repair_torn_tail(path)
        # Temporary files of a killed run never read as done; remove them.
        shutil.rmtree(self.root / layout.TMP_DIR, ignore_errors=True)
        if not (self.root / layout.STORE_JSON).exists():
            meta = {
                "format_version": layout.STORE_FORMAT_VERSION,
                "fingerprint_hash": fingerprint_hash(self.fingerprint),
                "fingerprint": self.fingerprint,
                "lit_features_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **self.extras,
            }
            layout.atomic_write_text(self.root / layout.STORE_JSON, json.dumps(meta, indent=2, default=str))

    # every rank, after the barrier
    def load_state(self, max_attempts: int) -> None:
        self.done = {
            r["key"] for p in layout.rank_files(self.root, layout.INDEX_DIR) for r in layout.read_jsonl_rows(p)
        }
        self.failed = {
            r["key"] for p in layout.rank_files(self.root, layout.FAILURES_DIR) for r in layout.read_jsonl_rows(p)
        } - self.done
        unfinished: Counter[str] = Counter()
        for path in layout.rank_files(self.root, layout.ATTEMPTS_DIR):
            for row in layout.read_jsonl_rows(path):
                unfinished[row["key"]] += 1 if row.get("event") == "start" else -1
        self.poisoned = {
            k: n for k, n in unfinished.items() if n >= max_attempts and k not in self.done and k not in self.failed
        }


class FeatureWriter(BasePredictionWriter):
    """Writes every sample of ``trainer.predict`` to a resumable feature store.

    Args:
        output_dir: the store's folder.
        codec: ``safetensors`` (default), ``pt`` (a ``torch.save`` dict), ``pt_bare`` (one bare tensor per
            file; use ``{name}`` in the template), ``npz`` or ``npz_compressed``.
        path_template: file path of a sample inside ``output_dir`` (see :func:`layout.resolve_sample_path`):
            placeholders ``{key}``, ``{shard}``, ``{stem}``, ``{name}``, ``{ext}``; a template starting with
            ``{source_dir}`` writes beside the source media instead.
        overwrite: replace a store made with a different configuration instead of refusing.
        retry_failed: try samples recorded as failed by an earlier run again.
        max_attempts: a sample whose decoding started this many times without finishing (the worker died)
            is recorded as failed instead of being retried forever.
        queue_size: batches waiting for the writer thread before the model waits for the disk.
        fsync: flush sample files to stable storage before renaming them into place.
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
        self.stores: dict[str, _SubStore] = {}
        self.rank = 0
        self.world_size = 1
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._index_fh: dict[str, Any] = {}
        self._failure_fh: dict[str, Any] = {}
        self.counts: Counter[str] = Counter()
        self.timing: Counter[str] = Counter()
        self.run_failures: list[dict[str, Any]] = []
        self.skipped = 0
        self.seconds_writing = 0.0
        self._started = 0.0
        self._finished = False
        self._crashed = False
        self.summary: dict[str, Any] = {}
        self.run_summary: dict[str, Any] = {}  # over all ranks, on rank 0 at the end of a run

    # -- set-up ------------------------------------------------------------------------------------------------
    def _store_root(self, name: str) -> Path:
        return self.output_dir / name if name else self.output_dir

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        self.rank, self.world_size = trainer.global_rank, trainer.world_size
        fingerprints = (
            pl_module.store_fingerprints()
            if hasattr(pl_module, "store_fingerprints")
            else {"": {"extractor": type(pl_module).__qualname__}}
        )
        extras = {
            "extractor": getattr(pl_module, "extractor_name", type(pl_module).__name__),
            "codec": self.codec,
            "path_template": self.path_template,
            "tiny_random_stand_in": bool(getattr(pl_module, "is_stand_in", False)),
        }
        writer_params = {"codec": self.codec}
        self.stores = {
            name: _SubStore(self._store_root(name), {**fp, "writer": writer_params}, extras)
            for name, fp in fingerprints.items()
        }
        for store in self.stores.values():
            store.check(self.overwrite)  # every rank: a mismatch stops all of them, none waits at the barrier
        if self.rank == 0:
            for store in self.stores.values():
                store.prepare(self.overwrite)
            shutil.rmtree(self._summary_dir(), ignore_errors=True)  # per-rank summaries of this run only
        trainer.strategy.barrier("lit_features_store_ready")
        check_shared_store(trainer, next(iter(self.stores.values())).root)
        for store in self.stores.values():
            store.load_state(self.max_attempts)
        self._open_rank_files()
        if self.rank == 0:
            self._record_poisoned()
        self.counts = Counter()
        self.timing = Counter()
        self.run_failures = []
        self.skipped = len(self.skip_keys())
        self._error = None
        self._queue = queue.Queue(maxsize=self.queue_size)
        self._thread = threading.Thread(target=self._drain, name="feature-writer", daemon=True)
        self._thread.start()
        self._started = time.monotonic()
        self._finished = False
        self._crashed = False
        self.run_summary = {}

    def _summary_dir(self) -> Path:
        first = next(iter(self.stores.values()))
        return first.root / "run_summary"

    def _open_rank_files(self) -> None:
        for name, store in self.stores.items():
            self._index_fh[name] = open(
                layout.rank_file(store.root, layout.INDEX_DIR, self.rank), "a", encoding="utf-8"
            )
            self._failure_fh[name] = open(
                layout.rank_file(store.root, layout.FAILURES_DIR, self.rank), "a", encoding="utf-8"
            )

    def _record_poisoned(self) -> None:
        for name, store in self.stores.items():
            for key, n in store.poisoned.items():
                failure = Failure(key, None, "decode", "RepeatedWorkerCrash", f"started {n} times without finishing")
                self._append(self._failure_fh[name], [self._failure_row(failure)])
                store.failed.add(key)
            store.poisoned = {}

    def skip_keys(self, samples: Sequence[Any] | None = None) -> set[str]:
        """Keys the DataModule must not schedule: done (and failed, unless ``retry_failed``) in every store.

        Args:
            samples: the run's samples (objects with ``key`` and ``source``); with ``skip_existing``, those
                whose destination file already holds a complete sample are adopted as done.
        """
        sets = []
        for name, store in self.stores.items():
            skip = set(store.done) | set(store.poisoned)
            if not self.retry_failed:
                skip |= store.failed
            if self.skip_existing and not self.overwrite and samples:
                skip |= self._adopt_existing(name, store, [s for s in samples if s.key not in skip])
            sets.append(skip)
        return set.intersection(*sets) if sets else set()

    def _adopt_existing(self, name: str, store: _SubStore, samples: Sequence[Any]) -> set[str]:
        """Keys of ``samples`` whose file is already complete at its destination; rank 0 indexes them."""
        ext = EXTENSIONS[self.codec]
        rows = []
        for sample in samples:
            path = layout.resolve_sample_path(store.root, self.path_template, sample.key, sample.source, ext)
            found = probe(path, self.codec)
            if found is None:
                continue
            inside = path.resolve().is_relative_to(store.root.resolve())
            rows.append(
                {
                    "key": sample.key,
                    "file": str(path.relative_to(store.root)) if inside else str(path),
                    "source": sample.source,
                    "shapes": {k: shape for k, (shape, _) in found.items()},
                    "dtypes": {k: dtype for k, (_, dtype) in found.items()},
                    "bytes": path.stat().st_size,
                    "meta": {},
                    "adopted": True,
                }
            )
        keys = {r["key"] for r in rows}
        store.done |= keys
        if rows and self.rank == 0:  # every rank finds the same files; one of them records them
            self._append(self._index_fh[name], rows)
            log.info("%s: %d samples already at their destination counted as done", store.root, len(rows))
        return keys

    def attempt_log_path(self) -> str | None:
        first = next(iter(self.stores.values()), None)
        return str(layout.rank_file(first.root, layout.ATTEMPTS_DIR, self.rank)) if first else None

    # -- writing
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
        self._raise_if_failed()
        if prediction is None:
            return
        if not isinstance(prediction, PredictionOutput):
            raise TypeError(f"predict_step must return a PredictionOutput, got {type(prediction).__name__}")
        self.timing["model_s"] += prediction.model_seconds
        self.timing["decode_s"] += prediction.decode_seconds
        self.timing["transform_s"] += prediction.transform_seconds
        for record in prediction.records:  # leave the device here so the thread only touches host memory
            record.tensors = {k: v.detach().to("cpu") for k, v in record.tensors.items()}
        assert self._queue is not None
        self._queue.put(prediction)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the feature writer failed: {self._error!r}") from self._error

    def _failure_row(self, failure: Failure) -> dict[str, Any]:
        return {**failure.as_row(), "rank": self.rank, "time": time.time()}

    def _append(self, fh: Any, rows: list[dict[str, Any]]) -> None:
        if rows:
            fh.write("".join(json.dumps(r, default=str) + "\n" for r in rows))
            fh.flush()

    def _write_record(self, record: FeatureRecord) -> dict[str, Any]:
        store = self.stores.get(record.store)
        if store is None:
            raise KeyError(f"record for unknown store {record.store!r}; known: {sorted(self.stores)}")
        ext = EXTENSIONS[self.codec]
        tmp_dir = store.root / layout.TMP_DIR / f"rank-{self.rank}"
        files, nbytes = [], 0
        if "{name}" in self.path_template:
            groups = [(name, {name: t}) for name, t in record.tensors.items()]
        else:
            groups = [("", record.tensors)]
        for name, tensors in groups:
            path = layout.resolve_sample_path(store.root, self.path_template, record.key, record.source, ext, name)
            data = encode(self.codec, tensors, record.meta if self.embed_meta else {})
            inside = path.resolve().is_relative_to(store.root.resolve())
            layout.atomic_write(path, data, tmp_dir if inside else None, self.fsync)
            files.append(str(path.relative_to(store.root)) if inside else str(path))
            nbytes += len(data)
        row = {
            "key": record.key,
            "file": files[0],
            "source": record.source,
            "shapes": {k: list(v.shape) for k, v in record.tensors.items()},
            "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in record.tensors.items()},
            "bytes": nbytes,
            "meta": record.meta,
        }
        if len(files) > 1:
            row["files"] = files
        return row

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # keep consuming so the producer never blocks on a dead writer
            try:
                started = time.monotonic()
                rows: dict[str, list] = {name: [] for name in self.stores}
                failures: dict[str, list] = {name: [] for name in self.stores}
                for record in item.records:
                    try:
                        rows[record.store].append(self._write_record(record))
                    except OSError as err:  # one unwritable sample is a failure record, not a lost run
                        fail = Failure(record.key, record.source, "write", type(err).__name__, str(err))
                        failures[record.store].append(self._failure_row(fail))
                for failure in item.failures:
                    for name in self.stores if failure.store is None else [failure.store]:
                        failures[name].append(self._failure_row(failure))
                for name in self.stores:
                    if len(self.run_failures) < 1000:  # a sample for the run summary, not the record
                        self.run_failures.extend(failures[name][: 1000 - len(self.run_failures)])
                for name in self.stores:
                    self._append(self._index_fh[name], rows[name])
                    self._append(self._failure_fh[name], failures[name])
                    self.stores[name].done.update(r["key"] for r in rows[name])
                self.counts["written"] += len(item.records)
                self.counts["failed"] += len(item.failures)
                self.seconds_writing += time.monotonic() - started
            except BaseException as err:  # surfaced on the main thread at the next batch and at the end
                self._error = err

    def _stop_thread(self) -> None:
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
        self._thread = None
        for fh in list(self._index_fh.values()) + list(self._failure_fh.values()):
            fh.close()
        self._index_fh, self._failure_fh = {}, {}

    # -- end of run
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)

    def _finish(self, trainer: pl.Trainer) -> None:
        """Drain the writer, then (after a barrier) let rank 0 merge the per-rank logs."""
        self._stop_thread()
        self._raise_if_failed()
        elapsed = time.monotonic() - self._started
        self.summary = {
            "rank": self.rank,
            "written": self.counts["written"],
            "failed": self.counts["failed"],
            "skipped": self.skipped,
            "seconds": elapsed,
            "samples_per_s": self.counts["written"] / elapsed if elapsed > 0 else 0.0,
            "seconds_writing": self.seconds_writing,
            **{f"seconds_{k.removesuffix('_s')}": v for k, v in self.timing.items()},
            "failures": self.run_failures,
        }
        summary_dir = self._summary_dir()
        layout.atomic_write_text(summary_dir / f"rank-{self.rank}.json", json.dumps(self.summary, default=str))
        trainer.strategy.barrier("lit_features_store_merge")
        if self.rank == 0:
            for store in self.stores.values():
                merge_store_logs(store.root)
            if self.export_jsonl:
                for store in self.stores.values():
                    export_entries_jsonl(store.root, self.export_jsonl)
            run = reduce_run_summaries(summary_dir)
            layout.atomic_write_text(self._summary_dir().parent / "run_summary.json", json.dumps(run, indent=2))
            log_run_summary(trainer, run)
            self.run_summary = run  # the run's last log line says it (lit_features.predict_report)
            log.debug(
                "feature store %s: written %d, failed %d, skipped %d (already done), %.2f samples/s",
                self.output_dir, run["written"], run["failed"], run["skipped"], run["samples_per_s"],
            )  # fmt: skip
            if self.export_manifest:
                self._export(trainer)
        self._finished = True

    def _export(self, trainer: pl.Trainer) -> None:
        samples = getattr(trainer.datamodule, "samples", None)
        if samples is None:
            log.warning("export_manifest: the datamodule has no samples list; nothing exported")
            return
        target = self.output_dir / self.export_manifest
        per_name = "{name}" in self.path_template
        n = export_manifest_with_features(
            self.output_dir, samples, target, per_name, self.export_fields, self.export_done_only
        )
        log.info("wrote %s (%d entries with features)", target, n)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Persist what was already computed before the run goes down.
        self._crashed = True
        self._stop_thread()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if not self._finished and not self._crashed and self._queue is not None:
            # Lightning skips the predict loop (and on_predict_end) when nothing is left to do: still merge.
            self._finish(trainer)
        elif self._thread is not None:
            self._stop_thread()


class StoreNotSharedError(UserError, RuntimeError):
    """Some ranks do not see the store rank 0 prepared: the output directory is not shared by all nodes."""


def check_shared_store(trainer: pl.Trainer, root: Path, wait_s: float = 30.0) -> None:
    """Fail on every rank unless every rank sees the same ``root`` as rank 0 (a collective; no-op on one rank).

    Ranks on other nodes resume from, and append to, the index files they see: with a node-local output
    directory they would disagree about what is done and split the work differently (samples done twice or
    never). Rank 0 writes a fresh token into ``root``; the others wait up to ``wait_s`` for it to show up (a
    network filesystem may show a new file late), then all ranks compare notes.
    """
    if trainer.world_size <= 1:
        return
    marker = root / layout.RUN_TOKEN
    token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}" if trainer.global_rank == 0 else None
    if token is not None:
        layout.atomic_write_text(marker, token)
    token = trainer.strategy.broadcast(token, 0)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            sees = marker.read_text() == token
        except OSError:
            sees = False
        if sees or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = trainer.strategy.reduce(
        torch.tensor(0.0 if sees else 1.0, device=trainer.strategy.root_device), reduce_op="sum"
    )
    if float(missing) > 0:
        here = "sees it" if sees else "does not see it"
        raise StoreNotSharedError(
            f"{int(missing)} of {trainer.world_size} ranks do not see the feature store rank 0 prepared at {root} "
            f"(rank {trainer.global_rank} on {socket.gethostname()} {here}). --writer.output_dir must be one folder "
            "shared by every node (NFS, Lustre, GPFS, ...) at the same path."
        )


def merge_store_logs(root: Path) -> dict[str, int]:
    """Merge per-rank index and failure logs into ``index.jsonl`` and ``failures.jsonl`` (latest row per key).

    Tolerates ranks that wrote nothing. A failure is dropped from the merged list once its key is done.
    """
    index: dict[str, dict] = {}
    for path in layout.rank_files(root, layout.INDEX_DIR):
        for row in layout.read_jsonl_rows(path):
            index[row["key"]] = row
    failures: dict[str, dict] = {}
    for path in layout.rank_files(root, layout.FAILURES_DIR):
        for row in layout.read_jsonl_rows(path):
            if row["key"] not in index:
                failures[row["key"]] = row
    layout.atomic_write_text(root / layout.MERGED_INDEX, "".join(json.dumps(index[k]) + "\n" for k in sorted(index)))
    layout.atomic_write_text(
        root / layout.MERGED_FAILURES, "".join(json.dumps(failures[k]) + "\n" for k in sorted(failures))
    )
    return {"written": len(index), "failed": len(failures)}


def reduce_run_summaries(folder: Path) -> dict[str, Any]:
    """Combine the per-rank summaries of one run (files, not collectives: ranks may have run different batches)."""
    ranks = [json.loads(p.read_text()) for p in sorted(folder.glob("rank-*.json"))]
    seconds = max((r["seconds"] for r in ranks), default=0.0)
    written = sum(r["written"] for r in ranks)
    timing = {
        k: sum(r.get(k, 0.0) for r in ranks)
        for k in ("seconds_decode", "seconds_transform", "seconds_model", "seconds_writing")
    }
    return {
        "ranks": len(ranks),
        "written": written,
        "failed": sum(r["failed"] for r in ranks),
        "skipped": ranks[0]["skipped"] if ranks else 0,
        "seconds": seconds,
        "samples_per_s": written / seconds if seconds > 0 else 0.0,
        "samples_per_s_per_rank": [r["samples_per_s"] for r in ranks],
        **timing,
        "failures": [f for r in ranks for f in r.get("failures", [])],
    }


def log_run_summary(trainer: pl.Trainer, run: dict[str, Any]) -> None:
    """Send a run summary to the trainer's loggers (W&B gets a failures table and its run summary too)."""
    numbers = {f"predict/{k}": v for k, v in run.items() if isinstance(v, (int, float))}
    for i, rate in enumerate(run["samples_per_s_per_rank"]):
        numbers[f"predict/samples_per_s_rank{i}"] = rate
    for logger in trainer.loggers:
        logger.log_metrics(numbers, step=0)
        if type(logger).__name__ == "WandbLogger":
            columns = ["key", "source", "stage", "error", "message"]
            rows = [[str(f.get(c, "")) for c in columns] for f in run["failures"]]
            logger.log_table(key="predict/failures", columns=columns, data=rows)
            logger.experiment.summary.update(numbers)
        logger.save()


def export_manifest_with_features(
    root: Path,
    samples: list[Any],
    target: Path,
    per_name: bool,
    fields: dict[str, str] | None = None,
    done_only: bool = False,
) -> int:
    """Write ``{key: entry + feature file paths}`` for ``samples`` from the merged index; returns entries with paths.

    With ``done_only``, entries without features are left out and listed in ``<target stem>.missing.json`` as
    ``{key: reason}`` (the recorded failure, or "not processed").
    """
    rows = {r["key"]: r for r in layout.read_jsonl_rows(root / layout.MERGED_INDEX)}
    out, done, missing = {}, 0, {}
    failures = {r["key"]: r for r in layout.read_jsonl_rows(root / layout.MERGED_FAILURES)} if done_only else {}
    for sample in samples:
        entry = dict(sample.entry)
        row = rows.get(sample.key)
        if row is None and done_only:
            failure = failures.get(sample.key)
            missing[sample.key] = (
                f"{failure['stage']}: {failure['error']}: {failure['message']}" if failure else "not processed"
            )
            continue
        if row is not None:
            files = row.get("files", [row["file"]])
            names = list(row["shapes"]) if per_name else [""]
            for name, file in zip(names, files, strict=True):
                field = fields.get(name) if fields is not None else (f"{name}_path" if name else "feature_path")
                if field:
                    entry[field] = str(Path(file) if Path(file).is_absolute() else (root / file).resolve())
            done += 1
        out[sample.key] = entry
    layout.atomic_write_text(target, json.dumps(out, indent=4, default=str))
    if done_only:
        layout.atomic_write_text(target.with_suffix(".missing.json"), json.dumps(missing, indent=4))
    return done


def export_entries_jsonl(root: Path, name: str) -> int:
    """Write ``root/name``: per stored sample (latest index row, sorted by key) its manifest entry plus ``file``.

    The entry is the ``entry`` field of the row's metadata (extractors that want this export put it there); a
    row without one exports ``key`` instead. Returns the number of rows written.
    """
    # The merged index (written just before, latest row per key, sorted): no second pass over the rank files.
    lines = []
    for row in layout.read_jsonl_rows(root / layout.MERGED_INDEX):
        key = row["key"]
        entry = (row.get("meta") or {}).get("entry")
        lines.append(json.dumps({**(entry if isinstance(entry, dict) else {"key": key}), "file": row["file"]}) + "\n")
    layout.atomic_write_text(root / name, "".join(lines))
    return len(lines)
