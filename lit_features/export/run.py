"""``lit_features export``: add a store's samples that are not exported yet to an export folder, as a new part.

Order of work, so that a kill at any moment loses nothing and never shows a half-written export: take the
output's lock (one export at a time), check the output (format, fingerprint, exported samples unchanged),
remove shards a killed export left unlisted, publish the new part's shards one whole file at a time, write its
key list, then rewrite the record (the commit point), then any index derived from it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from lit_features.errors import UserError
from lit_features.export import format_module
from lit_features.export.lock import LOCK_NAME, ExportLock
from lit_features.export.record import (
    KEYS_DIR,
    RECORD_NAME,
    ExportMismatchError,
    ExportRecord,
    check_compatible,
    check_up_to_date,
    load_record,
    now,
    read_exported_keys,
    row_digest,
    save_record,
    write_keys,
)
from lit_features.export.target import ExportTarget
from lit_features.progress import progress
from lit_features.remote import is_remote

log = logging.getLogger(__name__)
STORE_INFO_FIELDS = ("extractor", "fingerprint_hash", "codec", "lit_features_version", "created")


def _open_store(path: str) -> Any:
    from lit_features.store.reader import FeatureStore

    if is_remote(path):
        raise UserError(
            f"{path}: a feature store is read from a local (or shared) file system; object storage holds exports. "
            "Export the store where it was written, with --output pointing at the bucket"
        )
    return FeatureStore(path)  # a missing or foreign folder is a one-line error


def _ours(name: str, module: Any) -> bool:
    """A file an export of this format writes (shards, key lists, derived index)."""
    base = name.rsplit("/", 1)[-1]
    return bool(
        module.Writer.shard_pattern().search(name)
        or name.startswith(KEYS_DIR + "/")
        or name in (LOCK_NAME, getattr(module, "INDEX_NAME", None))
        or (base.startswith(".") and base.endswith(".tmp"))  # a killed write's temporary
    )


def _remove_unlisted_shards(target: ExportTarget, writer_cls: Any, record: ExportRecord | None) -> list[str]:
    """Shards named like ours that no record lists: left by an export killed before its commit."""
    listed = set(record.files()) if record else set()
    pattern = writer_cls.shard_pattern()
    stale = [n for n in target.list_names() if pattern.search(n) and n not in listed]
    for name in stale:
        target.remove(name)
    return stale


def export_store(
    store: str,
    format: Literal["litdata", "webdataset", "parquet"],
    output: str,
    shard_bytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a feature store into training-ready shards; a second run adds only samples written since.

    Args:
        store: the feature store folder (as written by ``predict``; it may still be growing).
        format: ``litdata`` (LitData chunks, read with ``litdata.StreamingDataset``), ``webdataset`` (tar
            shards: ``<key>.<tensor>.npy`` + ``<key>.json``) or ``parquet`` (one row per sample).
        output: export folder, local or a URL (``s3://bucket/prefix``, ``gs://...``); credentials and endpoint
            come from the storage's usual configuration (e.g. ``AWS_*`` variables, ``AWS_ENDPOINT_URL``).
        shard_bytes: target size of one shard (default: 64 MiB for litdata chunks, 256 MiB otherwise).
        storage_options: extra fsspec options for the output (e.g. ``{"endpoint_url": ...}`` for s3fs as
            ``client_kwargs``).

    Returns:
        A summary: samples and bytes added, shards written, totals, and the seconds it took.
    """
    started = time.perf_counter()
    module = format_module(format)
    feature_store = _open_store(store)
    target = ExportTarget(output, storage_options)
    target.check_writable()
    lock = ExportLock(target)
    lock.acquire()
    try:
        return _export(feature_store, module, format, target, lock, shard_bytes, started)
    finally:
        target.close()
        lock.release()


def _export(
    feature_store: Any,
    module: Any,
    format: str,
    target: ExportTarget,
    lock: ExportLock,
    shard_bytes: int | None,
    started: float,
) -> dict[str, Any]:
    fingerprint = feature_store.fingerprint
    record = load_record(target)
    if record is None:
        foreign = [n for n in target.list_names() if not _ours(n, module)]
        if foreign:
            raise ExportMismatchError(
                f"{target.url}: not empty and holds no {RECORD_NAME} (e.g. {foreign[:3]}); export into a new or "
                "empty folder, or into a folder an earlier export made"
            )
        info = {k: feature_store.info.get(k) for k in STORE_INFO_FIELDS if k in feature_store.info}
        record = ExportRecord(format=format, fingerprint=fingerprint, store={**info, "path": str(feature_store.root)})
        exported: dict[str, str] = {}
    else:
        check_compatible(record, target, format, fingerprint)
        exported = read_exported_keys(target, record)
    current = {key: row_digest(feature_store.row(key)) for key in feature_store.keys()}
    check_up_to_date(exported, current, target)

    stale = _remove_unlisted_shards(target, module.Writer, record)
    if stale:
        log.warning("removed %d shard(s) an interrupted export left unlisted: %s", len(stale), stale[:5])
    new_keys = [key for key in feature_store.keys() if key not in exported]
    summary: dict[str, Any] = {"output": target.url, "format": format, "fingerprint": fingerprint}
    publish_index = getattr(module, "publish_index", None)
    if not new_keys:
        if publish_index is not None:
            publish_index(target, record)  # repairs an index an interrupted export left behind
        nothing = {"added": 0, "bytes": 0, "file_bytes": 0, "shards": 0, "seconds": 0.0}
        return {**summary, **nothing, "samples": record.samples}
    part = len(record.parts)
    writer = module.Writer(target, part, shard_bytes, record.parts, fingerprint)
    writer.precheck({key: list(feature_store.row(key).get("shapes", {})) for key in new_keys})
    tensor_bytes = 0
    for key in progress(new_keys, desc=f"export {format}", unit="samples"):
        tensors = feature_store[key]
        writer.add(key, tensors, feature_store.row(key).get("source"), feature_store.meta(key))
        tensor_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        lock.heartbeat()
    entry = writer.finish()
    keys_file = write_keys(target, part, {key: current[key] for key in new_keys})
    record.parts.append(
        {
            "part": part,
            "samples": len(new_keys),
            "tensor_bytes": tensor_bytes,
            "file_bytes": writer.file_bytes,
            "keys_file": keys_file,
            "created": now(),
            **entry,
        }
    )
    save_record(target, record)
    if publish_index is not None:
        publish_index(target, record)
    return {
        **summary,
        "added": len(new_keys),
        "bytes": tensor_bytes,
        "file_bytes": writer.file_bytes,
        "shards": len(entry["files"]),
        "samples": record.samples,
        "seconds": round(time.perf_counter() - started, 3),
    }


def export_command(
    store: str,
    *,
    format: Literal["litdata", "webdataset", "parquet"],
    output: str,
    shard_bytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> int:
    """Export a feature store into training-ready shards (LitData, WebDataset or Parquet), local or remote.

    A second run into the same output adds only the samples written since the last one. The output records
    the store's fingerprint; adding a store with another fingerprint, or a sample that changed since it was
    exported, is refused.

    Args:
        store: the feature store folder.
        format: litdata, webdataset or parquet.
        output: export folder or URL (s3://bucket/prefix, gs://..., a local path).
        shard_bytes: target shard size in bytes (default 64 MiB for litdata, 256 MiB otherwise).
        storage_options: fsspec options for the output as JSON (e.g. '{"client_kwargs": {"endpoint_url": ...}}').
    """
    result = export_store(store, format, output, shard_bytes, storage_options)
    if result["added"]:
        print(
            f"exported {result['added']} new sample(s) to {result['output']} ({format}): {result['shards']} shard(s), "
            f"{result['file_bytes'] / 1e6:.1f} MB in {result['seconds']:.1f} s; {result['samples']} in the export"
        )
    else:
        print(f"{result['output']}: up to date ({result['samples']} sample(s) exported, nothing new in the store)")
    return 0
