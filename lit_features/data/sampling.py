"""Frame selection: which frame indices of a clip a sample uses (uniform, fps-resampled, consecutive, all)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ShortClipPolicy = Literal["fail", "pad_last", "stretch"]
FrameRounding = Literal["round", "floor"]
"""How ``uniform`` positions become frame indices: ``round`` (the seed READMEs' rule, the default) or ``floor``
(``np.linspace(..., dtype=int)``, what some public extraction code does; 240 frames, N=8 -> ... 136, 170, 204 ...)."""


class ShortClipError(ValueError):
    """The clip has fewer frames than the sampling asks for and the policy is ``fail``."""


def uniform_indices(
    num_available: int, num_frames: int, start: int = 0, rounding: FrameRounding = "round"
) -> list[int]:
    """``round(linspace(start, start + n - 1, N))``: 240 frames, N=8 -> [0, 34, 68, 102, 137, 171, 205, 239].

    ``rounding="floor"`` floors the positions instead (NumPy's integer ``linspace``): 240 frames, N=8 ->
    [0, 34, 68, 102, 136, 170, 204, 239].
    """
    if num_available <= 0:
        raise ShortClipError("the clip has no frames")
    if rounding == "floor":
        positions = np.linspace(0, num_available - 1, num_frames, dtype=np.int64)
    elif rounding == "round":
        positions = np.round(np.linspace(0, num_available - 1, num_frames))
    else:
        raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    return [int(i) + start for i in positions]


def fps_interval(source_fps: float, target_fps: float) -> float:
    """Frame step that resamples ``source_fps`` to ``target_fps`` (1 when they are within 0.1, as upstream)."""
    return 1.0 if abs(source_fps - target_fps) < 0.1 else source_fps / target_fps


@dataclass(frozen=True)
class FrameSampling:
    """How to pick frames from a clip.

    Args:
        mode: ``uniform`` (N frames spread over the clip), ``fps`` (a contiguous clip resampled to
            ``target_fps``, starting at ``cut[0]``), ``consecutive`` (N frames in a row from ``cut[0]``, whatever
            the source frame rate), or ``all``.
        num_frames: frames per sample (``uniform``/``fps``); ignored for ``all``.
        target_fps: output frame rate for ``fps`` mode.
        short_clip: what to do when fewer frames exist than asked: ``fail`` the sample, ``pad_last``
            (repeat the last real frame; the number of padded frames is recorded), or ``stretch`` (uniform mode
            only: ``linspace`` repeats frames, as the upstream VFM extractor does).
        honour_cut: restrict sampling to the entry's ``cut`` = [start, end) frame range.
        rounding: ``uniform`` mode: ``round`` (default) or ``floor`` the linspace positions (see
            :data:`FrameRounding`).
    """

    mode: Literal["uniform", "fps", "consecutive", "all"] = "uniform"
    num_frames: int = 8
    target_fps: float | None = None
    short_clip: ShortClipPolicy = "fail"
    honour_cut: bool = True
    rounding: FrameRounding = "round"

    def __post_init__(self) -> None:
        if self.mode != "all" and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.mode == "fps" and not self.target_fps:
            raise ValueError("mode='fps' needs target_fps")
        if self.short_clip == "stretch" and self.mode != "uniform":
            raise ValueError("short_clip='stretch' only applies to mode='uniform'")
        if self.rounding not in ("round", "floor"):
            raise ValueError(f"rounding must be 'round' or 'floor', got {self.rounding!r}")

    def select(
        self, total_frames: int, source_fps: float | None, cut: list[float] | None = None
    ) -> tuple[list[int], int]:
        """Return (frame indices, number of padded frames) for a clip of ``total_frames``."""
        start, end = 0, total_frames
        if self.honour_cut and cut is not None:
            start = int(cut[0])
            end = min(int(cut[1]), total_frames)
            if start >= total_frames:
                raise ShortClipError(f"cut starts at frame {start} but the clip has {total_frames} frames")
        available = end - start
        if self.mode == "all":
            return list(range(start, end)), 0
        if self.mode == "uniform":
            if available >= self.num_frames or self.short_clip == "stretch":
                return uniform_indices(available, self.num_frames, start, self.rounding), 0
            indices = list(range(start, end))
        elif self.mode == "consecutive":
            indices = list(range(start, min(end, start + self.num_frames)))
        else:
            step = fps_interval(source_fps or self.target_fps, self.target_fps)  # type: ignore[arg-type]
            if step < 1:
                # Upstream drops clips slower than the target rate rather than duplicating frames.
                raise ShortClipError(f"source fps {source_fps} is below the target fps {self.target_fps}")
            indices = [int(i) for i in np.arange(start, end, step)][: self.num_frames]
        missing = self.num_frames - len(indices)
        if missing <= 0:
            return indices, 0
        if self.short_clip == "fail" or not indices:
            raise ShortClipError(
                f"clip gives {len(indices)} frames (of {total_frames}, from frame {start}) but {self.num_frames} are "
                "needed; set short_clip='pad_last' to repeat the last frame instead"
            )
        return indices + [indices[-1]] * missing, missing
