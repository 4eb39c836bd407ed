"""Writes a random-weight stand-in for the LRW ResNet-18 lip-reading checkpoint, for tests and dry runs.

The file has the real name, layout and size of ``lrw_resnet18_mstcn_adamw_s3.pth.tar``: a dict whose
``model_state_dict`` holds the full front end plus a few fake ``tcn.*`` / ``tcn_output.*`` keys standing in
for the classifier head that the loader must drop. It is marked ``tiny_random_stand_in`` so it is never
confused with, and never overwrites, the real weights.

Usage: ``python -m tools.tiny_models.lip_resnet18 OUT_ROOT``.
"""

from __future__ import annotations

import pathlib
import sys

import torch

from lit_features.models.lip_resnet import UPSTREAM_CHECKPOINT_NAME, LipReadingResNet18
from tools.tiny_models._guard import MARKER, refuse_real_weights


def make(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Writes ``out_root/lrw_resnet18_mstcn_adamw_s3.pth.tar`` with seeded random weights.

    Args:
        out_root: Folder to write into (created if missing).

    Returns:
        The written file.

    Raises:
        FileExistsError: When a file that is not a stand-in already sits at the target path.
    """
    out_root = pathlib.Path(out_root)
    path = out_root / UPSTREAM_CHECKPOINT_NAME
    refuse_real_weights(path)
    out_root.mkdir(parents=True, exist_ok=True)

    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LipReadingResNet18()
    state_dict = model.state_dict()
    # Fresh BatchNorm/PReLU values are all 1, 0 or 0.25; random ones let tests see that loading copies them.
    for key, value in state_dict.items():
        if key.endswith(("running_var", ".weight")) and value.ndim == 1:
            value.copy_(0.5 + torch.rand(value.shape, generator=generator))
        elif key.endswith(("running_mean", ".bias")):
            value.copy_(0.1 * torch.randn(value.shape, generator=generator))
    # Shapes mimic the multi-scale TCN head over 512-d features and the 500-word LRW classifier.
    state_dict["tcn.mb_ms_tcn.network.0.conv0.weight"] = torch.randn(256, 512, 3, generator=generator)
    state_dict["tcn.tcn_output.weight"] = torch.randn(500, 768, generator=generator)
    state_dict["tcn_output.weight"] = torch.randn(500, 768, generator=generator)
    state_dict["tcn_output.bias"] = torch.zeros(500)

    torch.save({"model_state_dict": state_dict, MARKER: True}, path)
    return [path]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m tools.tiny_models.lip_resnet18 OUT_ROOT  (got {sys.argv[1:]})")
    for written in make(pathlib.Path(sys.argv[1])):
        print(written)
