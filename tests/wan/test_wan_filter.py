"""The FlashI2V clip filter: one hand-built row per rule, counts per rule, outputs, and the LMDB pickle opt-in."""

from __future__ import annotations

import json
import pickle

import pytest
import yaml

from lit_features.commands.filter import (
    RULES,
    FilterRules,
    drop_reason,
    filter_clips,
    lmdb_path,
    read_lmdb_rows,
    run_filter,
)
from lit_features.data.manifest import read_manifests
from tests.conftest import run_cli

# The shipped upstream config (examples/flashi2v/filter_config.yaml) without its paths.
UPSTREAM = dict(
    sample_height=480,
    sample_width=832,
    sample_num_frames=49,
    min_hxw=921600,
    train_fps=16,
    max_h_div_w_ratio=1.2,
    min_h_div_w_ratio=0.4,
)


def row(**overrides):
    base = {"path": "clip.mp4", "cap": "a clip", "resolution": {"height": 1080, "width": 1920}, "num_frames": 120}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


# (row, the rule the upstream filter drops it by, or None when kept), all under UPSTREAM settings.
TABLE = [
    (row(), None),  # 1080p, fps defaults to 24: interval 1.5, 80 sampled frames
    (row(cap=...), "no_cap"),
    (row(cap=None), "no_cap"),
    (row(cap=""), None),  # an empty caption is still a caption upstream
    (row(resolution=...), "no_resolution"),
    (row(resolution={"height": 1080}), "no_resolution"),
    (row(resolution={"height": 0, "width": 1920}), "no_resolution"),
    (row(resolution={"height": 1920, "width": 1080}), "aspect_ratio"),  # portrait: 1.78 > 1.2
    (row(resolution={"height": 1600, "width": 4000}), None),  # h/w = 0.4 is inside (inclusive) ...
    (row(resolution={"height": 1596, "width": 4000}), "aspect_ratio"),  # ... 0.399 is not
    (row(resolution={"height": 720, "width": 1280}), "too_small"),  # 921600 < ceil(921600 * 1.0256) = 945231
    (row(resolution={"height": 2400, "width": 2000}), None),  # h/w = 1.2 kept (inclusive)
    (row(num_frames=368, fps=24), "too_long"),  # 368 > 5 * 49 * 24 / 16 = 367.5
    (row(num_frames=367, fps=24), None),
    (row(num_frames=1225, fps=80), None),
    (row(num_frames=1225, fps=80, motion=0.5), None),
    (row(num_frames=246, fps=16.05), "too_long"),  # 246 > 5 * 49 * 16.05 / 16 = 245.77
    (row(num_frames=100, fps=12), "fps_too_low"),
    (row(num_frames=100, fps=15.95), None),  # within 0.1 of 16: interval 1
    (row(motion=1.5), "motion"),
    (row(motion=-0.1), "motion"),
    (row(motion=1.0), None),
    (row(num_frames=48, fps=16), "too_short"),
    (row(num_frames=49, fps=16), None),
    (row(num_frames=100, fps=16, cut=[60, 100]), None),  # upstream counts num_frames from cut[0] on
    (row(num_frames=72, fps=24), "too_short"),  # interval 1.5: 48 frames
    (row(num_frames=74, fps=24), None),  # 50 frames
]


@pytest.mark.parametrize(("entry", "expected"), TABLE)
def test_each_row_trips_its_rule(entry, expected):
    assert drop_reason(dict(entry), FilterRules(**UPSTREAM)) == expected


def test_rules_apply_in_upstream_order():
    # fails rules 1, 3 and 8 at once: counted once, by the first
    entry = row(cap=None, resolution={"height": 1920, "width": 1080}, num_frames=2)
    assert drop_reason(entry, FilterRules(**UPSTREAM)) == "no_cap"
    kept = row(cut=[7, 90])
    assert drop_reason(kept, FilterRules(**UPSTREAM)) is None and kept["start_frame_idx"] == 7


def test_1280x720_passes_at_a_lower_min_hxw():
    assert (
        drop_reason(row(resolution={"height": 720, "width": 1280}), FilterRules(**{**UPSTREAM, "min_hxw": 480 * 832}))
        is None
    )


def test_non_numeric_values_are_errors_not_drops():
    with pytest.raises(ValueError, match="num_frames"):
        drop_reason(row(num_frames=...), FilterRules(**UPSTREAM))
    with pytest.raises(ValueError, match="resolution"):
        drop_reason(row(resolution={"height": "720", "width": 1280}), FilterRules(**UPSTREAM))


def write_dataset(tmp_path, rows):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{**r, "path": f"clip{i}.mp4"} for i, r in enumerate(rows)]  # distinct clips
    (data / "meta.json").write_text(json.dumps(rows))
    (tmp_path / "all_videos.txt").write_text("data,data/meta.json\n")
    config = {"ann_txt_path": str(tmp_path / "all_videos.txt"), "save_path": str(tmp_path / "out"), **UPSTREAM}
    (tmp_path / "filter_config.yaml").write_text(yaml.safe_dump(config))
    return config


def test_counts_outputs_and_lmdb(tmp_path):
    config = write_dataset(tmp_path, [dict(r) for r, _ in TABLE])
    summary = run_filter(
        config["ann_txt_path"],
        config["save_path"],
        FilterRules(**UPSTREAM),
        save_absolute_path=True,
        output=None,
        lmdb=True,
        from_lmdb=None,
        allow_pickle=False,
    )
    expected = {rule: sum(1 for _, e in TABLE if e == rule) for rule in RULES}
    assert summary["dropped"] == expected and all(expected.values())
    assert summary["kept"] == sum(1 for _, e in TABLE if e is None) == summary["total"] - sum(expected.values())
    kept = json.loads(open(summary["json"]).read())
    kept_index = [i for i, (_, e) in enumerate(TABLE) if e is None]
    assert [r["path"] for r in kept] == [str(tmp_path / "data" / f"clip{i}.mp4") for i in kept_index]
    assert all("start_frame_idx" in r for r in kept)
    # the LMDB: upstream name, keys %012d, pickled rows
    lmdb_dir = lmdb_path(config["save_path"], summary["kept"])
    assert summary["lmdb"] == str(lmdb_dir) and lmdb_dir.name == f"filtered_samples_{summary['kept']}.lmdb"
    import lmdb

    env = lmdb.open(str(lmdb_dir), readonly=True, lock=False)
    with env.begin() as txn:
        keys = [k.decode() for k, _ in txn.cursor()]
        assert pickle.loads(txn.get(b"000000000000")) == kept[0]
    env.close()
    assert keys == [f"{i:012d}" for i in range(len(kept))]
    with pytest.raises(PermissionError, match="allow_pickle"):
        read_lmdb_rows(str(lmdb_dir))
    assert read_lmdb_rows(str(lmdb_dir), allow_pickle=True) == kept


def test_lmdb_with_code_is_refused_even_with_opt_in(tmp_path):
    import lmdb

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    env = lmdb.open(str(tmp_path / "evil.lmdb"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"000000000000", pickle.dumps({"path": "x", "hook": Evil()}))
    env.close()
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        read_lmdb_rows(str(tmp_path / "evil.lmdb"), allow_pickle=True)


def test_cli_reads_an_upstream_config_and_output_is_a_manifest(tmp_path, capsys):
    rows = [dict(r) for r, _ in TABLE]
    write_dataset(tmp_path, rows)
    # In-process: the jsonargparse entry point with --config, exactly as `python -m lit_features filter` runs it.
    from lit_features.__main__ import main

    assert main(["filter", "--config", str(tmp_path / "filter_config.yaml"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dropped"]["too_small"] == 1 and summary["lmdb"] is None
    samples = read_manifests(summary["json"])  # predict's manifest reader takes the output as is
    assert len(samples) == summary["kept"]
    # a bad meta row is an error naming the file and entry, with a non-zero exit code
    (tmp_path / "data" / "meta.json").write_text(json.dumps([row(num_frames="many")]))
    assert main(["filter", "--config", str(tmp_path / "filter_config.yaml")]) == 2
    assert "meta.json, entry 0" in capsys.readouterr().err


def test_cli_subprocess_prints_counts_per_rule(tmp_path):
    write_dataset(tmp_path, [dict(r) for r, _ in TABLE])
    proc = run_cli(["filter", "--config", str(tmp_path / "filter_config.yaml"), "--lmdb", "true"])
    for number, rule in enumerate(RULES, start=1):
        assert f"rule {number} {rule}" in proc.stdout
    assert "filtered_samples_" in proc.stdout and (tmp_path / "out").is_dir()
    assert filter_clips.__doc__ and "Args:" in filter_clips.__doc__
