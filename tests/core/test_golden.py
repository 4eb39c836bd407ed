"""Drift guard: micro weights committed with the features they gave, recomputed through the real entry point.

Each ``tests/golden/<case>/`` (written by ``tools/make_golden.py``) runs a shipped config on one bundled sample.
Decoding, resizing, normalisation and the model's maths all feed the numbers, so an upgrade of PyAV, decord,
torch or transformers that changes any of them fails here, with the case and the tensor named.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tools.make_golden import CASES, GOLDEN, run_case

# float32 throughout; only the order of summation may differ between runs of the same versions.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(sys, "argv", ["lit_features"])
    yield
    torch.set_num_threads(threads)


def test_every_case_is_committed() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == sorted(CASES)
    size = sum(p.stat().st_size for p in GOLDEN.rglob("*") if p.is_file())
    assert size < 400 * 1024, f"tests/golden holds {size // 1024} KiB; keep the cases micro"


@pytest.mark.parametrize("case", sorted(CASES))
def test_features_have_not_drifted(case: str, tmp_path: Path) -> None:
    expected = load_file(GOLDEN / case / "expected.safetensors")
    got = run_case(case, GOLDEN / case / "weights", tmp_path)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{case}/{n}: {m}")
