"""Whole-process runs of the quickstart job for the benchmarks: the seed-style loop and ``lit_features predict``.

Both run as a user runs them (a fresh ``python`` process each, start-up included) on the same manifest and
weights; the wall time is taken from outside. Inside, the seed loop reports each clip's end and the pipeline a
:class:`~tools.benchmarks._phase_clock.PhaseClock` file, from which the steady-state time (per clip, between
the first and the last finished clip, times the number of clips) and the start-up (whole minus steady) follow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MEDIA = ROOT / "samples" / "media"
VIDEOS = ("v_GGSY1Qvo990.mp4", "cockatoo.mp4", "realshort.mp4")  # 320x240 355 frames, 1280x720 280, 320x240 36


def clips(repeats: int) -> list[dict[str, Any]]:
    """``3 * repeats`` entries: every bundled video, each repeat cut differently (start and end move)."""
    entries = []
    for r in range(repeats):
        entries += [
            {"path": str(MEDIA / "v_GGSY1Qvo990.mp4"), "cut": [r * 10, 355 - r * 7]},
            {"path": str(MEDIA / "cockatoo.mp4"), "cut": [r * 8, 280 - r * 5]},
            {"path": str(MEDIA / "realshort.mp4"), "cut": [r, 36]},
        ]
    return entries


def write_manifest(folder: Path, repeats: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "clips.json"
    path.write_text(json.dumps(clips(repeats)))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("OMP_NUM_THREADS", None)  # as a user runs them: every core available to both
    return env


def _steady(ends: list[float], count: int) -> float:
    """Seconds ``count`` clips take at the rate between the first and the last finished one."""
    if len(ends) < 2 or ends[-1] <= ends[0]:
        return float("nan")
    return (ends[-1] - ends[0]) / (len(ends) - 1) * count


def run_seed(model: Path, manifest: Path, out: Path, max_pixels: int | None, single_thread: bool = False) -> dict:
    """Whole-process seconds of ``tools/seed_loop.py`` and its own timings."""
    timings = out.with_suffix(".json")
    args = [sys.executable, str(ROOT / "tools" / "seed_loop.py"), "--model", str(model), "--manifest", str(manifest)]
    args += ["--out", str(out), "--timings", str(timings)]
    args += ["--max-pixels", str(max_pixels)] if max_pixels else []
    args += ["--single-thread"] if single_thread else []
    started = time.time()
    # FFmpeg's warnings about frames before a seek point go to stderr (decord's threaded decoder prints them).
    subprocess.run(args, check=True, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    whole = time.time() - started
    result = json.loads(timings.read_text())
    count = len(result["ends_s"])
    steady = _steady(result["ends_s"], count)
    return {"whole_s": whole, "steady_s": steady, "startup_s": whole - steady, "count": count, "timings": result}


def run_pipeline(model: Path, manifest: Path, out: Path, max_pixels: int | None, extra: list[str] = ()) -> dict:
    """Whole-process seconds of ``python -m lit_features predict --config configs/quickstart.yaml`` and its phases."""
    phases_file = out.parent / f"{out.name}.phases.json"
    args = [sys.executable, "-m", "lit_features", "predict", "--config", str(ROOT / "configs" / "quickstart.yaml")]
    args += ["--model.model_path", str(model), "--data.manifest", str(manifest), "--writer.output_dir", str(out)]
    # Defaults: on one device they go through the clips in manifest order, as the seed loop does, so the steady
    # state (from the first finished batch) covers the same clips on both sides.
    args += ["--trainer.enable_progress_bar", "false"]
    args += ["--trainer.callbacks+=tools.benchmarks._phase_clock.PhaseClock", f"--trainer.callbacks.path={phases_file}"]
    args += ["--model.max_pixels", str(max_pixels)] if max_pixels else []
    args += list(extra)
    started = time.time()
    proc = subprocess.run(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    whole = time.time() - started
    if proc.returncode != 0:
        raise RuntimeError(f"predict failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    stamps = json.loads(phases_file.read_text())
    summary = json.loads((out / "run_summary.json").read_text())
    count = summary["written"]
    # The rate between the first and the last finished batch, for every batch.
    steady = _steady(stamps["batch_ends"], len(stamps["batch_ends"])) if len(stamps["batch_ends"]) > 1 else whole
    phases = {
        "imports and command line": stamps["built"] - started,
        "Lightning set-up, model load, store open": stamps["predict_start"] - stamps["built"],
        "workers + decoders start, first batch": stamps["batch_starts"][0] - stamps["predict_start"],
        "after the last batch (merge, exit)": started + whole - stamps["batch_ends"][-1],
    }
    return {
        "whole_s": whole,
        "steady_s": steady,
        "startup_s": whole - steady,
        "count": count,
        "phases": phases,
        "summary": summary,
    }


def _seed_frames_wrong(path: str, cut: list[float] | None) -> bool:
    """Whether the seed loop's ``get_batch`` gives other frames than the pipeline's decoder for this clip: a
    seek to a keyframe that is not a clean random-access point (the pipeline decodes from a clean one)."""
    import decord
    import numpy as np

    from lit_features.data.media import decode_video
    from lit_features.data.sampling import FrameSampling

    clip = decode_video(path, FrameSampling("uniform", 8), cut, "decord")
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    return not np.array_equal(reader.get_batch(clip.indices).asnumpy(), clip.frames)


def check_equal(manifest: Path, store_dir: Path, seed_dir: Path) -> int:
    """Compare every clip's features (bit for bit); returns how many are equal, raises on a difference that a
    seed-loop seek to an unclean keyframe does not explain (those clips are not counted as equal)."""
    import torch
    from safetensors.torch import load_file

    from lit_features.data.manifest import read_manifests
    from lit_features.store.reader import FeatureStore

    store = FeatureStore(store_dir)
    samples = read_manifests(str(manifest))
    equal = 0
    for position, sample in enumerate(samples):
        ours = store[sample.key]["features"]
        theirs = load_file(str(seed_dir / f"{position:05d}.safetensors"))["features"]
        if ours.shape == theirs.shape and torch.equal(ours, theirs):
            equal += 1
        elif not _seed_frames_wrong(sample.source, sample.cut):
            diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else "shape"
            raise AssertionError(f"{sample.key}: pipeline and seed-style loop features differ (max |diff| {diff})")
    return equal


def decoder_cpu_seconds(manifest: Path) -> float:
    """CPU seconds of the job's decoder (:func:`~lit_features.data.media.decode_video`, one thread) over the
    manifest's clips, in a fresh process (imports and a first open outside the timing)."""
    code = (
        "import json, sys, time\n"
        "from lit_features.data.media import decode_video\n"
        "from lit_features.data.sampling import FrameSampling\n"
        "clips = json.load(open(sys.argv[1]))\n"
        "decode_video(clips[0]['path'], FrameSampling('uniform', 8), clips[0]['cut'])\n"
        "started = time.process_time()\n"
        "for c in clips:\n"
        "    decode_video(c['path'], FrameSampling('uniform', 8), c['cut'])\n"
        "print(time.process_time() - started)\n"
    )
    env = _env() | {"OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", code, str(manifest)]
    proc = subprocess.run(args, check=True, env=env, capture_output=True, text=True)
    return float(proc.stdout.strip().splitlines()[-1])


def seconds_to_import(statement: str) -> float:
    """Whole-process seconds of ``python -c "<statement>"`` (interpreter start included)."""
    started = time.time()
    subprocess.run([sys.executable, "-c", statement], check=True, env=_env())
    return time.time() - started
