"""mmfind.media.video: sampling frames from video files, their timestamps, and every failure."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import media_factory as mf
import numpy as np
import pytest
import video_factory as vf
from PIL import Image

from mmfind.errors import MediaError
from mmfind.media import video
from mmfind.media.image import ImageSpec, fit_image
from mmfind.media.video import (
    DEFAULT_FRAME_INTERVAL_S,
    DEFAULT_MAX_DURATION_S,
    VideoFrames,
    decode_video,
    open_video,
)

# The factory's frames are 160×120: "squash" to that size leaves the pixels as decoded.
RAW = ImageSpec((120, 160), resize_mode="squash")
SPEC = ImageSpec((224, 224))
EPS = 1e-6


def needs(codec: str) -> None:
    if not vf.encoder_available(codec):
        pytest.skip(f"the FFmpeg bundled with PyAV has no {codec} encoder")


def indices(result: VideoFrames) -> list[int]:
    return [vf.read_index(f) for f in result.frames]


def expected_selection(frame_times: Sequence[float], interval: float, limit: float) -> list[float]:
    """The rule, written out: targets 0, interval, … < limit; each takes the first frame at or
    after it; a frame answering several targets is taken once."""
    chosen: list[float] = []
    k = 0
    while k == 0 or k * interval < limit - EPS:
        later = [t for t in frame_times if t >= k * interval - EPS]
        if not later:
            break
        chosen.append(later[0])
        k = max(k + 1, math.floor((later[0] + EPS) / interval) + 1)
    return chosen


def assert_index_matches_time(result: VideoFrames, fps: float) -> None:
    """Each frame is the one the index pattern says is presented at its timestamp."""
    assert [round(t * fps) for t in result.times] == indices(result)
    assert all(abs(t * fps - round(t * fps)) < 1e-3 for t in result.times)  # on a frame


# --- containers and codecs -----------------------------------------------------------------------

CONTAINERS = [
    (".mp4", "libx264"),
    (".mp4", "mpeg4"),
    (".mov", "libx264"),
    (".mkv", "libx264"),
    (".webm", "libvpx-vp9"),
    (".webm", "libvpx"),
    (".avi", "mpeg4"),
    (".avi", "mjpeg"),
    (".ts", "libx264"),
]


@pytest.mark.parametrize(("ext", "codec"), CONTAINERS)
def test_containers_and_codecs(tmp_path: Path, ext: str, codec: str) -> None:
    needs(codec)
    path = vf.make_video(tmp_path / f"clip{ext}", seconds=6, fps=10, codec=codec)
    result = decode_video(str(path), RAW)
    assert result.frames.dtype == np.uint8 and result.frames.shape == (3, 120, 160, 3)
    assert result.times == [0.0, 2.0, 4.0]
    assert indices(result) == [0, 20, 40]
    assert (result.width, result.height) == (160, 120)
    assert result.duration == pytest.approx(6.0, abs=0.05)
    assert result.has_audio is False and result.warning is None


def test_mpeg_program_stream(tmp_path: Path) -> None:
    needs("mpeg2video")  # MPEG-2 knows only broadcast rates: 25 fps, not 10
    path = vf.make_video(tmp_path / "clip.mpg", seconds=4, fps=25, codec="mpeg2video")
    result = decode_video(path, RAW, interval_s=1.0)
    assert result.times == [0.0, 1.0, 2.0, 3.0]  # from the stream's own start (0.5 s in the file)
    assert indices(result) == [0, 25, 50, 75]


def test_frames_are_fitted_exactly_like_a_still(tmp_path: Path) -> None:
    path = vf.make_video(tmp_path / "clip.mp4", seconds=3, fps=10, size=(320, 180))
    result = decode_video(path, SPEC, interval_s=1.0)
    assert result.frames.shape == (3, 224, 224, 3)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for t, pixels in zip(result.times, result.frames, strict=True):
        still = Image.fromarray(decoded[round(t * 10)])
        assert np.array_equal(pixels, fit_image(still, SPEC))


def test_default_interval_and_cap() -> None:
    assert DEFAULT_FRAME_INTERVAL_S == 2.0
    assert DEFAULT_MAX_DURATION_S == 3600.0


# --- which frame, at which time ------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_10s(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vf.make_video(tmp_path_factory.mktemp("v") / "clip.mp4", seconds=10, fps=10)


@pytest.mark.parametrize(
    ("interval", "times"),
    [
        (1.0, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]),
        (2.0, [0.0, 2.0, 4.0, 6.0, 8.0]),
        (3.0, [0.0, 3.0, 6.0, 9.0]),
        (0.25, [0.0, 0.3, 0.5, 0.8, 1.0]),  # between frames: the next one (first five shown)
    ],
)
def test_frame_selection_and_timestamps(
    clip_10s: Path, interval: float, times: list[float]
) -> None:
    result = decode_video(clip_10s, RAW, interval_s=interval)
    assert result.times[: len(times)] == pytest.approx(times, abs=EPS)
    assert result.times == pytest.approx(
        expected_selection([i / 10 for i in range(100)], interval, 10.0)
    )
    assert_index_matches_time(result, 10)


def test_ntsc_frame_rate(tmp_path: Path) -> None:
    fps = Fraction(30000, 1001)
    path = vf.make_video(tmp_path / "ntsc.mp4", seconds=4, fps=fps)
    result = decode_video(path, RAW, interval_s=1.0)
    # frame 30 is at 1.001 s: the first frame at or after 1 s
    assert result.times == pytest.approx([0.0, 1.001, 2.002, 3.003], abs=EPS)
    assert indices(result) == [0, 30, 60, 90]


def test_b_frames(tmp_path: Path) -> None:
    options = {"preset": "veryfast", "bf": "3", "crf": "18"}
    path = vf.make_video(tmp_path / "bframes.mp4", seconds=12, fps=10, encoder_options=options)
    result = decode_video(path, RAW, interval_s=1.5)
    assert result.times == pytest.approx([0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0, 10.5], abs=EPS)
    assert_index_matches_time(result, 10)


@pytest.mark.parametrize(("gop", "interval"), [(250, 1.3), (50, 9.0)])
def test_skipping_unneeded_b_frames_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gop: int, interval: float
) -> None:
    """Far from a target, non-reference frames are not decoded: the frames taken are the same as
    when every frame is decoded (with and without seeks in between)."""
    options = {"preset": "veryfast", "bf": "3", "crf": "18", "sc_threshold": "0"}
    path = vf.make_video(
        tmp_path / "long-gop.mp4", seconds=30, fps=10, gop=gop, encoder_options=options
    )
    with av.open(str(path)) as container:
        kinds = {f.pict_type for f in container.decode(video=0)}
    assert av.video.frame.PictureType.B in kinds
    decoded: list[int] = []
    real_decoded = video.VideoFile._decoded

    def counting(self: video.VideoFile) -> Iterator[tuple[float, av.VideoFrame]]:
        for item in real_decoded(self):
            decoded.append(1)
            yield item

    monkeypatch.setattr(video.VideoFile, "_decoded", counting)
    skipping = decode_video(path, RAW, interval_s=interval)
    skipped_count = len(decoded)
    decoded.clear()
    monkeypatch.setattr(video, "SKIP_NONREF", False)
    monkeypatch.setattr(video.VideoFile, "_should_seek", lambda self, target: False)
    full = decode_video(path, RAW, interval_s=interval)
    assert skipped_count < len(decoded)
    assert skipping.times == full.times
    assert np.array_equal(skipping.frames, full.frames)
    assert_index_matches_time(skipping, 10)


@pytest.mark.parametrize("length", [0.5, 0.1])
def test_video_shorter_than_the_interval_gives_its_first_frame(
    tmp_path: Path, length: float
) -> None:
    path = vf.make_video(tmp_path / "short.mp4", seconds=length, fps=10)
    result = decode_video(path, RAW, interval_s=2.0)
    assert result.times == [0.0] and indices(result) == [0]
    assert result.duration == pytest.approx(length, abs=0.01)


@pytest.mark.parametrize(
    ("cap", "count", "last"), [(20.0, 10, 18.0), (19.5, 10, 18.0), (1.0, 1, 0.0)]
)
def test_max_duration_cuts_a_long_video(
    tmp_path_factory: pytest.TempPathFactory, cap: float, count: int, last: float
) -> None:
    path = tmp_path_factory.getbasetemp() / "long60.mp4"
    if not path.exists():
        vf.make_video(path, seconds=60, fps=5, size=(96, 80))
    result = decode_video(path, RAW, interval_s=2.0, max_duration_s=cap)
    assert len(result.times) == len(result.frames) == count
    assert result.times[-1] == pytest.approx(last)
    assert [vf.read_index(f) for f in result.frames] == [round(t * 5) for t in result.times]
    assert result.duration == pytest.approx(60.0, abs=0.05)  # the file's, not the cap's
    assert result.warning is None


@pytest.mark.parametrize("ext", [".mkv", ".mp4", ".webm"])
def test_variable_frame_rate(tmp_path: Path, ext: str) -> None:
    times = [0.0, 0.5, 0.6, 3.0, 3.1, 3.2, 7.5, 7.6, 9.0]
    path = vf.make_video(tmp_path / f"vfr{ext}", times=times)
    result = decode_video(path, RAW, interval_s=1.0)
    # 0 → 0.0; 1, 2, 3 → 3.0 (once); 4 … 7 → 7.5; 8, 9 → 9.0 — each frame once
    assert result.times == pytest.approx([0.0, 3.0, 7.5, 9.0], abs=EPS)
    assert indices(result) == [0, 3, 6, 8]
    assert result.times == pytest.approx(expected_selection(times, 1.0, result.duration), abs=EPS)


def test_stream_without_timestamps(tmp_path: Path) -> None:
    """A raw H.264 elementary stream has no timestamps: times come from the frame rate."""
    needs("libx264")
    src = vf.make_video(tmp_path / "src.mp4", seconds=5, fps=10)
    raw = tmp_path / "clip.h264"
    with av.open(str(src)) as inp, av.open(str(raw), "w", format="h264") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    result = decode_video(raw, RAW, interval_s=1.0)
    assert result.times == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    assert indices(result) == [0, 10, 20, 30, 40]


# --- seeking -------------------------------------------------------------------------------------

SEEK_CASES = [
    (".mp4", 30, 9.0),
    (".mp4", 100, 13.0),
    (".mkv", 30, 9.0),
    (".webm", 30, 13.0),
    (".ts", 30, 9.0),  # no index: seeks by time, retries further back when it lands late
    (".ts", 100, 13.0),
]


@pytest.mark.parametrize(("ext", "gop", "interval"), SEEK_CASES)
def test_seeking_gives_the_same_frames_as_decoding_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str, gop: int, interval: float
) -> None:
    path = vf.make_video(tmp_path / f"long{ext}", seconds=60, fps=10, size=(96, 80), gop=gop)
    seeks: list[float] = []
    real_seek = video.VideoFile._seek

    def counting_seek(self: video.VideoFile, target: float, *, force: bool = False) -> bool:
        seeks.append(target)
        return real_seek(self, target, force=force)

    monkeypatch.setattr(video.VideoFile, "_seek", counting_seek)
    sought = decode_video(path, RAW, interval_s=interval)
    assert seeks, "a 60 s video sampled every 9+ s should seek"
    monkeypatch.setattr(video.VideoFile, "_should_seek", lambda self, target: False)
    straight = decode_video(path, RAW, interval_s=interval)
    assert sought.times == straight.times
    assert np.array_equal(sought.frames, straight.frames)
    assert sought.times == pytest.approx([k * interval for k in range(len(sought.times))])
    assert [vf.read_index(f) for f in sought.frames] == [round(t * 10) for t in sought.times]


def test_a_seek_that_lands_late_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken index that sends seeks 3 s too far must not skip the frames wanted."""
    path = vf.make_video(tmp_path / "long.mp4", seconds=40, fps=10, size=(96, 80), gop=20)
    real_seek = video.VideoFile._seek

    def late_seek(self: video.VideoFile, target: float, *, force: bool = False) -> bool:
        return real_seek(self, target + 3.0, force=force)

    monkeypatch.setattr(video.VideoFile, "_seek", late_seek)
    result = decode_video(path, RAW, interval_s=10.0)
    assert result.times == [0.0, 10.0, 20.0, 30.0]
    assert indices(result) == [0, 100, 200, 300]


# --- orientation and metadata --------------------------------------------------------------------


@pytest.mark.parametrize(("rotation", "transpose"), [
    (90, Image.Transpose.ROTATE_90),
    (-90, Image.Transpose.ROTATE_270),
    (180, Image.Transpose.ROTATE_180),
])  # fmt: skip
def test_rotation_metadata_is_applied(
    tmp_path: Path, rotation: int, transpose: Image.Transpose
) -> None:
    picture = mf.quadrants((160, 96))
    path = vf.make_video(
        tmp_path / "phone.mp4", size=(160, 96), frames=[picture] * 10, rotation=rotation
    )
    result = decode_video(path, SPEC)
    expected = fit_image(picture.transpose(transpose), SPEC).astype(int)
    assert np.abs(result.frames[0].astype(int) - expected).mean() < 6
    if rotation in (90, -90):
        assert (result.width, result.height) == (96, 160)
    else:
        assert (result.width, result.height) == (160, 96)


@pytest.mark.parametrize("ext", [".mp4", ".mov", ".mkv", ".webm", ".avi"])
def test_has_audio(tmp_path: Path, ext: str) -> None:
    with_sound = decode_video(vf.make_video(tmp_path / f"a{ext}", seconds=2, with_audio=True), RAW)
    silent = decode_video(vf.make_video(tmp_path / f"b{ext}", seconds=2), RAW)
    assert with_sound.has_audio is True and silent.has_audio is False
    assert indices(with_sound) == [0]  # the sound track does not disturb the pictures


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm"])
def test_sound_longer_than_the_pictures(tmp_path: Path, ext: str) -> None:
    """The duration is the video stream's; a longer sound track is not a truncated video."""
    sound = np.zeros(10 * 48000, np.float32)
    path = vf.make_video(tmp_path / f"clip{ext}", seconds=4, fps=10, audio=sound)
    result = decode_video(path, RAW, interval_s=1.0)
    assert result.times == [0.0, 1.0, 2.0, 3.0]
    assert result.duration == pytest.approx(4.0, abs=0.05)
    assert result.warning is None and result.has_audio


def test_streaming_api_matches_decode_video(clip_10s: Path) -> None:
    with open_video(clip_10s) as clip:
        assert (clip.width, clip.height, clip.has_audio) == (160, 120, False)
        assert clip.duration == pytest.approx(10.0)
        assert clip.audio_stream is None
        pairs = list(clip.sample(RAW, interval_s=2.0))
    result = decode_video(clip_10s, RAW, interval_s=2.0)
    assert [t for t, _ in pairs] == result.times
    assert np.array_equal(np.stack([p for _, p in pairs]), result.frames)


def test_determinism(tmp_path: Path) -> None:
    path = vf.make_video(
        tmp_path / "clip.webm" if vf.default_codec(".webm") else tmp_path / "c.mp4"
    )
    first = decode_video(path, SPEC, interval_s=1.0)
    second = decode_video(path, SPEC, interval_s=1.0)
    assert first.times == second.times
    assert np.array_equal(first.frames, second.frames)


def test_bad_arguments(clip_10s: Path) -> None:
    with pytest.raises(ValueError):
        decode_video(clip_10s, RAW, interval_s=0)
    with pytest.raises(ValueError):
        decode_video(clip_10s, RAW, max_duration_s=-1)


# --- failures ------------------------------------------------------------------------------------


def reason(path: Path) -> str:
    with pytest.raises(MediaError) as info:
        decode_video(path, RAW)
    return info.value.reason


def test_empty_file(tmp_path: Path) -> None:
    assert reason(mf.make_empty(tmp_path / "empty.mp4")) == "empty file"


@pytest.mark.parametrize("maker", [mf.make_random_bytes, mf.make_text])
@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".avi"])
def test_not_a_video(tmp_path: Path, maker: object, ext: str) -> None:
    path = maker(tmp_path / f"fake{ext}")  # type: ignore[operator]
    assert reason(path) == "not a video (unrecognised format)"


def test_a_photo_named_mp4_is_not_a_video(tmp_path: Path) -> None:
    path = mf.make_photo(tmp_path / "photo.jpg", (64, 48)).rename(tmp_path / "photo.mp4")
    # FFmpeg reads a JPEG as a one-frame "video": acceptable, as long as nothing crashes
    try:
        result = decode_video(path, RAW)
    except MediaError as exc:
        assert exc.reason
    else:
        assert len(result.frames) == 1


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm"])
def test_audio_only_container(tmp_path: Path, ext: str) -> None:
    assert reason(vf.make_audio_only_video(tmp_path / f"sound{ext}")) == "no video stream"


def test_audio_only_mp4(tmp_path: Path) -> None:
    assert reason(vf.make_audio_only_mp4(tmp_path / "sound.mp4")) == "no video stream"


def test_zero_frame_videos(tmp_path: Path) -> None:
    assert reason(vf.make_zero_frame_video(tmp_path / "none.avi")) == "video has no frames"
    # MP4 drops a track with no samples; Matroska ends before the first cluster
    assert reason(vf.make_zero_frame_video(tmp_path / "none.mp4")) == "no video stream"
    assert reason(vf.make_zero_frame_video(tmp_path / "none.mkv")) == (
        "broken video stream: file ends before the first frame"
    )


def test_missing_and_unreadable(tmp_path: Path) -> None:
    assert reason(tmp_path / "missing.mp4").startswith("cannot read file:")
    (tmp_path / "folder.mp4").mkdir()
    assert reason(tmp_path / "folder.mp4") == "cannot read file: Is a directory"


@pytest.fixture(scope="module")
def source_10s(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("src")
    return {
        "mp4": vf.make_video(d / "end-index.mp4", seconds=10, with_audio=True),
        "faststart": vf.make_video(d / "front.mp4", seconds=10, with_audio=True, faststart=True),
        "mkv": vf.make_video(d / "clip.mkv", seconds=10, with_audio=True),
    }


def test_truncated_mp4_without_its_index(tmp_path: Path, source_10s: dict[str, Path]) -> None:
    """A recording cut off before its moov atom was written cannot be read at all."""
    truncated = vf.make_truncated_video(source_10s["mp4"], tmp_path / "cut.mp4", keep=0.5)
    assert reason(truncated) == (
        "broken video stream: container unreadable (truncated or damaged file?)"
    )
    head = vf.make_truncated_video(source_10s["faststart"], tmp_path / "head.mp4", keep=0.03)
    assert reason(head).startswith("broken video stream:")


@pytest.mark.parametrize("kind", ["faststart", "mkv"])
def test_truncated_video_keeps_the_frames_before_the_break(
    tmp_path: Path, source_10s: dict[str, Path], kind: str
) -> None:
    src = source_10s[kind]
    truncated = vf.make_truncated_video(src, tmp_path / f"cut{src.suffix}", keep=0.5)
    result = decode_video(truncated, RAW, interval_s=1.0)
    assert 3 <= len(result.times) <= 7
    assert result.times == [float(k) for k in range(len(result.times))]
    assert_index_matches_time(result, 10)
    assert result.duration < 8.0  # where the pictures end, not the declared 10 s
    assert result.warning is not None and "truncated" in result.warning


@pytest.mark.parametrize("kind", ["faststart", "mkv"])
def test_damage_in_the_middle_keeps_both_sides(
    tmp_path: Path, source_10s: dict[str, Path], kind: str
) -> None:
    src = source_10s[kind]
    damaged = vf.make_damaged_video(src, tmp_path / f"bad{src.suffix}", start=0.4, stop=0.55)
    result = decode_video(damaged, RAW, interval_s=1.0)
    assert result.times[0] == 0.0 and indices(result)[0] == 0
    assert result.times[-1] >= 8.0  # frames after the damage are still found
    assert result.times == sorted(set(result.times))
    assert vf.read_index(result.frames[-1]) == round(result.times[-1] * 10)


def test_totally_broken_stream(tmp_path: Path, source_10s: dict[str, Path]) -> None:
    damaged = vf.make_damaged_video(
        source_10s["faststart"], tmp_path / "garbage.mp4", start=0.02, stop=1.0
    )
    with pytest.raises(MediaError) as info:
        decode_video(damaged, RAW)
    assert info.value.reason.startswith(("broken video stream", "video has no frames"))


def test_quiet_and_light(tmp_path: Path, source_10s: dict[str, Path]) -> None:
    """Decoding broken files writes nothing to stdout/stderr, and the module never loads torch."""
    files = [
        vf.make_damaged_video(source_10s["faststart"], tmp_path / "bad.mp4"),
        vf.make_truncated_video(source_10s["mkv"], tmp_path / "cut.mkv"),
        vf.make_truncated_video(source_10s["mp4"], tmp_path / "cut.mp4"),
        mf.make_random_bytes(tmp_path / "noise.mp4"),
    ]
    code = (
        "import sys\n"
        "from mmfind.errors import MediaError\n"
        "from mmfind.media.image import ImageSpec\n"
        "from mmfind.media.video import decode_video\n"
        f"for p in {[str(f) for f in files]!r}:\n"
        "    try:\n"
        "        decode_video(p, ImageSpec((32, 32)))\n"
        "    except MediaError:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True)
    assert run.returncode == 0 and run.stderr == b"" and run.stdout == b"", run.stderr


def test_sample_slideshow() -> None:
    """The committed demo video: five photos, 2 s each, with a sound track."""
    path = Path(__file__).parent.parent / "sample_data" / "slideshow.mp4"
    result = decode_video(path, SPEC)
    assert result.times == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert (result.width, result.height, result.has_audio) == (320, 240, True)
    assert result.duration == pytest.approx(10.0, abs=0.05) and result.warning is None
    assert path.stat().st_size < 400_000
