"""Tiny random stand-in for a OneVision-Encoder checkpoint directory, written with ``save_pretrained``.

``out_root/OneVision-Encoder-Base/`` gets ``config.json`` (marked ``"tiny_random_stand_in": true``) and
``model.safetensors`` for an :class:`~lit_features.models.onevision_vit.OneVisionViTModel` with hidden 64,
2 layers and 2 heads: head_dim 32 is the smallest width whose half splits 4:6:6 between (t, h, w) in whole
units of head_dim/32. Patch 14 is the real one. ``make(out_root, layer_norm_type="rms_norm")`` writes the
RMSNorm variant (no norm biases) to ``OneVision-Encoder-RMSNorm/`` instead.
"""

from __future__ import annotations

import pathlib
import shutil

import torch

from lit_features.models.onevision_vit import OneVisionViTConfig, OneVisionViTModel
from tools.tiny_models._guard import MARKER, refuse_real_weights

DIR_NAME = "OneVision-Encoder-Base"
RMS_DIR_NAME = "OneVision-Encoder-RMSNorm"
SEED = 0


def tiny_config(layer_norm_type: str = "layer_norm") -> OneVisionViTConfig:
    """The stand-in's configuration, marker included."""
    return OneVisionViTConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=14,
        layer_norm_type=layer_norm_type,
        **{MARKER: True},
    )


def make(out_root: pathlib.Path, layer_norm_type: str = "layer_norm") -> list[pathlib.Path]:
    """Writes ``out_root/OneVision-Encoder-Base/`` (``OneVision-Encoder-RMSNorm/`` for ``rms_norm``) and returns
    that directory in a list.

    Re-running replaces an earlier stand-in; a directory whose ``config.json`` lacks the stand-in marker
    (a real checkpoint, or anything else) is never touched.

    Raises:
        FileExistsError: If the target exists and is not a tiny stand-in.
    """
    out_root = pathlib.Path(out_root)
    dir_name = RMS_DIR_NAME if layer_norm_type == "rms_norm" else DIR_NAME
    target = out_root / dir_name
    refuse_real_weights(target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = OneVisionViTModel(tiny_config(layer_norm_type))
        # Fresh norms are exactly ones/zeros; perturb them so a mis-mapped norm changes outputs.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.add_(0.1 * torch.randn_like(param))
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / (dir_name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return [target]
