"""How the model and the DataLoader workers share a machine's cores when the model runs on the CPU."""

from __future__ import annotations

import os

DEFAULT_CPU_WORKER_NICE = 10  # weight 110 against the model's 1024 (Linux CFS): the model first, workers in its gaps


def model_threads_for(cores: int, ranks_on_node: int, workers: int) -> int:
    """Cores of one rank (the node's cores split over its ranks) less one per DataLoader worker, at least one."""
    return max(1, cores // max(1, ranks_on_node) - workers)


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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return model_threads_for(cores, ranks_on_node, workers)


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
