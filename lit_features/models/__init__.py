"""Plain PyTorch encoder implementations used by the feature extractors."""
