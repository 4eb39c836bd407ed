"""The quickstart job as an upstream seed script would run it: one clip at a time, in one process.

    python tools/seed_loop.py --model DIR --manifest clips.json --out DIR [--max-pixels N] [--timings FILE]

What a user would otherwise write, and the baseline every pipeline benchmark is measured against: open each
video with decord, decode only the 8 uniformly sampled frames (``get_batch``; one decoder thread, as the
pipeline's decoder: decord's threaded decoder returns other frames after a seek on some files, e.g. the
bundled cockatoo.mp4, so features would not compare), preprocess them (/255, optional
downscale to ``--max-pixels``, bicubic resize to the patch grid, CLIP normalisation, the quickstart's rules),
run the SigLIP vision tower (``hidden_states[-2]``) and save one safetensors file per manifest entry
(``<position>.safetensors``). It imports only torch, numpy, decord, transformers and safetensors, never
lit_features, so its start-up is a seed script's. ``--timings`` writes a JSON file with the seconds spent
importing and loading, each clip's end time, and per stage (decode, transform, model) wall and CPU seconds.
Features equal the pipeline's bit for bit (the benchmarks check it).
"""

from __future__ import annotations

import time

STARTED, STARTED_WALL = time.perf_counter(), time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import decord  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import SiglipVisionModel  # noqa: E402

IMPORTED = time.perf_counter()


def uniform_indices(start: int, end: int, count: int) -> list[int]:
    """``round(linspace(start, end - 1, count))``: the quickstart's uniform frame positions inside a cut."""
    return [int(i) for i in np.round(np.linspace(start, end - 1, count))]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def pixels(frames: np.ndarray, patch: int, mean: list[float], std: list[float], max_pixels: int | None):
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    h, w = x.shape[-2:]
    if max_pixels is not None and h * w > max_pixels:
        scale = (max_pixels / (h * w)) ** 0.5
        x = resize(x, (max(1, int(h * scale)), max(1, int(w * scale))))
        h, w = x.shape[-2:]
    x = resize(x, (max(patch, round(h / patch) * patch), max(patch, round(w / patch) * patch))).clamp_(0, 1)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True, help="JSON list of {path, cut: [start, end] frames}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--timings", default=None, help="write timings as JSON here")
    parser.add_argument("--single-thread", action="store_true", help="one torch thread (CPU-seconds for the floor)")
    args = parser.parse_args()
    if args.single_thread:
        torch.set_num_threads(1)
    model = SiglipVisionModel.from_pretrained(args.model, dtype=torch.float32).eval()
    processor = json.loads((Path(args.model) / "preprocessor_config.json").read_text())
    patch = model.config.patch_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = time.perf_counter()
    stages = {s: {"wall_s": 0.0, "cpu_s": 0.0} for s in ("decode", "transform", "model", "save")}
    ends = []

    def clock(stage: str, wall: float, cpu: float) -> tuple[float, float]:
        now_wall, now_cpu = time.perf_counter(), time.process_time()
        stages[stage]["wall_s"] += now_wall - wall
        stages[stage]["cpu_s"] += now_cpu - cpu
        return now_wall, now_cpu

    for position, entry in enumerate(json.loads(Path(args.manifest).read_text())):
        wall, cpu = time.perf_counter(), time.process_time()
        reader = decord.VideoReader(entry["path"], ctx=decord.cpu(0), num_threads=1)
        total = len(reader)
        start, end = (int(entry["cut"][0]), min(int(entry["cut"][1]), total)) if "cut" in entry else (0, total)
        frames = reader.get_batch(uniform_indices(start, end, args.num_frames)).asnumpy()
        del reader
        wall, cpu = clock("decode", wall, cpu)
        x = pixels(frames, patch, processor["image_mean"], processor["image_std"], args.max_pixels)
        wall, cpu = clock("transform", wall, cpu)
        with torch.inference_mode():
            hidden = model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states[-2]
        wall, cpu = clock("model", wall, cpu)
        save_file({"features": hidden.contiguous()}, str(out / f"{position:05d}.safetensors"))
        clock("save", wall, cpu)
        ends.append(time.perf_counter() - STARTED)
    if args.timings:
        timings = {
            "started": STARTED_WALL,
            "import_s": IMPORTED - STARTED,
            "load_s": loaded - IMPORTED,
            "ends_s": ends,
            "stages": stages,
            "threads": {"torch": torch.get_num_threads(), "cpus": len(os.sched_getaffinity(0))},
        }
        Path(args.timings).write_text(json.dumps(timings))


if __name__ == "__main__":
    main()
