"""Stores to export (tiny Qwen hidden states: bfloat16 [L, 64] plus int64 [L], L varying per sample) and the
byte-for-byte comparison of what a streaming reader yields with what the store holds."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from lit_features.export.record import RECORD_NAME
from lit_features.store.reader import FeatureStore

FORMATS = ["litdata", "webdataset", "parquet"]


def prompts(path: Path, count: int = 10, negative_every: int = 0, changed: str | None = None) -> Path:
    """A manifest of text prompts of growing length; every ``negative_every``-th adds a negative prompt."""
    entries = []
    for i in range(count):
        entry: dict[str, Any] = {"key": f"p{i:02d}", "prompt": "a cat on a mat " * (i + 1)}
        if negative_every and i % negative_every == negative_every - 1:
            entry["negative_prompt"] = "blurry, low quality"
        if changed is not None and i == 0:
            entry["prompt"] = changed
        entries.append(entry)
    path.write_text(json.dumps(entries))
    return path


def predict_store(
    qwen_dir: Path, manifest: Path, output: Path, limit: int | None = None, **writer_args: Any
) -> FeatureStore:
    """Run the real Trainer + FeatureWriter (bf16 by default) and open the store it wrote."""
    from lit_features.cli import FeatureTrainer
    from lit_features.data.datamodule import ManifestDataModule
    from lit_features.extractors.qwen_hidden import QwenHiddenStates
    from lit_features.store.writer import FeatureWriter

    dtype = writer_args.pop("dtype", "bfloat16")
    writer = FeatureWriter(str(output), fsync=False, **writer_args)
    trainer = FeatureTrainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], enable_progress_bar=False)
    datamodule = ManifestDataModule(str(manifest), batch_size=4, num_workers=0, limit=limit)
    trainer.predict(QwenHiddenStates(model_path=str(qwen_dir), dtype=dtype), datamodule=datamodule)
    return FeatureStore(output)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, same shape and the same bytes (NaNs and -0.0 included, unlike ``torch.equal``)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bytes(a.contiguous().reshape(-1).view(torch.uint8).numpy()) == bytes(
        b.contiguous().reshape(-1).view(torch.uint8).numpy()
    )


def assert_same_as_store(items: Iterable[dict[str, Any]], store: FeatureStore, keys: list[str] | None = None) -> None:
    """Every item equals the store's sample of its key, and the items are exactly ``keys`` (default: all), once."""
    seen = []
    for item in items:
        key = item["key"]
        seen.append(key)
        expected = store[key]
        tensors = {k: v for k, v in item.items() if k not in ("key", "source", "meta")}
        assert sorted(tensors) == sorted(expected), key
        for name, tensor in expected.items():
            assert same_bits(tensors[name], tensor), f"{key}.{name}: {tensors[name].dtype} vs {tensor.dtype}"
        assert item["meta"] == store.meta(key), key
        assert item["source"] == store.row(key)["source"], key
    assert sorted(seen) == sorted(keys if keys is not None else store.keys())
    assert len(seen) == len(set(seen))


def read_export(url: str, format: str, cache_dir: Path) -> list[dict[str, Any]]:
    """Everything the documented streaming reader of ``format`` yields for the export at ``url``."""
    if format == "litdata":
        from lit_features.export.litdata_format import FeatureStreamingDataset

        return list(FeatureStreamingDataset(url, cache_dir=str(cache_dir)))
    if format == "webdataset":
        from lit_features.export.webdataset_format import webdataset_pipeline

        return list(webdataset_pipeline(url))
    from lit_features.export.parquet_format import ParquetFeatureDataset

    return list(ParquetFeatureDataset(url))


def record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / RECORD_NAME).read_text())
