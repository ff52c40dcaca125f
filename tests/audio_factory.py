"""Generators of real test audio, video and text files, for any test: `make_xxx(path, ...) -> Path`.

Everything is deterministic (seeded) and small unless asked otherwise. Sound is written with
soundfile (wav, flac, ogg/vorbis, mp3, aiff: chosen by extension) or PyAV (m4a/aac, opus, wma, and
whatever `make_audio_with_pyav` is asked for). Signals are float32 arrays shaped (frames, channels).
"""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import av
import av.audio.stream
import av.container
import media_factory
import numpy as np
import soundfile as sf
from media_factory import make_truncated as make_truncated  # re-exported for audio tests

# Extensions soundfile writes here (libsndfile ≥ 1.1 writes MP3); the rest go through PyAV.
SOUNDFILE_FORMATS = {
    ".wav": "WAV",
    ".flac": "FLAC",
    ".ogg": "OGG",
    ".oga": "OGG",
    ".mp3": "MP3",
    ".aif": "AIFF",
    ".aiff": "AIFF",
}
# extension → (PyAV container format, codec)
PYAV_FORMATS = {
    ".m4a": ("mp4", "aac"),
    ".mp4": ("mp4", "aac"),
    ".aac": ("adts", "aac"),
    ".opus": ("ogg", "libopus"),
    ".mp3": ("mp3", "libmp3lame"),
    ".wma": ("asf", "wmav2"),
    ".mka": ("matroska", "flac"),
}


# --- signals -------------------------------------------------------------------------------------


def tone(
    freq: float = 440.0, seconds: float = 3.0, rate: int = 48_000, amplitude: float = 0.5
) -> np.ndarray:
    """A sine wave, float32 (frames,)."""
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(
    seconds: float = 3.0, rate: int = 48_000, amplitude: float = 0.3, seed: int = 0
) -> np.ndarray:
    """Gaussian white noise clipped to ±1, float32 (frames,)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(round(seconds * rate)) * amplitude
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def speechlike(seconds: float = 3.0, rate: int = 48_000, seed: int = 0) -> np.ndarray:
    """A voice-like signal: a gliding glottal pulse train through three formant resonances,
    switched on and off in syllables. Deterministic by seed; peak 0.8."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    f0 = 120.0 + 30.0 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t)  # pitch glide
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = [(rng.uniform(500, 800), 150), (rng.uniform(1000, 1800), 200),
                (rng.uniform(2300, 3000), 250)]  # fmt: skip
    out = np.zeros(n)
    for k in range(1, 30):  # harmonics of the pulse train, weighted by the formants at 120 Hz
        gain = sum(np.exp(-(((k * 120.0 - f) / w) ** 2)) for f, w in formants) + 0.02
        out += gain / k**0.5 * np.sin(k * phase)
    syllable = rng.uniform(3.0, 5.0)  # syllables per second
    out *= np.clip(np.sin(np.pi * syllable * t) ** 2 * 1.4, 0.0, 1.0)
    out += 0.003 * rng.standard_normal(n)  # breath
    return (0.8 * out / np.max(np.abs(out))).astype(np.float32)


# --- writers -------------------------------------------------------------------------------------


def write_audio(
    path: str | Path, samples: np.ndarray, rate: int = 48_000, subtype: str | None = None
) -> Path:
    """Write float samples (frames,) or (frames, channels); the extension picks the format.

    soundfile for the formats it writes (in blocks: libsndfile crashes writing long OGG files in
    one call), PyAV otherwise. `subtype` is soundfile's ("PCM_16", "PCM_24", "FLOAT", ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = samples if samples.ndim == 2 else samples[:, None]
    ext = path.suffix.lower()
    if ext not in SOUNDFILE_FORMATS or SOUNDFILE_FORMATS[ext] not in sf.available_formats():
        return make_audio_with_pyav(path, samples=data, rate=rate)
    fmt = SOUNDFILE_FORMATS[ext]
    with sf.SoundFile(path, "w", rate, data.shape[1], subtype=subtype, format=fmt) as f:
        for start in range(0, data.shape[0], rate):
            f.write(data[start : start + rate])
    return path


def make_tone(
    path: str | Path,
    freq: float = 440.0,
    seconds: float = 3.0,
    rate: int = 48_000,
    channels: int = 1,
    subtype: str | None = None,
    amplitude: float = 0.5,
) -> Path:
    """A sine tone, the same in every channel."""
    x = tone(freq, seconds, rate, amplitude)
    return write_audio(path, np.repeat(x[:, None], channels, axis=1), rate, subtype)


def make_noise(
    path: str | Path,
    seconds: float = 3.0,
    rate: int = 48_000,
    seed: int = 0,
    amplitude: float = 0.3,
    subtype: str | None = None,
) -> Path:
    return write_audio(path, noise(seconds, rate, amplitude, seed), rate, subtype)


def make_speechlike(
    path: str | Path,
    seconds: float = 3.0,
    rate: int = 48_000,
    seed: int = 0,
    subtype: str | None = None,
) -> Path:
    return write_audio(path, speechlike(seconds, rate, seed), rate, subtype)


def make_silence(
    path: str | Path, seconds: float = 3.0, rate: int = 48_000, subtype: str | None = None
) -> Path:
    """All-zero samples."""
    return write_audio(path, np.zeros(round(seconds * rate), np.float32), rate, subtype)


def make_nan_wav(
    path: str | Path, seconds: float = 3.0, rate: int = 48_000, value: float = float("nan")
) -> Path:
    """A float WAV of a tone with a run of NaN (or `value`: inf) samples in the middle."""
    x = tone(440.0, seconds, rate)
    mid = x.shape[0] // 2
    x[mid : mid + 100] = value
    return write_audio(path, x, rate, "FLOAT")


def make_empty_wav(path: str | Path, rate: int = 48_000) -> Path:
    """A valid WAV header with 0 frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16", format="WAV"):
        pass
    return path


def make_audio_with_pyav(
    path: str | Path,
    codec: str | None = None,
    *,
    freq: float = 440.0,
    seconds: float = 3.0,
    rate: int = 48_000,
    channels: int = 1,
    samples: np.ndarray | None = None,
    container_format: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode a tone (or `samples`, (frames,) or (frames, channels) float at `rate`) with FFmpeg.

    The extension picks container and codec (`PYAV_FORMATS`: m4a/aac, opus, mp3, wma, ...) unless
    `codec` / `container_format` say otherwise; `options` go to the muxer (e.g.
    {"movflags": "faststart"}: the mp4 index before the data). Opus is always encoded at 48 kHz.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    default_format, default_codec = PYAV_FORMATS.get(path.suffix.lower(), (None, "aac"))
    if samples is None:
        samples = np.repeat(tone(freq, seconds, rate)[:, None], channels, axis=1)
    data = samples if samples.ndim == 2 else samples[:, None]
    fmt = container_format or default_format
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        stream = _add_audio_stream(out, codec or default_codec, data.shape[1], rate)
        _encode_audio(out, stream, data, rate)
    return path


def _add_audio_stream(
    out: av.container.OutputContainer, codec: str, channels: int, rate: int
) -> av.audio.stream.AudioStream:
    layout = "mono" if channels == 1 else "stereo"
    enc_rate = 48_000 if codec in ("libopus", "opus") else rate
    stream = out.add_stream(codec, rate=enc_rate, layout=layout)
    stream.bit_rate = 96_000  # some encoders (wmav2) refuse to open without one
    return stream


def _encode_audio(
    out: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    data: np.ndarray,
    rate: int,
) -> None:
    """Encode float `data` (frames, channels) sampled at `rate` into `stream`."""
    layout = "mono" if data.shape[1] == 1 else "stereo"
    ctx = stream.codec_context
    resampler = av.AudioResampler(format=ctx.format.name, layout=layout, rate=ctx.sample_rate)
    step = ctx.frame_size or 1024
    packed = np.ascontiguousarray(data, dtype=np.float32)
    for start in range(0, packed.shape[0], step):
        block = packed[start : start + step]
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for converted in resampler.resample(frame):
            out.mux(stream.encode(converted))
    for converted in resampler.resample(None):
        out.mux(stream.encode(converted))
    out.mux(stream.encode(None))


def make_video(
    path: str | Path,
    seconds: float = 2.0,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    *,
    audio_freq: float | None = None,
    audio_rate: int = 44_100,
    audio_codec: str = "aac",
    video_codec: str = "mpeg4",
    container_format: str | None = None,
) -> Path:
    """A small video: each frame a flat colour that changes every second (frame i at i/fps s).

    With `audio_freq`, a sound track holding a tone of that frequency for the whole duration;
    without it, a file with a video stream only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    with av.open(str(path), "w", format=container_format) as out:
        vstream = out.add_stream(video_codec, rate=fps)
        vstream.width, vstream.height = width, height
        vstream.pix_fmt = "yuv420p"
        astream = None
        if audio_freq is not None:  # every stream must exist before the first packet is written
            astream = _add_audio_stream(out, audio_codec, 1, audio_rate)
        for i in range(round(seconds * fps)):
            second = i // fps
            rgb = np.empty((height, width, 3), np.uint8)
            rgb[...] = ((second * 67) % 256, (second * 131 + 40) % 256, (second * 29 + 90) % 256)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(vstream.encode(frame))
        out.mux(vstream.encode(None))
        if astream is not None and audio_freq is not None:
            _encode_audio(out, astream, tone(audio_freq, seconds, audio_rate)[:, None], audio_rate)
    return path


# --- broken files --------------------------------------------------------------------------------


def make_random_bytes(path: str | Path, size: int = 50_000, seed: int = 0) -> Path:
    return media_factory.make_random_bytes(path, size=size, seed=seed)


# --- text ----------------------------------------------------------------------------------------

WORDS = tuple(
    """the of and a to in is you that it he was for on are as with his they I at be this have from
    or one had by word but not what all were we when your can said there use an each which she do
    how their if will up other about out many then them these so some her would make like him into
    time has look two more write go see number no way could people my than first water been call who
    oil its now find long down day did get come made may part river mountain dog barking tax return
    2023 invoice café naïve ünïcode 東京 привет""".split()  # noqa: SIM905 - a readable word list
)


def random_words(count: int, seed: int = 0) -> list[str]:
    """`count` words drawn (with a fixed seed) from a small vocabulary, some non-ASCII."""
    rng = random.Random(seed)
    return [rng.choice(WORDS) for _ in range(count)]


def random_text(words: int = 200, seed: int = 0, max_words_per_line: int = 12) -> str:
    """Random words on lines of 0..max words (blank lines included), with messy spacing."""
    rng = random.Random(seed)
    pool = random_words(words, seed)
    lines: list[str] = []
    i = 0
    while i < len(pool):
        k = rng.randint(0, max_words_per_line)
        seps = [rng.choice((" ", "  ", "\t", " \t ")) for _ in range(k)]
        line = "".join(s + w for s, w in zip(seps, pool[i : i + k], strict=False))
        lines.append(line if rng.random() < 0.5 else line.strip())
        i += k
    return "\n".join(lines) + ("\n" if rng.random() < 0.5 else "")


def make_text_file(
    path: str | Path,
    text: str,
    encoding: str = "utf-8",
    bom: bool = False,
    newline: str = "\n",
) -> Path:
    """Write `text` with `encoding` ("utf-8", "utf-16-le", "utf-16-be", "latin-1", ...),
    optionally preceded by that encoding's byte-order mark, with "\\n" replaced by `newline`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    boms = {"utf-8": b"\xef\xbb\xbf", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}
    data = text.replace("\n", newline).encode(encoding)
    path.write_bytes((boms[encoding] if bom else b"") + data)
    return path


def make_numbered_lines(path: str | Path, lines: int = 10, words_per_line: int = 3) -> Path:
    """Line i (1-based) holds words "l{i}w1 l{i}w2 ...": every word names its own line."""
    text = "\n".join(
        " ".join(f"l{i}w{j}" for j in range(1, words_per_line + 1)) for i in range(1, lines + 1)
    )
    return make_text_file(path, text + "\n")


def make_png_named(path: str | Path) -> Path:
    """A real (tiny) PNG file under any name, e.g. notes.txt."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    path = Path(path)
    path.write_bytes(buf.getvalue())
    return path
