"""OneVision ViT: batch and packed forms agree, RoPE matches its formula, checkpoints round-trip."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lit_features.models.onevision_positions import (
    apply_rope,
    frame_slots,
    grid_positions,
    patch_aligned_size,
    patchify,
    rope_axis_sizes,
    rope_frequencies,
    visible_indices_for_slots,
)
from lit_features.models.onevision_vit import OneVisionViTConfig, OneVisionViTModel
from tools.tiny_models import onevision_vit as tiny_onevision

PATCH = 14


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_onevision.make(tmp_path_factory.mktemp("onevision"))[0]


@pytest.fixture(scope="module")
def model(tiny_dir):
    return OneVisionViTModel.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="module")
def inputs():
    """An image at 451x300 (center-cropped to 448x294) and an 8-frame 112x140 video, CLIP-normalised range."""
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(3, 451, 300, generator=gen)
    height, width = patch_aligned_size(451, 300, PATCH)
    top, left = (451 - height) // 2, (300 - width) // 2
    image = image[:, top : top + height, left : left + width]
    video = torch.randn(3, 8, 112, 140, generator=gen)
    return image, video


def test_frame_slots():
    assert frame_slots(8) == [0, 9, 18, 27, 36, 45, 54, 63]
    assert frame_slots(1) == [0]
    assert frame_slots(64) == list(range(64))
    with pytest.raises(ValueError, match="between 1 and the 64-slot grid"):
        frame_slots(65)


def test_patch_aligned_size_floors_each_side():
    assert patch_aligned_size(451, 300, 14) == (448, 294)
    assert patch_aligned_size(448, 294, 14) == (448, 294)
    with pytest.raises(ValueError, match="smaller than one 14px patch"):
        patch_aligned_size(13, 100, 14)


def test_rope_axis_split():
    assert rope_axis_sizes(64) == (8, 12, 12)
    assert rope_axis_sizes(32) == (4, 6, 6)
    with pytest.raises(ValueError, match="multiple of 32"):
        rope_axis_sizes(16)
    with pytest.raises(ValueError, match="multiple of 32"):
        OneVisionViTModel(OneVisionViTConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1))


def test_rope_matches_hand_written_formula():
    head_dim, theta = 32, 10000.0
    positions = torch.tensor([[0, 0, 0], [9, 3, 5], [63, 31, 20]])
    x = torch.randn(3, 2, head_dim, generator=torch.Generator().manual_seed(3))  # [tokens, heads, dim]
    out = apply_rope(x, rope_frequencies(positions, head_dim, theta).unsqueeze(1))

    sizes = (4, 6, 6)
    for n, (t, h, w) in enumerate(positions.tolist()):
        half = []
        for coord, size in zip((t, h, w), sizes, strict=True):
            half += [coord / theta ** (i / size) for i in range(size)]
        angles = half + half  # duplicated: concat(f, f)
        for head in range(2):
            v = x[n, head].tolist()
            for j in range(0, head_dim, 2):
                # Interleaved rotate_half: (x_even, x_odd) -> (-x_odd, x_even), each lane with its own angle.
                even = v[j] * math.cos(angles[j]) - v[j + 1] * math.sin(angles[j])
                odd = v[j + 1] * math.cos(angles[j + 1]) + v[j] * math.sin(angles[j + 1])
                assert out[n, head, j].item() == pytest.approx(even, abs=1e-5)
                assert out[n, head, j + 1].item() == pytest.approx(odd, abs=1e-5)


def test_patchify_layout_matches_conv_embedding(model):
    video = torch.randn(3, 2, 28, 42, generator=torch.Generator().manual_seed(4))
    patches = patchify(video, PATCH)
    assert patches.shape == (2 * 2 * 3, 3 * PATCH * PATCH)
    conv = model.embeddings.patch_embedding(video.transpose(0, 1))  # frames as batch: [T, D, h, w]
    expected = conv.permute(0, 2, 3, 1).reshape(-1, conv.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(model.embeddings(patches), expected, atol=1e-5, rtol=1e-5)


def _token_agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    cos = F.cosine_similarity(a.double(), b.double(), dim=-1)
    return cos.min().item(), (a - b).abs().max().item()


def test_batch_and_packed_forms_agree(model, inputs):
    image, video = inputs
    grid = model.config.temporal_slots
    slots = frame_slots(video.shape[1], grid)
    ih, iw = image.shape[1] // PATCH, image.shape[2] // PATCH
    vh, vw = video.shape[2] // PATCH, video.shape[3] // PATCH

    with torch.no_grad():
        image_out = model(image[None], output_hidden_states=True)
        padded = torch.zeros(1, 3, grid, *video.shape[2:])
        padded[0, :, slots] = video
        visible = visible_indices_for_slots(slots, vh, vw)[None]
        video_out = model(padded, visible_indices=visible, output_hidden_states=True)

        patches = torch.cat([patchify(image, PATCH), patchify(video, PATCH)])
        positions = torch.cat([grid_positions([0], ih, iw), grid_positions(slots, vh, vw)])
        packed = model.forward_packed(
            patches, torch.tensor([[1, ih, iw], [8, vh, vw]]), positions, output_hidden_states=True
        )

    n_image = ih * iw
    assert (ih, iw) == (32, 21)
    assert packed.hidden_states[-2].shape == (n_image + 8 * vh * vw, 64)
    assert len(packed.hidden_states) == model.config.num_hidden_layers + 1
    for depth in range(len(packed.hidden_states)):
        batch = torch.cat([image_out.hidden_states[depth][0], video_out.hidden_states[depth][0]])
        min_cos, max_diff = _token_agreement(batch, packed.hidden_states[depth])
        assert min_cos >= 0.9999, f"hidden_states[{depth}] min cosine {min_cos}"
        assert max_diff < 1e-4, f"hidden_states[{depth}] max abs diff {max_diff}"
    pooled = torch.cat([image_out.pooler_output, video_out.pooler_output])
    torch.testing.assert_close(packed.pooler_output, pooled, atol=1e-5, rtol=1e-5)
    # The penultimate layer is not the last one: hidden_states[-1] is last_hidden_state.
    torch.testing.assert_close(packed.hidden_states[-1], packed.last_hidden_state)


def test_padding_slots_do_not_leak(model, inputs):
    _, video = inputs
    slots = frame_slots(8)
    vh, vw = video.shape[2] // PATCH, video.shape[3] // PATCH
    visible = visible_indices_for_slots(slots, vh, vw)[None]
    noisy = torch.randn(1, 3, 64, *video.shape[2:])
    clean = torch.zeros_like(noisy)
    noisy[0, :, slots] = video
    clean[0, :, slots] = video
    with torch.no_grad():
        a = model(noisy, visible_indices=visible).last_hidden_state
        b = model(clean, visible_indices=visible).last_hidden_state
    torch.testing.assert_close(a, b)


def test_save_and_load_round_trip(model, tmp_path, inputs):
    image, _ = inputs
    model.save_pretrained(tmp_path / "copy")
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["model_type"] == "onevision_vit"
    assert config["tiny_random_stand_in"] is True
    assert (tmp_path / "copy" / "model.safetensors").is_file()
    again = OneVisionViTModel.from_pretrained(tmp_path / "copy").eval()
    original, reloaded = model.state_dict(), again.state_dict()
    assert set(original) == set(reloaded)
    for name, value in original.items():
        assert torch.equal(value, reloaded[name]), name
    with torch.no_grad():
        torch.testing.assert_close(again(image[None]).pooler_output, model(image[None]).pooler_output)


def test_tiny_stand_in_sizes(model, tiny_dir):
    assert json.loads((tiny_dir / "config.json").read_text())["tiny_random_stand_in"] is True
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (64, 2, 2, 14)
    assert model.embeddings.patch_embedding.bias is None
    assert {"head.probe", "layernorm_pre.weight", "encoder.layers.1.self_attn.q_proj.weight"} <= set(model.state_dict())


def test_maker_never_overwrites_a_real_checkpoint(tmp_path):
    real = tmp_path / tiny_onevision.DIR_NAME
    real.mkdir()
    (real / "config.json").write_text(json.dumps({"model_type": "onevision_vit"}))
    with pytest.raises(FileExistsError, match="not a tiny stand-in"):
        tiny_onevision.make(tmp_path)
    assert sorted(p.name for p in real.iterdir()) == ["config.json"]


def test_packed_input_errors(model):
    with pytest.raises(ValueError, match=r"patches must be \[196, 588\]"):
        model.forward_packed(torch.zeros(10, 588), [[1, 14, 14]])
    with pytest.raises(ValueError, match="must be positive"):
        model.forward_packed(torch.zeros(0, 588), [[0, 14, 14]])
    with pytest.raises(ValueError, match="multiple of the 14px patch"):
        model(torch.zeros(1, 3, 30, 28))
