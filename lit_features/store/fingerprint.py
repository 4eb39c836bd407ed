"""Store fingerprints: canonical JSON of everything that changes the numbers, and readable differences."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lit_features.store.weights import weight_identity

__all__ = ["canonical_json", "describe_difference", "fingerprint_hash", "flatten", "weight_identity", "without_weights"]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(fingerprint).encode()).hexdigest()[:16]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def without_weights(fingerprint: Any) -> Any:
    """The fingerprint with every ``weights`` entry and the store format left out (what the weights don't decide)."""
    if isinstance(fingerprint, dict):
        return {k: without_weights(v) for k, v in fingerprint.items() if k not in ("weights", "store_format")}
    return fingerprint


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
