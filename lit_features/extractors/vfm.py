"""Dense video foundation model features: VideoMAE, VideoMAE V2, DINOv2 and V-JEPA 2, alone or several per decode.

Every extractor here samples ``num_frames`` (48) frames per video at ``round(linspace(0, n-1, N))``, scales
them to [0, 1], resizes them straight to the target size with bicubic interpolation (no antialiasing, no
clamping), normalises with the ImageNet mean/std and runs the model in float32 by default. It stores one
tensor, ``feature`` ``[T', H', W', C]`` in (T, H, W) token order, plus ``caption``, ``video`` and ``model``
in the sample's metadata (with ``--writer.codec pt`` a sample file is the ``{feature, caption, video, model}``
dict of the upstream tool).

What ``feature`` is, per model (48 frames):

- **VideoMAE** (Hugging Face ``VideoMAEModel``, 160x240 -> ``[24, 10, 15, C]``): the last block's output;
  the final ``layernorm`` that ``VideoMAEModel`` applies when ``use_mean_pooling`` is off is left out. The
  fixed sinusoidal position table (built for the checkpoint's 16 frames at 224x224) is resized to the input
  grid, bicubic in space and linear in time; ``VideoMAEModel`` itself only accepts its native size.
- **VideoMAE V2** (original ``.pth`` checkpoint, :mod:`lit_features.models.videomae_v2`): same contract.
- **V-JEPA 2** (Hugging Face ``VJEPA2Model``, encoder only, 160x240 -> ``[24, 10, 15, C]``): the last
  encoder layer's output without the encoder's final ``layernorm``. ``rope_grid="input"`` (default) gives
  each token its real (t, h, w) rotary position, as the original V-JEPA 2 code does for any input size;
  ``VJEPA2Model`` itself derives positions from a square ``crop_size / patch_size`` grid, which misplaces
  tokens of non-square inputs (``rope_grid="config"`` reproduces that behaviour exactly).
- **DINOv2** (Hugging Face ``Dinov2Model``, 420x630 -> ``[48, 30, 45, C]``): normed patch tokens
  (``last_hidden_state`` without the CLS token), frames run in chunks of ``chunk_size``.

:class:`MultiVFMFeatures` runs any subset of these over each video decoded once, one sub-store per model.
Every run ends with upstream's reports, which the feature writer leaves (:mod:`lit_features.store.vfm_report`):
``failed_videos.txt`` in each model's folder, ``vfm_dimensions.txt`` and ``vfm_summary.json`` in the output folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from lit_features.data.dataset import Batch, Prepared
from lit_features.data.manifest import IMAGE_EXTENSIONS, Sample
from lit_features.data.preprocess import EntryError, MediaLoader, Preprocessor
from lit_features.data.sampling import FrameSampling
from lit_features.data.transforms import NORMALIZATION_PRESETS, normalize, resize, to_tensor
from lit_features.extractors.base import FeatureExtractor, MissingWeightsError, is_about_inputs, quiet_transformers
from lit_features.interfaces import ModelsReport
from lit_features.models.weights import from_pretrained_strict
from lit_features.records import Failure, FeatureRecord, PredictionOutput

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


# ----------------------------------------------------------------------------------------------------------------
# VideoMAE (Hugging Face)


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
        cfg = read_json(Path(self.model_path) / "config.json")
        patch = cfg.get("patch_size")
        return (as_pair(patch)[0] if patch is not None else None), cfg.get("tubelet_size")

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


# ----------------------------------------------------------------------------------------------------------------
# VideoMAE V2 (original checkpoint format)


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


# ----------------------------------------------------------------------------------------------------------------
# V-JEPA 2 (Hugging Face, encoder only)


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
        cfg = read_json(Path(self.model_path) / "config.json")
        patch = cfg.get("patch_size")
        return (as_pair(patch)[0] if patch is not None else None), cfg.get("tubelet_size")

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


# ----------------------------------------------------------------------------------------------------------------
# DINOv2 (Hugging Face)


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
        patch = read_json(Path(self.model_path) / "config.json").get("patch_size")
        return (as_pair(patch)[0] if patch is not None else None), None

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


# ----------------------------------------------------------------------------------------------------------------
# Several models over one decode

#: Model label -> (extractor class, default weights path under ``model_root``).
VFM_MODELS: dict[str, tuple[type[VFMFeatures], str]] = {
    "VideoMAEv2": (VideoMAEv2Features, "vit_b_k710_dl_from_giant.pth"),
    "VideoMAE": (VideoMAEFeatures, "videomae-base"),
    "DINOv2": (DINOv2Features, "dinov2-base"),
    "VJEPA2": (VJEPA2Features, "vjepa2-vitl-fpc64-256"),
}
ModelName = Literal["VideoMAEv2", "VideoMAE", "DINOv2", "VJEPA2"]


class MultiVFMFeatures(FeatureExtractor):
    """Several VFM extractors over each video decoded once; one sub-store per model (``<output_dir>/<model>``).

    Each sub-store has the fingerprint the single-model extractor would give it, so a sub-store can be
    resumed by either. At the end ``<output_dir>/vfm_dimensions.txt`` and ``vfm_summary.json`` record each
    model's feature shape and dimension C, samples written, failures, and models skipped.

    Args:
        models: models to run, any of ``VideoMAEv2``, ``VideoMAE``, ``DINOv2``, ``VJEPA2``.
        model_root: folder holding the default weights (``vit_b_k710_dl_from_giant.pth``, ``videomae-base``,
            ``dinov2-base``, ``vjepa2-vitl-fpc64-256``).
        model_paths: per-model weights path (or hub id) overriding ``model_root/<default>``.
        skip_missing: skip a model whose weights are missing (one warning line each) instead of failing at start.
        num_frames: frames uniformly sampled per video.
        clip_height: frame height for VideoMAE, VideoMAE V2 and V-JEPA 2.
        clip_width: frame width for VideoMAE, VideoMAE V2 and V-JEPA 2.
        dinov2_height: frame height for DINOv2.
        dinov2_width: frame width for DINOv2.
        dinov2_chunk: DINOv2 frames per forward pass.
        vjepa2_rope_grid: V-JEPA 2 rotary positions (see :class:`VJEPA2Features`).
        short_clip: policy for videos shorter than ``num_frames``.
        dtype: model dtype for every model.
    """

    extractor_name = "vfm_multi"

    def __init__(
        self,
        models: list[ModelName] | None = None,
        model_root: str = "pretrained_model",
        model_paths: dict[str, str] | None = None,
        skip_missing: bool = False,
        num_frames: int = 48,
        clip_height: int = 160,
        clip_width: int = 240,
        dinov2_height: int = 420,
        dinov2_width: int = 630,
        dinov2_chunk: int = 128,
        vjepa2_rope_grid: Literal["input", "config"] = "input",
        short_clip: ShortClip = "stretch",
        dtype: str = "float32",
    ):
        super().__init__(model_root, dtype)
        names = list(models) if models is not None else list(VFM_MODELS)
        unknown = sorted(set(names) - set(VFM_MODELS)) + sorted(set(model_paths or {}) - set(VFM_MODELS))
        if unknown:
            raise ValueError(f"unknown VFM model(s) {unknown}; choose from {list(VFM_MODELS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"models lists a model twice: {names}")
        common = {"num_frames": num_frames, "short_clip": short_clip, "dtype": dtype}
        members: dict[str, VFMFeatures] = {}
        self.skipped: dict[str, str] = {}
        for name in names:
            cls, default = VFM_MODELS[name]
            path = (model_paths or {}).get(name) or os.path.join(model_root, default)
            kwargs: dict[str, Any] = {"model_path": path, **common}
            if name == "DINOv2":
                kwargs.update(height=dinov2_height, width=dinov2_width, chunk_size=dinov2_chunk)
            else:
                kwargs.update(height=clip_height, width=clip_width)
            if name == "VJEPA2":
                kwargs["rope_grid"] = vjepa2_rope_grid
            try:
                members[name] = cls(**kwargs)
            except MissingWeightsError as err:
                if not skip_missing:
                    raise
                self.skipped[name] = str(err)
                log.warning("skipping %s: weights not found at %s (skip_missing is on)", name, path)
        if not members:
            raise MissingWeightsError(
                "MultiVFMFeatures: no model left to run; weights are missing for all of " + ", ".join(names)
            )
        self.members = torch.nn.ModuleDict(members)
        self.is_stand_in = any(m.is_stand_in for m in members.values())
        self._preprocessor: VideoClipPreprocessor | None = None

    def check_weights_present(self, path: str) -> None:
        return None  # each model checks its own weights (and may be skipped)

    def preprocessor(self) -> VideoClipPreprocessor:
        if self._preprocessor is None:
            sizes = tuple(dict.fromkeys(m.size for m in self.members.values()))
            first = next(iter(self.members.values())).preprocessor()
            self._preprocessor = VideoClipPreprocessor(
                num_frames=first.num_frames, sizes=sizes, short_clip=first.short_clip
            )
        return self._preprocessor

    def fingerprint(self) -> dict[str, Any]:
        return {name: m.fingerprint() for name, m in self.members.items()}

    def store_fingerprints(self) -> dict[str, dict[str, Any]]:
        return {name: m.fingerprint() for name, m in self.members.items()}

    def configure_model(self) -> None:
        for member in self.members.values():
            member.configure_model()

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> PredictionOutput:
        failures = list(batch.failures)
        records: list[FeatureRecord] = []
        if len(batch) == 0:
            return PredictionOutput(records, failures)
        for name, member in self.members.items():
            try:
                feats = member.features(batch.inputs)
            except Exception as err:  # this model loses these samples; the other models keep theirs
                if not is_about_inputs(err):
                    raise
                log.exception("%s failed on batch %d", name, batch_idx)
                failures += [
                    Failure(k, s, "model", type(err).__name__, str(err), store=name)
                    for k, s in zip(batch.keys, batch.sources)
                ]
                continue
            for i, (key, source, feat) in enumerate(zip(batch.keys, batch.sources, feats)):
                meta = member.sample_meta(batch, i)
                records.append(FeatureRecord(key, source, {"feature": feat.contiguous()}, meta, store=name))
        return PredictionOutput(records, failures)

    def models_report(self) -> ModelsReport:
        """Every member (a sub-store each) and the models left out, for the writer's end-of-run report."""
        return ModelsReport(
            labels={name: name for name in self.members},
            dims={name: m.feature_dim for name, m in self.members.items()},
            skipped=dict(self.skipped),
            num_frames=self.preprocessor().num_frames,
        )
