"""Per-rank logs: the merge tolerates ranks that produced nothing (or no batch at all), and every rank must
see the same store (shared by all nodes)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lit_features.store import layout
from lit_features.store.merge import merge_store_logs
from lit_features.store.writer import StoreNotSharedError, check_shared_store
from tests.conftest import MEDIA


def _rows(path: Path, rows: list[dict], torn: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)


def test_merge_tolerates_empty_missing_and_torn_rank_files(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _rows(root / "index" / "rank-0.jsonl", [{"key": "a", "file": "x/a"}, {"key": "b", "file": "x/b"}])
    _rows(root / "index" / "rank-1.jsonl", [])  # a rank that had nothing to do
    # rank-2 wrote no index file at all, only failures; rank-3 was killed mid-line.
    _rows(root / "index" / "rank-3.jsonl", [{"key": "d", "file": "x/d"}], torn='{"key": "e", "fi')
    _rows(
        root / "failures" / "rank-2.jsonl",
        [{"key": "c", "stage": "decode"}, {"key": "a", "stage": "decode"}],  # "a" failed once, later done
    )
    assert merge_store_logs(root) == {"written": 3, "failed": 1}
    merged = [json.loads(line)["key"] for line in (root / layout.MERGED_INDEX).read_text().splitlines()]
    failed = [json.loads(line)["key"] for line in (root / layout.MERGED_FAILURES).read_text().splitlines()]
    assert merged == ["a", "b", "d"] and failed == ["c"]


def test_merge_of_a_store_where_no_rank_wrote_anything(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "index").mkdir(parents=True)
    assert merge_store_logs(root) == {"written": 0, "failed": 0}
    assert (root / layout.MERGED_INDEX).read_text() == ""


def test_a_run_with_nothing_left_still_rewrites_the_merged_index(tiny_models: Path, tmp_path: Path) -> None:
    # Lightning runs no predict hook when the loader is empty; the writer must still merge (here: after a
    # run whose merge never happened, e.g. killed after its last sample).
    from lit_features.cli import FeatureTrainer
    from lit_features.data.datamodule import ManifestDataModule
    from lit_features.extractors.vision_tower import VisionTowerFeatures
    from lit_features.store.writer import FeatureWriter

    manifest = tmp_path / "images.json"
    manifest.write_text(json.dumps([{"path": str(MEDIA / "chelsea.jpg")}, {"path": str(MEDIA / "astronaut.png")}]))
    out = tmp_path / "store"

    def run() -> FeatureWriter:
        writer = FeatureWriter(str(out), fsync=False)
        trainer = FeatureTrainer(
            accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, callbacks=[writer]
        )
        model = VisionTowerFeatures(str(tiny_models / "siglip-so400m-patch14-384"), dtype="float32")
        trainer.predict(model, datamodule=ManifestDataModule(str(manifest), num_workers=0, sandbox=False))
        return writer

    run()
    first = (out / layout.MERGED_INDEX).read_text()
    assert len(first.splitlines()) == 2
    (out / layout.MERGED_INDEX).unlink()
    writer = run()
    assert writer.summary["written"] == 0
    assert (out / layout.MERGED_INDEX).read_text() == first
    assert writer._writer._thread is None  # the writer thread was stopped on the skipped rank too


class _Strategy:
    """Collectives of a 2-rank run seen from one rank: rank 0's token, and the other rank's answer."""

    def __init__(self, token: str | None, other_missing: float):
        self.token, self.other_missing, self.root_device = token, other_missing, "cpu"

    def broadcast(self, obj, src=0):
        return obj if self.token is None else self.token

    def reduce(self, tensor, reduce_op="sum"):
        return tensor + self.other_missing


def _trainer(rank: int, token: str | None = None, other_missing: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(world_size=2, global_rank=rank, strategy=_Strategy(token, other_missing))


def test_every_rank_must_see_the_store_rank_0_prepared(tmp_path: Path) -> None:
    shared, local = tmp_path / "shared", tmp_path / "node-local"
    shared.mkdir()
    local.mkdir()
    check_shared_store(_trainer(0), shared)  # rank 0 writes its token; the other rank sees it
    token = (shared / layout.RUN_TOKEN).read_text()
    check_shared_store(_trainer(1, token), shared, wait_s=0.1)
    with pytest.raises(StoreNotSharedError, match=r"1 of 2 ranks .*rank 1 on .* does not see it"):
        check_shared_store(_trainer(1, token), local, wait_s=0.1)  # another node's private folder
    with pytest.raises(StoreNotSharedError, match=r"1 of 2 ranks .*rank 0 on .* sees it.*shared by every node"):
        check_shared_store(_trainer(0, other_missing=1.0), shared)  # rank 0 learns it from the reduce
    stale = local / layout.RUN_TOKEN
    stale.write_text("an earlier run")  # a leftover store from an earlier run is not the same store
    with pytest.raises(StoreNotSharedError):
        check_shared_store(_trainer(1, token), local, wait_s=0.1)
    single = SimpleNamespace(world_size=1, global_rank=0, strategy=None)
    check_shared_store(single, local / "absent")  # one rank: nothing to check
