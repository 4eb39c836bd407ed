"""K video foundation models over one decode (``configs/vfm_multi.yaml``) vs K separate single-model runs.

Tiny stand-ins of the four models (VideoMAE V2, VideoMAE, DINOv2, V-JEPA 2) run on the bundled sample videos
through the real ``predict`` entry point, in this process, with the shipped configs. With tiny models the
time is mostly decoding 48 frames and resizing them (160x240 and 420x630), which one decode shares; with real
ViT-B/L weights on a GPU the model share grows and the gain shrinks toward the decode share.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODELS = {  # label -> (single-model config, weights under the stand-in folder)
    "VideoMAEv2": ("vfm_videomaev2.yaml", "vit_b_k710_dl_from_giant.pth"),
    "VideoMAE": ("vfm_videomae.yaml", "videomae-base"),
    "DINOv2": ("vfm_dinov2.yaml", "dinov2-base"),
    "VJEPA2": ("vfm_vjepa2.yaml", "vjepa2-vitl-fpc64-256"),
}


def _predict(args: list[str]) -> float:
    from lit_features.cli import run_cli

    started = time.perf_counter()
    saved, sys.argv = sys.argv, ["lit_features"]
    try:
        run_cli(["predict", *args, "--trainer.enable_progress_bar", "false"])
    finally:
        sys.argv = saved
    return time.perf_counter() - started


def run(quick: bool = False) -> dict[str, Any]:
    """Time one multi-model run and the K single-model runs over the same videos; return rows and the ratio."""
    sys.path[:0] = [str(ROOT)]
    from tools.tiny_models import vfm as tiny_vfm
    from tools.tiny_models import videomae_v2 as tiny_videomae_v2

    names = ["VideoMAEv2", "DINOv2"] if quick else list(MODELS)
    videos = ["v_GGSY1Qvo990.mp4", "realshort.mp4"] + ([] if quick else ["cockatoo.mp4"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        weights = tmp_path / "pretrained_model"
        tiny_vfm.make(weights)
        tiny_videomae_v2.make(weights)
        manifest = tmp_path / "videos.json"
        manifest.write_text(json.dumps([{"path": str(ROOT / "samples" / "media" / v), "cap": v} for v in videos]))
        common = ["--data.manifest", str(manifest)]
        # Imports (transformers model modules, the CLI) are paid once, before any timing.
        import transformers  # noqa: F401
        from transformers import Dinov2Model, VideoMAEModel, VJEPA2Model  # noqa: F401

        import lit_features.cli  # noqa: F401

        multi_times: list[float] = []
        separate: dict[str, float] = {}
        for repeat in range(1 if quick else 2):  # best of the repeats: shared machines are noisy
            multi_times.append(
                _predict(
                    [
                        "--config",
                        str(ROOT / "configs" / "vfm_multi.yaml"),
                        "--model.models",
                        json.dumps(names),
                        "--model.model_root",
                        str(weights),
                        "--writer.output_dir",
                        str(tmp_path / f"multi{repeat}"),
                        *common,
                    ]
                )
            )
            for name in names:
                config, path = MODELS[name]
                seconds = _predict(
                    [
                        "--config",
                        str(ROOT / "configs" / config),
                        "--model.model_path",
                        str(weights / path),
                        "--writer.output_dir",
                        str(tmp_path / f"single{repeat}" / name),
                        *common,
                    ]
                )
                separate[name] = min(seconds, separate.get(name, seconds))
    multi = min(multi_times)
    total = sum(separate.values())
    rows = [
        {
            "mode": "one decode, K models",
            "models": len(names),
            "videos": len(videos),
            "decodes": len(videos),
            "s": multi,
        },
        {
            "mode": "K separate runs",
            "models": len(names),
            "videos": len(videos),
            "decodes": len(videos) * len(names),
            "s": total,
        },
    ]
    rows += [{"mode": f"  separate: {n}", "models": 1, "videos": len(videos), "s": s} for n, s in separate.items()]
    return {"rows": rows, "metrics": {"vfm_separate_over_one_decode": total / multi if multi else 0.0}}
