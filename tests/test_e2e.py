"""End to end: `python -m mmfind` in real subprocesses (pipes, a pseudo-terminal), on test-tiny."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from media_factory import make_near_duplicate, make_photo, make_text

MODEL = "test-tiny"
TIMEOUT_S = 300
PLAIN_LINE = re.compile(r"^(-?\d+\.\d{4})\t(/.+)$")


@dataclass
class Setup:
    env: dict[str, str]
    photos: Path
    files: list[Path]
    broken: Path
    near_duplicate: Path  # of files[2], outside the indexed folder


def run(
    setup: Setup, *args: str | os.PathLike[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "mmfind", *map(os.fspath, args)],
        env={**setup.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def clean_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NO_COLOR", "FORCE_COLOR", "MMFIND_MODEL", "MMFIND_MAX_PIXELS", "COLUMNS")
    }
    env.update(
        MMFIND_HOME=str(home / "index"),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(home / "hf-home"),
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep),
    )
    return env


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """A folder of photos indexed by a real `mmfind index` process (with worker processes)."""
    base = tmp_path_factory.mktemp("e2e")
    photos = base / "photos"
    files = [
        make_photo(photos / f"{name}.jpg", size=(200, 150), seed=i)
        for i, name in enumerate(["beach", "forest", "city", "snow"])
    ]
    broken = make_text(photos / "broken.jpg")
    near_duplicate = make_near_duplicate(files[2], base / "sent" / "city-small.jpg")
    s = Setup(clean_env(base), photos, files, broken, near_duplicate)

    result = run(s, "index", photos, "--model", MODEL, "--workers", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "scanned": 5,
        "new": 4,
        "updated": 0,
        "moved": 0,
        "removed": 0,
        "unchanged": 0,
        "failed": 1,
    }
    assert result.stderr == ""
    return s


def test_index_query_info(setup: Setup) -> None:
    found = run(setup, "query", "--image", setup.near_duplicate, "--json")
    assert found.returncode == 0, found.stderr
    document = json.loads(found.stdout)
    assert document["model"] == MODEL
    results = document["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert results[0]["path"] == str(setup.files[2])
    assert results[0]["score"] > results[1]["score"]
    assert {r["path"] for r in results} == {str(f) for f in setup.files}

    info = run(setup, "info", "--json")
    assert info.returncode == 0
    described = json.loads(info.stdout)
    assert described["index"] == setup.env["MMFIND_HOME"]
    assert (described["model"], described["dim"]) == (MODEL, 64)
    assert (described["files"], described["items"], described["failed"]) == (4, 4, 1)
    assert described["kinds"] == {"image": 4}
    assert described["roots"] == [str(setup.photos)]
    assert described["size_bytes"] > 0
    assert described["last_run"]


def test_input_error_is_one_line_with_exit_status_2(setup: Setup) -> None:
    missing = setup.photos / "not-there.jpg"
    result = run(setup, "query", "--image", missing)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"mmfind: query image not found: {missing}\n"


def test_piped_output_is_plain_lines(setup: Setup) -> None:
    result = run(setup, "query", "a snowy mountain")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    matches = [PLAIN_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    scores = [float(m.group(1)) for m in matches if m]
    assert scores == sorted(scores, reverse=True)
    assert {m.group(2) for m in matches if m} == {str(f) for f in setup.files}
    assert "\x1b" not in result.stdout
    assert result.stderr == ""


def _on_terminal(setup: Setup, args: Sequence[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run with stdout on a pseudo-terminal (stderr piped); returns (status, stdout, stderr)."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmfind", *args],
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**setup.env, "COLUMNS": "200", "LINES": "50", "TERM": "xterm-256color", **env},
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    status = proc.wait(timeout=TIMEOUT_S)
    assert "Traceback" not in err
    return status, b"".join(chunks).decode(), err


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_terminal_gets_a_table_and_no_color_gets_plain_text(setup: Setup) -> None:
    status, out, err = _on_terminal(setup, ["query", "a city street"], {})
    assert status == 0, err
    assert "\x1b[" in out  # styled for a person
    assert "'a city street': 4 result(s)" in out
    for f in setup.files:
        assert f.name in out
    assert "200×150" in out

    status, out, err = _on_terminal(setup, ["query", "a city street"], {"NO_COLOR": "1"})
    assert status == 0, err
    assert "\x1b" not in out
    lines = out.replace("\r\n", "\n").splitlines()
    assert len(lines) == 4
    assert all(PLAIN_LINE.fullmatch(line) for line in lines), lines
