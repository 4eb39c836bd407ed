"""Device busy share of the quickstart and Wan VAE jobs on a GPU, with real-size random-weight models (no downloads).

    python3 tools/gpu_check.py [--out DIR] [--clips 48] [--workers 2 8] [--device cuda]

Builds, from their configs, a SigLIP so400m/14-384 vision tower (the quickstart's model) and a Wan2.1 VAE
(diffusers' default ``AutoencoderKLWan``, with tiny UMT5/CLIP beside it: the job's text and image towers are
not what this measures), saves them with ``save_pretrained`` under a temporary folder, and runs each job
through ``trainer.predict`` with the ManifestDataModule and the FeatureWriter, as ``lit_features predict``
does, on clips cut from the bundled sample videos. While the predict loop runs, ``nvidia-smi`` samples the
GPU's utilisation (the share of time a kernel was running) every 100 ms. Per run it reports the loop's wall
seconds, clips/s, the mean busy share, and where the main process spent the loop: waiting for the next batch
(decoding too slow), in ``predict_step`` (the model; the writer's copy back to the host synchronises), or
elsewhere (writer, Lightning). Prints a table; writes ``gpu_check.json`` into ``--out`` (default: $OUT when
set). Needs lit_features' dependencies (decord to decode, diffusers for the VAE); ~3 minutes on one H200.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
MEDIA = ROOT / "samples" / "media"
MARKER = "tiny_random_stand_in"  # the stores record that the weights are random stand-ins


class UtilisationSampler:
    """``nvidia-smi`` utilisation samples (percent of time a kernel ran) while it is active."""

    def __init__(self, index: int, period_ms: int = 100):
        self.index, self.period_ms = index, period_ms
        self.samples: list[float] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UtilisationSampler:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        try:
            self._proc = subprocess.Popen(
                [*query, f"-lms={self.period_ms}", f"--id={self.index}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except FileNotFoundError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def make_siglip_so400m(root: Path, smoke: bool = False) -> Path:
    """The so400m/14-384 vision tower at its real size, random weights, bf16, with its preprocessing config."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    target = root / "siglip-so400m-patch14-384"
    size = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
    if smoke:
        size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = SiglipVisionConfig(**size, patch_size=14, image_size=384)
    config.update({MARKER: True})
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising 400M weights: on the GPU
        model = SiglipVisionModel(config).to(torch.bfloat16)
    model.save_pretrained(target)
    processor = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], MARKER: True}
    (target / "preprocessor_config.json").write_text(json.dumps(processor))
    return target


def make_wan(root: Path, smoke: bool = False) -> Path:
    """Wan2.1 folder: the real-size VAE (diffusers' defaults are Wan2.1's) beside tiny text and image towers."""
    import torch
    from diffusers import AutoencoderKLWan

    from tools.tiny_models import wan as tiny_wan

    (target,) = tiny_wan.make(root)
    if smoke:  # keep the tiny VAE
        return target
    torch.manual_seed(0)
    vae = AutoencoderKLWan()
    vae.register_to_config(**{MARKER: True})
    vae.save_pretrained(target / "vae")
    return target


def clips(count: int) -> list[dict[str, Any]]:
    entries = []
    for r in range(count):
        name, cut = [("v_GGSY1Qvo990.mp4", [r % 10 * 10, 355 - r % 7 * 7]), ("cockatoo.mp4", [r % 10 * 8, 280])][r % 2]
        entry = {"key": f"clip{r:03d}", "path": str(MEDIA / name), "cut": cut, "cap": f"Clip {r} of a sample video."}
        entries.append(entry)  # cuts repeat every 10 clips: the key keeps them apart
    return entries


def run_job(name: str, extractor: Any, entries: list[dict[str, Any]], workers: int, batch: int, tmp: Path) -> dict:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback

    from lit_features.data.datamodule import ManifestDataModule
    from lit_features.store.writer import FeatureWriter

    manifest = tmp / f"{name}-{workers}.json"
    manifest.write_text(json.dumps(entries))
    stamps: dict[str, list[float]] = {"start": [], "end": [], "step": []}

    class Clock(Callback):
        def on_predict_batch_start(self, *args: Any, **kwargs: Any) -> None:
            stamps["start"].append(time.perf_counter())

        def on_predict_batch_end(self, trainer: Any, module: Any, outputs: Any, *args: Any, **kwargs: Any) -> None:
            stamps["end"].append(time.perf_counter())
            stamps["step"].append(getattr(outputs, "model_seconds", 0.0))

    data = ManifestDataModule(manifest=str(manifest), batch_size=batch, num_workers=workers, order="manifest")
    writer = FeatureWriter(str(tmp / f"store-{name}-{workers}"))
    trainer = pl.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1, logger=False,
        callbacks=[writer, Clock()], enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    visible = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    index = int(visible) if visible.isdigit() else 0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with UtilisationSampler(index) as sampler:
        started = time.perf_counter()
        trainer.predict(extractor, datamodule=data, return_predictions=False)
        whole = time.perf_counter() - started
    starts, ends = stamps["start"], stamps["end"]
    loop = ends[-1] - starts[0] if ends else whole
    waiting = sum(s - e for s, e in zip(starts[1:], ends[:-1]))
    step = sum(stamps["step"])
    written = writer.summary["written"]
    return {
        "job": name,
        "workers": workers,
        "clips": written,
        "predict_s": whole,
        "loop_s": loop,
        "clips_per_s": written / loop if loop else 0.0,
        "gpu_busy_share": sampler.mean(),
        "samples": len(sampler.samples),
        "waiting_for_data_s": waiting,
        "predict_step_s": step,
        "other_s": loop - waiting - step,
        # the writer thread's seconds persisting batches (beside the loop; a full queue holds the loop up)
        "writer_busy_s": getattr(getattr(writer, "_writer", None), "seconds_writing", float("nan")),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in (r.get(c, "") for c in columns)] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json (default: $OUT)")
    parser.add_argument("--clips", type=int, default=48, help="quickstart clips (the Wan job takes a quarter)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 8], help="DataLoader workers to compare")
    parser.add_argument("--smoke", action="store_true", help="tiny models (a CPU check of this script itself)")
    args = parser.parse_args()
    import torch

    from lit_features.extractors.vision_tower import VisionTowerFeatures
    from lit_features.extractors.wan import WanTrainingFeatures

    info = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cpus": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(info), flush=True)
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        siglip = make_siglip_so400m(tmp / "models", args.smoke)
        wan = make_wan(tmp / "models", args.smoke)
        print(f"models built in {time.perf_counter() - started:.0f} s", flush=True)
        jobs = {
            # The quickstart as shipped (native resolution: 720p frames are 4.6k tokens each) but in bf16.
            "quickstart": (lambda: VisionTowerFeatures(str(siglip), dtype="bfloat16"), args.clips, 2),
            # Wan2.1 480p latents of 33 frames at 16 fps (VAE in bf16, untiled), one clip per batch.
            "wan_vae": (
                lambda: WanTrainingFeatures(str(wan), num_frames=33, height=480, width=832, vae_dtype="bfloat16"),
                max(2, args.clips // 4),
                1,
            ),
        }
        for name, (build, count, batch) in jobs.items():
            extractor = build()
            for workers in args.workers:
                row = run_job(name, extractor, clips(count), workers, batch, tmp)
                rows.append(row)
                print(json.dumps(row), flush=True)
    table = format_table(rows)
    print(f"\n{table}\n(total {time.perf_counter() - started:.0f} s)")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
