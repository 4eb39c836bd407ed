"""Shared by the command-line tests: one real quickstart run (its store and its output), and line helpers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

#: A frame of a progress bar (``12/48 [00:03<...]``), redrawn in place: not a message.
PROGRESS_FRAME = re.compile(r"\d+/(\d+|\?) \[")


def messages(proc: subprocess.CompletedProcess) -> list[str]:
    """Every line a run printed (stdout and stderr, split at carriage returns too), progress-bar frames left out."""
    lines = re.split(r"[\r\n]", proc.stdout + "\n" + proc.stderr)
    return [line.strip() for line in lines if line.strip() and not PROGRESS_FRAME.search(line)]


def quickstart_args(tiny_models: Path, output_dir: Path) -> list[str]:
    """``predict --config configs/quickstart.yaml`` on the tiny SigLIP stand-in, into ``output_dir``."""
    return [
        "predict",
        "--config",
        "configs/quickstart.yaml",
        "--model.model_path",
        str(tiny_models / "siglip-so400m-patch14-384"),
        "--writer.output_dir",
        str(output_dir),
        "--data.num_workers",
        "0",
    ]


@pytest.fixture(scope="session")
def quickstart(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The quickstart, run once through ``python -m lit_features`` as a user runs it: output and store."""
    out = tmp_path_factory.mktemp("quickstart") / "store"
    proc = run_cli(quickstart_args(tiny_models, out), OMP_NUM_THREADS="1")
    return {"proc": proc, "store": out}
