"""A unit of work (:class:`Sample`) and the checks every manifest entry passes, whatever its file format.

An entry has a ``path`` (the media) and optional ``cap``, ``num_frames``, ``fps``, ``resolution``, ``cut`` and
reference image lists; :func:`validate_entry` checks their types and ranges and names the file, the entry and
the field of the first problem (a :class:`~lit_features.data.manifest_error.ManifestError`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from lit_features.data.keys import short_hash
from lit_features.data.manifest_error import ManifestError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
CSV_PATH_COLUMNS = ("path", "video", "video_path", "filename", "file", "image")
CSV_CAPTION_COLUMNS = ("cap", "caption", "text", "prompt", "description")
# Per-entry lists of reference image paths (``img_paths`` is the OpenS2V-Eval / BindWeave spelling).
IMAGE_LIST_FIELDS = ("images", "img_paths")
#: Entry fields besides the media and its ``cut`` that change features (captions and prompts feed the Wan and
#: Qwen text encoders, reference images the I2V and Qwen image paths): part of a sample's input identity.
INPUT_FIELDS = ("cap", "prompt", "negative_prompt", *IMAGE_LIST_FIELDS)
#: Largest frame index, frame count or pixel size an entry may give (decoders index frames with 32-bit ints).
MAX_COUNT = 2**31 - 1


@dataclass(frozen=True)
class Sample:
    """One unit of work: a manifest entry resolved to an absolute source and a unique key."""

    key: str
    source: str | None
    entry: dict[str, Any] = field(default_factory=dict)
    manifest: str = ""
    index: int = 0

    @property
    def cut(self) -> list[float] | None:
        return self.entry.get("cut")

    def identity(self) -> dict[str, Any]:
        """What, besides ``source``, makes this sample's features: its ``cut`` and (hashed) text and image fields.

        Stored with each index row, so a later run that gives the same key another input is refused.
        """
        out: dict[str, Any] = {}
        if self.cut is not None:
            out["cut"] = [float(c) for c in self.cut]
        for name in INPUT_FIELDS:
            if self.entry.get(name) is not None:
                out[name] = short_hash(json.dumps(self.entry[name], sort_keys=True), 12)
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float no larger than :data:`MAX_COUNT` (JSON allows 1e999 and 10**400; decoders do not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return abs(value) <= MAX_COUNT and (isinstance(value, int) or math.isfinite(value))


def _show(value: Any, limit: int = 60) -> str:
    """A value for a message, cut short (a 400-digit number would drown the message)."""
    try:
        text = repr(value)
    except ValueError:  # ints beyond Python's digit limit refuse to print
        return "a number too large to print"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_entry(entry: Any, file: str | os.PathLike, index: int, require_path: bool = False) -> dict[str, Any]:
    """Check the common fields of one entry; return it as a dict (extra fields kept)."""
    if not isinstance(entry, dict):
        raise ManifestError(file, f"expected an object, got {type(entry).__name__}", index)
    if require_path or "path" in entry:
        if "path" not in entry:
            raise ManifestError(file, "missing required field (the media file, relative to the root)", index, "path")
        if not isinstance(entry["path"], str) or not entry["path"].strip():
            raise ManifestError(file, f"must be a non-empty string, got {entry['path']!r}", index, "path")
    for name in ("cap", "prompt", "negative_prompt"):
        if name in entry and entry[name] is not None and not isinstance(entry[name], str):
            raise ManifestError(file, f"must be a string, got {type(entry[name]).__name__}", index, name)
    frames = entry.get("num_frames")
    if "num_frames" in entry and not (_is_int(frames) and _is_number(frames) and frames > 0):
        raise ManifestError(
            file, f"must be a positive integer up to {MAX_COUNT}, got {_show(frames)}", index, "num_frames"
        )
    if "fps" in entry and not (_is_number(entry["fps"]) and entry["fps"] > 0):
        raise ManifestError(file, f"must be a positive finite number, got {_show(entry['fps'])}", index, "fps")
    if "resolution" in entry:
        res = entry["resolution"]
        if not isinstance(res, dict) or not all(_is_number(res.get(k)) for k in ("height", "width")):
            raise ManifestError(
                file, f"must be {{height: int, width: int}} up to {MAX_COUNT}, got {_show(res)}", index, "resolution"
            )
    if "cut" in entry and entry["cut"] is not None:
        cut = entry["cut"]
        if not (isinstance(cut, (list, tuple)) and len(cut) == 2 and all(_is_number(c) for c in cut)):
            raise ManifestError(
                file, f"must be [start, end] frame indices up to {MAX_COUNT}, got {_show(cut)}", index, "cut"
            )
        if cut[0] < 0 or cut[1] <= cut[0]:
            raise ManifestError(file, f"needs 0 <= start < end, got {list(cut)!r}", index, "cut")
    for name in IMAGE_LIST_FIELDS:
        imgs = entry.get(name)
        if name in entry and (not isinstance(imgs, list) or not all(isinstance(p, str) and p for p in imgs)):
            raise ManifestError(file, f"must be a list of image paths, got {imgs!r}", index, name)
    return dict(entry)
