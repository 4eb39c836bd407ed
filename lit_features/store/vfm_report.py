"""End-of-run reports of the VFM jobs, as the upstream vfm_encoder feature script writes them, plus a JSON summary.

* ``<model folder>/failed_videos.txt``: one line ``<video file name>: <error>`` per video that failed, lines
  joined by newlines (no trailing one); written only when something failed (a stale one is removed).
* ``<output_dir>/vfm_dimensions.txt``: the header ``VFM feature dimensions report``, ``video_dir``,
  ``num_videos`` and ``num_frames(sampled)`` lines, a blank line, then per model run
  ``- <model>`` / ``  sample_feature_shape: (T', H', W', C)`` / ``  feature_dimension(C): C`` and a blank line.
  Skipped models are left out, as upstream leaves them out. Rewritten by every run, as upstream does.
* ``<output_dir>/vfm_summary.json``: the same and more per model (samples written, failures, skip reasons).

The files describe the whole store (what earlier, resumed runs wrote too), read after the writer merged it, and
this run's inputs; the writer rewrites them at the end of every run, also one that had nothing left to do.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lit_features.interfaces import ModelsReport, ReportsModels, SampleProvider
from lit_features.store.reader import FeatureStore

log = logging.getLogger(__name__)

SUMMARY_JSON = "vfm_summary.json"
DIMENSIONS_TXT = "vfm_dimensions.txt"
FAILED_VIDEOS_TXT = "failed_videos.txt"


def failed_video_lines(failures: list[dict[str, Any]]) -> list[str]:
    """``<video file name>: <error message>`` per failure row (one line each)."""
    lines = []
    for row in failures:
        name = os.path.basename(row.get("source") or "") or row["key"]
        message = " ".join(str(row.get("message") or row.get("error") or "").split())
        lines.append(f"{name}: {message}")
    return lines


def write_failed_videos(root: Path, failures: list[dict[str, Any]]) -> None:
    """Upstream's per-model ``failed_videos.txt``; removed when nothing failed (it would be stale)."""
    path = root / FAILED_VIDEOS_TXT
    if failures:
        path.write_text("\n".join(failed_video_lines(failures)), encoding="utf-8")
    else:
        path.unlink(missing_ok=True)


def dimensions_report(video_dir: str, num_videos: int, num_frames: int, models: dict[str, dict[str, Any]]) -> str:
    """The text of upstream's ``vfm_dimensions.txt`` (skipped models are not listed)."""
    text = "VFM feature dimensions report\n"
    text += f"video_dir: {video_dir}\nnum_videos: {num_videos}\nnum_frames(sampled): {num_frames}\n\n"
    for label, info in models.items():
        if "skipped" in info:
            continue
        shape = info.get("feature_shape")
        text += f"- {label}\n"
        text += f"  sample_feature_shape: {tuple(shape) if shape else None}\n"
        text += f"  feature_dimension(C): {info.get('feature_dim')}\n\n"
    return text


def write_vfm_report(output_dir: Path, report: ModelsReport, inputs: str, num_videos: int) -> dict[str, Any]:
    """Writes ``failed_videos.txt`` per model, ``vfm_dimensions.txt`` and ``vfm_summary.json``; returns the summary.

    Per model: feature dimension C, the shape of one stored feature, samples stored, failures (with the first
    few messages), or why the model was skipped. Runs on rank 0 after the writer merged the stores, at the end
    of every run, also one that found nothing left to do (Lightning skips the predict hooks then).

    Args:
        output_dir: the writer's output directory (each model's store is ``output_dir/<sub-store>``).
        report: the models of the run (:meth:`~lit_features.interfaces.ReportsModels.models_report`).
        inputs: what the run read (upstream's ``video_dir``).
        num_videos: how many videos the run's inputs list.
    """
    models: dict[str, Any] = {}
    for store_name, label in report.labels.items():
        root = output_dir / store_name if store_name else output_dir
        info: dict[str, Any] = {"store": str(root), "feature_dim": report.dims.get(label)}
        try:
            store = FeatureStore(root)
        except FileNotFoundError:
            models[label] = info
            continue
        keys = store.keys()
        shape = store.row(keys[0])["shapes"].get("feature") if keys else None
        failures = store.failures()
        write_failed_videos(root, failures)
        info.update(
            feature_shape=shape,
            written=len(keys),
            failed=len(failures),
            failures=failed_video_lines(failures[:20]),
        )
        if shape and info["feature_dim"] is None:
            info["feature_dim"] = shape[-1]
        models[label] = info
    for label, reason in report.skipped.items():
        models[label] = {"skipped": reason}
    num_frames = report.num_frames
    summary = {"video_dir": inputs, "num_videos": num_videos, "num_frames": num_frames, "models": models}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    (output_dir / DIMENSIONS_TXT).write_text(dimensions_report(inputs, num_videos, num_frames, models))
    for label, info in models.items():
        if "skipped" in info:
            log.warning("VFM %s: skipped (weights missing)", label)
        else:
            log.info(
                "VFM %s: C=%s, feature %s, %s written, %s failed -> %s",
                label,
                info.get("feature_dim"),
                info.get("feature_shape"),
                info.get("written", 0),
                info.get("failed", 0),
                info["store"],
            )
    return summary


def report_models(output_dir: Path, module: Any, data: Any) -> dict[str, Any] | None:
    """The end-of-run report for a module that asks for one (:class:`~lit_features.interfaces.ReportsModels`),
    with what the DataModule read; ``None`` for other modules."""
    if not isinstance(module, ReportsModels):
        return None
    inputs = data.describe_inputs() if isinstance(data, SampleProvider) else "None"
    samples = data.samples if isinstance(data, SampleProvider) else None
    return write_vfm_report(output_dir, module.models_report(), inputs, len(samples or []))
