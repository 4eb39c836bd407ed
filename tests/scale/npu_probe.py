"""Child-process probe: with a fake ``torch_npu`` installed, report what Lightning and lit_features pick.

    python tests/scale/npu_probe.py trainer             # Trainer choices per case, accelerator methods, DDP paths
    python tests/scale/npu_probe.py cli ARGS [++ ARGS]  # run `lit_features ARGS` up to trainer.predict, report

Run only as a subprocess: installing the fake renames torch's private-use backend for the whole process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.scale import fake_npu  # noqa: E402

fake_npu.install()

import torch  # noqa: E402

TRAINER_CASES: dict[str, dict[str, Any]] = {
    "one_device": {"accelerator": "npu", "devices": 1},
    "device_index": {"accelerator": "npu", "devices": [3]},
    "two_devices_bf16": {"accelerator": "npu", "devices": 2, "precision": "bf16-mixed"},
    "auto_all": {"accelerator": "auto", "devices": "auto"},
    "two_nodes_one_device": {"accelerator": "npu", "devices": 1, "num_nodes": 2},
    "ddp_named_option": {"accelerator": "npu", "devices": "0,1", "strategy": "ddp_find_unused_parameters_true"},
    "fp16_mixed": {"accelerator": "NPU", "devices": 1, "precision": "16-mixed"},
    "bf16_true": {"accelerator": "npu", "devices": 1, "precision": "bf16-true"},
    "cpu_untouched": {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed"},
}


def describe(trainer: Any) -> dict[str, Any]:
    strategy = trainer.strategy
    plugin = trainer.precision_plugin
    backend = strategy._get_process_group_backend() if hasattr(strategy, "_get_process_group_backend") else None
    return {
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(strategy).__name__,
        "root_device": str(strategy.root_device),
        "parallel_devices": [str(d) for d in getattr(strategy, "parallel_devices", None) or []],
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "backend": backend,
        "ddp_kwargs": getattr(strategy, "_ddp_kwargs", None),
        "precision_plugin": type(plugin).__name__,
        "precision": getattr(plugin, "precision", None),
        "autocast_device": getattr(plugin, "device", None),
        "has_scaler": getattr(plugin, "scaler", None) is not None,
    }


def probe_trainers() -> dict[str, Any]:
    from lit_features.cli import FeatureTrainer

    out = {}
    for name, flags in TRAINER_CASES.items():
        trainer = FeatureTrainer(logger=False, enable_progress_bar=False, enable_model_summary=False, **flags)
        out[name] = describe(trainer)
    # Entering NPU autocast must work through the plugin (torch checks the registered backend module).
    trainer = FeatureTrainer(accelerator="npu", devices=1, precision="bf16-mixed", logger=False)
    with trainer.precision_plugin.forward_context():
        out["autocast_inside"] = {
            "enabled": torch.is_autocast_enabled("npu"),
            "dtype": str(torch.get_autocast_dtype("npu")),
        }
    out["registered"] = sorted(
        n for n in __import__("lightning.pytorch.accelerators", fromlist=["x"]).AcceleratorRegistry if n == "npu"
    )
    return out


def probe_paths() -> dict[str, Any]:
    import lightning.pytorch.strategies.ddp as ddp_module
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    import lit_features.accelerators.npu as npu
    from lit_features.cli import FeatureTrainer

    out: dict[str, Any] = {}
    acc = npu.NPUAccelerator()
    fake_npu.CALLS.clear()
    acc.setup_device(torch.device("npu", 2))
    acc.teardown()
    out["setup_teardown_calls"] = list(fake_npu.CALLS)
    out["stats"] = acc.get_device_stats(torch.device("npu", 1))
    out["parse"] = {
        "2": acc.parse_devices(2),
        "'0,3'": acc.parse_devices("0,3"),
        "-1": acc.parse_devices(-1),
        "[5]": acc.parse_devices([5]),
    }
    try:
        acc.parse_devices(9)
        out["parse_too_many"] = None
    except MisconfigurationException as err:
        out["parse_too_many"] = str(err)
    try:
        acc.setup_device(torch.device("cpu"))
        out["setup_cpu"] = None
    except MisconfigurationException as err:
        out["setup_cpu"] = str(err)
    out["auto_device_count"] = acc.auto_device_count()
    out["is_available"] = acc.is_available()

    # DDP: the process group is created with hccl on this rank's NPU.
    trainer = FeatureTrainer(accelerator="npu", devices=2, logger=False)
    seen: dict[str, Any] = {}

    def fake_init(env: Any, backend: str, **kwargs: Any) -> None:
        seen.update(backend=backend, device_id=str(kwargs.get("device_id")))

    ddp_module._init_dist_connection = fake_init
    trainer.strategy.setup_distributed()
    out["init_process_group"] = seen

    # Fit path: wrapping in DDP must use an NPU side stream and never touch CUDA streams.
    def no_cuda_stream(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.cuda.Stream used on the NPU path")

    torch.cuda.Stream = no_cuda_stream
    wrapped: dict[str, Any] = {}

    def fake_ddp(module: Any, device_ids: Any = None, **kwargs: Any) -> str:
        wrapped.update(device_ids=device_ids, kwargs=kwargs, stream_open=fake_npu.CALLS[-1][0] == "stream_enter")
        return "wrapped"

    npu.DistributedDataParallel = fake_ddp
    fake_npu.CALLS.clear()
    result = trainer.strategy._setup_model(torch.nn.Linear(2, 2))
    out["fit_wrap"] = {**wrapped, "result": result, "calls": [c[0] for c in fake_npu.CALLS]}
    return out


def probe_cli(args: list[str]) -> list[dict[str, Any]]:
    """One report per ``++``-separated command line."""
    from lit_features import __main__ as entry
    from lit_features.cli import FeatureTrainer

    runs: list[dict[str, Any]] = []

    def record_predict(self: Any, model: Any = None, dataloaders: Any = None, datamodule: Any = None, **kw: Any):
        seen = describe(self)
        seen["model"] = type(model).__name__
        seen["writer"] = [type(c).__name__ for c in self.callbacks if type(c).__name__ == "FeatureWriter"]
        runs.append(seen)

    FeatureTrainer.predict = record_predict
    command: list[str] = []
    for arg in [*args, "++"]:
        if arg == "++":
            entry.main(command)
            command = []
        else:
            command.append(arg)
    return runs


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    result = {"trainers": probe_trainers(), "paths": probe_paths()} if mode == "trainer" else probe_cli(rest)
    print("PROBE " + json.dumps(result, default=str))
