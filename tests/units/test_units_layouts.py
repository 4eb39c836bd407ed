"""A store of the layout before work units is never silently ignored: refused with the migrating command,
migrated explicitly, then continued in units; a store in units is refused to a job without units."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_features.store import FeatureStore, layout
from lit_features.store.state import StoreState
from lit_features.units.job import UnitLayoutError, check_unit_options, refuse_old_layout
from tests.conftest import run_cli
from tests.units.test_units_jobs import predict_args, write_manifest


@pytest.mark.slow
def test_old_layout_store_is_refused_then_migrated_and_continued(tiny_models: Path, tmp_path: Path) -> None:
    manifest, out = tmp_path / "m.jsonl", tmp_path / "store"
    keys = write_manifest(manifest, 5)
    units_args = predict_args(tiny_models, manifest, out, unit_size=2)
    old_args = predict_args(tiny_models, manifest, out, unit_size=None)
    run_cli([*old_args, "--data.limit", "3"])  # the earlier layout: index/rank-0.jsonl, 3 of 5 samples
    before = {k: FeatureStore(out)[k]["features"] for k in FeatureStore(out).keys()}
    assert len(before) == 3

    refused = run_cli(units_args, check=False)
    assert refused.returncode == 2 and "migrate-units" in refused.stderr, refused.stderr
    assert not (out / "units").exists()  # a refused job changes nothing

    run_cli(["migrate-units", str(out), str(manifest), "--unit_size", "2"])
    assert not (out / layout.INDEX_DIR).exists() and (out / layout.PREMIGRATION_DIR / layout.INDEX_DIR).is_dir()
    assert sorted(FeatureStore(out).keys()) == sorted(before)  # readable at once, from the units

    done = run_cli(units_args)
    summary = json.loads((out / layout.RUN_SUMMARY).read_text())
    assert summary["written"] == 2, done.stderr  # only what the earlier layout had not done
    store = FeatureStore(out)
    assert sorted(store.keys()) == sorted(keys)
    for key, tensor in before.items():
        assert store[key]["features"].equal(tensor)  # migrated samples are kept, not recomputed


def test_a_store_in_units_is_refused_to_a_job_without_units(tmp_path: Path) -> None:
    (tmp_path / "units").mkdir()
    with pytest.raises(UnitLayoutError, match="--data.unit_size"):
        refuse_old_layout({"": StoreState(tmp_path, {}, {})}, units_given=False)
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "rank-0.jsonl").write_text('{"key": "a"}\n')
    with pytest.raises(UnitLayoutError, match="migrate-units"):
        refuse_old_layout({"": StoreState(tmp_path, {}, {})}, units_given=True)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(template="{stem}{ext}"), "path_template"),
        (dict(overwrite=True), "overwrite"),
        (dict(exports=["data.jsonl"]), "compact"),
        (dict(skip_existing=True), "skip_existing"),
    ],
)
def test_options_that_need_the_whole_store_are_refused_with_units(options: dict, match: str) -> None:
    args = {"template": "{shard}/{key}{ext}", "overwrite": False, "exports": [None], **options}
    with pytest.raises(UnitLayoutError, match=match):
        check_unit_options(**args)
