"""VFM configs through the real entry point: one-decode multi-model runs, upstream layout, the run report.

That every shipped config parses is tests/core/test_registry.py's job."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lit_features.cli import run_cli as lightning_cli
from lit_features.extractors.videomae_v2 import VideoMAEv2Features
from lit_features.extractors.vjepa2 import VJEPA2Features
from lit_features.store.fingerprint import fingerprint_hash
from lit_features.store.reader import FeatureStore
from lit_features.store.vfm_report import write_failed_videos
from tests.conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(sys, "argv", ["lit_features"])  # LightningCLI gets its arguments as a list here
    yield
    torch.set_num_threads(threads)


def predict(*args: str) -> None:
    lightning_cli(["predict", *args, "--trainer.enable_progress_bar", "false", "--data.num_workers", "0"])


@pytest.fixture()
def manifest(tmp_path, media) -> Path:
    entries = [
        {"path": str(media / "v_GGSY1Qvo990.mp4"), "cap": "People play a game outdoors."},
        {"path": str(media / "realshort.mp4"), "cap": "A very short clip."},
        {"path": str(tmp_path / "broken.mp4"), "cap": "Not a video."},
    ]
    (tmp_path / "broken.mp4").write_bytes(b"this is not an mp4 file" * 10)
    file = tmp_path / "videos.json"
    file.write_text(json.dumps(entries))
    return file


def test_several_models_over_one_decode(tiny_models, manifest, tmp_path, caplog):
    out = tmp_path / "vfm"
    predict(
        "--config",
        str(REPO_ROOT / "configs" / "vfm_multi.yaml"),
        "--model.models",
        "[VideoMAEv2, VJEPA2, DINOv2]",
        "--model.model_root",
        str(tiny_models),
        "--model.model_paths",
        json.dumps({"DINOv2": str(tmp_path / "no-dinov2-here")}),
        "--model.skip_missing",
        "true",
        "--data.manifest",
        str(manifest),
        "--writer.output_dir",
        str(out),
    )
    assert "skipping DINOv2: weights not found" in caplog.text
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["VJEPA2", "VideoMAEv2"]
    singles = {
        "VideoMAEv2": VideoMAEv2Features(str(tiny_models / "vit_b_k710_dl_from_giant.pth")),
        "VJEPA2": VJEPA2Features(str(tiny_models / "vjepa2-vitl-fpc64-256")),
    }
    for name, single in singles.items():
        store = FeatureStore(out / name)
        assert len(store) == 2
        # The sub-store is exactly what the single-model config would write (and can resume it).
        assert store.fingerprint == fingerprint_hash({**single.fingerprint(), "writer": {"codec": "safetensors"}})
        assert store.info["tiny_random_stand_in"] is True
        for key in store:
            assert list(store[key]) == ["feature"]
            assert list(store[key]["feature"].shape) == [24, 10, 15, 32]
            meta = store.meta(key)
            assert meta["model"] == name and meta["video"].endswith(".mp4") and meta["caption"]
        assert [f["source"].endswith("broken.mp4") for f in store.failures()] == [True]  # decode failure, every store
    summary = json.loads((out / "vfm_summary.json").read_text())["models"]
    assert summary["VideoMAEv2"]["feature_dim"] == 32 and summary["VideoMAEv2"]["feature_shape"] == [24, 10, 15, 32]
    assert summary["VJEPA2"]["written"] == 2 and summary["VJEPA2"]["failed"] == 1
    assert "skipped" in summary["DINOv2"]
    # Upstream's report, line for line (skipped models are not listed, as upstream skips them).
    assert (out / "vfm_dimensions.txt").read_text() == (
        "VFM feature dimensions report\n"
        f"video_dir: {manifest}\n"
        "num_videos: 3\n"
        "num_frames(sampled): 48\n\n"
        "- VideoMAEv2\n  sample_feature_shape: (24, 10, 15, 32)\n  feature_dimension(C): 32\n\n"
        "- VJEPA2\n  sample_feature_shape: (24, 10, 15, 32)\n  feature_dimension(C): 32\n\n"
    )
    # Upstream's failed_videos.txt in each model's folder: "<video file name>: <error>", no trailing newline.
    for name in ("VideoMAEv2", "VJEPA2"):
        lines = (out / name / "failed_videos.txt").read_text().split("\n")
        assert len(lines) == 1 and lines[0].startswith("broken.mp4: ") and len(lines[0]) > len("broken.mp4: ")


def test_single_model_config_writes_upstreams_pt_layout_and_resumes(tiny_models, manifest, tmp_path):
    out = tmp_path / "videomaev2"
    args = [
        "--config",
        str(REPO_ROOT / "configs" / "vfm_videomaev2.yaml"),
        "--model.model_path",
        str(tiny_models / "vit_b_k710_dl_from_giant.pth"),
        "--data.manifest",
        str(manifest),
        "--writer.output_dir",
        str(out),
        "--writer.codec",
        "pt",
        "--writer.path_template",
        "{stem}{ext}",
    ]
    predict(*args)
    sample = torch.load(out / "v_GGSY1Qvo990.pt", map_location="cpu", weights_only=True)
    assert sample["feature"].shape == (24, 10, 15, 32) and sample["feature"].dtype == torch.float32
    assert (sample["caption"], sample["video"], sample["model"]) == (
        "People play a game outdoors.",
        "v_GGSY1Qvo990.mp4",
        "VideoMAEv2",
    )
    assert len(sample["frame_indices"]) == 48
    summary = json.loads((out / "vfm_summary.json").read_text())["models"]["VideoMAEv2"]
    assert (summary["written"], summary["failed"]) == (2, 1)
    # The model folder as upstream leaves it: <stem>.pt per video, failed_videos.txt, the dimensions report.
    assert (out / "failed_videos.txt").read_text().startswith("broken.mp4: ")
    assert "- VideoMAEv2\n  sample_feature_shape: (24, 10, 15, 32)\n" in (out / "vfm_dimensions.txt").read_text()
    stamp = (out / "v_GGSY1Qvo990.pt").stat().st_mtime_ns
    predict(*args)  # everything is done or failed: nothing is recomputed
    assert (out / "v_GGSY1Qvo990.pt").stat().st_mtime_ns == stamp


def test_report_describes_a_run_that_found_nothing_left_to_do(tiny_models, manifest, tmp_path):
    """Lightning skips every predict hook when nothing is left to do; the writer still rewrites the report, so
    it describes this run's inputs, not the last run that computed something."""
    out = tmp_path / "videomaev2"
    model = ["--model.model_path", str(tiny_models / "vit_b_k710_dl_from_giant.pth")]
    config = ["--config", str(REPO_ROOT / "configs" / "vfm_videomaev2.yaml"), *model, "--writer.output_dir", str(out)]
    predict(*config, "--data.manifest", str(manifest))
    assert json.loads((out / "vfm_summary.json").read_text())["num_videos"] == 3
    subset = tmp_path / "one_video.json"
    subset.write_text(json.dumps(json.loads(manifest.read_text())[:1]))  # already in the store
    stamp = (out / "index" / "rank-0.jsonl").stat().st_mtime_ns
    predict(*config, "--data.manifest", str(subset))
    assert (out / "index" / "rank-0.jsonl").stat().st_mtime_ns == stamp  # nothing was computed
    summary = json.loads((out / "vfm_summary.json").read_text())
    assert (summary["video_dir"], summary["num_videos"]) == (str(subset), 1)
    assert summary["models"]["VideoMAEv2"]["written"] == 2  # the whole store, as before
    assert f"video_dir: {subset}\nnum_videos: 1\n" in (out / "vfm_dimensions.txt").read_text()


def test_failed_videos_file_follows_the_store(tmp_path):
    """One line per failure, as upstream writes it; a run that leaves no failure removes the stale file."""
    rows = [
        {"key": "a", "source": "/data/clips/a.mp4", "error": "DecodeError", "message": "moov atom\nnot found"},
        {"key": "b_cut0-10", "source": None, "error": "ShortClipError", "message": ""},
    ]
    write_failed_videos(tmp_path, rows)
    assert (tmp_path / "failed_videos.txt").read_text() == "a.mp4: moov atom not found\nb_cut0-10: ShortClipError"
    write_failed_videos(tmp_path, [])
    assert not (tmp_path / "failed_videos.txt").exists()
