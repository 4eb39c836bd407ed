"""On-disk encodings of one sample's tensors: safetensors (default), ``.pt`` dicts, ``.npz``, bare ``.pt`` tensors.

Reading never unpickles arbitrary objects: ``.pt`` files load with ``weights_only=True`` and ``.npz`` with
``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

META_KEY = "__lit_features_meta__"


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16: widen to float32, which holds every bf16 value exactly.
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.detach().cpu().numpy()


def encode(codec: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """Serialise one sample. ``meta`` must be JSON-able (it goes in the header, or as plain entries for ``pt``)."""
    if codec == "safetensors":
        from safetensors.torch import save

        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        return save(contiguous, metadata={META_KEY: json.dumps(meta)})
    if codec == "pt":
        buffer = io.BytesIO()
        torch.save({**{k: v.detach().cpu() for k, v in tensors.items()}, **meta}, buffer)
        return buffer.getvalue()
    if codec == "pt_bare":
        if len(tensors) != 1:
            raise ValueError("pt_bare stores exactly one tensor per file; use a path template with {name}")
        buffer = io.BytesIO()
        torch.save(next(iter(tensors.values())).detach().cpu(), buffer)
        return buffer.getvalue()
    if codec in ("npz", "npz_compressed"):
        buffer = io.BytesIO()
        arrays = {k: _to_numpy(v) for k, v in tensors.items()}
        for k, v in meta.items():
            if isinstance(v, str):
                arrays.setdefault(k, np.array(v))
        (np.savez_compressed if codec == "npz_compressed" else np.savez)(buffer, **arrays)
        return buffer.getvalue()
    raise ValueError(f"unknown codec {codec!r}; choose safetensors, pt, pt_bare, npz or npz_compressed")


EXTENSIONS = {
    "safetensors": ".safetensors",
    "pt": ".pt",
    "pt_bare": ".pt",
    "npz": ".npz",
    "npz_compressed": ".npz",
}


def decode(path: str, codec: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a sample file back as (tensors, meta), choosing the codec from the extension when not given."""
    if codec is None:
        codec = {".safetensors": "safetensors", ".pt": "pt", ".npz": "npz"}.get(
            "." + path.rsplit(".", 1)[-1], "safetensors"
        )
    if codec == "safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta_text = (fh.metadata() or {}).get(META_KEY, "{}")
            return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(meta_text)
    if codec in ("pt", "pt_bare"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, torch.Tensor):
            return {"tensor": obj}, {}
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        return tensors, {k: v for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    if codec in ("npz", "npz_compressed"):
        with np.load(path, allow_pickle=False) as data:
            tensors, meta = {}, {}
            for k in data.files:
                arr = data[k]
                if arr.dtype.kind in "US":
                    meta[k] = str(arr)
                else:
                    tensors[k] = torch.from_numpy(arr)
            return tensors, meta
    raise ValueError(f"unknown codec {codec!r}")


# safetensors header dtype names -> torch names, as the writer's index rows spell them
_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _npy_header(member: Any) -> tuple[list[int], np.dtype]:
    version = np.lib.format.read_magic(member)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(member)
    return list(shape), dtype


def probe(path: str | os.PathLike, codec: str) -> dict[str, tuple[list[int], str]] | None:
    """Shapes and dtypes of a sample file's tensors, or ``None`` when it is missing, partial or unreadable.

    Cheap (headers only, no tensor data is read): it tells a complete file from one cut short by a writer
    that did not write atomically (e.g. ``np.savez_compressed`` straight onto the final name). Zip-based
    files (``.npz``, ``.pt``) keep their directory at the end, so a truncated one does not open; a
    safetensors file must be exactly as long as its header says.
    """
    path = os.fspath(path)
    try:
        if not os.path.isfile(path):
            return None
        if codec in ("npz", "npz_compressed"):
            out = {}
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.filename.endswith(".npy"):
                        with archive.open(info) as member:
                            shape, dtype = _npy_header(member)
                        if dtype.hasobject:  # pickled Python objects: never read, so never a complete sample
                            return None
                        if dtype.kind not in "US":
                            out[info.filename[: -len(".npy")]] = (shape, str(dtype))
            return out or None
        if codec == "safetensors":
            # safe_open reads the header only and refuses a file that is not exactly as long as it says.
            with safe_open(path, framework="pt") as fh:
                slices = {k: fh.get_slice(k) for k in fh.keys()}  # noqa: SIM118 - a safe_open handle, not a dict
                return {
                    k: (list(v.get_shape()), _SAFETENSORS_DTYPES.get(v.get_dtype(), v.get_dtype().lower()))
                    for k, v in slices.items()
                }
        if codec in ("pt", "pt_bare"):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # maps, reads no data
            tensors = {"tensor": obj} if isinstance(obj, torch.Tensor) else obj
            return {
                k: (list(v.shape), str(v.dtype).removeprefix("torch."))
                for k, v in tensors.items()
                if isinstance(v, torch.Tensor)
            } or None
    except Exception:  # any reading problem means "not a complete sample file"
        return None
    raise ValueError(f"unknown codec {codec!r}")
