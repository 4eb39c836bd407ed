"""The one rule every stand-in maker follows: replace an earlier stand-in, never touch real weights.

The marker itself, and how the product tells marked weights, is :mod:`lit_features.models.stand_in`.
"""

from __future__ import annotations

import pathlib
import shutil

from lit_features.models.stand_in import STAND_IN_MARKER, checkpoint_is_marked, json_is_marked

MARKER = STAND_IN_MARKER


def refuse_real_weights(target: pathlib.Path) -> None:
    """Raise ``FileExistsError`` when ``target`` exists and is not an earlier stand-in.

    A folder is a stand-in when every config it holds (``config.json``, ``model_index.json`` and the
    ``config.json`` of each component folder) carries the marker, and it holds at least one; a file when
    it is a checkpoint dict with the marker.
    """
    if not target.exists():
        return
    if target.is_dir():
        configs = [target / "config.json", target / "model_index.json", *sorted(target.glob("*/config.json"))]
        present = [c for c in configs if c.exists()]
        marked = bool(present) and all(json_is_marked(c) for c in present)
    else:
        marked = checkpoint_is_marked(target)
    if not marked:
        raise FileExistsError(
            f"{target} exists and is not a tiny stand-in (no '{MARKER}' marker); refusing to overwrite it. "
            "Write the stand-ins to another folder or move it away."
        )


def replace_stand_in_dir(target: pathlib.Path) -> None:
    """Remove ``target`` if it is an earlier stand-in folder; refuse otherwise (:func:`refuse_real_weights`)."""
    refuse_real_weights(target)
    if target.exists():
        shutil.rmtree(target)
