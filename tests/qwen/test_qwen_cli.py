"""qwen_hidden end to end: the shipped configs through the CLI, and bad input through the real Trainer + writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lit_features.cli import FeatureTrainer
from lit_features.data.datamodule import ManifestDataModule
from lit_features.data.manifest import ManifestError
from lit_features.extractors.qwen_hidden import QwenHiddenStates
from lit_features.store.reader import FeatureStore
from lit_features.store.writer import FeatureWriter
from tests.conftest import MEDIA, REPO_ROOT, run_cli
from tools.tiny_models import qwen as tiny_qwen

BUNDLED_KEYS = ["astronaut_with_cat", "cat_on_table", "cockatoo_first_frame", "text_only"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: intra-op threads cost far more than they save (10-30x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return tiny_qwen.make(tmp_path_factory.mktemp("qwen"))[0]


@pytest.fixture(scope="module")
def cli_runs(qwen_dir, tmp_path_factory) -> dict[str, Path]:
    """Both shipped configs, unchanged except for where the stand-in weights and the outputs live."""
    out = {}
    for name in ("qwen_hidden", "qwen_hidden_bindweave"):
        config = REPO_ROOT / "configs" / f"{name}.yaml"
        assert yaml.safe_load(config.read_text())["model"]["init_args"]["model_path"] == (
            "pretrained_model/Qwen2.5-VL-7B-Instruct"
        )
        target = tmp_path_factory.mktemp(name) / "out"
        args = ["predict", "--config", str(config), "--model.init_args.model_path", str(qwen_dir)]
        run_cli([*args, "--writer.output_dir", str(target)], OMP_NUM_THREADS="1")
        out[name] = target
    return out


def test_shipped_config_writes_the_store_contract(cli_runs):
    store = FeatureStore(cli_runs["qwen_hidden"])
    assert store.keys() == BUNDLED_KEYS
    assert store.info["extractor"] == "qwen_hidden" and store.info["tiny_random_stand_in"] is True
    for key in BUNDLED_KEYS:
        tensors, meta = store[key], store.meta(key)
        length = meta["num_tokens"]
        assert tensors["hidden_states"].shape == (length, 64) and tensors["hidden_states"].dtype == torch.bfloat16
        assert torch.equal(tensors["attention_mask"], torch.ones(length, dtype=torch.long))
        assert tensors["input_ids"].shape == (length,)
    assert "hidden_states_negative" in store["astronaut_with_cat"]  # the entry's own negative prompt
    assert "hidden_states_negative" not in store["cat_on_table"]  # no configured negative prompt
    assert store.meta("cockatoo_first_frame")["reference"] == "video"
    assert (cli_runs["qwen_hidden"] / "failures.jsonl").read_text() == ""


def test_bindweave_config_writes_upstream_files_and_eval_json(cli_runs):
    folder = cli_runs["qwen_hidden_bindweave"]
    store = FeatureStore(cli_runs["qwen_hidden"])
    exported = json.loads((folder / "eval_with_features.json").read_text())
    assert sorted(exported) == BUNDLED_KEYS
    for key in BUNDLED_KEYS:
        for name, field in (("hidden_states", "hidden_states_path"), ("_negative", "hidden_states_path_negative")):
            file = folder / f"{key}_hidden_states{name if name.startswith('_') else ''}.pt"
            assert exported[key][field] == str(file.resolve())
            tensor = torch.load(file, weights_only=True)  # a bare tensor, as BindWeave saves it
            assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.bfloat16
            assert tensor.ndim == 3 and tensor.shape[0] == 1 and tensor.shape[2] == 64
        # the default store holds the same positive tensor (same weights, same inputs, same dtype)
        positive = torch.load(folder / f"{key}_hidden_states.pt", weights_only=True)
        assert torch.equal(positive[0], store[key]["hidden_states"])
    assert exported["cat_on_table"]["prompt"].startswith("A tabby cat")  # the entry itself is kept


def predict(extractor: QwenHiddenStates, manifest: Path, output: Path, **data) -> FeatureWriter:
    writer = FeatureWriter(str(output))
    trainer = FeatureTrainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], enable_progress_bar=False)
    datamodule = ManifestDataModule(str(manifest), batch_size=4, num_workers=0, **data)
    trainer.predict(extractor, datamodule=datamodule)
    return writer


def test_missing_or_undecodable_image_fails_only_that_sample(qwen_dir, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 8)
    entries = [
        {"key": "good", "prompt": "A cat.", "images": [str(MEDIA / "chelsea.jpg")]},
        {"key": "missing", "prompt": "A cat.", "images": [str(MEDIA / "chelsea.jpg"), "nowhere/missing.png"]},
        {"key": "broken", "prompt": "A cat.", "images": [str(broken)]},
    ]
    manifest = tmp_path / "prompts.json"
    manifest.write_text(json.dumps(entries))
    extractor = QwenHiddenStates(model_path=str(qwen_dir), dtype="float32", max_pixels=64 * 28 * 28)
    predict(extractor, manifest, tmp_path / "out")
    assert FeatureStore(tmp_path / "out").keys() == ["good"]
    failures = {
        row["key"]: row for row in map(json.loads, (tmp_path / "out" / "failures.jsonl").read_text().splitlines())
    }
    assert sorted(failures) == ["broken", "missing"]
    assert all(row["stage"] == "decode" for row in failures.values())
    assert "missing.png" in failures["missing"]["message"]


@pytest.mark.parametrize(
    ("entry", "field", "message"),
    [
        ({"cap": "", "images": [str(MEDIA / "chelsea.jpg")]}, "prompt", "no prompt"),
        (
            {"prompt": "a", "images": [str(MEDIA / "chelsea.jpg")] * 3},
            "images",
            "3 reference images but max_images is 2",
        ),
    ],
)
def test_bad_entries_stop_the_run_before_weights_load(qwen_dir, tmp_path, entry, field, message):
    manifest = tmp_path / "prompts.json"
    manifest.write_text(json.dumps([{"prompt": "fine"}, entry]))
    extractor = QwenHiddenStates(model_path=str(qwen_dir), max_images=2)
    with pytest.raises(ManifestError, match=message) as err:
        predict(extractor, manifest, tmp_path / "out")
    assert f"entry 1, field '{field}'" in str(err.value) and str(manifest) in str(err.value)
    assert extractor.model is None  # no weights were read
