"""Tiny random stand-in for ``vit_b_k710_dl_from_giant.pth``, in the original VideoMAE V2 checkpoint layout.

The file is a ``torch.save`` dict whose ``"module"`` entry holds upstream's parameter names (including the
710-way classification ``head`` the loader drops), stored in float16 like the released file. Next to it sit
the marker ``"tiny_random_stand_in": True`` and the tiny sizes under ``"videomae_v2_config"``, so
``load_videomae_v2`` builds the matching model. Sizes are tiny (width 32, depth 2, 2 heads) but patch 16
and tubelet 2 are the real ones, so token grids match the real model's.
"""

from __future__ import annotations

import os
import pathlib

import torch

from lit_features.models.videomae_v2 import CHECKPOINT_CONFIG_KEY, VideoMAEv2, VideoMAEv2Config
from tools.tiny_models._guard import MARKER, refuse_real_weights

FILE_NAME = "vit_b_k710_dl_from_giant.pth"
TINY_CONFIG = VideoMAEv2Config(embed_dim=32, depth=2, num_heads=2, patch_size=16, tubelet_size=2)
# The released file carries a Kinetics-710 head; keeping one exercises the loader's head dropping.
NUM_CLASSES = 710
SEED = 0


def make(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Writes ``out_root/vit_b_k710_dl_from_giant.pth`` and its ``.stand_in`` marker; returns both paths.

    Re-running replaces an earlier stand-in; a file without the stand-in marker (a real checkpoint) is
    never overwritten.

    Raises:
        FileExistsError: If the target exists and is not a tiny stand-in.
    """
    out_root = pathlib.Path(out_root)
    target = out_root / FILE_NAME
    refuse_real_weights(target)
    generator = torch.Generator().manual_seed(SEED)
    with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the caller's RNG
        state = VideoMAEv2(TINY_CONFIG).state_dict()
    for name, tensor in state.items():
        noise = torch.randn(tensor.shape, generator=generator)
        # Norm scales near 1, everything else small but non-zero, so a mis-mapped key changes outputs.
        is_norm_scale = name.endswith("weight") and tensor.dim() == 1
        state[name] = (1.0 + 0.1 * noise) if is_norm_scale else 0.05 * noise
    state["head.weight"] = 0.05 * torch.randn(NUM_CLASSES, TINY_CONFIG.embed_dim, generator=generator)
    state["head.bias"] = torch.zeros(NUM_CLASSES)
    payload = {
        "module": {k: v.to(torch.float16) for k, v in state.items()},
        MARKER: True,
        CHECKPOINT_CONFIG_KEY: TINY_CONFIG.to_dict(),
    }
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, target)
    # Extractors tell a stand-in checkpoint file by this sibling (without reading the checkpoint).
    marker = target.with_name(target.name + ".stand_in")
    marker.write_text("tiny random stand-in weights: features made with them are meaningless\n")
    return [target, marker]
