"""Shared tools of the robustness tests: the CLI in-process and as a real process, snapshots of
an index's state, and integrity checks."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from click.testing import Result
from typer.testing import CliRunner

from mmfind.cli.app import app
from mmfind.config import CATALOG_NAME
from mmfind.store.ann import AnnState, AnnStore
from mmfind.store.catalog import Catalog

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "test-tiny"
_runner = CliRunner()


def cli(*args: str | os.PathLike[str], env: dict[str, str | None] | None = None) -> Result:
    """mmfind in this process; no exception and no traceback may escape it."""
    result = _runner.invoke(
        app, [os.fspath(a) for a in args], env={"COLUMNS": "200", "LINES": "50", **(env or {})}
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"mmfind {' '.join(map(str, args))} raised {result.exception!r}"
        ) from result.exception
    assert "Traceback" not in result.output
    return result


def one_line_error(result: Result, *needles: str) -> str:
    """A failed command: non-zero exit, one `mmfind: ...` line on stderr holding the needles."""
    assert result.exit_code != 0, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mmfind: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return lines[0]


def spawn(*args: str | os.PathLike[str], **popen: object) -> subprocess.Popen[bytes]:
    """`python -m mmfind ARGS` as a real process in its own process group."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "mmfind", *map(os.fspath, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
        **popen,
    )


def process_group_gone(pgid: int, timeout_s: float = 10.0) -> bool:
    """True once no live process of the group is left (a killed run's decode workers must not
    outlive it). Zombies waiting for init to reap them count as gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _live_members(pgid):
            return True
        time.sleep(0.05)
    return False


def _live_members(pgid: int) -> list[int]:
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs (macOS): any member, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    live = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(entry.name))
    return live


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Clean-up after a test: whatever is left of the process and its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


class CatalogPoller:
    """Reads the catalog of a running index as another process would (WAL reader)."""

    def __init__(self, index_dir: Path) -> None:
        self.path = index_dir / CATALOG_NAME
        self.conn: sqlite3.Connection | None = None

    # what a reader may meet while a run creates the catalog; any other error is a real one
    TRANSIENT = ("no such table", "database is locked", "database is busy", "unable to open")

    def count(self, sql: str) -> int | None:
        """The integer the query gives, or None while the catalog is not there yet."""
        if self.conn is None:
            if not self.path.exists() or self.path.stat().st_size == 0:
                return None
            try:  # read-only: never create or change what the run writes
                uri = f"{self.path.as_uri()}?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, timeout=30)
            except sqlite3.Error as exc:
                self._transient(exc)
                return None
        try:
            row = self.conn.execute(sql).fetchone()
        except sqlite3.Error as exc:
            self._transient(exc)
            return None
        return None if row is None else int(row[0])

    def _transient(self, exc: sqlite3.Error) -> None:
        """Re-raises `exc` unless it is one of the expected transient errors."""
        message = str(exc).lower()
        if any(t in message for t in self.TRANSIENT) or not self.path.exists():
            return
        raise exc

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --- state of an index -------------------------------------------------------------------------


@dataclass
class IndexState:
    vectors: dict[str, dict[str, np.ndarray]]  # path -> space -> (n, dim) in item order
    failures: dict[str, str]  # path -> reason
    roots: list[str]

    def assert_equal(self, other: IndexState, atol: float = 1e-5) -> None:
        assert sorted(self.vectors) == sorted(other.vectors)
        for path, spaces in self.vectors.items():
            assert spaces.keys() == other.vectors[path].keys(), path
            for space, vectors in spaces.items():
                theirs = other.vectors[path][space]
                assert vectors.shape == theirs.shape, (path, space)
                np.testing.assert_allclose(vectors, theirs, atol=atol, err_msg=f"{path} {space}")
        assert self.failures == other.failures
        assert self.roots == other.roots


def index_state(index_dir: Path) -> IndexState:
    catalog = Catalog.open(index_dir, create=False)
    try:
        vectors: dict[str, dict[str, list[np.ndarray]]] = {}
        rows = catalog.conn.execute(
            "SELECT f.path, i.space, i.vector FROM items i JOIN files f ON f.id=i.file_id "
            "ORDER BY f.path, i.space, i.start_s, i.line_start, i.id"
        )
        for raw, space, blob in rows:
            path = os.fsdecode(bytes(raw))
            vectors.setdefault(path, {}).setdefault(space, []).append(
                np.frombuffer(blob, dtype=np.float32)
            )
        files = set(catalog.all_files())
        assert files == set(vectors), "a file row without items"
        return IndexState(
            vectors={p: {s: np.stack(v) for s, v in sp.items()} for p, sp in vectors.items()},
            failures={f.path: f.reason for f in catalog.failures()},
            roots=catalog.roots(),
        )
    finally:
        catalog.close()


def assert_catalog_sound(index_dir: Path) -> None:
    """SQLite's own checks pass on the catalog as it is on disk (WAL included)."""
    conn = sqlite3.connect(index_dir / CATALOG_NAME)
    try:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def assert_ann_current(index_dir: Path) -> None:
    """Every space's ANN file is in force, loads, and covers exactly the live items."""
    catalog = Catalog.open(index_dir, create=False)
    try:
        store = AnnStore(catalog, index_dir)
        for space in catalog.spaces():
            assert store.is_current(space.name, space.dim, space.model), space.name
            loaded = store.load(space.name, space.dim, space.model)
            assert loaded is not None, space.name
            _, _, live = loaded
            assert live == catalog.item_count(space.name)
            state = AnnState.read(catalog, space.name)
            assert state is not None and state.model == space.model
        stray = {p.name for p in index_dir.glob("*.hnsw*")} - store.in_force()
        assert not stray, stray
    finally:
        catalog.close()


def write_garbage(path: Path, offset: int, size: int, seed: int = 0) -> None:
    """Random bytes over `size` bytes of a file from `offset` (a failing disk, a bad copy)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.random.default_rng(seed).bytes(size))


def checkpoint(index_dir: Path) -> None:
    """Move the WAL into the main file, so damage to the file hits committed pages."""
    conn = sqlite3.connect(index_dir / CATALOG_NAME)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def names(paths: Sequence[str]) -> list[str]:
    return sorted(os.path.basename(p) for p in paths)
