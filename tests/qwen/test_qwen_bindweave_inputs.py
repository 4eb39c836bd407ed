"""BindWeave's evaluation input form ({key: {prompt, img_paths}}) and the exported manifest with feature paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lit_features.cli import FeatureTrainer
from lit_features.data.datamodule import ManifestDataModule
from lit_features.data.manifest import read_manifests
from lit_features.extractors.qwen_hidden import QwenHiddenStates
from lit_features.store.writer import FeatureWriter
from tests.conftest import MEDIA
from tools.tiny_models import qwen as tiny_qwen


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


@pytest.fixture()
def eval_folder(tmp_path) -> Path:
    """An OpenS2V-Eval-like folder: a JSON object of cases whose img_paths are relative to the folder."""
    folder = tmp_path / "OpenS2V-Eval"
    (folder / "Images").mkdir(parents=True)
    shutil.copy(MEDIA / "chelsea.jpg", folder / "Images" / "cat.jpg")
    shutil.copy(MEDIA / "astronaut.png", folder / "Images" / "astronaut.png")
    cases = {
        "singledomain_001": {"prompt": "A cat looks around.", "img_paths": ["Images/cat.jpg"]},
        "multidomain_002": {
            "prompt": "An astronaut and a cat.",
            "img_paths": ["Images/astronaut.png", "Images/cat.jpg"],
        },
    }
    (folder / "Open-Domain_Eval.json").write_text(json.dumps(cases))
    return folder


def test_mapping_manifest_keeps_case_keys_and_resolves_img_paths(eval_folder):
    samples = read_manifests(eval_folder / "Open-Domain_Eval.json")
    assert [s.key for s in samples] == ["singledomain_001", "multidomain_002"]
    assert samples[1].entry["img_paths"] == [
        str(eval_folder / "Images" / "astronaut.png"),
        str(eval_folder / "Images" / "cat.jpg"),
    ]


def run(qwen_dir: Path, manifest: Path, writer: FeatureWriter, **model) -> None:
    extractor = QwenHiddenStates(model_path=str(qwen_dir), dtype="float32", max_pixels=64 * 28 * 28, **model)
    trainer = FeatureTrainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], enable_progress_bar=False)
    trainer.predict(extractor, datamodule=ManifestDataModule(str(manifest), batch_size=2, num_workers=0))


def test_bindweave_files_from_the_eval_form(qwen_dir, eval_folder, tmp_path):
    writer = FeatureWriter(
        str(tmp_path / "features"),
        codec="pt_bare",
        path_template="{key}_{name}{ext}",
        export_manifest="Open-Domain_Eval_with_features.json",
        export_fields={"hidden_states": "hidden_states_path", "hidden_states_negative": "hidden_states_path_negative"},
    )
    run(qwen_dir, eval_folder / "Open-Domain_Eval.json", writer, negative_prompt="blurry", output_layout="bindweave")
    exported = json.loads((tmp_path / "features" / "Open-Domain_Eval_with_features.json").read_text())
    case = exported["multidomain_002"]
    assert case["prompt"] == "An astronaut and a cat." and len(case["img_paths"]) == 2
    assert case["hidden_states_path"] == str((tmp_path / "features" / "multidomain_002_hidden_states.pt").resolve())
    negative = torch.load(case["hidden_states_path_negative"], weights_only=True)
    assert negative.shape[0] == 1 and negative.shape[2] == 64
    # a resumed run with nothing left to do still writes the export
    exported_file = tmp_path / "features" / "Open-Domain_Eval_with_features.json"
    exported_file.unlink()
    writer.export_manifest = exported_file.name
    run(qwen_dir, eval_folder / "Open-Domain_Eval.json", writer, negative_prompt="blurry", output_layout="bindweave")
    assert json.loads(exported_file.read_text()) == exported


def test_default_export_fields(qwen_dir, eval_folder, tmp_path):
    writer = FeatureWriter(str(tmp_path / "store"), export_manifest="with_features.json")
    run(qwen_dir, eval_folder / "Open-Domain_Eval.json", writer)
    exported = json.loads((tmp_path / "store" / "with_features.json").read_text())
    path = Path(exported["singledomain_001"]["feature_path"])
    assert path.is_file() and path.suffix == ".safetensors"
