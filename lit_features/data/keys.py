"""Stable, unique, filesystem-safe sample keys derived from manifest entries."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence

MAX_KEY_LENGTH = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def short_hash(text: str, length: int = 8) -> str:
    """Hex digest prefix of ``text`` (sha1), used to disambiguate and shorten keys."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def sanitize_key(raw: str) -> str:
    """Map a relative source path (plus selectors) onto a filesystem-safe key.

    Path separators become ``__`` and every other character outside ``[A-Za-z0-9_-]`` becomes ``_``, so
    ``clips/a.mp4`` gives ``clips__a_mp4`` (the upstream ``.pt`` naming replaces ``.`` by ``_`` as well).
    Keys longer than :data:`MAX_KEY_LENGTH` keep their head and get a hash of the whole raw string.
    """
    parts = [p for p in re.split(r"[\\/]+", raw) if p not in ("", ".")]
    key = "__".join(_UNSAFE.sub("_", p) for p in parts).strip("_") or "sample"
    if len(key) > MAX_KEY_LENGTH:
        key = f"{key[: MAX_KEY_LENGTH - 9]}~{short_hash(raw)}"
    return key


def selector_suffix(cut: Sequence[float] | None) -> str:
    """Suffix that distinguishes two samples of one clip with different ``cut`` ranges."""
    if cut is None:
        return ""
    return "@cut" + "-".join(f"{c:g}" for c in cut)


def assign_keys(identities: Sequence[tuple[str, str]]) -> list[str]:
    """Give every ``(relative_name, absolute_identity)`` a unique key, independent of order.

    The plain sanitised relative name is used when exactly one identity maps onto it; when several distinct
    identities collide (two datasets with the same relative path, or names differing only in unsafe
    characters) every one of them gets a hash suffix of its absolute identity, so the result does not depend
    on which entry came first.
    """
    plain = [sanitize_key(rel) for rel, _ in identities]
    owners: dict[str, set[str]] = defaultdict(set)
    for key, (_, ident) in zip(plain, identities, strict=True):
        owners[key].add(ident)
    keys = []
    for key, (_, ident) in zip(plain, identities, strict=True):
        if len(owners[key]) > 1:
            key = f"{key[: MAX_KEY_LENGTH - 9]}~{short_hash(ident)}"
        keys.append(key)
    return keys
