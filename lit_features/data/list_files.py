"""The plain list formats several readers share: ``<dataset_root>,<meta_json>`` list files and IIANet split lists.

A list file names, one per line, a dataset root and the meta JSON of its entries (blank lines and ``#``
comments skipped); the manifest reader and the Wan filter both read it. IIANet keeps its split lists in
``tr/``, ``cv/`` and ``tt/`` folders (``mix.json``, ``s1.json``, ``s2.json``: JSON lists of rows); the
precompute reads the mouth clips of ``s1``/``s2``, the training reader pairs them with ``mix``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lit_features.data.manifest_error import ManifestError

IIANET_SPLITS = {"train": ("tr",), "val": ("cv",), "test": ("tt",), "all": ("tr", "cv", "tt")}
IIANET_LAYOUT = "tr/, cv/, tt/ folders with mix.json, s1.json, s2.json"


def list_file_pairs(lines: Iterable[str], file: str | os.PathLike) -> Iterator[tuple[int, str, str]]:
    """``(line number, dataset root, meta JSON)`` per line of a list file, as written (not yet resolved).

    Raises:
        ManifestError: a line that is not ``<dataset_root>,<meta_json>`` (names the file and the line).
    """
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ManifestError(file, f"expected '<dataset_root>,<meta_json>', got {line!r}", entry=lineno)
        yield lineno, parts[0], parts[1]


def iianet_folders(split_root: str | os.PathLike, split: str) -> list[Path]:
    """The list folders of an IIANet split (``train``, ``val``, ``test`` or ``all``)."""
    if split not in IIANET_SPLITS:
        raise ManifestError(split_root, f"unknown split {split!r}; choose one of {sorted(IIANET_SPLITS)}")
    return [Path(split_root) / sub for sub in IIANET_SPLITS[split]]


def read_split_list(file: Path, rows: str) -> list[Any]:
    """The rows of one IIANet split list (a JSON list; ``rows`` names their form for the messages)."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(file, f"split list not found (expected {IIANET_LAYOUT})") from None
    except json.JSONDecodeError as err:
        raise ManifestError(file, f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except ValueError as err:  # e.g. an integer literal beyond Python's digit limit
        raise ManifestError(file, f"invalid JSON: {err}") from None
    if not isinstance(data, list):
        raise ManifestError(file, f"expected a JSON list of {rows} rows")
    return data
