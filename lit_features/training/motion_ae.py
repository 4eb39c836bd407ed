"""Training the motion autoencoder on stored VFM features: LightningModule, DataModule, checkpoint loading.

``python -m lit_features fit --config configs/motion_ae.yaml --data.store <vfm_store>`` trains
:class:`~lit_features.models.motion_autoencoder.MotionFeatureAutoencoder` with AdamW on the three-term loss
(reconstruction, temporal difference, latent smoothness; configurable weights). Per split it logs the loss
terms and, through torchmetrics, the reconstruction MSE and the mean per-token cosine similarity between
reconstruction and input; at each validation epoch end a histogram of latent values goes to the logger
(W&B or TensorBoard), with reconstruction and latent panels (:mod:`lit_features.dashboards.motion_ae`).
:func:`load_motion_checkpoint` reads a ``fit`` checkpoint or an upstream
``{epoch, state_dict, config, mean_loss}`` file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torchmetrics
from torch.utils.data import DataLoader, Dataset

from lit_features.errors import ConfigError
from lit_features.models.motion_autoencoder import (
    MotionAutoencoderConfig,
    MotionFeatureAutoencoder,
    load_motion_autoencoder,
    motion_autoencoder_loss,
)
from lit_features.models.weights import load_state_dict_strict
from lit_features.store.reader import FeatureStore
from lit_features.training.feature_data import FeatureShapeError, check_feature_shape, open_feature_store, split_keys

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class MotionAutoencoderModule(pl.LightningModule):
    """Trains a :class:`MotionFeatureAutoencoder` on ``[B, T, N, C]`` / ``[B, T, H, W, C]`` features.

    Args:
        input_dim: channel count C of the features (768 for ViT-B features, 1024 for ViT-L). ``None`` (the
            default): taken from the data (:class:`MotionFeatureDataModule` reads it from the store), and the
            network is built in :meth:`setup`; a given value that the stored features contradict is an error.
        model_dim: width of the temporal conv / transformer layers.
        latent_dim: channels per token of the latent (``input_dim / latent_dim`` is the compression ratio).
        num_heads: attention heads of the temporal transformers.
        num_layers: transformer layers in the encoder and in the decoder.
        dropout: dropout probability.
        use_token: encode ``concat(x, delta_x)`` instead of ``delta_x`` alone.
        sequence_grouping: ``per_position`` (one temporal sequence per token position) or ``upstream_flat``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        recon_weight: weight of the reconstruction MSE.
        motion_weight: weight of the temporal-difference MSE.
        smooth_weight: weight of the latent smoothness term.
        lr_schedule: ``constant``, or ``cosine`` annealing to 0 over ``trainer.max_epochs``.
        histogram_values: at most this many latent values per validation-epoch histogram.
    """

    def __init__(
        self,
        input_dim: int | None = None,
        model_dim: int = 384,
        latent_dim: int = 192,
        num_heads: int = 8,
        num_layers: int = 2,
        dropout: float = 0.1,
        use_token: bool = True,
        sequence_grouping: Literal["per_position", "upstream_flat"] = "per_position",
        lr: float = 2e-4,
        weight_decay: float = 1e-4,
        recon_weight: float = 1.0,
        motion_weight: float = 1.0,
        smooth_weight: float = 0.05,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        histogram_values: int = 65536,
    ):
        super().__init__()
        self.save_hyperparameters()
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
        h = self.hparams
        return MotionFeatureAutoencoder(
            input_dim=input_dim,
            model_dim=h.model_dim,
            latent_dim=h.latent_dim,
            num_heads=h.num_heads,
            num_layers=h.num_layers,
            dropout=h.dropout,
            use_token=h.use_token,
            sequence_grouping=h.sequence_grouping,
        )

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


class StoredFeatureDataset(Dataset):
    """``{"key", "feature"}`` items (float32) from a feature store, shapes checked on read."""

    def __init__(self, store: FeatureStore, keys: list[str], feature: str, input_dim: int | None):
        self.store = store
        self.keys = keys
        self.feature = feature
        self.input_dim = input_dim

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        tensors = self.store[key]
        if self.feature not in tensors:
            raise KeyError(f"{self.store.path(key)}: no tensor named {self.feature!r} (has {sorted(tensors)})")
        x = tensors[self.feature]
        check_feature_shape(x.shape, self.input_dim, str(self.store.path(key)), min_frames=2)
        return {"key": key, "feature": x.float()}


class MotionFeatureDataModule(pl.LightningDataModule):
    """Train/val split of a VFM feature store (any of the ``vfm_*`` outputs) for the motion autoencoder.

    Every sample's stored shape is checked against the model's ``input_dim`` before training starts (from
    the store index, without reading the files): a wrong rank or channel count stops the run with a message
    naming the file and the expected shape. What the store says is kept for the model: ``input_dim`` (the
    channel count C, one for all samples) and ``feature_layout`` (``[T, N, C]`` tokens or a ``[T, H, W, C]``
    grid), so a model without an ``input_dim`` takes it from here.

    Args:
        store: feature store folder, e.g. ``outputs/vfm/VideoMAEv2``.
        feature: name of the stored tensor.
        val_fraction: share of samples held out for validation (split by key hash: the same everywhere).
        batch_size: clips per batch (clips of different shapes need ``batch_size: 1``).
        num_workers: DataLoader worker processes.
        limit: use only the first ``limit`` keys (sorted), for trial runs.
    """

    def __init__(
        self,
        store: str,
        feature: str = "feature",
        val_fraction: float = 0.1,
        batch_size: int = 2,
        num_workers: int = 2,
        limit: int | None = None,
    ):
        super().__init__()
        self.store_path = store
        self.feature = feature
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit = limit
        self.store: FeatureStore | None = None
        self.train_keys: list[str] = []
        self.val_keys: list[str] = []
        self.input_dim: int | None = None
        self.feature_layout: str | None = None

    def expected_channels(self) -> int | None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        dim = getattr(module, "input_dim", None)
        return int(dim) if dim is not None else None

    def setup(self, stage: str) -> None:
        if self.store is not None:
            return
        store = open_feature_store(self.store_path)
        keys = store.keys()[: self.limit] if self.limit is not None else store.keys()
        if not keys:
            raise FeatureShapeError(f"{store.root}: the feature store holds no samples; run predict into it first")
        input_dim = self.expected_channels()
        shapes = {}
        for key in keys:
            shape = store.row(key).get("shapes", {}).get(self.feature)
            where = str(store.path(key))
            if shape is None:
                raise FeatureShapeError(
                    f"{where}: no tensor named {self.feature!r} (has {sorted(store.row(key)['shapes'])}); "
                    "set data.feature to one of those"
                )
            check_feature_shape(shape, input_dim, where, min_frames=2)
            shapes[key] = tuple(shape)
        channels = sorted({shape[-1] for shape in shapes.values()})
        if len(channels) > 1:
            raise FeatureShapeError(
                f"{store.root}: features have different channel counts C {channels[:4]} (from different models?); "
                "one autoencoder takes one C: train on a store of one model"
            )
        if self.batch_size > 1 and len(set(shapes.values())) > 1:
            raise FeatureShapeError(
                f"{store.root}: features have different shapes ({sorted(set(shapes.values()))[:4]}); "
                "set data.batch_size to 1"
            )
        self.input_dim = channels[0]
        ranks = {len(shape) for shape in shapes.values()}
        self.feature_layout = "mixed" if len(ranks) > 1 else "[T, N, C]" if ranks == {3} else "[T, H, W, C]"
        self.train_keys, self.val_keys = split_keys(keys, self.val_fraction)
        self.store = store
        log.info(
            "motion AE data: %d train / %d val samples of %s features, C=%d, from %s",
            len(self.train_keys),
            len(self.val_keys),
            self.feature_layout,
            self.input_dim,
            store.root,
        )

    def _loader(self, keys: list[str], shuffle: bool) -> DataLoader:
        assert self.store is not None
        dataset = StoredFeatureDataset(self.store, keys, self.feature, self.expected_channels())
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_keys, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_keys, shuffle=False) if self.val_keys else []

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()


def load_motion_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", allow_pickle: bool = False
) -> MotionFeatureAutoencoder:
    """Load a motion autoencoder from a ``fit`` checkpoint (``.ckpt``) or an upstream ``{epoch, state_dict, config}``.

    Returns:
        The model in eval mode with its weights loaded strictly.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"motion autoencoder checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=not allow_pickle, mmap=True)
    except Exception:
        # Not readable as a plain weights-only file (an upstream checkpoint may hold pathlib objects): the
        # upstream loader allows those, and its error says what is wrong with the file otherwise.
        checkpoint = None
    if not isinstance(checkpoint, Mapping) or "hyper_parameters" not in checkpoint:
        return load_motion_autoencoder(path, map_location=map_location, allow_pickle=allow_pickle)
    hparams = dict(checkpoint["hyper_parameters"])
    config = MotionAutoencoderConfig.from_dict(hparams)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model = MotionFeatureAutoencoder.from_config(config)
    load_state_dict_strict(model, state, path, f"a motion autoencoder with {config.to_dict()}")
    model.checkpoint_path = path
    return model.eval()
