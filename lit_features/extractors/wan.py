"""Wan2.1 training features (BindWeave, FlashI2V): VAE video latents, UMT5 prompt embeddings, optional I2V conditioning.

One pass per clip produces what a Wan2.1-based trainer reads, under the upstream key names:

- ``video``: the diffusers ``AutoencoderKLWan`` latent of the clip (``latent_dist.mode()``, or a per-clip seeded
  sample on request), whole or tiled (:mod:`lit_features.extractors.wan_vae`: MindSpeed-MM's tiling by
  default), normalised per channel with the VAE config's ``latents_mean``/``latents_std``: ``(z - mean) / std``.
  ``[16, (T - 1) / 4 + 1, H / 8, W / 8]``; 81 frames at 720x1280 give ``[16, 21, 90, 160]``.
- ``prompt_ids``: the UMT5 encoder's ``last_hidden_state`` (an embedding despite the name) of the cleaned caption
  (``caption_cleaning``: BindWeave's whitespace collapsing or FlashI2V's cleaning), tokenised to ``max_length``
  (512) with padding; padded positions are left as the encoder computed them, as upstream does. ``[1, 512, D]``,
  or ``[1, L, D]`` with ``unpadded_text``.
- ``prompt_mask``: the tokenizer's attention mask, ``[1, 512]`` int64 (``[1, L]`` with ``unpadded_text``).
- with ``i2v="first_frame"`` (Wan I2V): ``i2v_clip_feature`` = CLIP vision ``hidden_states[-2]`` of the first frame
  (224x224 bicubic, CLIP mean/std) ``[257, 1280]``, and ``i2v_vae_feature`` = 4 mask channels (ones on the first
  latent frame) + the normalised VAE latent of the first frame followed by zero frames (0 in [-1, 1], mid-grey,
  as diffusers' Wan I2V pipeline and upstream build it), ``[20, t, h, w]``.
- with ``i2v="reference"`` (BindWeave): ``i2v_clip_feature`` = CLIP features of up to ``max_references``
  reference images (the entry's ``images``), concatenated and zero-padded to ``max_references * 257`` tokens,
  and ``i2v_vae_feature`` = ``max_references`` reference slots (mask channel + 3 zero channels + the
  reference's one-frame latent; empty slots zero) followed by ``t`` video slots (zero mask + the latent of an
  all-zero video), ``[20, max_references + t, h, w]``. Each reference is fitted into the video frame keeping its
  aspect and padded with black; its mask marks the image area. These condition latents are never tiled
  (BindWeave's ``i2v_vae_encode_tiling: false``).

Preprocessing (DataLoader workers, :mod:`lit_features.extractors.wan_inputs`): frames from the entry's start,
consecutive or resampled to ``target_fps``; the uint8 frames resized and cropped by the upstream rule
(``bindweave`` or ``flashi2v``), normalised to [-1, 1]. Images are one-frame clips. Captions come from ``cap``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lit_features.data.dataset import Batch
from lit_features.extractors.base import FeatureExtractor, quiet_transformers, resolve_dtype
from lit_features.extractors.wan_inputs import (  # noqa: F401  (re-exported: the Wan input contract)
    CLIP_MEAN,
    CLIP_STD,
    WanVideoPreprocessor,
    check_frame_count,
    clean_caption,
    clip_pixels,
    fit_into,
    flashi2v_clean_caption,
    latent_frames,
)
from lit_features.extractors.wan_vae import Tiling, encode_latents
from lit_features.models.weights import from_pretrained_strict

MASK_CHANNELS = 4  # the Wan I2V condition carries one mask value per pixel frame of a 4-frame latent step


def first_frame_mask(num_latent_frames: int, height: int, width: int) -> torch.Tensor:
    """Wan I2V mask channels ``[4, t, h, w]``: pixel frame 0 is given (repeated 4x into latent frame 0), others not."""
    mask = torch.zeros(MASK_CHANNELS, num_latent_frames, height, width)
    mask[:, 0] = 1.0
    return mask


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Hide diffusers' note about config keys it does not know (the stand-in marker)."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _key_seed(seed: int, key: str) -> int:
    return (seed * 1_000_003 + int(hashlib.sha1(key.encode()).hexdigest()[:12], 16)) % (2**63)


class WanTrainingFeatures(FeatureExtractor):
    """Wan2.1 training features of each clip: normalised VAE latent, UMT5 prompt embedding + mask, I2V conditions.

    Args:
        model_path: a ``Wan2.1-*-Diffusers`` folder (``vae/``, ``text_encoder/``, ``tokenizer/``, and
            ``image_encoder/`` + ``image_processor/`` for I2V) or its hub id.
        unpadded_text: store only the caption's real tokens (``[1, L, D]``) instead of all ``max_length``.
        sample_posterior: store a sample of the latent distribution (seeded per clip key) instead of its mode.
        seed: base seed for ``sample_posterior``.
        enable_tiling: encode the clip in overlapping spatial tiles to bound memory.
        tiling_method: ``mindspeed`` (MindSpeed-MM's tiled encode, which BindWeave runs) or ``diffusers``
            (``AutoencoderKLWan``'s own tiling, different latents).
        tile_sample_min_height: tile height in pixels (272 = 34 latent rows, as upstream).
        tile_sample_min_width: tile width in pixels.
        tile_sample_stride_height: vertical tile stride in pixels (144 = 18 latent rows).
        tile_sample_stride_width: horizontal tile stride in pixels (128 = 16 latent columns).
        vae_dtype: VAE compute dtype (BindWeave: ``bfloat16``; FlashI2V: ``float32``).
        image_encoder_dtype: CLIP compute dtype (``float32``, as Wan2.1 runs its CLIP).
        store_dtype: dtype of the stored features (``prompt_mask`` stays int64).
        dtype: compute dtype of the UMT5 text encoder (``bfloat16`` as upstream).
        preprocess: the clip, caption and I2V options, flat (``num_frames``, ``target_fps``, ``height``,
            ``width``, ``size_rule``, ``short_clip``, ``caption_cleaning``, ``max_length``, ``i2v``,
            ``max_references``, ``exif_transpose``, ``decoder_scaling``): the fields of
            :class:`~lit_features.extractors.wan_inputs.WanVideoPreprocessor`, defined and checked there once.
    """

    extractor_name = "wan_train"
    hub_id = "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"

    def __init__(
        self,
        model_path: str = "pretrained_model/Wan2.1-I2V-14B-720P-Diffusers",
        unpadded_text: bool = False,
        sample_posterior: bool = False,
        seed: int = 0,
        enable_tiling: bool = False,
        tiling_method: Literal["mindspeed", "diffusers"] = "mindspeed",
        tile_sample_min_height: int = 272,
        tile_sample_min_width: int = 272,
        tile_sample_stride_height: int = 144,
        tile_sample_stride_width: int = 128,
        vae_dtype: str = "float32",
        image_encoder_dtype: str = "float32",
        store_dtype: str = "bfloat16",
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
        **preprocess: Any,
    ):
        # Refuse impossible shapes and unknown rules before the weights are looked at: the preprocessor checks
        # its fields at construction (and reads the CLIP input size and normalisation of I2V from the weights).
        preprocessor = WanVideoPreprocessor(tokenizer_path=model_path, **preprocess)
        tiling = Tiling(
            tiling_method,
            tile_sample_min_height,
            tile_sample_min_width,
            tile_sample_stride_height,
            tile_sample_stride_width,
        )
        super().__init__(model_path, dtype, trust_remote_code)
        self._preprocessor = preprocessor
        self.record_preprocessing(preprocessor, derived=("tokenizer_path",))
        self.unpadded_text = unpadded_text
        self.sample_posterior = sample_posterior
        self.seed = seed
        self.tiling = tiling if enable_tiling else None
        self.vae_dtype = resolve_dtype(vae_dtype)
        self.image_encoder_dtype = resolve_dtype(image_encoder_dtype)
        self.store_dtype = resolve_dtype(store_dtype)
        self._blank_latents: dict[tuple, torch.Tensor] = {}

    # -- contract with the data side
    def preprocessor(self) -> WanVideoPreprocessor:
        return self._preprocessor

    # -- weights
    def load_model(self) -> torch.nn.Module:
        from diffusers import AutoencoderKLWan
        from transformers import CLIPVisionModel, UMT5EncoderModel

        with quiet_diffusers():
            vae = from_pretrained_strict(AutoencoderKLWan, self.model_path, subfolder="vae", torch_dtype=self.vae_dtype)
        parts: dict[str, torch.nn.Module] = {"vae": vae}
        with quiet_transformers():
            parts["text_encoder"] = from_pretrained_strict(
                UMT5EncoderModel, self.model_path, subfolder="text_encoder", dtype=self.compute_dtype
            )
            if self._preprocessor.i2v != "none":
                parts["image_encoder"] = from_pretrained_strict(
                    CLIPVisionModel, self.model_path, subfolder="image_encoder", dtype=self.image_encoder_dtype
                )
        self._blank_latents = {}
        return torch.nn.ModuleDict(parts)

    # -- the three encoders
    def encode_video(self, pixels: torch.Tensor, keys: list[str] | None = None, tiled: bool = True) -> torch.Tensor:
        """Normalised latents ``[B, C, t, h, w]`` (VAE dtype) of ``pixels [B, 3, T, H, W]`` in [-1, 1].

        ``tiled=False`` encodes whole frames even when tiling is on (the I2V conditions, as upstream).
        """
        assert self.model is not None
        generators = None
        if self.sample_posterior and keys is not None:
            generators = [torch.Generator().manual_seed(_key_seed(self.seed, k)) for k in keys]
        return encode_latents(self.model["vae"], pixels, self.tiling if tiled else None, generators)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """UMT5 ``last_hidden_state`` ``[B, L, D]`` (padded positions not zeroed, as upstream)."""
        assert self.model is not None
        out = self.model["text_encoder"](
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
        )
        return out.last_hidden_state

    def encode_clip(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP vision ``hidden_states[-2]`` ``[N, 257, D]`` of ``pixels [N, 3, 224, 224]``."""
        assert self.model is not None
        out = self.model["image_encoder"](
            pixel_values=pixels.to(self.device, self.image_encoder_dtype), output_hidden_states=True
        )
        return out.hidden_states[-2]

    def blank_video_latent(self, frames: int, height: int, width: int) -> torch.Tensor:
        """Normalised latent of an all-zero clip (the video slots of the reference condition); cached per shape."""
        shape = (frames, height, width, str(self.device), self.vae_dtype)
        if shape not in self._blank_latents:
            self._blank_latents[shape] = self.encode_video(torch.zeros(1, 3, frames, height, width), tiled=False)[0]
        return self._blank_latents[shape]

    # -- I2V conditions of one clip (never tiled: BindWeave sets i2v_vae_encode_tiling false)
    def first_frame_condition(self, video: torch.Tensor, clip_in: torch.Tensor) -> dict[str, torch.Tensor]:
        """Wan I2V: CLIP of the first frame, and mask + latent of (first frame, then zero frames)."""
        condition = torch.zeros_like(video)
        condition[:, :1] = video[:, :1]
        latent = self.encode_video(condition[None], tiled=False)[0]
        mask = first_frame_mask(*latent.shape[1:]).to(latent.device)
        return {
            "i2v_clip_feature": self.encode_clip(clip_in)[0],
            "i2v_vae_feature": torch.cat([mask, latent]),
        }

    def reference_condition(
        self, video: torch.Tensor, refs: torch.Tensor, masks: torch.Tensor, clip_in: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """BindWeave: reference slots (mask + one-frame latent, zero-padded) before the video slots."""
        _, frames, height, width = video.shape
        blank = self.blank_video_latent(frames, height, width)
        channels, t, h, w = blank.shape
        slots = torch.zeros(MASK_CHANNELS + channels, self._preprocessor.max_references, h, w, device=blank.device)
        tokens = None
        n = refs.shape[0]
        if n:
            # [n, C, 1, h, w]: each reference a 1-frame clip
            ref_latents = self.encode_video(refs[:, :, None], tiled=False)
            small = F.interpolate(masks.float(), size=(h, w), mode="nearest").to(blank.device)
            slots[0, :n] = small[:, 0]
            slots[MASK_CHANNELS:, :n] = ref_latents[:, :, 0].permute(1, 0, 2, 3)
            tokens = self.encode_clip(clip_in)  # [n, 257, D]
        video_slots = torch.cat([torch.zeros(MASK_CHANNELS, t, h, w, device=blank.device), blank])
        if tokens is None:
            assert self.model is not None
            cfg = self.model["image_encoder"].config
            per_image = (cfg.image_size // cfg.patch_size) ** 2 + 1
            clip = torch.zeros(self._preprocessor.max_references * per_image, cfg.hidden_size, device=blank.device)
        else:
            flat = tokens.reshape(-1, tokens.shape[-1])
            clip = torch.cat(
                [flat, flat.new_zeros((self._preprocessor.max_references - n) * tokens.shape[1], flat.shape[-1])]
            )
        return {"i2v_clip_feature": clip, "i2v_vae_feature": torch.cat([slots, video_slots], dim=1)}

    # -- inference
    @staticmethod
    def _items(value: Any) -> list[torch.Tensor]:
        """Per-sample tensors of a collated input (a stacked tensor, or a list when shapes differed)."""
        return list(value) if isinstance(value, (list, tuple)) else list(value.unbind(0))

    def extract(self, inputs: Any, batch: Batch) -> list[dict[str, torch.Tensor]]:
        videos = inputs["video"]
        if isinstance(videos, torch.Tensor):  # same shape for the whole batch: one VAE call
            latents = list(self.encode_video(videos, batch.keys))
        else:  # mixed shapes (e.g. images with videos): one call each
            latents = [self.encode_video(v[None], [k])[0] for v, k in zip(videos, batch.keys)]
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if isinstance(ids, list):
            ids, mask = torch.stack(ids), torch.stack(mask)
        text = self.encode_text(ids, mask)
        per_sample = {k: self._items(v) for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        outputs = []
        for i in range(len(batch)):
            tokens = int(mask[i].sum()) if self.unpadded_text else mask.shape[1]
            out = {
                "video": latents[i].to(self.store_dtype),
                "prompt_ids": text[i : i + 1, :tokens].to(self.store_dtype),
                "prompt_mask": mask[i : i + 1, :tokens].to(torch.int64),
            }
            if self._preprocessor.i2v == "first_frame":
                extra = self.first_frame_condition(per_sample["video"][i], per_sample["clip_pixels"][i])
            elif self._preprocessor.i2v == "reference":
                extra = self.reference_condition(
                    per_sample["video"][i],
                    per_sample["reference_pixels"][i],
                    per_sample["reference_masks"][i],
                    per_sample["clip_pixels"][i],
                )
            else:
                extra = {}
            out.update({k: v.to(self.store_dtype) for k, v in extra.items()})
            outputs.append(out)
        return outputs

    def sample_meta(self, batch: Batch, index: int) -> dict[str, Any]:
        """Preprocessing facts plus ``entry``: the manifest entry with the upstream sampling fields added.

        The fields are those MindSpeed-MM's samplers read from ``data.jsonl``: ``start_frame_idx``,
        ``sample_frame_index``, ``sample_num_frames`` and ``resolution.sample_height``/``sample_width`` (the size
        the clip was encoded at; the entry's own ``resolution`` fields are kept, the source size filled in when
        the entry had none).
        """
        meta = dict(batch.metas[index])
        entry = dict(meta.pop("entry", {}))
        indices = meta.get("frame_indices") or [0]
        resolution = entry.get("resolution")
        if isinstance(resolution, dict):
            resolution = dict(resolution)
        else:
            height, width = meta.get("source_size") or [None, None]
            resolution = {"height": height, "width": width}
        resolution.update(sample_height=self._preprocessor.height, sample_width=self._preprocessor.width)
        entry.update(
            {
                "resolution": resolution,
                "start_frame_idx": indices[0],
                "sample_frame_index": list(indices),
                "sample_num_frames": len(indices),
            }
        )
        return {**meta, "entry": entry}
