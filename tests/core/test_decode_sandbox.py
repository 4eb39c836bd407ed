"""The decode sandbox hands frames over through shared memory: the same bytes, not through the pipe, no leftovers;
its messages arrive whole when the pipe takes a write in parts, and a worker stopped for longer than the decode
timeout (a suspended job) does not fail the sample it was waiting for."""

from __future__ import annotations

import glob
import io
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lit_features.data.decode_sandbox import (
    SHARED_MEMORY_DIR,
    SHARED_MEMORY_MIN_BYTES,
    DecodeSandbox,
    read_message,
    write_message,
)
from lit_features.data.media import decode_video
from lit_features.data.sampling import FrameSampling
from tests.conftest import REPO_ROOT, cli_env

needs_shm = pytest.mark.skipif(not os.access(SHARED_MEMORY_DIR, os.W_OK), reason="no writable /dev/shm")


def _memory_owner(array: np.ndarray) -> object:
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


@needs_shm
def test_sandboxed_frames_equal_in_process_frames_and_come_through_shared_memory(media: Path) -> None:
    sandbox = DecodeSandbox()
    try:
        sampling = FrameSampling("uniform", 8)
        for name in ("cockatoo.mp4", "realshort.mp4"):
            here = decode_video(str(media / name), sampling, None, "auto")
            there = sandbox.call("video", str(media / name), sampling, None, "auto")
            assert there.indices == here.indices and np.array_equal(there.frames, here.frames)
            assert there.frames.flags.writeable  # the transforms may work in place
            if here.frames.nbytes >= SHARED_MEMORY_MIN_BYTES:
                assert isinstance(_memory_owner(there.frames), mmap.mmap)  # mapped, not read from the pipe
        assert glob.glob(os.path.join(SHARED_MEMORY_DIR, f"lit_features-decode-{os.getpid()}-*")) == []
    finally:
        sandbox.kill()


@needs_shm
def test_message_round_trip_through_shared_memory_unlinks_its_files(tmp_path: Path) -> None:
    prefix = os.path.join(SHARED_MEMORY_DIR, f"lit_features-test-{os.getpid()}-")
    big, small = np.arange(SHARED_MEMORY_MIN_BYTES // 4, dtype=np.int32), np.arange(10, dtype=np.int64)
    stream = io.BytesIO()
    write_message(stream, {"big": big, "small": small, "text": "ok"}, prefix)
    assert len(glob.glob(prefix + "*")) == 1  # only the large buffer went to a file
    assert len(stream.getvalue()) < 4096  # and not through the pipe
    pipe = tmp_path / "pipe"
    pipe.write_bytes(stream.getvalue())
    fd = os.open(pipe, os.O_RDONLY)
    try:
        out = read_message(fd)
    finally:
        os.close(fd)
    assert np.array_equal(out["big"], big) and np.array_equal(out["small"], small) and out["text"] == "ok"
    assert glob.glob(prefix + "*") == []


@needs_shm
def test_killed_decoder_leaves_no_shared_memory_files() -> None:
    sandbox = DecodeSandbox()
    prefix = os.path.join(SHARED_MEMORY_DIR, f"lit_features-decode-{os.getpid()}-")
    stray = Path(f"{prefix}12345-0")  # what a child killed between writing and replying leaves
    stray.write_bytes(b"x" * 16)
    try:
        sandbox._ensure_child()
    finally:
        sandbox.kill()
    assert not stray.exists()


class _PartialWrites(io.RawIOBase):
    """A raw stream that takes at most ``limit`` bytes per write, as a pipe does when a signal interrupts a large
    write (the caller must write the rest)."""

    def __init__(self, limit: int):
        self.limit, self.data = limit, bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        taken = bytes(memoryview(b).cast("B")[: self.limit])
        self.data += taken
        return len(taken)


def test_a_message_written_in_parts_arrives_whole(tmp_path: Path) -> None:
    frames = np.arange(3 * 7000, dtype=np.uint8).reshape(3, 7000)  # through the pipe (below the file threshold)
    stream = _PartialWrites(limit=997)
    write_message(stream, {"frames": frames, "text": "ok"})
    pipe = tmp_path / "pipe"
    pipe.write_bytes(bytes(stream.data))
    fd = os.open(pipe, os.O_RDONLY)
    try:
        out = read_message(fd)
    finally:
        os.close(fd)
    assert np.array_equal(out["frames"], frames) and out["text"] == "ok"


def test_decoder_stopped_and_continued_mid_reply_still_answers(media: Path) -> None:
    """Two 320x240 frames (460 kB: through the pipe, larger than its buffer) while the decoder child is stopped
    and continued every few milliseconds, as job control or a scheduler's suspend and resume do. A reply cut
    short used to leave the worker waiting for the lost bytes until the decode timeout (the sample failed)."""
    sandbox = DecodeSandbox(timeout_s=20.0)
    sampling = FrameSampling("uniform", 2)
    path = str(media / "v_GGSY1Qvo990.mp4")
    expected = decode_video(path, sampling, None, "auto").frames
    assert 64 * 1024 < expected.nbytes < SHARED_MEMORY_MIN_BYTES
    done = threading.Event()

    def stop_and_continue(pid: int) -> None:
        try:
            while not done.is_set():
                try:
                    os.kill(pid, signal.SIGSTOP)
                    time.sleep(0.002)
                finally:
                    os.kill(pid, signal.SIGCONT)
                time.sleep(0.001)
        except ProcessLookupError:  # the sandbox restarted its decoder (what this test must not see)
            pass

    try:
        child = sandbox._ensure_child()
        thread = threading.Thread(target=stop_and_continue, args=(child.pid,), daemon=True)
        thread.start()
        for _ in range(30):
            got = sandbox.call("video", path, sampling, None, "auto")
            assert np.array_equal(got.frames, expected)
    finally:
        done.set()
        sandbox.kill()


_WAITING_WORKER = """
import sys
from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.sampling import FrameSampling
sandbox = DecodeSandbox(timeout_s=2.0)
sandbox._ensure_child()
sandbox.call("video", sys.argv[1], FrameSampling("uniform", 1), None, "auto")  # the decoder is warm
print("calling", flush=True)
got = sandbox.call("video", sys.argv[1], FrameSampling("uniform", 8), None, "auto")
print("ok", got.frames.shape, flush=True)
"""


def test_a_worker_stopped_past_the_timeout_still_gets_its_answer(media: Path) -> None:
    """The worker (not its decoder) is stopped for 3.5 s while waiting for a 1280x720 decode, with a 2 s timeout:
    the time it was stopped does not count, and the answer that arrived meanwhile is read. Counting it failed the
    sample as a decode timeout (not retried by a rerun without --writer.retry_failed)."""
    worker = subprocess.Popen(
        [sys.executable, "-c", _WAITING_WORKER, str(media / "cockatoo.mp4")],
        cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout.readline().strip() == "calling"
        time.sleep(0.1)  # inside the call, waiting for the decoder
        os.kill(worker.pid, signal.SIGSTOP)
        time.sleep(3.5)
        os.kill(worker.pid, signal.SIGCONT)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0 and out.startswith("ok (8, 720, 1280, 3)"), err[-2000:]
