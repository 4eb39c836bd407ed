"""Features leave the device without holding up the main thread, and the writer reads them only once landed."""

from __future__ import annotations

import pytest
import torch

from lit_features.records import FeatureRecord
from lit_features.store.host_copy import copy_to_host


def _record(**tensors: torch.Tensor) -> FeatureRecord:
    return FeatureRecord(key="k", source="k.mp4", tensors=dict(tensors), meta={})


def test_host_tensors_stay_as_they_are_and_nothing_is_waited_for() -> None:
    features = torch.arange(6.0).reshape(2, 3)
    record = _record(features=features, mask=torch.ones(3, dtype=torch.int64))
    copied = copy_to_host([record])
    assert copied.event is None
    copied.wait()
    assert torch.equal(record.tensors["features"], features) and record.tensors["mask"].dtype == torch.int64


@pytest.mark.gpu
def test_cuda_features_come_back_pinned_and_equal_once_the_copy_is_waited_for() -> None:
    """Values and placement; that the main thread no longer waits is measured by ``tools/gpu_check.py``."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.randn(2048, 2048, device="cuda")
    y = x
    for _ in range(20):  # the copies queue behind this work
        y = (y @ x).tanh_()
    record = _record(features=y[:3].to(torch.bfloat16), small=y[0, :5], mask=torch.ones(4, dtype=torch.int64))
    copied = copy_to_host([record])
    assert copied.event is not None
    copied.wait()
    assert copied.event.query()
    for name in ("features", "small"):
        assert record.tensors[name].device.type == "cpu" and record.tensors[name].is_pinned(), name
    assert torch.equal(record.tensors["features"], y[:3].to(torch.bfloat16).cpu())
    assert torch.equal(record.tensors["small"], y[0, :5].cpu())
    assert torch.equal(record.tensors["mask"], torch.ones(4, dtype=torch.int64))  # host tensors as they were
