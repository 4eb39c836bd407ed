"""Frame transforms on ``[T, C, H, W]`` tensors: resizes, center crops, the upstream Wan size rules, normalisation."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from lit_features.data.decoder_scaling import cover_short_side

NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "lip": ((0.421,), (0.165,)),
}

Interpolation = Literal["bilinear", "bicubic", "nearest", "area"]


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [T, H, W, C]`` (or ``[H, W, C]``) -> float ``[T, C, H, W]`` in [0, 1]."""
    if frames.ndim == 3:
        frames = frames[None]
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def resize(
    x: torch.Tensor, size: tuple[int, int], mode: Interpolation = "bilinear", antialias: bool = True
) -> torch.Tensor:
    """Resize ``[T, C, H, W]`` to exactly ``size`` = (H, W)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    aa = antialias and mode in ("bilinear", "bicubic")
    return F.interpolate(x, size=size, mode=mode, antialias=aa, **kwargs)


def resize_short_side(x: torch.Tensor, short: int, mode: Interpolation = "bilinear") -> torch.Tensor:
    """Resize so the shorter side equals ``short`` (the other side rounded up, as upstream uses ceil)."""
    h, w = x.shape[-2:]
    scale = short / min(h, w)
    if h <= w:
        return resize(x, (short, math.ceil(w * scale)), mode)
    return resize(x, (math.ceil(h * scale), short), mode)


def resize_cover(x: torch.Tensor, size: tuple[int, int], mode: Interpolation = "bilinear") -> torch.Tensor:
    """Resize keeping aspect so the result covers ``size`` (both sides >= target)."""
    h, w = x.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    return resize(x, (max(size[0], math.ceil(h * scale)), max(size[1], math.ceil(w * scale))), mode)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the central ``size`` region (``[..., H, W]``); a clear error when the input is smaller."""
    h, w = x.shape[-2:]
    th, tw = size
    if h < th or w < tw:
        raise ValueError(f"cannot center-crop {h}x{w} to {th}x{tw}: input is smaller than the crop")
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def crop_then_resize(x: torch.Tensor, size: tuple[int, int], mode: Interpolation = "bilinear") -> torch.Tensor:
    """Crop the largest centred region with the target aspect, then resize it to exactly ``size``."""
    h, w = x.shape[-2:]
    th, tw = size
    if h * tw > w * th:  # too tall for the target aspect
        ch, cw = max(1, round(w * th / tw)), w
    else:
        ch, cw = h, max(1, round(h * tw / th))
    return resize(center_crop(x, (ch, cw)), size, mode)


def resize_then_crop(x: torch.Tensor, size: tuple[int, int], mode: Interpolation = "bilinear") -> torch.Tensor:
    """Resize to cover ``size`` keeping aspect (both sides ceil), then center-crop (FlashI2V's own rule differs:
    :func:`flashi2v_resize_crop`)."""
    return center_crop(resize_cover(x, size, mode), size)


def crop_to_aspect(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Center-crop ``[..., H, W]`` to the aspect of ``size`` (truncating sizes, offsets rounded half to even)."""
    h, w = x.shape[-2:]
    ratio = size[0] / size[1]
    ch, cw = (int(w * ratio), w) if h / w > ratio else (h, int(h / ratio))
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return x[..., top : top + ch, left : left + cw]


#: How each upstream size rule rounds the side of the covering size it computes (:func:`cover_short_side`).
UPSTREAM_COVER_ROUNDING: dict[str, Literal["floor", "ceil"]] = {"bindweave": "floor", "flashi2v": "ceil"}


def _bilinear_aa(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Resizing to the input's own size is the identity for bilinear (checked), so it is skipped.
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def bindweave_resize_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """BindWeave's training transform: ``uint8 [T, 3, H, W]`` -> float ``[T, 3, *size]`` in [0, 1].

    Resize the uint8 frames by the short side to cover ``size`` (:func:`cover_short_side`, ``floor``; bilinear,
    antialias, rounded to uint8 by the resize itself), /255, crop the centre to the target aspect, then resize to
    exactly ``size`` (a no-op unless truncation left the covering size a pixel short, e.g. 719x1278).
    """
    if frames.dtype != torch.uint8:
        raise TypeError(f"bindweave_resize_crop takes uint8 frames, got {frames.dtype}")
    covered = _bilinear_aa(frames, cover_short_side(*frames.shape[-2:], size, UPSTREAM_COVER_ROUNDING["bindweave"]))
    return _bilinear_aa(crop_to_aspect(covered.float() / 255.0, size), size)


def flashi2v_resize_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """FlashI2V's training transform: ``uint8 [T, 3, H, W]`` -> float ``[T, 3, *size]`` in [0, 1].

    Resize the uint8 frames by the short side to cover ``size`` (:func:`cover_short_side`, ``ceil``; bilinear,
    antialias), center-crop to exactly ``size``, then /255.
    """
    if frames.dtype != torch.uint8:
        raise TypeError(f"flashi2v_resize_crop takes uint8 frames, got {frames.dtype}")
    covered = _bilinear_aa(frames, cover_short_side(*frames.shape[-2:], size, UPSTREAM_COVER_ROUNDING["flashi2v"]))
    return center_crop(covered, size).float() / 255.0


UPSTREAM_SIZE_RULES = {"bindweave": bindweave_resize_crop, "flashi2v": flashi2v_resize_crop}


def normalize(x: torch.Tensor, preset: str | tuple[tuple[float, ...], tuple[float, ...]]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``[T, C, H, W]`` with a named preset or explicit (mean, std)."""
    if isinstance(preset, str):
        if preset not in NORMALIZATION_PRESETS:
            raise ValueError(f"unknown normalisation {preset!r}; choose from {sorted(NORMALIZATION_PRESETS)}")
        preset = NORMALIZATION_PRESETS[preset]
    mean = torch.tensor(preset[0], dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(preset[1], dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


SIZE_RULES = ("exact", "crop_then_resize", "resize_then_crop", "cover", "short_side", "none")


def apply_size_rule(
    x: torch.Tensor, rule: str, size: tuple[int, int] | None, mode: Interpolation = "bilinear"
) -> torch.Tensor:
    """Dispatch on a named size rule (the names used in configs)."""
    if rule == "none" or size is None:
        return x
    if rule == "exact":
        return resize(x, size, mode)
    if rule == "crop_then_resize":
        return crop_then_resize(x, size, mode)
    if rule == "resize_then_crop":
        return resize_then_crop(x, size, mode)
    if rule == "cover":
        return resize_cover(x, size, mode)
    if rule == "short_side":
        return resize_short_side(x, min(size), mode)
    raise ValueError(f"unknown size rule {rule!r}; choose from {SIZE_RULES}")
