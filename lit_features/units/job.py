"""One job's side of a store written in work units: opening it, and preparing each claimed unit (rank 0).

Opening keeps the store's guarantees without reading any index: the configuration (fingerprint) is checked as
for any store, the path template must contain ``{key}`` (keys are unique over the whole manifest, so no two
samples share a file, and no cross-unit check is needed), and a store holding rows of the previous layout is
refused with the command that migrates it. Jobs share ``<store>/.lock`` (a shared ``flock``): many unit jobs
run at once, while anything that needs the store alone (a job of the previous layout, ``compact``, ``migrate``)
is kept out, and keeps them out.

Preparing a claimed unit reads only that unit's rows, then applies the checks a whole-store resume applies:
a key stored from another input is refused, a done row whose file is missing or of another size is redone,
failures are settled as before (write errors and out-of-memory retried; poison after ``max_attempts``
crashes). What is left is the unit's work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_features.errors import UserError
from lit_features.records import Failure
from lit_features.store import layout
from lit_features.store.resume import check_same_inputs, row_problem
from lit_features.store.state import StoreState
from lit_features.units.claims import UnitClaimer
from lit_features.units.cutting import unit_samples
from lit_features.units.rows import unit_logs
from lit_features.units.unit_list import UNITS_DIR, UnitList, claim_dir

log = logging.getLogger(__name__)


class UnitLayoutError(UserError, RuntimeError):
    """A store and a job disagree about work units (old layout, a template without ``{key}``, ...)."""


class UnitRefusedError(UserError, RuntimeError):
    """Rank 0 refused the store, the manifest or a unit; the job's other ranks stop with its message."""


def old_layout_rows(root: Path) -> bool:
    """Whether ``root`` holds index or failure rows of the layout before work units."""
    for folder in (layout.INDEX_DIR, layout.FAILURES_DIR):
        if any(p.stat().st_size > 0 for p in layout.rank_files(root, folder)):
            return True
    return (root / layout.MERGED_INDEX).exists() and (root / layout.MERGED_INDEX).stat().st_size > 0


def check_unit_options(
    template: str, overwrite: bool, exports: Sequence[str | None], skip_existing: bool = False
) -> None:
    """Refuse writer options that need the whole store at once.

    Raises:
        UnitLayoutError: naming the option and what to do instead.
    """
    if "{key}" not in template or layout.writes_beside_sources(template):
        raise UnitLayoutError(
            f"--writer.path_template {template!r}: with work units (--data.unit_size) each sample file must be "
            "named by its key inside the store (keys are unique over the whole manifest; other names could "
            "collide across units, which no job sees together). Use e.g. '{shard}/{key}{ext}'."
        )
    if overwrite:
        raise UnitLayoutError(
            "--writer.overwrite true cannot be combined with work units: other jobs may be writing the store. "
            "Delete the store folder (when no job runs) or write to another --writer.output_dir."
        )
    if skip_existing:
        raise UnitLayoutError(
            "--writer.skip_existing (adopting files made outside the store) is not available with work units yet; "
            "run it once without --data.unit_size, then migrate the store (`python -m lit_features migrate-units`)."
        )
    if any(exports):
        raise UnitLayoutError(
            "--writer.export_manifest / --writer.export_jsonl need the whole index at the end of one job; with "
            "work units, run `python -m lit_features compact STORE` after the last job and export from there."
        )


def refuse_old_layout_below(output_dir: Path) -> None:
    """Before cutting into an output directory: refuse it when it (or a named feature set in it) holds rows of
    the layout before units, so a refused job leaves nothing behind (see :func:`refuse_old_layout`)."""
    roots = [output_dir, *(p.parent for p in output_dir.glob(f"*/{layout.STORE_JSON}"))]
    refuse_old_layout({str(r): StoreState(r, {}, {}) for r in roots}, units_given=True)


def refuse_old_layout(stores: dict[str, StoreState], units_given: bool) -> None:
    """Never ignore rows a store already has: old layout under units, or units under the old layout.

    Raises:
        UnitLayoutError: naming the store and the command that migrates it.
    """
    for store in stores.values():
        has_units = (store.root / UNITS_DIR).is_dir()
        if units_given and old_layout_rows(store.root):
            raise UnitLayoutError(
                f"{store.root} holds samples in the layout without work units (index/rank-*.jsonl); a job in "
                "units would not see them. Migrate the output directory once, when no job runs: `python -m "
                "lit_features migrate-units OUTPUT_DIR MANIFEST --unit_size N` (the job's manifest and "
                "--data.root), or drop --data.unit_size."
            )
        if not units_given and has_units:
            raise UnitLayoutError(
                f"{store.root} is written in work units ({UNITS_DIR}/); a job without --data.unit_size would not "
                "see them. Give --data.unit_size (any value: the store keeps its own) to continue it."
            )


class UnitJob:
    """Rank 0's claims for one job and the state of each claimed unit (see the module docstring).

    Args:
        output_dir: the job's output directory.
        stores: the job's feature sets (each keeps its own unit rows).
        units: the store's unit list.
        claimer: claims units for the job.
        retry_failed, max_attempts: as for :class:`~lit_features.store.writer.FeatureWriter`.
    """

    def __init__(
        self,
        output_dir: Path,
        stores: dict[str, StoreState],
        units: UnitList,
        claimer: UnitClaimer,
        retry_failed: bool,
        max_attempts: int,
    ):
        self.output_dir = output_dir
        self.stores = stores
        self.units = units
        self.claimer = claimer
        self.retry_failed = retry_failed
        self.max_attempts = max_attempts
        self.redone = 0  # done rows found lying (file missing or of another size)
        self.skipped = 0  # samples of claimed units already settled

    def claim(self) -> tuple[tuple[str, int], list[Any], list[int]] | str | None:
        """The next claimed unit with work left: ``((uid, generation), its samples, positions to do)``, or
        :data:`~lit_features.units.claims.WAIT` / ``None`` (see :meth:`UnitClaimer.next_unit`)."""
        while True:
            claimed = self.claimer.next_unit()
            if claimed is None or isinstance(claimed, str):
                return claimed
            unit, generation = claimed
            samples = unit_samples(self.units, unit)
            todo = self.todo(unit.uid, generation, samples)
            self.skipped += len(samples) - len(todo)
            if todo:
                return (unit.uid, generation), samples, todo
            self.claimer.finish(unit.uid)

    def todo(self, uid: str, generation: int, samples: list[Any]) -> list[int]:
        """Positions of ``samples`` not settled in every feature set (see the module docstring)."""
        by_key = {s.key: s for s in samples}
        settled: set[str] | None = None
        for store in self.stores.values():
            done, failures, crashes = unit_logs(store.root, uid)
            check_same_inputs(store.root, done, samples)
            lying = {k: why for k, row in done.items() if (why := row_problem(store.root, row))}
            if lying:
                key, why = next(iter(lying.items()))
                log.warning(
                    "%s, unit %s: %d stored samples are recomputed: their file is missing or has another size "
                    "(e.g. %s: %s)", store.root, uid, len(lying), key, why,
                )  # fmt: skip
                self.redone += len(lying)
            state = StoreState(store.root, store.fingerprint, store.extras)
            state.done = {k: v for k, v in done.items() if k not in lying}
            state.failures, state.crashes = failures, crashes
            skip, poisoned = state.settled(by_key, self.retry_failed, self.max_attempts)
            self._record_poisoned(store, uid, generation, by_key, failures, poisoned)
            settled = skip if settled is None else settled & skip
        return [i for i, s in enumerate(samples) if s.key not in (settled or set())]

    def _record_poisoned(
        self,
        store: StoreState,
        uid: str,
        generation: int,
        by_key: dict[str, Any],
        failures: dict[str, dict[str, Any]],
        poisoned: dict[str, int],
    ) -> None:
        rows = []
        for key, n in sorted(poisoned.items()):
            if failures.get(key, {}).get("error") == "RepeatedWorkerCrash":
                continue
            source = getattr(by_key.get(key), "source", None)
            failure = Failure(key, source, "decode", "RepeatedWorkerCrash", f"its worker died {n} times on it")
            rows.append({**failure.as_row(), "rank": 0, "time": time.time()})
        if rows:
            path = claim_dir(store.root, uid, generation) / layout.FAILURES_DIR / "rank-0-poison.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in rows))
