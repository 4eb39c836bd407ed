"""Errors through the real command line: a user's mistake is one line and exit 2, a bug keeps its traceback.

Most cases run through ``lit_features.__main__.main`` in one helper process (``run_cases.py``: start-up paid
once); the bug in predict and the multi-device cases run ``python -m lit_features`` itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import quickstart_args
from tests.conftest import REPO_ROOT, cli_env, run_cli
from tests.vfm.vfm_test_helpers import known_motion_samples, write_store

MEDIA = REPO_ROOT / "samples" / "media"
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]

# name -> (file name, content, what the message must name). Mistakes people make when writing manifests.
MANIFESTS = {
    "missing_file": ("nope.json", None, ["nope.json: manifest not found"]),
    "invalid_json": ("trailing_comma.json", '[\n  {"path": "a.mp4"},\n]\n', ["trailing_comma.json", "line 3"]),
    "object_not_list": (
        "object.json",
        json.dumps({"path": str(MEDIA / "chelsea.jpg"), "cap": "a cat"}),
        ["object.json: expected a JSON list of entries, got dict"],
    ),
    "entry_without_path": (
        "no_path.json",
        json.dumps([{"path": str(MEDIA / "chelsea.jpg")}, {"cap": "where is the video?"}]),
        ["no_path.json, entry 1, field 'path'", "missing"],
    ),
    "path_null": ("null_path.json", json.dumps([{"path": None}]), ["null_path.json, entry 0, field 'path'"]),
    "num_frames_as_text": (
        "frames.json",
        json.dumps([{"path": str(MEDIA / "cockatoo.mp4"), "num_frames": "280"}]),
        ["frames.json, entry 0, field 'num_frames'", "'280'"],
    ),
    "cut_end_before_start": (
        "cut.json",
        json.dumps([{"path": str(MEDIA / "cockatoo.mp4"), "cut": [120, 40]}]),
        ["cut.json, entry 0, field 'cut'", "[120, 40]"],
    ),
    "empty": ("empty.json", "[]", ["empty.json: no entries"]),
    "csv_without_video_column": (
        "clips.csv",
        "name,caption\nclip1.mp4,a clip\n",
        ["clips.csv, field 'path'", "no video column", "['name', 'caption']"],
    ),
    "jsonl_broken_line": (
        "clips.jsonl",
        json.dumps({"path": str(MEDIA / "chelsea.jpg")}) + '\n{"path": "b.mp4", cap: "x"}\n',
        ["clips.jsonl, entry 2", "invalid JSON"],
    ),
    "list_names_a_missing_meta": (
        "datasets.txt",
        f"{MEDIA},meta_missing.json\n",
        ["datasets.txt, entry 1", "meta_missing.json", "does not exist"],
    ),
}


def other_cases(tmp: Path, tiny_models: Path, quickstart_store: Path, motion_store: Path) -> dict:
    """name -> (arguments, what the message must name): user errors other than manifests."""
    predict = quickstart_args(tiny_models, tmp / "out")
    fit = ["fit", "--config", "configs/motion_ae.yaml", "--data.store", str(motion_store), "--data.num_workers", "0"]
    fit += ["--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp / "fit")]
    return {
        "unknown_option": (predict + ["--data.bogus", "1"], ["data (ManifestDataModule)", "'bogus'", "predict --help"]),
        "value_of_wrong_type": (predict + ["--data.batch_size", "two"], ["data.batch_size", "two"]),
        "missing_weights": (
            predict + ["--model.model_path", str(tmp / "no_weights")],
            [f"model weights not found at '{tmp / 'no_weights'}'", "make_tiny_models.py"],
        ),
        "value_refused_by_an_object": (
            predict + ["--writer.export_jsonl", "/abs/rows.jsonl"],
            ["FeatureWriter", "export_jsonl", "'/abs/rows.jsonl'"],
        ),
        "missing_config_file": (predict + ["--config", str(tmp / "nothere.yaml")], ["nothere.yaml", "does not exist"]),
        "store_of_another_configuration": (
            quickstart_args(tiny_models, quickstart_store) + ["--model.num_frames", "4"],
            [f"{quickstart_store} holds features made with a different configuration", "num_frames: 8 -> 4"],
        ),
        "accelerator_not_here": (predict + ["--trainer.accelerator", "gpu"], ["trainer:", "gpu"]),
        "input_dim_contradicting_the_store": (
            fit + ["--model.input_dim", "768"],
            [str(motion_store), "expected [T, N, 768] or [T, H, W, 768]", "C=32"],
        ),
        "unknown_command": (["predcit"], ["unknown command 'predcit'", "predict"]),
        "inspect_missing_store": (["inspect", str(tmp / "nothing")], [f"{tmp / 'nothing'} does not exist"]),
        "inspect_unknown_option": (["inspect", str(quickstart_store), "--bogus"], ["--bogus", "inspect --help"]),
        "verify_missing_input": (["verify", str(tmp / "a"), str(tmp / "b")], [f"{tmp / 'a'}: no such file"]),
        "filter_missing_list": (
            ["filter", "--ann_txt_path", str(tmp / "ann.txt")],
            [f"{tmp / 'ann.txt'}: annotation list not found"],
        ),
    }


BUGS = {  # name -> (arguments, what the traceback shows); a bug in code, or the user asked for the traceback
    "value_error_in_an_init_that_is_a_bug": (["--model.class_path", "tests.cli.broken.BrokenInit"], "too many values"),
    "debug_flag_keeps_the_traceback": (["--debug", "inspect", "{tmp}/nothing"], "NotAFeatureStoreError"),
}


@pytest.fixture(scope="module")
def results(quickstart, tiny_models, tmp_path_factory) -> dict:
    """Every in-process case, run once in one helper process; name -> {rc, stdout, stderr, expect}."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    motion_store = write_store(tmp / "motion32", known_motion_samples(4), {"model": "synthetic"})
    cases = {}
    for name, (file, content, expect) in MANIFESTS.items():
        if content is not None:
            (tmp / file).write_text(content)
        cases[name] = (quickstart_args(tiny_models, tmp / "out") + ["--data.manifest", str(tmp / file)], expect)
    cases.update(other_cases(tmp, tiny_models, quickstart["store"], motion_store))
    for name, (args, shows) in BUGS.items():
        args = [a.format(tmp=tmp) for a in args]
        cases[name] = (args if args[0] == "--debug" else quickstart_args(tiny_models, tmp / "out") + args, [shows])
    (tmp / "cases.json").write_text(json.dumps([args for args, _ in cases.values()]))
    helper = [sys.executable, str(Path(__file__).with_name("run_cases.py")), str(tmp / "cases.json")]
    subprocess.run([*helper, str(tmp / "results.json")], cwd=REPO_ROOT, env=cli_env(OMP_NUM_THREADS="1"), check=True)
    outcome = json.loads((tmp / "results.json").read_text())
    return {name: {**out, "expect": expect} for (name, (_, expect)), out in zip(cases.items(), outcome, strict=True)}


def assert_one_line_user_error(result: dict, expect: list[str]) -> None:
    output = result["stdout"] + result["stderr"]
    assert result["rc"] == 2, output
    assert "Traceback" not in output and "Given value" not in output and "usage:" not in output, output
    errors = [line for line in result["stderr"].splitlines() if line.startswith("lit_features: error: ")]
    assert len(errors) == 1, output
    for part in expect:
        assert part in errors[0], (part, errors[0])


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_malformed_manifest_is_one_line_naming_file_entry_field(results, name):
    assert_one_line_user_error(results[name], results[name]["expect"])


@pytest.mark.parametrize("name", list(other_cases(Path("t"), Path("m"), Path("q"), Path("s"))))
def test_other_user_error_is_one_line_with_exit_2(results, name):
    assert_one_line_user_error(results[name], results[name]["expect"])


@pytest.mark.parametrize("name", list(BUGS))
def test_bug_or_debug_keeps_the_traceback(results, name):
    result = results[name]
    assert result["rc"] == 1
    assert "Traceback (most recent call last)" in result["stderr"] and result["expect"][0] in result["stderr"]
    assert "lit_features: error:" not in result["stderr"]


def test_bug_inside_predict_shows_its_traceback_through_python_m(tiny_models, tmp_path):
    images = tmp_path / "one.json"
    images.write_text(json.dumps([{"path": str(MEDIA / "chelsea.jpg")}]))
    args = quickstart_args(tiny_models, tmp_path / "out") + ["--data.manifest", str(images)]
    proc = run_cli([*args, "--model.class_path", "tests.cli.broken.BrokenPredictStep"], check=False)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "KeyError: 'a key a bug looked up'" in proc.stderr
    assert "lit_features: error:" not in proc.stderr


def planted(kind: str) -> dict[str, str]:
    """Environment that makes local rank 1 fail in its data set-up (see ``inject/sitecustomize.py``)."""
    inject = Path(__file__).with_name("inject")
    return {
        "PYTHONPATH": f"{inject}{os.pathsep}{REPO_ROOT}",
        "LIT_FEATURES_TEST_RANK1_FAILS": kind,
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.slow
def test_user_error_of_a_launched_rank_is_one_line_from_rank_0_and_exit_2(tiny_models, tmp_path):
    args = quickstart_args(tiny_models, tmp_path / "out") + DDP
    proc = run_cli(args, check=False, **planted("user"))
    assert_one_line_user_error(
        {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr},
        ["[local rank 1] rank1_share.json, entry 3, field 'path': planted error of rank 1"],
    )


@pytest.mark.slow
def test_bug_of_a_launched_rank_keeps_its_traceback(tiny_models, tmp_path):
    args = quickstart_args(tiny_models, tmp_path / "out") + DDP
    proc = run_cli(args, check=False, **planted("bug"))
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "RuntimeError: planted bug on rank 1" in proc.stderr


@pytest.mark.slow
def test_user_error_of_every_rank_is_printed_once(quickstart, tiny_models):
    args = quickstart_args(tiny_models, quickstart["store"]) + ["--model.num_frames", "4"] + DDP
    proc = run_cli(args, check=False, OMP_NUM_THREADS="1")
    assert_one_line_user_error(
        {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr},
        ["holds features made with a different configuration", "num_frames: 8 -> 4"],
    )
