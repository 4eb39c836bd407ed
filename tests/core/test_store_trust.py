"""The store never serves a silently wrong sample: through the command line, one test per way it could.

Most runs go through ``lit_features.__main__.main`` inside the test process (the same entry point as
``python -m lit_features``, without an interpreter start per run); exit codes and the one-line refusals are
read as a user sees them. Runs that need their own process (a size limit, a mount) use a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lit_features.__main__ import main
from lit_features.store import FeatureStore, layout
from lit_features.store.fingerprint import fingerprint_hash
from tests.conftest import REPO_ROOT, cli_env

CONFIG = str(REPO_ROOT / "configs" / "quickstart.yaml")
SIGLIP = "siglip-so400m-patch14-384"


@pytest.fixture(autouse=True)
def digest_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private weight-digest cache (the per-user one is not touched by tests)."""
    monkeypatch.setenv("LIT_FEATURES_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Terminal:
    """What a user of the command line sees: output, errors and log lines (pytest holds the log handlers)."""

    def __init__(self, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture):
        self.capfd, self.caplog = capfd, caplog
        caplog.set_level(logging.INFO, logger="lit_features")


@pytest.fixture()
def term(capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> Terminal:
    return Terminal(capfd, caplog)


def cli(term: Terminal, *args: str) -> tuple[int, str]:
    """Run the command line in this process; returns (exit code, stdout + stderr + log)."""
    term.capfd.readouterr()
    term.caplog.clear()
    with mock.patch.object(sys, "argv", ["lit_features"]):
        code = main(list(args))
    out, err = term.capfd.readouterr()
    return code, out + err + term.caplog.text


def predict(term, weights: Path, manifest: Path, out: Path, *extra: str) -> tuple[int, str]:
    return cli(
        term, "predict", "--config", CONFIG, "--model.model_path", str(weights), "--data.manifest", str(manifest),
        "--writer.output_dir", str(out), "--data.num_workers", "0", "--trainer.enable_progress_bar", "false", *extra,
    )  # fmt: skip


def error_line(text: str) -> str:
    """The single ``lit_features: error:`` line of a refused run."""
    lines = [line for line in text.splitlines() if line.startswith("lit_features: error:")]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def write_manifest(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a store (but the lock, which only names the last holder) by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def images(media: Path) -> list[dict]:
    return [{"path": str(media / "chelsea.jpg"), "cap": "a cat"}, {"path": str(media / "astronaut.png")}]


# -- 1. weights identified by content ---------------------------------------------------------------------------
def test_retrained_weights_with_the_same_names_and_sizes_are_refused(term, tiny_models, media, tmp_path) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(tiny_models / SIGLIP, weights)
    manifest = write_manifest(tmp_path / "m.json", images(media))
    out = tmp_path / "store"
    assert predict(term, weights, manifest, out)[0] == 0
    before = snapshot(out)
    # "Fine-tune" one tensor in place: same file names, same sizes, other numbers.
    path = weights / "model.safetensors"
    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    size = path.stat().st_size
    save_file(tensors, path, metadata=metadata)
    assert path.stat().st_size == size
    code, text = predict(term, weights, manifest, out)
    line = error_line(text)
    assert code == 2 and "other weights" in line and "weights.files.model.safetensors" in line
    assert "STAND-IN" not in text, "refused before the model loads"
    assert snapshot(out) == before, "a refused run changed the store"

    # A store written before weights were identified by content: refused, naming why and the way out.
    info = json.loads((out / "store.json").read_text())
    info["format_version"] = 1
    info["fingerprint"]["store_format"] = 1
    info["fingerprint"]["weights"] = {"files": {"model.safetensors": size, "config.json": "0123456789abcdef"}}
    info["fingerprint_hash"] = "legacy"
    (out / "store.json").write_text(json.dumps(info))
    code, text = predict(term, weights, manifest, out)
    line = error_line(text)
    assert code == 2 and "store format 1" in line and "--writer.accept_weights true" in line
    code, text = predict(term, weights, manifest, out, "--writer.accept_weights", "true")
    assert code == 0 and "0 of 2 samples to do" in text, text[-2000:]
    info = json.loads((out / "store.json").read_text())
    assert info["format_version"] == layout.STORE_FORMAT_VERSION and info["accepted_weights"]
    assert predict(term, weights, manifest, out)[0] == 0  # the store now knows these weights


def test_a_store_made_under_the_old_seek_rule_is_refused_naming_it(term, tiny_models, media, tmp_path) -> None:
    manifest = write_manifest(tmp_path / "m.json", [{"path": str(media / "realshort.mp4"), "cut": [5, 36]}])
    out = tmp_path / "store"
    assert predict(term, tiny_models / SIGLIP, manifest, out)[0] == 0
    info = json.loads((out / "store.json").read_text())
    assert info["fingerprint"]["decode"] == {"seek": "clean_keyframes"}
    # As a store written before decoding recorded its rules: its clips may hold frames from an unclean seek.
    del info["fingerprint"]["decode"]
    info["fingerprint_hash"] = fingerprint_hash(info["fingerprint"])
    (out / "store.json").write_text(json.dumps(info))
    before = snapshot(out)
    code, text = predict(term, tiny_models / SIGLIP, manifest, out)
    line = error_line(text)
    assert code == 2 and "decode.seek: '<absent>' -> 'clean_keyframes'" in line and "--writer.overwrite true" in line
    assert snapshot(out) == before, "a refused run changed the store"
    code, text = predict(term, tiny_models / SIGLIP, manifest, out, "--writer.overwrite", "true")
    assert code == 0 and json.loads((out / "store.json").read_text())["fingerprint"]["decode"]


# -- 2. two keys, one file --------------------------------------------------------------------------------------
def test_a_template_that_maps_two_keys_to_one_file_is_refused(term, tiny_models, tmp_path) -> None:
    out = tmp_path / "store"
    code, text = predict(
        term, tiny_models / SIGLIP, REPO_ROOT / "samples" / "quickstart.json", out,
        "--writer.path_template", "{stem}{ext}",
    )  # fmt: skip
    line = error_line(text)
    assert code == 2
    assert "'media__v_GGSY1Qvo990_mp4'" in line and "'media__v_GGSY1Qvo990_mp4_cut0-178'" in line
    assert "e.g. '{key}{ext}'" in line and "STAND-IN" not in text
    assert not out.exists(), "nothing is written by a refused run"


# -- 3. same key, different source ------------------------------------------------------------------------------
def test_a_stored_key_from_another_source_is_an_error_not_a_skip(term, tiny_models, media, tmp_path) -> None:
    out = tmp_path / "store"
    for name, image in (("a", "chelsea.jpg"), ("b", "astronaut.png")):
        (tmp_path / name / "clips").mkdir(parents=True)
        shutil.copy(media / image, tmp_path / name / "clips" / "x.png")
        write_manifest(tmp_path / name / "m.json", [{"path": "clips/x.png"}])  # same key: clips__x_png
    assert predict(term, tiny_models / SIGLIP, tmp_path / "a" / "m.json", out)[0] == 0
    before = snapshot(out)
    code, text = predict(term, tiny_models / SIGLIP, tmp_path / "b" / "m.json", out)
    line = error_line(text)
    assert code == 2 and "'clips__x_png'" in line
    assert str(tmp_path / "a" / "clips" / "x.png") in line and str(tmp_path / "b" / "clips" / "x.png") in line
    assert snapshot(out) == before
    # Same source, different caption (a text encoder would compute other features): refused too.
    write_manifest(tmp_path / "a" / "m.json", [{"path": "clips/x.png", "cap": "another caption"}])
    code, text = predict(term, tiny_models / SIGLIP, tmp_path / "a" / "m.json", out)
    assert code == 2 and "different cap" in error_line(text)


# -- 4. conflicting duplicates ----------------------------------------------------------------------------------
def test_conflicting_duplicate_entries_are_a_manifest_error(term, tiny_models, media, tmp_path) -> None:
    clip = str(media / "chelsea.jpg")
    manifest = write_manifest(tmp_path / "m.json", [{"path": clip, "cap": "a cat"}, {"path": clip, "cap": "a dog"}])
    code, text = predict(term, tiny_models / SIGLIP, manifest, tmp_path / "store")
    line = error_line(text)
    assert code == 2 and f"{manifest}, entry 1" in line and f"{manifest}, entry 0" in line and "'cap'" in line
    assert not (tmp_path / "store").exists()
    ids = write_manifest(
        tmp_path / "ids.json", [{"id": "x", "path": clip}, {"id": "x", "path": str(media / "astronaut.png")}]
    )
    code, text = predict(term, tiny_models / SIGLIP, ids, tmp_path / "store")
    assert code == 2 and "'path'" in error_line(text)
    # Exact duplicates are one sample, said in the log.
    same = write_manifest(tmp_path / "same.json", [{"path": clip, "cap": "a cat"}] * 3)
    code, text = predict(term, tiny_models / SIGLIP, same, tmp_path / "store")
    assert code == 0 and "2 entries listed a sample already listed" in text
    assert len(FeatureStore(tmp_path / "store")) == 1


# -- 5. write failures --------------------------------------------------------------------------------------------
def _small_disk(folder: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` at ``folder`` (root only); False when this machine does not allow it."""
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]).returncode == 0


def test_a_full_disk_fails_the_run_and_the_next_run_retries(tiny_models, media, tmp_path) -> None:
    """ENOSPC on a small tmpfs (or, where mounting is not allowed, EFBIG under a file-size limit): the failed
    samples are counted as failed everywhere, the run exits 2, and a plain rerun with room writes them."""
    disk = tmp_path / "disk"
    mounted = _small_disk(disk, "480k")
    manifest = write_manifest(
        tmp_path / "m.json",
        [*images(media), {"path": str(media / "realshort.mp4")}, {"path": str(media / "v_GGSY1Qvo990.mp4")}],
    )
    out = disk / "store"
    args = [
        sys.executable, "-m", "lit_features", "predict", "--config", CONFIG,
        "--model.model_path", str(tiny_models / SIGLIP), "--data.manifest", str(manifest),
        "--writer.output_dir", str(out), "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = cli_env(LIT_FEATURES_CACHE=str(tmp_path / "cache"))

    def limit_file_size() -> None:  # 200 kB: images fit, videos (400 kB each) do not
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))

    try:
        run = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=600, preexec_fn=None if mounted else limit_file_size
        )
        assert run.returncode == 2, run.stderr[-3000:]
        line = error_line(run.stderr)
        summary = json.loads((out / "run_summary.json").read_text())
        # Not all four fit. Which fail depends on the order the last space goes in (a batch's files are written
        # side by side); every count says the same number, whatever it is.
        failed = summary["failed"]
        assert 2 <= failed <= 4 and summary["write_failed"] == failed and summary["written"] == 4 - failed
        assert f"{failed} samples could not be written" in line and ("No space left" in line or "too large" in line)
        failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
        assert [f["stage"] for f in failures] == ["write"] * failed
        assert len({f["key"] for f in failures} | set(FeatureStore(out).keys())) == 4  # each sample once, somewhere
        assert not any(p.name.endswith(".tmp") for p in out.rglob("*") if p.is_file()), "a partial file was left"
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)  # no flag needed
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert len(FeatureStore(out)) == 4 and (out / "failures.jsonl").read_text() == ""
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(disk)])


# -- 7. index rows that lie; 10. reader errors -------------------------------------------------------------------
def test_rows_whose_files_were_deleted_or_cut_are_recomputed(term, tiny_models, media, tmp_path) -> None:
    manifest = write_manifest(tmp_path / "m.json", [*images(media), {"path": str(media / "realshort.mp4")}])
    out = tmp_path / "store"
    one = ("--data.batch_size", "1")  # batches of one: recomputed samples are bit-identical
    assert predict(term, tiny_models / SIGLIP, manifest, out, *one)[0] == 0
    store = FeatureStore(out)
    original = {k: store[k]["features"].clone() for k in store}
    deleted, cut, kept = (store.path(k) for k in ("media__chelsea_jpg", "media__astronaut_png", "media__realshort_mp4"))
    deleted.unlink()
    cut.write_bytes(cut.read_bytes()[:1000])
    code, text = cli(term, "inspect", str(out), "--json")
    summary = json.loads(next(line for line in text.splitlines() if line.startswith("{")))
    assert code == 1 and (summary["written"], summary["damaged"]) == (1, 2)
    code, text = cli(term, "inspect", str(out), "--sample", "media__astronaut_png")
    line = error_line(text)
    assert code == 2 and "'media__astronaut_png'" in line and str(cut) in line
    code, text = predict(term, tiny_models / SIGLIP, manifest, out, *one)
    assert code == 0 and "2 stored samples are recomputed" in text
    store = FeatureStore(out)
    assert all(torch.equal(store[k]["features"], v) for k, v in original.items())
    assert cli(term, "inspect", str(out), "--check")[0] == 0
    # A file of the right size that does not read: only a full check finds it; reading names key and file.
    data = bytearray(kept.read_bytes())
    data[8:16] = b"\xff" * 8
    kept.write_bytes(bytes(data))
    assert cli(term, "inspect", str(out))[0] == 0
    code, text = cli(term, "inspect", str(out), "--check")
    assert code == 1 and "media__realshort_mp4" in text
    code, text = cli(term, "verify", str(out), str(out))
    line = error_line(text)
    assert code == 2 and "'media__realshort_mp4'" in line and str(kept) in line


# -- 10. smaller holes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([{"path": "a.mp4", "cut": [0, float("inf")]}], "entry 0, field 'cut': must be [start, end] frame indices up"),
        ([{"path": "a.mp4", "num_frames": 10**400}], "entry 0, field 'num_frames': must be a positive integer"),
        ([], "no entries"),
    ],
)
def test_bad_numbers_and_empty_manifests_name_the_file(term, tiny_models, tmp_path, entries, expected) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(entries))
    code, text = predict(term, tiny_models / SIGLIP, manifest, tmp_path / "store")
    line = error_line(text)
    assert code == 2 and str(manifest) in line and expected in line


def test_leftovers_of_a_killed_merge_are_removed_and_symlinked_logs_refused(term, tiny_models, media, tmp_path):
    manifest = write_manifest(tmp_path / "m.json", images(media))
    out = tmp_path / "store"
    assert predict(term, tiny_models / SIGLIP, manifest, out)[0] == 0
    leftovers = [
        out / ".index.jsonl.4242.0badc0de.tmp",
        out / layout.RUN_SUMMARY_DIR / ".rank-0.json.4242.0badc0de.tmp",
    ]
    for path in leftovers:
        path.write_text("a merge killed half way")
    assert predict(term, tiny_models / SIGLIP, manifest, out)[0] == 0
    assert not any(p.exists() for p in leftovers)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the store's")
    shutil.rmtree(out / layout.TMP_DIR, ignore_errors=True)
    (out / layout.TMP_DIR).symlink_to(elsewhere)
    code, text = predict(term, tiny_models / SIGLIP, manifest, out)
    assert code == 2 and f"{out / layout.TMP_DIR} is a symbolic link" in error_line(text)
    assert (elsewhere / "keep.txt").exists()


def test_a_read_only_store_with_nothing_to_do_succeeds(term, tiny_models, media, tmp_path) -> None:
    """The store seen through a read-only bind mount (root), or with its modes cleared (other users)."""
    writable, view = tmp_path / "rw", tmp_path / "ro"
    manifest = write_manifest(tmp_path / "m.json", images(media))
    assert predict(term, tiny_models / SIGLIP, manifest, writable / "store")[0] == 0
    view.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "--bind", str(writable), str(view)]).returncode == 0
    if mounted:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
    elif os.geteuid() == 0:
        pytest.skip("root ignores file modes and this machine allows no read-only mount")
    else:
        view.rmdir()
        writable.rename(view)
        for path in [view, *view.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    out = view / "store"
    try:
        code, text = predict(term, tiny_models / SIGLIP, manifest, out)
        assert code == 0 and "read-only, nothing to do" in text, text[-2000:]
        more = write_manifest(tmp_path / "more.json", [*images(media), {"path": str(media / "realshort.mp4")}])
        code, text = predict(term, tiny_models / SIGLIP, more, out)
        line = error_line(text)
        assert code == 2 and "cannot be written" in line and "1 of 3 samples" in line
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(view)])
        else:
            for path in [view, *view.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
