"""Manifest forms, validation errors (file, entry, field) and stable unique keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_features.data.keys import assign_keys, sanitize_key
from lit_features.data.manifest import ManifestError, read_manifests


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_json_list_keeps_fields_and_resolves_paths(tmp_path: Path) -> None:
    m = write(
        tmp_path / "data.json",
        [
            {
                "path": "v/a.mp4",
                "cap": "a",
                "num_frames": 81,
                "fps": 24,
                "resolution": {"height": 720, "width": 1280},
                "extra": 1,
            },
            {"path": "v/a.mp4", "cap": "a", "cut": [0, 40]},
            {"path": "v/a.mp4", "cap": "a", "cut": [40, 81]},
        ],
    )
    samples = read_manifests(m)
    assert [s.key for s in samples] == ["v__a_mp4", "v__a_mp4_cut0-40", "v__a_mp4_cut40-81"]
    assert samples[0].source == str(tmp_path / "v" / "a.mp4")
    assert samples[0].entry["extra"] == 1 and samples[1].cut == [0, 40]


def test_list_file_of_roots_joins_paths_and_keeps_keys_unique(tmp_path: Path) -> None:
    write(tmp_path / "ds1" / "meta.json", [{"path": "clips/0001.mp4", "cap": "x"}])
    write(tmp_path / "ds2" / "meta.json", [{"path": "clips/0001.mp4", "cap": "y"}, {"path": "clips/0002.mp4"}])
    lst = write(tmp_path / "data.txt", "ds1,ds1/meta.json\n# comment\nds2,ds2/meta.json\n")
    samples = read_manifests(lst)
    assert [s.source for s in samples] == [
        str(tmp_path / "ds1/clips/0001.mp4"),
        str(tmp_path / "ds2/clips/0001.mp4"),
        str(tmp_path / "ds2/clips/0002.mp4"),
    ]
    keys = [s.key for s in samples]
    assert len(set(keys)) == 3
    # the colliding relative path gets a hash of its absolute identity on both sides; the unique one stays plain
    assert keys[0].startswith("clips__0001_mp4~") and keys[1].startswith("clips__0001_mp4~")
    assert keys[2] == "clips__0002_mp4"
    # independent of order
    lst2 = write(tmp_path / "data2.txt", "ds2,ds2/meta.json\nds1,ds1/meta.json\n")
    assert sorted(s.key for s in read_manifests(lst2)) == sorted(keys)


def test_jsonl_csv_and_directory(tmp_path: Path) -> None:
    jl = write(tmp_path / "a.jsonl", '{"path": "x.mp4", "cap": "c"}\n\n{"path": "y.mp4"}\n')
    assert [s.key for s in read_manifests(jl)] == ["x_mp4", "y_mp4"]
    csv = write(tmp_path / "b.csv", "video,caption,fps\nx.mp4,hello,25\n")
    (s,) = read_manifests(csv)
    assert s.entry["cap"] == "hello" and s.entry["fps"] == 25.0
    folder = tmp_path / "media"
    for name in ("b.mp4", "a.jpg", "notes.txt", "sub/c.mov"):
        write(folder / name, "x")
    assert [s.key for s in read_manifests(folder)] == ["a_jpg", "b_mp4", "sub__c_mov"]


def test_iianet_split_lists_dedupe(tmp_path: Path) -> None:
    from lit_features.data.manifest import build_samples, read_iianet_split

    for sub in ("tr", "cv", "tt"):
        write(tmp_path / sub / "mix.json", [["mix.wav", 32000]])
        write(tmp_path / sub / "s1.json", [["a.wav", f"{sub}/m1.npz", 32000]])
        write(tmp_path / sub / "s2.json", [["b.wav", f"{sub}/m1.npz", 32000], ["c.wav", f"{sub}/m2.npz", 32000]])
    assert len(build_samples(read_iianet_split(tmp_path, "train"))) == 2
    assert len(build_samples(read_iianet_split(tmp_path, "all"))) == 6
    with pytest.raises(ManifestError, match="unknown split"):
        read_iianet_split(tmp_path, "dev")


@pytest.mark.parametrize(
    "content, entry, field",
    [
        ([{"cap": "no path"}, {"path": 3}], 1, "path"),
        ([{"path": "a.mp4", "num_frames": "81"}], 0, "num_frames"),
        ([{"path": "a.mp4", "cut": [10, 5]}], 0, "cut"),
        ([{"path": "a.mp4", "cap": 5}], 0, "cap"),
        ([{"path": "a.mp4", "resolution": [720, 1280]}], 0, "resolution"),
        ([{"path": "a.mp4"}, "just a string"], 1, None),
    ],
)
def test_broken_entries_name_file_entry_field(tmp_path: Path, content, entry, field) -> None:
    m = write(tmp_path / "bad.json", content)
    with pytest.raises(ManifestError) as err:
        read_manifests(m)
    assert str(m) in str(err.value) and f"entry {entry}" in str(err.value)
    if field:
        assert f"field '{field}'" in str(err.value)


def test_bad_json_and_missing_files(tmp_path: Path) -> None:
    m = write(tmp_path / "bad.json", '[{"path": "a.mp4",}]')
    with pytest.raises(ManifestError, match=r"bad.json: invalid JSON at line 1"):
        read_manifests(m)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifests(tmp_path / "nope.json")
    lst = write(tmp_path / "l.txt", "root_only_no_comma\n")
    with pytest.raises(ManifestError, match="entry 1"):
        read_manifests(lst)


def test_absolute_paths_outside_the_root_keep_their_last_two_components(tmp_path: Path) -> None:
    m = write(tmp_path / "lists" / "m.json", [{"path": "/data/a/clips/x.mp4"}, {"path": "/other/b/clips/x.mp4"},
                                              {"path": "/data/a/clips/y.mp4"}])  # fmt: skip
    keys = [s.key for s in read_manifests(m)]
    assert keys[2] == "clips__y_mp4"
    assert keys[0].startswith("clips__x_mp4~") and keys[1].startswith("clips__x_mp4~") and keys[0] != keys[1]


def test_keys_are_filesystem_safe_and_bounded() -> None:
    assert sanitize_key("../a b/c:d?.mp4") == "a_b__c_d_mp4"
    long = sanitize_key("x" * 500 + ".mp4")
    assert len(long) <= 120 and "~" in long
    assert (
        assign_keys([("a.mp4", "/1/a.mp4"), ("a_mp4", "/1/a_mp4")])[0]
        != assign_keys([("a.mp4", "/1/a.mp4"), ("a_mp4", "/1/a_mp4")])[1]
    )
