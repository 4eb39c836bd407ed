"""On a CPU accelerator the model takes the cores the DataLoader workers leave, not one thread per core."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

from lit_features.data.cpu_sharing import ModelThreadsFollowData, model_threads_for
from lit_features.data.datamodule import ManifestDataModule


def test_model_threads_are_the_cores_left_by_the_workers() -> None:
    assert model_threads_for(cores=2, ranks_on_node=1, workers=2) == 1  # never zero
    assert model_threads_for(cores=16, ranks_on_node=1, workers=4) == 12
    assert model_threads_for(cores=16, ranks_on_node=2, workers=2) == 6  # each rank has half the node


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _data(tmp_path: Path, accelerator, **kwargs) -> ManifestDataModule:
    data = ManifestDataModule(manifest=str(tmp_path / "m.json"), num_workers=2, **kwargs)
    data.trainer = SimpleNamespace(accelerator=accelerator, num_devices=1)
    return data


def test_cpu_run_gives_the_model_the_cores_the_workers_leave(tmp_path, monkeypatch, restore_threads) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(6)), raising=False)
    torch.set_num_threads(6)
    data = _data(tmp_path, CPUAccelerator())
    data.share_cores_with_workers()
    assert torch.get_num_threads() == 4
    assert data.model_thread_range == (4, 6)  # all six while the workers have nothing to do
    data.teardown("predict")  # the process may go on computing without the workers
    assert torch.get_num_threads() == 6 and data.model_thread_range is None


def test_explicit_choices_are_kept(tmp_path, monkeypatch, restore_threads) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(6)), raising=False)
    torch.set_num_threads(3)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user chose
    chosen = _data(tmp_path, CPUAccelerator())
    chosen.share_cores_with_workers()
    assert torch.get_num_threads() == 3 and chosen.model_thread_range is None
    explicit = _data(tmp_path, CPUAccelerator(), model_threads=2)
    explicit.share_cores_with_workers()  # the option wins
    assert torch.get_num_threads() == 2 and explicit.model_thread_range is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    gpu = _data(tmp_path, CUDAAccelerator())
    gpu.share_cores_with_workers()  # a GPU computes: host threads untouched
    assert torch.get_num_threads() == 2 and gpu.model_thread_range is None


def _steps(follow: ModelThreadsFollowData, clock: list[float], steps: list[tuple[float, float]]) -> list[int]:
    """Run batches of (wait for the batch, step) seconds on the fake ``clock``; the model's threads during each."""
    seen = []
    for wait, step in steps:
        clock[0] += wait
        follow.on_predict_batch_start(None, None)
        seen.append(torch.get_num_threads())
        clock[0] += step
        follow.on_predict_batch_end(None, None)
    return seen


def test_the_model_takes_the_idle_workers_cores_while_batches_wait_for_it(
    tmp_path, monkeypatch, restore_threads
) -> None:
    clock = [100.0]
    monkeypatch.setattr("lit_features.data.cpu_sharing.time.perf_counter", lambda: clock[0])
    data = _data(tmp_path, CPUAccelerator())
    data.model_thread_range = (1, 3)
    follow = ModelThreadsFollowData()
    torch.set_num_threads(1)  # as the DataModule set it before the run's first hook
    follow.on_predict_start(SimpleNamespace(datamodule=data), None)
    # Model-bound: each batch ready at once (the loop's own 10 ms), 1 s steps -> every core from the third on.
    assert _steps(follow, clock, [(0.5, 1.0), (0.01, 1.0), (0.01, 1.0), (0.01, 1.0)]) == [1, 1, 3, 3]
    # The model waits for a batch -> back to the cores the workers leave.
    assert _steps(follow, clock, [(0.3, 0.04)]) == [1]
    # Decode-bound, two workers finishing together: every other batch is ready, yet the workers are busy.
    assert _steps(follow, clock, [(0.005, 0.04), (0.3, 0.04)] * 3) == [1] * 6
    assert _steps(follow, clock, [(0.01, 1.0), (0.01, 1.0)]) == [1, 3]
    follow.teardown(None, None, "predict")  # the run ends: threads as it found them
    assert torch.get_num_threads() == 1
    # A DataModule that did not choose (explicit threads, a GPU): nothing changes.
    data.model_thread_range = None
    follow.on_predict_start(SimpleNamespace(datamodule=data), None)
    torch.set_num_threads(2)
    assert _steps(follow, clock, [(0.5, 1.0), (0.001, 1.0), (0.001, 1.0), (0.3, 0.04)]) == [2, 2, 2, 2]


class _Niceness(torch.utils.data.Dataset):
    """Each item: the niceness of the worker that made it, and of a process that worker starts (a decoder)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[int, int]:
        import os
        import subprocess
        import sys

        child = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True)
        return os.nice(0), int(child.stdout)


def _worker_niceness(data: ManifestDataModule) -> set[tuple[int, int]]:
    import os

    wired = data.make_loader(list(range(4)), preprocessor=None)  # type: ignore[arg-type]
    loader = torch.utils.data.DataLoader(
        _Niceness(), num_workers=2, batch_size=None, worker_init_fn=wired.worker_init_fn
    )  # the loader's own worker set-up, on items that report where they ran
    base = os.nice(0)
    return {(worker - base, child - base) for worker, child in loader}


def test_cpu_run_lowers_the_workers_and_their_decoders_below_the_model(tmp_path) -> None:
    assert _worker_niceness(_data(tmp_path, CPUAccelerator())) == {(10, 10)}
    assert _worker_niceness(_data(tmp_path, CPUAccelerator(), worker_nice=3)) == {(3, 3)}  # the option wins
    assert _worker_niceness(_data(tmp_path, CPUAccelerator(), worker_nice=0)) == {(0, 0)}
    assert _worker_niceness(_data(tmp_path, CUDAAccelerator())) == {(0, 0)}  # the GPU computes: no change
    with pytest.raises(ValueError, match="worker_nice"):
        _data(tmp_path, CPUAccelerator(), worker_nice=-5)  # raising priority needs privileges
