"""Store fingerprints: canonical JSON of everything that changes the numbers, and readable differences."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".tar", ".ckpt", ".npz", ".model", ".json", ".txt")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(fingerprint).encode()).hexdigest()[:16]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def weight_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Identify weights without hashing gigabytes: config/tokenizer JSON hashed, weight files by name + size.

    Works for a Hugging Face-style directory (recursively, so ``vae/``, ``text_encoder/`` count) or a single
    checkpoint file. The location itself is not part of it: moving the weights keeps the fingerprint.
    """
    path = Path(path)
    if path.is_file():
        return {"file": path.name, "bytes": path.stat().st_size}
    files = {}
    for file in sorted(path.rglob("*")):
        if not file.is_file() or file.name.startswith("."):
            continue
        rel = str(file.relative_to(path))
        if file.suffix == ".json" or file.suffix == ".txt":
            files[rel] = _sha256_file(file)
        elif file.suffix in WEIGHT_SUFFIXES:
            files[rel] = file.stat().st_size
    return {"files": files}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def describe_difference(stored: dict[str, Any], current: dict[str, Any], limit: int = 12) -> str:
    """Lines ``name: stored -> current`` for every differing leaf (capped at ``limit``)."""
    a, b = flatten(json.loads(canonical_json(stored))), flatten(json.loads(canonical_json(current)))
    lines = []
    for name in sorted(set(a) | set(b)):
        if a.get(name, "<absent>") != b.get(name, "<absent>"):
            lines.append(f"  {name}: {a.get(name, '<absent>')!r} -> {b.get(name, '<absent>')!r}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"  ... and {len(lines) - limit} more"]
    return "\n".join(lines)
