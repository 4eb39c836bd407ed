"""Accelerators Lightning does not ship: Ascend NPUs, registered only when ``torch_npu`` imports.

``torch-npu`` is an optional extra (``pip install lit_features[npu]``). Without it this package imports nothing
of the NPU path: :func:`register_npu` tries ``import torch_npu`` once and remembers why it failed, and
:func:`resolve_trainer_flags` leaves every other accelerator's Trainer arguments untouched. Asking for
``accelerator="npu"`` on a machine without ``torch_npu`` raises :class:`NPUUnavailableError` naming the fix.
"""

from __future__ import annotations

from typing import Any

from lit_features.errors import UserError

_state: dict[str, Any] = {"registered": None, "error": None}


class NPUUnavailableError(UserError, RuntimeError):
    """``accelerator: npu`` was asked for but ``torch_npu`` cannot be imported here."""


def register_npu() -> bool:
    """Register the ``npu`` accelerator (and ``ddp_npu`` strategy) with Lightning if ``torch_npu`` imports.

    Returns:
        True when the NPU path is registered; the reason it is not is kept for :func:`npu_import_error`.
    """
    if _state["registered"] is None:
        try:
            import torch_npu  # noqa: F401  (registers torch.npu and the "npu" device name with torch)
        except Exception as err:  # not installed, or installed without the Ascend libraries it needs
            _state["registered"], _state["error"] = False, f"{type(err).__name__}: {err}"
        else:
            from lit_features.accelerators.npu import register

            register()
            _state["registered"] = True
    return bool(_state["registered"])


def npu_import_error() -> str | None:
    """Why the NPU path is not available (``None`` when it is, or before :func:`register_npu` ran)."""
    return _state["error"]


def wants_npu(accelerator: Any) -> bool:
    """True for ``"npu"`` (any case) or an accelerator object whose ``name()`` is ``npu``."""
    if isinstance(accelerator, str):
        return accelerator.lower() == "npu"
    name = getattr(type(accelerator), "name", None)
    return callable(name) and name() == "npu"


def resolve_trainer_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Trainer keyword arguments with the NPU choices Lightning cannot make itself filled in.

    For ``accelerator="npu"`` (or ``"auto"`` on a machine with NPUs and no CUDA GPU) this returns concrete
    objects: the NPU accelerator, a single-device strategy on ``npu:<i>`` or DDP over ``hccl``, and NPU autocast
    for ``16-mixed``/``bf16-mixed``. Any other accelerator's arguments come back unchanged.

    Raises:
        NPUUnavailableError: ``accelerator="npu"`` without an importable ``torch_npu``.
    """
    accelerator = flags.get("accelerator", "auto")
    if not register_npu():
        if wants_npu(accelerator):
            raise NPUUnavailableError(
                "trainer.accelerator 'npu' needs Ascend's torch_npu, which cannot be imported here "
                f"({npu_import_error()}). Install it with `pip install lit_features[npu]` (the torch-npu wheel "
                "matching your torch version) on a machine with the Ascend CANN toolkit, or pick another "
                "accelerator (cpu, cuda, auto)."
            )
        return flags
    from lit_features.accelerators.npu import npu_trainer_flags

    return npu_trainer_flags(flags)


__all__ = ["NPUUnavailableError", "npu_import_error", "register_npu", "resolve_trainer_flags", "wants_npu"]
