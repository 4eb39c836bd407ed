"""The loader side of work units: a sampler that walks claimed units, and a dataset that reads them lazily.

The predict loop runs once over a sequence of units. At each unit boundary every rank of the job asks for the
next unit; rank 0 claims it and splits what is left of it over the ranks (the same balanced split as without
units), and broadcasts the split, so all ranks agree before any of them loads the unit. The sampler then
yields ``((uid, generation), position)`` indices of this rank's share, and a closing ``(claim, END)`` that
travels through the loader as a marker: the writer learns that this rank's share of the unit is complete once
the batch holding it is written. DataLoader workers read a unit's samples from its manifest slice the first
time they meet it and keep the last few: a rank holds the units it works on, never the manifest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import DistributedSampler

from lit_features.data.dataset import SampleDataset
from lit_features.data.manifest import ManifestError, RawEntry, make_sample
from lit_features.data.preprocess import EntryError
from lit_features.data.sample import Sample
from lit_features.errors import ConfigError, UserError
from lit_features.interfaces import UnitStore, unit_stores
from lit_features.units.cutting import unit_samples
from lit_features.units.job import UnitRefusedError, refuse_old_layout_below
from lit_features.units.opening import open_unit_list
from lit_features.units.unit_list import UnitList, units_dir

#: The position of the marker that closes a rank's share of a unit.
END = -1
#: The position of a marker that carries nothing: yielded while the job waits for other jobs' units, so the
#: loader hands on the batches it holds (their samples get written) instead of waiting for a full batch.
IDLE = -2
#: Units a DataLoader worker keeps read (the loader prefetches across a unit boundary).
UNITS_KEPT = 3

Claim = tuple[str, int]
Work = tuple[Claim, list[list[int]]] | str


class UnitSampleDataset(SampleDataset):
    """Samples addressed by ``((uid, generation), position)``; each unit is read from its slice on first use."""

    def __init__(self, units: UnitList, *args: Any, **kwargs: Any):
        super().__init__([], *args, **kwargs)
        self.units = units
        self._by_uid = {u.uid: u for u in units.units}
        self._loaded: OrderedDict[str, list[Sample]] = OrderedDict()

    def unit(self, uid: str) -> list[Sample]:
        samples = self._loaded.get(uid)
        if samples is None:
            samples = self._loaded[uid] = unit_samples(self.units, self._by_uid[uid])
            while len(self._loaded) > UNITS_KEPT:
                self._loaded.popitem(last=False)
        return samples

    def sample_at(self, index: Any) -> Sample | None:
        claim, position = index
        return None if position < 0 else self.unit(claim[0])[position]

    def __getitem__(self, index: Any) -> dict[str, Any]:
        claim, position = index
        if position == IDLE:
            return {"unit_end": None}
        if position == END:
            return {"unit_end": tuple(claim)}
        item = self.prepare(self.unit(claim[0])[position])
        item["unit"] = tuple(claim)
        return item


class UnitSampler(DistributedSampler):
    """Yields this rank's share of one claimed unit after another (see the module docstring).

    A ``DistributedSampler`` so that Lightning keeps it as it is. Its length is unknown (units are claimed as
    the job goes), so the predict loop runs until the sampler ends.

    Args:
        dataset: the :class:`UnitSampleDataset`.
        next_work: called on every rank at each unit boundary; the same ``(claim, shares)`` on every rank
            (a collective), or ``None`` when the job has no unit left.
        num_replicas, rank: the job's world size and this rank.
    """

    def __init__(
        self, dataset: Any, next_work: Callable[[], Work | None], num_replicas: int, rank: int, batch_size: int = 1
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.next_work = next_work
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[tuple[Claim, int]]:
        while (work := self.next_work()) is not None:
            if isinstance(work, str):  # waiting for other jobs: a batch of nothing moves ours along
                for _ in range(self.batch_size):
                    yield ("", -1), IDLE
                continue
            claim, shares = work
            for position in shares[self.rank]:
                yield claim, position
            yield claim, END

    def __len__(self) -> int:
        raise TypeError("work units are claimed while the job runs: the number of samples is not known in advance")


def _unit_store(datamodule: Any) -> UnitStore:
    """The callback that keeps the store in units (the feature writer)."""
    stores = unit_stores(datamodule.trainer) if datamodule.trainer is not None else []
    if not stores:
        raise ConfigError("--data.unit_size needs a feature writer (a trainer callback with an output directory)")
    return stores[0]


def _agree(trainer: Any, work: Callable[[], Any]) -> Any:
    """Run ``work`` on rank 0 and give its result (or its error) to every rank."""
    rank = trainer.global_rank if trainer is not None else 0
    world_size = trainer.world_size if trainer is not None else 1
    failure: BaseException | None = None
    payload = None
    if rank == 0:
        try:
            payload = ("ok", work())
        except BaseException as err:  # told to the other ranks, then raised here
            failure = err
            payload = ("error", str(err), isinstance(err, UserError))
    if world_size > 1:
        payload = trainer.strategy.broadcast(payload, 0)
    if failure is not None:
        raise failure
    assert payload is not None
    if payload[0] == "error":
        raise (UnitRefusedError if payload[2] else RuntimeError)(payload[1])
    return payload[1]


def open_units(datamodule: Any, preprocessor: Any) -> UnitList:
    """The store's unit list for this job: rank 0 reads it (or cuts the manifest, checking every entry
    against the extractor's needs before any model loads), every rank gets it.

    Raises:
        ConfigError: options that need the whole manifest (``limit``, IIANet split lists).
        ManifestError, UnitListMismatchError: from the cut or the comparison with the store's list.
    """
    if datamodule.limit is not None:
        raise ConfigError("--data.limit does not combine with --data.unit_size (a job sees units, not the manifest)")
    if datamodule.manifest is None:
        raise ConfigError("--data.unit_size needs --data.manifest (IIANet split lists are not cut into units)")
    if datamodule.unit_size < 1:
        raise ConfigError(f"--data.unit_size must be at least 1, got {datamodule.unit_size}")
    output_dir = Path(_unit_store(datamodule).units_root())

    def check(r: RawEntry) -> None:
        sample = make_sample(r, "")
        try:
            preprocessor.validate(sample)
        except EntryError as err:
            raise ManifestError(r.file, str(err), r.index, err.field) from None
        except ValueError as err:
            raise ManifestError(r.file, str(err), r.index) from None

    def cut() -> str:
        refuse_old_layout_below(output_dir)
        open_unit_list(
            output_dir, datamodule.manifest, datamodule.root, datamodule.unit_size, check, datamodule.lease_expiry_s
        )
        return str(units_dir(output_dir))

    folder = _agree(datamodule.trainer, cut)
    units = UnitList.read(Path(folder))
    return units


class UnitWorkSource:
    """The sampler's ``next_work``: rank 0 claims and splits, every rank receives the same split."""

    def __init__(self, datamodule: Any, rank: int, world_size: int):
        self.datamodule = datamodule
        self.rank = rank
        self.world_size = world_size

    def _claim(self) -> Work | None:
        got = _unit_store(self.datamodule).claim_unit()
        if got is None or isinstance(got, str):
            return got
        claim, samples, todo = got
        return claim, self.datamodule.split_unit(samples, todo, self.world_size)

    def __call__(self) -> Work | None:
        return _agree(self.datamodule.trainer, self._claim)
