"""Export throughput per format, and streaming read throughput of each export next to the per-sample store.

Store: written by the real Trainer + FeatureWriter (safetensors, one file per sample) from a synthetic extractor
defined here (seeded random tensors; no model work), so the sizes are those of real feature sets: per sample
``features`` bfloat16 ``[8, 256, 768]`` (3.1 MB, a ViT's patch features of 8 frames) and ``mask`` int64
``[256]``. Full run: 192 samples (~600 MB); ``--quick``: 32 samples of ``[8, 64, 768]``.

For each format (``litdata``, ``webdataset``, ``parquet``) into a local folder: export samples/s and MB/s
(tensor bytes), then a full pass of its documented streaming reader in this process (samples/s, MB/s), next to
the same pass over ``FeatureStore`` (``store[key]`` for every key) in the same run. Every file was just written,
so all reads come from the page cache: this compares the formats' decoding and per-file overheads, not disks
or networks (an object store or a cold disk penalises the store's one-file-per-sample layout far more).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lit_features.data.preprocess import Preprocessor
from lit_features.extractors.base import FeatureExtractor


@dataclasses.dataclass
class _Seed(Preprocessor):
    """Text-free entries: the sample's number is its input."""

    required_fields = ()

    def __call__(self, sample: Any, media: Any) -> torch.Tensor:
        return torch.tensor(int(sample.key.removeprefix("s")))


class SyntheticFeatures(FeatureExtractor):
    """Seeded random ``features`` (bf16) and ``mask`` (int64) per sample, no model: the store's writing path only."""

    def __init__(self, model_path: str, frames: int = 8, tokens: int = 256, dim: int = 768):
        super().__init__(model_path, dtype="bfloat16")
        self.frames, self.tokens, self.dim = frames, tokens, dim

    def preprocessor(self) -> Preprocessor:
        return _Seed()

    def load_model(self) -> torch.nn.Module:
        return torch.nn.Identity()

    def extract(self, inputs: Any, batch: Any) -> list[dict[str, torch.Tensor]]:
        out = []
        for seed in inputs.tolist():
            gen = torch.Generator().manual_seed(seed)
            features = torch.randn(self.frames, self.tokens, self.dim, generator=gen).to(torch.bfloat16)
            out.append({"features": features, "mask": torch.ones(self.tokens, dtype=torch.int64)})
        return out


def make_store(folder: Path, samples: int, tokens: int) -> Any:
    from lit_features.cli import FeatureTrainer
    from lit_features.data.datamodule import ManifestDataModule
    from lit_features.store.reader import FeatureStore
    from lit_features.store.writer import FeatureWriter

    manifest = folder / "entries.json"
    manifest.write_text(json.dumps([{"key": f"s{i}"} for i in range(samples)]))
    (folder / "weights").mkdir()
    writer = FeatureWriter(str(folder / "store"), fsync=False)
    trainer = FeatureTrainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], enable_progress_bar=False)
    datamodule = ManifestDataModule(str(manifest), batch_size=8, num_workers=0, sandbox=False)
    trainer.predict(SyntheticFeatures(str(folder / "weights"), tokens=tokens), datamodule=datamodule)
    return FeatureStore(folder / "store")


def _reader(format: str, url: str, cache: Path) -> Any:
    if format == "litdata":
        from lit_features.export.litdata_format import FeatureStreamingDataset

        return FeatureStreamingDataset(url, cache_dir=str(cache))
    if format == "webdataset":
        from lit_features.export.webdataset_format import webdataset_pipeline

        return webdataset_pipeline(url)
    from lit_features.export.parquet_format import ParquetFeatureDataset

    return ParquetFeatureDataset(url)


def _read_pass(items: Any) -> tuple[int, int, float]:
    started, count, nbytes = time.perf_counter(), 0, 0
    for item in items:
        count += 1
        nbytes += sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor))
    return count, nbytes, time.perf_counter() - started


def run(quick: bool = False) -> dict[str, Any]:
    from lit_features.export.run import export_store

    samples, tokens = (32, 64) if quick else (192, 256)
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench_export_"))
    try:
        store = make_store(folder, samples, tokens)
        rows: list[dict[str, Any]] = []
        count, nbytes, seconds = _read_pass(store[key] | {"key": key} for key in store.keys())
        store_rate = count / seconds
        rows.append({"format": "store (per-sample files)", "export_samples_s": "", "export_MB_s": ""})
        rows[-1].update({"read_samples_s": store_rate, "read_MB_s": nbytes / seconds / 1e6, "shards": len(store)})
        metrics: dict[str, Any] = {"samples": count, "MB": round(nbytes / 1e6, 1)}
        for format in ("litdata", "webdataset", "parquet"):
            out = folder / f"export_{format}"
            summary = export_store(str(store.root), format, str(out))
            read_count, read_bytes, read_seconds = _read_pass(_reader(format, str(out), folder / f"cache_{format}"))
            assert read_count == count and read_bytes == nbytes
            rows.append(
                {
                    "format": format,
                    "export_samples_s": summary["added"] / summary["seconds"],
                    "export_MB_s": summary["bytes"] / summary["seconds"] / 1e6,
                    "read_samples_s": read_count / read_seconds,
                    "read_MB_s": read_bytes / read_seconds / 1e6,
                    "shards": summary["shards"],
                }
            )
            metrics[f"{format}_read_vs_store"] = round(read_count / read_seconds / store_rate, 2)
        return {"rows": rows, "metrics": metrics}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
