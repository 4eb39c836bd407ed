"""Read a feature store: keys, ``store[key]``, failures, and a torch Dataset over it. Never unpickles."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from lit_features.errors import UserError
from lit_features.store import layout
from lit_features.store.codecs import decode
from lit_features.store.fingerprint import describe_difference, fingerprint_hash
from lit_features.store.resume import row_files, row_problem
from lit_features.units.rows import iter_unit_rows


class StoreReadError(UserError, OSError):
    """A stored sample cannot be read; the message names the store, the key and the file."""


class NotAFeatureStoreError(UserError, FileNotFoundError):
    """A path given as a feature store is missing or holds no ``store.json``."""


class FeatureStore:
    """A read-only view of a store written by :class:`~lit_features.store.writer.FeatureWriter`.

    The per-rank index files are the source of truth (the merged ``index.jsonl`` is a convenience that a
    killed run may not have refreshed); the latest row per key wins. A store written in work units is read
    from its unit indexes directly (no merge step needed).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta_path = self.root / layout.STORE_JSON
        if not meta_path.exists():
            what = "does not exist" if not self.root.exists() else f"is not a feature store (no {layout.STORE_JSON})"
            raise NotAFeatureStoreError(f"{self.root} {what}; give the --writer.output_dir of a predict run")
        try:
            self.info: dict[str, Any] = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise StoreReadError(f"{meta_path}: cannot read the store's description ({err})") from None
        self._rows = layout.latest_rows(self.root, layout.INDEX_DIR)
        self._rows.update((row["key"], row) for row in iter_unit_rows(self.root))  # a store in work units
        self._keys = sorted(self._rows)

    @property
    def fingerprint(self) -> str:
        return self.info.get("fingerprint_hash", "")

    @property
    def codec(self) -> str:
        return self.info.get("codec", "safetensors")

    def keys(self) -> list[str]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def row(self, key: str) -> dict[str, Any]:
        """The index row of ``key``: files, source, shapes, dtypes, bytes, meta."""
        return self._rows[key]

    def path(self, key: str) -> Path:
        file = Path(self._rows[key]["file"])
        return file if file.is_absolute() else self.root / file

    def __getitem__(self, key: str) -> dict[str, torch.Tensor]:
        """All tensors of one sample by name.

        Raises:
            KeyError: no sample has this key.
            StoreReadError: a file of the sample is missing, cut short or unreadable (names key and file).
        """
        if key not in self._rows:
            raise KeyError(f"{self.root}: no sample with key {key!r}")
        row = self._rows[key]
        paths = row_files(self.root, row)
        out: dict[str, torch.Tensor] = {}
        names = list(row["shapes"])
        for i, path in enumerate(paths):
            try:
                tensors, _ = decode(str(path), self.codec)
            except Exception as err:  # any decoder's complaint about a bad file
                raise StoreReadError(self._unreadable(key, path, err)) from err
            if list(tensors) == ["tensor"] and len(paths) == len(names):
                tensors = {names[i]: tensors["tensor"]}  # bare-tensor files: one per name, in index order
            out.update(tensors)
        return out

    def _unreadable(self, key: str, path: Path, err: BaseException) -> str:
        problem = row_problem(self.root, self._rows[key])
        reason = problem or f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        return (
            f"{self.root}, key {key!r}: cannot read {path} ({reason}). Rerun the job that wrote the store to "
            "recompute samples whose file is missing or cut short; `lit_features inspect "
            f"{self.root} --check` lists every unreadable sample."
        )

    def problem(self, key: str, full: bool = False) -> str | None:
        """What is wrong with a stored sample, or ``None``: its files exist with the recorded size, and with
        ``full`` they also decode to the recorded tensor names, shapes and dtypes."""
        row = self._rows[key]
        found = row_problem(self.root, row)
        if found or not full:
            return found
        try:
            tensors = self[key]
        except StoreReadError as err:
            return str(err.__cause__ or err)
        for name, shape in row.get("shapes", {}).items():
            if name not in tensors:
                return f"no tensor {name!r} (has {sorted(tensors)})"
            dtype = row.get("dtypes", {}).get(name)
            got = tensors[name]
            if list(got.shape) != list(shape):
                return f"tensor {name!r} has shape {list(got.shape)}, the index recorded {shape}"
            if dtype and str(got.dtype).removeprefix("torch.") != dtype and self.codec not in ("npz", "npz_compressed"):
                return f"tensor {name!r} has dtype {got.dtype}, the index recorded {dtype}"
        return None

    def check_same_features(self, fingerprint: dict[str, Any], made_with: str) -> None:
        """Refuse a ``fingerprint`` (of an extractor, e.g. one that would compute missing samples) whose features
        would differ from this store's: other weights or other preprocessing. The store's writer settings count
        as the same (``made_with`` names the weights in the message)."""
        stored = self.info.get("fingerprint", {})
        current = {**fingerprint, "writer": stored.get("writer", {})}
        if fingerprint_hash(current) != self.fingerprint:
            raise ValueError(
                f"features computed with {made_with} would differ from those in {self.root}:\n"
                f"{describe_difference(stored, current)}"
            )

    def meta(self, key: str) -> dict[str, Any]:
        return self._rows[key].get("meta", {})

    def failures(self) -> list[dict[str, Any]]:
        """Failure rows (latest per key) for keys that are not done."""
        rows = layout.latest_rows(self.root, layout.FAILURES_DIR, exclude=self._rows)
        rows.update(
            (row["key"], row) for row in iter_unit_rows(self.root, failures=True) if row["key"] not in self._rows
        )
        return [rows[k] for k in sorted(rows)]

    def as_dataset(self, names: Sequence[str] | None = None, keys: Sequence[str] | None = None) -> FeatureDataset:
        return FeatureDataset(self, names, keys)


class FeatureDataset(Dataset):
    """Map-style dataset of ``{"key": str, <name>: tensor, ...}`` items from a store."""

    def __init__(self, store: FeatureStore, names: Sequence[str] | None = None, keys: Sequence[str] | None = None):
        self.store = store
        self.names = list(names) if names is not None else None
        self.keys = list(keys) if keys is not None else store.keys()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        tensors = self.store[key]
        if self.names is not None:
            missing = [n for n in self.names if n not in tensors]
            if missing:
                raise KeyError(f"{self.store.path(key)}: no tensor named {missing} (has {sorted(tensors)})")
            tensors = {n: tensors[n] for n in self.names}
        return {"key": key, **tensors}
