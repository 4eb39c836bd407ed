"""IIANet lip-video embeddings: the LRW ResNet-18 lip-reading front end over mouth-crop ``.npz`` clips.

Each mouth clip (``data``: uint8 ``[T, H, W]`` grayscale, 96x96 in IIANet's LRS2/VoxCeleb2 data) is scaled to
[0, 1], centre-cropped to 88x88 and normalised with ``(x - 0.421) / 0.165``, then embedded over its full length
by the frozen, eval-mode front end (``lrw_resnet18_mstcn_adamw_s3.pth.tar`` without its TCN head) into
``embedding`` ``[512, T]``. With ``configs/lip_resnet18.yaml`` the result lands beside each source as
``<stem>_embedding.npz``, the file IIANet's training code reads (see :mod:`lit_features.training.iianet`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_features.data.dataset import Batch, Prepared
from lit_features.data.preprocess import EntryError, MediaLoader, Preprocessor, SampleFailure
from lit_features.data.sample import Sample
from lit_features.extractors.base import FeatureExtractor, MissingWeightsError
from lit_features.models.lip_resnet import (
    MOUTH_CROP_SIZE,
    MOUTH_MEAN,
    MOUTH_STD,
    UPSTREAM_CHECKPOINT_NAME,
    embed_mouth_clips,
    load_lip_frontend,
    preprocess_mouth_frames,
)

EXPECTED_CLIP = f"a uint8 [T, H, W] grayscale array with H, W >= {MOUTH_CROP_SIZE}"


@dataclass
class MouthClipPreprocessor(Preprocessor):
    """Loads a mouth ``.npz`` (sandboxed) and applies the evaluation preprocessing: /255, centre crop, normalise.

    A file without the array, or with an array of the wrong type or shape, fails that sample only, with a
    message naming the file and the expected array.
    """

    array_key: str = "data"

    def validate(self, sample: Sample) -> None:
        super().validate(sample)
        if not str(sample.entry["path"]).lower().endswith(".npz"):
            raise EntryError("path", f"expected a mouth-crop .npz file, got {sample.entry['path']!r}")

    def __call__(self, sample: Sample, media: MediaLoader) -> Prepared:
        assert sample.source is not None
        expected = f"expected key {self.array_key!r} holding {EXPECTED_CLIP}"
        try:
            frames = media.npz(sample.source, self.array_key)
        except SampleFailure as err:
            raise SampleFailure(err.stage, err.error, f"{err.message}; {expected}") from None
        try:
            clip = preprocess_mouth_frames(frames, source=sample.source)
        except (TypeError, ValueError) as err:
            raise SampleFailure("transform", type(err).__name__, f"{err} ({expected})") from None
        t, h, w = frames.shape
        return Prepared(clip, {"frames": int(t), "height": int(h), "width": int(w)})

    def params(self) -> dict[str, Any]:
        # The released weights fix the crop and normalisation; record them so the fingerprint says so.
        return {**super().params(), "crop_size": MOUTH_CROP_SIZE, "mean": MOUTH_MEAN, "std": MOUTH_STD}

    def collate(self, items: list[Any]) -> list[torch.Tensor]:
        # Clips keep their own length; each is embedded on its own (see embed_mouth_clips).
        return list(items)


class LipEmbeddings(FeatureExtractor):
    """Per-frame lip embeddings ``[512, T]`` of IIANet mouth clips from the LRW ResNet-18 front end.

    Args:
        model_path: the lip-reading checkpoint (``lrw_resnet18_mstcn_adamw_s3.pth.tar``: a dict whose
            ``model_state_dict`` holds the whole model; the ``tcn`` head is dropped, the rest loads strictly).
        dtype: compute dtype; upstream precomputes in ``float32`` (``.npz`` always stores float32).
    """

    extractor_name = "lip_resnet18"

    def __init__(
        self,
        model_path: str = f"pretrained_model/{UPSTREAM_CHECKPOINT_NAME}",
        dtype: str = "float32",
    ):
        # No remote code: the network is defined in lit_features.models.lip_resnet.
        super().__init__(model_path, dtype, trust_remote_code=False)
        self._preprocessor = MouthClipPreprocessor()

    def check_weights_present(self, path: str) -> None:
        # Not on the Hugging Face hub: the path must be a local file.
        if os.path.isfile(path):
            return
        raise MissingWeightsError(
            f"{type(self).__name__}: lip-reading checkpoint not found at {path!r}. Download {UPSTREAM_CHECKPOINT_NAME} "
            "from the Lipreading_using_Temporal_Convolutional_Networks model zoo and point model.model_path at "
            "it, or run `python tools/make_tiny_models.py --out pretrained_model` for a random stand-in (for "
            "trying the pipeline only)."
        )

    def preprocessor(self) -> MouthClipPreprocessor:
        return self._preprocessor

    def load_model(self) -> torch.nn.Module:
        return load_lip_frontend(Path(self.model_path)).to(self.compute_dtype)

    def extract(self, inputs: Any, batch: Batch) -> list[dict[str, torch.Tensor]]:
        assert self.model is not None
        return [{"embedding": e} for e in embed_mouth_clips(self.model, inputs)]
