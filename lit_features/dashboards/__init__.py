"""Dashboards for a run's logger (W&B first): live extraction progress, failures, run identity, motion AE panels.

Added whenever a logger is configured (``--config configs/logger/wandb.yaml`` after the job's config, or any
``--trainer.logger``); without a logger none of this runs. Every panel works offline (``wandb sync`` uploads
it later).
"""

from lit_features.dashboards.identity import RunIdentity, run_identity
from lit_features.dashboards.live import LiveExtractionMetrics
from lit_features.dashboards.motion_ae import MotionAutoencoderPanels

__all__ = ["LiveExtractionMetrics", "MotionAutoencoderPanels", "RunIdentity", "run_identity"]
