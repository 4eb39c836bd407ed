"""Exact tensor <-> bytes conversions for shards: what a reader gets back has the store's dtype, shape and bytes.

numpy has no bfloat16 (nor float8 or complex32): such tensors travel as integers of the same width and are
viewed back as their recorded torch dtype, so no value is ever rounded or widened.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch

_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def dtype_name(tensor: torch.Tensor) -> str:
    """``float32``, ``bfloat16``, ... (torch's name without the ``torch.`` prefix, as store index rows spell it)."""
    return str(tensor.dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}")
    return dtype


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's elements in C order, native (little-endian) byte order."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes | memoryview, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`tensor_bytes` (copies: the tensor owns writable memory)."""
    dt = torch_dtype(dtype)
    if len(data) == 0:
        return torch.empty(list(shape), dtype=dt)
    return torch.frombuffer(bytearray(data), dtype=dt).reshape(list(shape))


def to_numpy_exact(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array holding the tensor's bits: its own dtype when numpy has it, else a same-width integer."""
    tensor = tensor.detach().cpu().contiguous()
    try:
        return tensor.numpy()
    except TypeError:  # bfloat16, float8, ...: no numpy dtype
        return tensor.view(_SAME_WIDTH_INT[tensor.element_size()]).numpy()


def from_numpy_exact(array: np.ndarray, dtype: str) -> torch.Tensor:
    """Inverse of :func:`to_numpy_exact`, given the torch dtype name recorded beside the array."""
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = array.copy(order="C")  # not np.ascontiguousarray: it turns a 0-d array into a 1-d one
    tensor = torch.from_numpy(array)
    want = torch_dtype(dtype)
    return tensor if tensor.dtype == want else tensor.view(want)


def npy_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor as a ``.npy`` file (no pickles), bits exact (see :func:`to_numpy_exact`)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, to_numpy_exact(tensor), allow_pickle=False)
    return buffer.getvalue()


def from_npy_bytes(data: bytes, dtype: str) -> torch.Tensor:
    return from_numpy_exact(np.load(io.BytesIO(data), allow_pickle=False), dtype)
