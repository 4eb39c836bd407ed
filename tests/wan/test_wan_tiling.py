"""MindSpeed-MM's tiled VAE encode (BindWeave's), against an implementation of the algorithm written here from its
description, and against the untiled encode.

The algorithm: tiles of 272x272 pixels (34x34 latent) every 144 pixels down and 128 across; no tile starts once
the previous one reached the far edge (the last one may be cut short by the frame). Each tile's latent is
weighted by a linear ramp (1/b, 2/b, ..., 1) over b = (tile - stride) / 8 latent pixels along each edge it
shares with a neighbour; where an axis' two ramps overlap the far edge's ramp holds; the two axes combine by
their minimum. Weighted latents and weights are summed in the input's dtype; the result is their quotient,
then normalised per channel.

Measured on the tiny stand-in VAE: tiled vs this reference bit-identical in fp32 and bf16 (8 tiles of 80 px at
stride 48x32, overlapping ramps included, 5 frames of 96x176); with BindWeave's tiles on 5 frames of 288x416
(6 tiles), tiled vs untiled fp32: max |diff| 0.047, relative RMS 0.0075, cosine 0.99997 (latent std 0.42), and
diffusers' tiling vs this one max |diff| 0.048.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_features.extractors.wan import WanTrainingFeatures
from lit_features.extractors.wan_vae import tile_starts

WAN = "Wan2.1-I2V-14B-720P-Diffusers"


def smooth_clip(height: int, width: int) -> torch.Tensor:
    """5 frames in [-1, 1], smooth enough to look like an image to the VAE."""
    noise = torch.rand(1, 3, 2, 9, 13, generator=torch.Generator().manual_seed(0))
    return F.interpolate(noise, size=(5, height, width), mode="trilinear") * 2 - 1


# Small tiles keep the bit-for-bit check cheap: 10x10 latent tiles with 4- and 6-pixel ramps (two 6-pixel ramps
# overlap in a 10-pixel tile, as BindWeave's 18-pixel ramps do in its 34-pixel tiles).
SMALL_TILES = dict(
    tile_sample_min_height=80, tile_sample_min_width=80, tile_sample_stride_height=48, tile_sample_stride_width=32
)


def extractor(tiny_models, vae_dtype: str, **kwargs) -> WanTrainingFeatures:
    wan = WanTrainingFeatures(
        model_path=str(tiny_models / WAN), num_frames=5, vae_dtype=vae_dtype, dtype="float32", **kwargs
    )
    wan.configure_model()
    return wan


def starts(size: int, tile: int, stride: int) -> list[int]:
    out, start = [], 0
    while start < size:
        out.append(start)
        if start + tile >= size:  # this tile reaches the far edge: the last one
            break
        start += stride
    return out


def ramp(length: int, border: int, at_start: bool, at_end: bool) -> list[float]:
    weights = []
    for r in range(length):
        w = 1.0
        if at_start and r < border:
            w = (r + 1) / border
        if at_end and r >= length - border:
            w = (length - r) / border
        weights.append(w)
    return weights


def reference_tiled_latent(vae, clip: torch.Tensor, tile=(272, 272), stride=(144, 128)) -> torch.Tensor:
    """Normalised latent of ``clip`` by the algorithm in the module doc (mode of each tile's distribution)."""
    x = clip.to(vae.dtype)
    height, width = x.shape[-2:]
    borders = ((tile[0] - stride[0]) // 8, (tile[1] - stride[1]) // 8)
    values = weights = None
    for top in starts(height, tile[0], stride[0]):
        for left in starts(width, tile[1], stride[1]):
            with torch.no_grad():
                z = vae.encode(x[..., top : top + tile[0], left : left + tile[1]]).latent_dist.mode()
            if values is None:
                values = torch.zeros(1, z.shape[1], z.shape[2], height // 8, width // 8, dtype=x.dtype)
                weights = torch.zeros(1, 1, z.shape[2], height // 8, width // 8, dtype=x.dtype)
            lh, lw = z.shape[-2:]
            rows = ramp(lh, borders[0], top > 0, top + tile[0] < height)
            cols = ramp(lw, borders[1], left > 0, left + tile[1] < width)
            mask = torch.tensor([[min(r, c) for c in cols] for r in rows], dtype=torch.float32).to(x.dtype)
            values[..., top // 8 : top // 8 + lh, left // 8 : left // 8 + lw] += z * mask
            weights[..., top // 8 : top // 8 + lh, left // 8 : left // 8 + lw] += mask
    latent = values / weights
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latent)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latent)
    return (latent - mean) / std


def test_tile_starts_of_the_upstream_layouts():
    assert tile_starts(720, 272, 144) == starts(720, 272, 144) == [0, 144, 288, 432, 576]
    assert tile_starts(1280, 272, 128) == starts(1280, 272, 128) == [0, 128, 256, 384, 512, 640, 768, 896, 1024]
    assert tile_starts(480, 272, 144) == [0, 144, 288] and tile_starts(832, 272, 128) == [0, 128, 256, 384, 512, 640]
    assert tile_starts(200, 272, 144) == [0]  # smaller than a tile: one tile, no blending


@pytest.mark.parametrize("vae_dtype", ["float32", "bfloat16"])
def test_tiled_encode_is_the_upstream_algorithm(tiny_models, vae_dtype):
    wan = extractor(tiny_models, vae_dtype, enable_tiling=True, **SMALL_TILES)
    assert wan.tiling.method == "mindspeed"  # the default
    clip = smooth_clip(96, 176)  # rows start at 0, 48; columns at 0, 32, 64, 96 (the last cut short by the frame)
    with torch.no_grad():
        tiled = wan.encode_video(clip)
    expected = reference_tiled_latent(wan.model["vae"], clip, tile=(80, 80), stride=(48, 32))
    assert tiled.dtype == expected.dtype == getattr(torch, vae_dtype) and tiled.shape == (1, 16, 2, 12, 22)
    assert torch.equal(tiled, expected)  # same tiles, same sums in the same order: bit for bit


def test_tiled_against_untiled_and_against_diffusers_tiling(tiny_models):
    clip = smooth_clip(288, 416)
    tiled = extractor(tiny_models, "float32", enable_tiling=True)
    with torch.no_grad():
        a = extractor(tiny_models, "float32").encode_video(clip)  # whole frames
        b = tiled.encode_video(clip)
        c = extractor(tiny_models, "float32", enable_tiling=True, tiling_method="diffusers").encode_video(clip)
    diff = (a - b).abs().max().item()
    rel_rms = ((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()).item()
    cosine = F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert diff <= 0.06 and rel_rms <= 0.01 and cosine >= 0.9999, (diff, rel_rms, cosine)
    assert diff > 1e-3  # the tiles really are blended, not the whole frame
    # diffusers' own tiling blends differently: not the upstream latents
    assert (b - c).abs().max().item() > 1e-2
