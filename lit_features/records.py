"""Records passed from extractors to the feature writer: one per written sample, one per failed sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Failure:
    """A sample that failed at ``stage`` (``decode``, ``transform``, ``model`` or ``write``).

    ``store`` names the one sub-store the failure belongs to (e.g. one model of several over one decode);
    ``None`` records it in every store of the run.
    """

    key: str
    source: str | None
    stage: str
    error: str
    message: str
    store: str | None = None

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
