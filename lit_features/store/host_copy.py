"""Features leave the GPU without holding up the main thread: pinned, non-blocking copies the writer waits for."""

from __future__ import annotations

from typing import Any

import torch

from lit_features.records import FeatureRecord


class HostCopy:
    """The device-to-host copies of one batch, in flight; :meth:`wait` returns once they have landed."""

    def __init__(self, event: Any = None):
        self.event = event

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


def copy_to_host(records: list[FeatureRecord]) -> HostCopy:
    """Move every record's tensors to host memory, CUDA ones asynchronously.

    A blocking ``.to("cpu")`` makes the main thread wait until the GPU has finished this batch, so the next
    batch is fetched and launched only then and the GPU idles meanwhile. Here a CUDA tensor is copied into
    pinned host memory with ``non_blocking=True`` on its stream, and an event recorded after the copies tells
    the writer thread (which reads the tensors) when they are complete. The device memory stays valid: later
    work on the same stream runs after the copy. Other devices keep the blocking copy.
    """
    device = None  # the CUDA device copied from last
    for record in records:
        moved = {}
        for name, tensor in record.tensors.items():
            tensor = tensor.detach()
            if tensor.device.type != "cuda":
                moved[name] = tensor.to("cpu")
                continue
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            moved[name] = host
            device = tensor.device
        record.tensors = moved
    if device is None:
        return HostCopy()
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))  # after every copy queued on that stream
    return HostCopy(event)
