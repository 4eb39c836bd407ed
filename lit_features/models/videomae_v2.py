"""VideoMAE V2 ViT encoder (Wang et al., CVPR 2023) whose parameter names load the original checkpoints.

The module mirrors the fine-tuning ``VisionTransformer`` of the OpenGVLab/VideoMAEv2 repository
(``models/modeling_finetune.py``) closely enough that its released ``.pth`` files (for example
``vit_b_k710_dl_from_giant.pth``) load with strict key matching. Dense features are what this project
needs, so :meth:`VideoMAEv2.forward_features` returns the last block's tokens on their (T', H', W') grid
with the final norm left out, and the fixed sinusoidal position table (built for 16 frames at 224x224)
is resized to whatever grid the input has: bicubic in space, linear in time.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_features.models.weights import load_state_dict_strict

__all__ = [
    "CHECKPOINT_CONFIG_KEY",
    "CLASSIFIER_HEAD_KEYS",
    "VideoMAEv2",
    "VideoMAEv2Config",
    "load_videomae_v2",
    "resize_position_table",
    "sinusoid_position_table",
]

#: Top-level key under which a checkpoint may carry its own sizes (the tiny stand-ins do).
CHECKPOINT_CONFIG_KEY = "videomae_v2_config"
#: Checkpoint keys that are dropped on load: the action-classification head is not part of the encoder.
CLASSIFIER_HEAD_KEYS = ("head.weight", "head.bias")
#: The same keys as patterns for :func:`~lit_features.models.weights.load_state_dict_strict`.
CLASSIFIER_HEAD_PATTERNS = tuple(re.escape(key) + "$" for key in CLASSIFIER_HEAD_KEYS)
# Containers the upstream training scripts wrap the state dict in (DeepSpeed writes "module").
_WRAPPER_KEYS = ("module", "model")


@dataclass(frozen=True)
class VideoMAEv2Config:
    """Sizes of a VideoMAE V2 ViT; the defaults are ViT-B/16 with tubelet 2 (``vit_base_patch16_224``).

    Attributes:
        embed_dim: Token width C.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        patch_size: Spatial patch size (pixels).
        tubelet_size: Frames per temporal patch.
        mlp_ratio: MLP hidden width divided by ``embed_dim``.
        qkv_bias: Whether attention has the separate ``q_bias`` / ``v_bias`` parameters (k has no bias).
        init_values: Layer-scale init; > 0 adds ``gamma_1`` / ``gamma_2`` to every block.
        layer_norm_eps: Epsilon of every LayerNorm.
        in_chans: Input channels.
        use_mean_pooling: Upstream's classifier layout: True keeps a ``fc_norm`` (mean-pooled tokens),
            False a ``norm``. Either way the norm is loaded but not applied by ``forward_features``.
        pretrain_frames: Frames of the clip the position table was built for.
        pretrain_size: Square input size the position table was built for.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    tubelet_size: int = 2
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    init_values: float = 0.0
    layer_norm_eps: float = 1e-6
    in_chans: int = 3
    use_mean_pooling: bool = True
    pretrain_frames: int = 16
    pretrain_size: int = 224

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pretrain_size % self.patch_size or self.pretrain_frames % self.tubelet_size:
            raise ValueError("pretrain_size / pretrain_frames must be multiples of patch_size / tubelet_size")

    @property
    def pretrain_grid(self) -> tuple[int, int, int]:
        """The (T', H', W') token grid the position table was built for (8x14x14 for ViT-B)."""
        side = self.pretrain_size // self.patch_size
        return (self.pretrain_frames // self.tubelet_size, side, side)

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a plain dict (what a checkpoint stores under ``CHECKPOINT_CONFIG_KEY``)."""
        return dataclasses.asdict(self)


def sinusoid_position_table(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed transformer sin/cos table used by VideoMAE: ``[num_positions, dim]`` float32.

    Column ``j`` holds ``pos / 10000 ** (2 * (j // 2) / dim)`` passed through sin for even ``j`` and cos
    for odd ``j``. Built in float64 and rounded once, as upstream builds it in NumPy.
    """
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64) / dim
    angles = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32)


def resize_position_table(
    table: torch.Tensor, source_grid: tuple[int, int, int], target_grid: tuple[int, int, int]
) -> torch.Tensor:
    """Resizes a (T, H, W)-ordered position table to another token grid.

    Space is resized per time step with bicubic interpolation, then time with linear interpolation (both
    ``align_corners=False``), as upstream vfm_encoder does. Axes whose size does not change are left as
    they are, so resizing to the source grid returns the table unchanged.

    Args:
        table: ``[T*H*W, C]`` table in (T, H, W) order.
        source_grid: (T, H, W) the table was built for.
        target_grid: (T', H', W') wanted.

    Returns:
        ``[T'*H'*W', C]`` table in (T', H', W') order, float32.
    """
    t0, h0, w0 = source_grid
    t1, h1, w1 = target_grid
    if table.shape[0] != t0 * h0 * w0:
        raise ValueError(f"table has {table.shape[0]} rows, expected {t0}*{h0}*{w0} for grid {source_grid}")
    dim = table.shape[1]
    grid = table.float().reshape(t0, h0, w0, dim)
    if (h1, w1) != (h0, w0):
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(h1, w1), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1)
    if t1 != t0:
        # Linear along time only: rows are spatial positions, channels, then the time axis.
        seq = grid.reshape(t0, h1 * w1 * dim).transpose(0, 1).reshape(h1 * w1, dim, t0)
        seq = F.interpolate(seq, size=t1, mode="linear", align_corners=False)
        grid = seq.reshape(h1 * w1 * dim, t1).transpose(0, 1).reshape(t1, h1, w1, dim)
    return grid.reshape(t1 * h1 * w1, dim)


class PatchEmbed(nn.Module):
    """Tubelet embedding: a Conv3d with kernel = stride = (tubelet, patch, patch)."""

    def __init__(self, config: VideoMAEv2Config) -> None:
        super().__init__()
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_chans, config.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.proj(video)  # [B, C, T', H', W']


class Attention(nn.Module):
    """Multi-head self-attention with upstream's bias layout: q and v biased, k not."""

    def __init__(self, config: VideoMAEv2Config) -> None:
        super().__init__()
        dim = config.embed_dim
        self.num_heads = config.num_heads
        self.head_dim = dim // config.num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if config.qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """Two-layer MLP with exact (erf) GELU."""

    def __init__(self, config: VideoMAEv2Config) -> None:
        super().__init__()
        hidden = int(config.embed_dim * config.mlp_ratio)
        self.fc1 = nn.Linear(config.embed_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block, with optional layer scale (``gamma_1`` / ``gamma_2``)."""

    def __init__(self, config: VideoMAEv2Config) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)
        if config.init_values > 0:
            self.gamma_1 = nn.Parameter(torch.full((config.embed_dim,), float(config.init_values)))
            self.gamma_2 = nn.Parameter(torch.full((config.embed_dim,), float(config.init_values)))
        else:
            self.gamma_1 = None
            self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gamma_1 is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class VideoMAEv2(nn.Module):
    """VideoMAE V2 ViT encoder producing dense (T', H', W') token features.

    Parameter names follow upstream's fine-tuning model: ``patch_embed.proj``, ``blocks.{i}.norm1``,
    ``blocks.{i}.attn.qkv`` / ``q_bias`` / ``v_bias`` / ``proj``, ``blocks.{i}.norm2``,
    ``blocks.{i}.mlp.fc1`` / ``fc2``, and ``fc_norm`` (or ``norm``). The classification ``head`` is not
    part of this module.
    """

    def __init__(self, config: VideoMAEv2Config | None = None) -> None:
        super().__init__()
        self.config = config or VideoMAEv2Config()
        cfg = self.config
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        # Upstream keeps exactly one of these, depending on its pooling mode; neither feeds dense features.
        if cfg.use_mean_pooling:
            self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        else:
            self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        # Fixed, not learned: upstream does not store it in the checkpoint, so it stays out of state_dict.
        t, h, w = cfg.pretrain_grid
        self.register_buffer("pos_embed", sinusoid_position_table(t * h * w, cfg.embed_dim), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def position_table(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """The position table resized to a (T', H', W') token grid: ``[T'*H'*W', C]`` float32."""
        return resize_position_table(self.pos_embed, self.config.pretrain_grid, grid)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """Encodes a normalised clip into dense tokens.

        Args:
            video: ``[B, 3, T, H, W]`` with T a multiple of the tubelet size and H, W multiples of the patch.

        Returns:
            ``[B, T / tubelet, H / patch, W / patch, C]``: the last block's output, final norm not applied.
        """
        cfg = self.config
        if video.dim() != 5:
            raise ValueError(f"expected video [B, 3, T, H, W], got shape {tuple(video.shape)}")
        _, _, frames, height, width = video.shape
        if frames % cfg.tubelet_size or height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(
                f"clip of {frames} frames at {height}x{width} does not tile into tubelets of "
                f"{cfg.tubelet_size} frames and {cfg.patch_size}px patches; resample the frame count or "
                "resize the frames"
            )
        tokens = self.patch_embed(video.to(self.patch_embed.proj.weight.dtype))
        batch, dim, t, h, w = tokens.shape
        tokens = tokens.flatten(2).transpose(1, 2)  # (T', H', W') order, as upstream
        pos = self.position_table((t, h, w)).to(device=tokens.device, dtype=tokens.dtype)
        tokens = tokens + pos.unsqueeze(0)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens.reshape(batch, t, h, w, dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward_features`."""
        return self.forward_features(video)


def _read_checkpoint(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise ValueError(
                f"{path}: the checkpoint holds Python objects besides tensors, which are unsafe to unpickle. "
                "If you trust where the file comes from, load it with trust_pickle=True."
            ) from err
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(
            f"{path}: cannot read this file as a PyTorch checkpoint ({err}). "
            "Download vit_b_k710_dl_from_giant.pth again or point to the right file."
        ) from err


def _unwrap_state_dict(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(payload, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(payload).__name__}")
    for key in _WRAPPER_KEYS:
        if isinstance(payload.get(key), Mapping):
            payload = payload[key]
            break
    state = {str(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(
            f"{path}: no tensors found at the top level or under {' / '.join(map(repr, _WRAPPER_KEYS))}; "
            "this is not a VideoMAE V2 checkpoint"
        )
    # DistributedDataParallel prefixes every key with "module."; the names underneath are upstream's.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_videomae_v2(path: str | Path, trust_pickle: bool = False, **config: Any) -> VideoMAEv2:
    """Builds a :class:`VideoMAEv2` and loads an original-format checkpoint into it, strictly.

    The state dict is taken from the ``"module"`` or ``"model"`` entry when present (upstream's DeepSpeed
    checkpoints use ``"module"``), else from the top level. Only the classification head
    (``head.weight``, ``head.bias``) is ignored; every other key must match the model exactly.

    Sizes come from, in increasing priority: the ViT-B defaults, a ``videomae_v2_config`` dict stored in
    the checkpoint (tiny stand-ins carry one), and the keyword arguments. ``use_mean_pooling`` is read
    from the checkpoint (``fc_norm.*`` vs ``norm.*``) unless given.

    Args:
        path: The ``.pth`` file, e.g. ``vit_b_k710_dl_from_giant.pth``.
        trust_pickle: Allow full unpickling when the file holds more than tensors. Only for trusted files.
        **config: Overrides for :class:`VideoMAEv2Config` fields.

    Returns:
        The model in eval mode, float32, on CPU.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is unreadable, or its keys or shapes do not match the configured model
            (the message lists them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"VideoMAE V2 checkpoint not found: {path}. Download vit_b_k710_dl_from_giant.pth from the "
            "VideoMAE V2 model zoo and pass its path."
        )
    payload = _read_checkpoint(path, trust_pickle)
    state = _unwrap_state_dict(payload, path)

    fields = {f.name for f in dataclasses.fields(VideoMAEv2Config)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise TypeError(f"unknown VideoMAEv2Config fields: {unknown}; valid fields: {sorted(fields)}")
    merged: dict[str, Any] = {}
    stored = payload.get(CHECKPOINT_CONFIG_KEY) if isinstance(payload, Mapping) else None
    if isinstance(stored, Mapping):
        merged.update({k: v for k, v in stored.items() if k in fields})
    merged.update(config)
    if "use_mean_pooling" not in merged:
        merged["use_mean_pooling"] = "norm.weight" not in state
    cfg = VideoMAEv2Config(**merged)

    model = VideoMAEv2(cfg)
    description = (
        f"a VideoMAE V2 ViT with embed_dim={cfg.embed_dim}, depth={cfg.depth}, num_heads={cfg.num_heads}, "
        f"patch_size={cfg.patch_size}, tubelet_size={cfg.tubelet_size}, mlp_ratio={cfg.mlp_ratio}, "
        f"qkv_bias={cfg.qkv_bias}, init_values={cfg.init_values}"
    )
    load_state_dict_strict(
        model,
        state,
        path,
        description,
        dropped=CLASSIFIER_HEAD_PATTERNS,
        hint="Set the model sizes to those of the checkpoint, or use an original VideoMAE V2 fine-tuned/distilled "
        "checkpoint.",
    )
    return model.eval()
