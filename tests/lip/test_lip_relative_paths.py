"""Relative mouth paths in IIANet split lists resolve as IIANet opens them: against the working directory, or
against ``--data.root`` when given; never against the lists' own folder. Precompute and training agree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lit_features.data.manifest import build_samples, read_iianet_split
from lit_features.models.lip_resnet import UPSTREAM_CHECKPOINT_NAME
from lit_features.training.iianet import LipVisualDataset, read_speaker_rows
from tests.conftest import REPO_ROOT, run_cli
from tests.lip.conftest import CONFIG, LipData


@pytest.fixture()
def relative_data(lip_data: LipData, tmp_path: Path) -> Path:
    """``<base>/clips/*.npz`` and ``<base>/lists/tt/{mix,s1,s2}.json`` whose paths are relative to ``<base>``."""
    base = tmp_path / "dataset"
    (base / "clips").mkdir(parents=True)
    lists = base / "lists" / "tt"
    lists.mkdir(parents=True)
    for kind in ("mix", "s1", "s2"):
        rows = json.loads((lip_data.split_root / "tt" / f"{kind}.json").read_text())
        for row in rows:
            row[0] = f"audio/{kind}/{Path(row[0]).name}"
            if kind != "mix":
                shutil.copy(row[1], base / "clips")
                row[1] = f"clips/{Path(row[1]).name}"
        (lists / f"{kind}.json").write_text(json.dumps(rows))
    return base


def embeddings(base: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted((base / "clips").glob("*_embedding.npz")):
        with np.load(path) as archive:
            out[path.name] = archive["embedding"]
    return out


def precompute(tiny_models: Path, cwd: Path, split_root: str, store: Path, *extra: str) -> None:
    args = [
        "predict",
        "--config",
        str(REPO_ROOT / CONFIG),
        "--model.model_path",
        str(tiny_models / UPSTREAM_CHECKPOINT_NAME),
    ]
    args += ["--data.split_root", split_root, "--data.split", "test", "--writer.output_dir", str(store), *extra]
    run_cli(args, cwd=cwd, OMP_NUM_THREADS="1")


def test_split_lists_resolve_against_the_working_directory_or_data_root(relative_data, tmp_path, monkeypatch):
    lists = relative_data / "lists"
    clips = sorted(str(p) for p in (relative_data / "clips").glob("*.npz"))
    monkeypatch.chdir(relative_data)
    assert sorted(s.source for s in build_samples(read_iianet_split(lists, "test"))) == clips
    assert sorted({r.mouth for r in read_speaker_rows(lists, "test")}) == clips
    monkeypatch.chdir(tmp_path)
    by_root = build_samples(read_iianet_split(lists, "test", root=relative_data))
    assert sorted(s.source for s in by_root) == clips
    assert sorted({r.mouth for r in read_speaker_rows(lists, "test", root=relative_data)}) == clips
    assert {r.mix for r in read_speaker_rows(lists, "test", root=relative_data)} == {
        str(relative_data / "audio" / "mix" / name)
        for name in {Path(row[0]).name for row in json.loads((lists / "tt" / "mix.json").read_text())}
    }
    # Never against the lists' own folder (where nothing is).
    assert not any(s.source.startswith(str(lists)) for s in by_root)


def test_precompute_and_training_agree_on_relative_lists(relative_data, tiny_models, tmp_path):
    expected = sorted(p.stem + "_embedding.npz" for p in (relative_data / "clips").glob("*.npz"))
    assert len(expected) == 2
    # IIANet run from the dataset folder: relative split root and relative rows, no --data.root.
    precompute(tiny_models, relative_data, "lists", tmp_path / "store_cwd")
    first = embeddings(relative_data)
    assert sorted(first) == expected
    # From anywhere else with --data.root: the same files, recomputed identically.
    for path in (relative_data / "clips").glob("*_embedding.npz"):
        path.unlink()
    precompute(
        tiny_models, REPO_ROOT, str(relative_data / "lists"), tmp_path / "store_root", "--data.root", str(relative_data)
    )
    second = embeddings(relative_data)
    assert sorted(second) == sorted(first)
    for name, value in first.items():
        np.testing.assert_array_equal(second[name], value)
    # The training side finds them through the same rule.
    dataset = LipVisualDataset.from_split(relative_data / "lists", "test", root=relative_data)
    for item in (dataset[i] for i in range(len(dataset))):
        assert item["embedding"] is not None
        np.testing.assert_array_equal(
            np.asarray(item["embedding"]), second[Path(item["mouth"]).stem + "_embedding.npz"]
        )
