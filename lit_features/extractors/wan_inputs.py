"""Inputs of the Wan2.1 training features as BindWeave and FlashI2V make them: frames, pixels, captions, references.

Everything here runs in DataLoader workers and holds no weights:

- frames: ``num_frames`` from the entry's start (``start_frame_idx``, else ``cut[0]``, else 0), either
  consecutive (``target_fps=None``: BindWeave's ``frame_interval: 1``, no resampling) or resampled to
  ``target_fps`` (FlashI2V: every ``fps / target_fps``-th frame, truncated, all frames within 0.1 fps);
- pixels: the uint8 frames resized and cropped by the upstream rule (``bindweave`` or ``flashi2v``, see
  :mod:`lit_features.data.transforms`), then normalised to [-1, 1];
- captions: ``whitespace`` collapsing (BindWeave) or ``flashi2v`` cleaning (FlashI2V's text processor: the
  DeepFloyd-IF caption cleaning applied twice, i.e. diffusers' ``_text_preprocessing(clean_caption=True)``),
  then the UMT5 tokenizer;
- reference images (BindWeave): each fitted into the frame keeping its aspect (bilinear, antialias, on uint8),
  centred on black, with its area mask.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lit_features.data.dataset import Prepared
from lit_features.data.decoder_scaling import CoverSize
from lit_features.data.preprocess import EntryError, MediaLoader, Preprocessor
from lit_features.data.sample import IMAGE_EXTENSIONS, Sample
from lit_features.data.sampling import FrameSampling
from lit_features.data.transforms import (
    NORMALIZATION_PRESETS,
    UPSTREAM_COVER_ROUNDING,
    UPSTREAM_SIZE_RULES,
    normalize,
)
from lit_features.errors import UserError

CLIP_MEAN = NORMALIZATION_PRESETS["clip"][0]
CLIP_STD = NORMALIZATION_PRESETS["clip"][1]
_WHITESPACE = re.compile(r"\s+")
# An entry with a start but no end of its window reads to the end of the clip.
_TO_THE_END = 2**62


class MissingDependencyError(UserError, ImportError):
    """An option needs a package that is not installed; the message names it."""


class EmptyCaptionError(ValueError):
    """A caption has no text left after cleaning (the sample is recorded as failed, not encoded as "")."""


def clean_caption(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends (BindWeave's only cleaning)."""
    return _WHITESPACE.sub(" ", text).strip()


@functools.cache
def _caption_cleaner() -> Any:
    """diffusers' PixArt-alpha pipeline class, whose caption cleaning is FlashI2V's (no weights, no ``__init__``)."""
    missing = []
    for module, package in (("bs4", "beautifulsoup4"), ("ftfy", "ftfy")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        # diffusers would log a warning and return the caption merely lower-cased: refuse instead.
        raise MissingDependencyError(
            f"caption_cleaning 'flashi2v' needs {' and '.join(missing)}: pip install {' '.join(missing)}"
        )
    from diffusers import PixArtAlphaPipeline

    # Its cleaning methods only read class attributes (the punctuation regex), so no pipeline is built.
    return object.__new__(PixArtAlphaPipeline)


def flashi2v_clean_caption(text: str) -> str:
    """FlashI2V's default text preprocessing: lower-case, URL/HTML/@handle removal, punctuation normalisation.

    This is the cleaning shared by DeepFloyd IF, PixArt and FlashI2V's ``TextProcessor.clean_caption``, applied
    twice, taken from diffusers (``_text_preprocessing(text, clean_caption=True)``), which needs beautifulsoup4
    and ftfy. With ``support_chinese=False`` (FlashI2V's default) the two agree except that FlashI2V also strips
    the text once in the middle of the chain, which changes what the anchored rules see at the ends in rare
    cases: ``"(.gif)"`` is emptied by FlashI2V and gives ``". gif"`` here, ``"Scene:’["`` gives ``"scene"`` there
    and ``"scene:"`` here (0 of 20,000 template captions, 111 of 20,000 random strings of up to 30 characters).
    """
    return _caption_cleaner()._text_preprocessing(text, clean_caption=True)[0]


CAPTION_CLEANING = {"whitespace": clean_caption, "flashi2v": flashi2v_clean_caption}


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


def uint8_frames(array: Any) -> torch.Tensor:
    """``uint8 [T, H, W, C]`` (or ``[H, W, C]``) array -> ``uint8 [T, C, H, W]`` tensor."""
    tensor = torch.as_tensor(array)
    if tensor.ndim == 3:
        tensor = tensor[None]
    return tensor.permute(0, 3, 1, 2).contiguous()


def fit_into(image: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``uint8 [1, 3, h, w]`` into ``size`` keeping aspect, centred on black; returns (uint8 canvas, area mask)."""
    th, tw = size
    h, w = image.shape[-2:]
    scale = min(th / h, tw / w)
    nh, nw = max(1, min(th, round(h * scale))), max(1, min(tw, round(w * scale)))
    scaled = image
    if (nh, nw) != (h, w):
        scaled = F.interpolate(image, (nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas = torch.zeros(1, 3, th, tw, dtype=torch.uint8)
    canvas[..., top : top + nh, left : left + nw] = scaled
    mask = torch.zeros(1, 1, th, tw)
    mask[..., top : top + nh, left : left + nw] = 1.0
    return canvas, mask


def clip_pixels(frames: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """CLIP input as upstream makes it: ``[N, 3, H, W]`` in [0, 1], bicubic (no antialias) to size x size, CLIP norm."""
    x = F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False)
    return normalize(x, (mean, std))


@dataclass
class WanPrepared:
    """One sample's model inputs and metadata, plus its reference canvases (uint8) for other encoders."""

    inputs: dict[str, torch.Tensor]
    meta: dict[str, Any]
    canvases: torch.Tensor


def clip_normalisation(model_path: str, i2v: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(size, mean, std) of the I2V CLIP input: ``image_processor/preprocessor_config.json``, else CLIP's."""
    file = Path(model_path) / "image_processor" / "preprocessor_config.json"
    if i2v == "none" or not model_path or not file.exists():
        return 224, CLIP_MEAN, CLIP_STD
    cfg = json.loads(file.read_text())
    crop = cfg.get("crop_size", 224)
    size = crop.get("height", 224) if isinstance(crop, dict) else int(crop)
    return size, tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))


@dataclass
class WanVideoPreprocessor(Preprocessor):
    """Frames from the entry's start, sized and normalised to [-1, 1]; caption tokens; I2V inputs.

    :class:`~lit_features.extractors.wan.WanTrainingFeatures` takes these fields flat (``--model.num_frames``
    ...), except ``tokenizer_path``, its weights folder. The ``clip_*`` fields are read from that folder.

    Args:
        num_frames: frames per clip, 4k+1 (49 -> 13 latent frames, 81 -> 21).
        target_fps: frame rate the clip is resampled to (every ``fps / target_fps``-th frame, truncated; all frames
            when within 0.1 fps), or ``null``: consecutive source frames (BindWeave). Clips start at the entry's
            ``start_frame_idx``, else ``cut[0]``, else frame 0.
        height: output height in pixels (a multiple of 8).
        width: output width in pixels (a multiple of 8).
        size_rule: ``bindweave`` (cover by the short side on uint8 frames, other side truncated, then crop) or
            ``flashi2v`` (the same with the other side rounded up), see :mod:`lit_features.data.transforms`.
        short_clip: a clip with fewer frames than asked: ``fail`` (recorded in the store's failures) or
            ``pad_last`` (repeat the last frame; the count is recorded in the sample's metadata).
        caption_cleaning: ``whitespace`` (BindWeave: collapse runs of whitespace) or ``flashi2v`` (FlashI2V's text
            processor: lower case, URL/HTML removal, punctuation normalisation, twice; needs beautifulsoup4 and
            ftfy). A caption left empty is recorded as a failed sample.
        tokenizer_path: the Wan weights folder: its ``tokenizer/`` tokenises the captions, and with I2V its
            ``image_processor/`` gives the CLIP input (``clip_size``, ``clip_mean``, ``clip_std``; CLIP's without).
        max_length: tokenizer length (padding and truncation).
        i2v: image-to-video conditioning: ``none``, ``first_frame`` (Wan I2V) or ``reference`` (BindWeave, the
            entry's ``images``).
        max_references: reference slots for ``i2v="reference"`` (more images in an entry is a manifest error).
        exif_transpose: apply images' EXIF orientation (``false``: the stored pixels, as BindWeave opens them).
        decoder_scaling: let FFmpeg scale video frames while decoding to exactly the size ``size_rule`` resizes
            them to before its crop (bilinear, as that resize; never up: clips not larger than it decode as
            before): less CPU per clip, latents slightly different, so recorded in the store fingerprint when
            on. Images and reference images are unaffected.
    """

    num_frames: int = 49
    target_fps: float | None = 16.0
    height: int = 480
    width: int = 832
    size_rule: Literal["bindweave", "flashi2v"] = "flashi2v"
    short_clip: Literal["fail", "pad_last"] = "fail"
    caption_cleaning: Literal["whitespace", "flashi2v"] = "whitespace"
    tokenizer_path: str = ""
    tokenizer_subfolder: str = field(default="tokenizer", init=False)  # the Diffusers folder layout, not an option
    max_length: int = 512
    i2v: Literal["none", "first_frame", "reference"] = "none"
    max_references: int = 4
    exif_transpose: bool = True
    decoder_scaling: bool = False
    # Read from ``tokenizer_path`` at construction (what the weights say, not options).
    clip_size: int = field(default=224, init=False)
    clip_mean: tuple[float, ...] = field(default=CLIP_MEAN, init=False)
    clip_std: tuple[float, ...] = field(default=CLIP_STD, init=False)

    required_fields = ("path", "cap")

    def __post_init__(self) -> None:
        # Impossible shapes are refused at construction (the VAE would silently give another latent length).
        check_frame_count(self.num_frames)
        for name, value in (("height", self.height), ("width", self.width)):
            if value < 8 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8 (the VAE's spatial stride), got {value}")
        if self.i2v not in ("none", "first_frame", "reference"):
            raise ValueError(f"i2v must be 'none', 'first_frame' or 'reference', got {self.i2v!r}")
        if self.target_fps is not None and self.target_fps <= 0:
            raise ValueError(
                f"target_fps must be a positive frame rate (or null: consecutive frames), got {self.target_fps!r}"
            )
        if self.max_references < 1:
            raise ValueError(f"max_references must be >= 1, got {self.max_references}")
        if self.size_rule not in UPSTREAM_SIZE_RULES:
            raise ValueError(f"size_rule must be one of {sorted(UPSTREAM_SIZE_RULES)}, got {self.size_rule!r}")
        if self.caption_cleaning not in CAPTION_CLEANING:
            raise ValueError(
                f"caption_cleaning must be one of {sorted(CAPTION_CLEANING)}, got {self.caption_cleaning!r}"
            )
        if self.caption_cleaning == "flashi2v":
            _caption_cleaner()  # a missing library stops the run now, not in every worker
        self.clip_size, self.clip_mean, self.clip_std = clip_normalisation(self.tokenizer_path, self.i2v)
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
        start, cut = entry.get("start_frame_idx"), sample.cut
        if start is not None and (not isinstance(start, int) or isinstance(start, bool) or start < 0):
            raise EntryError("start_frame_idx", f"must be a frame index (an integer >= 0), got {start!r}")
        if start is not None and cut is not None and int(cut[0]) != start:
            raise EntryError("start_frame_idx", f"{start} disagrees with cut[0] = {cut[0]}: give one start")
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

    def caption(self, text: str) -> str:
        """The caption as the upstream text processor hands it to the tokenizer; never empty."""
        cleaned = CAPTION_CLEANING[self.caption_cleaning](text)
        if not cleaned:
            raise EmptyCaptionError(f"caption {text[:80]!r} is empty after {self.caption_cleaning} cleaning")
        return cleaned

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

    # -- frames and pixels
    def decoder_scale(self) -> CoverSize | None:
        # Exactly the covering size: FFmpeg's bilinear scaler and the rule's bilinear resize agree up to rounding.
        rounding = UPSTREAM_COVER_ROUNDING[self.size_rule]
        return CoverSize(self.height, self.width, rounding) if self.decoder_scaling else None

    def sampling(self) -> FrameSampling:
        if self.target_fps is None:
            return FrameSampling("consecutive", self.num_frames, short_clip=self.short_clip)
        return FrameSampling("fps", self.num_frames, self.target_fps, short_clip=self.short_clip)

    @staticmethod
    def frame_window(sample: Sample) -> list[int] | None:
        """``[start, end)`` source frames: ``start_frame_idx`` (else ``cut[0]``) up to ``cut[1]`` (else the end)."""
        cut, start = sample.cut, sample.entry.get("start_frame_idx")
        if start is None:
            return None if cut is None else [int(cut[0]), int(cut[1])]
        return [int(start), int(cut[1]) if cut is not None else _TO_THE_END]

    def frames(self, sample: Sample, media: MediaLoader) -> tuple[torch.Tensor, dict[str, Any]]:
        """``uint8 [T, 3, h, w]`` at source size (or as the decoder scaled them), and what was sampled."""
        assert sample.source is not None
        if Path(sample.source).suffix.lower() in IMAGE_EXTENSIONS:
            image = media.image(sample.source, exif_transpose=self.exif_transpose)
            return uint8_frames(image), {"kind": "image", "frame_indices": [0], "source_size": list(image.shape[:2])}
        video = media.video(sample.source, self.sampling(), self.frame_window(sample), scale=self.decoder_scale())
        meta: dict[str, Any] = {
            "kind": "video",
            "frame_indices": video.indices,
            "total_frames": video.total_frames,
            "fps": video.fps,
        }
        if video.padded:
            meta["padded_frames"] = video.padded
        meta["source_size"] = list(video.source_size)
        if tuple(video.frames.shape[1:3]) != tuple(video.source_size):
            meta["decoded_size"] = list(video.frames.shape[1:3])  # the decoder scaled them (decoder_scaling)
        return uint8_frames(video.frames), meta

    def sized(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames -> float frames in [0, 1] at exactly (height, width) by the upstream size rule."""
        return UPSTREAM_SIZE_RULES[self.size_rule](frames, (self.height, self.width))

    def references(self, sample: Sample, media: MediaLoader) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference images fitted into the frame, ``uint8 [n, 3, H, W]``, and their area masks ``[n, 1, H, W]``."""
        canvases, masks = [], []
        for path in sample.entry.get("images") or []:
            image = uint8_frames(media.image(path, exif_transpose=self.exif_transpose))
            canvas, mask = fit_into(image, (self.height, self.width))
            canvases.append(canvas)
            masks.append(mask)
        if not canvases:
            empty = torch.zeros(0, 3, self.height, self.width, dtype=torch.uint8)
            return empty, torch.zeros(0, 1, self.height, self.width)
        return torch.cat(canvases), torch.cat(masks)

    def prepare(self, sample: Sample, media: MediaLoader) -> WanPrepared:
        """Model inputs and metadata of one sample, with its reference canvases (empty unless ``i2v='reference'``)."""
        caption = self.caption(sample.entry["cap"])
        raw, meta = self.frames(sample, media)
        frames = self.sized(raw)  # from frames the decoder scaled, the covering resize has nothing left to do
        input_ids, attention_mask = self.tokens(caption)
        inputs: dict[str, torch.Tensor] = {
            "video": normalize(frames, "half").permute(1, 0, 2, 3).contiguous(),  # [3, T, H, W]
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        canvases = torch.zeros(0, 3, self.height, self.width, dtype=torch.uint8)
        if self.i2v == "first_frame":
            inputs["clip_pixels"] = clip_pixels(frames[:1], self.clip_size, self.clip_mean, self.clip_std)
        elif self.i2v == "reference":
            canvases, masks = self.references(sample, media)
            pixels = canvases.float() / 255.0
            inputs["reference_pixels"] = normalize(pixels, "half")
            inputs["reference_masks"] = masks
            inputs["clip_pixels"] = clip_pixels(pixels, self.clip_size, self.clip_mean, self.clip_std)
            meta["num_references"] = int(canvases.shape[0])
        meta.update({"caption": caption, "size": [self.height, self.width], "num_tokens": int(attention_mask.sum())})
        return WanPrepared(inputs, meta, canvases)

    def __call__(self, sample: Sample, media: MediaLoader) -> Prepared:
        prepared = self.prepare(sample, media)
        return Prepared(prepared.inputs, prepared.meta)
