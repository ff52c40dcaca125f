"""Audio decoding: a sound file (or a video's sound track) → fixed 10 s windows for CLAP.

Runs inside decode worker processes, so it stays light: numpy, soundfile (libsndfile), soxr and
PyAV, never torch. Every failure caused by the input becomes a `MediaError` with a short reason.

Pipeline: decode to mono float32 (channels averaged) → resample to 48 kHz → cut into windows of
exactly `WINDOW_S` seconds that CLAP's feature extractor takes as they are (no random crop, no
padding of its own), so the same file always gives the same embeddings.

- Decoders: libsndfile first (wav, flac, ogg/vorbis, ogg/opus, mp3, aiff, ... judged by content,
  never by extension), resampled with soxr at librosa's `soxr_hq` quality (the same library and
  setting as `librosa.resample(res_type="soxr_hq")`, streamed block by block); whatever libsndfile
  cannot open or decodes to nothing (m4a/aac, wma, truncated ogg, ...) goes through PyAV/FFmpeg,
  resampled and downmixed by `av.AudioResampler` (swresample).
- Bounded cost: decoding stops after `max_duration_s` seconds; only that part is windowed, while
  the reported duration is the whole file's (from the container's metadata when decoding stopped
  early, else the decoded length, which is the truth for truncated files).
- Truncated or partly corrupt files: the part that decodes is kept (as a player would play it);
  a file of which nothing decodes is a `MediaError("truncated or corrupt audio: ...")`.
- Samples beyond ±1 (float files, resampling overshoot) are scaled down into [-1, 1], not clipped.

libsndfile (through mpg123) and FFmpeg may write warnings to stderr; decode workers redirect it.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.audio.stream
import av.container
import numpy as np
import soundfile as sf  # type: ignore[import-untyped]
import soxr  # type: ignore[import-untyped]

from mmfind.config import DEFAULT_MAX_DURATION_S
from mmfind.errors import MediaError

SAMPLE_RATE = 48_000  # CLAP's rate
WINDOW_S = 10.0  # fixed windows, CLAP's input length
HOP_S = 10.0  # documented hop: windows do not overlap
MIN_TAIL_S = 1.0  # a trailing partial window adding less new sound than this is dropped
MIN_SOURCE_RATE, MAX_SOURCE_RATE = 1_000, 2_000_000  # Hz; outside: a damaged header, refused
SILENCE_PEAK = 1e-4  # a decoded part whose peak stays below this is "silent audio"

_BLOCK_FRAMES = 1 << 16  # libsndfile read size: bounded memory per step, identical every run
_MAX_PREALLOC = 1 << 28  # samples made room for on the metadata's word alone (1 GiB)
_SOXR_QUALITY = "HQ"  # = librosa's default res_type "soxr_hq"


@dataclass
class AudioWindows:
    """A file's sound cut into model-ready windows."""

    windows: np.ndarray  # float32 (N, round(WINDOW_S * SAMPLE_RATE)), mono, in [-1, 1]
    spans: list[tuple[float, float]]  # (start_s, end_s) of the real content in each window
    duration: float  # duration of the whole file/stream in seconds (even beyond max)


def decode_audio_file(
    path: str | os.PathLike[str], *, max_duration_s: float = DEFAULT_MAX_DURATION_S
) -> AudioWindows:
    """Decode a sound file (its first `max_duration_s` seconds) into CLAP windows.

    The same windows as `window_audio(*load_audio(path))`, with half the memory: samples are
    decoded straight into the rows of the windows array (an hour at 48 kHz is 0.7 GB once).
    """
    width = round(WINDOW_S * SAMPLE_RATE)
    decoded = _load(path, SAMPLE_RATE, max_duration_s, pad_to=width)
    buffer, n = decoded.samples.data, decoded.samples.n
    starts = _window_starts(n, width, width, round(MIN_TAIL_S * SAMPLE_RATE))
    windows = buffer[: len(starts) * width].reshape(len(starts), width)  # a view, no copy
    last = n - starts[-1]
    if last < width:
        _repeat_pad(windows[-1], last)
    spans = [(s / SAMPLE_RATE, min(s + width, n) / SAMPLE_RATE) for s in starts]
    return AudioWindows(windows=windows, spans=spans, duration=decoded.duration)


def load_audio(
    source: str | os.PathLike[str],
    *,
    sample_rate: int = SAMPLE_RATE,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
) -> tuple[np.ndarray, float]:
    """Decode a file to mono float32 at `sample_rate` (at most `max_duration_s` of it).

    Returns (samples, duration of the whole file in seconds). Content decides the decoder, the
    extension is never trusted: libsndfile first, PyAV for what it cannot open or decode. Raises
    `MediaError` for every input that yields no usable sound.
    """
    decoded = _load(source, sample_rate, max_duration_s, pad_to=1)
    return decoded.samples.view(), decoded.duration


def load_audio_stream(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    *,
    sample_rate: int = SAMPLE_RATE,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
) -> tuple[np.ndarray, float]:
    """`load_audio` for an audio stream of an open PyAV container (a video's sound track).

    Decodes from the container's current position (open it fresh or seek to 0 first); packets of
    other streams are read past, never decoded. Sample 0 is the stream's first decoded sample (its
    start time, usually 0 or a few ms, is not added). The container stays open.
    """
    _check_args(sample_rate, max_duration_s)
    try:
        decoded = _load_av(container, stream, sample_rate, max_duration_s, pad_to=1)
    except MediaError:
        raise
    except Exception as exc:  # whatever else a damaged file provokes: never a crash
        raise _corrupt(exc) from exc
    _finish(decoded)
    return decoded.samples.view(), decoded.duration


def window_audio(
    samples: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    window_s: float = WINDOW_S,
    hop_s: float = HOP_S,
    duration: float | None = None,
) -> AudioWindows:
    """Cut mono samples into fixed windows of `window_s` seconds starting every `hop_s` seconds.

    Deterministic, and every window is exactly `round(window_s * sample_rate)` samples long, so
    CLAP's feature extractor never pads or crops (randomly) by itself:
    - windows start at 0, hop, 2·hop, ...; a window reaching past the end holds the remaining
      content padded the way CLAP's "repeatpad" does (the content tiled as many whole times as
      fits, then zeros), and its span ends where the real content ends;
    - a clip shorter than one window gives one such padded window;
    - after at least one window, a trailing partial window is dropped when the new sound it would
      add (beyond the end of the window before it) is shorter than `MIN_TAIL_S` (1 s): a 10.5 s
      file gives one window (0–10 s), an 11 s file two (0–10 s, 10–11 s).
    `duration` defaults to the samples' length in seconds.
    """
    if window_s <= 0 or hop_s <= 0 or sample_rate <= 0:
        raise ValueError("window_s, hop_s and sample_rate must be positive")
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"want mono samples (1-D), got shape {samples.shape}")
    n = samples.shape[0]
    if n == 0:
        raise MediaError("no audio samples")
    width = round(window_s * sample_rate)
    hop = max(1, round(hop_s * sample_rate))
    starts = _window_starts(n, width, hop, round(MIN_TAIL_S * sample_rate))
    windows = np.zeros((len(starts), width), dtype=np.float32)
    spans: list[tuple[float, float]] = []
    for row, start in enumerate(starts):
        content = samples[start : start + width]
        windows[row, : content.shape[0]] = content
        if content.shape[0] < width:
            _repeat_pad(windows[row], content.shape[0])
        spans.append((start / sample_rate, (start + content.shape[0]) / sample_rate))
    total = n / sample_rate if duration is None else duration
    return AudioWindows(windows=windows, spans=spans, duration=total)


def _window_starts(n: int, width: int, hop: int, min_tail: int) -> list[int]:
    """Where the windows over `n` samples start (see `window_audio`)."""
    starts = [0]
    while starts[-1] + width < n:
        nxt = starts[-1] + hop
        if nxt + width > n and n - (starts[-1] + width) < min_tail:
            break
        starts.append(nxt)
    return starts


def _repeat_pad(row: np.ndarray, length: int) -> None:
    """In place: `row[:length]` tiled as many whole times as fits, then zeros.

    transformers' ClapFeatureExtractor, padding="repeatpad": np.tile(x, n // len(x)), zero-padded.
    """
    copies = row.shape[0] // length
    row[length : copies * length] = np.tile(row[:length], copies - 1)
    row[copies * length :] = 0.0


def _load(
    source: str | os.PathLike[str], sample_rate: int, max_duration_s: float, pad_to: int
) -> _Decoded:
    _check_args(sample_rate, max_duration_s)
    path = os.fspath(source)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise MediaError(f"cannot read file: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise MediaError("cannot read file: Is a directory")
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the worker forever
        raise MediaError("not a regular file")
    if info.st_size == 0:
        raise MediaError("empty file")
    try:  # a permission problem reads better from open() than from either library
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise MediaError(f"cannot read file: {exc.strerror or exc}") from exc

    sf_result: _Decoded | None = None
    sf_failure: MediaError | None = None
    try:
        sf_result = _load_soundfile(path, sample_rate, max_duration_s, pad_to)
    except _Unopenable:
        pass
    except _NothingDecoded as exc:  # opened but empty or broken at once: FFmpeg may do better
        sf_failure = exc.error
    except MediaError:
        raise
    except Exception as exc:  # whatever else a damaged file provokes: never a crash
        sf_failure = _corrupt(exc)
    if sf_result is not None and not sf_result.partial:
        return _finish(sf_result)

    # libsndfile could not open it, got nothing, or stopped at an error: FFmpeg's turn
    try:
        av_result = _load_av_file(path, head, sample_rate, max_duration_s, pad_to)
    except Exception as exc:  # a MediaError, or whatever else a damaged file provokes
        if sf_result is not None:  # FFmpeg does no better than libsndfile's partial decode
            return _finish(sf_result)
        error = exc if isinstance(exc, MediaError) else _corrupt(exc)
        if sf_failure is not None and not error.reason.startswith("truncated or corrupt"):
            raise sf_failure from exc  # libsndfile knew it for audio: its reason says more
        raise error from exc
    if sf_result is not None and sf_result.samples.n >= av_result.samples.n:
        return _finish(sf_result)
    return _finish(av_result)


class _Buffer:
    """Decoded samples written straight into one float32 array, never a list of chunks joined at
    the end: room for `expected` samples is made at once (zeros, which the OS commits only when
    written), more only when a file holds more than its metadata said. The room is a whole number
    of `pad_to` blocks; samples past `limit` are dropped."""

    def __init__(self, limit: int, expected: int, pad_to: int) -> None:
        self.limit, self.pad_to, self.n = limit, pad_to, 0
        room = min(max(expected, 1), limit, _MAX_PREALLOC)  # metadata may lie
        self.data = np.zeros(self._room(room), dtype=np.float32)

    def _room(self, n: int) -> int:
        return -(-n // self.pad_to) * self.pad_to

    @property
    def full(self) -> bool:
        return self.n >= self.limit

    def append(self, block: np.ndarray) -> None:
        end = min(self.n + block.shape[0], self.limit)
        if end <= self.n:
            return
        if end > self.data.shape[0]:
            grown = np.zeros(
                self._room(min(max(end, 2 * self.data.shape[0]), self.limit)), np.float32
            )
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : end] = block[: end - self.n]
        self.n = end

    def view(self) -> np.ndarray:
        return self.data[: self.n]


@dataclass
class _Decoded:
    samples: _Buffer
    duration: float
    partial: bool = False  # decoding stopped at an error: another decoder may get further


# --- libsndfile -----------------------------------------------------------------------------------


class _Unopenable(Exception):
    """libsndfile does not recognise the file."""


class _NothingDecoded(Exception):
    """libsndfile opened the file but got no samples out of it."""

    def __init__(self, error: MediaError) -> None:
        super().__init__(error.reason)
        self.error = error


def _load_soundfile(path: str, sample_rate: int, max_duration_s: float, pad_to: int) -> _Decoded:
    try:
        f = sf.SoundFile(path)
    except Exception as exc:  # LibsndfileError (a RuntimeError), TypeError on odd headers, ...
        raise _Unopenable from exc
    with f:
        rate = int(f.samplerate)
        frames = int(f.frames)
        if f.channels <= 0:
            raise _NothingDecoded(MediaError("truncated or corrupt audio: no channels"))
        _check_source_rate(rate)
        cap_in = _cap(max_duration_s, rate)
        expected = math.ceil(min(frames, cap_in) * sample_rate / rate) + 1
        out = _Buffer(_cap(max_duration_s, sample_rate), expected, pad_to)
        try:
            resample = _resampler(rate, sample_rate)
        except Exception as exc:
            raise _NothingDecoded(_corrupt(exc)) from exc
        read = 0
        error: BaseException | None = None
        try:
            while read < cap_in:
                block = f.read(min(_BLOCK_FRAMES, cap_in - read), dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
                if not np.isfinite(mono).all():
                    raise MediaError("audio contains NaN or infinite samples")
                read += block.shape[0]
                out.append(resample(mono))
        except MediaError:
            raise
        except Exception as exc:  # decoder errors mid-file: keep what decoded before them
            error = exc
        if read == 0:
            raise _NothingDecoded(_corrupt(error) if error else MediaError("no audio samples"))
        out.append(resample(None))
        capped = read >= cap_in and frames > read
    duration = max(frames, read) / rate if capped else read / rate
    return _Decoded(out, duration, partial=error is not None)


def _resampler(rate: int, sample_rate: int) -> Callable[[np.ndarray | None], np.ndarray]:
    """Streaming soxr resampling; called with None once at the end to flush."""
    empty = np.zeros(0, dtype=np.float32)
    if rate == sample_rate:
        return lambda block: empty if block is None else block
    stream = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality=_SOXR_QUALITY)

    def resample(block: np.ndarray | None) -> np.ndarray:
        last = block is None
        return np.asarray(stream.resample_chunk(empty if last else block, last=last), np.float32)

    return resample


# --- PyAV / FFmpeg --------------------------------------------------------------------------------


def _load_av_file(
    path: str, head: bytes, sample_rate: int, max_duration_s: float, pad_to: int
) -> _Decoded:
    """Decode with FFmpeg. `head` (the file's first bytes) tells a damaged file of a known
    container apart from something that is not audio at all, which FFmpeg may still open when
    its extension names a format (random bytes named .flac open as a flac stream of 0 Hz)."""
    known = _known_container(head)
    not_audio = MediaError("not audio (unrecognised format)")
    try:
        container = av.open(path, mode="r")
    except Exception as exc:
        if known or not isinstance(exc, av.error.InvalidDataError | av.error.PatchWelcomeError):
            raise _corrupt(exc) from exc
        raise not_audio from exc
    with container:
        if not container.streams.audio:
            if any(v.width > 0 for v in container.streams.video) and not (
                container.format.name in ("image2", "tty")
                or container.format.name.endswith("_pipe")
            ):
                raise MediaError("no audio stream")
            raise not_audio  # a picture, a text file
        stream = container.streams.audio[0]
        try:
            return _load_av(container, stream, sample_rate, max_duration_s, pad_to)
        except MediaError as exc:
            if not known and exc.reason != "audio contains NaN or infinite samples":
                raise not_audio from exc
            raise


def _known_container(head: bytes) -> bool:
    """Whether a file starts like an audio or video container FFmpeg or libsndfile reads."""
    if head[:4] in (b"RIFF", b"RF64", b"BW64", b"FORM", b"fLaC", b"OggS", b".snd", b"caff"):
        return True
    if head[:3] == b"ID3" or head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        return True
    if head[:4] == b"\x1a\x45\xdf\xa3" or head[:8] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11":
        return True  # Matroska/WebM (EBML), ASF (wma/wmv)
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # MPEG audio, ADTS


def _load_av(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    sample_rate: int,
    max_duration_s: float,
    pad_to: int,
) -> _Decoded:
    ctx = stream.codec_context
    if ctx is None:  # FFmpeg has no decoder for it
        raise MediaError("unsupported audio codec")
    if ctx.sample_rate:  # 0: unknown until decoded (FFmpeg then fails or finds it)
        _check_source_rate(ctx.sample_rate)
    declared = _av_duration(container, stream)
    expected = math.ceil(declared * sample_rate) + 1 if declared else 0
    out = _Buffer(_cap(max_duration_s, sample_rate), expected, pad_to)
    try:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
    except Exception as exc:
        raise _corrupt(exc) from exc
    error: BaseException | None = None

    def take(frames: Iterable[av.AudioFrame]) -> None:
        for frame in frames:
            block = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            if not np.isfinite(block).all():
                raise MediaError("audio contains NaN or infinite samples")
            out.append(block)

    try:
        for frame in container.decode(stream):
            take(resampler.resample(frame))
            if out.full:
                break
    except MediaError:
        raise
    except Exception as exc:  # broken packets mid-stream: keep what decoded before them
        error = exc
    capped = out.full
    if not capped:
        try:
            take(resampler.resample(None))
        except MediaError:
            raise
        except Exception as exc:
            error = error or exc
    if out.n == 0:
        raise _corrupt(error) if error is not None else MediaError("no audio samples")
    decoded = out.n / sample_rate
    return _Decoded(out, max(declared or 0.0, decoded) if capped else decoded)


def _av_duration(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> float | None:
    """The stream's (else the container's) declared duration in seconds, if any."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * Fraction(stream.time_base))
    if container.duration is not None:
        return container.duration / av.time_base
    return None


# --- shared ---------------------------------------------------------------------------------------


def _check_args(sample_rate: int, max_duration_s: float) -> None:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not max_duration_s > 0:
        raise ValueError(f"max_duration_s must be positive, got {max_duration_s}")


def _check_source_rate(rate: int) -> None:
    """A damaged header can claim any rate; upsampling from 1 Hz would turn a 2 s file into an
    hour of noise."""
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise MediaError(f"unsupported sample rate: {rate} Hz")


def _cap(max_duration_s: float, rate: int) -> int:
    """Samples in `max_duration_s` at `rate` (a huge number for an infinite cap)."""
    if math.isinf(max_duration_s):
        return 1 << 62
    return max(1, round(max_duration_s * rate))


def _finish(decoded: _Decoded) -> _Decoded:
    """Final checks on decoded samples: something there, finite, audible; scaled into [-1, 1]
    (in place: no copy of an hour of sound)."""
    samples = decoded.samples.view()
    if samples.shape[0] == 0:
        raise MediaError("no audio samples")
    hi, lo = float(samples.max()), float(samples.min())  # NaN propagates: no temporary arrays
    if not (math.isfinite(hi) and math.isfinite(lo)):  # soxr on huge values could overflow
        raise MediaError("audio contains NaN or infinite samples")
    peak = max(hi, -lo)
    if peak < SILENCE_PEAK:
        raise MediaError("silent audio")
    if peak > 1.0:
        samples *= np.float32(1.0 / peak)
        np.clip(samples, -1.0, 1.0, out=samples)  # float rounding may leave 1 + 1 ulp
    return decoded


def _corrupt(exc: BaseException) -> MediaError:
    return MediaError(f"truncated or corrupt audio: {_detail(exc)}")


def _detail(exc: BaseException) -> str:
    text: Any = getattr(exc, "error_string", None) or getattr(exc, "strerror", None)
    if not text:
        arg = exc.args[0] if len(exc.args) == 1 else None
        text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(exc)
    text = str(text).strip().rstrip(".")
    if text.lower().startswith("error : "):
        text = text[8:]
    return text or type(exc).__name__
