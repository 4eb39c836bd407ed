"""Plain PyTorch encoder modules used by the extractors (no Lightning dependency)."""
