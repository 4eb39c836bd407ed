"""NPU support without NPU hardware: a fake ``torch_npu`` in a child process, and the path absent on CPU."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, cli_env

PROBE = Path(__file__).with_name("npu_probe.py")


def probe(*args: str, count: int = 8) -> Any:
    """Run the probe with ``count`` fake NPUs (a child process: the fake renames torch's backend for good)."""
    proc = subprocess.run(
        [sys.executable, str(PROBE), *args],
        cwd=REPO_ROOT,
        env=cli_env(FAKE_NPU_COUNT=str(count)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1][len("PROBE ") :])


@pytest.fixture(scope="module")
def probed() -> dict[str, Any]:
    return probe("trainer", count=8)


@pytest.fixture()
def picks(probed: dict[str, Any]) -> dict[str, Any]:
    return probed["trainers"]


def test_one_npu_is_a_single_device_strategy_on_the_npu(picks: dict[str, Any]) -> None:
    one = picks["one_device"]
    assert one["accelerator"] == "NPUAccelerator"
    assert one["strategy"] == "SingleDeviceStrategy" and one["root_device"] == "npu:0"
    assert one["precision_plugin"] == "Precision" and one["world_size"] == 1
    assert picks["device_index"]["root_device"] == "npu:3"
    assert picks["registered"] == ["npu"]


def test_several_npus_run_ddp_over_hccl_with_npu_autocast(picks: dict[str, Any]) -> None:
    two = picks["two_devices_bf16"]
    assert two["strategy"] == "NPUDDPStrategy" and two["backend"] == "hccl"
    assert two["parallel_devices"] == ["npu:0", "npu:1"] and two["world_size"] == 2
    assert two["precision_plugin"] == "NPUMixedPrecision"
    assert (two["precision"], two["autocast_device"], two["has_scaler"]) == ("bf16-mixed", "npu", False)
    assert picks["autocast_inside"] == {"enabled": True, "dtype": "torch.bfloat16"}
    fp16 = picks["fp16_mixed"]
    assert (fp16["precision_plugin"], fp16["autocast_device"], fp16["has_scaler"]) == ("NPUMixedPrecision", "npu", True)
    assert picks["bf16_true"]["precision_plugin"] == "HalfPrecision"


def test_auto_multi_node_and_named_ddp_strategies(picks: dict[str, Any]) -> None:
    auto = picks["auto_all"]  # accelerator auto on a machine with NPUs and no CUDA: all 8 NPUs
    assert (auto["accelerator"], auto["strategy"], auto["world_size"]) == ("NPUAccelerator", "NPUDDPStrategy", 8)
    nodes = picks["two_nodes_one_device"]  # one NPU per node still needs DDP
    assert (nodes["strategy"], nodes["backend"], nodes["world_size"], nodes["num_nodes"]) == (
        "NPUDDPStrategy",
        "hccl",
        2,
        2,
    )
    named = picks["ddp_named_option"]
    assert named["strategy"] == "NPUDDPStrategy" and named["ddp_kwargs"] == {"find_unused_parameters": True}
    cpu = picks["cpu_untouched"]  # other accelerators keep Lightning's own choices
    assert (cpu["accelerator"], cpu["precision_plugin"], cpu["autocast_device"]) == (
        "CPUAccelerator",
        "MixedPrecision",
        "cpu",
    )


def test_accelerator_methods_backend_and_fit_path(probed: dict[str, Any]) -> None:
    out = probed["paths"]
    assert out["setup_teardown_calls"] == [["set_device", "npu:2"], ["empty_cache", None]]
    assert out["stats"]["device"] == "npu:1"
    assert out["parse"] == {"2": [0, 1], "'0,3'": [0, 3], "-1": list(range(8)), "[5]": [5]}
    assert "sees 8 NPU(s)" in out["parse_too_many"]
    assert "needs an npu device" in out["setup_cpu"]
    assert out["auto_device_count"] == 8 and out["is_available"] is True
    assert out["init_process_group"] == {"backend": "hccl", "device_id": "npu:0"}
    wrap = out["fit_wrap"]  # DDP wrapping for fit: on an NPU side stream, never a CUDA stream
    assert wrap["result"] == "wrapped" and wrap["device_ids"] == [0] and wrap["stream_open"] is True
    assert wrap["calls"] == ["Stream", "stream_enter", "stream_exit"]


def test_cli_accelerator_npu_from_any_config(tiny_models: Path) -> None:
    siglip = str(tiny_models / "siglip-so400m-patch14-384")
    flag, overlay = probe(
        "cli", "predict", "--config", "configs/quickstart.yaml", "--model.model_path", siglip,
        "--trainer.accelerator", "npu", "--trainer.devices", "2", "--trainer.precision", "bf16-mixed",
        "++", "predict", "--config", "configs/quickstart.yaml", "--config", "configs/trainer/npu.yaml",
        "--model.model_path", siglip,
    )  # fmt: skip
    assert (flag["accelerator"], flag["strategy"], flag["backend"]) == ("NPUAccelerator", "NPUDDPStrategy", "hccl")
    assert flag["precision_plugin"] == "NPUMixedPrecision" and flag["writer"] == ["FeatureWriter"]
    assert (overlay["accelerator"], overlay["world_size"], overlay["backend"]) == ("NPUAccelerator", 8, "hccl")
    assert overlay["model"] == "VisionTowerFeatures"


def test_without_torch_npu_other_accelerators_pass_through() -> None:
    # That a whole CPU run imports nothing of the NPU path is checked on the multi-node run (test_scale_multinode).
    from lit_features.accelerators import npu_import_error, register_npu, resolve_trainer_flags

    flags = {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed"}
    assert register_npu() is False
    assert resolve_trainer_flags(flags) is flags
    assert resolve_trainer_flags({"accelerator": "auto"}) == {"accelerator": "auto"}
    assert npu_import_error().startswith("ModuleNotFoundError")


def test_asking_for_npu_without_torch_npu_says_how_to_fix(tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_features.accelerators import NPUUnavailableError, resolve_trainer_flags
    from lit_features.cli import run_cli as lit_cli

    with pytest.raises(NPUUnavailableError, match=r"pip install lit_features\[npu\]"):
        resolve_trainer_flags({"accelerator": "npu"})
    monkeypatch.chdir(REPO_ROOT)
    args = ["predict", "--config", "configs/quickstart.yaml", "--config", "configs/trainer/npu.yaml"]
    args += ["--model.model_path", str(tiny_models / "siglip-so400m-patch14-384")]
    with pytest.raises(NPUUnavailableError, match="trainer.accelerator 'npu' needs Ascend's torch_npu"):
        lit_cli(args)  # the model is configured but never loaded: the trainer refuses first


def _printed_config(*args: str) -> dict[str, Any]:
    from lit_features.cli import run_cli as lit_cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        lit_cli(["predict", "--config", "configs/quickstart.yaml", *args, "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize(
    "overlay,expected",
    [
        ("configs/trainer/npu.yaml", {"accelerator": "npu", "devices": "auto", "strategy": "auto"}),
        ("configs/trainer/gpu_ddp.yaml", {"accelerator": "cuda", "devices": "auto", "strategy": "ddp"}),
    ],
)
def test_trainer_overlays_parse_over_a_job_config(
    overlay: str, expected: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    config = _printed_config("--config", overlay)
    assert {k: config["trainer"][k] for k in expected} == expected
    assert config["model"]["class_path"].endswith("VisionTowerFeatures")  # the job itself is unchanged
