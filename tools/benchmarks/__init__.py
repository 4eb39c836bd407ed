"""Benchmark modules: each exposes ``run(quick: bool) -> dict`` with ``rows`` (table rows) and ``metrics``."""
