"""``lit_features inspect``: summarise a feature store (counts, tensor shapes/dtypes, bytes, failures, damage).

Every index row is checked against its files (a ``stat``: missing or of another size); ``--check`` reads
every file in full and compares its tensors with the row. Damaged samples are not counted as written.
"""

from __future__ import annotations

import json as jsonlib
from collections import Counter, defaultdict
from typing import Any

from lit_features.models.stand_in import STAND_IN_MARKER
from lit_features.store.reader import FeatureStore


def summarise_store(store: FeatureStore, check: bool = False) -> dict[str, Any]:
    """Machine-readable summary: ``written``, ``damaged``, ``failed``, ``fingerprint``, per-tensor shapes/dtypes.

    Args:
        store: the store.
        check: read every sample in full (else only its files' sizes are checked).
    """
    shapes: dict[str, Counter] = defaultdict(Counter)
    dtypes: dict[str, Counter] = defaultdict(Counter)
    total_bytes = 0
    damaged: dict[str, str] = {}
    for key in store:
        problem = store.problem(key, full=check)
        if problem:
            damaged[key] = problem
            continue
        row = store.row(key)
        total_bytes += int(row.get("bytes", 0))
        for name, shape in row.get("shapes", {}).items():
            shapes[name][jsonlib.dumps(shape)] += 1
        for name, dtype in row.get("dtypes", {}).items():
            dtypes[name][dtype] += 1
    failures = store.failures()
    by_error: dict[str, dict[str, Any]] = {}
    for row in failures:
        group = by_error.setdefault(f"{row['stage']}/{row['error']}", {"count": 0, "keys": []})
        group["count"] += 1
        if len(group["keys"]) < 5:
            group["keys"].append(row["key"])
    return {
        "path": str(store.root),
        "extractor": store.info.get("extractor"),
        "fingerprint": store.fingerprint,
        "stand_in_weights": bool(store.info.get(STAND_IN_MARKER)),
        "created": store.info.get("created"),
        "codec": store.codec,
        "written": len(store) - len(damaged),
        "damaged": len(damaged),
        "damaged_samples": dict(list(damaged.items())[:20]),
        "checked": "full" if check else "sizes",
        "failed": len(failures),
        "bytes": total_bytes,
        "tensors": {
            name: {"shapes": dict(shapes[name].most_common(5)), "dtypes": dict(dtypes[name])} for name in sorted(shapes)
        },
        "failures_by_error": by_error,
    }


def inspect_store(path: str, json: bool = False, sample: str | None = None, check: bool = False) -> int:
    """Summarise the feature store at ``path``; exit status 1 when a stored sample is damaged.

    Args:
        path: the store's output directory.
        json: print one JSON object instead of the human summary.
        sample: print the tensors of this one key instead.
        check: read every stored sample in full and compare it with its index row (default: sizes only).
    """
    store = FeatureStore(path)
    if sample is not None:
        if sample not in store:
            print(f"{path}: no sample with key {sample!r}")
            return 1
        for name, tensor in store[sample].items():
            t = tensor.float()
            print(f"{name}: shape {list(tensor.shape)} {tensor.dtype} mean {t.mean():.4g} std {t.std():.4g}")
        print(jsonlib.dumps(store.meta(sample), default=str))
        return 0
    summary = summarise_store(store, check)
    status = 1 if summary["damaged"] else 0
    if json:
        print(jsonlib.dumps(summary))
        return status
    print(f"store       {summary['path']}")
    print(f"extractor   {summary['extractor']}  fingerprint {summary['fingerprint']}")
    if summary["stand_in_weights"]:
        print("WARNING     made with tiny random stand-in weights")
    print(f"written     {summary['written']} samples, {summary['bytes'] / 1e6:.2f} MB ({summary['codec']})")
    for name, info in summary["tensors"].items():
        print(f"  {name:20s} shapes {info['shapes']} dtypes {info['dtypes']}")
    if summary["damaged"]:
        print(f"DAMAGED     {summary['damaged']} samples ({summary['checked']} checked); a rerun of the job recomputes")
        print("            missing or cut-short files; delete other damaged files first")
        for key, problem in summary["damaged_samples"].items():
            print(f"  {key}: {problem}")
    print(f"failed      {summary['failed']}")
    for group, info in summary["failures_by_error"].items():
        print(f"  {group:36s} {info['count']:6d}  e.g. {', '.join(info['keys'])}")
    return status
