"""What the store's guarantees cost: weights identified by content, durable writes, and the resume check.

- ``weights``: a multi-GB folder of random safetensors shards (a SigLIP vision tower with random weights, made
  under the system temp folder, deleted afterwards). Hashing it cold (its pages dropped from the page cache
  with ``posix_fadvise``, no cached digest), hashing it from the page cache, and the cached case (a ``stat`` per
  file), next to loading the model from it cold with ``from_pretrained`` (what every run pays anyway).
- ``fsync``: samples written by the store's writer thread with ``fsync`` off and on (file fsync + rename +
  folder fsync + index append + index fsync per batch); the difference is the price of durability.
- ``large writes``: 86 MB samples (a 720p clip's SigLIP tokens) in batches of 2, a batch's files written one
  after the other and side by side (the writer thread bounded such jobs on a GPU: see the README).
- ``resume check``: the ``stat`` of every done row's file at start-up (files missing or cut short are redone).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

GIB = 2**30


def _drop_from_page_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _make_weights(folder: Path, total_bytes: int) -> None:
    """A SigLIP vision tower with random weights, sized to ``total_bytes`` in fp32, saved in 1 GB shards."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    hidden, mlp = 1536, 6144
    layers = max(1, round(total_bytes / 4 / (4 * hidden * hidden + 2 * hidden * mlp)))
    config = SiglipVisionConfig(
        hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=16, image_size=224
    )
    SiglipVisionModel(config).save_pretrained(folder, max_shard_size="1GB")


def _timed(function: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def bench_weights(tmp: Path, total_bytes: int) -> list[dict[str, Any]]:
    from lit_features.store.weights import DigestCache, weight_identity

    folder = tmp / "weights"
    _make_weights(folder, total_bytes)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    def load_model(touch: bool) -> float:
        from transformers import SiglipVisionModel

        model = SiglipVisionModel.from_pretrained(folder)
        # Loading may map the files lazily: touching every parameter is what the first forward pass reads.
        return sum(float(p.sum()) for p in model.parameters()) if touch else 0.0

    rows = []
    _drop_from_page_cache(folder)
    cold, seconds = _timed(lambda: weight_identity(folder, DigestCache(tmp / "cache-cold")))
    rows.append(
        {"case": "hash, cold (disk + hash, no cached digest)", "seconds": seconds, "GB_per_s": size / seconds / 1e9}
    )
    warm, seconds = _timed(lambda: weight_identity(folder, DigestCache(tmp / "cache-warm")))
    rows.append({"case": "hash, file in page cache (hash only)", "seconds": seconds, "GB_per_s": size / seconds / 1e9})
    cached, seconds = _timed(lambda: weight_identity(folder, DigestCache(tmp / "cache-warm")))
    rows.append({"case": "cached digest (stat per file)", "seconds": seconds, "GB_per_s": size / seconds / 1e9})
    assert cold == warm == cached
    for touch in (False, True):
        _drop_from_page_cache(folder)
        _, seconds = _timed(lambda t=touch: load_model(t))
        case = "load the model, cold (from_pretrained" + (", every weight read)" if touch else ")")
        rows.append({"case": case, "seconds": seconds, "GB_per_s": size / seconds / 1e9})
    for row in rows:
        row["GB"] = size / 1e9
    shutil.rmtree(folder)
    return rows


def _empty_store(root: Path) -> Any:
    """A new store folder with its log folders, as the writer expects to find it."""
    from lit_features.store.state import StoreState

    for folder in ("index", "failures"):
        (root / folder).mkdir(parents=True)
    return StoreState(root, {}, {})


def _median_rows(seconds: dict[str, list[float]], samples: int, case: str) -> list[dict[str, Any]]:
    """One row per variant: the median of its rounds, in seconds and per sample (``case`` formats ``label``)."""
    rows = []
    for label, times in seconds.items():
        median = statistics.median(times)
        rows.append({"case": case.format(label=label), "seconds": median, "ms_per_sample": 1000 * median / samples})
    return rows


def _time_writes(writer: Any, tensor: torch.Tensor, samples: int, batch: int) -> float:
    """Seconds for ``writer`` to persist ``samples`` copies of ``tensor`` put in batches of ``batch``, closed."""
    from lit_features.records import FeatureRecord, PredictionOutput

    started = time.perf_counter()
    for b in range(0, samples, batch):
        records = [FeatureRecord(f"k{i:06d}", None, {"features": tensor}) for i in range(b, min(b + batch, samples))]
        writer.put(PredictionOutput(records, []))
    writer.close()
    writer.raise_if_failed()  # a writer that failed on its thread would otherwise time as a fast one
    return time.perf_counter() - started


def bench_fsync(tmp: Path, samples: int, batch: int, sample_bytes: int) -> list[dict[str, Any]]:
    """Three variants of the same writes: no fsync; the sample file only (what the store did before renames
    and index appends were made durable); everything (``--writer.fsync true`` now)."""
    from contextlib import nullcontext
    from unittest import mock

    from lit_features.store import layout
    from lit_features.store.sample_writer import SampleWriter

    class FileFsyncOnly(SampleWriter):
        def append_rows(self, name: str, rows: list[dict[str, Any]], failures: bool = False, **route: Any) -> None:
            self.fsync = False
            try:
                super().append_rows(name, rows, failures, **route)
            finally:
                self.fsync = True

    tensor = torch.rand(sample_bytes // 4)
    variants = [("off", SampleWriter, False), ("file only (before)", FileFsyncOnly, True), ("on", SampleWriter, True)]
    seconds: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    for round_ in range(3):  # interleaved rounds, median: other writers on a shared disk come and go
        for label, kind, fsync in variants:
            root = tmp / f"fsync-{round_}-{len(seconds[label])}-{fsync}-{kind.__name__}"
            store = _empty_store(root)
            patch = mock.patch.object(layout, "fsync_dir", lambda f: None) if kind is FileFsyncOnly else nullcontext()
            with patch:
                writer = kind({"": store}, "safetensors", "{shard}/{key}{ext}", 0, lambda k: None, fsync)
                seconds[label].append(_time_writes(writer, tensor, samples, batch))
            shutil.rmtree(root)
    size = f"{sample_bytes / 1e6:.2g} MB"
    rows = _median_rows(seconds, samples, f"write {samples} x {size}, batch {batch}, fsync {{label}} (median of 3)")
    off, before, now = (r["ms_per_sample"] for r in rows)
    rows.append({"case": "fsync cost per sample (all, vs off)", "ms_per_sample": now - off})
    rows.append({"case": "added by durable renames + index (vs before)", "ms_per_sample": now - before})
    return rows


def bench_parallel_writes(tmp: Path, samples: int, batch: int) -> list[dict[str, Any]]:
    """Large samples (a 720p clip's SigLIP tokens: 8 x 4641 x 1152 bf16, 86 MB) written with fsync by the
    store's writer thread, a batch's files one after the other (one write thread) and side by side (default)."""
    from lit_features.store.sample_writer import SampleWriter

    tensor = torch.rand(8, 4641, 1152).to(torch.bfloat16)
    variants = [("one after the other", 1), ("side by side (default)", 8)]
    seconds: dict[str, list[float]] = {label: [] for label, _ in variants}
    for round_ in range(3):  # interleaved rounds, median
        for label, threads in variants:
            root = tmp / f"parallel-{round_}-{threads}"
            store = _empty_store(root)
            writer = SampleWriter(
                {"": store}, "safetensors", "{shard}/{key}{ext}", 0, lambda k: None, True, write_threads=threads
            )
            seconds[label].append(_time_writes(writer, tensor, samples, batch))
            shutil.rmtree(root)
    rows = _median_rows(
        seconds, samples, f"write {samples} x 86 MB, batch {batch}, fsync on, files {{label}} (median of 3)"
    )
    ratio = statistics.median(seconds["one after the other"]) / statistics.median(seconds["side by side (default)"])
    rows.append({"case": "large writes: side by side vs one after the other", "ratio": ratio})
    return rows


def bench_resume_check(tmp: Path, samples: int) -> dict[str, Any]:
    from lit_features.store import layout
    from lit_features.store.state import StoreState

    root = tmp / "resume"
    rows = []
    for i in range(samples):
        key = f"clip_{i:07d}"
        path = root / layout.shard_of(key) / f"{key}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 64)
        rows.append({"key": key, "file": str(path.relative_to(root)), "bytes": 64})
    store = StoreState(root, {}, {})
    store.done = {r["key"]: r for r in rows}
    problems, seconds = _timed(store.unverified)
    assert problems == {}
    shutil.rmtree(root)
    return {
        "case": f"resume check: stat {samples} done files",
        "seconds": seconds,
        "ms_per_sample": 1000 * seconds / samples,
    }


def run(quick: bool = False) -> dict[str, Any]:
    total = GIB // 2 if quick else 4 * GIB
    with tempfile.TemporaryDirectory(prefix="lit_features_store_trust_") as name:
        tmp = Path(name)
        fsync = bench_fsync(tmp, 100 if quick else 400, 8, 400_000)  # first: before gigabytes are written back
        parallel = bench_parallel_writes(tmp, 4 if quick else 16, 2)
        weights = bench_weights(tmp, total)
        resume = bench_resume_check(tmp, 5_000 if quick else 50_000)
    rows = weights + fsync + parallel + [resume]
    by_case = {r["case"]: r for r in rows}
    metrics = {
        "weights_GB": weights[0]["GB"],
        "weights_hash_cold_s": weights[0]["seconds"],
        "weights_hash_cached_s": weights[2]["seconds"],
        "weights_model_load_cold_s": weights[3]["seconds"],
        "weights_model_load_and_read_cold_s": weights[4]["seconds"],
        "fsync_ms_per_sample": by_case["fsync cost per sample (all, vs off)"]["ms_per_sample"],
        "fsync_added_ms_per_sample": by_case["added by durable renames + index (vs before)"]["ms_per_sample"],
        "resume_check_ms_per_sample": resume["ms_per_sample"],
        "large_writes_side_by_side_ratio": parallel[-1]["ratio"],
    }
    return {"rows": rows, "metrics": metrics}
