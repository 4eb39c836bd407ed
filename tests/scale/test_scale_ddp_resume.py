"""2-process CPU DDP predict killed mid-run, resumed on 3 processes (one of them idle), then on 1 process.

Each resumed run must do exactly what is left: no key written twice over all rank index files, none lost, the
merged index complete after each run. The 3-process step is limited to 2 samples, so one rank has no batch at
all: it must still reach the merge barrier (no hang) and rank 0 must merge.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_features.data.manifest import read_manifests
from lit_features.store import layout
from tests.conftest import MEDIA, REPO_ROOT, cli_env, run_cli

N_CLIPS = 12


def index_rows(out: Path) -> list[dict]:
    return [r for p in layout.rank_files(out, layout.INDEX_DIR) for r in layout.read_jsonl_rows(p)]


def merged_keys(out: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (out / layout.MERGED_INDEX).read_text().splitlines()]


@pytest.mark.slow
def test_ddp_kill_then_resume_on_other_process_counts(tiny_models: Path, tmp_path: Path) -> None:
    clip = str(MEDIA / "v_GGSY1Qvo990.mp4")  # 355 frames: distinct cuts make distinct keys
    manifest = tmp_path / "clips.json"
    manifest.write_text(json.dumps([{"path": clip, "cut": [20 * i, 20 * i + 60]} for i in range(N_CLIPS)]))
    keys = {s.key for s in read_manifests(str(manifest), None)}
    assert len(keys) == N_CLIPS
    out = tmp_path / "store"
    base = [
        "predict", "--config", "configs/quickstart.yaml",
        "--model.model_path", str(tiny_models / "siglip-so400m-patch14-384"),
        "--data.manifest", str(manifest), "--data.batch_size", "1", "--data.num_workers", "0",
        "--writer.output_dir", str(out), "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip

    # 1. Two processes, killed (SIGKILL to the whole process group) once the first samples are in the index.
    with open(tmp_path / "killed_run.log", "w") as log:  # a file: an unread pipe could stall the run
        proc = subprocess.Popen(
            [sys.executable, "-m", "lit_features", *base, "--trainer.devices", "2", "--trainer.strategy", "ddp"],
            cwd=REPO_ROOT,
            env=cli_env(OMP_NUM_THREADS="1"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 600
    while len(index_rows(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = [r["key"] for r in index_rows(out)]
    assert 2 <= len(first) < N_CLIPS, f"the kill did not land mid-run ({len(first)} of {N_CLIPS} done)"
    assert len(set(first)) == len(first)

    # 2. Resume on three processes, two samples only: one rank gets none.
    run_cli([*base, "--trainer.devices", "3", "--trainer.strategy", "ddp", "--data.limit", "2"], OMP_NUM_THREADS="1")
    second = [r["key"] for r in index_rows(out) if r["key"] not in set(first)]
    rows_per_rank = {p.name: len(list(layout.read_jsonl_rows(p))) for p in layout.rank_files(out, layout.INDEX_DIR)}
    assert len(second) == 2, rows_per_rank
    assert rows_per_rank["rank-2.jsonl"] == 0  # the idle rank took part (opened its log) and wrote nothing
    assert sorted(merged_keys(out)) == sorted(first + second)

    # 3. Resume on one process: exactly the rest.
    run_cli([*base, "--trainer.devices", "1"], OMP_NUM_THREADS="1")
    rows = [r["key"] for r in index_rows(out)]
    third = [k for k in rows if k not in set(first) | set(second)]
    assert len(rows) == len(set(rows)) == N_CLIPS, "a key was written twice"
    assert set(third) == keys - set(first) - set(second) and len(third) == N_CLIPS - len(first) - 2
    assert sorted(merged_keys(out)) == sorted(keys)
    assert not (out / layout.TMP_DIR).exists() or not any((out / layout.TMP_DIR).rglob("*.tmp"))
