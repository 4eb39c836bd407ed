"""Jobs sharing a store (units) keep their live snapshots, previews and failures apart on the dashboard."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from lit_features.dashboards import progress
from lit_features.store import layout
from lit_features.units import lease
from lit_features.units.unit_list import claim_dir, unit_dir


def _claim(root: Path, uid: str, generation: int, job: str, keys: list[str]) -> None:
    assert lease.try_create(unit_dir(root, uid), generation, lease.owner_info(job, 1, 60.0))
    folder = claim_dir(root, uid, generation) / layout.FAILURES_DIR
    folder.mkdir(parents=True)
    rows = [{"key": k, "time": time.time(), "stage": "decode", "error": "DecodeError"} for k in keys]
    (folder / "rank-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_job_in_units_sees_only_the_failures_of_its_own_claims(tmp_path: Path) -> None:
    _claim(tmp_path, "u00000", 0, "job-a", ["a1", "a2"])
    _claim(tmp_path, "u00001", 0, "job-b", ["b1"])
    _claim(tmp_path, "u00001", 1, "job-a", ["a3"])  # job-a took u00001 over from job-b
    tail = progress.FailureTail(tmp_path, since=0.0, job="job-a")
    assert sorted(r["key"] for r in tail.new_rows()) == ["a1", "a2", "a3"]
    assert tail.new_rows() == []  # rows are reported once
    other = progress.FailureTail(tmp_path, since=0.0, job="job-b")
    assert [r["key"] for r in other.new_rows()] == ["b1"]


def test_runs_keep_their_own_snapshots_and_previews(tmp_path: Path) -> None:
    first, second = progress.live_dir(tmp_path, "run1"), progress.live_dir(tmp_path, "run2")
    progress.write_snapshot(first, 0, {"rank": 0, "written": 5})
    progress.write_snapshot(second, 0, {"rank": 0, "written": 9})
    frame = np.full((4, 4, 3), 7, np.uint8)
    progress.write_preview(first, "k", frame)
    assert progress.read_snapshots(first)[0]["written"] == 5
    assert progress.read_snapshots(second)[0]["written"] == 9
    assert progress.read_preview(second, "k") is None
    assert np.array_equal(progress.read_preview(first, "k"), frame)


def test_start_up_clears_runs_that_are_over_and_keeps_those_beside_it(tmp_path: Path) -> None:
    live, over = progress.live_dir(tmp_path, "live"), progress.live_dir(tmp_path, "over")
    progress.write_snapshot(live, 0, {"rank": 0})
    progress.write_snapshot(over, 0, {"rank": 0})
    old = time.time() - progress.STALE_RUN_S - 10
    for path in (over / "rank-0.json", over):
        os.utime(path, (old, old))
    flat = tmp_path / layout.LIVE_DIR / "rank-3.json"  # what older versions wrote
    flat.write_text("{}")
    progress.clear(tmp_path)
    assert (live / "rank-0.json").exists()
    assert not over.exists() and not flat.exists()
