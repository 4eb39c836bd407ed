"""``lit_features verify``: compare two feature stores (or two ``.npz`` files) key by key, token by token.

Each side is a feature store directory or an ``.npz`` file of the upstream layout (one array per key, e.g.
``features_hf.npz`` holding ``[1, N, D]`` and ``features_packing.npz`` holding ``[N, D]``; an ``.npz``
array is read as the tensor ``features``). For every key and tensor name present on both sides, both arrays
are flattened to ``[-1, D]`` (so ``[1, N, D]``, ``[N, D]`` and ``[T, N, D]`` line up), truncated to the
shorter length when the token counts differ (reported), and compared: max and mean absolute difference and
the per-token cosine similarity (min/mean/max). A key passes when its minimum cosine exceeds the threshold.
Keys or tensors present on one side only are failures. The exit code is 0 only when everything passes.

Two ``.npz`` files of one seed-001 feature folder (``features_hf.npz``, ``features_packing.npz``; ``lit_features
export-npz`` writes one from two stores) are compared the same way, and the folder's ``metadata.json`` (models,
device, frames per input) is printed first and included in the JSON report, as the upstream tool does.
"""

from __future__ import annotations

import json as jsonlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_features.errors import UserError
from lit_features.models.stand_in import STAND_IN_MARKER
from lit_features.store.reader import FeatureStore

#: Tensor name an ``.npz`` array is read as, so ``.npz`` files compare against ViT stores.
NPZ_TENSOR = "features"
#: Per-sample metadata fields that should agree when two stores describe the same inputs.
META_FIELDS = ("kind", "size", "frame_indices", "frame_slots")


class VerifyInputError(UserError, ValueError):
    """A path given to ``verify`` is neither a feature store nor an ``.npz`` file."""


@dataclass
class Side:
    """One side of the comparison: its keys, a tensor loader and per-key metadata."""

    path: str
    kind: str  # "store" or "npz"
    keys: list[str]
    load: Callable[[str], dict[str, torch.Tensor]]
    meta: Callable[[str], dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "keys": len(self.keys), **self.info}


SEED_METADATA = "metadata.json"


def seed_metadata(path_a: str, path_b: str) -> dict[str, Any] | None:
    """The ``metadata.json`` beside two ``.npz`` files of one folder (seed 001's layout), or None.

    Raises:
        VerifyInputError: If that file exists but is not valid JSON.
    """
    a, b = Path(path_a), Path(path_b)
    if not (a.suffix == b.suffix == ".npz" and a.parent.resolve() == b.parent.resolve()):
        return None
    file = a.parent / SEED_METADATA
    if not file.is_file():
        return None
    try:
        return jsonlib.loads(file.read_text())
    except ValueError as err:
        raise VerifyInputError(f"{file}: not valid JSON ({err})") from None


def print_seed_metadata(metadata: dict[str, Any]) -> None:
    """The models, device and inputs a seed-001 ``metadata.json`` describes."""
    print("\n=== Metadata ===")
    for label, name in (("HF Model", "hf_model_path"), ("Packing Model", "packing_model_path")):
        print(f"{label + ':':<15}{metadata.get(name)}")
    print(f"{'Device:':<15}{metadata.get('device')}")
    print(f"{'Num Frames:':<15}{metadata.get('num_frames')}")
    print("\n=== Inputs ===")
    for name, entry in (metadata.get("inputs") or {}).items():
        print(f"{name}: {entry.get('path')}")
        if "width" in entry:
            print(f"  Resolution: {entry['width']}x{entry['height']}")
        if "sampled_frames" in entry:
            print(f"  Frames: {entry['sampled_frames']}/{entry.get('total_frames')}")


def open_side(path: str) -> Side:
    """Opens a feature store directory or an ``.npz`` file.

    Raises:
        VerifyInputError: If ``path`` is missing or is neither.
    """
    p = Path(path)
    if p.is_dir():
        try:
            store = FeatureStore(p)
        except FileNotFoundError as err:
            raise VerifyInputError(f"{path}: not a feature store ({err})") from None
        info = {"extractor": store.info.get("extractor"), "fingerprint": store.fingerprint}
        if store.info.get(STAND_IN_MARKER):
            info["stand_in_weights"] = True
        return Side(str(p), "store", store.keys(), store.__getitem__, store.meta, info)
    if p.is_file() and p.suffix == ".npz":
        try:
            # Upstream arrays are plain float32; never unpickle what a file says.
            npz = np.load(p, allow_pickle=False)
            keys = sorted(npz.files)
        except (OSError, ValueError) as err:
            raise VerifyInputError(f"{path}: cannot read as .npz ({err})") from None

        def load(key: str) -> dict[str, torch.Tensor]:
            return {NPZ_TENSOR: torch.from_numpy(np.asarray(npz[key]))}

        return Side(str(p), "npz", keys, load, lambda key: {})
    if not p.exists():
        raise VerifyInputError(f"{path}: no such file or directory")
    raise VerifyInputError(f"{path}: expected a feature store directory (with store.json) or an .npz file")


@dataclass
class Comparison:
    """The verdict on one (key, tensor) pair."""

    key: str
    tensor: str
    passed: bool
    reason: str | None = None
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    tokens_a: int | None = None
    tokens_b: int | None = None
    compared_tokens: int | None = None
    truncated: bool = False
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    cosine_min: float | None = None
    cosine_mean: float | None = None
    cosine_max: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.key if self.tensor == NPZ_TENSOR else f"{self.key} [{self.tensor}]"

    def as_json(self) -> dict[str, Any]:
        row = asdict(self)
        # NaN/inf are not JSON: report them as null (the reason says why the key failed).
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def as_tokens(tensor: torch.Tensor) -> torch.Tensor:
    """Flattens any ``[..., D]`` array to ``[tokens, D]`` in float64 (a scalar becomes ``[1, 1]``)."""
    t = tensor.detach().to("cpu", torch.float64)
    if t.dim() == 0:
        return t.reshape(1, 1)
    return t.reshape(-1, t.shape[-1])


def compare_tensors(key: str, name: str, a: torch.Tensor, b: torch.Tensor, threshold: float) -> tuple[Comparison, Any]:
    """Compares two feature arrays; returns the verdict and the per-token cosines (None when not comparable)."""
    result = Comparison(key, name, False, shape_a=list(a.shape), shape_b=list(b.shape))
    ta, tb = as_tokens(a), as_tokens(b)
    if ta.shape[-1] != tb.shape[-1]:
        result.reason = f"feature width differs: {ta.shape[-1]} vs {tb.shape[-1]}"
        return result, None
    result.tokens_a, result.tokens_b = ta.shape[0], tb.shape[0]
    n = min(ta.shape[0], tb.shape[0])
    if ta.shape[0] != tb.shape[0]:
        result.truncated = True
        result.notes.append(f"token counts differ ({ta.shape[0]} vs {tb.shape[0]}): compared the first {n}")
    result.compared_tokens = n
    if n == 0:
        result.reason = "no tokens to compare"
        return result, None
    ta, tb = ta[:n], tb[:n]
    diff = (ta - tb).abs()
    cos = torch.nn.functional.cosine_similarity(ta, tb, dim=-1, eps=1e-12)
    result.max_abs_diff = float(diff.max())
    result.mean_abs_diff = float(diff.mean())
    result.cosine_min = float(cos.min())
    result.cosine_mean = float(cos.mean())
    result.cosine_max = float(cos.max())
    if not torch.isfinite(cos).all():
        result.reason = "non-finite values (NaN or inf) in the features"
    elif result.cosine_min > threshold:
        result.passed = True
    else:
        result.reason = f"min cosine {result.cosine_min:.8f} <= threshold {threshold}"
    return result, cos.numpy()


def meta_notes(meta_a: dict[str, Any], meta_b: dict[str, Any]) -> list[str]:
    """Differences in the metadata fields that describe the inputs (frames, size)."""
    return [
        f"meta '{name}' differs: {meta_a[name]} vs {meta_b[name]}"
        for name in META_FIELDS
        if name in meta_a and name in meta_b and meta_a[name] != meta_b[name]
    ]


def compare_sides(a: Side, b: Side, threshold: float) -> Iterator[tuple[Comparison, Any]]:
    """Yields one comparison per key (and tensor name) in either side, sorted by key."""
    keys_a, keys_b = set(a.keys), set(b.keys)
    for key in sorted(keys_a | keys_b):
        if key not in keys_b:
            yield Comparison(key, NPZ_TENSOR, False, reason=f"only in A ({a.path})"), None
            continue
        if key not in keys_a:
            yield Comparison(key, NPZ_TENSOR, False, reason=f"only in B ({b.path})"), None
            continue
        tensors_a, tensors_b = a.load(key), b.load(key)
        notes = meta_notes(a.meta(key), b.meta(key))
        for name in sorted(set(tensors_a) | set(tensors_b)):
            if name not in tensors_b or name not in tensors_a:
                side = "A" if name in tensors_a else "B"
                yield Comparison(key, name, False, reason=f"tensor '{name}' only in {side}"), None
                continue
            result, cos = compare_tensors(key, name, tensors_a[name], tensors_b[name], threshold)
            result.notes[:0] = notes
            yield result, cos


def fmt(value: float | None, digits: int = 8) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_comparison(r: Comparison, threshold: float) -> None:
    print(f"\n--- {r.label}")
    if r.shape_a is not None:
        print(f"A shape:          {tuple(r.shape_a)}")
        print(f"B shape:          {tuple(r.shape_b or [])}")
    if r.cosine_min is not None:
        print(f"Max abs diff:     {r.max_abs_diff:.6g}")
        print(f"Mean abs diff:    {r.mean_abs_diff:.6g}")
        print(f"Min cosine sim:   {fmt(r.cosine_min)}")
        print(f"Mean cosine sim:  {fmt(r.cosine_mean)}")
        print(f"Max cosine sim:   {fmt(r.cosine_max)}")
    for note in r.notes:
        print(f"NOTE: {note}")
    if r.passed:
        print(f"PASS {r.label} (min cosine > {threshold})")
    else:
        print(f"FAIL {r.label}: {r.reason}")


def write_histogram(path: str, cosines: dict[str, Any], threshold: float) -> None:
    """PNG histogram of every compared token's cosine distance ``1 - cos`` on a log axis, threshold marked.

    Agreeing features pile up within 1e-4 of 1, where a linear cosine axis shows one bar; the log distance
    axis spreads them out and still shows the threshold.
    """
    # A Figure without pyplot: no GUI backend is needed, and a notebook calling this keeps its own backend.
    from matplotlib.figure import Figure

    values = np.concatenate(list(cosines.values())) if cosines else np.zeros(0, np.float32)
    values = values[np.isfinite(values)].astype(np.float64)
    floor = 1e-12  # identical tokens (distance 0) land in the first bin
    limit = 1.0 - threshold
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if values.size:
        distance = np.clip(1.0 - values, floor, None)
        low = math.floor(math.log10(distance.min()))
        high = math.ceil(math.log10(max(distance.max(), limit * 10, floor * 10)))
        ax.hist(distance, bins=np.logspace(low, high, 80), log=True, color="tab:blue")
        ax.set_xscale("log")
        ax.set_title(
            f"Per-token cosine: {values.size} tokens, {len(cosines)} keys, min {values.min():.8f}", fontsize=10
        )
    else:
        ax.set_title("Per-token cosine: nothing compared")
    if limit > 0:
        ax.axvline(limit, color="tab:red", linestyle="--", label=f"threshold (cosine {threshold})")
        ax.legend(loc="upper right")
    ax.set_xlabel(f"1 - cosine similarity (log scale; exact matches shown at {floor:g})")
    ax.set_ylabel("tokens")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def verify(
    store_a: str, store_b: str, threshold: float = 0.99, json: bool = False, histogram: str | None = None
) -> int:
    """Compare the features in two stores (or two .npz files) key by key; exit code 0 only when all pass.

    Arrays are flattened to [-1, D] (so [1, N, D] lines up with [N, D]); when token counts differ, the
    shorter length is compared and the truncation reported. A key passes when its minimum per-token cosine
    similarity exceeds the threshold; keys on one side only fail.

    Args:
        store_a: first feature store directory, or an .npz file (one array per key), e.g. a seed-001 folder's
            features_hf.npz (its metadata.json is then printed too).
        store_b: second feature store directory, or an .npz file.
        threshold: a key passes when its minimum per-token cosine similarity is above this.
        json: print one machine-readable JSON report instead of the text report.
        histogram: also write a PNG histogram of the per-token cosine similarities to this path.
    """
    try:
        a, b = open_side(store_a), open_side(store_b)
        metadata = seed_metadata(store_a, store_b)
    except VerifyInputError as err:
        print(f"lit_features: error: {err}", file=sys.stderr)  # the command line's form of a user error
        return 2
    if not json:
        print("=" * 80 + "\nFeature verification\n" + "=" * 80)
        for tag, side in (("A", a), ("B", b)):
            extra = f", extractor {side.info['extractor']}" if side.info.get("extractor") else ""
            print(f"{tag}: {side.path} ({side.kind}, {len(side.keys)} keys{extra})")
        if metadata is not None:
            print_seed_metadata(metadata)
    results: list[Comparison] = []
    cosines: dict[str, Any] = {}
    for result, cos in compare_sides(a, b, threshold):
        results.append(result)
        if cos is not None:
            cosines[result.label] = cos
        if not json:
            print_comparison(result, threshold)
    if histogram:
        write_histogram(histogram, cosines, threshold)

    passed = sum(r.passed for r in results)
    failed = len(results) - passed
    all_passed = bool(results) and failed == 0
    if json:
        report = {
            "a": a.describe(),
            "b": b.describe(),
            "threshold": threshold,
            "results": [r.as_json() for r in results],
            "only_in_a": sorted(set(a.keys) - set(b.keys)),
            "only_in_b": sorted(set(b.keys) - set(a.keys)),
            "truncated": [r.label for r in results if r.truncated],
            "summary": {"total": len(results), "passed": passed, "failed": failed, "all_passed": all_passed},
            "histogram": histogram,
            "metadata": metadata,
        }
        print(jsonlib.dumps(report))
    else:
        print("\n" + "=" * 80 + "\nSummary\n" + "=" * 80)
        print(f"Total comparisons: {len(results)}")
        print(f"Passed:            {passed}")
        print(f"Failed:            {failed}")
        truncated = [r.label for r in results if r.truncated]
        if truncated:
            print(f"Truncated:         {', '.join(truncated)}")
        if histogram:
            print(f"Histogram:         {histogram}")
        if not results:
            print("\nNothing to compare: both sides are empty.")
        elif all_passed:
            print("\nAll features match.")
        else:
            print(
                f"\n{failed} of {len(results)} comparisons failed: "
                + ", ".join(r.label for r in results if not r.passed)
            )
    return 0 if all_passed else 1
