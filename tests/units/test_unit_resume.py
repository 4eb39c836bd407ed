"""The store's resume rules hold per unit: a claimed unit's rows are checked as a whole store's were."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lit_features.store import layout
from lit_features.store.resume import SourceMismatchError
from lit_features.store.state import StoreState
from lit_features.units.claims import UnitClaimer
from lit_features.units.cutting import cut_manifests
from lit_features.units.job import UnitJob
from lit_features.units.unit_list import claim_dir


def _job(tmp_path: Path, n: int = 5):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"v/{i}.mp4"}) + "\n" for i in range(n)))
    store = tmp_path / "store"
    units = cut_manifests([manifest], store / "units", n, None)
    units.write()
    claimer = UnitClaimer(store, units, "job-a", world_size=1, wait=False)
    return UnitJob(store, {"": StoreState(store, {}, {})}, units, claimer, False, 3), store


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_claimed_unit_resumes_by_the_store_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    job, store = _job(tmp_path)
    (claim, samples, todo) = job.claim()
    assert todo == [0, 1, 2, 3, 4]
    by_key = {s.key: s for s in samples}
    k = [s.key for s in samples]
    for key in k[:2]:
        (store / f"{key}.bin").write_bytes(b"1234")
    g0 = claim_dir(store, claim[0], claim[1])
    _write(layout.rank_file(g0, layout.INDEX_DIR, 0), [
        {"key": key, "file": f"{key}.bin", "source": by_key[key].source, "bytes": 4} for key in k[:3]
    ])  # fmt: skip
    _write(layout.rank_file(g0, layout.FAILURES_DIR, 0), [
        {"key": k[3], "source": by_key[k[3]].source, "stage": "write", "error": "OSError", "message": "ENOSPC"},
        {"key": k[4], "source": by_key[k[4]].source, "stage": "decode", "error": "DecodeError", "message": "bad"},
    ])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        left = job.todo(claim[0], claim[1] + 1, samples)
    # k2's file is gone: redone; the write failure is retried; the decode failure stays settled.
    assert left == [2, 3] and "1 stored samples are recomputed" in caplog.text


def test_a_key_stored_from_another_source_is_refused(tmp_path: Path) -> None:
    job, store = _job(tmp_path)
    (claim, samples, _) = job.claim()
    (store / "x.bin").write_bytes(b"1")
    _write(layout.rank_file(claim_dir(store, *claim), layout.INDEX_DIR, 0), [
        {"key": samples[0].key, "file": "x.bin", "source": "/elsewhere/0.mp4", "bytes": 1}
    ])  # fmt: skip
    with pytest.raises(SourceMismatchError, match="/elsewhere/0.mp4"):
        job.todo(claim[0], claim[1] + 1, samples)


def test_a_sample_that_kills_its_worker_three_times_is_poison(tmp_path: Path) -> None:
    job, store = _job(tmp_path)
    (claim, samples, _) = job.claim()
    crash = {"key": samples[0].key, "source": samples[0].source, "reason": "killed by signal: Segmentation fault"}
    for generation in range(3):  # three claims, each ended by that sample
        _write(layout.rank_file(claim_dir(store, claim[0], generation), layout.CRASHES_DIR, 0), [crash])
    assert job.todo(claim[0], 3, samples) == [1, 2, 3, 4]
    poison = list(layout.read_jsonl_rows(claim_dir(store, claim[0], 3) / "failures" / "rank-0-poison.jsonl"))
    assert [r["error"] for r in poison] == ["RepeatedWorkerCrash"]
