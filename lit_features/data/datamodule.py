"""LightningDataModule over video manifests: validation before any model loads, resume-aware sharding."""

from __future__ import annotations

import functools
import heapq
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lit_features.data.cpu_sharing import cpu_model_threads, lower_priority, rank_cores, worker_nice_for
from lit_features.data.dataset import BatchCollator, SampleDataset
from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.manifest import ManifestError, build_samples, read_iianet_split, read_manifests
from lit_features.data.media_cache import MediaCache
from lit_features.data.preprocess import EntryError, Preprocessor
from lit_features.data.sample import Sample
from lit_features.interfaces import PreprocessorProvider, resume_planners
from lit_features.units.sampling import UnitSampleDataset, UnitSampler, UnitWorkSource, open_units
from lit_features.units.unit_list import UnitList

log = logging.getLogger(__name__)


def estimate_cost(sample: Sample) -> float:
    """Relative decode+model cost of a sample from what the manifest or the file system says (no decoding).

    Frames x pixels when the entry says both (the frames of its ``cut`` when it has one), else the file size,
    scaled to the ``cut`` when the entry's frame count is known.
    """
    entry = sample.entry
    total = entry.get("num_frames")
    cut = entry.get("cut")
    frames = total or 1
    if cut is not None:
        end = min(cut[1], total) if total else cut[1]
        frames = max(end - cut[0], 1)
    res = entry.get("resolution") or {}
    pixels = (res.get("height") or 0) * (res.get("width") or 0)
    if pixels:
        return float(frames * pixels)
    try:
        size = float(os.path.getsize(sample.source)) if sample.source else 1.0
    except OSError:
        return 0.0
    return size * min(frames / total, 1.0) if cut is not None and total else size


def most_expensive_first(samples: Sequence[Sample], positions: Iterable[int]) -> tuple[list[int], dict[int, float]]:
    """``positions`` (into ``samples``) sorted by estimated cost, largest first (ties by key: the same order on
    every rank), and each one's cost. One estimate per sample: it may stat the file."""
    costs = {i: estimate_cost(samples[i]) for i in positions}
    return sorted(costs, key=lambda i: (-costs[i], samples[i].key)), costs


def assign_to_ranks(costs: Sequence[float], world_size: int, how: Literal["strided", "greedy"]) -> list[list[int]]:
    """Positions (into ``costs``) each rank processes, in order; every position goes to exactly one rank.

    ``strided``: rank ``r`` takes ``r, r + W, r + 2W, ...`` (what Lightning's unrepeated sampler does).
    ``greedy``: walk the positions in order (the caller sorts by cost, largest first) and give each to the rank
    with the least total cost so far, ties to the lowest rank. Pure arithmetic on the same inputs, so every
    rank computes the same assignment without talking to the others.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if how == "strided":
        return [list(range(r, len(costs), world_size)) for r in range(world_size)]
    shares: list[list[int]] = [[] for _ in range(world_size)]
    heap = [(0.0, r) for r in range(world_size)]
    for position, cost in enumerate(costs):
        load, rank = heapq.heappop(heap)
        shares[rank].append(position)
        heapq.heappush(heap, (load + max(float(cost), 0.0), rank))
    return shares


class RankShardSampler(DistributedSampler):
    """Yields one rank's precomputed share of the dataset (see :func:`assign_to_ranks`).

    A ``DistributedSampler`` so that Lightning keeps it instead of wrapping the loader in its own strided one;
    unlike that one it allows a rank with nothing to do (fewer samples left than ranks, e.g. on resume).
    """

    def __init__(self, dataset: Any, indices: list[int], num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.indices = list(indices)
        self.num_samples = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ManifestDataModule(pl.LightningDataModule):
    """Reads manifests, applies the extractor's preprocessor in workers, and skips samples already stored.

    The manifest is parsed and every entry checked against the extractor's needs in :meth:`setup`, which
    Lightning runs before the model's weights are loaded. The dataset itself is built in
    :meth:`predict_dataloader`, after the feature writer has read the store, so keys already done are removed
    *before* the distributed sampler shards the work: a resumed run on any number of devices processes exactly
    what is left.

    Args:
        manifest: manifest file(s) (``.json`` list, ``.jsonl``, ``.csv``, ``<root>,<json>`` ``.txt`` list) or a folder.
        root: folder that relative ``path`` fields are joined onto (default: the manifest's folder; for IIANet
            split lists, the working directory, as IIANet opens them).
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
        order: how work is split over ranks. ``balanced`` (default): most expensive first, each sample given
            to the rank with the least estimated work so far, so ranks finish close together, and each rank goes
            through its share in manifest order; ``cost``: most expensive first, dealt round-robin, and processed
            in that order; ``manifest``: manifest order, dealt round-robin.
        limit: only the first ``limit`` samples (after resume filtering), for trial runs.
        media_cache_dir: where DataLoader workers keep local copies of remote media (``s3://``, ``gs://``,
            ``hf://``, ``https://`` sources; default: a temporary folder removed at the end of the run).
        media_cache_gb: soft bound of each worker's media cache, in GiB (least recently used copies go first).
        unit_size: work in units of this many manifest entries (see ``docs/scale_out.md``): the manifest is cut
            once into the store's unit list, and any number of jobs (SLURM array tasks, torchrun groups) claim
            units through the store, each split over its ranks as above. A rank holds only the units it works on.
            ``None`` (default): one global split, the whole manifest on every rank. A store keeps the unit size
            it was cut with.
        lease_expiry_s: with units, after how long without a heartbeat a job's unit is taken over by another.
        wait_for_units: with units, a job with nothing left to claim waits for the units other live jobs hold
            (taking them over if their job dies) instead of ending.
        model_threads: torch threads of the model on a CPU accelerator (``None``: the cores this rank's
            DataLoader workers leave, at least one, and all of the rank's cores while the workers sit idle, see
            :class:`~lit_features.data.cpu_sharing.ModelThreadsFollowData`; unless ``OMP_NUM_THREADS`` is set;
            not used on GPUs).
        worker_nice: niceness added to the DataLoader workers and their decoder processes, so the model is not
            slowed by the workers that feed it (``None``: 10 on a CPU accelerator, where they share the cores,
            0 elsewhere; 0 turns it off). Changes no feature.
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
        order: Literal["manifest", "cost", "balanced"] = "balanced",
        limit: int | None = None,
        media_cache_dir: str | None = None,
        media_cache_gb: float = 8.0,
        unit_size: int | None = None,
        lease_expiry_s: float = 300.0,
        wait_for_units: bool = True,
        model_threads: int | None = None,
        worker_nice: int | None = None,
    ):
        super().__init__()
        if worker_nice is not None and not 0 <= worker_nice <= 19:
            raise ValueError(f"data.worker_nice must be between 0 and 19 (lower priority only), got {worker_nice}")
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
        self.media_cache_dir = media_cache_dir
        self.media_cache_gb = media_cache_gb
        self.unit_size = unit_size
        self.lease_expiry_s = lease_expiry_s
        self.wait_for_units = wait_for_units
        self.units: UnitList | None = None  # the store's unit list, when working in units
        self.model_threads = model_threads
        self.worker_nice = worker_nice
        self._threads_before: int | None = None
        self.model_thread_range: tuple[int, int] | None = None  # SharesCores: set when the model is on the CPU
        self.samples: list[Sample] | None = None
        self.dataset: SampleDataset | None = None
        # Fewer samples left than ranks is normal on resume: such a rank runs no batch (the writer still merges).
        self.allow_zero_length_dataloader_with_multiple_devices = True

    # -- reading and validation
    def read_samples(self) -> list[Sample]:
        if self.split_root is not None:
            from pathlib import Path

            samples = build_samples(read_iianet_split(Path(self.split_root), self.split, self.root))
            if not samples:
                raise ManifestError(self.split_root, f"split {self.split!r} lists no mouth clips")
            return samples
        return read_manifests(self.manifest, self.root)  # type: ignore[arg-type]

    def describe_inputs(self) -> str:
        """The manifest(s) or split folder this DataModule reads (:class:`~lit_features.interfaces.SampleProvider`)."""
        source = self.root or self.split_root or self.manifest
        return ",".join(map(str, source)) if isinstance(source, (list, tuple)) else str(source)

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
        if not isinstance(module, PreprocessorProvider):
            raise RuntimeError("ManifestDataModule needs an extractor module that provides preprocessor()")
        return module.preprocessor()

    def setup(self, stage: str) -> None:
        if self.unit_size is not None:
            if self.units is None:
                self.units = open_units(self, self._preprocessor())
            return
        if self.samples is None:
            self.samples = self.read_samples()
            self.validate_samples(self.samples, self._preprocessor())

    # -- building the work list
    def remaining_samples(self, skip: set[str]) -> list[Sample]:
        """Samples not in ``skip``, in the configured order (deterministic on every rank)."""
        assert self.samples is not None
        todo = [s for s in self.samples if s.key not in skip]
        # ``balanced`` keeps manifest order here: costs only decide which rank takes a sample (rank_share). Going
        # through a share most expensive first groups alike clips (all the large ones, then all the small), so
        # the model and the decoders take turns waiting for each other: the quickstart at native resolution,
        # 48 clips of three videos, took 30.0-30.4 s in manifest order and 30.8-31.4 s cost-sorted
        # (tools/benchmarks/core_pipeline.py, three alternating runs each).
        if self.order == "cost":
            todo = [todo[i] for i in most_expensive_first(todo, range(len(todo)))[0]]
        return todo[: self.limit] if self.limit is not None else todo

    def build_dataset(
        self, preprocessor: Preprocessor, skip: set[str] | None = None, attempt_log: str | None = None
    ) -> SampleDataset:
        if self.samples is None:
            self.samples = self.read_samples()
            self.validate_samples(self.samples, preprocessor)
        sandbox = DecodeSandbox(self.decode_timeout_s, enabled=self.sandbox)
        cache = MediaCache(self.media_cache_dir, int(self.media_cache_gb * 2**30))
        return SampleDataset(
            self.remaining_samples(skip or set()), preprocessor, sandbox, self.video_backend, attempt_log, cache
        )

    def _writer_state(self) -> tuple[set[str], str | None]:
        skip: set[str] = set()
        attempt_log = None
        for planner in resume_planners(self.trainer) if self.trainer is not None else []:
            skip |= planner.skip_keys(self.samples)
            attempt_log = planner.attempt_log_path()
        return skip, attempt_log

    def rank_share(self, dataset: SampleDataset, world_size: int, rank: int) -> list[int]:
        """Dataset positions this rank processes, from the estimated costs of everything left."""
        if self.order != "balanced":  # costs play no part in a strided split
            return assign_to_ranks([0.0] * len(dataset), world_size, "strided")[rank]
        return self._greedy_shares(dataset.samples, list(range(len(dataset))), world_size)[rank]

    def _greedy_shares(self, samples: list[Sample], positions: list[int], world_size: int) -> list[list[int]]:
        """``positions`` (into ``samples``) split over ranks, most expensive first to the least loaded rank; each
        share back in the given order (see :meth:`remaining_samples` for why)."""
        if world_size == 1:
            return [list(positions)]
        ranked, costs = most_expensive_first(samples, positions)
        shares = assign_to_ranks([costs[i] for i in ranked], world_size, "greedy")
        order = {p: n for n, p in enumerate(positions)}
        return [sorted((ranked[j] for j in share), key=order.__getitem__) for share in shares]

    def unit_loader(self, preprocessor: Preprocessor) -> DataLoader:
        """A loader over the units this job claims as it goes (see :mod:`lit_features.units.sampling`)."""
        assert self.units is not None
        planners = resume_planners(self.trainer) if self.trainer is not None else []
        attempt_log = planners[0].attempt_log_path() if planners else None
        sandbox = DecodeSandbox(self.decode_timeout_s, enabled=self.sandbox)
        cache = MediaCache(self.media_cache_dir, int(self.media_cache_gb * 2**30))
        dataset = UnitSampleDataset(self.units, preprocessor, sandbox, self.video_backend, attempt_log, cache)
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = UnitSampler(dataset, UnitWorkSource(self, rank, world_size), world_size, rank, self.batch_size)
        self.share_cores_with_workers()
        return self.make_loader(dataset, preprocessor, sampler)

    def split_unit(self, samples: list[Sample], todo: list[int], world_size: int) -> list[list[int]]:
        """Positions of a unit's remaining samples per rank, in the configured order (as without units)."""
        if self.order == "balanced":
            return self._greedy_shares(samples, todo, world_size)
        ranked = most_expensive_first(samples, todo)[0] if self.order == "cost" else list(todo)
        shares = assign_to_ranks([0.0] * len(ranked), world_size, "strided")
        return [[ranked[j] for j in share] for share in shares]

    def make_loader(
        self, dataset: SampleDataset, preprocessor: Preprocessor, sampler: DistributedSampler | None = None
    ) -> DataLoader:
        pin = self.pin_memory
        if pin is None:
            pin = self.trainer is not None and type(self.trainer.accelerator).__name__ == "CUDAAccelerator"
        if isinstance(sampler, UnitSampler):
            workers = self.num_workers  # its length is not known in advance
        else:
            workers = self.num_workers if len(sampler if sampler is not None else dataset) > 0 else 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=workers,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            persistent_workers=False,
            pin_memory=pin,
            collate_fn=BatchCollator(preprocessor),
            worker_init_fn=functools.partial(lower_priority, self.worker_nice_value()) if workers > 0 else None,
        )

    def _model_on_cpu(self) -> bool:
        return self.trainer is not None and type(self.trainer.accelerator).__name__ == "CPUAccelerator"

    def worker_nice_value(self) -> int:
        """Niceness of the DataLoader workers (see :func:`~lit_features.data.cpu_sharing.worker_nice_for`)."""
        return worker_nice_for(self.worker_nice, self._model_on_cpu())

    def predict_dataloader(self) -> DataLoader:
        preprocessor = self._preprocessor()
        if self.units is not None:
            return self.unit_loader(preprocessor)
        skip, attempt_log = self._writer_state()
        self.dataset = self.build_dataset(preprocessor, skip, attempt_log)
        if self.trainer is None or self.trainer.global_rank == 0:
            total = len(self.samples or [])
            log.debug(  # the run's first line says it (lit_features.predict_report)
                "%d samples in the manifest, %d already done or settled in the store, %d to process",
                total,
                total - len(self.dataset),
                len(self.dataset),
            )
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
            sampler = RankShardSampler(self.dataset, self.rank_share(self.dataset, world_size, rank), world_size, rank)
        self.share_cores_with_workers()
        return self.make_loader(self.dataset, preprocessor, sampler)

    def share_cores_with_workers(self) -> None:
        """On a CPU accelerator, give the model the cores the DataLoader workers leave (see
        :func:`~lit_features.data.cpu_sharing.cpu_model_threads`)."""
        if not self._model_on_cpu():
            return
        threads = cpu_model_threads(self.model_threads, self.trainer.num_devices, self.num_workers)
        if threads is not None and self.model_threads is None:  # chosen here: up to the rank's cores when idle
            most = rank_cores(self.trainer.num_devices)
            self.model_thread_range = (threads, most) if most > threads else None
        if threads is not None and threads != torch.get_num_threads():
            log.debug("model threads: %d (cores left by %d DataLoader workers)", threads, self.num_workers)
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)

    def teardown(self, stage: str) -> None:
        # The process may go on computing without the workers (a notebook, a benchmark): its threads come back.
        before, self._threads_before = self._threads_before, None
        self.model_thread_range = None
        if before is not None:
            torch.set_num_threads(before)

    def state_dict(self) -> dict[str, Any]:
        return {}
