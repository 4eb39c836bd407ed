"""Which keyframes decord would seek to for a set of frames, and whether each is a clean random-access point.

A keyframe (sync sample) in the container index is not always a point the decoder can start from: an H.264
I-frame that is not an IDR frame may still depend on earlier pictures, and decoding after a seek to it gives
garbage without an error (the bundled ``cockatoo.mp4``, frames 76 and 145). FFmpeg notices it, though, and
flags such frames ``corrupt``; :func:`is_clean_keyframe` asks PyAV for that flag after the same seek.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["KeyframeProbe", "entry_keyframes", "file_identity", "key_at_or_before", "seek_to_keyframe"]


def key_at_or_before(keys: Sequence[int], index: int) -> int:
    """The last keyframe at or before frame ``index`` (``keys`` sorted; frame 0 when none is listed)."""
    pos = bisect.bisect_right(keys, index) - 1
    return keys[pos] if pos >= 0 else 0


def entry_keyframes(keys: Sequence[int], indices: Sequence[int]) -> list[int]:
    """The keyframes decord 0.6.0's ``get_batch(indices)`` seeks to on a freshly opened reader.

    ``indices`` sorted ascending, no repeats. decord starts at frame 0; for each next index it decodes forward
    when that index lies in the keyframe interval of the frame it is at, and otherwise seeks to the index's
    keyframe (``VideoReader::SkipFrames``). Returned in order, without repeats.
    """
    entries: list[int] = []
    current = 0  # the frame decord would decode next
    for index in indices:
        key = key_at_or_before(keys, index)
        seeks = index != current and (index < current or key != key_at_or_before(keys, current))
        if seeks and key not in entries:
            entries.append(key)
        current = index + 1
    return entries


def seek_to_keyframe(container: Any, stream: Any, timestamps: Sequence[float]) -> None:
    """Seek a PyAV ``container`` so decoding starts at the keyframe decord times at ``timestamps`` = (start,
    stop) seconds from the stream start. Aimed half a frame past its start: the demuxer goes to the last
    keyframe at or before that point, which is this one when it is in the index."""
    start, stop = (float(t) for t in timestamps)
    half = max((stop - start) / 2, 1e-6)
    origin = stream.start_time or 0
    container.seek(origin + int(round((start + half) / float(stream.time_base))), stream=stream, backward=True)


# Answers outlive one decode: clips cut from one long video ask about the same keyframes again, and each probe
# opens the file and decodes a frame. Keyed by the file's identity (device, inode, size, modification time), so a
# file replaced or rewritten in place is probed afresh. Bounded: least recently used answers go first.
_ANSWERS: OrderedDict[tuple[Any, ...], bool] = OrderedDict()
_MAX_ANSWERS = 65536


def file_identity(path: str) -> tuple[Any, ...] | None:
    """(path, device, inode, size, modification time) of a file, to key answers about it; ``None`` when unknown."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # nothing to key on: probe every time
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class KeyframeProbe:
    """Answers "is keyframe ``k`` a clean random-access point?" for one file (answers cached per process).

    Clean means: after a seek to it in a freshly opened file, FFmpeg decodes the keyframe itself (and whatever
    it outputs before it) without flagging a frame corrupt. Freshly opened, because a decoder that has already
    decoded earlier frames keeps state across a seek and may decode the keyframe well where a first seek does
    not (checked on ``cockatoo.mp4``). A keyframe the seek does not land on exactly counts as not clean (the
    caller then decodes from an earlier one), so every doubt costs time, never correctness. Frame 0 is asked
    too: a stream that cannot be decoded from its start (cut out of a longer one, damaged) is broken.
    """

    def __init__(self, path: str, timestamps: Callable[[int], Any]):
        self.path = path
        self.timestamps = timestamps  # frame index -> (start, stop) seconds from the stream start (decord's index)
        self._identity = file_identity(path)
        self._clean: dict[int, bool] = {}

    def is_clean(self, key: int) -> bool:
        if key in self._clean:
            return self._clean[key]
        cache_key = None if self._identity is None else (*self._identity, key)
        if cache_key is not None and cache_key in _ANSWERS:
            _ANSWERS.move_to_end(cache_key)
            answer = _ANSWERS[cache_key]
        else:
            answer = self._probe(key)
            if cache_key is not None:
                _ANSWERS[cache_key] = answer
                if len(_ANSWERS) > _MAX_ANSWERS:
                    _ANSWERS.popitem(last=False)
        self._clean[key] = answer
        return answer

    def _probe(self, key: int) -> bool:
        import av

        try:
            return self._seek_and_decode(key)
        except av.FFmpegError:  # a seek or decode FFmpeg refuses: not a point to start from
            return False

    def _seek_and_decode(self, key: int) -> bool:
        import av

        start, stop = (float(t) for t in self.timestamps(key))
        half = max((stop - start) / 2, 1e-6)
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # one frame is wanted: no frame-thread pipeline to fill
            base = float(stream.time_base)
            origin = stream.start_time or 0
            seek_to_keyframe(container, stream, (start, stop))
            for frame in container.decode(stream):
                if frame.pts is None or frame.is_corrupt:
                    return False
                at = (frame.pts - origin) * base
                if at >= start - half:
                    return abs(at - start) < half and bool(frame.key_frame)
        return False
