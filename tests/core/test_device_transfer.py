"""Batches reach the device the fast way: the DataLoader's pin step page-locks their inputs (copies can overlap)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data._utils.pin_memory import pin_memory as dataloader_pin_memory

from lit_features.data.dataset import Batch


def _batch() -> Batch:
    inputs = {"pixels": torch.zeros(2, 3, 4, 4), "extra": [torch.ones(1), (torch.ones(2), "text")], "n": 3}
    return Batch(keys=["a", "b"], sources=["a.mp4", "b.mp4"], metas=[{}, {}], inputs=inputs, failures=[])


def test_dataloader_pin_step_pins_every_input_tensor_of_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without Batch.pin_memory the DataLoader hands a dataclass over as it is: nothing pinned, and the
    # non_blocking copy Lightning issues would be synchronous. Pinning itself needs a GPU: count the calls.
    pinned: list[tuple[int, ...]] = []

    def fake_pin(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        pinned.append(tuple(self.shape))
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = _batch()
    out = dataloader_pin_memory(batch)
    assert sorted(pinned) == [(1,), (2,), (2, 3, 4, 4)]
    assert out.keys == ["a", "b"] and out.inputs["n"] == 3 and out.inputs["extra"][1][1] == "text"


@pytest.mark.gpu
def test_pinned_batch_inputs_are_page_locked() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    out = dataloader_pin_memory(_batch())
    assert out.inputs["pixels"].is_pinned() and out.inputs["extra"][0].is_pinned()
