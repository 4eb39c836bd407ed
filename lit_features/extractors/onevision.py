"""Penultimate-layer features of the OneVision-Encoder-style video ViT, in its batch form and its packed form.

Inputs at native resolution with the model's own snapping rule by default: each side floored to a multiple
of the patch size and center-cropped (``snap="crop"``; no pixel is resampled), CLIP normalisation, videos as
``num_frames`` uniformly sampled frames (``round(linspace(0, n-1, N))``, or floored with
``frame_rounding="floor"``). Frame ``i`` of ``T`` gets the rotary time position
``round(i / (T - 1) * 63)`` of a 64-slot grid (8 frames: ``[0, 9, 18, 27, 36, 45, 54, 63]``, recorded as
``frame_slots`` in each video's metadata); images sit at t = 0.

* :class:`OneVisionFeatures` (``onevision``): the batch form, one sample at a time. A video becomes the
  zero-padded 64-frame clip ``[1, 3, 64, H, W]`` plus ``visible_indices`` (every patch of the occupied
  slots); the model embeds only those patches.
* :class:`OneVisionPackedFeatures` (``onevision_packed``): the packed form. The patches of every sample in a
  batch form one sequence with a ``grid_thw`` per sample and explicit ``patch_positions``; attention is
  block-diagonal per sample.

Unlike the per-frame Hugging Face towers, the whole video is one attention sequence. The stored tensor
``features`` is ``hidden_states[layer]`` reshaped to ``[N, D]`` for an image and ``[T, N, D]`` for a video
(tokens are in (t, h, w) order, so this is a view of the model's ``[T * N, D]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from lit_features.data.dataset import Batch
from lit_features.extractors.base import FeatureExtractor
from lit_features.extractors.vision_tower import (
    NativeResolutionPreprocessor,
    choose_normalisation,
    omit_default_rounding,
)
from lit_features.models.onevision_positions import (
    DEFAULT_TEMPORAL_SLOTS,
    frame_slots,
    grid_positions,
    patchify,
    visible_indices_for_slots,
)
from lit_features.models.onevision_vit import OneVisionViTModel
from lit_features.models.packed_vision_tower import resolve_layer, token_budget_groups
from lit_features.models.weights import from_pretrained_strict


class OneVisionFeatures(FeatureExtractor):
    """OneVision ViT features, batch form (zero-padded 64-slot clip + ``visible_indices``), one sample at a time.

    Args:
        model_path: checkpoint directory (``config.json`` + safetensors, saved with ``save_pretrained``).
        layer: index into ``hidden_states`` (``-2``: output of the penultimate layer, before the post-norm).
        snap: how sides are made multiples of the patch size: ``crop`` (floor + center-crop, the model's rule,
            this extractor's default) or ``resize`` (bicubic to the nearest multiple).
        normalization: ``clip`` (default) or another preset, or ``checkpoint`` (the folder's
            ``preprocessor_config.json``).
        dtype: model dtype; features are stored in it.
        preprocess: the other frame and size options, flat (``num_frames``, at most the model's
            ``temporal_slots``; ``short_clip``, ``max_pixels``, ``frame_rounding``: ``round``, the seed README's
            rule, or ``floor``, the public extraction code's; ``decoder_scaling``): the fields of
            :class:`~lit_features.extractors.vision_tower.NativeResolutionPreprocessor`, defined there once.
    """

    extractor_name = "onevision"
    hub_id = "lmms-lab-encoder/onevision-encoder-large"

    def __init__(
        self,
        model_path: str = "pretrained_model/OneVision-Encoder-Base",
        layer: int = -2,
        snap: Literal["resize", "crop"] = "crop",  # the one option whose default differs from the preprocessor's
        normalization: str = "clip",
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
        **preprocess: Any,
    ):
        super().__init__(model_path, dtype, trust_remote_code)
        self.layer = layer
        self.normalization = normalization
        mean, std = choose_normalisation(model_path, normalization)  # a bad name fails now, not in a worker
        config = self.model_config()
        self.patch_size = int(config.get("patch_size", 14))
        self.temporal_slots = int(config.get("temporal_slots", DEFAULT_TEMPORAL_SLOTS))
        # Built now, so a bad value (e.g. frame_rounding) fails here, not in a DataLoader worker.
        self._preprocessor = NativeResolutionPreprocessor(
            patch_size=self.patch_size, snap=snap, mean=tuple(mean), std=tuple(std), **preprocess
        )
        self.record_preprocessing(self._preprocessor, derived=("patch_size", "mean", "std"))
        num_frames = self._preprocessor.num_frames
        if not 1 <= num_frames <= self.temporal_slots:
            raise ValueError(
                f"num_frames must be between 1 and the model's {self.temporal_slots} temporal slots, got {num_frames}"
            )

    def model_config(self) -> dict[str, Any]:
        file = Path(self.model_path) / "config.json"
        return json.loads(file.read_text()) if file.exists() else {}

    def preprocessor(self) -> NativeResolutionPreprocessor:
        return self._preprocessor

    def fingerprint(self) -> dict[str, Any]:
        return omit_default_rounding(super().fingerprint())

    def load_model(self) -> torch.nn.Module:
        model = from_pretrained_strict(OneVisionViTModel, self.model_path, dtype=self.compute_dtype)
        resolve_layer(self.layer, model.config.num_hidden_layers)  # a bad index fails before any sample
        return model

    def sample_meta(self, batch: Batch, index: int) -> dict[str, Any]:
        meta = super().sample_meta(batch, index)
        # Where the features came from, for reports such as the seed-001 metadata.json (export-npz).
        meta.update(model_path=self.model_path, device=self.device.type)
        if meta.get("kind") == "video":
            meta["frame_slots"] = self.slots(len(meta["frame_indices"]))
        return meta

    def slots(self, frames: int) -> list[int]:
        """Rotary time positions of ``frames`` sampled frames in the model's temporal grid."""
        return frame_slots(frames, self.temporal_slots)

    @staticmethod
    def _items(inputs: Any) -> list[torch.Tensor]:
        return list(inputs) if not isinstance(inputs, list) else inputs

    def encode_one(self, frames: torch.Tensor, video: bool) -> torch.Tensor:
        """``hidden_states[layer]`` of one sample ``[T, 3, H, W]`` through the batch form -> ``[T, N, D]``."""
        assert self.model is not None
        t, c, height, width = frames.shape
        p = self.patch_size
        h, w = height // p, width // p
        pixels = frames.to(self.device, self.compute_dtype)
        if video:
            slots = self.slots(t)
            padded = pixels.new_zeros(1, c, self.temporal_slots, height, width)
            padded[0, :, slots] = pixels.transpose(0, 1)
            visible = visible_indices_for_slots(slots, h, w)[None].to(self.device)
            out = self.model(padded, visible_indices=visible, output_hidden_states=True)
        else:
            out = self.model(pixels.transpose(0, 1)[None], output_hidden_states=True)
        return out.hidden_states[self.layer][0].reshape(t, h * w, -1)

    def extract(self, inputs: Any, batch: Batch) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for frames, meta in zip(self._items(inputs), batch.metas):
            video = meta.get("kind") == "video"
            feats = self.encode_one(frames, video)
            outputs.append({"features": feats if video else feats[0]})
        return outputs


class OneVisionPackedFeatures(OneVisionFeatures):
    """OneVision ViT features, packed form: every sample of a batch in one sequence (``grid_thw``,
    ``patch_positions``, block-diagonal attention). Same preprocessing, keys and shapes as ``onevision``.

    Every other argument (and its ``--model.*`` flag) is :class:`OneVisionFeatures`'s, with the same default.

    Args:
        max_tokens: most patches in one packed sequence; a batch above it is cut into several packs between
            samples (a single larger sample still runs whole). ``None``: one pack per batch.
    """

    extractor_name = "onevision_packed"
    fingerprint_exclude = ("model_path", "max_tokens")  # like batch size: where packs split changes no result

    def __init__(self, *args: Any, max_tokens: int | None = 65536, **kwargs: Any):
        super().__init__(*args, **kwargs)  # the parent's arguments, unchanged (and its flags: --model.layer ...)
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be positive or None, got {max_tokens}")
        self.max_tokens = max_tokens

    def encode_pack(self, samples: list[tuple[torch.Tensor, bool]]) -> list[torch.Tensor]:
        """``hidden_states[layer]`` of several samples ``([T, 3, H, W], is_video)`` in one packed forward."""
        assert self.model is not None
        p = self.patch_size
        patches, grids, positions = [], [], []
        for frames, video in samples:
            t, _, height, width = frames.shape
            h, w = height // p, width // p
            pixels = frames.to(self.device, self.compute_dtype).transpose(0, 1)  # [3, T, H, W]
            patches.append(patchify(pixels, p))
            grids.append((t, h, w))
            positions.append(grid_positions(self.slots(t) if video else [0] * t, h, w))
        out = self.model.forward_packed(
            torch.cat(patches),
            torch.tensor(grids),
            torch.cat(positions).to(self.device),
            output_hidden_states=True,
        )
        hidden = out.hidden_states[self.layer]
        lengths = [t * h * w for t, h, w in grids]
        return [chunk.reshape(t, h * w, -1) for chunk, (t, h, w) in zip(hidden.split(lengths), grids)]

    def extract(self, inputs: Any, batch: Batch) -> list[dict[str, torch.Tensor]]:
        items = self._items(inputs)
        kinds = [meta.get("kind") == "video" for meta in batch.metas]
        p = self.patch_size
        tokens = [item.shape[0] * (item.shape[-2] // p) * (item.shape[-1] // p) for item in items]
        feats: list[torch.Tensor | None] = [None] * len(items)
        for group in token_budget_groups(tokens, self.max_tokens):
            for i, f in zip(group, self.encode_pack([(items[i], kinds[i]) for i in group])):
                feats[i] = f
        return [{"features": f if video else f[0]} for f, video in zip(feats, kinds)]  # type: ignore[index]
