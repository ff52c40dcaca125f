"""Tests for mmfind.store.lock: the writer lock held by real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmfind.config import LOCK_NAME
from mmfind.errors import IndexBusyError
from mmfind.store.lock import lock_holder, writer_lock

REPO_ROOT = Path(__file__).resolve().parents[1]

# The holder takes the lock and says so; on a line on stdin it leaves the lock, reports the time
# just before it did, and stays alive until stdin closes (or it is killed).
HOLDER = """
import sys, time
from pathlib import Path
from mmfind.store.lock import writer_lock

with writer_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.readline()
    before_release = time.time()
print("released", repr(before_release), flush=True)
sys.stdin.readline()
"""


class Holder:
    def __init__(self, index_dir: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(index_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin = self.proc.stdin
        self.stdout = self.proc.stdout
        line = self.stdout.readline()
        assert line == "locked\n", f"holder did not take the lock: {line!r}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> float:
        """Ask the holder to leave the lock (it stays alive); returns the time just before."""
        self.stdin.write("release\n")
        self.stdin.flush()
        line = self.stdout.readline().split()
        assert line[0] == "released"
        return float(line[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.stdin.close()
        self.stdout.close()


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def holder(index_dir: Path) -> Iterator[Holder]:
    h = Holder(index_dir)
    yield h
    h.stop()


def test_second_writer_in_another_process_is_refused_with_the_pid(
    holder: Holder, index_dir: Path
) -> None:
    assert lock_holder(index_dir) == holder.pid

    started = time.monotonic()
    with pytest.raises(IndexBusyError) as info, writer_lock(index_dir):
        pytest.fail("the lock was granted twice")
    assert time.monotonic() - started < 1.0  # wait_s=0: no waiting

    message = str(info.value)
    assert f"(pid {holder.pid})" in message
    assert str(index_dir) in message and "--wait" in message
    assert info.value.exit_code == 75
    assert lock_holder(index_dir) == holder.pid  # the failed attempt changed nothing


def test_wait_gives_up_after_wait_s(holder: Holder, index_dir: Path) -> None:
    started = time.monotonic()
    with (
        pytest.raises(IndexBusyError, match=f"pid {holder.pid}"),
        writer_lock(index_dir, wait_s=0.5),
    ):
        pytest.fail("the lock was granted twice")
    waited = time.monotonic() - started
    assert 0.5 <= waited < 3.0


def test_wait_succeeds_when_the_holder_releases(holder: Holder, index_dir: Path) -> None:
    def release_soon() -> float:
        time.sleep(0.3)
        return holder.release()

    released_at: list[float] = []
    thread = threading.Thread(target=lambda: released_at.append(release_soon()))
    started = time.monotonic()
    thread.start()
    try:
        with writer_lock(index_dir, wait_s=10):
            acquired_at = time.time()
            waited = time.monotonic() - started
            assert lock_holder(index_dir) == os.getpid()
    finally:
        thread.join(timeout=10)
    assert released_at and acquired_at >= released_at[0]
    assert 0.25 <= waited < 5.0
    assert holder.proc.poll() is None  # released by the holder, not by its death
    assert lock_holder(index_dir) is None


def test_lock_of_a_sigkilled_holder_is_not_stale(holder: Holder, index_dir: Path) -> None:
    pid = holder.pid
    os.kill(pid, signal.SIGKILL)
    assert holder.proc.wait(timeout=10) == -signal.SIGKILL

    # The lock file and the dead pid in it remain, but the kernel dropped the lock.
    assert (index_dir / LOCK_NAME).read_text().strip() == str(pid)
    assert lock_holder(index_dir) is None
    with writer_lock(index_dir):
        assert lock_holder(index_dir) == os.getpid()
        assert (index_dir / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_lock_holder_reports_none_or_the_pid(index_dir: Path) -> None:
    assert lock_holder(index_dir) is None  # no directory, no lock file
    index_dir.mkdir()
    assert lock_holder(index_dir) is None
    with writer_lock(index_dir):
        assert (index_dir / LOCK_NAME).exists()
        assert lock_holder(index_dir) == os.getpid()
    assert lock_holder(index_dir) is None
    with writer_lock(index_dir):  # released on exit: can be taken again at once
        pass


def test_lock_is_released_when_the_body_raises(index_dir: Path) -> None:
    with pytest.raises(RuntimeError), writer_lock(index_dir):
        raise RuntimeError("run failed")
    assert lock_holder(index_dir) is None


def test_a_second_writer_in_the_same_process_is_refused(index_dir: Path) -> None:
    with writer_lock(index_dir):
        with pytest.raises(IndexBusyError, match=f"pid {os.getpid()}"), writer_lock(index_dir):
            pytest.fail("the lock was granted twice")
        assert lock_holder(index_dir) == os.getpid()  # the outer lock still holds
    assert lock_holder(index_dir) is None


def test_writer_lock_creates_the_index_directory(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "index"
    with writer_lock(target):
        assert target.is_dir()
        assert lock_holder(target) == os.getpid()
