"""Live metrics without a run: the tick's arithmetic, when the callback is added, failure previews."""

from __future__ import annotations

import numpy as np
import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lit_features.cli import FeatureTrainer
from lit_features.dashboards import LiveExtractionMetrics
from lit_features.dashboards.live import job_metrics
from lit_features.records import thumbnail


def snapshot(rank: int, node: int, to_do: int, written: int, failed: int, elapsed: float, time: float) -> dict:
    return {
        "rank": rank, "node_rank": node, "time": time, "elapsed_s": elapsed, "to_do": to_do, "written": written,
        "failed": failed, "queue_depth": 1, "seconds_decode": 1.0, "seconds_transform": 0.5, "seconds_model": 2.0,
        "seconds_writing": 0.1, "state": "running",
    }  # fmt: skip


def test_job_eta_is_the_slowest_ranks_and_rates_add_up_per_node() -> None:
    snapshots = {
        0: snapshot(0, 0, to_do=10, written=4, failed=1, elapsed=10.0, time=100.0),  # 0.5 samples/s, 5 left
        1: snapshot(1, 1, to_do=12, written=8, failed=0, elapsed=10.0, time=98.0),  # 0.8 samples/s, 4 left
    }
    m = job_metrics(snapshots, now=101.0, skipped=3)
    assert m["eta_s/rank0"] == pytest.approx(10.0) and m["eta_s/rank1"] == pytest.approx(5.0)
    assert m["job/eta_s"] == pytest.approx(10.0)  # the job ends with its last rank
    assert m["samples_per_s/rank0"] == pytest.approx(0.4) and m["samples_per_s/rank1"] == pytest.approx(0.8)
    assert m["job/samples_per_s"] == pytest.approx(1.2)
    assert m["samples_per_s/node1"] == pytest.approx(0.8)
    assert (m["job/written"], m["job/failed"], m["job/skipped"], m["job/to_do"]) == (12, 1, 3, 22)
    assert m["job/done_fraction"] == pytest.approx(13 / 22)
    assert m["snapshot_age_s/rank1"] == pytest.approx(3.0)  # a stalled rank shows as a growing age


def test_eta_is_left_out_until_every_rank_has_a_rate() -> None:
    snapshots = {0: snapshot(0, 0, to_do=10, written=0, failed=0, elapsed=5.0, time=1.0)}
    m = job_metrics(snapshots, now=1.0, skipped=0)
    assert "job/eta_s" not in m and "eta_s/rank0" not in m and "samples_per_s/node0" not in m


def test_live_metrics_are_added_only_with_a_logger_and_before_the_writer(tmp_path) -> None:
    quiet = FeatureTrainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert not any(isinstance(c, LiveExtractionMetrics) for c in quiet.callbacks)
    writer_stand_in = Callback()  # any callback the configuration lists (the writer comes after those)
    logged = FeatureTrainer(logger=CSVLogger(tmp_path), callbacks=[writer_stand_in], enable_progress_bar=False)
    assert isinstance(logged.callbacks[0], LiveExtractionMetrics) and logged.callbacks[1] is writer_stand_in
    configured = LiveExtractionMetrics(interval_s=5)
    again = FeatureTrainer(logger=CSVLogger(tmp_path), callbacks=[configured], enable_progress_bar=False)
    assert [c for c in again.callbacks if isinstance(c, LiveExtractionMetrics)] == [configured]


def test_thumbnail_keeps_aspect_and_colour_within_96_pixels() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[..., 0] = 255
    small = thumbnail(frame)
    assert small.shape == (72, 96, 3) and small.dtype == np.uint8 and (small[..., 0] == 255).all()
    assert thumbnail(None) is None and thumbnail(np.zeros((4, 4), np.uint8)) is None
