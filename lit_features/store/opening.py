"""Opening stores for a job (rank 0): refuse what would be silently wrong, lock, verify, clean, then prepare.

In that order, so a refused run changes nothing stored: the configuration and path checks need no lock; the
lock comes before reading the index (a stable view); the index is checked against this run's samples
(sources, paths) and against the disk (a ``stat`` per done file) before :meth:`StoreState.prepare` removes
what a killed job left and records the fingerprint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_features.interfaces import StoreSubject
from lit_features.models.stand_in import STAND_IN_MARKER
from lit_features.store import layout
from lit_features.store.codecs import EXTENSIONS
from lit_features.store.lock import StoreLock, StoreNotWritableError
from lit_features.store.resume import check_distinct_paths, check_same_inputs
from lit_features.store.state import StoreState

log = logging.getLogger(__name__)


def store_states(output_dir: Path, module: Any, codec: str, path_template: str) -> dict[str, StoreState]:
    """The stores a run writes (one per sub-store the module declares), each with its fingerprint and the
    description ``store.json`` records beside it. A module that is not an extractor gets one store named
    after its class."""
    if isinstance(module, StoreSubject):
        fingerprints, name, stand_in = module.store_fingerprints(), module.extractor_name, module.is_stand_in
    else:
        fingerprints, name, stand_in = {"": {"extractor": type(module).__qualname__}}, type(module).__name__, False
    extras = {"extractor": name, "codec": codec, "path_template": path_template, STAND_IN_MARKER: bool(stand_in)}
    return {
        sub: StoreState(output_dir / sub if sub else output_dir, {**fp, "writer": {"codec": codec}}, extras)
        for sub, fp in fingerprints.items()
    }


@dataclass
class OpenedStores:
    """What opening found: the held lock (``None`` when read-only), why the stores cannot be written (or
    ``None``), and per store the keys whose index rows lie (their file is missing or of another size)."""

    lock: StoreLock | None
    read_only: str | None
    invalid: dict[str, list[str]] = field(default_factory=dict)


def open_stores(
    output_dir: Path,
    stores: dict[str, StoreState],
    template: str,
    codec: str,
    samples: Sequence[Any] | None,
    overwrite: bool = False,
    accept_weights: bool = False,
) -> OpenedStores:
    """Open ``stores`` (all under ``output_dir``, locked together) for a job over ``samples``.

    Raises:
        StoreMismatchError, PathCollisionError, SourceMismatchError, StoreLayoutError, StoreLockedError: the
            refusals, each one line naming what and where; StoreNotWritableError with ``overwrite`` on a store
            that cannot be written.
    """
    ext = EXTENSIONS[codec]
    for store in stores.values():
        store.check(overwrite, accept_weights)
        if samples:
            check_distinct_paths(store.root, template, ext, list(samples))
    opened = OpenedStores(StoreLock(output_dir), None)
    try:
        opened.lock.acquire()
    except StoreNotWritableError as err:
        if overwrite:
            raise
        opened.lock, opened.read_only = None, str(err)
    try:
        _verify_and_prepare(opened, stores, template, ext, samples, overwrite)
    except BaseException:
        if opened.lock is not None:
            opened.lock.release()
        raise
    return opened


def _verify_and_prepare(
    opened: OpenedStores,
    stores: dict[str, StoreState],
    template: str,
    ext: str,
    samples: Sequence[Any] | None,
    overwrite: bool,
) -> None:
    keys = [s.key for s in samples] if samples else None
    for name, store in stores.items():
        if overwrite:
            store.prepare(overwrite=True)
            store.load(rows=True)
            continue
        store.load(rows=True)
        if samples:
            if "{key}" not in template:  # with {key} in the template no two keys can share a file
                check_distinct_paths(store.root, template, ext, list(samples), store.done)
            check_same_inputs(store.root, store.done, samples)
        problems = store.unverified(keys)
        if problems:
            key, why = next(iter(problems.items()))
            log.warning(
                "%s: %d stored samples are recomputed: their file is missing or has another size (e.g. %s: %s)",
                store.root, len(problems), key, why,
            )  # fmt: skip
        store.forget(problems)
        opened.invalid[name] = sorted(problems)
        if opened.read_only is None:
            store.prepare(overwrite=False)
    if opened.read_only is None and samples and layout.writes_beside_sources(template):
        # Temporary files a killed job left next to the sources (we hold the lock: no live job owns them).
        finals = (
            layout.resolve_sample_path(store.root, template, s.key, s.source, ext)
            for store in stores.values()
            for s in samples
        )
        removed = layout.remove_temp_files_of(finals)
        if removed:
            log.info("removed %d temporary files a killed job left beside the sources", removed)
