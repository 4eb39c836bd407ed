"""Seed 001 interchange: frame-index rounding (round by default, floor on request, recorded), and the
``features_hf.npz`` / ``features_packing.npz`` / ``metadata.json`` folder written from two OneVision stores."""

import json

import numpy as np
import pytest
import torch

from lit_features.cli import run_cli as run_lightning
from lit_features.data.sampling import FrameSampling, uniform_indices
from lit_features.extractors.onevision import OneVisionFeatures
from lit_features.store.fingerprint import describe_difference
from lit_features.store.reader import FeatureStore
from lit_features.store.writer import StoreMismatchError
from tests.conftest import MEDIA, REPO_ROOT, run_cli

pytestmark = [
    pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
    pytest.mark.filterwarnings("ignore:No seed found"),
]

ONEVISION = "OneVision-Encoder-Base"
MEDIA_FILES = ["chelsea.jpg", "astronaut.png", "realshort.mp4", "v_GGSY1Qvo990.mp4"]
VIDEO_355 = "media__v_GGSY1Qvo990_mp4"  # the bundled 355-frame clip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def predict(config, model_path, manifest, out, *extra):
    run_lightning(
        [
            "predict",
            "--config",
            str(REPO_ROOT / "configs" / f"{config}.yaml"),
            "--model.model_path",
            str(model_path),
            "--model.dtype",
            "float32",
            "--data.manifest",
            str(manifest),
            "--data.root",
            str(MEDIA.parent),
            "--data.num_workers",
            "0",
            "--writer.output_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ]
    )
    return out


@pytest.fixture(scope="module")
def stores(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("seed001")
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps([{"path": f"media/{name}"} for name in MEDIA_FILES]))
    weights = tiny_models / ONEVISION
    return {
        "manifest": manifest,
        "hf": predict("onevision_features", weights, manifest, root / "hf"),
        "packing": predict("onevision_packed", weights, manifest, root / "packing"),
        "floor": predict("onevision_features", weights, manifest, root / "floor", "--model.frame_rounding", "floor"),
    }


# --- frame indices ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "rounded", "floored"),
    [
        (240, [0, 34, 68, 102, 137, 171, 205, 239], [0, 34, 68, 102, 136, 170, 204, 239]),
        (355, [0, 51, 101, 152, 202, 253, 303, 354], [0, 50, 101, 151, 202, 252, 303, 354]),
    ],
)
def test_round_and_floor_rules(frames, rounded, floored):
    # The two rules written out: round(i * (n-1) / 7) and floor(i * (n-1) / 7), computed exactly in integers.
    assert rounded == [(2 * i * (frames - 1) + 7) // 14 for i in range(8)]
    assert floored == [i * (frames - 1) // 7 for i in range(8)]
    assert uniform_indices(frames, 8) == rounded
    assert uniform_indices(frames, 8, rounding="floor") == floored
    assert FrameSampling("uniform", 8, rounding="floor").select(frames, 30.0)[0] == floored
    # Inside a cut, the rule applies to the cut's frames and is offset by its start.
    assert FrameSampling("uniform", 8, rounding="floor").select(frames + 10, 30.0, [10, 10 + frames])[0] == [
        i + 10 for i in floored
    ]


def test_floor_is_recorded_and_selects_other_frames(stores, tiny_models):
    floor, default = FeatureStore(stores["floor"]), FeatureStore(stores["hf"])
    assert floor.meta(VIDEO_355)["frame_indices"] == [0, 50, 101, 151, 202, 252, 303, 354]
    assert default.meta(VIDEO_355)["frame_indices"] == [0, 51, 101, 152, 202, 253, 303, 354]
    assert (floor.meta(VIDEO_355)["frame_rounding"], default.meta(VIDEO_355)["frame_rounding"]) == ("floor", "round")
    fp_floor, fp_default = floor.info["fingerprint"], default.info["fingerprint"]
    assert fp_floor["params"]["frame_rounding"] == "floor" and fp_floor["preprocess"]["frame_rounding"] == "floor"
    # The default leaves the fingerprint as it was before the option existed (round was the only rule).
    assert "frame_rounding" not in json.dumps(fp_default)
    changed = describe_difference(fp_default, fp_floor).splitlines()
    assert sorted(line.split(":")[0].strip() for line in changed) == [
        "params.frame_rounding",
        "preprocess.frame_rounding",
    ]
    # Other frames, other features; images are untouched by the rule.
    assert not torch.equal(floor[VIDEO_355]["features"], default[VIDEO_355]["features"])
    assert torch.equal(floor["media__chelsea_jpg"]["features"], default["media__chelsea_jpg"]["features"])
    # The extractor's default is the rounding rule.
    assert OneVisionFeatures(str(tiny_models / ONEVISION)).preprocessor().frame_rounding == "round"


def test_a_round_run_into_a_floor_store_is_refused(stores, tiny_models):
    with pytest.raises(StoreMismatchError, match=r"params\.frame_rounding: 'floor' -> '<absent>'"):
        predict("onevision_features", tiny_models / ONEVISION, stores["manifest"], stores["floor"])


# --- the seed-001 folder ---------------------------------------------------------------------------------------


def test_export_writes_the_upstream_files_and_verify_reads_them(stores, tmp_path):
    out = tmp_path / "features"
    run_cli(["export-npz", str(stores["hf"]), str(stores["packing"]), "--output_dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["features_hf.npz", "features_packing.npz", "metadata.json"]
    hf_store, packing_store = FeatureStore(stores["hf"]), FeatureStore(stores["packing"])
    # What the upstream verification tool reads: np.load of both files, json of the metadata.
    hf, packing = np.load(out / "features_hf.npz"), np.load(out / "features_packing.npz")
    metadata = json.loads((out / "metadata.json").read_text())
    assert sorted(hf.files) == sorted(packing.files) == hf_store.keys()
    for key in hf.files:
        a, b = hf[key], packing[key]
        assert a.dtype == b.dtype == np.float32
        stored = hf_store[key]["features"]
        assert a.shape == (1, stored.numel() // 64, 64) and b.shape == a.shape[1:]
        np.testing.assert_array_equal(a[0], stored.reshape(-1, 64).numpy())
        np.testing.assert_array_equal(b, packing_store[key]["features"].reshape(-1, 64).numpy())
        assert metadata["features"]["hf"][key] == list(a.shape)
        assert metadata["features"]["packing"][key] == list(b.shape)
    assert metadata["hf_model_path"].endswith(ONEVISION) and metadata["packing_model_path"].endswith(ONEVISION)
    assert (metadata["num_frames"], metadata["device"]) == (8, "cpu")
    video, image = metadata["inputs"][VIDEO_355], metadata["inputs"]["media__chelsea_jpg"]
    assert video["path"] == str(MEDIA / "v_GGSY1Qvo990.mp4")
    assert (video["width"], video["height"], video["total_frames"], video["sampled_frames"]) == (320, 240, 355, 8)
    assert video["frame_indices"] == [0, 51, 101, 152, 202, 253, 303, 354] and video["fps"] == pytest.approx(19.62)
    assert video["shape"] == [1, 3, 8, 238, 308]  # floored to multiples of 14 and center-cropped
    assert (image["width"], image["height"], image["shape"]) == (451, 300, [1, 3, 294, 448])
    assert "sampled_frames" not in image
    assert metadata["lit_features"]["frame_rounding"] == {"hf": "round", "packing": "round"}

    proc = run_cli(["verify", str(out / "features_hf.npz"), str(out / "features_packing.npz")])
    assert "HF Model:" in proc.stdout and "Frames: 8/355" in proc.stdout and "Resolution: 320x240" in proc.stdout
    assert "Passed:            4" in proc.stdout
    report = json.loads(
        run_cli(["verify", str(out / "features_hf.npz"), str(out / "features_packing.npz"), "--json"]).stdout
    )
    assert report["summary"]["all_passed"] and report["metadata"]["num_frames"] == 8
    for row in report["results"]:
        assert row["shape_a"][0] == 1 and len(row["shape_b"]) == 2 and not row["truncated"]
        assert row["cosine_min"] > 0.9999, row


def test_export_refuses_stores_of_different_frames(stores, tmp_path):
    out = tmp_path / "features"
    proc = run_cli(["export-npz", str(stores["floor"]), str(stores["packing"]), "--output_dir", str(out)], check=False)
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"lit_features: error: key '{VIDEO_355}': meta 'frame_indices' differs")
    assert not out.exists() or not list(out.iterdir())
