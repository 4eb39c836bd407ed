"""End to end: the shipped ViT and OneVision configs write per-sample and packed stores that ``verify`` passes.

Every store is written by ``predict`` with the shipped config (weights, dtype, manifest and output folder
overridden) on the bundled media: ``chelsea.jpg`` (451x300, not a patch multiple), ``astronaut.png`` and
8-frame samples of the small bundled videos. The 720p ``cockatoo.mp4`` runs in the slow test.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SiglipConfig, SiglipModel, SiglipVisionModel

from lit_features.cli import run_cli as run_lightning
from lit_features.commands.verify import verify
from lit_features.extractors.base import quiet_transformers
from lit_features.extractors.vision_tower import VisionTowerFeatures
from lit_features.store.reader import FeatureStore
from tests.conftest import MEDIA, REPO_ROOT, run_cli

# In-process LightningCLI runs warn that pytest's own argv is present; the args passed are what counts.
pytestmark = [
    pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
    pytest.mark.filterwarnings("ignore:No seed found"),
]

SIGLIP = "siglip-so400m-patch14-384"
ONEVISION = "OneVision-Encoder-Base"
SMALL_MEDIA = ["chelsea.jpg", "astronaut.png", "realshort.mp4", "v_GGSY1Qvo990.mp4"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread; on a shared 2-core box it only adds spin-waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_manifest(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps([{"path": f"media/{name}"} for name in names]))
    return manifest


def predict(config, model_path, manifest, out, dtype, *extra):
    """``lit_features predict --config configs/<config>.yaml`` in this process, on the given media."""
    run_lightning(
        [
            "predict",
            "--config",
            str(REPO_ROOT / "configs" / f"{config}.yaml"),
            "--model.model_path",
            str(model_path),
            "--model.dtype",
            dtype,
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
    return str(out)


def verify_json(capsys, a, b, threshold):
    code = verify(a, b, threshold=threshold, json=True)
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def stores(tiny_models, tmp_path_factory):
    """Per-sample and packed stores of both model families in fp32 and bf16, on the small bundled media."""
    root = tmp_path_factory.mktemp("vit_stores")
    manifest = write_manifest(root, SMALL_MEDIA)
    out = {}
    for family, per_sample, packed, weights in [
        ("vit", "vit_features", "vit_packed", SIGLIP),
        ("onevision", "onevision_features", "onevision_packed", ONEVISION),
    ]:
        for dtype in ("float32", "bfloat16"):
            for form, config in (("per_sample", per_sample), ("packed", packed)):
                out[family, dtype, form] = predict(
                    config, tiny_models / weights, manifest, root / f"{config}_{dtype}", dtype
                )
    return out


@pytest.mark.parametrize("family", ["vit", "onevision"])
@pytest.mark.parametrize(("dtype", "threshold"), [("float32", 0.9999), ("bfloat16", 0.99)])
def test_packed_and_per_sample_stores_agree(stores, capsys, family, dtype, threshold):
    a, b = stores[family, dtype, "per_sample"], stores[family, dtype, "packed"]
    code, report = verify_json(capsys, a, b, threshold)
    assert code == 0, report
    assert report["summary"]["total"] == len(SMALL_MEDIA)
    for row in report["results"]:
        assert row["shape_a"] == row["shape_b"]
        assert row["cosine_min"] >= threshold, row  # verify passes on '>'; the issue asks '>=' 0.9999 for fp32
        assert not row["truncated"] and not row["notes"]
    shapes = {row["key"]: row["shape_a"] for row in report["results"]}
    width = 32 if family == "vit" else 64
    if family == "vit":  # resize to the nearest multiple of 14: 451x300 -> 448x294
        assert shapes["media__chelsea_jpg"] == [32 * 21, width]
        assert shapes["media__realshort_mp4"] == [8, 17 * 23, width]
    else:  # floor + center-crop: 451x300 -> 448x294, 240x320 -> 238x308
        assert shapes["media__chelsea_jpg"] == [32 * 21, width]
        assert shapes["media__realshort_mp4"] == [8, 17 * 22, width]
    assert FeatureStore(a).row("media__chelsea_jpg")["dtypes"]["features"] == dtype


def test_onevision_frame_slots(stores):
    for form in ("per_sample", "packed"):
        store = FeatureStore(stores["onevision", "float32", form])
        for key in ("media__realshort_mp4", "media__v_GGSY1Qvo990_mp4"):
            meta = store.meta(key)
            assert meta["frame_slots"] == [0, 9, 18, 27, 36, 45, 54, 63]
            assert len(meta["frame_indices"]) == 8
        assert "frame_slots" not in store.meta("media__chelsea_jpg")
    meta = FeatureStore(stores["onevision", "float32", "per_sample"]).meta("media__v_GGSY1Qvo990_mp4")
    assert meta["frame_indices"] == [0, 51, 101, 152, 202, 253, 303, 354]  # round(linspace(0, 354, 8))


def test_per_sample_equals_hf_hidden_states(stores, tiny_models):
    """The stored per-sample features are the Hugging Face model's own ``hidden_states[-2]`` for the same
    pixels (decoded here independently: PIL for the image, decord for the video frames the store recorded)."""
    import decord

    store = FeatureStore(stores["vit", "float32", "per_sample"])
    path = tiny_models / SIGLIP
    preprocessor = VisionTowerFeatures(str(path), dtype="float32").preprocessor()
    with quiet_transformers():
        model = SiglipVisionModel.from_pretrained(path).eval()
    image = np.array(Image.open(MEDIA / "chelsea.jpg").convert("RGB"))
    reader = decord.VideoReader(str(MEDIA / "realshort.mp4"))
    frames = reader.get_batch(store.meta("media__realshort_mp4")["frame_indices"]).asnumpy()
    for key, raw in (("media__chelsea_jpg", image[None]), ("media__realshort_mp4", frames)):
        pixels = preprocessor.pixels(raw)
        assert list(pixels.shape[-2:]) == store.meta(key)["size"]
        with torch.no_grad():
            out = model(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
        want = out.hidden_states[-2]
        got = store[key]["features"]
        torch.testing.assert_close(got, want[0] if key.endswith("jpg") else want, atol=1e-5, rtol=1e-5)


def test_verify_fails_on_a_different_checkpoint_and_reports_a_missing_key(stores, tiny_models, tmp_path, capsys):
    """A second random SigLIP of the same shape (another seed) fails every key; a key it lacks is named."""
    other = tmp_path / SIGLIP
    config = SiglipConfig.from_pretrained(tiny_models / SIGLIP)
    torch.manual_seed(7)
    SiglipModel(config).save_pretrained(other)
    shutil.copy(tiny_models / SIGLIP / "preprocessor_config.json", other)
    manifest = write_manifest(tmp_path / "m", SMALL_MEDIA[:-1])
    b = predict("vit_features", other, manifest, tmp_path / "other_store", "float32")
    a = stores["vit", "float32", "per_sample"]
    png = tmp_path / "hist.png"
    proc = run_cli(["verify", a, b, "--json", "--histogram", str(png)], check=False)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["only_in_a"] == ["media__v_GGSY1Qvo990_mp4"] and report["only_in_b"] == []
    rows = {r["key"]: r for r in report["results"]}
    assert "only in A" in rows["media__v_GGSY1Qvo990_mp4"]["reason"]
    for key in ("media__chelsea_jpg", "media__astronaut_png", "media__realshort_mp4"):
        assert not rows[key]["passed"] and rows[key]["cosine_min"] < 0.9, rows[key]
    assert report["summary"] == {"total": 4, "passed": 0, "failed": 4, "all_passed": False}
    assert png.stat().st_size > 0
    assert verify(a, b) == 1
    text = capsys.readouterr().out
    assert "FAIL media__v_GGSY1Qvo990_mp4: only in A" in text and "4 of 4 comparisons failed" in text


@pytest.mark.slow
def test_full_quickstart_manifest_including_720p_video(tiny_models, tmp_path, capsys):
    """The whole bundled sample manifest (720p ``cockatoo.mp4``, a ``cut`` entry) through both ViT forms."""
    manifest = REPO_ROOT / "samples" / "quickstart.json"
    a = predict("vit_features", tiny_models / SIGLIP, manifest, tmp_path / "a", "float32")
    b = predict("vit_packed", tiny_models / SIGLIP, manifest, tmp_path / "b", "float32")
    code, report = verify_json(capsys, a, b, 0.9999)
    assert code == 0 and report["summary"]["total"] == 6
    rows = {r["key"]: r for r in report["results"]}
    assert rows["media__cockatoo_mp4"]["shape_a"] == [8, 51 * 91, 32]
