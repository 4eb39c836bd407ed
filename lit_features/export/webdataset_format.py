"""WebDataset tar shards (``shard-PPPPP-NNNNN.tar``) written with webdataset's TarWriter, and a streaming reader.

Per sample: one ``<key>.<tensor>.npy`` member per tensor and ``<key>.json`` holding ``key``, ``source``,
``meta`` (the store's metadata of the sample) and ``dtypes`` (the torch dtype of each tensor: numpy has no
bfloat16, so such tensors are ``.npy`` files of same-width integers, viewed back by the reader). Members are
PAX tar entries (keys may be longer than ustar's 100 characters) with mtime 0, so equal samples give equal
bytes. Keys never contain ``.`` (webdataset splits member names at the first dot).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from lit_features.errors import UserError
from lit_features.export.record import shard_urls
from lit_features.export.shards import ShardWriter
from lit_features.export.tensors import dtype_name, from_npy_bytes, npy_bytes
from lit_features.remote import open_url

FORMAT = "webdataset"
_TAR_HEADER = 512  # bytes of tar header per member (PAX adds one more block for long names)


class WebDatasetShardWriter(ShardWriter):
    extension = ".tar"
    default_shard_bytes = 256 * 2**20

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._tar: wds.TarWriter | None = None
        self._stream: Any = None
        self._local = ""
        self._name = ""
        self._bytes = 0

    def _open(self) -> None:
        self._name = self.next_shard_name()
        self._local = self.new_local_file(self._name)
        self._stream = open(self._local, "wb")
        self._tar = wds.TarWriter(self._stream, encoder=False, format="PAX_FORMAT", mtime=0)
        self._bytes = 0

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._stream.close()
        self._tar = None
        self.publish_shard(self._local, self._name)

    def add(self, key: str, tensors: dict[str, torch.Tensor], source: str | None, meta: dict[str, Any]) -> None:
        if "." in key or "/" in key:
            raise UserError(f"key {key!r}: webdataset member names split at the first '.', so keys may not hold '.'")
        doc = {"key": key, "source": source, "meta": meta, "dtypes": {n: dtype_name(t) for n, t in tensors.items()}}
        sample: dict[str, Any] = {"__key__": key, "json": json.dumps(doc, sort_keys=True).encode("utf-8")}
        for name, tensor in tensors.items():
            sample[f"{name}.npy"] = npy_bytes(tensor)
        if self._tar is None:
            self._open()
        assert self._tar is not None
        self._bytes += self._tar.write(sample) + 2 * _TAR_HEADER * (len(sample) - 1)
        self.samples += 1
        if self._bytes >= self.shard_bytes:
            self._close()

    def finish(self) -> dict[str, Any]:
        self._close()
        return {"files": list(self.files)}


Writer = WebDatasetShardWriter


# -- reading ---------------------------------------------------------------------------------------------------
def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw webdataset sample (``json`` + ``<name>.npy`` bytes) as ``{key, source, meta, <name>: tensor}``."""
    doc = json.loads(sample["json"])
    out: dict[str, Any] = {"key": doc["key"], "source": doc["source"], "meta": doc["meta"]}
    for name, dtype in doc["dtypes"].items():
        out[name] = from_npy_bytes(sample[f"{name}.npy"], dtype)
    return out


def _decode(samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    # not wds.map: it puts webdataset's ``__key__`` back into every sample
    for sample in samples:
        yield decode_sample(sample)


def _open_shards(storage_options: dict[str, Any] | None):
    """Pipeline stage: open each shard URL through fsspec (webdataset's own opener knows no ``s3://``)."""

    def stage(sources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for source in sources:
            url = source["url"]
            with open_url(url, "rb", storage_options) as stream:
                yield {**source, "stream": stream}

    return stage


def webdataset_pipeline(
    url: str, storage_options: dict[str, Any] | None = None, shuffle_shards: int | None = None
) -> wds.DataPipeline:
    """An IterableDataset over the export at ``url`` yielding ``{key, source, meta, <tensor name>: tensor}``.

    Shards are split over ``torch.distributed`` ranks and DataLoader workers (give each worker shards:
    ``num_workers <= number of shards``); ``shuffle_shards=N`` shuffles the shard order with seed ``N``. The
    shard list comes from the export record, so a shard of an interrupted export is never read.
    """
    urls = shard_urls(url, FORMAT, storage_options)
    stages: list[Any] = [wds.SimpleShardList(urls, seed=shuffle_shards)]
    stages += [wds.split_by_node, wds.split_by_worker, _open_shards(storage_options), tar_file_expander]
    stages += [functools.partial(group_by_keys, lcase=False), _decode]
    return wds.DataPipeline(*stages)
