"""Read an offline W&B run back: its records (history steps, config, summary, tags) and the tables it logged.

wandb 0.31 ships no Python reader of its transaction log (``run-<id>.wandb``; wandb-core reads it in Go), so
this frames the log as the format it is (LevelDB's log: 32 KiB blocks of checksummed chunks, after a 7-byte
``:W&B`` header), verifies every chunk's CRC-32, and parses each record with wandb's own protobuf class
(``wandb.proto.wandb_internal_pb2.Record``). Values are read from the parsed records' fields, never by
searching the bytes.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
CHUNK_HEADER = 7  # crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, (ident, magic, version)
    records, pos, pending = [], 7, b""
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # a block's zero-filled trailer
            pos += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if kind == 0 and length == 0:  # the zero padding at the end of a file still being written
            break
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        assert zlib.crc32(bytes([kind]) + chunk) == checksum, f"{path}: bad checksum at byte {pos}"
        pos += CHUNK_HEADER + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        else:
            raise AssertionError(f"{path}: unknown chunk type {kind} at byte {pos}")
        record = pb.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _nested(items: Any) -> dict[str, Any]:
    """Items by key; a media value (a table, an image) comes as one item per field: gathered into a dict."""
    values: dict[str, Any] = {}
    for item in items:
        value = json.loads(item.value_json)
        if item.key:
            values[item.key] = value
            continue
        *parents, last = item.nested_key
        place = values
        for name in parents:
            place = place.setdefault(name, {})
        place[last] = value
    return values


@dataclass
class OfflineRun:
    """What an offline run recorded: ``history`` (one dict per logged step), ``config``, ``summary``, ``tags``."""

    folder: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)  # client id -> {path: staged local file}

    def series(self, key: str) -> list[Any]:
        return [step[key] for step in self.history if key in step]

    def table_rows(self, key: str) -> list[dict[str, Any]]:
        """Every row of the table logged under ``key`` (all increments of an incremental table), as dicts.

        Read from the table's artifact, as ``wandb sync`` uploads it (the run's ``media/table`` copy has no
        media); a media cell gets ``local_path``: its staged file.
        """
        rows = []
        for value in self.series(key):
            client_id, _, path = value["artifact_path"].removeprefix("wandb-client-artifact://").partition("/")
            files = self.artifacts[client_id]
            table = json.loads(Path(files[path]).read_text())
            for row in table["data"]:
                for cell in row:
                    if isinstance(cell, dict) and "path" in cell:
                        cell["local_path"] = files[cell["path"]]
                rows.append(dict(zip(table["columns"], row)))
        return rows


def read_run(folder: Path) -> OfflineRun:
    """Read ``offline-run-*`` folder ``folder``."""
    (log_file,) = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for record in read_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.history.append(_nested(record.history.item))
        elif kind == "config":
            for item in record.config.update:
                value = json.loads(item.value_json)
                run.config[_key(item)] = value.get("value", value) if isinstance(value, dict) else value
        elif kind == "artifact":
            contents = record.artifact.manifest.contents
            run.artifacts[record.artifact.client_id] = {entry.path: entry.local_path for entry in contents}
        elif kind == "summary":
            run.summary.update(_nested(record.summary.update))
        elif kind == "run":
            if record.run.tags:
                run.tags = list(record.run.tags)
            if record.run.notes:
                run.notes = record.run.notes
            for item in record.run.config.update:
                value = json.loads(item.value_json)
                run.config[_key(item)] = value.get("value", value) if isinstance(value, dict) else value
    return run
