"""Execute the notebooks in place, so they are committed with their outputs (figures inline, PNGs refreshed).

    python tools/run_notebooks.py [--only 01_quickstart]

Uses the weights under ``pretrained_model/`` (tiny random stand-ins are made there first when a model is
missing; real weights are never overwritten) and writes work files to ``outputs/notebooks``. Outputs are kept
small and stable: figures at a modest resolution (set in each notebook), no execution timestamps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell of ``path`` with the notebooks folder as working directory; returns the notebook."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the notebook with this name (without .ipynb)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tools.make_tiny_models import main as make_tiny_models

    make_tiny_models(["--out", str(REPO / "pretrained_model"), "--keep-real"])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("WANDB_MODE", "disabled")
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        if args.only and path.stem != args.only:
            continue
        started = time.monotonic()
        notebook = execute(path)
        nbformat.write(notebook, path)
        size = path.stat().st_size / 1024
        print(f"{path.relative_to(REPO)}: executed in {time.monotonic() - started:.0f} s, {size:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
