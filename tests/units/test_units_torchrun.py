"""A 2-node x 2-process torchrun job (loopback, CPU, gloo; c10d rendezvous, two torchrun invocations) and a
single-process job on one store at once: no key twice, both jobs did units, readers see all without a merge.

All start together. The single job starts much faster than four ranks meeting through a rendezvous, and on a
fast machine could finish all 24 units before the group joins; so from its first unit it runs 5x slower until
the group holds a lease (a slow device), which makes "both jobs did units" hold on any machine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lit_features.store import FeatureStore, layout
from tests.conftest import REPO_ROOT, cli_env
from tests.units.test_units_jobs import a_lease_says, predict_args, rows_per_key, throttle, write_manifest


def watch_for_group(out: Path, joined: threading.Event, stop: threading.Event) -> None:
    while not stop.is_set() and not a_lease_says(out, "world_size", 4):
        time.sleep(0.05)
    joined.set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_group_and_single_job_share_a_store(tiny_models: Path, tmp_path: Path) -> None:
    manifest, out = tmp_path / "m.jsonl", tmp_path / "store"
    keys = write_manifest(manifest, 96)
    args = predict_args(tiny_models, manifest, out, unit_size=4, expiry=20.0)  # a sample per rank
    port = free_port()
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "units-test",
        "-m", "lit_features", *args,
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.num_nodes", "2",
    ]  # fmt: skip
    single = [sys.executable, "-m", "lit_features", *args]
    env = cli_env(OMP_NUM_THREADS="1")
    logs = [tmp_path / f"{name}.log" for name in ("node0", "node1", "single")]
    procs = []
    for command, log in zip([torchrun, torchrun, single], logs, strict=True):
        with open(log, "w") as sink:
            procs.append(
                subprocess.Popen(
                    command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    joined, done = threading.Event(), threading.Event()
    threading.Thread(target=watch_for_group, args=(out, joined, done), daemon=True).start()
    threading.Thread(target=throttle, args=(procs[2], out, joined), daemon=True).start()
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        done.set()
        joined.set()
        for p in procs:  # each in its own session: its ranks, workers and decoders go with it
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert codes == [0, 0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    counts = rows_per_key(out)
    assert set(counts) == set(keys) and set(counts.values()) == {1}, counts
    sizes = {json.loads(p.read_text())["world_size"] for p in out.glob("units/u*/lease.*")}
    assert sizes == {1, 4}, "both jobs must have claimed units"
    ranks = {p.name for p in out.glob("units/u*/g*/index/rank-*.jsonl")}
    assert {"rank-0.jsonl", "rank-1.jsonl", "rank-2.jsonl", "rank-3.jsonl"} <= ranks
    store = FeatureStore(out)
    assert sorted(store.keys()) == sorted(keys) and not (out / layout.MERGED_INDEX).exists()
