"""Tiny random stand-ins: the marker they carry and how to tell marked weights, for folders and single files.

``tools/make_tiny_models.py`` writes stand-ins of every model through the library's own ``save_pretrained``
(or the upstream checkpoint layout) and marks them: ``"tiny_random_stand_in": true`` in each ``config.json``
of a weights folder, as a key of a checkpoint dict, or as a ``<file>.stand_in`` file beside a checkpoint.
Extractors warn loudly when they load one and stores record it; the maker never overwrites unmarked weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

STAND_IN_MARKER = "tiny_random_stand_in"


def json_is_marked(file: str | os.PathLike) -> bool:
    """A JSON object file (a ``config.json``) that carries the marker."""
    try:
        data = json.loads(Path(file).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, Mapping) and data.get(STAND_IN_MARKER) is True


def checkpoint_is_marked(file: str | os.PathLike) -> bool:
    """A checkpoint dict that carries the marker as a key.

    Memory-maps the file (tensor data is not read); a file that cannot be read that way (a legacy or foreign
    format) is not a stand-in: the maker never writes those.
    """
    try:
        checkpoint = torch.load(os.fspath(file), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(checkpoint, Mapping) and checkpoint.get(STAND_IN_MARKER) is True


def is_stand_in(path: str | os.PathLike) -> bool:
    """True when the weights at ``path`` (a folder, a ``.json`` config or a checkpoint file) are marked."""
    path = Path(path)
    if path.is_dir():
        return any(json_is_marked(f) for f in list(path.glob("**/config.json"))[:8])
    if path.suffix == ".json":
        return json_is_marked(path)
    if not path.is_file():
        return False
    return path.with_name(path.name + ".stand_in").exists() or checkpoint_is_marked(path)
