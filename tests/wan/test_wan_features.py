"""Wan training features against the diffusers/transformers references on the tiny stand-in, loaded by from_pretrained.

Tolerances: fp32 latents within 1e-5 of ``encode(x).latent_dist.mode()`` normalised with the VAE config's
``latents_mean``/``latents_std``; UMT5 and CLIP features within 1e-6 of the models run directly on the same
tokens/pixels; ``tiling_method="diffusers"`` matches diffusers' own tiled encode with the same tile settings to
1e-5 (MindSpeed-MM's tiling, the default, is checked in test_wan_tiling.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lit_features.data.dataset import BatchCollator, SampleDataset
from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.manifest import read_manifests
from lit_features.extractors.wan import (
    WanTrainingFeatures,
    WanVideoPreprocessor,
    check_frame_count,
    clean_caption,
    latent_frames,
)

WAN = "Wan2.1-I2V-14B-720P-Diffusers"
SMALL = dict(num_frames=5, height=32, width=48, dtype="float32", store_dtype="float32")


@pytest.fixture(scope="module")
def wan_path(tiny_models):
    return str(tiny_models / WAN)


@pytest.fixture(scope="module")
def reference(wan_path):
    """The parts loaded straight from the library classes, independent of the extractor."""
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, CLIPVisionModel, UMT5EncoderModel

    return {
        "vae": AutoencoderKLWan.from_pretrained(wan_path, subfolder="vae").eval(),
        "text_encoder": UMT5EncoderModel.from_pretrained(f"{wan_path}/text_encoder").eval(),
        "tokenizer": AutoTokenizer.from_pretrained(f"{wan_path}/tokenizer"),
        "image_encoder": CLIPVisionModel.from_pretrained(f"{wan_path}/image_encoder").eval(),
    }


def make_extractor(wan_path: str, **kwargs) -> WanTrainingFeatures:
    extractor = WanTrainingFeatures(model_path=wan_path, **{**SMALL, **kwargs})
    extractor.configure_model()
    return extractor


def prepare(extractor: WanTrainingFeatures, entries: list[dict], tmp_path, media):
    """A batch exactly as the DataModule builds one (preprocessor in-process, core collate)."""
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{**e, "path": str(media / e["path"])} for e in entries]))
    samples = read_manifests(manifest)
    pre = extractor.preprocessor()
    for s in samples:
        pre.validate(s)
    dataset = SampleDataset(samples, pre, DecodeSandbox(enabled=False))
    return BatchCollator(pre)([dataset[i] for i in range(len(samples))])


def normalised_mode(vae, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return (z - mean) / std


def test_stand_in_layout(wan_path):
    extractor = WanTrainingFeatures(model_path=wan_path, **SMALL)
    assert extractor.is_stand_in
    folder = Path(wan_path)
    for part in ("vae", "text_encoder", "image_encoder"):
        assert json.loads((folder / part / "config.json").read_text())["tiny_random_stand_in"] is True
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    assert len(vae_cfg["latents_mean"]) == len(vae_cfg["latents_std"]) == vae_cfg["z_dim"] == 16
    assert (folder / "tokenizer" / "tokenizer.json").exists()
    assert (folder / "image_processor" / "preprocessor_config.json").exists()


def test_latents_and_text_equal_the_library_models(wan_path, reference, tmp_path, media):
    extractor = make_extractor(wan_path)
    caps = ["People  play a\tgame\n outdoors.", "A cockatoo turns its head."]
    batch = prepare(
        extractor,
        [{"path": "v_GGSY1Qvo990.mp4", "cap": caps[0], "cut": [30, 200]}, {"path": "cockatoo.mp4", "cap": caps[1]}],
        tmp_path,
        media,
    )
    with torch.no_grad():
        out = extractor.extract(batch.inputs, batch)
    pixels = batch.inputs["video"]
    assert pixels.shape == (2, 3, 5, 32, 48) and pixels.min() >= -1 and pixels.max() <= 1
    want = normalised_mode(reference["vae"], pixels)
    for i in range(2):
        assert out[i]["video"].shape == (16, latent_frames(5), 4, 6)
        assert (out[i]["video"] - want[i]).abs().max().item() <= 1e-5
        # text: the same cleaned caption through the tokenizer and UMT5EncoderModel directly
        tokens = reference["tokenizer"](
            [clean_caption(caps[i])], padding="max_length", max_length=512, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            emb = reference["text_encoder"](tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        assert out[i]["prompt_ids"].shape == (1, 512, 32)
        assert (out[i]["prompt_ids"] - emb).abs().max().item() <= 1e-6
        assert torch.equal(out[i]["prompt_mask"], tokens.attention_mask) and out[i]["prompt_mask"].dtype == torch.int64
    # frames from cut start, resampled 19.62 -> 16 fps: every 1.226th frame, truncated to int like upstream
    assert batch.metas[0]["frame_indices"] == [30, 31, 32, 33, 34]
    assert batch.metas[0]["caption"] == "People play a game outdoors."


def test_unpadded_text_and_bf16_storage(wan_path, tmp_path, media):
    extractor = make_extractor(wan_path, unpadded_text=True, store_dtype="bfloat16")
    batch = prepare(extractor, [{"path": "chelsea.jpg", "cap": "A cat."}], tmp_path, media)
    with torch.no_grad():
        (out,) = extractor.extract(batch.inputs, batch)
    n = int(batch.inputs["attention_mask"][0].sum())
    assert out["prompt_ids"].shape == (1, n, 32) and out["prompt_mask"].shape == (1, n)
    assert out["prompt_mask"].all() and out["video"].dtype == torch.bfloat16
    assert out["video"].shape == (16, 1, 4, 6)  # an image is a one-frame clip


def test_diffusers_tiling_option_is_diffusers_tiled_encode(wan_path, reference):
    tiles = dict(tile_sample_min_height=128, tile_sample_min_width=128)
    tiled = make_extractor(
        wan_path,
        enable_tiling=True,
        tiling_method="diffusers",
        tile_sample_stride_height=64,
        tile_sample_stride_width=64,
        **tiles,
    )
    plain = make_extractor(wan_path)
    torch.manual_seed(0)
    x = F.interpolate(torch.rand(1, 3, 1, 16, 24), size=(1, 128, 192), mode="trilinear") * 2 - 1
    with torch.no_grad():
        a, b = plain.encode_video(x), tiled.encode_video(x)
    vae = reference["vae"]
    vae.enable_tiling(tile_sample_stride_height=64, tile_sample_stride_width=64, **tiles)
    try:
        assert (b - normalised_mode(vae, x)).abs().max().item() <= 1e-5
    finally:
        vae.disable_tiling()
    rel_rms = ((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()).item()
    cosine = F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert rel_rms <= 0.1 and cosine >= 0.99, (rel_rms, cosine)
    assert not torch.equal(a, b)  # tiling really happened


def test_first_frame_i2v_condition(wan_path, reference, tmp_path, media):
    extractor = make_extractor(wan_path, i2v="first_frame")
    batch = prepare(extractor, [{"path": "cockatoo.mp4", "cap": "A bird."}], tmp_path, media)
    with torch.no_grad():
        (out,) = extractor.extract(batch.inputs, batch)
    video = batch.inputs["video"][0]  # [3, 5, H, W]
    feature = out["i2v_vae_feature"]
    assert feature.shape == (20, 2, 4, 6)
    assert torch.equal(feature[:4, 0], torch.ones(4, 4, 6)) and torch.equal(feature[:4, 1:], torch.zeros(4, 1, 4, 6))
    condition = torch.cat([video[:, :1], torch.zeros(3, 4, 32, 48)], dim=1)[None]
    assert (feature[4:] - normalised_mode(reference["vae"], condition)[0]).abs().max().item() <= 1e-5
    first = (video[:, 0] + 1) / 2  # the sized first frame in [0, 1]
    pixels = F.interpolate(first[None], size=(224, 224), mode="bicubic", align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = reference["image_encoder"](pixel_values=(pixels - mean) / std, output_hidden_states=True)
    assert out["i2v_clip_feature"].shape == (257, 32)
    assert (out["i2v_clip_feature"] - hidden.hidden_states[-2][0]).abs().max().item() <= 1e-5


def test_reference_i2v_condition(wan_path, reference, tmp_path, media):
    extractor = make_extractor(wan_path, i2v="reference", max_references=4)
    entry = {"path": "cockatoo.mp4", "cap": "A bird.", "images": [str(media / "chelsea.jpg")]}
    batch = prepare(extractor, [entry], tmp_path, media)
    with torch.no_grad():
        (out,) = extractor.extract(batch.inputs, batch)
    vae_feature, clip_feature = out["i2v_vae_feature"], out["i2v_clip_feature"]
    assert vae_feature.shape == (20, 4 + 2, 4, 6) and clip_feature.shape == (4 * 257, 32)
    # slot 0: the reference (area mask in channel 0, channels 1-3 zero, its one-frame latent)
    ref = batch.inputs["reference_pixels"][0]  # [1, 3, H, W]
    mask = F.interpolate(batch.inputs["reference_masks"][0], size=(4, 6), mode="nearest")[0, 0]
    assert torch.equal(vae_feature[0, 0], mask) and mask.sum() > 0 and not vae_feature[1:4, 0].any()
    assert (vae_feature[4:, 0] - normalised_mode(reference["vae"], ref[:, :, None])[0, :, 0]).abs().max() <= 1e-5
    assert not vae_feature[:, 1:4].any()  # empty reference slots
    # video slots: zero mask + the latent of an all-zero clip
    assert not vae_feature[:4, 4:].any()
    blank = normalised_mode(reference["vae"], torch.zeros(1, 3, 5, 32, 48))[0]
    assert (vae_feature[4:, 4:] - blank).abs().max().item() <= 1e-5
    with torch.no_grad():
        hidden = reference["image_encoder"](pixel_values=batch.inputs["clip_pixels"][0], output_hidden_states=True)
    assert (clip_feature[:257] - hidden.hidden_states[-2][0]).abs().max().item() <= 1e-5
    assert not clip_feature[257:].any()


def test_sampled_posterior_is_seeded_per_clip(wan_path, tmp_path, media):
    extractor = make_extractor(wan_path, sample_posterior=True, seed=3)
    batch = prepare(extractor, [{"path": "chelsea.jpg", "cap": "A cat."}], tmp_path, media)
    with torch.no_grad():
        a = extractor.encode_video(batch.inputs["video"], batch.keys)
        b = extractor.encode_video(batch.inputs["video"], batch.keys)
        mode = extractor.encode_video(batch.inputs["video"])
    assert torch.equal(a, b) and not torch.equal(a, mode)


@pytest.mark.parametrize("frames", [0, 2, 48, 50, 80])
def test_frame_count_must_be_4k_plus_1(wan_path, frames):
    with pytest.raises(ValueError, match="4k\\+1"):
        WanTrainingFeatures(model_path=wan_path, num_frames=frames)
    with pytest.raises(ValueError, match="4k\\+1"):
        WanVideoPreprocessor(num_frames=frames)


def test_valid_frame_counts_and_sizes(wan_path):
    for frames in (1, 5, 49, 81):
        check_frame_count(frames)
    assert [latent_frames(n) for n in (1, 49, 81)] == [1, 13, 21]
    with pytest.raises(ValueError, match="multiple of 8"):
        WanTrainingFeatures(model_path=wan_path, height=100)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("height", 100, "multiple of 8"),
        ("width", 0, "multiple of 8"),
        ("i2v", "last_frame", "i2v must be"),
        ("target_fps", 0.0, "positive frame rate"),
        ("max_references", 0, "max_references must be >= 1"),
    ],
)
def test_the_preprocessor_refuses_what_the_extractor_refuses(wan_path, field, value, match):
    # The checks live with the options (defined once), so the preprocessor refuses them whoever builds it, and
    # the extractor, which takes them flat, refuses them at construction.
    with pytest.raises(ValueError, match=match):
        WanVideoPreprocessor(**{field: value})
    with pytest.raises(ValueError, match=match):
        WanTrainingFeatures(model_path=wan_path, **{field: value})
