"""Quickstart job: ``lit_features predict`` against the seed-style loop, whole process and steady state, and the floor.

The workload: 48 clips cut from the bundled videos (320x240 and 1280x720, three videos, every repeat cut
differently), 8 uniformly sampled frames each, the tiny SigLIP stand-in, in two variants: ``native`` (the
quickstart as shipped: frames at their own size, so the 720p clips make the model the larger cost) and
``decode_bound`` (``--model.max_pixels 65536``: frames downscaled first, so decoding dominates, as with a fast
GPU encoder). ``--quick``: 3 clips, the decode-bound variant only, one run each (a smoke run).

Rows per variant, all measured in this one run, side by side (the machine may be shared: compare ratios):
- ``seed-style loop``: ``tools/seed_loop.py`` in its own process: decord ``get_batch`` of only the sampled
  frames, one clip at a time, the same preprocessing and model. Its features are checked equal, bit for bit,
  to the pipeline's (``features_equal``), except where the loop's ``get_batch`` seeks to a keyframe that is not
  a clean random-access point and gets wrong frames (checked per such clip; not counted as equal).
- ``pipeline``: ``python -m lit_features predict --config configs/quickstart.yaml`` in its own process
  (defaults; on one device it goes through the clips in manifest order, as the loop does).
- ``floor``: the CPU-seconds of decoding (the job's decoder, one thread, in one process: the sampled frames
  right, at the least decoding known), transforms and the model (the seed loop's, one torch thread) for the
  same clips, divided by the cores available: what the machine cannot beat. The label shows the seed loop's
  ``get_batch`` decoding too (cheaper on clips where it seeks to an unclean keyframe and gets wrong frames).
``whole_s`` is the process as a user times it; ``steady_s`` the same number of clips at the rate between
the first and the last finished clip (batch); ``startup_s`` the difference. Each run is repeated (alternating,
best kept; once with ``--quick``). Start-up rows split the pipeline's fixed cost into phases, next to the
seconds an interpreter needs to import what each side imports.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tools.benchmarks import _quickstart_runs as runs

VARIANTS = {"native": None, "decode_bound": 65536}
TRIES = 2  # alternating runs of each, the best kept
# What tools/seed_loop.py imports (the transformers model class pulls in most of the cost, not the package).
SEED_IMPORTS = (
    "import decord, numpy, torch, torch.nn.functional, safetensors.torch; from transformers import SiglipVisionModel"
)


def _floor(model: Path, manifest: Path, out: Path, max_pixels: int | None) -> tuple[float, dict[str, float]]:
    result = runs.run_seed(model, manifest, out, max_pixels, single_thread=True)
    stages = result["timings"]["stages"]
    cpu = {s: stages[s]["cpu_s"] for s in ("transform", "model")}
    cpu["decode"] = runs.decoder_cpu_seconds(manifest)
    floor_s = sum(cpu.values()) / len(os.sched_getaffinity(0))
    return floor_s, cpu | {"seed_decode": stages["decode"]["cpu_s"]}


def run(quick: bool = False) -> dict[str, Any]:
    from tools.tiny_models.hf_vision import make_siglip

    repeats, tries = (1, 1) if quick else (16, TRIES)
    variants = {"decode_bound": VARIANTS["decode_bound"]} if quick else VARIANTS
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "load_before": os.getloadavg()[0]}
    startup_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model = make_siglip(tmp / "models")
        manifest = runs.write_manifest(tmp, repeats)
        for variant, max_pixels in variants.items():
            seeds, pipes = [], []
            for attempt in range(tries):  # alternate, keep the best of each: other work may share the machine
                seed_out, pipe_out = tmp / f"{variant}-seed{attempt}", tmp / f"{variant}-pipe{attempt}"
                seeds.append(runs.run_seed(model, manifest, seed_out, max_pixels) | {"out": seed_out})
                pipes.append(runs.run_pipeline(model, manifest, pipe_out, max_pixels) | {"out": pipe_out})
            seed = min(seeds, key=lambda r: r["whole_s"])
            pipe = min(pipes, key=lambda r: r["whole_s"])
            equal = runs.check_equal(manifest, pipe["out"], seed["out"])
            floor_s, floor_cpu = _floor(model, manifest, tmp / f"{variant}-floor", max_pixels)
            n = pipe["count"]
            print(f"{variant}: seed {seed['whole_s']:.1f} s, pipeline {pipe['whole_s']:.1f} s, floor {floor_s:.1f} s",
                  flush=True)  # fmt: skip
            rows += [
                {"variant": variant, "run": "seed-style loop", "clips": n, "whole_s": seed["whole_s"],
                 "steady_s": seed["steady_s"], "startup_s": seed["startup_s"]},
                {"variant": variant, "run": "pipeline (lit_features predict)", "clips": n, "whole_s": pipe["whole_s"],
                 "steady_s": pipe["steady_s"], "startup_s": pipe["startup_s"],
                 "whole_vs_seed": seed["whole_s"] / pipe["whole_s"],
                 "steady_vs_seed": seed["steady_s"] / pipe["steady_s"],
                 "steady_vs_floor": pipe["steady_s"] / floor_s, "features_equal": f"{equal}/{n}"},
                {"variant": variant, "run": "floor: CPU-s (decode {decode:.1f} + transform {transform:.1f} + model "
                 "{model:.1f}) / cores; seed get_batch decode {seed_decode:.1f}".format(**floor_cpu), "clips": n,
                 "steady_s": floor_s},
            ]  # fmt: skip
            metrics[f"{variant}_whole_vs_seed"] = seed["whole_s"] / pipe["whole_s"]
            metrics[f"{variant}_steady_vs_seed"] = seed["steady_s"] / pipe["steady_s"]
            metrics[f"{variant}_steady_vs_floor"] = pipe["steady_s"] / floor_s
            metrics[f"{variant}_startup_minus_seed_s"] = pipe["startup_s"] - seed["startup_s"]
            if variant == "decode_bound":  # where the fixed costs go, next to the seed-style loop's
                seed_timings = seed["timings"]
                startup_rows += [
                    {"variant": variant, "run": "seed-style loop", "phase": "imports (torch, transformers, decord)",
                     "seconds": seed_timings["import_s"]},
                    {"variant": variant, "run": "seed-style loop", "phase": "model load",
                     "seconds": seed_timings["load_s"]},
                ]  # fmt: skip
                startup_rows += [
                    {"variant": variant, "run": "pipeline", "phase": phase, "seconds": seconds}
                    for phase, seconds in pipe["phases"].items()
                ]
        startup_rows += [
            {"run": "python -c 'import ...' (whole process)", "phase": "seed: torch, decord, SiglipVisionModel",
             "seconds": runs.seconds_to_import(SEED_IMPORTS)},
            {"run": "python -c 'import ...' (whole process)", "phase": "pipeline: lit_features.cli + extractor",
             "seconds": runs.seconds_to_import("import lit_features.cli, lit_features.extractors.vision_tower")},
        ]  # fmt: skip
    metrics["load_after"] = os.getloadavg()[0]
    return {"rows": rows, "tables": {"start-up": startup_rows}, "metrics": metrics}
