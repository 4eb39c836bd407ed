"""Feature store: on-disk formats, the prediction writer callback, fingerprints and the reader."""

from lit_features.store.reader import FeatureStore
from lit_features.store.writer import FeatureWriter

__all__ = ["FeatureStore", "FeatureWriter"]
