"""LitData chunks written by litdata's own ``BinaryWriter``, read back with ``litdata.StreamingDataset``.

Each item is ``{"key": str, "source": str ('' when the sample has no media file), "meta": JSON str, <name>:
tensor}``. Tensor fields go through :class:`ExactTensorSerializer`, registered with litdata under the name
``lf_tensor`` (litdata's plug-in point for item encodings): ``FeatureStreamingDataset`` passes it, a plain
``StreamingDataset`` takes ``serializers=serializers()``. LitData needs one item structure per dataset, so
every sample of an export must have the same tensor names. ``index.json`` is derived from the export record
after each part is committed (an interrupted export leaves it at the previous part; the next run repairs it).
"""

from __future__ import annotations

import glob
import json
import os
import re
import struct
import time
import warnings
from typing import Any

import torch
from litdata import StreamingDataset
from litdata.streaming.serializers import Serializer, StringSerializer
from litdata.streaming.writer import BinaryWriter

from lit_features.errors import UserError
from lit_features.export.record import ExportRecord, shard_urls
from lit_features.export.shards import ShardWriter
from lit_features.export.target import ExportTarget
from lit_features.export.tensors import dtype_name, tensor_bytes, tensor_from_bytes

FORMAT = "litdata"
INDEX_NAME = "index.json"
RESERVED = ("key", "source", "meta")
TENSOR_SERIALIZER = "lf_tensor"  # the name chunks record for tensor fields; readers pass serializers()


class ExactTensorSerializer(Serializer):
    """Tensors of any rank and dtype (bfloat16 included), bytes exact, in a layout that names its dtype.

    ``<H`` length + dtype name (``bfloat16``, ...), ``<I`` rank, ``<Q`` per dimension, then the elements in C
    order. litdata's own ``tensor`` record cannot serve: its writer sends 1-D tensors to a header-less
    serializer (a field whose rank varies loses its shape), cannot write bfloat16 (it goes through numpy), and
    its header changed byte order between releases (little-endian in 0.2.44, big-endian by 0.2.60).
    """

    def serialize(self, item: torch.Tensor) -> tuple[bytes, str | None]:
        name = dtype_name(item).encode("ascii")
        header = struct.pack(f"<H{len(name)}sI{item.dim()}Q", len(name), name, item.dim(), *item.shape)
        return header + tensor_bytes(item), None

    def deserialize(self, data: bytes) -> torch.Tensor:
        view = memoryview(data)
        (length,) = struct.unpack_from("<H", view, 0)
        name = bytes(view[2 : 2 + length]).decode("ascii")
        (rank,) = struct.unpack_from("<I", view, 2 + length)
        shape = struct.unpack_from(f"<{rank}Q", view, 6 + length)
        return tensor_from_bytes(view[6 + length + 8 * rank :], name, shape)

    def can_serialize(self, item: Any) -> bool:
        return isinstance(item, torch.Tensor)


class _PlainStringSerializer(StringSerializer):
    """Every string is text (litdata's own would store the content of a file whose name the string happens to be)."""

    def can_serialize(self, data: Any) -> bool:
        return isinstance(data, str)


class LitDataShardWriter(ShardWriter):
    extension = ".bin"
    default_shard_bytes = 64 * 2**20  # litdata's recommended chunk size

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._names: list[str] | None = self.previous_parts[0]["names"] if self.previous_parts else None
        self._local_dir = os.path.join(self.target.staging_dir(), f"litdata-part-{self.part:05d}")
        os.makedirs(self._local_dir, exist_ok=True)
        self._writer = BinaryWriter(
            self._local_dir,
            chunk_bytes=self.shard_bytes,
            serializers={TENSOR_SERIALIZER: ExactTensorSerializer(), "str": _PlainStringSerializer()},
            chunk_index=sum(len(p["chunks"]) for p in self.previous_parts),
        )

    @classmethod
    def shard_pattern(cls) -> re.Pattern[str]:
        return re.compile(r"chunk-\d+-\d+(\.\w+)?\.bin$")

    def _publish(self, path: str | None) -> None:
        if path:
            self.publish_shard(path, os.path.basename(path))

    def _check(self, key: str, names: list[str], expected: list[str] | None) -> list[str]:
        if expected is None:
            clash = sorted(set(names) & set(RESERVED))
            if clash:
                raise UserError(f"key {key!r}: tensor names {clash} clash with LitData item fields {RESERVED}")
            return names
        if names != expected:
            raise UserError(
                f"key {key!r} has tensors {names} but this LitData export holds {expected}: a LitData dataset "
                "needs one item structure; export this store as webdataset or parquet, which allow it"
            )
        return expected

    def precheck(self, names_by_key: dict[str, list[str]]) -> None:
        expected = self._names
        for key, names in names_by_key.items():
            expected = self._check(key, sorted(names), expected)

    def add(self, key: str, tensors: dict[str, torch.Tensor], source: str | None, meta: dict[str, Any]) -> None:
        names = sorted(tensors)
        self._names = self._check(key, names, self._names)
        item: dict[str, Any] = {"key": key, "source": source or "", "meta": json.dumps(meta, sort_keys=True)}
        item.update({name: tensors[name] for name in names})
        item = {k: item[k] for k in sorted(item)}  # the item structure (pytree spec) must not depend on order
        self._publish(self._writer.add_item(self.samples, item))
        self.samples += 1

    def finish(self) -> dict[str, Any]:
        for path in self._writer.done():
            self._publish(path)
        chunks: list[dict[str, Any]] = []
        config: dict[str, Any] | None = None
        for index_file in sorted(glob.glob(os.path.join(self._local_dir, "*.index.json"))):
            with open(index_file, encoding="utf-8") as fh:
                data = json.load(fh)
            chunks += data["chunks"]
            config = data["config"]
        if self.previous_parts and config is not None:
            first = self.previous_parts[0]["config"]
            if (first["data_format"], first["data_spec"]) != (config["data_format"], config["data_spec"]):
                raise UserError(f"{self.target.url}: the new samples' item structure differs from the exported ones")
        return {"files": list(self.files), "chunks": chunks, "config": config, "names": self._names or []}


Writer = LitDataShardWriter


def publish_index(target: ExportTarget, record: ExportRecord) -> None:
    """Write ``index.json`` (the chunk list ``StreamingDataset`` reads) from the record, when it differs."""
    parts = [p for p in record.parts if p.get("chunks")]
    if not parts:
        return
    index = {"chunks": [c for p in parts for c in p["chunks"]], "config": parts[0]["config"]}
    current = target.read_bytes(INDEX_NAME)
    if current is not None:
        old = json.loads(current)
        if {k: old.get(k) for k in index} == index:
            return
    target.write_bytes(INDEX_NAME, json.dumps({**index, "updated_at": str(time.time())}, sort_keys=True).encode())


# -- reading ---------------------------------------------------------------------------------------------------
def decode_item(item: dict[str, Any]) -> dict[str, Any]:
    """A raw LitData item as ``{key, source, meta, <name>: tensor}`` (``meta`` parsed, ``''`` source as None)."""
    out = dict(item)
    out["source"] = item["source"] or None
    out["meta"] = json.loads(item["meta"])
    return out


def serializers() -> dict[str, Serializer]:
    """What a plain ``litdata.StreamingDataset`` needs to read an export: ``serializers=serializers()``."""
    return {TENSOR_SERIALIZER: ExactTensorSerializer()}


class FeatureStreamingDataset(StreamingDataset):
    """``litdata.StreamingDataset`` over an export, yielding ``{key, source, meta, <name>: tensor}``.

    Every ``StreamingDataset`` option applies (``shuffle``, ``cache_dir``, ``max_cache_size``,
    ``storage_options`` for the S3 client, ...); a plain ``StreamingDataset`` reads the same chunks and gives
    ``meta`` as a JSON string.
    """

    def __init__(self, url: str, **kwargs: Any):
        shard_urls(url, FORMAT, _fsspec_options(kwargs.get("storage_options")))  # refuses a non-LitData export
        kwargs["serializers"] = {**serializers(), **(kwargs.get("serializers") or {})}
        with warnings.catch_warnings():  # litdata < 0.2.45 is pinned on purpose (see pyproject.toml)
            warnings.filterwarnings("ignore", message="A newer version of litdata")
            super().__init__(url, **kwargs)

    def __getitem__(self, index: Any) -> dict[str, Any]:
        return decode_item(super().__getitem__(index))


def _fsspec_options(storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """litdata hands ``storage_options`` to boto3's client (``endpoint_url``, ...); s3fs takes them as client_kwargs."""
    if not storage_options:
        return None
    return {"client_kwargs": dict(storage_options)}
