"""Core pipeline benchmark: pipeline vs naive loop, and overlap of decoding with the model, on the bundled media.

Four measurements of the same job (tiny SigLIP stand-in, 8 uniformly sampled frames per clip, at most
256x256 pixels) in one process, side by side:
- ``pipeline``: ``trainer.predict`` with the ManifestDataModule (2 workers, sandboxed decoding) and FeatureWriter;
- ``decode_only``: the same DataLoader iterated without a model;
- ``model_only``: the model over the already decoded batches;
- ``naive``: one video at a time: decode all frames, sample, forward, ``torch.save``.
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


def _manifest(folder: Path, repeats: int) -> Path:
    entries = []
    for r in range(repeats):
        entries += [
            {"path": str(MEDIA / "v_GGSY1Qvo990.mp4"), "cut": [r * 10, 355]},
            {"path": str(MEDIA / "cockatoo.mp4"), "cut": [r * 10, 280]},
            {"path": str(MEDIA / "realshort.mp4"), "cut": [r, 36]},
        ]
    path = folder / "bench.json"
    path.write_text(json.dumps(entries))
    return path


def _naive(extractor: Any, samples: list, out: Path) -> float:
    """Decode every frame, then sample, forward and save, one clip at a time (what scripts usually do)."""
    import decord

    from lit_features.data.sampling import FrameSampling

    pre = extractor.preprocessor()
    sampling = FrameSampling("uniform", pre.num_frames)
    started = time.perf_counter()
    for sample in samples:
        reader = decord.VideoReader(sample.source, ctx=decord.cpu(0))
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        indices, _ = sampling.select(len(frames), reader.get_avg_fps(), sample.cut)
        pixels = pre.pixels(frames[indices])
        with torch.inference_mode():
            features = extractor.tower_features(pixels)
        torch.save({"features": features}, out / f"{sample.key}.pt")
    return time.perf_counter() - started


def run(quick: bool = False) -> dict[str, Any]:
    import lightning.pytorch as pl

    from lit_features.data.datamodule import ManifestDataModule
    from lit_features.extractors.vision_tower import VisionTowerFeatures
    from lit_features.store import FeatureWriter
    from tools.tiny_models.hf_vision import make_siglip

    repeats = 3 if quick else 16  # enough samples that start-up (workers, decoders) is a small share
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = make_siglip(tmp / "models")
        manifest = _manifest(tmp, repeats)
        # A light model (inputs capped at 256x256 pixels) so the benchmark measures the pipeline, not attention.
        extractor = VisionTowerFeatures(str(model_dir), dtype="float32", max_pixels=256 * 256)
        extractor.configure_model()
        pre = extractor.preprocessor()
        data = ManifestDataModule(manifest, batch_size=2, num_workers=2)
        n = len(data.read_samples())

        loader = data.make_loader(data.build_dataset(pre), pre)
        started = time.perf_counter()
        batches = list(loader)
        decode_wall = time.perf_counter() - started

        started = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                extractor.extract(batch.inputs, batch)
        model_wall = time.perf_counter() - started

        writer = FeatureWriter(str(tmp / "store"))
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], enable_progress_bar=False)
        started = time.perf_counter()
        trainer.predict(extractor, datamodule=ManifestDataModule(manifest, batch_size=2, num_workers=2),
                        return_predictions=False)  # fmt: skip
        pipeline_wall = time.perf_counter() - started
        assert writer.summary["written"] == n, writer.summary

        (tmp / "naive").mkdir()
        naive_wall = _naive(extractor, data.read_samples(), tmp / "naive")

    rows = [
        {
            "variant": "pipeline (predict + writer)",
            "samples": n,
            "wall_s": pipeline_wall,
            "samples_per_s": n / pipeline_wall,
        },
        {"variant": "decode only (DataLoader)", "samples": n, "wall_s": decode_wall, "samples_per_s": n / decode_wall},
        {
            "variant": "model only (decoded batches)",
            "samples": n,
            "wall_s": model_wall,
            "samples_per_s": n / model_wall,
        },
        {"variant": "naive sequential loop", "samples": n, "wall_s": naive_wall, "samples_per_s": n / naive_wall},
    ]
    metrics = {
        "pipeline_vs_naive": naive_wall / pipeline_wall,
        "overlap_ratio": pipeline_wall / max(decode_wall, model_wall),
        "write_fraction": writer.summary["seconds_writing"] / pipeline_wall,
    }
    return {"rows": rows, "metrics": metrics}
