"""Fixtures of the lip tests: a small IIANet-style dataset with three bad clips, and one precompute run."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from lit_features.models.lip_resnet import UPSTREAM_CHECKPOINT_NAME
from lit_features.store import layout
from tests.conftest import run_cli
from tools import make_iianet_dataset

CONFIG = "configs/lip_resnet18.yaml"

# bad clip name -> (arrays in the file, what the failure message must say besides the file name)
BAD_CLIPS = {
    "bad_nodata": ({"frames": np.zeros((5, 96, 96), np.uint8)}, "no array named 'data'"),
    "bad_rank": ({"data": np.zeros((96, 96), np.uint8)}, "must be shaped [T, H, W]"),
    "bad_small": ({"data": np.zeros((5, 80, 96), np.uint8)}, "at least 88x88"),
}


@dataclass
class LipData:
    root: Path
    split_root: Path
    bad: dict[str, Path]

    def mouth(self, name: str) -> Path:
        return self.root / "mouths" / f"{name}.npz"


def make_lip_data(root: Path, with_bad: bool = True) -> LipData:
    """The tools/ dataset; with ``with_bad``, three broken clips paired into extra ``cv`` mixtures."""
    split_root = make_iianet_dataset.make(root)
    bad = {}
    if with_bad:
        lists = split_root / "cv"
        rows = {kind: json.loads((lists / f"{kind}.json").read_text()) for kind in ("mix", "s1", "s2")}
        good = rows["s1"][0]
        for name, (arrays, _) in BAD_CLIPS.items():
            bad[name] = root / "mouths" / f"{name}.npz"
            np.savez_compressed(bad[name], **arrays)
            rows["mix"].append(list(rows["mix"][0]))
            rows["s1"].append([good[0], str(bad[name]), good[2]])
            rows["s2"].append(list(rows["s2"][0]))
        for kind, kind_rows in rows.items():
            (lists / f"{kind}.json").write_text(json.dumps(kind_rows))
    return LipData(root.resolve(), split_root, bad)


def predict(data: LipData, models: Path, store: Path, *extra: str, split: str = "all", in_process: bool = False):
    """``python -m lit_features predict`` with the shipped config on ``data``.

    ``in_process`` runs the same LightningCLI inside the test process, sparing the interpreter start-up.
    """
    args = [
        "predict",
        "--config",
        CONFIG,
        "--model.model_path",
        str(models / UPSTREAM_CHECKPOINT_NAME),
        "--data.split_root",
        str(data.split_root),
        "--data.split",
        split,
        "--writer.output_dir",
        str(store),
        *extra,
    ]
    if in_process:
        from lit_features.cli import run_cli as lightning_cli

        with mock.patch.object(sys, "argv", ["lit_features"]):  # pytest's own arguments are not for the CLI
            return lightning_cli(args)
    return run_cli(args)


def index_rows(store: Path) -> list[dict]:
    """Index rows of every rank, in file order (a line being written is not read)."""
    return [row for f in layout.rank_files(store, layout.INDEX_DIR) for row in layout.read_jsonl_rows(f)]


@pytest.fixture(scope="session")
def lip_data(tmp_path_factory: pytest.TempPathFactory) -> LipData:
    return make_lip_data(tmp_path_factory.mktemp("iianet"))


@pytest.fixture(scope="session")
def lip_run(lip_data: LipData, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One precompute over ``all`` (8 good clips, 3 bad ones); returns the store folder.

    In-process to save an interpreter start; the kill test runs ``python -m lit_features`` itself.
    """
    store = tmp_path_factory.mktemp("lip_store")
    predict(lip_data, tiny_models, store, in_process=True)
    return store
