"""Decoding: videos with decord (PyAV as fallback), images with PIL, frame arrays from ``.npz``.

On the decord path, decord's index numbers the frames and H.264/HEVC clips are decoded by PyAV without the
frames nothing needs (:mod:`lit_features.data.sparse_decode`: decord's frames bit for bit).

These functions run inside the decode sandbox child process (see :mod:`lit_features.data.decode_sandbox`),
so a decoder that hangs or crashes cannot take the run down. Every decoded frame count is checked against
what was asked, because PyAV silently returns fewer frames on a truncated file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lit_features.data.decoder_scaling import DecoderScale
from lit_features.data.keyframes import KeyframeProbe, entry_keyframes, file_identity, key_at_or_before
from lit_features.data.sampling import FrameSampling
from lit_features.data.sparse_decode import NotSparse, read_sparse

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
    """Frames of one clip, ``uint8 [T, H, W, 3]`` RGB, upright (rotation metadata applied).

    ``source_size`` is the upright (H, W) of the stored frames; ``frames`` differ from it only when the decoder
    was asked to scale them.
    """

    frames: np.ndarray
    indices: list[int]
    total_frames: int
    fps: float
    padded: int
    backend: str
    rotation: int = 0
    source_size: tuple[int, int] = (0, 0)


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, as FFmpeg reports it) to ``[T, H, W, C]``."""
    k = (rotation // 90) % 4
    if k == 0:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2)))


def _quarter_turned(rotation: int) -> bool:
    """Whether decord turns frames of this display rotation by a quarter (it swaps sides at 90 and 270 degrees
    clockwise only), i.e. whether their upright size is the stored one swapped."""
    return -rotation % 360 in (90, 270)


def _frame_rotation(frame: Any) -> int:
    return int(round(getattr(frame, "rotation", 0) or 0))


def probe_upright_size(path: str) -> tuple[int, int]:
    """Upright (H, W) of a video's frames: its first frame's size, swapped when the display rotation is a quarter
    turn. One frame is decoded, since PyAV reads the rotation from the frames, not from the stream. Answers are
    kept per file (as the keyframe probe's: clips cut from one video ask again), until the file changes."""
    identity = file_identity(path)
    return _probe_upright_size(path) if identity is None else _upright_size_of(identity)


@functools.lru_cache(maxsize=65536)
def _upright_size_of(identity: tuple[Any, ...]) -> tuple[int, int]:
    return _probe_upright_size(identity[0])


def _probe_upright_size(path: str) -> tuple[int, int]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one frame is wanted: no frame-thread pipeline to fill
        for frame in container.decode(stream):
            h, w = frame.height, frame.width
            return (w, h) if _quarter_turned(_frame_rotation(frame)) else (h, w)
    raise DecodeError("no frames decoded")


def _decode_decord(
    path: str,
    sampling: FrameSampling,
    cut: list[float] | None,
    size: tuple[int, int] | None = None,
    scale: DecoderScale | None = None,
) -> DecodedVideo:
    import decord

    source = probe_upright_size(path) if size or scale else None
    if scale is not None:
        assert source is not None
        size = scale.size(*source)
    # Scaled by FFmpeg while decoding (``transpose`` for the rotation, then ``scale=W:H``: an upright size).
    resize = {"height": size[0], "width": size[1]} if size else {}
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **resize)
    total = len(reader)
    fps = float(reader.get_avg_fps())
    indices, padded = sampling.select(total, fps, cut)
    unique = sorted(set(indices))
    if unique and unique[-1] >= total:
        raise DecodeError(f"asked for frame {unique[-1]} but the video has {total} frames")
    frames = _read_decord(path, reader, unique, size)
    if frames.shape[0] != len(unique):
        raise DecodeError(f"decord returned {frames.shape[0]} frames, {len(unique)} were asked for")
    lookup = {idx: pos for pos, idx in enumerate(unique)}
    frames = frames[[lookup[i] for i in indices]]
    # decord applies the display-matrix rotation itself (checked against PyAV + rotation in the tests).
    upright = source if source is not None else (int(frames.shape[1]), int(frames.shape[2]))
    return DecodedVideo(frames, indices, total, fps, padded, "decord", source_size=upright)


def _read_decord(path: str, reader: Any, unique: list[int], size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames ``unique`` (sorted, decord's index) as decord gives them (at ``size`` when the reader scales):
    decoded by PyAV without the frames nothing needs where that gives decord's frames bit for bit
    (:mod:`.sparse_decode`), else read by decord (:func:`_read_with_decord`)."""
    if not unique:
        return reader.get_batch(unique).asnumpy()
    keys = [int(k) for k in reader.get_key_indices()]
    probe = KeyframeProbe(path, reader.get_frame_timestamp)
    try:
        return read_sparse(path, reader, unique, keys, probe, size).frames
    except NotSparse:
        return _read_with_decord(path, reader, unique, keys, probe)


def _read_with_decord(path: str, reader: Any, unique: list[int], keys: list[int], probe: KeyframeProbe) -> np.ndarray:
    """Frames ``unique`` (sorted) as ``get_batch`` gives them when every keyframe it would seek to is a clean
    random-access point; otherwise decoded forward, frame after frame, from the last clean keyframe at or before
    the first of them, so no seek lands on a keyframe that gives corrupt frames (see :mod:`.keyframes`)."""
    entries = [0, *entry_keyframes(keys, unique)]  # decord starts decoding at frame 0
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


class _RGBFrames:
    """Converts PyAV frames to RGB arrays, deciding at the first frame how: at their stored size (turned upright
    afterwards, :func:`_rotate`), or scaled while converting to an upright ``size`` (or the one ``scale`` asks
    for) by the FFmpeg filter chain decord builds (``transpose`` for the rotation, then ``scale=W:H`` bilinear, to
    ``rgb24``), which gives decord's scaled frames bit for bit (``frame.to_ndarray(width=, height=)`` does not)."""

    #: decord's ``transpose`` filters per display angle (clockwise degrees, as decord reads them).
    TRANSPOSES = {90: ("1",), 180: ("1", "1"), 270: ("2",)}

    def __init__(self, stream: Any, size: tuple[int, int] | None, scale: DecoderScale | None):
        self.stream, self.size, self.scale = stream, size, scale
        self.rotation = 0
        self.source_size: tuple[int, int] | None = None
        self.graph: Any = None

    def __call__(self, frame: Any) -> np.ndarray:
        if self.source_size is None:
            self.rotation = _frame_rotation(frame)
            h, w = frame.height, frame.width
            self.source_size = (w, h) if _quarter_turned(self.rotation) else (h, w)
            size = self.scale.size(*self.source_size) if self.scale is not None else self.size
            if size is not None:
                self.graph = self._scaler(size)
        if self.graph is None:
            return frame.to_ndarray(format="rgb24")
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()

    def _scaler(self, size: tuple[int, int]) -> Any:
        import av.filter

        graph = av.filter.Graph()
        chain = [graph.add_buffer(template=self.stream)]
        chain += [graph.add("transpose", d) for d in self.TRANSPOSES.get(-self.rotation % 360, ())]
        chain += [graph.add("scale", f"{size[1]}:{size[0]}:flags=bilinear"), graph.add("format", "rgb24")]
        chain.append(graph.add("buffersink"))
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        graph.configure()
        return graph

    def upright(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` as converted, turned upright when the conversion left them as stored."""
        return frames if self.graph is not None else _rotate(frames, self.rotation)


def _decode_pyav(
    path: str,
    sampling: FrameSampling,
    cut: list[float] | None,
    size: tuple[int, int] | None = None,
    scale: DecoderScale | None = None,
) -> DecodedVideo:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rgb = _RGBFrames(stream, size, scale)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        header_total = int(stream.frames or 0)
        if header_total > 0:
            indices, padded = sampling.select(header_total, fps, cut)
            wanted = set(indices)
            last = max(indices)
            got: dict[int, np.ndarray] = {}
            decoded = 0
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                _refuse_corrupt(frame, i)
                if i in wanted:
                    got[i] = rgb(frame)
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
            all_frames = []
            for i, frame in enumerate(container.decode(stream)):
                _refuse_corrupt(frame, i)
                all_frames.append(rgb(frame))
            total = len(all_frames)
            indices, padded = sampling.select(total, fps, cut)
            got = {i: all_frames[i] for i in set(indices)}
    if not got or rgb.source_size is None:
        raise DecodeError("no frames decoded")
    frames = np.stack([got[i] for i in indices])
    return DecodedVideo(
        rgb.upright(frames), indices, total, fps, padded, "pyav", rgb.rotation, source_size=rgb.source_size
    )


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


def decode_video(
    path: str,
    sampling: FrameSampling,
    cut: list[float] | None = None,
    backend: Backend = "auto",
    size: tuple[int, int] | None = None,
    scale: DecoderScale | None = None,
) -> DecodedVideo:
    """Decode only the frames ``sampling`` selects. ``auto`` tries decord, then PyAV when decord fails.

    ``size`` = (H, W) has the decoder scale frames while decoding (FFmpeg's ``scale`` filter, bilinear), to an
    upright size (after the rotation); ``scale`` chooses that size from the clip's upright source size (see
    :mod:`lit_features.data.decoder_scaling`; ``None`` from it: the stored size). Both backends give the same
    scaled frames, bit for bit.
    """
    import os

    if size is not None and scale is not None:
        raise ValueError("give the decoder a fixed size or a scaling rule, not both")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DecodeError(f"empty file (0 bytes): {path}")
    if backend == "decord":
        return _decode_decord(path, sampling, cut, size, scale)
    if backend == "pyav":
        return _decode_pyav(path, sampling, cut, size, scale)
    try:
        return _decode_decord(path, sampling, cut, size, scale)
    except ImportError:
        return _decode_pyav(path, sampling, cut, size, scale)
    except Exception as decord_error:  # decord.DECORDError is not a RuntimeError subclass
        from lit_features.data.sampling import ShortClipError

        if isinstance(decord_error, ShortClipError):
            raise
        try:
            return _decode_pyav(path, sampling, cut, size, scale)
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
