"""Tiny random stand-ins for the Hugging Face video foundation models: VideoMAE, DINOv2 and V-JEPA 2.

Each is built from its real config class with a tiny width (32) and depth (2) but the real patch/tubelet
geometry (VideoMAE 16/2 at 16x224, DINOv2 14 at 518, V-JEPA 2 16/2 at 64x256), so token grids match the real
models', and saved with ``save_pretrained`` under the directory name of the real download. VideoMAE is saved
as ``VideoMAEForPreTraining`` (encoder + MAE decoder), the layout of ``MCG-NJU/videomae-base``. Configs carry
``"tiny_random_stand_in": true``.
"""

from __future__ import annotations

import json
import pathlib

import torch

from tools.tiny_models._guard import MARKER, replace_stand_in_dir

# Ten times the usual init scale: attention is then far from uniform, so a token given the wrong position (or a
# wrongly resized position table) changes the features measurably and the tests can tell.
INIT_STD = 0.2
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def _save(model: torch.nn.Module, target: pathlib.Path, processor: dict) -> pathlib.Path:
    model.config.update({MARKER: True})
    model.save_pretrained(target)
    (target / "preprocessor_config.json").write_text(json.dumps({**IMAGENET, **processor, MARKER: True}, indent=2))
    return target


def make_videomae(out_root: pathlib.Path) -> pathlib.Path:
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    target = pathlib.Path(out_root) / "videomae-base"
    replace_stand_in_dir(target)
    config = VideoMAEConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=16,
        tubelet_size=2,
        num_frames=16,
        image_size=224,
        use_mean_pooling=False,  # as videomae-base: VideoMAEModel then ends with a layernorm
        initializer_range=INIT_STD,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
    )
    torch.manual_seed(10)
    return _save(VideoMAEForPreTraining(config), target, {"size": {"shortest_edge": 224}, "crop_size": [224, 224]})


def make_dinov2(out_root: pathlib.Path) -> pathlib.Path:
    from transformers import Dinov2Config, Dinov2Model

    target = pathlib.Path(out_root) / "dinov2-base"
    replace_stand_in_dir(target)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=14,
        image_size=518,
        initializer_range=INIT_STD,
    )
    torch.manual_seed(11)
    return _save(Dinov2Model(config), target, {"size": {"shortest_edge": 256}, "crop_size": [224, 224]})


def make_vjepa2(out_root: pathlib.Path) -> pathlib.Path:
    from transformers import VJEPA2Config, VJEPA2Model

    target = pathlib.Path(out_root) / "vjepa2-vitl-fpc64-256"
    replace_stand_in_dir(target)
    config = VJEPA2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,  # head dim 16: 12 rotary dims (t, h, w) + 4 unrotated, like the real split
        patch_size=16,
        tubelet_size=2,
        crop_size=256,
        frames_per_clip=64,
        pred_hidden_size=32,
        pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
        num_pooler_layers=1,
        initializer_range=INIT_STD,
    )
    torch.manual_seed(12)
    return _save(VJEPA2Model(config), target, {"crop_size": 256})


def make(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Write ``videomae-base/``, ``dinov2-base/`` and ``vjepa2-vitl-fpc64-256/`` under ``out_root``."""
    return [make_videomae(out_root), make_dinov2(out_root), make_vjepa2(out_root)]
