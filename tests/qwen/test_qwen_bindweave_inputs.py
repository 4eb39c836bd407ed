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


def test_failed_keys_are_left_out_of_the_eval_json(qwen_dir, eval_folder, tmp_path):
    cases = json.loads((eval_folder / "Open-Domain_Eval.json").read_text())
    cases["broken_003"] = {"prompt": "A dog.", "img_paths": ["Images/no_such_dog.jpg"]}
    (eval_folder / "Open-Domain_Eval.json").write_text(json.dumps(cases))
    writer = FeatureWriter(
        str(tmp_path / "features"),
        codec="pt_bare",
        path_template="{key}_{name}{ext}",
        export_manifest="eval_with_features.json",
        export_done_only=True,
        export_fields={"hidden_states": "hidden_states_path", "hidden_states_negative": "hidden_states_path_negative"},
    )
    run(qwen_dir, eval_folder / "Open-Domain_Eval.json", writer, negative_prompt="blurry", output_layout="bindweave")
    exported = json.loads((tmp_path / "features" / "eval_with_features.json").read_text())
    assert sorted(exported) == ["multidomain_002", "singledomain_001"]
    assert all(Path(case["hidden_states_path_negative"]).is_file() for case in exported.values())
    missing = json.loads((tmp_path / "features" / "eval_with_features.missing.json").read_text())
    assert list(missing) == ["broken_003"]
    assert missing["broken_003"].startswith("decode: FileNotFoundError:") and "no_such_dog.jpg" in missing["broken_003"]


def test_bindweave_layout_config_is_bindweaves_evaluation():
    """The fixed negative prompt byte for byte (528 characters), images read without EXIF, failed keys left out."""
    import hashlib

    import yaml

    from tests.conftest import REPO_ROOT

    config = yaml.safe_load((REPO_ROOT / "configs" / "qwen_hidden_bindweave.yaml").read_text())
    model = config["model"]["init_args"]
    negative = model["negative_prompt"]
    assert len(negative) == 528 and negative.startswith("Bright tones, overexposed, static, blurred details")
    assert "separated,motionless" in negative and negative.endswith("no movement, stationary, unmoving")
    assert hashlib.sha256(negative.encode()).hexdigest() == (
        "55c76d0035b8ddfdf29b201e5bcfea9872c9debfa500a154b7609b6f01e12b51"
    )
    assert model["exif_transpose"] is False and config["writer"]["export_done_only"] is True
    generic = yaml.safe_load((REPO_ROOT / "configs" / "qwen_hidden.yaml").read_text())
    assert generic["model"]["init_args"]["exif_transpose"] is True


def test_exif_orientation_is_an_option(tmp_path):
    """A portrait photo stored landscape with EXIF Orientation 6: upright with the option on, as stored with it off."""
    from PIL import Image

    from lit_features.data.decode_sandbox import DecodeSandbox
    from lit_features.data.media import decode_image
    from lit_features.data.preprocess import MediaLoader
    from lit_features.extractors.qwen_inputs import QwenPromptPreprocessor

    path = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (200, 30, 30)).save(path, exif=exif)
    assert decode_image(str(path)).shape == (40, 20, 3)
    assert decode_image(str(path), exif_transpose=False).shape == (20, 40, 3)
    (tmp_path / "m.json").write_text(json.dumps([{"prompt": "A red card.", "images": [str(path)]}]))
    (sample,) = read_manifests(tmp_path / "m.json")
    media = MediaLoader(DecodeSandbox(enabled=False))
    sizes = {
        flag: QwenPromptPreprocessor(prescale="none", exif_transpose=flag).load_images(sample, media)[1]["image_sizes"]
        for flag in (True, False)
    }
    assert sizes == {True: [[40, 20]], False: [[20, 40]]}
