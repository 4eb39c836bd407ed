"""Kill -9 soak: a 2-process DDP run killed at random moments (start-up, mid-sample, mid-merge), then a rerun on
one process: every key exactly once, no RepeatedWorkerCrash, no stray temporary file, features bit-identical
to an uninterrupted run.

CI kills 3 times (one of them mid-merge); ``LIT_FEATURES_SOAK_KILLS=10`` runs the full soak, and
``LIT_FEATURES_SOAK_SEED`` picks other random moments (the seed is in the failure message).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_features.data.manifest import read_manifests
from lit_features.store import FeatureStore, layout
from tests.conftest import MEDIA, REPO_ROOT, cli_env, run_cli

# Written out (not taken from the package) so the test also runs against earlier versions of the store.
TEMP_NAME = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")  # what an atomic write leaves when killed
KILLS = int(os.environ.get("LIT_FEATURES_SOAK_KILLS", "3"))
SEED = int(os.environ.get("LIT_FEATURES_SOAK_SEED", "12"))
N_CLIPS = 10 + 2 * KILLS
STRIDE = (355 - 30) // N_CLIPS  # distinct 30-frame cuts inside the 355-frame clip: distinct keys


def index_keys(out: Path) -> list[str]:
    return [r["key"] for p in layout.rank_files(out, layout.INDEX_DIR) for r in layout.read_jsonl_rows(p)]


def merge_temporaries(out: Path) -> list[Path]:
    """Temporary files of the end-of-run merge and summaries (present only while one is being written)."""
    folders = [out, out / "run_summary"]
    return [p for f in folders if f.is_dir() for p in f.iterdir() if TEMP_NAME.match(p.name)]


def plan(rng: random.Random) -> list[str]:
    """Kill moments: start-up (random time), mid-sample (a random delay after one more sample), one mid-merge."""
    early = ["start"] * max(1, KILLS // 5) + ["sample"] * (KILLS - 1 - max(1, KILLS // 5))
    rng.shuffle(early)
    return [*early, "merge"]


def kill_group(group: int) -> None:
    for how in (signal.SIGKILL, signal.SIGCONT):
        try:
            os.killpg(group, how)
        except ProcessLookupError:
            return


def inodes(out: Path) -> dict[str, int | None]:
    """Inode of each merged output: a new one means rank 0 renamed a fresh version into place."""
    names = (layout.MERGED_INDEX, layout.MERGED_FAILURES, "run_summary.json")
    return {n: (out / n).stat().st_ino if (out / n).exists() else None for n in names}


def mid_merge(out: Path, before: dict[str, int | None]) -> bool:
    """A merge output is half written, or some outputs of this run's merge are in place and others not yet."""
    now = inodes(out)
    renamed = [now[n] != before[n] for n in now]
    return bool(merge_temporaries(out)) or (any(renamed) and not all(renamed))


def kill_mid_merge(proc: subprocess.Popen, out: Path, rng: random.Random, before: dict[str, int | None]) -> bool:
    """Step the stopped job a fraction of a millisecond at a time until it is inside the merge, then kill it.

    Returns whether the kill landed mid-merge (else the job finished first).
    """
    group = proc.pid
    while True:
        try:
            os.killpg(group, signal.SIGCONT)
            time.sleep(rng.uniform(0.0001, 0.001))
            os.killpg(group, signal.SIGSTOP)
        except ProcessLookupError:  # every process of the job has ended
            return False
        if mid_merge(out, before):
            kill_group(group)
            return True
        if proc.poll() is not None:
            return False


def test_kill_9_of_a_ddp_run_at_random_moments_then_resume_on_one_process(tiny_models: Path, tmp_path: Path):
    manifest = tmp_path / "clips.json"
    clip = str(MEDIA / "v_GGSY1Qvo990.mp4")
    manifest.write_text(json.dumps([{"path": clip, "cut": [STRIDE * i, STRIDE * i + 30]} for i in range(N_CLIPS)]))
    keys = {s.key for s in read_manifests(str(manifest), None)}
    base = [
        "predict", "--config", "configs/quickstart.yaml",
        "--model.model_path", str(tiny_models / "siglip-so400m-patch14-384"),
        "--data.manifest", str(manifest), "--data.batch_size", "1", "--data.num_workers", "1",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "LIT_FEATURES_CACHE": str(tmp_path / "cache")}
    reference = tmp_path / "reference"
    run_cli([*base, "--writer.output_dir", str(reference)], **env)

    out = tmp_path / "store"
    rng = random.Random(SEED)
    seen, caught_merge = [], False
    for kind in plan(rng):
        for _attempt in range(5 if kind == "merge" else 1):
            log = open(tmp_path / f"run{len(seen)}.log", "w")  # a file: an unread pipe could stall the run
            proc = subprocess.Popen(
                [sys.executable, "-m", "lit_features", *base, "--writer.output_dir", str(out),
                 "--trainer.devices", "2", "--trainer.strategy", "ddp"],
                cwd=REPO_ROOT, env=cli_env(**env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            done_before, merged_before = len(index_keys(out)), inodes(out)
            if kind == "start":
                deadline = time.monotonic() + rng.uniform(0.5, 8.0)
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.01)
            elif kind == "sample":
                while len(index_keys(out)) <= done_before and proc.poll() is None:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.3))
            else:
                while len(index_keys(out)) < len(keys) and proc.poll() is None:
                    time.sleep(0.001)
                os.killpg(proc.pid, signal.SIGSTOP)
                caught_merge = kill_mid_merge(proc, out, rng, merged_before)
            kill_group(proc.pid)  # also when the main process ended first: a stopped rank 1 may be left
            proc.wait()
            log.close()
            seen.append((kind, done_before, len(index_keys(out))))
            if kind != "merge" or caught_merge:
                break
    assert caught_merge, f"no kill landed mid-merge (seed {SEED}): {seen}"

    run_cli([*base, "--writer.output_dir", str(out), "--trainer.devices", "1"], **env)
    rows = index_keys(out)
    assert sorted(rows) == sorted(keys), f"every key exactly once (seed {SEED}, kills {seen})"
    failures = [json.loads(x) for x in (out / layout.MERGED_FAILURES).read_text().splitlines()]
    assert failures == [] and not any(layout.read_jsonl_rows(p) for p in layout.rank_files(out, "crashes"))
    stray = [p for p in out.rglob("*") if p.is_file() and TEMP_NAME.match(p.name)]
    assert stray == [] and not any((out / layout.TMP_DIR).rglob("*.tmp")), f"stray temporary files: {stray}"
    merged = [json.loads(x)["key"] for x in (out / layout.MERGED_INDEX).read_text().splitlines()]
    assert sorted(merged) == sorted(keys)
    a, b = FeatureStore(out), FeatureStore(reference)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key]["features"], b[key]["features"]), f"{key} differs (seed {SEED}, kills {seen})"


pytestmark = pytest.mark.slow
