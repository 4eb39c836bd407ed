"""Wan2.1 VAE latents as the upstream trainers make them: whole-clip or tiled encodes, then per-channel normalisation.

Two tilings bound the memory of large frames:

- ``mindspeed`` (default; MindSpeed-MM's ``WanVideoVAE.tiled_encode``, which BindWeave runs): the frame is cut
  into overlapping spatial tiles (every frame of the clip in each tile) whose starts step by the stride, a
  start being dropped once the previous tile already reaches the far edge (so the last tile may be cut short by
  the frame). Each tile is encoded on its own; its latent is weighted by a mask that ramps linearly,
  ``1/b, 2/b, ..., 1`` over ``b = (tile - stride) / 8`` latent pixels, along every tile edge that is not a frame
  edge (the two axes' ramps combined by their minimum), added into the frame's latent at ``start / 8``, and
  the sum is divided by the summed masks. Sums are kept in the input's dtype, as upstream does (bf16 for
  BindWeave).
- ``diffusers``: ``AutoencoderKLWan``'s own tiled encode (newer diffusers; blends differently, so its latents
  are not upstream's).

Latents are ``latent_dist.mode()`` (or a per-clip seeded sample), normalised as ``(z - latents_mean) /
latents_std`` with the constants of the VAE's config, computed in the latent's own dtype as MindSpeed-MM does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

SPATIAL_STRIDE = 8  # the Wan VAE's pixels per latent pixel


@dataclass(frozen=True)
class Tiling:
    """Tiled encoding in pixels (BindWeave: 272x272 tiles, i.e. 34x34 latent, at stride 144x128, i.e. 18x16)."""

    method: Literal["mindspeed", "diffusers"] = "mindspeed"
    tile_height: int = 272
    tile_width: int = 272
    stride_height: int = 144
    stride_width: int = 128

    def __post_init__(self) -> None:
        if self.method not in ("mindspeed", "diffusers"):
            raise ValueError(f"tiling method must be 'mindspeed' or 'diffusers', got {self.method!r}")
        for tile, stride in ((self.tile_height, self.stride_height), (self.tile_width, self.stride_width)):
            if not 0 < stride <= tile:
                raise ValueError("tile strides must be positive and no larger than the tile sizes")
            if self.method == "mindspeed" and (tile % SPATIAL_STRIDE or stride % SPATIAL_STRIDE):
                raise ValueError(f"mindspeed tiles and strides are whole latent pixels: multiples of {SPATIAL_STRIDE}")


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride``, until a tile has reached ``size``."""
    return [s for s in range(0, size, stride) if not (s >= stride and s - stride + tile >= size)]


def edge_ramp(length: int, border: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """``[length]`` weights: 1, ramping linearly from ``1/border`` at a tile edge that overlaps a neighbour."""
    weights = torch.ones(length)
    ramp = (torch.arange(border) + 1) / border
    if ramp_start:
        weights[:border] = ramp
    if ramp_end:
        weights[-border:] = ramp.flip(0)
    return weights


def tile_mask(height: int, width: int, borders: tuple[int, int], edges: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """``[height, width]`` blend weights of one latent tile; ``edges`` = (top, bottom, left, right) frame edges."""
    rows = edge_ramp(height, borders[0], not edges[0], not edges[1])
    cols = edge_ramp(width, borders[1], not edges[2], not edges[3])
    return torch.minimum(rows[:, None].expand(height, width), cols[None, :].expand(height, width))


def tiles(height: int, width: int, tiling: Tiling) -> Iterator[tuple[int, int, int, int]]:
    """``(top, bottom, left, right)`` pixel bounds of every tile, row by row (bounds may pass the frame)."""
    for top in tile_starts(height, tiling.tile_height, tiling.stride_height):
        for left in tile_starts(width, tiling.tile_width, tiling.stride_width):
            yield top, top + tiling.tile_height, left, left + tiling.tile_width


Posterior = Callable[[Any], torch.Tensor]


def mindspeed_tiled_encode(vae: Any, clip: torch.Tensor, tiling: Tiling, posterior: Posterior) -> torch.Tensor:
    """Un-normalised latent ``[1, C, t, H/8, W/8]`` of ``clip [1, 3, T, H, W]`` from blended tiles (see module doc)."""
    _, _, _, height, width = clip.shape
    borders = (
        (tiling.tile_height - tiling.stride_height) // SPATIAL_STRIDE,
        (tiling.tile_width - tiling.stride_width) // SPATIAL_STRIDE,
    )
    values = weights = None
    for top, bottom, left, right in tiles(height, width, tiling):
        latent = posterior(vae.encode(clip[..., top:bottom, left:right]).latent_dist)
        if values is None:
            shape = (1, latent.shape[1], latent.shape[2], height // SPATIAL_STRIDE, width // SPATIAL_STRIDE)
            values = torch.zeros(shape, dtype=clip.dtype, device=latent.device)
            weights = torch.zeros((1, 1, *shape[2:]), dtype=clip.dtype, device=latent.device)
        lh, lw = latent.shape[-2:]
        edges = (top == 0, bottom >= height, left == 0, right >= width)
        mask = tile_mask(lh, lw, borders, edges).to(clip.dtype).to(latent.device)
        y, x = top // SPATIAL_STRIDE, left // SPATIAL_STRIDE
        values[..., y : y + lh, x : x + lw] += latent * mask
        weights[..., y : y + lh, x : x + lw] += mask
    assert values is not None and weights is not None
    return values / weights


def normalise_latents(z: torch.Tensor, config: Any) -> torch.Tensor:
    """``(z - latents_mean) / latents_std`` per channel of ``[B, C, t, h, w]``, in ``z``'s dtype."""
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1).to(z)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1).to(z)
    return (z - mean) / std


def _posterior(generator: torch.Generator | None) -> Posterior:
    """The latent of a distribution: its mode, or a sample drawn from ``generator`` (CPU, then moved)."""

    def pick(dist: Any) -> torch.Tensor:
        if generator is None:
            return dist.mode()
        noise = torch.randn(dist.mean.shape[1:], generator=generator)[None]
        return dist.mean + dist.std * noise.to(dist.mean.device, dist.mean.dtype)

    return pick


def encode_latents(
    vae: Any,
    pixels: torch.Tensor,
    tiling: Tiling | None = None,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Normalised latents ``[B, C, t, h, w]`` (in the VAE's dtype) of ``pixels [B, 3, T, H, W]`` in [-1, 1].

    ``generators`` (one per clip) draw posterior samples instead of taking the mode.
    """
    pixels = pixels.to(vae.device, vae.dtype)
    if tiling is not None and tiling.method == "mindspeed":
        # Upstream tiles one clip at a time; so do we, each clip drawing its own noise.
        picks = [_posterior(None if generators is None else generators[i]) for i in range(len(pixels))]
        z = torch.cat([mindspeed_tiled_encode(vae, pixels[i : i + 1], tiling, picks[i]) for i in range(len(pixels))])
        return normalise_latents(z, vae.config)
    if tiling is not None:
        vae.enable_tiling(
            tile_sample_min_height=tiling.tile_height,
            tile_sample_min_width=tiling.tile_width,
            tile_sample_stride_height=tiling.stride_height,
            tile_sample_stride_width=tiling.stride_width,
        )
    try:
        dist = vae.encode(pixels).latent_dist
    finally:
        if tiling is not None:
            vae.disable_tiling()
    if generators is None:
        z = dist.mode()
    else:
        noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in generators])
        z = dist.mean + dist.std * noise.to(dist.mean.device, dist.mean.dtype)
    return normalise_latents(z, vae.config)
