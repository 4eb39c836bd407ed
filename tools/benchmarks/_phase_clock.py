"""A callback that writes when each phase of a predict run began, for the start-up rows of the benchmarks.

Added on the command line of a benchmarked run (``--trainer.callbacks+=tools.benchmarks._phase_clock.PhaseClock
--trainer.callbacks.path=FILE``); it writes wall-clock times (``time.time()``, comparable with the process
that started the run) as JSON when the run ends: ``built`` (the command line parsed and every import done),
``setup``, ``predict_start`` (model loaded, store opened), ``batch_starts`` / ``batch_ends``, ``predict_end``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from lightning.pytorch.callbacks import Callback


class PhaseClock(Callback):
    def __init__(self, path: str):
        self.path = path
        self.stamps: dict[str, Any] = {"built": time.time(), "batch_starts": [], "batch_ends": []}

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.stamps["setup"] = time.time()

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self.stamps["predict_start"] = time.time()

    def on_predict_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self.stamps["batch_starts"].append(time.time())

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.stamps["batch_ends"].append(time.time())

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self.stamps["predict_end"] = time.time()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.stamps["teardown"] = time.time()
        with open(self.path, "w", encoding="utf-8") as fh:
            json.dump(self.stamps, fh)
