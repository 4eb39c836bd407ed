"""Decoding sampled frames with decord: ``get_batch`` alone (before) against the clean-keyframe check (now).

The workload is the quickstart benchmark's: 48 clips cut from the bundled videos (16 with ``--quick``: 3),
8 uniformly sampled frames each, at their own size, one decoder thread, in this process. Rows:
- ``before: get_batch``: what the decord path did before, ``reader.get_batch`` of the sampled frames, seeking
  to any keyframe (wrong frames after a seek to one that is not a clean random-access point).
- ``now: decode_video``: :func:`lit_features.data.media.decode_video` with ``backend="decord"``: each keyframe
  ``get_batch`` would seek to is first checked with PyAV (a fresh seek, one frame decoded); a clip behind an
  unclean one is decoded forward from the last clean keyframe instead.
Both run alternately, best of two each (the machine may be shared); a row for all clips, then one per video
(``cockatoo.mp4`` has keyframes that are not clean random-access points; the other two are clean files).
``changed`` counts the clips whose frames differ between the two (the ones ``get_batch`` got wrong: each is
checked equal to a sequential decode, or the benchmark fails).

    OMP_NUM_THREADS=1 python tools/benchmark.py --only decode_seek
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tools.benchmarks import _quickstart_runs as runs

TRIES = 2


def _before(path: str, cut: list[float]) -> np.ndarray:
    """The decord path as it was: open, select, ``get_batch``."""
    import decord

    from lit_features.data.sampling import FrameSampling

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    indices, _ = FrameSampling("uniform", 8).select(len(reader), float(reader.get_avg_fps()), cut)
    unique = sorted(set(indices))
    frames = reader.get_batch(unique).asnumpy()
    return frames[[unique.index(i) for i in indices]]


def _now(path: str, cut: list[float]) -> np.ndarray:
    from lit_features.data.media import decode_video
    from lit_features.data.sampling import FrameSampling

    return decode_video(path, FrameSampling("uniform", 8), cut, "decord").frames


def _timed(decode: Any, clips: list[dict[str, Any]]) -> tuple[float, list[np.ndarray], list[float]]:
    """Seconds for all clips, the frames, and the seconds per clip."""
    out, each = [], []
    for c in clips:
        started = time.perf_counter()
        out.append(decode(c["path"], c["cut"]))
        each.append(time.perf_counter() - started)
    return sum(each), out, each


def _sequential_equal(path: str, cut: list[float], frames: np.ndarray) -> bool:
    """Whether ``frames`` are the clip's sampled frames as a decode from frame 0, one frame after the other, gives."""
    import decord

    from lit_features.data.sampling import FrameSampling

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    indices, _ = FrameSampling("uniform", 8).select(len(reader), float(reader.get_avg_fps()), cut)
    kept = {}
    for index in range(max(indices) + 1):
        frame = reader.next()
        if index in indices:
            kept[index] = frame.asnumpy()
    return bool(np.array_equal(np.stack([kept[i] for i in indices]), frames))


def run(quick: bool = False) -> dict[str, Any]:
    clips = runs.clips(1 if quick else 16)
    _timed(_now, clips[:3])  # imports and first opens outside the timings
    befores, nows = [], []
    for _ in range(1 if quick else TRIES):
        befores.append(_timed(_before, clips))
        nows.append(_timed(_now, clips))
    before_s, before_frames, before_each = min(befores, key=lambda r: r[0])
    now_s, now_frames, now_each = min(nows, key=lambda r: r[0])
    changed = [i for i, (a, b) in enumerate(zip(before_frames, now_frames)) if not np.array_equal(a, b)]
    fixed = sum(_sequential_equal(clips[i]["path"], clips[i]["cut"], now_frames[i]) for i in changed)
    if fixed != len(changed):
        raise AssertionError(f"{len(changed) - fixed} changed clips differ from a sequential decode")
    rows = []
    for name in (None, *runs.VIDEOS):
        picked = [i for i, c in enumerate(clips) if name is None or c["path"].endswith(name)]
        b, n = sum(before_each[i] for i in picked), sum(now_each[i] for i in picked)
        rows.append({
            "clips": f"{len(picked)} {'(all)' if name is None else name}",
            "before_s": b, "now_s": n, "now_vs_before": n / b,
            "before_ms_per_clip": 1000 * b / len(picked), "now_ms_per_clip": 1000 * n / len(picked),
            "changed": sum(i in changed for i in picked),
        })  # fmt: skip
    return {"rows": rows, "metrics": {"decode_seek_cost": now_s / before_s, "decode_seek_changed": len(changed)}}
