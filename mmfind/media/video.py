"""Video decoding: a video file → one picture every few seconds, fitted for the image model.

Runs inside decode worker processes, so it stays light: PyAV (FFmpeg) + PIL + numpy, never torch.
Every failure caused by the input becomes a `MediaError` with a short reason for the user.

Sampling. Targets are t = 0, interval, 2·interval, … below min(duration, max_duration); each target
takes the first frame presented at or after it, so a video shorter than the interval still gives
its first frame. A frame that answers several targets (a long still in a variable-frame-rate
video) is taken once. Times are presentation times in seconds from the start of the video stream
(its first frame is at 0.0), correct to the frame: they are read from each frame's timestamp.

Cost. Only the video stream is demuxed and decoded (threaded); only the chosen frames are converted
to RGB; frames are fitted to the model's size as they come, so memory holds the fitted frames only.
Between targets the decoder seeks instead of decoding through whenever that skips work: with an
index (mp4, mov, mkv, webm, avi) it seeks when the last keyframe before the next target lies more
than MIN_KEYFRAME_SKIP_S ahead of where decoding stands; without one (MPEG-TS, MPEG-PS) it seeks
when the target is SEEK_GAP_S or more ahead. A seek whose first frame comes after its target (no
index, a broken one) is redone further back, with a margin that doubles up to MAX_SEEK_MARGIN_S,
after which the file is read straight on. While decoding towards a target, frames more than
SKIP_AHEAD_S before it that no other frame refers to (most B-frames) are not decoded at all. Only
the first `max_duration_s` seconds (default one hour) are sampled.

Damage. A stream that breaks off part way (a truncated download, garbage in the middle) gives the
frames decoded before the break and after any recoverable damage; `VideoFrames.warning` then says
so and `duration` is where the pictures really end. Only a file with no decodable frame at all is
a failure.

Orientation. A display matrix (phones store portrait video as landscape frames plus a rotation) is
applied in steps of 90° (flips are not), and non-square pixels are stretched to their display
aspect, so frames are fitted as a viewer would show them.

PyAV leaves FFmpeg's own log off by default, so decoding writes nothing to stderr; this module does
not change that setting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType

import av
import numpy as np
from av.container import InputContainer
from av.stream import Disposition
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from mmfind.config import DEFAULT_FRAME_INTERVAL_S, DEFAULT_MAX_DURATION_S, DEFAULT_MAX_PIXELS
from mmfind.errors import MediaError
from mmfind.media.image import ImageSpec, fit_image

SEEK_GAP_S = 8.0  # no index: seek when the next target is at least this far ahead
MIN_KEYFRAME_SKIP_S = 1.0  # index: seek when the keyframe before the target is this far ahead
MAX_SEEK_MARGIN_S = 32.0  # seeks that overshoot their target retry this far back at most
SKIP_AHEAD_S = 1.0  # frames this far before a target are not needed: skip non-reference ones
SKIP_NONREF = True  # switch for the above (tests compare both ways)
MAX_DECODE_ERRORS = 100  # consecutive undecodable packets before the stream counts as broken

_EPS = 1e-6  # seconds: float slack when comparing frame times with targets

# What FFmpeg and PyAV raise on bad input (av.error.* subclass these or FFmpegError).
_AV_ERRORS = (av.FFmpegError, ValueError, OSError, EOFError, RuntimeError, MemoryError)

# Byte signatures of containers FFmpeg reads as video: an unopenable file that has one is a broken
# video, anything else is not a video at all.
_CONTAINER_MAGIC = (
    (4, b"ftyp"),  # MP4, MOV, M4V, 3GP
    (4, b"moov"),  # old QuickTime
    (4, b"mdat"),
    (4, b"wide"),
    (4, b"free"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska, WebM
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),  # ASF (WMV)
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x00\x00\x01\xb3"),  # MPEG video elementary stream
    (0, b"FLV"),
    (0, b"OggS"),
)


@dataclass
class VideoFrames:
    """The frames sampled from one video, ready for the image model, with their times."""

    frames: np.ndarray  # uint8 (N, H, W, 3), each already fitted to the ImageSpec (fit_image)
    times: list[float]  # timestamp in seconds of each frame (presentation time)
    width: int  # display width/height of the video stream (rotation and pixel aspect applied)
    height: int
    duration: float  # seconds (container or stream metadata; else last frame time)
    has_audio: bool  # the container has at least one decodable audio stream
    warning: str | None = None  # set when the stream broke off early: the frames are what was left


def decode_video(
    path: str | os.PathLike[str],
    spec: ImageSpec,
    *,
    interval_s: float = DEFAULT_FRAME_INTERVAL_S,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    threads: int = 0,
) -> VideoFrames:
    """Sample one frame every `interval_s` seconds of the first `max_duration_s` seconds.

    `threads` is the decoder's thread count (0: FFmpeg picks, about one per core); a pool of
    decode processes may want 1 or 2 each. Raises `MediaError` for a file with no usable frame.
    """
    with open_video(path, threads=threads) as video:
        frames: list[np.ndarray] = []
        times: list[float] = []
        for t, pixels in video.sample(spec, interval_s=interval_s, max_duration_s=max_duration_s):
            times.append(t)
            frames.append(pixels)
        return VideoFrames(
            frames=np.stack(frames),
            times=times,
            width=video.width,
            height=video.height,
            duration=video.duration,
            has_audio=video.has_audio,
            warning=video.warning,
        )


def open_video(path: str | os.PathLike[str], *, threads: int = 0) -> VideoFile:
    """Open a video file for sampling (a context manager); `MediaError` if it has no video."""
    return VideoFile(path, threads=threads)


class VideoFile:
    """One opened video: its metadata, and `sample()` to stream fitted frames without holding
    them all. `container` and `audio_stream` are there for an audio decoder to reuse; sampling
    moves the container's read position (seek it back to the start first)."""

    container: InputContainer
    stream: VideoStream
    audio_stream: av.AudioStream | None

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 0) -> None:
        self.path = os.fspath(path)
        self.container = _open_container(self.path)
        try:
            self._setup(threads)
        except MediaError:
            self.container.close()
            raise
        except _AV_ERRORS as exc:
            self.container.close()
            raise MediaError(f"broken video stream: {_detail(exc)}") from exc
        except BaseException:
            self.container.close()
            raise

    def _setup(self, threads: int) -> None:
        streams = self.container.streams
        self.stream = _pick_video_stream(streams.video)
        self.audio_stream = next((s for s in streams.audio if _decodable(s)), None)
        stream = self.stream
        ctx = stream.codec_context
        ctx.thread_type = "AUTO"
        ctx.thread_count = max(0, threads)
        if stream.time_base is None or stream.time_base <= 0:
            self._tb = Fraction(1, av.time_base)
        else:
            self._tb = stream.time_base
        self._origin_pts = stream.start_time if stream.start_time is not None else None
        rate = stream.guessed_rate or stream.average_rate or stream.base_rate
        self._period = float(1 / rate) if rate and 0 < rate < 1000 else 1 / 25
        sar = stream.sample_aspect_ratio or ctx.sample_aspect_ratio
        self._sar = sar if sar is not None and 0.1 <= sar <= 10 and sar != 1 else None
        self._coded_size = (ctx.width, ctx.height)
        if ctx.width * ctx.height > DEFAULT_MAX_PIXELS:
            raise MediaError(f"video frame too large: {ctx.width}×{ctx.height}")
        self._rotation = 0
        self._stream_duration = (
            float(stream.duration * self._tb)
            if stream.duration and stream.duration > 0
            else _tag_duration(stream.metadata)
        )
        self._meta_duration = self._declared_duration()
        self._end: float | None = None  # where the frames really ended, when that is known
        self.warning: str | None = None
        # decoding state
        self._frames: Iterator[tuple[float, VideoFrame]] | None = None
        self._packet_time: float | None = None  # last demuxed packet, seconds from the origin
        self._can_seek = self.container.format.name not in ("image2", "mjpeg")
        if self._can_seek and "matroska" in self.container.format.name:
            self._load_cues()
        self._index_seek = len(stream.index_entries) > 1
        self._errors = 0
        self._last_error: BaseException | None = None
        self._eof = False
        self._last_taken: float | None = None  # time of the last frame handed out
        self._seek_margin = 0.0  # seek this far before a target (grows when seeks overshoot)
        self._target = 0.0  # the time the decoder is heading for
        self._skip_ahead = max(SKIP_AHEAD_S, 8 * self._period)

    # --- metadata ---------------------------------------------------------------------------

    @property
    def width(self) -> int:
        return self._display_size()[0]

    @property
    def height(self) -> int:
        return self._display_size()[1]

    @property
    def duration(self) -> float:
        """Seconds: declared by the stream or container; else (or when the stream ends early)
        where the last frame ends, once sampling has reached it; 0.0 while unknown."""
        if self._end is not None and (
            self._meta_duration is None or self._end < self._meta_duration
        ):
            return self._end
        return self._meta_duration or 0.0

    @property
    def has_audio(self) -> bool:
        return self.audio_stream is not None

    def _display_size(self) -> tuple[int, int]:
        w, h = self._coded_size
        if self._sar is not None:
            w = max(1, round(w * self._sar))
        return (h, w) if self._rotation in (90, 270) else (w, h)

    def _declared_duration(self) -> float | None:
        """The larger of the stream's and the container's declared durations (MPEG streams
        declare estimates, usually short ones); None when neither says."""
        found: list[float] = []
        if self._stream_duration is not None:
            found.append(self._stream_duration)
        duration, start = self.container.duration, self.container.start_time
        if duration is not None and duration > 0:
            lead = 0.0  # the video may start after the container does
            if self._origin_pts is not None and start is not None:
                lead = max(0.0, float(self._origin_pts * self._tb) - start / av.time_base)
            found.append(duration / av.time_base - lead)
        return round(max(found), 6) if found else None

    # --- context manager --------------------------------------------------------------------

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- sampling ---------------------------------------------------------------------------

    def sample(
        self,
        spec: ImageSpec,
        *,
        interval_s: float = DEFAULT_FRAME_INTERVAL_S,
        max_duration_s: float = DEFAULT_MAX_DURATION_S,
    ) -> Iterator[tuple[float, np.ndarray]]:
        """Yield (time in seconds, uint8 HxWx3 pixels fitted to `spec`) per sampled frame.

        Call once per opened file. Raises `MediaError` when no frame at all can be decoded.
        """
        if not interval_s > 0 or not max_duration_s > 0:
            raise ValueError("interval_s and max_duration_s must be positive")
        declared = self._meta_duration
        limit = max_duration_s if declared is None else min(declared, max_duration_s)
        count = 0
        try:
            k = 0
            while k == 0 or k * interval_s < limit - _EPS:
                hit = self._frame_at_or_after(k * interval_s)
                if hit is None:
                    break
                t, frame = hit
                pixels = self._fit(frame, spec)
                count += 1
                yield t, pixels
                k = max(k + 1, math.floor((t + _EPS) / interval_s) + 1)
        except _AV_ERRORS as exc:  # demuxer or converter gave up part way
            self._note_error(exc)
            self._eof = True
        if count == 0:
            raise self._no_frames_error()
        if self._last_error is not None:
            self.warning = (
                f"damaged video stream ({_detail(self._last_error)}): kept {count} frames"
            )
        elif self._eof and self._end is not None:
            # The pictures stop well before the video stream (else the file) said they would.
            expected = self._stream_duration or declared
            if expected is not None and self._end < min(expected, max_duration_s) - max(
                interval_s, 1.0
            ):
                self.warning = (
                    f"video stream ends at {self._end:.1f} s of {expected:.1f} s (truncated?)"
                )

    def _no_frames_error(self) -> MediaError:
        if self._last_error is not None:
            return MediaError(f"broken video stream: {_detail(self._last_error)}")
        return MediaError("video has no frames")

    def _frame_at_or_after(self, target: float) -> tuple[float, VideoFrame] | None:
        """The first frame presented at or after `target` seconds; None at the end."""
        if self._eof:
            return None
        sought = self._should_seek(target) and self._seek(target - self._seek_margin)
        self._target = target
        first = True
        while True:
            if self._frames is None:
                self._frames = self._decoded()
            hit = next(self._frames, None)
            if hit is None:
                self._eof = True
                return None
            t, frame = hit
            if sought and first and t > target + _EPS and self._recover_overshoot(target):
                continue  # sought again, further back
            sought = first = False
            if t >= target - _EPS:
                self._last_taken = t
                return t, frame

    def _recover_overshoot(self, target: float) -> bool:
        """The first frame after a seek came after its target, so frames may have been skipped:
        seek again further back. A format without an index seeks to a packet and decoding starts
        at the next keyframe, so the margin before targets doubles (it persists: it learns the
        keyframe spacing) up to MAX_SEEK_MARGIN_S; past that, seeking stops and decoding restarts
        at the last frame taken. False when nothing more can be done (keep the frame)."""
        if not self._can_seek:
            return False
        back = self._last_taken or 0.0
        if self._seek_margin < MAX_SEEK_MARGIN_S:
            self._seek_margin = max(1.0, 2 * self._seek_margin)
            return self._seek(max(back, target - self._seek_margin))
        self._can_seek = False
        return self._seek(back, force=True)

    def _should_seek(self, target: float) -> bool:
        if not self._can_seek or target <= 0:
            return False
        pos = self._packet_time if self._packet_time is not None else 0.0
        if self._index_seek:
            keyframe = self._keyframe_before(target - self._seek_margin)
            if keyframe is not None:
                return keyframe > pos + MIN_KEYFRAME_SKIP_S
        return target - self._seek_margin - pos >= SEEK_GAP_S

    def _load_cues(self) -> None:
        """Matroska/WebM read their index (cues, usually at the end) on the first seek only:
        seek to the start so that seeking decisions can use it."""
        try:
            self.container.seek(self._origin_pts or 0, stream=self.stream, backward=True)
        except _AV_ERRORS:
            self._can_seek = False

    def _keyframe_before(self, target: float) -> float | None:
        entries = self.stream.index_entries
        pts = self._to_pts(target)
        try:
            i = entries.search_timestamp(pts, backward=True, any_frame=False)
            if i < 0:
                return None
            return float((entries[i].timestamp - (self._origin_pts or 0)) * self._tb)
        except _AV_ERRORS:
            return None

    def _to_pts(self, t: float) -> int:
        return (self._origin_pts or 0) + math.floor(Fraction(t) / self._tb)

    def _seek(self, target: float, *, force: bool = False) -> bool:
        """Seek to the keyframe at or before `target`; False (nothing changed) if that fails."""
        target = max(0.0, target)
        if not self._can_seek and not force:
            return False
        try:
            self.container.seek(
                self._to_pts(target), stream=self.stream, backward=True, any_frame=False
            )
        except _AV_ERRORS:
            self._can_seek = False
            return False
        self._frames = None
        self._packet_time = None
        return True

    def _decoded(self) -> Iterator[tuple[float, VideoFrame]]:
        """Decode from the container's position on: (time from origin, frame)."""
        stream, tb, ctx = self.stream, self._tb, self.stream.codec_context
        prev: float | None = None
        ctx.skip_frame = "DEFAULT"
        skipping = False
        try:
            for packet in self.container.demux(stream):
                ts = packet.dts if packet.dts is not None else packet.pts
                if ts is not None:
                    if self._origin_pts is None:
                        self._origin_pts = ts
                    self._packet_time = float((ts - self._origin_pts) * tb)
                # Far before the target, frames nothing refers to need not be decoded at all.
                skip = (
                    SKIP_NONREF
                    and self._packet_time is not None
                    and (self._packet_time < self._target - self._skip_ahead)
                )
                if skip != skipping:
                    ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                    skipping = skip
                try:
                    frames = stream.decode(packet)
                except _AV_ERRORS as exc:
                    self._note_error(exc)
                    if self._errors >= MAX_DECODE_ERRORS:
                        break
                    continue
                for frame in frames:
                    self._errors = 0
                    t = self._frame_time(frame, prev)
                    prev = t
                    yield t, frame
        except _AV_ERRORS as exc:  # the demuxer gave up: flush what the decoder holds
            self._note_error(exc)
            try:
                for frame in stream.decode(None):
                    t = self._frame_time(frame, prev)
                    prev = t
                    yield t, frame
            except _AV_ERRORS:
                pass
        if prev is not None:
            self._end = round(prev + self._period, 6)

    def _frame_time(self, frame: VideoFrame, prev: float | None) -> float:
        ts = frame.pts if frame.pts is not None else frame.dts
        if ts is not None:
            if self._origin_pts is None:
                self._origin_pts = ts
            t = float((ts - self._origin_pts) * self._tb)
            if prev is None or t > prev - 10 * self._period:  # not a wild timestamp
                return max(0.0, t)
        return 0.0 if prev is None else prev + self._period

    def _note_error(self, exc: BaseException) -> None:
        self._errors += 1
        self._last_error = exc

    def _fit(self, frame: VideoFrame, spec: ImageSpec) -> np.ndarray:
        img = Image.fromarray(np.asarray(frame.to_ndarray(format="rgb24"), np.uint8))
        if self._sar is not None:
            img = img.resize((max(1, round(img.width * self._sar)), img.height))
        rotation = self._rotation = _right_angle(frame.rotation)
        if rotation == 90:
            img = img.transpose(Image.Transpose.ROTATE_90)
        elif rotation == 180:
            img = img.transpose(Image.Transpose.ROTATE_180)
        elif rotation == 270:
            img = img.transpose(Image.Transpose.ROTATE_270)
        self._coded_size = (frame.width, frame.height)
        return fit_image(img, spec)


# --- helpers ------------------------------------------------------------------------------------


def _open_container(path: str) -> InputContainer:
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise MediaError(f"cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise MediaError("empty file")
    try:
        return av.open(path, "r", metadata_errors="replace")
    except (av.error.FileNotFoundError, av.error.PermissionError, av.error.IsADirectoryError) as e:
        raise MediaError(f"cannot read file: {e.strerror or _detail(e)}") from e
    except _AV_ERRORS as exc:
        if _looks_like_video(path):
            reason = "container unreadable (truncated or damaged file?)"
            if isinstance(exc, EOFError):
                reason = "file ends before the first frame"
            raise MediaError(f"broken video stream: {reason}") from exc
        raise MediaError("not a video (unrecognised format)") from exc


def _looks_like_video(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(200)
    except OSError:
        return False
    if any(head[at : at + len(magic)] == magic for at, magic in _CONTAINER_MAGIC):
        return True
    if head[:4] == b"RIFF" and head[8:11] == b"AVI":
        return True
    # MPEG-TS (188-byte packets) and M2TS (192-byte packets) sync bytes
    return (len(head) > 188 and head[0] == head[188] == 0x47) or (
        len(head) > 196 and head[4] == head[196] == 0x47
    )


def _pick_video_stream(streams: tuple[VideoStream, ...]) -> VideoStream:
    """The main picture stream: not cover art (an attached picture), decodable, the largest."""
    moving = [s for s in streams if not s.disposition & Disposition.attached_pic]
    if not moving:
        raise MediaError("no video stream")
    usable = [s for s in moving if _decodable(s)]
    if not usable:
        name = moving[0].codec_context.name if moving[0].codec_context else "unknown"
        raise MediaError(f"unsupported video codec: {name}")
    return max(usable, key=lambda s: s.codec_context.width * s.codec_context.height)


def _decodable(stream: av.stream.Stream) -> bool:
    try:
        ctx = stream.codec_context
        return ctx is not None and ctx.codec is not None and ctx.codec.is_decoder
    except _AV_ERRORS:
        return False


def _tag_duration(metadata: dict[str, str]) -> float | None:
    """A Matroska/WebM stream's DURATION tag ("HH:MM:SS.nnnnnnnnn") in seconds, if valid."""
    tag = next((v for k, v in metadata.items() if k.upper() == "DURATION"), None)
    if not tag:
        return None
    try:
        hours, minutes, seconds = tag.strip().split(":")
        value = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _right_angle(degrees: float) -> int:
    """A display rotation (counter-clockwise degrees, any range) → 0, 90, 180 or 270."""
    try:
        return (round(degrees / 90) * 90) % 360
    except (TypeError, ValueError, OverflowError):
        return 0


def _detail(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError):
        text = exc.strerror or ""
        return text[:1].lower() + text[1:] if text else type(exc).__name__
    arg = exc.args[0] if len(exc.args) == 1 else None
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(exc)
    return text or type(exc).__name__
