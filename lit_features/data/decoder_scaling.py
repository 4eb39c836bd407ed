"""Decoder scaling: the size FFmpeg scales a clip's frames to while decoding, chosen from the job's own resize target.

A job that shrinks every frame to a size it can compute before decoding (the vision tower's ``max_pixels``, the
Wan cover resize) otherwise pays for converting full-size frames to RGB, copying them out of the decode sandbox
and resizing them from full size. With its ``decoder_scaling`` option on, the decoder (decord, or PyAV through
the same FFmpeg filter) converts straight to a smaller size, chosen here from the clip's upright source size;
the job's own resize then runs as before, from that size. FFmpeg's scaler (``scale=W:H``, bilinear: a triangle
filter widened by the scale factor, as torch's antialiased bilinear) then decides part of the numbers, so:

- a job whose own resize is bilinear (Wan) lets the decoder scale to exactly the size that resize makes
  (:class:`CoverSize`): the two filters agree up to rounding;
- a job whose own resize is bicubic (the vision tower) lets the decoder scale only to the smallest size at least
  twice its target on each side (:class:`WithinPixels`), and its bicubic resize does the last halving: scaled
  straight to the target, the bilinear filter would replace the bicubic one and soften every frame (about twice
  the difference from the exact path, measured in ``tools/benchmarks/decoder_scaling.py``).

The decoder never upscales, nor scales when the size it would ask for is not below the stored one on both
sides: such clips are decoded exactly as with the option off. Nothing here imports torch (the decode sandbox
runs it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["CoverSize", "DecoderScale", "WithinPixels", "cover_short_side", "decode_size", "max_pixels_size"]


class DecoderScale(Protocol):
    """A picklable rule: the size to decode a clip at, from its upright source size."""

    @property
    def rule(self) -> str:
        """How the decoder scales, for the store fingerprint (``decode.scale``)."""
        ...

    def size(self, height: int, width: int) -> tuple[int, int] | None:
        """Upright (H, W) to decode a ``height`` x ``width`` (upright) clip at; ``None``: its stored size."""
        ...


def max_pixels_size(height: int, width: int, max_pixels: int | None) -> tuple[int, int]:
    """The size a ``max_pixels`` bound makes of ``height`` x ``width``: both sides times
    ``sqrt(max_pixels / (height * width))``, truncated (at least 1), when above it; else unchanged."""
    if max_pixels is None or height * width <= max_pixels:
        return height, width
    scale = (max_pixels / (height * width)) ** 0.5
    return max(1, int(height * scale)), max(1, int(width * scale))


def cover_short_side(h: int, w: int, size: tuple[int, int], rounding: Literal["floor", "ceil"]) -> tuple[int, int]:
    """Size that covers ``size`` = (H, W) keeping aspect, with the matched side exactly the target.

    The scale comes from the side that must match (the height when the source is wider than the target, else the
    width); only the other side is computed, as ``target / matched * other`` in that float order, then truncated
    (``floor``: MindSpeed-MM's ``shortsideresize``, BindWeave) or rounded up (``ceil``: FlashI2V's fork). Scaling
    both sides by one factor and rounding each (as :func:`~lit_features.data.transforms.resize_cover` does) can
    land one pixel off the target: 406x720 -> 481x852 instead of 480x852 at 480x832.
    """
    th, tw = size
    other = math.floor if rounding == "floor" else math.ceil
    if h / w < th / tw:
        return th, int(other(th / h * w))
    return int(other(tw / w * h)), tw


def decode_size(height: int, width: int, target: tuple[int, int], headroom: int) -> tuple[int, int] | None:
    """``target`` times ``headroom`` (rounded up) when that is below ``height`` x ``width`` on both sides, else
    ``None`` (decode at the stored size: the decoder never upscales)."""
    h, w = math.ceil(target[0] * headroom), math.ceil(target[1] * headroom)
    return (h, w) if h < height and w < width else None


@dataclass(frozen=True)
class WithinPixels:
    """For a job that shrinks frames above ``max_pixels`` with a bicubic resize (:func:`max_pixels_size`):
    decode at the smallest size at least ``headroom`` times that target on each side."""

    max_pixels: int
    headroom: int = 2

    @property
    def rule(self) -> str:
        return f"ffmpeg_bilinear_to_{self.headroom}x_target"

    def size(self, height: int, width: int) -> tuple[int, int] | None:
        return decode_size(height, width, max_pixels_size(height, width, self.max_pixels), self.headroom)


@dataclass(frozen=True)
class CoverSize:
    """For a job that resizes frames with a bilinear filter to cover ``height`` x ``width`` by the short side
    (:func:`cover_short_side`, ``rounding`` of the other side): decode at exactly that covering size."""

    height: int
    width: int
    rounding: Literal["floor", "ceil"]

    @property
    def rule(self) -> str:
        return "ffmpeg_bilinear_to_1x_target"

    def size(self, height: int, width: int) -> tuple[int, int] | None:
        return decode_size(height, width, cover_short_side(height, width, (self.height, self.width), self.rounding), 1)
