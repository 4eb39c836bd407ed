"""What a predict run shows: its first and last log line (rank 0 speaks for every rank), a bar with samples/s.

First: what runs, into which store, how much is left to do and on what, e.g. ``predict vision_tower
(pretrained_model/siglip-so400m-patch14-384) -> outputs/quickstart: 6 of 6 samples to do (0 already in the
store or failed before), 1 device (cpu)``. Last: what happened, over all ranks, and where failures are
listed, e.g. ``done: 6 written, 0 failed, 0 skipped (already in the store) in 3.9 s, 1.56 samples/s ->
outputs/quickstart``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from lit_features.interfaces import run_samples
from lit_features.store.writer import FeatureWriter

log = logging.getLogger("lit_features")


def describe_devices(trainer: pl.Trainer) -> str:
    """``1 device (cpu)``, ``8 devices (cuda, ddp)``, ``16 devices (npu, ddp, 2 nodes)``."""
    n = trainer.world_size
    parts = [type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()]
    if n > 1:
        parts.append(type(trainer.strategy).__name__.removesuffix("Strategy").lower())
    if trainer.num_nodes > 1:
        parts.append(f"{trainer.num_nodes} nodes")
    return f"{n} device{'s' if n != 1 else ''} ({', '.join(parts)})"


def _writer(trainer: pl.Trainer) -> FeatureWriter | None:
    """The feature writer among the callbacks."""
    return next((c for c in trainer.callbacks if isinstance(c, FeatureWriter)), None)


def first_line(trainer: pl.Trainer, module: pl.LightningModule) -> str:
    job = getattr(module, "extractor_name", "") or type(module).__name__
    model = getattr(module, "model_path", None)
    writer = _writer(trainer)
    line = f"predict {job}" + (f" ({model})" if model else "")
    if writer is not None:
        line += f" -> {writer.output_dir}"
    samples, dataset = run_samples(trainer), getattr(trainer.datamodule, "dataset", None)
    if samples is not None and dataset is not None:
        before = len(samples) - len(dataset)
        line += f": {len(dataset)} of {len(samples)} samples to do ({before} already in the store or failed before)"
    return f"{line}, {describe_devices(trainer)}"


def last_line(trainer: pl.Trainer) -> str | None:
    writer = _writer(trainer)
    run = writer.run_summary if writer is not None else None
    if not run:
        return None
    line = f"done: {run['written']} written, {run['failed']} failed, {run['skipped']} skipped (already in the store)"
    if run["written"]:
        line += f" in {run['seconds']:.1f} s, {run['samples_per_s']:.2f} samples/s"
    line += f" -> {writer.output_dir}"
    if run["failed"]:
        roots = [store.root for store in writer.stores.values()] or [writer.output_dir]
        where = (
            roots[0] / "failures.jsonl" if len(roots) == 1 else f"failures.jsonl of each store in {writer.output_dir}"
        )
        line += f"; failures are listed in {where} (python -m lit_features inspect {roots[0]})"
    return line


class RunReport(Callback):
    """Logs :func:`first_line` when predict starts and :func:`last_line` after it ended, on rank 0.

    Comes after the feature writer in the callback list (the last line reads the summary the writer reduces
    over all ranks) and before the progress bar (the first line is printed before the bar starts).
    """

    def __init__(self) -> None:
        self._started = self._failed = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._started = self._failed = False

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = True
        if trainer.is_global_zero:
            log.info(first_line(trainer, pl_module))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._failed = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # After every callback's on_predict_end (the progress bar has closed). With nothing left to do,
        # Lightning skips the predict loop and its hooks and the writer finishes in its own teardown (which
        # runs before this one): then both lines are due here.
        if stage != "predict" or self._failed or not trainer.is_global_zero:
            return
        if not self._started:
            log.info(first_line(trainer, pl_module))
        line = last_line(trainer)
        if line:
            log.info(line)


class SampleRateProgressBar(TQDMProgressBar):
    """Adds ``samples/s`` and ``failed`` to the predict bar (written + failed samples per second of wall time)."""

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._samples = 0
        self._failed = 0
        self._started = time.monotonic()

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        records = getattr(outputs, "records", None)
        failures = getattr(outputs, "failures", None)
        if records is not None and failures is not None:
            self._samples += len(records) + len(failures)
            self._failed += len(failures)
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        bar = self.predict_progress_bar
        if bar is not None:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            bar.set_postfix({"samples/s": f"{self._samples / elapsed:.2f}", "failed": self._failed}, refresh=False)
