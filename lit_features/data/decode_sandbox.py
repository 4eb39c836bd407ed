"""A persistent decoder child process per DataLoader worker, so hangs and crashes cost one sample, not the run.

Python cannot interrupt a C call that never returns, and a segfault inside a DataLoader worker ends the whole
DataLoader. Each worker therefore keeps one child process (``python -m lit_features.data.decode_worker``)
that runs the functions of :mod:`lit_features.data.media`. The worker waits for the answer with a deadline;
on timeout or child death it kills the child, starts a fresh one on the next call, and raises
:class:`DecodeTimeout` / :class:`DecoderCrashed` for that sample only. The child dies with its worker (a
parent-death signal), so a worker that is killed leaves no orphaned decoder behind. DataLoader workers are
daemonic and may not start ``multiprocessing`` children, hence a plain subprocess. Arrays travel out-of-band
(pickle protocol 5); large ones (decoded frames) through shared memory: the child copies them once into a
new file on tmpfs (``/dev/shm``), the worker maps that file and unlinks it at once, so the frames are not
pushed through the pipe and copied out again (64 KiB at a time, a context switch each). Files left by a child
that was killed mid-reply are removed when the worker restarts it.
"""

from __future__ import annotations

import glob
import mmap
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<QI")  # payload length, number of out-of-band buffers
_BUFFER = struct.Struct("<QB")  # buffer length, where it is: in the pipe (0) or in a shared-memory file (1)
_IN_PIPE, _IN_FILE = 0, 1
SHARED_MEMORY_DIR = "/dev/shm"
SHARED_MEMORY_ENV = "LIT_FEATURES_DECODER_SHM"  # file-name prefix the child uses for large buffers
SHARED_MEMORY_MIN_BYTES = 1 << 20  # smaller buffers go through the pipe (a file costs more than it saves)


class DecodeTimeout(TimeoutError):
    """The decoder did not answer within the configured timeout; it was killed and will be restarted."""


class DecoderCrashed(RuntimeError):
    """The decoder process died while handling the sample (e.g. a segfault in a native library)."""


class RemoteError(RuntimeError):
    """An exception raised inside the decoder child, re-raised in the worker with its type name."""

    def __init__(self, type_name: str, message: str):
        super().__init__(message)
        self.type_name = type_name


def _to_shared_file(raw: memoryview, prefix: str, number: int) -> bytes:
    """Copy ``raw`` into a new file ``<prefix><pid>-<number>`` on tmpfs; returns its path (encoded)."""
    path = f"{prefix}{os.getpid()}-{number}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, raw.nbytes)
        with mmap.mmap(fd, raw.nbytes) as target:
            target[:] = raw
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return path.encode()


def _write_all(stream: Any, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to ``stream``. An unbuffered pipe (both ends here) may take only part of a
    write larger than its buffer when a signal arrives meanwhile (a stop and continue, as job control or a
    scheduler's suspend and resume send): the rest would be lost and the reader would wait for it until the
    decode timeout, failing a healthy sample."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = stream.write(view)
        if written is None:  # a non-blocking stream without room: not how the sandbox opens its pipes
            raise BlockingIOError("decoder pipe is full")
        view = view[written:]


def write_message(stream: Any, obj: Any, shared_prefix: str | None = None) -> None:
    """Write ``obj`` as header + pickle + out-of-band buffers (used by both sides).

    With ``shared_prefix``, buffers of at least :data:`SHARED_MEMORY_MIN_BYTES` go into shared-memory files
    named by it, and only their paths through ``stream``.
    """
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    paths: list[bytes | None] = [None] * len(raws)
    for number, raw in enumerate(raws):  # files first: a failure (tmpfs full) leaves the pipe untouched
        if shared_prefix is not None and raw.nbytes >= SHARED_MEMORY_MIN_BYTES:
            try:
                paths[number] = _to_shared_file(raw, shared_prefix, number)
            except OSError:
                pass  # this buffer goes through the pipe
    _write_all(stream, _HEADER.pack(len(payload), len(raws)))
    _write_all(stream, payload)
    for raw, path in zip(raws, paths):
        if path is not None:
            _write_all(stream, _BUFFER.pack(len(path), _IN_FILE))
            _write_all(stream, path)
        else:
            _write_all(stream, _BUFFER.pack(raw.nbytes, _IN_PIPE))
            _write_all(stream, raw)
    stream.flush()


def _from_shared_file(path: str) -> mmap.mmap:
    """Map a buffer's file (private, copy-on-write: arrays on it are writable) and unlink it: the mapping keeps
    the memory until the last array on it is freed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)


class Deadline:
    """When the decoder must have answered, not counting time this process was not running.

    A job stopped and continued (Ctrl-Z and ``fg``, a scheduler's suspend and resume) or a machine that slept
    stops the worker's clock-watching too, but not the clock: counted, that time would fail the sample being
    decoded as a timeout, which a rerun does not retry without ``--writer.retry_failed``. While waiting, the
    worker looks at the clock at least every ``LOOK_EVERY_S``; a gap of more than ``STALL_S`` beyond that
    between two looks is time it was stopped, and moves the deadline on. An answer already waiting is read even
    past the deadline.
    """

    LOOK_EVERY_S = 1.0
    STALL_S = 2.0

    def __init__(self, seconds: float):
        self.last_look = time.monotonic()
        self.at = self.last_look + seconds

    def wait_readable(self, fd: int) -> None:
        """Return once ``fd`` has data; :class:`DecodeTimeout` when the deadline passes first."""
        while True:
            now = time.monotonic()
            stopped = now - self.last_look - self.LOOK_EVERY_S
            if stopped > self.STALL_S:
                self.at += stopped
            self.last_look = now
            remaining = self.at - now
            ready, _, _ = select.select([fd], [], [], min(max(remaining, 0.0), self.LOOK_EVERY_S))
            if ready:
                self.last_look = time.monotonic()
                return
            if remaining <= 0:
                raise DecodeTimeout("decoder timed out")


def _read_exact(fd: int, size: int, deadline: Deadline | None) -> bytearray:
    out = bytearray(size)
    view = memoryview(out)
    got = 0
    while got < size:
        if deadline is not None:
            deadline.wait_readable(fd)
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise EOFError("decoder pipe closed")
        got += n
    return out


def read_message(fd: int, deadline: Deadline | None = None) -> Any:
    """Read one message written by :func:`write_message` from a raw file descriptor."""
    length, count = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    payload = _read_exact(fd, length, deadline)
    buffers: list[Any] = []
    for _ in range(count):  # a timeout here leaves files unread: DecodeSandbox.kill removes them
        size, where = _BUFFER.unpack(_read_exact(fd, _BUFFER.size, deadline))
        data = _read_exact(fd, size, deadline)
        buffers.append(_from_shared_file(data.decode()) if where == _IN_FILE else data)
    return pickle.loads(payload, buffers=buffers)


class DecodeSandbox:
    """Runs media functions in a child process with a per-call timeout.

    Args:
        timeout_s: seconds one call may take before the child is killed and the sample fails.
        enabled: when False, call the functions in-process (faster start, no protection).
    """

    def __init__(self, timeout_s: float = 60.0, enabled: bool = True):
        self.timeout_s = timeout_s
        self.enabled = enabled
        self._proc: subprocess.Popen | None = None
        self._owner_pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_proc"], state["_owner_pid"] = None, None
        return state

    def _shared_prefix(self) -> str | None:
        """File-name prefix of this worker's shared-memory buffers (``None``: no writable tmpfs, use the pipe)."""
        if not os.access(SHARED_MEMORY_DIR, os.W_OK):
            return None
        return os.path.join(SHARED_MEMORY_DIR, f"lit_features-decode-{os.getpid()}-")

    def _remove_shared_files(self) -> None:
        """Files a killed child wrote but the worker never mapped (each is unlinked once read)."""
        prefix = self._shared_prefix()
        for path in glob.glob(glob.escape(prefix) + "*") if prefix else []:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.setdefault("OMP_NUM_THREADS", "1")
        env["LIT_FEATURES_DECODER_PARENT"] = str(os.getpid())  # the child ends when this process does
        prefix = self._shared_prefix()
        if prefix is not None:
            env[SHARED_MEMORY_ENV] = prefix
        else:
            env.pop(SHARED_MEMORY_ENV, None)
        return env

    def _ensure_child(self) -> subprocess.Popen:
        if self._owner_pid != os.getpid():
            # Inherited through fork from the parent: that child belongs to the parent, start our own.
            self._proc, self._owner_pid = None, os.getpid()
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "lit_features.data.decode_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=self._child_env(),
                bufsize=0,
            )
        return self._proc

    def kill(self) -> None:
        """Stop the child (if any); the next call starts a fresh one."""
        proc, self._proc = self._proc, None
        if proc is not None and self._owner_pid == os.getpid():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._remove_shared_files()

    def call(self, function: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``media.MEDIA_FUNCTIONS[function](*args, **kwargs)`` in the child and return its result."""
        if not self.enabled:
            from lit_features.data.media import MEDIA_FUNCTIONS

            return MEDIA_FUNCTIONS[function](*args, **kwargs)
        proc = self._ensure_child()
        try:
            deadline = Deadline(self.timeout_s)
            write_message(proc.stdin, (function, args, kwargs))
            status, value = read_message(proc.stdout.fileno(), deadline)
        except DecodeTimeout:
            self.kill()
            raise DecodeTimeout(f"decoding took longer than {self.timeout_s:g} s; the decoder was restarted") from None
        except (EOFError, BrokenPipeError, OSError) as err:
            code = proc.poll()
            self.kill()
            raise DecoderCrashed(f"decoder process died (exit code {code}): {err}") from None
        if status == "ok":
            return value
        type_name, message = value
        raise RemoteError(type_name, message)

    def __del__(self) -> None:
        try:
            self.kill()
        except Exception:
            pass
