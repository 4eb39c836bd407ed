"""Outputs written beside their sources (the IIANet lip job): the file beside the source is the truth."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np

from lit_features.__main__ import main
from lit_features.models.lip_resnet import UPSTREAM_CHECKPOINT_NAME
from tests.lip.conftest import CONFIG, make_lip_data


def lip_predict(models: Path, split_root: Path, store: Path) -> int:
    args = [
        "predict", "--config", CONFIG, "--model.model_path", str(models / UPSTREAM_CHECKPOINT_NAME),
        "--data.split_root", str(split_root), "--data.split", "val", "--data.num_workers", "0",
        "--writer.output_dir", str(store), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    with mock.patch.object(sys, "argv", ["lit_features"]):
        return main(args)


def test_a_deleted_embedding_is_recomputed_and_stray_temporaries_removed(tiny_models: Path, tmp_path: Path):
    data = make_lip_data(tmp_path / "iianet", with_bad=False)
    store = tmp_path / "store"
    assert lip_predict(tiny_models, data.split_root, store) == 0
    made = sorted((data.root / "mouths").glob("*_embedding.npz"))
    assert made, "the val split has clips"
    first = {p: np.load(p)["embedding"] for p in made}
    gone, stray = made[0], made[-1].parent / f".{made[-1].name}.4242.0badc0de.tmp"
    gone.unlink()  # the index still lists it
    stray.write_bytes(b"left by a job killed while writing beside the sources")
    elsewhere = made[-1].parent / "keep.tmp"  # not ours: never touched
    shutil.copy(made[-1], elsewhere)
    assert lip_predict(tiny_models, data.split_root, store) == 0
    assert gone.exists() and np.array_equal(np.load(gone)["embedding"], first[gone])
    assert not stray.exists() and elsewhere.exists()
