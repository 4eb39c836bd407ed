"""What a run prints: each message once, no library noise, a first line and a last line; rank 0 speaks."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.cli.conftest import messages, quickstart_args
from tests.conftest import run_cli

NOISE = ("Tip:", "deprecated", "GPU available", "TPU available", "Seed set to", "No seed found", "distributed_backend")


def log_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if re.match(r"(INFO|WARNING|ERROR) ", line)]


def test_quickstart_prints_each_message_once_between_a_first_and_a_last_line(quickstart):
    lines = messages(quickstart["proc"])
    repeated = {line: n for line, n in Counter(lines).items() if n > 1}
    assert not repeated, repeated
    assert not [line for line in lines if any(word in line for word in NOISE)]
    logs = log_lines(lines)
    store = quickstart["store"]
    firsts = [line for line in logs if line.startswith("INFO lit_features: predict vision_tower (")]
    assert len(firsts) == 1, logs
    assert f"-> {store}: 6 of 6 samples to do (0 already in the store or failed before), 1 device (cpu)" in firsts[0]
    assert logs[-1].startswith("INFO lit_features: done: 6 written, 0 failed, 0 skipped (already in the store) in ")
    assert logs[-1].endswith(f"samples/s -> {store}")
    # Only the stand-in warning and the two lines: what happens in between is the progress bar.
    assert [line.split(":")[0] for line in logs] == ["WARNING lit_features", "INFO lit_features", "INFO lit_features"]


def test_rerun_with_a_broken_clip_says_what_was_left_and_where_its_failure_is_listed(quickstart, tiny_models, tmp_path):
    broken = tmp_path / "more.json"
    broken.write_text(json.dumps([{"path": "gone.mp4", "cap": "a clip that was deleted"}]))
    args = quickstart_args(tiny_models, quickstart["store"])
    args += ["--data.manifest", json.dumps(["samples/quickstart.json", str(broken)])]
    logs = log_lines(messages(run_cli(args, OMP_NUM_THREADS="1")))
    store = quickstart["store"]
    assert any(f"-> {store}: 1 of 7 samples to do (6 already in the store or failed before)" in line for line in logs)
    assert logs[-1] == (
        f"INFO lit_features: done: 0 written, 1 failed, 6 skipped (already in the store) -> {store}; "
        f"failures are listed in {store / 'failures.jsonl'} (python -m lit_features inspect {store})"
    )
    assert "gone.mp4" in (store / "failures.jsonl").read_text()


@pytest.mark.slow
def test_two_device_run_speaks_once_through_rank_0(tiny_models, tmp_path):
    images = tmp_path / "images.json"
    media = Path("samples/media").resolve()
    images.write_text(json.dumps([{"path": str(media / "chelsea.jpg")}, {"path": str(media / "astronaut.png")}]))
    args = quickstart_args(tiny_models, tmp_path / "store") + ["--data.manifest", str(images)]
    args += ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]
    lines = messages(run_cli(args, OMP_NUM_THREADS="1"))
    repeated = {line: n for line, n in Counter(lines).items() if n > 1}
    assert not repeated, repeated  # e.g. the stand-in warning of every rank
    logs = log_lines(lines)
    assert sum("TINY RANDOM STAND-IN" in line for line in logs) == 1
    assert any("2 of 2 samples to do" in line and line.endswith("2 devices (cpu, ddp)") for line in logs), logs
    assert logs[-1].startswith("INFO lit_features: done: 2 written, 0 failed")
