"""Concurrent use: queries (and doctor) while a real `mmfind index` process writes; a second
writer refuses or waits; two processes opening a catalog that is being created or upgraded."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from media_factory import make_photo

from mmfind.config import CATALOG_NAME
from mmfind.indexer import IndexOptions, run_index
from mmfind.store.catalog import MIGRATIONS, Catalog, _statements
from mmfind.store.lock import lock_holder
from robustness.helpers import MODEL, CatalogPoller, cli, kill_group, one_line_error, spawn

FIRST, ADDED = 12, 100


def _wait_for_the_run(poller: CatalogPoller, runs: int, timeout_s: float = 60.0) -> None:
    """Until the index run has taken the lock and started (its row in `runs`). Watching the
    catalog, not probing the lock: a probe holds the lock for an instant, and a run starting
    in that instant would be refused."""
    deadline = time.monotonic() + timeout_s
    while (poller.count("SELECT count(*) FROM runs") or 0) < runs:
        assert time.monotonic() < deadline, "the index run never started"
        time.sleep(0.01)


def _query(index_dir: Path, stderr: list[str]) -> list[dict[str, object]]:
    result = cli("query", "a photo", "--index", index_dir, "--json", "-n", "1000", "--no-server")
    stderr.append(result.stderr)
    assert result.exit_code == 0, result.stderr
    found: list[dict[str, object]] = json.loads(result.stdout)["results"]
    return found


def _doctor_during_the_run(index_dir: Path, pid: int, stderr: list[str]) -> None:
    """A run in progress is no damage; --repair leaves its files alone and says why."""
    report = cli("doctor", "--index", index_dir, "--repair", "--json")
    stderr.append(report.stderr)
    document = json.loads(report.stdout)
    assert report.exit_code == 0, document
    checks = {c["name"]: c for c in document["checks"]}
    assert checks["writer lock"]["status"] == "warning"
    assert f"pid {pid}" in checks["writer lock"]["detail"]
    assert checks["ann:clip"]["status"] == "warning" and checks["ann:clip"]["repaired"] is None
    assert "in progress" in checks["last run"]["detail"]
    assert document["repairs"] == []
    assert any("another mmfind index run" in n for n in document["not_repaired"])


def test_queries_doctor_and_a_second_writer_during_an_index_run(
    tmp_path: Path, tiny_encoder: object
) -> None:
    root, idx = tmp_path / "media", tmp_path / "index"
    for i in range(FIRST):
        make_photo(root / "old" / f"p{i}.jpg", size=(96, 72), seed=i)
    options = IndexOptions(paths=[str(root)], model=MODEL, workers=0, device="cpu")
    run_index(idx, options, encoders={"clip": tiny_encoder})  # a committed state, ANN file too
    for i in range(ADDED):
        make_photo(root / "new" / f"p{i}.jpg", size=(96, 72), seed=1000 + i)
    total = FIRST + ADDED

    writer = spawn(
        "index", root, "--index", idx, "--model", MODEL, "--workers", "1",
        "--batch-size", "1", "--json",
    )  # fmt: skip
    waiter = None
    poller = CatalogPoller(idx)
    stderr: list[str] = []
    try:
        _wait_for_the_run(poller, runs=2)
        assert lock_holder(idx) == writer.pid
        # A second writer refuses at once, naming the holder; with --wait it waits its turn.
        refused = cli("index", root, "--index", idx, "--model", MODEL, "--workers", "0")
        assert refused.exit_code == 75
        one_line_error(refused, "another mmfind index run", f"pid {writer.pid}", "--wait")
        waiter = spawn("index", root, "--index", idx, "--wait", "300", "--json")

        seen: list[int] = []
        frozen = False
        last_query = 0.0
        while writer.poll() is None:
            before = poller.count("SELECT count(*) FROM files")
            if before == FIRST and time.monotonic() - last_query < 0.3:
                time.sleep(0.005)  # the run is loading its model: watch for its first commit
                continue
            last_query = time.monotonic()
            if not frozen and before is not None and FIRST < before < total:
                # Freeze the writer mid-run (maybe mid-transaction): what readers see is
                # exactly what it has committed, and they never wait for it.
                frozen = True
                os.kill(writer.pid, signal.SIGSTOP)
                try:
                    committed = poller.count("SELECT count(*) FROM files")
                    found = _query(idx, stderr)
                    assert committed is not None and len(found) == committed
                    _doctor_during_the_run(idx, writer.pid, stderr)
                finally:
                    os.kill(writer.pid, signal.SIGCONT)
                continue
            found = _query(idx, stderr)
            after = poller.count("SELECT count(*) FROM files")
            assert before is not None and after is not None
            assert before <= len(found) <= after  # the last committed state, nothing else
            seen.append(len(found))
            time.sleep(0.1)  # leave the run (and its decode worker) the CPU it needs
        out, err = writer.communicate(timeout=120)
        stderr.append(err.decode())
        assert writer.returncode == 0, err.decode()
        assert json.loads(out)["new"] == ADDED
        assert frozen and len(seen) >= 3, seen

        out, err = waiter.communicate(timeout=120)
        stderr.append(err.decode())
        assert waiter.returncode == 0, err.decode()
        assert json.loads(out)["unchanged"] == total  # it ran after the first, on its result
    finally:
        poller.close()
        kill_group(writer)
        if waiter is not None:
            kill_group(waiter)
    final = cli("query", "a photo", "--index", idx, "--json", "-n", "1000", "--no-server")
    assert len(json.loads(final.stdout)["results"]) == total
    for text in stderr:
        assert "locked" not in text and "Traceback" not in text and "internal error" not in text


def _migrating_writer(index_dir: Path) -> sqlite3.Connection:
    """A connection half-way through creating a catalog, as `mmfind index` is at its start:
    the migrations table exists, the migrations themselves are written but not committed."""
    index_dir.mkdir(parents=True)
    conn = sqlite3.connect(index_dir / CATALOG_NAME, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE migrations(name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    conn.execute("BEGIN IMMEDIATE")
    for name, sql in MIGRATIONS:
        for statement in _statements(sql):
            conn.execute(statement)
        conn.execute("INSERT INTO migrations(name, applied_at) VALUES (?, 0)", (name,))
    return conn


@pytest.mark.parametrize("create", [False, True])
def test_opening_a_catalog_while_another_process_migrates_it(tmp_path: Path, create: bool) -> None:
    """A query (or a doctor, or `info`) that opens the catalog while the first `mmfind index`
    creates it — or while another process applies a new migration after an upgrade — waits for
    that transaction and finds the work done; it must not apply the migrations a second time
    ("table meta already exists", reported as a corrupt catalog)."""
    idx = tmp_path / "index"
    writer = _migrating_writer(idx)
    timer = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    timer.start()
    try:
        catalog = Catalog.open(idx, create=create)
        try:
            assert catalog.applied_migrations() == [name for name, _ in MIGRATIONS]
        finally:
            catalog.close()
    finally:
        timer.join()
        writer.close()
