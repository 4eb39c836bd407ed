"""Cost of the W&B dashboards: the quickstart job with and without ``configs/logger/wandb.yaml``, side by side.

Each variant runs the real command line (``python -m lit_features predict``, tiny SigLIP stand-in, the bundled
media repeated) in a fresh process, alternating, W&B offline. Reported: the predict throughput the run summary
measures (from predict start to the writer drained: what the live callback could slow down), and the whole
command's wall time (adds W&B's start-up and finish). Variants: no logger; the overlay at its default 30 s
interval; the overlay logging at every batch (``interval_s: 0``, the worst case).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {
    "no logger": [],
    "W&B overlay (30 s)": ["--config", "configs/logger/wandb.yaml"],
    "W&B overlay (every batch)": [
        "--config",
        "configs/logger/wandb.yaml",
        "--trainer.callbacks.init_args.interval_s",
        "0",
    ],
}


def _manifest(tmp: Path, repeats: int) -> Path:
    """The quickstart's media: its images once, each of its videos ``repeats`` times with distinct cuts."""
    entries = json.loads((ROOT / "samples" / "quickstart.json").read_text())
    media = sorted({str(ROOT / "samples" / e["path"]) for e in entries})
    rows = [{"path": p} for p in media if not p.endswith(".mp4")]
    rows += [{"path": p, "cut": [i, 30 + i]} for i in range(repeats) for p in media if p.endswith(".mp4")]
    manifest = tmp / "manifest.json"
    manifest.write_text(json.dumps(rows))
    return manifest


def _once(tmp: Path, name: str, extra: list[str], model: Path, manifest: Path, run: int) -> dict[str, float]:
    out = tmp / f"store-{run}"
    args = [
        sys.executable, "-m", "lit_features", "predict", "--config", "configs/quickstart.yaml", *extra,
        "--model.model_path", str(model), "--data.manifest", str(manifest), "--writer.output_dir", str(out),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    if extra:
        args += ["--trainer.logger.init_args.save_dir", str(tmp / f"wandb-{run}")]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DATA_DIR": str(tmp / "wandb-data")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    summary = json.loads((out / "run_summary.json").read_text())
    return {"wall_s": wall, "samples_per_s": summary["samples_per_s"], "written": summary["written"]}


def run(quick: bool = False) -> dict[str, Any]:
    from tools.tiny_models.hf_vision import make_siglip

    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = make_siglip(tmp / "models")
        manifest = _manifest(tmp, 2 if quick else 4)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        n = 0
        for _ in range(rounds):  # alternate, so machine load drifts over every variant alike
            for name, extra in VARIANTS.items():
                results[name].append(_once(tmp, name, extra, model, manifest, n))
                n += 1
    base = statistics.median(r["samples_per_s"] for r in results["no logger"])
    base_wall = statistics.median(r["wall_s"] for r in results["no logger"])
    rows = []
    for name, runs in results.items():
        rate = statistics.median(r["samples_per_s"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        rows.append(
            {
                "variant": name,
                "samples": int(runs[0]["written"]),
                "predict samples/s (median)": rate,
                "vs no logger": rate / base,
                "command wall s (median)": wall,
                "wall vs no logger": wall / base_wall,
                "runs": len(runs),
            }
        )
    return {
        "rows": rows,
        "metrics": {
            "dashboards_predict_rate_ratio": rows[1]["vs no logger"],
            "dashboards_every_batch_rate_ratio": rows[2]["vs no logger"],
        },
    }
