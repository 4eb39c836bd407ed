"""Shared contract of the dense video foundation model (VFM) extractors: frames in, ``[T', H', W', C]`` out.

Every VFM extractor samples ``num_frames`` (48) frames per video at ``round(linspace(0, n-1, N))``, scales
them to [0, 1], resizes them straight to the target size with bicubic interpolation (no antialiasing, no
clamping), normalises with the ImageNet mean/std and runs the model in float32 by default. It stores one
tensor, ``feature`` ``[T', H', W', C]`` in (T, H, W) token order, plus ``caption``, ``video`` and ``model``
in the sample's metadata (with ``--writer.codec pt`` a sample file is the ``{feature, caption, video, model}``
dict of the upstream tool).

One family per module: :mod:`~lit_features.extractors.videomae`, :mod:`~lit_features.extractors.videomae_v2`,
:mod:`~lit_features.extractors.vjepa2`, :mod:`~lit_features.extractors.dinov2`; several over one decode:
:mod:`~lit_features.extractors.vfm_multi`. Every run ends with upstream's reports, which the feature writer
leaves (:mod:`lit_features.store.vfm_report`): ``failed_videos.txt`` in each model's folder,
``vfm_dimensions.txt`` and ``vfm_summary.json`` in the output folder.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from lit_features.data.dataset import Batch, Prepared
from lit_features.data.preprocess import EntryError, MediaLoader, Preprocessor
from lit_features.data.sample import IMAGE_EXTENSIONS, Sample
from lit_features.data.sampling import FrameSampling
from lit_features.data.transforms import NORMALIZATION_PRESETS, normalize, resize, to_tensor
from lit_features.extractors.base import FeatureExtractor
from lit_features.interfaces import ModelsReport

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = NORMALIZATION_PRESETS["imagenet"]
ShortClip = Literal["fail", "pad_last", "stretch"]
#: Heads a checkpoint may hold that feature extraction leaves out (strict loading drops exactly these):
#: a classifier and its pooling norm / pooler ...
CLASSIFIER_HEADS = (r"classifier\.", r"fc_norm\.", r"pooler\.")
#: ... and, for VideoMAE pre-training checkpoints, the MAE decoder and its mask token.
VIDEOMAE_HEADS = (*CLASSIFIER_HEADS, r"decoder\.", r"encoder_to_decoder\.", r"mask_token$")


def size_key(size: tuple[int, int]) -> str:
    """Name of the pixel tensor of one target size in a batch (``"160x240"``)."""
    return f"{int(size[0])}x{int(size[1])}"


@dataclass
class VideoClipPreprocessor(Preprocessor):
    """N uniformly sampled frames of a video, resized to one or more sizes, ImageNet-normalised.

    One decode serves every size in ``sizes`` (several models over one decode). Returns
    ``{"HxW": float32 [T, 3, H, W]}`` per sample.
    """

    num_frames: int = 48
    sizes: tuple[tuple[int, int], ...] = ((160, 240),)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    short_clip: ShortClip = "stretch"
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    antialias: bool = False

    def validate(self, sample: Sample) -> None:
        super().validate(sample)
        if Path(str(sample.entry.get("path"))).suffix.lower() in IMAGE_EXTENSIONS:
            raise EntryError("path", "is an image; video foundation model features need a video")

    def pixels(self, frames: Any) -> dict[str, torch.Tensor]:
        """``uint8 [T, H, W, 3]`` frames -> one normalised ``[T, 3, h, w]`` tensor per target size."""
        x = to_tensor(frames)
        out = {}
        for size in self.sizes:
            # Straight resize to the target (aspect not kept), without antialiasing, as upstream does.
            resized = resize(x, (int(size[0]), int(size[1])), self.interpolation, antialias=self.antialias)
            out[size_key(size)] = normalize(resized, (self.mean, self.std)).contiguous()
        return out

    def __call__(self, sample: Sample, media: MediaLoader) -> Prepared:
        assert sample.source is not None
        sampling = FrameSampling("uniform", self.num_frames, short_clip=self.short_clip)
        video = media.video(sample.source, sampling, sample.cut)
        meta: dict[str, Any] = {
            "frame_indices": video.indices,
            "total_frames": video.total_frames,
            "fps": video.fps,
        }
        if video.padded:
            meta["padded_frames"] = video.padded
        return Prepared(self.pixels(video.frames), meta)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path)
    return json.loads(file.read_text()) if file.is_file() else {}


def as_pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


class VFMFeatures(FeatureExtractor):
    """Shared behaviour of the single-model VFM extractors (subclasses implement :meth:`load_model`/:meth:`encode`).

    Args:
        model_path: weights folder (Hugging Face layout) or checkpoint file, or a hub id.
        num_frames: frames uniformly sampled per video (``round(linspace(0, n-1, N))``).
        height: frame height given to the model.
        width: frame width given to the model.
        short_clip: videos with fewer frames than ``num_frames``: ``stretch`` repeats frames along the
            linspace as upstream does, ``pad_last`` repeats the last frame, ``fail`` records a failure.
        dtype: model dtype (``float32`` as upstream; ``bfloat16`` is faster on GPUs); features are stored in it.
        trust_remote_code: allow model code from the weights folder.
    """

    model_label: ClassVar[str] = ""

    def __init__(
        self,
        model_path: str,
        num_frames: int = 48,
        height: int = 160,
        width: int = 240,
        short_clip: ShortClip = "stretch",
        dtype: str = "float32",
        trust_remote_code: bool = False,
    ):
        super().__init__(model_path, dtype, trust_remote_code)
        if num_frames < 1 or height < 1 or width < 1:
            raise ValueError(f"num_frames, height and width must be positive, got {num_frames}, {height}, {width}")
        self.num_frames = num_frames
        self.height = height
        self.width = width
        self.short_clip = short_clip
        self.check_geometry()

    # -- contract
    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def input_key(self) -> str:
        return size_key(self.size)

    def check_geometry(self) -> None:
        """Fail at start when the frame count or size does not tile into the model's patches (if known)."""
        patch, tubelet = self.patch_geometry()
        problems = []
        if patch and (self.height % patch or self.width % patch):
            problems.append(f"height x width {self.height}x{self.width} must be multiples of the patch size {patch}")
        if tubelet and self.num_frames % tubelet:
            problems.append(f"num_frames {self.num_frames} must be a multiple of the tubelet size {tubelet}")
        if problems:
            raise ValueError(f"{type(self).__name__} ({self.model_path}): " + "; ".join(problems))

    def numeric_params(self) -> dict[str, Any]:
        """The constructor arguments that change the numbers (the store fingerprint's ``params``)."""
        return {
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "short_clip": self.short_clip,
            "dtype": self.dtype_name,
        }

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        # Explicit rather than from ``hparams``: LightningCLI hands every constructor that runs while it builds
        # MultiVFMFeatures the outer arguments as hyperparameters, and a sub-store must fingerprint exactly as
        # the single-model run would.
        fp["params"] = self.numeric_params()
        return fp

    def patch_geometry(self) -> tuple[int | None, int | None]:
        """(patch size, tubelet size) read from the weights' config without loading them; None when unknown."""
        return None, None

    def config_patch_geometry(self) -> tuple[int | None, int | None]:
        """:meth:`patch_geometry` from a Hugging Face ``config.json``'s ``patch_size`` and ``tubelet_size``."""
        cfg = read_json(Path(self.model_path) / "config.json")
        patch = cfg.get("patch_size")
        return (as_pair(patch)[0] if patch is not None else None), cfg.get("tubelet_size")

    def preprocessor(self) -> VideoClipPreprocessor:
        return VideoClipPreprocessor(num_frames=self.num_frames, sizes=(self.size,), short_clip=self.short_clip)

    @property
    def feature_dim(self) -> int | None:
        """Channel count C of the features (known once the model is loaded)."""
        return None

    def encode(self, clips: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``[B, T, 3, H, W]`` normalised clips -> ``[B, T', H', W', C]`` features."""
        raise NotImplementedError

    @torch.no_grad()
    def features(self, inputs: dict[str, Any]) -> list[torch.Tensor]:
        """Per-sample ``[T', H', W', C]`` features from a collated batch of pixel tensors."""
        clips = inputs[self.input_key]
        if isinstance(clips, list):  # samples of different shapes were not stacked: one forward each
            return [self.encode(c[None])[0] for c in clips]
        return list(self.encode(clips))

    def extract(self, inputs: Any, batch: Batch) -> list[dict[str, torch.Tensor]]:
        return [{"feature": f.contiguous()} for f in self.features(inputs)]

    def sample_meta(self, batch: Batch, index: int) -> dict[str, Any]:
        meta = super().sample_meta(batch, index)
        entry = batch.metas[index].get("entry", {})
        source = batch.sources[index]
        return {
            "caption": entry.get("cap") or "",
            "video": os.path.basename(source) if source else "",
            "model": self.model_label,
            **meta,
        }

    # -- end of run
    def models_report(self) -> ModelsReport:
        """This model, for the report the writer leaves at the end of every run (upstream's reports)."""
        return ModelsReport({"": self.model_label}, {self.model_label: self.feature_dim}, {}, self.num_frames)


#: Classes that lived in this module before each family got its own: configs written then name them here.
_MOVED = {
    "VideoMAEFeatures": "videomae",
    "VideoMAEv2Features": "videomae_v2",
    "VJEPA2Features": "vjepa2",
    "DINOv2Features": "dinov2",
    "MultiVFMFeatures": "vfm_multi",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"lit_features.extractors.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
