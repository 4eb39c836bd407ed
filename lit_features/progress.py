"""Lightning's TQDM progress bar, showing samples/s and failures during predict (batches/s says little)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


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
