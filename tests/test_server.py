"""The resident query server gives exactly the local answers, and stays out of the way."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from media_factory import make_photo

from mmfind.errors import InputError
from mmfind.indexer import IndexOptions, run_index
from mmfind.search import Query, run_query
from mmfind.server import Server, ask, socket_path, stop


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_encoder: object):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    root = tmp_path / "photos"
    for i in range(6):
        make_photo(root / f"p{i}.jpg", size=(96, 72), seed=300 + i)
    idx = tmp_path / "idx"
    run_index(idx, IndexOptions(paths=[str(root)], model="test-tiny", workers=0),
              encoders={"clip": tiny_encoder})  # fmt: skip
    ready = threading.Event()
    server = Server(idx, device="cpu", idle_timeout_s=60, on_ready=lambda _: ready.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert ready.wait(60)
    yield idx, root, server
    stop(idx)
    thread.join(10)
    assert not thread.is_alive()
    assert not socket_path(idx).exists()


def test_server_answers_like_a_local_query(served, tiny_encoder: object) -> None:  # type: ignore[no-untyped-def]
    idx, root, server = served
    for query in (
        Query(text="a red boat", limit=4),
        Query(images=[str(root / "p2.jpg")], limit=3),
        Query(text="snow", within=[str(root)], min_score=-1.0, all_moments=True),
    ):
        remote = ask(idx, query)
        local = run_query(idx, query, encoders={"clip": tiny_encoder})
        assert remote is not None
        assert [(r.rank, r.hit.path) for r in remote.results] == [
            (r.rank, r.hit.path) for r in local.results
        ]
        assert [r.score for r in remote.results] == pytest.approx(
            [r.score for r in local.results], abs=1e-5
        )
    assert server.served == 3


def test_server_errors_arrive_as_the_same_errors(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    idx, _, _ = served
    with pytest.raises(InputError, match="not found"):
        ask(idx, Query(images=[str(tmp_path / "missing.jpg")]))


def test_relative_query_paths_are_resolved_by_the_client(
    served, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    idx, root, _ = served
    monkeypatch.chdir(root)
    response = ask(idx, Query(images=["p1.jpg"], limit=2))
    assert response is not None
    assert str(root / "p1.jpg") not in {r.hit.path for r in response.results}


def test_no_server_means_no_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert ask(tmp_path / "idx", Query(text="x")) is None
    stale = socket_path(tmp_path / "idx")
    stale.parent.mkdir(parents=True)
    stale.touch()  # a socket file left by a killed server
    assert ask(tmp_path / "idx", Query(text="x")) is None
    assert stop(tmp_path / "idx") is False


def test_serve_command_end_to_end(tmp_path: Path, tiny_encoder: object) -> None:
    import json
    import os
    import subprocess
    import sys

    root = tmp_path / "photos"
    for i in range(3):
        make_photo(root / f"p{i}.jpg", size=(96, 72), seed=400 + i)
    idx = tmp_path / "idx"
    run_index(idx, IndexOptions(paths=[str(root)], model="test-tiny", workers=0),
              encoders={"clip": tiny_encoder})  # fmt: skip
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run"), "MMFIND_HOME": str(idx)}
    mmfind = [sys.executable, "-m", "mmfind"]
    server = subprocess.Popen(
        [*mmfind, "serve"], env=env, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    try:
        assert server.stderr is not None
        assert "serving queries" in server.stderr.readline()
        served = subprocess.run([*mmfind, "query", "a boat", "--json"], env=env,
                                capture_output=True, text=True, check=True)  # fmt: skip
        local = subprocess.run([*mmfind, "query", "a boat", "--json", "--no-server"], env=env,
                               capture_output=True, text=True, check=True)  # fmt: skip
        assert json.loads(served.stdout) == json.loads(local.stdout)
        stopped = subprocess.run([*mmfind, "serve", "--stop"], env=env, capture_output=True)
        assert stopped.returncode == 0
        assert server.wait(30) == 0
    finally:
        server.kill()
    again = subprocess.run([*mmfind, "serve", "--stop"], env=env, capture_output=True, text=True)
    assert again.returncode == 1 and "no server" in again.stderr
