"""Block-diagonal attention over packed variable-length sequences, shared by all packed encoder forms.

A packed batch concatenates the tokens of several items into one flat sequence so that token-wise work
(patch embedding, norms, projections, MLPs) runs once without padding; only attention must respect the
item boundaries, given as ``cu_seqlens`` (the cumulative lengths, starting at 0). This module holds that
one boundary-aware step, independent of any model.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise

import torch
import torch.nn.functional as F

__all__ = ["cu_seqlens_from_lengths", "flash_attn_available", "segment_attention"]


def cu_seqlens_from_lengths(
    lengths: Sequence[int] | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """Turns per-item token counts into cumulative boundaries.

    Args:
        lengths: Number of tokens of each item, in packing order (zero-length items are allowed).
        device: Device of the result; defaults to that of ``lengths`` when it is a tensor, else CPU.

    Returns:
        An int32 tensor ``[n + 1]``: ``[0, l0, l0 + l1, ...]``, the layout flash-attn's varlen kernels expect.

    Raises:
        ValueError: If a length is negative or ``lengths`` is not one-dimensional.
    """
    lengths_t = torch.as_tensor(lengths, dtype=torch.int64)
    if isinstance(lengths, torch.Tensor) and device is None:
        device = lengths.device
    if lengths_t.dim() != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {tuple(lengths_t.shape)}")
    if bool((lengths_t < 0).any()):
        raise ValueError(f"lengths must be non-negative, got {lengths_t.tolist()}")
    cu = torch.zeros(lengths_t.numel() + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths_t, dim=0).to(torch.int32)
    return cu.to(device) if device is not None else cu


@lru_cache(maxsize=1)
def _flash_attn_varlen_func():
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # ImportError, or a broken CUDA build raising at import time
        return None
    return flash_attn_varlen_func


def flash_attn_available() -> bool:
    """Returns True when ``flash_attn.flash_attn_varlen_func`` can be imported."""
    return _flash_attn_varlen_func() is not None


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> list[int]:
    if q.dim() != 3 or k.shape != q.shape or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            "segment_attention expects q, k, v shaped [total, heads, head_dim] with matching total "
            "and heads; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    bounds = [int(b) for b in cu_seqlens.tolist()]
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != q.shape[0]:
        raise ValueError(
            f"cu_seqlens must start at 0 and end at the packed length {q.shape[0]}; got {bounds[:4]}...{bounds[-2:]}"
        )
    if any(b < a for a, b in pairwise(bounds)):
        raise ValueError("cu_seqlens must be non-decreasing")
    return bounds


def segment_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float | None = None,
    use_flash: bool | None = None,
) -> torch.Tensor:
    """Non-causal attention restricted to each packed segment (a block-diagonal attention pattern).

    On CUDA with flash-attn installed and half-precision inputs this calls ``flash_attn_varlen_func`` once
    for the whole pack. Otherwise it runs ``scaled_dot_product_attention`` on each segment in turn, which is
    exact and spends no work on the zero blocks of a dense mask.

    Args:
        q: Queries ``[total, heads, head_dim]``.
        k: Keys ``[total, heads, head_dim]``.
        v: Values ``[total, heads, head_dim_v]``.
        cu_seqlens: Cumulative segment boundaries ``[n + 1]`` (see :func:`cu_seqlens_from_lengths`).
        scale: Softmax scale; defaults to ``head_dim ** -0.5``.
        use_flash: Force (True) or forbid (False) the flash-attn path; None picks it when possible.

    Returns:
        Attention output ``[total, heads, head_dim_v]`` in the dtype of ``q``.

    Raises:
        ValueError: On inconsistent shapes or boundaries.
        RuntimeError: If ``use_flash=True`` but flash-attn cannot run on these inputs.
    """
    bounds = _check_inputs(q, k, v, cu_seqlens)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    flash = _flash_attn_varlen_func()
    flash_ok = flash is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if use_flash and not flash_ok:
        raise RuntimeError(
            "use_flash=True needs flash-attn installed, CUDA tensors and float16/bfloat16 inputs; "
            f"got flash-attn {'present' if flash is not None else 'missing'}, device {q.device}, "
            f"dtype {q.dtype}"
        )
    if flash_ok and use_flash is not False:
        lengths = [b - a for a, b in pairwise(bounds)]
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        max_len = max(lengths)
        return flash(
            q,
            k,
            v,
            cu_seqlens_q=cu,
            cu_seqlens_k=cu,
            max_seqlen_q=max_len,
            max_seqlen_k=max_len,
            softmax_scale=scale,
            causal=False,
        )

    out = q.new_empty(q.shape[:2] + v.shape[-1:])
    for start, end in pairwise(bounds):
        if end == start:
            continue
        # SDPA wants [batch, heads, seq, dim]. The leading batch axis matters: on CPU only 4-D inputs reach the
        # fused flash kernel; 3-D ones fall back to the math path, which materialises the seq x seq scores
        # (tens of GB for one long video segment).
        seg = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1).unsqueeze(0),
            k[start:end].transpose(0, 1).unsqueeze(0),
            v[start:end].transpose(0, 1).unsqueeze(0),
            scale=scale,
        )
        out[start:end] = seg[0].transpose(0, 1)
    return out
