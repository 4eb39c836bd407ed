"""Lip-reading visual front end (3D conv stem + per-frame ResNet-18) used by IIANet for mouth-crop embeddings.

The network follows the LRW lip-reading models of Martinez et al., "Lipreading using Temporal Convolutional
Networks" (ICASSP 2020), without their temporal head: a Conv3d stem over (time, height, width), then a
ResNet-18 trunk with PReLU activations applied to every frame, average-pooled to one 512-d vector per frame.
A grayscale clip ``[B, 1, T, 88, 88]`` becomes ``[B, 512, T]``; time is never strided.

Parameter names match the released ``lrw_resnet18_mstcn_adamw_s3.pth.tar`` so its ``model_state_dict`` loads
strictly once the temporal-convolution head (every key containing ``"tcn"``) is dropped; see
:func:`load_lip_frontend`. :func:`preprocess_mouth_frames` applies the evaluation-time normalisation and
:func:`embed_mouth_clips` is the one way clips are embedded, for precompute and training fallback alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lit_features.models.weights import load_state_dict_strict, read_torch_checkpoint

UPSTREAM_CHECKPOINT_NAME = "lrw_resnet18_mstcn_adamw_s3.pth.tar"
"""File name of the released LRW ResNet-18 + MS-TCN checkpoint the front end is loaded from."""

MOUTH_CROP_SIZE = 88
"""Side of the square centre crop taken from the (typically 96x96) mouth frames."""

MOUTH_MEAN = 0.421
MOUTH_STD = 0.165
"""Grayscale mean / std of LRW mouth crops after scaling to [0, 1]."""

EMBEDDING_DIM = 512

_HEAD_KEY_MARKERS = ("tcn",)
"""Substrings of checkpoint keys that belong to the lip-reading classifier head, not the front end.

The upstream model's only non-front-end modules are ``tcn`` (the multi-scale TCN, including its output
layer) and, in some versions, a top-level ``tcn_output`` linear layer; both contain "tcn".
"""
_HEAD_KEY_PATTERNS = tuple(f".*{marker}" for marker in _HEAD_KEY_MARKERS)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block with per-channel PReLU after the first conv and after the residual sum.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Spatial stride of the first conv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.PReLU(num_parameters=out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.PReLU(num_parameters=out_channels)
        # A 1x1 projection only where the identity path changes shape, as in the released weights.
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[N, in_channels, H, W]`` to ``[N, out_channels, H / stride, W / stride]``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class ResNet18Trunk(nn.Module):
    """Four stages of two :class:`BasicBlock` (64, 128, 256, 512 channels), no stem, global average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = self._stage(64, 64, stride=1)
        self.layer2 = self._stage(64, 128, stride=2)
        self.layer3 = self._stage(128, 256, stride=2)
        self.layer4 = self._stage(256, 512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[N, 64, H, W]`` stem features to ``[N, 512]``."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


class LipReadingResNet18(nn.Module):
    """Mouth-crop clip ``[B, 1, T, H, W]`` -> per-frame embedding ``[B, 512, T]``.

    The Conv3d stem mixes 5 neighbouring frames (padding keeps T); everything after it works per frame.
    Weights are randomly initialised; use :func:`load_lip_frontend` for the pretrained ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.PReLU(num_parameters=64),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.trunk = ResNet18Trunk()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan-out) convolutions and unit/zero BatchNorm, the upstream initialisation."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeds a batch of grayscale mouth clips.

        Args:
            x: ``[B, 1, T, H, W]`` float frames, normalised as by :func:`preprocess_mouth_frames`
                (H = W = 88 for the released weights).

        Returns:
            ``[B, 512, T]`` embeddings.

        Raises:
            ValueError: When ``x`` is not ``[B, 1, T, H, W]``.
        """
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(
                f"lip front end expects grayscale clips shaped [B, 1, T, H, W] (H = W = {MOUTH_CROP_SIZE}), "
                f"got shape {tuple(x.shape)}; a [T, H, W] clip from preprocess_mouth_frames becomes "
                f"[1, 1, T, H, W] with .unsqueeze(0)"
            )
        b = x.shape[0]
        x = self.frontend3D(x)  # [B, 64, T, H/4, W/4]
        _, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        return self.trunk(frames).reshape(b, t, EMBEDDING_DIM).transpose(1, 2)


def load_lip_frontend(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    allow_pickle: bool = False,
) -> LipReadingResNet18:
    """Loads the front end from the upstream lip-reading checkpoint, dropping the TCN head.

    Accepts the released ``.pth.tar`` (a dict whose ``model_state_dict`` holds the whole lip-reading
    model) or a bare front-end state dict. Keys containing ``"tcn"`` are dropped; everything else must
    match the front end exactly.

    Args:
        path: Checkpoint file, normally ``lrw_resnet18_mstcn_adamw_s3.pth.tar``.
        map_location: Device the tensors are loaded onto.
        allow_pickle: Load with full pickle (can run arbitrary code) for checkpoints holding objects other
            than tensors and plain containers. Only for files you trust.

    Returns:
        The front end in eval mode with gradients disabled (it is a frozen feature extractor).

    Raises:
        FileNotFoundError: When ``path`` does not exist.
        ValueError: When the file cannot be read or its keys/shapes do not match the front end.
    """
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise FileNotFoundError(
            f"lip-reading checkpoint not found: {path_str}; download {UPSTREAM_CHECKPOINT_NAME} from the "
            f"Lipreading_using_Temporal_Convolutional_Networks model zoo and pass its path"
        )
    checkpoint = read_torch_checkpoint(path_str, map_location, allow_pickle)

    if isinstance(checkpoint, Mapping) and "model_state_dict" in checkpoint:
        state_dict = checkpoint["model_state_dict"]
    elif isinstance(checkpoint, Mapping) and any(str(key).startswith("frontend3D.") for key in checkpoint):
        state_dict = checkpoint
    else:
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path_str}: expected the lip-reading checkpoint dict with a 'model_state_dict' entry "
            f"(or a bare front-end state dict), found {found}"
        )
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path_str}: 'model_state_dict' must map parameter names to tensors")
    model = LipReadingResNet18()
    load_state_dict_strict(
        model,
        state_dict,
        path_str,
        "the ResNet-18 lip-reading front end (after dropping tcn keys)",
        dropped=_HEAD_KEY_PATTERNS,
        hint=f"Expected the video ResNet-18 model ({UPSTREAM_CHECKPOINT_NAME}).",
    )
    model.requires_grad_(False)
    return model.eval()


def preprocess_mouth_frames(frames: np.ndarray | torch.Tensor, source: str | os.PathLike | None = None) -> torch.Tensor:
    """Evaluation-time preprocessing of a grayscale mouth clip: /255, centre crop 88x88, normalise.

    Args:
        frames: ``[T, H, W]`` uint8 frames with H, W >= 88 (96x96 in the IIANet data).
        source: Optional file the frames came from, named in errors.

    Returns:
        ``[1, T, 88, 88]`` float32 tensor ``(x / 255 - 0.421) / 0.165``; add a batch dimension with
        ``.unsqueeze(0)`` before :class:`LipReadingResNet18`.

    Raises:
        TypeError: When the frames are not uint8.
        ValueError: When the frames are not ``[T, H, W]`` or smaller than 88x88.
    """
    where = f"{os.fspath(source)}: " if source is not None else ""
    tensor = torch.from_numpy(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    size = MOUTH_CROP_SIZE
    if tensor.ndim != 3 or tensor.shape[0] == 0:
        raise ValueError(
            f"{where}mouth frames must be shaped [T, H, W] (grayscale, H, W >= {size}), got shape "
            f"{tuple(tensor.shape)}; convert colour frames to grayscale first"
        )
    if tensor.dtype != torch.uint8:
        raise TypeError(
            f"{where}mouth frames must be uint8 in [0, 255], got {tensor.dtype}; the normalisation divides "
            f"by 255, so pass the raw decoded frames"
        )
    t, h, w = tensor.shape
    if h < size or w < size:
        raise ValueError(
            f"{where}mouth frames must be at least {size}x{size} for the centre crop, got shape "
            f"[T, H, W] = {(t, h, w)}; re-crop the mouth region with a larger box"
        )
    # Offsets round down, matching the upstream crop for odd margins.
    top, left = (h - size) // 2, (w - size) // 2
    crop = tensor[:, top : top + size, left : left + size].to(torch.float32) / 255.0
    return ((crop - MOUTH_MEAN) / MOUTH_STD).unsqueeze(0)


def embed_mouth_clips(model: LipReadingResNet18, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Embeds preprocessed clips one forward each: ``[1, T_i, 88, 88]`` -> ``[512, T_i]``.

    One clip per forward keeps a clip's embedding independent of which clips share its batch (and of their
    lengths), so features precomputed in one batching equal those computed on the fly in another, exactly.
    The trunk still sees all T frames of a clip at once.

    Args:
        model: The front end (eval mode for features; see :func:`load_lip_frontend`).
        clips: Clips from :func:`preprocess_mouth_frames`, or a ``[B, 1, T, 88, 88]`` tensor.

    Returns:
        One ``[512, T_i]`` tensor per clip, in the model's dtype and on its device.
    """
    param = next(model.parameters())
    return [model(clip.to(param.device, param.dtype).unsqueeze(0))[0] for clip in clips]
