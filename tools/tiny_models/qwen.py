"""Tiny random stand-in of Qwen2.5-VL-7B-Instruct: model, byte-level BPE tokenizer, chat template, image processor.

Written under ``pretrained_model/Qwen2.5-VL-7B-Instruct/`` in the layout of the real download, so the
``qwen_hidden`` extractor loads it exactly as it loads the real weights:

- ``config.json`` + ``model.safetensors`` from ``Qwen2_5_VLConfig`` with tiny sizes (text hidden 64, 2 layers;
  vision depth 2, hidden 32), saved with ``save_pretrained`` and marked ``"tiny_random_stand_in": true``;
- ``tokenizer.json`` / ``tokenizer_config.json``: a byte-level BPE trained offline on a few sentences, with the
  Qwen special tokens appended after the ordinary vocabulary (as in the real vocabulary); their ids are the
  ``image_token_id``/``vision_start_token_id``/... of the config;
- ``chat_template.jinja``: the Qwen2.5-VL chat template (default system prompt, ``<|vision_start|><|image_pad|>
  <|vision_end|>`` per image, ``<|im_start|>assistant`` on ``add_generation_prompt``);
- ``preprocessor_config.json``: the real image processor settings (patch 14, merge 2, CLIP mean/std,
  min/max pixels of the real checkpoint).
"""

from __future__ import annotations

import json
import pathlib

import torch

from tools.tiny_models._guard import MARKER, replace_stand_in_dir

TARGET = "Qwen2.5-VL-7B-Instruct"

# The special tokens of the Qwen2/2.5-VL vocabulary, in their real order (ids 151643..151656 there).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Pre-tokenisation of the Qwen2 tokenizer: contractions, letter runs (with one leading non-letter), single
# digits, punctuation runs, newlines, and whitespace.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The Qwen2.5-VL chat template, written out here: a default system turn when the conversation does not open
# with one; every message as <|im_start|>role\n ... <|im_end|>\n; images and videos as vision placeholders
# (optionally numbered with add_vision_id); <|im_start|>assistant\n when a generation prompt is asked for.
# The pieces are concatenated without layout whitespace, so no whitespace control is needed (a '{%-' would eat
# the newlines that belong to the format).
CHAT_TEMPLATE = (
    "{% set counts = namespace(image=0, video=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set counts.image = counts.image + 1 %}"
    "{% if add_vision_id %}Picture {{ counts.image }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "{% set counts.video = counts.video + 1 %}"
    "{% if add_vision_id %}Video {{ counts.video }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# A little English for the BPE merges (any text still tokenises: the byte alphabet is always in the vocabulary).
CORPUS = [
    "You are a helpful assistant.",
    "A cat sits on a wooden table and looks at the camera.",
    "An astronaut in a white suit stands in front of a flag.",
    "A person walks along the beach at sunset while waves roll in.",
    "The dog runs across the green field, chasing a red ball.",
    "Bright tones, overexposed, static, blurred details, subtitles, worst quality, low quality, ugly, deformed.",
    "Two people play a game outdoors; the camera slowly pans to the left.",
    "A cockatoo turns its head and raises its yellow crest.",
    "user assistant system picture video image text prompt",
]

IMAGE_PROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}


def build_tokenizer():  # -> PreTrainedTokenizerFast
    """A byte-level BPE with the Qwen pre-tokeniser and special tokens appended after the ordinary vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def make_qwen(out_root: pathlib.Path) -> pathlib.Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    target = pathlib.Path(out_root) / TARGET
    replace_stand_in_dir(target)
    tokenizer = build_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    vocab_size = (len(tokenizer) + 63) // 64 * 64  # padded like the real embedding table
    text = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        fullatt_block_indexes=[1],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.config.update({MARKER: True})
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    # The real download names the Qwen2 tokenizer class; it reads the same tokenizer.json.
    tok_cfg_path = target / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg.update(tokenizer_class="Qwen2Tokenizer", bos_token=None, unk_token=None, errors="replace")
    tok_cfg.pop("backend", None)
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    (target / "preprocessor_config.json").write_text(json.dumps({**IMAGE_PROCESSOR, MARKER: True}, indent=2))
    return target


def make(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Write ``Qwen2.5-VL-7B-Instruct/`` under ``out_root``."""
    return [make_qwen(out_root)]
