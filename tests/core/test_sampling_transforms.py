"""Frame index selection (upstream examples, cut, short clips) and the transforms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_features.data.sampling import FrameSampling, ShortClipError, fps_interval, uniform_indices
from lit_features.data.transforms import crop_then_resize, normalize, resize_short_side, resize_then_crop


def test_uniform_matches_upstream_example() -> None:
    assert uniform_indices(240, 8) == [0, 34, 68, 102, 137, 171, 205, 239]
    assert FrameSampling("uniform", 8).select(240, 30.0)[0] == [0, 34, 68, 102, 137, 171, 205, 239]


def test_uniform_honours_cut() -> None:
    indices, padded = FrameSampling("uniform", 4).select(240, 30.0, cut=[100, 140])
    assert indices == [100, 113, 126, 139] and padded == 0


def test_fps_mode_resamples_from_cut_start() -> None:
    assert fps_interval(24.0, 16.0) == 1.5 and fps_interval(16.05, 16.0) == 1.0
    indices, _ = FrameSampling("fps", 5, target_fps=16).select(100, 24.0, cut=[10, 100])
    assert indices == [10, 11, 13, 14, 16]


def test_short_clip_policies_are_explicit() -> None:
    with pytest.raises(ShortClipError, match="36 frames"):
        FrameSampling("fps", 49, target_fps=30).select(36, 29.97)
    indices, padded = FrameSampling("fps", 40, target_fps=30, short_clip="pad_last").select(36, 29.97)
    assert len(indices) == 40 and padded == 4 and indices[-5:] == [35] * 5
    stretched, padded = FrameSampling("uniform", 48, short_clip="stretch").select(36, 29.97)
    assert len(stretched) == 48 and padded == 0 and stretched[0] == 0 and stretched[-1] == 35
    with pytest.raises(ShortClipError):
        FrameSampling("uniform", 48).select(36, 29.97)


def test_resize_orders_differ_as_upstream() -> None:
    x = torch.rand(2, 3, 720, 1280, generator=torch.Generator().manual_seed(0))

    def bilinear(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)

    # crop first: the centred 720x1248 region of the target's aspect (832/480 * 720 = 1248), then 480x832
    a = crop_then_resize(x, (480, 832))
    assert torch.equal(a, bilinear(x[..., :, 16:1264], (480, 832)))
    # resize first: cover 480x832 keeping aspect (480 x ceil(1280 * 2/3) = 854), then the centred 832 columns
    b = resize_then_crop(x, (480, 832))
    assert torch.equal(b, bilinear(x, (480, 854))[..., :, 11:843])
    assert (a - b).abs().max() > 0.1  # the two orders are not interchangeable
    small = torch.rand(1, 3, 240, 321, generator=torch.Generator().manual_seed(1))
    assert torch.equal(resize_short_side(small, 100), bilinear(small, (100, 134)))  # ceil(321 * 100/240) = 134
    assert normalize(torch.ones(1, 3, 2, 2), "half").eq(1).all()
    with pytest.raises(ValueError, match="smaller than the crop"):
        from lit_features.data.transforms import center_crop

        center_crop(torch.rand(1, 1, 80, 96), (88, 88))
