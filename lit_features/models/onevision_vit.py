"""OneVision-Encoder-style video ViT with 3D rotary positions, in a padded-batch form and a packed form.

The architecture (OneVision-Encoder lineage, Apache-2.0): a per-frame Conv2d patch embedding without bias,
no CLS token and no absolute position embedding, a pre-layernorm, pre-norm transformer layers (norm,
attention, GELU-tanh MLP), a post-layernorm and an attention-pooling head; the norms are LayerNorm or RMSNorm
as the config's ``layer_norm_type`` says. Positions enter only through a
3D rotary embedding over (t, h, w): head_dim/2 frequencies split 4:6:6 between the axes, each axis with
``inv_freq = 1 / theta ** (arange(n) / n)``, duplicated as ``concat(f, f)`` and applied with an
interleaved ``rotate_half`` ((x_even, x_odd) -> (-x_odd, x_even) pairwise).

Both forms run over the same weights:

* :meth:`OneVisionViTModel.forward` takes a zero-padded batch ``[B, 3, T, H, W]`` (videos sit in a
  64-slot temporal grid, see :func:`frame_slots`) plus ``visible_indices`` and embeds only those patches;
  rotary positions come from the full T x h x w grid.
* :meth:`OneVisionViTModel.forward_packed` takes one flat sequence of flattened patches with a
  ``grid_thw`` per item and explicit ``patch_positions``; token-wise work runs once over the whole pack and
  attention is block-diagonal per item (:func:`lit_features.models.packing.segment_attention`).

``hidden_states`` holds the input to layer 0 followed by the output of every layer, so
``hidden_states[-2]`` is the penultimate layer's output, before the post-layernorm. Parameter names follow
the upstream non-packing Hugging Face implementation (``embeddings.patch_embedding``, ``layernorm_pre``,
``encoder.layers.{i}.self_attn.{q,k,v,out}_proj``, ``layernorm_post``, ``head.probe`` ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lit_features.models.packing import cu_seqlens_from_lengths, segment_attention

__all__ = [
    "DEFAULT_TEMPORAL_SLOTS",
    "LAYER_NORM_TYPES",
    "OneVisionViTConfig",
    "OneVisionViTModel",
    "apply_rope",
    "frame_slots",
    "grid_positions",
    "make_norm",
    "patch_aligned_size",
    "patchify",
    "rope_axis_sizes",
    "rope_frequencies",
    "rotate_half_interleaved",
    "visible_indices_for_slots",
]

#: Temporal slots of the batch form's grid: sampled frames are spread over 64 rotary time positions.
DEFAULT_TEMPORAL_SLOTS = 64
#: Values of ``OneVisionViTConfig.layer_norm_type`` (the upstream config field of the same name).
LAYER_NORM_TYPES = ("layer_norm", "rms_norm")


class OneVisionViTConfig(PretrainedConfig):
    """Configuration of :class:`OneVisionViTModel`; defaults are the ViT-L/14 sizes (hidden 1024, 24 layers).

    Args:
        hidden_size: Token width.
        intermediate_size: MLP hidden width.
        num_hidden_layers: Number of transformer layers.
        num_attention_heads: Attention heads; ``hidden_size / num_attention_heads`` must be a multiple of
            32 so that head_dim/2 splits 4:6:6 between t, h and w.
        num_channels: Input channels.
        patch_size: Square patch size in pixels.
        hidden_act: MLP activation (``gelu_pytorch_tanh`` is GELU with the tanh approximation).
        layer_norm_eps: Epsilon of every norm.
        layer_norm_type: ``layer_norm`` or ``rms_norm``: the norm of the pre-layernorm, both norms of every
            layer and the post-layernorm (an ``rms_norm`` checkpoint has no norm biases). The pooling head's
            own norm is an RMSNorm either way.
        attention_dropout: Dropout on attention probabilities (training only).
        initializer_range: Std of the normal init of fresh weights.
        rope_theta: Rotary base.
        temporal_slots: Size of the temporal grid that sampled video frames are spread over.
        use_head: Whether the post-layernorm and attention-pooling head exist.
        **kwargs: Passed to ``PretrainedConfig`` (markers such as ``tiny_random_stand_in`` are kept).
    """

    model_type = "onevision_vit"

    def __init__(
        self,
        hidden_size: int = 1024,
        intermediate_size: int = 4096,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        num_channels: int = 3,
        patch_size: int = 14,
        hidden_act: str = "gelu_pytorch_tanh",
        layer_norm_eps: float = 1e-6,
        layer_norm_type: str = "layer_norm",
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        rope_theta: float = 10000.0,
        temporal_slots: int = DEFAULT_TEMPORAL_SLOTS,
        use_head: bool = True,
        **kwargs,
    ) -> None:
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.hidden_act = hidden_act
        if layer_norm_type not in LAYER_NORM_TYPES:
            raise ValueError(f"layer_norm_type must be one of {LAYER_NORM_TYPES}, got {layer_norm_type!r}")
        self.layer_norm_eps = layer_norm_eps
        self.layer_norm_type = layer_norm_type
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.rope_theta = rope_theta
        self.temporal_slots = temporal_slots
        self.use_head = use_head
        super().__init__(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# Positions and patches
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------


def make_norm(config: OneVisionViTConfig) -> nn.Module:
    """The norm ``config.layer_norm_type`` names: LayerNorm (weight and bias) or RMSNorm (weight only)."""
    if config.layer_norm_type == "rms_norm":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class OneVisionViTEmbeddings(nn.Module):
    """Per-frame patch embedding: a bias-free Conv2d with kernel = stride = patch."""

    def __init__(self, config: OneVisionViTConfig) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Embeds flattened (C, p, p) patches ``[..., C*p*p]``; a strided conv is exactly this matmul."""
        weight = self.patch_embedding.weight
        return F.linear(patches.to(weight.dtype), weight.flatten(1))


class OneVisionViTAttention(nn.Module):
    """Multi-head self-attention with 3D rotary positions on queries and keys."""

    def __init__(self, config: OneVisionViTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def _rotated_qkv(self, x: torch.Tensor, freqs: torch.Tensor):
        split = x.shape[:-1] + (self.num_heads, self.head_dim)
        q = self.q_proj(x).view(split)
        k = self.k_proj(x).view(split)
        v = self.v_proj(x).view(split)
        angles = freqs.unsqueeze(-2)  # one set of angles shared by all heads
        return apply_rope(q, angles), apply_rope(k, angles), v

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """Attends within each batch row (``x`` ``[B, L, C]``) or, with ``cu_seqlens``, within each
        packed segment (``x`` ``[total, C]``). ``freqs`` has ``x``'s leading shape and head_dim last."""
        q, k, v = self._rotated_qkv(x, freqs)
        if cu_seqlens is None:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                dropout_p=self.dropout if self.training else 0.0,
                scale=self.scale,
            ).transpose(1, 2)
        else:
            out = segment_attention(q, k, v, cu_seqlens, scale=self.scale)
        return self.out_proj(out.reshape(x.shape))


class OneVisionViTMLP(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, config: OneVisionViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class OneVisionViTEncoderLayer(nn.Module):
    """Pre-norm transformer layer."""

    def __init__(self, config: OneVisionViTConfig) -> None:
        super().__init__()
        self.layer_norm1 = make_norm(config)
        self.self_attn = OneVisionViTAttention(config)
        self.layer_norm2 = make_norm(config)
        self.mlp = OneVisionViTMLP(config)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), freqs, cu_seqlens)
        return x + self.mlp(self.layer_norm2(x))


class OneVisionViTEncoder(nn.Module):
    """The stack of layers."""

    def __init__(self, config: OneVisionViTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(OneVisionViTEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        x: torch.Tensor,
        freqs: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        states = (x,) if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, freqs, cu_seqlens)
            if states is not None:
                states = states + (x,)
        return x, states


class OneVisionViTPoolingHead(nn.Module):
    """Attention pooling with one learned probe token, then an RMSNorm + MLP residual branch."""

    def __init__(self, config: OneVisionViTConfig) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = OneVisionViTMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pools ``[B, L, C]`` into ``[B, C]``."""
        probe = self.probe.expand(x.shape[0], -1, -1)
        pooled, _ = self.attention(probe, x, x, need_weights=False)
        pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------


class OneVisionViTPreTrainedModel(PreTrainedModel):
    """Weight init and (de)serialisation glue shared by the OneVision ViT models."""

    config_class = OneVisionViTConfig
    base_model_prefix = "onevision_vit"
    main_input_name = "pixel_values"
    _no_split_modules = ["OneVisionViTEncoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The base class covers Linear/Conv (normal), norms (ones/zeros) and MultiheadAttention.
        super()._init_weights(module)
        if isinstance(module, OneVisionViTPoolingHead):
            init.normal_(module.probe, std=self.config.initializer_range)


class OneVisionViTModel(OneVisionViTPreTrainedModel):
    """OneVision-Encoder-style video ViT; see the module docstring for the two input forms."""

    def __init__(self, config: OneVisionViTConfig) -> None:
        super().__init__(config)
        self.head_dim = config.hidden_size // config.num_attention_heads
        if self.head_dim * config.num_attention_heads != config.hidden_size:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not divisible by num_attention_heads {config.num_attention_heads}"
            )
        rope_axis_sizes(self.head_dim)  # fail at construction, not at the first forward
        self.embeddings = OneVisionViTEmbeddings(config)
        self.layernorm_pre = make_norm(config)
        self.encoder = OneVisionViTEncoder(config)
        if config.use_head:
            self.layernorm_post = make_norm(config)
            self.head = OneVisionViTPoolingHead(config)
        else:
            self.layernorm_post = None
            self.head = None
        self.post_init()

    def _pool(self, sequence: torch.Tensor) -> torch.Tensor | None:
        if self.head is None:
            return None
        return self.head(self.layernorm_post(sequence))

    def _finish(self, last, pooled, states, return_dict: bool | None):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(v for v in (last, pooled, states) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=states)

    def forward(
        self,
        pixel_values: torch.Tensor,
        visible_indices: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Batch form: encodes the visible patches of a zero-padded batch.

        Args:
            pixel_values: ``[B, 3, T, H, W]`` (videos in a ``temporal_slots``-frame grid, zeros in empty
                slots) or images ``[B, 3, H, W]`` (t = 0). H and W must be multiples of the patch size.
            visible_indices: ``[B, K]`` flat indices into the T x h x w patch grid of the patches to
                encode (see :func:`visible_indices_for_slots`); all patches when None.
            output_hidden_states: Return ``hidden_states`` (input to layer 0, then every layer's output);
                defaults to ``config.output_hidden_states``.
            return_dict: Return a ``BaseModelOutputWithPooling`` (default) or a tuple.

        Returns:
            ``last_hidden_state`` ``[B, K, D]`` (last layer, before the post-layernorm), ``pooler_output``
            ``[B, D]`` and optionally ``hidden_states``.
        """
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(2)
        if pixel_values.dim() != 5:
            raise ValueError(f"expected pixel_values [B, 3, T, H, W] or [B, 3, H, W], got {tuple(pixel_values.shape)}")
        batch, channels, frames, height, width = pixel_values.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"{height}x{width} is not a multiple of the {p}px patch; crop it first")
        h, w = height // p, width // p
        device = pixel_values.device
        if visible_indices is None:
            visible_indices = torch.arange(frames * h * w, device=device).expand(batch, -1)
        visible_indices = visible_indices.to(device=device, dtype=torch.long)
        if visible_indices.dim() != 2 or visible_indices.shape[0] != batch:
            raise ValueError(f"visible_indices must be [B={batch}, K], got {tuple(visible_indices.shape)}")
        if visible_indices.numel() and (int(visible_indices.min()) < 0 or int(visible_indices.max()) >= frames * h * w):
            raise ValueError(f"visible_indices must lie in [0, {frames}*{h}*{w}) for this input")

        t_idx = torch.div(visible_indices, h * w, rounding_mode="floor")
        h_idx = torch.div(visible_indices % (h * w), w, rounding_mode="floor")
        w_idx = visible_indices % w
        # Index a (C, p, p)-blocked view so only visible patches are copied: result [B, K, C, p, p].
        blocks = pixel_values.reshape(batch, channels, frames, h, p, w, p)
        b_idx = torch.arange(batch, device=device)[:, None]
        patches = blocks[b_idx, :, t_idx, h_idx, :, w_idx, :].reshape(batch, visible_indices.shape[1], -1)

        positions = torch.stack([t_idx, h_idx, w_idx], dim=-1)
        freqs = rope_frequencies(positions, self.head_dim, self.config.rope_theta)
        hidden = self.layernorm_pre(self.embeddings(patches))
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        last, states = self.encoder(hidden, freqs, None, output_hidden_states)
        return self._finish(last, self._pool(last), states, return_dict)

    def forward_packed(
        self,
        patches: torch.Tensor,
        grid_thw: torch.Tensor | Sequence[Sequence[int]],
        patch_positions: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Packed form: encodes several items concatenated into one flat patch sequence.

        Args:
            patches: ``[total, C*p*p]``, each row one patch flattened (C, p, p) (see :func:`patchify`), items
                one after the other, each in (t, h, w) order.
            grid_thw: ``[n, 3]`` frames, patch rows and patch columns of each item.
            patch_positions: ``[total, 3]`` rotary (t, h, w) of each patch (see :func:`grid_positions`;
                videos use :func:`frame_slots` for t). Defaults to t = 0, 1, ... per item.
            output_hidden_states: As in :meth:`forward`.
            return_dict: As in :meth:`forward`.

        Returns:
            ``last_hidden_state`` ``[total, D]``, ``pooler_output`` ``[n, D]`` (one per item) and
            optionally ``hidden_states`` (each ``[total, D]``).
        """
        grid = torch.as_tensor(grid_thw, dtype=torch.long).reshape(-1, 3).cpu()
        if bool((grid <= 0).any()):
            raise ValueError(f"every grid_thw entry must be positive, got {grid.tolist()}")
        lengths = grid.prod(dim=1)
        total = int(lengths.sum())
        patch_dim = self.config.num_channels * self.config.patch_size**2
        if patches.dim() != 2 or patches.shape != (total, patch_dim):
            raise ValueError(
                f"patches must be [{total}, {patch_dim}] for grid_thw {grid.tolist()}, got {tuple(patches.shape)}"
            )
        device = patches.device
        if patch_positions is None:
            patch_positions = torch.cat(
                [grid_positions(range(int(t)), int(h), int(w), device=device) for t, h, w in grid.tolist()]
            )
        if patch_positions.shape != (total, 3):
            raise ValueError(f"patch_positions must be [{total}, 3], got {tuple(patch_positions.shape)}")

        cu_seqlens = cu_seqlens_from_lengths(lengths, device=device)
        freqs = rope_frequencies(patch_positions.to(device), self.head_dim, self.config.rope_theta)
        hidden = self.layernorm_pre(self.embeddings(patches))
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        last, states = self.encoder(hidden, freqs, cu_seqlens, output_hidden_states)
        pooled = None
        if self.head is not None:
            # The head is one query per item; looping over items is cheap next to the encoder.
            bounds = cu_seqlens.tolist()
            pooled = torch.cat([self._pool(last[a:b].unsqueeze(0)) for a, b in pairwise(bounds)])
        return self._finish(last, pooled, states, return_dict)
