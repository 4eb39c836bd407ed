"""End-to-end predict through the real CLI: quickstart, bad input, hangs, manifest errors, fingerprints, resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from lit_features.store import FeatureStore
from tests.conftest import REPO_ROOT, run_cli

CONFIG = str(REPO_ROOT / "configs" / "quickstart.yaml")


def write_manifest(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def predict(tiny_models: Path, manifest: Path, out: Path, *extra: str, check: bool = True):
    args = [
        "predict",
        "--config",
        CONFIG,
        "--model.model_path",
        str(tiny_models / "siglip-so400m-patch14-384"),
        "--data.manifest",
        str(manifest),
        "--writer.output_dir",
        str(out),
        *extra,
    ]
    return run_cli(args, check=check)


def index_rows(out: Path) -> list[dict]:
    return [
        json.loads(line) for p in sorted((out / "index").glob("rank-*.jsonl")) for line in p.read_text().splitlines()
    ]


def test_quickstart_runs_from_a_fresh_checkout_layout(tmp_path: Path) -> None:
    """The README's commands, verbatim, from a folder that looks like a fresh clone."""
    for name in ("configs", "samples", "tools", "lit_features"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    import subprocess
    import sys

    from tests.conftest import cli_env

    subprocess.run(
        [sys.executable, "tools/make_tiny_models.py", "--out", "pretrained_model", "--only", "hf_vision"],
        cwd=tmp_path,
        env=cli_env(),
        check=True,
        capture_output=True,
    )
    proc = run_cli(["predict", "--config", "configs/quickstart.yaml"], cwd=tmp_path)
    assert "STAND-IN" in proc.stderr
    summary = json.loads(run_cli(["inspect", "outputs/quickstart", "--json"], cwd=tmp_path).stdout)
    assert summary["written"] == 6 and summary["failed"] == 0 and summary["stand_in_weights"] is True
    store = FeatureStore(tmp_path / "outputs" / "quickstart")
    key = "media__v_GGSY1Qvo990_mp4"
    assert store[key]["features"].shape[0] == 8
    assert store.meta(key)["frame_indices"] == [0, 51, 101, 152, 202, 253, 303, 354]
    assert store.meta("media__v_GGSY1Qvo990_mp4_cut0-178")["frame_indices"][-1] == 177  # cut honoured
    assert store["media__chelsea_jpg"]["features"].ndim == 2


def make_bad_media(tmp_path: Path, media: Path) -> list[dict]:
    data = (media / "v_GGSY1Qvo990.mp4").read_bytes()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "random.mp4").write_bytes(os.urandom(50_000))
    (tmp_path / "short.mp4").write_bytes(data[: len(data) * 3 // 10])
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    os.mkfifo(tmp_path / "hang.mp4")  # opening it blocks forever: a decoder that never returns
    return [
        {"path": str(media / "v_GGSY1Qvo990.mp4"), "cap": "good video"},
        {"path": str(media / "chelsea.jpg"), "cap": "good image"},
        {"path": "missing.mp4"},
        {"path": "zero.mp4"},
        {"path": "random.mp4"},
        {"path": "short.mp4"},
        {"path": "half.mp4"},
        {"path": "hang.mp4"},
    ]


def test_bad_media_is_recorded_and_good_samples_are_written(tiny_models: Path, media: Path, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.json", make_bad_media(tmp_path, media))
    out = tmp_path / "store"
    predict(tiny_models, manifest, out, "--data.decode_timeout_s", "4", "--data.batch_size", "3")
    rows = {r["key"]: r for r in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert set(rows) == {"missing_mp4", "zero_mp4", "random_mp4", "short_mp4", "half_mp4", "hang_mp4"}
    for row in rows.values():
        assert {"key", "source", "stage", "error", "message"} <= set(row) and row["stage"] == "decode"
    assert rows["hang_mp4"]["error"] == "DecodeTimeout"
    assert "header says 355" in rows["half_mp4"]["message"]  # PyAV's silent short read is caught
    assert sorted(r["key"] for r in index_rows(out)) == ["media__chelsea_jpg", "media__v_GGSY1Qvo990_mp4"]
    summary = json.loads(run_cli(["inspect", str(out), "--json"]).stdout)
    assert summary["written"] == 2 and summary["failed"] == 6
    groups = summary["failures_by_error"]
    assert sum(g["count"] for g in groups.values()) == 6
    assert groups["decode/DecodeTimeout"] == {"count": 1, "keys": ["hang_mp4"]}
    assert groups["decode/FileNotFoundError"]["keys"] == ["missing_mp4"]
    human = run_cli(["inspect", str(out)]).stdout
    assert "decode/DecodeTimeout" in human and "written     2 samples" in human
    # a rerun skips what is settled and does not wait on the hanging file again
    proc = predict(tiny_models, manifest, out, "--data.decode_timeout_s", "4")
    assert len(index_rows(out)) == 2 and "0 of 8 samples to do (8 already in the store or failed before)" in proc.stderr


def test_broken_manifest_fails_before_any_model_loads(tiny_models: Path, tmp_path: Path) -> None:
    # Weights that cannot load: if the model were loaded first, the error would be about them.
    broken_weights = tmp_path / "weights"
    shutil.copytree(tiny_models / "siglip-so400m-patch14-384", broken_weights)
    (broken_weights / "model.safetensors").write_bytes(b"not a safetensors file")
    manifest = write_manifest(tmp_path / "m.json", [{"path": "a.mp4"}, {"cap": "no path here"}])
    proc = run_cli(
        [
            "predict",
            "--config",
            CONFIG,
            "--model.model_path",
            str(broken_weights),
            "--data.manifest",
            str(manifest),
            "--writer.output_dir",
            str(tmp_path / "out"),
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert f"{manifest}, entry 1, field 'path'" in proc.stderr
    assert "safetensors" not in proc.stderr.split("ManifestError")[-1]
    missing = run_cli(
        ["predict", "--config", CONFIG, "--model.model_path", str(tmp_path / "nope"), "--data.manifest", str(manifest)],
        check=False,
    )
    assert missing.returncode != 0 and "make_tiny_models.py" in missing.stderr


def test_fingerprint_refusal_overwrite_and_resume(tiny_models: Path, media: Path, tmp_path: Path) -> None:
    entries = [{"path": str(media / "v_GGSY1Qvo990.mp4"), "cut": [i * 40, i * 40 + 40]} for i in range(6)]
    manifest = write_manifest(tmp_path / "m.json", entries)
    out = tmp_path / "store"
    predict(tiny_models, manifest, out, "--data.limit", "2")
    assert len(index_rows(out)) == 2
    first = {r["key"]: FeatureStore(out)[r["key"]]["features"] for r in index_rows(out)}
    predict(tiny_models, manifest, out)  # resume: only the remaining four
    rows = index_rows(out)
    assert len(rows) == 6 and len({r["key"] for r in rows}) == 6
    store = FeatureStore(out)
    for key, tensor in first.items():
        assert torch.equal(store[key]["features"], tensor)
    refused = predict(tiny_models, manifest, out, "--model.num_frames", "4", check=False)
    assert refused.returncode != 0
    assert "different configuration" in refused.stderr and "params.num_frames: 8 -> 4" in refused.stderr
    predict(tiny_models, manifest, out, "--model.num_frames", "4", "--writer.overwrite", "true")
    store = FeatureStore(out)
    assert len(store) == 6 and all(store[k]["features"].shape[0] == 4 for k in store)


def test_two_process_ddp_writes_each_key_once(tiny_models: Path, media: Path, tmp_path: Path) -> None:
    entries = [{"path": str(media / "v_GGSY1Qvo990.mp4"), "cut": [i * 30, i * 30 + 30]} for i in range(7)]
    manifest = write_manifest(tmp_path / "m.json", entries)
    out = tmp_path / "store"
    predict(
        tiny_models,
        manifest,
        out,
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.accelerator",
        "cpu",
        "--data.num_workers",
        "1",
    )
    rows = index_rows(out)
    assert sorted(r["key"] for r in rows) == sorted({r["key"] for r in rows}) and len(rows) == 7
    assert {p.name for p in (out / "index").glob("rank-*.jsonl")} == {"rank-0.jsonl", "rank-1.jsonl"}
    merged = (out / "index.jsonl").read_text().splitlines()
    assert len(merged) == 7
