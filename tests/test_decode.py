"""Decode workers: stable reads, hashing, known content, and crash isolation."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from crashers import abort_on_crash_name
from media_factory import make_photo

from mmfind.decode import (
    DecodeConfig,
    Decoded,
    DecodePool,
    DecodeTask,
    Failed,
    Known,
    content_hash,
)
from mmfind.media.image import ImageSpec

CONFIG = DecodeConfig(ImageSpec(size=(64, 64)))


class ThreadedPool(DecodePool):
    """The decode pool with threads instead of processes: tests can count what runs at once."""

    def _pool(self, workers: int) -> ThreadPoolExecutor:  # type: ignore[override]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=16)  # type: ignore[assignment]
        return self._executor  # type: ignore[return-value]


def task_for(path: Path) -> DecodeTask:
    st = path.stat()
    return DecodeTask(str(path), "image", st.st_size, st.st_mtime_ns)


def test_decodes_in_workers_and_in_process(tmp_path: Path) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", size=(120, 90), seed=i) for i in range(5)]
    tasks = [task_for(p) for p in paths]
    with DecodePool(CONFIG, workers=2) as pool:
        pooled = {r.task.path: r for r in pool.run(tasks)}
    inline = {r.task.path: r for r in DecodePool(CONFIG, workers=0).run(tasks)}
    assert pooled.keys() == inline.keys() == {str(p) for p in paths}
    for path, result in pooled.items():
        other = inline[path]
        assert isinstance(result, Decoded) and isinstance(other, Decoded)
        [payload] = result.payloads
        assert payload.space == "clip" and payload.modality == "pixels"
        assert payload.data.shape == (1, 64, 64, 3)
        assert (payload.data == other.payloads[0].data).all()
        assert result.digest == content_hash(Path(path).read_bytes())
        assert (result.width, result.height) == (120, 90)


def test_known_content_is_not_decoded(tmp_path: Path) -> None:
    path = make_photo(tmp_path / "a.jpg", size=(80, 60))
    digest = content_hash(path.read_bytes())
    [result] = DecodePool(CONFIG, [digest], workers=0).run([task_for(path)])
    assert isinstance(result, Known) and result.digest == digest


def test_file_changed_since_scan_is_deferred(tmp_path: Path) -> None:
    path = make_photo(tmp_path / "a.jpg", size=(80, 60))
    task = task_for(path)
    make_photo(path, size=(90, 70), seed=3)
    os.utime(path, ns=(task.mtime_ns + 10**9, task.mtime_ns + 10**9))
    [result] = DecodePool(CONFIG, workers=0).run([task])
    assert isinstance(result, Failed) and "deferred" in result.reason


def test_vanished_file_fails_with_reason(tmp_path: Path) -> None:
    path = make_photo(tmp_path / "a.jpg", size=(80, 60))
    task = task_for(path)
    path.unlink()
    [result] = DecodePool(CONFIG, workers=0).run([task])
    assert isinstance(result, Failed) and result.reason.startswith("cannot read")


def test_a_crashing_decoder_costs_one_file(tmp_path: Path) -> None:
    paths = [make_photo(tmp_path / f"ok{i}.jpg", size=(80, 60), seed=i) for i in range(6)]
    crasher = make_photo(tmp_path / "crash-me.jpg", size=(80, 60), seed=9)
    tasks = (
        [task_for(p) for p in paths[:3]] + [task_for(crasher)] + [task_for(p) for p in paths[3:]]
    )
    with DecodePool(CONFIG, workers=2, decode=abort_on_crash_name) as pool:
        results = list(pool.run(tasks))
        crashes = pool.crashes
    assert len(results) == 7
    by_path = {r.task.path: r for r in results}
    failed = by_path[str(crasher)]
    assert isinstance(failed, Failed) and "crashed" in failed.reason
    assert all(isinstance(by_path[str(p)], Decoded) for p in paths)
    assert crashes == 1


def test_in_flight_work_is_bounded_and_heavy_files_are_few(tmp_path: Path) -> None:
    """Large results (videos, recordings) never pile up: at most `workers` heavy tasks."""
    import threading
    import time

    lock = threading.Lock()
    now = {"all": 0, "heavy": 0}
    peak = {"all": 0, "heavy": 0}

    def slow_decode(task: DecodeTask) -> Failed:
        heavy = task.kind == "video"
        with lock:
            now["all"] += 1
            now["heavy"] += heavy
            peak["all"] = max(peak["all"], now["all"])
            peak["heavy"] = max(peak["heavy"], now["heavy"])
        time.sleep(0.05)
        with lock:
            now["all"] -= 1
            now["heavy"] -= heavy
        return Failed(task, "ok")

    tasks = [DecodeTask(f"/x/{i}", "video" if i % 3 == 0 else "image", 1, 1) for i in range(60)]
    with ThreadedPool(CONFIG, workers=2, in_flight=12, decode=slow_decode) as pool:
        results = list(pool.run(tasks))
    assert sorted(r.task.path for r in results) == sorted(t.path for t in tasks)
    assert 1 <= peak["heavy"] <= 2  # never more than workers (2), whatever the machine's load
    assert 3 <= peak["all"] <= 12  # overlapped, and never more than in_flight
