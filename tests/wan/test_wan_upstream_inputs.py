"""The Wan inputs of the shipped BindWeave and FlashI2V configs, pinned with the numbers the upstream code gives.

Frames: BindWeave takes 81 consecutive frames from ``start_frame_idx`` whatever the source rate; FlashI2V takes
``arange(start, ..., fps / 16)`` truncated. Sizes: both cover the target by the short side with the matched side
exactly the target (BindWeave truncates the other side, FlashI2V rounds it up) on the uint8 frames. Captions:
FlashI2V's cleaning (the expected strings were produced by FlashI2V's own ``TextProcessor.text_preprocessing``
with ``support_chinese=False``), BindWeave's whitespace collapsing.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from lit_features.data.dataset import SampleDataset
from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.manifest import read_manifests
from lit_features.data.preprocess import EntryError
from lit_features.data.transforms import cover_short_side, resize_cover
from lit_features.extractors import wan_inputs
from lit_features.extractors.wan_inputs import MissingDependencyError, WanVideoPreprocessor
from tests.wan.test_wan_roundtrip import shipped_wan_preprocessor

BINDWEAVE, FLASHI2V = "wan_train_features.yaml", "flashi2v_features.yaml"


@pytest.fixture(scope="module")
def shipped(tiny_models):
    return {name: shipped_wan_preprocessor(tiny_models, name)[0] for name in (BINDWEAVE, FLASHI2V)}


@pytest.mark.parametrize("fps", [24.0, 25.0, 30.0])
def test_bindweave_frames_are_consecutive_from_the_start_at_any_rate(shipped, fps):
    indices, padded = shipped[BINDWEAVE].sampling().select(400, fps, [37, 400])
    assert indices == list(range(37, 118)) and padded == 0  # 81 frames: 37..117


@pytest.mark.parametrize(
    ("fps", "head", "tail"),
    [
        (24.0, [12, 13, 15, 16, 18, 19, 21, 22, 24, 25], [82, 84]),  # every 1.5 frames
        (25.0, [12, 13, 15, 16, 18, 19, 21, 22, 24, 26], [85, 87]),  # every 1.5625 frames
        (30.0, [12, 13, 15, 17, 19, 21, 23, 25, 27, 28], [100, 102]),  # every 1.875 frames
    ],
)
def test_flashi2v_frames_are_resampled_to_16_fps(shipped, fps, head, tail):
    indices, _ = shipped[FLASHI2V].sampling().select(400, fps, [12, 400])
    assert len(indices) == 49 and indices[:10] == head and indices[-2:] == tail


def test_start_frame_idx_sets_the_start_and_must_agree_with_cut(shipped, tmp_path):
    pre = shipped[BINDWEAVE]
    manifest = tmp_path / "m.json"
    manifest.write_text(
        json.dumps(
            [
                {"path": "a.mp4", "cap": "x", "start_frame_idx": 7},
                {"path": "b.mp4", "cap": "x", "start_frame_idx": 7, "cut": [7, 300]},
                {"path": "c.mp4", "cap": "x", "start_frame_idx": 7, "cut": [0, 300]},
            ]
        )
    )
    a, b, c = read_manifests(manifest)
    assert pre.sampling().select(200, 30.0, pre.frame_window(a))[0] == list(range(7, 88))
    assert pre.frame_window(b) == [7, 300]
    pre.validate(a)
    pre.validate(b)
    with pytest.raises(EntryError, match=r"7 disagrees with cut\[0\] = 0"):
        pre.validate(c)


# Source sizes where scaling both sides by one factor and rounding up (the old rule) lands one row off the target.
COVER_SIZES = [
    # (source h, w), old rule at 480x832, FlashI2V at 480x832 (ceil), BindWeave at 720x1280 (truncated)
    ((340, 600), (481, 848), (480, 848), (725, 1280)),
    ((340, 640), (481, 904), (480, 904), (720, 1355)),
    ((406, 704), (481, 833), (480, 833), (738, 1280)),
    ((406, 720), (481, 852), (480, 852), (721, 1280)),
    ((406, 854), (481, 1010), (480, 1010), (720, 1514)),
    ((464, 848), (481, 878), (480, 878), (720, 1315)),
    ((464, 1080), (481, 1118), (480, 1118), (720, 1675)),
    ((680, 1280), (481, 904), (480, 904), (720, 1355)),
    ((818, 1456), (481, 855), (480, 855), (720, 1281)),
    ((818, 1920), (481, 1127), (480, 1127), (720, 1689)),
]


@pytest.mark.parametrize(("source", "old", "flashi2v", "bindweave"), COVER_SIZES)
def test_cover_sizes_keep_the_matched_side_exact(source, old, flashi2v, bindweave):
    assert tuple(resize_cover(torch.zeros(1, 1, *source), (480, 832)).shape[-2:]) == old
    assert cover_short_side(*source, (480, 832), "ceil") == flashi2v
    assert cover_short_side(*source, (720, 1280), "floor") == bindweave


def random_frames(h: int, w: int) -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h * w))


def resized_uint8(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)


def test_flashi2v_pixels_resize_uint8_then_crop(shipped):
    pre = shipped[FLASHI2V]
    frames = random_frames(406, 720)
    expected = resized_uint8(frames, (480, 852))[..., 0:480, 10:842].float() / 255  # crop offset (852 - 832) / 2
    assert torch.equal(pre.sized(frames), expected)
    # resizing floats instead (then rounding) is not the same image: the uint8 resize rounds on its own
    float_path = (resized_uint8(frames.float(), (480, 852)).round().clamp(0, 255) / 255)[..., 0:480, 10:842]
    assert not torch.equal(float_path, expected)


def test_bindweave_pixels_resize_uint8_then_crop(shipped):
    pre = replace_size(shipped[BINDWEAVE], 720, 1280)
    frames = random_frames(406, 720)
    expected = resized_uint8(frames, (721, 1280)).float()[..., 0:720, :] / 255  # offset round(0.5) = 0
    assert torch.equal(pre.sized(frames), expected)
    # 702x1248 (16:9): 1280 / 1248 * 702 = 719.99..., truncated to 719; cropped to 719x1278, then resized up
    frames = random_frames(702, 1248)
    cropped = resized_uint8(frames, (719, 1280)).float()[..., :, 1:1279] / 255
    assert torch.equal(pre.sized(frames), resized_uint8(cropped, (720, 1280)))


def replace_size(pre: WanVideoPreprocessor, height: int, width: int) -> WanVideoPreprocessor:
    import dataclasses

    return dataclasses.replace(pre, height=height, width=width)


# Each expected string is what FlashI2V's own text processor returns (support_chinese=False).
CAPTIONS = [
    ("A Cat sits on a SOFA.", "a cat sits on a sofa."),
    ("Visit https://example.com/page?x=1 for <b>more</b> info!!", "visit ?x=1 for more info!!"),
    ("<p>Hello&amp;world</p> &quot;quoted&quot;", 'hello world "quoted"'),
    ("A man — wearing a “red” hat — walks...", 'a man - wearing a "red" hat - walks'),
    (
        "The camera pans: left, right;  up/down (slowly) [fast] {x} |y|",
        "the camera pans: left, right; up down slowly fast x y",
    ),
    ("IMG_1234.JPG @user #123 ***SALE***", "sale"),
    ("中文字幕 A dog runs 跑步", "a dog runs"),
    ("a-b-c-d-e dash", "a b c d e dash"),
    ("Price 12.5 x 3 items, 192.168.0.1 server", "price 12.5 x 3 items, server"),
]


@pytest.mark.parametrize(("caption", "cleaned"), CAPTIONS)
def test_flashi2v_caption_cleaning(shipped, caption, cleaned):
    assert shipped[FLASHI2V].caption_cleaning == "flashi2v"
    assert shipped[FLASHI2V].caption(caption) == cleaned


def test_bindweave_captions_only_collapse_whitespace(shipped):
    assert shipped[BINDWEAVE].caption("A Cat  sits\ton a <b>SOFA</b>.\n") == "A Cat sits on a <b>SOFA</b>."


def test_cleaning_is_recorded_in_the_fingerprint(shipped):
    assert shipped[FLASHI2V].params()["caption_cleaning"] == "flashi2v"
    assert shipped[BINDWEAVE].params()["caption_cleaning"] == "whitespace"


def test_caption_empty_after_cleaning_fails_that_sample_with_its_reason(shipped, tmp_path, media):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"path": str(media / "chelsea.jpg"), "cap": "@user https://example.com #42"}]))
    samples = read_manifests(manifest)
    shipped[FLASHI2V].validate(samples[0])  # whitespace-wise there is text: only cleaning empties it
    item = SampleDataset(samples, shipped[FLASHI2V], DecodeSandbox(enabled=False))[0]
    failure = item["failure"]
    assert not item["ok"] and failure.stage == "transform" and failure.error == "EmptyCaptionError"
    assert "'@user https://example.com #42' is empty after flashi2v cleaning" in failure.message


def test_flashi2v_cleaning_refuses_to_run_without_its_libraries(monkeypatch):
    wan_inputs._caption_cleaner.cache_clear()
    monkeypatch.setitem(sys.modules, "bs4", None)  # import fails
    try:
        with pytest.raises(MissingDependencyError, match="needs beautifulsoup4: pip install beautifulsoup4"):
            WanVideoPreprocessor(caption_cleaning="flashi2v")
    finally:
        wan_inputs._caption_cleaner.cache_clear()


def test_cover_rounding_differs_in_a_few_percent_of_sizes():
    """The share of source sizes (even, h/w in [0.4, 1.2], up to 2160x3840) the old rule got wrong at 480x832."""
    differ = total = 0
    for h in range(240, 2161, 8):
        for w in range(320, 3841, 8):
            if 0.4 <= h / w <= 1.2:
                total += 1
                scale = max(480 / h, 832 / w)
                old = (max(480, math.ceil(h * scale)), max(832, math.ceil(w * scale)))
                differ += old != cover_short_side(h, w, (480, 832), "ceil")
    assert 0.02 < differ / total < 0.12, differ / total
