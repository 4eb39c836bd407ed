"""``lit_features filter``: the FlashI2V clip filter, from a YAML like upstream ``filter_config.yaml``.

    python -m lit_features filter --config filter_config.yaml [--output kept.json] [--lmdb true]

The options are the upstream config keys (``ann_txt_path``, ``save_path``, ``sample_height``, ``sample_width``,
``sample_num_frames``, ``min_hxw``, ``train_fps``, ``max_h_div_w_ratio``, ``min_h_div_w_ratio``, ...), so an
upstream config file is read as is through ``--config``. Rows of the ``<root>,<meta_json>`` list are dropped by
the first rule they fail, in this order (as the upstream filter does):

1. ``no_cap``: no ``cap`` (missing or null);
2. ``no_resolution``: ``resolution`` missing, or its height/width missing or <= 0;
3. ``aspect_ratio``: h/w outside [min_h_div_w_ratio, max_h_div_w_ratio];
4. ``too_small``: h*w < ceil(min_hxw * max(r / r_t, r_t / r)), r = h/w, r_t = sample_height/sample_width;
5. ``too_long``: num_frames > too_long_factor * (sample_num_frames * fps / train_fps), fps defaulting to 24;
6. ``fps_too_low``: frame interval (1 if |fps - train_fps| < 0.1 else fps / train_fps) below 1;
7. ``motion``: ``motion`` (default 0) outside [min_motion_value, max_motion_value];
8. ``too_short``: fewer than sample_num_frames frames in arange(start, start + num_frames, interval),
   start = cut[0] (default 0), which kept rows carry as ``start_frame_idx``.

Kept rows are written as a JSON list (a manifest ``predict`` reads directly; paths joined onto their root) and, with
``--lmdb true``, as an LMDB in the upstream layout (``<save_path>/filtered_samples_<N>.lmdb``, keys ``%012d``,
values pickled rows). An upstream LMDB can be read back as input with ``--from_lmdb``; its values are pickles, so
that needs ``--allow_pickle true``, and even then only plain data (no classes or functions) is accepted.
"""

from __future__ import annotations

import io
import json as jsonlib
import math
import os
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lit_features.data.list_files import list_file_pairs
from lit_features.data.manifest_error import ManifestError
from lit_features.data.sampling import fps_interval
from lit_features.errors import ConfigError, UserError
from lit_features.progress import progress

RULES = (
    "no_cap",
    "no_resolution",
    "aspect_ratio",
    "too_small",
    "too_long",
    "fps_too_low",
    "motion",
    "too_short",
)
DEFAULT_FPS = 24


@dataclass(frozen=True)
class FilterRules:
    """The thresholds of the eight rules: the upstream ``filter_config.yaml`` keys, defined here once.

    Args:
        sample_height: training height (rule 4's target aspect).
        sample_width: training width.
        sample_num_frames: frames per training sample (rules 5 and 8).
        train_fps: training frame rate (rules 5 and 6); ``null`` to use ``sample_stride``.
        sample_stride: fixed frame stride when ``train_fps`` is null (rule 6 then never drops).
        min_hxw: minimum pixel count at the target aspect (rule 4), scaled up for other aspects.
        too_long_factor: rule 5's factor.
        max_h_div_w_ratio: largest accepted height/width (rule 3).
        min_h_div_w_ratio: smallest accepted height/width (rule 3).
        max_motion_value: largest accepted ``motion`` (rule 7).
        min_motion_value: smallest accepted ``motion`` (rule 7).
    """

    sample_height: int = 480
    sample_width: int = 832
    sample_num_frames: int = 49
    train_fps: float | None = 16
    sample_stride: float | None = None
    min_hxw: int = 480 * 832
    too_long_factor: float = 5.0
    max_h_div_w_ratio: float = 2.0
    min_h_div_w_ratio: float = 0.5
    max_motion_value: float = 1.0
    min_motion_value: float = 0.0


class PickleRefusedError(UserError, PermissionError):
    """An LMDB of pickled rows was given without ``--allow_pickle true``."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def frame_interval(fps: float, train_fps: float | None, sample_stride: float | None) -> float:
    """Source frames per sampled frame: fps-resampling (1 within 0.1 fps), or a fixed stride."""
    if train_fps is not None:
        return fps_interval(fps, train_fps)  # the same rule the fps frame sampling uses
    assert sample_stride is not None
    return float(sample_stride)


def drop_reason(row: dict[str, Any], rules: FilterRules) -> str | None:
    """The first rule ``row`` fails (a name from :data:`RULES`), or ``None`` when it is kept.

    A kept row gets ``start_frame_idx``. Values the rules cannot compare (a string height, a row without
    ``num_frames``) raise :class:`ValueError`: upstream would crash on them too.
    """
    r = rules
    if row.get("cap") is None:
        return "no_cap"
    res = row.get("resolution")
    if not isinstance(res, dict) or res.get("height") is None or res.get("width") is None:
        return "no_resolution"
    height, width = res["height"], res["width"]
    if not (_number(height) and _number(width)):
        raise ValueError(f"resolution must hold numbers, got {res!r}")
    if height <= 0 or width <= 0:
        return "no_resolution"
    ratio = height / width
    if not r.min_h_div_w_ratio <= ratio <= r.max_h_div_w_ratio:
        return "aspect_ratio"
    target = r.sample_height / r.sample_width
    if height * width < math.ceil(r.min_hxw * max(ratio / target, target / ratio)):
        return "too_small"
    fps = row.get("fps", DEFAULT_FPS)
    if "num_frames" not in row:
        raise ValueError("no 'num_frames' (the clip's frame count, which rules 5 and 8 need)")
    num_frames = row["num_frames"]
    if not (_number(fps) and _number(num_frames)):
        raise ValueError(f"fps and num_frames must be numbers, got {fps!r} and {num_frames!r}")
    reference_fps = r.train_fps if r.train_fps is not None else fps
    if num_frames > r.too_long_factor * (r.sample_num_frames * fps / reference_fps):
        return "too_long"
    interval = frame_interval(fps, r.train_fps, r.sample_stride)
    if r.train_fps is not None and interval < 1.0:
        return "fps_too_low"
    motion = row.get("motion", 0.0)
    if not _number(motion):
        raise ValueError(f"motion must be a number, got {motion!r}")
    if motion < r.min_motion_value or motion > r.max_motion_value:
        return "motion"
    cut = row.get("cut")
    start = cut[0] if isinstance(cut, (list, tuple)) and cut else 0
    row["start_frame_idx"] = start
    if len(np.arange(start, start + num_frames, interval).astype(int)) < r.sample_num_frames:
        return "too_short"
    return None


def read_ann_list(ann_txt_path: str, absolute_paths: bool = True) -> list[tuple[dict[str, Any], str]]:
    """Rows of every meta JSON in a ``<root>,<meta_json>`` list, with ``path`` joined onto its root.

    Relative roots and JSON paths resolve against the list file's folder. Returns ``(row, where)`` pairs, where
    ``where`` names the JSON file and entry for messages.
    """
    list_file = Path(ann_txt_path)
    if not list_file.exists():
        raise ManifestError(list_file, "annotation list not found")
    rows = []
    for lineno, *parts in list_file_pairs(list_file.read_text(encoding="utf-8").splitlines(), list_file):
        root, meta = (Path(p) if os.path.isabs(p) else list_file.parent / p for p in parts)
        if not meta.exists():
            raise ManifestError(list_file, f"meta JSON {str(meta)!r} does not exist", entry=lineno)
        try:
            data = jsonlib.loads(meta.read_text(encoding="utf-8"))
        except jsonlib.JSONDecodeError as err:
            raise ManifestError(meta, f"invalid JSON at line {err.lineno}: {err.msg}") from None
        if not isinstance(data, list):
            raise ManifestError(meta, f"expected a JSON list of rows, got {type(data).__name__}")
        for index, row in enumerate(progress(data, desc=f"reading {meta.name}", unit="rows")):
            if not isinstance(row, dict):
                raise ManifestError(meta, f"expected an object, got {type(row).__name__}", index)
            if not isinstance(row.get("path"), str) or not row["path"]:
                raise ManifestError(meta, "missing or empty (the video, relative to its root)", index, "path")
            if absolute_paths:
                row["path"] = os.path.normpath(os.path.join(root.resolve(), row["path"]))
            rows.append((row, f"{meta}, entry {index}"))
    return rows


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles only built-in containers and scalars: a row that names any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data rows are accepted")


def read_lmdb_rows(path: str, allow_pickle: bool = False) -> list[dict[str, Any]]:
    """Rows of an upstream ``filtered_samples_<N>.lmdb`` (keys ``%012d``, values pickled rows), in key order.

    Pickles can run code when loaded, so this refuses unless ``allow_pickle`` is set; even then values are
    read with an unpickler that accepts plain data only.
    """
    if not allow_pickle:
        raise PickleRefusedError(
            f"{path}: LMDB values are Python pickles, which can run arbitrary code when loaded. Pass "
            "--allow_pickle true (allow_pickle=True) only for a file you trust; plain data rows only are accepted."
        )
    import lmdb

    if not os.path.isdir(path):
        raise ManifestError(path, "not an LMDB folder (give the folder a filter run wrote with --lmdb true)")
    env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True)
    try:
        with env.begin() as txn:
            rows = []
            for key, value in txn.cursor():
                try:
                    row = _PlainDataUnpickler(io.BytesIO(value)).load()
                except pickle.UnpicklingError as err:
                    raise ManifestError(path, f"key {key.decode()}: {err}") from None
                if not isinstance(row, dict):
                    raise ManifestError(path, f"key {key.decode()}: expected a dict row, got {type(row).__name__}")
                rows.append(row)
            return rows
    finally:
        env.close()


def write_lmdb_rows(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as upstream does: keys ``f"{i:012d}"``, values ``pickle.dumps(row)``."""
    import lmdb

    values = [pickle.dumps(row) for row in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # LMDB needs an upper bound on its size; the file only grows to what is written.
    env = lmdb.open(str(path), map_size=max(1 << 24, 4 * sum(len(v) + 64 for v in values)))
    try:
        with env.begin(write=True) as txn:
            for i, value in enumerate(values):
                txn.put(f"{i:012d}".encode(), value)
    finally:
        env.close()
    return path


def lmdb_path(save_path: str, count: int) -> Path:
    """Upstream naming: ``<save_path>/filtered_samples_<N>.lmdb`` (or ``<dir>/filtered_samples_<N>_<name>.lmdb``)."""
    if save_path.endswith(".lmdb"):
        return Path(os.path.dirname(save_path) or ".") / f"filtered_samples_{count}_{os.path.basename(save_path)}"
    return Path(save_path) / f"filtered_samples_{count}.lmdb"


def filter_clips(
    ann_txt_path: str | None = None,
    save_path: str = "outputs/filtered",
    save_absolute_path: bool = True,
    output: str | None = None,
    lmdb: bool = False,
    from_lmdb: str | None = None,
    allow_pickle: bool = False,
    json: bool = False,
    **rules: Any,
) -> int:
    """Filter clips with the FlashI2V rules; write the kept rows as a JSON manifest (and an LMDB on request).

    Args:
        ann_txt_path: list file of ``<dataset_root>,<meta_json>`` lines (meta rows: ``path``, ``cap``,
            ``resolution``, ``num_frames``, ``fps``, optional ``cut`` and ``motion``).
        save_path: folder receiving ``filtered_samples_<N>.json`` (and ``.lmdb``).
        save_absolute_path: join each row's ``path`` onto its root (needed for a manifest usable anywhere).
        output: path of the kept-rows JSON (default ``<save_path>/filtered_samples_<N>.json``).
        lmdb: also write ``<save_path>/filtered_samples_<N>.lmdb`` in the upstream layout.
        from_lmdb: read rows from this upstream LMDB instead of ``ann_txt_path`` (needs ``allow_pickle``).
        allow_pickle: accept the pickled values of ``from_lmdb`` (plain data only).
        json: print the summary as one JSON object.
        rules: the rules' thresholds (:class:`FilterRules`; ``--sample_height`` ... ``--min_motion_value``).

    Returns:
        0 on success. What is wrong with an input (list, meta JSON, row, LMDB, option) raises a
        :class:`~lit_features.errors.UserError` naming it (the command line prints it and exits 2).
    """
    summary = run_filter(
        ann_txt_path, save_path, FilterRules(**rules), save_absolute_path, output, lmdb, from_lmdb, allow_pickle
    )
    if json:
        print(jsonlib.dumps(summary))
        return 0
    print(f"filter: {summary['total']} rows, kept {summary['kept']}, dropped {summary['total'] - summary['kept']}")
    for number, rule in enumerate(RULES, start=1):
        print(f"  rule {number} {rule:14s} dropped {summary['dropped'][rule]}")
    print(f"kept rows   {summary['json']}")
    if summary["lmdb"]:
        print(f"lmdb        {summary['lmdb']}")
    return 0


def run_filter(
    ann_txt_path: str | None,
    save_path: str,
    rules: FilterRules,
    save_absolute_path: bool,
    output: str | None,
    lmdb: bool,
    from_lmdb: str | None,
    allow_pickle: bool,
) -> dict[str, Any]:
    """:func:`filter_clips` without the printing: returns the summary (counts per rule, output paths)."""
    if (ann_txt_path is None) == (from_lmdb is None):
        raise ConfigError("give exactly one input: ann_txt_path (a <root>,<json> list) or from_lmdb")
    if rules.train_fps is None and rules.sample_stride is None:
        raise ConfigError("give train_fps or sample_stride")
    if from_lmdb is not None:
        rows = [(row, f"{from_lmdb}, key {i:012d}") for i, row in enumerate(read_lmdb_rows(from_lmdb, allow_pickle))]
    else:
        rows = read_ann_list(ann_txt_path, save_absolute_path)  # type: ignore[arg-type]
    dropped: Counter[str] = Counter()
    kept = []
    for row, where in progress(rows, desc="filter", unit="rows"):
        try:
            reason = drop_reason(row, rules)
        except ValueError as err:
            raise ManifestError(where, str(err)) from None
        if reason is None:
            kept.append(row)
        else:
            dropped[reason] += 1
    out_json = Path(output) if output else Path(save_path) / f"filtered_samples_{len(kept)}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(jsonlib.dumps(kept, indent=1, ensure_ascii=False), encoding="utf-8")
    written_lmdb = str(write_lmdb_rows(lmdb_path(save_path, len(kept)), kept)) if lmdb else None
    return {
        "total": len(rows),
        "kept": len(kept),
        "dropped": {rule: dropped.get(rule, 0) for rule in RULES},
        "json": str(out_json),
        "lmdb": written_lmdb,
    }
