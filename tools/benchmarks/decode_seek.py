"""Decoding sampled frames: decord's ``get_batch`` (seed scripts), decord with the clean-keyframe rule, and the
job's decoder now (PyAV skipping the frames nothing needs where that gives decord's frames).

The workload is the quickstart benchmark's: 48 clips cut from the bundled videos (16 with ``--quick``: 3),
8 uniformly sampled frames each, at their own size, one decoder thread, in this process; plus the same 16 cuts
of ``cockatoo.mp4`` re-encoded as most H.264 files are made (libx264 ``medium``, its defaults: B-frames and a
B-pyramid, 4:2:0; 2 cuts with ``--quick``), where many frames are non-reference frames. Rows:
- ``get_batch``: ``reader.get_batch`` of the sampled frames, seeking to any keyframe (wrong frames after a seek
  to one that is not a clean random-access point).
- ``decord, clean keyframes``: decord reading with the clean-keyframe rule (each keyframe ``get_batch`` would
  seek to is first checked with PyAV; a clip behind an unclean one is decoded forward from a clean one).
- ``now: decode_video``: :func:`lit_features.data.media.decode_video` with ``backend="decord"`` (decord's
  index): the frames decoded by PyAV from clean keyframes, non-reference frames that are not sampled skipped
  (:mod:`lit_features.data.sparse_decode`), where that gives decord's frames bit for bit.
Each runs alternately, best of two (the machine may be shared); CPU seconds of this process (one thread) and
wall. ``changed`` counts the clips whose frames differ from ``get_batch``'s (the ones it got wrong: each is
checked equal to a sequential decode, or the benchmark fails); the two other rows must give the same frames.

    OMP_NUM_THREADS=1 python tools/benchmark.py --only decode_seek
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
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


def _decord_clean(path: str, cut: list[float]) -> np.ndarray:
    """decord reading with the clean-keyframe rule (what the job's decoder did before the sparse path)."""
    import decord

    from lit_features.data.keyframes import KeyframeProbe
    from lit_features.data.media import _read_with_decord
    from lit_features.data.sampling import FrameSampling

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    indices, _ = FrameSampling("uniform", 8).select(len(reader), float(reader.get_avg_fps()), cut)
    unique = sorted(set(indices))
    keys = [int(k) for k in reader.get_key_indices()]
    frames = _read_with_decord(path, reader, unique, keys, KeyframeProbe(path, reader.get_frame_timestamp))
    return frames[[unique.index(i) for i in indices]]


def _now(path: str, cut: list[float]) -> np.ndarray:
    from lit_features.data.media import decode_video
    from lit_features.data.sampling import FrameSampling

    return decode_video(path, FrameSampling("uniform", 8), cut, "decord").frames


def _timed(decode: Any, clips: list[dict[str, Any]]) -> tuple[float, list[np.ndarray], list[float], list[float]]:
    """CPU seconds for all clips, the frames, and the CPU and wall seconds per clip."""
    out, cpu, wall = [], [], []
    for c in clips:
        started, started_cpu = time.perf_counter(), time.process_time()
        out.append(decode(c["path"], c["cut"]))
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    return sum(cpu), out, cpu, wall


def _reencoded_cockatoo(folder: Path, frames: int) -> str:
    """The first ``frames`` frames of ``cockatoo.mp4`` encoded by libx264 with its defaults (``medium``)."""
    import av

    path = folder / "cockatoo_x264_medium.mp4"
    with av.open(str(runs.MEDIA / "cockatoo.mp4")) as inp, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=20)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "medium"}
        for _, frame in zip(range(frames), inp.decode(video=0)):
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


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


DECODERS = {"get_batch": _before, "decord, clean keyframes": _decord_clean, "now: decode_video": _now}


def run(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        reencoded = _reencoded_cockatoo(Path(tmp), 280)
        clips = runs.clips(1 if quick else 16)
        clips += [{"path": reencoded, "cut": c["cut"]} for c in runs.clips(2 if quick else 16)[1::3]]
        _timed(_now, clips[:3])  # imports and first opens outside the timings
        results: dict[str, list[Any]] = {name: [] for name in DECODERS}
        for _ in range(1 if quick else TRIES):
            for name, decode in DECODERS.items():
                results[name].append(_timed(decode, clips))
        best = {name: min(tries, key=lambda r: r[0]) for name, tries in results.items()}
    before_frames, now_frames = best["get_batch"][1], best["now: decode_video"][1]
    if not all(np.array_equal(a, b) for a, b in zip(best["decord, clean keyframes"][1], now_frames)):
        raise AssertionError("the job's decoder and decord with the clean-keyframe rule give different frames")
    changed = [i for i, (a, b) in enumerate(zip(before_frames, now_frames)) if not np.array_equal(a, b)]
    fixed = sum(_sequential_equal(clips[i]["path"], clips[i]["cut"], now_frames[i]) for i in changed)
    if fixed != len(changed):
        raise AssertionError(f"{len(changed) - fixed} changed clips differ from a sequential decode")
    rows = []
    groups = {f"{len(runs.clips(1 if quick else 16))} bundled (all)": lambda c: c["path"] != reencoded}
    groups |= {name: (lambda c, n=name: c["path"].endswith("/" + n)) for name in runs.VIDEOS}
    groups["cockatoo re-encoded, x264 medium"] = lambda c: c["path"] == reencoded
    for label, member in groups.items():
        picked = [i for i, c in enumerate(clips) if member(c)]
        for name, (_, _, cpu, wall) in best.items():
            rows.append({
                "clips": f"{len(picked)} {label}" if "bundled" not in label else label, "decoder": name,
                "cpu_ms_per_clip": 1000 * sum(cpu[i] for i in picked) / len(picked),
                "wall_ms_per_clip": 1000 * sum(wall[i] for i in picked) / len(picked),
                "cpu_vs_get_batch": sum(cpu[i] for i in picked) / sum(best["get_batch"][2][i] for i in picked),
                "changed": sum(i in changed for i in picked) if name != "get_batch" else "",
            })  # fmt: skip
    metrics = {
        "decode_cpu_now_vs_get_batch": best["now: decode_video"][0] / best["get_batch"][0],
        "decode_cpu_now_vs_decord_clean": best["now: decode_video"][0] / best["decord, clean keyframes"][0],
        "decode_seek_changed": len(changed),
    }
    return {"rows": rows, "metrics": metrics}
