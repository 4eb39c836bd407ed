"""qwen_hidden: stored features equal the Hugging Face processor + Qwen2.5-VL model bit for bit (fp32), batched or not.

The reference side never touches the extractor's code: it renders the same messages with the Hugging Face
``Qwen2_5_VLProcessor`` (chat template, image processor, image-token expansion, ``mm_token_type_ids``) and runs
``Qwen2_5_VLForConditionalGeneration(...)(output_hidden_states=True)`` with its default attention on each
sample alone.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from lit_features.data.datamodule import ManifestDataModule
from lit_features.data.dataset import BatchCollator, SampleDataset
from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.manifest import ManifestError, read_manifests
from lit_features.extractors.qwen_hidden import QwenHiddenStates, bindweave_prescale, pad_right
from tests.conftest import MEDIA
from tools.tiny_models import qwen as tiny_qwen

NEGATIVE = "blurry, static, low quality"
# A small pixel budget keeps the tests fast on 2 CPU cores; both sides use it (the default is tested elsewhere).
MAX_PIXELS = 64 * 28 * 28


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
def manifest(tmp_path_factory) -> Path:
    """Samples of very different lengths: 1 image, 2 images + own negative, a video frame, text only."""
    entries = [
        {"key": "cat", "prompt": "A cat sits on a table.", "images": [str(MEDIA / "chelsea.jpg")]},
        {
            "key": "two",
            "prompt": "An astronaut holds a cat; the camera pushes in slowly over several seconds.",
            "images": [str(MEDIA / "astronaut.png"), str(MEDIA / "chelsea.jpg")],
            "negative_prompt": "deformed hands",
        },
        {"key": "bird", "path": str(MEDIA / "cockatoo.mp4"), "cap": "A cockatoo turns its head."},
        {"key": "words", "prompt": "Two people play a game outdoors."},
    ]
    path = tmp_path_factory.mktemp("manifest") / "prompts.json"
    path.write_text(json.dumps(entries))
    return path


def make_extractor(qwen_dir: Path, **kwargs) -> QwenHiddenStates:
    args = dict(
        model_path=str(qwen_dir), dtype="float32", image_source="auto", negative_prompt=NEGATIVE, max_pixels=MAX_PIXELS
    )
    extractor = QwenHiddenStates(**{**args, **kwargs})
    extractor.configure_model()
    return extractor


@pytest.fixture(scope="module")
def extractor(qwen_dir) -> QwenHiddenStates:
    return make_extractor(qwen_dir)


def extract_all(extractor: QwenHiddenStates, manifest: Path, batch_size: int) -> dict[str, dict]:
    """Run the real preprocessing + collate + predict_step path; records by key."""
    samples = read_manifests(manifest)
    pre = extractor.preprocessor()
    ManifestDataModule.validate_samples(samples, pre)
    dataset = SampleDataset(samples, pre, DecodeSandbox(30, enabled=False))
    collate = BatchCollator(pre)
    items = [dataset[i] for i in range(len(dataset))]
    out = {}
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            prediction = extractor.predict_step(collate(items[start : start + batch_size]), 0)
            assert prediction.failures == []
            out.update({r.key: r for r in prediction.records})
    return out


@contextmanager
def hf_processor(qwen_dir: Path, max_pixels: int | None):
    """The Hugging Face Qwen2.5-VL processor with the PIL image processor and no video processor.

    Its constructor checks every attribute's class against the video-processor registry, which needs torchvision
    (not a dependency here); the check is skipped for construction only.
    """
    from transformers import AutoTokenizer, ProcessorMixin
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    bounds = {"max_pixels": max_pixels} if max_pixels else {}
    images = Qwen2VLImageProcessorPil.from_pretrained(qwen_dir, **bounds)
    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", lambda *a: None):
        yield Qwen2_5_VLProcessor(images, tokenizer, None, chat_template=tokenizer.chat_template)


def reference_images(entry: dict) -> list:
    """The entry's reference images as upstream prepares them: decoded, then BindWeave's pre-scaling."""
    import decord

    if "images" in entry:
        pil = [Image.open(p).convert("RGB") for p in entry["images"]]
    elif "path" in entry:
        pil = [Image.fromarray(decord.VideoReader(entry["path"])[0].asnumpy())]
    else:
        pil = []
    # The rule written out: x0.3 above 720*1280 pixels, else x0.75; PIL's default resize filter.
    scales = [0.3 if im.width * im.height > 720 * 1280 else 0.75 for im in pil]
    return [im.resize((int(im.width * s), int(im.height * s))) for im, s in zip(pil, scales)]


def build_reference(qwen_dir: Path, entries: list[dict], max_pixels: int | None) -> dict[str, dict]:
    """Per key (and key + "_negative"): the processor's inputs and the plain HF model's hidden states, alone."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    out = {}
    with hf_processor(qwen_dir, max_pixels) as processor, torch.no_grad():
        for entry in entries:
            images = reference_images(entry)
            texts = {"": entry.get("prompt") or entry.get("cap"), "_negative": entry.get("negative_prompt", NEGATIVE)}
            for suffix, text in texts.items():
                content = [{"type": "text", "text": text}] + [{"type": "image"} for _ in images]
                messages = [{"role": "user", "content": content}]
                rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                inputs = processor(text=[rendered], images=images or None, return_tensors="pt")
                result = model(**inputs, output_hidden_states=True, use_cache=False)
                out[entry["key"] + suffix] = {"inputs": inputs, "hidden_states": result.hidden_states}
    return out


@pytest.fixture(scope="module")
def reference(qwen_dir, manifest):
    return build_reference(qwen_dir, json.loads(manifest.read_text()), MAX_PIXELS)


def assert_bit_for_bit(records: dict, reference: dict) -> set[int]:
    """Every stored tensor equals the reference exactly (fp32: tolerance none); returns the lengths seen."""
    lengths = set()
    for key, record in records.items():
        for suffix in ("", "_negative"):
            ref = reference[key + suffix]
            ids = ref["inputs"]["input_ids"][0]
            lengths.add(len(ids))
            # token ids (image tokens included) are exactly the processor's
            assert torch.equal(record.tensors["input_ids" + suffix], ids)
            assert torch.equal(record.tensors["attention_mask" + suffix], torch.ones(len(ids), dtype=torch.long))
            hidden = record.tensors["hidden_states" + suffix]
            assert hidden.dtype == torch.float32 and hidden.shape == (len(ids), 64)
            assert torch.equal(hidden, ref["hidden_states"][-1][0]), f"{key}{suffix} differs"
        assert record.meta["num_tokens"] == len(reference[key]["inputs"]["input_ids"][0])
        assert record.meta["num_image_tokens"] == int(reference[key]["inputs"]["mm_token_type_ids"].sum())
    return lengths


@pytest.mark.parametrize("batch_size", [1, 4])
def test_bit_for_bit_equal_to_hf_processor_and_model(extractor, manifest, reference, batch_size):
    records = extract_all(extractor, manifest, batch_size)
    assert sorted(records) == ["bird", "cat", "two", "words"]
    lengths = assert_bit_for_bit(records, reference)
    assert len(lengths) == 8  # the batch really mixes lengths: padding is exercised


def test_bit_for_bit_at_the_default_pixel_bounds(qwen_dir, manifest, tmp_path):
    """The weights' own min/max pixels (a 960x540 video frame: 646 image tokens), batched with a short sample."""
    entries = [e for e in json.loads(manifest.read_text()) if e["key"] in ("bird", "words")]
    path = tmp_path / "two.json"
    path.write_text(json.dumps(entries))
    records = extract_all(make_extractor(qwen_dir, max_pixels=None), path, 2)
    assert records["bird"].meta["num_image_tokens"] == 646
    assert_bit_for_bit(records, build_reference(qwen_dir, entries, None))


def test_token_counts_match_rendered_prompt(extractor, manifest, reference):
    records = extract_all(extractor, manifest, 4)
    two = records["two"]
    grid = reference["two"]["inputs"]["image_grid_thw"]
    assert two.meta["image_grid_thw"] == grid.tolist()
    assert two.meta["num_image_tokens"] == int(grid.prod(-1).sum()) // 4
    words = records["words"]
    assert words.meta["num_image_tokens"] == 0 and words.meta["reference"] == "none"
    assert records["bird"].meta["reference"] == "video" and records["bird"].meta["frame_indices"] == [0]
    # the text-only sample: every token is text, count equals the tokenised rendering
    assert words.meta["num_tokens"] == words.tensors["input_ids"].numel()


def test_any_list_of_layers_matches_reference(qwen_dir, manifest, reference):
    extractor = make_extractor(qwen_dir, layers=[0, 1, -1])
    records = extract_all(extractor, manifest, 4)
    for key in ("cat", "two", "words"):
        stacked = records[key].tensors["hidden_states"]
        ref = reference[key]["hidden_states"]
        assert stacked.shape[0] == 3
        for i, layer in enumerate([0, 1, -1]):
            assert torch.equal(stacked[i], ref[layer][0])


def test_bindweave_layout_is_bare_batch_of_one(qwen_dir, manifest, reference):
    extractor = make_extractor(qwen_dir, output_layout="bindweave")
    records = extract_all(extractor, manifest, 2)
    record = records["cat"]
    assert sorted(record.tensors) == ["hidden_states", "hidden_states_negative"]
    assert torch.equal(record.tensors["hidden_states"], reference["cat"]["hidden_states"][-1])
    assert torch.equal(record.tensors["hidden_states_negative"], reference["cat_negative"]["hidden_states"][-1])


def test_bf16_default_stays_close_to_fp32_reference(qwen_dir, manifest, reference):
    extractor = make_extractor(qwen_dir, dtype="bfloat16")
    records = extract_all(extractor, manifest, 4)
    for key, record in records.items():
        hidden = record.tensors["hidden_states"]
        assert hidden.dtype == torch.bfloat16
        ref = reference[key]["hidden_states"][-1][0]
        cosine = torch.nn.functional.cosine_similarity(hidden.float(), ref, dim=-1)
        assert cosine.min() > 0.99, (key, cosine.min())  # stated tolerance for bf16 on the tiny stand-in


def test_without_negative_prompt_there_is_no_second_pass(qwen_dir, manifest):
    extractor = make_extractor(qwen_dir, negative_prompt=None)
    records = extract_all(extractor, manifest, 4)
    assert "hidden_states_negative" not in records["cat"].tensors
    assert "hidden_states_negative" in records["two"].tensors  # the entry's own negative prompt


def test_negative_pass_without_images(qwen_dir, manifest):
    from transformers import AutoTokenizer

    extractor = make_extractor(qwen_dir, negative_images=False)
    records = extract_all(extractor, manifest, 4)
    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    ids = records["two"].tensors["input_ids_negative"]
    assert int((ids == tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 0


def test_bindweave_prescale_rule():
    assert bindweave_prescale(Image.new("RGB", (1280, 720))).size == (960, 540)  # not larger than 720*1280
    assert bindweave_prescale(Image.new("RGB", (1920, 1080))).size == (576, 324)
    assert bindweave_prescale(Image.new("RGB", (451, 300))).size == (338, 225)


def test_pixel_bounds_are_configurable_and_fingerprinted(qwen_dir):
    small = QwenHiddenStates(model_path=str(qwen_dir), max_pixels=28 * 28 * 16)
    default = QwenHiddenStates(model_path=str(qwen_dir))
    assert small.preprocessor().image_processor.size["longest_edge"] == 28 * 28 * 16
    assert small.fingerprint()["preprocess"]["image_processor"]["max_pixels"] == 28 * 28 * 16
    assert default.fingerprint()["preprocess"]["image_processor"]["max_pixels"] == 12845056
    assert len(default.fingerprint()["preprocess"]["chat_template_sha256"]) == 16


def test_pad_right():
    ids, mask = pad_right([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize(
    ("entry", "field", "message"),
    [
        ({"images": [str(MEDIA / "chelsea.jpg")]}, "prompt", "no prompt"),
        ({"prompt": "   ", "cap": ""}, "prompt", "no prompt"),
        (
            {"prompt": "a", "images": [str(MEDIA / "chelsea.jpg")] * 5},
            "images",
            "5 reference images but max_images is 4",
        ),
        ({"prompt": "a", "img_paths": [str(MEDIA / "chelsea.jpg")] * 5}, "img_paths", "max_images is 4"),
        ({"prompt": "look <|image_pad|> here"}, "prompt", "reserved token"),
    ],
)
def test_validation_names_entry_and_field(qwen_dir, tmp_path, entry, field, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"prompt": "fine"}, entry]))
    extractor = QwenHiddenStates(model_path=str(qwen_dir))
    with pytest.raises(ManifestError, match=message) as err:
        ManifestDataModule.validate_samples(read_manifests(path), extractor.preprocessor())
    assert err.value.entry == 1 and err.value.field == field
    assert extractor.model is None


def test_config_errors(qwen_dir):
    with pytest.raises(ValueError, match="single index"):
        QwenHiddenStates(model_path=str(qwen_dir), layers=[-1, -2], output_layout="bindweave")
    with pytest.raises(ValueError, match="video_frames"):
        QwenHiddenStates(model_path=str(qwen_dir), image_source="video", video_frames=5)
    bad_layer = QwenHiddenStates(model_path=str(qwen_dir), layers=7, dtype="float32")
    with pytest.raises(ValueError, match="out of range"):
        bad_layer.configure_model()


def test_preprocessor_pickles_without_loaded_processors(extractor):
    import pickle

    pre = extractor.preprocessor()
    _ = pre.tokenizer, pre.image_processor
    clone = pickle.loads(pickle.dumps(pre))
    assert clone._tokenizer is None and clone._image_processor is None
    assert clone.params() == pre.params()
    assert np.isclose(clone.image_processor.image_mean[0], 0.48145466)


def test_packed_attention_equals_each_segment_alone():
    from lit_features.extractors.qwen_hidden import packed_sdpa_attention

    module = torch.nn.Module()
    module.is_causal = True
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=gen) for _ in range(3))
    packed, _ = packed_sdpa_attention(module, q, k, v, None, sample_lengths=[4, 5])
    for start, end in ((0, 4), (4, 9)):
        alone, _ = packed_sdpa_attention(module, q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], None)
        assert torch.equal(packed[:, start:end], alone)
    with pytest.raises(ValueError, match="do not tile"):
        packed_sdpa_attention(module, q, k, v, None, sample_lengths=[4, 4])
