"""Decoder scaling (``--model.decoder_scaling``): per-clip CPU and wall time of decoding + transforms, off and on,
and how far the inputs and features move.

Two jobs, each through its own preprocessor as a DataLoader worker runs it (a persistent decode sandbox child,
frames back through shared memory, one torch thread):

- ``quickstart`` (decode-bound): ``vision_tower`` with ``--model.max_pixels 65536`` and the tiny SigLIP stand-in,
  on the quickstart benchmark's clips (48 cuts of the bundled 1280x720 and two 320x240 videos, 8 uniform frames
  each; 3 with ``--quick``). On, a 1280x720 clip is decoded at 384x682 (twice the 192x341 target); 320x240 is
  below twice its target and decodes as with the option off (the probe of its size is the only extra cost).
  A third variant, ``on, 1x target`` (not an option: the rule with ``headroom=1``), shows why the decoder stops
  at twice the target.
- ``wan 480x832``: FlashI2V's settings (``configs/flashi2v_features.yaml``: 49 frames at 16 fps, cover + crop to
  480x832) with the tiny Wan stand-in, on 8 cuts of the two longer bundled videos (2 with ``--quick``;
  ``realshort.mp4`` is shorter than 49 frames at 16 fps). On, 1280x720 is decoded at 480x854; 320x240 would be
  upscaled, which stays with the job's own resize.

A second table times whole ``python -m lit_features predict`` runs of the decode-bound quickstart (as
``core_pipeline`` runs them: 2 DataLoader workers, manifest order), off and on, best of 2 alternating runs.

Off and on alternate clip by clip (the machine may be shared), 3 tries each (1 with ``--quick``): the best
wall time and the mean CPU time are kept. CPU: this process (transforms, mapping the frames) plus the decoder
child, all its threads (decoding, scaling, copying to shared memory; ``/proc/<pid>/stat``). ``scaled``: clips
the decoder scaled. The difference of ``on`` from ``off``: pixels (in 1/255, max and mean over the clips), and
the cosine of the stand-ins' outputs (minimum over the clips; Wan: VAE latents of each clip's first 5 frames, 1
with ``--quick``).

    OMP_NUM_THREADS=1 python tools/benchmark.py --only decoder_scaling [--quick]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tools.benchmarks import _quickstart_runs as runs

MAX_PIXELS = 65536
TRIES = 3
WAN = dict(num_frames=49, target_fps=16.0, height=480, width=832, size_rule="flashi2v", dtype="float32")
WAN_CLIPS = [
    ("cockatoo.mp4", [0, 100]),
    ("v_GGSY1Qvo990.mp4", [0, 100]),
    ("cockatoo.mp4", [100, 200]),
    ("v_GGSY1Qvo990.mp4", [100, 200]),
    ("cockatoo.mp4", [150, 250]),
    ("v_GGSY1Qvo990.mp4", [200, 300]),
    ("cockatoo.mp4", [180, 280]),
    ("v_GGSY1Qvo990.mp4", [250, 355]),
]


def _child_cpu_s(media: Any) -> float:
    """CPU seconds of the decode sandbox's child so far, all its threads (decord decodes in its own), including
    those that ended (``/proc/<pid>/stat``, in clock ticks); 0 before it starts."""
    proc = media.sandbox._proc  # the benchmark reads the child's clock; the package never needs its pid
    if proc is None:
        return 0.0
    with open(f"/proc/{proc.pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _timed(prep: Any, sample: Any, media: Any) -> tuple[Any, float, float]:
    """(prepared, CPU s of both processes, wall s) of one preprocessor call."""
    child, cpu, wall = _child_cpu_s(media), time.process_time(), time.perf_counter()
    out = prep(sample, media)
    wall = time.perf_counter() - wall
    return out, time.process_time() - cpu + _child_cpu_s(media) - child, wall


def _measure(variants: dict[str, Any], samples: list[Any], media: Any, tries: int) -> dict[str, list[dict]]:
    """Per variant, per clip: the prepared sample, the mean CPU seconds of ``tries`` (the child's clock ticks in
    10 ms: a minimum would pick the low roundings) and the best wall seconds."""
    for prep in variants.values():  # imports, the decoder child and the page cache outside the timings
        prep(samples[0], media)
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for sample in samples:
        kept: dict[str, dict] = {}
        for attempt in range(tries):
            order = list(variants) if attempt % 2 == 0 else list(reversed(variants))
            for name in order:
                out, cpu, wall = _timed(variants[name], sample, media)
                clip = kept.setdefault(name, {"out": out, "cpu": 0.0, "wall": wall, "sample": sample})
                clip["cpu"] += cpu / tries
                clip["wall"] = min(clip["wall"], wall)
        for name in variants:
            results[name].append(kept[name])
    return results


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _rows(job: str, results: dict[str, list[dict]], pixels: Any, feature: Any) -> list[dict[str, Any]]:
    """One row per variant and video (and all videos): ms per clip, ratios to ``off``, the difference from it."""
    rows = []
    names = sorted({Path(r["sample"].source).name for r in results["off"]}, reverse=True)
    for video in (None, *names):
        picked = [i for i, r in enumerate(results["off"]) if video is None or r["sample"].source.endswith(video)]
        off_cpu = sum(results["off"][i]["cpu"] for i in picked)
        off_wall = sum(results["off"][i]["wall"] for i in picked)
        for variant, clips in results.items():
            cpu, wall = sum(clips[i]["cpu"] for i in picked), sum(clips[i]["wall"] for i in picked)
            row: dict[str, Any] = {
                "job": job, "clips": f"{len(picked)} {video or '(all)'}", "variant": variant,
                "cpu_ms_per_clip": 1000 * cpu / len(picked), "wall_ms_per_clip": 1000 * wall / len(picked),
                "cpu_vs_off": cpu / off_cpu, "wall_vs_off": wall / off_wall,
                "scaled": sum("decoded_size" in clips[i]["out"].meta for i in picked),
            }  # fmt: skip
            if variant != "off":
                diffs = [pixels(results["off"][i]["out"], clips[i]["out"]) for i in picked]
                row["pixel_max_255"] = max(float(d.max()) for d in diffs) * 255
                row["pixel_mean_255"] = sum(float(d.mean()) for d in diffs) / len(diffs) * 255
                row["cosine_min"] = f"{min(feature(results['off'][i]['out'], clips[i]['out']) for i in picked):.7f}"
            rows.append(row)
    return rows


def _quickstart(models: Path, media: Any, quick: bool) -> list[dict[str, Any]]:
    from lit_features.data.decoder_scaling import WithinPixels
    from lit_features.data.manifest import read_manifests
    from lit_features.extractors.vision_tower import VisionTowerFeatures

    def extractor(**options: Any) -> VisionTowerFeatures:
        return VisionTowerFeatures(str(models), dtype="float32", max_pixels=MAX_PIXELS, **options)

    model = extractor()
    model.configure_model()
    exact = extractor(decoder_scaling=True).preprocessor()
    exact.decoder_scale = lambda: WithinPixels(MAX_PIXELS, headroom=1)  # type: ignore[method-assign]
    variants = {"off": model.preprocessor(), "on": extractor(decoder_scaling=True).preprocessor()}
    variants["on, 1x target"] = exact
    with tempfile.TemporaryDirectory(prefix="decoder-scaling-") as tmp:
        samples = read_manifests(str(runs.write_manifest(Path(tmp), 1 if quick else 16)))
        results = _measure(variants, samples, media, 1 if quick else TRIES)
    std = torch.tensor(model.preprocessor().std).view(1, 3, 1, 1)

    def pixels(a: Any, b: Any) -> torch.Tensor:
        return (a.inputs - b.inputs).abs() * std

    def feature(a: Any, b: Any) -> float:
        with torch.no_grad():
            return _cosine(model.tower_features(a.inputs), model.tower_features(b.inputs))

    return _rows(f"quickstart max_pixels {MAX_PIXELS}", results, pixels, feature)


def _wan(models: Path, media: Any, quick: bool) -> list[dict[str, Any]]:
    from lit_features.data.sample import Sample
    from lit_features.extractors.wan import WanTrainingFeatures

    model = WanTrainingFeatures(str(models), **WAN)
    model.configure_model()
    on = WanTrainingFeatures(str(models), decoder_scaling=True, **WAN)
    variants = {"off": model.preprocessor(), "on": on.preprocessor()}
    samples = [
        Sample(key=f"{i}", source=str(runs.MEDIA / name), entry={"path": name, "cap": "a clip", "cut": cut})
        for i, (name, cut) in enumerate(WAN_CLIPS[: 2 if quick else len(WAN_CLIPS)])
    ]
    results = _measure(variants, samples, media, 1 if quick else TRIES)
    frames = 1 if quick else 5

    def pixels(a: Any, b: Any) -> torch.Tensor:
        return (a.inputs["video"] - b.inputs["video"]).abs() / 2  # [-1, 1] -> [0, 1] units

    def feature(a: Any, b: Any) -> float:
        with torch.no_grad():
            return _cosine(*(model.encode_video(p.inputs["video"][None, :, :frames]) for p in (a, b)))

    return _rows("wan 480x832 (flashi2v)", results, pixels, feature)


def _whole_runs(siglip: Path, quick: bool) -> list[dict[str, Any]]:
    """``python -m lit_features predict`` of the decode-bound quickstart (as ``core_pipeline`` runs it: 2 workers,
    manifest order), off and on, alternating, best of 2 each (1 with ``--quick``)."""
    best: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="decoder-scaling-runs-") as tmp:
        manifest = runs.write_manifest(Path(tmp), 1 if quick else 16)
        for attempt in range(1 if quick else 2):
            for name in ("off", "on") if attempt % 2 == 0 else ("on", "off"):
                extra = ["--model.decoder_scaling", "true"] if name == "on" else []
                got = runs.run_pipeline(siglip, manifest, Path(tmp) / f"{name}-{attempt}", MAX_PIXELS, extra)
                if name not in best or got["whole_s"] < best[name]["whole_s"]:
                    best[name] = got
    return [
        {
            "run": f"predict, decoder_scaling {name}",
            "clips": best[name]["count"],
            "whole_s": best[name]["whole_s"],
            "steady_s": best[name]["steady_s"],
            "whole_vs_off": best[name]["whole_s"] / best["off"]["whole_s"],
            "steady_vs_off": best[name]["steady_s"] / best["off"]["steady_s"],
        }  # fmt: skip
        for name in ("off", "on")
    ]


def run(quick: bool = False) -> dict[str, Any]:
    from lit_features.data.decode_sandbox import DecodeSandbox
    from lit_features.data.preprocess import MediaLoader
    from tools.tiny_models import wan as tiny_wan
    from tools.tiny_models.hf_vision import make_siglip

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    media = MediaLoader(DecodeSandbox())
    try:
        with tempfile.TemporaryDirectory(prefix="decoder-scaling-models-") as tmp:
            siglip = make_siglip(Path(tmp))
            wan = tiny_wan.make(Path(tmp))[0]
            rows = _quickstart(siglip, media, quick) + _wan(wan, media, quick)
            media.sandbox.kill()
            whole = _whole_runs(siglip, quick)
    finally:
        media.sandbox.kill()
        torch.set_num_threads(threads)
    metrics = {}
    for row in rows:
        if row["clips"].endswith("(all)") and row["variant"] == "on":
            key = "decoder_scaling_cpu_" + ("quickstart" if row["job"].startswith("quickstart") else "wan")
            metrics[key] = row["cpu_vs_off"]
    metrics["decoder_scaling_whole_quickstart"] = whole[1]["whole_vs_off"]
    return {"rows": rows, "tables": {"whole predict runs, decode-bound quickstart": whole}, "metrics": metrics}
