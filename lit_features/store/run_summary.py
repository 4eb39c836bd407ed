"""The run summary: what each rank wrote, failed and skipped and how long it took, reduced over all ranks.

Each rank writes ``run_summary/rank-<r>.json`` at the end; after a barrier every rank reads them all (files,
not collectives: ranks may have run different numbers of batches) and rank 0 records the reduction in
``run_summary.json`` and sends it to the trainer's loggers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lit_features.store import layout
from lit_features.store.sample_writer import SampleWriter


def summary_dir(root: Path) -> Path:
    """Where the ranks of the running job leave their summaries (in the first store of the run)."""
    return root / layout.RUN_SUMMARY_DIR


def clear_rank_summaries(root: Path) -> None:
    """Forget the per-rank summaries of an earlier run (rank 0, holding the store's lock, at start)."""
    shutil.rmtree(summary_dir(root), ignore_errors=True)


def rank_summary(writer: SampleWriter, rank: int, skipped: int, elapsed: float) -> dict[str, Any]:
    """This rank's part of the run: counts and timings of its writer thread."""
    return {
        "rank": rank,
        "written": writer.counts["written"],
        "failed": writer.counts["failed"],
        "write_failed": writer.counts["write_failed"],
        "skipped": skipped,
        "seconds": elapsed,
        "samples_per_s": writer.counts["written"] / elapsed if elapsed > 0 else 0.0,
        "seconds_writing": writer.seconds_writing,
        **{f"seconds_{k.removesuffix('_s')}": v for k, v in writer.timing.items()},
        "failures": writer.run_failures,
    }


def write_rank_summary(root: Path, summary: dict[str, Any]) -> None:
    layout.atomic_write_text(summary_dir(root) / f"rank-{summary['rank']}.json", json.dumps(summary, default=str))


def reduce_run_summaries(root: Path) -> dict[str, Any]:
    """Combine the per-rank summaries of one run (files, not collectives: ranks may have run different batches)."""
    ranks = [json.loads(p.read_text()) for p in sorted(summary_dir(root).glob("rank-*.json"))]
    seconds = max((r["seconds"] for r in ranks), default=0.0)
    written = sum(r["written"] for r in ranks)
    timing = {
        k: sum(r.get(k, 0.0) for r in ranks)
        for k in ("seconds_decode", "seconds_transform", "seconds_model", "seconds_writing")
    }
    return {
        "ranks": len(ranks),
        "written": written,
        "failed": sum(r["failed"] for r in ranks),
        "write_failed": sum(r.get("write_failed", 0) for r in ranks),
        "skipped": ranks[0]["skipped"] if ranks else 0,
        "seconds": seconds,
        "samples_per_s": written / seconds if seconds > 0 else 0.0,
        "samples_per_s_per_rank": [r["samples_per_s"] for r in ranks],
        **timing,
        "failures": [f for r in ranks for f in r.get("failures", [])],
    }


def write_run_summary(root: Path, run: dict[str, Any]) -> None:
    """Record the reduced summary as ``run_summary.json`` in the store."""
    layout.atomic_write_text(root / layout.RUN_SUMMARY, json.dumps(run, indent=2))


def log_run_summary(trainer: pl.Trainer, run: dict[str, Any]) -> None:
    """Send a run summary to the trainer's loggers (W&B gets a failures table and its run summary too)."""
    numbers = {f"predict/{k}": v for k, v in run.items() if isinstance(v, (int, float))}
    for i, rate in enumerate(run["samples_per_s_per_rank"]):
        numbers[f"predict/samples_per_s_rank{i}"] = rate
    for logger in trainer.loggers:
        logger.log_metrics(numbers, step=0)
        if type(logger).__name__ == "WandbLogger":
            columns = ["key", "source", "stage", "error", "message"]
            rows = [[str(f.get(c, "")) for c in columns] for f in run["failures"]]
            logger.log_table(key="predict/failures", columns=columns, data=rows)
            logger.experiment.summary.update(numbers)
        logger.save()
