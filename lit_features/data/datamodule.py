"""LightningDataModule over video manifests: validation before any model loads, resume-aware sharding."""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lit_features.data.dataset import BatchCollator, SampleDataset
from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.manifest import ManifestError, Sample, build_samples, read_iianet_split, read_manifests
from lit_features.data.preprocess import EntryError, Preprocessor

log = logging.getLogger(__name__)


def estimate_cost(sample: Sample) -> float:
    """Relative decode+model cost of a sample from what the manifest or the file system says (no decoding)."""
    entry = sample.entry
    frames = entry.get("num_frames") or 1
    res = entry.get("resolution") or {}
    pixels = (res.get("height") or 0) * (res.get("width") or 0)
    if pixels:
        return float(frames * pixels)
    try:
        return float(os.path.getsize(sample.source)) if sample.source else 1.0
    except OSError:
        return 0.0


class ManifestDataModule(pl.LightningDataModule):
    """Reads manifests, applies the extractor's preprocessor in workers, and skips samples already stored.

    The manifest is parsed and every entry checked against the extractor's needs in :meth:`setup`, which
    Lightning runs before the model's weights are loaded. The dataset itself is built in
    :meth:`predict_dataloader`, after the feature writer has read the store, so keys already done are removed
    *before* the distributed sampler shards the work: a resumed run on any number of devices processes exactly
    what is left.

    Args:
        manifest: manifest file(s) (``.json`` list, ``.jsonl``, ``.csv``, ``<root>,<json>`` ``.txt`` list) or a folder.
        root: folder that relative ``path`` fields are joined onto (default: the manifest's folder).
        split_root: IIANet split folder (``tr/``, ``cv/``, ``tt/`` with ``s1.json``/``s2.json``), instead of
            ``manifest``.
        split: IIANet split to read: ``train``, ``val``, ``test`` or ``all``.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (decoding and transforms run there).
        prefetch_factor: batches prefetched per worker.
        pin_memory: pin host memory (``None``: when the accelerator is a GPU).
        decode_timeout_s: seconds a single decode may take before the sample fails and the decoder restarts.
        sandbox: decode in a child process (protects the run from decoder hangs and crashes).
        video_backend: ``auto`` (decord, then PyAV), ``decord`` or ``pyav``.
        order: ``manifest`` order, or ``cost``: most expensive first, so a strided split gives balanced ranks.
        limit: only the first ``limit`` samples (after resume filtering), for trial runs.
    """

    def __init__(
        self,
        manifest: str | list[str] | None = None,
        root: str | None = None,
        split_root: str | None = None,
        split: Literal["train", "val", "test", "all"] = "all",
        batch_size: int = 1,
        num_workers: int = 2,
        prefetch_factor: int = 2,
        pin_memory: bool | None = None,
        decode_timeout_s: float = 60.0,
        sandbox: bool = True,
        video_backend: Literal["auto", "decord", "pyav"] = "auto",
        order: Literal["manifest", "cost"] = "cost",
        limit: int | None = None,
    ):
        super().__init__()
        if manifest is None and split_root is None:
            raise ValueError("give data.manifest (a manifest file or folder) or data.split_root (IIANet split lists)")
        self.manifest = manifest
        self.root = root
        self.split_root = split_root
        self.split = split
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.decode_timeout_s = decode_timeout_s
        self.sandbox = sandbox
        self.video_backend = video_backend
        self.order = order
        self.limit = limit
        self.samples: list[Sample] | None = None
        self.dataset: SampleDataset | None = None

    # -- reading and validation
    def read_samples(self) -> list[Sample]:
        if self.split_root is not None:
            from pathlib import Path

            return build_samples(read_iianet_split(Path(self.split_root), self.split))
        return read_manifests(self.manifest, self.root)  # type: ignore[arg-type]

    @staticmethod
    def validate_samples(samples: list[Sample], preprocessor: Preprocessor) -> None:
        """Check every entry against the extractor's needs; the first problem raises a :class:`ManifestError`."""
        if not samples:
            raise ManifestError("manifest", "no samples found")
        for sample in samples:
            try:
                preprocessor.validate(sample)
            except EntryError as err:
                raise ManifestError(sample.manifest, str(err), sample.index, err.field) from None
            except ValueError as err:
                raise ManifestError(sample.manifest, str(err), sample.index) from None

    def _preprocessor(self) -> Preprocessor:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, "preprocessor"):
            raise RuntimeError("ManifestDataModule needs an extractor module that provides preprocessor()")
        return module.preprocessor()

    def setup(self, stage: str) -> None:
        if self.samples is None:
            self.samples = self.read_samples()
            self.validate_samples(self.samples, self._preprocessor())

    # -- building the work list
    def remaining_samples(self, skip: set[str]) -> list[Sample]:
        """Samples not in ``skip``, in the configured order (deterministic on every rank)."""
        assert self.samples is not None
        todo = [s for s in self.samples if s.key not in skip]
        if self.order == "cost":
            todo.sort(key=lambda s: (-estimate_cost(s), s.key))
        return todo[: self.limit] if self.limit is not None else todo

    def build_dataset(
        self, preprocessor: Preprocessor, skip: set[str] | None = None, attempt_log: str | None = None
    ) -> SampleDataset:
        if self.samples is None:
            self.samples = self.read_samples()
            self.validate_samples(self.samples, preprocessor)
        sandbox = DecodeSandbox(self.decode_timeout_s, enabled=self.sandbox)
        return SampleDataset(
            self.remaining_samples(skip or set()), preprocessor, sandbox, self.video_backend, attempt_log
        )

    def _writer_state(self) -> tuple[set[str], str | None]:
        skip: set[str] = set()
        attempt_log = None
        for callback in self.trainer.callbacks if self.trainer is not None else []:
            if hasattr(callback, "skip_keys"):
                skip |= callback.skip_keys(self.samples)
                attempt_log = callback.attempt_log_path()
        return skip, attempt_log

    def make_loader(self, dataset: SampleDataset, preprocessor: Preprocessor) -> DataLoader:
        pin = self.pin_memory
        if pin is None:
            pin = self.trainer is not None and type(self.trainer.accelerator).__name__ == "CUDAAccelerator"
        workers = self.num_workers if len(dataset) > 0 else 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=workers,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            persistent_workers=False,
            pin_memory=pin,
            collate_fn=BatchCollator(preprocessor),
        )

    def predict_dataloader(self) -> DataLoader:
        preprocessor = self._preprocessor()
        skip, attempt_log = self._writer_state()
        self.dataset = self.build_dataset(preprocessor, skip, attempt_log)
        if self.trainer is None or self.trainer.global_rank == 0:
            total = len(self.samples or [])
            log.info(
                "%d samples in the manifest, %d already done or settled in the store, %d to process",
                total,
                total - len(self.dataset),
                len(self.dataset),
            )
        return self.make_loader(self.dataset, preprocessor)

    def state_dict(self) -> dict[str, Any]:
        return {}
