"""A stand-in for ``torch_npu`` on a machine without Ascend hardware: names the private-use device ``npu``.

``install()`` does what importing the real package does to torch, minus kernels: renames the private-use
backend to ``npu`` (process-global and irreversible, so only ever call this in a child process), registers a
``torch.npu`` module reporting ``FAKE_NPU_COUNT`` devices, and makes ``torch_npu`` importable (with the names
other libraries import from it once they see it). It records the calls the NPU code path makes.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import sys
import types
from typing import Any

import torch

CALLS: list[tuple[str, Any]] = []


class Stream:
    def __init__(self, device: Any = None) -> None:
        CALLS.append(("Stream", device))


@contextlib.contextmanager
def stream(s: Stream):
    CALLS.append(("stream_enter", None))
    yield
    CALLS.append(("stream_exit", None))


def _no_kernels(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("the fake torch_npu has no kernels")


def make_module(count: int) -> types.ModuleType:
    npu = types.ModuleType("torch.npu")
    npu.is_available = lambda: count > 0
    npu.device_count = lambda: count
    npu.set_device = lambda device: CALLS.append(("set_device", str(device)))
    npu.current_device = lambda: 0
    npu.memory_stats = lambda device=None: {"allocated_bytes.all.current": 0, "device": str(device)}
    npu.empty_cache = lambda: CALLS.append(("empty_cache", None))
    npu.get_amp_supported_dtype = lambda: [torch.float16, torch.bfloat16]
    npu.is_autocast_enabled = lambda: False
    npu.get_autocast_dtype = lambda: torch.float16
    npu.Stream = Stream
    npu.stream = stream
    return npu


def install(count: int | None = None) -> types.ModuleType:
    """Make ``import torch_npu`` succeed and ``torch.npu`` report ``count`` devices (env ``FAKE_NPU_COUNT``)."""
    count = int(os.environ.get("FAKE_NPU_COUNT", "8")) if count is None else count
    torch.utils.rename_privateuse1_backend("npu")
    module = make_module(count)
    torch._register_device_module("npu", module)
    package = types.ModuleType("torch_npu")
    package.__spec__ = importlib.machinery.ModuleSpec("torch_npu", loader=None)  # find_spec() callers see it
    package.npu_fusion_attention = _no_kernels  # transformers imports it once it sees torch_npu
    sys.modules["torch_npu"] = package
    return module
