"""Crash safety: kill -9 at several points and rerun; a worker that dies on a sample does not loop forever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from lit_features.store import FeatureStore
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


def worker_pids(parent: int) -> list[int]:
    """DataLoader worker processes of ``parent`` (its direct children that are not decoder processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"decode_worker" not in cmdline:
            pids.append(int(entry.name))
    return pids


def test_worker_dying_on_a_sample_is_failed_after_max_attempts(tiny_models: Path, media: Path, tmp_path: Path):
    os.mkfifo(tmp_path / "stuck.mp4")  # the worker blocks on it; we then kill that worker mid-sample
    entries = [{"path": str(media / "chelsea.jpg")}, {"path": str(media / "astronaut.png")}, {"path": "stuck.mp4"}]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(entries))
    out = tmp_path / "store"
    extra = ("--data.num_workers", "1", "--data.order", "manifest", "--data.decode_timeout_s", "600",
             "--writer.max_attempts", "2")  # fmt: skip
    attempts = out / "attempts" / "rank-0.jsonl"

    def stuck_started() -> bool:
        return attempts.exists() and '"stuck_mp4", "event": "start"' in attempts.read_text().split("\n", 2)[-1]

    for _ in range(2):
        before = attempts.read_text().count("stuck_mp4") if attempts.exists() else 0
        proc = start_predict(tiny_models, manifest, out, *extra)
        wait_until(lambda b=before: attempts.exists() and attempts.read_text().count("stuck_mp4") > b, proc)
        time.sleep(0.5)
        for pid in worker_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=120) != 0  # the run dies with its worker ...
    third = start_predict(tiny_models, manifest, out, *extra)
    assert third.wait(timeout=300) == 0, third.stderr.read().decode()  # ... but not forever
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["key"], f["error"]) for f in failures] == [("stuck_mp4", "RepeatedWorkerCrash")]
    assert len(FeatureStore(out)) == 2
