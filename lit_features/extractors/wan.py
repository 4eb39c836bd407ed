"""Wan2.1 training features (BindWeave, FlashI2V): VAE video latents, UMT5 prompt embeddings, optional I2V conditioning.

One pass per clip produces what a Wan2.1-based trainer reads, under the upstream key names:

- ``video``: the diffusers ``AutoencoderKLWan`` latent of the clip (``latent_dist.mode()``, or a per-clip seeded
  sample on request), normalised per channel with the VAE config's ``latents_mean``/``latents_std``:
  ``(z - mean) / std``. ``[16, (T - 1) / 4 + 1, H / 8, W / 8]``; 81 frames at 720x1280 give ``[16, 21, 90, 160]``.
- ``prompt_ids``: the UMT5 encoder's ``last_hidden_state`` (an embedding despite the name) of the caption after
  whitespace collapsing, tokenised to ``max_length`` (512) with padding; padded positions are left as the
  encoder computed them, as upstream does. ``[1, 512, D]``, or ``[1, L, D]`` with ``unpadded_text``.
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
  aspect and padded with black; its mask marks the image area.

Preprocessing (in DataLoader workers): ``num_frames`` frames at ``target_fps`` from the entry's ``cut`` start
(``num_frames`` must be 4k+1: anything else is refused when the extractor is built), resized with
``crop_then_resize`` (BindWeave: crop to the target aspect, then resize) or ``resize_then_crop`` (FlashI2V: resize
to cover by the short side, ceil, then center-crop), bilinear with antialias, then normalised with mean 0.5 and
std 0.5. Images are one-frame clips. Captions come from ``cap``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lit_features.data.dataset import Batch, Prepared
from lit_features.data.manifest import IMAGE_EXTENSIONS, Sample
from lit_features.data.preprocess import EntryError, MediaLoader, Preprocessor
from lit_features.data.sampling import FrameSampling
from lit_features.data.transforms import NORMALIZATION_PRESETS, apply_size_rule, normalize, resize, to_tensor
from lit_features.extractors.base import FeatureExtractor, quiet_transformers, resolve_dtype
from lit_features.models.weights import from_pretrained_strict

CLIP_MEAN = NORMALIZATION_PRESETS["clip"][0]
CLIP_STD = NORMALIZATION_PRESETS["clip"][1]
MASK_CHANNELS = 4  # the Wan I2V condition carries one mask value per pixel frame of a 4-frame latent step
_WHITESPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends (the only cleaning upstream applies)."""
    return _WHITESPACE.sub(" ", text).strip()


def check_frame_count(num_frames: int) -> None:
    """Raise unless ``num_frames`` is 4k+1: the Wan VAE maps 4k+1 frames to k+1 latent frames."""
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % 4:
        below = max(1, (int(num_frames) - 1) // 4 * 4 + 1) if isinstance(num_frames, int) else 1
        raise ValueError(
            f"num_frames must have the form 4k+1 (1, 5, ..., 49, 81) because the Wan VAE maps 4k+1 frames to "
            f"k+1 latent frames; got {num_frames!r} (nearest valid: {below} or {below + 4})"
        )


def latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // 4 + 1


def first_frame_mask(num_latent_frames: int, height: int, width: int) -> torch.Tensor:
    """Wan I2V mask channels ``[4, t, h, w]``: pixel frame 0 is given (repeated 4x into latent frame 0), others not."""
    mask = torch.zeros(MASK_CHANNELS, num_latent_frames, height, width)
    mask[:, 0] = 1.0
    return mask


def fit_into(image: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``[1, 3, h, w]`` into ``size`` keeping aspect (bilinear), centred on black; returns (canvas, area mask)."""
    th, tw = size
    h, w = image.shape[-2:]
    scale = min(th / h, tw / w)
    nh, nw = max(1, min(th, round(h * scale))), max(1, min(tw, round(w * scale)))
    scaled = resize(image, (nh, nw), "bilinear").clamp_(0, 1)
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas = torch.zeros(1, 3, th, tw)
    canvas[..., top : top + nh, left : left + nw] = scaled
    mask = torch.zeros(1, 1, th, tw)
    mask[..., top : top + nh, left : left + nw] = 1.0
    return canvas, mask


def clip_pixels(frames: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """CLIP input as upstream makes it: ``[N, 3, H, W]`` in [0, 1], bicubic (no antialias) to size x size, CLIP norm."""
    x = F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False)
    return normalize(x, (mean, std))


@dataclass
class WanVideoPreprocessor(Preprocessor):
    """Frames at ``target_fps`` from ``cut`` start, sized and normalised to [-1, 1]; caption tokens; I2V inputs."""

    num_frames: int = 49
    target_fps: float = 16.0
    height: int = 480
    width: int = 832
    size_rule: Literal["crop_then_resize", "resize_then_crop"] = "resize_then_crop"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    short_clip: Literal["fail", "pad_last"] = "fail"
    tokenizer_path: str = ""
    tokenizer_subfolder: str = "tokenizer"
    max_length: int = 512
    i2v: Literal["none", "first_frame", "reference"] = "none"
    max_references: int = 4
    clip_size: int = 224
    clip_mean: tuple[float, ...] = CLIP_MEAN
    clip_std: tuple[float, ...] = CLIP_STD

    required_fields = ("path", "cap")

    def __post_init__(self) -> None:
        check_frame_count(self.num_frames)
        self._tokenizer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Workers load their own tokenizer; nothing heavy travels with the preprocessor.
        return {**self.__dict__, "_tokenizer": None}

    def params(self) -> dict[str, Any]:
        params = super().params()
        params.pop("tokenizer_path")  # where the weights live is not part of the numbers (their identity is)
        return params

    # -- manifest-time checks
    def validate(self, sample: Sample) -> None:
        entry = sample.entry
        if entry.get("path") in (None, ""):
            raise EntryError("path", "missing required field (the video or image, relative to the manifest root)")
        if "cap" not in entry or entry["cap"] is None:
            raise EntryError("cap", "missing caption: every clip needs a text prompt in 'cap'")
        if not isinstance(entry["cap"], str):
            raise EntryError("cap", f"caption must be a string, got {type(entry['cap']).__name__}")
        if not clean_caption(entry["cap"]):
            raise EntryError("cap", "caption is empty (only whitespace)")
        images = entry.get("images") or []
        if self.i2v == "reference" and len(images) > self.max_references:
            raise EntryError(
                "images",
                f"{len(images)} reference images but at most {self.max_references} are used "
                "(set model.max_references, or list fewer images)",
            )

    # -- text
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path, subfolder=self.tokenizer_subfolder)
        return self._tokenizer

    def tokens(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids [L], attention_mask [L])`` of ``caption`` (already cleaned), padded to ``max_length``."""
        encoded = self.tokenizer()(
            [caption],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return encoded.input_ids[0], encoded.attention_mask[0]

    # -- pixels
    def frames(self, sample: Sample, media: MediaLoader) -> tuple[torch.Tensor, dict[str, Any]]:
        """``[T, 3, h, w]`` in [0, 1] at source size, and what was sampled."""
        assert sample.source is not None
        if Path(sample.source).suffix.lower() in IMAGE_EXTENSIONS:
            return to_tensor(media.image(sample.source)), {"kind": "image", "frame_indices": [0]}
        sampling = FrameSampling("fps", self.num_frames, self.target_fps, short_clip=self.short_clip)
        video = media.video(sample.source, sampling, sample.cut)
        meta: dict[str, Any] = {
            "kind": "video",
            "frame_indices": video.indices,
            "total_frames": video.total_frames,
            "fps": video.fps,
        }
        if video.padded:
            meta["padded_frames"] = video.padded
        return to_tensor(video.frames), meta

    def sized(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames in [0, 1] at exactly (height, width) by the configured size rule."""
        size = (self.height, self.width)
        return apply_size_rule(frames, self.size_rule, size, self.interpolation).clamp_(0, 1)

    def references(self, sample: Sample, media: MediaLoader) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference images fitted into the frame, ``[n, 3, H, W]`` in [0, 1], and their area masks ``[n, 1, H, W]``."""
        canvases, masks = [], []
        for path in sample.entry.get("images") or []:
            canvas, mask = fit_into(to_tensor(media.image(path)), (self.height, self.width))
            canvases.append(canvas)
            masks.append(mask)
        if not canvases:
            return torch.zeros(0, 3, self.height, self.width), torch.zeros(0, 1, self.height, self.width)
        return torch.cat(canvases), torch.cat(masks)

    def __call__(self, sample: Sample, media: MediaLoader) -> Prepared:
        raw, meta = self.frames(sample, media)
        frames = self.sized(raw)
        caption = clean_caption(sample.entry["cap"])
        input_ids, attention_mask = self.tokens(caption)
        inputs: dict[str, torch.Tensor] = {
            "video": normalize(frames, "half").permute(1, 0, 2, 3).contiguous(),  # [3, T, H, W]
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        if self.i2v == "first_frame":
            inputs["clip_pixels"] = clip_pixels(frames[:1], self.clip_size, self.clip_mean, self.clip_std)
        elif self.i2v == "reference":
            canvases, masks = self.references(sample, media)
            inputs["reference_pixels"] = normalize(canvases, "half")
            inputs["reference_masks"] = masks
            inputs["clip_pixels"] = clip_pixels(canvases, self.clip_size, self.clip_mean, self.clip_std)
            meta["num_references"] = int(canvases.shape[0])
        meta.update({"caption": caption, "size": [self.height, self.width], "num_tokens": int(attention_mask.sum())})
        return Prepared(inputs, meta)


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
        num_frames: frames per clip, 4k+1 (49 -> 13 latent frames, 81 -> 21).
        target_fps: frame rate the clip is resampled to (every ``fps / target_fps``-th frame; all frames when
            within 0.1 fps), starting at the entry's ``cut[0]``.
        height: output height in pixels (a multiple of 8).
        width: output width in pixels (a multiple of 8).
        size_rule: ``crop_then_resize`` (BindWeave) or ``resize_then_crop`` (FlashI2V).
        interpolation: resize filter (antialiased).
        short_clip: a clip with fewer frames than asked: ``fail`` (recorded in the store's failures) or
            ``pad_last`` (repeat the last frame; the count is recorded in the sample's metadata).
        max_length: tokenizer length (padding and truncation).
        unpadded_text: store only the caption's real tokens (``[1, L, D]``) instead of all ``max_length``.
        i2v: image-to-video conditioning: ``none``, ``first_frame`` (Wan I2V) or ``reference`` (BindWeave, the
            entry's ``images``).
        max_references: reference slots for ``i2v="reference"`` (more images in an entry is a manifest error).
        sample_posterior: store a sample of the latent distribution (seeded per clip key) instead of its mode.
        seed: base seed for ``sample_posterior``.
        enable_tiling: encode in overlapping spatial tiles (diffusers' tiled encode) to bound memory.
        tile_sample_min_height: tile height in pixels (272 = 34 latent rows, as upstream).
        tile_sample_min_width: tile width in pixels.
        tile_sample_stride_height: vertical tile stride in pixels (144 = 18 latent rows).
        tile_sample_stride_width: horizontal tile stride in pixels (128 = 16 latent columns).
        vae_dtype: VAE compute dtype (``float32`` as upstream).
        image_encoder_dtype: CLIP compute dtype (``float32``, as Wan2.1 runs its CLIP).
        store_dtype: dtype of the stored features (``prompt_mask`` stays int64).
        dtype: compute dtype of the UMT5 text encoder (``bfloat16`` as upstream).
    """

    extractor_name = "wan_train"
    hub_id = "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"

    def __init__(
        self,
        model_path: str = "pretrained_model/Wan2.1-I2V-14B-720P-Diffusers",
        num_frames: int = 49,
        target_fps: float = 16.0,
        height: int = 480,
        width: int = 832,
        size_rule: Literal["crop_then_resize", "resize_then_crop"] = "resize_then_crop",
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        short_clip: Literal["fail", "pad_last"] = "fail",
        max_length: int = 512,
        unpadded_text: bool = False,
        i2v: Literal["none", "first_frame", "reference"] = "none",
        max_references: int = 4,
        sample_posterior: bool = False,
        seed: int = 0,
        enable_tiling: bool = False,
        tile_sample_min_height: int = 272,
        tile_sample_min_width: int = 272,
        tile_sample_stride_height: int = 144,
        tile_sample_stride_width: int = 128,
        vae_dtype: str = "float32",
        image_encoder_dtype: str = "float32",
        store_dtype: str = "bfloat16",
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
    ):
        # Refuse impossible shapes before anything is read (the VAE would silently give another latent length).
        check_frame_count(num_frames)
        for name, value in (("height", height), ("width", width)):
            if value < 8 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8 (the VAE's spatial stride), got {value}")
        if i2v not in ("none", "first_frame", "reference"):
            raise ValueError(f"i2v must be 'none', 'first_frame' or 'reference', got {i2v!r}")
        if not target_fps or target_fps <= 0:
            raise ValueError(f"target_fps must be a positive frame rate, got {target_fps!r}")
        if max_references < 1:
            raise ValueError(f"max_references must be >= 1, got {max_references}")
        if not 0 < tile_sample_stride_height <= tile_sample_min_height or not (
            0 < tile_sample_stride_width <= tile_sample_min_width
        ):
            raise ValueError("tile strides must be positive and no larger than the tile sizes")
        super().__init__(model_path, dtype, trust_remote_code)
        self.num_frames = num_frames
        self.target_fps = target_fps
        self.height, self.width = height, width
        self.size_rule = size_rule
        self.interpolation = interpolation
        self.short_clip = short_clip
        self.max_length = max_length
        self.unpadded_text = unpadded_text
        self.i2v = i2v
        self.max_references = max_references
        self.sample_posterior = sample_posterior
        self.seed = seed
        self.enable_tiling = enable_tiling
        self.tiling = {
            "tile_sample_min_height": tile_sample_min_height,
            "tile_sample_min_width": tile_sample_min_width,
            "tile_sample_stride_height": tile_sample_stride_height,
            "tile_sample_stride_width": tile_sample_stride_width,
        }
        self.vae_dtype = resolve_dtype(vae_dtype)
        self.image_encoder_dtype = resolve_dtype(image_encoder_dtype)
        self.store_dtype = resolve_dtype(store_dtype)
        self._preprocessor: WanVideoPreprocessor | None = None
        self._blank_latents: dict[tuple, torch.Tensor] = {}

    # -- contract with the data side
    def clip_normalisation(self) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
        """(size, mean, std) from ``image_processor/preprocessor_config.json`` when present, else CLIP's."""
        file = Path(self.model_path) / "image_processor" / "preprocessor_config.json"
        if self.i2v == "none" or not file.exists():
            return 224, CLIP_MEAN, CLIP_STD
        cfg = json.loads(file.read_text())
        crop = cfg.get("crop_size", 224)
        size = crop.get("height", 224) if isinstance(crop, dict) else int(crop)
        return size, tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))

    def preprocessor(self) -> WanVideoPreprocessor:
        if self._preprocessor is None:
            size, mean, std = self.clip_normalisation()
            self._preprocessor = WanVideoPreprocessor(
                num_frames=self.num_frames,
                target_fps=self.target_fps,
                height=self.height,
                width=self.width,
                size_rule=self.size_rule,
                interpolation=self.interpolation,
                short_clip=self.short_clip,
                tokenizer_path=self.model_path,
                max_length=self.max_length,
                i2v=self.i2v,
                max_references=self.max_references,
                clip_size=size,
                clip_mean=mean,
                clip_std=std,
            )
        return self._preprocessor

    # -- weights
    def load_model(self) -> torch.nn.Module:
        from diffusers import AutoencoderKLWan
        from transformers import CLIPVisionModel, UMT5EncoderModel

        with quiet_diffusers():
            vae = from_pretrained_strict(AutoencoderKLWan, self.model_path, subfolder="vae", torch_dtype=self.vae_dtype)
        if self.enable_tiling:
            vae.enable_tiling(**self.tiling)
        parts: dict[str, torch.nn.Module] = {"vae": vae}
        with quiet_transformers():
            parts["text_encoder"] = from_pretrained_strict(
                UMT5EncoderModel, self.model_path, subfolder="text_encoder", dtype=self.compute_dtype
            )
            if self.i2v != "none":
                parts["image_encoder"] = from_pretrained_strict(
                    CLIPVisionModel, self.model_path, subfolder="image_encoder", dtype=self.image_encoder_dtype
                )
        self._blank_latents = {}
        return torch.nn.ModuleDict(parts)

    # -- the three encoders
    def encode_video(self, pixels: torch.Tensor, keys: list[str] | None = None) -> torch.Tensor:
        """Normalised latents ``[B, C, t, h, w]`` (float32) of ``pixels [B, 3, T, H, W]`` in [-1, 1]."""
        assert self.model is not None
        vae = self.model["vae"]
        dist = vae.encode(pixels.to(self.device, self.vae_dtype)).latent_dist
        if self.sample_posterior and keys is not None:
            noise = torch.stack(
                [
                    torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(_key_seed(self.seed, k)))
                    for k in keys
                ]
            ).to(dist.mean.device, dist.mean.dtype)
            z = dist.mean + dist.std * noise
        else:
            z = dist.mode()
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
        return (z.float() - mean) / std

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
        shape = (frames, height, width, str(self.device))
        if shape not in self._blank_latents:
            self._blank_latents[shape] = self.encode_video(torch.zeros(1, 3, frames, height, width))[0]
        return self._blank_latents[shape]

    # -- I2V conditions of one clip
    def first_frame_condition(self, video: torch.Tensor, clip_in: torch.Tensor) -> dict[str, torch.Tensor]:
        """Wan I2V: CLIP of the first frame, and mask + latent of (first frame, then zero frames)."""
        condition = torch.zeros_like(video)
        condition[:, :1] = video[:, :1]
        latent = self.encode_video(condition[None])[0]
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
        slots = torch.zeros(MASK_CHANNELS + channels, self.max_references, h, w, device=blank.device)
        tokens = None
        n = refs.shape[0]
        if n:
            ref_latents = self.encode_video(refs[:, :, None])  # [n, C, 1, h, w]: each reference a 1-frame clip
            small = F.interpolate(masks.float(), size=(h, w), mode="nearest").to(blank.device)
            slots[0, :n] = small[:, 0]
            slots[MASK_CHANNELS:, :n] = ref_latents[:, :, 0].permute(1, 0, 2, 3)
            tokens = self.encode_clip(clip_in)  # [n, 257, D]
        video_slots = torch.cat([torch.zeros(MASK_CHANNELS, t, h, w, device=blank.device), blank])
        if tokens is None:
            assert self.model is not None
            cfg = self.model["image_encoder"].config
            per_image = (cfg.image_size // cfg.patch_size) ** 2 + 1
            clip = torch.zeros(self.max_references * per_image, cfg.hidden_size, device=blank.device)
        else:
            flat = tokens.reshape(-1, tokens.shape[-1])
            clip = torch.cat([flat, flat.new_zeros((self.max_references - n) * tokens.shape[1], flat.shape[-1])])
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
            if self.i2v == "first_frame":
                extra = self.first_frame_condition(per_sample["video"][i], per_sample["clip_pixels"][i])
            elif self.i2v == "reference":
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
        """Preprocessing facts plus ``entry``: the manifest entry with the upstream sampling fields added."""
        meta = dict(batch.metas[index])
        entry = dict(meta.pop("entry", {}))
        indices = meta.get("frame_indices") or [0]
        entry.update(
            {"start_frame_idx": indices[0], "sample_frame_index": list(indices), "sample_num_frames": len(indices)}
        )
        return {**meta, "entry": entry}
