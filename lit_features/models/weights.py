"""Strict weight loading: the weights must fit the model built for them key for key, or the run stops.

A checkpoint that loads "with warnings" (keys missing from the file keep their random initialisation, keys
the model lacks are ignored) produces wrong features without failing. Every extractor therefore loads
through :func:`from_pretrained_strict` (Hugging Face ``transformers`` / ``diffusers`` classes, which report
missing and unexpected keys through ``output_loading_info=True``) or :func:`load_state_dict_strict` (plain
``torch.nn.Module`` state dicts). Only keys that match a documented ``dropped`` pattern (a head that feature
extraction does not use, e.g. the text tower of a two-tower checkpoint) may be left over; anything else
raises :class:`WeightsMismatchError`, naming the file and the keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, TypeVar

import torch

from lit_features.errors import UserError

ModelT = TypeVar("ModelT")


class WeightsMismatchError(UserError, ValueError):
    """Weights do not fit the model built for them; the message names the file and the offending keys."""


def format_keys(keys: Iterable[str], limit: int = 10) -> str:
    """``a, b, c ... (+N more)``: the first ``limit`` keys, sorted."""
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _is_dropped(key: str, dropped: Collection[str]) -> bool:
    return any(re.match(pattern, key) for pattern in dropped)


def describe_mismatch(
    source: str,
    missing: Iterable[str] = (),
    unexpected: Iterable[str] = (),
    mismatched: Iterable[str] = (),
    model: str = "the model",
    hint: str = "",
) -> str | None:
    """One message listing missing, unexpected and wrongly shaped keys, or None when there are none.

    Args:
        source: the weights file or folder, named first.
        missing: keys the model has and the weights lack.
        unexpected: keys the weights have and the model lacks.
        mismatched: ``"key: expected (..), got (..)"`` lines.
        model: what the weights were loaded into, e.g. ``"OneVisionViTModel built from its config.json"``.
        hint: what to do about it (appended).
    """
    missing, unexpected, mismatched = sorted(missing), sorted(unexpected), sorted(mismatched)
    if not (missing or unexpected or mismatched):
        return None
    parts = [f"{source}: the weights do not fit {model}"]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {format_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {format_keys(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches ({len(mismatched)}): {format_keys(mismatched)}")
    message = "; ".join(parts)
    return f"{message}. {hint}" if hint else message


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    state_dict: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    model: str = "the model",
    dropped: Collection[str] = (),
    hint: str = "",
) -> dict[str, torch.Tensor]:
    """Compares a state dict with a model's; returns it without the ``dropped`` keys.

    Args:
        expected: the model's ``state_dict()`` (names and shapes).
        state_dict: the weights read from ``source``.
        source: where the weights come from (named in the error).
        model: what the weights are loaded into (named in the error).
        dropped: regular expressions (matched at the start of a key) of documented heads the model does
            not have; such keys are removed, never reported.
        hint: what the user should do when the weights do not fit.

    Raises:
        WeightsMismatchError: on any missing, unexpected (not dropped) or wrongly shaped key.
    """
    kept = {k: v for k, v in state_dict.items() if not _is_dropped(k, dropped) or k in expected}
    mismatched = [
        f"{key}: expected {tuple(expected[key].shape)}, got {tuple(kept[key].shape)}"
        for key in set(expected) & set(kept)
        if tuple(expected[key].shape) != tuple(kept[key].shape)
    ]
    message = describe_mismatch(
        os.fspath(source), set(expected) - set(kept), set(kept) - set(expected), mismatched, model, hint
    )
    if message:
        raise WeightsMismatchError(message)
    return kept


def load_state_dict_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    model: str | None = None,
    dropped: Collection[str] = (),
    hint: str = "",
) -> torch.nn.Module:
    """Loads ``state_dict`` into ``module`` after :func:`check_state_dict`; returns ``module``.

    Raises:
        WeightsMismatchError: when the keys or shapes do not match (see :func:`check_state_dict`).
    """
    description = model or type(module).__name__
    kept = check_state_dict(module.state_dict(), state_dict, source, description, dropped, hint)
    module.load_state_dict(kept, strict=True)
    return module


def from_pretrained_strict(
    cls: type[ModelT],
    path: str | os.PathLike,
    dropped: Collection[str] = (),
    hint: str = "",
    **kwargs: Any,
) -> ModelT:
    """``cls.from_pretrained(path, **kwargs)`` that refuses weights which do not fit the model.

    Uses the library's own report (``output_loading_info=True``, in ``transformers`` and ``diffusers``): any
    missing key, unexpected key that matches none of ``dropped``, or shape mismatch stops the run.

    Args:
        cls: a ``PreTrainedModel`` or ``diffusers`` ``ModelMixin`` subclass.
        path: weights folder (or hub id).
        dropped: regular expressions of documented heads in the checkpoint that ``cls`` does not have
            (e.g. ``r"text_model\\."`` for the vision tower of a two-tower checkpoint).
        hint: what to do when the weights do not fit (appended to the message).
        **kwargs: passed to ``from_pretrained`` (``subfolder``, ``dtype``, ...).

    Raises:
        WeightsMismatchError: naming the folder and the keys.
    """
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    unexpected = [k for k in info.get("unexpected_keys", ()) if not _is_dropped(k, dropped)]
    mismatched = [
        f"{item[0]}: expected {tuple(item[2])}, got {tuple(item[1])}" if isinstance(item, tuple) else str(item)
        for item in info.get("mismatched_keys", ())
    ]
    where = os.path.join(os.fspath(path), kwargs["subfolder"]) if kwargs.get("subfolder") else os.fspath(path)
    message = describe_mismatch(
        where,
        info.get("missing_keys", ()),
        unexpected,
        mismatched,
        f"{cls.__name__} built from its config",
        hint or "Point model_path at weights made for this model (their config.json must describe them).",
    )
    if message:
        raise WeightsMismatchError(message)
    return model


def read_torch_checkpoint(path: str, map_location: Any = "cpu", allow_pickle: bool = False) -> Any:
    """``torch.load`` of a checkpoint (tensors only unless ``allow_pickle``), any failure one ``ValueError``.

    torch raises several unpickling error types; all mean the same to a user: the file is not what was meant,
    or it holds objects that need ``allow_pickle=True`` (only for files one trusts).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except Exception as error:
        raise ValueError(
            f"{path}: cannot read it as a torch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}); if it holds custom objects and you trust it, pass "
            f"allow_pickle=True"
        ) from error
