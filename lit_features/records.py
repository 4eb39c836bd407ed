"""Records passed from extractors to the feature writer: one per written sample, one per failed sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Failure:
    """A sample that failed at ``stage`` (``decode``, ``transform``, ``model`` or ``write``).

    ``store`` names the one sub-store the failure belongs to (e.g. one model of several over one decode);
    ``None`` records it in every store of the run. ``preview``: a small ``uint8 [H, W, 3]`` thumbnail of a frame
    that was decoded before the sample failed (for dashboards; never part of the failure row).
    """

    key: str
    source: str | None
    stage: str
    error: str
    message: str
    store: str | None = None
    preview: Any = None

    def as_row(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "source": self.source,
            "stage": self.stage,
            "error": self.error,
            "message": self.message,
        }


@dataclass
class FeatureRecord:
    """Features of one sample: named tensors plus small JSON-able metadata.

    ``store`` names a sub-store when one run writes several feature sets (e.g. several models over one decode);
    the empty string is the output directory itself.
    """

    key: str
    source: str | None
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    store: str = ""


@dataclass
class PredictionOutput:
    """What an extractor's ``predict_step`` returns for one batch."""

    records: list[FeatureRecord]
    failures: list[Failure]
    model_seconds: float = 0.0
    decode_seconds: float = 0.0
    transform_seconds: float = 0.0


def thumbnail(frame: Any, max_side: int = 96) -> Any:
    """A ``uint8 [h, w, 3]`` copy of an RGB frame scaled to at most ``max_side`` pixels (``None`` stays ``None``).

    Small enough to travel with a failure record through the batch (about 27 KB at most).
    """
    if frame is None:
        return None
    import numpy as np
    from PIL import Image

    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or array.size == 0:
        return None
    image = Image.fromarray(
        np.ascontiguousarray(array[..., :3] if array.shape[-1] != 1 else array[..., 0]).astype(np.uint8)
    )
    image.thumbnail((max_side, max_side))
    return np.asarray(image.convert("RGB"))
