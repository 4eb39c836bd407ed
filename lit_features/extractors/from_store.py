"""Rebuild the extractor that wrote a store, from the init arguments its fingerprint records.

Training readers compute clips a store lacks with the very extractor that wrote it
(:class:`~lit_features.training.wan_dataset.WanTrainingDataset` takes it as an argument).
"""

from __future__ import annotations

from lit_features.extractors.base import FeatureExtractor
from lit_features.extractors.bindweave import BindWeaveTrainingFeatures
from lit_features.extractors.wan import WanTrainingFeatures
from lit_features.store.reader import FeatureStore


def extractor_for_store(
    store: FeatureStore, model_path: str, check: bool = True, qwen_model_path: str | None = None
) -> FeatureExtractor:
    """Rebuild the extractor that wrote ``store`` (its init arguments are in the store's fingerprint).

    ``model_path`` is the Wan weights folder; a ``bindweave_train`` store also needs ``qwen_model_path``. With
    ``check``, refuse when the rebuilt extractor's fingerprint differs from the store's (different weights, or a
    newer preprocessing), since its features would not match the cached ones.
    """
    stored = store.info.get("fingerprint", {})
    name, params = stored.get("extractor"), stored.get("params", {})
    if name == WanTrainingFeatures.extractor_name:
        extractor: FeatureExtractor = WanTrainingFeatures(model_path=model_path, **params)
    elif name == BindWeaveTrainingFeatures.extractor_name:
        if qwen_model_path is None:
            raise ValueError(f"{store.root} holds BindWeave features: give qwen_model_path as well as model_path")
        extractor = BindWeaveTrainingFeatures(wan_model_path=model_path, qwen_model_path=qwen_model_path, **params)
    else:
        raise ValueError(f"{store.root} was written by {name!r}, not by 'wan_train' or 'bindweave_train'")
    if check:
        store.check_same_features(extractor.fingerprint(), model_path)
    return extractor
