"""Claiming units: exclusive leases, takeover after expiry, of corrupt leases and of vanished owners, logged."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

from lit_features.units import lease
from lit_features.units.claims import UnitClaimer, mark_rank_finished
from lit_features.units.cutting import cut_manifests
from lit_features.units.unit_list import unit_dir


def _units(tmp_path, n=4, size=2):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"v/{i}.mp4"}) + "\n" for i in range(n * size)))
    units = cut_manifests([manifest], tmp_path / "store" / "units", size, None)
    units.write()
    return units


def _claimer(tmp_path, units, job, **kw):
    kw.setdefault("wait", False)
    return UnitClaimer(tmp_path / "store", units, job, world_size=1, **kw)


def test_each_unit_is_claimed_by_one_job(tmp_path):
    units = _units(tmp_path)
    a, b = _claimer(tmp_path, units, "job-a"), _claimer(tmp_path, units, "job-b")
    got = []
    for claimer in [a, b, a, b, a]:
        claimed = claimer.next_unit()
        got.append(None if claimed is None else claimed[0].uid)
    assert sorted(u for u in got if u) == [u.uid for u in units.units] and got[-1] is None
    assert all(g == 0 for _, g in a.claimed + b.claimed)
    a.release(), b.release()


def test_expired_lease_is_taken_over_with_a_log_line(tmp_path, caplog):
    units = _units(tmp_path, n=1)
    folder = unit_dir(tmp_path / "store", units.units[0].uid)
    info = {**lease.owner_info("dead-job", 1, 2.0), "host": "another-host"}
    assert lease.try_create(folder, 0, info)
    waiting = _claimer(tmp_path, units, "job-b", expiry_s=2.0)
    assert waiting.next_unit() is None  # alive: its heartbeat is fresh
    old = time.time() - 5.0  # its last heartbeat, 5 s ago
    os.utime(lease.lease_path(folder, 0), (old, old))
    with caplog.at_level(logging.WARNING):
        unit, generation = waiting.next_unit()
    assert generation == 1 and "taking it over from job dead-job" in caplog.text and "heartbeat" in caplog.text
    waiting.release()


def test_corrupt_lease_and_vanished_owner_are_reclaimed(tmp_path, caplog):
    units = _units(tmp_path, n=2)
    first, second = (unit_dir(tmp_path / "store", u.uid) for u in units.units)
    lease.lease_path(first, 0).parent.mkdir(parents=True)
    lease.lease_path(first, 0).write_text("{not json")
    os.utime(lease.lease_path(first, 0), (1, 1))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = {**lease.owner_info("dead-job", 1, 300.0), "pid": int(gone.stdout)}
    assert lease.try_create(second, 0, info)
    claimer = _claimer(tmp_path, units, "job-b")
    with caplog.at_level(logging.WARNING):
        got = {claimer.next_unit()[0].uid, claimer.next_unit()[0].uid}
    assert got == {units.units[0].uid, units.units[1].uid}
    assert "unreadable (corrupt)" in caplog.text and "is gone" in caplog.text
    claimer.release()


def test_a_unit_is_done_when_every_rank_finished_and_released_leases_expire_at_once(tmp_path):
    units = _units(tmp_path, n=2)
    a = UnitClaimer(tmp_path / "store", units, "job-a", world_size=2, wait=False)
    unit, generation = a.next_unit()
    assert not mark_rank_finished(tmp_path / "store", unit.uid, generation, 1, 2)
    assert mark_rank_finished(tmp_path / "store", unit.uid, generation, 0, 2)
    other, _ = a.next_unit()
    a.release()  # stopped before finishing `other`
    b = _claimer(tmp_path, units, "job-b")
    assert b.next_unit()[0].uid == other.uid and b.next_unit() is None
    b.release()


def test_heartbeat_keeps_a_lease_alive(tmp_path):
    units = _units(tmp_path, n=1)
    a = _claimer(tmp_path, units, "job-a", expiry_s=0.5)
    a.next_unit()
    b = _claimer(tmp_path, units, "job-b", expiry_s=0.5)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert b.next_unit() is None
        time.sleep(0.1)
    a.release()
