"""What a rerun may trust: the checks that decide whether a stored row, a failure or a path can be relied on.

Small pure functions over index rows and samples (objects with ``key``, ``source``, ``manifest``, ``index``
and ``identity()``), so any way of distributing work can reuse them:

- :func:`check_distinct_paths`: no two keys of a run share a file (a path template like ``{stem}{ext}`` can
  map two samples onto one file, and the second would silently overwrite the first).
- :func:`input_difference` / :func:`check_same_inputs`: a key is done only for the same source, cut and
  text/reference inputs; a stored key made from another input is an error, never a skip.
- :func:`row_problem`: a done row's files still exist with the recorded size (a ``stat``, no reading).
- :func:`is_transient_failure`: write errors and out-of-memory are retried by the next run without a flag.
- :func:`adoptable_rows`: complete files already at their destination (``skip_existing``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lit_features.errors import UserError
from lit_features.store import layout
from lit_features.store.codecs import EXTENSIONS, probe

DEFAULT_TEMPLATE = "{shard}/{key}{ext}"


class PathCollisionError(UserError, ValueError):
    """Two samples of a run would be written to one file."""


class SourceMismatchError(UserError, RuntimeError):
    """A key already in the store was made from a different input than the one this run gives it."""


def _where(sample: Any) -> str:
    manifest = getattr(sample, "manifest", "")
    return f"{manifest}, entry {getattr(sample, 'index', '?')}" if manifest else "the manifest"


def sample_path_text(root: Path, template: str, sample: Any, ext: str) -> str:
    """Normalised path text of a sample's file (``{name}`` left as is: same for every tensor name)."""
    text = layout.format_template(template, sample.key, sample.source, ext, "{name}", root)
    if not layout.writes_beside_sources(template):
        text = os.path.join(str(root), text)
    return os.path.normpath(text)


def _collisions(root: Path, template: str, ext: str, samples: Iterable[Any]) -> tuple[Any, Any] | None:
    owner: dict[str, Any] = {}
    for sample in samples:
        first = owner.setdefault(sample_path_text(root, template, sample, ext), sample)
        if first.key != sample.key:
            return first, sample
    return None


def suggest_template(root: Path, template: str, ext: str, samples: list[Any]) -> str:
    """A template close to ``template`` that gives every sample its own file."""
    candidates = [template.replace("{stem}", "{key}")] if "{stem}" in template else []
    candidates.append(DEFAULT_TEMPLATE)
    for candidate in candidates:
        if candidate != template and _collisions(root, candidate, ext, samples) is None:
            return candidate
    return DEFAULT_TEMPLATE


def check_distinct_paths(
    root: Path, template: str, ext: str, samples: list[Any], stored: Mapping[str, dict[str, Any]] | None = None
) -> None:
    """Refuse a template that maps two keys of this run (or a key of this run and a stored key) to one file.

    Raises:
        PathCollisionError: naming both keys, where they come from, the file and a template that works.
    """
    clash = _collisions(root, template, ext, samples)
    if clash is not None:
        a, b = clash
        raise PathCollisionError(
            f"--writer.path_template {template!r} writes two samples to one file "
            f"{sample_path_text(root, template, a, ext)}: key {a.key!r} ({_where(a)}: {a.source}) and key {b.key!r} "
            f"({_where(b)}: {b.source}); the second would overwrite the first. Use a template that contains "
            f"{{key}}, e.g. {suggest_template(root, template, ext, samples)!r}."
        )
    if not stored or "{name}" in template:
        return
    paths = {sample_path_text(root, template, s, ext): s for s in samples}
    for key, row in stored.items():
        for file in row.get("files", [row.get("file")]):
            if not file:
                continue
            sample = paths.get(os.path.normpath(file if os.path.isabs(file) else os.path.join(str(root), file)))
            if sample is not None and sample.key != key:
                raise PathCollisionError(
                    f"--writer.path_template {template!r} writes key {sample.key!r} ({_where(sample)}) to "
                    f"{file}, which holds the stored sample {key!r} of {root}; writing it would replace that "
                    f"sample. Use a template that contains {{key}}, e.g. {DEFAULT_TEMPLATE!r}, or another "
                    "--writer.output_dir."
                )


def input_difference(row: Mapping[str, Any], sample: Any) -> str | None:
    """Why the stored ``row`` was not made from ``sample``'s input (``None`` when it was)."""
    if row.get("source") != sample.source:
        return f"stored from {row.get('source')} but {_where(sample)} gives {sample.source}"
    stored = row.get("input")
    if stored is None:
        return None  # an adopted file or an older row: the source is all it records
    current = sample.identity()
    if stored != current:
        fields = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        return f"stored from the same source with a different {', '.join(fields)} than {_where(sample)} gives"
    return None


def check_same_inputs(root: Path, done: Mapping[str, Mapping[str, Any]], samples: Iterable[Any]) -> None:
    """Refuse when a key of this run is stored from another input (it would be skipped as done).

    Raises:
        SourceMismatchError: naming the key, both inputs and how many keys are affected.
    """
    clashes = [(s, why) for s in samples if s.key in done and (why := input_difference(done[s.key], s))]
    if clashes:
        sample, why = clashes[0]
        more = f" ({len(clashes) - 1} more keys like this)" if len(clashes) > 1 else ""
        raise SourceMismatchError(
            f"{root}: key {sample.key!r} is {why}{more}. A key names one input, so its stored features would "
            "be reused for another one. Write this manifest to another --writer.output_dir, give its entries "
            "distinct 'key' fields, or pass --writer.overwrite true to recompute the store."
        )


def row_files(root: Path, row: Mapping[str, Any]) -> list[Path]:
    files = row.get("files", [row["file"]])
    return [Path(f) if os.path.isabs(f) else root / f for f in files]


def row_problem(root: Path, row: Mapping[str, Any]) -> str | None:
    """Whether a done row's files are still there with the recorded size (one ``stat`` per file)."""
    total = 0
    for path in row_files(root, row):
        try:
            total += os.stat(path).st_size
        except OSError:
            return f"{path} is missing"
    if "bytes" in row and total != row["bytes"]:
        return f"{row_files(root, row)[0]} has {total} bytes, the index recorded {row['bytes']}"
    return None


def is_transient_failure(row: Mapping[str, Any]) -> bool:
    """Failures that say nothing about the sample: writing it failed (disk full, I/O error), or the device
    ran out of memory. The next run retries them without ``--writer.retry_failed``."""
    if row.get("stage") == "write":
        return True
    text = f"{row.get('error', '')} {row.get('message', '')}".lower()
    return row.get("stage") == "model" and (
        "outofmemoryerror" in text or "out of memory" in text or "can't allocate memory" in text
    )


def adoptable_rows(root: Path, template: str, codec: str, samples: Iterable[Any]) -> list[dict[str, Any]]:
    """Index rows for ``samples`` whose file is already complete at its destination (made by another tool).

    A file counts only when its headers say it is whole (see :func:`lit_features.store.codecs.probe`).
    """
    rows = []
    for sample in samples:
        path = layout.resolve_sample_path(root, template, sample.key, sample.source, EXTENSIONS[codec])
        found = probe(path, codec)
        if found is None:
            continue
        inside = path.resolve().is_relative_to(root.resolve())
        rows.append(
            {
                "key": sample.key,
                "file": str(path.relative_to(root)) if inside else str(path),
                "source": sample.source,
                "shapes": {k: shape for k, (shape, _) in found.items()},
                "dtypes": {k: dtype for k, (_, dtype) in found.items()},
                "bytes": path.stat().st_size,
                "meta": {},
                "adopted": True,
            }
        )
    return rows
