"""Helpers shared by the VFM tests: writing small feature stores through the real writer, synthetic motion."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lit_features.records import FeatureRecord, PredictionOutput
from lit_features.store.writer import FeatureWriter


class _TensorsExtractor(pl.LightningModule):
    """Hands prepared tensors to the feature writer, one sample per batch."""

    def __init__(self, samples: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]):
        super().__init__()
        self.samples = samples
        self.meta = meta

    def store_fingerprints(self) -> dict[str, dict[str, Any]]:
        return {"": {"extractor": "test_tensors", "keys": sorted(self.samples)}}

    def predict_step(self, batch: list[str], batch_idx: int) -> PredictionOutput:
        key = batch[0]
        return PredictionOutput([FeatureRecord(key, None, self.samples[key], dict(self.meta))], [])


def write_store(root: Path, samples: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any] | None = None) -> Path:
    """Write ``samples`` (key -> named tensors) as a feature store with :class:`FeatureWriter`."""
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FeatureWriter(str(root), fsync=False)],
    )
    loader = DataLoader(sorted(samples), batch_size=1, collate_fn=list)
    trainer.predict(_TensorsExtractor(samples, meta or {}), dataloaders=loader, return_predictions=False)
    return Path(root)


def known_motion_clip(
    generator: torch.Generator, projection: torch.Tensor, frames: int = 8, height: int = 4, width: int = 4
) -> torch.Tensor:
    """Features ``[T, H, W, C]`` of plane waves drifting with a random velocity, seen through a fixed projection.

    Each clip has its own velocity (the motion) and phases; a token's features are ``[sin, cos]`` of K wave
    phases mixed into C channels by ``projection`` ``[2K, C]``, so the data lies in a 2K-dimensional subspace
    that a ``latent_dim >= 2K`` autoencoder can reconstruct exactly.
    """
    waves = projection.shape[0] // 2
    velocity = torch.rand(2, generator=generator) * 2 - 1
    freqs = torch.rand(waves, 2, generator=generator) * 1.5 + 0.25
    phase = torch.rand(waves, generator=generator) * 2 * math.pi
    t, h, w = torch.meshgrid(
        torch.arange(frames, dtype=torch.float32),
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    y = h[..., None] - velocity[0] * t[..., None]
    x = w[..., None] - velocity[1] * t[..., None]
    theta = freqs[:, 0] * y + freqs[:, 1] * x + phase  # [T, H, W, K]
    z = torch.cat([theta.sin(), theta.cos()], dim=-1)
    return z @ projection


def known_motion_samples(count: int, channels: int = 32, waves: int = 3, seed: int = 0) -> dict[str, dict]:
    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn(2 * waves, channels, generator=generator) / math.sqrt(waves)
    return {f"clip{i:03d}": {"feature": known_motion_clip(generator, projection)} for i in range(count)}
