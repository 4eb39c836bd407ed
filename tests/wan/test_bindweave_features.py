"""configs/wan_train_features.yaml: BindWeave's whole training dict in one run, read as its trainer reads it.

The shipped config runs at a small size (5 frames, 32x48) on the tiny stand-ins: one ``.pt`` per clip with the
Wan keys and the Qwen2.5-VL ``hidden_states``/``hidden_states_mask``; ``data.jsonl`` with the sampler's fields;
bad input recorded or refused before any model loads. The Qwen states equal the Hugging Face processor + model
run on the reference images prepared as BindWeave's training extraction prepares them (fp32: max |diff| 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lit_features.__main__ import main
from lit_features.data.dataset import BatchCollator, SampleDataset
from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.manifest import read_manifests
from lit_features.extractors.bindweave import BindWeaveTrainingFeatures
from lit_features.extractors.wan import WanTrainingFeatures
from lit_features.store.reader import FeatureStore
from lit_features.training.wan_dataset import JsonlFeatureDataset
from tests.conftest import MEDIA, REPO_ROOT
from tests.qwen.test_qwen_hidden import hf_processor
from tests.wan import mindspeed_reader

CONFIG = str(REPO_ROOT / "configs" / "wan_train_features.yaml")
WAN, QWEN = "Wan2.1-I2V-14B-720P-Diffusers", "Qwen2.5-VL-7B-Instruct"
SMALL = ["--model.num_frames", "5", "--model.height", "32", "--model.width", "48", "--data.num_workers", "0"]
BIRD = {
    "path": "cockatoo.mp4",
    "cap": "A white  cockatoo turns its head.",
    "images": ["chelsea.jpg", "astronaut.png"],
    "start_frame_idx": 3,
}
KEYS = {
    "video",
    "prompt_ids",
    "prompt_mask",
    "i2v_clip_feature",
    "i2v_vae_feature",
    "hidden_states",
    "hidden_states_mask",
}


def models(tiny_models: Path) -> list[str]:
    return ["--model.wan_model_path", str(tiny_models / WAN), "--model.qwen_model_path", str(tiny_models / QWEN)]


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    """The shipped config over a clip with two references, one whose reference is missing, and a still image."""
    tmp = tmp_path_factory.mktemp("bindweave")
    entries = [
        BIRD,
        {"path": "v_GGSY1Qvo990.mp4", "cap": "People play.", "images": ["no_such_image.jpg"]},
        {"path": "chelsea.jpg", "cap": "A cat."},
    ]
    (tmp / "data.json").write_text(json.dumps(entries))
    out = tmp / "features"
    args = ["predict", "--config", CONFIG, "--data.manifest", str(tmp / "data.json"), "--data.root", str(MEDIA)]
    assert main([*args, "--writer.output_dir", str(out), *models(tiny_models), *SMALL]) == 0
    return out


def test_one_pt_per_clip_holds_every_key(run):
    rows = {row["path"]: row for row in mindspeed_reader.rows(run / "data.jsonl")}
    assert sorted(rows) == ["chelsea.jpg", "cockatoo.mp4"]
    data = torch.load(run / rows["cockatoo.mp4"]["file"], weights_only=True)
    assert set(data) == KEYS
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in data.items() if not k.startswith("hidden")}
    assert shapes == {
        "video": ((16, 2, 4, 6), torch.bfloat16),
        "prompt_ids": ((1, 512, 32), torch.bfloat16),
        "prompt_mask": ((1, 512), torch.int64),
        "i2v_clip_feature": ((4 * 257, 32), torch.bfloat16),
        "i2v_vae_feature": ((20, 4 + 2, 4, 6), torch.bfloat16),
    }
    hidden, mask = data["hidden_states"], data["hidden_states_mask"]
    length = FeatureStore(run).meta("cockatoo_mp4")["qwen_num_tokens"]
    assert hidden.shape == (1, length, 64) and hidden.dtype == torch.bfloat16
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.ones(1, length, dtype=torch.int64))
    assert data["i2v_vae_feature"][0, :2].any() and not data["i2v_vae_feature"][:, 2:4].any()  # 2 of 4 slots
    still = torch.load(run / rows["chelsea.jpg"]["file"], weights_only=True)
    assert set(still) == KEYS and still["video"].shape == (16, 1, 4, 6)  # no references: text-only Qwen pass


def test_data_jsonl_rows_carry_the_sampler_fields(run):
    rows = {row["path"]: row for row in mindspeed_reader.rows(run / "data.jsonl")}
    bird = rows["cockatoo.mp4"]
    assert bird["cap"] == BIRD["cap"] and bird["images"] == [str(MEDIA / p) for p in BIRD["images"]]
    # 5 consecutive frames from start_frame_idx (no fps resampling), the source size and the size encoded
    assert bird["start_frame_idx"] == 3 and bird["sample_frame_index"] == [3, 4, 5, 6, 7]
    assert bird["sample_num_frames"] == 5 and bird["file"] == "features/cockatoo_mp4.pt"
    assert bird["resolution"] == {"height": 720, "width": 1280, "sample_height": 32, "sample_width": 48}
    assert {path: mindspeed_reader.sample_size(r) for path, r in rows.items()} == {
        "cockatoo.mp4": "5x32x48",
        "chelsea.jpg": "1x32x48",
    }


def test_missing_reference_image_fails_that_clip_with_its_reason(run):
    (failure,) = FeatureStore(run).failures()
    assert failure["key"] == "v_GGSY1Qvo990_mp4" and failure["stage"] == "decode"
    assert failure["error"] == "FileNotFoundError" and "no_such_image.jpg" in failure["message"]


def test_read_as_mindspeed_and_fed_to_the_dit(run):
    """The dict through MindSpeed-MM's feature dataset and default collate, then BindWeave's DiT input assembly."""
    rows = mindspeed_reader.rows(run / "data.jsonl")
    index = [r["path"] for r in rows].index("cockatoo.mp4")
    batch = mindspeed_reader.batch(run, [rows[index]])
    ours = JsonlFeatureDataset(run / "data.jsonl")[index]  # the project's own reader gives the same tensors
    assert all(torch.equal(batch[k][0], ours[k]) for k in KEYS)
    video, prompt, hidden = batch["video"], batch["prompt_ids"], batch["hidden_states"]
    assert video.shape == (1, 16, 2, 4, 6) and prompt.shape == (1, 1, 512, 32) and hidden.shape[:2] == (1, 1)
    # text: Qwen states (projected to the UMT5 width) before the UMT5 embedding; masks joined on dim 2
    bs, length = prompt.shape[0], hidden.shape[2]
    projector = torch.nn.Linear(hidden.shape[-1], prompt.shape[-1], dtype=torch.bfloat16)
    text = torch.cat([projector(hidden.view(bs, -1, hidden.size(-1))), prompt.view(bs, -1, prompt.size(-1))], dim=1)
    text_mask = torch.cat([batch["hidden_states_mask"], batch["prompt_mask"]], dim=2)
    assert text.shape == (1, length + 512, 32) and text_mask.shape == (1, 1, length + 512)
    assert text_mask.view(bs, -1).sum().item() == length + int(batch["prompt_mask"].sum())
    # video: the noisy latent padded in front to the condition's frames, then the 20 condition channels
    condition = batch["i2v_vae_feature"]
    padded = torch.cat([torch.zeros(1, 16, condition.shape[2] - video.shape[2], 4, 6, dtype=video.dtype), video], 2)
    x = torch.cat([padded, condition.to(video)], dim=1)
    assert x.shape == (1, 36, 6, 4, 6) and batch["i2v_clip_feature"].shape == (1, 1028, 32)


def test_too_many_references_stop_the_run_before_models_load(tiny_models, tmp_path, capsys, monkeypatch):
    entry = {"path": "cockatoo.mp4", "cap": "A bird.", "images": ["chelsea.jpg"] * 5}
    (tmp_path / "data.json").write_text(json.dumps([entry]))

    def no_loading(self):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(WanTrainingFeatures, "load_model", no_loading)
    args = ["predict", "--config", CONFIG, "--data.manifest", str(tmp_path / "data.json"), "--data.root", str(MEDIA)]
    assert main([*args, "--writer.output_dir", str(tmp_path / "out"), *models(tiny_models), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lit_features: error: ") and "entry 0, field 'images': 5 reference images" in err


def qwen_reference_images(canvases: torch.Tensor) -> list[Image.Image]:
    """BindWeave's training extraction: RGB /255, x0.5 bilinear (recompute_scale_factor), x255 to uint8, PIL."""
    scaled = F.interpolate(
        canvases.float() / 255.0, scale_factor=0.5, mode="bilinear", align_corners=False, recompute_scale_factor=True
    )
    return [Image.fromarray((frame.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for frame in scaled]


def test_qwen_states_are_the_model_on_bindweaves_training_images(tiny_models, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    fp32 = dict(vae_dtype="float32", qwen_dtype="float32", store_dtype="float32", dtype="float32")
    extractor = BindWeaveTrainingFeatures(
        wan_model_path=str(tiny_models / WAN),
        qwen_model_path=str(tiny_models / QWEN),
        num_frames=5,
        height=64,
        width=96,
        **fp32,
    )
    extractor.configure_model()
    (tmp_path / "m.json").write_text(json.dumps([BIRD]))
    samples = read_manifests(tmp_path / "m.json", MEDIA)
    pre = extractor.preprocessor()
    pre.validate(samples[0])
    dataset = SampleDataset(samples, pre, DecodeSandbox(enabled=False))
    batch = BatchCollator(pre)([dataset[0]])
    with torch.no_grad():
        (out,) = extractor.extract(batch.inputs, batch)
    canvases = pre.wan.prepare(samples[0], dataset.media).canvases
    # the Qwen images are the very canvases the I2V condition encodes
    assert torch.equal(batch.inputs["wan"]["reference_pixels"][0], (canvases.float() / 255 - 0.5) / 0.5)
    images = qwen_reference_images(canvases)
    assert [im.size for im in images] == [(48, 32), (48, 32)]
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_models / QWEN, dtype=torch.float32).eval()
    with hf_processor(tiny_models / QWEN, None) as processor, torch.no_grad():
        content = [{"type": "text", "text": BIRD["cap"]}] + [{"type": "image"} for _ in images]
        rendered = processor.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        inputs = processor(text=[rendered], images=images, return_tensors="pt")
        expected = model(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1]
    assert out["hidden_states"].shape == expected.shape
    assert torch.equal(out["hidden_states"], expected)  # fp32: bit for bit
    assert torch.equal(out["hidden_states_mask"], torch.ones(expected.shape[:2], dtype=torch.int64))
