"""ViT feature throughput: sequence-packed vs per-sample vs padded batching, on the same pixels and weights.

Model: a SigLIP-like vision tower big enough that matrix work, not Python overhead, dominates: hidden 384,
MLP 1536, 6 layers, 6 heads, patch 14, a 224 px (16x16) position grid; random weights (seed 0) saved with
``save_pretrained`` and loaded by the extractors exactly as real weights. Features are ``hidden_states[-2]``.

Workloads, each preprocessed once with the extractor's own preprocessor (sides resized to the nearest multiple
of 14):
- ``small_mixed``: 32 random crops of the bundled images, resized so the longer side is 56..224 px
  (4..256 tokens each, seeded);
- ``full_images``: the bundled images at native size (``chelsea.jpg`` 451x300 -> 448x294, ``astronaut.png``
  512x512 -> 518x518).

Modes, all producing the same features (``cos_distance_vs_per_sample`` = 1 - min per-token cosine checks it):
- ``per_sample``: :class:`VisionTowerFeatures` -- the Hugging Face model once per image;
- ``packed``: :class:`PackedVisionTowerFeatures` -- all images in one token sequence (stops after layer -2);
- ``packed_all_layers``: the packed form asked for ``hidden_states[-1]``, i.e. the same depth as the Hugging Face
  forward, to show how much of the gain is packing alone;
- ``padded``: one batch padded to the longest token sequence, with a key-padding attention mask.

Each mode runs interleaved with the others, ``repeats`` times after a warm-up; the median is reported. Rows
are given at the machine's default torch thread count and at one thread (on a busy shared machine, the
default count suffers most where many small operations wait on each other).
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
MEDIA = ROOT / "samples" / "media"
MODEL = {
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "patch_size": 14,
    "image_size": 224,
}


def make_model(folder: Path) -> Path:
    """Save the benchmark's SigLIP-like tower (random, seeded) the way real weights are laid out."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SiglipVisionModel(SiglipVisionConfig(**MODEL, tiny_random_stand_in=True))
    model.save_pretrained(folder)
    return folder


def load_images() -> list[np.ndarray]:
    from PIL import Image

    return [np.array(Image.open(MEDIA / name).convert("RGB")) for name in ("chelsea.jpg", "astronaut.png")]


def small_mixed(images: list[np.ndarray], count: int = 32, seed: int = 0) -> list[np.ndarray]:
    """``count`` random crops of ``images``, resized so the longer side is 56..224 px."""
    from PIL import Image

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        image = rng.choice(images)
        h, w = image.shape[:2]
        ch, cw = rng.randint(h // 4, h), rng.randint(w // 4, w)
        top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
        crop = image[top : top + ch, left : left + cw]
        longer = rng.randint(56, 224)
        scale = longer / max(ch, cw)
        size = (max(14, round(cw * scale)), max(14, round(ch * scale)))
        out.append(np.array(Image.fromarray(crop).resize(size, Image.BICUBIC)))
    return out


@torch.no_grad()
def padded_hidden_state(tower: torch.nn.Module, items: list[torch.Tensor], layer: int) -> list[torch.Tensor]:
    """``hidden_states[layer]`` of single images ``[1, 3, H, W]`` as one zero-padded batch with a key mask."""
    from lit_features.models.packed_vision_tower import resolve_layer

    embeds = [tower.embeddings(x.to(tower.dtype), interpolate_pos_encoding=True)[0] for x in items]
    lengths = [e.shape[0] for e in embeds]
    longest = max(lengths)
    x = torch.nn.utils.rnn.pad_sequence(embeds, batch_first=True)  # [B, L, D], zeros after each sequence
    keep = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    mask = keep[:, None, None, :]  # padded keys are never attended; padded queries are discarded
    batch = x.shape[0]
    for block in tower.encoder.layers[: resolve_layer(layer, len(tower.encoder.layers))]:
        attn = block.self_attn
        h = block.layer_norm1(x)
        q, k, v = (
            proj(h).view(batch, longest, attn.num_heads, attn.head_dim).transpose(1, 2)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
        x = x + attn.out_proj(out.transpose(1, 2).reshape(batch, longest, -1))
        x = x + block.mlp(block.layer_norm2(x))
    return [x[i, :n] for i, n in enumerate(lengths)]


def min_cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return min(
        float(F.cosine_similarity(x.double().reshape(-1, x.shape[-1]), y.double().reshape(-1, y.shape[-1]), -1).min())
        for x, y in zip(a, b)
    )


def measure(workload: str, pixels: list[torch.Tensor], model_dir: Path, dtype: str, repeats: int) -> list[dict]:
    from lit_features.data.dataset import Batch
    from lit_features.extractors.vision_tower import PackedVisionTowerFeatures, VisionTowerFeatures

    per_sample = VisionTowerFeatures(str(model_dir), dtype=dtype)
    packed = PackedVisionTowerFeatures(str(model_dir), dtype=dtype)
    packed_all = PackedVisionTowerFeatures(str(model_dir), layer=-1, dtype=dtype)
    for extractor in (per_sample, packed, packed_all):
        extractor.configure_model()
    batch = Batch([str(i) for i in range(len(pixels))], [None] * len(pixels), [{"kind": "image"}] * len(pixels), [], [])

    def features(out: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        return [o["features"] for o in out]

    modes = {
        "per_sample": lambda: features(per_sample.extract(pixels, batch)),
        "packed": lambda: features(packed.extract(pixels, batch)),
        "packed_all_layers": lambda: features(packed_all.extract(pixels, batch)),
        "padded": lambda: padded_hidden_state(per_sample.model, pixels, -2),
    }
    results = {name: fn() for name, fn in modes.items()}  # warm-up, and the outputs to cross-check
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            started = time.perf_counter()
            with torch.no_grad():
                fn()
            times[name].append(time.perf_counter() - started)

    p = MODEL["patch_size"]
    tokens = sum((x.shape[-2] // p) * (x.shape[-1] // p) for x in pixels)
    padded_tokens = len(pixels) * max((x.shape[-2] // p) * (x.shape[-1] // p) for x in pixels)
    base = statistics.median(times["per_sample"])
    rows = []
    for name in modes:
        seconds = statistics.median(times[name])
        row = {
            "workload": workload,
            "dtype": dtype,
            "threads": torch.get_num_threads(),
            "mode": name,
            "images": len(pixels),
            "tokens": padded_tokens if name == "padded" else tokens,
            "seconds": seconds,
            "images_per_s": len(pixels) / seconds,
            "speedup_vs_per_sample": base / seconds,
        }
        if name != "packed_all_layers":  # 1 - min per-token cosine against per_sample (0: identical)
            row["cos_distance_vs_per_sample"] = 1.0 - min_cosine(results[name], results["per_sample"])
        rows.append(row)
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    from lit_features.extractors.vision_tower import NativeResolutionPreprocessor

    repeats = 1 if quick else 3
    dtypes = ["bfloat16"] if quick else ["bfloat16", "float32"]
    default_threads = torch.get_num_threads()
    thread_counts = [default_threads] if quick or default_threads == 1 else [default_threads, 1]
    images = load_images()
    prep = NativeResolutionPreprocessor(patch_size=MODEL["patch_size"], snap="resize")
    workloads = {
        "small_mixed": [prep.pixels(x[None]) for x in small_mixed(images)],
        "full_images": [prep.pixels(x[None]) for x in images],
    }
    rows: list[dict] = []
    # The stand-in warning is for feature stores; here the weights are random on purpose.
    logging.getLogger("lit_features.extractors.base").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "siglip-bench")
        try:
            for threads in thread_counts:
                torch.set_num_threads(threads)
                for dtype in dtypes:
                    for workload, pixels in workloads.items():
                        rows += measure(workload, pixels, model_dir, dtype, repeats)
        finally:
            torch.set_num_threads(default_threads)

    def speedup(workload: str, mode: str, threads: int, dtype: str = "bfloat16") -> float:
        return next(
            r["speedup_vs_per_sample"]
            for r in rows
            if (r["workload"], r["mode"], r["threads"], r["dtype"]) == (workload, mode, threads, dtype)
        )

    metrics = {
        "vit_model": "SigLIP-like hidden 384, MLP 1536, 6 layers, 6 heads, patch 14",
        "vit_default_threads": default_threads,
        "vit_load_average_1min": os.getloadavg()[0],
        "vit_packed_vs_per_sample_small": speedup("small_mixed", "packed", default_threads),
        "vit_padded_vs_per_sample_small": speedup("small_mixed", "padded", default_threads),
        "vit_packed_vs_per_sample_full": speedup("full_images", "packed", default_threads),
    }
    if 1 in thread_counts and default_threads != 1:
        metrics["vit_packed_vs_per_sample_small_1_thread"] = speedup("small_mixed", "packed", 1)
        metrics["vit_packed_vs_per_sample_full_1_thread"] = speedup("full_images", "packed", 1)
    return {"rows": rows, "metrics": metrics}
