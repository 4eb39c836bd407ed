"""End of a run: merge the per-rank logs, reduce the per-rank summaries, and export manifests from the index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lit_features.store import layout


def merge_store_logs(root: Path) -> dict[str, int]:
    """Merge per-rank index and failure logs into ``index.jsonl`` and ``failures.jsonl`` (latest row per key).

    Tolerates ranks that wrote nothing. A failure is dropped from the merged list once its key is done.
    """
    index: dict[str, dict] = {}
    for path in layout.rank_files(root, layout.INDEX_DIR):
        for row in layout.read_jsonl_rows(path):
            index[row["key"]] = row
    failures: dict[str, dict] = {}
    for path in layout.rank_files(root, layout.FAILURES_DIR):
        for row in layout.read_jsonl_rows(path):
            if row["key"] not in index:
                failures[row["key"]] = row
    layout.atomic_write_text(root / layout.MERGED_INDEX, "".join(json.dumps(index[k]) + "\n" for k in sorted(index)))
    layout.atomic_write_text(
        root / layout.MERGED_FAILURES, "".join(json.dumps(failures[k]) + "\n" for k in sorted(failures))
    )
    return {"written": len(index), "failed": len(failures)}


def reduce_run_summaries(folder: Path) -> dict[str, Any]:
    """Combine the per-rank summaries of one run (files, not collectives: ranks may have run different batches)."""
    ranks = [json.loads(p.read_text()) for p in sorted(folder.glob("rank-*.json"))]
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


def export_manifest_with_features(
    root: Path,
    samples: list[Any],
    target: Path,
    per_name: bool,
    fields: dict[str, str] | None = None,
    done_only: bool = False,
) -> int:
    """Write ``{key: entry + feature file paths}`` for ``samples`` from the merged index; returns entries with paths.

    With ``done_only``, entries without features are left out and listed in ``<target stem>.missing.json`` as
    ``{key: reason}`` (the recorded failure, or "not processed").
    """
    rows = {r["key"]: r for r in layout.read_jsonl_rows(root / layout.MERGED_INDEX)}
    out, done, missing = {}, 0, {}
    failures = {r["key"]: r for r in layout.read_jsonl_rows(root / layout.MERGED_FAILURES)} if done_only else {}
    for sample in samples:
        entry = dict(sample.entry)
        row = rows.get(sample.key)
        if row is None and done_only:
            failure = failures.get(sample.key)
            missing[sample.key] = (
                f"{failure['stage']}: {failure['error']}: {failure['message']}" if failure else "not processed"
            )
            continue
        if row is not None:
            files = row.get("files", [row["file"]])
            names = list(row["shapes"]) if per_name else [""]
            for name, file in zip(names, files, strict=True):
                field = fields.get(name) if fields is not None else (f"{name}_path" if name else "feature_path")
                if field:
                    entry[field] = str(Path(file) if Path(file).is_absolute() else (root / file).resolve())
            done += 1
        out[sample.key] = entry
    layout.atomic_write_text(target, json.dumps(out, indent=4, default=str))
    if done_only:
        layout.atomic_write_text(target.with_suffix(".missing.json"), json.dumps(missing, indent=4))
    return done


def export_entries_jsonl(root: Path, name: str) -> int:
    """Write ``root/name``: per stored sample (latest index row, sorted by key) its manifest entry plus ``file``.

    The entry is the ``entry`` field of the row's metadata (extractors that want this export put it there); a
    row without one exports ``key`` instead. Returns the number of rows written.
    """
    # The merged index (written just before, latest row per key, sorted): no second pass over the rank files.
    lines = []
    for row in layout.read_jsonl_rows(root / layout.MERGED_INDEX):
        key = row["key"]
        entry = (row.get("meta") or {}).get("entry")
        lines.append(json.dumps({**(entry if isinstance(entry, dict) else {"key": key}), "file": row["file"]}) + "\n")
    layout.atomic_write_text(root / name, "".join(lines))
    return len(lines)
