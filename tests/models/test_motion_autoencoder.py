"""Tests for the motion feature autoencoder: shapes, delta and loss formulas, upstream checkpoint loading."""

from __future__ import annotations

import pathlib

import pytest
import torch

from lit_features.models.motion_autoencoder import (
    MotionAutoencoderConfig,
    MotionAutoencoderOutput,
    MotionFeatureAutoencoder,
    temporal_difference,
)
from lit_features.models.motion_checkpoint import load_motion_autoencoder
from lit_features.models.motion_loss import motion_autoencoder_loss
from tests.models.upstream_motion_reference import UpstreamMotionAutoencoder
from tools.tiny_models import motion_autoencoder as tiny_motion

TINY = {"input_dim": 32, "model_dim": 32, "latent_dim": 16, "num_heads": 4, "num_layers": 1}


@pytest.fixture
def model() -> MotionFeatureAutoencoder:
    torch.manual_seed(0)
    return MotionFeatureAutoencoder(**TINY).eval()


def _save_upstream(path: pathlib.Path, state_dict: dict, config: dict) -> pathlib.Path:
    torch.save({"epoch": 3, "state_dict": state_dict, "config": config, "mean_loss": 0.5}, path)
    return path


# --- shapes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 5, 6, 32), (2, 5, 2, 3, 32)], ids=["tokens", "grid"])
def test_forward_shapes(model: MotionFeatureAutoencoder, shape: tuple[int, ...]) -> None:
    out = model(torch.randn(shape))
    assert out.latent.shape == (*shape[:-1], 16)  # the input's layout, as upstream returns it
    assert out.reconstruction.shape == shape
    assert out.motion_embedding.shape == (2, 5, 16)
    torch.testing.assert_close(out.motion_embedding, out.latent.flatten(2, -2).mean(dim=2))


def test_grid_input_equals_row_major_flattened_tokens(model: MotionFeatureAutoencoder) -> None:
    x = torch.randn(1, 4, 2, 3, 32)
    grid, tokens = model(x), model(x.reshape(1, 4, 6, 32))
    assert grid.latent.shape == (1, 4, 2, 3, 16) and tokens.latent.shape == (1, 4, 6, 16)
    torch.testing.assert_close(grid.latent.reshape(1, 4, 6, 16), tokens.latent)
    torch.testing.assert_close(grid.reconstruction, tokens.reconstruction.reshape(x.shape))


def test_default_config_matches_upstream_defaults() -> None:
    config = MotionAutoencoderConfig()
    assert (config.input_dim, config.model_dim, config.latent_dim) == (768, 384, 192)
    assert (config.num_heads, config.num_layers, config.dropout) == (8, 2, 0.1)
    assert MotionFeatureAutoencoder().compression_ratio == 0.25  # latent size / input size, as upstream


def test_config_rejects_heads_not_dividing_width() -> None:
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        MotionAutoencoderConfig(model_dim=30, num_heads=4)


# --- delta, encoder input and token grouping ----------------------------------------------------------------


def test_temporal_difference_by_hand() -> None:
    x = torch.tensor([1.0, 4.0, 9.0, 16.0]).reshape(1, 4, 1)
    assert temporal_difference(x).flatten().tolist() == [0.0, 3.0, 5.0, 7.0]


@pytest.mark.parametrize("use_token", [True, False])
def test_encoder_sees_features_and_delta(use_token: bool) -> None:
    model = MotionFeatureAutoencoder(**TINY, use_token=use_token).eval()
    seen = []
    model.encoder.input_proj.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    x = torch.randn(1, 3, 2, 32)
    model(x)
    delta = torch.stack([torch.zeros_like(x[:, 0]), x[:, 1] - x[:, 0], x[:, 2] - x[:, 1]], dim=1)
    expected = torch.cat([x, delta], dim=-1) if use_token else delta
    assert model.encoder.input_proj.in_features == (64 if use_token else 32)
    torch.testing.assert_close(seen[0], expected)


@pytest.mark.parametrize("grouping", ["per_position", "upstream_flat"])
def test_temporal_layers_get_the_documented_sequences(grouping: str) -> None:
    model = MotionFeatureAutoencoder(**TINY, sequence_grouping=grouping).eval()
    projected, sequences = [], []
    model.encoder.input_proj.register_forward_hook(lambda _m, _i, out: projected.append(out))
    model.encoder.conv_block.register_forward_hook(lambda _m, inputs, _o: sequences.append(inputs[0]))
    model(torch.randn(2, 3, 5, 32))
    h = projected[0]  # [B, T, N, D]
    if grouping == "per_position":
        expected = h.permute(0, 2, 1, 3).reshape(10, 3, 32)  # one time series per token position
    else:
        expected = h.reshape(10, 3, 32)  # upstream: runs of T consecutive tokens in (t, n) order
    torch.testing.assert_close(sequences[0], expected)


def test_per_position_model_is_equivariant_to_token_order(model: MotionFeatureAutoencoder) -> None:
    x = torch.randn(1, 4, 5, 32)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(model(x[:, :, perm]).latent, model(x).latent[:, :, perm])


# --- loss ---------------------------------------------------------------------------------------------------


def _hand_case() -> tuple[torch.Tensor, MotionAutoencoderOutput]:
    # T=3, N=1, C=2 features and a latent with one channel; every term is worked out below by hand.
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 3.0]]).reshape(1, 3, 1, 2)
    x_hat = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 5.0]]).reshape(1, 3, 1, 2)
    z = torch.tensor([0.5, 1.0, -1.0]).reshape(1, 3, 1, 1)
    return x, MotionAutoencoderOutput(latent=z, reconstruction=x_hat, motion_embedding=z.mean(dim=2))


def test_loss_terms_match_hand_computation() -> None:
    x, out = _hand_case()
    losses = motion_autoencoder_loss(x, out)
    # recon: errors (1,0),(0,-1),(0,2) -> squares sum 6 over 6 values
    assert losses.recon.item() == pytest.approx(1.0)
    # motion: dx = (1,2),(2,1); dx_hat = (0,1),(2,4); differences (-1,-1),(0,3) -> 11 over 4 values
    assert losses.motion.item() == pytest.approx(2.75)
    # smooth: dz = 0.5, -2.0 -> mean |dz| = 1.25
    assert losses.smooth.item() == pytest.approx(1.25)
    assert losses.total.item() == pytest.approx(1.0 + 2.75 + 0.05 * 1.25)
    weighted = motion_autoencoder_loss(x, out, recon_weight=2.0, motion_weight=0.5, smooth_weight=0.1)
    assert weighted.total.item() == pytest.approx(2.0 + 1.375 + 0.125)


def test_loss_backpropagates_through_the_model(model: MotionFeatureAutoencoder) -> None:
    model.train()
    x = torch.randn(2, 4, 2, 3, 32)
    motion_autoencoder_loss(x, model(x)).total.backward()
    assert model.encoder.input_proj.weight.grad is not None
    assert model.decoder.output_proj[1].weight.grad is not None


def test_loss_rejects_mismatched_shapes_and_single_frames(model: MotionFeatureAutoencoder) -> None:
    x, out = _hand_case()
    with pytest.raises(ValueError, match="differs from the input shape"):
        motion_autoencoder_loss(x[:, :2], out)
    single = torch.randn(1, 1, 2, 32)
    with pytest.raises(ValueError, match="at least 2 frames"):
        motion_autoencoder_loss(single, model(single))


def test_encode_returns_latent_embedding_and_ratio(model: MotionFeatureAutoencoder) -> None:
    x = torch.randn(1, 4, 2, 3, 32)
    encoded = model.encode(x)
    assert set(encoded) == {"latent", "motion_embedding", "compression_ratio"}
    assert encoded["latent"].shape == (1, 4, 2, 3, 16)
    assert encoded["motion_embedding"].shape == (1, 4, 16)
    assert encoded["compression_ratio"] == 0.5
    assert not encoded["latent"].requires_grad
    torch.testing.assert_close(encoded["latent"], model(x).latent.detach())


@pytest.mark.parametrize("shape", [(2, 6, 5, 32), (1, 6, 2, 3, 32)], ids=["tokens", "grid"])
@pytest.mark.parametrize("use_token", [True, False])
def test_upstream_flat_model_equals_the_upstream_reference(shape: tuple[int, ...], use_token: bool) -> None:
    """Same weights in a model written from the upstream description: identical outputs in both layouts."""
    torch.manual_seed(3)
    ours = MotionFeatureAutoencoder(**TINY, use_token=use_token, sequence_grouping="upstream_flat").eval()
    reference = UpstreamMotionAutoencoder(**TINY, dropout=0.1, use_token=use_token).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(shape)
    with torch.no_grad():
        want, got, encoded = reference(x), ours(x), ours.encode(x)
    for name in ("latent", "reconstruction", "motion_embedding"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=1e-6)
    torch.testing.assert_close(encoded["latent"], want.latent, rtol=0, atol=1e-6)
    assert encoded["compression_ratio"] == reference.compression_ratio == 0.5


# --- bad inputs ---------------------------------------------------------------------------------------------


def test_wrong_rank_names_source_and_expected_layout(model: MotionFeatureAutoencoder) -> None:
    with pytest.raises(ValueError, match=r"clip_0001\.pt.*\[B, T, N, C\].*\(5, 6, 32\)"):
        model(torch.randn(5, 6, 32), source="clip_0001.pt")


def test_wrong_channel_count_names_expected_and_got(model: MotionFeatureAutoencoder) -> None:
    with pytest.raises(ValueError, match=r"clip\.pt.*C=32.*got C=33"):
        model.encode(torch.randn(1, 3, 4, 33), source="clip.pt")


def test_channel_error_names_the_checkpoint(tmp_path: pathlib.Path) -> None:
    (path,) = tiny_motion.make(tmp_path)
    loaded = load_motion_autoencoder(path)
    with pytest.raises(ValueError, match=rf"weights from {path}.*got C=768"):
        loaded(torch.randn(1, 3, 4, 768))


# --- checkpoint loading -------------------------------------------------------------------------------------


def test_upstream_checkpoint_round_trip(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(1)
    original = MotionFeatureAutoencoder(**TINY, use_token=False, sequence_grouping="upstream_flat").eval()
    # The upstream trainer stores every argparse value, paths included, next to the model arguments.
    config = {
        **TINY,
        "dropout": 0.1,
        "use_token": False,
        "feature_dir": pathlib.Path("/data/features/VideoMAEv2"),
        "save_dir": pathlib.Path("checkpoints"),
        "lr": 2e-4,
        "epochs": 10,
    }
    path = _save_upstream(tmp_path / "motion_ae_epoch3.pt", original.state_dict(), config)
    loaded = load_motion_autoencoder(path)
    assert not loaded.training
    assert loaded.config == MotionAutoencoderConfig(**TINY, use_token=False, sequence_grouping="upstream_flat")
    for key, value in original.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    x = torch.randn(1, 4, 2, 3, 32)
    torch.testing.assert_close(loaded(x).reconstruction, original(x).reconstruction)


def test_tiny_maker_checkpoint_loads_and_encodes(tmp_path: pathlib.Path) -> None:
    (path,) = tiny_motion.make(tmp_path)
    assert path.name == "motion_autoencoder_upstream.pt"
    loaded = load_motion_autoencoder(path)
    assert loaded.config.input_dim == 32 and loaded.config.latent_dim == 16
    assert loaded.config.sequence_grouping == "upstream_flat"
    assert loaded.encode(torch.randn(1, 4, 3, 32))["latent"].shape == (1, 4, 3, 16)
    assert loaded.encode(torch.randn(1, 4, 2, 3, 32))["latent"].shape == (1, 4, 2, 3, 16)


def test_loader_infers_use_token_and_keeps_explicit_grouping(tmp_path: pathlib.Path) -> None:
    model = MotionFeatureAutoencoder(**TINY, use_token=True)
    path = _save_upstream(tmp_path / "own.pt", model.state_dict(), {**TINY, "sequence_grouping": "per_position"})
    loaded = load_motion_autoencoder(path)
    assert loaded.config.use_token is True
    assert loaded.config.sequence_grouping == "per_position"


def test_loader_is_strict_and_names_file_and_keys(tmp_path: pathlib.Path, model: MotionFeatureAutoencoder) -> None:
    config = {**TINY, "use_token": True}
    extra = {**model.state_dict(), "head.weight": torch.zeros(1)}
    path = _save_upstream(tmp_path / "extra.pt", extra, config)
    with pytest.raises(ValueError, match=r"extra\.pt.*unexpected keys \(1\): head\.weight"):
        load_motion_autoencoder(path)

    missing = {k: v for k, v in model.state_dict().items() if k != "encoder.input_proj.bias"}
    path = _save_upstream(tmp_path / "missing.pt", missing, config)
    with pytest.raises(ValueError, match=r"missing\.pt.*missing keys \(1\): encoder\.input_proj\.bias"):
        load_motion_autoencoder(path)

    path = _save_upstream(tmp_path / "shape.pt", model.state_dict(), {**config, "latent_dim": 8})
    with pytest.raises(ValueError, match=r"shape\.pt.*shape mismatches.*expected \(8, 32\), got \(16, 32\)"):
        load_motion_autoencoder(path)


def test_loader_rejects_other_layouts_and_missing_files(
    tmp_path: pathlib.Path, model: MotionFeatureAutoencoder
) -> None:
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(ValueError, match=r"bare\.pt.*'state_dict' and 'config'"):
        load_motion_autoencoder(bare)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_motion_autoencoder(tmp_path / "nowhere.pt")


# --- tiny maker ---------------------------------------------------------------------------------------------


def test_maker_refuses_to_overwrite_a_real_checkpoint(tmp_path: pathlib.Path) -> None:
    target = tmp_path / tiny_motion.FILE_NAME
    torch.save({"epoch": 10, "state_dict": {}, "config": {}, "mean_loss": 0.1}, target)
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        tiny_motion.make(tmp_path)
    assert target.read_bytes() == before

    target.write_text("not a checkpoint")
    with pytest.raises(FileExistsError, match="tiny_random_stand_in"):
        tiny_motion.make(tmp_path)
    assert target.read_text() == "not a checkpoint"


def test_maker_rewrites_its_own_stand_in(tmp_path: pathlib.Path) -> None:
    first = tiny_motion.make(tmp_path)[0].read_bytes()
    assert tiny_motion.make(tmp_path)[0].read_bytes() == first
