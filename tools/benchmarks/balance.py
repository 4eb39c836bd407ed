"""Balance across ranks: wall time of the slowest rank vs the mean rank, per way of splitting the work.

Two parts.

``ddp`` rows: real ``python -m lit_features predict`` runs (CPU DDP over gloo: ManifestDataModule, its sampler,
FeatureWriter) on a manifest of clips with skewed lengths (log-normal, 16..3000 frames) and three resolutions.
The extractor is a stand-in workload defined here: it sleeps a time proportional to the clip's frames x pixels,
times a per-clip factor the splitter never sees (log-normal, sigma 0.3: the manifest's estimate is not the real
cost). Sleeping keeps the measurement meaningful with more ranks than CPU cores. Each rank records when its
predict loop started and when its last batch finished; the rows compare the slowest rank with the mean.

``sim`` rows: the same split functions on a synthetic large manifest (64 ranks), no processes: the sum of the
true costs per rank, for the scale plan in docs/scale_out.md.

Orders: ``manifest`` (manifest order dealt round-robin: Lightning's stock split), ``cost`` (most expensive
first, round-robin: the previous default) and ``balanced`` (most expensive first, each to the least-loaded rank).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lit_features.data.datamodule import assign_to_ranks
from lit_features.data.dataset import Batch, Prepared
from lit_features.data.preprocess import MediaLoader, Preprocessor
from lit_features.data.sample import Sample
from lit_features.extractors.base import FeatureExtractor

ROOT = Path(__file__).resolve().parents[2]
ORDERS = ("manifest", "cost", "balanced")
RESOLUTIONS = ((360, 640), (720, 1280), (1080, 1920))


@dataclasses.dataclass
class CutLength(Preprocessor):
    """No decoding: the model input is the clip's frame count (the workload below only needs its entry)."""

    required_fields = ("path", "cut")

    def __call__(self, sample: Sample, media: MediaLoader) -> Prepared:
        start, end = sample.cut  # type: ignore[misc]
        return Prepared(torch.tensor([float(end - start)]))


class SleepWorkload(FeatureExtractor):
    """Stand-in extractor: sleeps each entry's ``bench_seconds`` and records this rank's busy span.

    Args:
        model_path: any existing file (identifies the "weights" in the store fingerprint).
        timing_dir: where ``rank-<r>.json`` (start, end, samples) is written at the end of predict.
    """

    def __init__(self, model_path: str, timing_dir: str, dtype: str = "float32"):
        super().__init__(model_path, dtype)
        self.timing_dir = timing_dir
        self._start = self._end = 0.0
        self._samples = 0

    def preprocessor(self) -> CutLength:
        return CutLength()

    def load_model(self) -> torch.nn.Module:
        return torch.nn.Identity()

    def on_predict_start(self) -> None:
        self._start = self._end = time.time()

    def extract(self, inputs: Any, batch: Batch) -> list[dict[str, torch.Tensor]]:
        for meta in batch.metas:
            time.sleep(meta["entry"]["bench_seconds"])
        self._end = time.time()
        self._samples += len(batch)
        return [{"frames": x.reshape(1)} for x in inputs]

    def on_predict_end(self) -> None:
        os.makedirs(self.timing_dir, exist_ok=True)
        row = {"rank": self.global_rank, "start": self._start, "end": self._end, "samples": self._samples}
        Path(self.timing_dir, f"rank-{self.global_rank}.json").write_text(json.dumps(row))


def skewed_clips(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Clip lengths, resolutions and the hidden true-cost factor (what the estimate gets wrong)."""
    rng = random.Random(seed)
    clips = []
    for _ in range(n):
        frames = int(min(max(rng.lognormvariate(math.log(150), 1.0), 16), 3000))
        height, width = rng.choice(RESOLUTIONS)
        clips.append({"frames": frames, "height": height, "width": width, "noise": rng.lognormvariate(0.0, 0.3)})
    return clips


def estimated(clip: dict[str, Any]) -> float:
    return float(clip["frames"] * clip["height"] * clip["width"])


def split_loads(clips: list[dict[str, Any]], world_size: int, order: str) -> list[float]:
    """True cost per rank when the data module's split functions assign ``clips`` (manifest order given)."""
    if order == "manifest":
        ordered = list(clips)
    else:
        ordered = sorted(clips, key=lambda c: -estimated(c))
    how = "greedy" if order == "balanced" else "strided"
    shares = assign_to_ranks([estimated(c) for c in ordered], world_size, how)
    return [sum(estimated(ordered[i]) * ordered[i]["noise"] for i in share) for share in shares]


def write_manifest(clips: list[dict[str, Any]], folder: Path, seconds_total: float) -> Path:
    scale = seconds_total / sum(estimated(c) * c["noise"] for c in clips)
    entries = []
    for i, clip in enumerate(clips):
        entries.append(
            {
                "path": "media/v_GGSY1Qvo990.mp4",  # never decoded; a distinct cut makes a distinct key
                "num_frames": i + clip["frames"],
                "cut": [i, i + clip["frames"]],
                "resolution": {"height": clip["height"], "width": clip["width"]},
                "bench_seconds": round(estimated(clip) * clip["noise"] * scale, 4),
            }
        )
    path = folder / "skewed.json"
    path.write_text(json.dumps(entries))
    return path


def run_ddp(manifest: Path, order: str, world_size: int, folder: Path) -> dict[str, Any]:
    """One CLI predict run; per-rank busy spans from the workload's timing files."""
    out, timing = folder / f"store-{order}", folder / f"timing-{order}"
    config = {
        "model": {
            "class_path": "tools.benchmarks.balance.SleepWorkload",
            "init_args": {"model_path": str(Path(__file__).resolve()), "timing_dir": str(timing)},
        },
        "data": {
            "class_path": "lit_features.data.datamodule.ManifestDataModule",
            "init_args": {
                "manifest": str(manifest),
                "root": str(ROOT / "samples"),
                "order": order,
                "batch_size": 1,
                "num_workers": 0,
                "sandbox": False,
            },
        },
        "writer": {"output_dir": str(out), "fsync": False},
        "trainer": {
            "accelerator": "cpu",
            "devices": world_size,
            "strategy": "ddp",
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }
    config_path = folder / f"{order}.json"
    config_path.write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "lit_features", "predict", "--config", str(config_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"balance run ({order}) failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(timing.glob("rank-*.json"))]
    spans = [r["end"] - r["start"] for r in ranks]
    written = sum(1 for p in (out / "index").glob("rank-*.jsonl") for _ in p.open())
    return {
        "part": "ddp",
        "order": order,
        "ranks": world_size,
        "clips": written,
        "samples_per_rank": "/".join(str(r["samples"]) for r in ranks),
        "slowest_rank_s": max(spans),
        "mean_rank_s": statistics.fmean(spans),
        "slowest_over_mean": max(spans) / statistics.fmean(spans),
        "idle_share": 1 - statistics.fmean(spans) / max(spans),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Rows for each order: measured DDP runs, then the split arithmetic at 64 ranks."""
    world_size, n_clips, seconds_total = (2, 24, 4.0) if quick else (4, 160, 24.0)
    rows: list[dict[str, Any]] = []
    clips = skewed_clips(n_clips, seed=1)
    with tempfile.TemporaryDirectory(prefix="lit_features_balance_") as tmp:
        manifest = write_manifest(clips, Path(tmp), seconds_total)
        for order in ORDERS:
            rows.append(run_ddp(manifest, order, world_size, Path(tmp)))
    sim_ranks = 64
    for n in (6_400, 100_000) if quick else (6_400, 100_000, 1_000_000):
        sim = skewed_clips(n, seed=2)
        for order in ORDERS:
            loads = split_loads(sim, sim_ranks, order)
            rows.append(
                {
                    "part": "sim",
                    "order": order,
                    "ranks": sim_ranks,
                    "clips": n,
                    "slowest_over_mean": max(loads) / statistics.fmean(loads),
                    "idle_share": 1 - statistics.fmean(loads) / max(loads),
                }
            )
    ddp = {r["order"]: r for r in rows if r["part"] == "ddp"}
    metrics = {
        "balance_slowest_over_mean_manifest": ddp["manifest"]["slowest_over_mean"],
        "balance_slowest_over_mean_cost": ddp["cost"]["slowest_over_mean"],
        "balance_slowest_over_mean_balanced": ddp["balanced"]["slowest_over_mean"],
    }
    return {"rows": rows, "metrics": metrics}
