"""Decoder scaling (``--model.decoder_scaling``): FFmpeg scales frames while decoding, towards the job's own target.

Off, frames and features are the exact path's, bit for bit, and fingerprints are those of stores made before the
option existed. On, the decoder's bilinear scaler replaces part of the job's resize: pixels and features stay
within the bounds stated here of the exact path on the bundled videos, both backends give the same frames
(rotation included), and a store made one way refuses a run made the other.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.decoder_scaling import CoverSize, WithinPixels
from lit_features.data.media import decode_video
from lit_features.data.preprocess import MediaLoader
from lit_features.data.sample import Sample
from lit_features.data.sampling import FrameSampling
from lit_features.extractors.vision_tower import NativeResolutionPreprocessor, VisionTowerFeatures
from lit_features.extractors.wan import WanTrainingFeatures
from tests.conftest import run_cli
from tests.core.test_decode import remux_with_rotation

VIDEOS = ["cockatoo.mp4", "v_GGSY1Qvo990.mp4", "realshort.mp4"]  # 1280x720, 320x240, 320x240
SIGLIP = "siglip-so400m-patch14-384"
WAN = "Wan2.1-I2V-14B-720P-Diffusers"
# Bounds of "on" against the exact path on the bundled 1280x720 video, pixels in [0, 1] units and the cosine of
# the tiny stand-ins' features (measured: vision tower at max_pixels 65536, 8.2/255 max, 0.18/255 mean, cosine
# 0.999985, upright or turned; Wan at 480x832, either size rule, 6.0/255 max, 0.13/255 mean, cosine 0.9999998).
VIT_MAX, VIT_MEAN, VIT_COSINE = 10 / 255, 0.25 / 255, 0.9999
WAN_MAX, WAN_MEAN, WAN_COSINE = 8 / 255, 0.2 / 255, 0.99999


def loader() -> MediaLoader:
    return MediaLoader(DecodeSandbox(enabled=False))


def sample(path: Path, **entry) -> Sample:
    return Sample(key=path.stem, source=str(path), entry={"path": str(path), "cap": "a clip", **entry})


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


# -- the size rules --------------------------------------------------------------------------------------------
def test_the_decoder_is_asked_for_a_size_derived_from_the_job_target_and_never_upscales() -> None:
    # Vision tower: max_pixels 65536 of 720x1280 is 192x341; the decoder gets at least twice that.
    assert WithinPixels(65536).size(720, 1280) == (384, 682)
    assert WithinPixels(65536).size(1280, 720) == (682, 384)
    assert WithinPixels(65536).size(240, 320) is None  # twice 221x295 is above the source: decoded as stored
    assert WithinPixels(16384).size(240, 320) == (220, 294)
    assert WithinPixels(65536).size(1079, 1917) == (384, 682)  # odd sources
    # Wan: exactly the covering size the upstream rule resizes to (ceil: FlashI2V, floor: BindWeave).
    assert CoverSize(480, 832, "ceil").size(720, 1280) == (480, 854)
    assert CoverSize(480, 832, "floor").size(720, 1280) == (480, 853)
    assert CoverSize(480, 832, "ceil").size(1080, 1440) == (624, 832)
    assert CoverSize(480, 832, "ceil").size(240, 320) is None  # an upscale stays with the job's own resize
    assert CoverSize(720, 1280, "floor").size(720, 1280) is None  # nothing to shrink


# -- decoding ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("degrees", [0, 90, 180, -90])
def test_scaled_frames_are_upright_and_equal_from_both_backends(media: Path, tmp_path: Path, degrees: int) -> None:
    source = media / "realshort.mp4"
    path = remux_with_rotation(source, tmp_path / "rotated.mp4", degrees) if degrees else source
    rule = CoverSize(97, 161, "floor")  # odd sizes
    sampling = FrameSampling("uniform", 4)
    a = decode_video(str(path), sampling, backend="decord", scale=rule)
    b = decode_video(str(path), sampling, backend="pyav", scale=rule)  # the fallback: decord's filter chain
    upright = (320, 240) if degrees % 180 else (240, 320)
    assert a.source_size == b.source_size == upright
    assert a.frames.shape == b.frames.shape == (4, *rule.size(*upright), 3)
    assert np.array_equal(a.frames, b.frames)
    # The right way up: the unrotated file scaled alike (to the stored aspect), turned by the display angle.
    # Scaling and turning do not commute bit for bit (chroma is subsampled): a tolerance far below a wrong turn.
    size = rule.size(*upright)
    plain = decode_video(str(source), sampling, backend="pyav", size=size[::-1] if degrees % 180 else size).frames
    expected = np.rot90(plain, k=(degrees // 90) % 4, axes=(1, 2))
    assert np.abs(a.frames.astype(float) - expected).mean() < 3.0  # measured: 0 or 1.4; turned wrong: 75


def test_the_size_probe_runs_once_per_file_until_the_file_changes(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import shutil

    from lit_features.data import media as media_module

    probed: list[str] = []
    real = media_module._probe_upright_size
    monkeypatch.setattr(media_module, "_probe_upright_size", lambda path: probed.append(path) or real(path))
    path = shutil.copy(media / "realshort.mp4", tmp_path / "clip.mp4")
    rule = WithinPixels(16384)
    for cut in ([0, 20], [10, 36], [0, 36]):  # clips cut from one video: one probe
        assert decode_video(str(path), FrameSampling("uniform", 4), cut, "decord", scale=rule).source_size == (240, 320)
    assert probed == [str(path)]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # rewritten in place: probed again
    decode_video(str(path), FrameSampling("uniform", 4), None, "decord", scale=rule)
    assert probed == [str(path)] * 2


# -- the vision tower (quickstart) ------------------------------------------------------------------------------
def reference_pixels(frames: np.ndarray, max_pixels: int, patch: int, mean, std) -> torch.Tensor:
    """The exact path written out: full-size frames, bicubic (antialiased) to the max_pixels size, bicubic to the
    nearest patch multiples, normalised."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    s = (max_pixels / (h * w)) ** 0.5
    if h * w > max_pixels:
        x = F.interpolate(x, size=(int(h * s), int(w * s)), mode="bicubic", align_corners=False, antialias=True)
    th, tw = (max(patch, round(n / patch) * patch) for n in x.shape[-2:])
    if (th, tw) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(th, tw), mode="bicubic", align_corners=False, antialias=True)
    return (x.clamp(0, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def vision_tower(tiny_models: Path, **options) -> VisionTowerFeatures:
    model = VisionTowerFeatures(str(tiny_models / SIGLIP), dtype="float32", max_pixels=65536, **options)
    model.configure_model()
    return model


@pytest.mark.parametrize("name", VIDEOS)
def test_vision_tower_off_is_the_exact_path(media: Path, tiny_models: Path, name: str) -> None:
    prep = vision_tower(tiny_models, decoder_scaling=False).preprocessor()
    prepared = prep(sample(media / name), loader())
    assert "decoded_size" not in prepared.meta
    frames = decode_video(str(media / name), FrameSampling("uniform", 8), backend="decord").frames
    want = reference_pixels(frames, 65536, prep.patch_size, prep.mean, prep.std)
    assert torch.equal(prepared.inputs, want)


@pytest.mark.parametrize("name, degrees", [*[(n, 0) for n in VIDEOS], ("cockatoo.mp4", 90)])
def test_vision_tower_on_stays_close_to_the_exact_path(
    media: Path, tiny_models: Path, tmp_path: Path, name: str, degrees: int
) -> None:
    path = remux_with_rotation(media / name, tmp_path / name, degrees) if degrees else media / name
    off, on = vision_tower(tiny_models), vision_tower(tiny_models, decoder_scaling=True)
    a = off.preprocessor()(sample(path), loader())
    b = on.preprocessor()(sample(path), loader())
    assert a.meta["source_size"] == b.meta["source_size"] and a.meta["size"] == b.meta["size"]
    if name != "cockatoo.mp4":  # 320x240 is below twice the target: decoded exactly as with the option off
        assert "decoded_size" not in b.meta and torch.equal(a.inputs, b.inputs)
        return
    assert b.meta["decoded_size"] == ([682, 384] if degrees else [384, 682])
    diff = (a.inputs - b.inputs).abs() * torch.tensor(on.preprocessor().std).view(1, 3, 1, 1)  # in [0, 1] units
    assert diff.max() <= VIT_MAX and diff.mean() <= VIT_MEAN, (float(diff.max()) * 255, float(diff.mean()) * 255)
    with torch.no_grad():
        assert cosine(off.tower_features(a.inputs), on.tower_features(b.inputs)) >= VIT_COSINE


def test_images_are_not_scaled_by_the_decoder(media: Path, tiny_models: Path) -> None:
    on = vision_tower(tiny_models, decoder_scaling=True).preprocessor()
    off = vision_tower(tiny_models).preprocessor()
    image = sample(media / "astronaut.png")
    assert torch.equal(on(image, loader()).inputs, off(image, loader()).inputs)


def test_decoder_scaling_without_max_pixels_is_refused(tiny_models: Path) -> None:
    with pytest.raises(ValueError, match="decoder_scaling needs max_pixels"):
        NativeResolutionPreprocessor(decoder_scaling=True)


# -- Wan (FlashI2V and BindWeave size rules) --------------------------------------------------------------------
@pytest.mark.parametrize("size_rule", ["flashi2v", "bindweave"])
def test_wan_on_stays_close_to_the_exact_path(media: Path, tiny_models: Path, size_rule: str) -> None:
    options = dict(num_frames=5, target_fps=None, height=480, width=832, size_rule=size_rule, dtype="float32")
    off = WanTrainingFeatures(str(tiny_models / WAN), **options)
    on = WanTrainingFeatures(str(tiny_models / WAN), decoder_scaling=True, **options)
    for name in ("cockatoo.mp4", "realshort.mp4"):
        clip = sample(media / name, cut=[100, 140] if name == "cockatoo.mp4" else [0, 36])
        a = off.preprocessor()(clip, loader())
        b = on.preprocessor()(clip, loader())
        assert a.meta["source_size"] == b.meta["source_size"]
        if name == "realshort.mp4":  # 320x240 is upscaled to cover 480x832: left to the job's own resize
            assert "decoded_size" not in b.meta and torch.equal(a.inputs["video"], b.inputs["video"])
            continue
        assert b.meta["decoded_size"] == [480, 854 if size_rule == "flashi2v" else 853]
        diff = (a.inputs["video"] - b.inputs["video"]).abs() / 2  # [-1, 1] -> [0, 1] units
        assert diff.max() <= WAN_MAX and diff.mean() <= WAN_MEAN, (float(diff.max()) * 255, float(diff.mean()) * 255)
        off.configure_model()
        with torch.no_grad():
            latents = [off.encode_video(p.inputs["video"][None]) for p in (a, b)]
        assert cosine(*latents) >= WAN_COSINE


# -- fingerprints and resume ------------------------------------------------------------------------------------
def test_fingerprints_are_unchanged_off_and_record_the_option_on(tiny_models: Path) -> None:
    for make in (
        lambda **o: VisionTowerFeatures(str(tiny_models / SIGLIP), max_pixels=65536, **o),
        lambda **o: WanTrainingFeatures(str(tiny_models / WAN), **o),
    ):
        off, on = make(decoder_scaling=False).fingerprint(), make(decoder_scaling=True).fingerprint()
        assert off == make().fingerprint() and "decoder_scaling" not in json.dumps(off) and "scale" not in off["decode"]
        assert on["params"]["decoder_scaling"] is True and on["preprocess"]["decoder_scaling"] is True
        assert on["decode"]["scale"].startswith("ffmpeg_bilinear_to_")


def test_a_store_made_with_decoder_scaling_refuses_a_run_without_it(tiny_models: Path, media: Path, tmp_path: Path):
    manifest = tmp_path / "clips.json"
    manifest.write_text(json.dumps([{"path": str(media / "realshort.mp4")}]))
    args = ["predict", "--config", "configs/quickstart.yaml", "--model.model_path", str(tiny_models / SIGLIP)]
    args += ["--data.manifest", str(manifest), "--data.num_workers", "0", "--writer.output_dir", str(tmp_path / "s")]
    args += ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--model.max_pixels", "65536"]
    run_cli([*args, "--model.decoder_scaling", "true"])
    proc = run_cli(args, check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lit_features: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "params.decoder_scaling: True -> '<absent>'" in errors[0]
    assert "decode.scale: 'ffmpeg_bilinear_to_2x_target' -> '<absent>'" in errors[0]
