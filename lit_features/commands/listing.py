"""``lit_features list``: the registered extractors and where their real weights come from."""

from __future__ import annotations


def list_extractors() -> int:
    """Print every registered extractor: name, class path, and the hub id of its real weights."""
    from lit_features.extractors import EXTRACTORS

    for name in sorted(EXTRACTORS):
        cls = EXTRACTORS[name]
        print(f"{name:24s} {cls.__module__}.{cls.__qualname__:32s} {cls.hub_id}")
    return 0
