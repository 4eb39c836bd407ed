"""The run's identity in the logger's config: job config, store fingerprint and hash, version, manifest, devices.

Logged once per stage by rank 0 when the run starts (after the feature writer has opened the store), so a
dashboard says exactly what made the features it shows. Runs on tiny random stand-in weights (the
``tiny_random_stand_in`` marker of :mod:`lit_features.extractors.base`) are flagged where they are seen first:
a ``stand-in-weights`` tag, ``stand_in_weights: true`` in the config and the summary, and a note.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import SaveConfigCallback

from lit_features import __version__
from lit_features.dashboards.live import feature_writer
from lit_features.dashboards.sink import Sink, wandb_runs
from lit_features.predict_report import describe_devices
from lit_features.remote import is_remote
from lit_features.store.fingerprint import fingerprint_hash

log = logging.getLogger(__name__)

STAND_IN_TAG = "stand-in-weights"


def _manifest(data: Any) -> dict[str, Any] | None:
    paths = getattr(data, "manifest", None)
    if not paths:
        return None
    paths = [paths] if isinstance(paths, str) else list(paths)
    sizes = [os.path.getsize(p) if not is_remote(p) and os.path.isfile(p) else None for p in paths]
    samples = getattr(data, "samples", None)  # read and validated in the DataModule's setup
    return {
        "path": paths[0] if len(paths) == 1 else paths,
        "bytes": sum(s for s in sizes if s is not None) if any(s is not None for s in sizes) else None,
        "entries": len(samples) if samples is not None else None,
    }


def run_identity(trainer: pl.Trainer, pl_module: pl.LightningModule, job: dict[str, Any] | None) -> dict[str, Any]:
    """What identifies a run: ``job`` (its resolved configuration), store, version, manifest, devices, stand-ins."""
    identity: dict[str, Any] = {
        "lit_features_version": __version__,
        "devices": {
            "description": describe_devices(trainer),
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "devices_per_node": trainer.num_devices,
            "accelerator": type(trainer.accelerator).__name__,
            "strategy": type(trainer.strategy).__name__,
        },
        "stand_in_weights": bool(getattr(pl_module, "is_stand_in", False)),
    }
    if job is not None:
        identity["job"] = job
    writer = feature_writer(trainer)
    stores = getattr(writer, "stores", None) or {}
    if stores:
        described = {
            name or ".": {
                "path": str(state.root),
                "fingerprint": state.fingerprint,
                "fingerprint_hash": fingerprint_hash(state.fingerprint),
            }
            for name, state in stores.items()
        }
        # One store (the usual case) at the top: ``store.fingerprint_hash`` is then one column in W&B.
        identity["store"] = next(iter(described.values())) if len(described) == 1 else described
    data = trainer.datamodule
    manifest = _manifest(data)
    if manifest is not None:
        identity["manifest"] = manifest
    source = getattr(data, "store", None)  # training on a feature store (the motion autoencoder)
    if source is not None and hasattr(source, "info"):
        identity["data_store"] = {
            "path": str(source.root),
            "fingerprint_hash": source.info.get("fingerprint_hash"),
            "stand_in_weights": bool(source.info.get("tiny_random_stand_in")),
        }
        identity["stand_in_weights"] = identity["stand_in_weights"] or identity["data_store"]["stand_in_weights"]
    return identity


def flag_stand_in(sink: Sink) -> None:
    """Make stand-in weights impossible to miss in the W&B UI (tag, summary, notes)."""
    sink.update_summary({"stand_in_weights": True})
    for run in wandb_runs(sink.loggers):
        run.tags = tuple(dict.fromkeys([*(run.tags or ()), STAND_IN_TAG]))
        run.notes = "TINY RANDOM STAND-IN WEIGHTS: these features are meaningless (for trying the pipeline only)."


class RunIdentity(SaveConfigCallback):
    """Logs :func:`run_identity` to the trainer's loggers at set-up (rank 0; no file, no collective).

    The command line adds it (as LightningCLI's config callback) to every run; without a logger it does nothing.
    """

    def __init__(self, parser: Any, config: Any, **kwargs: Any) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning's version broadcasts a flag; nothing here needs the other ranks.
        if trainer.is_global_zero and trainer.loggers:
            self.save_config(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        try:
            job = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_validation=True))
        except Exception as err:  # the rest of the identity is still worth logging; the run goes on
            log.warning("the job's configuration could not be logged: %s", err)
            job = None
        identity = run_identity(trainer, pl_module, job)
        sink = Sink(trainer.loggers, "job/elapsed_s")
        sink.update_config(identity)
        if identity["stand_in_weights"]:
            flag_stand_in(sink)
