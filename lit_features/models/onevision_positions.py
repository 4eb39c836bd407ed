"""Positions and patches of the OneVision-style video ViT: the temporal slot grid, patchify, 3D rotary embedding.

Rotary positions over (t, h, w): head_dim/2 frequencies split 4:6:6 between the axes, each axis with
``inv_freq = 1 / theta ** (arange(n) / n)``, duplicated as ``concat(f, f)`` and applied with an interleaved
``rotate_half`` ((x_even, x_odd) -> (-x_odd, x_even) pairwise). Used by the model
(:mod:`lit_features.models.onevision_vit`) and by the extractor that prepares its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Temporal slots of the batch form's grid: sampled frames are spread over 64 rotary time positions.
DEFAULT_TEMPORAL_SLOTS = 64


def frame_slots(num_frames: int, grid: int = DEFAULT_TEMPORAL_SLOTS) -> list[int]:
    """Temporal slots of ``num_frames`` uniformly sampled frames in a ``grid``-slot timeline.

    Frame ``i`` goes to ``round(i / (num_frames - 1) * (grid - 1))`` (Python's round, half to even), so 8
    frames land on ``[0, 9, 18, 27, 36, 45, 54, 63]``. A single frame (an image) sits at slot 0.

    Raises:
        ValueError: If ``num_frames`` is not in ``[1, grid]``.
    """
    if not 1 <= num_frames <= grid:
        raise ValueError(f"num_frames must be between 1 and the {grid}-slot grid, got {num_frames}")
    if num_frames == 1:
        return [0]
    return [round(i / (num_frames - 1) * (grid - 1)) for i in range(num_frames)]


def patch_aligned_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Largest patch-multiple size inside ``height x width`` (each side floored, at least one patch).

    Native-resolution inputs are center-cropped to this size, never resized, so pixels stay untouched:
    451x300 with patch 14 becomes 448x294.
    """
    if height < patch_size or width < patch_size:
        raise ValueError(f"{height}x{width} is smaller than one {patch_size}px patch")
    return (height // patch_size * patch_size, width // patch_size * patch_size)


def patchify(video: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cuts frames into flattened patches in (t, h, w) order, each patch flattened as (C, p, p).

    Args:
        video: ``[C, T, H, W]`` or an image ``[C, H, W]``, with H and W multiples of ``patch_size``.
        patch_size: Patch side in pixels.

    Returns:
        ``[T * H/p * W/p, C * p * p]``, the row layout :meth:`OneVisionViTModel.forward_packed` expects.
    """
    if video.dim() == 3:
        video = video.unsqueeze(1)
    if video.dim() != 4:
        raise ValueError(f"expected [C, T, H, W] or [C, H, W], got shape {tuple(video.shape)}")
    c, t, height, width = video.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"{height}x{width} is not a multiple of the {patch_size}px patch; crop it first")
    h, w = height // patch_size, width // patch_size
    patches = video.reshape(c, t, h, patch_size, w, patch_size).permute(1, 2, 4, 0, 3, 5)
    return patches.reshape(t * h * w, c * patch_size * patch_size)


def grid_positions(
    t_coords: Sequence[int] | torch.Tensor, height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(t, h, w) rotary positions of a T x height x width patch grid, in (t, h, w) order.

    Args:
        t_coords: The temporal coordinate of each frame (``frame_slots(T)`` for videos, ``[0]`` for images).
        height: Patches per column.
        width: Patches per row.
        device: Device of the result.

    Returns:
        Int64 ``[len(t_coords) * height * width, 3]``.
    """
    t = torch.as_tensor(t_coords, dtype=torch.long, device=device)
    hh = torch.arange(height, device=device)
    ww = torch.arange(width, device=device)
    grid = torch.meshgrid(t, hh, ww, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=-1)


def visible_indices_for_slots(slots: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Flat indices of every patch of the given slots in a padded (slot, h, w) grid.

    Each slot contributes ``slot * h * w + arange(h * w)``; this is the batch form's ``visible_indices``.
    """
    per_frame = height * width
    return torch.cat([s * per_frame + torch.arange(per_frame) for s in slots])


def rope_axis_sizes(head_dim: int) -> tuple[int, int, int]:
    """Frequencies per axis (t, h, w): head_dim/2 split 4:6:6 in units of head_dim/32.

    Raises:
        ValueError: If ``head_dim`` is not a multiple of 32 (the split would not be whole).
    """
    if head_dim <= 0 or head_dim % 32:
        raise ValueError(
            f"head_dim {head_dim} is not a multiple of 32: the 3D rotary embedding splits head_dim/2 "
            "between (t, h, w) as 4:6:6 in units of head_dim/32. Choose hidden_size and "
            "num_attention_heads so that hidden_size / num_attention_heads is a multiple of 32."
        )
    unit = head_dim // 32
    return (4 * unit, 6 * unit, 6 * unit)


def rope_frequencies(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotary angles for (t, h, w) positions.

    Args:
        positions: ``[..., 3]`` integer or float (t, h, w) coordinates.
        head_dim: Attention head width (a multiple of 32).
        theta: Rotary base.

    Returns:
        Float32 ``[..., head_dim]``: ``concat(f, f)`` with ``f = concat(t*inv_t, h*inv_h, w*inv_w)``.
    """
    parts = []
    for axis, size in enumerate(rope_axis_sizes(head_dim)):
        inv_freq = 1.0 / theta ** (torch.arange(size, dtype=torch.float32, device=positions.device) / size)
        parts.append(positions[..., axis : axis + 1].to(torch.float32) * inv_freq)
    freqs = torch.cat(parts, dim=-1)
    return torch.cat([freqs, freqs], dim=-1)


def rotate_half_interleaved(x: torch.Tensor) -> torch.Tensor:
    """Maps each pair (x_even, x_odd) of the last axis to (-x_odd, x_even)."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``x * cos(freqs) + rotate_half_interleaved(x) * sin(freqs)``, computed in float32.

    ``freqs`` must broadcast against ``x`` (e.g. ``[L, 1, D]`` against ``[L, heads, D]``). The result
    has the dtype of ``x``.
    """
    xf = x.to(torch.float32)
    out = xf * freqs.cos() + rotate_half_interleaved(xf) * freqs.sin()
    return out.to(x.dtype)
