"""lit_features: precompute and cache encoder features for video model training on PyTorch Lightning."""

__version__ = "0.1.0"
