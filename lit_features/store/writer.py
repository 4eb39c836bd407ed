"""The feature writer: a ``BasePredictionWriter`` that persists each sample atomically from a background thread.

A sample is done exactly when its file was renamed into place *and* its index row appended. Each rank writes
its own files and its own ``index/rank-<r>.jsonl`` / ``failures/rank-<r>.jsonl``; rank 0 merges the small index
files after a barrier at the end. At start-up every rank reads the index files of all ranks to learn which
keys are done, so the DataModule can drop them before the sampler shards the rest.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_features import __version__
from lit_features.records import Failure, FeatureRecord, PredictionOutput
from lit_features.store import layout
from lit_features.store.codecs import EXTENSIONS, encode
from lit_features.store.fingerprint import describe_difference, fingerprint_hash

log = logging.getLogger(__name__)


class StoreMismatchError(RuntimeError):
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

    def prepare(self, overwrite: bool, world_size: int) -> None:
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
        embed_meta: bool = True,
        export_jsonl: str | None = None,
    ):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.codec = codec
        self.path_template = path_template
        self.overwrite = overwrite
        self.retry_failed = retry_failed
        self.max_attempts = max_attempts
        self.queue_size = queue_size
        self.fsync = fsync
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
        self.seconds_writing = 0.0
        self._started = 0.0

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
                store.prepare(self.overwrite, self.world_size)
        trainer.strategy.barrier("lit_features_store_ready")
        for store in self.stores.values():
            store.load_state(self.max_attempts)
        self._open_rank_files()
        if self.rank == 0:
            self._record_poisoned()
        self.counts = Counter()
        self._error = None
        self._queue = queue.Queue(maxsize=self.queue_size)
        self._thread = threading.Thread(target=self._drain, name="feature-writer", daemon=True)
        self._thread.start()
        self._started = time.monotonic()

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

    def skip_keys(self) -> set[str]:
        """Keys the DataModule must not schedule: done (and failed, unless ``retry_failed``) in every store."""
        sets = []
        for store in self.stores.values():
            skip = set(store.done) | set(store.poisoned)
            if not self.retry_failed:
                skip |= store.failed
            sets.append(skip)
        return set.intersection(*sets) if sets else set()

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
                    for name in self.stores:
                        failures[name].append(self._failure_row(failure))
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
        self._stop_thread()
        self._raise_if_failed()
        elapsed = time.monotonic() - self._started
        self.summary = {
            "rank": self.rank,
            "written": self.counts["written"],
            "failed": self.counts["failed"],
            "seconds": elapsed,
            "samples_per_s": self.counts["written"] / elapsed if elapsed > 0 else 0.0,
            "seconds_writing": self.seconds_writing,
        }
        trainer.strategy.barrier("lit_features_store_merge")
        if self.rank == 0:
            for store in self.stores.values():
                merge_store_logs(store.root)
                if self.export_jsonl:
                    export_entries_jsonl(store.root, self.export_jsonl)
            log.info("feature store %s: %s", self.output_dir, self.summary)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Persist what was already computed before the run goes down.
        self._stop_thread()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._thread is not None:
            self._stop_thread()


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


def export_entries_jsonl(root: Path, name: str) -> int:
    """Write ``root/name``: per stored sample (latest index row, sorted by key) its manifest entry plus ``file``.

    The entry is the ``entry`` field of the row's metadata (extractors that want this export put it there); a
    row without one exports ``key`` instead. Returns the number of rows written.
    """
    index: dict[str, dict] = {}
    for path in layout.rank_files(root, layout.INDEX_DIR):
        for row in layout.read_jsonl_rows(path):
            index[row["key"]] = row
    lines = []
    for key in sorted(index):
        row = index[key]
        entry = (row.get("meta") or {}).get("entry")
        lines.append(json.dumps({**(entry if isinstance(entry, dict) else {"key": key}), "file": row["file"]}) + "\n")
    layout.atomic_write_text(root / name, "".join(lines))
    return len(lines)


def tensor_nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
