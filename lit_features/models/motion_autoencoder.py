"""Motion-focused autoencoder that compresses per-token video encoder features along time.

The model takes features from a video foundation model (VideoMAE, V-JEPA, DINOv2, ...) laid out as
``[B, T, N, C]`` or ``[B, T, H, W, C]`` and maps every token to a ``latent_dim`` code. The encoder sees the
temporal difference of the features (optionally next to the features themselves), refines it with a
depthwise-separable temporal convolution and a temporal transformer, and projects to the latent; the decoder
mirrors that path back to ``C`` channels. Training minimises reconstruction error, error on the reconstructed
temporal differences and a small penalty on latent jitter
(:func:`lit_features.models.motion_loss.motion_autoencoder_loss`).

This file offers the model and its config; loading checkpoints is :mod:`lit_features.models.motion_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

SEQUENCE_GROUPINGS = ("per_position", "upstream_flat")
"""How the ``[B, T, N, D]`` token grid is cut into sequences for the temporal layers.

``per_position``: one length-T sequence per spatial position (the documented design).
``upstream_flat``: the upstream code reshapes ``[B, T, N, D]`` straight to ``[B*N, T, D]`` without moving the
time axis, so each "temporal" sequence is a run of T consecutive tokens in (t, n) order. Checkpoints trained
upstream only reproduce their outputs in this mode.
"""


@dataclass
class MotionAutoencoderConfig:
    """Constructor arguments of :class:`MotionFeatureAutoencoder`.

    Attributes:
        input_dim: Channel count C of the input features (768 for ViT-B, 1024 for ViT-L).
        model_dim: Width of the temporal conv / transformer layers.
        latent_dim: Channels per token of the compressed latent.
        num_heads: Attention heads of the temporal transformer; must divide ``model_dim``.
        num_layers: Transformer layers in the encoder and, separately, in the decoder.
        dropout: Dropout inside the conv block and the transformer layers.
        use_token: Feed ``concat(x, delta_x)`` to the encoder instead of ``delta_x`` alone.
        sequence_grouping: One of :data:`SEQUENCE_GROUPINGS`.
    """

    input_dim: int = 768
    model_dim: int = 384
    latent_dim: int = 192
    num_heads: int = 8
    num_layers: int = 2
    dropout: float = 0.1
    use_token: bool = True
    sequence_grouping: Literal["per_position", "upstream_flat"] = "per_position"

    def __post_init__(self) -> None:
        for name in ("input_dim", "model_dim", "latent_dim", "num_heads", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MotionAutoencoderConfig.{name} must be a positive int, got {value!r}")
        if self.model_dim % self.num_heads:
            raise ValueError(
                f"MotionAutoencoderConfig: model_dim={self.model_dim} is not divisible by "
                f"num_heads={self.num_heads}; pick a head count that divides model_dim"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"MotionAutoencoderConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.sequence_grouping not in SEQUENCE_GROUPINGS:
            raise ValueError(
                f"MotionAutoencoderConfig.sequence_grouping must be one of {SEQUENCE_GROUPINGS}, "
                f"got {self.sequence_grouping!r}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MotionAutoencoderConfig:
        """Builds a config from a mapping, ignoring keys that are not constructor arguments.

        Upstream checkpoints store every command-line argument of the training script (paths, learning
        rate, epochs, ...) under ``config``; only the model arguments matter here.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a plain dict, the form stored in checkpoints."""
        return dataclasses.asdict(self)


@dataclass
class MotionAutoencoderOutput:
    """Result of :meth:`MotionFeatureAutoencoder.forward`.

    Attributes:
        latent: In the input's layout with ``latent_dim`` channels: ``[B, T, N, latent_dim]``, or
            ``[B, T, H, W, latent_dim]`` for grid input (as the upstream model returns it).
        reconstruction: Same shape as the input, including the ``[B, T, H, W, C]`` layout.
        motion_embedding: ``[B, T, latent_dim]``, the latent averaged over tokens.
    """

    latent: torch.Tensor
    reconstruction: torch.Tensor
    motion_embedding: torch.Tensor


def temporal_difference(x: torch.Tensor) -> torch.Tensor:
    """Returns ``delta_x`` with ``delta_x[:, t] = x[:, t] - x[:, t-1]`` and ``delta_x[:, 0] = 0``.

    Args:
        x: Tensor with time on dimension 1.

    Returns:
        Tensor of the same shape as ``x``.
    """
    # A zero first step keeps T unchanged, so delta_x lines up with x for the channel concat.
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)


class TemporalConvBlock(nn.Module):
    """Residual temporal block: depthwise Conv1d (k=3) -> pointwise -> LayerNorm -> GELU -> dropout.

    Args:
        dim: Channels of the ``[S, T, dim]`` sequences.
        kernel_size: Temporal kernel of the depthwise conv (odd, so T is preserved).
        dropout: Dropout after the activation.
    """

    def __init__(self, dim: int, kernel_size: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.pointwise = nn.Conv1d(dim, dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[S, T, dim]`` to ``[S, T, dim]``."""
        h = self.pointwise(self.depthwise(x.transpose(1, 2))).transpose(1, 2)
        return x + self.dropout(self.act(self.norm(h)))


def _temporal_transformer(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=dim,
        nhead=heads,
        dim_feedforward=4 * dim,
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    # Nested tensors only help with padding masks, which are never used here; disabling them avoids a
    # warning that pre-norm layers cannot use them anyway.
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


def _to_sequences(x: torch.Tensor, grouping: str) -> torch.Tensor:
    """``[B, T, N, D]`` -> ``[B*N, T, D]`` according to ``grouping``."""
    b, t, n, d = x.shape
    if grouping == "upstream_flat":
        return x.reshape(b * n, t, d)
    return x.permute(0, 2, 1, 3).reshape(b * n, t, d)


def _from_sequences(x: torch.Tensor, b: int, t: int, n: int, grouping: str) -> torch.Tensor:
    """Inverse of :func:`_to_sequences`: ``[B*N, T, D]`` -> ``[B, T, N, D]``."""
    d = x.shape[-1]
    if grouping == "upstream_flat":
        return x.reshape(b, t, n, d)
    return x.reshape(b, n, t, d).permute(0, 2, 1, 3)


class MotionFeatureEncoder(nn.Module):
    """Token features ``[B, T, N, C]`` -> latent ``[B, T, N, latent_dim]``.

    Args:
        config: Model hyper-parameters.
    """

    def __init__(self, config: MotionAutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        in_features = 2 * config.input_dim if config.use_token else config.input_dim
        self.input_proj = nn.Linear(in_features, config.model_dim)
        self.conv_block = TemporalConvBlock(config.model_dim, kernel_size=3, dropout=config.dropout)
        self.temporal_transformer = _temporal_transformer(
            config.model_dim, config.num_heads, config.num_layers, config.dropout
        )
        self.latent_proj = nn.Sequential(nn.LayerNorm(config.model_dim), nn.Linear(config.model_dim, config.latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encodes ``[B, T, N, C]`` features (shape already checked by the caller)."""
        b, t, n, _ = x.shape
        delta = temporal_difference(x)
        h = self.input_proj(torch.cat([x, delta], dim=-1) if self.config.use_token else delta)
        h = _to_sequences(h, self.config.sequence_grouping)
        h = self.temporal_transformer(self.conv_block(h))
        h = _from_sequences(h, b, t, n, self.config.sequence_grouping)
        return self.latent_proj(h)


class MotionFeatureDecoder(nn.Module):
    """Latent ``[B, T, N, latent_dim]`` -> reconstructed features ``[B, T, N, C]``; mirrors the encoder.

    Args:
        config: Model hyper-parameters.
    """

    def __init__(self, config: MotionAutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.input_proj = nn.Linear(config.latent_dim, config.model_dim)
        self.temporal_transformer = _temporal_transformer(
            config.model_dim, config.num_heads, config.num_layers, config.dropout
        )
        self.conv_block = TemporalConvBlock(config.model_dim, kernel_size=3, dropout=config.dropout)
        self.output_proj = nn.Sequential(nn.LayerNorm(config.model_dim), nn.Linear(config.model_dim, config.input_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decodes a ``[B, T, N, latent_dim]`` latent."""
        b, t, n, _ = z.shape
        h = _to_sequences(self.input_proj(z), self.config.sequence_grouping)
        h = self.conv_block(self.temporal_transformer(h))
        h = _from_sequences(h, b, t, n, self.config.sequence_grouping)
        return self.output_proj(h)


class MotionFeatureAutoencoder(nn.Module):
    """Encoder/decoder pair over video-encoder features; see the module docstring.

    Args:
        input_dim: Channel count C of the input features.
        model_dim: Width of the temporal layers.
        latent_dim: Channels per token of the latent.
        num_heads: Attention heads; must divide ``model_dim``.
        num_layers: Transformer layers in encoder and decoder each.
        dropout: Dropout probability.
        use_token: Encode ``concat(x, delta_x)`` rather than ``delta_x`` alone.
        sequence_grouping: One of :data:`SEQUENCE_GROUPINGS`.
    """

    def __init__(
        self,
        input_dim: int = 768,
        model_dim: int = 384,
        latent_dim: int = 192,
        num_heads: int = 8,
        num_layers: int = 2,
        dropout: float = 0.1,
        use_token: bool = True,
        sequence_grouping: str = "per_position",
    ) -> None:
        super().__init__()
        self.config = MotionAutoencoderConfig(
            input_dim=input_dim,
            model_dim=model_dim,
            latent_dim=latent_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            dropout=dropout,
            use_token=use_token,
            sequence_grouping=sequence_grouping,
        )
        self.encoder = MotionFeatureEncoder(self.config)
        self.decoder = MotionFeatureDecoder(self.config)
        # Set by the checkpoint loaders so shape errors can say which weights expected which shape.
        self.checkpoint_path: str | None = None

    @classmethod
    def from_config(cls, config: MotionAutoencoderConfig) -> MotionFeatureAutoencoder:
        """Builds a randomly initialised model from a config."""
        return cls(**config.to_dict())

    @property
    def compression_ratio(self) -> float:
        """Latent size over input size, ``latent_dim / input_dim``: 0.25 for 768 -> 192 (as upstream)."""
        return self.config.latent_dim / self.config.input_dim

    def _as_tokens(self, x: torch.Tensor, source: str | os.PathLike | None) -> torch.Tensor:
        """Checks the feature shape and flattens a ``[B, T, H, W, C]`` grid to ``[B, T, N, C]``."""
        where = f"{os.fspath(source)}: " if source is not None else ""
        weights = f" (weights from {self.checkpoint_path})" if self.checkpoint_path else ""
        expected_c = self.config.input_dim
        if x.ndim not in (4, 5):
            raise ValueError(
                f"{where}motion autoencoder expects features shaped [B, T, N, C] or [B, T, H, W, C] with "
                f"C={expected_c}, got shape {tuple(x.shape)}; add the batch dimension to a single clip's "
                f"[T, N, C] / [T, H, W, C] features with x.unsqueeze(0)"
            )
        if x.shape[-1] != expected_c:
            raise ValueError(
                f"{where}motion autoencoder{weights} expects C={expected_c} channels in the last "
                f"dimension, got C={x.shape[-1]} (shape {tuple(x.shape)}); the features come from a "
                f"different encoder than the one this model was built for: use a model trained on them "
                f"or set input_dim={x.shape[-1]}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{where}motion autoencoder expects floating-point features, got {x.dtype}")
        return x.flatten(2, 3) if x.ndim == 5 else x

    def forward(self, x: torch.Tensor, source: str | os.PathLike | None = None) -> MotionAutoencoderOutput:
        """Encodes and reconstructs features.

        Args:
            x: ``[B, T, N, C]`` or ``[B, T, H, W, C]`` features.
            source: Optional file the features came from, named in shape errors.

        Returns:
            The latent, the reconstruction in the input's layout and the per-frame motion embedding.

        Raises:
            ValueError: When ``x`` has the wrong rank or channel count.
        """
        tokens = self._as_tokens(x, source)
        latent = self.encoder(tokens)
        reconstruction = self.decoder(latent).reshape(x.shape)
        return MotionAutoencoderOutput(
            latent=self._in_input_layout(latent, x), reconstruction=reconstruction, motion_embedding=latent.mean(dim=2)
        )

    @staticmethod
    def _in_input_layout(latent: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, N, latent_dim]`` back to ``[B, T, H, W, latent_dim]`` when ``x`` was a grid."""
        return latent.reshape(*x.shape[:-1], latent.shape[-1])

    @torch.no_grad()
    def encode(self, x: torch.Tensor, source: str | os.PathLike | None = None) -> dict[str, Any]:
        """Computes the compressed representation only (no decoder pass, no autograd graph).

        The module's train/eval mode is left as is: call ``.eval()`` first so dropout is off
        (:func:`load_motion_autoencoder` returns an eval-mode model).

        Args:
            x: ``[B, T, N, C]`` or ``[B, T, H, W, C]`` features.
            source: Optional file the features came from, named in shape errors.

        Returns:
            ``{"latent": [B, T, N, latent_dim] (or [B, T, H, W, latent_dim] for grid input), "motion_embedding":
            [B, T, latent_dim], "compression_ratio": latent_dim / input_dim}`` (upstream ``encode.py``'s keys).
        """
        latent = self.encoder(self._as_tokens(x, source))
        return {
            "latent": self._in_input_layout(latent, x),
            "motion_embedding": latent.mean(dim=2),
            "compression_ratio": self.compression_ratio,
        }
