"""Feature stores as model inputs: shape checks, a deterministic train/val split, and the DataModules over a store.

:class:`FeatureStoreDataModule` lets a predict job (e.g. motion encoding) read a feature store instead of a
video manifest. It is the core :class:`~lit_features.data.datamodule.ManifestDataModule` with the store's
keys as samples, so everything else is shared: samples already written to the output store are skipped
before the sampler shards the rest (resume on any number of devices), and an unreadable or wrongly shaped
input becomes a failure record for that sample only. :class:`MotionFeatureDataModule` splits a VFM store into
train and validation sets for the motion autoencoder's ``fit``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from lit_features.data.datamodule import ManifestDataModule
from lit_features.data.dataset import Prepared
from lit_features.data.preprocess import MediaLoader, Preprocessor
from lit_features.data.sample import Sample
from lit_features.errors import UserError
from lit_features.store import layout
from lit_features.store.reader import FeatureStore, NotAFeatureStoreError

log = logging.getLogger(__name__)


class FeatureShapeError(UserError, ValueError):
    """A stored feature does not have the rank or channel count a model expects; names the file."""


def open_feature_store(path: str | os.PathLike) -> FeatureStore:
    """Open a store, or explain which sub-stores a multi-model output folder holds."""
    root = Path(path)
    if not root.exists():
        raise NotAFeatureStoreError(f"feature store {str(root)!r} does not exist")
    if not (root / layout.STORE_JSON).exists():
        subs = sorted(p.name for p in root.iterdir() if (p / layout.STORE_JSON).exists())
        if subs:
            raise NotAFeatureStoreError(
                f"{root} holds one feature store per model ({', '.join(subs)}), not one store; "
                f"point at one of them, e.g. {root / subs[0]}"
            )
    return FeatureStore(root)


def check_feature_shape(shape: Sequence[int], input_dim: int | None, where: str, min_frames: int = 1) -> None:
    """Raise :class:`FeatureShapeError` unless ``shape`` is ``[T, N, C]`` or ``[T, H, W, C]`` with C = ``input_dim``.

    Args:
        shape: the stored tensor's shape (no batch dimension).
        input_dim: expected channel count C (``None``: any).
        where: the file (or key) named in the message.
        min_frames: smallest acceptable T.
    """
    c = "C" if input_dim is None else str(input_dim)
    expected = f"[T, N, {c}] or [T, H, W, {c}]"
    shape = [int(s) for s in shape]
    if len(shape) not in (3, 4):
        raise FeatureShapeError(
            f"{where}: feature has shape {shape} (rank {len(shape)}); expected {expected}, i.e. rank 3 or 4"
        )
    if input_dim is not None and shape[-1] != input_dim:
        raise FeatureShapeError(
            f"{where}: feature has shape {shape}; expected {expected} (input_dim={input_dim}). The features come "
            f"from a model with C={shape[-1]}: set model input_dim to {shape[-1]} (or leave it out to take it "
            "from the store), or use matching features"
        )
    if shape[0] < min_frames:
        raise FeatureShapeError(f"{where}: feature has shape {shape}; expected at least {min_frames} frames (T)")


def split_keys(keys: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic train/val split: the ``round(n * val_fraction)`` keys (at least one) with the smallest hash.

    Depends only on the keys themselves, so it is the same on every machine and run, and a key stays on its
    side when others are added (unless it sits at the boundary).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    keys = sorted(keys)
    if val_fraction == 0.0 or len(keys) < 2:
        return keys, []
    n_val = min(len(keys) - 1, max(1, round(len(keys) * val_fraction)))
    by_hash = sorted(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
    val = set(by_hash[:n_val])
    return [k for k in keys if k not in val], [k for k in keys if k in val]


@functools.lru_cache(maxsize=8)
def _cached_store(root: str) -> FeatureStore:
    return FeatureStore(root)


@dataclass
class StoredFeaturePreprocessor(Preprocessor):
    """Loads one stored tensor of a sample (in a DataLoader worker) and checks its shape.

    Args:
        feature: name of the stored tensor.
        input_dim: required channel count C (``None``: any).
        min_frames: smallest acceptable T.
    """

    feature: str = "feature"
    input_dim: int | None = None
    min_frames: int = 1

    def __call__(self, sample: Sample, media: MediaLoader) -> Prepared:
        store = _cached_store(sample.entry["store"])
        tensors = store[sample.entry["key"]]
        if self.feature not in tensors:
            raise KeyError(f"{sample.source}: no tensor named {self.feature!r} (has {sorted(tensors)})")
        x = tensors[self.feature]
        check_feature_shape(x.shape, self.input_dim, str(sample.source), self.min_frames)
        return Prepared(x.float(), {"input_meta": sample.entry.get("meta", {})})


class FeatureStoreDataModule(ManifestDataModule):
    """Predict over the samples of a feature store (keys kept), resuming like a manifest run.

    Args:
        store: the input feature store's folder.
        batch_size: samples per batch (samples of different shapes go through one at a time).
        num_workers: DataLoader worker processes reading the files.
        prefetch_factor: batches prefetched per worker.
        pin_memory: pin host memory (``None``: when the accelerator is a GPU).
        order: ``manifest`` (sorted keys) or ``cost`` (largest files first).
        limit: only the first ``limit`` samples (after resume filtering).
    """

    def __init__(
        self,
        store: str,
        batch_size: int = 1,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pin_memory: bool | None = None,
        order: Literal["manifest", "cost"] = "manifest",
        limit: int | None = None,
    ):
        # No media is decoded here: the decode sandbox would only add a process per worker.
        super().__init__(
            manifest=store,
            batch_size=batch_size,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            pin_memory=pin_memory,
            sandbox=False,
            order=order,
            limit=limit,
        )
        self.store = store

    def read_samples(self) -> list[Sample]:
        store = open_feature_store(self.store)
        root = str(store.root.resolve())
        samples = []
        for i, key in enumerate(store.keys()):
            path = str(store.path(key))
            entry: dict[str, Any] = {"path": path, "store": root, "key": key, "meta": store.meta(key)}
            samples.append(Sample(key=key, source=path, entry=entry, manifest=str(store.root), index=i))
        return samples


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
