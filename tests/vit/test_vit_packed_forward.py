"""The packed SigLIP/CLIP forward equals the Hugging Face model's own hidden_states on the same pixels."""

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel, SiglipVisionModel

from lit_features.data.dataset import Batch
from lit_features.extractors.base import quiet_transformers
from lit_features.extractors.vision_tower import PackedVisionTowerFeatures, VisionTowerFeatures
from lit_features.models.packed_vision_tower import (
    packed_tower_hidden_state,
    patchify_frames,
    resolve_layer,
    token_budget_groups,
)

TOWERS = {
    "siglip": ("siglip-so400m-patch14-384", SiglipVisionModel),
    "clip": ("clip-vit-large-patch14", CLIPVisionModel),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread; on a shared 2-core box it only adds spin-waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_tower(tiny_models, name, dtype=torch.float32):
    folder, cls = TOWERS[name]
    with quiet_transformers():
        return cls.from_pretrained(tiny_models / folder, dtype=dtype).eval()


def mixed_items():
    """An image at the stand-in's native 56x56 (no interpolation), odd-shaped images and multi-frame items."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(1, 56, 56), (1, 294, 448), (3, 42, 70), (1, 14, 14), (2, 112, 28)]
    return [torch.randn(f, 3, h, w, generator=gen) for f, h, w in shapes]


def reference(tower, item, layer):
    with torch.no_grad():
        out = tower(pixel_values=item.to(tower.dtype), output_hidden_states=True, interpolate_pos_encoding=True)
    hidden = out.hidden_states[layer]
    return hidden[:, 1:] if isinstance(tower, CLIPVisionModel) else hidden


def token_cosine(a, b):
    return F.cosine_similarity(a.double().flatten(0, -2), b.double().flatten(0, -2), dim=-1)


@pytest.mark.parametrize("name", sorted(TOWERS))
@pytest.mark.parametrize("layer", [-2, -1, 0, 1])
def test_packed_equals_hf_hidden_states_fp32(tiny_models, name, layer):
    tower = load_tower(tiny_models, name)
    items = mixed_items()
    packed = packed_tower_hidden_state(tower, items, layer)
    for item, got in zip(items, packed):
        want = reference(tower, item, layer)
        assert got.shape == want.shape
        assert token_cosine(got, want).min() >= 0.9999
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_packed_agrees_with_hf_in_bf16(tiny_models, name):
    tower = load_tower(tiny_models, name, torch.bfloat16)
    items = mixed_items()
    for item, got in zip(items, packed_tower_hidden_state(tower, items, -2)):
        assert got.dtype == torch.bfloat16
        assert token_cosine(got, reference(tower, item, -2)).min() > 0.99


def test_items_do_not_see_each_other(tiny_models):
    """Changing one item's pixels leaves every other item's features bit-for-bit unchanged."""
    tower = load_tower(tiny_models, "siglip")
    items = mixed_items()
    before = packed_tower_hidden_state(tower, items, -2)
    items[1] = torch.randn_like(items[1])
    after = packed_tower_hidden_state(tower, items, -2)
    for i in (0, 2, 3, 4):
        torch.testing.assert_close(before[i], after[i], atol=1e-6, rtol=0)
    assert not torch.allclose(before[1], after[1])


def test_patchify_matches_the_conv_layout():
    frames = torch.randn(2, 3, 28, 42)
    conv = torch.nn.Conv2d(3, 5, 14, 14, bias=False)
    with torch.no_grad():
        want = conv(frames).flatten(2).transpose(1, 2).reshape(-1, 5)
        got = F.linear(patchify_frames(frames, 14), conv.weight.flatten(1))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of the 14px patch"):
        patchify_frames(torch.zeros(1, 3, 30, 28), 14)


def test_layer_index_and_token_budget():
    assert resolve_layer(-2, 3) == 2 and resolve_layer(0, 3) == 0 and resolve_layer(-4, 3) == 0
    with pytest.raises(IndexError, match="out of range for hidden_states of 4 entries"):
        resolve_layer(4, 3)
    assert token_budget_groups([5, 5, 5, 20, 1], 10) == [[0, 1], [2], [3], [4]]
    assert token_budget_groups([5, 5, 5], None) == [[0, 1, 2]]


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_extractors_agree_whatever_the_pack_size(tiny_models, name):
    """Per-sample and packed extractors on one batch of an image and a video; a tiny token budget splits the
    batch into several packs without changing any number."""
    path = str(tiny_models / TOWERS[name][0])
    per_sample = VisionTowerFeatures(path, dtype="float32")
    one_pack = PackedVisionTowerFeatures(path, dtype="float32", max_tokens=None)
    many_packs = PackedVisionTowerFeatures(path, dtype="float32", max_tokens=100)
    for extractor in (per_sample, one_pack, many_packs):
        extractor.configure_model()
    inputs = [torch.randn(1, 3, 294, 448), torch.randn(8, 3, 42, 56), torch.randn(1, 3, 28, 28)]
    metas = [{"kind": "image"}, {"kind": "video"}, {"kind": "image"}]
    batch = Batch(["a", "b", "c"], [None] * 3, metas, inputs, [])
    with torch.no_grad():
        want = per_sample.extract(inputs, batch)
        got_one, got_many = one_pack.extract(inputs, batch), many_packs.extract(inputs, batch)
    assert [o["features"].shape for o in want] == [(672, 32), (8, 12, 32), (4, 32)]
    for w, a, b in zip(want, got_one, got_many):
        torch.testing.assert_close(a["features"], w["features"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b["features"], a["features"], atol=1e-6, rtol=0)


def test_bad_settings_fail_early(tiny_models):
    path = str(tiny_models / TOWERS["siglip"][0])
    with pytest.raises(ValueError, match="normalization must be 'checkpoint' or one of"):
        VisionTowerFeatures(path, normalization="imagenett")
    with pytest.raises(ValueError, match="max_tokens must be positive"):
        PackedVisionTowerFeatures(path, max_tokens=0)
    extractor = PackedVisionTowerFeatures(path, layer=7)
    with pytest.raises(IndexError, match="layer 7 is out of range"):
        extractor.configure_model()
