"""Tiny random stand-in of ``Wan2.1-I2V-14B-720P-Diffusers``: VAE, UMT5 text encoder, tokenizer, CLIP image encoder.

The folder has the layout of the real diffusers download (``vae/``, ``text_encoder/``, ``tokenizer/``,
``image_encoder/``, ``image_processor/``, ``model_index.json``; no ``transformer/``, which feature extraction does
not use). Each part is built from its real config class with tiny sizes and written with ``save_pretrained``, so
the Wan extractor loads it exactly as it loads the real weights. What stays real: the VAE's 16 latent channels
and its ``latents_mean``/``latents_std`` (the diffusers defaults, which are the Wan2.1 constants), 4x temporal and
8x spatial compression, the tokenizer's T5 conventions (``<pad>`` = 0, ``</s>`` appended, max length 512) and
the CLIP geometry (224 px, patch 14, 257 tokens). Everything else is tiny.
"""

from __future__ import annotations

import json
import pathlib

import torch

from tools.tiny_models._guard import MARKER, replace_stand_in_dir

FOLDER = "Wan2.1-I2V-14B-720P-Diffusers"

# Text the stand-in tokenizer is trained on (offline, with the ``tokenizers`` library): enough to tokenise the
# sample captions into sub-words; anything else falls back to characters or <unk>.
CORPUS = [
    "A cockatoo turns its head.",
    "People play a game outdoors.",
    "The first half of the same clip.",
    "A very short clip.",
    "A cat sits on a sofa and looks at the camera.",
    "An astronaut stands on the moon next to a flag.",
    "A person walks along the beach at sunset while waves roll in.",
    "The camera slowly pans across a city street with cars and people.",
    "A dog runs through a green field, then jumps to catch a ball.",
    "Close-up of hands cooking vegetables in a pan in a bright kitchen.",
]
ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()")


def _mark(config_file: pathlib.Path) -> None:
    cfg = json.loads(config_file.read_text())
    cfg[MARKER] = True
    config_file.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def make_tokenizer(folder: pathlib.Path) -> int:
    """A real T5-style Unigram tokenizer trained on :data:`CORPUS`; returns its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    trained = Tokenizer(models.Unigram())
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=256, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", initial_alphabet=ALPHABET
    )
    trained.train_from_iterator(CORPUS * 8, trainer)
    vocab = [tuple(piece) for piece in json.loads(trained.to_str())["model"]["vocab"]]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(folder)
    _mark(folder / "tokenizer_config.json")
    return len(tokenizer)


def make_vae(folder: pathlib.Path) -> None:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    vae.save_pretrained(folder)
    _mark(folder / "config.json")


def make_text_encoder(folder: pathlib.Path, vocab_size: int) -> None:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    config.update({MARKER: True})
    torch.manual_seed(1)
    UMT5EncoderModel(config).save_pretrained(folder)


def make_image_encoder(folder: pathlib.Path, processor_folder: pathlib.Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        patch_size=14,
        image_size=224,
        projection_dim=16,
        hidden_act="gelu",
    )
    config.update({MARKER: True})
    torch.manual_seed(2)
    CLIPVisionModel(config).save_pretrained(folder)
    processor_folder.mkdir(parents=True, exist_ok=True)
    processor = {
        "image_processor_type": "CLIPImageProcessor",
        "crop_size": {"height": 224, "width": 224},
        "size": {"shortest_edge": 224},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        MARKER: True,
    }
    (processor_folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def make(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Write ``Wan2.1-I2V-14B-720P-Diffusers/`` (vae, text_encoder, tokenizer, image_encoder) under ``out_root``."""
    target = pathlib.Path(out_root) / FOLDER
    replace_stand_in_dir(target)
    target.mkdir(parents=True)
    vocab_size = make_tokenizer(target / "tokenizer")
    make_vae(target / "vae")
    make_text_encoder(target / "text_encoder", vocab_size)
    make_image_encoder(target / "image_encoder", target / "image_processor")
    index = {
        "_class_name": "WanImageToVideoPipeline",
        "vae": ["diffusers", "AutoencoderKLWan"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "image_encoder": ["transformers", "CLIPVisionModel"],
        "image_processor": ["transformers", "CLIPImageProcessor"],
        MARKER: True,
    }
    (target / "model_index.json").write_text(json.dumps(index, indent=2))
    return [target]
