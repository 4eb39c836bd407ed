"""Several independent jobs on one store, through the real command line (like SLURM array tasks).

Three jobs claim units of one manifest; one is slowed 5x (stopped 80 % of the time), one is killed with
SIGKILL in the middle of a unit (slowed as well until then, so the middle of a unit is long enough to catch).
Every key must be stored exactly once (one index row over all unit logs), the killed job's unit finished by
another job after taking its lease over, and readers see every key without a merge step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from lit_features.store import FeatureStore, layout
from tests.conftest import MEDIA, REPO_ROOT, cli_env, run_cli

CLIP = MEDIA / "v_GGSY1Qvo990.mp4"


def write_manifest(path: Path, n: int) -> list[str]:
    """``n`` distinct 20-frame cuts of one bundled clip (355 frames; cheap to decode, distinct keys)."""
    step = min(15, (355 - 20) // n)
    rows = [{"path": str(CLIP), "cut": [i * step, i * step + 20], "num_frames": 355} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"media__v_GGSY1Qvo990_mp4_cut{i * step}-{i * step + 20}" for i in range(n)]


def predict_args(tiny_models: Path, manifest: Path, out: Path, unit_size: int | None, expiry: float = 3.0) -> list[str]:
    units = ["--data.unit_size", str(unit_size), "--data.lease_expiry_s", str(expiry)] if unit_size else []
    # The tests slow jobs down by stopping them (SIGSTOP) 80 % of the time in stops of 0.2 s, too short to be
    # told apart from the decoder's own time: a decode takes 5x longer, which the default deadline (60 s) could
    # fail on a crowded machine.
    timeout = ["--data.decode_timeout_s", "600"]
    return [
        "predict", "--config", "configs/quickstart.yaml",
        "--model.model_path", str(tiny_models / "siglip-so400m-patch14-384"), "--model.num_frames", "2",
        "--data.manifest", str(manifest), "--data.num_workers", "0", "--data.batch_size", "1", *units,
        "--writer.output_dir", str(out), "--trainer.accelerator", "cpu", *timeout,
    ]  # fmt: skip


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "lit_features", *args], cwd=REPO_ROOT, env=cli_env(OMP_NUM_THREADS="1"),
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def rows_per_key(out: Path) -> Counter:
    return Counter(r["key"] for p in out.glob("units/u*/g*/index/rank-*.jsonl") for r in layout.read_jsonl_rows(p))


def throttle(proc: subprocess.Popen, out: Path, stop: threading.Event) -> None:
    """Once ``proc`` claims units, run it 20 % of the time: 5x slower (its heartbeat too, well inside the
    expiry) until ``stop`` is set. A slow device, not a slow start-up."""
    while not stop.is_set() and not holds_a_lease(out, proc.pid):
        time.sleep(0.05)
    try:
        while not stop.is_set() and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGSTOP)
                time.sleep(0.2)
            finally:
                os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
    except ProcessLookupError:  # it ended meanwhile
        pass


def holds_a_lease(out: Path, pid: int) -> bool:
    return a_lease_says(out, "pid", pid)


def a_lease_says(out: Path, field: str, value: object) -> bool:
    """Whether any unit's lease has ``field`` equal to ``value`` (a lease being written reads as nothing)."""
    for lease in out.glob("units/u*/lease.*"):
        try:
            if json.loads(lease.read_text()).get(field) == value:
                return True
        except ValueError:
            continue
    return False


def unit_in_progress(out: Path, pid: int) -> bool:
    """Whether the job ``pid`` holds a unit that is not done and already has rows of it (mid-unit)."""
    for lease in out.glob("units/u*/lease.*"):
        try:
            info = json.loads(lease.read_text())
        except ValueError:
            continue
        folder = lease.parent
        if info.get("pid") != pid or (folder / "done").exists():
            continue
        if any(layout.read_jsonl_rows(folder / f"g{info['generation']}" / "index" / "rank-0.jsonl")):
            return True
    return False


@pytest.mark.slow
def test_three_jobs_one_slowed_one_killed(tiny_models: Path, tmp_path: Path) -> None:
    manifest, out = tmp_path / "m.jsonl", tmp_path / "store"
    keys = write_manifest(manifest, 16)
    args = predict_args(tiny_models, manifest, out, unit_size=2)
    jobs = {name: start(args, tmp_path / f"{name}.log") for name in ("full", "slowed", "killed")}
    stop = threading.Event()
    # The job to kill runs slowed too until it is killed: mid-unit (rows of its unit durable, the unit not done)
    # lasts one sample at full speed, which polling can miss on a fast machine, unit after unit.
    for name in ("slowed", "killed"):
        threading.Thread(target=throttle, args=(jobs[name], out, stop), daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not unit_in_progress(out, jobs["killed"].pid):
            assert time.monotonic() < deadline and jobs["killed"].poll() is None, "the job to kill never got going"
            time.sleep(0.05)
        os.killpg(jobs["killed"].pid, signal.SIGKILL)
        codes = {name: proc.wait(timeout=180) for name, proc in jobs.items() if name != "killed"}
    finally:
        stop.set()
        for proc in jobs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in jobs}
    assert codes == {"full": 0, "slowed": 0}, logs
    counts = rows_per_key(out)
    assert set(counts) == set(keys) and set(counts.values()) == {1}, counts  # each key exactly once
    assert "taking it over from job" in logs["full"] + logs["slowed"]
    # The killed job's units were taken over (a second lease) and finished by the others: done, and every key
    # once above (the taker continued after the rows the killed job had made durable).
    taken = [p.parent for p in out.glob("units/u*/lease.1")]
    assert taken and all((f / "done").exists() for f in out.glob("units/u*") if f.name != "jobs")
    assert all(json.loads(lease.read_text())["pid"] != jobs["killed"].pid for f in taken for lease in [f / "lease.1"])
    store = FeatureStore(out)  # no merge step: the unit indexes are read directly
    assert sorted(store.keys()) == sorted(keys) and store[keys[0]]["features"].shape[0] == 2
    assert not (out / layout.MERGED_INDEX).exists()
    run_cli(["compact", str(out)])
    merged = [json.loads(line)["key"] for line in (out / layout.MERGED_INDEX).read_text().splitlines()]
    assert merged == sorted(keys)
