"""VFM extractors on tiny stand-ins: 48-frame shapes, equality with the Hugging Face models, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_features.data.dataset import Batch
from lit_features.data.decode_sandbox import DecodeSandbox
from lit_features.data.manifest import ManifestError, read_manifests
from lit_features.data.preprocess import MediaLoader
from lit_features.extractors.base import MissingWeightsError
from lit_features.extractors.dinov2 import DINOv2Features
from lit_features.extractors.vfm import VideoClipPreprocessor
from lit_features.extractors.vfm_multi import MultiVFMFeatures
from lit_features.extractors.videomae import VideoMAEFeatures
from lit_features.extractors.videomae_v2 import VideoMAEv2Features
from lit_features.extractors.vjepa2 import VJEPA2Features, rope_position_ids
from lit_features.models.videomae_v2 import CLASSIFIER_HEAD_KEYS, resize_position_table

ATOL = 1e-5  # same weights, same pixels, float32: only summation order may differ


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from threads, and on a busy 2-core machine two threads contend badly.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def loaded(extractor):
    extractor.configure_model()
    return extractor


def clip(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, frames, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def videomae(tiny_models):
    return loaded(VideoMAEFeatures(str(tiny_models / "videomae-base")))


@pytest.fixture(scope="module")
def vjepa2(tiny_models):
    return loaded(VJEPA2Features(str(tiny_models / "vjepa2-vitl-fpc64-256")))


def test_48_frame_shapes_with_real_patch_and_tubelet_sizes(tiny_models, videomae, vjepa2):
    v2 = loaded(VideoMAEv2Features(str(tiny_models / "vit_b_k710_dl_from_giant.pth")))
    dino = loaded(DINOv2Features(str(tiny_models / "dinov2-base"), chunk_size=16))
    x = clip(48, 160, 240)
    for extractor in (videomae, v2, vjepa2):
        assert tuple(extractor.encode(x).shape) == (1, 24, 10, 15, extractor.feature_dim)
    assert tuple(dino.encode(clip(48, 420, 630)).shape) == (1, 48, 30, 45, dino.feature_dim)
    assert v2.is_stand_in and videomae.is_stand_in  # the stores will record it


def test_videomae_is_the_last_block_of_videomaemodel_without_final_norm(tiny_models, videomae):
    from transformers import VideoMAEModel

    hf = VideoMAEModel.from_pretrained(tiny_models / "videomae-base").eval()
    assert hf.layernorm is not None  # videomae-base layout: the final norm exists and must be left out
    x = clip(16, 224, 224)  # the checkpoint's native grid: the position table is used as is
    with torch.no_grad():
        out = hf(pixel_values=x, output_hidden_states=True)
        ours = videomae.encode(x)
    reference = out.hidden_states[-1].reshape(1, 8, 14, 14, -1)
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
    assert (ours - out.last_hidden_state.reshape(ours.shape)).abs().max() > 0.1


def test_videomae_at_160x240_equals_videomaemodel_given_the_resized_table(tiny_models, videomae):
    from transformers import VideoMAEConfig, VideoMAEModel

    config = VideoMAEConfig.from_pretrained(tiny_models / "videomae-base")
    native = videomae.model.embeddings.position_embeddings[0]
    config.image_size, config.num_frames = [160, 240], 48
    hf = VideoMAEModel(config).eval()
    hf.load_state_dict(videomae.model.state_dict())
    # The upstream recipe: the 16x224 table (8x14x14) resized bicubic in space, linear in time, to 24x10x15.
    hf.embeddings.position_embeddings = resize_position_table(native, (8, 14, 14), (24, 10, 15))[None]
    x = clip(48, 160, 240, seed=1)
    with torch.no_grad():
        reference = hf(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        ours = videomae.encode(x)
    torch.testing.assert_close(ours, reference.reshape(ours.shape), atol=ATOL, rtol=0)


def test_dinov2_is_dinov2model_normed_patch_tokens_in_any_chunking(tiny_models):
    from transformers import Dinov2Model

    extractor = loaded(DINOv2Features(str(tiny_models / "dinov2-base"), chunk_size=4))
    hf = Dinov2Model.from_pretrained(tiny_models / "dinov2-base").eval()
    x = clip(9, 420, 630, seed=2)  # 9 frames in chunks of 4: 4 + 4 + 1
    with torch.no_grad():
        reference = hf(pixel_values=x[0]).last_hidden_state[:, 1:]
        ours = extractor.encode(x)
    torch.testing.assert_close(ours, reference.reshape(1, 9, 30, 45, -1), atol=ATOL, rtol=0)


def vjepa2_reference(tiny_models, x, grid=None):
    """``VJEPA2Model``'s own forward (pre-norm last layer); with ``grid`` (T', H', W'), rotary positions
    decomposed on that grid as the original V-JEPA 2 code does (H_patches/W_patches), patched in here."""
    from transformers import VJEPA2Model
    from transformers.models.vjepa2 import modeling_vjepa2

    hf = VJEPA2Model.from_pretrained(tiny_models / "vjepa2-vitl-fpc64-256").eval()
    original = modeling_vjepa2.VJEPA2RopeAttention.get_position_ids

    def true_grid_positions(self, hidden, masks=None):
        ids = torch.arange(hidden.size(1))
        per_frame = grid[1] * grid[2]
        frame = ids // per_frame
        row = (ids - frame * per_frame) // grid[2]
        return frame, row, ids - frame * per_frame - row * grid[2]

    if grid is not None:
        modeling_vjepa2.VJEPA2RopeAttention.get_position_ids = true_grid_positions
    try:
        with torch.no_grad():
            return hf(pixel_values_videos=x, skip_predictor=True, output_hidden_states=True).hidden_states[-1]
    finally:
        modeling_vjepa2.VJEPA2RopeAttention.get_position_ids = original


def test_vjepa2_square_crop_grid_equals_vjepa2model(tiny_models, vjepa2):
    x = clip(4, 256, 256, seed=3)  # 16x16 tokens: the grid VJEPA2Model assumes
    with torch.no_grad():
        ours = vjepa2.encode(x)
    torch.testing.assert_close(ours, vjepa2_reference(tiny_models, x).reshape(ours.shape), atol=ATOL, rtol=0)


def test_vjepa2_rope_grid_config_equals_vjepa2model_at_160x240(tiny_models):
    extractor = loaded(VJEPA2Features(str(tiny_models / "vjepa2-vitl-fpc64-256"), rope_grid="config"))
    x = clip(48, 160, 240, seed=4)
    with torch.no_grad():
        ours = extractor.encode(x)
    torch.testing.assert_close(ours, vjepa2_reference(tiny_models, x).reshape(ours.shape), atol=ATOL, rtol=0)


@pytest.mark.parametrize("frames,height,width", [(48, 160, 240), (2, 64, 320)])
def test_vjepa2_rope_grid_input_uses_each_tokens_true_position(tiny_models, vjepa2, frames, height, width):
    x = clip(frames, height, width, seed=5)
    grid = (frames // 2, height // 16, width // 16)  # (2, 4, 20) is wider than the 16-token crop grid
    with torch.no_grad():
        ours = vjepa2.encode(x)
    reference = vjepa2_reference(tiny_models, x, grid)
    torch.testing.assert_close(ours, reference.reshape(ours.shape), atol=ATOL, rtol=0)
    plain = vjepa2_reference(tiny_models, x).reshape(ours.shape)  # VJEPA2Model misplaces non-square tokens
    assert (ours - plain).abs().max() > 1e-3
    assert all(a.grid_size == 16 for a in (layer.attention for layer in vjepa2.model.encoder.layer))


def test_rope_position_ids_decompose_on_the_attention_grid(vjepa2):
    attention = vjepa2.model.encoder.layer[0].attention
    ids = rope_position_ids((3, 10, 15), attention.grid_size)
    t, h, w = attention.get_position_ids(torch.zeros(1, ids.numel(), 1), masks=ids[None])
    expected = torch.meshgrid(torch.arange(3), torch.arange(10), torch.arange(15), indexing="ij")
    for got, want in zip((t, h, w), expected):
        assert torch.equal(got[0, 0], want.reshape(-1))


def test_videomae_v2_checkpoint_loads_with_upstream_key_names(tiny_models):
    path = tiny_models / "vit_b_k710_dl_from_giant.pth"
    extractor = loaded(VideoMAEv2Features(str(path)))
    stored = set(torch.load(path, map_location="cpu", weights_only=True)["module"]) - set(CLASSIFIER_HEAD_KEYS)
    assert set(extractor.model.state_dict()) == stored  # no missing, no unexpected keys
    x = clip(4, 32, 48, seed=6)
    with torch.no_grad():
        direct = extractor.model.forward_features(x.permute(0, 2, 1, 3, 4))
        torch.testing.assert_close(extractor.encode(x), direct, atol=0, rtol=0)


def test_missing_videomae_v2_checkpoint_fails_at_start_with_where_to_get_it(tmp_path):
    with pytest.raises(MissingWeightsError, match="vit_b_k710_dl_from_giant.pth.*model zoo"):
        VideoMAEv2Features(str(tmp_path / "vit_b_k710_dl_from_giant.pth"))


def test_geometry_that_does_not_tile_fails_at_start(tiny_models):
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        VideoMAEFeatures(str(tiny_models / "videomae-base"), height=150)
    with pytest.raises(ValueError, match="tubelet size 2"):
        VJEPA2Features(str(tiny_models / "vjepa2-vitl-fpc64-256"), num_frames=47)


def test_preprocessing_matches_the_upstream_recipe(media):
    import decord

    source = str(media / "v_GGSY1Qvo990.mp4")
    sample = next(s for s in read_manifests(str(media.parent / "vfm_videos.csv")) if s.source.endswith("990.mp4"))
    prep = VideoClipPreprocessor(num_frames=16, sizes=((160, 240), (420, 630)))
    prepared = prep(sample, MediaLoader(DecodeSandbox(enabled=False)))
    reader = decord.VideoReader(source)
    indices = torch.linspace(0, len(reader) - 1, 16).round().long()
    assert prepared.meta["frame_indices"] == indices.tolist()
    frames = torch.from_numpy(reader.get_batch(indices.tolist()).asnumpy()).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for size in ((160, 240), (420, 630)):
        reference = (F.interpolate(frames, size=size, mode="bicubic", align_corners=False) - mean) / std
        torch.testing.assert_close(prepared.inputs[f"{size[0]}x{size[1]}"], reference, atol=1e-5, rtol=0)


def test_short_video_is_stretched_like_upstream(media):
    sample = next(s for s in read_manifests(str(media.parent / "vfm_videos.csv")) if "realshort" in s.source)
    prepared = VideoClipPreprocessor(num_frames=48)(sample, MediaLoader(DecodeSandbox(enabled=False)))
    n = prepared.meta["total_frames"]
    assert n < 48
    assert prepared.meta["frame_indices"] == np.round(np.linspace(0, n - 1, 48)).astype(int).tolist()


def test_images_are_rejected_before_any_model_loads(media):
    from lit_features.data.datamodule import ManifestDataModule

    samples = read_manifests(str(media.parent / "quickstart.json"))
    with pytest.raises(ManifestError, match="entry 4, field 'path'.*is an image"):
        ManifestDataModule.validate_samples(samples, VideoClipPreprocessor())


def one_sample_batch(inputs):
    return Batch(["k0"], ["/videos/k0.mp4"], [{"entry": {"cap": "a caption"}, "frame_indices": [0]}], inputs, [])


def test_multi_model_failure_costs_only_that_models_store(tiny_models, monkeypatch):
    multi = MultiVFMFeatures(models=["VideoMAE", "VJEPA2"], model_root=str(tiny_models))
    multi.configure_model()

    def broken(clips):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(multi.members["VJEPA2"], "encode", broken)
    out = multi.predict_step(one_sample_batch({"160x240": clip(48, 160, 240)}), 0)
    assert [(r.store, r.key) for r in out.records] == [("VideoMAE", "k0")]
    assert out.records[0].meta["caption"] == "a caption" and out.records[0].meta["model"] == "VideoMAE"
    assert out.records[0].meta["video"] == "k0.mp4"
    assert [(f.store, f.key, f.stage) for f in out.failures] == [("VJEPA2", "k0", "model")]


def test_multi_model_missing_weights_fail_at_start_or_are_skipped(tiny_models, tmp_path, caplog):
    paths = {"DINOv2": str(tmp_path / "dinov2-base")}
    with pytest.raises(MissingWeightsError, match="dinov2-base"):
        MultiVFMFeatures(models=["VideoMAE", "DINOv2"], model_root=str(tiny_models), model_paths=paths)
    multi = MultiVFMFeatures(
        models=["VideoMAE", "DINOv2"], model_root=str(tiny_models), model_paths=paths, skip_missing=True
    )
    assert list(multi.members) == ["VideoMAE"] and "DINOv2" in multi.skipped
    assert "skipping DINOv2: weights not found" in caplog.text
    assert multi.preprocessor().sizes == ((160, 240),)  # no 420x630 resize for a skipped model


def test_each_sub_store_fingerprints_like_the_single_model_run(tiny_models):
    multi = MultiVFMFeatures(models=["VideoMAEv2", "DINOv2"], model_root=str(tiny_models), dinov2_chunk=7)
    single = {
        "VideoMAEv2": VideoMAEv2Features(str(tiny_models / "vit_b_k710_dl_from_giant.pth")),
        "DINOv2": DINOv2Features(str(tiny_models / "dinov2-base")),  # chunk size is not part of the numbers
    }
    assert multi.store_fingerprints() == {name: e.fingerprint() for name, e in single.items()}
    assert multi.preprocessor().sizes == ((160, 240), (420, 630))
