"""How each registered extractor runs on its tiny stand-in: its shipped config, its inputs, small sizes.

Keyed by the registry's extractor names (``lit_features.extractors.EXTRACTORS``). The registry-driven tests
(``tests/test_registry.py``) run every entry through the real entry point, so a new extractor is tested once it
has one file in ``lit_features/extractors/``, one config in ``configs/``, a stand-in maker in
``tools/tiny_models/`` and its line here; no test is edited.

    python tools/stand_in_runs.py --models /tmp/stand_ins vision_tower wan_train   # run some, print their stores
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

#: Wan-family sizes that encode in seconds on a CPU (the shipped 480x832 / 720x1280 take minutes).
WAN_SMALL = ("--model.num_frames", "5", "--model.height", "32", "--model.width", "48")


@dataclass(frozen=True)
class StandInRun:
    """One extractor's run on its stand-in, as a user would start it from a checkout.

    Attributes:
        config: the shipped config (``configs/<config>.yaml``) that runs this extractor.
        args: command-line overrides; ``{scratch}`` is the scratch folder (the working directory, holding
            ``pretrained_model/`` and ``samples/``).
        needs: inputs to prepare in the scratch folder first: ``iianet`` (split lists and mouth clips),
            ``vfm_store`` (a VideoMAE feature store at ``{scratch}/vfm_store``).
    """

    config: str
    args: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


RUNS: dict[str, StandInRun] = {
    "vision_tower": StandInRun("quickstart"),
    "vision_tower_packed": StandInRun("vit_packed"),
    "onevision": StandInRun("onevision_features", ("--model.num_frames", "2")),
    "onevision_packed": StandInRun("onevision_packed", ("--model.num_frames", "2")),
    "qwen_hidden": StandInRun("qwen_hidden"),
    "videomae": StandInRun("vfm_videomae"),
    "videomae_v2": StandInRun("vfm_videomaev2"),
    "vjepa2": StandInRun("vfm_vjepa2"),
    "dinov2": StandInRun("vfm_dinov2"),
    "vfm_multi": StandInRun("vfm_multi"),
    "wan_train": StandInRun("flashi2v_features", WAN_SMALL),
    "bindweave_train": StandInRun("wan_train_features", WAN_SMALL),
    "lip_resnet18": StandInRun("lip_resnet18", ("--data.split_root", "{scratch}/iianet/lists"), ("iianet",)),
    "motion_encode": StandInRun(
        "motion_encode",
        (
            "--data.store",
            "{scratch}/vfm_store",
            "--model.model_path",
            "pretrained_model/motion_autoencoder_upstream.pt",
        ),
        ("vfm_store",),
    ),
}


def predict(args: list[str]) -> int:
    """``python -m lit_features predict ...`` in this process (its log on stderr); returns the exit status."""
    from lit_features.__main__ import main

    with contextlib.redirect_stdout(sys.stderr):
        return main(["predict", *args])


def run_args(name: str, scratch: Path, out: Path) -> list[str]:
    """Arguments of ``predict`` for ``RUNS[name]``: one sample, no worker processes, on the CPU."""
    run = RUNS[name]
    args = ["--config", str(ROOT / "configs" / f"{run.config}.yaml"), *(a.format(scratch=scratch) for a in run.args)]
    args += ["--writer.output_dir", str(out), "--data.limit", "1", "--data.num_workers", "0"]
    return [*args, "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]


def prepare_scratch(scratch: Path, models: Path, needs: tuple[str, ...] = ()) -> None:
    """Lay out ``scratch`` as a checkout's working directory (``pretrained_model/``, ``samples/``) plus ``needs``.

    Relative paths in the configs resolve against the working directory: call this, then run from ``scratch``.
    """
    for name, target in (("pretrained_model", models), ("samples", ROOT / "samples")):
        if not (scratch / name).exists():
            (scratch / name).symlink_to(Path(target).resolve())
    if "iianet" in needs and not (scratch / "iianet").exists():
        from tools.make_iianet_dataset import make as make_iianet

        make_iianet(scratch / "iianet")
    if "vfm_store" in needs and not (scratch / "vfm_store" / "store.json").exists():
        with contextlib.chdir(scratch):
            if predict(run_args("videomae", scratch, scratch / "vfm_store")) != 0:
                raise RuntimeError("the VideoMAE store that motion encoding reads could not be written")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="folder of tiny stand-ins (tools/make_tiny_models.py)")
    parser.add_argument("--scratch", required=True, help="working folder (stores go to <scratch>/out/<name>)")
    parser.add_argument("names", nargs="*", help=f"extractors to run (default: all of {', '.join(RUNS)})")
    args = parser.parse_args(argv)
    scratch = Path(args.scratch).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(RUNS):
        prepare_scratch(scratch, Path(args.models), RUNS[name].needs)
        with contextlib.chdir(scratch):
            status = predict(run_args(name, scratch, scratch / "out" / name))
        print(f"{name:20s} status {status} -> {scratch / 'out' / name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
