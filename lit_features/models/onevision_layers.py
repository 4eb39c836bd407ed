"""Layers of the OneVision-style video ViT: patch embedding, rotary attention, MLP, encoder, pooling head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from lit_features.models.onevision_positions import apply_rope
from lit_features.models.packing import segment_attention

if TYPE_CHECKING:
    from lit_features.models.onevision_vit import OneVisionViTConfig


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
