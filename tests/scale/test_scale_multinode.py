"""Multi-node runs simulated on this machine (loopback, CPU, gloo): torchrun 2 nodes x 2 processes, and the
SLURM recipe ``tools/slurm/extract.sbatch`` run through a stand-in ``srun`` (2 nodes x 1 task).

Both must write every manifest key exactly once (each key in exactly one rank's index file), leave a complete
merged index whose files exist, and have work done on every rank.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lit_features.data.manifest import read_manifests
from lit_features.store import layout
from tests.conftest import REPO_ROOT, cli_env

FAKE_SRUN = Path(__file__).with_name("fake_srun.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quickstart_keys() -> set[str]:
    return {s.key for s in read_manifests(str(REPO_ROOT / "samples" / "quickstart.json"), None)}


def check_store(out: Path, expected: set[str]) -> dict[str, int]:
    """Every key once over all rank files, merged index complete; returns rows per rank file."""
    per_rank = {p.name: [r["key"] for r in layout.read_jsonl_rows(p)] for p in layout.rank_files(out, "index")}
    keys = [k for ks in per_rank.values() for k in ks]
    assert len(keys) == len(set(keys)), f"a key was written twice: {per_rank}"
    assert set(keys) == expected
    merged = [json.loads(line) for line in (out / layout.MERGED_INDEX).read_text().splitlines()]
    assert sorted(r["key"] for r in merged) == sorted(expected)
    assert all((out / r["file"]).is_file() for r in merged)
    assert (out / layout.MERGED_FAILURES).read_text() == ""
    return {name: len(ks) for name, ks in per_rank.items()}


@pytest.mark.slow
def test_torchrun_two_nodes_of_two_processes(tiny_models: Path, tmp_path: Path) -> None:
    out, port = tmp_path / "store", free_port()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(port),
        "-m", "lit_features", "predict", "--config", "configs/quickstart.yaml",
        "--model.model_path", str(tiny_models / "siglip-so400m-patch14-384"),
        "--writer.output_dir", str(out), "--data.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
        "--trainer.devices", "2", "--trainer.num_nodes", "2",
    ]  # fmt: skip
    # One torchrun agent per "node"; PYTHONPROFILEIMPORTTIME lists every module each process imports.
    env = cli_env(PYTHONPROFILEIMPORTTIME="1", OMP_NUM_THREADS="1")
    logs = [tmp_path / f"node{n}.log" for n in (0, 1)]  # files, not pipes: a full pipe would stall a node
    nodes = []
    for n, log in enumerate(logs):
        with open(log, "w") as sink:
            nodes.append(
                subprocess.Popen(
                    command[:7] + ["--node-rank", str(n)] + command[7:],
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        codes = [node.wait(timeout=900) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    outputs = [log.read_text() for log in logs]
    for code, text in zip(codes, outputs):
        assert code == 0, text[-4000:]
    counts = check_store(out, quickstart_keys())
    assert sorted(counts) == [f"rank-{r}.jsonl" for r in range(4)]
    assert all(n >= 1 for n in counts.values()), counts  # both nodes' ranks did work

    # The package ran on CPU with the NPU path absent: the attempt to import torch_npu failed (it is listed
    # as an attempt) and nothing of our NPU module was imported.
    imports = "".join(outputs)
    assert re.search(r"\|\s+lit_features\.accelerators$", imports, re.M)  # the listing does cover our modules
    assert not re.search(r"\|\s+lit_features\.accelerators\.npu$", imports, re.M)
    assert not re.search(r"\|\s+torch_npu\.", imports, re.M)


@pytest.mark.slow
def test_slurm_sbatch_recipe_on_two_nodes(tiny_models: Path, tmp_path: Path) -> None:
    bin_dir, out = tmp_path / "bin", tmp_path / "store"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SRUN}" "$@"\n')
    srun.chmod(0o755)
    env = cli_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PYTHON=sys.executable,
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="lit_features",
        SLURM_NNODES="2",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NODELIST="127.0.0.1",
        MASTER_PORT=str(free_port()),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        ["bash", "tools/slurm/extract.sbatch", "configs/quickstart.yaml",
         "--model.model_path", str(tiny_models / "siglip-so400m-patch14-384"),
         "--writer.output_dir", str(out), "--trainer.accelerator", "cpu", "--data.num_workers", "0"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    counts = check_store(out, quickstart_keys())
    assert sorted(counts) == ["rank-0.jsonl", "rank-1.jsonl"] and all(counts.values())
