"""Decoding: videos with decord (PyAV as fallback), images with PIL, frame arrays from ``.npz``.

These functions run inside the decode sandbox child process (see :mod:`lit_features.data.decode_sandbox`),
so a decoder that hangs or crashes cannot take the run down. Every decoded frame count is checked against
what was asked, because PyAV silently returns fewer frames on a truncated file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lit_features.data.keyframes import KeyframeProbe, entry_keyframes, key_at_or_before
from lit_features.data.sampling import FrameSampling

Backend = Literal["auto", "decord", "pyav"]

#: How videos are decoded, as far as it changes the frames; recorded in the fingerprint of every store made from
#: decoded videos, so a store written under other rules is refused instead of resumed. ``seek``:
#: ``clean_keyframes`` = a seek lands only on keyframes FFmpeg decodes without corruption (before: any keyframe,
#: which gave wrong frames for clips in files whose keyframes are not all clean random-access points).
VIDEO_DECODE_RULES: dict[str, str] = {"seek": "clean_keyframes"}


class DecodeError(RuntimeError):
    """The media could not be decoded as asked (unreadable, truncated, wrong content)."""


@dataclass
class DecodedVideo:
    """Frames of one clip, ``uint8 [T, H, W, 3]`` RGB, upright (rotation metadata applied)."""

    frames: np.ndarray
    indices: list[int]
    total_frames: int
    fps: float
    padded: int
    backend: str
    rotation: int = 0


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, as FFmpeg reports it) to ``[T, H, W, C]``."""
    k = (rotation // 90) % 4
    if k == 0:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2)))


def _decode_decord(
    path: str, sampling: FrameSampling, cut: list[float] | None, size: tuple[int, int] | None = None
) -> DecodedVideo:
    import decord

    resize = {"height": size[0], "width": size[1]} if size else {}  # scaled by FFmpeg while decoding
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **resize)
    total = len(reader)
    fps = float(reader.get_avg_fps())
    indices, padded = sampling.select(total, fps, cut)
    unique = sorted(set(indices))
    if unique and unique[-1] >= total:
        raise DecodeError(f"asked for frame {unique[-1]} but the video has {total} frames")
    frames = _read_decord(path, reader, unique)
    if frames.shape[0] != len(unique):
        raise DecodeError(f"decord returned {frames.shape[0]} frames, {len(unique)} were asked for")
    lookup = {idx: pos for pos, idx in enumerate(unique)}
    frames = frames[[lookup[i] for i in indices]]
    # decord applies the display-matrix rotation itself (checked against PyAV + rotation in the tests).
    return DecodedVideo(frames, indices, total, fps, padded, "decord")


def _read_decord(path: str, reader: Any, unique: list[int]) -> np.ndarray:
    """Frames ``unique`` (sorted) as ``get_batch`` gives them when every keyframe it would seek to is a clean
    random-access point; otherwise decoded forward, frame after frame, from the last clean keyframe at or before
    the first of them, so no seek lands on a keyframe that gives corrupt frames (see :mod:`.keyframes`)."""
    if not unique:
        return reader.get_batch(unique).asnumpy()
    keys = [int(k) for k in reader.get_key_indices()]
    entries = [0, *entry_keyframes(keys, unique)]  # decord starts decoding at frame 0
    probe = KeyframeProbe(path, reader.get_frame_timestamp)
    if all(probe.is_clean(key) for key in entries):
        return reader.get_batch(unique).asnumpy()
    start = key_at_or_before(keys, unique[0])
    while not probe.is_clean(start):
        if start == 0:
            raise DecodeError(corrupt_frame_message(0))
        start = key_at_or_before(keys, start - 1)
    return _read_forward(reader, keys, start, unique)


def _read_forward(reader: Any, keys: list[int], start: int, unique: list[int]) -> np.ndarray:
    """Frames ``unique`` decoded forward from keyframe ``start`` without another seek. decord's ``skip_frames``
    seeks whenever the skip ends past a keyframe, so each skip stops one frame short of the next keyframe and
    that frame is read (one frame converted per keyframe passed; the skipped ones are only decoded)."""
    if start > 0:
        reader.seek_accurate(start)  # a clean keyframe: the seek lands on it exactly
    else:
        reader.seek(0)
    position, out = start, []  # ``position``: the frame the next read returns
    for index in unique:
        while True:
            boundary = next((k for k in keys if position < k <= index), None)  # next keyframe on the way
            stop = index if boundary is None else boundary - 1
            if stop > position:
                reader.skip_frames(stop - position)
            frame = reader.next()
            position = stop + 1
            if boundary is None:
                out.append(frame.asnumpy())
                break
    return np.stack(out)


def _decode_pyav(
    path: str, sampling: FrameSampling, cut: list[float] | None, size: tuple[int, int] | None = None
) -> DecodedVideo:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        header_total = int(stream.frames or 0)
        if header_total > 0:
            indices, padded = sampling.select(header_total, fps, cut)
            wanted = set(indices)
            last = max(indices)
            got: dict[int, np.ndarray] = {}
            rotation = 0
            decoded = 0
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                _refuse_corrupt(frame, i)
                if i in wanted:
                    got[i] = _rgb(frame, size)
                    rotation = int(round(getattr(frame, "rotation", 0) or 0))
                if i >= last:
                    break
            if len(got) != len(wanted):
                # PyAV ends quietly on a truncated stream; the header promised more frames.
                raise DecodeError(
                    f"video ended after {decoded} decoded frames but the header says {header_total} and frame "
                    f"{last} was asked for (file truncated?)"
                )
            total = header_total
        else:  # no frame count in the header: decode everything, then select
            all_frames, rotation = [], 0
            for i, frame in enumerate(container.decode(stream)):
                _refuse_corrupt(frame, i)
                all_frames.append(_rgb(frame, size))
                rotation = int(round(getattr(frame, "rotation", 0) or 0))
            total = len(all_frames)
            indices, padded = sampling.select(total, fps, cut)
            got = {i: all_frames[i] for i in set(indices)}
    if not got:
        raise DecodeError("no frames decoded")
    frames = np.stack([got[i] for i in indices])
    return DecodedVideo(_rotate(frames, rotation), indices, total, fps, padded, "pyav", rotation)


def corrupt_frame_message(index: int) -> str:
    return (
        f"frame {index} decodes corrupt (FFmpeg flags it even when decoding from the start: a damaged stream, or "
        "one cut out of a longer stream)"
    )


def _refuse_corrupt(frame: Any, index: int) -> None:
    # A decode from the start has every reference it needs: a frame FFmpeg still flags corrupt means a damaged
    # stream, and its pixels are concealment guesses, not the video.
    if frame.is_corrupt:
        raise DecodeError(corrupt_frame_message(index))


def _rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=size[1], height=size[0], interpolation="BILINEAR")


def decode_video(
    path: str,
    sampling: FrameSampling,
    cut: list[float] | None = None,
    backend: Backend = "auto",
    size: tuple[int, int] | None = None,
) -> DecodedVideo:
    """Decode only the frames ``sampling`` selects. ``auto`` tries decord, then PyAV when decord fails.

    ``size`` = (H, W) has the decoder scale frames while decoding (FFmpeg's bilinear scaler; stored frame
    size, before rotation), which saves memory and a copy for jobs that resize to a fixed size anyway.
    """
    import os

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DecodeError(f"empty file (0 bytes): {path}")
    if backend == "decord":
        return _decode_decord(path, sampling, cut, size)
    if backend == "pyav":
        return _decode_pyav(path, sampling, cut, size)
    try:
        return _decode_decord(path, sampling, cut, size)
    except ImportError:
        return _decode_pyav(path, sampling, cut, size)
    except Exception as decord_error:  # decord.DECORDError is not a RuntimeError subclass
        from lit_features.data.sampling import ShortClipError

        if isinstance(decord_error, ShortClipError):
            raise
        try:
            return _decode_pyav(path, sampling, cut, size)
        except Exception as pyav_error:
            raise DecodeError(
                f"decord: {type(decord_error).__name__}: {decord_error}; "
                f"PyAV: {type(pyav_error).__name__}: {pyav_error}"
            ) from pyav_error


def decode_image(path: str, exif_transpose: bool = True) -> np.ndarray:
    """An RGB ``uint8 [H, W, 3]`` image, its EXIF orientation applied unless ``exif_transpose`` is off.

    Off reproduces ``Image.open(path).convert("RGB")``: the stored pixels, as code that ignores EXIF sees them.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        if exif_transpose:
            image = ImageOps.exif_transpose(image)
        return np.asarray(image.convert("RGB")).copy()


def load_npz_array(path: str, key: str = "data") -> np.ndarray:
    """One array from an ``.npz`` file (no pickles allowed)."""
    with np.load(path, allow_pickle=False) as data:
        if key not in data.files:
            raise DecodeError(f"{path}: no array named {key!r} (found {data.files})")
        return data[key]


MEDIA_FUNCTIONS = {"video": decode_video, "image": decode_image, "npz": load_npz_array}
