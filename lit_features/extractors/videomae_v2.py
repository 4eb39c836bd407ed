"""VideoMAE V2 features from an original ``.pth`` checkpoint (:mod:`lit_features.models.videomae_v2`).

Same contract as VideoMAE: the last block's output without the final norm, 48 frames at 160x240 ->
``[24, 10, 15, C]``. Frames and normalisation: :mod:`lit_features.extractors.vfm`.
"""

from __future__ import annotations

import os

import torch

from lit_features.extractors.base import MissingWeightsError
from lit_features.extractors.vfm import ShortClip, VFMFeatures


class VideoMAEv2Features(VFMFeatures):
    """VideoMAE V2 ViT features from an original ``.pth`` checkpoint (e.g. ``vit_b_k710_dl_from_giant.pth``).

    The checkpoint loads strictly into :class:`~lit_features.models.videomae_v2.VideoMAEv2` (classifier head
    dropped). 48 frames at 160x240 with ViT-B/16, tubelet 2 give ``[24, 10, 15, 768]``.

    Args:
        trust_pickle: unpickle a checkpoint that holds more than tensors (only for files you trust).
    """

    extractor_name = "videomae_v2"
    model_label = "VideoMAEv2"

    def __init__(
        self,
        model_path: str = "pretrained_model/vit_b_k710_dl_from_giant.pth",
        num_frames: int = 48,
        height: int = 160,
        width: int = 240,
        short_clip: ShortClip = "stretch",
        dtype: str = "float32",
        trust_pickle: bool = False,
    ):
        self.trust_pickle = trust_pickle
        super().__init__(model_path, num_frames, height, width, short_clip, dtype)

    def check_weights_present(self, path: str) -> None:
        if os.path.isfile(path):
            return
        raise MissingWeightsError(
            f"{type(self).__name__}: VideoMAE V2 checkpoint not found at {path!r}. Download "
            "vit_b_k710_dl_from_giant.pth from the VideoMAE V2 model zoo (OpenGVLab/VideoMAEv2, MODEL_ZOO.md), point "
            "model.model_path at it, or run `python tools/make_tiny_models.py --out pretrained_model` for a tiny "
            "random stand-in (for trying the pipeline only)."
        )

    def load_model(self) -> torch.nn.Module:
        from lit_features.models.videomae_v2 import load_videomae_v2

        return load_videomae_v2(self.model_path, trust_pickle=self.trust_pickle).to(self.compute_dtype)

    @property
    def feature_dim(self) -> int | None:
        return int(self.model.config.embed_dim) if self.model is not None else None

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(clips.permute(0, 2, 1, 3, 4))
