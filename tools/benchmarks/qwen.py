"""qwen_hidden benchmark: samples/s with the tiny Qwen2.5-VL stand-in, batched vs one prompt at a time.

The same prompts (0, 1 or 2 bundled reference images each, default pixel bounds, BindWeave pre-scaling, a
negative prompt for every sample: two passes; ~40-350 tokens each) are measured side by side in one process,
with one intra-op thread:
- ``model``: ``predict_step`` over batches prepared beforehand (preprocessing excluded), batch 1 vs 8, best of
  2-3 repeats;
- ``pipeline``: ``trainer.predict`` with the ManifestDataModule (2 workers, sandboxed decoding) and the
  FeatureWriter, batch 1 vs 8.
Batched samples are bit-for-bit those of one-at-a-time in fp32 (checked here too), so the ratio is pure speed.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
MEDIA = ROOT / "samples" / "media"
NEGATIVE = "blurry, static, low quality"
PROMPT = "a tabby cat and an astronaut in a white suit walk slowly across the room while the camera pans left"


def _manifest(folder: Path, n: int) -> Path:
    image_sets = [
        [],
        [MEDIA / "chelsea.jpg"],
        [MEDIA / "astronaut.png", MEDIA / "chelsea.jpg"],
        [MEDIA / "astronaut.png"],
    ]
    entries = []
    for i in range(n):
        words = PROMPT.split()[: 6 + (i * 5) % 19]
        entries.append({"key": f"s{i:03d}", "prompt": " ".join(words), "images": [str(p) for p in image_sets[i % 4]]})
    path = folder / "bench.json"
    path.write_text(json.dumps(entries))
    return path


def _model_only(extractor: Any, manifest: Path, batch_size: int, repeats: int) -> tuple[float, dict, int]:
    """Best-of-``repeats`` seconds for predict_step over all prepared batches, the features by key, real tokens."""
    from lit_features.data.dataset import BatchCollator, SampleDataset
    from lit_features.data.decode_sandbox import DecodeSandbox
    from lit_features.data.manifest import read_manifests

    pre = extractor.preprocessor()
    dataset = SampleDataset(read_manifests(manifest), pre, DecodeSandbox(60, enabled=False))
    items = [dataset[i] for i in range(len(dataset))]
    collate = BatchCollator(pre)
    batches = [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    tokens = sum(sum(b.inputs["lengths"]) for b in batches)
    features, best = {}, float("inf")
    with torch.inference_mode():
        extractor.predict_step(batches[0], 0)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            for batch in batches:
                for record in extractor.predict_step(batch, 0).records:
                    features[record.key] = record.tensors["hidden_states"]
            best = min(best, time.perf_counter() - started)
    return best, features, tokens


def _pipeline(extractor: Any, manifest: Path, batch_size: int, out: Path) -> float:
    import lightning.pytorch as pl

    from lit_features.data.datamodule import ManifestDataModule
    from lit_features.store import FeatureWriter

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[FeatureWriter(str(out))],
    )
    data = ManifestDataModule(str(manifest), batch_size=batch_size, num_workers=2)
    started = time.perf_counter()
    trainer.predict(extractor, datamodule=data, return_predictions=False)
    return time.perf_counter() - started


def run(quick: bool = False) -> dict[str, Any]:
    from lit_features.extractors.qwen_hidden import QwenHiddenStates
    from tools.tiny_models.qwen import make_qwen

    n = 16 if quick else 48
    repeats = 2 if quick else 3
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    # One intra-op thread: the tiny model's matrices gain nothing from more, and timings on a shared machine
    # become stable (two spinning threads per process make them swing several-fold).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            model_dir = make_qwen(tmp / "models")
            manifest = _manifest(tmp, n)
            for dtype in ("float32", "bfloat16"):
                extractor = QwenHiddenStates(str(model_dir), dtype=dtype, negative_prompt=NEGATIVE)
                extractor.configure_model()
                results = {}
                for batch_size in (1, 8):
                    seconds, features, tokens = _model_only(extractor, manifest, batch_size, repeats)
                    results[batch_size] = features
                    rows.append(_row("model", dtype, batch_size, n, seconds, tokens))
                speedup = rows[-1]["samples_per_s"] / rows[-2]["samples_per_s"]
                metrics[f"qwen_batched_vs_one_at_a_time_{dtype}"] = speedup
                same = all(torch.equal(results[1][k], results[8][k]) for k in results[1])
                metrics[f"qwen_batched_bit_identical_{dtype}"] = same
            extractor = QwenHiddenStates(str(model_dir), dtype="float32", negative_prompt=NEGATIVE)
            for batch_size in (1, 8):
                seconds = _pipeline(extractor, manifest, batch_size, tmp / f"out{batch_size}")
                rows.append(_row("pipeline", "float32", batch_size, n, seconds, tokens))
            metrics["qwen_pipeline_batched_vs_one_at_a_time"] = rows[-1]["samples_per_s"] / rows[-2]["samples_per_s"]
    finally:
        torch.set_num_threads(threads)
    return {"rows": rows, "metrics": metrics}


def _row(stage: str, dtype: str, batch_size: int, n: int, seconds: float, tokens: int) -> dict[str, Any]:
    return {
        "stage": stage,
        "dtype": dtype,
        "batch_size": batch_size,
        "samples": n,
        "seconds": seconds,
        "samples_per_s": n / seconds,
        "tokens_per_s": tokens / seconds,
        "threads": torch.get_num_threads(),
    }
