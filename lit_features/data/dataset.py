"""Map-style dataset applying an extractor's preprocessor to manifest samples; failures travel as records."""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.media_cache import MediaCache
from lit_features.data.preprocess import MediaLoader, Preprocessor, SampleFailure
from lit_features.data.sample import IMAGE_LIST_FIELDS, Sample
from lit_features.records import Failure, thumbnail


@dataclass
class Prepared:
    """What a preprocessor may return when it has metadata to record beside the inputs."""

    inputs: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """A collated batch: the good samples' keys/sources/meta and inputs, plus failed samples' records."""

    keys: list[str]
    sources: list[str | None]
    metas: list[dict[str, Any]]
    inputs: Any
    failures: list[Failure]
    decode_seconds: float = 0.0  # worker time spent decoding this batch's samples
    transform_seconds: float = 0.0  # worker time spent in the preprocessor outside decoding
    identities: dict[str, Any] = field(default_factory=dict)  # key -> Sample.identity() of the good samples
    units: dict[str, Any] = field(default_factory=dict)  # key -> the work unit claim it belongs to (units only)
    unit_ends: list[Any] = field(default_factory=list)  # claims whose share on this rank ends with this batch

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> Batch:
        """Page-lock the input tensors (the DataLoader calls this with ``pin_memory=True``), so the copy to a GPU
        that Lightning issues with ``non_blocking=True`` runs asynchronously. Without this method the
        DataLoader would hand the batch over unpinned: it pins only tensors, mappings, sequences and objects
        that offer it."""
        self.inputs = pin_tensors(self.inputs)
        return self


def pin_tensors(value: Any) -> Any:
    """``value`` with every tensor in it (through dicts, lists and tuples) in page-locked memory."""
    if isinstance(value, torch.Tensor):
        return value.pin_memory()
    if isinstance(value, dict):
        return {k: pin_tensors(v) for k, v in value.items()}
    if isinstance(value, list):
        return [pin_tensors(v) for v in value]
    if type(value) is tuple:
        return tuple(pin_tensors(v) for v in value)
    return value


class AttemptLog:
    """Append-only log of the samples each process starts and finishes (key, source, event, pid).

    When a DataLoader worker dies, the job reads which samples that pid had started without finishing and
    counts a crash for them (see :mod:`lit_features.store.poison`).
    """

    def __init__(self, path: str | None):
        self.path = path

    def mark(self, sample: Sample, event: str) -> None:
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        row = {"key": sample.key, "source": sample.source, "event": event, "pid": os.getpid()}
        # One short line per write with O_APPEND: lines from several worker processes never interleave. Opened
        # per line (cheap next to decoding a sample), so no handle outlives the run.
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def media_paths(sample: Sample) -> list[str]:
    """The media files a sample reads: its source and any reference images listed in its entry."""
    paths = [sample.source] if sample.source else []
    for name in IMAGE_LIST_FIELDS:
        paths += [p for p in sample.entry.get(name) or [] if isinstance(p, str)]
    return paths


class SampleDataset(Dataset):
    """Applies ``preprocessor`` to each sample in a DataLoader worker; never raises for a bad sample."""

    def __init__(
        self,
        samples: list[Sample],
        preprocessor: Preprocessor,
        sandbox: DecodeSandbox,
        video_backend: str = "auto",
        attempt_log: str | None = None,
        media_cache: MediaCache | None = None,
    ):
        self.samples = samples
        self.preprocessor = preprocessor
        self.media = MediaLoader(sandbox, video_backend, media_cache)
        self.attempts = AttemptLog(attempt_log)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_at(self, index: Any) -> Sample | None:
        """The sample at a sampler index (``None``: the index marks something else, see subclasses)."""
        return self.samples[index]

    def __getitems__(self, indices: list[Any]) -> list[dict[str, Any]]:
        """A batch (the DataLoader asks for whole batches): remote media of all its samples are fetched at once."""
        samples = [self.sample_at(i) for i in indices]
        self.media.prefetch([p for s in samples if s is not None for p in media_paths(s)])
        return [self.__getitem__(i) for i in indices]

    def __getitem__(self, index: Any) -> dict[str, Any]:
        return self.prepare(self.sample_at(index))

    def prepare(self, sample: Sample) -> dict[str, Any]:
        """Decode and transform one sample into a worker item (a failure item when anything goes wrong)."""
        self.attempts.mark(sample, "start")
        started, decode_before = time.perf_counter(), self.media.seconds
        self.media.last_frame = None
        try:
            out = self.preprocessor(sample, self.media)
            prepared = out if isinstance(out, Prepared) else Prepared(out)
            item = {"ok": True, "sample": sample, "inputs": prepared.inputs, "meta": prepared.meta}
        except SampleFailure as err:
            item = {
                "ok": False,
                "failure": Failure(sample.key, sample.source, err.stage, err.error, err.message),
            }
        except Exception as err:  # a transform bug or bad content must cost this sample only
            message = f"{err} ({traceback.extract_tb(err.__traceback__)[-1].name})"
            item = {
                "ok": False,
                "failure": Failure(sample.key, sample.source, "transform", type(err).__name__, message),
            }
        if not item["ok"]:
            item["failure"].preview = thumbnail(self.media.last_frame)
        self.media.last_frame = None  # a whole clip's frames may hang on it
        self.attempts.mark(sample, "end")
        item["decode_s"] = self.media.seconds - decode_before
        item["transform_s"] = time.perf_counter() - started - item["decode_s"]
        return item


class BatchCollator:
    """Splits worker items into good samples (collated by the preprocessor) and failure records."""

    def __init__(self, preprocessor: Preprocessor):
        self.preprocessor = preprocessor

    def __call__(self, items: list[dict[str, Any]]) -> Batch:
        ends = [i["unit_end"] for i in items if i.get("unit_end") is not None]
        items = [i for i in items if "unit_end" not in i]
        good = [i for i in items if i["ok"]]
        failures = [i["failure"] for i in items if not i["ok"]]
        units = {
            (i["sample"].key if i["ok"] else i["failure"].key): i["unit"] for i in items if i.get("unit") is not None
        }
        inputs = self.preprocessor.collate([i["inputs"] for i in good]) if good else None
        metas = [{"entry": i["sample"].entry, **i["meta"]} for i in good]
        return Batch(
            keys=[i["sample"].key for i in good],
            sources=[i["sample"].source for i in good],
            metas=metas,
            inputs=inputs,
            failures=failures,
            decode_seconds=sum(i["decode_s"] for i in items),
            transform_seconds=sum(i["transform_s"] for i in items),
            identities={i["sample"].key: i["sample"].identity() for i in good},
            units=units,
            unit_ends=ends,
        )
