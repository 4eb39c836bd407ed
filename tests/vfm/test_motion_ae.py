"""Motion autoencoder: fit learns known motion (W&B offline), encode from fit and upstream checkpoints, bad shapes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from PIL import Image

from lit_features.cli import run_cli as lightning_cli
from lit_features.data.feature_data import FeatureShapeError, MotionFeatureDataModule, open_feature_store, split_keys
from lit_features.models.motion_checkpoint import load_motion_autoencoder, load_motion_checkpoint
from lit_features.store.reader import FeatureStore
from lit_features.training.motion_ae import MotionAutoencoderModule
from tests.conftest import REPO_ROOT, run_cli
from tests.vfm.vfm_test_helpers import known_motion_samples, write_store
from tests.wandb_offline import read_run

TINY_AE = ["--model.input_dim", "32", "--model.model_dim", "32", "--model.latent_dim", "16", "--model.num_heads", "4"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(sys, "argv", ["lit_features"])
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def motion_store(tmp_path_factory) -> Path:
    """48 clips [8, 4, 4, 32] of drifting plane waves (a known motion per clip), written by the real writer."""
    return write_store(tmp_path_factory.mktemp("motion") / "store", known_motion_samples(48), {"model": "synthetic"})


@pytest.fixture(scope="module")
def fitted(motion_store, tmp_path_factory) -> dict:
    """``python -m lit_features fit --config configs/motion_ae.yaml --data.store <store>`` with outputs in tmp."""
    out = tmp_path_factory.mktemp("fit")
    config = yaml.safe_load((REPO_ROOT / "configs" / "motion_ae.yaml").read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(out)
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(out / "checkpoints")
    (out / "motion_ae.yaml").write_text(yaml.safe_dump(config))
    args = ["fit", "--config", str(out / "motion_ae.yaml"), "--data.store", str(motion_store), *TINY_AE]
    args += ["--model.num_layers", "1", "--model.dropout", "0.0", "--model.lr", "3e-3", "--data.val_fraction", "0.2"]
    args += ["--data.batch_size", "4", "--data.num_workers", "0", "--trainer.max_epochs", "8"]
    args += ["--trainer.enable_progress_bar", "false"]
    proc = run_cli(
        args, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DATA_DIR=str(out / "wandb_data")
    )
    return {"out": out, "ckpt": out / "checkpoints" / "last.ckpt", "log": proc.stdout + proc.stderr}


def test_fit_lowers_validation_reconstruction_mse_at_least_5x(fitted):
    checkpoint = torch.load(fitted["ckpt"], map_location="cpu", weights_only=True)
    history = checkpoint["val_history"]
    assert len(history) == 8
    first, last = history[0]["recon_mse"], history[-1]["recon_mse"]
    assert first / last >= 5.0, history
    assert history[-1]["cosine"] > history[0]["cosine"]
    assert checkpoint["hyper_parameters"]["input_dim"] == 32
    assert any(p.name.startswith("motion-ae-epoch=") for p in (fitted["out"] / "checkpoints").iterdir())


def test_fit_writes_an_offline_wandb_run_with_metrics_lr_and_latent_histograms(fitted):
    runs = list((fitted["out"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = read_run(runs[0])  # W&B's local transaction log, parsed with wandb's record classes
    for key in ("train/loss_step", "val/recon_mse", "val/cosine", "val/motion_loss", "lr-AdamW"):
        assert run.series(key), key
    histograms = run.series("val/latent_histogram")
    assert len(histograms) == 8 and histograms[0]["_type"] == "histogram"


def test_fit_logs_reconstruction_panels_as_images_per_validation_epoch(fitted):
    (folder,) = (fitted["out"] / "wandb").glob("offline-run-*")
    run = read_run(folder)
    for key in ("val/feature_maps", "val/reconstruction_error_over_time", "val/latent_trajectories"):
        images = run.series(key)
        assert len(images) == 8, key  # one per validation epoch (8 epochs), none for the sanity check
        assert all(image["_type"] == "image-file" for image in images)
        last = Image.open(folder / "files" / images[-1]["path"])
        assert last.size == (images[-1]["width"], images[-1]["height"])
    # Feature maps: input above reconstruction, one 8-pixel tile per time step of the [8, 4, 4, 32] clips.
    maps = run.series("val/feature_maps")[-1]
    assert (maps["width"], maps["height"]) == (8 * 4 * 8, 2 * 4 * 8)


def test_encode_fit_checkpoint_writes_latent_motion_embedding_and_ratio(fitted, motion_store, tmp_path):
    out = tmp_path / "motion"
    lightning_cli(
        [
            "predict",
            "--config",
            str(REPO_ROOT / "configs" / "motion_encode.yaml"),
            "--model.model_path",
            str(fitted["ckpt"]),
            "--data.store",
            str(motion_store),
            "--writer.output_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    encoded, inputs = FeatureStore(out), FeatureStore(motion_store)
    assert encoded.keys() == inputs.keys()  # one output per input store key
    model = MotionAutoencoderModule.load_from_checkpoint(fitted["ckpt"], map_location="cpu").model.eval()
    key = inputs.keys()[0]
    sample = encoded[key]
    reference = model.encode(inputs[key]["feature"][None])
    torch.testing.assert_close(sample["latent"], reference["latent"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(sample["motion_embedding"], reference["motion_embedding"][0], atol=1e-5, rtol=0)
    assert sample["latent"].shape == (8, 4, 4, 16) and sample["motion_embedding"].shape == (8, 16)
    assert float(sample["compression_ratio"]) == 0.5  # latent size / input size
    assert encoded.meta(key)["model"] == "synthetic" and encoded.meta(key)["input_key"] == key


def test_encode_accepts_an_upstream_checkpoint_without_conversion(tiny_models, motion_store, tmp_path):
    path = tiny_models / "motion_autoencoder_upstream.pt"
    assert set(torch.load(path, weights_only=True)) >= {"epoch", "state_dict", "config", "mean_loss"}
    out = tmp_path / "upstream"
    lightning_cli(
        [
            "predict",
            "--config",
            str(REPO_ROOT / "configs" / "motion_encode.yaml"),
            "--model.model_path",
            str(path),
            "--data.store",
            str(motion_store),
            "--writer.output_dir",
            str(out),
            "--data.limit",
            "3",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    encoded, inputs = FeatureStore(out), FeatureStore(motion_store)
    assert len(encoded) == 3
    reference_model = load_motion_autoencoder(path)
    for key in encoded:
        reference = reference_model.encode(inputs[key]["feature"][None])
        torch.testing.assert_close(encoded[key]["latent"], reference["latent"][0], atol=1e-5, rtol=0)


def test_fit_checkpoint_and_upstream_file_load_through_one_function(fitted, tiny_models):
    fit_model = load_motion_checkpoint(fitted["ckpt"])
    assert fit_model.config.input_dim == 32 and not fit_model.training
    upstream = load_motion_checkpoint(tiny_models / "motion_autoencoder_upstream.pt")
    assert upstream.config.sequence_grouping == "upstream_flat"


BAD = {"wrong_channels": torch.zeros(8, 4, 4, 30), "flat": torch.zeros(8, 32)}


def bad_store(root: Path) -> Path:
    return write_store(root, {**known_motion_samples(3), **{k: {"feature": v} for k, v in BAD.items()}})


@pytest.mark.parametrize("bad,message", [("wrong_channels", "has shape [8, 4, 4, 30]"), ("flat", "(rank 2)")])
def test_fit_on_wrong_feature_shapes_fails_naming_file_and_expected_shape(tmp_path, bad, message):
    store = write_store(tmp_path / "store", {**known_motion_samples(3), bad: {"feature": BAD[bad]}})
    module = MotionAutoencoderModule(input_dim=32, model_dim=32, latent_dim=16, num_heads=4, num_layers=1)
    data = MotionFeatureDataModule(str(store), num_workers=0)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(FeatureShapeError) as error:
        trainer.fit(module, data)
    text = str(error.value)
    assert str(FeatureStore(store).path(bad)) in text
    assert "[T, N, 32] or [T, H, W, 32]" in text and message in text


def test_encode_records_a_wrongly_shaped_input_and_keeps_the_good_ones(tiny_models, tmp_path):
    store = bad_store(tmp_path / "store")
    out = tmp_path / "encoded"
    lightning_cli(
        [
            "predict",
            "--config",
            str(REPO_ROOT / "configs" / "motion_encode.yaml"),
            "--model.model_path",
            str(tiny_models / "motion_autoencoder_upstream.pt"),
            "--data.store",
            str(store),
            "--writer.output_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    encoded = FeatureStore(out)
    assert sorted(encoded.keys()) == sorted(known_motion_samples(3))
    failures = {f["key"]: f["message"] for f in encoded.failures()}
    assert sorted(failures) == ["flat", "wrong_channels"]
    assert str(FeatureStore(store).path("wrong_channels")) in failures["wrong_channels"]
    assert "[T, N, 32] or [T, H, W, 32]" in failures["wrong_channels"]


def test_split_is_deterministic_disjoint_and_keeps_keys_on_their_side():
    keys = [f"clip{i:03d}" for i in range(50)]
    train, val = split_keys(keys, 0.2)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == keys
    assert split_keys(list(reversed(keys)), 0.2) == (train, val)
    more_train, more_val = split_keys(keys + ["clip999"], 0.2)
    assert len(set(val) - set(more_val)) <= 1
    assert split_keys(["only"], 0.2) == (["only"], [])


def test_multi_model_output_folder_is_not_mistaken_for_a_store(tmp_path):
    write_store(tmp_path / "vfm" / "VideoMAE", known_motion_samples(1))
    with pytest.raises(FileNotFoundError, match=r"one feature store per model \(VideoMAE\)"):
        open_feature_store(tmp_path / "vfm")
    assert json.loads((tmp_path / "vfm" / "VideoMAE" / "store.json").read_text())["extractor"]
