"""How the model and the DataLoader workers share a machine's cores when the model runs on the CPU."""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from lit_features.interfaces import SharesCores

DEFAULT_CPU_WORKER_NICE = 10  # weight 110 against the model's 1024 (Linux CFS): the model first, workers in its gaps


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def rank_cores(ranks_on_node: int, cores: int | None = None) -> int:
    """The cores of one rank: ``cores`` (default: those this process may run on) split over the node's ranks."""
    return max(1, (available_cores() if cores is None else cores) // max(1, ranks_on_node))


def model_threads_for(cores: int, ranks_on_node: int, workers: int) -> int:
    """Cores of one rank (the node's cores split over its ranks) less one per DataLoader worker, at least one."""
    return max(1, rank_cores(ranks_on_node, cores) - workers)


def cpu_model_threads(explicit: int | None, ranks_on_node: int, workers: int) -> int | None:
    """Torch threads for a model on the CPU: ``explicit`` when given, else the cores the workers leave; ``None``
    (keep torch's setting) when ``OMP_NUM_THREADS`` says the user chose.

    Each worker decodes and transforms on one core; torch's default of one model thread per core then puts
    more busy threads than cores on the machine, and intra-op threads that wait for each other at every op
    stall whenever one of them is descheduled (decode-bound quickstart on 2 cores: ``predict_step`` took
    2.7x its single-thread CPU time). Thread counts do not change the model's numbers here (checked equal to
    the seed-style loop's, which runs on every core, by ``tools/benchmarks/core_pipeline.py``).
    """
    if explicit is not None:
        return explicit
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return model_threads_for(available_cores(), ranks_on_node, workers)


def worker_nice_for(explicit: int | None, model_on_cpu: bool) -> int:
    """How much lower the DataLoader workers (and their decoders) run than the model's process.

    On a CPU accelerator the model's threads and the workers share the cores. The workers keep batches ahead
    of the model (``prefetch_factor``), so when both want a core the model should have it: at equal priority
    the scheduler shares the core, the model's step takes longer, and the workers, whose queue is full, then
    wait idle (native-resolution quickstart on 2 cores, model-bound: see the README's benchmark). Niceness only
    orders who runs first; it changes no number.
    """
    if explicit is not None:
        return explicit
    return DEFAULT_CPU_WORKER_NICE if model_on_cpu else 0


def lower_priority(nice: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: run this worker (and the decoder processes it starts) ``nice`` lower."""
    if nice > 0:
        os.nice(nice)


class ModelThreadsFollowData(Callback):
    """Between batches on a CPU accelerator: the model gets every core of its rank while batches wait for it,
    and the cores its workers leave while it waits for them.

    The fewest threads suit a decode-bound job (the workers are busy; an intra-op thread they deschedule stalls
    every op). In a model-bound job the workers' queue is full and they sit idle, so the model may use their
    cores too (native-resolution quickstart on 2 cores, 2 workers: 29.6-29.8 -> 28.4-28.6 s). The sign: the
    last two batches were ready when the model asked (a wait under 5 % of the step before, at least 30 ms: the
    loop's own work between steps). One ready batch is not enough: workers that finish together hand over a
    second batch at once while they are all busy again (decode-bound: every other batch). Any real wait goes
    back to the fewest. Acts only on the range the DataModule offers
    (:class:`~lit_features.interfaces.SharesCores`); thread counts change no number here
    (``tools/benchmarks/core_pipeline.py`` checks the features against the seed loop's).
    """

    READY_SHARE, READY_MIN_S, READY_RUN = 0.05, 0.03, 2

    def __init__(self) -> None:
        self.range: tuple[int, int] | None = None
        self.step_started: float | None = None
        self.step_ended: float | None = None
        self.ready_run = 0
        self.threads_at_start = torch.get_num_threads()

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        data = trainer.datamodule
        self.range = data.model_thread_range if isinstance(data, SharesCores) else None
        self.step_started = self.step_ended = None
        self.ready_run = 0
        self.threads_at_start = torch.get_num_threads()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # Back to where the run started (the DataModule then restores what it changed), on errors too.
        if self.range is not None and torch.get_num_threads() != self.threads_at_start:
            torch.set_num_threads(self.threads_at_start)
        self.range = None

    def on_predict_batch_start(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        if self.range is not None and self.step_ended is not None and self.step_started is not None:
            step = self.step_ended - self.step_started
            ready = now - self.step_ended < max(self.READY_MIN_S, self.READY_SHARE * step)
            self.ready_run = self.ready_run + 1 if ready else 0
            threads = self.range[1] if self.ready_run >= self.READY_RUN else self.range[0]
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        self.step_started = now

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        self.step_ended = time.perf_counter()
