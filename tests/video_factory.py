"""Generators of real video (and audio-in-video) files for tests: `make_xxx(path, ...) -> Path`.

Everything is written with PyAV (the FFmpeg bundled in its wheel), deterministic and small. The
default picture of frame `i` is `index_frame(i)`: horizontal black/white bands spelling `i` in
binary, which survives lossy codecs and open_clip's resize/crop, so a test can read back WHICH
frame a decoder returned with `read_index(pixels)`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy as np
from PIL import Image

RGB = tuple[int, int, int]

INDEX_BITS = 10  # frames 0–1023 can be told apart

# Container → (video codecs to try, in order; audio codec)
_DEFAULT_CODECS: dict[str, tuple[tuple[str, ...], str]] = {
    ".mp4": (("libx264", "mpeg4"), "aac"),
    ".m4v": (("libx264", "mpeg4"), "aac"),
    ".mov": (("libx264", "mpeg4"), "aac"),
    ".mkv": (("libx264", "mpeg4"), "aac"),
    ".webm": (("libvpx-vp9", "libvpx"), "libopus"),
    ".avi": (("mpeg4", "mjpeg"), "pcm_s16le"),
    ".ts": (("libx264", "mpeg2video"), "aac"),
    ".mts": (("libx264", "mpeg2video"), "aac"),
    ".mpg": (("mpeg2video", "mpeg1video"), "mp2"),
}
_PIX_FMT = {"mjpeg": "yuvj420p"}


@cache
def encoder_available(codec: str) -> bool:
    """Whether the FFmpeg bundled with PyAV can encode `codec`."""
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        return False
    return True


def default_codec(path: str | Path) -> str | None:
    """The first available video encoder for the container the extension names (None: none)."""
    ext = Path(path).suffix.lower()
    candidates = _DEFAULT_CODECS.get(ext, (("libx264", "mpeg4"), "aac"))[0]
    return next((c for c in candidates if encoder_available(c)), None)


def default_audio_codec(path: str | Path) -> str:
    return _DEFAULT_CODECS.get(Path(path).suffix.lower(), ((), "aac"))[1]


# --- pictures ------------------------------------------------------------------------------------


def index_frame(index: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """Frame `index` as INDEX_BITS horizontal bands, most significant bit on top (white = 1)."""
    w, h = size
    rows = np.zeros((h, 3), np.uint8)
    for bit in range(INDEX_BITS):
        top, bottom = bit * h // INDEX_BITS, (bit + 1) * h // INDEX_BITS
        if (index >> (INDEX_BITS - 1 - bit)) & 1:
            rows[top:bottom] = 255
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows[:, None, :], (h, w, 3))))


def read_index(pixels: np.ndarray) -> int:
    """The frame index `index_frame` drew, read from uint8 HxWx3 pixels of any size (bands span
    the full width and height, so any centre crop or resize of the frame still reads)."""
    h, w = pixels.shape[:2]
    value = 0
    for bit in range(INDEX_BITS):
        centre = int((bit + 0.5) * h / INDEX_BITS)
        band = pixels[centre, w // 4 : 3 * w // 4].astype(np.float32)
        value = (value << 1) | int(band.mean() > 127.5)
    return value


def solid_frame(color: RGB, size: tuple[int, int] = (160, 120)) -> Image.Image:
    return Image.new("RGB", size, color)


# --- videos --------------------------------------------------------------------------------------


def make_video(
    path: str | Path,
    seconds: float = 6.0,
    fps: int | Fraction = 10,
    size: tuple[int, int] = (160, 120),
    codec: str | None = None,
    *,
    with_audio: bool = False,
    frames: Sequence[Image.Image | RGB] | None = None,
    times: Sequence[float] | None = None,
    audio: np.ndarray | None = None,
    audio_rate: int = 48000,
    audio_codec: str | None = None,
    gop: int | None = None,
    rotation: int = 0,
    faststart: bool = False,
    bit_rate: int | None = None,
    encoder_options: dict[str, str] | None = None,
) -> Path:
    """A video file in the container the extension names.

    Frame i shows `frames[i]` (a PIL image, or an RGB colour for a solid frame) when `frames` is
    given, else `index_frame(i)`; there are len(frames), len(times) or round(seconds * fps) frames.
    Frame i is presented at `times[i]` seconds when given (variable frame rate, millisecond time
    base), else at i / fps. `gop` is the keyframe interval in frames (default: 2 s worth).
    `with_audio` adds a 440 Hz tone as long as the video; `audio` (mono float32 at
    `audio_rate`) adds that sound instead. `rotation` (degrees counter-clockwise, as
    `VideoFrame.rotation` reads it back) is stored as a display matrix. `encoder_options`
    replace the fast, high-quality defaults (e.g. {"preset": "medium", "bf": "3"} for libx264).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or default_codec(path)
    if codec is None or not encoder_available(codec):
        raise RuntimeError(f"no encoder for {path.suffix}: {codec}")
    if frames is not None:
        count = len(frames)
    elif times is not None:
        count = len(times)
    else:
        count = round(seconds * fps)
    w, h = size
    vfr = times is not None
    options: dict[str, str] = {}
    if faststart:
        options["movflags"] = "+faststart"
    with av.open(os.fspath(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = _PIX_FMT.get(codec, "yuv420p")
        stream.codec_context.gop_size = gop or max(1, 2 * fps)
        if bit_rate is not None:
            stream.codec_context.bit_rate = bit_rate
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "crf": "18"}
        elif codec.startswith("libvpx"):
            stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8", "crf": "20"}
            stream.codec_context.bit_rate = bit_rate or 1_000_000
        elif codec in ("mpeg4", "mpeg2video", "mpeg1video", "mjpeg"):
            stream.codec_context.options = {"qscale": "3"}
            stream.codec_context.qmin, stream.codec_context.qmax = 2, 4
        if encoder_options is not None:
            stream.codec_context.options = dict(encoder_options)
        tb = Fraction(1, 1000) if vfr else Fraction(1, fps)
        stream.codec_context.time_base = tb
        if vfr:
            stream.time_base = tb
        if rotation:
            stream.set_display_rotation(rotation)
        a_stream = None
        if with_audio or audio is not None:
            a_codec = audio_codec or default_audio_codec(path)
            a_stream = out.add_stream(a_codec, rate=audio_rate, layout="mono")
        video_packets: list[av.Packet] = []
        for i in range(count):
            item = frames[i] if frames is not None else index_frame(i, size)
            img = item if isinstance(item, Image.Image) else solid_frame(item, size)
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BICUBIC)
            frame = av.VideoFrame.from_image(img.convert("RGB"))
            frame.pts = round(times[i] * 1000) if times is not None else i
            frame.time_base = tb
            video_packets.extend(stream.encode(frame))
        video_packets.extend(stream.encode(None))
        audio_packets: list[av.Packet] = []
        if a_stream is not None:
            if audio is None:
                n = round((times[-1] + 0.1 if times else count / fps) * audio_rate)
                t = np.arange(n, dtype=np.float32) / audio_rate
                audio = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
            audio_packets = _encode_audio(a_stream, audio, audio_rate)
        _mux_in_time_order(out, video_packets, audio_packets)
    return path


def _encode_audio(stream: av.AudioStream, samples: np.ndarray, rate: int) -> list[av.Packet]:
    samples = np.asarray(samples, np.float32).reshape(-1)
    packets: list[av.Packet] = []
    chunk = 1024
    for start in range(0, len(samples), chunk):
        part = samples[start : start + chunk]
        frame = av.AudioFrame.from_ndarray(part[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        packets.extend(stream.encode(frame))
    packets.extend(stream.encode(None))
    return packets


def _mux_in_time_order(out: av.container.OutputContainer, *streams: list[av.Packet]) -> None:
    def key(packet: av.Packet) -> float:
        ts = packet.dts if packet.dts is not None else packet.pts
        return float((ts or 0) * (packet.time_base or 0))

    for packet in sorted((p for packets in streams for p in packets), key=key):
        out.mux(packet)


def make_audio_only_video(
    path: str | Path, seconds: float = 2.0, codec: str | None = None, rate: int = 48000
) -> Path:
    """A video container (mp4, mkv, webm, ...) holding only a sound track: a 440 Hz tone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * rate), dtype=np.float32) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    with av.open(os.fspath(path), "w") as out:
        stream = out.add_stream(codec or default_audio_codec(path), rate=rate, layout="mono")
        for packet in _encode_audio(stream, samples, rate):
            out.mux(packet)
    return path


def make_audio_only_mp4(path: str | Path, seconds: float = 2.0) -> Path:
    """An .mp4 with one AAC sound track and no picture."""
    return make_audio_only_video(path, seconds, codec="aac")


def make_zero_frame_video(path: str | Path, codec: str | None = None) -> Path:
    """A container with a declared video stream (and its codec parameters) but no frame in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or default_codec(path)
    assert codec is not None
    with av.open(os.fspath(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, _PIX_FMT.get(codec, "yuv420p")
        out.start_encoding()  # writes the header (and, on close, the index) with no frame
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def make_truncated_video(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    """The first `keep` fraction of `src`'s bytes (a download or copy that stopped half way)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def make_damaged_video(
    src: str | Path, dst: str | Path, start: float = 0.4, stop: float = 0.6, seed: int = 0
) -> Path:
    """A copy of `src` whose bytes between the `start` and `stop` fractions are random garbage."""
    data = bytearray(Path(src).read_bytes())
    a, b = int(len(data) * start), int(len(data) * stop)
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst
