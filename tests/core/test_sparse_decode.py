"""Sampled frames decoded by PyAV without the frames nothing needs equal decord's, and cost fewer decoded frames."""

from __future__ import annotations

from pathlib import Path

import av
import decord
import numpy as np
import pytest

from lit_features.data import media as media_module
from lit_features.data.keyframes import KeyframeProbe
from lit_features.data.media import decode_video
from lit_features.data.sampling import FrameSampling
from lit_features.data.sparse_decode import NotSparse, _FrameClock, read_sparse
from tests.core.test_decode import reader, remux_with_rotation


def encode(src: Path, dst: Path, codec: str, pix_fmt: str, frames: int = 60, keyint: int = 300) -> Path:
    """Re-encode the first ``frames`` frames of ``src`` (B-frames and B-pyramid as the encoder's defaults make
    them; one keyframe every ``keyint`` frames, no extra ones at scene cuts)."""
    with av.open(str(src)) as inp:
        rgb = [f.to_ndarray(format="rgb24") for _, f in zip(range(frames), inp.decode(video=0))]
    with av.open(str(dst), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = rgb[0].shape[1], rgb[0].shape[0], pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "medium", "x264-params": f"keyint={keyint}:scenecut=0"}
        elif codec == "libx265":
            stream.options = {"preset": "medium", "x265-params": f"keyint={keyint}:scenecut=0:log-level=error"}
        for array in rgb:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format=pix_fmt)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


def open_reader(path: Path, size: tuple[int, int] | None = None) -> decord.VideoReader:
    """The decoding tests' decord reader, at the stored size unless ``size`` is given."""
    return reader(path, size)


def sparse(path: Path, unique: list[int], size: tuple[int, int] | None = None):
    reader = open_reader(path, size)
    keys = [int(k) for k in reader.get_key_indices()]
    return read_sparse(str(path), reader, unique, keys, KeyframeProbe(str(path), reader.get_frame_timestamp), size)


SAMPLES = [[0, 8, 17, 25, 34, 42, 51, 59], [30], [59], list(range(20, 28)), [1, 2, 58]]


@pytest.mark.parametrize(
    "codec, pix_fmt",
    [("libx264", "yuv420p"), ("libx264", "yuvj420p"), ("libx264", "yuv422p"), ("libx264", "yuv444p"),
     ("libx265", "yuv420p")],
)  # fmt: skip
def test_frames_equal_decords_for_every_checked_format(media: Path, tmp_path: Path, codec: str, pix_fmt: str) -> None:
    clip = encode(media / "v_GGSY1Qvo990.mp4", tmp_path / "clip.mp4", codec, pix_fmt)
    for size in (None, (96, 128)):
        for unique in SAMPLES:
            got = sparse(clip, unique, size)
            expected = open_reader(clip, size).get_batch(unique).asnumpy()
            assert got.frames.shape == expected.shape and np.array_equal(got.frames, expected), (size, unique)


def test_non_reference_frames_that_are_not_sampled_are_not_decoded(media: Path, tmp_path: Path) -> None:
    # One keyframe: decord decodes every frame up to the last sampled one (60); non-reference B-frames are skipped.
    clip = encode(media / "v_GGSY1Qvo990.mp4", tmp_path / "clip.mp4", "libx264", "yuv420p")
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        references = sum(1 for _ in container.decode(stream))
    assert references < 45  # the premise: the encode has non-reference frames (x264 medium: B-pyramid)
    got = sparse(clip, SAMPLES[0])
    assert got.decoded <= references + len(SAMPLES[0]), got.decoded
    assert np.array_equal(got.frames, open_reader(clip).get_batch(SAMPLES[0]).asnumpy())


def test_a_later_clean_keyframe_is_decoded_from_instead_of_decoding_up_to_it(media: Path, tmp_path: Path) -> None:
    clip = encode(media / "v_GGSY1Qvo990.mp4", tmp_path / "clip.mp4", "libx264", "yuv420p", frames=90, keyint=30)
    assert [int(k) for k in open_reader(clip).get_key_indices()] == [0, 30, 60]
    got = sparse(clip, [2, 65])
    assert got.decoded <= 3 + 6, got.decoded  # frames 0-2, then 60-65: nothing between
    assert np.array_equal(got.frames, open_reader(clip).get_batch([2, 65]).asnumpy())


@pytest.mark.parametrize("cut", [None, [80, 200], [150, 280], [0, 60]])
def test_bundled_videos_through_the_job_path_equal_decord_reading_them(media: Path, cut: list[int] | None) -> None:
    # cockatoo.mp4: keyframes 76 and 145 are not clean (decord's own path decodes forward from frame 0 there).
    for name in ("cockatoo.mp4", "v_GGSY1Qvo990.mp4", "realshort.mp4"):
        path = media / name
        reader = open_reader(path, (180, 320))
        if cut is not None and cut[0] >= len(reader):
            continue  # realshort.mp4 has 36 frames
        indices, _ = FrameSampling("uniform", 8).select(len(reader), float(reader.get_avg_fps()), cut)
        unique = sorted(set(indices))
        keys = [int(k) for k in reader.get_key_indices()]
        probe = KeyframeProbe(str(path), reader.get_frame_timestamp)
        by_decord = media_module._read_with_decord(str(path), reader, unique, keys, probe)
        assert np.array_equal(sparse(path, unique, (180, 320)).frames, by_decord), (name, cut)


@pytest.mark.parametrize("degrees", [90, 180, -90])
def test_rotated_videos_come_out_upright_as_decords(media: Path, tmp_path: Path, degrees: int) -> None:
    rotated = remux_with_rotation(media / "realshort.mp4", tmp_path / "rotated.mp4", degrees)
    unique = [0, 11, 23, 35]
    for size in (None, (96, 128) if degrees == 180 else (128, 96)):
        expected = open_reader(rotated, size).get_batch(unique).asnumpy()
        assert np.array_equal(sparse(rotated, unique, size).frames, expected), size


@pytest.mark.parametrize("codec, pix_fmt", [("libx264", "yuv420p10le"), ("mpeg4", "yuv420p")])
def test_formats_whose_conversion_is_not_decords_are_read_by_decord(
    media: Path, tmp_path: Path, codec: str, pix_fmt: str
) -> None:
    clip = encode(media / "v_GGSY1Qvo990.mp4", tmp_path / "clip.mp4", codec, pix_fmt, frames=30)
    with pytest.raises(NotSparse):
        sparse(clip, [0, 10, 20])
    decoded = decode_video(str(clip), FrameSampling("uniform", 4), backend="decord")
    assert np.array_equal(decoded.frames, open_reader(clip).get_batch(decoded.indices).asnumpy())


def test_the_clock_maps_timestamps_to_decords_frames_only_when_unambiguous() -> None:
    class Stream:
        start_time, time_base = 1000, 1 / 1000

    clock = _FrameClock(Stream(), np.array([0.0, 0.04, 0.08, 0.12]))
    assert [clock.index(p) for p in (1000, 1040, 1080, 1120, 1125)] == [0, 1, 2, 3, 3]
    assert clock.index(1020) is None and clock.index(1300) is None and clock.index(None) is None
    assert _FrameClock(Stream(), np.array([0.0, 0.04, 0.04])).index(1040) is None  # two frames at one time
