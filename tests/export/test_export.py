"""Export to LitData / WebDataset / Parquet on a local disk: every reader gives back the store's bytes, exports are
incremental and refuse what would make them wrong, and a killed export is never read as complete."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_features.errors import UserError
from lit_features.export import run as export_run
from lit_features.export.record import ExportMismatchError, ExportOutOfDateError
from lit_features.export.run import export_store
from lit_features.export.tensors import from_npy_bytes, npy_bytes, tensor_bytes, tensor_from_bytes
from tests.export.export_helpers import (
    FORMATS,
    assert_same_as_store,
    predict_store,
    prompts,
    read_export,
    record,
    same_bits,
)
from tools.tiny_models import qwen as tiny_qwen


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen.make(tmp_path_factory.mktemp("qwen"))[0]


@pytest.fixture(scope="module")
def full_store(qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("full")
    return predict_store(qwen_dir, prompts(folder / "prompts.json"), folder / "store")


def test_tensor_encodings_keep_dtype_shape_and_bits() -> None:
    gen = torch.Generator().manual_seed(0)
    cases = [
        torch.randn(3, 5, generator=gen).to(torch.bfloat16),
        torch.tensor([float("nan"), -0.0, float("inf")], dtype=torch.bfloat16),
        torch.randn(2, 3, 4, generator=gen).half(),
        torch.randn(7, generator=gen, dtype=torch.float64),
        torch.randint(-(2**40), 2**40, (4, 2), generator=gen),
        torch.randint(0, 255, (5,), dtype=torch.uint8, generator=gen),
        torch.tensor([True, False, True]),
        torch.tensor(3.5),  # 0-d
        torch.empty(0, 64, dtype=torch.bfloat16),
        torch.randn(4, 6, generator=gen)[:, ::2],  # not contiguous
        torch.randn(3, generator=gen, dtype=torch.complex64),
        torch.randn(5, generator=gen).to(torch.float8_e4m3fn),
    ]
    for tensor in cases:
        name = str(tensor.dtype).removeprefix("torch.")
        assert same_bits(tensor_from_bytes(tensor_bytes(tensor), name, tensor.shape), tensor.contiguous())
        assert same_bits(from_npy_bytes(npy_bytes(tensor), name), tensor.contiguous())
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: the .npy holds the same bits as int16
            assert np.load(__import__("io").BytesIO(npy_bytes(tensor))).dtype == np.int16


@pytest.mark.parametrize("format", FORMATS)
def test_every_reader_gives_back_the_store_byte_for_byte(full_store, format: str, tmp_path: Path) -> None:
    out = tmp_path / "export"
    summary = export_store(str(full_store.root), format, str(out), shard_bytes=20_000)  # several shards
    assert summary["added"] == len(full_store) == 10 and summary["shards"] >= 2
    assert record(out)["fingerprint"] == full_store.fingerprint
    assert record(out)["store"]["extractor"] == "qwen_hidden"
    items = read_export(str(out), format, tmp_path / "cache")
    assert any(item["hidden_states"].dtype == torch.bfloat16 for item in items)
    assert len({item["attention_mask"].shape for item in items}) > 1  # 1-D tensors of varying length
    assert_same_as_store(items, full_store)


def test_plain_library_readers_read_the_shards(full_store, tmp_path: Path) -> None:
    """Without lit_features' readers: litdata's StreamingDataset, webdataset's own pipeline, pyarrow."""
    import json

    import pyarrow.parquet as pq
    import webdataset as wds
    from litdata import StreamingDataset

    from lit_features.export.litdata_format import serializers

    for format in FORMATS:
        export_store(str(full_store.root), format, str(tmp_path / format))
    items = list(StreamingDataset(str(tmp_path / "litdata"), serializers=serializers()))
    assert_same_as_store(
        [{**i, "meta": json.loads(i["meta"]), "source": i["source"] or None} for i in items], full_store
    )

    tars = sorted(str(p) for p in (tmp_path / "webdataset").glob("*.tar"))
    for sample in wds.WebDataset(tars, shardshuffle=False):
        doc = json.loads(sample["json"])
        for name, dtype in doc["dtypes"].items():
            assert same_bits(from_npy_bytes(sample[f"{name}.npy"], dtype), full_store[doc["key"]][name])

    table = pq.read_table(tmp_path / "parquet").to_pylist()  # the folder as one dataset (skips _lit_features*)
    assert sorted(r["key"] for r in table) == full_store.keys()
    row = table[0]
    assert row["hidden_states_dtype"] == "bfloat16"
    expected = full_store[row["key"]]["hidden_states"]
    assert row["hidden_states_shape"] == list(expected.shape)
    assert row["hidden_states_bytes"] == tensor_bytes(expected)


@pytest.mark.parametrize("format", FORMATS)
def test_a_second_export_adds_only_the_new_samples(qwen_dir: Path, tmp_path: Path, format: str) -> None:
    manifest = prompts(tmp_path / "prompts.json")
    partial = predict_store(qwen_dir, manifest, tmp_path / "store", limit=4)
    out = tmp_path / "export"
    assert export_store(str(partial.root), format, str(out))["added"] == 4
    first_files = {name: (out / name).read_bytes() for name in record(out)["parts"][0]["files"]}

    store = predict_store(qwen_dir, manifest, tmp_path / "store")  # the run finishes the other 6
    second = export_store(str(store.root), format, str(out))
    assert (second["added"], second["samples"]) == (6, 10)
    parts = record(out)["parts"]
    assert [p["samples"] for p in parts] == [4, 6]
    assert all((out / name).read_bytes() == data for name, data in first_files.items())  # part 0 untouched
    new_keys = (out / parts[1]["keys_file"]).read_text().split()[::2]
    assert sorted(new_keys) == sorted(set(store.keys()) - set(partial.keys()))
    assert export_store(str(store.root), format, str(out))["added"] == 0
    assert_same_as_store(read_export(str(out), format, tmp_path / "cache"), store)


def test_export_refuses_another_fingerprint_format_or_rewritten_samples(qwen_dir: Path, tmp_path: Path) -> None:
    manifest = prompts(tmp_path / "prompts.json", count=4)
    store = predict_store(qwen_dir, manifest, tmp_path / "store")
    out = tmp_path / "export"
    export_store(str(store.root), "parquet", str(out))
    with pytest.raises(ExportMismatchError, match="holds a parquet export, not webdataset"):
        export_store(str(store.root), "webdataset", str(out))
    fp32 = predict_store(qwen_dir, manifest, tmp_path / "fp32", dtype="float32")
    with pytest.raises(ExportMismatchError, match=f"fingerprint {store.fingerprint}.*{fp32.fingerprint}"):
        export_store(str(fp32.root), "parquet", str(out))
    # the same keys recomputed from another prompt: the exported p00 no longer matches the store
    changed = prompts(tmp_path / "changed.json", count=4, changed="a dog")
    predict_store(qwen_dir, changed, tmp_path / "store", overwrite=True)
    with pytest.raises(ExportOutOfDateError, match=r"1 exported sample\(s\) were rewritten .*'p00'.*new output"):
        export_store(str(store.root), "parquet", str(out))
    other = tmp_path / "not_an_export"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ExportMismatchError, match="not empty and holds no _lit_features_export.json"):
        export_store(str(store.root), "parquet", str(other))
    with pytest.raises(UserError, match="nowhere does not exist"):
        export_store(str(tmp_path / "nowhere"), "parquet", str(tmp_path / "x"))


def test_mixed_tensor_sets_litdata_refuses_before_writing_others_keep_them(qwen_dir: Path, tmp_path: Path) -> None:
    store = predict_store(qwen_dir, prompts(tmp_path / "p.json", count=6, negative_every=3), tmp_path / "store")
    assert "hidden_states_negative" in store["p02"] and "hidden_states_negative" not in store["p00"]
    with pytest.raises(UserError, match="needs one item structure; export this store as webdataset or parquet"):
        export_store(str(store.root), "litdata", str(tmp_path / "litdata"))
    assert not [p for p in (tmp_path / "litdata").rglob("*") if p.is_file()]  # refused before any shard
    for format in ("webdataset", "parquet"):
        export_store(str(store.root), format, str(tmp_path / format))
        assert_same_as_store(read_export(str(tmp_path / format), format, tmp_path / "cache"), store)


@pytest.mark.parametrize("format", ["webdataset", "litdata"])
def test_an_export_killed_before_its_commit_is_never_read(
    qwen_dir: Path, tmp_path: Path, format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = prompts(tmp_path / "prompts.json", count=6)
    partial = predict_store(qwen_dir, manifest, tmp_path / "store", limit=2)
    out = tmp_path / "export"
    export_store(str(partial.root), format, str(out))
    store = predict_store(qwen_dir, manifest, tmp_path / "store")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after publishing shards, before the commit

    if format == "litdata":
        monkeypatch.setattr("lit_features.export.litdata_format.publish_index", killed)  # after the commit
    else:
        monkeypatch.setattr(export_run, "save_record", killed)
    with pytest.raises(KeyboardInterrupt):
        export_store(str(store.root), format, str(out), shard_bytes=1000 if format == "webdataset" else None)
    monkeypatch.undo()
    unlisted = {p.name for p in out.glob("*") if p.is_file()} - set(record(out)["parts"][0]["files"])
    assert unlisted - {"_lit_features_export.json", "index.json"}  # the new part's shards are there ...
    assert_same_as_store(read_export(str(out), format, tmp_path / "c1"), store, partial.keys())  # ... unread

    again = export_store(str(store.root), format, str(out))
    assert again["added"] == (0 if format == "litdata" else 4)  # litdata: committed, only its index was stale
    if format == "webdataset":
        assert again["shards"] == 1  # the default shard size: the killed run's 4 shards were removed
    assert_same_as_store(read_export(str(out), format, tmp_path / "c2"), store)
    listed = {n for p in record(out)["parts"] for n in p["files"]}
    shards = {p.name for p in out.glob("*") if p.suffix in (".tar", ".bin")}
    assert shards == listed  # what the killed run left unlisted was removed
    assert not os.path.exists(out / ".lit_features_staging")


def test_one_export_per_output_at_a_time(full_store, tmp_path: Path) -> None:
    import json
    import time

    from lit_features.export.lock import LOCK_NAME, ExportBusyError

    out = tmp_path / "export"
    out.mkdir()
    lease = {"owner": "otherhost:4242:ab12", "heartbeat": time.time() - 5}
    (out / LOCK_NAME).write_text(json.dumps(lease))  # an export still running elsewhere
    with pytest.raises(ExportBusyError, match=r"another export \(otherhost:4242:ab12, active \d+ s ago\)"):
        export_store(str(full_store.root), "webdataset", str(out))
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written, the lease left alone
    (out / LOCK_NAME).write_text(json.dumps({**lease, "heartbeat": time.time() - 3600}))  # that export died
    assert export_store(str(full_store.root), "webdataset", str(out))["added"] == len(full_store)
    assert not (out / LOCK_NAME).exists()  # released at the end
