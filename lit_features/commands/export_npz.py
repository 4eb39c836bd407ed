"""``lit_features export-npz``: seed 001's ``features_hf.npz``, ``features_packing.npz`` and ``metadata.json``
from a per-sample store and a packed store of the same inputs.

The upstream feature-verification tool reads exactly these three files from one folder: one float32 array per
input in each ``.npz`` (the batch model's ``[1, N, D]``, the packing model's ``[N, D]``, N = all tokens of the
input, a video's frames one after the other) and ``metadata.json`` with the model paths, ``num_frames``, the
device, per input ``path``/``width``/``height``/``shape`` (videos also ``total_frames``, ``sampled_frames``,
``frame_indices``, ``fps``) and per model the feature shapes. The arrays are named by the stores' keys. A
``lit_features`` entry in ``metadata.json`` (ignored by the upstream tool) records the two stores, their
fingerprints and the frame rounding rule.

The two stores must hold the same keys made from the same frames at the same size; anything else is refused
before a file is written; the three files are written to temporary names first and then moved into place,
``metadata.json`` last.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lit_features.errors import UserError
from lit_features.store.reader import FeatureStore

HF_NPZ = "features_hf.npz"
PACKING_NPZ = "features_packing.npz"
METADATA_JSON = "metadata.json"
FEATURES = "features"
#: Per-sample metadata that must agree between the two stores (same inputs, same frames, same size).
SAME_INPUT_FIELDS = ("kind", "size", "frame_indices", "total_frames")


class ExportError(UserError, ValueError):
    """The two stores cannot be exported as one seed-001 feature folder; the message says why."""


def _open(path: str, role: str) -> FeatureStore:
    try:
        store = FeatureStore(path)
    except FileNotFoundError as err:
        raise ExportError(f"{role} store {path}: {err}") from None
    if not store.keys():
        raise ExportError(f"{role} store {path} holds no samples")
    return store


def _check_same_inputs(hf: FeatureStore, packing: FeatureStore) -> None:
    keys_hf, keys_packing = set(hf.keys()), set(packing.keys())
    if keys_hf != keys_packing:
        only_hf, only_packing = sorted(keys_hf - keys_packing), sorted(keys_packing - keys_hf)
        raise ExportError(
            f"the stores hold different inputs: only in {hf.root}: {only_hf[:10]}, only in {packing.root}: "
            f"{only_packing[:10]}; finish both runs on the same manifest first"
        )
    for key in hf.keys():
        a, b = hf.meta(key), packing.meta(key)
        for name in SAME_INPUT_FIELDS:
            if a.get(name) != b.get(name):
                raise ExportError(
                    f"key {key!r}: meta '{name}' differs between the stores ({a.get(name)} in {hf.root}, "
                    f"{b.get(name)} in {packing.root}); both must be made from the same frames at the same size"
                )
        for store in (hf, packing):
            if FEATURES not in store.row(key).get("shapes", {}):
                raise ExportError(f"{store.path(key)}: no tensor named '{FEATURES}' (is it a ViT feature store?)")


def _num_frames(hf: FeatureStore, packing: FeatureStore) -> int | None:
    values = {s.info.get("fingerprint", {}).get("params", {}).get("num_frames") for s in (hf, packing)}
    if len(values) != 1:
        raise ExportError(f"the stores sample different numbers of frames per video: {sorted(map(str, values))}")
    return values.pop()


def _frame_rounding(store: FeatureStore) -> str:
    # A store fingerprint records the rule only when it is ``floor`` (``round`` was the only rule before).
    return store.info.get("fingerprint", {}).get("params", {}).get("frame_rounding", "round")


def _input_meta(store: FeatureStore, key: str, channels: int = 3) -> dict[str, Any]:
    meta = store.meta(key)
    entry: dict[str, Any] = {"path": store.row(key).get("source") or key}
    if "source_size" in meta:
        entry["height"], entry["width"] = meta["source_size"]
    if meta.get("kind") == "video":
        frames = len(meta["frame_indices"])
        entry.update(
            total_frames=meta.get("total_frames"),
            sampled_frames=frames,
            frame_indices=list(meta["frame_indices"]),
            fps=meta.get("fps"),
            shape=[1, channels, frames, *meta["size"]],
        )
    else:
        entry["shape"] = [1, channels, *meta["size"]]
    return entry


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed ``.npz`` as ``np.savez`` writes it (any key allowed, even ``file``)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)


def _model_path(store: FeatureStore, given: str | None) -> str:
    if given:
        return given
    recorded = {store.meta(key).get("model_path") for key in store.keys()} - {None}
    return recorded.pop() if len(recorded) == 1 else str(store.root)


def export_npz(
    hf_store: str,
    packing_store: str,
    output_dir: str = "features",
    hf_model_path: str | None = None,
    packing_model_path: str | None = None,
) -> int:
    """Write ``features_hf.npz``, ``features_packing.npz`` and ``metadata.json`` (seed 001's layout).

    Args:
        hf_store: the per-sample (batch form) store, e.g. written with ``configs/onevision_features.yaml``.
        packing_store: the packed store of the same inputs, e.g. ``configs/onevision_packed.yaml``.
        output_dir: folder the three files go to (created; existing files of these names are replaced).
        hf_model_path: model path written to ``metadata.json`` (default: the one the store recorded).
        packing_model_path: likewise for the packed store.
    """
    hf, packing = _open(hf_store, "hf"), _open(packing_store, "packing")
    _check_same_inputs(hf, packing)
    num_frames = _num_frames(hf, packing)
    hf_arrays: dict[str, np.ndarray] = {}
    packing_arrays: dict[str, np.ndarray] = {}
    for key in hf.keys():
        a, b = hf[key][FEATURES].float(), packing[key][FEATURES].float()
        hf_arrays[key] = a.reshape(1, -1, a.shape[-1]).numpy()
        packing_arrays[key] = b.reshape(-1, b.shape[-1]).numpy()
    devices = {hf.meta(key).get("device") for key in hf.keys()} - {None}
    metadata = {
        "hf_model_path": _model_path(hf, hf_model_path),
        "packing_model_path": _model_path(packing, packing_model_path),
        "num_frames": num_frames,
        "device": devices.pop() if len(devices) == 1 else ("unknown" if not devices else sorted(devices)),
        "inputs": {key: _input_meta(hf, key) for key in hf.keys()},
        "features": {
            "hf": {k: list(v.shape) for k, v in hf_arrays.items()},
            "packing": {k: list(v.shape) for k, v in packing_arrays.items()},
        },
        "lit_features": {
            "hf_store": str(hf.root),
            "packing_store": str(packing.root),
            "hf_extractor": hf.info.get("extractor"),
            "packing_extractor": packing.info.get("extractor"),
            "hf_fingerprint": hf.fingerprint,
            "packing_fingerprint": packing.fingerprint,
            "frame_rounding": {"hf": _frame_rounding(hf), "packing": _frame_rounding(packing)},
        },
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in (
            (HF_NPZ, lambda p: _write_npz(p, hf_arrays)),
            (PACKING_NPZ, lambda p: _write_npz(p, packing_arrays)),
            (METADATA_JSON, lambda p: p.write_text(json.dumps(metadata, indent=2))),
        ):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
            os.close(fd)
            staged.append((Path(tmp), out / name))
            write(Path(tmp))
        # metadata.json goes first and comes back last: a crash in between leaves no metadata.json, which the
        # upstream tool refuses, rather than new features next to old ones.
        (out / METADATA_JSON).unlink(missing_ok=True)
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    print(f"wrote {out / HF_NPZ}, {out / PACKING_NPZ} and {out / METADATA_JSON} ({len(hf_arrays)} inputs)")
    print(f"compare them with: python -m lit_features verify {out / HF_NPZ} {out / PACKING_NPZ}")
    return 0
