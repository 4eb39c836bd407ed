"""Motion autoencoder checkpoints in the upstream vfm_encoder layout, readable by its ``encode.py``.

Upstream files are ``torch.save({epoch, state_dict, config, mean_loss})`` with ``state_dict`` keyed by bare
module names (``encoder.*``, ``decoder.*``) and ``config`` the training script's arguments. Upstream code cuts
``[B, T, N, D]`` into sequences without moving the time axis (``sequence_grouping: upstream_flat``), so only a
model trained that way computes the same latents there; a ``per_position`` model (the default here: one
temporal sequence per spatial position, the design both descriptions state) is refused, because upstream code
would load its weights without complaint and compute different latents.

* :class:`UpstreamCheckpointExport`: a ``fit`` callback that writes ``motion_ae_epoch{N}.pt`` after every
  training epoch, as the upstream trainer names them (and refuses a ``per_position`` model before training).
* ``python -m lit_features export-motion CKPT OUT``: converts a ``fit`` checkpoint (:func:`export_motion_checkpoint`).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lit_features.errors import UserError
from lit_features.models.motion_autoencoder import MotionFeatureAutoencoder
from lit_features.models.motion_checkpoint import CHECKPOINT_SAFE_GLOBALS, load_motion_checkpoint

#: Training arguments the upstream trainer records next to the model arguments, with their hparams names here.
TRAINING_ARGS = {
    "lr": "lr",
    "weight_decay": "weight_decay",
    "recon_weight": "recon_weight",
    "motion_weight": "motion_weight",
    "smooth_weight": "smooth_weight",
}


class UpstreamExportError(UserError, ValueError):
    """The model cannot be written as an upstream checkpoint without upstream computing other latents."""


def check_exportable(model: MotionFeatureAutoencoder, where: str) -> None:
    """Refuses a model whose token grouping upstream code does not implement.

    Raises:
        UpstreamExportError: for ``sequence_grouping: per_position``.
    """
    grouping = model.config.sequence_grouping
    if grouping != "upstream_flat":
        raise UpstreamExportError(
            f"{where}: this motion autoencoder uses sequence_grouping={grouping!r}; upstream vfm_encoder code "
            "cuts [B, T, N, D] into sequences without moving the time axis ('upstream_flat') and would compute "
            "different latents from these weights without any error. Train with --model.sequence_grouping "
            "upstream_flat to get a checkpoint upstream reads correctly, or encode with lit_features' "
            "motion_encode job (configs/motion_encode.yaml), which reads this checkpoint as is."
        )


def upstream_checkpoint(
    model: MotionFeatureAutoencoder, epoch: int, mean_loss: float | None, training: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``{epoch, state_dict, config, mean_loss}`` dict upstream ``train.py`` saves, for ``model``.

    ``config`` holds the model arguments under upstream's names (``input_dim`` ... ``use_token``), the given
    training arguments, and ``sequence_grouping: upstream_flat`` (ignored upstream; it tells this project's
    loader how the weights were trained). Values are plain Python types, so ``torch.load(weights_only=True)``
    reads the file.
    """
    check_exportable(model, "upstream export")
    config = {k: v for k, v in model.config.to_dict().items()}
    config.update(training or {})
    state = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
    return {
        "epoch": int(epoch),
        "state_dict": state,
        "config": config,
        "mean_loss": float("nan") if mean_loss is None else float(mean_loss),
    }


def save_upstream_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary name beside ``path``, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def upstream_encode_command(checkpoint: dict[str, Any], path: str | os.PathLike) -> str:
    """The upstream ``encode.py`` command line that reads ``path`` (its model flags must match the weights)."""
    c = checkpoint["config"]
    flags = " ".join(
        f"--{name} {c[name]}" for name in ("input_dim", "model_dim", "latent_dim", "num_heads", "num_layers")
    )
    token = " --use_token" if c["use_token"] else ""
    return f"python encode.py --checkpoint {path} --input FEATURE.pt --output OUT.pt {flags}{token}"


def _training_args(hparams: dict[str, Any], epochs: int) -> dict[str, Any]:
    args = {name: hparams[ours] for name, ours in TRAINING_ARGS.items() if ours in hparams}
    args["epochs"] = epochs
    return args


class UpstreamCheckpointExport(pl.Callback):
    """Writes ``<dirpath>/motion_ae_epoch{N}.pt`` in the upstream layout after every ``every_n_epochs`` epochs.

    Add it to ``trainer.callbacks`` of ``configs/motion_ae.yaml`` together with ``model.sequence_grouping:
    upstream_flat``; with a ``per_position`` model the run stops at start-up, before any training.

    Args:
        dirpath: folder for the upstream files.
        every_n_epochs: write after every this many training epochs (the last epoch is always written).
    """

    def __init__(self, dirpath: str = "outputs/motion_ae/upstream", every_n_epochs: int = 1):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.dirpath = dirpath
        self.every_n_epochs = every_n_epochs

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_exportable(pl_module.model, f"{type(self).__name__}({self.dirpath})")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # upstream numbers epochs from 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if trainer.sanity_checking or (epoch % self.every_n_epochs and not last) or not trainer.is_global_zero:
            return
        checkpoint = upstream_checkpoint(
            pl_module.model,
            epoch,
            pl_module.epoch_mean_loss(),
            _training_args(dict(pl_module.hparams), int(trainer.max_epochs or epoch)),
        )
        save_upstream_checkpoint(checkpoint, Path(self.dirpath) / f"motion_ae_epoch{epoch}.pt")


def export_motion_checkpoint(checkpoint: str, output: str, allow_pickle: bool = False) -> int:
    """Convert a motion autoencoder ``fit`` checkpoint to the upstream ``{epoch, state_dict, config, mean_loss}``.

    The model must have been trained with ``sequence_grouping: upstream_flat``; others are refused (upstream
    code would compute different latents from their weights).

    Args:
        checkpoint: a ``fit`` checkpoint (``.ckpt``), e.g. ``outputs/motion_ae/checkpoints/last.ckpt``.
        output: the upstream file to write, e.g. ``checkpoints_videomaev2/motion_ae_epoch10.pt``.
        allow_pickle: fully unpickle the checkpoint (only for files you trust).
    """
    if not os.path.isfile(checkpoint):
        raise UpstreamExportError(f"{checkpoint}: no such checkpoint file")
    try:
        model = load_motion_checkpoint(checkpoint, allow_pickle=allow_pickle)
    except UserError:
        raise
    except ValueError as err:  # not a motion autoencoder checkpoint: the message names the file and the problem
        raise UpstreamExportError(str(err)) from None
    check_exportable(model, checkpoint)
    with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
        raw = torch.load(checkpoint, map_location="cpu", weights_only=not allow_pickle)
    epoch = int(raw.get("epoch", 0)) + 1 if "hyper_parameters" in raw else int(raw.get("epoch", 0))
    mean_loss = raw.get("train_mean_loss", raw.get("mean_loss"))
    hparams = dict(raw.get("hyper_parameters", {}))
    result = upstream_checkpoint(model, epoch, mean_loss, _training_args(hparams, epoch) if hparams else None)
    path = save_upstream_checkpoint(result, output)
    loss = "n/a" if math.isnan(result["mean_loss"]) else f"{result['mean_loss']:.6f}"
    print(f"wrote {path} (epoch {epoch}, mean_loss {loss}); upstream reads it with:")
    print(f"  {upstream_encode_command(result, path)}")
    return 0
