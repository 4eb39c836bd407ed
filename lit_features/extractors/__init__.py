"""Extractors, one module per family; importing this package registers them all in ``EXTRACTORS``."""

import importlib
import pkgutil

from lit_features.extractors.base import EXTRACTORS, FeatureExtractor

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["EXTRACTORS", "FeatureExtractor"]
