"""One job per store: a second job is refused naming the holder; a killed holder leaves no stale lock."""

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
from tests.conftest import REPO_ROOT, cli_env, run_cli
from tests.core.test_crash_safety import start_predict, started, wait_until

CONFIG = str(REPO_ROOT / "configs" / "quickstart.yaml")


def feed(fifo: Path, proc: subprocess.Popen) -> None:
    """Answer every reader of ``fifo`` with a few bytes that are not a video, while ``proc`` runs."""
    while proc.poll() is None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader yet
            time.sleep(0.05)
            continue
        try:
            os.write(fd, b"not a video")
        except OSError:
            pass
        os.close(fd)


def test_a_second_job_on_a_store_is_refused_and_touches_nothing(tiny_models: Path, media: Path, tmp_path: Path):
    waiting = tmp_path / "wait.mp4"
    os.mkfifo(waiting)  # the first job's decoder waits on it until the test writes into it
    entries = [{"path": str(media / "chelsea.jpg")}, {"path": "wait.mp4"}, {"path": str(media / "astronaut.png")}]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(entries))
    out = tmp_path / "store"
    extra = ("--data.num_workers", "1", "--data.order", "manifest", "--data.decode_timeout_s", "600")
    first = start_predict(tiny_models, manifest, out, *extra)
    try:
        assert wait_until(lambda: started(out, "wait_mp4", first), first), (
            first.stderr.read().decode()
        )  # holds the lock
        in_flight = out / layout.TMP_DIR / "rank-0" / ".x.safetensors.1.0badc0de.tmp"
        in_flight.parent.mkdir(parents=True, exist_ok=True)
        in_flight.write_bytes(b"what a live job is writing")
        second = run_cli(
            ["predict", "--config", CONFIG, "--model.model_path", str(tiny_models / "siglip-so400m-patch14-384"),
             "--data.manifest", str(manifest), "--writer.output_dir", str(out), *extra],
            check=False, timeout=120,
        )  # fmt: skip
        lines = [line for line in second.stderr.splitlines() if line.startswith("lit_features: error:")]
        assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
        assert f"pid {first.pid} on host {socket.gethostname()}" in lines[0] and "another job" in lines[0]
        assert "STAND-IN" not in second.stderr, "refused before its model loads"
        assert in_flight.read_bytes() == b"what a live job is writing", "the second job touched the first one's files"
        feeder = threading.Thread(target=feed, args=(waiting, first), daemon=True)
        feeder.start()  # let the first job go on: that sample now fails to decode
        assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert len(FeatureStore(out)) == 2
    assert (out / ".lock").read_text() == ""  # released


HOLD = """
import sys, time
from pathlib import Path
from lit_features.store.lock import StoreLock
StoreLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_holder_killed_by_sigkill_leaves_no_stale_lock(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from lit_features.store.lock import StoreLock, StoreLockedError, read_holder

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], env=cli_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid} on host"):
            StoreLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = StoreLock(tmp_path)
    lock.acquire()  # the kernel dropped the dead holder's lock; its note in the file is stale
    assert f"{holder.pid}" in caplog.text and "taking over" in caplog.text
    assert read_holder(tmp_path / layout.LOCK_FILE)["pid"] == os.getpid()
    lock.release()


def test_a_holder_on_another_host_counts_until_its_heartbeat_is_stale(tmp_path: Path) -> None:
    """Where kernel locks do not reach across hosts, the file's heartbeat decides."""
    from lit_features.store.lock import STALE_AFTER_S, StoreLock, StoreLockedError

    note = {"host": "other-node", "pid": 7, "started": "2026-01-01T00:00:00+00:00", "heartbeat": time.time()}
    (tmp_path / layout.LOCK_FILE).write_text(json.dumps(note))
    with pytest.raises(StoreLockedError, match="pid 7 on host other-node"):
        StoreLock(tmp_path).acquire()
    note["heartbeat"] = time.time() - STALE_AFTER_S - 1
    (tmp_path / layout.LOCK_FILE).write_text(json.dumps(note))
    lock = StoreLock(tmp_path)
    lock.acquire()
    lock.release()
