"""Strict weight loading: an rms_norm OneVision checkpoint builds the norms its config names, and every extractor
stops (naming the keys) on weights that do not fit, instead of running with random or ignored weights."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lit_features.extractors.dinov2 import DINOv2Features
from lit_features.extractors.onevision import OneVisionFeatures
from lit_features.extractors.qwen_hidden import QwenHiddenStates
from lit_features.extractors.videomae import VideoMAEFeatures
from lit_features.extractors.vision_tower import VisionTowerFeatures
from lit_features.extractors.vjepa2 import VJEPA2Features
from lit_features.extractors.wan import WanTrainingFeatures
from lit_features.models.onevision_vit import OneVisionViTConfig, OneVisionViTModel
from lit_features.models.weights import WeightsMismatchError, check_state_dict
from tests.conftest import REPO_ROOT, run_cli
from tools.tiny_models import onevision_vit as tiny_onevision


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rms_dir(tmp_path_factory) -> Path:
    return tiny_onevision.make(tmp_path_factory.mktemp("rms"), layer_norm_type="rms_norm")[0]


class HandRMSNorm(torch.nn.Module):
    """RMSNorm written from its definition, x / sqrt(mean(x^2) + eps) * weight: the reference's norm."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def reference_from_config(folder: Path) -> OneVisionViTModel:
    """The model the config describes, norms swapped for :class:`HandRMSNorm` holding the checkpoint's weights."""
    config = json.loads((folder / "config.json").read_text())
    assert config["layer_norm_type"] == "rms_norm"
    state = load_file(folder / "model.safetensors")
    assert not [k for k in state if "norm" in k and k.endswith(".bias")]  # an rms_norm file has no norm biases
    layout = OneVisionViTConfig(**{k: v for k, v in config.items() if k != "layer_norm_type"})
    model = OneVisionViTModel(layout).eval()
    eps = config["layer_norm_eps"]
    norms = ["layernorm_pre", "layernorm_post"]
    norms += [f"encoder.layers.{i}.layer_norm{j}" for i in range(config["num_hidden_layers"]) for j in (1, 2)]
    for name in norms:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, HandRMSNorm(state.pop(f"{name}.weight"), eps))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(".weight") and "norm" in k for k in missing)  # the swapped norms
    return model


def test_rms_norm_checkpoint_equals_a_reference_built_from_its_config(rms_dir):
    extractor = OneVisionFeatures(str(rms_dir), dtype="float32")
    extractor.configure_model()
    assert isinstance(extractor.model.layernorm_pre, torch.nn.RMSNorm)
    reference = reference_from_config(rms_dir)
    gen = torch.Generator().manual_seed(0)
    image, video = torch.randn(1, 3, 42, 56, generator=gen), torch.randn(8, 3, 28, 42, generator=gen)
    with torch.no_grad():
        got_image = extractor.encode_one(image, video=False)
        got_video = extractor.encode_one(video, video=True)
        want_image = reference(image.transpose(0, 1)[None], output_hidden_states=True).hidden_states[-2]
        slots = extractor.slots(8)
        padded = torch.zeros(1, 3, 64, 28, 42)
        padded[0, :, slots] = video.transpose(0, 1)
        visible = torch.cat([s * 6 + torch.arange(6) for s in slots])[None]
        want_video = reference(padded, visible_indices=visible, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(got_image.reshape(-1, 64), want_image[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_video.reshape(-1, 64), want_video[0], atol=1e-5, rtol=1e-5)
    # LayerNorm on the same weights (what a loader that ignores layer_norm_type builds) is far off.
    wrong = OneVisionViTModel.from_pretrained(rms_dir, layer_norm_type="layer_norm").eval()
    with torch.no_grad():
        off = wrong(image.transpose(0, 1)[None], output_hidden_states=True).hidden_states[-2]
    assert (off[0] - want_image[0]).abs().max() > 0.1


def test_rms_norm_weights_in_a_layer_norm_model_name_the_missing_biases(rms_dir, tmp_path):
    folder = tmp_path / "mislabelled"
    shutil.copytree(rms_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "layer_norm_type": "layer_norm"}))
    with pytest.raises(WeightsMismatchError) as error:
        OneVisionFeatures(str(folder), dtype="float32").configure_model()
    text = str(error.value)
    assert str(folder) in text and "missing keys (6): " in text
    assert "encoder.layers.0.layer_norm1.bias" in text and "layernorm_pre.bias" in text


def _drop_key(src: Path, dst: Path, key: str, file: str = "model.safetensors") -> Path:
    shutil.copytree(src, dst)
    state = load_file(dst / file)
    assert key in state, sorted(state)[:20]
    del state[key]
    save_file(state, dst / file, metadata={"format": "pt"})
    return dst


def _add_key(src: Path, dst: Path, key: str, file: str = "model.safetensors") -> Path:
    shutil.copytree(src, dst)
    state = load_file(dst / file)
    state[key] = torch.zeros(3)
    save_file(state, dst / file, metadata={"format": "pt"})
    return dst


# (extractor, stand-in folder, key removed from its file, the key as the library names it, extractor args)
CASES = [
    (OneVisionFeatures, "OneVision-Encoder-Base", "encoder.layers.1.mlp.fc1.bias", None, {"dtype": "float32"}),
    (
        VisionTowerFeatures,
        "siglip-so400m-patch14-384",
        "vision_model.post_layernorm.weight",
        "post_layernorm.weight",
        {"dtype": "float32"},
    ),
    (VideoMAEFeatures, "videomae-base", "videomae.encoder.layer.0.output.dense.bias", "encoder.layer.0.", {}),
    (VJEPA2Features, "vjepa2-vitl-fpc64-256", "encoder.layer.1.mlp.fc2.bias", None, {}),
    (DINOv2Features, "dinov2-base", "encoder.layer.0.norm1.weight", None, {}),
]


@pytest.mark.parametrize(("cls", "folder", "key", "reported", "kwargs"), CASES, ids=[c[0].__name__ for c in CASES])
def test_a_missing_key_stops_the_extractor_naming_it(cls, folder, key, reported, kwargs, tiny_models, tmp_path):
    broken = _drop_key(tiny_models / folder, tmp_path / folder, key)
    extractor = cls(str(broken), **kwargs)
    with pytest.raises(WeightsMismatchError) as error:
        extractor.configure_model()
    assert f"missing keys (1): {reported or key}" in str(error.value) and str(broken) in str(error.value)


@pytest.mark.parametrize(
    ("file", "key"),
    [
        ("vae/diffusion_pytorch_model.safetensors", "decoder.conv_in.bias"),
        ("text_encoder/model.safetensors", "encoder.block.0.layer.0.SelfAttention.o.weight"),
    ],
    ids=["vae", "text_encoder"],
)
def test_wan_parts_load_strictly(file, key, tiny_models, tmp_path):
    broken = _drop_key(tiny_models / "Wan2.1-I2V-14B-720P-Diffusers", tmp_path / "wan", key, file)
    with pytest.raises(WeightsMismatchError, match=rf"{file.split('/')[0]}: .*missing keys \(1\): {re.escape(key)}"):
        WanTrainingFeatures(str(broken), dtype="float32").configure_model()


def test_qwen_loads_strictly(tiny_models, tmp_path):
    key = "model.layers.0.mlp.down_proj.weight"
    broken = _drop_key(tiny_models / "Qwen2.5-VL-7B-Instruct", tmp_path / "qwen", key)
    with pytest.raises(WeightsMismatchError, match=r"missing keys \(1\): .*layers\.0\.mlp\.down_proj\.weight"):
        QwenHiddenStates(str(broken), dtype="float32").configure_model()


def test_documented_heads_are_dropped_and_anything_else_unexpected_stops(tiny_models, tmp_path):
    # The SigLIP stand-in is a full two-tower checkpoint: its text tower loads away silently (documented).
    VisionTowerFeatures(str(tiny_models / "siglip-so400m-patch14-384"), dtype="float32").configure_model()
    broken = _add_key(tiny_models / "siglip-so400m-patch14-384", tmp_path / "extra", "vision_model.adapter.weight")
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys \(1\): adapter\.weight"):
        VisionTowerFeatures(str(broken), dtype="float32").configure_model()


def test_check_state_dict_reports_every_kind_of_mismatch():
    expected = {"a.weight": torch.zeros(2, 2), "b.bias": torch.zeros(2)}
    given = {"a.weight": torch.zeros(3, 2), "head.weight": torch.zeros(1), "extra": torch.zeros(1)}
    with pytest.raises(WeightsMismatchError) as error:
        check_state_dict(expected, given, "ckpt.pt", "M", dropped=[r"head\."], hint="Fix it.")
    assert str(error.value) == (
        "ckpt.pt: the weights do not fit M; missing keys (1): b.bias; unexpected keys (1): extra; "
        "shape mismatches (1): a.weight: expected (2, 2), got (3, 2). Fix it."
    )


def test_the_command_line_prints_one_line_naming_the_key(tiny_models, tmp_path):
    broken = _drop_key(tiny_models / "OneVision-Encoder-Base", tmp_path / "ov", "layernorm_pre.weight")
    proc = run_cli(
        [
            "predict",
            "--config",
            str(REPO_ROOT / "configs" / "onevision_features.yaml"),
            "--model.model_path",
            str(broken),
            "--writer.output_dir",
            str(tmp_path / "out"),
            "--data.num_workers",
            "0",
        ],
        check=False,
        OMP_NUM_THREADS="1",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lit_features: error: ") and "missing keys (1): layernorm_pre.weight" in last
    assert "Traceback" not in proc.stderr
