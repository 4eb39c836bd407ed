"""Ascend NPU support for Lightning: accelerator, single-device and DDP (``hccl``) strategies, NPU autocast.

Imported only after ``import torch_npu`` succeeded (see :func:`lit_features.accelerators.register_npu`):
``torch_npu`` names the private-use device ``npu`` and registers ``torch.npu``, which everything here calls.
Lightning alone gets three things wrong for NPUs, fixed by :func:`npu_trainer_flags`:

- with one device it silently picks a CPU single-device strategy (it knows only CUDA/MPS device types);
- DDP defaults to the ``gloo`` backend for a non-CUDA device, and its fit path opens a ``torch.cuda.Stream``;
- ``16-mixed``/``bf16-mixed`` build a plugin that autocasts on ``cuda``.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from typing import Any, Literal

import torch
from lightning.pytorch.accelerators import Accelerator, AcceleratorRegistry
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, StrategyRegistry
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

HCCL = "hccl"
MIXED_PRECISION = {
    16: "16-mixed",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
}


def num_npu_devices() -> int:
    """NPUs visible to this process (0 when ``torch.npu`` is missing or reports none)."""
    npu = getattr(torch, "npu", None)
    if npu is None:
        return 0
    try:
        return int(npu.device_count()) if npu.is_available() else 0
    except RuntimeError:  # driver present but unusable
        return 0


def parse_npu_ids(devices: int | str | list[int] | tuple[int, ...]) -> list[int]:
    """NPU indices from a Trainer ``devices`` value: ``N`` (first N), ``-1`` (all), ``"0,3"`` or ``[0, 3]``.

    Raises:
        MisconfigurationException: zero devices, duplicates, or an index this machine does not have.
    """
    available = num_npu_devices()
    value: Any = devices
    if isinstance(value, str):
        text = value.strip()
        if text in ("auto", "-1"):
            value = -1
        elif "," in text:
            value = [int(x) for x in text.split(",") if x.strip()]
        else:
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple)):
        raise MisconfigurationException(
            f"trainer.devices for NPUs must be an int, a list or '0,1,...'; got {devices!r}"
        )
    ids = list(range(available)) if value == -1 else list(range(value)) if isinstance(value, int) else list(value)
    if not ids:
        raise MisconfigurationException(f"trainer.devices={devices!r} selects no NPU")
    if len(set(ids)) != len(ids):
        raise MisconfigurationException(f"trainer.devices={devices!r} lists an NPU twice")
    missing = [i for i in ids if not 0 <= i < available]
    if missing:
        raise MisconfigurationException(
            f"trainer.devices={devices!r} asks for NPU {missing}, but this process sees {available} NPU(s) "
            "(check ASCEND_RT_VISIBLE_DEVICES)"
        )
    return ids


class NPUAccelerator(Accelerator):
    """Accelerator for Huawei Ascend NPUs (``torch_npu``)."""

    def setup_device(self, device: torch.device) -> None:
        if device.type != "npu":
            raise MisconfigurationException(f"NPUAccelerator needs an npu device, got {device}")
        torch.npu.set_device(device)

    def setup(self, trainer: Any) -> None:
        visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "all")
        log.info("LOCAL_RANK: %d - ASCEND_RT_VISIBLE_DEVICES: [%s]", trainer.local_rank, visible)

    def get_device_stats(self, device: Any) -> dict[str, Any]:
        """``torch.npu.memory_stats`` of ``device`` (what Lightning's DeviceStatsMonitor logs)."""
        return dict(torch.npu.memory_stats(device))

    def teardown(self) -> None:
        torch.npu.empty_cache()

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> list[int]:
        return parse_npu_ids(devices)

    @staticmethod
    def get_parallel_devices(devices: list[int]) -> list[torch.device]:
        return [torch.device("npu", i) for i in devices]

    @staticmethod
    def auto_device_count() -> int:
        return num_npu_devices()

    @staticmethod
    def is_available() -> bool:
        return num_npu_devices() > 0

    @staticmethod
    def name() -> str:
        return "npu"

    @classmethod
    def register_accelerators(cls, accelerator_registry: Any) -> None:
        accelerator_registry.register(cls.name(), cls, description=cls.__name__, override=True)


class NPUDDPStrategy(DDPStrategy):
    """DDP over the ``hccl`` backend; wrapping the model for fit uses an NPU side stream, not a CUDA one.

    Accepts every :class:`~lightning.pytorch.strategies.DDPStrategy` argument; ``process_group_backend``
    defaults to ``hccl``.
    """

    strategy_name = "ddp_npu"

    def __init__(self, *args: Any, process_group_backend: str | None = HCCL, **kwargs: Any) -> None:
        super().__init__(*args, process_group_backend=process_group_backend, **kwargs)

    def _setup_model(self, model: torch.nn.Module) -> DistributedDataParallel:
        device_ids = self.determine_ddp_device_ids()
        # Same reason as upstream's CUDA stream: DDP's constructor broadcasts parameters; keep that off the
        # default stream of the device so it does not serialise with work already queued there.
        ctx = torch.npu.stream(torch.npu.Stream()) if device_ids is not None else nullcontext()
        with ctx:
            return DistributedDataParallel(module=model, device_ids=device_ids, **self._ddp_kwargs)


class NPUMixedPrecision(MixedPrecision):
    """Automatic mixed precision with ``torch.autocast("npu")`` (``16-mixed`` adds a gradient scaler)."""

    def __init__(self, precision: Literal["16-mixed", "bf16-mixed"], scaler: Any = None) -> None:
        super().__init__(precision, device="npu", scaler=scaler)


def _ddp_strategy_names() -> dict[str, dict[str, Any]]:
    """Registered strategy names that build a plain DDPStrategy, with the arguments they stand for."""
    return {
        name: dict(entry.get("init_params", {}))
        for name, entry in StrategyRegistry.items()
        if entry.get("strategy") is DDPStrategy
    }


def npu_trainer_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Replace string choices Lightning would resolve for CUDA/CPU by NPU objects (see the module docstring).

    ``accelerator``: ``npu``, an :class:`NPUAccelerator`, or ``auto`` when NPUs are present and CUDA is not.
    ``strategy``: ``auto`` becomes a single-device strategy on ``npu:<i>`` (one device, one node) or
    :class:`NPUDDPStrategy`; ``single_device`` the former; any ``ddp*`` name becomes :class:`NPUDDPStrategy`
    with that name's options.
    ``precision``: ``16-mixed``/``bf16-mixed`` (and aliases) become :class:`NPUMixedPrecision` in ``plugins``.
    Strategy objects and other values are passed through as given.
    """
    accelerator = flags.get("accelerator", "auto")
    if accelerator == "auto" and NPUAccelerator.is_available() and not torch.cuda.is_available():
        accelerator = "npu"
    if isinstance(accelerator, str) and accelerator.lower() == "npu":
        accelerator = NPUAccelerator()
    if not isinstance(accelerator, NPUAccelerator):
        return flags
    out = dict(flags, accelerator=accelerator)

    devices = out.get("devices", "auto")
    num_nodes = out.get("num_nodes", 1) or 1
    ids = parse_npu_ids(-1 if devices == "auto" else devices)
    rank_zero_info(f"NPU available: True, using: {len(ids)} NPU(s) per node, {num_nodes} node(s)")
    strategy = out.get("strategy", "auto")
    if isinstance(strategy, str):
        name = strategy.lower()
        ddp_names = _ddp_strategy_names()
        single = name == "single_device" or (name == "auto" and num_nodes == 1 and len(ids) == 1)
        if single:
            strategy = SingleDeviceStrategy(device=torch.device("npu", ids[0]))
        elif name == "auto":
            strategy = NPUDDPStrategy()
        elif name in ddp_names:
            strategy = NPUDDPStrategy(**ddp_names[name])
    out["strategy"] = strategy

    precision = out.get("precision")
    if precision in MIXED_PRECISION:
        plugins = out.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        out["plugins"] = [*plugins, NPUMixedPrecision(MIXED_PRECISION[precision])]
        out["precision"] = None
    return out


def register() -> None:
    """Add ``npu`` to Lightning's accelerator registry and ``ddp_npu`` to its strategy registry (idempotent)."""
    NPUAccelerator.register_accelerators(AcceleratorRegistry)
    StrategyRegistry.register(
        NPUDDPStrategy.strategy_name, NPUDDPStrategy, description="DDP over hccl on Ascend NPUs", override=True
    )
