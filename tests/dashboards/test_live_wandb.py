"""W&B dashboards of a 2-process CPU DDP predict, read back from the offline run's records.

The shipped overlay (configs/logger/wandb.yaml) on the quickstart job, with a broken video (a decode failure)
and a 5x5 image (decoded, then refused by the transform: a failure with a preview). Read back with wandb's own
record classes (tests/wandb_offline.py): per-rank throughput at every step, the failures table, the store's
fingerprint and the stand-in flag in the config.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MEDIA, REPO_ROOT, run_cli
from tests.wandb_offline import read_run

N_CLIPS = 8


@pytest.fixture(scope="module")
def ddp_run(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp_wandb")
    (tmp / "broken.mp4").write_bytes(b"not a video at all")
    Image.fromarray(np.full((5, 5, 3), 200, np.uint8)).save(tmp / "tiny.png")  # smaller than one patch
    clip = str(MEDIA / "v_GGSY1Qvo990.mp4")
    entries = [{"path": clip, "cut": [20 * i, 20 * i + 60]} for i in range(N_CLIPS)]
    entries += [{"path": str(tmp / "broken.mp4")}, {"path": str(tmp / "tiny.png")}]
    (tmp / "clips.json").write_text(json.dumps(entries))
    out = tmp / "store"
    run_cli(
        [
            "predict", "--config", str(REPO_ROOT / "configs" / "quickstart.yaml"),
            "--config", str(REPO_ROOT / "configs" / "logger" / "wandb.yaml"),
            "--trainer.logger.init_args.save_dir", str(tmp / "wandb_out"),
            "--trainer.callbacks.init_args.interval_s", "0",  # a step at every batch
            "--model.model_path", str(tiny_models / "siglip-so400m-patch14-384"), "--model.snap", "crop",
            "--model.num_frames", "2", "--data.manifest", str(tmp / "clips.json"), "--data.batch_size", "1",
            "--data.num_workers", "0", "--writer.output_dir", str(out), "--trainer.accelerator", "cpu",
            "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
        ],
        cwd=tmp,
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DATA_DIR=str(tmp / "wandb_data"),  # staged artifacts (the tables) stay in the test's folder
    )  # fmt: skip
    (folder,) = (tmp / "wandb_out" / "wandb").glob("offline-run-*")
    return {"run": read_run(folder), "store": out, "tmp": tmp}


@pytest.mark.slow
def test_each_rank_logs_its_throughput_at_every_step(ddp_run: dict) -> None:
    run = ddp_run["run"]
    for rank in (0, 1):
        rates = run.series(f"samples_per_s/rank{rank}")
        assert len(rates) >= 3, (rank, rates)
        assert rates[-1] > 0
        assert len(run.series(f"queue_depth/rank{rank}")) == len(rates)
        assert run.series(f"seconds_model/rank{rank}")[-1] > 0
    elapsed = run.series("job/elapsed_s")
    assert len(elapsed) >= 3 and elapsed == sorted(elapsed)
    summary = json.loads((ddp_run["store"] / "run_summary.json").read_text())
    # The last step (after the writers drained) agrees with the run summary reduced from the ranks' files.
    assert run.series("job/written")[-1] == summary["written"] == N_CLIPS
    assert run.series("job/failed")[-1] == summary["failed"] == 2
    assert run.series("job/done_fraction")[-1] == 1.0 and run.series("job/eta_s")[-1] == 0.0
    assert run.series("job/ranks_reporting")[-1] == 2


@pytest.mark.slow
def test_failures_table_lists_the_broken_samples_with_a_preview_of_the_decoded_one(ddp_run: dict) -> None:
    run = ddp_run["run"]
    rows = {row["key"]: row for row in run.table_rows("job/failures")}
    assert set(rows) == {"broken_mp4", "tiny_png"}, rows
    broken, tiny = rows["broken_mp4"], rows["tiny_png"]
    assert broken["stage"] == "decode" and broken["source"].endswith("broken.mp4") and broken["preview"] is None
    assert tiny["stage"] == "transform" and "center-crop" in tiny["message"]
    assert tiny["preview"]["_type"] == "image-file"
    preview = Image.open(tiny["preview"]["local_path"])  # uploaded with the run by `wandb sync`: no link
    assert preview.size == (5, 5) and np.asarray(preview.convert("RGB"))[2, 2].tolist() == [200, 200, 200]


@pytest.mark.slow
def test_config_carries_the_store_fingerprint_devices_manifest_and_stand_in_flag(ddp_run: dict) -> None:
    run, store = ddp_run["run"], json.loads((ddp_run["store"] / "store.json").read_text())
    assert run.config["store"]["fingerprint_hash"] == store["fingerprint_hash"]
    assert run.config["store"]["fingerprint"]["params"]["snap"] == "crop"
    assert run.config["lit_features_version"] == store["lit_features_version"]
    assert run.config["devices"]["world_size"] == 2 and run.config["devices"]["num_nodes"] == 1
    assert run.config["manifest"]["entries"] == N_CLIPS + 2
    assert run.config["manifest"]["bytes"] == (ddp_run["tmp"] / "clips.json").stat().st_size
    assert run.config["job"]["data"]["init_args"]["batch_size"] == 1
    assert set(run.config["ranks"]) == {"0", "1"}
    assert run.config["stand_in_weights"] is True and "stand-in-weights" in run.tags
