"""Print the fingerprint hash of the store every shipped predict config writes, on the tiny stand-ins.

    python tools/store_fingerprints.py --models /tmp/stand_ins [--json before.json] [--only vfm_multi ...]

Runs each ``configs/*.yaml`` predict job as a user would (``python -m lit_features predict --config ...``, in
this process) over one sample, in a scratch folder whose ``pretrained_model`` is ``--models`` (made once with
``tools/make_tiny_models.py``; the weights' digests are part of a fingerprint, so compare runs over the same
folder), and prints ``<config> <sub-store> <fingerprint_hash>``. Two outputs that agree mean a code change kept
every store resumable: what changes the numbers is recorded exactly as before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

#: Extra arguments per config: where its inputs are in the scratch folder (everything else as shipped).
CONFIG_ARGS = {
    "lip_resnet18": ["--data.split_root", "{scratch}/iianet/lists"],
    "motion_encode": [
        "--data.store",
        "{scratch}/vfm_store",
        "--model.model_path",
        "pretrained_model/motion_autoencoder_upstream.pt",
    ],
    "qwen_hidden_bindweave": ["--writer.export_done_only", "false"],
}
SKIP = {"motion_ae"}  # a fit job: it writes no feature store


def predict_configs() -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if p.stem not in SKIP)


def run_predict(config: str, scratch: Path, out: Path, extra: list[str]) -> None:
    from lit_features.__main__ import main

    args = ["predict", "--config", str(ROOT / "configs" / f"{config}.yaml")]
    args += [a.format(scratch=scratch) for a in CONFIG_ARGS.get(config, [])]
    args += ["--writer.output_dir", str(out), "--data.limit", "1", "--data.num_workers", "0"]
    args += ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", *extra]
    with contextlib.redirect_stdout(sys.stderr):
        code = main(args)
    if code != 0:
        raise SystemExit(f"{config}: predict failed with status {code}")


def store_hashes(out: Path) -> dict[str, str]:
    """``{sub-store name: fingerprint_hash}`` of every store.json under ``out`` (``""``: ``out`` itself)."""
    found = {}
    for meta in sorted(out.rglob("store.json")):
        name = str(meta.parent.relative_to(out)) if meta.parent != out else ""
        found[name] = json.loads(meta.read_text())["fingerprint_hash"]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="folder of tiny stand-ins (tools/make_tiny_models.py)")
    parser.add_argument("--json", help="also write the hashes to this JSON file")
    parser.add_argument("--only", nargs="*", help="configs to run (default: every predict config)")
    args = parser.parse_args(argv)
    from tools.make_iianet_dataset import make as make_iianet

    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="fingerprints-") as tmp:
        scratch = Path(tmp)
        (scratch / "pretrained_model").symlink_to(Path(args.models).resolve())
        (scratch / "samples").symlink_to(ROOT / "samples")
        make_iianet(scratch / "iianet")
        previous = os.getcwd()
        os.chdir(scratch)  # configs name their weights and samples relative to the working directory
        try:
            configs = args.only or predict_configs()
            if "motion_encode" in configs:  # its input is a VFM store of the stand-in's width
                run_predict("vfm_videomae", scratch, scratch / "vfm_store", [])
            for config in configs:
                out = scratch / "out" / config
                run_predict(config, scratch, out, [])
                results[config] = store_hashes(out)
                for name, digest in results[config].items():
                    print(f"{config:24s} {name or '.':12s} {digest}", flush=True)
        finally:
            os.chdir(previous)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
