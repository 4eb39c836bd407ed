"""Writes a tiny random-weight motion autoencoder checkpoint in the upstream training-script layout.

``out_root/motion_autoencoder_upstream.pt`` = ``{epoch, state_dict, config, mean_loss}`` where ``config``
holds the model arguments next to training-only arguments, as the upstream trainer stores them, for a small
model (input_dim 32, model_dim 32, latent_dim 16, 4 heads, 1 layer). It is marked ``tiny_random_stand_in``
and never overwrites a file that lacks that marker.

Usage: ``python -m tools.tiny_models.motion_autoencoder OUT_ROOT``.
"""

from __future__ import annotations

import pathlib
import sys

import torch

from lit_features.models.motion_autoencoder import MotionAutoencoderConfig, MotionFeatureAutoencoder
from tools.tiny_models._guard import MARKER, refuse_real_weights

FILE_NAME = "motion_autoencoder_upstream.pt"

TINY_CONFIG = {
    "input_dim": 32,
    "model_dim": 32,
    "latent_dim": 16,
    "num_heads": 4,
    "num_layers": 1,
    "dropout": 0.1,
    "use_token": True,
    # Training-only arguments the upstream trainer also records; loaders must ignore them.
    "feature_dir": "features/tiny",
    "save_dir": "checkpoints/tiny",
    "epochs": 1,
    "batch_size": 2,
    "lr": 2e-4,
    "weight_decay": 1e-4,
    "num_workers": 0,
    "recon_weight": 1.0,
    "motion_weight": 1.0,
    "smooth_weight": 0.05,
}


def make(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Writes ``out_root/motion_autoencoder_upstream.pt`` with seeded random weights.

    Args:
        out_root: Folder to write into (created if missing).

    Returns:
        The written file.

    Raises:
        FileExistsError: When a file that is not a stand-in already sits at the target path.
    """
    out_root = pathlib.Path(out_root)
    path = out_root / FILE_NAME
    refuse_real_weights(path)
    out_root.mkdir(parents=True, exist_ok=True)

    # Upstream-trained weights run with the upstream token grouping; it has no parameters of its own.
    config = MotionAutoencoderConfig.from_dict({**TINY_CONFIG, "sequence_grouping": "upstream_flat"})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = MotionFeatureAutoencoder.from_config(config)
    checkpoint = {
        "epoch": 1,
        "state_dict": model.state_dict(),
        "config": dict(TINY_CONFIG),
        "mean_loss": 1.0,
        MARKER: True,
    }
    torch.save(checkpoint, path)
    return [path]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m tools.tiny_models.motion_autoencoder OUT_ROOT  (got {sys.argv[1:]})")
    for written in make(pathlib.Path(sys.argv[1])):
        print(written)
