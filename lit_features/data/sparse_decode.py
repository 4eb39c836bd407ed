"""The few sampled frames of a clip decoded with PyAV, skipping the frames nothing needs: decord's frames, cheaper.

decord's ``get_batch`` decodes every frame between the sampled ones, although H.264 and HEVC streams carry
non-reference frames (most B-frames of a typical encode) that no other frame is predicted from. Here the
decoder (one thread, so a setting applies to the packet being sent) is told to discard non-reference frames
(``skip_frame=NONREF``) for every packet that is not a sampled frame, and only sampled frames are converted
to RGB. The frames are numbered with decord's index (its timestamps, so a frame index means what it means
everywhere else in a job), decoding starts only at clean keyframes (:mod:`lit_features.data.keyframes`), and
the conversion is decord's (:class:`~lit_features.data.media._RGBFrames`), so the frames equal decord's bit for
bit. Where that is not known to hold, :class:`NotSparse` sends the caller back to decord: codecs and pixel
formats outside those checked (decord's FFmpeg and PyAV's differ on 10-bit conversion and on MPEG-4 Part 2's
IDCT: tests/core/test_sparse_decode.py), a frame decord does not list, a sampled frame FFmpeg flags corrupt or
never outputs, a rotation that is not a quarter turn.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lit_features.data.keyframes import KeyframeProbe, key_at_or_before, seek_to_keyframe

__all__ = ["SPARSE_CODECS", "SPARSE_PIXEL_FORMATS", "NotSparse", "SparseFrames", "read_sparse"]

#: Decoders whose output is defined bit for bit by the standard (so PyAV's FFmpeg and decord's agree), and
#: which discard only frames no other frame refers to.
SPARSE_CODECS = frozenset({"h264", "hevc"})
#: 8-bit formats whose RGB conversion equals decord's (checked per format in the tests).
SPARSE_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuv444p"})


class NotSparse(Exception):
    """This clip's frames are read with decord instead (the reason is the message)."""


@dataclass
class SparseFrames:
    """The frames asked for, and how many frames the decoder output to get them (the work done)."""

    frames: np.ndarray
    decoded: int


class _FrameClock:
    """Maps a PyAV timestamp to decord's frame index: the frame whose start time (decord's timestamps, seconds
    from the stream start) is nearest, when within a quarter of the gap to its neighbours."""

    def __init__(self, stream: Any, starts: np.ndarray):
        self.origin = stream.start_time or 0
        self.base = float(stream.time_base)
        self.starts = starts.tolist()
        gaps = np.diff(starts)
        # Half-open neighbourhood of each frame: a quarter of the smaller gap next to it.
        if len(starts) > 1:
            left = np.concatenate([[gaps[0]], gaps])
            right = np.concatenate([gaps, [gaps[-1]]])
            self.tolerance = (np.minimum(left, right) / 4).tolist()
        else:
            self.tolerance = [1e-3]

    def index(self, pts: int | None) -> int | None:
        if pts is None:
            return None
        at = (pts - self.origin) * self.base
        pos = bisect.bisect_left(self.starts, at)
        nearest = min((j for j in (pos - 1, pos) if 0 <= j < len(self.starts)), key=lambda j: abs(self.starts[j] - at))
        return nearest if abs(self.starts[nearest] - at) < self.tolerance[nearest] else None


def _clean_keyframe_in(keys: Sequence[int], probe: KeyframeProbe, after: int, upto: int) -> int | None:
    """The last clean keyframe ``k`` with ``after < k <= upto`` (``None``: none; frame 0 counts as a keyframe)."""
    key = key_at_or_before(keys, upto)
    while key > after:
        if probe.is_clean(key):
            return key
        if key == 0:
            return None
        key = key_at_or_before(keys, key - 1)
    return None


def read_sparse(
    path: str,
    reader: Any,
    unique: list[int],
    keys: Sequence[int],
    probe: KeyframeProbe,
    size: tuple[int, int] | None = None,
) -> SparseFrames:
    """Frames ``unique`` (decord indices, sorted, no repeats) of ``path`` as decord gives them, upright and at
    ``size`` (H, W) when given. ``reader`` is the decord reader of the file (its index and timestamps);
    ``keys`` its keyframes. Raises :class:`NotSparse` when decord has to read them, ``DecodeError`` when frame 0
    is the only place to start and it decodes corrupt."""
    import av

    from lit_features.data.media import DecodeError, _RGBFrames, corrupt_frame_message

    start = _clean_keyframe_in(keys, probe, -1, unique[0])
    if start is None:
        raise DecodeError(corrupt_frame_message(0))
    starts = np.asarray(reader.get_frame_timestamp(list(range(len(reader)))), dtype=np.float64).reshape(-1, 2)[:, 0]
    wanted = set(unique)
    got: dict[int, np.ndarray] = {}
    decoded = 0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            context = stream.codec_context
            if context.name not in SPARSE_CODECS:
                raise NotSparse(f"codec {context.name}")
            if context.pix_fmt not in SPARSE_PIXEL_FORMATS:
                raise NotSparse(f"pixel format {context.pix_fmt}")
            context.thread_count = 1
            clock = _FrameClock(stream, starts)
            rgb = _RGBFrames(stream, size, None)
            position, pending = start, 0  # the index the decoder outputs next; unique[pending] is the next wanted
            while pending < len(unique):
                if position > 0:
                    seek_to_keyframe(container, stream, reader.get_frame_timestamp(position))
                jump = None
                for packet in container.demux(stream):
                    index = clock.index(packet.pts)
                    context.skip_frame = "DEFAULT" if index is None or index in wanted else "NONREF"
                    for frame in context.decode(packet):
                        decoded += 1
                        i = clock.index(frame.pts)
                        if i is None:
                            raise NotSparse(f"a frame at pts {frame.pts} is not in decord's index")
                        if i < position:
                            continue  # output before the keyframe decoding started at
                        position = i + 1
                        if i in wanted and i not in got:
                            if frame.is_corrupt:
                                raise NotSparse(f"frame {i} decodes corrupt")
                            got[i] = rgb(frame)
                    while pending < len(unique) and unique[pending] in got:
                        pending += 1
                    if pending == len(unique):
                        break
                    if unique[pending] < position:
                        raise NotSparse(f"frame {unique[pending]} was not output")
                    jump = _clean_keyframe_in(keys, probe, position, unique[pending])
                    if jump is not None:  # a later clean keyframe: start there instead of decoding up to it
                        position = jump
                        break
                else:
                    if pending < len(unique):
                        raise NotSparse(f"the stream ended before frame {unique[pending]}")
    except av.FFmpegError as err:
        raise NotSparse(f"FFmpeg: {err}") from err
    if rgb.rotation % 90:
        raise NotSparse(f"rotation {rgb.rotation} is not a quarter turn")
    return SparseFrames(rgb.upright(np.stack([got[i] for i in unique])), decoded)
