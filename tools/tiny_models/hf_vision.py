"""Tiny random stand-ins for the Hugging Face vision towers: SigLIP (so400m layout) and CLIP ViT-L/14.

Both are full two-tower checkpoints (vision + text) saved with ``save_pretrained`` plus a
``preprocessor_config.json``, under the directory names the real downloads use, so the extractors load them
exactly as they load real weights. Sizes are tiny; the patch size is the real one (14).
"""

from __future__ import annotations

import json
import pathlib

import torch

from tools.tiny_models._guard import MARKER, replace_stand_in_dir


def _save(model: torch.nn.Module, target: pathlib.Path, mean: list[float], std: list[float], size: int) -> None:
    model.config.update({MARKER: True})
    model.save_pretrained(target)
    processor = {"image_mean": mean, "image_std": std, "size": {"height": size, "width": size}, MARKER: True}
    (target / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def make_siglip(out_root: pathlib.Path) -> pathlib.Path:
    from transformers import SiglipConfig, SiglipModel

    target = pathlib.Path(out_root) / "siglip-so400m-patch14-384"
    replace_stand_in_dir(target)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, patch_size=14)
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config = SiglipConfig(vision_config={**vision, "image_size": 56}, text_config=text)
    torch.manual_seed(0)
    _save(SiglipModel(config), target, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], 384)
    return target


def make_clip(out_root: pathlib.Path) -> pathlib.Path:
    from transformers import CLIPConfig, CLIPModel

    target = pathlib.Path(out_root) / "clip-vit-large-patch14"
    replace_stand_in_dir(target)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, patch_size=14)
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config = CLIPConfig(vision_config={**vision, "image_size": 56}, text_config=text, projection_dim=16)
    torch.manual_seed(1)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    _save(CLIPModel(config), target, mean, std, 224)
    return target


def make(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Write ``siglip-so400m-patch14-384/`` and ``clip-vit-large-patch14/`` under ``out_root``."""
    return [make_siglip(out_root), make_clip(out_root)]
