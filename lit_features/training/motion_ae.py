"""Training the motion autoencoder on stored VFM features: the LightningModule ``fit`` runs.

``python -m lit_features fit --config configs/motion_ae.yaml --data.store <vfm_store>`` trains
:class:`~lit_features.models.motion_autoencoder.MotionFeatureAutoencoder` with AdamW on the three-term loss
(reconstruction, temporal difference, latent smoothness; configurable weights). Per split it logs the loss
terms and, through torchmetrics, the reconstruction MSE and the mean per-token cosine similarity between
reconstruction and input; at each validation epoch end a histogram of latent values goes to the logger
(W&B or TensorBoard), with reconstruction and latent panels (:mod:`lit_features.dashboards.motion_ae`). The data:
:class:`~lit_features.data.feature_data.MotionFeatureDataModule`; loading the checkpoints it writes:
:func:`~lit_features.models.motion_checkpoint.load_motion_checkpoint`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torchmetrics

from lit_features.errors import ConfigError
from lit_features.models.motion_autoencoder import MotionAutoencoderConfig, MotionFeatureAutoencoder
from lit_features.models.motion_loss import motion_autoencoder_loss

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class MotionAutoencoderModule(pl.LightningModule):
    """Trains a :class:`MotionFeatureAutoencoder` on ``[B, T, N, C]`` / ``[B, T, H, W, C]`` features.

    Args:
        input_dim: channel count C of the features (768 for ViT-B features, 1024 for ViT-L). ``None`` (the
            default): taken from the data (``MotionFeatureDataModule`` reads it from the store), and the
            network is built in :meth:`setup`; a given value that the stored features contradict is an error.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        recon_weight: weight of the reconstruction MSE.
        motion_weight: weight of the temporal-difference MSE.
        smooth_weight: weight of the latent smoothness term.
        lr_schedule: ``constant``, or ``cosine`` annealing to 0 over ``trainer.max_epochs``.
        histogram_values: at most this many latent values per validation-epoch histogram.
        network: the network's other arguments, flat (``model_dim``, ``latent_dim``, ``num_heads``,
            ``num_layers``, ``dropout``, ``use_token``, ``sequence_grouping``): the fields of
            :class:`~lit_features.models.motion_autoencoder.MotionAutoencoderConfig`, defined there once.
    """

    def __init__(
        self,
        input_dim: int | None = None,
        lr: float = 2e-4,
        weight_decay: float = 1e-4,
        recon_weight: float = 1.0,
        motion_weight: float = 1.0,
        smooth_weight: float = 0.05,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        histogram_values: int = 65536,
        **network: Any,
    ):
        super().__init__()
        # Checked now (a placeholder C when it comes from the data); every field goes into the hyperparameters,
        # so logs and checkpoints carry the whole network, defaults included.
        config = MotionAutoencoderConfig(input_dim=input_dim or 1, **network)
        self.save_hyperparameters()
        network = {k: v for k, v in config.to_dict().items() if k != "input_dim"}
        self.save_hyperparameters({**self.hparams, **network})
        self.model: MotionFeatureAutoencoder | None = None
        if input_dim is not None:
            self.model = self._build(input_dim)
        # MSE streams sums; cosine is a running mean of per-token values (torchmetrics' CosineSimilarity keeps
        # every prediction of the epoch in memory: millions of tokens x C for VFM features).
        # (ModuleDict keys cannot be "train": that name is nn.Module.train.)
        self.metrics = torch.nn.ModuleDict()
        for split in SPLITS:
            self.metrics[f"{split}_recon_mse"] = torchmetrics.MeanSquaredError()
            self.metrics[f"{split}_cosine"] = torchmetrics.MeanMetric()
        self.val_history: list[dict[str, float]] = []
        # Sum and count of this epoch's training losses: upstream checkpoints carry their mean (``mean_loss``).
        self._epoch_loss: tuple[torch.Tensor | float, int] = (0.0, 0)
        self._latent_sample: torch.Tensor | None = None

    def _build(self, input_dim: int) -> MotionFeatureAutoencoder:
        config = MotionAutoencoderConfig.from_dict({**self.hparams, "input_dim": input_dim})
        return MotionFeatureAutoencoder.from_config(config)

    @property
    def input_dim(self) -> int | None:
        """Channel count the DataModule checks every stored feature against (``None``: not given, any)."""
        return None if self.hparams.input_dim is None else int(self.hparams.input_dim)

    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        # Runs after the DataModule's setup, which read the store; the checkpoint keeps the inferred value.
        dim = getattr(self.trainer.datamodule, "input_dim", None) if self.trainer is not None else None
        if dim is None:
            raise ConfigError(
                "model.input_dim is not given and the data does not say it: set it to the features' channel count C"
            )
        # Through save_hyperparameters: the logged hyperparameters and the checkpoint carry the value.
        self.save_hyperparameters({**self.hparams, "input_dim": int(dim)})
        self.model = self._build(int(dim))
        log.info("motion autoencoder: input_dim %d, from the feature store", dim)

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    def _step(self, batch: Mapping[str, Any], split: str) -> tuple[torch.Tensor, Any]:
        x = batch["feature"]
        keys = batch.get("key")
        source = keys[0] if isinstance(keys, (list, tuple)) and len(keys) == 1 else None
        out = self.model(x, source=source)
        losses = motion_autoencoder_loss(
            x, out, self.hparams.recon_weight, self.hparams.motion_weight, self.hparams.smooth_weight
        )
        size = x.shape[0]
        on_step = split == "train"
        self.log(f"{split}/loss", losses.total, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=size)
        for name in ("recon", "motion", "smooth"):
            self.log(f"{split}/{name}_loss", getattr(losses, name), on_step=on_step, on_epoch=True, batch_size=size)
        channels = x.shape[-1]
        x_hat = out.reconstruction.detach().float().reshape(-1, channels)
        target = x.detach().float().reshape(-1, channels)
        mse, cosine = self.metrics[f"{split}_recon_mse"], self.metrics[f"{split}_cosine"]
        mse(x_hat, target)
        cosine(torchmetrics.functional.cosine_similarity(x_hat, target, reduction="none"))
        self.log(f"{split}/recon_mse", mse, on_step=False, on_epoch=True, batch_size=size)
        self.log(f"{split}/cosine", cosine, on_step=False, on_epoch=True, batch_size=size)
        return losses.total, out

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")[0]
        total, count = self._epoch_loss
        self._epoch_loss = (total + loss.detach(), count + 1)  # no .item(): no device sync per step
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        _, out = self._step(batch, "val")
        if batch_idx == 0:
            latent = out.latent.detach().float().flatten().cpu()
            if latent.numel() > self.hparams.histogram_values:
                step = latent.numel() // self.hparams.histogram_values + 1
                latent = latent[::step]
            self._latent_sample = latent

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._latent_sample = None
            return
        entry = {
            "epoch": float(self.current_epoch),
            "recon_mse": float(self.metrics["val_recon_mse"].compute()),
            "cosine": float(self.metrics["val_cosine"].compute()),
        }
        self.val_history.append(entry)
        if self._latent_sample is not None:
            log_histogram(self.logger, "val/latent_histogram", self._latent_sample, self.global_step)
            self._latent_sample = None

    def on_train_epoch_start(self) -> None:
        self._epoch_loss = (0.0, 0)

    def epoch_mean_loss(self) -> float | None:
        """Mean training loss over this epoch's batches so far (None before the first)."""
        total, count = self._epoch_loss
        return float(total) / count if count else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Per-epoch validation metrics travel with the weights (learning curves without the logger's files), and
        # the epoch's mean training loss for the upstream export.
        checkpoint["val_history"] = list(self.val_history)
        checkpoint["train_mean_loss"] = self.epoch_mean_loss()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = list(checkpoint.get("val_history", []))

    def configure_callbacks(self) -> list[pl.Callback]:
        # Reconstruction pictures and latent paths per validation epoch, when a logger is configured.
        from lit_features.dashboards.motion_ae import MotionAutoencoderPanels

        return [MotionAutoencoderPanels()]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        epochs = max(1, int(self.trainer.max_epochs or 1))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def log_histogram(logger: Any, name: str, values: torch.Tensor, step: int) -> bool:
    """Log a histogram of ``values`` to a W&B or TensorBoard logger (others: nothing); True when logged."""
    # Lightning loggers are rank-zero only: on other ranks ``experiment`` is a no-op stand-in.
    if logger is None:
        return False
    kind = type(logger).__name__
    if kind == "WandbLogger":
        import wandb

        logger.experiment.log({name: wandb.Histogram(values.numpy()), "trainer/global_step": step})
        return True
    if kind == "TensorBoardLogger":
        logger.experiment.add_histogram(name, values, step)
        return True
    return False
