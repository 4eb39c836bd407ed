"""Decoding the bundled videos: decord and PyAV agree on the frames, orientation included."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from lit_features.data.media import DecodeError, decode_image, decode_video
from lit_features.data.sampling import FrameSampling

VIDEOS = ["v_GGSY1Qvo990.mp4", "cockatoo.mp4", "realshort.mp4"]


def remux_with_rotation(src: Path, dst: Path, degrees: int) -> Path:
    """Copy the packets of ``src`` into ``dst`` with a display-matrix rotation (no re-encode)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream_out = out.add_stream_from_template(stream_in)
        stream_out.set_display_rotation(degrees)
        for packet in inp.demux(stream_in):
            if packet.dts is None:
                continue
            packet.stream = stream_out
            out.mux(packet)
    return dst


@pytest.mark.parametrize("name", VIDEOS)
def test_backends_agree_on_every_bundled_video(media: Path, name: str) -> None:
    sampling = FrameSampling("uniform", 8)
    a = decode_video(str(media / name), sampling, backend="decord")
    b = decode_video(str(media / name), sampling, backend="pyav")
    assert a.indices == b.indices and a.total_frames == b.total_frames
    assert a.frames.shape == b.frames.shape and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)


def test_bundled_clip_facts(media: Path) -> None:
    v = decode_video(str(media / "v_GGSY1Qvo990.mp4"), FrameSampling("all"))
    assert v.frames.shape == (355, 240, 320, 3) and abs(v.fps - 19.62) < 1e-3
    c = decode_video(str(media / "cockatoo.mp4"), FrameSampling("uniform", 2))
    assert c.frames.shape == (2, 720, 1280, 3) and c.total_frames == 280
    s = decode_video(str(media / "realshort.mp4"), FrameSampling("all"))
    assert s.frames.shape[0] == 36


@pytest.mark.parametrize("degrees", [90, 180, -90])
def test_rotation_metadata_gives_the_same_upright_frames(media: Path, tmp_path: Path, degrees: int) -> None:
    rotated = remux_with_rotation(media / "realshort.mp4", tmp_path / "rotated.mp4", degrees)
    sampling = FrameSampling("uniform", 4)
    plain = decode_video(str(media / "realshort.mp4"), sampling, backend="pyav").frames
    a = decode_video(str(rotated), sampling, backend="decord").frames
    b = decode_video(str(rotated), sampling, backend="pyav").frames
    assert np.array_equal(a, b)
    expected = np.rot90(plain, k=(degrees // 90) % 4, axes=(1, 2))  # counter-clockwise by the display angle
    assert np.array_equal(b, expected)


def test_truncated_file_is_an_error_not_fewer_frames(media: Path, tmp_path: Path) -> None:
    data = (media / "v_GGSY1Qvo990.mp4").read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    # PyAV decodes the first half silently; the frame count the header promised is what catches it.
    with pytest.raises(DecodeError, match="ended after 177 decoded frames but the header says 355"):
        decode_video(str(half), FrameSampling("uniform", 8), backend="pyav")
    # auto: decord refuses the file, then PyAV does; one DecodeError names both.
    with pytest.raises(DecodeError, match=r"^decord: .*; PyAV: DecodeError: .*header says 355"):
        decode_video(str(half), FrameSampling("uniform", 8))


def test_images_decode_rgb(media: Path) -> None:
    img = decode_image(str(media / "chelsea.jpg"))
    assert img.shape == (300, 451, 3) and img.dtype == np.uint8


def test_resize_while_decoding_agrees_between_backends(media: Path) -> None:
    sampling = FrameSampling("uniform", 4)
    a = decode_video(str(media / "cockatoo.mp4"), sampling, backend="decord", size=(180, 320))
    b = decode_video(str(media / "cockatoo.mp4"), sampling, backend="pyav", size=(180, 320))
    assert a.frames.shape == b.frames.shape == (4, 180, 320, 3)
    full = decode_video(str(media / "cockatoo.mp4"), sampling, backend="pyav").frames
    reference = full.reshape(4, 180, 4, 320, 4, 3).mean(axis=(2, 4))  # 4x box filter of the full frames
    for frames in (a.frames, b.frames):
        assert np.abs(frames.astype(float) - reference).mean() < 6.0  # both are real downscales of the same frames


@pytest.mark.xfail(
    strict=True,
    reason="known decord 0.6.0 bug: after a seek to keyframe 76 or 145 of cockatoo.mp4 (not a clean random access "
    "point) get_batch returns corrupt frames (mean |diff| 40-80 of 255); PyAV seeking does too. Only decoding from "
    "the previous clean keyframe (here frame 0) gives the right frames. Seed scripts using get_batch share it.",
)
def test_frames_after_a_seek_equal_a_sequential_decode(media: Path) -> None:
    path = str(media / "cockatoo.mp4")
    sparse = decode_video(path, FrameSampling("uniform", 8), [80, 230], "decord")
    sequential = decode_video(path, FrameSampling("all"), [0, 230], "decord")
    assert np.array_equal(sparse.frames, sequential.frames[sparse.indices])
