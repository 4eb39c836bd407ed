"""The SLURM array recipe: two array tasks, started independently through a stand-in ``srun``, share one store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, cli_env
from tests.scale.test_scale_multinode import FAKE_SRUN, free_port
from tests.units.test_units_jobs import rows_per_key, write_manifest


@pytest.mark.slow
def test_array_tasks_claim_units_of_one_store(tiny_models: Path, tmp_path: Path) -> None:
    manifest, out = tmp_path / "m.jsonl", tmp_path / "store"
    keys = write_manifest(manifest, 8)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SRUN}" "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    tasks = []
    for task in (0, 1):
        env = cli_env(
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable, OMP_NUM_THREADS="1",
            SLURM_JOB_ID=str(5000 + task), SLURM_ARRAY_JOB_ID="5000", SLURM_ARRAY_TASK_ID=str(task),
            SLURM_JOB_NAME="lit_features_units", SLURM_NNODES="1", SLURM_NTASKS_PER_NODE="1",
            SLURM_NODELIST="127.0.0.1", MASTER_PORT=str(free_port()),
        )  # fmt: skip
        command = [
            "bash", "tools/slurm/extract_array.sbatch", "configs/quickstart.yaml",
            "--model.model_path", str(tiny_models / "siglip-so400m-patch14-384"), "--model.num_frames", "2",
            "--data.manifest", str(manifest), "--data.unit_size", "2", "--data.num_workers", "0",
            "--writer.output_dir", str(out), "--trainer.accelerator", "cpu",
        ]  # fmt: skip
        log = open(tmp_path / f"task{task}.log", "w")
        tasks.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [t.wait(timeout=300) for t in tasks]
    assert codes == [0, 0], "\n".join((tmp_path / f"task{t}.log").read_text()[-3000:] for t in (0, 1))
    counts = rows_per_key(out)
    assert set(counts) == set(keys) and set(counts.values()) == {1}
    owners = {json.loads(p.read_text())["slurm_array_task_id"] for p in out.glob("units/u*/lease.*")}
    assert owners <= {"0", "1"} and len(list(out.glob("units/u*/done"))) == 4
