"""One store's state at the start of a job: its fingerprint check, its preparation, and what is settled in it.

Rank 0 checks and prepares the store while holding its lock; every rank then loads what is done, failed and
poisoned. Rank 0 keeps whole index rows (to check sources, paths and file sizes), the other ranks only keys.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lit_features import __version__
from lit_features.errors import UserError
from lit_features.store import layout
from lit_features.store.fingerprint import canonical_json, describe_difference, fingerprint_hash, without_weights
from lit_features.store.poison import crash_rows
from lit_features.store.resume import is_transient_failure, row_problem

log = logging.getLogger(__name__)

#: Folders of per-rank logs.
LOG_DIRS = (layout.INDEX_DIR, layout.FAILURES_DIR, layout.ATTEMPTS_DIR, layout.CRASHES_DIR)


class StoreMismatchError(UserError, RuntimeError):
    """The output directory holds features made with a different configuration."""


def _one_line(diff: str) -> str:
    return "; ".join(line.strip() for line in diff.splitlines())


class StoreState:
    """One feature set on disk (the output directory, or a named folder inside it)."""

    def __init__(self, root: Path, fingerprint: dict[str, Any], extras: dict[str, Any]):
        self.root = root
        self.fingerprint = fingerprint
        self.extras = extras
        self.done: dict[str, dict[str, Any] | None] = {}  # key -> latest index row (None: keys only)
        self.failures: dict[str, dict[str, Any]] = {}  # key -> latest failure row, for keys not done
        self.crashes: dict[str, list[dict[str, Any]]] = {}  # key -> crash rows, for keys not done
        self.accepting_weights = False

    # -- rank 0, before anything is changed -------------------------------------------------------------------
    def check(self, overwrite: bool, accept_weights: bool = False) -> None:
        """Refuse a store made with another configuration (unless ``overwrite``).

        Raises:
            StoreMismatchError: naming every difference, and the weights change when that is all that differs.
        """
        layout.refuse_symlinks(self.root)
        meta_path = self.root / layout.STORE_JSON
        if overwrite or not meta_path.exists():
            return
        try:
            stored = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise StoreMismatchError(
                f"{meta_path} cannot be read ({err}); write to another --writer.output_dir, or pass "
                "--writer.overwrite true to rebuild this store"
            ) from None
        if stored.get("fingerprint_hash") == fingerprint_hash(self.fingerprint):
            return
        old = stored.get("fingerprint", {})
        diff = _one_line(describe_difference(old, self.fingerprint))
        only_weights = canonical_json(without_weights(old)) == canonical_json(without_weights(self.fingerprint))
        version = stored.get("format_version", 1)
        if only_weights and accept_weights:
            self.accepting_weights = True
            return
        if only_weights and version < 2:
            raise StoreMismatchError(
                f"{self.root} was written by an earlier lit_features (store format {version}) that identified "
                f"weights by file names and sizes only, so it cannot tell whether these weights made its features "
                f"({diff}). If they did, pass --writer.accept_weights true to record their content and resume; "
                "otherwise write to another --writer.output_dir or pass --writer.overwrite true."
            )
        if only_weights:
            raise StoreMismatchError(
                f"{self.root} holds features made with other weights (retrained or fine-tuned under the same "
                f"names?): {diff}. Write to another --writer.output_dir, or pass --writer.overwrite true to replace "
                "this store (--writer.accept_weights true declares these weights compute the stored features)."
            )
        raise StoreMismatchError(
            f"{self.root} holds features made with a different configuration: {diff}. Write to another "
            "--writer.output_dir, or pass --writer.overwrite true to replace this store."
        )

    # -- rank 0, holding the lock -----------------------------------------------------------------------------
    def prepare(self, overwrite: bool) -> None:
        """Create or reset the store's files, drop what a killed job left behind, record the fingerprint."""
        self.root.mkdir(parents=True, exist_ok=True)
        meta_path = self.root / layout.STORE_JSON
        if overwrite and meta_path.exists():
            # Forget what was done: old sample files are replaced as they are rewritten.
            for folder in LOG_DIRS:
                shutil.rmtree(self.root / folder, ignore_errors=True)
            for name in (layout.MERGED_INDEX, layout.MERGED_FAILURES, layout.STORE_JSON):
                (self.root / name).unlink(missing_ok=True)
        # The attempt log only means something while its job runs; we hold the lock, so no job runs.
        shutil.rmtree(self.root / layout.ATTEMPTS_DIR, ignore_errors=True)
        for folder in LOG_DIRS:
            (self.root / folder).mkdir(exist_ok=True)
            for path in layout.rank_files(self.root, folder):
                layout.repair_torn_tail(path)
        # Temporary files of a killed job never read as done; remove them (sample files, merges, summaries).
        shutil.rmtree(self.root / layout.TMP_DIR, ignore_errors=True)
        stray = layout.remove_temp_files(self.root) + layout.remove_temp_files(self.root / layout.RUN_SUMMARY_DIR)
        if stray:
            log.info("%s: removed %d temporary files left by a killed job", self.root, stray)
        self.record_meta()

    def record_meta(self) -> None:
        """Write ``store.json`` when missing, or record accepted weights (see :meth:`check`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        meta_path = self.root / layout.STORE_JSON
        if not meta_path.exists():
            self._write_meta()
        elif self.accepting_weights:
            previous = json.loads(meta_path.read_text())
            log.warning(
                "%s: recording the configured weights as those that made this store (--writer.accept_weights): %s",
                self.root,
                _one_line(describe_difference(previous.get("fingerprint", {}), self.fingerprint)),
            )
            accepted = previous.get("accepted_weights", []) + [
                {"time": _now(), "previous_fingerprint_hash": previous.get("fingerprint_hash")}
            ]
            self._write_meta(created=previous.get("created"), accepted_weights=accepted)

    def _write_meta(self, **more: Any) -> None:
        meta = {
            "format_version": layout.STORE_FORMAT_VERSION,
            "fingerprint_hash": fingerprint_hash(self.fingerprint),
            "fingerprint": self.fingerprint,
            "lit_features_version": __version__,
            "created": more.pop("created", None) or _now(),
            **self.extras,
            **more,
        }
        layout.atomic_write_text(self.root / layout.STORE_JSON, json.dumps(meta, indent=2, default=str))

    # -- every rank ---------------------------------------------------------------------------------------------
    def load(self, rows: bool) -> None:
        """Read what is done (whole rows when ``rows``), failed and crashed, from every rank's logs."""
        index = layout.latest_rows(self.root, layout.INDEX_DIR)
        self.done = index if rows else dict.fromkeys(index)
        self.failures = layout.latest_rows(self.root, layout.FAILURES_DIR, exclude=self.done)
        self.crashes = {k: v for k, v in crash_rows(self.root).items() if k not in self.done}

    def unverified(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """Done rows (of ``keys``, default all) whose files are missing or of another size: key -> problem."""
        wanted = self.done.keys() if keys is None else [k for k in keys if k in self.done]
        problems = {}
        for key in wanted:
            row = self.done[key]
            if row is not None and (problem := row_problem(self.root, row)):
                problems[key] = problem
        return problems

    def forget(self, keys: Iterable[str]) -> None:
        """Treat ``keys`` as not done (their rows lie: the file is gone or cut short)."""
        for key in keys:
            self.done.pop(key, None)

    def settled(
        self, samples: Mapping[str, Any], retry_failed: bool, max_attempts: int
    ) -> tuple[set[str], dict[str, int]]:
        """Keys not to schedule, and the poisoned keys among them (key -> crashes).

        Done keys; failed keys unless ``retry_failed``, the failure was transient (a write error or out of
        memory) or it happened to another source under the same key; keys whose worker died ``max_attempts``
        times while the job survived (also under ``retry_failed``: that guard protects the run).
        """
        skip = set(self.done)
        for key, row in self.failures.items():
            sample = samples.get(key)
            if is_transient_failure(row) or (sample is not None and row.get("source") != sample.source):
                continue
            if not retry_failed:
                skip.add(key)
        poisoned = {}
        for key, rows in self.crashes.items():
            sample = samples.get(key)
            count = sum(1 for r in rows if sample is None or r.get("source") == sample.source)
            if count >= max_attempts:
                poisoned[key] = count
                skip.add(key)
        return skip, poisoned


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
