"""Lip-embedding precompute throughput (clips/s) and what the cache saves a training batch.

Rows, on the tools/ IIANet-style dataset with its clips repeated (``quick``: x1 = 8 clips, else x4 = 32):

- ``naive loop``: the upstream script's shape, one clip at a time in one process (load, preprocess, forward,
  ``np.savez_compressed``).
- ``pipeline``: ``lit_features predict --config configs/lip_resnet18.yaml`` in-process (decode sandbox, 2
  DataLoader workers, atomic writes, index), start-up and model load included.
- ``training batch``: one batch of up to 8 (mixture, speaker) rows through ``LipVisualDataset`` + ``collate_visual``
  + ``CachedLipEncoder``, all cached vs all uncached (the fallback runs the front end).

Weights are the random stand-in (same architecture and cost as the real checkpoint).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch


def _replicate(root: Path, split_root: Path, copies: int) -> list[Path]:
    """Copies of every mouth clip listed in a fresh ``tr`` split (``cv``/``tt`` emptied): the work list."""
    mouths = sorted(p for p in (root / "mouths").glob("*.npz") if not p.stem.endswith("_embedding"))
    clips = []
    for c in range(copies):
        for mouth in mouths:
            clips.append(mouth.with_name(f"{mouth.stem}_c{c}.npz"))
            shutil.copy(mouth, clips[-1])
    pairs = list(zip(clips[0::2], clips[1::2]))
    rows = {
        "mix": [["mix.wav", 32000] for _ in pairs],
        "s1": [["s1.wav", str(a), 32000] for a, _ in pairs],
        "s2": [["s2.wav", str(b), 32000] for _, b in pairs],
    }
    for sub in ("tr", "cv", "tt"):
        for kind, kind_rows in rows.items():
            (split_root / sub / f"{kind}.json").write_text(json.dumps(kind_rows if sub == "tr" else []))
    return clips


def _clear(clips: list[Path]) -> None:
    for clip in clips:
        clip.with_name(clip.stem + "_embedding.npz").unlink(missing_ok=True)


def run(quick: bool = False) -> dict[str, Any]:
    from lit_features.cli import run_cli
    from lit_features.models.lip_resnet import embed_mouth_clips, load_lip_frontend, preprocess_mouth_frames
    from lit_features.training.iianet import CachedLipEncoder, LipVisualDataset, collate_visual, read_speaker_rows
    from tools import make_iianet_dataset
    from tools.tiny_models import lip_resnet18

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        checkpoint = lip_resnet18.make(tmp_path / "models")[0]
        split_root = make_iianet_dataset.make(tmp_path / "data")
        clips = _replicate(tmp_path / "data", split_root, 1 if quick else 4)

        model = load_lip_frontend(checkpoint)
        started = time.perf_counter()
        with torch.no_grad():
            for clip in clips:
                frames = np.load(clip)["data"]
                embedding = embed_mouth_clips(model, [preprocess_mouth_frames(frames)])[0]
                np.savez_compressed(clip.with_name(clip.stem + "_embedding.npz"), embedding=embedding.numpy())
        naive = time.perf_counter() - started
        rows.append({"stage": "naive loop", "clips": len(clips), "seconds": naive, "clips_per_s": len(clips) / naive})

        _clear(clips)
        args = ["predict", "--config", "configs/lip_resnet18.yaml", "--model.model_path", str(checkpoint)]
        args += ["--data.split_root", str(split_root), "--data.split", "train"]
        args += ["--writer.output_dir", str(tmp_path / "store"), "--trainer.enable_progress_bar", "false"]
        started = time.perf_counter()
        with mock.patch.object(sys, "argv", ["lit_features"]):
            run_cli(args)
        pipeline = time.perf_counter() - started
        written = sum(1 for c in clips if c.with_name(c.stem + "_embedding.npz").exists())
        rows.append({"stage": "pipeline", "clips": written, "seconds": pipeline, "clips_per_s": written / pipeline})

        # One batch shares T: the 2 s (T = 50) clips, as IIANet trains on fixed-length segments.
        batch_rows = [r for r in read_speaker_rows(split_root, "train") if np.load(r.mouth)["data"].shape[0] == 50]
        batch_rows = batch_rows[:8]
        encoder = CachedLipEncoder(model)
        timings = {}
        for cached in (True, False):
            started = time.perf_counter()
            batch = collate_visual([item for item in LipVisualDataset(batch_rows, use_precomputed=cached)])
            encoder(batch)
            timings[cached] = time.perf_counter() - started
            label = "training batch, cached" if cached else "training batch, fallback"
            rows.append({"stage": label, "clips": len(batch_rows), "seconds": timings[cached]})
    return {
        "rows": rows,
        "metrics": {
            "lip_precompute_clips_per_s": rows[1]["clips_per_s"],
            "lip_pipeline_vs_naive": rows[1]["clips_per_s"] / rows[0]["clips_per_s"],
            "lip_cached_vs_fallback_speedup": timings[False] / timings[True],
        },
    }
