"""Round trips through ``predict`` with the shipped Wan configs, the training-side readers, and bad input."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lit_features.__main__ import main
from lit_features.data.datamodule import ManifestDataModule
from lit_features.data.manifest import ManifestError, read_manifests
from lit_features.extractors.from_store import extractor_for_store
from lit_features.extractors.wan import WanTrainingFeatures
from lit_features.store.reader import FeatureStore
from lit_features.training.wan_dataset import (
    JsonlFeatureDataset,
    MissingFeaturesError,
    WanTrainingDataset,
    collate_wan_batch,
)
from tests.conftest import MEDIA, REPO_ROOT, run_cli
from tests.wan import mindspeed_reader

WAN = "Wan2.1-I2V-14B-720P-Diffusers"
CONFIG = str(REPO_ROOT / "configs" / "flashi2v_features.yaml")
# Small overrides so three clips encode in seconds on a CPU; everything else is the shipped config.
FAST = ["--model.num_frames", "21", "--model.height", "32", "--model.width", "48"]


def write_manifest(path, entries):
    path.write_text(json.dumps(entries))
    return str(path)


@pytest.fixture(scope="module")
def flashi2v_store(tiny_models, tmp_path_factory):
    """configs/flashi2v_features.yaml over bundled clips (a cut, a 720p clip, an image) with small sizes."""
    tmp = tmp_path_factory.mktemp("flashi2v")
    entries = [
        {"path": "v_GGSY1Qvo990.mp4", "cap": "People  play a game\noutdoors.", "cut": [20, 300], "fps": 19.62},
        {"path": "cockatoo.mp4", "cap": "A cockatoo turns its head.", "resolution": {"height": 720, "width": 1280}},
        {"path": "chelsea.jpg", "cap": "A cat."},
    ]
    manifest = write_manifest(tmp / "data.json", entries)
    out = tmp / "store"
    args = ["predict", "--config", CONFIG, "--data.manifest", manifest, "--data.root", str(MEDIA)]
    args += ["--writer.output_dir", str(out), "--model.model_path", str(tiny_models / WAN), *FAST]
    run_cli(args)
    return {"out": out, "manifest": manifest, "entries": entries}


def test_upstream_layout_and_data_jsonl(flashi2v_store):
    out = flashi2v_store["out"]
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["chelsea.jpg", "cockatoo.mp4", "v_GGSY1Qvo990.mp4"]
    by_path = {r["path"]: r for r in rows}
    ggsy = by_path["v_GGSY1Qvo990.mp4"]
    # the manifest entry comes through, plus the upstream sampling fields and `file`
    assert ggsy["cap"] == "People  play a game\noutdoors." and ggsy["cut"] == [20, 300]
    assert ggsy["start_frame_idx"] == 20 and ggsy["sample_num_frames"] == 21
    assert ggsy["sample_frame_index"][:5] == [20, 21, 22, 23, 24] and ggsy["file"].startswith("features/")
    # the sampler's fields: the size encoded, beside the entry's own resolution (or the decoded one when it had none)
    assert ggsy["resolution"] == {"height": 240, "width": 320, "sample_height": 32, "sample_width": 48}
    bird = by_path["cockatoo.mp4"]["resolution"]
    assert bird == {"height": 720, "width": 1280, "sample_height": 32, "sample_width": 48}
    for row in rows:
        data = torch.load(out / row["file"], weights_only=True)
        assert set(data) == {"video", "prompt_ids", "prompt_mask"}  # tensors only, upstream names
        frames = 1 if row["path"].endswith(".jpg") else 6  # 21 frames -> 6 latent frames
        assert data["video"].shape == (16, frames, 4, 6) and data["video"].dtype == torch.bfloat16
        assert data["prompt_ids"].shape == (1, 512, 32) and data["prompt_ids"].dtype == torch.bfloat16
        assert data["prompt_mask"].shape == (1, 512) and data["prompt_mask"].dtype == torch.int64
    store = FeatureStore(out)
    assert len(store) == 3 and store.info["tiny_random_stand_in"] and store.failures() == []


def test_read_as_mindspeed(flashi2v_store):
    """Through MindSpeed-MM's feature dataset and default collate: what FlashI2V's model takes as cached features."""
    out = flashi2v_store["out"]
    clips = [row for row in mindspeed_reader.rows(out / "data.jsonl") if row["path"].endswith(".mp4")]
    batch = mindspeed_reader.batch(out, clips)
    assert set(batch) == {"video", "prompt_ids", "prompt_mask"}
    assert batch["video"].shape == (2, 16, 6, 4, 6) and batch["prompt_ids"].shape == (2, 1, 512, 32)
    assert batch["prompt_mask"].shape == (2, 1, 512) and batch["prompt_mask"].dtype == torch.int64
    assert {mindspeed_reader.sample_size(row) for row in clips} == {"21x32x48"}


def test_readers_agree(flashi2v_store):
    out = flashi2v_store["out"]
    cached = WanTrainingDataset(out)
    upstream = JsonlFeatureDataset(out / "data.jsonl")
    assert len(cached) == len(upstream) == 3
    for i in range(3):
        a, b = cached[i], upstream[i]
        for name in ("video", "prompt_ids", "prompt_mask"):
            assert torch.equal(a[name], b[name])
        assert a["cached"] is True
    captions = {cached[i]["key"]: cached[i]["caption"] for i in range(3)}
    assert captions["v_GGSY1Qvo990_mp4_cut20-300"] == "people play a game outdoors."  # FlashI2V's cleaning
    batch = collate_wan_batch([cached[0], cached[0]])
    assert batch["prompt_ids"].shape == (2, 1, 512, 32) and batch["caption"] == [cached[0]["caption"]] * 2


def test_partly_cached_dataset_computes_the_rest(flashi2v_store, tiny_models, media, tmp_path):
    entries = [*flashi2v_store["entries"], {"path": "astronaut.png", "cap": "An astronaut."}]
    manifest = write_manifest(tmp_path / "more.json", entries)
    strict = WanTrainingDataset(flashi2v_store["out"], manifest=manifest, root=str(media))
    assert strict.missing() == ["astronaut_png"]
    with pytest.raises(MissingFeaturesError, match="astronaut_png"):
        strict[3]
    extractor = extractor_for_store(FeatureStore(flashi2v_store["out"]), str(tiny_models / WAN))
    online = WanTrainingDataset(
        flashi2v_store["out"],
        manifest=manifest,
        root=str(media),
        compute_missing=True,
        extractor=extractor,
        sandbox=False,
    )
    item = online[3]
    assert item["cached"] is False and item["caption"] == "an astronaut."  # FlashI2V-cleaned
    assert item["video"].shape == (16, 1, 4, 6) and item["prompt_ids"].dtype == torch.bfloat16
    # computing a clip the store holds (the 720p one) gives the stored features (bf16: within one bf16 step)
    fresh, stored = online.compute(1), online[1]
    assert stored["cached"] is True and fresh["key"] == stored["key"] == "cockatoo_mp4"
    for name in ("video", "prompt_ids"):
        assert (fresh[name].float() - stored[name].float()).abs().max().item() <= 1e-2
    assert torch.equal(fresh["prompt_mask"], stored["prompt_mask"])


def test_rebuilt_extractor_must_match_the_store(flashi2v_store, tiny_models, tmp_path):
    import shutil

    other = tmp_path / WAN
    shutil.copytree(tiny_models / WAN, other)
    (other / "tokenizer" / "tokenizer_config.json").write_text(
        (other / "tokenizer" / "tokenizer_config.json").read_text().replace("512", "256")
    )
    with pytest.raises(ValueError, match="would differ"):
        extractor_for_store(FeatureStore(flashi2v_store["out"]), str(other))
    # An extractor given to the dataset is held to the same rule.
    params = FeatureStore(flashi2v_store["out"]).info["fingerprint"]["params"]
    with pytest.raises(ValueError, match="would differ"):
        WanTrainingDataset(
            flashi2v_store["out"], compute_missing=True, extractor=WanTrainingFeatures(model_path=str(other), **params)
        )


def test_shipped_config_as_is_and_short_clip_policy(tiny_models, media, tmp_path):
    """configs/flashi2v_features.yaml unchanged (49 frames, 480x832): an image, and a clip too short for 49 frames."""
    manifest = write_manifest(
        tmp_path / "data.json",
        [{"path": "chelsea.jpg", "cap": "A cat."}, {"path": "realshort.mp4", "cap": "A very short clip."}],
    )
    out = tmp_path / "store"
    args = ["predict", "--config", CONFIG, "--data.manifest", manifest, "--data.root", str(media)]
    # In-process through the same entry point as `python -m lit_features` (saves an interpreter start).
    assert main([*args, "--writer.output_dir", str(out), "--model.model_path", str(tiny_models / WAN)]) == 0
    store = FeatureStore(out)
    assert store.keys() == ["chelsea_jpg"]
    assert store["chelsea_jpg"]["video"].shape == (16, 1, 60, 104)
    (failure,) = store.failures()
    assert failure["key"] == "realshort_mp4" and failure["stage"] == "decode" and failure["error"] == "ShortClipError"
    assert "20 frames" in failure["message"] and "49 are needed" in failure["message"]
    rows = (out / "data.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["file"] == "features/chelsea_jpg.pt"


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"path": "chelsea.jpg"}, "entry 1, field 'cap': missing caption"),
        ({"path": "chelsea.jpg", "cap": None}, "entry 1, field 'cap': missing caption"),
        ({"path": "chelsea.jpg", "cap": " \n "}, "entry 1, field 'cap': caption is empty"),
    ],
)
def test_missing_caption_is_a_validation_error_naming_the_entry(tiny_models, media, tmp_path, entry, match):
    manifest = write_manifest(tmp_path / "m.json", [{"path": "cockatoo.mp4", "cap": "ok"}, entry])
    extractor = WanTrainingFeatures(model_path=str(tiny_models / WAN))
    samples = read_manifests(manifest, media)
    with pytest.raises(ManifestError, match=match):
        ManifestDataModule.validate_samples(samples, extractor.preprocessor())


def test_non_string_caption_is_refused_when_reading_the_manifest(media, tmp_path):
    manifest = write_manifest(tmp_path / "m.json", [{"path": "cockatoo.mp4", "cap": ["a", "b"]}])
    with pytest.raises(ManifestError, match="entry 0, field 'cap': must be a string"):
        read_manifests(manifest, media)


def test_too_many_references_is_a_validation_error(tiny_models, media, tmp_path):
    images = ["chelsea.jpg"] * 3
    manifest = write_manifest(tmp_path / "m.json", [{"path": "cockatoo.mp4", "cap": "x", "images": images}])
    extractor = WanTrainingFeatures(model_path=str(tiny_models / WAN), i2v="reference", max_references=2)
    with pytest.raises(ManifestError, match="field 'images': 3 reference images but at most 2"):
        ManifestDataModule.validate_samples(read_manifests(manifest, media), extractor.preprocessor())


def test_odd_frame_count_is_refused_at_start(tiny_models, tmp_path, capsys):
    args = ["predict", "--config", CONFIG, "--model.num_frames", "48", "--model.model_path", str(tiny_models / WAN)]
    assert main([*args, "--writer.output_dir", str(tmp_path / "never")]) == 2  # a user error: one line, exit 2
    assert re.search(
        r"num_frames must have the form 4k\+1 .* got 48 \(nearest valid: 45 or 49\)", capsys.readouterr().err
    )
    assert not (tmp_path / "never").exists()  # refused before anything was read or written


def shipped_wan_preprocessor(tiny_models, name):
    """The Wan preprocessor the shipped config builds (the BindWeave config's through its composite)."""
    import yaml

    from lit_features.extractors.bindweave import BindWeaveTrainingFeatures

    config = yaml.safe_load((REPO_ROOT / "configs" / name).read_text())
    assert config["data"]["class_path"] == "lit_features.data.datamodule.ManifestDataModule"
    assert config["writer"]["codec"] == "pt" and config["writer"]["export_jsonl"] == "data.jsonl"
    args = dict(config["model"]["init_args"])
    if config["model"]["class_path"] == "lit_features.extractors.bindweave.BindWeaveTrainingFeatures":
        args.update(wan_model_path=str(tiny_models / WAN), qwen_model_path=str(tiny_models / "Qwen2.5-VL-7B-Instruct"))
        extractor = BindWeaveTrainingFeatures(**args)
        return extractor.wan.preprocessor(), extractor.wan
    assert config["model"]["class_path"] == "lit_features.extractors.wan.WanTrainingFeatures"
    extractor = WanTrainingFeatures(**{**args, "model_path": str(tiny_models / WAN)})
    return extractor.preprocessor(), extractor


@pytest.mark.parametrize(
    ("name", "expected", "vae"),
    [
        (
            "flashi2v_features.yaml",
            dict(num_frames=49, target_fps=16, size_rule="flashi2v", caption_cleaning="flashi2v", i2v="none"),
            (torch.float32, None),
        ),
        (
            "wan_train_features.yaml",
            dict(num_frames=81, target_fps=None, height=720, width=1280, size_rule="bindweave", exif_transpose=False),
            (torch.bfloat16, "mindspeed"),
        ),
    ],
)
def test_shipped_configs_build_the_documented_extractor(tiny_models, name, expected, vae):
    pre, extractor = shipped_wan_preprocessor(tiny_models, name)
    assert {k: getattr(pre, k) for k in expected} == expected
    assert (extractor.vae_dtype, extractor.tiling.method if extractor.tiling else None) == vae
