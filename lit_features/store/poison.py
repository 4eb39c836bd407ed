"""Poison samples: a sample counts as having crashed its worker only when the job saw that worker die.

Every DataLoader worker logs the samples it starts and finishes (``attempts/rank-<r>.jsonl``: key, source,
event, pid; see :class:`lit_features.data.dataset.AttemptLog`). When a worker dies, PyTorch raises in the job's
main process; the feature writer then reads which samples that worker had started without finishing and
appends one row per sample to ``crashes/rank-<r>.jsonl``. A sample with ``max_attempts`` such rows is recorded
as ``RepeatedWorkerCrash`` and not scheduled again (also under ``retry_failed``).

A job that is killed, interrupted or preempted records nothing: its processes die together (SIGKILL), or
the job itself received the signal (SIGINT raises KeyboardInterrupt in the job; SIGTERM is noted by Lightning,
and a worker killed by SIGTERM/SIGINT/SIGHUP was stopped, not crashed). Only a worker death the job survived
to see says something about the sample in it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from lit_features.store import layout

log = logging.getLogger(__name__)

# PyTorch's two messages for a dead worker: "DataLoader worker (pid 12) is killed by signal: Segmentation
# fault." (from its SIGCHLD handler) and "DataLoader worker (pid(s) 12, 13) exited unexpectedly".
_WORKER_DEATH = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? (?P<pids>[\d, ]+)\) "
    r"(?:is killed by signal: (?P<signal>[^.]+)\.|exited unexpectedly(?: with exit code (?P<code>-?\d+))?)"
)
#: Signals that stop a job from outside (a user, a scheduler): a worker dying of one did not crash.
STOP_SIGNALS = ("Terminated", "Interrupt", "Hangup")


def worker_death(error: BaseException) -> tuple[list[int], str] | None:
    """(pids, reason) when ``error`` (or an exception it chains) reports dead DataLoader workers."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:
        match = _WORKER_DEATH.search(str(current))
        if match:
            pids = [int(p) for p in re.findall(r"\d+", match["pids"])]
            if match["signal"]:
                return pids, f"killed by signal: {match['signal']}"
            return pids, f"exited with code {match['code']}" if match["code"] else "exited unexpectedly"
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def stopped_from_outside(reason: str) -> bool:
    return any(reason == f"killed by signal: {name}" for name in STOP_SIGNALS)


def in_flight(attempts: Path, pids: list[int]) -> dict[str, str | None]:
    """Samples (key -> source) that the processes ``pids`` started and did not finish, per the attempt log."""
    open_: dict[tuple[int, str], str | None] = {}
    wanted = set(pids)
    for row in layout.read_jsonl_rows(attempts):
        if row.get("pid") not in wanted:
            continue
        slot = (row["pid"], row["key"])
        if row.get("event") == "start":
            open_[slot] = row.get("source")
        else:
            open_.pop(slot, None)
    return {key: source for (_, key), source in open_.items()}


def record_crashes(crashes: Path, samples: dict[str, str | None], reason: str, rank: int) -> None:
    """Append one crash row per sample (durably: the job is about to end)."""
    crashes.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"key": key, "source": source, "reason": reason, "rank": rank, "time": time.time()}
        for key, source in sorted(samples.items())
    ]
    with open(crashes, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())


def crash_rows(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Crash rows of every rank, by key."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in layout.rank_files(root, layout.CRASHES_DIR):
        for row in layout.read_jsonl_rows(path):
            out[row["key"]].append(row)
    return dict(out)


def record_worker_death(
    error: BaseException, attempts: Path, crash_logs: list[Path], job_stopping: bool, rank: int
) -> tuple[dict[str, str | None], str]:
    """Count a crash against the samples a dead DataLoader worker held, unless the job itself was being stopped.

    Args:
        error: what ended the run.
        attempts: this rank's attempt log.
        crash_logs: this rank's crash log of every store of the run (a sample is poison for all of them).
        job_stopping: the job received SIGTERM (its workers die of it too).
        rank: this process's rank.

    Returns:
        The samples counted (key -> source) and why the worker died; nothing when the death says nothing
        about them.
    """
    death = worker_death(error)
    if death is None or isinstance(error, KeyboardInterrupt):
        return {}, ""
    pids, reason = death
    if job_stopping or stopped_from_outside(reason):
        return {}, reason
    samples = in_flight(attempts, pids)
    if samples:
        for path in crash_logs:
            record_crashes(path, samples, reason, rank)
    return samples, reason


def note_worker_death(
    error: BaseException,
    attempts: Path,
    stores: list[Any],
    job_stopping: bool,
    rank: int,
    max_attempts: int,
    logs: list[Path] | None = None,
) -> None:
    """:func:`record_worker_death` for the stores of a run (``StoreState``), and one error line per sample
    counted, saying how many crashes it has left before it is skipped. ``logs``: the crash logs to append to
    (default: this rank's of every store; with work units, those of the units in flight)."""
    if logs is None:
        logs = [layout.rank_file(store.root, layout.CRASHES_DIR, rank) for store in stores]
    samples, reason = record_worker_death(error, attempts, logs, job_stopping, rank)
    for key, source in samples.items():
        log.error(
            "a DataLoader worker %s while preparing %s (%s): crash %d of %d allowed for this sample; after that "
            "it is recorded as RepeatedWorkerCrash and skipped. Rerun to continue.",
            reason, key, source, len(stores[0].crashes.get(key, [])) + 1, max_attempts,
        )  # fmt: skip
