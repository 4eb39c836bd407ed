"""Qwen2.5-VL hidden states of a prompt with reference images: the conditioning features of BindWeave.

Each sample is one user message — the entry's ``prompt`` (or ``cap``) followed by up to ``max_images`` reference
images (the entry's ``images``, or frames of its video) — rendered with the weights' chat template and
``add_generation_prompt=True`` (the template adds the default system turn). Images go through the Qwen2-VL
image processor (smart resize to multiples of 28 within ``min_pixels``/``max_pixels``), optionally after
BindWeave's pre-scaling (x0.3 above 720*1280 pixels, else x0.75). Every ``<|image_pad|>`` of the rendered text
is expanded to the image's token count exactly as the Hugging Face processor does, without the full processor
(which needs torchvision; see :mod:`lit_features.extractors.qwen_inputs`). ONE forward pass, no generation; the
stored feature is ``hidden_states[layer]`` for every token (default ``-1``: the last decoder layer after the final
RMSNorm), ``[L, D]``, with its ``attention_mask`` ``[L]`` and ``input_ids`` ``[L]``. A negative prompt (entry
``negative_prompt``, else the configured one) is run as a second pass with the same images and stored as
``hidden_states_negative``.

Batching: the collate pads token sequences on the right; the extractor computes each sample's positions from
the padded batch, then drops the padding and runs the batch as ONE packed sequence, with attention restricted to
each sample's own segment (a registered attention function). A sample's features are therefore bit-for-bit
those of running it alone, and no compute is spent on pad tokens. Features are split per sample for writing.

``output_layout="bindweave"`` returns exactly BindWeave's evaluation files: ``hidden_states`` and
``hidden_states_negative``, each ``[1, L, D]``, for the ``pt_bare`` codec with ``path_template
"{key}_{name}{ext}"`` (see ``configs/qwen_hidden_bindweave.yaml``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lit_features.data.dataset import Batch
from lit_features.extractors.base import FeatureExtractor, quiet_transformers
from lit_features.extractors.qwen_inputs import (  # noqa: F401  (re-exported: the Qwen input contract)
    IMAGE_PAD,
    PRESCALE_AREA,
    RESERVED_TOKENS,
    QwenPromptPreprocessor,
    bindweave_prescale,
    pad_right,
    prompt_of,
    read_chat_template,
)
from lit_features.models.weights import from_pretrained_strict

PACKED_ATTENTION = "lit_features_packed_sdpa"


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
        output_layout: ``store``: ``hidden_states [L, D]``, ``attention_mask [L]``, ``input_ids [L]`` (and their
            ``_negative`` twins); ``bindweave``: only ``hidden_states`` and ``hidden_states_negative``, each
            ``[1, L, D]``, for BindWeave's ``{key}_hidden_states.pt`` files (codec ``pt_bare``).
        dtype: model and feature dtype (``bfloat16`` as upstream).
        trust_remote_code: allow model code from the weights folder.
        preprocess: the prompt and image options, flat (``max_images``, ``image_source``, ``video_frames``,
            ``prescale``, ``min_pixels``, ``max_pixels``, ``negative_prompt``, ``negative_images``,
            ``system_prompt``, ``exif_transpose``): the fields of
            :class:`~lit_features.extractors.qwen_inputs.QwenPromptPreprocessor`, defined there once.
    """

    extractor_name = "qwen_hidden"
    hub_id = "Qwen/Qwen2.5-VL-7B-Instruct"

    def __init__(
        self,
        model_path: str = "pretrained_model/Qwen2.5-VL-7B-Instruct",
        layers: int | list[int] = -1,
        output_layout: Literal["store", "bindweave"] = "store",
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
        **preprocess: Any,
    ):
        super().__init__(model_path, dtype, trust_remote_code)
        self.layers = layers
        if output_layout == "bindweave" and not isinstance(layers, int):
            raise ValueError("output_layout='bindweave' stores one layer: give layers as a single index")
        self.output_layout = output_layout
        # Built now, so a bad value (e.g. video_frames above max_images) fails here, not in a worker.
        self._preprocessor = QwenPromptPreprocessor(model_path=model_path, **preprocess)
        self.record_preprocessing(self._preprocessor, derived=("model_path",))

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
