"""OneVision extractors: the batch and packed forms agree on a mixed batch, and the frame slots matter."""

import pytest
import torch

from lit_features.data.dataset import Batch
from lit_features.extractors.onevision import OneVisionFeatures, OneVisionPackedFeatures
from lit_features.models.onevision_positions import grid_positions, patchify


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def forms(tiny_models):
    path = str(tiny_models / "OneVision-Encoder-Base")
    batch_form = OneVisionFeatures(path, dtype="float32")
    packed = OneVisionPackedFeatures(path, dtype="float32", max_tokens=None)
    split = OneVisionPackedFeatures(path, dtype="float32", max_tokens=50)
    for extractor in (batch_form, packed, split):
        extractor.configure_model()
    return batch_form, packed, split


def mixed_batch():
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 3, 42, 56, generator=gen), torch.randn(8, 3, 28, 42, generator=gen)]
    inputs.append(torch.randn(1, 3, 14, 28, generator=gen))
    metas = [{"kind": "image"}, {"kind": "video", "frame_indices": list(range(8))}, {"kind": "image"}]
    return inputs, Batch(["a", "b", "c"], [None] * 3, metas, inputs, [])


def test_packed_equals_batch_form_on_a_mixed_batch(forms):
    batch_form, packed, split = forms
    inputs, batch = mixed_batch()
    with torch.no_grad():
        want = batch_form.extract(inputs, batch)
        got, got_split = packed.extract(inputs, batch), split.extract(inputs, batch)
    assert [o["features"].shape for o in want] == [(12, 64), (8, 6, 64), (2, 64)]
    for w, g, s in zip(want, got, got_split):
        torch.testing.assert_close(g["features"], w["features"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s["features"], g["features"], atol=1e-6, rtol=0)
    assert packed.sample_meta(batch, 1)["frame_slots"] == [0, 9, 18, 27, 36, 45, 54, 63]


def test_frame_slots_change_video_features(forms):
    """Positions 0..7 instead of the 64-slot grid give other features: the slots are not cosmetic."""
    _, packed, _ = forms
    video = torch.randn(8, 3, 28, 42, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        slotted = packed.encode_pack([(video, True)])[0]
        consecutive = packed.model.forward_packed(
            patchify(video.transpose(0, 1), 14), [[8, 2, 3]], grid_positions(range(8), 2, 3), output_hidden_states=True
        ).hidden_states[-2]
    # Random tiny weights attend almost uniformly, so positions move features only a little (about 2e-4 here),
    # but far more than the two forms ever differ (bit-identical on CPU, asserted within 1e-5 above).
    assert (slotted.reshape(-1, 64) - consecutive).abs().max() > 1e-4


def test_num_frames_beyond_the_grid_is_refused(tiny_models):
    with pytest.raises(ValueError, match="between 1 and the model's 64 temporal slots"):
        OneVisionFeatures(str(tiny_models / "OneVision-Encoder-Base"), num_frames=65)
