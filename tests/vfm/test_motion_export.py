"""Motion autoencoder checkpoints for upstream: the exported file loads strictly into a model built from the
upstream description and gives identical latents; a per_position model is refused; latents keep the input's
layout and the compression ratio is latent size / input size."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_features.cli import run_cli as lightning_cli
from lit_features.data.feature_data import MotionFeatureDataModule
from lit_features.store.reader import FeatureStore
from lit_features.training.motion_ae import MotionAutoencoderModule
from lit_features.training.motion_export import UpstreamCheckpointExport, UpstreamExportError
from tests.conftest import REPO_ROOT, run_cli
from tests.models.upstream_motion_reference import UpstreamMotionAutoencoder
from tests.vfm.vfm_test_helpers import known_motion_samples, write_store

TINY = {"input_dim": 32, "model_dim": 32, "latent_dim": 16, "num_heads": 4, "num_layers": 1}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(sys, "argv", ["lit_features"])
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def motion_store(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("motion") / "store", known_motion_samples(6), {"model": "synthetic"})


def fit(store: Path, out: Path, grouping: str, epochs: int = 2) -> MotionAutoencoderModule:
    torch.manual_seed(0)
    module = MotionAutoencoderModule(**TINY, dropout=0.1, sequence_grouping=grouping, lr=3e-3)
    trainer = pl.Trainer(
        max_epochs=epochs,
        default_root_dir=str(out),
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            ModelCheckpoint(dirpath=str(out / "checkpoints"), save_last=True),
            UpstreamCheckpointExport(str(out / "upstream")),
        ],
    )
    trainer.fit(module, MotionFeatureDataModule(str(store), val_fraction=0.2, batch_size=2, num_workers=0))
    return module.eval()


@pytest.fixture(scope="module")
def fitted(motion_store, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fit")
    return {"module": fit(motion_store, out, "upstream_flat"), "out": out}


def load_like_upstream(path: Path) -> tuple[dict, UpstreamMotionAutoencoder]:
    """What upstream ``encode.py`` does with the file: ``torch.load`` (weights-only by default in torch >= 2.6),
    build the model from its constructor arguments, ``load_state_dict(..., strict=True)``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = UpstreamMotionAutoencoder.from_config(checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return checkpoint, model.eval()


def test_callback_writes_upstream_files_that_load_strictly_and_give_identical_latents(fitted, motion_store):
    upstream = fitted["out"] / "upstream"
    assert sorted(p.name for p in upstream.iterdir()) == ["motion_ae_epoch1.pt", "motion_ae_epoch2.pt"]
    checkpoint, reference = load_like_upstream(upstream / "motion_ae_epoch2.pt")
    assert set(checkpoint) == {"epoch", "state_dict", "config", "mean_loss"}
    assert checkpoint["epoch"] == 2 and math.isfinite(checkpoint["mean_loss"]) and checkpoint["mean_loss"] > 0
    assert {key.split(".")[0] for key in checkpoint["state_dict"]} == {"encoder", "decoder"}
    config = checkpoint["config"]
    assert {k: config[k] for k in TINY} == TINY and config["use_token"] is True and config["epochs"] == 2
    assert config["sequence_grouping"] == "upstream_flat" and config["lr"] == 3e-3

    ours = fitted["module"].model
    x = FeatureStore(motion_store)["clip000"]["feature"][None]  # [1, 8, 4, 4, 32]
    with torch.no_grad():
        want = reference(x)
        got = ours.encode(x)
        full = ours(x)
    assert got["latent"].shape == want.latent.shape == (1, 8, 4, 4, 16)
    assert (got["latent"] - want.latent).abs().max().item() <= 1e-6
    assert (got["motion_embedding"] - want.motion_embedding).abs().max().item() <= 1e-6
    assert (full.reconstruction - want.reconstruction).abs().max().item() <= 1e-5
    assert got["compression_ratio"] == reference.compression_ratio == 0.5


def test_motion_encode_job_on_the_exported_file_writes_upstream_outputs(fitted, motion_store, tmp_path):
    path = fitted["out"] / "upstream" / "motion_ae_epoch2.pt"
    out = tmp_path / "encoded"
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
            "2",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    _, reference = load_like_upstream(path)
    encoded, inputs = FeatureStore(out), FeatureStore(motion_store)
    assert len(encoded) == 2
    for key in encoded:
        with torch.no_grad():
            want = reference(inputs[key]["feature"][None])
        sample = encoded[key]
        assert sample["latent"].shape == (8, 4, 4, 16)  # [T, H, W, latent_dim] for [T, H, W, C] input
        assert (sample["latent"] - want.latent[0]).abs().max().item() <= 1e-6
        assert (sample["motion_embedding"] - want.motion_embedding[0]).abs().max().item() <= 1e-6
        assert float(sample["compression_ratio"]) == 0.5


def test_export_command_converts_a_fit_checkpoint(fitted, tmp_path):
    target = tmp_path / "motion_ae_epoch2.pt"
    proc = run_cli(["export-motion", str(fitted["out"] / "checkpoints" / "last.ckpt"), str(target)])
    assert "--use_token" in proc.stdout and "--latent_dim 16" in proc.stdout
    exported, _ = load_like_upstream(target)
    by_callback, _ = load_like_upstream(fitted["out"] / "upstream" / "motion_ae_epoch2.pt")
    assert exported["epoch"] == 2 and exported["mean_loss"] == pytest.approx(by_callback["mean_loss"])
    for key, value in by_callback["state_dict"].items():
        assert torch.equal(exported["state_dict"][key], value), key


def test_per_position_model_is_refused_before_training_and_by_the_command(motion_store, tmp_path):
    with pytest.raises(UpstreamExportError, match=r"sequence_grouping='per_position'.*upstream_flat"):
        fit(motion_store, tmp_path / "refused", "per_position", epochs=1)
    assert not (tmp_path / "refused" / "checkpoints").exists() and not (tmp_path / "refused" / "upstream").exists()

    torch.manual_seed(0)
    module = MotionAutoencoderModule(**TINY, sequence_grouping="per_position")
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, MotionFeatureDataModule(str(motion_store), val_fraction=0.0, batch_size=2, num_workers=0))
    ckpt = tmp_path / "per_position.ckpt"
    trainer.save_checkpoint(ckpt)
    proc = run_cli(["export-motion", str(ckpt), str(tmp_path / "out.pt")], check=False)
    assert proc.returncode == 2 and not (tmp_path / "out.pt").exists()
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("lit_features: error: ") and "per_position" in line and "upstream_flat" in line
