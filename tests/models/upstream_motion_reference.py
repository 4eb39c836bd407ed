"""A reference motion autoencoder built from the upstream description (docs: UPSTREAM.md section 3), for tests.

Written independently of ``lit_features.models.motion_autoencoder``: the module names are the upstream
checkpoint's (``encoder.input_proj``, ``encoder.conv_block.{depthwise,pointwise,norm}``,
``encoder.temporal_transformer``, ``encoder.latent_proj``, and the mirrored ``decoder.*``), so an upstream
``state_dict`` loads into it with ``strict=True``; the forward follows the described computation, including
upstream's reshape of ``[B, T, N, D]`` to ``[B*N, T, D]`` without moving the time axis, the latent returned in
the input's layout and ``compression_ratio = latent_dim / input_dim``.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

#: The upstream constructor's arguments (what ``encode.py`` takes on its command line).
ARGS = ("input_dim", "model_dim", "latent_dim", "num_heads", "num_layers", "dropout", "use_token")


class ConvBlock(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, 3, padding=1, groups=dim)
        self.pointwise = nn.Conv1d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [S, T, D]
        y = self.pointwise(self.depthwise(x.transpose(1, 2))).transpose(1, 2)
        return self.dropout(self.act(self.norm(y))) + x


def transformer(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class Encoder(nn.Module):
    def __init__(self, input_dim, model_dim, latent_dim, num_heads, num_layers, dropout, use_token):
        super().__init__()
        self.use_token, self.model_dim = use_token, model_dim
        self.input_proj = nn.Linear(input_dim * (2 if use_token else 1), model_dim)
        self.conv_block = ConvBlock(model_dim, dropout)
        self.temporal_transformer = transformer(model_dim, num_heads, num_layers, dropout)
        self.latent_proj = nn.Sequential(nn.LayerNorm(model_dim), nn.Linear(model_dim, latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, N, C] -> [B, T, N, latent]
        b, t, n, _ = x.shape
        delta = torch.zeros_like(x)
        delta[:, 1:] = x[:, 1:] - x[:, :-1]
        h = self.input_proj(torch.cat([x, delta], -1) if self.use_token else delta)
        h = h.reshape(b * n, t, self.model_dim)  # upstream: no permute of the time axis
        z = self.latent_proj(self.temporal_transformer(self.conv_block(h)))
        return z.reshape(b, t, n, -1)


class Decoder(nn.Module):
    def __init__(self, input_dim, model_dim, latent_dim, num_heads, num_layers, dropout):
        super().__init__()
        self.model_dim = model_dim
        self.input_proj = nn.Linear(latent_dim, model_dim)
        self.temporal_transformer = transformer(model_dim, num_heads, num_layers, dropout)
        self.conv_block = ConvBlock(model_dim, dropout)
        self.output_proj = nn.Sequential(nn.LayerNorm(model_dim), nn.Linear(model_dim, input_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, t, n, _ = z.shape
        h = self.input_proj(z).reshape(b * n, t, self.model_dim)
        return self.output_proj(self.conv_block(self.temporal_transformer(h))).reshape(b, t, n, -1)


class UpstreamMotionAutoencoder(nn.Module):
    """``[B, T, N, C]`` or ``[B, T, H, W, C]`` in; latent, reconstruction and motion embedding out."""

    def __init__(self, input_dim, model_dim, latent_dim, num_heads, num_layers, dropout, use_token):
        super().__init__()
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.encoder = Encoder(input_dim, model_dim, latent_dim, num_heads, num_layers, dropout, use_token)
        self.decoder = Decoder(input_dim, model_dim, latent_dim, num_heads, num_layers, dropout)

    @classmethod
    def from_config(cls, config: dict) -> UpstreamMotionAutoencoder:
        return cls(**{name: config[name] for name in ARGS})

    @property
    def compression_ratio(self) -> float:
        return self.latent_dim / self.input_dim

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        tokens = x.flatten(2, 3) if x.ndim == 5 else x
        z = self.encoder(tokens)
        x_hat = self.decoder(z).reshape(x.shape)
        latent = z.reshape(*x.shape[:-1], z.shape[-1])
        return SimpleNamespace(latent=latent, reconstruction=x_hat, motion_embedding=z.mean(dim=2))
