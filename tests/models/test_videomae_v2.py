"""VideoMAE V2 encoder: upstream key layout, strict loading, dense feature shapes and the position table."""

import math

import pytest
import torch

from lit_features.models.videomae_v2 import (
    VideoMAEv2,
    VideoMAEv2Config,
    load_videomae_v2,
    resize_position_table,
    sinusoid_position_table,
)
from tools.tiny_models import videomae_v2 as tiny_videomae


def _upstream_vit_b_keys() -> set[str]:
    """Parameter names of upstream's fine-tuning ViT-B (use_mean_pooling=True), without the head."""
    keys = {"patch_embed.proj.weight", "patch_embed.proj.bias", "fc_norm.weight", "fc_norm.bias"}
    for i in range(12):
        keys |= {
            f"blocks.{i}.norm1.weight",
            f"blocks.{i}.norm1.bias",
            f"blocks.{i}.attn.q_bias",
            f"blocks.{i}.attn.v_bias",
            f"blocks.{i}.attn.qkv.weight",
            f"blocks.{i}.attn.proj.weight",
            f"blocks.{i}.attn.proj.bias",
            f"blocks.{i}.norm2.weight",
            f"blocks.{i}.norm2.bias",
            f"blocks.{i}.mlp.fc1.weight",
            f"blocks.{i}.mlp.fc1.bias",
            f"blocks.{i}.mlp.fc2.weight",
            f"blocks.{i}.mlp.fc2.bias",
        }
    return keys


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return tiny_videomae.make(tmp_path_factory.mktemp("videomae"))[0]


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt):
    return load_videomae_v2(tiny_ckpt)


def test_vit_b_default_has_upstream_parameter_names_and_shapes():
    with torch.device("meta"):
        model = VideoMAEv2()
    state = model.state_dict()
    assert set(state) == _upstream_vit_b_keys()
    assert state["patch_embed.proj.weight"].shape == (768, 3, 2, 16, 16)
    assert state["blocks.0.attn.qkv.weight"].shape == (3 * 768, 768)
    assert state["blocks.0.mlp.fc1.weight"].shape == (3072, 768)
    # ViT-B/16 is ~86.2M parameters without its head.
    assert 86.0e6 < sum(math.prod(t.shape) for t in state.values()) < 86.4e6


def test_tiny_checkpoint_has_upstream_layout(tiny_ckpt):
    payload = torch.load(tiny_ckpt, weights_only=True)
    assert payload["tiny_random_stand_in"] is True
    assert payload["videomae_v2_config"]["embed_dim"] == 32
    module = payload["module"]
    assert {"head.weight", "head.bias", "blocks.1.attn.q_bias", "fc_norm.weight"} <= set(module)
    assert module["patch_embed.proj.weight"].shape == (32, 3, 2, 16, 16)
    assert module["blocks.0.norm1.weight"].dtype == torch.float16


def test_loads_without_missing_or_unexpected_keys(tiny_ckpt, tiny_model):
    module = torch.load(tiny_ckpt, weights_only=True)["module"]
    loaded = tiny_model.state_dict()
    assert set(loaded) == set(module) - {"head.weight", "head.bias"}
    for name, value in loaded.items():
        torch.testing.assert_close(value, module[name].float())
    assert tiny_model.config.embed_dim == 32 and tiny_model.config.patch_size == 16


def test_48_frames_at_160x240_give_24x10x15_tokens(tiny_model):
    video = torch.randn(1, 3, 48, 160, 240, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = tiny_model.forward_features(video)
    assert features.shape == (1, 24, 10, 15, 32)
    assert torch.isfinite(features).all()


def _reference_features(model: VideoMAEv2, video: torch.Tensor) -> torch.Tensor:
    """Upstream's forward written out: explicit softmax, q/v bias with a zero k bias, no final norm."""
    cfg = model.config
    x = model.patch_embed.proj(video)
    b, c, t, h, w = x.shape
    x = x.flatten(2).transpose(1, 2) + model.position_table((t, h, w))
    heads, hd = cfg.num_heads, c // cfg.num_heads
    for blk in model.blocks:
        y = blk.norm1(x)
        bias = torch.cat([blk.attn.q_bias, torch.zeros(c), blk.attn.v_bias])
        qkv = (y @ blk.attn.qkv.weight.T + bias).reshape(b, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] * hd**-0.5) @ qkv[1].transpose(-2, -1)).softmax(-1)
        x = x + blk.attn.proj((attn @ qkv[2]).transpose(1, 2).reshape(b, -1, c))
        y = blk.norm2(x)
        x = x + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(y)))
    return x.reshape(b, t, h, w, c)


def test_forward_matches_direct_reference(tiny_model):
    video = torch.randn(2, 3, 4, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = tiny_model.forward_features(video)
        ref = _reference_features(tiny_model, video)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_sinusoid_table_formula():
    table = sinusoid_position_table(7, 10)
    for pos in (0, 3, 6):
        for j in range(10):
            angle = pos / 10000 ** (2 * (j // 2) / 10)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert table[pos, j].item() == pytest.approx(expected, abs=1e-6)


def test_position_table_resize():
    cfg = VideoMAEv2Config()
    table = sinusoid_position_table(8 * 14 * 14, 768)
    assert torch.equal(resize_position_table(table, cfg.pretrain_grid, cfg.pretrain_grid), table)

    resized = resize_position_table(table, (8, 14, 14), (24, 10, 15)).reshape(24, 10, 15, 768)
    spatial = torch.nn.functional.interpolate(
        table.reshape(8, 14, 14, 768).permute(0, 3, 1, 2), size=(10, 15), mode="bicubic", align_corners=False
    ).permute(0, 2, 3, 1)
    # Linear 8 -> 24 with align_corners=False samples source time (i + 0.5) / 3 - 0.5, clamped at 0.
    torch.testing.assert_close(resized[0], spatial[0])
    torch.testing.assert_close(resized[1], spatial[0])
    torch.testing.assert_close(resized[2], spatial[0] * 2 / 3 + spatial[1] / 3)
    torch.testing.assert_close(resized[4], spatial[1])
    torch.testing.assert_close(resized[23], spatial[7])
    # Pure temporal resize keeps every spatial row of a time step.
    only_time = resize_position_table(table, (8, 14, 14), (24, 14, 14)).reshape(24, 14, 14, 768)
    torch.testing.assert_close(only_time[4], table.reshape(8, 14, 14, 768)[1])


def _rewrite(tiny_ckpt, tmp_path, edit):
    payload = torch.load(tiny_ckpt, weights_only=True)
    edit(payload["module"])
    path = tmp_path / "edited.pth"
    torch.save(payload, path)
    return path


def test_missing_key_is_a_clear_error(tiny_ckpt, tmp_path):
    path = _rewrite(tiny_ckpt, tmp_path, lambda sd: sd.pop("blocks.1.mlp.fc2.bias"))
    with pytest.raises(ValueError, match=r"edited\.pth.*missing keys \(1\): blocks\.1\.mlp\.fc2\.bias"):
        load_videomae_v2(path)


def test_unexpected_key_is_a_clear_error(tiny_ckpt, tmp_path):
    path = _rewrite(tiny_ckpt, tmp_path, lambda sd: sd.update({"cls_token": torch.zeros(1, 1, 32)}))
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): cls_token"):
        load_videomae_v2(path)


def test_size_mismatch_names_the_sizes(tiny_ckpt):
    with pytest.raises(ValueError, match=r"embed_dim=64.*shape mismatches \(\d+\): .*Set the model sizes"):
        load_videomae_v2(tiny_ckpt, embed_dim=64, num_heads=2)
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): blocks\.2\."):
        load_videomae_v2(tiny_ckpt, depth=3)


def test_bare_and_model_wrapped_state_dicts_load(tiny_ckpt, tmp_path):
    payload = torch.load(tiny_ckpt, weights_only=True)
    for wrap in ("model", None):
        state = payload["module"]
        body = {"model": state} if wrap else dict(state)
        path = tmp_path / f"{wrap}.pth"
        torch.save(body, path)
        model = load_videomae_v2(path, embed_dim=32, depth=2, num_heads=2)
        assert model.config.embed_dim == 32


def test_missing_file_and_unknown_field(tmp_path, tiny_ckpt):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_videomae_v2(tmp_path / "nope.pth")
    with pytest.raises(TypeError, match="unknown VideoMAEv2Config fields"):
        load_videomae_v2(tiny_ckpt, width=3)


def test_rejects_clips_that_do_not_tile(tiny_model):
    with pytest.raises(ValueError, match="does not tile"):
        tiny_model.forward_features(torch.zeros(1, 3, 3, 32, 32))


def test_maker_never_overwrites_a_real_checkpoint(tmp_path):
    real = tmp_path / tiny_videomae.FILE_NAME
    torch.save({"module": {"w": torch.zeros(1)}}, real)
    with pytest.raises(FileExistsError, match="not a tiny stand-in"):
        tiny_videomae.make(tmp_path)
    assert set(torch.load(real, weights_only=True)["module"]) == {"w"}


def test_maker_replaces_its_own_output(tmp_path):
    first = tiny_videomae.make(tmp_path)[0].read_bytes()
    assert tiny_videomae.make(tmp_path)[0].read_bytes() == first  # deterministic, and allowed to rewrite
