"""Training-side lip inputs: cached embeddings and the encoder fallback give the same features, per row."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lit_features.models.lip_resnet import UPSTREAM_CHECKPOINT_NAME
from lit_features.training.iianet import (
    CachedLipEncoder,
    LipVisualDataset,
    SpeakerRow,
    collate_visual,
    embedding_path,
    read_speaker_rows,
)
from tests.lip.conftest import LipData


@pytest.fixture(scope="module")
def encoder(tiny_models: Path) -> CachedLipEncoder:
    return CachedLipEncoder.from_checkpoint(tiny_models / UPSTREAM_CHECKPOINT_NAME)


@pytest.fixture()
def train_rows(lip_data: LipData, lip_run: Path, tmp_path: Path) -> list[SpeakerRow]:
    """The train rows over private copies of their clips and precomputed embeddings (tests may delete some)."""
    rows = read_speaker_rows(lip_data.split_root, "train")
    for mouth in {r.mouth for r in rows}:
        shutil.copy(mouth, tmp_path / Path(mouth).name)
        shutil.copy(embedding_path(mouth), embedding_path(tmp_path / Path(mouth).name))
    return [
        SpeakerRow(r.mix, r.source, str(tmp_path / Path(r.mouth).name), r.n_samples, r.split, r.speaker) for r in rows
    ]


def test_rows_pair_mixtures_with_each_speaker(lip_data: LipData) -> None:
    rows = read_speaker_rows(lip_data.split_root, "train")
    assert len(rows) == 6 and [r.speaker for r in rows] == ["s1"] * 3 + ["s2"] * 3
    assert rows[0].mix == rows[3].mix and rows[0].mouth != rows[3].mouth
    assert Path(rows[0].mouth).name == "spk0_00.npz" and rows[0].n_samples == 32000
    assert len(read_speaker_rows(lip_data.split_root, "all")) == 6 + 8 + 2  # cv holds 3 extra (bad) mixtures


@pytest.mark.parametrize("name", ["spk0_00", "spk0_03", "spk2_00"])  # T = 50, 37, 35
def test_cached_equals_fallback_for_one_clip(lip_data: LipData, lip_run: Path, encoder: CachedLipEncoder, name: str):
    row = next(r for r in read_speaker_rows(lip_data.split_root, "all") if Path(r.mouth).stem == name)
    cached = collate_visual([LipVisualDataset([row])[0]])
    fallback = collate_visual([LipVisualDataset([row], use_precomputed=False)[0]])
    assert cached.cached.tolist() == [True] and cached.frames is None
    assert fallback.cached.tolist() == [False] and fallback.frames.shape[1:3] == (1, cached.embedding.shape[-1])
    torch.testing.assert_close(encoder(cached), encoder(fallback), rtol=0, atol=0)  # bit-identical


def test_mixed_batch_equals_all_uncached_batch(train_rows: list[SpeakerRow], encoder: CachedLipEncoder) -> None:
    for row in train_rows:  # rows: s1 spk0_00 spk0_01 spk1_00, s2 spk1_00 spk1_01 spk0_02
        if Path(row.mouth).stem in ("spk0_00", "spk1_00"):
            embedding_path(row.mouth).unlink(missing_ok=True)
    mixed = next(iter(DataLoader(LipVisualDataset(train_rows), batch_size=6, collate_fn=collate_visual)))
    plain = next(
        iter(DataLoader(LipVisualDataset(train_rows, use_precomputed=False), batch_size=6, collate_fn=collate_visual))
    )
    assert mixed.cached.tolist() == [False, True, False, False, True, True]
    assert mixed.frames.shape == (3, 1, 50, 88, 88) and plain.frames.shape == (6, 1, 50, 88, 88)
    out = encoder(mixed)
    assert out.shape == (6, 512, 50)
    torch.testing.assert_close(out, encoder(plain), rtol=0, atol=0)
    torch.testing.assert_close(out[mixed.cached], mixed.embedding[mixed.cached], rtol=0, atol=0)  # passed through
    assert not mixed.embedding[~mixed.cached].any()  # what a batch-wide "cached" shortcut would feed on


def test_partial_embedding_file_falls_back_to_frames(train_rows: list[SpeakerRow], encoder: CachedLipEncoder) -> None:
    path = embedding_path(train_rows[0].mouth)
    expected = torch.from_numpy(np.load(path)["embedding"])
    path.write_bytes(path.read_bytes()[:3000])
    item = LipVisualDataset(train_rows[:1])[0]
    assert not item["cached"] and item["frames"].shape == (1, 50, 88, 88)
    torch.testing.assert_close(encoder(collate_visual([item]))[0], expected, rtol=0, atol=0)


def test_batch_contract_errors(lip_data: LipData, lip_run: Path, encoder: CachedLipEncoder) -> None:
    rows = {Path(r.mouth).stem: r for r in read_speaker_rows(lip_data.split_root, "all")}
    items = [LipVisualDataset([rows[n]])[0] for n in ("spk0_00", "spk0_03")]
    with pytest.raises(ValueError, match=r"share their length T.*spk0_00\.npz \(T=50\).*spk0_03\.npz \(T=37\)"):
        collate_visual(items)
    batch = collate_visual([LipVisualDataset([rows["spk0_00"]], use_precomputed=False)[0]])
    batch.frames = None
    with pytest.raises(ValueError, match="1 uncached rows but 0 frame clips"):
        encoder(batch)
    with pytest.raises(ValueError, match=r"bad_small\.npz.*at least 88x88"):
        LipVisualDataset([rows["bad_small"]])[0]
    with pytest.raises(ValueError, match=r"bad_nodata\.npz: no array named 'data'.*uint8 \[T, H, W\]"):
        LipVisualDataset([rows["bad_nodata"]])[0]


def test_encoder_stays_frozen_in_training(encoder: CachedLipEncoder) -> None:
    encoder.train()
    assert encoder.training and not encoder.encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
