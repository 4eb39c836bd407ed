"""Training-side readers of precomputed features (datasets and small modules that consume a feature store)."""
