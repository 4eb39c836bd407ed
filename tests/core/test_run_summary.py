"""A predict run's summary: reduced from per-rank files, and logged to an offline W&B run (read back)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tests.conftest import REPO_ROOT, run_cli


def read_wandb_records(path: Path) -> list:
    """Records of an offline ``.wandb`` file (a LevelDB-style log of protobuf records, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending = [], 7, b""
    block = 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            records.append(record)
            pending = b""
        elif kind in (2, 3):  # FIRST or MIDDLE
            pending += chunk
        else:
            break
    return records


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
    )  # fmt: skip
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["written"] == 6 and summary["ranks"] == 1 and summary["seconds_model"] > 0
    (wandb_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    logged = {}
    for record in read_wandb_records(wandb_file):
        if record.WhichOneof("record_type") == "history":
            logged.update({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    assert json.loads(logged["predict/written"]) == 6
    assert json.loads(logged["predict/failed"]) == 0
    assert "predict/samples_per_s_rank0" in logged and "predict/seconds_decode" in logged
    assert logged["predict/failures/_type"] == json.dumps("table-file")  # the failures table
    assert json.loads(logged["predict/failures/nrows"]) == 0
