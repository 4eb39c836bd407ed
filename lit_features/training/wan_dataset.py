"""Datasets a Wan2.1 trainer reads: clips from a Wan feature store, or from MindSpeed-MM's ``data.jsonl``.

:class:`WanTrainingDataset` returns, per clip, the stored ``video`` latent, ``prompt_ids`` (UMT5 embedding),
``prompt_mask``, any I2V and Qwen keys, and the ``caption``. Given a manifest it trains on the manifest's clips; a
clip the store lacks raises a ``KeyError`` naming it, or, with ``compute_missing=True``, is computed on the fly by the
extractor it is given (refused if it would compute numbers other than the store's;
:func:`lit_features.extractors.from_store.extractor_for_store` rebuilds the one a store was written with), through
the extractor's own preprocessor and ``predict_step``, so a partly cached dataset trains on exactly what a full
extraction would have stored.

:class:`JsonlFeatureDataset` reads the ``data.jsonl`` + ``.pt`` layout the way upstream trainers do: each row's
``file`` (relative to the data folder) is a ``torch.save`` dict whose ``video``, ``prompt_ids`` and
``prompt_mask`` are taken out and whose other keys are passed through. It loads with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from lit_features.data.dataset import BatchCollator, SampleDataset
from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.manifest import ManifestError, read_manifests
from lit_features.data.preprocess import EntryError
from lit_features.data.sample import Sample
from lit_features.store.reader import FeatureStore

if TYPE_CHECKING:  # the extractor is given: training code never builds one
    from lit_features.extractors.base import FeatureExtractor

FEATURE_KEYS = ("video", "prompt_ids", "prompt_mask")


class MissingFeaturesError(KeyError):
    """A clip the training set needs is not in the store and on-the-fly computation is off."""


class WanTrainingDataset(Dataset):
    """Per clip: ``{"key", "caption", "video", "prompt_ids", "prompt_mask", <I2V keys>, "source", "cached"}``.

    Args:
        store: folder of a store written by the ``wan_train`` or ``bindweave_train`` extractor (any codec), or
            ``None`` when nothing is cached yet (then ``compute_missing`` and ``extractor`` are required).
        manifest: the clips to train on (any manifest form ``predict`` takes); default: every clip in the store.
            Use the manifest the store was written from, so keys match.
        root: folder relative manifest paths are joined onto.
        compute_missing: compute clips missing from the store with ``extractor`` instead of raising.
        extractor: the extractor to compute with, e.g.
            ``extractor_for_store(FeatureStore(store), model_path)`` (:mod:`lit_features.extractors.from_store`).
        check_fingerprint: refuse an extractor whose features would differ from the store's.
        decode_timeout_s: seconds one on-the-fly decode may take.
        sandbox: decode on-the-fly clips in a child process (protects training from decoder crashes).
    """

    def __init__(
        self,
        store: str | os.PathLike | None,
        manifest: str | Sequence[str] | None = None,
        root: str | None = None,
        compute_missing: bool = False,
        extractor: FeatureExtractor | None = None,
        check_fingerprint: bool = True,
        decode_timeout_s: float = 60.0,
        sandbox: bool = True,
    ):
        self.store = FeatureStore(store) if store is not None else None
        if self.store is None and not (compute_missing and (extractor is not None)):
            raise ValueError("without a store, give compute_missing=True and an extractor")
        if manifest is not None:
            self.samples: list[Sample] | None = read_manifests(manifest, root)
            self.keys = [s.key for s in self.samples]
        else:
            if self.store is None:
                raise ValueError("without a store, give the manifest of the clips to compute")
            self.samples = None
            self.keys = self.store.keys()
        self.compute_missing = compute_missing
        if compute_missing and extractor is None:
            raise ValueError(
                "compute_missing needs the extractor to compute with; "
                "lit_features.extractors.from_store.extractor_for_store(store, model_path) rebuilds the store's"
            )
        if compute_missing and check_fingerprint and self.store is not None:
            assert extractor is not None
            self.store.check_same_features(extractor.fingerprint(), extractor.model_path)
        self.extractor = extractor
        self.decode_timeout_s = decode_timeout_s
        self.sandbox = sandbox
        self._online: SampleDataset | None = None
        if compute_missing and self.samples is not None:
            self._validate_missing()

    def _validate_missing(self) -> None:
        """Manifest-time checks of the clips that will be computed (a bad caption fails now, not mid-epoch)."""
        assert self.extractor is not None and self.samples is not None
        preprocessor = self.extractor.preprocessor()
        for sample in self.samples:
            if self.store is not None and sample.key in self.store:
                continue
            try:
                preprocessor.validate(sample)
            except EntryError as err:
                raise ManifestError(sample.manifest, str(err), sample.index, err.field) from None

    def __len__(self) -> int:
        return len(self.keys)

    def missing(self) -> list[str]:
        """Keys of the training set that the store does not hold."""
        return [k for k in self.keys if self.store is None or k not in self.store]

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        if self.store is not None and key in self.store:
            meta = self.store.meta(key)
            item = {"key": key, "source": self.store.row(key).get("source"), **self.store[key]}
            item["caption"] = meta.get("caption", (meta.get("entry") or {}).get("cap"))
            item["cached"] = True
            return item
        if not self.compute_missing:
            raise MissingFeaturesError(
                f"no features for clip {key!r} in {self.store.root if self.store else 'the store'}; extract them "
                "with predict (resume fills the gaps) or pass compute_missing=True"
            )
        return self.compute(index)

    def compute(self, index: int) -> dict[str, Any]:
        """Features of clip ``index`` by the extractor: its preprocessor, collate and ``predict_step``."""
        assert self.extractor is not None and self.samples is not None
        if self._online is None:
            sandbox = DecodeSandbox(self.decode_timeout_s, enabled=self.sandbox)
            self._online = SampleDataset(self.samples, self.extractor.preprocessor(), sandbox)
        if self.extractor.model is None:
            self.extractor.configure_model()
        batch = BatchCollator(self._online.preprocessor)([self._online[index]])
        # no_grad, not inference_mode: the features may feed ops that save their inputs for backward.
        with torch.no_grad():
            output = self.extractor.predict_step(batch, index)
        if output.failures or not output.records:
            failure = output.failures[0]
            raise RuntimeError(
                f"clip {failure.key!r} ({failure.source}) failed at {failure.stage}: {failure.error}: {failure.message}"
            )
        record = output.records[0]
        return {
            "key": record.key,
            "source": record.source,
            **{k: v.cpu() for k, v in record.tensors.items()},
            "caption": record.meta.get("caption"),
            "cached": False,
        }


def collate_wan_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-shaped tensors; right-pad ``prompt_ids``/``prompt_mask`` (dim 1) when stored unpadded."""
    out: dict[str, Any] = {}
    for name in items[0]:
        values = [item[name] for item in items]
        if not isinstance(values[0], torch.Tensor):
            out[name] = values
            continue
        if name in ("prompt_ids", "prompt_mask") and len({v.shape[1] for v in values}) > 1:
            length = max(v.shape[1] for v in values)
            values = [
                torch.cat([v, v.new_zeros((v.shape[0], length - v.shape[1], *v.shape[2:]))], dim=1) for v in values
            ]
        out[name] = torch.stack(values) if len({tuple(v.shape) for v in values}) == 1 else values
    return out


class JsonlFeatureDataset(Dataset):
    """Rows of a ``data.jsonl`` whose ``file`` points at ``.pt`` feature dicts, read as MindSpeed-MM reads them.

    Args:
        data_path: the JSON Lines index (``data.jsonl``).
        data_folder: folder the ``file`` fields are relative to (default: the index's folder).
    """

    def __init__(self, data_path: str | os.PathLike, data_folder: str | os.PathLike | None = None):
        self.data_path = Path(data_path)
        self.data_folder = Path(data_folder) if data_folder is not None else self.data_path.parent
        with open(self.data_path, encoding="utf-8") as fh:
            self.rows = [json.loads(line) for line in fh if line.strip()]
        for i, row in enumerate(self.rows, start=1):
            if not isinstance(row.get("file"), str):
                raise ManifestError(self.data_path, "missing the feature file path", i, "file")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.data_folder / self.rows[index]["file"]
        data = torch.load(path, map_location="cpu", weights_only=True)
        example = {name: data.pop(name, None) for name in FEATURE_KEYS}
        example.update(data)  # extra keys (I2V conditions, hidden states) pass through, as upstream
        return example
