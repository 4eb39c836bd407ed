"""The one rule every stand-in maker follows: replace an earlier stand-in, never touch real weights."""

from __future__ import annotations

import json
import pathlib
import shutil

MARKER = "tiny_random_stand_in"


def replace_stand_in_dir(target: pathlib.Path) -> None:
    """Remove ``target`` if it is an earlier stand-in (its ``config.json`` has the marker); refuse otherwise."""
    if not target.exists():
        return
    try:
        marked = json.loads((target / "config.json").read_text()).get(MARKER) is True
    except (OSError, ValueError):
        marked = False
    if not marked:
        raise FileExistsError(
            f"{target} exists and is not a tiny stand-in (no '{MARKER}' in its config.json); refusing to overwrite it."
        )
    shutil.rmtree(target)
