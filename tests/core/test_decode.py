"""Decoding the bundled videos: decord and PyAV agree on the frames, orientation included."""

from __future__ import annotations

from pathlib import Path

import av
import decord
import numpy as np
import pytest

from lit_features.data.keyframes import KeyframeProbe, entry_keyframes
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
    assert np.array_equal(a.frames, b.frames)  # PyAV scales through decord's FFmpeg filter chain
    full = decode_video(str(media / "cockatoo.mp4"), sampling, backend="pyav").frames
    reference = full.reshape(4, 180, 4, 320, 4, 3).mean(axis=(2, 4))  # 4x box filter of the full frames
    for frames in (a.frames, b.frames):
        assert np.abs(frames.astype(float) - reference).mean() < 6.0  # both are real downscales of the same frames


def test_frames_after_a_seek_equal_a_sequential_decode(media: Path) -> None:
    path = str(media / "cockatoo.mp4")
    sparse = decode_video(path, FrameSampling("uniform", 8), [80, 230], "decord")
    sequential = decode_video(path, FrameSampling("all"), [0, 230], "decord")
    assert np.array_equal(sparse.frames, sequential.frames[sparse.indices])


# -- seeks land only on clean keyframes ------------------------------------------------------------------------
SMALL = (180, 320)  # decoder-side downscale: the corruption shows just as well, in a sixteenth of the memory


def reader(path: Path, size: tuple[int, int] | None = SMALL) -> decord.VideoReader:
    resize = {"height": size[0], "width": size[1]} if size else {}
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, **resize)


def sequential(path: Path, last: int, size: tuple[int, int] | None = SMALL) -> np.ndarray:
    """Frames 0..``last`` decoded one after the other from the start (no seek), as decord decodes them."""
    return reader(path, size).get_batch(list(range(last + 1))).asnumpy()


def drop_head(src: Path, dst: Path, keyframe: int) -> Path:
    """Copy the packets of ``src`` from its ``keyframe``-th frame on (a stream cut at a keyframe, no re-encode)."""
    with av.open(str(src)) as inp:
        first = sorted(p.pts for p in inp.demux(inp.streams.video[0]) if p.dts is not None)[keyframe]
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream_out = out.add_stream_from_template(stream_in)
        started = False
        for packet in inp.demux(stream_in):
            started = started or (packet.is_keyframe and packet.pts == first)
            if started and packet.dts is not None:
                packet.stream = stream_out
                out.mux(packet)
    return dst


@pytest.mark.parametrize(
    "name, unclean", [("cockatoo.mp4", {76, 145}), ("v_GGSY1Qvo990.mp4", set()), ("realshort.mp4", set())]
)
def test_the_probe_finds_the_keyframes_a_seek_cannot_start_from(media: Path, name: str, unclean: set[int]) -> None:
    r = reader(media / name)
    keys = [int(k) for k in r.get_key_indices()]
    probe = KeyframeProbe(str(media / name), r.get_frame_timestamp)
    assert {k for k in keys if not probe.is_clean(k)} == unclean
    # What the probe says is what decord does: a first seek to a keyframe gives its frame iff it is clean.
    reference = sequential(media / name, keys[-1])
    for k in keys:
        seeked = reader(media / name).get_batch([k]).asnumpy()[0]
        assert np.array_equal(seeked, reference[k]) == (k not in unclean), k


def test_decord_seeks_only_to_the_keyframes_the_rule_names(media: Path) -> None:
    keys = [0, 76, 145]
    assert entry_keyframes(keys, [10, 20, 75]) == []
    assert entry_keyframes(keys, [75, 80]) == []  # at frame 76 after 75: decoding goes on, no seek
    assert entry_keyframes(keys, [80]) == [76]
    assert entry_keyframes(keys, [140, 150, 200]) == [76, 145]
    path = media / "cockatoo.mp4"
    reference = sequential(path, 150)
    for indices in ([10, 20, 75], [75, 80], [75, 150]):  # no seek named: get_batch decodes forward, right
        assert entry_keyframes(keys, indices) == [] or indices == [75, 150]
        assert np.array_equal(reader(path).get_batch(indices).asnumpy(), reference[indices]), indices
    assert not np.array_equal(reader(path).get_batch([80]).asnumpy(), reference[[80]])  # a seek to 76: wrong


@pytest.mark.parametrize("cut", [[80, 230], [150, 280], [70, 100]])
def test_clips_behind_an_unclean_keyframe_equal_a_sequential_decode(media: Path, cut: list[int]) -> None:
    path = media / "cockatoo.mp4"
    clip = decode_video(str(path), FrameSampling("uniform", 8), cut, "decord", SMALL)
    reference = sequential(path, max(clip.indices))
    assert np.array_equal(clip.frames, reference[clip.indices])  # bit for bit, same backend
    if cut[0] >= 76:  # get_batch alone (the old path) gives other frames here
        assert not np.array_equal(reader(path).get_batch(clip.indices).asnumpy(), clip.frames)


@pytest.mark.parametrize("name, cut", [("v_GGSY1Qvo990.mp4", [30, 330]), ("realshort.mp4", [5, 36])])
def test_clean_files_decode_exactly_as_before(media: Path, name: str, cut: list[int]) -> None:
    path = media / name
    r = reader(path, None)
    keys = [int(k) for k in r.get_key_indices()]
    for size in (None, SMALL):
        clip = decode_video(str(path), FrameSampling("uniform", 8), cut, "decord", size)
        assert entry_keyframes(keys, sorted(set(clip.indices))), "the clip seeks: get_batch's seek path is used"
        before = reader(path, size).get_batch(clip.indices).asnumpy()  # what the decord path returned before
        assert np.array_equal(clip.frames, before)
        assert np.array_equal(clip.frames, sequential(path, max(clip.indices), size)[clip.indices])


def test_a_stream_that_cannot_be_decoded_from_its_start_is_a_decode_error(media: Path, tmp_path: Path) -> None:
    headless = drop_head(media / "cockatoo.mp4", tmp_path / "headless.mp4", 76)  # starts at the unclean keyframe
    for backend in ("decord", "pyav"):
        with pytest.raises(DecodeError, match="^frame 0 decodes corrupt"):
            decode_video(str(headless), FrameSampling("uniform", 4), backend=backend)  # type: ignore[arg-type]


def test_probe_answers_are_kept_per_file_until_the_file_changes(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clips cut from one video ask about the same keyframes: each is probed once, again only when the file
    changes (another modification time, size or inode)."""
    import os
    import shutil

    probed: list[int] = []
    real = KeyframeProbe._seek_and_decode

    def counting(self: KeyframeProbe, key: int) -> bool:
        probed.append(key)
        return real(self, key)

    monkeypatch.setattr(KeyframeProbe, "_seek_and_decode", counting)
    path = shutil.copy(media / "cockatoo.mp4", tmp_path / "clip.mp4")
    r = reader(path)
    for _ in range(3):  # three decodes of the same file: one probe of each keyframe
        probe = KeyframeProbe(str(path), r.get_frame_timestamp)
        assert [probe.is_clean(k) for k in (0, 76, 145)] == [True, False, False]
    assert probed == [0, 76, 145]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # rewritten in place
    assert not KeyframeProbe(str(path), r.get_frame_timestamp).is_clean(76)
    assert probed == [0, 76, 145, 76]
    clips = [decode_video(str(path), FrameSampling("uniform", 8), cut, "decord", SMALL) for cut in ([80, 230],) * 2]
    assert np.array_equal(clips[0].frames, clips[1].frames)
    assert probed == [0, 76, 145, 76, 0], "the two decodes reuse the answers (0 was new for the changed file)"
