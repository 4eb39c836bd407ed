"""The unit list a job works from: read the store's own, or cut the manifest once (one job cuts, others wait).

The first job to need the list takes a cutting lease (``units/cutting/lease.<g>``, as for units) and cuts;
jobs starting meanwhile wait for ``list.json`` while that lease is alive, and take over when it is not (a
cutter that died). Publishing is create-if-absent, so even two cutters leave one list.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lit_features.data.manifest import RawEntry
from lit_features.units import lease
from lit_features.units.claims import new_job_id
from lit_features.units.cutting import cut_manifests, manifest_inputs
from lit_features.units.unit_list import LIST_FILE, UnitList, units_dir

log = logging.getLogger(__name__)

CUTTING_DIR = "cutting"


def open_unit_list(
    output_dir: Path,
    manifests: str | os.PathLike | Sequence[str | os.PathLike],
    root: str | None,
    unit_size: int,
    check: Callable[[RawEntry], None] | None = None,
    expiry_s: float = lease.DEFAULT_EXPIRY_S,
) -> UnitList:
    """The store's unit list, cut from ``manifests`` if the store has none yet.

    Raises:
        ManifestError: the manifest is broken (when this job cuts it).
        UnitListMismatchError: the store was cut from other manifests or another root.
    """
    if isinstance(manifests, (str, os.PathLike)):
        manifests = [manifests]
    folder = units_dir(output_dir)
    root = os.path.abspath(root) if root is not None and "://" not in str(root) else root
    inputs = manifest_inputs(manifests)
    cutting = folder / CUTTING_DIR
    keeper: lease.LeaseKeeper | None = None
    try:
        while not (folder / LIST_FILE).exists():
            view = lease.inspect_unit(cutting)
            generation = 0 if view.generation is None else view.generation + 1
            if view.generation is not None and view.stale_reason() is None:
                time.sleep(min(2.0, expiry_s / 4))  # another job is cutting: wait for its list
                continue
            if not lease.try_create(cutting, generation, lease.owner_info(new_job_id(), 1, expiry_s)):
                continue
            keeper = lease.LeaseKeeper(max(min(expiry_s / 10.0, 30.0), 0.05))
            keeper.hold("cutting", cutting, generation)
            started = time.monotonic()
            units = cut_manifests(manifests, folder, unit_size, root, check)
            units.inputs = inputs
            if units.write():
                log.info(
                    "cut %d manifest entries into %d units of up to %d in %.1f s (%s)",
                    units.entries, len(units), unit_size, time.monotonic() - started, folder / LIST_FILE,
                )  # fmt: skip
            lease.write_done(cutting, {"time": time.time()})
    finally:
        if keeper is not None:
            keeper.release_all()
    units = UnitList.read(folder)
    units.check_inputs(inputs, root)
    if units.unit_size != unit_size:
        log.info(
            "%s keeps its units of %d entries (--data.unit_size %d applies to new stores)",
            folder,
            units.unit_size,
            unit_size,
        )
    return units
