"""Reading, hashing and decoding files in worker processes.

Workers import the decoders only (PIL, PyAV, soundfile; never torch), so they start fast and
stay small. A worker that
dies (a decoder that aborts the process) costs one file: the tasks that were in flight are retried
one at a time in a fresh pool, which pins the crash on the file that caused it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmfind.config import DEFAULT_FRAME_INTERVAL_S, DEFAULT_MAX_DURATION_S, DEFAULT_MAX_PIXELS
from mmfind.errors import MediaError
from mmfind.media.audio import (
    AudioWindows,
    decode_audio_file,
    load_audio_stream,
    window_audio,
)
from mmfind.media.image import ImageSpec, prepare_image
from mmfind.media.jpeg_probe import probe_jpeg
from mmfind.media.text import (
    DEFAULT_CHUNK_TOKENS,
    DEFAULT_CHUNK_WORDS,
    DEFAULT_OVERLAP_WORDS,
    decode_text_file,
)
from mmfind.media.video import decode_video
from mmfind.spaces import CLAP, CLIP
from mmfind.store.catalog import ItemSpans

HASH_BYTES = 16
FULL_HASH_LIMIT = 32 * 1024 * 1024  # larger files are hashed by samples (see content_hash_file)
_SAMPLE = 1024 * 1024


@dataclass(frozen=True)
class DecodeTask:
    path: str
    kind: str
    size: int
    mtime_ns: int
    # An image that is a plain JPEG comes back as its bytes (a "jpeg" payload) for the batched
    # (GPU) decoder, not as pixels; see mmfind.media.jpeg_probe.
    jpeg_bytes: bool = False


@dataclass
class Payload:
    """What one file gives one embedding space: pixels, audio windows or text chunks."""

    space: str
    modality: str  # "pixels" | "audio" | "text" | "jpeg" | "tensor"
    # np.ndarray (N, H, W, 3) uint8 | np.ndarray (N, samples) float32 | list[str]
    # | list[EncodedJpeg] | torch.Tensor (N, 3, H, W) model-ready (from mmfind.media.jpeg_batch)
    data: Any
    spans: ItemSpans = field(default_factory=ItemSpans)

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class Decoded:
    task: DecodeTask
    digest: bytes
    payloads: list[Payload]
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    warning: str | None = None  # only part of the file could be decoded (and was indexed)


@dataclass
class Known:
    """The content is already in the index (a moved, renamed or copied file)."""

    task: DecodeTask
    digest: bytes


@dataclass
class Failed:
    task: DecodeTask
    reason: str
    retry: bool = False  # the file could not be read (permissions, gone): not its content's fault


DecodeResult = Decoded | Known | Failed


@dataclass(frozen=True)
class DecodeConfig:
    spec: ImageSpec
    max_pixels: int = DEFAULT_MAX_PIXELS
    frame_interval_s: float = DEFAULT_FRAME_INTERVAL_S
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    text_words: int = DEFAULT_CHUNK_WORDS
    text_overlap: int = DEFAULT_OVERLAP_WORDS
    text_max_tokens: int = DEFAULT_CHUNK_TOKENS


_config: DecodeConfig | None = None
_known: frozenset[bytes] = frozenset()


def _init_worker(config: DecodeConfig, known: frozenset[bytes]) -> None:
    global _config, _known
    _config = config
    _known = known


def _init_worker_process(config: DecodeConfig, known: frozenset[bytes]) -> None:
    """Worker start: native decoders (LibRaw, libtiff, FFmpeg) write to fd 2 directly; their
    noise would tear the progress display, and every failure is reported through its result.
    A worker leaves with the run that started it: a run killed with SIGKILL cannot shut its
    pool down, and the workers, blocked on a queue whose write end they hold, would wait forever."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _init_worker(config, known)


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    while os.getppid() == parent:  # an orphan is re-parented (to init or a subreaper)
        time.sleep(every_s)
    os._exit(1)


def content_hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def content_hash_file(path: str, size: int) -> bytes:
    """The content hash of a file without holding it in memory. Files up to FULL_HASH_LIMIT are
    hashed whole (equal to content_hash of their bytes); larger ones (videos, long recordings)
    by their size and three 1 MiB samples (head, middle, tail), so a moved 4 GB video is
    recognised without reading it all."""
    digest = hashlib.blake2b(digest_size=HASH_BYTES)
    with open(path, "rb") as fh:
        if size <= FULL_HASH_LIMIT:
            while chunk := fh.read(_SAMPLE):
                digest.update(chunk)
        else:
            digest.update(b"sampled:%d:" % size)
            for offset in (0, size // 2, size - _SAMPLE):
                fh.seek(offset)
                digest.update(fh.read(_SAMPLE))
    return digest.digest()


def decode_one(task: DecodeTask) -> DecodeResult:
    """Hash and decode one file; every problem becomes a Failed with a reason."""
    assert _config is not None, "worker not initialised"
    try:
        _check_unchanged(task, os.stat(task.path), "changed since it was scanned")
        if task.size == 0:
            return Failed(task, "empty file")
        if task.kind == "image":
            data = _read_stable(task)
            digest = content_hash(data)
            if digest in _known:
                return Known(task, digest)
            result = _decode_image(task, digest, data, _config)
        else:
            digest = content_hash_file(task.path, task.size)
            if digest in _known:
                return Known(task, digest)
            result = _DECODERS[task.kind](task, digest, _config)
        _check_unchanged(task, os.stat(task.path), "changed while being read")
        if isinstance(result, Decoded) and result.warning:
            result.warning = _one_line(result.warning)
        return result
    except MediaError as exc:
        return Failed(task, _one_line(exc.reason))
    except _Changed as exc:
        return Failed(task, str(exc))
    except OSError as exc:
        return Failed(task, _one_line(f"cannot read: {exc.strerror or exc}"), retry=True)
    except Exception as exc:  # a decoder bug on one file must not end the run: record it
        return Failed(task, _one_line(f"decoder error: {type(exc).__name__}: {exc}"))


def _one_line(reason: str) -> str:
    """Native decoders' messages may hold newlines; a reason is one line (`info --failures`)."""
    return " ".join(reason.split()) or "unknown error"


def _decode_image(task: DecodeTask, digest: bytes, data: bytes, cfg: DecodeConfig) -> Decoded:
    if task.jpeg_bytes:
        jpeg = probe_jpeg(data, cfg.spec, max_pixels=cfg.max_pixels)
        if jpeg is not None:
            upright = (
                (jpeg.height, jpeg.width) if jpeg.orientation >= 5 else (jpeg.width, jpeg.height)
            )
            return Decoded(task, digest, [Payload(CLIP, "jpeg", [jpeg])], *upright)
    prepared = prepare_image(data, cfg.spec, max_pixels=cfg.max_pixels, name=task.path)
    payload = Payload(CLIP, "pixels", prepared.pixels[np.newaxis])
    return Decoded(task, digest, [payload], prepared.width, prepared.height)


def _decode_video(task: DecodeTask, digest: bytes, cfg: DecodeConfig) -> Decoded:
    video = decode_video(
        task.path,
        cfg.spec,
        interval_s=cfg.frame_interval_s,
        max_duration_s=cfg.max_duration_s,
        threads=1,  # one process per core already
    )
    ends = [min(t + cfg.frame_interval_s, max(video.duration, t)) for t in video.times]
    payloads = [
        Payload(
            CLIP, "pixels", video.frames, ItemSpans(times=list(zip(video.times, ends, strict=True)))
        )
    ]
    if video.has_audio:
        sound = _video_sound(task.path, cfg)
        if sound is not None:
            payloads.append(Payload(CLAP, "audio", sound.windows, ItemSpans(times=sound.spans)))
    return Decoded(task, digest, payloads, video.width, video.height, video.duration, video.warning)


def _video_sound(path: str, cfg: DecodeConfig) -> AudioWindows | None:
    """The sound track's windows; a silent or undecodable track leaves the video its frames."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.audio[0]
            samples, duration = load_audio_stream(
                container, stream, max_duration_s=cfg.max_duration_s
            )
        return window_audio(samples, duration=duration)
    except (MediaError, av.error.FFmpegError, IndexError, ValueError):
        return None


def _decode_audio(task: DecodeTask, digest: bytes, cfg: DecodeConfig) -> Decoded:
    sound = decode_audio_file(task.path, max_duration_s=cfg.max_duration_s)
    payload = Payload(CLAP, "audio", sound.windows, ItemSpans(times=sound.spans))
    return Decoded(task, digest, [payload], duration=sound.duration)


def _decode_text(task: DecodeTask, digest: bytes, cfg: DecodeConfig) -> Decoded:
    chunks = decode_text_file(
        task.path, words=cfg.text_words, overlap=cfg.text_overlap, max_tokens=cfg.text_max_tokens
    )
    spans = ItemSpans(lines=[(c.line_start, c.line_end) for c in chunks])
    return Decoded(task, digest, [Payload(CLIP, "text", [c.text for c in chunks], spans)])


_DECODERS: dict[str, Callable[[DecodeTask, bytes, DecodeConfig], Decoded]] = {
    "video": _decode_video,
    "audio": _decode_audio,
    "text": _decode_text,
}


class _Changed(Exception):
    pass


def _check_unchanged(task: DecodeTask, st: os.stat_result, what: str) -> None:
    if (st.st_size, st.st_mtime_ns) != (task.size, task.mtime_ns):
        raise _Changed(f"{what}; deferred to the next run")


def _read_stable(task: DecodeTask) -> bytes:
    """The file's bytes, provided it is the same file the scan saw, before and after reading."""
    with open(task.path, "rb") as fh:
        data = fh.read()
        _check_unchanged(task, os.fstat(fh.fileno()), "changed while being read")
    if len(data) != task.size:
        raise _Changed("changed while being read; deferred to the next run")
    return data


class DecodePool:
    """Decodes tasks in worker processes, yielding results as they complete.

    At most `in_flight` tasks (default: enough to keep the workers busy while the encoder works
    through a batch) are submitted at once, and at most `workers` of them videos or recordings,
    whose results are large; and, with `byte_budget`, tasks that come back as JPEG bytes only
    while their sizes sum to at most that (one always may); so memory stays bounded whatever the
    library size.
    workers=0 decodes in this process (no crash isolation; for tiny runs and debugging).
    """

    HEAVY_KINDS = frozenset({"video", "audio"})

    def __init__(
        self,
        config: DecodeConfig,
        known: Iterable[bytes] = (),
        *,
        workers: int = 1,
        in_flight: int | None = None,
        byte_budget: int | None = None,
        decode: Callable[[DecodeTask], DecodeResult] = decode_one,
    ) -> None:
        self.decode = decode  # a module-level function (it is pickled to spawned workers)
        self.config = config
        self.known = frozenset(known)
        self.workers = workers
        self.limit = max(in_flight or 0, workers * 4)
        self.byte_budget = byte_budget
        self.crashes = 0
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker_process,
                initargs=(self.config, self.known),
            )
        return self._executor

    def _discard_pool(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def run(self, tasks: Iterable[DecodeTask]) -> Iterator[DecodeResult]:
        if self.workers <= 0:
            _init_worker(self.config, self.known)
            for task in tasks:
                yield self.decode(task)
            return
        pending = iter(tasks)
        in_flight: dict[Future[DecodeResult], DecodeTask] = {}
        suspects: deque[DecodeTask] = deque()
        held: DecodeTask | None = None  # a heavy task waiting for a heavy slot
        while True:
            while len(in_flight) < self.limit:
                next_task = held or next(pending, None)
                held = None
                if next_task is None:
                    break
                heavy = sum(t.kind in self.HEAVY_KINDS for t in in_flight.values())
                if (next_task.kind in self.HEAVY_KINDS and heavy >= self.workers) or (
                    self._over_budget(next_task, in_flight.values())
                ):
                    held = next_task
                    break
                in_flight[self._pool(self.workers).submit(self.decode, next_task)] = next_task
            if not in_flight:  # (a held task always has a heavy or JPEG one in flight before it)
                break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                task = in_flight.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool:
                    broken = True
                    suspects.append(task)
            if broken:
                suspects.extend(in_flight.values())
                in_flight.clear()
                self._discard_pool()
                yield from self._isolate(suspects)
                suspects.clear()

    def _over_budget(self, task: DecodeTask, in_flight: Iterable[DecodeTask]) -> bool:
        if self.byte_budget is None or not task.jpeg_bytes:
            return False
        held = sum(t.size for t in in_flight if t.jpeg_bytes)
        return held > 0 and held + task.size > self.byte_budget

    def _isolate(self, suspects: Iterable[DecodeTask]) -> Iterator[DecodeResult]:
        """Retry each task alone in a one-process pool: a crash now is that file's fault."""
        for task in suspects:
            try:
                yield self._pool(1).submit(self.decode, task).result()
            except BrokenProcessPool:
                self.crashes += 1
                self._discard_pool()
                yield Failed(task, "the decoder crashed on this file (worker process died)")
        self._discard_pool()
