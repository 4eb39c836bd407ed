"""A predict run's summary: reduced from per-rank files, and logged to an offline W&B run (read back)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO_ROOT, run_cli
from tests.wandb_offline import read_run


def test_predict_summary_reaches_an_offline_wandb_run(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    run_cli(
        [
            "predict", "--config", str(REPO_ROOT / "configs" / "quickstart.yaml"),
            "--model.model_path", str(tiny_models / "siglip-so400m-patch14-384"),
            "--writer.output_dir", str(out), "--data.manifest", str(REPO_ROOT / "samples" / "quickstart.json"),
            "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.init_args.offline", "true",
            "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.logger.init_args.project", "lit-features-test",
        ],
        cwd=tmp_path,
        WANDB_DATA_DIR=str(tmp_path / "wandb_data"),
    )  # fmt: skip
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["written"] == 6 and summary["ranks"] == 1 and summary["seconds_model"] > 0
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    run = read_run(folder)  # wandb's own records, parsed
    (logged,) = [step for step in run.history if "predict/written" in step]
    assert logged["predict/written"] == 6 and logged["predict/failed"] == 0
    assert logged["predict/samples_per_s_rank0"] > 0 and logged["predict/seconds_decode"] > 0
    assert run.summary["predict/written"] == 6
    (table,) = run.series("predict/failures")  # the failures table, empty
    assert table["_type"] == "table-file" and table["nrows"] == 0 and run.table_rows("predict/failures") == []
