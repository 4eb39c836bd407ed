"""Per-rank progress snapshots and failure previews in the store's ``live/`` folder, written and read as files.

Each rank replaces its own small ``live/rank-<r>.json`` every few seconds; rank 0 reads them all to log the
job's progress. Files rather than collectives: ranks run different numbers of batches, and a rank that stalls
or dies shows up as a snapshot that stops getting younger instead of hanging the others. The store is shared by
every node (checked at start), so this works across nodes as well.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

from lit_features.store import layout

PREVIEWS = "previews"


def live_dir(store_root: Path) -> Path:
    return Path(store_root) / layout.LIVE_DIR


def clear(store_root: Path) -> None:
    """Forget the previous run's snapshots and previews (rank 0, before any rank writes)."""
    shutil.rmtree(live_dir(store_root), ignore_errors=True)


def write_snapshot(store_root: Path, rank: int, snapshot: dict[str, Any]) -> None:
    """Replace ``live/rank-<rank>.json`` atomically (a reader never sees half a snapshot)."""
    path = live_dir(store_root) / f"rank-{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not fsynced: a snapshot lost to a power cut is replaced a few seconds later.
    layout.atomic_write(path, json.dumps(snapshot, default=float).encode(), None, False)


def read_snapshots(store_root: Path) -> dict[int, dict[str, Any]]:
    """Every rank's latest snapshot, by rank (a snapshot being replaced right now is read at the next poll)."""
    snapshots = {}
    for path in live_dir(store_root).glob("rank-*.json"):
        try:
            snapshot = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        snapshots[int(snapshot["rank"])] = snapshot
    return dict(sorted(snapshots.items()))


def preview_path(store_root: Path, key: str) -> Path:
    """Where the preview of ``key``'s failing frame goes (a name from the key's hash: keys may be long)."""
    return live_dir(store_root) / PREVIEWS / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.png"


def write_preview(store_root: Path, key: str, frame: Any) -> None:
    """Save a failure's thumbnail (``uint8 [h, w, 3]``) as PNG for the failures table."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    path = preview_path(store_root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    layout.atomic_write(path, buffer.getvalue(), None, False)


def read_preview(store_root: Path, key: str) -> Any:
    """The preview of ``key`` as a ``uint8`` array, or ``None`` when none was decoded."""
    path = preview_path(store_root, key)
    if not path.exists():
        return None
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class FailureTail:
    """New rows of the per-rank failure logs since the run started (complete lines only, in file order)."""

    def __init__(self, store_root: Path, since: float):
        self.root = Path(store_root)
        self.since = since  # rows of earlier runs stay in the append-only logs: their ``time`` is older
        self._offsets: dict[Path, int] = {}

    def new_rows(self) -> list[dict[str, Any]]:
        rows = []
        for path in layout.rank_files(self.root, layout.FAILURES_DIR):
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
