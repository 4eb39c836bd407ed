"""Crash safety: kill -9 at several points and rerun; a worker that dies on a sample does not loop forever."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from lit_features.store import FeatureStore, layout
from tests.conftest import REPO_ROOT, cli_env

CONFIG = str(REPO_ROOT / "configs" / "quickstart.yaml")


def start_predict(tiny_models: Path, manifest: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "lit_features", "predict", "--config", CONFIG,
        "--model.model_path", str(tiny_models / "siglip-so400m-patch14-384"),
        "--data.manifest", str(manifest), "--writer.output_dir", str(out), "--data.batch_size", "1", *extra,
    ]  # fmt: skip
    # A new session so that kill -9 reaches the whole tree: main process, DataLoader workers, decoders.
    return subprocess.Popen(
        args, cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def count_rows(out: Path) -> int:
    return sum(line.endswith("\n") for p in (out / "index").glob("rank-*.jsonl") for line in p.open().readlines())


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError("condition not reached")


def kill_tree(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_9_at_several_points_then_rerun_gives_every_key_once(tiny_models: Path, media: Path, tmp_path: Path):
    entries = [{"path": str(media / "v_GGSY1Qvo990.mp4"), "cut": [i * 30, i * 30 + 30]} for i in range(10)]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(entries))
    out = tmp_path / "store"
    kill_points = [
        lambda: (out / "store.json").exists(),  # during start-up, before any sample
        lambda: count_rows(out) >= 1,
        lambda: count_rows(out) >= 4,
        lambda: count_rows(out) >= 7,
    ]
    for point in kill_points:
        proc = start_predict(tiny_models, manifest, out)
        if wait_until(point, proc):
            kill_tree(proc)
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()
    final = start_predict(tiny_models, manifest, out)
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()

    rows = [json.loads(x) for p in (out / "index").glob("rank-*.jsonl") for x in p.read_text().splitlines()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 10, "every key exactly once"
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == [], f"partial files left: {leftovers}"

    reference = tmp_path / "reference"
    ref = start_predict(tiny_models, manifest, reference)
    assert ref.wait(timeout=300) == 0
    a, b = FeatureStore(out), FeatureStore(reference)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key]["features"], b[key]["features"]), key


def children(parent: int) -> list[tuple[int, bytes]]:
    """(pid, command line) of the direct children of ``parent``."""
    out = []
    for child in psutil.Process(parent).children():
        try:
            out.append((child.pid, "\0".join(child.cmdline()).encode()))
        except psutil.Error:  # gone meanwhile
            continue
    return out


def worker_pids(parent: int) -> list[int]:
    """DataLoader worker processes of ``parent`` (its direct children that are not decoder processes)."""
    return [pid for pid, cmdline in children(parent) if b"decode_worker" not in cmdline]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def starts(out: Path, key: str) -> list[dict]:
    rows = layout.read_jsonl_rows(out / layout.ATTEMPTS_DIR / "rank-0.jsonl")
    return [r for r in rows if r["key"] == key and r["event"] == "start"]


def started(out: Path, key: str, proc: subprocess.Popen, before: int = 0) -> bool:
    """Whether a DataLoader worker of the job ``proc`` has started ``key`` (per the job's attempt log).

    ``before``: start rows of ``key`` logged before ``proc`` began (attempt logs without a pid, as earlier
    versions wrote them, are told apart by count).
    """
    workers, rows = set(worker_pids(proc.pid)), starts(out, key)
    return any(r.get("pid") in workers for r in rows) or (all("pid" not in r for r in rows) and len(rows) > before)


def failure_rows(out: Path) -> list[tuple[str, str]]:
    return [(r["key"], r["error"]) for r in map(json.loads, (out / "failures.jsonl").read_text().splitlines())]


def test_worker_dying_on_a_sample_is_failed_after_max_attempts(tiny_models: Path, media: Path, tmp_path: Path):
    """A worker that dies on a sample while the job goes on counts against that sample; its decoder dies with
    it (no orphan); after max_attempts the sample is RepeatedWorkerCrash, also under --writer.retry_failed."""
    os.mkfifo(tmp_path / "stuck.mp4")  # the decoder blocks opening it; we then kill its worker mid-sample
    entries = [{"path": str(media / "chelsea.jpg")}, {"path": str(media / "astronaut.png")}, {"path": "stuck.mp4"}]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(entries))
    out = tmp_path / "store"
    extra = ("--data.num_workers", "1", "--data.order", "manifest", "--data.decode_timeout_s", "600",
             "--writer.max_attempts", "2")  # fmt: skip
    for _ in range(2):
        before = len(starts(out, "stuck_mp4"))
        proc = start_predict(tiny_models, manifest, out, *extra)
        assert wait_until(lambda p=proc, b=before: started(out, "stuck_mp4", p, b), proc), proc.stderr.read().decode()
        time.sleep(0.5)
        (worker,) = worker_pids(proc.pid)
        decoders = [pid for pid, cmdline in children(worker) if b"decode_worker" in cmdline]
        assert decoders, "the worker decodes in a child process"
        os.kill(worker, signal.SIGKILL)
        assert proc.wait(timeout=120) != 0  # the run dies with its worker ...
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in decoders) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in decoders), "the decoder outlived its worker (orphaned)"
    crashes = [json.loads(x) for x in (out / "crashes" / "rank-0.jsonl").read_text().splitlines()]
    assert [c["key"] for c in crashes] == ["stuck_mp4"] * 2  # counted by the job that saw its worker die
    assert {c["reason"] for c in crashes} <= {"killed by signal: Killed", "exited unexpectedly"}
    third = start_predict(tiny_models, manifest, out, *extra)
    assert third.wait(timeout=300) == 0, third.stderr.read().decode()  # ... but not forever
    assert failure_rows(out) == [("stuck_mp4", "RepeatedWorkerCrash")]
    assert len(FeatureStore(out)) == 2
    # Retrying failed samples keeps the guard: the poison sample is not scheduled again (it would hang).
    fourth = start_predict(tiny_models, manifest, out, *extra, "--writer.retry_failed", "true")
    assert fourth.wait(timeout=300) == 0, fourth.stderr.read().decode()
    assert failure_rows(out) == [("stuck_mp4", "RepeatedWorkerCrash")]


def test_interrupting_the_job_is_not_a_crash_of_its_samples(tiny_models: Path, media: Path, tmp_path: Path):
    """SIGKILL, SIGINT and SIGTERM of the whole job while a healthy sample is in flight: three interruptions
    (as many as max_attempts) and the sample is still computed by the next run, never RepeatedWorkerCrash."""
    slow = tmp_path / "slow.mp4"
    os.mkfifo(slow)  # a sample whose decoding is in progress when the job is stopped
    entries = [{"path": str(media / "chelsea.jpg")}, {"path": "slow.mp4"}, {"path": str(media / "astronaut.png")}]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(entries))
    out = tmp_path / "store"
    extra = ("--data.num_workers", "1", "--data.order", "manifest", "--data.decode_timeout_s", "600")
    for how in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM):
        before = len(starts(out, "slow_mp4"))
        proc = start_predict(tiny_models, manifest, out, *extra)
        assert wait_until(lambda p=proc, b=before: started(out, "slow_mp4", p, b), proc), proc.stderr.read().decode()
        time.sleep(0.5)
        group = [pid for pid, _ in children(proc.pid)] + [pid for w in worker_pids(proc.pid) for pid, _ in children(w)]
        os.killpg(proc.pid, how)
        assert proc.wait(timeout=120) != 0, f"the job ran on after {how.name}"
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in group) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in group), f"processes of the job outlived it after {how.name}"
    assert not list(layout.read_jsonl_rows(out / "crashes" / "rank-0.jsonl")), "an interruption counted as a crash"
    slow.unlink()
    shutil.copy(media / "realshort.mp4", slow)  # the sample was healthy all along
    final = start_predict(tiny_models, manifest, out, *extra)
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()
    assert failure_rows(out) == []
    store = FeatureStore(out)
    assert len(store) == 3 and "slow_mp4" in store
