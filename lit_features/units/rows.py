"""Reading a store's unit indexes: one unit's state for a claim, every row for readers, and ``compact``.

Rows of one unit are read claim by claim, oldest first, so the latest row per key wins (a claim taken over
from a dead job continues after the rows that job made durable). Readers walk the units one at a time: no
merged index is needed, and nothing holds more than one unit's rows beyond what the caller keeps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lit_features.store import layout
from lit_features.store.poison import crash_rows
from lit_features.units.unit_list import UNITS_DIR, claim_dirs


def unit_ids(store_root: Path) -> list[str]:
    """Units of a feature set that have rows (a folder ``units/u*`` with claim folders)."""
    try:
        names = [e.name for e in os.scandir(Path(store_root) / UNITS_DIR) if e.is_dir() and e.name[:1] == "u"]
    except OSError:
        return []
    return sorted(names)


def unit_logs(
    store_root: Path, uid: str
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """(done rows, failure rows of keys not done, crash rows of keys not done) of one unit, latest row per key."""
    done: dict[str, dict[str, Any]] = {}
    failures: dict[str, dict[str, Any]] = {}
    crashes: dict[str, list[dict[str, Any]]] = {}
    for claim in claim_dirs(store_root, uid):  # a claim folder is laid out as a store's logs are
        done.update(layout.latest_rows(claim, layout.INDEX_DIR))
        failures.update(layout.latest_rows(claim, layout.FAILURES_DIR, exclude=done))
        for key, rows in crash_rows(claim).items():
            crashes.setdefault(key, []).extend(rows)
    failures = {k: v for k, v in failures.items() if k not in done}
    return done, failures, {k: v for k, v in crashes.items() if k not in done}


def iter_unit_rows(store_root: Path, failures: bool = False) -> Iterator[dict[str, Any]]:
    """Every done row (or, with ``failures``, every failure row of a key not done) of every unit, unit by unit."""
    for uid in unit_ids(store_root):
        done, failed, _ = unit_logs(store_root, uid)
        yield from (failed if failures else done).values()


def compact(store_root: Path) -> dict[str, int]:
    """Write ``index.jsonl`` and ``failures.jsonl`` of a store written in units (latest row per key, by key).

    Optional: readers read the unit indexes directly. Returns the number of rows written to each.
    """
    root = Path(store_root)
    rows = sorted(iter_unit_rows(root), key=lambda r: r["key"])
    failed = sorted(iter_unit_rows(root, failures=True), key=lambda r: r["key"])
    layout.atomic_write_text(root / layout.MERGED_INDEX, "".join(json.dumps(r) + "\n" for r in rows))
    layout.atomic_write_text(root / layout.MERGED_FAILURES, "".join(json.dumps(r) + "\n" for r in failed))
    return {"rows": len(rows), "failures": len(failed)}
