"""The small declared interfaces through which a predict run's DataModule, feature writer and reports meet.

They meet only through the trainer (Lightning hands each the trainer, never each other), so each side states
here what it offers and what it reads, instead of probing the other with ``hasattr``:

* the DataModule reads and validates its samples in ``setup`` (before any model loads) and offers them as
  :class:`SampleProvider`; the writer reads them to refuse a store that another input made;
* the writer knows what the store already holds and offers it as :class:`ResumePlanner`; the DataModule asks
  it which keys to leave out *before* the sampler splits the rest over ranks;
* with work units, the DataModule offers the store's unit list as :class:`UnitProvider`, and the writer
  claims units for it as :class:`UnitStore` (:mod:`lit_features.units.sampling`);
* the module whose outputs are stored (every extractor) says what identifies its features as
  :class:`StoreSubject`, and hands the data side its preprocessing as :class:`PreprocessorProvider`;
* an extractor whose upstream writes a per-model report (the VFM jobs) describes its models as
  :class:`ReportsModels`; the writer writes the report once the store is complete;
* on a CPU accelerator, the DataModule says how many threads the model may use beside its workers as
  :class:`SharesCores`; :class:`~lit_features.data.cpu_sharing.ModelThreadsFollowData` picks within that range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


class WorkItem(Protocol):
    """What the store needs of one sample: its key, its source and what else makes its features."""

    key: str
    source: str | None
    entry: dict[str, Any]

    def identity(self) -> dict[str, Any]: ...


@runtime_checkable
class SampleProvider(Protocol):
    """A DataModule whose ``samples`` are known once its ``setup`` ran (``None`` before)."""

    samples: Sequence[Any] | None

    def describe_inputs(self) -> str:
        """What the run reads (a manifest, a folder, split lists, a store), for reports."""
        ...


@runtime_checkable
class ResumePlanner(Protocol):
    """A callback that knows which samples are settled in the store (the feature writer)."""

    def skip_keys(self, samples: Sequence[Any] | None = None) -> set[str]:
        """Keys not to schedule in this run."""
        ...

    def attempt_log_path(self) -> str | None:
        """Where this rank's DataLoader workers log the samples they start and finish (``None``: nowhere)."""
        ...


@runtime_checkable
class StoreSubject(Protocol):
    """The LightningModule whose outputs the writer stores (every extractor)."""

    extractor_name: str
    is_stand_in: bool

    def store_fingerprints(self) -> dict[str, dict[str, Any]]:
        """One fingerprint per sub-store (``""``: the output directory itself)."""
        ...


@runtime_checkable
class PreprocessorProvider(Protocol):
    """A module that declares its input contract (the DataModule applies it in its workers)."""

    def preprocessor(self) -> Any: ...


@runtime_checkable
class UnitProvider(Protocol):
    """A DataModule that works in work units: after its ``setup``, ``units`` is the store's unit list (``None``
    without units), and it says how long leases last and whether a job waits for other jobs' units."""

    units: Any
    lease_expiry_s: float
    wait_for_units: bool


@runtime_checkable
class UnitStore(Protocol):
    """A callback that keeps a store in work units (the feature writer): where the unit list lives, and, on
    rank 0 once it opened the store, the next claimed unit with work left."""

    def units_root(self) -> Any:
        """The output directory (the unit list is ``<it>/units/list.json``)."""
        ...

    def claim_unit(self) -> Any:
        """``((uid, generation), samples, positions to do)``, ``"wait"`` or ``None`` (see ``units.job``)."""
        ...


def run_units(trainer: Any) -> Any:
    """The unit list of the trainer's DataModule, when it works in units (else ``None``)."""
    data = trainer.datamodule
    return data.units if isinstance(data, UnitProvider) else None


def unit_stores(trainer: Any) -> list[UnitStore]:
    """The trainer's callbacks that keep a store in units (normally the one feature writer)."""
    return [c for c in trainer.callbacks if isinstance(c, UnitStore)]


@runtime_checkable
class SharesCores(Protocol):
    """A DataModule whose workers share the CPU with the model: the model's threads (fewest, most) it chose,
    ``None`` when it did not choose (a device accelerator, ``model_threads`` given, ``OMP_NUM_THREADS`` set)."""

    model_thread_range: tuple[int, int] | None


def run_samples(trainer: Any) -> Sequence[Any] | None:
    """The samples of the trainer's DataModule, when it provides them."""
    data = trainer.datamodule
    return data.samples if isinstance(data, SampleProvider) else None


def resume_planners(trainer: Any) -> list[ResumePlanner]:
    """The trainer's callbacks that plan what to skip (normally the one feature writer)."""
    return [c for c in trainer.callbacks if isinstance(c, ResumePlanner)]


@dataclass(frozen=True)
class ModelsReport:
    """What the store-side report needs to know of the models a run used (see :mod:`lit_features.store.vfm_report`).

    Attributes:
        labels: sub-store name (``""``: the output directory itself) -> model label.
        dims: model label -> feature dimension C (``None``: unknown until a feature is stored).
        skipped: model label -> why it was not run (e.g. its weights are missing).
        num_frames: frames sampled per clip.
    """

    labels: dict[str, str]
    dims: dict[str, int | None]
    skipped: dict[str, str]
    num_frames: int


@runtime_checkable
class ReportsModels(Protocol):
    """An extractor that asks for the per-model report at the end of every run (also one with nothing to do)."""

    def models_report(self) -> ModelsReport: ...
