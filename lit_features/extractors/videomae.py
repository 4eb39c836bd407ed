"""VideoMAE features (Hugging Face ``VideoMAEModel``, 48 frames at 160x240 -> ``[24, 10, 15, C]``).

``feature`` is the last block's output; the final ``layernorm`` that ``VideoMAEModel`` applies when
``use_mean_pooling`` is off is left out. The fixed sinusoidal position table (built for the checkpoint's 16
frames at 224x224) is resized to the input grid, bicubic in space and linear in time; ``VideoMAEModel``
itself only accepts its native size. Frames and normalisation: :mod:`lit_features.extractors.vfm`.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_features.extractors.base import quiet_transformers
from lit_features.extractors.vfm import VIDEOMAE_HEADS, ShortClip, VFMFeatures, as_pair
from lit_features.models.weights import from_pretrained_strict


class VideoMAEFeatures(VFMFeatures):
    """VideoMAE ViT features from a Hugging Face ``VideoMAEModel`` checkpoint (e.g. ``MCG-NJU/videomae-base``).

    The last block's output, final norm left out, with the position table resized to the input grid (see the
    module docstring). 48 frames at 160x240 with ViT-B/16, tubelet 2 give ``[24, 10, 15, 768]``.
    """

    extractor_name = "videomae"
    hub_id = "MCG-NJU/videomae-base"
    model_label = "VideoMAE"

    def __init__(
        self,
        model_path: str = "pretrained_model/videomae-base",
        num_frames: int = 48,
        height: int = 160,
        width: int = 240,
        short_clip: ShortClip = "stretch",
        dtype: str = "float32",
        trust_remote_code: bool = False,
    ):
        super().__init__(model_path, num_frames, height, width, short_clip, dtype, trust_remote_code)
        self._tables: dict[tuple[int, int, int], torch.Tensor] = {}

    def patch_geometry(self) -> tuple[int | None, int | None]:
        return self.config_patch_geometry()

    def load_model(self) -> torch.nn.Module:
        from transformers import VideoMAEModel

        # A pre-training checkpoint also holds the MAE decoder, a fine-tuned one a classifier: neither is used.
        with quiet_transformers():
            return from_pretrained_strict(
                VideoMAEModel,
                self.model_path,
                dropped=VIDEOMAE_HEADS,
                dtype=self.compute_dtype,
                trust_remote_code=self.trust_remote_code,
            )

    @property
    def feature_dim(self) -> int | None:
        return int(self.model.config.hidden_size) if self.model is not None else None

    def position_table(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """The checkpoint's sinusoidal table resized to ``grid`` (bicubic in space, linear in time), cached."""
        from lit_features.models.videomae_v2 import resize_position_table

        if grid not in self._tables:
            cfg = self.model.config
            image = as_pair(cfg.image_size)
            patch = as_pair(cfg.patch_size)
            source = (cfg.num_frames // cfg.tubelet_size, image[0] // patch[0], image[1] // patch[1])
            table = self.model.embeddings.position_embeddings[0]
            self._tables[grid] = resize_position_table(table, source, grid)
        return self._tables[grid]

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        return videomae_last_block(self.model, clips, self.position_table)


def videomae_last_block(model: Any, clips: torch.Tensor, position_table: Any) -> torch.Tensor:
    """Runs ``VideoMAEModel``'s own patch embedding and encoder at any grid; no final norm.

    Args:
        model: a ``VideoMAEModel``.
        clips: ``[B, T, 3, H, W]``.
        position_table: callable ``(T', H', W') -> [T'*H'*W', C]`` table to add to the patch embeddings.

    Returns:
        ``[B, T', H', W', C]``.
    """
    projection = model.embeddings.patch_embeddings.projection
    tokens = projection(clips.permute(0, 2, 1, 3, 4).to(projection.weight.dtype))  # [B, C, T', H', W']
    batch, dim, t, h, w = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)
    pos = position_table((t, h, w)).to(device=tokens.device, dtype=tokens.dtype)
    hidden = model.encoder(tokens + pos.unsqueeze(0)).last_hidden_state
    return hidden.reshape(batch, t, h, w, dim)
