"""The motion autoencoder's training loss: reconstruction, temporal difference and latent smoothness terms."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from lit_features.models.motion_autoencoder import MotionAutoencoderOutput


class MotionAutoencoderLosses(NamedTuple):
    """Weighted total and the three unweighted terms of :func:`motion_autoencoder_loss`."""

    total: torch.Tensor
    recon: torch.Tensor
    motion: torch.Tensor
    smooth: torch.Tensor


def motion_autoencoder_loss(
    x: torch.Tensor,
    out: MotionAutoencoderOutput,
    recon_weight: float = 1.0,
    motion_weight: float = 1.0,
    smooth_weight: float = 0.05,
) -> MotionAutoencoderLosses:
    """Reconstruction + temporal-difference + latent-smoothness loss.

    ``recon = MSE(x_hat, x)``, ``motion = MSE(x_hat[:, 1:] - x_hat[:, :-1], x[:, 1:] - x[:, :-1])`` and
    ``smooth = mean |z[:, 1:] - z[:, :-1]|``. The differences use the T-1 real steps (no zero first step),
    so the mean is not diluted by a constant zero frame.

    Args:
        x: The features given to the model.
        out: The model's output for ``x``.
        recon_weight: Weight of the reconstruction term.
        motion_weight: Weight of the temporal-difference term.
        smooth_weight: Weight of the latent-smoothness term.

    Returns:
        ``(total, recon, motion, smooth)``; the terms are unweighted and keep their autograd graph.

    Raises:
        ValueError: When the reconstruction does not match ``x`` or there are fewer than 2 frames.
    """
    x_hat = out.reconstruction
    if x_hat.shape != x.shape:
        raise ValueError(
            f"motion_autoencoder_loss: reconstruction shape {tuple(x_hat.shape)} differs from the input "
            f"shape {tuple(x.shape)}; pass the same features that produced `out`"
        )
    if x.shape[1] < 2:
        raise ValueError(
            f"motion_autoencoder_loss needs at least 2 frames on dimension 1 for the temporal terms, "
            f"got shape {tuple(x.shape)}"
        )
    recon = F.mse_loss(x_hat, x)
    motion = F.mse_loss(x_hat[:, 1:] - x_hat[:, :-1], x[:, 1:] - x[:, :-1])
    smooth = (out.latent[:, 1:] - out.latent[:, :-1]).abs().mean()
    total = recon_weight * recon + motion_weight * motion + smooth_weight * smooth
    return MotionAutoencoderLosses(total=total, recon=recon, motion=motion, smooth=smooth)
