"""Sequence-packed forward over a loaded Hugging Face SigLIP or CLIP vision tower (same weights, no conversion).

Many images or video frames of different sizes become one flat token sequence. Everything token-wise runs once
over the whole sequence, reusing the tower's own modules: the patch embedding (its Conv2d weight applied as
the equivalent matmul on flattened patches), the per-item position embedding (the tower's own
``interpolate_pos_encoding`` for each distinct grid), CLIP's class token and pre-layernorm, and in every
encoder layer the layer norms, q/k/v/out projections and MLP. Only attention needs item boundaries: it runs
block-diagonally through :func:`lit_features.models.packing.segment_attention` (flash-attn's varlen kernel on
CUDA when installed, exact SDPA per segment otherwise).

``hidden_states`` follows the towers' convention (input to layer 0, then every layer's output), and the
forward stops after the requested layer, so ``layer=-2`` never runs the last one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lit_features.models.packing import cu_seqlens_from_lengths, segment_attention

__all__ = [
    "has_class_token",
    "packed_tower_hidden_state",
    "patchify_frames",
    "resolve_layer",
    "token_budget_groups",
]


def has_class_token(tower: nn.Module) -> bool:
    """True for towers that prepend a class token to every image (CLIP), False for SigLIP."""
    return hasattr(tower.embeddings, "class_embedding")


def resolve_layer(layer: int, num_layers: int) -> int:
    """Turns a (possibly negative) ``hidden_states`` index into a non-negative one.

    ``hidden_states`` has ``num_layers + 1`` entries, so ``-2`` is ``num_layers - 1``.

    Raises:
        IndexError: If ``layer`` does not index ``hidden_states``.
    """
    count = num_layers + 1
    if not -count <= layer < count:
        raise IndexError(f"layer {layer} is out of range for hidden_states of {count} entries ({num_layers} layers)")
    return layer % count


def token_budget_groups(tokens: Sequence[int], max_tokens: int | None) -> list[list[int]]:
    """Splits items (in order) into packs of consecutive indices whose token counts sum to <= ``max_tokens``.

    An item larger than the budget gets a pack of its own; ``None`` puts everything in one pack.
    """
    groups: list[list[int]] = []
    used = 0
    for i, n in enumerate(tokens):
        if not groups or (max_tokens is not None and used + n > max_tokens):
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups


def patchify_frames(frames: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cuts ``[F, C, H, W]`` frames into ``[F * H/p * W/p, C * p * p]`` rows, each patch flattened (C, p, p).

    Row order is frame-major then row-major over the patch grid, which is the order a strided Conv2d's
    output takes after ``flatten(2).transpose(1, 2)``.
    """
    n, c, height, width = frames.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"{height}x{width} is not a multiple of the {patch_size}px patch; snap it first")
    h, w = height // patch_size, width // patch_size
    blocks = frames.reshape(n, c, h, patch_size, w, patch_size).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(n * h * w, c * patch_size * patch_size)


class _ShapeOnly:
    """Stands in for the embeddings tensor the towers' ``interpolate_pos_encoding`` reads only the shape of."""

    def __init__(self, *shape: int):
        self.shape = torch.Size(shape)


def _position_embedding(embeddings: nn.Module, grid_h: int, grid_w: int, cls: bool) -> torch.Tensor:
    """The tower's own (interpolated) position embedding for one grid: ``[(1 +) h*w, D]``."""
    p = embeddings.patch_size
    dim = embeddings.position_embedding.weight.shape[-1]
    tokens = grid_h * grid_w + (1 if cls else 0)
    pos = embeddings.interpolate_pos_encoding(_ShapeOnly(1, tokens, dim), grid_h * p, grid_w * p)
    return pos.reshape(-1, dim)


def _packed_layer(layer: nn.Module, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """One pre-norm encoder layer of the tower on a packed ``[total, D]`` sequence."""
    attn = layer.self_attn
    heads, head_dim = attn.num_heads, attn.head_dim
    h = layer.layer_norm1(x)
    q = attn.q_proj(h).view(-1, heads, head_dim)
    k = attn.k_proj(h).view(-1, heads, head_dim)
    v = attn.v_proj(h).view(-1, heads, head_dim)
    out = segment_attention(q, k, v, cu_seqlens, scale=attn.scale)
    x = x + attn.out_proj(out.reshape(x.shape))
    return x + layer.mlp(layer.layer_norm2(x))


@torch.no_grad()
def packed_tower_hidden_state(tower: nn.Module, items: Sequence[torch.Tensor], layer: int = -2) -> list[torch.Tensor]:
    """``hidden_states[layer]`` of every frame of every item, computed in one packed sequence.

    Args:
        tower: A loaded ``SiglipVisionModel`` or ``CLIPVisionModel`` (any dtype/device).
        items: Each ``[F, 3, H, W]`` (an image is ``F = 1``), H and W multiples of the patch size; items and
            frames may all have different sizes.
        layer: Index into ``hidden_states`` (input to layer 0, then each layer's output).

    Returns:
        One ``[F, h*w, D]`` tensor per item, patch tokens only (CLIP's class token is dropped), in the
        tower's dtype.
    """
    emb = tower.embeddings
    cls = has_class_token(tower)
    layers = tower.encoder.layers
    depth = resolve_layer(layer, len(layers))
    weight = emb.patch_embedding.weight
    dtype, device = weight.dtype, weight.device
    p = emb.patch_size

    grids: list[tuple[int, int, int]] = []  # (frames, h, w) per item
    patches = []
    for item in items:
        if item.dim() != 4:
            raise ValueError(f"each item must be [F, 3, H, W], got shape {tuple(item.shape)}")
        grids.append((item.shape[0], item.shape[2] // p, item.shape[3] // p))
        patches.append(patchify_frames(item.to(device=device, dtype=dtype), p))
    # The strided Conv2d is exactly this matmul on (C, p, p)-flattened patches: one GEMM for the whole pack.
    x = F.linear(torch.cat(patches), weight.flatten(1), emb.patch_embedding.bias)

    cache: dict[tuple[int, int], torch.Tensor] = {}
    segments = []
    offset = 0
    for frames, h, w in grids:
        if (h, w) not in cache:
            cache[(h, w)] = _position_embedding(emb, h, w, cls)
        pos = cache[(h, w)]
        n = h * w
        tokens = x[offset : offset + frames * n].view(frames, n, -1)
        offset += frames * n
        if cls:
            cls_tok = (emb.class_embedding + pos[0]).expand(frames, 1, -1)
            segments.append(torch.cat([cls_tok, tokens + pos[1:]], dim=1).reshape(-1, x.shape[-1]))
        else:
            segments.append((tokens + pos).reshape(-1, x.shape[-1]))
    x = torch.cat(segments)
    if cls:
        x = tower.pre_layrnorm(x)

    per_frame = [h * w + (1 if cls else 0) for frames, h, w in grids for _ in range(frames)]
    cu_seqlens = cu_seqlens_from_lengths(per_frame, device=device)
    for block in layers[:depth]:
        x = _packed_layer(block, x, cu_seqlens)

    out = []
    offset = 0
    for frames, h, w in grids:
        n = h * w + (1 if cls else 0)
        chunk = x[offset : offset + frames * n].view(frames, n, -1)
        offset += frames * n
        out.append(chunk[:, 1:] if cls else chunk)
    return out
