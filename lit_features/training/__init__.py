"""Training-side datasets that read written features (and, on request, compute missing ones with the extractor)."""
