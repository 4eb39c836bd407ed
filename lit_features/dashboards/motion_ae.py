"""Motion autoencoder panels per validation epoch: reconstruction error over time, feature maps, latent paths.

On the first validation batch of each epoch (rank 0, with a logger), a few clips go through the model once more
and three images are logged: ``val/reconstruction_error_over_time`` (per time step, of the features and of
their temporal differences, as in notebooks/03_motion_autoencoder.ipynb), ``val/feature_maps`` (input above
reconstruction, one column per time step: the features projected on their first principal direction) and
``val/latent_trajectories`` (the motion embeddings' 2-D PCA paths, the notebook's plot). Plots need
matplotlib (``pip install 'lit_features[wandb]'``); without it only the feature maps are logged.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from lit_features.models.motion_autoencoder import temporal_difference

log = logging.getLogger(__name__)


def error_over_time(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared error per time step of the features and of their temporal differences (``[T]``, ``[T-1]``)."""
    dims = tuple(d for d in range(x.dim()) if d != 1)
    features = (x_hat - x).pow(2).mean(dim=dims)
    motion = (temporal_difference(x_hat) - temporal_difference(x)).pow(2).mean(dim=dims)
    return features.numpy(), motion.numpy()


def feature_maps(x: torch.Tensor, x_hat: torch.Tensor, scale: int = 8) -> np.ndarray:
    """One clip's input (top) and reconstruction (bottom) per time step, ``uint8 [H', W', 3]``.

    Channels are projected on the input's first principal direction (the same for both rows, so they compare);
    a ``[T, N, C]`` clip shows its tokens as a square grid when N is a square, else as one row per time step.
    """
    t, channels = x.shape[0], x.shape[-1]
    tokens = x.reshape(-1, channels)
    mean = tokens.mean(0)
    _, _, v = torch.pca_lowrank(tokens - mean, q=1, center=False)
    project = lambda f: ((f.reshape(t, -1, channels) - mean) @ v[:, 0]).reshape(t, -1)  # noqa: E731
    a, b = project(x), project(x_hat)
    if x.dim() == 4:
        height, width = x.shape[1], x.shape[2]
    else:
        side = int(round(a.shape[1] ** 0.5))
        height, width = (side, side) if side * side == a.shape[1] else (1, a.shape[1])
    low, high = float(a.min()), float(a.max())
    norm = lambda m: ((m - low) / max(high - low, 1e-12)).clamp(0, 1)  # noqa: E731
    rows = [torch.cat([norm(m[i].reshape(height, width)) for i in range(t)], dim=1) for m in (a, b)]
    grid = torch.cat(rows, dim=0).numpy()
    grid = np.kron(grid, np.ones((scale, scale)))
    return np.repeat((grid * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _figure_png(fig: Any) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def error_plot(features: np.ndarray, motion: np.ndarray) -> np.ndarray:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot(features, "-o", markersize=3, label="features")
    ax.plot(np.arange(1, len(motion) + 1), motion, "--", label="motion (temporal differences)")
    ax.set_xlabel("time step")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.set_title("reconstruction error over time")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure_png(fig)


def trajectory_plot(embeddings: torch.Tensor, names: list[str]) -> np.ndarray:
    """Each clip's motion embedding ``[T, D]`` as a path in the 2-D PCA plane of all of them."""
    from matplotlib.figure import Figure

    flat = embeddings.reshape(-1, embeddings.shape[-1])
    mean = flat.mean(0)
    _, _, v = torch.pca_lowrank(flat - mean, q=min(2, flat.shape[-1]), center=False)
    fig = Figure(figsize=(4.5, 3.8))
    ax = fig.subplots()
    for emb, name in zip(embeddings, names):
        xy = ((emb - mean) @ v[:, :2]).numpy()
        ys = xy[:, 1] if xy.shape[1] > 1 else np.zeros(len(xy))
        ax.plot(xy[:, 0], ys, "-o", markersize=3, label=name)
        ax.annotate("start", (xy[0, 0], ys[0]), fontsize=7)
    ax.set_title("motion embedding trajectories (PCA 2-D)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return _figure_png(fig)


def log_images(logger: Any, images: dict[str, np.ndarray], step: int) -> bool:
    """Log ``uint8 [H, W, 3]`` images to a W&B or TensorBoard logger (others: nothing); True when logged."""
    if isinstance(logger, WandbLogger):
        import wandb

        logger.experiment.log({**{k: wandb.Image(v) for k, v in images.items()}, "trainer/global_step": step})
        return True
    if isinstance(logger, TensorBoardLogger):
        for name, value in images.items():
            logger.experiment.add_image(name, value, step, dataformats="HWC")
        return True
    return False


class MotionAutoencoderPanels(Callback):
    """Logs the panels of the module docstring once per validation epoch (rank 0, only with a logger).

    The motion autoencoder's module adds it itself (``configure_callbacks``).

    Args:
        clips: clips of the first validation batch shown (error curves average them; feature maps show the first).
    """

    def __init__(self, clips: int = 4):
        self.clips = clips
        self._batch: dict[str, Any] | None = None

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and not trainer.sanity_checking and trainer.is_global_zero and trainer.loggers:
            keys = batch.get("key") or []
            self._batch = {"feature": batch["feature"][: self.clips].detach(), "key": list(keys)[: self.clips]}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batch, self._batch = self._batch, None
        if batch is None or getattr(pl_module, "model", None) is None:
            return
        with torch.no_grad():
            x = batch["feature"]
            out = pl_module.model(x)
        x, x_hat = x.float().cpu(), out.reconstruction.float().cpu()
        names = [str(k) for k in batch["key"]] or [f"clip {i}" for i in range(len(x))]
        images = {"val/feature_maps": feature_maps(x[0], x_hat[0])}
        try:
            images["val/reconstruction_error_over_time"] = error_plot(*error_over_time(x, x_hat))
            images["val/latent_trajectories"] = trajectory_plot(out.motion_embedding.float().cpu(), names)
        except ImportError:
            log.debug("matplotlib is not installed: only the feature maps are logged")
        for logger in trainer.loggers:
            log_images(logger, images, trainer.global_step)
