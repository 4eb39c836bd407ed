"""Settings the data already says are taken from it: the motion autoencoder's input_dim from its store."""

from __future__ import annotations

import json

import torch

from tests.conftest import run_cli
from tests.vfm.vfm_test_helpers import known_motion_samples, write_store


def test_fit_takes_input_dim_from_a_32_channel_store(tmp_path):
    store = write_store(tmp_path / "store", known_motion_samples(6), {"model": "synthetic"})
    args = ["fit", "--config", "configs/motion_ae.yaml", "--data.store", str(store), "--data.num_workers", "0"]
    args += ["--model.model_dim", "32", "--model.latent_dim", "16", "--model.num_heads", "4", "--model.num_layers", "1"]
    args += ["--trainer.max_epochs", "2", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    args += [
        "--trainer.callbacks",
        json.dumps(
            [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True},
                }
            ]
        ),
    ]
    proc = run_cli(args, OMP_NUM_THREADS="1")
    assert "motion autoencoder: input_dim 32, from the feature store" in proc.stderr
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["input_dim"] == 32
    assert checkpoint["state_dict"]["model.encoder.input_proj.weight"].shape == (32, 2 * 32)  # [model_dim, 2C]
