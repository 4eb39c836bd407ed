"""Tests for the lip-reading ResNet-18 front end: shapes, upstream parameter names, loading, preprocessing."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from lit_features.models.lip_resnet import (
    UPSTREAM_CHECKPOINT_NAME,
    LipReadingResNet18,
    load_lip_frontend,
    preprocess_mouth_frames,
)
from tools.tiny_models import lip_resnet18 as tiny_lip

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _upstream_frontend_keys() -> list[str]:
    """Front-end keys of the released lrw_resnet18_mstcn checkpoint (everything but the tcn head).

    Written out from the upstream model definition: ``frontend3D`` = Sequential(Conv3d, BatchNorm3d, PReLU,
    MaxPool3d); ``trunk.layer{1..4}`` of two BasicBlocks with conv1/bn1/relu1/conv2/bn2/relu2 (PReLU) and a
    ``downsample`` Sequential(conv1x1, BatchNorm2d) on the first block of layers 2-4.
    """
    keys = ["frontend3D.0.weight", *(f"frontend3D.1.{s}" for s in _BN), "frontend3D.2.weight"]
    for layer in range(1, 5):
        for block in range(2):
            prefix = f"trunk.layer{layer}.{block}"
            keys += [f"{prefix}.conv1.weight", *(f"{prefix}.bn1.{s}" for s in _BN), f"{prefix}.relu1.weight"]
            keys += [f"{prefix}.conv2.weight", *(f"{prefix}.bn2.{s}" for s in _BN), f"{prefix}.relu2.weight"]
            if layer > 1 and block == 0:
                keys += [f"{prefix}.downsample.0.weight", *(f"{prefix}.downsample.1.{s}" for s in _BN)]
    return keys


@pytest.fixture(scope="module")
def model() -> LipReadingResNet18:
    torch.manual_seed(0)
    return LipReadingResNet18().eval()


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tiny_lip.make(tmp_path_factory.mktemp("lip"))[0]


# --- architecture -------------------------------------------------------------------------------------------


def test_state_dict_keys_match_upstream_names(model: LipReadingResNet18) -> None:
    state = model.state_dict()
    expected = _upstream_frontend_keys()
    assert len(expected) == 137
    assert sorted(state) == sorted(expected)
    assert state["frontend3D.0.weight"].shape == (64, 1, 5, 7, 7)
    assert state["frontend3D.2.weight"].shape == (64,)
    assert state["trunk.layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert state["trunk.layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["trunk.layer4.1.relu2.weight"].shape == (512,)
    # Stem 15,872 + stages 148,224 / 526,080 / 2,100,736 / 8,395,776 (convs, BN, PReLU, downsample).
    assert sum(p.numel() for p in model.parameters()) == 11_186_688


@pytest.mark.parametrize(("batch", "frames"), [(1, 50), (2, 29)])
def test_output_is_512_per_frame(model: LipReadingResNet18, batch: int, frames: int) -> None:
    with torch.no_grad():
        out = model(torch.randn(batch, 1, frames, 88, 88))
    assert out.shape == (batch, 512, frames)


def test_trunk_runs_per_frame_in_batch_and_time_order(model: LipReadingResNet18) -> None:
    x = torch.randn(2, 1, 3, 88, 88)
    with torch.no_grad():
        out = model(x)
        stem = model.frontend3D(x)
        assert stem.shape == (2, 64, 3, 22, 22)
        for b in range(2):
            for t in range(3):
                torch.testing.assert_close(out[b, :, t], model.trunk(stem[b : b + 1, :, t])[0])


def test_forward_rejects_non_clip_input(model: LipReadingResNet18) -> None:
    with pytest.raises(ValueError, match=r"\[B, 1, T, H, W\].*\(1, 50, 88, 88\)"):
        model(torch.zeros(1, 50, 88, 88))
    with pytest.raises(ValueError, match=r"\(1, 3, 50, 88, 88\)"):
        model(torch.zeros(1, 3, 50, 88, 88))


# --- loading ------------------------------------------------------------------------------------------------


def test_stand_in_loads_strictly_with_tcn_keys_dropped(stand_in: pathlib.Path) -> None:
    assert stand_in.name == UPSTREAM_CHECKPOINT_NAME
    raw = torch.load(stand_in, weights_only=True)
    assert raw["tiny_random_stand_in"] is True
    tcn_keys = [key for key in raw["model_state_dict"] if "tcn" in key]
    assert tcn_keys  # the stand-in carries a fake head, as the real file does

    loaded = load_lip_frontend(stand_in)
    state = loaded.state_dict()
    assert sorted(state) == sorted(key for key in raw["model_state_dict"] if "tcn" not in key)
    for key, value in state.items():
        torch.testing.assert_close(value, raw["model_state_dict"][key])
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())


def _save(path: pathlib.Path, state_dict: dict) -> pathlib.Path:
    torch.save({"model_state_dict": state_dict}, path)
    return path


def test_loader_lists_unexpected_missing_and_misshaped_keys(tmp_path: pathlib.Path, model: LipReadingResNet18) -> None:
    state = dict(model.state_dict())
    path = _save(tmp_path / "extra.pth.tar", {**state, "classifier.weight": torch.zeros(500, 512)})
    with pytest.raises(ValueError, match=r"extra\.pth\.tar.*unexpected keys \(1\): classifier\.weight"):
        load_lip_frontend(path)

    path = _save(tmp_path / "missing.pth.tar", {k: v for k, v in state.items() if k != "trunk.layer4.1.relu2.weight"})
    with pytest.raises(ValueError, match=r"missing\.pth\.tar.*missing keys \(1\): trunk\.layer4\.1\.relu2\.weight"):
        load_lip_frontend(path)

    path = _save(tmp_path / "shape.pth.tar", {**state, "frontend3D.0.weight": torch.zeros(64, 3, 5, 7, 7)})
    with pytest.raises(ValueError, match=r"frontend3D\.0\.weight: expected \(64, 1, 5, 7, 7\), got \(64, 3, 5, 7, 7\)"):
        load_lip_frontend(path)


def test_loader_accepts_bare_state_dict_and_rejects_unrelated_files(
    tmp_path: pathlib.Path, model: LipReadingResNet18
) -> None:
    bare = tmp_path / "frontend.pt"
    torch.save(model.state_dict(), bare)
    assert sorted(load_lip_frontend(bare).state_dict()) == sorted(model.state_dict())

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match=r"other\.pt.*'model_state_dict'"):
        load_lip_frontend(other)
    with pytest.raises(FileNotFoundError, match=UPSTREAM_CHECKPOINT_NAME):
        load_lip_frontend(tmp_path / UPSTREAM_CHECKPOINT_NAME)


# --- preprocessing ------------------------------------------------------------------------------------------


def test_preprocess_matches_hand_computation() -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 96, 96), dtype=np.uint8)
    out = preprocess_mouth_frames(frames)
    assert out.shape == (1, 3, 88, 88) and out.dtype == torch.float32
    expected = (frames[:, 4:92, 4:92].astype(np.float64) / 255.0 - 0.421) / 0.165
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=0, atol=1e-5)
    # Extremes: 255 -> (1 - 0.421) / 0.165, 0 -> -0.421 / 0.165.
    white = preprocess_mouth_frames(torch.full((1, 96, 96), 255, dtype=torch.uint8))
    black = preprocess_mouth_frames(torch.zeros((1, 96, 96), dtype=torch.uint8))
    assert white.unique().tolist() == pytest.approx([3.5090909])
    assert black.unique().tolist() == pytest.approx([-2.5515152])


def test_preprocess_rounds_odd_margins_down() -> None:
    frames = np.zeros((1, 97, 99), dtype=np.uint8)
    frames[0, 4, 5] = 255  # margins 9 and 11 -> crop starts at row 4, column 5
    out = preprocess_mouth_frames(frames)
    assert out[0, 0, 0, 0].item() == pytest.approx((1.0 - 0.421) / 0.165)
    assert out[0, 0].argmax().item() == 0


@pytest.mark.parametrize(
    ("shape", "message"),
    [((96, 96), r"\[T, H, W\]"), ((3, 96, 96, 3), r"\[T, H, W\]"), ((3, 80, 96), r"at least 88x88")],
)
def test_preprocess_rejects_bad_shapes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=rf"mouth_7\.npz.*{message}"):
        preprocess_mouth_frames(np.zeros(shape, dtype=np.uint8), source="mouth_7.npz")


def test_preprocess_rejects_non_uint8() -> None:
    with pytest.raises(TypeError, match="uint8"):
        preprocess_mouth_frames(np.zeros((3, 96, 96), dtype=np.float32))


# --- tiny maker ---------------------------------------------------------------------------------------------


def test_maker_refuses_to_overwrite_a_real_checkpoint(tmp_path: pathlib.Path) -> None:
    target = tmp_path / UPSTREAM_CHECKPOINT_NAME
    torch.save({"model_state_dict": {"frontend3D.0.weight": torch.ones(1)}}, target)
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        tiny_lip.make(tmp_path)
    assert target.read_bytes() == before


def test_maker_rewrites_its_own_stand_in(stand_in: pathlib.Path) -> None:
    assert tiny_lip.make(stand_in.parent) == [stand_in]
