"""Work units at scale: cutting a large manifest, a rank's start-up, and several jobs sharing one store.

    python tools/benchmark_units.py scale [--entries 10000000] [--unit-size 10000]
    python tools/benchmark_units.py jobs [--samples 4000] [--unit-size 20] [--cost-ms 5]

``scale`` writes a synthetic JSON Lines manifest, cuts it once into a store's unit list (the real
:func:`~lit_features.units.opening.open_unit_list`), then starts fresh processes that do what a rank does at
start-up: read the unit list, claim a unit, read its samples from the manifest slice and its rows from the store
(the real claimer and :class:`~lit_features.units.job.UnitJob`). Wall time and peak RSS are measured per
process, for this manifest and for one 100x smaller, to show that a rank's start-up does not grow with it.

``jobs`` starts three independent job processes on one store, like SLURM array tasks: one at full speed, one
slowed 5x, one killed (SIGKILL) mid-unit. Claiming, unit reading and writing (sample files, per-unit index rows,
done markers) are the real code; only the per-sample model is a stand-in that sleeps ``cost-ms``. It checks
that every key is in the store exactly once and reports the finish time against the ideal for the capacity
that remained (full speed 1, slowed 0.2, the killed one until its kill).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def write_manifest(path: Path, entries: int) -> None:
    """Entries as a video-generation manifest has them: path, caption, frames, fps, resolution."""
    with open(path, "w") as fh:
        block = []
        for i in range(entries):
            block.append(
                f'{{"path": "videos/{i // 1000:05d}/clip_{i:08d}.mp4", "cap": "a synthetic caption number {i}", '
                f'"num_frames": {64 + i % 300}, "fps": 24, "resolution": {{"height": 720, "width": 1280}}}}\n'
            )
            if len(block) == 10000:
                fh.write("".join(block))
                block = []
        fh.write("".join(block))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- child processes --------------------------------------------------------------------------------------------
def child_cut(store: str, manifest: str, unit_size: int) -> None:
    from lit_features.units.opening import open_unit_list

    base = peak_rss_mib()
    started = time.perf_counter()
    units = open_unit_list(Path(store), manifest, None, unit_size)
    print(
        json.dumps(
            {"seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib(), "rss_after_imports": base,
             "units": len(units), "list_bytes": (Path(store) / "units" / "list.json").stat().st_size}
        )
    )  # fmt: skip


def child_start(store: str, manifest: str, unit_size: int) -> None:
    """What rank 0 of a job does before its first batch (claim included); the other ranks do less."""
    from lit_features.store.state import StoreState
    from lit_features.units.claims import UnitClaimer, new_job_id
    from lit_features.units.job import UnitJob
    from lit_features.units.opening import open_unit_list

    base = peak_rss_mib()
    started = time.perf_counter()
    units = open_unit_list(Path(store), manifest, None, unit_size)
    listed = time.perf_counter()
    claimer = UnitClaimer(Path(store), units, new_job_id(), world_size=8)
    job = UnitJob(Path(store), {"": StoreState(Path(store), {}, {})}, units, claimer, False, 3)
    claim, samples, todo = job.claim()
    claimed = time.perf_counter()
    claimer.release()
    print(
        json.dumps(
            {"seconds": claimed - started, "read_list_s": listed - started, "claim_s": claimed - listed,
             "peak_rss_mib": peak_rss_mib(), "rss_after_imports": base, "unit_samples": len(samples),
             "todo": len(todo)}
        )
    )  # fmt: skip


def child_job(store: str, manifest: str, unit_size: int, cost_ms: float, slow: float, go: str) -> None:
    """One independent job: claim units, 'compute' each sample (sleep), write it through the real writer."""
    import torch

    from lit_features.records import FeatureRecord, PredictionOutput
    from lit_features.store.sample_writer import SampleWriter
    from lit_features.store.state import StoreState
    from lit_features.units.claims import UnitClaimer, mark_rank_finished, new_job_id
    from lit_features.units.job import UnitJob
    from lit_features.units.opening import open_unit_list
    from lit_features.units.unit_list import claim_dir

    root = Path(store)
    units = open_unit_list(root, manifest, None, unit_size, expiry_s=2.0)
    stores = {"": StoreState(root, {}, {})}
    job_id = new_job_id()
    claimer = UnitClaimer(root, units, job_id, world_size=1, expiry_s=2.0, wait=True)
    job = UnitJob(root, stores, units, claimer, False, 3)
    writer = SampleWriter(
        stores, "safetensors", "{shard}/{key}{ext}", 0, lambda key: None, fsync=False,
        log_dir=lambda r, c: claim_dir(r, *c),
        on_route_end=lambda c: mark_rank_finished(root, c[0], c[1], 0, 1), tmp_name=f"{job_id}-rank-0",
    )  # fmt: skip
    while not Path(go).exists():
        time.sleep(0.01)
    done, busy = 0, 0.0
    while (got := job.claim()) is not None:
        if isinstance(got, str):
            continue
        claim, samples, todo = got
        started = time.perf_counter()
        for position in todo:
            sample = samples[position]
            time.sleep(cost_ms / 1000 * (1 + int(sample.entry["num_frames"]) % 3) / 2 * slow)
            record = FeatureRecord(sample.key, sample.source, {"x": torch.zeros(4)})
            writer.put(PredictionOutput([record], []), {sample.key: claim}, [])
            done += 1
        writer.put(PredictionOutput([], []), {}, [claim])
        busy += time.perf_counter() - started
    writer.close()
    claimer.settle()
    claimer.release()
    print(json.dumps({"job": job_id, "samples": done, "busy_s": busy, "end": time.time()}))


def _child(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "_child", *args], capture_output=True, text=True, check=False, env=_env()
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# -- benchmarks -------------------------------------------------------------------------------------------------
def bench_scale(entries: int, unit_size: int, work: Path) -> list[dict]:
    rows = []
    for n in (entries // 100, entries):
        manifest = work / f"manifest_{n}.jsonl"
        started = time.perf_counter()
        if not manifest.exists():  # kept from an earlier run in the same --work-dir
            write_manifest(manifest, n)
        made = time.perf_counter() - started
        store = work / f"store_{n}"
        shutil.rmtree(store, ignore_errors=True)
        cut = _child(["cut", str(store), str(manifest), str(unit_size)])
        starts = [_child(["start", str(store), str(manifest), str(unit_size)]) for _ in range(3)]
        best = min(starts, key=lambda r: r["seconds"])
        rows.append(
            {
                "entries": n,
                "manifest_MB": manifest.stat().st_size / 1e6,
                "write_manifest_s": made,
                "units": cut["units"],
                "unit_list_kB": cut["list_bytes"] / 1e3,
                "cut_once_s": cut["seconds"],
                "cut_peak_rss_MiB": cut["peak_rss_mib"],
                "rank_start_s": best["seconds"],
                "rank_start_read_list_s": best["read_list_s"],
                "rank_start_claim_s": best["claim_s"],
                "rank_peak_rss_MiB": max(r["peak_rss_mib"] for r in starts),
                "rank_rss_after_imports_MiB": best["rss_after_imports"],
            }
        )
        shutil.rmtree(store, ignore_errors=True)
    return rows


def bench_jobs(samples: int, unit_size: int, cost_ms: float, work: Path) -> list[dict]:
    from lit_features.store.reader import FeatureStore  # noqa: F401  (import cost outside the timing)
    from lit_features.units.rows import iter_unit_rows

    manifest = work / "jobs.jsonl"
    write_manifest(manifest, samples)
    store = work / "jobs_store"
    _child(["cut", str(store), str(manifest), str(unit_size)])
    go = work / "go"
    speeds = {"full": 1.0, "slowed_5x": 5.0, "killed": 1.0}
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                __file__,
                "_child",
                "job",
                str(store),
                str(manifest),
                str(unit_size),
                str(cost_ms),
                str(slow),
                str(go),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
            start_new_session=True,
        )  # fmt: skip
        for name, slow in speeds.items()
    }
    time.sleep(8.0)  # imports and start-up of all three before the common start
    work_s = sum(cost_ms / 1000 * (1 + (64 + i % 300) % 3) / 2 for i in range(samples))
    t0 = time.time()
    go.touch()
    kill_at = work_s / 2.2 / 3  # a third into the ideal run
    time.sleep(kill_at)
    os.killpg(procs["killed"].pid, signal.SIGKILL)
    t_kill = time.time() - t0
    ends = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        if name != "killed":
            ends[name] = json.loads(out.strip().splitlines()[-1])
    finish = max(e["end"] for e in ends.values()) - t0
    # Capacity: 1 + 0.2 (+1 until the kill); the killed job's work until then counts as done.
    ideal = work_s / 2.2 if work_s <= 2.2 * t_kill else t_kill + (work_s - 2.2 * t_kill) / 1.2
    # The same with each job's measured rate (its own sample time, writes and this machine's load included):
    # what is left is the cost of distributing (claims, waiting, the last units, the takeover).
    rates = {n: e["samples"] / e["busy_s"] for n, e in ends.items()}
    ideal_measured = sum(e["samples"] for e in ends.values()) / sum(rates.values())
    keys = [r["key"] for r in iter_unit_rows(store)]
    per_key_rows = _rows_per_key(store)
    return [
        {
            "samples": samples,
            "unit_size": unit_size,
            "work_at_full_speed_s": work_s,
            "killed_at_s": t_kill,
            "finish_s": finish,
            "ideal_s": ideal,
            "finish_over_ideal": finish / ideal,
            "ideal_at_measured_rates_s": ideal_measured,
            "finish_over_ideal_at_measured_rates": finish / ideal_measured,
            "keys_in_store": len(keys),
            "keys_once": len(set(keys)) == samples,
            "rows_written_twice": sum(1 for n in per_key_rows.values() if n > 1),
            "samples_full": ends["full"]["samples"],
            "samples_slowed": ends["slowed_5x"]["samples"],
        }
    ]


def _rows_per_key(store: Path) -> dict[str, int]:
    from collections import Counter

    from lit_features.store import layout

    counts: Counter[str] = Counter()
    for path in store.glob("units/u*/g*/index/rank-*.jsonl"):
        counts.update(r["key"] for r in layout.read_jsonl_rows(path))
    return counts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        what, *rest = argv[1:]
        if what == "cut":
            child_cut(rest[0], rest[1], int(rest[2]))
        elif what == "start":
            child_start(rest[0], rest[1], int(rest[2]))
        else:
            child_job(rest[0], rest[1], int(rest[2]), float(rest[3]), float(rest[4]), rest[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["scale", "jobs"])
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--unit-size", type=int, default=None)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--cost-ms", type=float, default=5.0)
    parser.add_argument("--work-dir", default=None, help="where manifests and stores go (default: a temp folder)")
    args = parser.parse_args(argv)
    from tools.benchmark import format_table

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_units_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.what == "scale":
            rows = bench_scale(args.entries, args.unit_size or 10_000, work)
        else:
            rows = bench_jobs(args.samples, args.unit_size or 20, args.cost_ms, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(format_table(rows))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
