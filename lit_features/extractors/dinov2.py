"""DINOv2 features per frame (Hugging Face ``Dinov2Model``, 48 frames at 420x630 -> ``[48, 30, 45, C]``).

``feature`` is the normed patch tokens (``last_hidden_state`` without the CLS token); frames run in chunks of
``chunk_size``. Frames and normalisation: :mod:`lit_features.extractors.vfm`.
"""

from __future__ import annotations

import torch

from lit_features.extractors.base import quiet_transformers
from lit_features.extractors.vfm import CLASSIFIER_HEADS, ShortClip, VFMFeatures, as_pair
from lit_features.models.weights import from_pretrained_strict


class DINOv2Features(VFMFeatures):
    """DINOv2 normed patch tokens per frame from a Hugging Face ``Dinov2Model`` checkpoint.

    Frames go through the image model ``chunk_size`` at a time (memory bound). 48 frames at 420x630 with
    ViT-B/14 give ``[48, 30, 45, 768]``. Position embeddings are interpolated by ``Dinov2Model`` itself.

    Args:
        chunk_size: frames per forward pass.
    """

    extractor_name = "dinov2"
    hub_id = "facebook/dinov2-base"
    model_label = "DINOv2"

    def __init__(
        self,
        model_path: str = "pretrained_model/dinov2-base",
        num_frames: int = 48,
        height: int = 420,
        width: int = 630,
        short_clip: ShortClip = "stretch",
        chunk_size: int = 128,
        dtype: str = "float32",
        trust_remote_code: bool = False,
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        super().__init__(model_path, num_frames, height, width, short_clip, dtype, trust_remote_code)

    def patch_geometry(self) -> tuple[int | None, int | None]:
        return self.config_patch_geometry()[0], None  # images: no tubelets

    def load_model(self) -> torch.nn.Module:
        from transformers import Dinov2Model

        with quiet_transformers():
            return from_pretrained_strict(
                Dinov2Model,
                self.model_path,
                dropped=CLASSIFIER_HEADS,
                dtype=self.compute_dtype,
                trust_remote_code=self.trust_remote_code,
            )

    @property
    def feature_dim(self) -> int | None:
        return int(self.model.config.hidden_size) if self.model is not None else None

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        batch, frames, _, height, width = clips.shape
        patch = as_pair(self.model.config.patch_size)
        grid = (height // patch[0], width // patch[1])
        flat = clips.reshape(batch * frames, *clips.shape[2:])
        chunks = []
        for start in range(0, flat.shape[0], self.chunk_size):
            out = self.model(pixel_values=flat[start : start + self.chunk_size].to(self.compute_dtype))
            chunks.append(out.last_hidden_state[:, 1:])  # normed patch tokens (CLS dropped)
        tokens = torch.cat(chunks)
        return tokens.reshape(batch, frames, *grid, tokens.shape[-1])
