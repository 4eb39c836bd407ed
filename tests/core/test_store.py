"""Store internals: atomic writes, torn index lines, path safety, codecs, the reader and log merging."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_features.records import FeatureRecord, PredictionOutput
from lit_features.store import layout, weights
from lit_features.store.codecs import decode, encode, probe
from lit_features.store.fingerprint import describe_difference, fingerprint_hash, weight_identity
from lit_features.store.merge import merge_store_logs
from lit_features.store.sample_writer import SampleWriter
from lit_features.store.state import StoreState


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "x.bin"
    layout.atomic_write(target, b"complete")
    assert target.read_bytes() == b"complete"

    def failing_replace(src, dst):  # the process dies between writing the temporary and renaming it
        raise OSError("killed before rename")

    monkeypatch.setattr(layout.os, "replace", failing_replace)
    with pytest.raises(OSError, match="killed before rename"):
        layout.atomic_write(target, b"new but never renamed")
    assert target.read_bytes() == b"complete"  # the old content is intact
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]  # no temporary left behind


def test_torn_index_tail_is_skipped_then_repaired(tmp_path: Path) -> None:
    index = tmp_path / "rank-0.jsonl"
    index.write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "fi')  # killed mid-append
    assert [r["key"] for r in layout.read_jsonl_rows(index)] == ["a", "b"]
    layout.repair_torn_tail(index)
    with open(index, "a") as fh:
        fh.write('{"key": "c"}\n')
    assert [r["key"] for r in layout.read_jsonl_rows(index)] == ["a", "b", "c"]


def test_path_templates_cannot_escape_the_store(tmp_path: Path) -> None:
    p = layout.resolve_sample_path(tmp_path, "{shard}/{key}{ext}", "clip", "/data/v/clip.mp4", ".safetensors")
    assert p.parent.parent == tmp_path and p.name == "clip.safetensors"
    for bad in ("../{key}{ext}", "/etc/{key}{ext}", "{shard}/../../{key}{ext}"):
        with pytest.raises(layout.UnsafePathError):
            layout.resolve_sample_path(tmp_path, bad, "clip", None, ".pt")
    beside = layout.resolve_sample_path(tmp_path, "{source_dir}/{stem}_embedding.npz", "k", "/d/s/a.npz", ".npz")
    assert beside == Path("/d/s/a_embedding.npz")


@pytest.mark.parametrize("codec", ["safetensors", "pt", "npz"])
def test_codecs_round_trip(tmp_path: Path, codec: str) -> None:
    tensors = {"video": torch.randn(4, 3, 2, 2).to(torch.bfloat16), "mask": torch.ones(5, dtype=torch.int64)}
    path = tmp_path / f"x.{codec}"
    path.write_bytes(encode(codec, tensors, {"cap": "a caption"}))
    back, meta = decode(str(path), codec)
    assert torch.equal(back["mask"], tensors["mask"])
    assert torch.equal(back["video"].to(torch.bfloat16), tensors["video"])  # npz widens bf16 to fp32 exactly
    assert meta["cap"] == "a caption"


def test_pt_reads_refuse_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.ones(1), "obj": np.dtype("float32")}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        decode(str(path), "pt")


def test_fingerprint_difference_names_the_parameter(tmp_path: Path) -> None:
    a = {"params": {"num_frames": 8, "layer": -2}, "weights": {"files": {"model.safetensors": 10}}}
    b = {"params": {"num_frames": 16, "layer": -2}, "weights": {"files": {"model.safetensors": 10}}}
    assert fingerprint_hash(a) != fingerprint_hash(b)
    assert describe_difference(a, b) == "  params.num_frames: 8 -> 16"


def test_weights_are_identified_by_content_once_per_file_version(tmp_path: Path, monkeypatch) -> None:
    """Any changed byte changes the identity, for a folder and for a single checkpoint file; the digest is
    cached by (path, size, mtime, ctime, inode), so an unchanged file is not read again."""
    monkeypatch.setenv("LIT_FEATURES_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 7)
    (folder / "README.md").write_text("not part of what a model computes")
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4)}}, checkpoint)
    hashed = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    ident = weight_identity(folder)
    assert set(ident["files"]) == {"config.json", "model.safetensors"} and len(ident["files"]["config.json"]) == 32
    single = weight_identity(checkpoint)
    assert single["file"] == "last.ckpt" and len(single["sha256"]) == 32
    assert sorted(hashed) == ["config.json", "last.ckpt", "model.safetensors"]
    assert weight_identity(folder) == ident and weight_identity(checkpoint) == single
    assert len(hashed) == 3, "cached digests are reused"
    # Retrained: same names, same sizes, even the old modification times; other bytes.
    stat = (folder / "model.safetensors").stat()
    (folder / "model.safetensors").write_bytes(b"y" * 7)
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    stat = checkpoint.stat()
    torch.save({"state_dict": {"w": torch.ones(4)}}, checkpoint)
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert checkpoint.stat().st_size == stat.st_size
    assert weight_identity(folder)["files"]["model.safetensors"] != ident["files"]["model.safetensors"]
    assert weight_identity(checkpoint)["sha256"] != single["sha256"]


def test_an_object_array_npz_is_never_a_complete_sample(tmp_path: Path) -> None:
    path = tmp_path / "a_embedding.npz"
    np.savez(path, embedding=np.array([{"not": "numbers"}], dtype=object))
    assert probe(path, "npz") is None
    np.savez(path, embedding=np.zeros((512, 3), np.float32))
    assert probe(path, "npz") == {"embedding": ([512, 3], "float32")}


def test_an_acknowledged_sample_survives_a_power_loss(tmp_path: Path, monkeypatch) -> None:
    """Order of durability per batch: file fsynced, renamed, its folder fsynced, then the index row appended
    and fsynced. Only then does the sample count as written."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "store"
    for folder in ("index", "failures"):
        (root / folder).mkdir(parents=True)
    store = StoreState(root, {}, {})
    writer = SampleWriter({"": store}, "safetensors", "{shard}/{key}{ext}", 0, lambda key: None)
    writer.put(PredictionOutput([FeatureRecord("k", "/src/k.mp4", {"x": torch.ones(2)})], []))
    writer.close()
    final = layout.resolve_sample_path(root, "{shard}/{key}{ext}", "k", None, ".safetensors")
    index = str(layout.rank_file(root, "index", 0))
    order = [events.index(e) for e in [("rename", str(final)), ("fsync", str(final.parent)), ("fsync", index)]]
    assert order == sorted(order), events
    assert events[order[0] - 1][0] == "fsync" and ".tmp" in events[order[0] - 1][1]  # the data before the rename
    assert writer.counts["written"] == 1


def test_merge_keeps_latest_row_and_drops_failures_that_later_succeeded(tmp_path: Path) -> None:
    (tmp_path / "index").mkdir()
    (tmp_path / "failures").mkdir()
    (tmp_path / "index" / "rank-0.jsonl").write_text('{"key": "a", "file": "a1"}\n{"key": "b", "file": "b"}\n')
    (tmp_path / "index" / "rank-3.jsonl").write_text('{"key": "a", "file": "a2"}\n')
    (tmp_path / "failures" / "rank-1.jsonl").write_text('{"key": "b", "stage": "decode"}\n{"key": "c", "stage": "x"}\n')
    (tmp_path / "index" / "rank-2.jsonl").write_text("")  # a rank that produced nothing
    assert merge_store_logs(tmp_path) == {"written": 2, "failed": 1}
    merged = [json.loads(x) for x in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert [(r["key"], r["file"]) for r in merged] == [("a", "a2"), ("b", "b")]
    assert [json.loads(x)["key"] for x in (tmp_path / "failures.jsonl").read_text().splitlines()] == ["c"]


def test_what_a_rerun_schedules_again(tmp_path: Path) -> None:
    """Write errors and out-of-memory are retried without a flag; a decode failure only with retry_failed; a
    failure under the same key from another source is retried; poison stays skipped even with retry_failed."""
    from types import SimpleNamespace

    rows = {
        "full": {"stage": "write", "error": "OSError", "message": "[Errno 28] No space left on device"},
        "oom": {"stage": "model", "error": "OutOfMemoryError", "message": "CUDA out of memory. Tried to allocate"},
        "broken": {"stage": "decode", "error": "RuntimeError", "message": "moov atom not found"},
        "moved": {"stage": "decode", "error": "RuntimeError", "message": "moov atom not found"},
    }
    (tmp_path / "failures").mkdir()
    (tmp_path / "failures" / "rank-0.jsonl").write_text(
        "".join(json.dumps({"key": k, "source": f"/d/{k}", **r}) + "\n" for k, r in rows.items())
    )
    (tmp_path / "crashes").mkdir()
    (tmp_path / "crashes" / "rank-0.jsonl").write_text(json.dumps({"key": "poison", "source": "/d/poison"}) + "\n")
    store = StoreState(tmp_path, {}, {})
    store.load(rows=True)
    samples = {k: SimpleNamespace(key=k, source=f"/d/{k}") for k in [*rows, "poison"]}
    samples["moved"].source = "/elsewhere/moved"
    assert store.settled(samples, retry_failed=False, max_attempts=1) == ({"broken", "poison"}, {"poison": 1})
    assert store.settled(samples, retry_failed=True, max_attempts=1) == ({"poison"}, {"poison": 1})
    assert store.settled(samples, retry_failed=True, max_attempts=2) == (set(), {})
