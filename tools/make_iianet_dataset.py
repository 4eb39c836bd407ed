"""Build a small IIANet-style audio-visual separation dataset from the bundled sample videos.

    python tools/make_iianet_dataset.py --out outputs/iianet_tiny

Layout (the shape of IIANet's LRS2 lists; paths inside the lists are absolute, as upstream writes them)::

    <out>/mouths/<clip>.npz              data: uint8 [T, 96, 96] grayscale "mouth" crops at 25 fps
    <out>/audio/{mix,s1,s2}/<mix>.wav    16 kHz mono int16 (two tones and their sum)
    <out>/lists/{tr,cv,tt}/mix.json      rows [mix_wav, n_samples]
    <out>/lists/{tr,cv,tt}/s1.json       rows [s1_wav, mouth_npz, n_samples] (s2.json likewise)

Clips are cut from ``samples/media/*.mp4`` (centre square, grayscale, resized to 96x96). Most have T = 50
(2 s at 25 fps); two have odd lengths (35, 37). One clip appears in two training mixtures and one in both
the training and test lists, so every split and ``all`` exercise deduplication. ``make`` is used by the tests
and the benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT / "samples" / "media"
SAMPLE_RATE = 16_000
FPS = 25
MOUTH_SIZE = 96

# clip name -> (source video, first frame, number of frames)
CLIPS: dict[str, tuple[str, int, int]] = {
    "spk0_00": ("v_GGSY1Qvo990.mp4", 0, 50),
    "spk0_01": ("v_GGSY1Qvo990.mp4", 50, 50),
    "spk1_00": ("cockatoo.mp4", 0, 50),
    "spk1_01": ("cockatoo.mp4", 50, 50),
    "spk2_00": ("realshort.mp4", 0, 35),
    "spk0_02": ("v_GGSY1Qvo990.mp4", 200, 50),
    "spk1_02": ("cockatoo.mp4", 100, 50),
    "spk0_03": ("v_GGSY1Qvo990.mp4", 300, 37),
}

# split folder -> mixtures as (first speaker clip, second speaker clip)
MIXTURES: dict[str, list[tuple[str, str]]] = {
    "tr": [("spk0_00", "spk1_00"), ("spk0_01", "spk1_01"), ("spk1_00", "spk0_02")],
    "cv": [("spk1_02", "spk0_03")],
    "tt": [("spk2_00", "spk0_01")],
}


def cut_mouth_clips(video: Path, windows: list[tuple[int, int]], size: int = MOUTH_SIZE) -> list[np.ndarray]:
    """One clip per ``(start, frames)`` window: centre square, grayscale, ``size`` x ``size`` uint8 frames."""
    import av
    from PIL import Image

    end = max(start + frames for start, frames in windows)
    gray = []
    # Decode once from the start rather than seek: seeking into some of the bundled clips gives broken frames.
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if len(gray) == end:
                break
            image = frame.to_ndarray(format="gray")
            h, w = image.shape
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            square = Image.fromarray(image[top : top + side, left : left + side])
            gray.append(np.asarray(square.resize((size, size), Image.BILINEAR)))
    if len(gray) < end:
        raise ValueError(f"{video}: has {len(gray)} frames, needed {end}")
    return [np.stack(gray[start : start + frames]) for start, frames in windows]


def write_wav(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(SAMPLE_RATE)
        fh.writeframes(np.clip(samples * 32767, -32768, 32767).astype("<i2").tobytes())


def tone(n: int, hz: float) -> np.ndarray:
    return 0.3 * np.sin(2 * math.pi * hz * np.arange(n) / SAMPLE_RATE)


def make(out: Path) -> Path:
    """Write the dataset under ``out``; return the split-list root (``<out>/lists``)."""
    out = Path(out).resolve()
    mouths = {}
    (out / "mouths").mkdir(parents=True, exist_ok=True)
    for video in sorted({video for video, _, _ in CLIPS.values()}):
        names = [name for name, spec in CLIPS.items() if spec[0] == video]
        clips = cut_mouth_clips(MEDIA / video, [CLIPS[name][1:] for name in names])
        for name, clip in zip(names, clips):
            mouths[name] = (out / "mouths" / f"{name}.npz", len(clip))
            np.savez_compressed(mouths[name][0], data=clip)
    for split, mixtures in MIXTURES.items():
        rows: dict[str, list] = {"mix": [], "s1": [], "s2": []}
        for i, (first, second) in enumerate(mixtures):
            mix_id = f"{split}_{i:02d}_{first}_{second}"
            # The mixture is as long as its shorter speaker clip, as LRS2 mixtures are cut.
            n = min(mouths[first][1], mouths[second][1]) * SAMPLE_RATE // FPS
            s1, s2 = tone(n, 220.0 + 40 * i), tone(n, 330.0 + 40 * i)
            for kind, signal in (("mix", s1 + s2), ("s1", s1), ("s2", s2)):
                write_wav(out / "audio" / kind / f"{mix_id}.wav", signal)
            rows["mix"].append([str(out / "audio" / "mix" / f"{mix_id}.wav"), n])
            rows["s1"].append([str(out / "audio" / "s1" / f"{mix_id}.wav"), str(mouths[first][0]), n])
            rows["s2"].append([str(out / "audio" / "s2" / f"{mix_id}.wav"), str(mouths[second][0]), n])
        for kind, kind_rows in rows.items():
            path = out / "lists" / split / f"{kind}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(kind_rows, indent=1))
    return out / "lists"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/iianet_tiny", help="folder that receives the dataset")
    args = parser.parse_args(argv)
    lists = make(Path(args.out))
    print(f"split lists: {lists}  ({len(CLIPS)} mouth clips in {lists.parent / 'mouths'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
