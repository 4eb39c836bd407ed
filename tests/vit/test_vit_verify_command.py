"""``verify`` on upstream-layout .npz files: shape reconciliation, truncation, missing keys, JSON, histogram."""

import json

import numpy as np
import pytest

from lit_features.commands.verify import verify


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture()
def upstream_pair(tmp_path):
    """``features_hf.npz`` ([1, N, D]) and ``features_packing.npz`` ([N, D]) as the upstream tool writes them."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 40, 16)).astype(np.float32)
    video = rng.standard_normal((1, 8 * 12, 16)).astype(np.float32)
    noise = 1e-4 * rng.standard_normal(video.shape[1:]).astype(np.float32)
    hf = write_npz(tmp_path / "features_hf.npz", image1=image, video1=video)
    packing = write_npz(tmp_path / "features_packing.npz", image1=image[0], video1=video[0] + noise)
    return hf, packing


def report(capsys, *args, **kwargs):
    code = verify(*args, json=True, **kwargs)
    return code, json.loads(capsys.readouterr().out)


def test_upstream_layout_passes_with_reconciled_shapes(upstream_pair, capsys):
    code, out = report(capsys, *upstream_pair)
    assert code == 0
    assert out["summary"] == {"total": 2, "passed": 2, "failed": 0, "all_passed": True}
    rows = {r["key"]: r for r in out["results"]}
    assert rows["image1"]["shape_a"] == [1, 40, 16] and rows["image1"]["shape_b"] == [40, 16]
    assert rows["image1"]["max_abs_diff"] == 0 and rows["image1"]["cosine_min"] == pytest.approx(1.0)
    assert rows["video1"]["compared_tokens"] == 96 and 0 < rows["video1"]["max_abs_diff"] < 1e-3
    assert rows["video1"]["cosine_min"] > 0.9999 and not rows["video1"]["truncated"]


def test_text_report_and_summary(upstream_pair, capsys):
    assert verify(*upstream_pair) == 0
    text = capsys.readouterr().out
    assert "A shape:          (1, 40, 16)" in text and "B shape:          (40, 16)" in text
    assert "PASS image1" in text and "Total comparisons: 2" in text and "All features match." in text


def test_missing_key_truncation_and_threshold(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 8)).astype(np.float32)
    a = write_npz(tmp_path / "a.npz", same=x, longer=np.concatenate([x, x]), only_a=x)
    b = write_npz(tmp_path / "b.npz", same=x, longer=x, only_b=x)
    code, out = report(capsys, a, b)
    assert code == 1
    assert out["only_in_a"] == ["only_a"] and out["only_in_b"] == ["only_b"]
    rows = {r["key"]: r for r in out["results"]}
    assert rows["only_a"]["passed"] is False and "only in A" in rows["only_a"]["reason"]
    assert rows["only_b"]["passed"] is False and "only in B" in rows["only_b"]["reason"]
    assert rows["longer"]["truncated"] and rows["longer"]["compared_tokens"] == 10 and rows["longer"]["passed"]
    assert out["truncated"] == ["longer"]
    assert out["summary"] == {"total": 4, "passed": 2, "failed": 2, "all_passed": False}
    # An identical pair fails a threshold no cosine can exceed.
    assert verify(a, a, threshold=1.0 + 1e-9) == 1


def test_different_features_width_and_nan_fail(tmp_path, capsys):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    bad = x.copy()
    bad[3, 2] = np.nan
    a = write_npz(tmp_path / "a.npz", other=x, width=x, nan=x)
    b = write_npz(tmp_path / "b.npz", other=rng.standard_normal((6, 8)).astype(np.float32), width=x[:, :4], nan=bad)
    code, out = report(capsys, a, b)
    assert code == 1
    rows = {r["key"]: r for r in out["results"]}
    assert "min cosine" in rows["other"]["reason"] and rows["other"]["cosine_min"] < 0.9
    assert rows["width"]["reason"] == "feature width differs: 8 vs 4"
    assert "non-finite" in rows["nan"]["reason"]
    json.dumps(out, allow_nan=False)  # NaN was reported as null: the report stays valid JSON


def test_histogram_png(upstream_pair, tmp_path, capsys):
    png = tmp_path / "plots" / "cosine.png"
    assert verify(*upstream_pair, histogram=str(png)) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Histogram:         {png}" in capsys.readouterr().out


def test_unreadable_inputs_exit_2(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert verify(str(tmp_path / "nope"), str(tmp_path / "nope")) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert verify(str(tmp_path / "plain"), str(tmp_path / "plain")) == 2
    assert "not a feature store" in capsys.readouterr().err
