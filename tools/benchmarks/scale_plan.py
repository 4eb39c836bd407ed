"""Start-up and end-of-run costs that grow with the manifest, measured here and extrapolated to 10 million clips.

Real code paths on synthetic stores of ``n`` clips spread over 64 rank files: reading a JSON manifest into
samples (:func:`read_manifests`, memory by ``tracemalloc``), the resume read every rank does at start-up
(:meth:`StoreState.load` over the index and failure logs), rank 0's end-of-run :func:`merge_store_logs`, and the
balanced split (:func:`assign_to_ranks`, 64 ranks). Rows carry the measured figures and a linear
extrapolation to 10M clips (``at_10M``), which docs/scale_out.md uses. Times are CPU seconds of this process
(``time.process_time``: robust to other load on a shared machine, blind to waiting for a slow filesystem);
memory is measured by ``tracemalloc`` on a separate pass over a fifth of the clips (it slows Python down).
One process: the figures are per rank.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from lit_features.data.datamodule import assign_to_ranks
from lit_features.data.manifest import read_manifests
from lit_features.store import layout
from lit_features.store.merge import merge_store_logs
from lit_features.store.state import StoreState

TARGET = 10_000_000
RANKS = 64


def _key(i: int) -> str:
    return f"panda70m__part{i % 97:03d}__clip_{i:09d}_mp4_cut{i % 300}-{i % 300 + 120}"


def write_manifest(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    entries = [
        {
            "path": f"part{i % 97:03d}/clip_{i:09d}.mp4",
            "cap": "A person walks along a beach at sunset while waves roll in.",
            "num_frames": rng.randint(48, 900),
            "fps": 30,
            "resolution": {"height": 720, "width": 1280},
            "cut": [i % 300, i % 300 + 120],
        }
        for i in range(n)
    ]
    path = folder / "manifest.json"
    path.write_text(json.dumps(entries))
    return path


def index_row(i: int) -> dict[str, Any]:
    """A row shaped like the feature writer's (8 sampled frames of a video, one tensor)."""
    key = _key(i)
    return {
        "key": key,
        "file": f"{layout.shard_of(key)}/{key}.safetensors",
        "source": f"/datasets/panda70m/part{i % 97:03d}/clip_{i:09d}.mp4",
        "shapes": {"features": [8, 729, 1152]},
        "dtypes": {"features": "bfloat16"},
        "bytes": 13436992,
        "meta": {
            "kind": "video",
            "frame_indices": [0, 17, 34, 51, 68, 85, 102, 119],
            "total_frames": 900,
            "fps": 30.0,
            "size": [378, 672],
        },
    }


def write_store(root: Path, n: int) -> int:
    """Index and attempts logs of a finished run over ``RANKS`` ranks; returns the index bytes."""
    for folder in (layout.INDEX_DIR, layout.FAILURES_DIR, layout.ATTEMPTS_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
    total = 0
    for rank in range(RANKS):
        rows = [index_row(i) for i in range(rank, n, RANKS)]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        total += len(text.encode())
        layout.rank_file(root, layout.INDEX_DIR, rank).write_text(text)
        attempts = "".join(json.dumps({"key": r["key"], "event": e}) + "\n" for r in rows for e in ("start", "end"))
        layout.rank_file(root, layout.ATTEMPTS_DIR, rank).write_text(attempts)
        layout.rank_file(root, layout.FAILURES_DIR, rank).write_text("")
    return total


def _row(what: str, n: int, value: float, unit: str) -> dict[str, Any]:
    return {"measure": what, "clips": n, "value": value, "unit": unit, "at_10M": value * TARGET / n}


def _cpu(function: Any) -> tuple[Any, float]:
    started = time.process_time()
    result = function()
    return result, time.process_time() - started


def _memory(function: Any) -> tuple[Any, int, int]:
    """Result, memory still held afterwards and peak, in bytes."""
    tracemalloc.start()
    try:
        result = function()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, held, peak


def measure(folder: Path, n: int, with_memory: bool) -> list[dict[str, Any]]:
    rows = []
    manifest = write_manifest(folder, n)
    samples, seconds = _cpu(lambda: read_manifests(str(manifest), None))
    assert len(samples) == n
    rows.append(_row("read manifest (JSON list)", n, seconds, "CPU s"))
    del samples
    root = folder / "store"
    index_bytes = write_store(root, n)
    rows.append(_row("index rows on disk (all ranks)", n, index_bytes / 2**30, "GiB"))
    attempt_bytes = sum(p.stat().st_size for p in layout.rank_files(root, layout.ATTEMPTS_DIR))
    rows.append(_row("attempts logs on disk (one run)", n, attempt_bytes / 2**30, "GiB"))
    store = StoreState(root, {}, {})
    _, seconds = _cpu(lambda: store.load(rows=False))
    assert len(store.done) == n
    rows.append(_row("resume read per rank (index)", n, seconds, "CPU s"))
    merged, seconds = _cpu(lambda: merge_store_logs(root))
    assert merged["written"] == n
    rows.append(_row("end-of-run merge on rank 0", n, seconds, "CPU s"))
    costs = sorted((random.Random(1).lognormvariate(5, 1) for _ in range(n)), reverse=True)
    _, seconds = _cpu(lambda: assign_to_ranks(costs, RANKS, "greedy"))
    rows.append(_row(f"balanced split over {RANKS} ranks", n, seconds, "CPU s"))
    if with_memory:
        _, held, _ = _memory(lambda: read_manifests(str(manifest), None))
        rows.append(_row("manifest samples in memory per rank", n, held / 2**30, "GiB"))
        store = StoreState(root, {}, {})
        _, held, _ = _memory(lambda: store.load(rows=False))
        rows.append(_row("done set in memory per rank", n, held / 2**30, "GiB"))
        _, _, peak = _memory(lambda: merge_store_logs(root))
        rows.append(_row("merge peak memory on rank 0", n, peak / 2**30, "GiB"))
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    n = 50_000 if quick else 200_000
    with tempfile.TemporaryDirectory(prefix="lit_features_scale_") as tmp:
        rows = measure(Path(tmp) / "time", n, with_memory=False)
        rows += measure(Path(tmp) / "memory", n // 5, with_memory=True)[-3:]
    metrics = {f"scale_{r['measure'].split(' (')[0].replace(' ', '_')}_at_10M": r["at_10M"] for r in rows}
    return {"rows": rows, "metrics": metrics}
