"""What every format's shard writer shares: shard names, publishing finished shards, counting what was written."""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from lit_features.export.target import ExportTarget


class ShardWriter:
    """Base of the per-format writers: ``add`` samples in key order, then ``finish`` returns the part's entry.

    Subclasses set ``extension`` and build each shard as a local file (``new_local_file``), then hand it to
    ``publish_shard``. Shard names carry the part number, so a later export never overwrites a listed shard.
    """

    extension = ""
    default_shard_bytes = 256 * 2**20

    def __init__(
        self,
        target: ExportTarget,
        part: int,
        shard_bytes: int | None,
        previous_parts: list[dict[str, Any]],
        fingerprint: str,
    ):
        self.target = target
        self.fingerprint = fingerprint
        self.part = part
        self.shard_bytes = int(shard_bytes or self.default_shard_bytes)
        self.previous_parts = previous_parts
        self.files: list[str] = []
        self.file_bytes = 0
        self.samples = 0

    @classmethod
    def shard_pattern(cls) -> re.Pattern[str]:
        """Names this format's writer gives its shards (a crashed export's unlisted shards are removed by it)."""
        return re.compile(rf"shard-\d{{5}}-\d{{5}}\{cls.extension}$")

    def next_shard_name(self) -> str:
        return f"shard-{self.part:05d}-{len(self.files):05d}{self.extension}"

    def new_local_file(self, name: str) -> str:
        return os.path.join(self.target.staging_dir(), name)

    def publish_shard(self, local_file: str, name: str) -> None:
        self.file_bytes += self.target.publish(local_file, name)
        self.files.append(name)

    def precheck(self, names_by_key: dict[str, list[str]]) -> None:
        """Refuse, before any shard is written, samples this format cannot hold (from the store's index rows)."""

    def add(self, key: str, tensors: dict[str, torch.Tensor], source: str | None, meta: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        """Publish what is still open; the part's entry for the record (``files`` + format-specific fields)."""
        raise NotImplementedError
