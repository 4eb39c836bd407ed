"""The writer thread: encodes each batch's samples, writes them atomically and appends their index rows.

Order per batch, so a kill or power loss never loses a sample the index acknowledges: every file is written
to a temporary name, fsynced and renamed into place; the folders it was renamed into are fsynced (the rename
itself becomes durable); then the batch's index and failure rows are appended and the logs fsynced. A sample
whose file cannot be written (disk full, I/O error) becomes a ``write`` failure, retried by the next run.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lit_features.errors import UserError
from lit_features.records import Failure, FeatureRecord, PredictionOutput
from lit_features.store import layout
from lit_features.store.codecs import EXTENSIONS, encode
from lit_features.store.host_copy import HostCopy
from lit_features.store.state import StoreState


class StoreWriteError(UserError, OSError):
    """Writing to the store failed (e.g. the disk is full); what was written is kept and the rest is retried."""


class SampleWriter:
    """Background thread persisting :class:`PredictionOutput` batches into one or more stores of one rank.

    Args:
        stores: the stores by name (``""``: the output directory).
        codec: sample file codec.
        path_template: where each sample's file goes (see :func:`layout.resolve_sample_path`).
        rank: this process's global rank (names its log files and temporary folder).
        inputs: the input identity of a key (recorded in its index row), or ``None`` when unknown.
        fsync: make files, renames and log appends durable before a sample counts as written.
        embed_meta: also store each sample's metadata inside its file.
        queue_size: batches waiting before the producer blocks.
        log_dir: for work units, the folder of a store's logs for a route (see :meth:`put`); default: every
            row goes to the store's own ``index/`` and ``failures/``.
        on_route_end: called on the writer thread once a route's rows on this rank are durable (see :meth:`put`).
        tmp_name: this process's temporary folder under the store's ``.tmp/`` (default ``rank-<rank>``).
        write_threads: a batch's sample files written (and its folders fsynced) side by side by this many threads.
    """

    def __init__(
        self,
        stores: dict[str, StoreState],
        codec: str,
        path_template: str,
        rank: int,
        inputs: Callable[[str], dict[str, Any] | None],
        fsync: bool = True,
        embed_meta: bool = True,
        queue_size: int = 8,
        log_dir: Callable[[Path, Any], Path] | None = None,
        on_route_end: Callable[[Any], None] | None = None,
        tmp_name: str | None = None,
        write_threads: int = 8,
    ):
        self.stores = stores
        self.codec = codec
        self.path_template = path_template
        self.rank = rank
        self.inputs = inputs
        self.fsync = fsync
        self.embed_meta = embed_meta
        self.counts: Counter[str] = Counter()
        self.timing: Counter[str] = Counter()
        self.run_failures: list[dict[str, Any]] = []
        self.seconds_writing = 0.0
        self.error: BaseException | None = None
        self.log_dir = log_dir
        self.on_route_end = on_route_end
        self.tmp_name = tmp_name or f"rank-{rank}"
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._logs: dict[tuple[str, Any, bool], Any] = {}
        if log_dir is None:  # the store's own logs exist from the start (an empty file: this rank took part)
            for name in stores:
                self._log(name, None, False), self._log(name, None, True)
        # Writes a batch's files and fsyncs its folders in parallel (the writer thread waits for each step).
        self._pool = ThreadPoolExecutor(max_workers=write_threads, thread_name_prefix="feature-writer-files")
        self._thread: threading.Thread | None = threading.Thread(target=self._drain, name="feature-writer", daemon=True)
        self._thread.start()

    # -- producer side (the main thread) --------------------------------------------------------------------------
    def put(
        self,
        prediction: PredictionOutput,
        routes: dict[str, Any] | None = None,
        ends: list[Any] = (),
        copied: HostCopy | None = None,
    ) -> None:
        """Queue a batch. With work units, ``routes`` gives each key's route (its unit claim: where its rows
        go) and ``ends`` the routes this rank has no more samples of after this batch. ``copied``: the
        batch's device-to-host copies still in flight (waited for before its tensors are read)."""
        self.raise_if_failed()
        self._queue.put((prediction, routes, list(ends), copied))

    def _log(self, name: str, route: Any, failures: bool) -> Any:
        fh = self._logs.get((name, route, failures))
        if fh is None:
            root = self.stores[name].root
            folder = root if route is None or self.log_dir is None else self.log_dir(root, route)
            path = layout.rank_file(folder, layout.FAILURES_DIR if failures else layout.INDEX_DIR, self.rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = self._logs[(name, route, failures)] = open(path, "a")
        return fh

    def _close_route(self, route: Any) -> None:
        for slot in [s for s in self._logs if s[1] == route]:
            self._logs.pop(slot).close()

    @property
    def queue_depth(self) -> int:
        """Batches waiting for the thread (at ``queue_size`` the model waits for the disk)."""
        return self._queue.qsize()

    def raise_if_failed(self) -> None:
        if self.error is None:
            return
        if isinstance(self.error, OSError):
            raise StoreWriteError(
                f"writing the feature store failed: {self.error}. Samples written so far are kept; free space or "
                "fix the filesystem and rerun to finish."
            ) from self.error
        raise RuntimeError(f"the feature writer failed: {self.error!r}") from self.error

    def append_rows(self, name: str, rows: list[dict[str, Any]], failures: bool = False, route: Any = None) -> None:
        """Append rows to this rank's index (or failure log) of store ``name`` (for ``route``), durably."""
        if rows:
            fh = self._log(name, route, failures)
            fh.write("".join(json.dumps(r, default=str) + "\n" for r in rows))
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def failure_row(self, failure: Failure) -> dict[str, Any]:
        return {**failure.as_row(), "rank": self.rank, "time": time.time()}

    def close(self) -> None:
        """Write everything queued, stop the thread and close the logs (idempotent)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            self._pool.shutdown()
        for fh in self._logs.values():
            fh.close()
        self._logs = {}

    # -- the thread ----------------------------------------------------------------------------------------------
    def _write_one(self, record: FeatureRecord) -> tuple[dict[str, Any] | None, set[Path], OSError | None]:
        """One record's files (on a pool thread): its index row and folders, or the error that stopped it."""
        folders: set[Path] = set()
        try:
            return self._write_record(record, folders), folders, None
        except OSError as err:
            return None, folders, err

    def _write_record(self, record: FeatureRecord, folders: set[Path]) -> dict[str, Any]:
        store = self.stores.get(record.store)
        if store is None:
            raise KeyError(f"record for unknown store {record.store!r}; known: {sorted(self.stores)}")
        ext = EXTENSIONS[self.codec]
        tmp_dir = store.root / layout.TMP_DIR / self.tmp_name
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
            folders.add(path.parent)
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
        identity = self.inputs(record.key)
        if identity is not None:
            row["input"] = identity
        if len(files) > 1:
            row["files"] = files
        return row

    def _persist(self, queued: tuple[PredictionOutput, dict[str, Any] | None, list[Any], HostCopy | None]) -> None:
        item, routes, ends, copied = queued
        if copied is not None:
            copied.wait()
        started = time.monotonic()
        rows: dict[str, list] = {name: [] for name in self.stores}
        failures: dict[str, list] = {name: [] for name in self.stores}
        folders: set[Path] = set()
        write_failed = 0
        # A batch's files are written side by side (serialising and writing release the GIL): one after the other,
        # the writer thread bounded jobs with large features (720p SigLIP tokens, 85 MB a clip) on a GPU.
        written = (
            self._pool.map(self._write_one, item.records)
            if len(item.records) > 1
            else map(self._write_one, item.records)
        )
        for record, (row, record_folders, err) in zip(item.records, written):
            folders |= record_folders
            if err is None:
                rows[record.store].append(row)
            else:  # one unwritable sample is a failure record, not a lost run
                failures[record.store].append(
                    self.failure_row(Failure(record.key, record.source, "write", type(err).__name__, str(err)))
                )
                write_failed += 1
        if self.fsync:  # in parallel: the filesystem commits them together (measured 3x cheaper than one by one)
            list(self._pool.map(layout.fsync_dir, folders))
        for failure in item.failures:
            for name in self.stores if failure.store is None else [failure.store]:
                failures[name].append(self.failure_row(failure))
        for name in self.stores:
            if len(self.run_failures) < 1000:  # a sample for the run summary, not the record
                self.run_failures.extend(failures[name][: 1000 - len(self.run_failures)])
        for name in self.stores:
            for route, part in _by_route(rows[name], routes):
                self.append_rows(name, part, route=route)
            for route, part in _by_route(failures[name], routes):
                self.append_rows(name, part, failures=True, route=route)
            self.stores[name].done.update((r["key"], None) for r in rows[name])
        self.counts["written"] += sum(len(r) for r in rows.values())
        self.counts["failed"] += len(item.failures) + write_failed
        self.counts["write_failed"] += write_failed
        self.seconds_writing += time.monotonic() - started
        for route in ends:  # after this batch's rows are durable: this rank's share of the route is written
            self._close_route(route)
            if self.on_route_end is not None:
                self.on_route_end(route)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # keep consuming so the producer never blocks on a dead writer
            try:
                self._persist(item)
            except BaseException as err:  # surfaced on the main thread at the next batch and at the end
                self.error = err


def _by_route(rows: list[dict[str, Any]], routes: dict[str, Any] | None) -> list[tuple[Any, list[dict[str, Any]]]]:
    """Rows grouped by their key's route (all under ``None`` without routes)."""
    if routes is None:
        return [(None, rows)]
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        if row["key"] not in routes:
            raise KeyError(f"no work unit for key {row['key']!r}: the batch did not say which unit it belongs to")
        groups.setdefault(routes[row["key"]], []).append(row)
    return list(groups.items())
