"""Per-rank progress snapshots and failure previews in the store's ``live/<run>/`` folder, written and read as files.

Each rank replaces its own small ``live/<run>/rank-<r>.json`` every few seconds; rank 0 reads them all to log the
job's progress. Files rather than collectives: ranks run different numbers of batches, and a rank that stalls
or dies shows up as a snapshot that stops getting younger instead of hanging the others. The store is shared by
every node (checked at start), so this works across nodes as well. Each run has its own folder: jobs working
in units share a store at the same time, and one job's snapshots must neither mix with nor wipe another's.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

from lit_features.store import layout
from lit_features.units.lease import lease_path
from lit_features.units.unit_list import units_dir

PREVIEWS = "previews"


#: A run folder nobody wrote to for this long belongs to a job that is over (kept meanwhile: a job beside us).
STALE_RUN_S = 3600.0


def live_dir(store_root: Path, run: str) -> Path:
    """The folder of one run's snapshots and previews."""
    return Path(store_root) / layout.LIVE_DIR / run


def clear(store_root: Path) -> None:
    """Forget what runs that are over left (rank 0, at start): folders untouched for an hour, older flat files."""
    folder = Path(store_root) / layout.LIVE_DIR
    if not folder.is_dir():
        return
    cutoff = time.time() - STALE_RUN_S
    for entry in folder.iterdir():
        try:
            newest = max([p.stat().st_mtime for p in entry.rglob("*")] + [entry.stat().st_mtime])
        except OSError:
            continue
        if entry.is_dir() and newest >= cutoff:
            continue  # another job working in units on this store right now
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def write_snapshot(folder: Path, rank: int, snapshot: dict[str, Any]) -> None:
    """Replace ``<folder>/rank-<rank>.json`` atomically (a reader never sees half a snapshot)."""
    path = Path(folder) / f"rank-{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not fsynced: a snapshot lost to a power cut is replaced a few seconds later.
    layout.atomic_write(path, json.dumps(snapshot, default=float).encode(), None, False)


def read_snapshots(folder: Path) -> dict[int, dict[str, Any]]:
    """Every rank's latest snapshot, by rank (a snapshot being replaced right now is read at the next poll)."""
    snapshots = {}
    for path in Path(folder).glob("rank-*.json"):
        try:
            snapshot = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        snapshots[int(snapshot["rank"])] = snapshot
    return dict(sorted(snapshots.items()))


def preview_path(folder: Path, key: str) -> Path:
    """Where the preview of ``key``'s failing frame goes (a name from the key's hash: keys may be long)."""
    return Path(folder) / PREVIEWS / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.png"


def write_preview(folder: Path, key: str, frame: Any) -> None:
    """Save a failure's thumbnail (``uint8 [h, w, 3]``) as PNG for the failures table."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    path = preview_path(folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    layout.atomic_write(path, buffer.getvalue(), None, False)


def read_preview(folder: Path, key: str) -> Any:
    """The preview of ``key`` as a ``uint8`` array, or ``None`` when none was decoded."""
    path = preview_path(folder, key)
    if not path.exists():
        return None
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class FailureTail:
    """New rows of this job's failure logs since the run started (complete lines only, in file order).

    Without units, the per-rank logs under ``failures/``. In units, the logs of the claims this job holds
    (``units/<uid>/g<g>/failures/``, a claim being this job's when its lease ``lease.<g>`` names the job): other
    jobs working on the store at the same time keep their failures in their own claims.
    """

    def __init__(self, store_root: Path, since: float, job: str | None = None):
        self.root = Path(store_root)
        self.since = since  # rows of earlier runs stay in the append-only logs: their ``time`` is older
        self.job = job
        self._offsets: dict[Path, int] = {}
        self._claims: dict[Path, bool] = {}  # claim folder -> held by this job (a lease never changes owner)

    def _paths(self) -> list[Path]:
        if not self.job:
            return layout.rank_files(self.root, layout.FAILURES_DIR)
        paths = []
        for claim in units_dir(self.root).glob("*/g*"):
            if claim not in self._claims:
                self._claims[claim] = self._owner(claim) == self.job
            if self._claims[claim]:
                paths += layout.rank_files(claim, layout.FAILURES_DIR)
        return paths

    @staticmethod
    def _owner(claim: Path) -> str | None:
        try:
            info = json.loads(lease_path(claim.parent, int(claim.name[1:])).read_text())
        except (OSError, ValueError):
            return None
        return info.get("job") if isinstance(info, dict) else None

    def new_rows(self) -> list[dict[str, Any]]:
        rows = []
        for path in self._paths():
            start = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]  # a line being appended right now comes next time
            self._offsets[path] = start + len(complete)
            for line in complete.splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if float(row.get("time", self.since)) >= self.since:
                    rows.append(row)
        return rows
