"""Extractors with a bug planted, to show that bugs in lit_features code keep their traceback."""

from __future__ import annotations

from typing import Any

from lit_features.extractors.vision_tower import VisionTowerFeatures


class BrokenPredictStep(VisionTowerFeatures):
    """Fails inside ``predict_step`` the way a bug would (a key that is not there)."""

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return {}["a key a bug looked up"]


class BrokenInit(VisionTowerFeatures):
    """Raises a ``ValueError`` in ``__init__`` that no option value caused (it is not argument validation)."""

    def __init__(self, model_path: str, **kwargs: Any):
        super().__init__(model_path, **kwargs)
        first, second = (1, 2, 3)  # noqa: F841  (unpacking fails: a bug, not a refused value)
