"""Reading a feature folder the way MindSpeed-MM's feature dataset does, written out for the tests.

Its ``FeatureDataset`` reads ``data.jsonl``; for each row it ``torch.load``s ``<data_folder>/<row["file"]>`` and
returns ``video``, ``prompt_ids``, ``prompt_mask`` popped from the dict plus every other key as is; the dataloader
collates with torch's default collate, and its length-grouped sampler groups rows by
``"{len(sample_frame_index)}x{resolution.sample_height}x{resolution.sample_width}"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate


def rows(data_jsonl: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data_jsonl.read_text().splitlines() if line.strip()]


def sample_size(row: dict[str, Any]) -> str:
    """The sampler's grouping key of a row (a missing field raises, as upstream)."""
    resolution = row["resolution"]
    return f"{len(row['sample_frame_index'])}x{resolution['sample_height']}x{resolution['sample_width']}"


def example(data_folder: Path, row: dict[str, Any]) -> dict[str, Any]:
    data = torch.load(data_folder / row["file"], map_location="cpu")  # torch's default (weights_only) load
    out = {name: data.pop(name, None) for name in ("video", "prompt_ids", "prompt_mask")}
    out.update(data)
    return out


def batch(data_folder: Path, chosen: list[dict[str, Any]]) -> dict[str, Any]:
    return default_collate([example(data_folder, row) for row in chosen])
