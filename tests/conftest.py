"""Shared fixtures: the repository root, tiny stand-in weights made once per session, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MEDIA = REPO_ROOT / "samples" / "media"


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess running this checkout's ``lit_features`` (not an installed copy)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("WANDB_MODE", "offline")
    env.update(extra)
    return env


def run_cli(
    args: list[str], cwd: Path | str = REPO_ROOT, timeout: float = 600, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    """Run ``python -m lit_features <args>`` and return the completed process (output captured)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lit_features", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lit_features {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tiny stand-in, written once per session by the same maker the quickstart uses."""
    sys.path.insert(0, str(REPO_ROOT))
    from tools.make_tiny_models import main

    out = tmp_path_factory.mktemp("pretrained_model")
    assert main(["--out", str(out)]) == 0
    return out


@pytest.fixture()
def media() -> Path:
    return MEDIA
