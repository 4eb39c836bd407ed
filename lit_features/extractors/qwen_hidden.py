"""Qwen2.5-VL hidden states of a prompt with reference images: the conditioning features of BindWeave.

Each sample is one user message — the entry's ``prompt`` (or ``cap``) followed by up to ``max_images`` reference
images (the entry's ``images``, or frames of its video) — rendered with the weights' chat template and
``add_generation_prompt=True`` (the template adds the default system turn). Images go through the Qwen2-VL
image processor (smart resize to multiples of 28 within ``min_pixels``/``max_pixels``), optionally after
BindWeave's pre-scaling (x0.3 above 720*1280 pixels, else x0.75). Every ``<|image_pad|>`` of the rendered text
is expanded to the image's token count exactly as the Hugging Face processor does, without the full processor
(which needs torchvision). ONE forward pass, no generation; the stored feature is ``hidden_states[layer]`` for
every token (default ``-1``: the last decoder layer after the final RMSNorm), ``[L, D]``, with its
``attention_mask`` ``[L]`` and ``input_ids`` ``[L]``. A negative prompt (entry ``negative_prompt``, else the
configured one) is run as a second pass with the same images and stored as ``hidden_states_negative``.

Batching: the collate pads token sequences on the right; the extractor computes each sample's positions from
the padded batch, then drops the padding and runs the batch as ONE packed sequence, with attention restricted to
each sample's own segment (a registered attention function). A sample's features are therefore bit-for-bit
those of running it alone, and no compute is spent on pad tokens. Features are split per sample for writing.

``output_layout="bindweave"`` returns exactly BindWeave's evaluation files: ``hidden_states`` and
``hidden_states_negative``, each ``[1, L, D]``, for the ``pt_bare`` codec with ``path_template
"{key}_{name}{ext}"`` (see ``configs/qwen_hidden_bindweave.yaml``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from lit_features.data.dataset import Batch, Prepared
from lit_features.data.manifest import Sample
from lit_features.data.preprocess import EntryError, MediaLoader, Preprocessor
from lit_features.data.sampling import FrameSampling
from lit_features.extractors.base import FeatureExtractor, quiet_transformers
from lit_features.models.weights import from_pretrained_strict

IMAGE_PAD = "<|image_pad|>"
# Control tokens a prompt must not contain: the processor would count them as image placeholders.
RESERVED_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
PACKED_ATTENTION = "lit_features_packed_sdpa"
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
    DataLoader worker (they hold no weights).
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
            arrays = [media.image(path) for path in self.reference_images(sample)]
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
        pixel_values = image_grid_thw = None
        if images:
            processed = self.image_processor(images=images, return_tensors="pt")
            pixel_values, image_grid_thw = processed["pixel_values"], processed["image_grid_thw"]
        input_ids = self.tokenize(prompt_of(sample.entry) or "", image_grid_thw)
        negative = sample.entry.get("negative_prompt", self.negative_prompt)
        negative_ids = None
        if negative is not None:
            negative_ids = self.tokenize(negative, image_grid_thw if self.negative_images else None)
        meta.update(
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
        return Prepared(inputs, meta)

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


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    sample_lengths: list[int] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA on each sample's segment of a packed ``[1, heads, sum(lengths), dim]`` sequence.

    Each segment attends to itself exactly as the sample would alone (causal, no mask), so a sample's outputs do
    not depend on what else is in the batch. Without ``sample_lengths`` this is plain SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if sample_lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if query.shape[0] != 1 or sum(sample_lengths) != query.shape[2]:
        raise ValueError(f"packed attention: lengths {sample_lengths} do not tile a [1, *, {query.shape[2]}] sequence")
    segments, start = [], 0
    for n in sample_lengths:
        part = slice(start, start + n)
        out, _ = sdpa_attention_forward(module, query[:, :, part], key[:, :, part], value[:, :, part], None, **kwargs)
        segments.append(out)
        start += n
    return torch.cat(segments, dim=1), None


def register_packed_attention() -> None:
    """Make ``PACKED_ATTENTION`` a transformers attention implementation (it never needs a mask built)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)


class QwenHiddenStates(FeatureExtractor):
    """Qwen2.5-VL hidden states of prompt + reference images, one forward pass per prompt (no generation).

    Args:
        model_path: Qwen2.5-VL weights folder with tokenizer, chat template and
            ``preprocessor_config.json``, or a hub id.
        layers: index into ``hidden_states`` (``-1``: last decoder layer after the final norm; ``0``: the input
            embeddings; ``i``: output of decoder layer ``i``), or a list of them (stored stacked ``[K, L, D]``).
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
        output_layout: ``store``: ``hidden_states [L, D]``, ``attention_mask [L]``, ``input_ids [L]`` (and their
            ``_negative`` twins); ``bindweave``: only ``hidden_states`` and ``hidden_states_negative``, each
            ``[1, L, D]``, for BindWeave's ``{key}_hidden_states.pt`` files (codec ``pt_bare``).
        dtype: model and feature dtype (``bfloat16`` as upstream).
        trust_remote_code: allow model code from the weights folder.
    """

    extractor_name = "qwen_hidden"
    hub_id = "Qwen/Qwen2.5-VL-7B-Instruct"

    def __init__(
        self,
        model_path: str = "pretrained_model/Qwen2.5-VL-7B-Instruct",
        layers: int | list[int] = -1,
        max_images: int = 4,
        image_source: Literal["images", "video", "auto"] = "images",
        video_frames: int = 1,
        prescale: Literal["none", "bindweave"] = "bindweave",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        negative_prompt: str | None = None,
        negative_images: bool = True,
        system_prompt: str | None = None,
        output_layout: Literal["store", "bindweave"] = "store",
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
    ):
        super().__init__(model_path, dtype, trust_remote_code)
        self.layers = layers
        if output_layout == "bindweave" and not isinstance(layers, int):
            raise ValueError("output_layout='bindweave' stores one layer: give layers as a single index")
        self.output_layout = output_layout
        self._preprocessor = QwenPromptPreprocessor(
            model_path=model_path,
            max_images=max_images,
            image_source=image_source,
            video_frames=video_frames,
            prescale=prescale,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            negative_prompt=negative_prompt,
            negative_images=negative_images,
            system_prompt=system_prompt,
        )

    def preprocessor(self) -> QwenPromptPreprocessor:
        return self._preprocessor

    # -- weights
    def load_model(self) -> torch.nn.Module:
        from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

        config = AutoConfig.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code)
        if config.model_type != "qwen2_5_vl":
            raise ValueError(f"{self.model_path}: model_type {config.model_type!r}, expected 'qwen2_5_vl' (Qwen2.5-VL)")
        register_packed_attention()
        with quiet_transformers():
            model = from_pretrained_strict(
                Qwen2_5_VLForConditionalGeneration,
                self.model_path,
                dtype=self.compute_dtype,
                trust_remote_code=self.trust_remote_code,
            )
        # Samples are packed into one sequence; text attention runs per sample segment (the vision tower keeps
        # SDPA over its own per-image segments).
        model.set_attn_implementation({"text_config": PACKED_ATTENTION})
        if set(getattr(model.config.text_config, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
            raise NotImplementedError(f"{self.model_path}: sliding-window attention layers are not supported")
        num_states = model.config.text_config.num_hidden_layers + 1
        for layer in [self.layers] if isinstance(self.layers, int) else self.layers:
            if not -num_states <= layer < num_states:
                raise ValueError(
                    f"layer {layer} out of range: the model has {num_states} hidden states (0..{num_states - 1})"
                )
        # The language-model head (vocabulary x hidden, ~1 GB for 7B) is never used: features come before it.
        model.lm_head = torch.nn.Identity()
        return model

    # -- inference
    def language_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lengths: list[int],
        image_features: list[torch.Tensor],
        image_grid_thw: torch.Tensor | None,
    ) -> list[torch.Tensor]:
        """One forward of the language model over the batch packed without padding; per-sample hidden states.

        Positions (3D rotary for image tokens) are computed per sample from the padded batch, exactly as the
        model does for each sample alone, then the padding is dropped: ``[1, sum(lengths)]`` tokens go through
        the model once, and attention is restricted to each sample's segment. No pad token is ever computed.
        """
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        assert self.model is not None
        core = self.model.model
        config = self.model.config
        position_ids, _ = core.get_rope_index(
            input_ids,
            mm_token_type_ids=(input_ids == config.image_token_id).int(),
            image_grid_thw=image_grid_thw,
            attention_mask=attention_mask,
        )
        keep = attention_mask.bool()
        mm_encoder_outputs = None
        if image_features:
            mm_encoder_outputs = {"image": BaseModelOutputWithPooling(pooler_output=tuple(image_features))}
        want = [self.layers] if isinstance(self.layers, int) else list(self.layers)
        # hidden_states[-1] is last_hidden_state (after the final norm): skip keeping every layer when that is all.
        need_all = any(layer not in (-1, config.text_config.num_hidden_layers) for layer in want)
        out = core(
            input_ids=input_ids[keep][None],
            position_ids=position_ids[:, keep][:, None],
            # a ready "mask" per layer type: none is built (the packed attention needs only the lengths)
            attention_mask={"full_attention": None},
            image_grid_thw=image_grid_thw,
            mm_encoder_outputs=mm_encoder_outputs,
            output_hidden_states=need_all,
            use_cache=False,
            sample_lengths=lengths,
        )
        picked = [out.hidden_states[layer][0] if need_all else out.last_hidden_state[0] for layer in want]
        results = []
        for parts in zip(*(h.split(lengths) for h in picked)):
            # clone: a view would keep the whole packed batch alive until it is written
            results.append(parts[0].clone() if isinstance(self.layers, int) else torch.stack(parts))
        return results

    def extract(self, inputs: dict[str, Any], batch: Batch) -> list[dict[str, torch.Tensor]]:
        """Vision tower once for the batch, then the positive pass and (for samples that have one) the negative."""
        assert self.model is not None
        device = self.device
        grid = inputs["image_grid_thw"]
        per_sample_images: list[list[torch.Tensor]] = [[] for _ in inputs["lengths"]]
        per_sample_grids: list[list[torch.Tensor]] = [[] for _ in inputs["lengths"]]
        if grid is not None:
            grid = grid.to(device)
            pixels = inputs["pixel_values"].to(device, self.compute_dtype)
            # The vision tower runs once per batch; both passes reuse its output.
            features = self.model.model.get_image_features(pixels, grid, return_dict=True).pooler_output
            cursor = 0
            for i, count in enumerate(inputs["images_per_sample"]):
                per_sample_images[i] = list(features[cursor : cursor + count])
                per_sample_grids[i] = list(grid[cursor : cursor + count])
                cursor += count

        def run(samples: list[int], ids: torch.Tensor, mask: torch.Tensor, lengths: list[int], images: bool):
            feats = [f for i in samples for f in per_sample_images[i]] if images else []
            grids = [g for i in samples for g in per_sample_grids[i]] if images else []
            return self.language_forward(
                ids.to(device), mask.to(device), lengths, feats, torch.stack(grids) if grids else None
            )

        everyone = list(range(len(inputs["lengths"])))
        positive = run(everyone, inputs["input_ids"], inputs["attention_mask"], inputs["lengths"], True)
        negative: dict[int, torch.Tensor] = {}
        neg = inputs["negative"]
        if neg is not None:
            states = run(neg["samples"], neg["input_ids"], neg["attention_mask"], neg["lengths"], neg["with_images"])
            negative = dict(zip(neg["samples"], states))
        outputs = []
        for i, hidden in enumerate(positive):
            ids = inputs["input_ids"][i, : inputs["lengths"][i]]
            if self.output_layout == "bindweave":
                record = {"hidden_states": hidden[None]}
                if i in negative:
                    record["hidden_states_negative"] = negative[i][None]
            else:
                record = {
                    "hidden_states": hidden,
                    "attention_mask": torch.ones(len(ids), dtype=torch.long),
                    "input_ids": ids.clone(),
                }
                if i in negative:
                    j = neg["samples"].index(i)
                    record["hidden_states_negative"] = negative[i]
                    record["attention_mask_negative"] = torch.ones(neg["lengths"][j], dtype=torch.long)
                    record["input_ids_negative"] = neg["input_ids"][j, : neg["lengths"][j]].clone()
            outputs.append(record)
        return outputs
