"""The lip-embedding precompute through the real CLI: outputs, numbers, bad clips, skip/overwrite, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_features.data.manifest import ManifestError
from lit_features.extractors.base import MissingWeightsError
from lit_features.extractors.lip import LipEmbeddings
from lit_features.models.lip_resnet import UPSTREAM_CHECKPOINT_NAME, load_lip_frontend
from lit_features.models.stand_in import checkpoint_is_marked
from tests.conftest import REPO_ROOT, cli_env
from tests.lip.conftest import BAD_CLIPS, CONFIG, LipData, index_rows, make_lip_data, predict
from tools.make_iianet_dataset import CLIPS

GOOD = sorted(CLIPS)


def embedding_file(data: LipData, name: str) -> Path:
    return data.root / "mouths" / f"{name}_embedding.npz"


def test_one_embedding_beside_each_unique_clip(lip_data: LipData, lip_run: Path) -> None:
    for name in GOOD:
        with np.load(embedding_file(lip_data, name)) as archive:
            assert archive.files == ["embedding"]  # nothing else in the upstream file
            assert archive["embedding"].shape == (512, CLIPS[name][2]) and archive["embedding"].dtype == np.float32
    assert {CLIPS[n][2] for n in GOOD} == {50, 35, 37}  # T = 50 and two odd lengths
    rows = index_rows(lip_run)
    assert sorted(r["source"] for r in rows) == sorted(str(lip_data.mouth(n)) for n in GOOD)  # deduplicated
    assert all(r["file"] == str(Path(r["source"]).with_name(Path(r["source"]).stem + "_embedding.npz")) for r in rows)
    info = json.loads((lip_run / "store.json").read_text())
    assert info["extractor"] == "lip_resnet18" and info["tiny_random_stand_in"] is True
    assert info["fingerprint"]["preprocess"] == {
        "type": "MouthClipPreprocessor",
        "array_key": "data",
        "crop_size": 88,
        "mean": 0.421,
        "std": 0.165,
    }


@pytest.fixture(scope="module")
def frontend(tiny_models: Path) -> torch.nn.Module:
    return load_lip_frontend(tiny_models / UPSTREAM_CHECKPOINT_NAME)


@pytest.mark.parametrize("name", ["spk0_00", "spk0_03", "spk2_00"])  # T = 50, 37, 35
def test_embedding_matches_the_upstream_formula(lip_data: LipData, lip_run: Path, frontend, name: str) -> None:
    """Stored embedding == front end on (x/255 centre-cropped to 88, minus 0.421, over 0.165), whole clip."""
    with np.load(lip_data.mouth(name)) as archive:
        frames = archive["data"]
    x = (frames[:, 4:92, 4:92].astype(np.float32) / 255.0 - 0.421) / 0.165
    with torch.no_grad():
        expected = frontend(torch.from_numpy(x)[None, None])[0].numpy()
    with np.load(embedding_file(lip_data, name)) as archive:
        stored = archive["embedding"]
    # Float32 convolutions in two processes; the hand-made input differs from torch's division in the last bit.
    np.testing.assert_allclose(stored, expected, rtol=0, atol=1e-4)
    assert np.abs(stored).mean() > 1e-2  # not a degenerate all-zero output


def test_bad_clips_fail_alone_naming_file_and_expected_shape(lip_data: LipData, lip_run: Path) -> None:
    failures = {Path(r["source"]).stem: r for r in map(json.loads, (lip_run / "failures.jsonl").open())}
    assert sorted(failures) == sorted(BAD_CLIPS)
    for name, (_, said) in BAD_CLIPS.items():
        message = failures[name]["message"]
        assert str(lip_data.bad[name]) in message and said in message, message
        assert "uint8 [T, H, W]" in message and "88" in message, message
        assert not embedding_file(lip_data, name).exists()
    assert failures["bad_nodata"]["stage"] == "decode" and failures["bad_small"]["stage"] == "transform"
    assert len(index_rows(lip_run)) == len(GOOD)  # every good clip was written


def test_rerun_skips_and_overwrite_rewrites(lip_data: LipData, lip_run: Path, tiny_models: Path) -> None:
    before = {n: embedding_file(lip_data, n).stat().st_mtime_ns for n in GOOD}
    rows_before = index_rows(lip_run)
    predict(lip_data, tiny_models, lip_run, in_process=True)
    assert {n: embedding_file(lip_data, n).stat().st_mtime_ns for n in GOOD} == before
    assert index_rows(lip_run) == rows_before  # nothing recomputed, failures not retried

    val = ["spk1_02", "spk0_03"]  # the good clips of the cv split
    contents = {n: np.load(embedding_file(lip_data, n))["embedding"] for n in val}
    predict(lip_data, tiny_models, lip_run, "--writer.overwrite", "true", split="val", in_process=True)
    for name in GOOD:
        changed = embedding_file(lip_data, name).stat().st_mtime_ns != before[name]
        assert changed == (name in val), name
    for name in val:  # rewritten with the same numbers
        np.testing.assert_array_equal(np.load(embedding_file(lip_data, name))["embedding"], contents[name])
    assert sorted(Path(r["source"]).stem for r in index_rows(lip_run)) == sorted(val)


def test_files_made_elsewhere_are_skipped_unless_partial(lip_data: LipData, lip_run: Path, tiny_models: Path, tmp_path):
    """A new store adopts complete ``_embedding.npz`` files already there and redoes missing or cut ones."""
    train = ["spk0_00", "spk0_01", "spk0_02", "spk1_00", "spk1_01"]
    partial = embedding_file(lip_data, "spk0_00")
    reference = np.load(partial)["embedding"]
    partial.write_bytes(partial.read_bytes()[:5000])  # as left by a non-atomic writer that was killed
    embedding_file(lip_data, "spk1_01").unlink()
    before = {n: embedding_file(lip_data, n).stat().st_mtime_ns for n in ("spk0_01", "spk0_02", "spk1_00")}
    store = tmp_path / "other_store"
    predict(lip_data, tiny_models, store, split="train", in_process=True)
    rows = {Path(r["source"]).stem: r for r in index_rows(store)}
    assert sorted(rows) == train
    assert sorted(n for n, r in rows.items() if not r.get("adopted")) == ["spk0_00", "spk1_01"]
    assert all(rows[n]["shapes"] == {"embedding": [512, 50]} for n in train)
    assert {n: embedding_file(lip_data, n).stat().st_mtime_ns for n in before} == before
    np.testing.assert_array_equal(np.load(partial)["embedding"], reference)


def test_rerun_after_kill_finishes_only_the_rest(tiny_models: Path, tmp_path: Path) -> None:
    data = make_lip_data(tmp_path / "data", with_bad=False)
    store = tmp_path / "store"
    args = [
        sys.executable,
        "-m",
        "lit_features",
        "predict",
        "--config",
        CONFIG,
        "--model.model_path",
        str(tiny_models / UPSTREAM_CHECKPOINT_NAME),
        "--data.split_root",
        str(data.split_root),
        "--data.split",
        "train",
        "--data.batch_size",
        "1",
        "--writer.output_dir",
        str(store),
    ]
    proc = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not index_rows(store):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run, its DataLoader workers and its decoder child
        proc.wait()
    first = index_rows(store)
    assert 1 <= len(first) < 5, "kill the run part-way"
    done_mtime = {r["file"]: Path(r["file"]).stat().st_mtime_ns for r in first}

    predict(data, tiny_models, store, split="train", in_process=True)
    rows = index_rows(store)
    assert len(rows) == 5 and len({r["key"] for r in rows}) == 5  # each clip written exactly once overall
    assert rows[: len(first)] == first
    assert {f: Path(f).stat().st_mtime_ns for f in done_mtime} == done_mtime


def test_weights_and_entries_are_checked_before_any_work(tiny_models: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="Lipreading_using_Temporal_Convolutional_Networks"):
        LipEmbeddings(model_path=str(tmp_path / UPSTREAM_CHECKPOINT_NAME))
    stand_in = tiny_models / UPSTREAM_CHECKPOINT_NAME
    assert LipEmbeddings(model_path=str(stand_in)).is_stand_in
    real_like = tmp_path / UPSTREAM_CHECKPOINT_NAME
    torch.save({"model_state_dict": torch.load(stand_in, weights_only=True)["model_state_dict"]}, real_like)
    assert not checkpoint_is_marked(real_like) and not LipEmbeddings(model_path=str(real_like)).is_stand_in

    from lit_features.data.datamodule import ManifestDataModule
    from lit_features.data.sample import Sample

    pre = LipEmbeddings(model_path=str(stand_in)).preprocessor()
    with pytest.raises(ManifestError, match=r"s1\.json, entry 0, field 'path': expected a mouth-crop \.npz"):
        ManifestDataModule.validate_samples([Sample("k", "/x/a.mp4", {"path": "/x/a.mp4"}, "s1.json", 0)], pre)
