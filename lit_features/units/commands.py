"""``compact`` (one index for a store written in units) and ``migrate-units`` (a store of the earlier layout
into units). Both need the store alone: they take its lock exclusively, so no job runs meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from lit_features.store import layout
from lit_features.store.lock import StoreLock
from lit_features.store.poison import crash_rows
from lit_features.store.reader import NotAFeatureStoreError
from lit_features.units import lease
from lit_features.units.cutting import DEFAULT_UNIT_SIZE, unit_samples
from lit_features.units.opening import open_unit_list
from lit_features.units.rows import compact
from lit_features.units.unit_list import UNITS_DIR, claim_dir, has_units, unit_dir

log = logging.getLogger(__name__)

#: Rows of keys the manifest does not list (an earlier run's other manifest): kept, readers still see them.
EXTRA_UNIT = "u-extra"


def _stores(output_dir: Path) -> list[Path]:
    """The feature sets of an output directory: itself and any named folder with a ``store.json``."""
    found = [output_dir] if (output_dir / layout.STORE_JSON).exists() else []
    found += sorted(p.parent for p in output_dir.glob(f"*/{layout.STORE_JSON}") if p.parent.name != UNITS_DIR)
    if not found:
        raise NotAFeatureStoreError(f"{output_dir} is not a feature store (no {layout.STORE_JSON} in it or below)")
    return found


def compact_store(path: str) -> int:
    """Write ``index.jsonl`` and ``failures.jsonl`` of a store written in work units (optional: readers read
    the unit indexes directly), and remove what jobs that are gone left (temporary folders, attempt logs).

    Args:
        path: the store's output directory (a job's ``--writer.output_dir``).
    """
    output_dir = Path(path)
    stores = _stores(output_dir)
    lock = StoreLock(output_dir)
    lock.acquire()
    try:
        for root in stores:
            counts = compact(root)
            shutil.rmtree(root / layout.TMP_DIR, ignore_errors=True)  # we hold the store alone: no writer runs
            print(f"{root}: {counts['rows']} samples in {root / layout.MERGED_INDEX}, {counts['failures']} failures")
        shutil.rmtree(output_dir / UNITS_DIR / "jobs", ignore_errors=True)
    finally:
        lock.release()
    return 0


def migrate_units(
    path: str, manifest: str | list[str], root: str | None = None, unit_size: int = DEFAULT_UNIT_SIZE
) -> int:
    """Move a store written without work units into units, so jobs with ``--data.unit_size`` continue it.

    Rows go to the unit of their key (a released claim ``g0``, so the next job's claim is ``g1``); rows of keys
    the manifest does not list go to ``units/u-extra`` (readers still see them); the old logs move to
    ``.premigration/``. Run it again after an interruption: it rewrites the same files.

    Args:
        path: the store's output directory.
        manifest: the manifest(s) the jobs will give (as ``--data.manifest``).
        root: the jobs' ``--data.root``.
        unit_size: entries per unit.
    """
    output_dir = Path(path)
    stores = _stores(output_dir)
    lock = StoreLock(output_dir)
    lock.acquire()
    try:
        units = open_unit_list(output_dir, manifest, root, unit_size)
        where = {}
        for unit in units.units:
            for sample in unit_samples(units, unit):
                where[sample.key] = unit.uid
        for store in stores:
            moved = _migrate_rows(store, where)
            print(f"{store}: {moved} index rows moved into {len(units)} units")
        for uid in sorted(set(where.values())):
            folder = unit_dir(output_dir, uid)
            if not lease.lease_path(folder, 0).exists():
                lease.try_create(folder, 0, {"job": "migrate-units", "pid": os.getpid(), "expiry_s": 1})
            os.utime(lease.lease_path(folder, 0), (0, 0))  # released: the next claim takes generation 1
    finally:
        lock.release()
    return 0


def _migrate_rows(store: Path, where: dict[str, str]) -> int:
    if has_units(store) and not any((store / f).exists() for f in (layout.INDEX_DIR, layout.MERGED_INDEX)):
        return 0  # migrated already
    done: dict[str, dict] = {}
    for path in layout.rank_files(store, layout.INDEX_DIR):
        for row in layout.read_jsonl_rows(path):
            done[row["key"]] = row
    failed: dict[str, dict] = {}
    for path in layout.rank_files(store, layout.FAILURES_DIR):
        for row in layout.read_jsonl_rows(path):
            if row["key"] not in done:
                failed[row["key"]] = row
    crashes = {k: v for k, v in crash_rows(store).items() if k not in done}
    by_unit: dict[str, dict[str, list[dict]]] = {}
    for folder, rows in ((layout.INDEX_DIR, done), (layout.FAILURES_DIR, failed)):
        for key, row in rows.items():
            by_unit.setdefault(where.get(key, EXTRA_UNIT), {}).setdefault(folder, []).append(row)
    for key, rows in crashes.items():
        by_unit.setdefault(where.get(key, EXTRA_UNIT), {}).setdefault(layout.CRASHES_DIR, []).extend(rows)
    for uid, folders in by_unit.items():
        for folder, rows in folders.items():
            text = "".join(json.dumps(r) + "\n" for r in rows)
            layout.atomic_write_text(layout.rank_file(claim_dir(store, uid, 0), folder, 0), text)
    if done and EXTRA_UNIT in by_unit:
        log.warning(
            "%s: %d stored samples are not in the manifest; kept in %s/%s",
            store, len(by_unit[EXTRA_UNIT].get(layout.INDEX_DIR, [])), UNITS_DIR, EXTRA_UNIT,
        )  # fmt: skip
    aside = store / layout.PREMIGRATION_DIR
    aside.mkdir(exist_ok=True)
    for name in (layout.INDEX_DIR, layout.FAILURES_DIR, layout.CRASHES_DIR, layout.MERGED_INDEX,
                 layout.MERGED_FAILURES):  # fmt: skip
        if (store / name).exists():
            os.replace(store / name, aside / name)
    shutil.rmtree(store / layout.ATTEMPTS_DIR, ignore_errors=True)
    return len(done)
