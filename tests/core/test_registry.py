"""Tests driven by the registry and the configs folder: what is registered or shipped is tested, without a list here.

* every ``configs/**/*.yaml`` parses through the real CLI (``--print_config``);
* every registered extractor has a shipped config and a stand-in run (``tools/stand_in_runs.py``), loads its
  tiny stand-in through the loader real weights use, writes one bundled sample that keeps the record contract
  (index row, tensors as recorded, finite), and a second run finds the same fingerprint (it resumes instead of
  refusing the store).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_features.cli import run_cli as lightning_cli
from lit_features.extractors import EXTRACTORS
from lit_features.store.fingerprint import fingerprint_hash
from lit_features.store.reader import FeatureStore
from tests.conftest import REPO_ROOT
from tools.stand_in_runs import RUNS, predict, prepare_scratch, run_args

CONFIGS = sorted(p.relative_to(REPO_ROOT / "configs") for p in (REPO_ROOT / "configs").rglob("*.yaml"))


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(sys, "argv", ["lit_features"])  # LightningCLI gets its arguments as a list here
    yield
    torch.set_num_threads(threads)


def subcommand(config: dict) -> str:
    """``fit`` for a config whose model trains (it has an optimizer), ``predict`` for extractors."""
    return "fit" if "lr" in (config.get("model", {}).get("init_args") or {}) else "predict"


@pytest.mark.parametrize("name", [str(c) for c in CONFIGS])
def test_shipped_config_parses(name: str) -> None:
    path = REPO_ROOT / "configs" / name
    config = yaml.safe_load(path.read_text())
    args = ["--config", str(path)]
    if "model" not in config:  # an overlay (e.g. trainer/gpu_ddp.yaml): parsed on top of the quickstart job
        args = ["--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), *args]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        lightning_cli([subcommand(config), *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(out.getvalue())
    # What the file sets is what the CLI parsed (an overlay's trainer settings included).
    for section in ("model", "data"):
        for key, value in ((config.get(section) or {}).get("init_args") or {}).items():
            assert printed[section]["init_args"][key] == value, (section, key)
    for key, value in (config.get("trainer") or {}).items():
        if not isinstance(value, (dict, list)):
            assert printed["trainer"][key] == value, ("trainer", key)


def extractor_of(config: str) -> str:
    """The registry name of the extractor a shipped config runs."""
    class_path = yaml.safe_load((REPO_ROOT / "configs" / f"{config}.yaml").read_text())["model"]["class_path"]
    return next(name for name, cls in EXTRACTORS.items() if f"{cls.__module__}.{cls.__qualname__}" == class_path)


def test_every_extractor_has_a_config_and_a_stand_in_run() -> None:
    missing = sorted(set(EXTRACTORS) - set(RUNS))
    assert not missing, f"registered extractors without a stand-in run in tools/stand_in_runs.py: {missing}"
    unknown = sorted(set(RUNS) - set(EXTRACTORS))
    assert not unknown, f"tools/stand_in_runs.py names extractors that are not registered: {unknown}"
    for name, run in RUNS.items():
        assert extractor_of(run.config) == name, f"configs/{run.config}.yaml does not run {name}"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_extractor_runs_on_its_stand_in(name: str, tiny_models: Path, tmp_path: Path) -> None:
    prepare_scratch(tmp_path, tiny_models, RUNS[name].needs)
    out = tmp_path / "out"
    with contextlib.chdir(tmp_path):
        assert predict(run_args(name, tmp_path, out)) == 0
    metas = sorted(out.rglob("store.json"))
    assert metas, f"{name} wrote no store"
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        assert meta["extractor"] == name and meta["tiny_random_stand_in"] is True
        assert meta["fingerprint_hash"] == fingerprint_hash(meta["fingerprint"])
        store = FeatureStore(meta_path.parent)
        assert len(store) == 1 and store.failures() == [], (name, store.failures())
        (key,) = store.keys()
        row = store.row(key)
        assert {"key", "file", "source", "shapes", "dtypes", "bytes"} <= set(row)
        assert store.problem(key, full=True) is None  # files decode to the recorded names, shapes and dtypes
        tensors = store[key]
        assert set(tensors) == set(row["shapes"]) and tensors
        for tensor_name, tensor in tensors.items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor.float()).all(), (name, tensor_name)
        json.dumps(store.meta(key))  # metadata is plain JSON
    # The same configuration in a new process state gives the same fingerprint: the rerun resumes the store
    # (nothing left to do) instead of refusing it as another configuration's.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("index/rank-*.jsonl")}
    with contextlib.chdir(tmp_path):
        assert predict([*run_args(name, tmp_path, out), "--data.limit", "0"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("index/rank-*.jsonl")} == stamps
