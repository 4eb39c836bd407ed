"""Write the golden cases of ``tests/golden/``: micro weights plus the features today's code computes from them.

    python tools/make_golden.py [--only vision_tower ...]

Each case is a shipped config run through the real entry point on one bundled sample with micro random weights
(the model's own config class, a few KB of weights saved with ``save_pretrained``, marked as a stand-in). The
folder keeps the weights (``weights/``), the features of that sample (``expected.safetensors``) and how they were
made (``case.json``). ``tests/core/test_golden.py`` recomputes them: a dependency upgrade or a code change that
moves the numbers (decoding, resizing, the model's maths) fails there. Rewrite a case only for a change that is
meant to change features, and say so in the commit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from lit_features.models.stand_in import STAND_IN_MARKER  # noqa: E402

GOLDEN = ROOT / "tests" / "golden"


def _save(model: torch.nn.Module, target: Path, processor: dict | None = None) -> None:
    model.config.update({STAND_IN_MARKER: True})
    model.save_pretrained(target)
    if processor is not None:
        (target / "preprocessor_config.json").write_text(json.dumps({**processor, STAND_IN_MARKER: True}, indent=2))


def siglip_vision(target: Path) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=28
    )
    torch.manual_seed(0)
    processor = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 28, "width": 28}}
    _save(SiglipVisionModel(config), target, processor)


def videomae(target: Path) -> None:
    from transformers import VideoMAEConfig, VideoMAEModel

    config = VideoMAEConfig(
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        patch_size=16,
        tubelet_size=2,
        num_frames=4,
        image_size=32,
        use_mean_pooling=False,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    processor = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    _save(VideoMAEModel(config), target, processor)


def onevision(target: Path) -> None:
    from lit_features.models.onevision_vit import OneVisionViTConfig, OneVisionViTModel

    # head_dim 32: the smallest that splits its 16 rotary frequencies 4:6:6 over (t, h, w).
    config = OneVisionViTConfig(
        hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1, patch_size=14
    )
    torch.manual_seed(0)
    model = OneVisionViTModel(config)
    with torch.no_grad():  # fresh norms are exactly ones and zeros: perturb them so they count
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    _save(model, target)


#: Case name -> (weights maker, shipped config, bundled media, overrides of the config).
CASES: dict[str, tuple[Callable[[Path], None], str, str, list[str]]] = {
    "vision_tower": (siglip_vision, "quickstart", "chelsea.jpg", ["--model.max_pixels", "20000"]),
    "videomae": (videomae, "vfm_videomae", "realshort.mp4", ["--model.num_frames", "4", "--model.height", "32"]),
    "onevision": (
        onevision,
        "onevision_features",
        "v_GGSY1Qvo990.mp4",
        ["--model.num_frames", "2", "--model.max_pixels", "20000"],
    ),
}


def predict_args(case: str, weights: Path, manifest: Path, out: Path) -> list[str]:
    """``predict`` arguments of a case: its config, its weights and overrides, float32, one sample."""
    _, config, _, overrides = CASES[case]
    args = ["--config", str(ROOT / "configs" / f"{config}.yaml"), "--model.model_path", str(weights), *overrides]
    args += ["--model.dtype", "float32", "--data.manifest", str(manifest), "--data.num_workers", "0"]
    args += ["--writer.output_dir", str(out), "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    return args


def write_manifest(case: str, folder: Path) -> Path:
    media = ROOT / "samples" / "media" / CASES[case][2]
    manifest = folder / "golden.json"
    manifest.write_text(json.dumps([{"path": str(media), "cap": "a golden sample"}]))
    return manifest


def run_case(case: str, weights: Path, folder: Path) -> dict[str, torch.Tensor]:
    """The features of the case's sample computed now (through ``python -m lit_features predict``)."""
    from lit_features.__main__ import main
    from lit_features.store.reader import FeatureStore

    out = folder / "store"
    if main(["predict", *predict_args(case, weights, write_manifest(case, folder), out)]) != 0:
        raise RuntimeError(f"golden case {case}: predict failed")
    store = FeatureStore(out)
    (key,) = store.keys()
    return store[key]


def make(case: str) -> Path:
    from safetensors.torch import save_file

    target = GOLDEN / case
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    CASES[case][0](target / "weights")
    with tempfile.TemporaryDirectory() as tmp:
        tensors = run_case(case, target / "weights", Path(tmp))
    save_file({k: v.contiguous() for k, v in tensors.items()}, target / "expected.safetensors")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help=f"cases: {', '.join(CASES)}")
    args = parser.parse_args(argv)
    for case in args.only or list(CASES):
        target = make(case)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        print(f"{case:14s} {size / 1024:7.1f} KiB -> {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
