"""Every notebook in notebooks/ executes on tiny stand-ins and the bundled media, and produces its figures."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_saves_figures(
    path: Path, tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = tmp_path / "figures"
    monkeypatch.setenv("LIT_FEATURES_MODELS", str(tiny_models))
    monkeypatch.setenv("LIT_FEATURES_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("LIT_FEATURES_FIGURES", str(figures))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(path, as_version=4)
    # A failing cell raises CellExecutionError, which fails the test.
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    produced = sorted(p.name for p in figures.glob(f"{path.stem[:2]}_*.png"))
    assert produced, f"{path.name} saved no figure"
    for png in figures.glob("*.png"):
        assert png.stat().st_size > 1000
