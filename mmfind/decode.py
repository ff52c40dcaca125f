"""Reading, hashing and decoding files in worker processes.

Workers import PIL and numpy only (never torch), so they start fast and stay small. A worker that
dies (a decoder that aborts the process) costs one file: the tasks that were in flight are retried
one at a time in a fresh pool, which pins the crash on the file that caused it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from mmfind.errors import MediaError
from mmfind.media.image import DEFAULT_MAX_PIXELS, ImageSpec, prepare_image

HASH_BYTES = 16


@dataclass(frozen=True)
class DecodeTask:
    path: str
    kind: str
    size: int
    mtime_ns: int


@dataclass
class Decoded:
    task: DecodeTask
    digest: bytes
    pixels: np.ndarray
    width: int
    height: int


@dataclass
class Known:
    """The content is already in the index (a moved, renamed or copied file)."""

    task: DecodeTask
    digest: bytes


@dataclass
class Failed:
    task: DecodeTask
    reason: str


DecodeResult = Decoded | Known | Failed


@dataclass(frozen=True)
class DecodeConfig:
    spec: ImageSpec
    max_pixels: int = DEFAULT_MAX_PIXELS


_config: DecodeConfig | None = None
_known: frozenset[bytes] = frozenset()


def _init_worker(config: DecodeConfig, known: frozenset[bytes]) -> None:
    global _config, _known
    _config = config
    _known = known


def _init_worker_process(config: DecodeConfig, known: frozenset[bytes]) -> None:
    """Worker start: native decoders (LibRaw, libtiff) write to fd 2 directly; their noise
    would tear the progress display, and every failure is reported through its result."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    _init_worker(config, known)


def content_hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def decode_one(task: DecodeTask) -> DecodeResult:
    """Read, hash and decode one file; every problem becomes a Failed with a reason."""
    assert _config is not None, "worker not initialised"
    try:
        data = _read_stable(task)
        if not data:
            return Failed(task, "empty file")
        digest = content_hash(data)
        if digest in _known:
            return Known(task, digest)
        prepared = prepare_image(data, _config.spec, max_pixels=_config.max_pixels, name=task.path)
        return Decoded(task, digest, prepared.pixels, prepared.width, prepared.height)
    except MediaError as exc:
        return Failed(task, exc.reason)
    except _Changed as exc:
        return Failed(task, str(exc))
    except OSError as exc:
        return Failed(task, f"cannot read: {exc.strerror or exc}")
    except Exception as exc:  # a decoder bug on one file must not end the run: record it
        return Failed(task, f"decoder error: {type(exc).__name__}: {exc}")


class _Changed(Exception):
    pass


def _read_stable(task: DecodeTask) -> bytes:
    """The file's bytes, provided it is the same file the scan saw before and after reading."""
    before = os.stat(task.path)
    if (before.st_size, before.st_mtime_ns) != (task.size, task.mtime_ns):
        raise _Changed("changed since it was scanned; deferred to the next run")
    with open(task.path, "rb") as fh:
        data = fh.read()
        after = os.fstat(fh.fileno())
    if (after.st_size, after.st_mtime_ns) != (task.size, task.mtime_ns) or len(data) != task.size:
        raise _Changed("changed while being read; deferred to the next run")
    return data


class DecodePool:
    """Decodes tasks in worker processes, yielding results as they complete.

    At most `workers * 4` tasks are in flight, so memory stays bounded whatever the library size.
    workers=0 decodes in this process (no crash isolation; for tiny runs and debugging).
    """

    def __init__(
        self,
        config: DecodeConfig,
        known: Iterable[bytes] = (),
        *,
        workers: int = 1,
        decode: Callable[[DecodeTask], DecodeResult] = decode_one,
    ) -> None:
        self.decode = decode  # a module-level function (it is pickled to spawned workers)
        self.config = config
        self.known = frozenset(known)
        self.workers = workers
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
        limit = self.workers * 4
        in_flight: dict[Future[DecodeResult], DecodeTask] = {}
        suspects: deque[DecodeTask] = deque()
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < limit:
                next_task = next(pending, None)
                if next_task is None:
                    exhausted = True
                    break
                in_flight[self._pool(self.workers).submit(self.decode, next_task)] = next_task
            if not in_flight:
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
