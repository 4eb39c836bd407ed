"""Every notebook in notebooks/ executes on tiny stand-ins and the bundled media, shows its figures inline and
saves them as PNGs; the committed notebooks carry their outputs (figures included), kept small."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
MAX_COMMITTED_KIB = 400


def image_outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if any(kind.startswith("image/") for kind in output.get("data", {}))
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_shows_and_saves_figures(
    path: Path, tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = tmp_path / "figures"
    monkeypatch.setenv("LIT_FEATURES_MODELS", str(tiny_models))
    monkeypatch.setenv("LIT_FEATURES_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("LIT_FEATURES_FIGURES", str(figures))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:  # run from a clean slate: the committed outputs must not count
        if cell.cell_type == "code":
            cell.outputs = []
    # A failing cell raises CellExecutionError, which fails the test.
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    assert image_outputs(notebook), f"{path.name} showed no figure in its outputs (a non-inline backend?)"
    produced = sorted(p.name for p in figures.glob(f"{path.stem[:2]}_*.png"))
    assert produced, f"{path.name} saved no figure"
    for png in figures.glob("*.png"):
        assert png.stat().st_size > 1000


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_carries_its_figures(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    assert image_outputs(notebook), f"{path.name} is committed without its figures: run tools/run_notebooks.py"
    assert path.stat().st_size < MAX_COMMITTED_KIB * 1024, f"{path.name} is over {MAX_COMMITTED_KIB} KiB"
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "Traceback" not in text and str(REPO_ROOT) not in text, "outputs with a traceback or machine paths"
