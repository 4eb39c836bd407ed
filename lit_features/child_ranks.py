"""Errors of the processes Lightning launches for the other ranks: reported once, by rank 0, with status 2.

For a multi-device run on one node, Lightning's launcher starts ``python -m lit_features ...`` again for ranks
1..N-1 and watches them: when one dies, it SIGKILLs the whole job, so the exit status says 137 and a user error
of one rank is printed by every rank that hits it. Here instead:

- a launched rank hands its one-line user error to rank 0 through a small file and exits 2 without printing;
- rank 0 watches its ranks while the Trainer runs (:func:`watching`); when one exits non-zero it prints that
  rank's message, stops the other ranks and exits with the rank's status (2 for a user error, 1 for a bug,
  whose traceback the rank printed itself);
- when rank 0 fails because a rank is gone (a collective reports the lost peer), the command line reports
  that rank's user error instead (:func:`launched_rank_error`);
- when rank 0 itself fails, :func:`stop_launched_ranks` ends its ranks instead of leaving them blocked in a
  collective.

Processes started by something else (torchrun, SLURM) report their own errors.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Set by rank 0 to its pid while it runs the Trainer; inherited by the processes Lightning launches then.
LAUNCHER_PID = "LIT_FEATURES_LAUNCHER_PID"
POLL_S = 0.2

_launched: list[subprocess.Popen] = []  # the launcher's own list, which it fills when the run starts
_handed: list[str] = []  # user errors of launched ranks, collected when rank 0's run failed


def is_launched_rank() -> bool:
    """Whether this process is a rank that a ``lit_features`` process launched (its parent set the marker)."""
    return os.environ.get(LAUNCHER_PID) == str(os.getppid())


def _folder(launcher_pid: int | str) -> Path:
    return Path(tempfile.gettempdir()) / f"lit_features-{launcher_pid}"


def _message_file(launcher_pid: int | str, local_rank: int | str) -> Path:
    return _folder(launcher_pid) / f"rank-{local_rank}.error"


def report(line: str) -> None:
    """Report the one-line error of this process: rank 0 prints it (once), a launched rank hands it to rank 0.

    A launched rank prints it itself when rank 0 is not watching (then nobody else would).
    """
    if is_launched_rank() and (_folder(os.environ[LAUNCHER_PID]) / "watching").exists():
        path = _message_file(os.environ[LAUNCHER_PID], os.environ.get("LOCAL_RANK", "x"))
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(line, encoding="utf-8")
            os.replace(tmp, path)
            return
        except OSError:
            pass  # say it here rather than not at all
    print(line, file=sys.stderr, flush=True)


def launched_rank_error() -> str | None:
    """The one-line user error a launched rank handed over before rank 0's run failed, if any.

    When a rank exits on a user error, rank 0 usually fails next in a collective with an error that only says
    a peer is gone; this is the message that says why.
    """
    return _handed[0] if _handed else None


def stop_launched_ranks() -> None:
    """Kill the ranks this process launched (they would wait in a collective for a rank that is gone)."""
    for proc in list(_launched):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGKILL)
    for proc in list(_launched):
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)
    _cleanup()


def _cleanup() -> None:
    folder = _folder(os.getpid())
    for path in folder.glob("*"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by a signal: the shell's convention


def _watch(procs: list[subprocess.Popen], done: threading.Event) -> None:
    while not done.wait(POLL_S):
        failed = [(i, p) for i, p in enumerate(procs, start=1) if p.poll() not in (None, 0)]
        if not failed:
            continue
        # Rank 0 reports its own errors only after this thread ended (``watching`` joins it first).
        local_rank, proc = failed[0]
        message = _message_file(os.getpid(), local_rank)
        if message.exists():
            print(message.read_text(encoding="utf-8"), file=sys.stderr, flush=True)
        stop_launched_ranks()
        sys.stderr.flush()
        os._exit(_exit_status(proc.returncode))  # the main thread may be blocked in a collective: end here


@contextlib.contextmanager
def watching(trainer: Any) -> Iterator[None]:
    """While the body runs, watch the ranks ``trainer``'s launcher starts (no-op without launched ranks)."""
    procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None)
    if not isinstance(procs, list) or is_launched_rank():
        yield
        return
    global _launched
    _handed.clear()
    _launched = procs  # the launcher appends its processes to this same list when the run starts
    _cleanup()  # left by an earlier process with this pid that was killed
    _folder(os.getpid()).mkdir()
    (_folder(os.getpid()) / "watching").touch()
    os.environ[LAUNCHER_PID] = str(os.getpid())
    done = threading.Event()
    thread = threading.Thread(target=_watch, args=(procs, done), name="lit-features-ranks", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        # A rank that failed first makes rank 0 fail too ("connection closed by peer"): keep its message.
        _handed.extend(path.read_text(encoding="utf-8") for path in sorted(_folder(os.getpid()).glob("rank-*.error")))
        raise
    finally:
        os.environ.pop(LAUNCHER_PID, None)
        done.set()
        thread.join()
        _cleanup()
