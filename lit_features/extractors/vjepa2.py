"""V-JEPA 2 encoder features (Hugging Face ``VJEPA2Model``, encoder only, 160x240 -> ``[24, 10, 15, C]``).

``feature`` is the last encoder layer's output without the encoder's final ``layernorm``. ``rope_grid="input"``
(default) gives each token its real (t, h, w) rotary position, as the original V-JEPA 2 code does for any
input size; ``VJEPA2Model`` itself derives positions from a square ``crop_size / patch_size`` grid, which
misplaces tokens of non-square inputs (``rope_grid="config"`` reproduces that behaviour exactly).
Frames and normalisation: :mod:`lit_features.extractors.vfm`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch

from lit_features.extractors.base import quiet_transformers
from lit_features.extractors.vfm import CLASSIFIER_HEADS, ShortClip, VFMFeatures
from lit_features.models.weights import from_pretrained_strict


def rope_position_ids(grid: tuple[int, int, int], side: int, device: torch.device | None = None) -> torch.Tensor:
    """Flat ids that ``VJEPA2RopeAttention`` decomposes into each token's true (t, h, w) on a ``side``-wide grid.

    ``VJEPA2RopeAttention`` reads an id as ``t * side**2 + h * side + w``; writing every token of a
    ``(T', H', W')`` grid in that form (needs ``side >= max(H', W')``) gives it its real position.
    """
    t, h, w = grid
    tt, hh, ww = torch.meshgrid(
        torch.arange(t, device=device), torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    return (tt * side * side + hh * side + ww).reshape(-1)


@contextlib.contextmanager
def rope_side(attentions: list[Any], side: int) -> Iterator[None]:
    """Temporarily widen the square grid the attention layers decompose ids on (inputs wider than the crop)."""
    saved = [a.grid_size for a in attentions]
    for a in attentions:
        a.grid_size = side
    try:
        yield
    finally:
        for a, value in zip(attentions, saved):
            a.grid_size = value


def vjepa2_last_layer(model: Any, clips: torch.Tensor, rope_grid: Literal["input", "config"] = "input") -> torch.Tensor:
    """``VJEPA2Model``'s encoder embeddings and layers on ``[B, T, 3, H, W]``; the final layernorm left out.

    Returns:
        ``[B, T', H', W', C]``.
    """
    cfg = model.config
    encoder = model.encoder
    _, frames, _, height, width = clips.shape
    patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
    if frames % cfg.tubelet_size or height % patch or width % patch:
        raise ValueError(
            f"V-JEPA 2: a clip of {frames} frames at {height}x{width} does not tile into tubelets of "
            f"{cfg.tubelet_size} frames and {patch}px patches"
        )
    grid = (frames // cfg.tubelet_size, height // patch, width // patch)
    hidden = encoder.embeddings(clips)
    batch, _, dim = hidden.shape
    if rope_grid == "config":
        for layer in encoder.layer:
            hidden = layer(hidden, None)[0]
    else:
        attentions = [layer.attention for layer in encoder.layer]
        side = max(attentions[0].grid_size, grid[1], grid[2])
        ids = rope_position_ids(grid, side, hidden.device).unsqueeze(0).expand(batch, -1)
        with rope_side(attentions, side):
            for layer in encoder.layer:
                hidden = layer(hidden, ids)[0]
    return hidden.reshape(batch, *grid, dim)


class VJEPA2Features(VFMFeatures):
    """V-JEPA 2 encoder features from a Hugging Face ``VJEPA2Model`` checkpoint (predictor not used).

    48 frames at 160x240 with ViT-L/16, tubelet 2 give ``[24, 10, 15, 1024]``.

    Args:
        rope_grid: ``input``: rotary positions from the real token grid (as the original V-JEPA 2 code);
            ``config``: ``VJEPA2Model``'s square ``crop_size / patch_size`` grid (its output, exactly).
    """

    extractor_name = "vjepa2"
    hub_id = "facebook/vjepa2-vitl-fpc64-256"
    model_label = "VJEPA2"

    def __init__(
        self,
        model_path: str = "pretrained_model/vjepa2-vitl-fpc64-256",
        num_frames: int = 48,
        height: int = 160,
        width: int = 240,
        short_clip: ShortClip = "stretch",
        rope_grid: Literal["input", "config"] = "input",
        dtype: str = "float32",
        trust_remote_code: bool = False,
    ):
        self.rope_grid = rope_grid
        super().__init__(model_path, num_frames, height, width, short_clip, dtype, trust_remote_code)

    def numeric_params(self) -> dict[str, Any]:
        return {**super().numeric_params(), "rope_grid": self.rope_grid}

    def patch_geometry(self) -> tuple[int | None, int | None]:
        return self.config_patch_geometry()

    def load_model(self) -> torch.nn.Module:
        from transformers import VJEPA2Model

        with quiet_transformers():
            model = from_pretrained_strict(
                VJEPA2Model,
                self.model_path,
                dropped=CLASSIFIER_HEADS,
                dtype=self.compute_dtype,
                trust_remote_code=self.trust_remote_code,
            )
        model.predictor = None  # encoder only: the predictor's weights need not stay in memory
        return model

    @property
    def feature_dim(self) -> int | None:
        return int(self.model.config.hidden_size) if self.model is not None else None

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        return vjepa2_last_layer(self.model, clips, self.rope_grid)
