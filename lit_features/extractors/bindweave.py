"""BindWeave's training features in one pass: Wan2.1 VAE + UMT5 + CLIP reference I2V + Qwen2.5-VL hidden states.

Each manifest entry is decoded once, and one ``.pt`` dict per clip holds every key BindWeave's trainer takes
from MindSpeed-MM's feature dataset (81 frames at 720x1280, real weights):

=====================  ==================================================================  =====================
key                    content                                                             shape, dtype
=====================  ==================================================================  =====================
``video``              normalised Wan VAE latent (bf16 VAE, MindSpeed-MM tiling)           [16, 21, 90, 160]
``prompt_ids``         UMT5 ``last_hidden_state`` of the whitespace-collapsed caption      [1, 512, 4096]
``prompt_mask``        tokenizer attention mask                                            [1, 512] int64
``i2v_clip_feature``   CLIP ``hidden_states[-2]`` of the references, zero-padded to 4      [1028, 1280]
``i2v_vae_feature``    4 reference slots, then the video slots (mask + latent)             [20, 25, 90, 160]
``hidden_states``      Qwen2.5-VL last hidden states of caption + references               [1, L, 3584]
``hidden_states_mask`` all ones                                                            [1, L] int64
=====================  ==================================================================  =====================

Everything but the last two comes from :class:`~lit_features.extractors.wan.WanTrainingFeatures` (frames
consecutive from the entry's start, BindWeave's resize-and-crop, ``i2v="reference"``). The Qwen2.5-VL input is
built as BindWeave's training extraction builds it: the prompt is the caption (``cap``) as written; the images
are the reference canvases the I2V condition encodes (the entry's ``images``, at most 4, each fitted into the
frame on black), as RGB /255, resized x0.5 (``F.interpolate``, bilinear, ``align_corners=False``,
``recompute_scale_factor=True``), x255 truncated to uint8, then the chat template and image processor of
:class:`~lit_features.extractors.qwen_hidden.QwenHiddenStates` (one forward pass, last layer after the final
norm). This is not the x0.3/x0.75 PIL pre-scaling BindWeave applies at evaluation time.

Each model loads through its own ``from_pretrained`` path: ``wan_model_path`` (a ``Wan2.1-I2V-*-Diffusers``
folder) and ``qwen_model_path`` (``Qwen2.5-VL-7B-Instruct``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lit_features.data.dataset import Batch, Prepared
from lit_features.data.preprocess import EntryError, MediaLoader, Preprocessor, omit_quiet_defaults
from lit_features.data.sample import Sample
from lit_features.extractors.base import FeatureExtractor, resolve_dtype, with_decode_rules
from lit_features.extractors.qwen_hidden import QwenHiddenStates
from lit_features.extractors.qwen_inputs import RESERVED_TOKENS, QwenPromptPreprocessor
from lit_features.extractors.wan import WanTrainingFeatures
from lit_features.extractors.wan_inputs import WanVideoPreprocessor
from lit_features.store.fingerprint import weight_identity
from lit_features.store.layout import STORE_FORMAT_VERSION


def training_reference_images(canvases: torch.Tensor, scale: float = 0.5) -> list[Any]:
    """BindWeave's training-time Qwen images of ``uint8 [n, 3, H, W]`` reference canvases, as RGB PIL images.

    /255, bilinear by ``scale`` (no antialias, ``recompute_scale_factor``), x255 truncated to uint8.
    """
    from PIL import Image

    if not len(canvases):
        return []
    pixels = canvases.float() / 255.0
    scaled = F.interpolate(
        pixels, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=True
    )
    arrays = (scaled.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


@dataclass
class BindWeaveTrainingPreprocessor(Preprocessor):
    """One decode per entry: Wan inputs (frames, caption tokens, references) and Qwen inputs (caption + references)."""

    wan: WanVideoPreprocessor
    qwen: QwenPromptPreprocessor
    qwen_image_scale: float = 0.5

    required_fields = ("path", "cap")

    def params(self) -> dict[str, Any]:
        return {
            "type": type(self).__qualname__,
            "wan": self.wan.params(),
            "qwen": self.qwen.params(),
            "qwen_image_scale": self.qwen_image_scale,
        }

    def validate(self, sample: Sample) -> None:
        self.wan.validate(sample)  # path, caption, start, at most max_references images
        for token in RESERVED_TOKENS:
            if token in sample.entry["cap"]:
                raise EntryError("cap", f"contains the reserved token {token}, which would break image placement")

    def __call__(self, sample: Sample, media: MediaLoader) -> Prepared:
        prepared = self.wan.prepare(sample, media)
        images = training_reference_images(prepared.canvases, self.qwen_image_scale)
        inputs, qwen_meta = self.qwen.model_inputs(sample.entry["cap"], images)
        meta = {**prepared.meta, **{f"qwen_{k}": v for k, v in qwen_meta.items()}}
        return Prepared({"wan": prepared.inputs, "qwen": inputs}, meta)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "wan": self.wan.collate([i["wan"] for i in items]),
            "qwen": self.qwen.collate([i["qwen"] for i in items]),
        }


class BindWeaveTrainingFeatures(FeatureExtractor):
    """BindWeave's complete training dict per clip (see the module doc): Wan features plus Qwen2.5-VL states.

    Args:
        wan_model_path: ``Wan2.1-I2V-14B-720P-Diffusers`` folder (``vae/``, ``text_encoder/``, ``tokenizer/``,
            ``image_encoder/``, ``image_processor/``) or its hub id.
        qwen_model_path: ``Qwen2.5-VL-7B-Instruct`` folder (weights, tokenizer, chat template,
            ``preprocessor_config.json``) or its hub id.
        num_frames: consecutive frames per clip from the entry's ``start_frame_idx`` (else ``cut[0]``), 4k+1.
        height: output height in pixels (a multiple of 8).
        width: output width in pixels (a multiple of 8).
        short_clip: a clip with fewer frames than asked: ``fail`` (recorded) or ``pad_last``.
        max_length: UMT5 tokenizer length.
        max_references: reference images per entry (more is a manifest error).
        exif_transpose: apply reference images' EXIF orientation (``false``: the stored pixels, as BindWeave
            opens images).
        decoder_scaling: let FFmpeg scale the clip's frames while decoding to the size BindWeave's resize makes
            of them (the Wan option of the same name; recorded in the store fingerprint when on).
        enable_tiling: encode the clip latent in tiles (BindWeave: on).
        tiling_method: ``mindspeed`` (BindWeave's) or ``diffusers``.
        tile_sample_min_height: tile height in pixels (272 = 34 latent rows).
        tile_sample_min_width: tile width in pixels.
        tile_sample_stride_height: vertical tile stride in pixels (144 = 18 latent rows).
        tile_sample_stride_width: horizontal tile stride in pixels (128 = 16 latent columns).
        vae_dtype: VAE compute dtype (BindWeave: ``bfloat16``).
        image_encoder_dtype: CLIP compute dtype.
        qwen_min_pixels: Qwen image processor lower pixel bound (``None``: the weights' config).
        qwen_max_pixels: Qwen image processor upper pixel bound (``None``: the weights' config).
        qwen_dtype: Qwen2.5-VL compute dtype.
        store_dtype: dtype of the stored features (masks stay int64).
        dtype: UMT5 compute dtype.
        trust_remote_code: allow model code from the weights folders.
    """

    extractor_name = "bindweave_train"
    hub_id = WanTrainingFeatures.hub_id
    fingerprint_exclude = ("wan_model_path", "qwen_model_path")

    def __init__(
        self,
        wan_model_path: str = "pretrained_model/Wan2.1-I2V-14B-720P-Diffusers",
        qwen_model_path: str = "pretrained_model/Qwen2.5-VL-7B-Instruct",
        num_frames: int = 81,
        height: int = 720,
        width: int = 1280,
        short_clip: Literal["fail", "pad_last"] = "fail",
        max_length: int = 512,
        max_references: int = 4,
        exif_transpose: bool = False,
        decoder_scaling: bool = False,
        enable_tiling: bool = True,
        tiling_method: Literal["mindspeed", "diffusers"] = "mindspeed",
        tile_sample_min_height: int = 272,
        tile_sample_min_width: int = 272,
        tile_sample_stride_height: int = 144,
        tile_sample_stride_width: int = 128,
        vae_dtype: str = "bfloat16",
        image_encoder_dtype: str = "float32",
        qwen_min_pixels: int | None = None,
        qwen_max_pixels: int | None = None,
        qwen_dtype: str = "bfloat16",
        store_dtype: str = "bfloat16",
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
    ):
        super().__init__(wan_model_path, dtype, trust_remote_code)
        self.wan = WanTrainingFeatures(
            model_path=wan_model_path,
            num_frames=num_frames,
            target_fps=None,
            height=height,
            width=width,
            size_rule="bindweave",
            short_clip=short_clip,
            caption_cleaning="whitespace",
            max_length=max_length,
            i2v="reference",
            max_references=max_references,
            exif_transpose=exif_transpose,
            decoder_scaling=decoder_scaling,
            enable_tiling=enable_tiling,
            tiling_method=tiling_method,
            tile_sample_min_height=tile_sample_min_height,
            tile_sample_min_width=tile_sample_min_width,
            tile_sample_stride_height=tile_sample_stride_height,
            tile_sample_stride_width=tile_sample_stride_width,
            vae_dtype=vae_dtype,
            image_encoder_dtype=image_encoder_dtype,
            store_dtype=store_dtype,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
        self.qwen = QwenHiddenStates(
            model_path=qwen_model_path,
            layers=-1,
            max_images=max_references,
            image_source="images",
            prescale="none",  # the training-time x0.5 is applied to the canvases (training_reference_images)
            min_pixels=qwen_min_pixels,
            max_pixels=qwen_max_pixels,
            negative_prompt=None,
            exif_transpose=exif_transpose,
            output_layout="bindweave",
            dtype=qwen_dtype,
            trust_remote_code=trust_remote_code,
        )
        self.is_stand_in = self.wan.is_stand_in or self.qwen.is_stand_in
        self.store_dtype = resolve_dtype(store_dtype)
        self._preprocessor: BindWeaveTrainingPreprocessor | None = None

    def check_weights_present(self, path: str) -> None:
        return None  # each part checks its own weights folder

    def preprocessor(self) -> BindWeaveTrainingPreprocessor:
        if self._preprocessor is None:
            self._preprocessor = BindWeaveTrainingPreprocessor(self.wan.preprocessor(), self.qwen.preprocessor())
        return self._preprocessor

    def fingerprint(self) -> dict[str, Any]:
        params = omit_quiet_defaults(
            {k: v for k, v in dict(self.hparams).items() if k not in self.fingerprint_exclude and not k.startswith("_")}
        )
        weights = {
            name: weight_identity(part.model_path) if os.path.exists(part.model_path) else {"hub_id": part.model_path}
            for name, part in (("wan", self.wan), ("qwen", self.qwen))
        }
        fingerprint = {
            "extractor": self.extractor_name,
            "params": params,
            "weights": weights,
            "preprocess": self.preprocessor().params(),
            "store_format": STORE_FORMAT_VERSION,
        }
        return with_decode_rules(fingerprint, self.preprocessor())

    def load_model(self) -> torch.nn.Module:
        # Each part through its own loader (from_pretrained of its own folder), exactly as when it runs alone.
        self.wan.configure_model()
        self.qwen.configure_model()
        return torch.nn.ModuleDict({"wan": self.wan.model, "qwen": self.qwen.model})

    def extract(self, inputs: dict[str, Any], batch: Batch) -> list[dict[str, torch.Tensor]]:
        outputs = self.wan.extract(inputs["wan"], batch)
        for out, states in zip(outputs, self.qwen.extract(inputs["qwen"], batch), strict=True):
            hidden = states["hidden_states"].to(self.store_dtype)  # [1, L, D]
            out["hidden_states"] = hidden
            out["hidden_states_mask"] = torch.ones(hidden.shape[:2], dtype=torch.int64, device=hidden.device)
        return outputs

    def sample_meta(self, batch: Batch, index: int) -> dict[str, Any]:
        return self.wan.sample_meta(batch, index)
