"""Exports a run writes beside its store at the end, from the merged index: manifests with feature paths added."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lit_features.store import layout

log = logging.getLogger(__name__)


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


def export_run_manifest(
    output_dir: Path,
    samples: list[Any] | None,
    name: str,
    path_template: str,
    fields: dict[str, str] | None,
    done_only: bool,
) -> None:
    """The writer's ``export_manifest`` at the end of a run: :func:`export_manifest_with_features` of the run's
    samples into ``output_dir / name`` (one path field per tensor name when files are per name)."""
    if samples is None:
        log.warning("export_manifest: the datamodule has no samples list; nothing exported")
        return
    target = output_dir / name
    n = export_manifest_with_features(output_dir, samples, target, "{name}" in path_template, fields, done_only)
    log.info("wrote %s (%d entries with features)", target, n)
