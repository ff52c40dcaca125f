"""Audio files → 48 kHz mono windows: formats, resampling, windowing, caps and failures."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import av
import numpy as np
import pytest
from audio_factory import (
    make_audio_with_pyav,
    make_empty_wav,
    make_nan_wav,
    make_noise,
    make_png_named,
    make_random_bytes,
    make_silence,
    make_speechlike,
    make_text_file,
    make_tone,
    make_truncated,
    make_video,
    noise,
    speechlike,
    tone,
    write_audio,
)

from mmfind.errors import MediaError
from mmfind.media.audio import (
    DEFAULT_MAX_DURATION_S,
    HOP_S,
    SAMPLE_RATE,
    WINDOW_S,
    decode_audio_file,
    load_audio,
    load_audio_stream,
    window_audio,
)

W = round(WINDOW_S * SAMPLE_RATE)  # 480_000 samples per window


def dominant_hz(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    return float(np.argmax(spectrum) * rate / samples.shape[0])


def reason_of(path: Path, **kwargs: float) -> str:
    with pytest.raises(MediaError) as excinfo:
        decode_audio_file(path, **kwargs)
    return excinfo.value.reason


def test_constants() -> None:
    assert (SAMPLE_RATE, WINDOW_S, HOP_S, DEFAULT_MAX_DURATION_S) == (48_000, 10.0, 10.0, 3600.0)


# --- formats -------------------------------------------------------------------------------------

FORMATS = [  # (file name, sample rate, soundfile subtype)
    ("pcm16.wav", 48_000, "PCM_16"),
    ("pcm24.wav", 44_100, "PCM_24"),
    ("float.wav", 22_050, "FLOAT"),
    ("pcm16-8k.wav", 8_000, "PCM_16"),
    ("tone.flac", 44_100, None),
    ("tone.ogg", 44_100, "VORBIS"),
    ("tone.mp3", 44_100, None),  # libsndfile ≥ 1.1 writes MP3
    ("tone.aiff", 22_050, None),
    ("tone.m4a", 44_100, None),  # the rest through PyAV
    ("tone.aac", 44_100, None),
    ("tone.opus", 48_000, None),
    ("tone.wma", 44_100, None),
]


@pytest.mark.parametrize(("name", "rate", "subtype"), FORMATS)
def test_formats_decode_to_48k_mono_windows(
    tmp_path: Path, name: str, rate: int, subtype: str | None
) -> None:
    path = make_tone(tmp_path / name, freq=440, seconds=3, rate=rate, subtype=subtype)
    result = decode_audio_file(path)
    assert result.windows.shape == (1, W)
    assert result.windows.dtype == np.float32
    ((start, end),) = result.spans
    assert start == 0.0
    assert end == pytest.approx(3.0, abs=0.05)  # codecs add or trim a few ms
    assert result.duration == pytest.approx(3.0, abs=0.05)
    content = result.windows[0, : int(end * SAMPLE_RATE)]
    assert dominant_hz(content[2400:-2400]) == pytest.approx(440, abs=2)  # pitch kept
    level = float(np.max(np.abs(content[4800:-4800])))  # AAC's first frame overshoots
    assert level == pytest.approx(0.5, abs=0.05)  # level kept
    assert np.max(np.abs(result.windows)) <= 1.0


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000, 96_000])
def test_resampling_keeps_pitch_and_length(tmp_path: Path, rate: int) -> None:
    freq = 1000.0 if rate > 8_000 else 440.0
    samples, duration = load_audio(make_tone(tmp_path / "t.wav", freq=freq, seconds=2, rate=rate))
    assert samples.shape == (2 * SAMPLE_RATE,)
    assert duration == 2.0
    assert dominant_hz(samples) == pytest.approx(freq, abs=1)


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left = tone(440, 2, 44_100, amplitude=0.8)
    right = np.zeros_like(left)
    samples, _ = load_audio(write_audio(tmp_path / "lr.flac", np.stack([left, right], 1), 44_100))
    assert float(np.max(np.abs(samples))) == pytest.approx(0.4, abs=0.01)
    stereo = make_tone(tmp_path / "st.wav", channels=2, seconds=2)
    assert load_audio(stereo)[0] == pytest.approx(tone(440, 2), abs=1e-4)


def test_stereo_through_pyav(tmp_path: Path) -> None:
    path = make_audio_with_pyav(tmp_path / "st.m4a", channels=2, seconds=2)
    samples, duration = load_audio(path)
    assert duration == pytest.approx(2.0, abs=0.05)
    assert dominant_hz(samples) == pytest.approx(440, abs=2)


def test_mp3_written_by_ffmpeg(tmp_path: Path) -> None:
    path = make_audio_with_pyav(tmp_path / "lame.mp3", codec="libmp3lame", seconds=2)
    samples, duration = load_audio(path)
    assert duration == pytest.approx(2.0, abs=0.06)
    assert dominant_hz(samples) == pytest.approx(440, abs=2)


@pytest.mark.parametrize(("real", "named"), [("a.wav", "b.mp3"), ("a.m4a", "b.wav")])
def test_extension_is_only_a_hint(tmp_path: Path, real: str, named: str) -> None:
    source = make_tone(tmp_path / real, seconds=2)
    path = tmp_path / named
    source.rename(path)
    assert dominant_hz(load_audio(path)[0]) == pytest.approx(440, abs=2)


def test_float_beyond_full_scale_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "hot.wav", tone(440, 2, amplitude=2.0), subtype="FLOAT")
    samples, _ = load_audio(path)
    assert float(np.max(np.abs(samples))) == pytest.approx(1.0)
    assert samples == pytest.approx(tone(440, 2, amplitude=1.0), abs=1e-4)


def test_same_file_same_arrays(tmp_path: Path) -> None:
    for name in ("speech.ogg", "speech.m4a"):
        path = make_speechlike(tmp_path / name, seconds=12, rate=44_100, seed=3)
        a, b = decode_audio_file(path), decode_audio_file(path)
        assert np.array_equal(a.windows, b.windows)
        assert a.spans == b.spans and a.duration == b.duration


def test_sound_track_of_a_video(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip.mp4", seconds=3, audio_freq=660)
    with av.open(str(path)) as container:
        samples, duration = load_audio_stream(container, container.streams.audio[0])
    assert duration == pytest.approx(3.0, abs=0.05)
    assert dominant_hz(samples) == pytest.approx(660, abs=2)
    with av.open(str(path)) as container:
        capped, duration = load_audio_stream(
            container, container.streams.audio[0], max_duration_s=1.0
        )
    assert capped.shape == (SAMPLE_RATE,)
    assert duration == pytest.approx(3.0, abs=0.05)


# --- windows -------------------------------------------------------------------------------------


def test_window_of_a_3_second_clip_is_repeat_padded() -> None:
    x = speechlike(3.0)
    result = window_audio(x)
    assert result.windows.shape == (1, W)
    assert result.spans == [(0.0, 3.0)]
    assert result.duration == 3.0
    row = result.windows[0]
    n = x.shape[0]
    for k in range(3):  # 10 // 3 = 3 whole copies, then zeros
        assert np.array_equal(row[k * n : (k + 1) * n], x)
    assert not row[3 * n :].any()


def test_window_of_exactly_10_seconds_is_the_content() -> None:
    x = noise(10.0)
    result = window_audio(x)
    assert result.spans == [(0.0, 10.0)]
    assert np.array_equal(result.windows[0], x)


def test_windows_of_a_25_second_clip() -> None:
    x = noise(25.0)
    result = window_audio(x)
    assert result.spans == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    assert np.array_equal(result.windows[0], x[:W])
    assert np.array_equal(result.windows[1], x[W : 2 * W])
    tail = x[2 * W :]
    assert np.array_equal(result.windows[2], np.concatenate([tail, tail]))  # 2 copies, no zeros


@pytest.mark.parametrize(
    ("seconds", "spans"),
    [
        (10.5, [(0.0, 10.0)]),  # the 0.5 s tail is dropped
        (10.99, [(0.0, 10.0)]),
        (11.0, [(0.0, 10.0), (10.0, 11.0)]),  # a 1 s tail is kept
        (0.05, [(0.0, 0.05)]),  # any clip shorter than a window gives one window
    ],
)
def test_short_tails_are_dropped(seconds: float, spans: list[tuple[float, float]]) -> None:
    result = window_audio(tone(440, seconds))
    assert len(result.spans) == len(spans)
    for got, want in zip(result.spans, spans, strict=True):
        assert got == pytest.approx(want)
    assert result.duration == pytest.approx(seconds)


def test_a_4_second_clip_tiles_twice() -> None:
    x = speechlike(4.0)
    row = window_audio(x).windows[0]
    assert np.array_equal(row[: 2 * x.shape[0]], np.tile(x, 2))
    assert not row[2 * x.shape[0] :].any()


def test_overlapping_hop() -> None:
    result = window_audio(noise(25.0), hop_s=5.0)
    assert result.spans == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0)]
    result = window_audio(noise(12.5), hop_s=5.0)  # the window at 5 s adds 2.5 s: kept
    assert result.spans == [(0.0, 10.0), (5.0, 12.5)]


def test_window_audio_rejects_nothing_and_bad_shapes() -> None:
    with pytest.raises(MediaError):
        window_audio(np.zeros(0, np.float32))
    with pytest.raises(ValueError):
        window_audio(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError):
        window_audio(tone(), hop_s=0)


@pytest.mark.parametrize(("seconds", "count"), [(3, 1), (10, 1), (25, 3)])
def test_file_windows(tmp_path: Path, seconds: float, count: int) -> None:
    path = make_noise(tmp_path / "n.flac", seconds=seconds, rate=32_000)
    result = decode_audio_file(path)
    assert result.windows.shape == (count, W)
    assert result.spans[-1] == pytest.approx((10.0 * (count - 1), float(seconds)))
    assert result.duration == pytest.approx(seconds)


# --- bounded cost --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["long.wav", "long.ogg", "long.m4a", "long.wma"])
def test_max_duration_bounds_the_work(tmp_path: Path, name: str) -> None:
    path = make_tone(tmp_path / name, seconds=180, rate=8_000, amplitude=0.3)  # 8 kHz: quick
    began = time.perf_counter()
    result = decode_audio_file(path, max_duration_s=30)
    took = time.perf_counter() - began
    assert result.windows.shape == (3, W)
    assert result.spans == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    assert result.duration == pytest.approx(180.0, abs=0.1)  # the whole file's, from metadata
    assert took < 2.0
    partial = decode_audio_file(path, max_duration_s=25)
    assert partial.spans[-1] == (20.0, 25.0)


def test_an_hour_long_file_costs_what_its_cap_allows(tmp_path: Path) -> None:
    path = tmp_path / "hour.wav"
    second = (tone(440, 1.0, 8_000) * 127).astype(np.int16).repeat(1)
    import soundfile as sf

    with sf.SoundFile(path, "w", 8_000, 1, subtype="PCM_U8", format="WAV") as f:
        block = np.tile(second, 60).astype(np.float32) / 127 * 0.5
        for _ in range(60):
            f.write(block)
    began = time.perf_counter()
    result = decode_audio_file(path, max_duration_s=20)
    assert time.perf_counter() - began < 1.0
    assert result.windows.shape == (2, W)
    assert result.duration == pytest.approx(3600.0)


def test_invalid_caps() -> None:
    with pytest.raises(ValueError):
        load_audio("whatever.wav", max_duration_s=0)
    with pytest.raises(ValueError):
        load_audio("whatever.wav", sample_rate=0)


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.wav", "empty.mp3", "empty.m4a"])
def test_zero_byte_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"")
    assert reason_of(tmp_path / name) == "empty file"


@pytest.mark.parametrize("name", ["noise.wav", "noise.mp3", "noise.flac", "noise.m4a"])
def test_random_bytes_are_not_audio(tmp_path: Path, name: str) -> None:
    assert reason_of(make_random_bytes(tmp_path / name)) == "not audio (unrecognised format)"


def test_a_text_file_named_mp3(tmp_path: Path) -> None:
    path = make_text_file(tmp_path / "song.mp3", "this is not a song\n" * 200)
    assert reason_of(path) == "not audio (unrecognised format)"


def test_a_png_named_mp3(tmp_path: Path) -> None:
    assert reason_of(make_png_named(tmp_path / "song.mp3")) == "not audio (unrecognised format)"


@pytest.mark.parametrize("name", ["cut.wav", "cut.flac", "cut.mp3", "cut.ogg", "cut.m4a"])
def test_truncated_files_keep_what_decodes(tmp_path: Path, name: str) -> None:
    """A file cut in half decodes to about its first half (as a player would play it)."""
    whole = tmp_path / f"whole{Path(name).suffix}"
    if name.endswith(".m4a"):  # index first: an mp4 cut in half still has it
        make_audio_with_pyav(whole, seconds=24, rate=44_100, options={"movflags": "faststart"})
    else:
        make_tone(whole, seconds=24, rate=44_100)
    path = make_truncated(whole, tmp_path / name, keep=0.5)
    result = decode_audio_file(path)
    end = result.spans[-1][1]
    assert 6.0 < end < 18.0
    assert result.duration == pytest.approx(end, abs=0.1)  # what is there, not the header's claim
    assert dominant_hz(result.windows[0]) == pytest.approx(440, abs=2)


def test_an_mp4_cut_before_its_index_is_corrupt(tmp_path: Path) -> None:
    whole = make_tone(tmp_path / "whole.m4a", seconds=5)  # FFmpeg writes the index last
    path = make_truncated(whole, tmp_path / "cut.m4a", keep=0.5)
    assert reason_of(path).startswith("truncated or corrupt audio: ")


@pytest.mark.parametrize("name", ["head.wav", "head.flac", "head.ogg", "head.mp3", "head.m4a"])
def test_files_cut_to_their_header_fail_clearly(tmp_path: Path, name: str) -> None:
    whole = make_tone(tmp_path / f"whole{Path(name).suffix}", seconds=3)
    path = make_truncated(whole, tmp_path / name, keep=40 / whole.stat().st_size)
    assert reason_of(path) in {
        "no audio samples",
        "not audio (unrecognised format)",
    } or reason_of(path).startswith("truncated or corrupt audio: ")


def test_silence(tmp_path: Path) -> None:
    assert reason_of(make_silence(tmp_path / "zero.wav")) == "silent audio"
    faint = write_audio(tmp_path / "faint.flac", tone(440, 2, amplitude=5e-5), subtype="PCM_24")
    assert reason_of(faint) == "silent audio"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_infinite_samples(tmp_path: Path, value: float) -> None:
    path = make_nan_wav(tmp_path / "nan.wav", value=value)
    assert reason_of(path) == "audio contains NaN or infinite samples"


def test_wav_with_no_frames(tmp_path: Path) -> None:
    assert reason_of(make_empty_wav(tmp_path / "none.wav")) == "no audio samples"


def test_video_without_sound(tmp_path: Path) -> None:
    assert reason_of(make_video(tmp_path / "mute.mp4")) == "no audio stream"


def test_missing_or_unreadable(tmp_path: Path) -> None:
    assert reason_of(tmp_path / "gone.wav").startswith("cannot read file")
    assert reason_of(tmp_path).startswith("cannot read file")  # a directory
    if os.geteuid() != 0:
        path = make_tone(tmp_path / "locked.wav")
        path.chmod(0)
        assert reason_of(path).startswith("cannot read file")


# --- CLAP's feature extractor (needs transformers, which imports torch: slow) -------------------


@pytest.mark.slow
def test_windows_are_what_clap_would_make_of_the_clip() -> None:
    fe_module = pytest.importorskip("transformers.models.clap.feature_extraction_clap")
    extractor = fe_module.ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    for seconds in (0.3, 3.0, 7.7):
        clip = speechlike(seconds, seed=1)
        ours = window_audio(clip).windows[0]
        want = extractor(clip, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]
        got = extractor(ours, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]
        assert np.array_equal(got, want)
    windows = list(window_audio(speechlike(25.0)).windows)
    first = extractor(windows, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]
    again = extractor(windows, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]
    assert np.array_equal(first, again)  # no random crop


@pytest.mark.parametrize("rate", [1, 7, 100, 10**9])
def test_a_damaged_header_claiming_an_absurd_rate(tmp_path: Path, rate: int) -> None:
    data = bytearray(make_tone(tmp_path / "ok.wav", seconds=2).read_bytes())
    data[24:28] = struct.pack("<I", rate)  # the WAV fmt chunk's sample rate
    (tmp_path / "odd.wav").write_bytes(bytes(data))
    assert reason_of(tmp_path / "odd.wav") == f"unsupported sample rate: {rate} Hz"


@pytest.mark.parametrize(
    ("seconds", "cap"), [(3, 3600), (10.5, 3600), (25, 3600), (25, 15), (12, 11.4)]
)
def test_decode_audio_file_is_window_audio_of_load_audio(
    tmp_path: Path, seconds: float, cap: float
) -> None:
    """decode_audio_file windows in place; the result is the same as the two public steps."""
    path = make_noise(tmp_path / "n.flac", seconds=seconds, rate=44_100)
    direct = decode_audio_file(path, max_duration_s=cap)
    samples, duration = load_audio(path, max_duration_s=cap)
    steps = window_audio(samples, duration=duration)
    assert np.array_equal(direct.windows, steps.windows)
    assert direct.spans == steps.spans
    assert direct.duration == steps.duration == pytest.approx(seconds)
    assert direct.windows.flags.c_contiguous


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.wav")
    assert reason_of(tmp_path / "pipe.wav") == "not a regular file"
