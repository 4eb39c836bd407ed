"""Qwen2.5-VL model inputs of a prompt with reference images, made without the full processor (no torchvision).

One user message: the prompt, then up to ``max_images`` reference images (the entry's ``images``, BindWeave's
``img_paths``, or frames of its video), rendered with the weights' chat template and ``add_generation_prompt=True``
(the template adds the default system turn). Images go through the Qwen2-VL image processor (PIL backend: smart
resize to multiples of 28 within ``min_pixels``/``max_pixels``), optionally after BindWeave's evaluation
pre-scaling (x0.3 above 720*1280 pixels, else x0.75). Every ``<|image_pad|>`` of the rendered text is expanded to
its image's token count exactly as the Hugging Face processor does. The collate pads token sequences on the right
and concatenates image patches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from lit_features.data.dataset import Prepared
from lit_features.data.preprocess import EntryError, MediaLoader, Preprocessor
from lit_features.data.sample import Sample
from lit_features.data.sampling import FrameSampling
from lit_features.extractors.base import quiet_transformers

IMAGE_PAD = "<|image_pad|>"
# Control tokens a prompt must not contain: the processor would count them as image placeholders.
RESERVED_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
PRESCALE_AREA = 720 * 1280


def bindweave_prescale(image: Any) -> Any:
    """BindWeave's reference-image downscale before the processor: x0.3 above 720*1280 pixels, else x0.75.

    ``image`` is a PIL image; the new size truncates (``int(w * s), int(h * s)``) and PIL's default filter for
    RGB (bicubic) resamples, as upstream.
    """
    width, height = image.size
    scale = 0.3 if width * height > PRESCALE_AREA else 0.75
    return image.resize((max(1, int(width * scale)), max(1, int(height * scale))))


def read_chat_template(model_path: str, tokenizer: Any) -> str:
    """The weights' chat template: the tokenizer's, else ``chat_template.jinja`` / ``chat_template.json``."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    folder = Path(model_path)
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").exists():
        return json.loads((folder / "chat_template.json").read_text())["chat_template"]
    raise FileNotFoundError(f"{model_path}: no chat template (tokenizer_config.json, chat_template.jinja or .json)")


def prompt_of(entry: dict[str, Any]) -> str | None:
    """The entry's prompt: ``prompt``, else ``cap`` (``None`` when neither is a non-empty string)."""
    for name in ("prompt", "cap"):
        value = entry.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


def pad_right(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors into ``[B, Lmax]`` padded on the right, with the ``[B, Lmax]`` attention mask."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask


@dataclass
class QwenPromptPreprocessor(Preprocessor):
    """Renders prompt + reference images into Qwen2.5-VL model inputs (token ids, image patches, grids).

    The tokenizer, chat template and image processor are read from ``model_path`` on first use in each
    DataLoader worker (they hold no weights). :class:`~lit_features.extractors.qwen_hidden.QwenHiddenStates`
    takes the other fields flat (``--model.max_images`` ...).

    Args:
        model_path: Qwen2.5-VL weights folder (tokenizer, chat template, ``preprocessor_config.json``).
        max_images: most reference images per entry; an entry with more is a manifest error (never truncated).
        image_source: reference images from the entry's ``images`` list, from ``video_frames`` uniformly
            sampled frames of its video (``path``, honouring ``cut``), or ``auto`` (``images`` when listed, else
            the video's frames, else none).
        video_frames: frames taken from the video when it supplies the references (1: the first frame).
        prescale: ``bindweave`` downscales each reference image before the processor (x0.3 above 720*1280
            pixels, else x0.75) as BindWeave does; ``none`` passes it as decoded.
        min_pixels: image processor lower pixel bound (``None``: the weights' ``preprocessor_config.json``).
        max_pixels: image processor upper pixel bound (``None``: the weights' ``preprocessor_config.json``).
        negative_prompt: text of a second pass stored as ``hidden_states_negative`` (an entry's own
            ``negative_prompt`` wins); ``None``: no second pass unless the entry has one.
        negative_images: give the negative pass the same reference images (as BindWeave does).
        system_prompt: a system turn before the user turn (``None``: the chat template's default).
        exif_transpose: apply reference images' EXIF orientation (``false``: the stored pixels, as BindWeave's
            ``Image.open(p).convert("RGB")`` sees them).
    """

    model_path: str = ""
    max_images: int = 4
    image_source: Literal["images", "video", "auto"] = "images"
    video_frames: int = 1
    prescale: Literal["none", "bindweave"] = "bindweave"
    min_pixels: int | None = None
    max_pixels: int | None = None
    negative_prompt: str | None = None
    negative_images: bool = True
    system_prompt: str | None = None
    exif_transpose: bool = True
    _tokenizer: Any = field(default=None, init=False, repr=False, compare=False)
    _image_processor: Any = field(default=None, init=False, repr=False, compare=False)
    _template: str | None = field(default=None, init=False, repr=False, compare=False)

    required_fields = ()

    def __post_init__(self) -> None:
        if self.max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {self.max_images}")
        if self.image_source != "images" and not 1 <= self.video_frames <= self.max_images:
            raise ValueError(
                f"video_frames must be between 1 and max_images={self.max_images}, got {self.video_frames}"
            )

    def __getstate__(self) -> dict[str, Any]:
        # Workers load their own tokenizer/processor: keep the pickled preprocessor small.
        return {**self.__dict__, "_tokenizer": None, "_image_processor": None, "_template": None}

    # -- loading the text/image processors (no weights)
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self._template = read_chat_template(self.model_path, self._tokenizer)
        return self._tokenizer

    @property
    def template(self) -> str:
        _ = self.tokenizer
        assert self._template is not None
        return self._template

    @property
    def image_processor(self) -> Any:
        if self._image_processor is None:
            # The PIL backend of the Qwen2-VL image processor: the default one needs torchvision.
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            overrides = {k: v for k, v in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels)) if v}
            with quiet_transformers():
                self._image_processor = Qwen2VLImageProcessorPil.from_pretrained(self.model_path, **overrides)
        return self._image_processor

    @property
    def image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(IMAGE_PAD))

    def params(self) -> dict[str, Any]:
        processor = self.image_processor
        # Not dataclasses.asdict: it would deep-copy the loaded tokenizer. The weights' location is not a number.
        values: dict[str, Any] = {"type": type(self).__qualname__}
        values.update((f.name, getattr(self, f.name)) for f in fields(self) if f.init and f.name != "model_path")
        values["image_processor"] = {
            "min_pixels": processor.size["shortest_edge"],
            "max_pixels": processor.size["longest_edge"],
            "patch_size": processor.patch_size,
            "merge_size": processor.merge_size,
            "temporal_patch_size": processor.temporal_patch_size,
            "image_mean": list(processor.image_mean),
            "image_std": list(processor.image_std),
            "resample": int(processor.resample),
        }
        values["chat_template_sha256"] = hashlib.sha256(self.template.encode()).hexdigest()[:16]
        return values

    # -- manifest-time checks (before any model loads)
    def reference_images(self, sample: Sample) -> list[str]:
        """The entry's reference image paths (``images``, or BindWeave's ``img_paths``), already absolute."""
        return list(sample.entry.get("images") or sample.entry.get("img_paths") or [])

    def uses_video(self, sample: Sample) -> bool:
        if self.image_source == "video":
            return True
        return self.image_source == "auto" and not self.reference_images(sample) and bool(sample.source)

    def validate(self, sample: Sample) -> None:
        entry = sample.entry
        prompt = prompt_of(entry)
        if prompt is None:
            raise EntryError("prompt", "no prompt: give a non-empty 'prompt' (or 'cap') for this entry")
        for name, text in (("prompt", prompt), ("negative_prompt", entry.get("negative_prompt"))):
            for token in RESERVED_TOKENS:
                if isinstance(text, str) and token in text:
                    raise EntryError(name, f"contains the reserved token {token}, which would break image placement")
        images = self.reference_images(sample)
        if len(images) > self.max_images:
            raise EntryError(
                "images" if entry.get("images") else "img_paths",
                f"{len(images)} reference images but max_images is {self.max_images}; remove some or raise "
                "model.max_images (images are never dropped silently)",
            )
        if self.image_source == "video" and not sample.source:
            raise EntryError("path", "image_source='video' takes reference frames from the entry's video: no 'path'")

    # -- per sample, in DataLoader workers
    def load_images(self, sample: Sample, media: MediaLoader) -> tuple[list[Any], dict[str, Any]]:
        """Reference images as RGB PIL images (decoded in the sandbox) and what to record about them."""
        from PIL import Image

        if self.uses_video(sample):
            assert sample.source is not None
            sampling = FrameSampling("uniform", self.video_frames, short_clip="stretch")
            video = media.video(sample.source, sampling, sample.cut)
            arrays = list(video.frames)
            meta: dict[str, Any] = {"reference": "video", "frame_indices": video.indices}
        else:
            arrays = [media.image(path, exif_transpose=self.exif_transpose) for path in self.reference_images(sample)]
            meta = {"reference": "images" if arrays else "none"}
        images = [Image.fromarray(a) for a in arrays]
        meta["image_sizes"] = [[im.height, im.width] for im in images]
        if self.prescale == "bindweave":
            images = [bindweave_prescale(im) for im in images]
        return images, meta

    def render(self, prompt: str, num_images: int) -> str:
        """The chat-template text of one user turn: the prompt, then one image placeholder per image."""
        content = [{"type": "text", "text": prompt}] + [{"type": "image"} for _ in range(num_images)]
        messages = [{"role": "user", "content": content}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=True
        )

    def expand_image_tokens(self, text: str, image_grid_thw: torch.Tensor | None) -> str:
        """Replace the i-th ``<|image_pad|>`` by ``t*h*w / merge_size**2`` copies, in order (as the processor)."""
        counts = (
            []
            if image_grid_thw is None
            else [int(g.prod()) // self.image_processor.merge_size**2 for g in image_grid_thw]
        )
        pieces = text.split(IMAGE_PAD)
        if len(pieces) != len(counts) + 1:
            raise ValueError(f"the chat template placed {len(pieces) - 1} image placeholders for {len(counts)} images")
        out = [pieces[0]]
        for count, piece in zip(counts, pieces[1:]):
            out.append(IMAGE_PAD * count + piece)
        return "".join(out)

    def tokenize(self, prompt: str, image_grid_thw: torch.Tensor | None) -> torch.Tensor:
        num_images = 0 if image_grid_thw is None else len(image_grid_thw)
        text = self.expand_image_tokens(self.render(prompt, num_images), image_grid_thw)
        ids = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        expected = 0 if image_grid_thw is None else self.expand_count(image_grid_thw)
        if int((ids == self.image_token_id).sum()) != expected:
            raise ValueError(
                f"tokenised prompt holds {int((ids == self.image_token_id).sum())} image tokens, not {expected}"
            )
        return ids

    def expand_count(self, image_grid_thw: torch.Tensor) -> int:
        return int(image_grid_thw.prod(-1).sum()) // self.image_processor.merge_size**2

    def __call__(self, sample: Sample, media: MediaLoader) -> Prepared:
        images, meta = self.load_images(sample, media)
        negative = sample.entry.get("negative_prompt", self.negative_prompt)
        inputs, more = self.model_inputs(prompt_of(sample.entry) or "", images, negative)
        meta.update(more)
        return Prepared(inputs, meta)

    def model_inputs(
        self, prompt: str, images: list[Any], negative: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Model inputs of ``prompt`` with ``images`` (RGB PIL images, already pre-scaled), and what to record."""
        pixel_values = image_grid_thw = None
        if images:
            processed = self.image_processor(images=images, return_tensors="pt")
            pixel_values, image_grid_thw = processed["pixel_values"], processed["image_grid_thw"]
        input_ids = self.tokenize(prompt, image_grid_thw)
        negative_ids = None
        if negative is not None:
            negative_ids = self.tokenize(negative, image_grid_thw if self.negative_images else None)
        meta: dict[str, Any] = dict(
            num_tokens=len(input_ids),
            num_image_tokens=0 if image_grid_thw is None else self.expand_count(image_grid_thw),
            image_grid_thw=[] if image_grid_thw is None else image_grid_thw.tolist(),
        )
        if negative_ids is not None:
            meta["num_tokens_negative"] = len(negative_ids)
        inputs = {
            "input_ids": input_ids,
            "negative_input_ids": negative_ids,
            "pixel_values": pixel_values,
            "image_grid_thw": image_grid_thw,
            "pad_token_id": int(self.tokenizer.pad_token_id or 0),
        }
        return inputs, meta

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Right-pad token ids; concatenate image patches (the vision tower splits them by grid)."""
        pad_id = items[0]["pad_token_id"]
        input_ids, mask = pad_right([i["input_ids"] for i in items], pad_id)
        grids = [i["image_grid_thw"] for i in items if i["image_grid_thw"] is not None]
        negatives = [j for j, i in enumerate(items) if i["negative_input_ids"] is not None]
        pixels = [i["pixel_values"] for i in items if i["pixel_values"] is not None]
        out: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "lengths": [len(i["input_ids"]) for i in items],
            "images_per_sample": [0 if i["image_grid_thw"] is None else len(i["image_grid_thw"]) for i in items],
            "pixel_values": torch.cat(pixels) if pixels else None,
            "image_grid_thw": torch.cat(grids) if grids else None,
            "negative": None,
        }
        if negatives:
            neg_ids, neg_mask = pad_right([items[j]["negative_input_ids"] for j in negatives], pad_id)
            out["negative"] = {
                "samples": negatives,
                "input_ids": neg_ids,
                "attention_mask": neg_mask,
                "lengths": [len(items[j]["negative_input_ids"]) for j in negatives],
                "with_images": self.negative_images,
            }
        return out
