"""Data side: manifests, media decoding, frame sampling, transforms and the DataModule (never imports a model)."""
