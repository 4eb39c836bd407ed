"""Store internals: atomic writes, torn index lines, path safety, codecs, the reader and log merging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_features.store import layout
from lit_features.store.codecs import decode, encode
from lit_features.store.fingerprint import describe_difference, fingerprint_hash, weight_identity
from lit_features.store.writer import merge_store_logs


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
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 7)
    ident = weight_identity(tmp_path)
    assert ident["files"]["model.safetensors"] == 7 and len(ident["files"]["config.json"]) == 16


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
