"""Export throughput per format, and streaming read throughput of each export next to the per-sample store.

Store: written by the real Trainer + FeatureWriter (safetensors, one file per sample) from a synthetic extractor
defined here (seeded random tensors; no model work), so the sizes are those of real feature sets: per sample
``features`` bfloat16 ``[8, 256, 768]`` (3.1 MB, a ViT's patch features of 8 frames) and ``mask`` int64
``[256]``. Full run: 192 samples (~600 MB); ``--quick``: 32 samples of ``[8, 64, 768]``.

For each format (``litdata``, ``webdataset``, ``parquet``) into a local folder: export samples/s and MB/s
(tensor bytes), then a full pass of its documented streaming reader in this process (samples/s, MB/s), next to
the same pass over ``FeatureStore`` (``store[key]`` for every key) in the same run. Each pass copies every
tensor once (``clone``), as a training step's host-to-device copy would, so lazily mapped files are really
read. Every file was just written, so local reads come from the page cache.

Object storage rows (an S3 server on loopback: moto's server in a subprocess; moto keeps objects in memory and
answers from Python, so absolute rates are far below a real S3, but per-request costs are real): the store's
sample files uploaded and read back one GET per sample (what training from a per-sample store in a bucket
would do), against each format exported to ``s3://`` and streamed back by its reader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
        for value in item.values():
            if isinstance(value, torch.Tensor):
                value.clone()  # touch every byte (mapped files are read lazily)
                nbytes += value.numel() * value.element_size()
    return count, nbytes, time.perf_counter() - started


@contextlib.contextmanager
def s3_server() -> Iterator[Any]:
    """A moto S3 server in a subprocess on loopback, with the AWS variables every client reads pointing at it."""
    import fsspec

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.1)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench")
        yield fs
    finally:
        proc.terminate()
        proc.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _store_from_s3(fs: Any, store: Any) -> Iterator[dict[str, torch.Tensor]]:
    """Each sample of the store fetched with one GET, as training from a per-sample store in a bucket would."""
    from safetensors.torch import load

    for key in store.keys():
        yield load(fs.cat_file(f"bench/store/{store.row(key)['file']}"))


def _remote_rows(store: Any, folder: Path, count: int, nbytes: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from lit_features.export.run import export_store

    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    with s3_server() as fs:
        started = time.perf_counter()
        for key in store.keys():
            fs.put_file(str(store.root / store.row(key)["file"]), f"bench/store/{store.row(key)['file']}")
        upload = time.perf_counter() - started
        got, got_bytes, seconds = _read_pass(_store_from_s3(fs, store))
        assert (got, got_bytes) == (count, nbytes)
        base = got / seconds
        rows.append({"format": "s3: store files, one GET each", "export_samples_s": count / upload})
        rows[-1].update(
            {"export_MB_s": nbytes / upload / 1e6, "read_samples_s": base, "read_MB_s": nbytes / seconds / 1e6}
        )
        rows[-1]["shards"] = count
        for format in ("litdata", "webdataset", "parquet"):
            summary = export_store(str(store.root), format, f"s3://bench/{format}")
            got, got_bytes, seconds = _read_pass(_reader(format, f"s3://bench/{format}", folder / f"s3cache_{format}"))
            assert (got, got_bytes) == (count, nbytes)
            rows.append(
                {
                    "format": f"s3: {format}",
                    "export_samples_s": summary["added"] / summary["seconds"],
                    "export_MB_s": summary["bytes"] / summary["seconds"] / 1e6,
                    "read_samples_s": got / seconds,
                    "read_MB_s": got_bytes / seconds / 1e6,
                    "shards": summary["shards"],
                }
            )
            metrics[f"s3_{format}_read_vs_store"] = round(got / seconds / base, 2)
    return rows, metrics


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
        remote_rows, remote_metrics = _remote_rows(store, folder, count, nbytes)
        return {"rows": rows + remote_rows, "metrics": {**metrics, **remote_metrics}}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
