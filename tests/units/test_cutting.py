"""Cutting manifests into units: the keys of every unit equal those of the whole manifest read at once."""

from __future__ import annotations

import json

import pytest

from lit_features.data.manifest import ManifestError, read_manifests
from lit_features.units.cutting import cut_manifests, unit_samples
from lit_features.units.unit_list import UnitList, UnitListMismatchError


def _write_jsonl(path, entries, blank_every=0):
    lines = []
    for i, e in enumerate(entries):
        lines.append(json.dumps(e))
        if blank_every and i % blank_every == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _all_samples(units):
    return [s for u in units.units for s in unit_samples(units, u)]


def _entries(tmp_path):
    # Two sources outside the root with one relative name ("x/clip.mp4"): both get a hash suffix, even though
    # they land in different units; an exact duplicate in a later unit is done once.
    entries = [{"path": f"clips/c{i:03d}.mp4", "cap": f"caption {i}", "num_frames": 10 + i} for i in range(23)]
    entries[2] = {"path": str(tmp_path / "a" / "x" / "clip.mp4")}
    entries[17] = {"path": str(tmp_path / "b" / "x" / "clip.mp4")}
    entries.append(dict(entries[5]))
    entries.append({"path": "clips/c001.mp4", "cut": [0, 8]})
    return entries


def test_units_give_the_keys_of_the_whole_manifest(tmp_path):
    (tmp_path / "data").mkdir()
    manifest = tmp_path / "data" / "m.jsonl"  # the sources in a/ and b/ lie outside its folder
    _write_jsonl(manifest, _entries(tmp_path), blank_every=7)
    units = cut_manifests([manifest], tmp_path / "store" / "units", 10, None)
    assert [u.count for u in units.units] == [10, 10, 5]
    assert units.write() and not units.write()  # the first list published stays the list
    again = UnitList.read(tmp_path / "store" / "units")
    got = _all_samples(again)
    want = read_manifests(manifest)
    assert [(s.key, s.source, s.entry, s.index) for s in got] == [(s.key, s.source, s.entry, s.index) for s in want]
    assert sum("~" in s.key for s in got) == 2  # the colliding pair, across units


@pytest.mark.parametrize("form", ["json", "csv"])
def test_other_forms_are_read_once_into_a_compact_copy(tmp_path, form):
    entries = [{"path": f"v/{i}.mp4", "cap": f"c{i}"} for i in range(7)]
    manifest = tmp_path / f"m.{form}"
    if form == "json":
        manifest.write_text(json.dumps(entries))
    else:
        manifest.write_text("path,cap\n" + "".join(f"{e['path']},{e['cap']}\n" for e in entries))
    units = cut_manifests([manifest], tmp_path / "units", 3, None)
    assert [u.count for u in units.units] == [3, 3, 1]
    assert (tmp_path / "units" / "manifest-0.jsonl").exists()
    got = _all_samples(units)
    want = read_manifests(manifest)
    assert [(s.key, s.source, s.entry, s.index) for s in got] == [(s.key, s.source, s.entry, s.index) for s in want]


def test_conflicting_duplicates_across_units_are_refused(tmp_path):
    entries = [{"path": f"v/{i}.mp4", "cap": "same"} for i in range(12)]
    entries.append({"path": "v/1.mp4", "cap": "another caption"})
    manifest = tmp_path / "m.jsonl"
    _write_jsonl(manifest, entries)
    with pytest.raises(ManifestError, match=r"m.jsonl, entry 13: gives key 'v__1_mp4' like .*entry 2.*'cap'"):
        cut_manifests([manifest], tmp_path / "units", 5, None)


def test_a_bad_entry_stops_the_cut_naming_it(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.mp4"}\n{"path": "b.mp4", "num_frames": -3}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl, entry 2, field 'num_frames'"):
        cut_manifests([manifest], tmp_path / "units", 5, None)


def test_a_changed_manifest_or_root_is_refused(tmp_path):
    manifest = tmp_path / "m.jsonl"
    _write_jsonl(manifest, [{"path": f"v/{i}.mp4"} for i in range(4)])
    units = cut_manifests([manifest], tmp_path / "units", 3, None)
    from lit_features.units.cutting import manifest_inputs

    units.check_inputs(manifest_inputs([manifest]), None)
    with pytest.raises(UnitListMismatchError, match="--data.root"):
        units.check_inputs(manifest_inputs([manifest]), str(tmp_path))
    _write_jsonl(manifest, [{"path": f"v/{i}.mp4"} for i in range(5)])
    with pytest.raises(UnitListMismatchError, match="changed"):
        units.check_inputs(manifest_inputs([manifest]), None)
