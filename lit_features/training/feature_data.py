"""Feature stores as model inputs: shape checks, a deterministic train/val split, and a predict DataModule.

:class:`FeatureStoreDataModule` lets a predict job (e.g. motion encoding) read a feature store instead of a
video manifest. It is the core :class:`~lit_features.data.datamodule.ManifestDataModule` with the store's
keys as samples, so everything else is shared: samples already written to the output store are skipped
before the sampler shards the rest (resume on any number of devices), and an unreadable or wrongly shaped
input becomes a failure record for that sample only.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lit_features.data.datamodule import ManifestDataModule
from lit_features.data.dataset import Prepared
from lit_features.data.manifest import Sample
from lit_features.data.preprocess import MediaLoader, Preprocessor
from lit_features.errors import UserError
from lit_features.store import layout
from lit_features.store.reader import FeatureStore, NotAFeatureStoreError


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
