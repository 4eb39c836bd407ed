"""ViT penultimate-layer features at native resolution from Hugging Face vision towers (SigLIP, CLIP).

Images keep their size, snapped to a multiple of the patch size (``snap="resize"``: resize each side to the
nearest multiple, bicubic; ``snap="crop"``: center-crop down to the multiple below). Videos give ``num_frames``
uniformly sampled frames (``round(linspace(0, n-1, N))`` inside the entry's ``cut``). Position embeddings are
interpolated to the input grid. The stored tensor ``features`` is ``[N, D]`` for an image and ``[T, N, D]``
for a video, from ``hidden_states[layer]`` (default ``-2``, the penultimate layer).

Two forms over the same checkpoint directory: :class:`VisionTowerFeatures` runs the Hugging Face model once
per sample; :class:`PackedVisionTowerFeatures` packs every frame of every sample in a batch into one token
sequence (:func:`lit_features.models.packed_vision_tower.packed_tower_hidden_state`) and writes the same keys
and shapes, so ``lit_features verify`` can compare their stores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lit_features.data.dataset import Batch, Prepared
from lit_features.data.decoder_scaling import WithinPixels, max_pixels_size
from lit_features.data.preprocess import MediaLoader, Preprocessor
from lit_features.data.sample import IMAGE_EXTENSIONS, Sample
from lit_features.data.sampling import FrameRounding, FrameSampling
from lit_features.data.transforms import NORMALIZATION_PRESETS, center_crop, normalize, resize, to_tensor
from lit_features.extractors.base import FeatureExtractor, quiet_transformers
from lit_features.models.packed_vision_tower import (
    packed_tower_hidden_state,
    resolve_layer,
    token_budget_groups,
)
from lit_features.models.weights import from_pretrained_strict

#: Checkpoint keys of a full SigLIP/CLIP model that its vision tower leaves out: the text tower, the
#: contrastive logit scale/bias and the projection heads (features are ``hidden_states``, before any head).
TWO_TOWER_HEADS = (r"text_model\.", r"logit_scale$", r"logit_bias$", r"text_projection\.", r"visual_projection\.")


def snap_size(height: int, width: int, patch: int, rule: Literal["resize", "crop"]) -> tuple[int, int]:
    """Target (H, W) as multiples of ``patch``: nearest multiple (``resize``) or the one below (``crop``)."""
    if rule == "resize":
        return max(patch, round(height / patch) * patch), max(patch, round(width / patch) * patch)
    return max(patch, height // patch * patch), max(patch, width // patch * patch)


def read_normalisation(model_path: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``image_mean``/``image_std`` from the weights' ``preprocessor_config.json`` when present."""
    file = Path(model_path) / "preprocessor_config.json"
    if not file.exists():
        return None
    cfg = json.loads(file.read_text())
    if "image_mean" in cfg and "image_std" in cfg:
        return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return None


def choose_normalisation(model_path: str, normalization: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for ``normalization``: ``checkpoint`` (the weights' ``preprocessor_config.json``, CLIP's
    values when it has none) or a preset name (``clip``, ``imagenet``, ``half``)."""
    if normalization == "checkpoint":
        norm = read_normalisation(model_path) if os.path.isdir(model_path) else None
        return norm if norm else NORMALIZATION_PRESETS["clip"]
    if normalization not in NORMALIZATION_PRESETS:
        raise ValueError(
            f"normalization must be 'checkpoint' or one of {sorted(NORMALIZATION_PRESETS)}, got {normalization!r}"
        )
    return NORMALIZATION_PRESETS[normalization]


def omit_default_rounding(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Drops ``frame_rounding: round`` from a fingerprint's ``params``.

    Rounding was the only rule before ``floor`` became an option, so stores made with it keep their
    fingerprint; a ``floor`` store records it (and is refused by a ``round`` run, and the other way round).
    """
    if fingerprint.get("params", {}).get("frame_rounding") == "round":
        fingerprint["params"] = {k: v for k, v in fingerprint["params"].items() if k != "frame_rounding"}
    return fingerprint


@dataclass
class NativeResolutionPreprocessor(Preprocessor):
    """Images at native resolution, or N uniform frames of a video, snapped to the patch grid and normalised.

    The extractors that use it take its options flat (``--model.num_frames`` ...); ``patch_size``, ``mean`` and
    ``std`` they derive from the weights and their ``normalization``.

    Args:
        patch_size: the model's patch size; sides become multiples of it.
        num_frames: frames uniformly sampled from each video.
        snap: how sides are made multiples of the patch size: ``resize`` (bicubic to the nearest multiple) or
            ``crop`` (floor + center-crop).
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        short_clip: policy for videos with fewer frames than ``num_frames``.
        max_pixels: downscale larger inputs to at most this many pixels first (``None``: never).
        frame_rounding: ``round`` (default) or ``floor`` the uniform frame positions ``linspace(0, n-1, N)``
            (recorded per video and, for ``floor``, in the store fingerprint).
        decoder_scaling: with ``max_pixels``, let FFmpeg scale video frames while decoding to the smallest size at
            least twice the ``max_pixels`` size on each side (bilinear; never up), then resize as always: less CPU
            per clip, features slightly different, so recorded in the store fingerprint when on. Images are
            unaffected.
    """

    patch_size: int = 14
    num_frames: int = 8
    snap: Literal["resize", "crop"] = "resize"
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    short_clip: Literal["fail", "pad_last", "stretch"] = "fail"
    max_pixels: int | None = None
    frame_rounding: FrameRounding = "round"
    decoder_scaling: bool = False

    def __post_init__(self) -> None:
        if self.frame_rounding not in ("round", "floor"):  # fail at start, not in a DataLoader worker
            raise ValueError(f"frame_rounding must be 'round' or 'floor', got {self.frame_rounding!r}")
        if self.decoder_scaling and self.max_pixels is None:
            raise ValueError(
                "decoder_scaling needs max_pixels: at native resolution there is nothing for the decoder to shrink "
                "(set model.max_pixels, or leave decoder_scaling off)"
            )

    def decoder_scale(self) -> WithinPixels | None:
        # Twice the target, so the bicubic resize still does the last halving (see lit_features.data.decoder_scaling).
        return WithinPixels(self.max_pixels, headroom=2) if self.decoder_scaling and self.max_pixels else None

    def params(self) -> dict[str, Any]:
        params = super().params()
        if params["frame_rounding"] == "round":
            del params["frame_rounding"]  # see omit_default_rounding
        return params

    def load_frames(self, sample: Sample, media: MediaLoader) -> tuple[Any, dict[str, Any]]:
        assert sample.source is not None
        if Path(sample.source).suffix.lower() in IMAGE_EXTENSIONS:
            image = media.image(sample.source)
            return image[None], {"kind": "image", "source_size": list(image.shape[:2])}
        sampling = FrameSampling("uniform", self.num_frames, short_clip=self.short_clip, rounding=self.frame_rounding)
        video = media.video(sample.source, sampling, sample.cut, scale=self.decoder_scale())
        meta = {
            "kind": "video",
            "frame_indices": video.indices,
            "frame_rounding": self.frame_rounding,
            "total_frames": video.total_frames,
            "fps": video.fps,
            "source_size": list(video.source_size),
        }
        if tuple(video.frames.shape[1:3]) != tuple(video.source_size):
            meta["decoded_size"] = list(video.frames.shape[1:3])  # the decoder scaled them (decoder_scaling)
        if video.padded:
            meta["padded_frames"] = video.padded
        return video.frames, meta

    def pixels(self, frames: Any, source_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Normalised ``[T, 3, H, W]``; sizes follow from ``source_size`` (the frames' own size when ``None``),
        so frames the decoder already scaled end at the size the full-size frames would."""
        x = to_tensor(frames)
        h, w = max_pixels_size(*(source_size or x.shape[-2:]), self.max_pixels)
        x = resize(x, (h, w), "bicubic")  # nothing to do when the frames already have that size
        th, tw = snap_size(h, w, self.patch_size, self.snap)
        x = resize(x, (th, tw), "bicubic") if self.snap == "resize" else center_crop(x, (th, tw))
        return normalize(x.clamp_(0, 1), (self.mean, self.std))

    def __call__(self, sample: Sample, media: MediaLoader) -> Prepared:
        frames, meta = self.load_frames(sample, media)
        pixels = self.pixels(frames, meta["source_size"])
        meta["size"] = list(pixels.shape[-2:])
        return Prepared(pixels, meta)


class VisionTowerFeatures(FeatureExtractor):
    """Per-sample ViT features from a Hugging Face SigLIP or CLIP vision tower.

    Args:
        model_path: weights folder (a full SigLIP/CLIP checkpoint or a vision-only one) or hub id.
        layer: index into ``hidden_states`` (``-2``: output of the penultimate layer).
        normalization: ``checkpoint`` (mean/std from the weights' ``preprocessor_config.json``, CLIP's when
            it has none) or a preset: ``clip``, ``imagenet``, ``half``.
        dtype: model dtype; features are stored in it.
        preprocess: the frame and size options, flat (``num_frames``, ``snap``, ``short_clip``, ``max_pixels``,
            ``frame_rounding``, ``decoder_scaling``): the fields of :class:`NativeResolutionPreprocessor`,
            defined there once.
    """

    extractor_name = "vision_tower"
    hub_id = "google/siglip-so400m-patch14-384"

    def __init__(
        self,
        model_path: str = "pretrained_model/siglip-so400m-patch14-384",
        layer: int = -2,
        normalization: str = "checkpoint",
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
        **preprocess: Any,
    ):
        super().__init__(model_path, dtype, trust_remote_code)
        self.layer = layer
        self.normalization = normalization
        mean, std = choose_normalisation(model_path, normalization)  # a bad name fails now, not in a worker
        # Built now, so a bad value (e.g. frame_rounding) fails here, not in a DataLoader worker.
        self._preprocessor = NativeResolutionPreprocessor(
            patch_size=int(self.vision_config().get("patch_size", 14)),
            mean=tuple(mean),
            std=tuple(std),
            **preprocess,
        )
        self.record_preprocessing(self._preprocessor, derived=("patch_size", "mean", "std"))

    def vision_config(self) -> dict[str, Any]:
        file = Path(self.model_path) / "config.json"
        if not file.exists():
            return {}
        cfg = json.loads(file.read_text())
        return cfg.get("vision_config", cfg)

    def preprocessor(self) -> NativeResolutionPreprocessor:
        return self._preprocessor

    def fingerprint(self) -> dict[str, Any]:
        return omit_default_rounding(super().fingerprint())

    def sample_meta(self, batch: Batch, index: int) -> dict[str, Any]:
        # Where the features came from, for reports such as the seed-001 metadata.json (export-npz).
        return {**super().sample_meta(batch, index), "model_path": self.model_path, "device": self.device.type}

    def load_model(self) -> torch.nn.Module:
        from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

        config = AutoConfig.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code)
        model_type = getattr(config, "model_type", "")
        cls = CLIPVisionModel if model_type.startswith("clip") else SiglipVisionModel
        # A full two-tower checkpoint also holds the text tower and the contrastive heads, which the vision tower
        # does not use (TWO_TOWER_HEADS); any other missing or unexpected key stops the run.
        with quiet_transformers():
            return from_pretrained_strict(
                cls,
                self.model_path,
                dropped=TWO_TOWER_HEADS,
                dtype=self.compute_dtype,
                trust_remote_code=self.trust_remote_code,
            )

    def configure_model(self) -> None:
        super().configure_model()
        assert self.model is not None
        resolve_layer(self.layer, self.model.config.num_hidden_layers)  # a bad index fails before any sample

    def tower_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``hidden_states[layer]`` of ``pixels [B, 3, H, W]`` -> ``[B, N, D]`` (CLS dropped for CLIP)."""
        assert self.model is not None
        out = self.model(
            pixel_values=pixels.to(self.compute_dtype),
            output_hidden_states=True,
            interpolate_pos_encoding=True,
        )
        hidden = out.hidden_states[self.layer]
        if type(self.model).__name__.startswith("CLIP"):
            hidden = hidden[:, 1:]  # patch tokens only, like SigLIP (no CLS)
        return hidden

    def extract(self, inputs: Any, batch: Batch) -> list[dict[str, torch.Tensor]]:
        items = list(inputs) if not isinstance(inputs, list) else inputs
        outputs = []
        for pixels, meta in zip(items, batch.metas):
            feats = self.tower_features(pixels)  # frames of one video share a size: one forward
            outputs.append({"features": feats[0] if meta.get("kind") == "image" else feats})
        return outputs


class PackedVisionTowerFeatures(VisionTowerFeatures):
    """Sequence-packed ViT features from the same Hugging Face SigLIP or CLIP checkpoint as ``vision_tower``.

    Every frame of every sample in a batch goes into one flat token sequence: the tower's token-wise modules
    run once over it and attention stays within each frame (block-diagonal; flash-attn varlen on CUDA when
    installed, exact SDPA per segment otherwise). Preprocessing, keys and stored shapes are those of
    ``vision_tower``, so the two stores compare with ``lit_features verify``. The forward stops after
    ``layer``, so the default ``-2`` never runs the last layer.

    Every other argument (and its ``--model.*`` flag) is :class:`VisionTowerFeatures`'s, with the same default.

    Args:
        max_tokens: most tokens in one packed sequence; a batch above it is cut into several packs
            between samples (a single larger sample still runs whole). ``None``: one pack per batch.
    """

    extractor_name = "vision_tower_packed"
    fingerprint_exclude = ("model_path", "max_tokens")  # like batch size: where packs split changes no result

    def __init__(self, *args: Any, max_tokens: int | None = 65536, **kwargs: Any):
        super().__init__(*args, **kwargs)  # the parent's arguments, unchanged (and its flags: --model.layer ...)
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be positive or None, got {max_tokens}")
        self.max_tokens = max_tokens

    def extract(self, inputs: Any, batch: Batch) -> list[dict[str, torch.Tensor]]:
        assert self.model is not None
        items = list(inputs) if not isinstance(inputs, list) else inputs
        feats: list[torch.Tensor | None] = [None] * len(items)
        p = self.model.config.patch_size
        tokens = [item.shape[0] * (item.shape[-2] // p) * (item.shape[-1] // p) for item in items]
        for group in token_budget_groups(tokens, self.max_tokens):
            hidden = packed_tower_hidden_state(self.model, [items[i] for i in group], self.layer)
            for i, h in zip(group, hidden):
                feats[i] = h
        return [
            {"features": f[0] if meta.get("kind") == "image" else f}  # type: ignore[index]
            for f, meta in zip(feats, batch.metas)
        ]
