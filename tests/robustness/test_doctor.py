"""`mmfind doctor`: each check, its exit status, --json, --full and what --repair does."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from media_factory import make_photo, make_random_bytes

import mmfind.store.catalog as catalog_module
from mmfind.config import CATALOG_NAME
from mmfind.doctor import OK, PROBLEM, WARNING, run_doctor
from mmfind.indexer import IndexOptions, run_index
from robustness.helpers import MODEL, REPO_ROOT, cli, one_line_error

CHECKS = [
    "catalog", "schema", "items", "ann:clip", "text tower:clip", "ann files", "roots", "failures",
    "last run", "writer lock",
]  # fmt: skip


@pytest.fixture
def indexed(tmp_path: Path, tiny_encoder: object) -> tuple[Path, Path]:
    root, idx = tmp_path / "media", tmp_path / "index"
    for i in range(4):
        make_photo(root / f"p{i}.jpg", size=(96, 72), seed=i)
    run_index(
        idx,
        IndexOptions(paths=[str(root)], model=MODEL, workers=0, device="cpu"),
        encoders={"clip": tiny_encoder},
    )
    return root, idx


def doctor(idx: Path, *args: str) -> tuple[int, dict[str, dict[str, object]], dict[str, object]]:
    result = cli("doctor", "--index", idx, "--json", *args)
    document = json.loads(result.stdout)
    return result.exit_code, {c["name"]: c for c in document["checks"]}, document


def sql(idx: Path, statement: str, *params: object) -> None:
    conn = sqlite3.connect(idx / CATALOG_NAME)
    with conn:
        conn.execute(statement, params)
    conn.close()


def test_a_healthy_index(indexed: tuple[Path, Path]) -> None:
    _, idx = indexed
    code, checks, document = doctor(idx)
    assert code == 0 and document["healthy"] is True
    assert list(checks) == CHECKS
    assert all(c["status"] == OK for c in checks.values()), checks
    assert checks["catalog"]["detail"] == "quick_check ok: 4 files, 4 items"
    assert "4 items, test-tiny, 64 dims" in str(checks["ann:clip"]["detail"])
    assert set(document) == {"index", "healthy", "checks", "repairs", "not_repaired"}
    assert set(checks["catalog"]) == {"name", "status", "detail", "advice", "found", "repaired"}

    plain = cli("doctor", "--index", idx)
    assert plain.exit_code == 0
    assert [line.split("\t")[:2] for line in plain.stdout.splitlines()] == [
        [name, OK] for name in CHECKS
    ]
    assert plain.stderr == "mmfind: healthy\n"
    full = doctor(idx, "--full")[1]
    assert full["catalog"]["detail"] == "integrity_check ok: 4 files, 4 items"
    assert cli("doctor", "--index", idx, "--repair").exit_code == 0


def test_a_table_on_a_terminal(indexed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import mmfind.cli.doctor as doctor_cli

    _, idx = indexed
    (idx / "clip.99.hnsw").write_bytes(b"stray")
    monkeypatch.setattr(doctor_cli, "use_table", lambda: True)
    result = cli("doctor", "--index", idx)
    assert result.exit_code == 1
    assert "mmfind doctor" in result.stdout and "clip.99.hnsw" in result.stdout
    assert "1 problem(s) found; `mmfind doctor --repair` fixes 1 of them" in result.stderr


def test_without_an_index(tmp_path: Path) -> None:
    one_line_error(cli("doctor", "--index", tmp_path / "nothing"), "no index at")
    assert cli("doctor", "--index", tmp_path / "nothing").exit_code == 2


def test_stray_ann_files_are_removed(indexed: tuple[Path, Path]) -> None:
    _, idx = indexed
    (idx / "clip.7.hnsw").write_bytes(b"an old generation")
    (idx / "clip.8.hnsw.tmp").write_bytes(b"a save cut short")
    code, checks, _ = doctor(idx)
    assert code == 1 and checks["ann files"]["status"] == PROBLEM
    assert "clip.7.hnsw, clip.8.hnsw.tmp" in str(checks["ann files"]["detail"])
    code, checks, document = doctor(idx, "--repair")
    assert code == 0, document
    assert checks["ann files"]["repaired"] == "removed clip.7.hnsw, clip.8.hnsw.tmp"
    assert not list(idx.glob("*.hnsw.tmp")) and not (idx / "clip.7.hnsw").exists()


def test_an_ann_file_behind_the_catalog_is_a_warning_and_repair_updates_it(
    indexed: tuple[Path, Path], tiny_encoder: object
) -> None:
    """What a run killed before its final ANN write leaves: queries are right (they search the
    newer items exactly), so it is no problem; --repair brings the file up to date."""
    root, idx = indexed
    photo = os.fsencode(root / "p0.jpg")
    sql(idx, "DELETE FROM items WHERE file_id = (SELECT id FROM files WHERE path = ?)", photo)
    sql(idx, "DELETE FROM files WHERE path = ?", photo)
    code, checks, _ = doctor(idx)
    assert code == 0 and checks["ann:clip"]["status"] == WARNING
    assert "0 item(s) added and 1 removed" in str(checks["ann:clip"]["detail"])
    code, checks, _ = doctor(idx, "--repair")
    assert code == 0 and checks["ann:clip"]["status"] == OK
    assert checks["ann:clip"]["repaired"] == "brought up to date (3 items)"


def test_rows_that_refer_to_nothing_are_catalog_damage(indexed: tuple[Path, Path]) -> None:
    root, idx = indexed
    sql(idx, "DELETE FROM files WHERE path = ?", os.fsencode(root / "p0.jpg"))  # no cascade
    code, checks, _ = doctor(idx)
    assert code == 1 and checks["catalog"]["status"] == PROBLEM
    assert "foreign_key_check" in str(checks["catalog"]["detail"])
    assert "cannot be repaired in place" in str(checks["catalog"]["advice"])


def test_an_old_schema_is_upgraded_by_repair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = tmp_path / "index"
    with monkeypatch.context() as mp:
        mp.setattr(catalog_module, "MIGRATIONS", catalog_module.MIGRATIONS[:1])
        catalog_module.Catalog.open(idx, create=True).close()
    code, checks, _ = doctor(idx)
    assert code == 0 and checks["schema"]["status"] == WARNING
    assert "0002_durations_and_lines" in str(checks["schema"]["detail"])
    code, checks, document = doctor(idx, "--repair")
    assert code == 0 and checks["schema"]["status"] == OK
    assert document["repairs"] == ["schema: migrations applied"]


def test_a_newer_schema_is_a_problem_no_repair_can_fix(indexed: tuple[Path, Path]) -> None:
    _, idx = indexed
    sql(idx, "INSERT INTO migrations(name, applied_at) VALUES ('9999_from_the_future', 0)")
    code, checks, _ = doctor(idx)
    assert code == 1 and checks["schema"]["status"] == PROBLEM
    assert checks["schema"]["advice"] == "upgrade mmfind to use this index"
    code, _, document = doctor(idx, "--repair")
    assert code == 1
    assert document["not_repaired"] == ["schema: upgrade mmfind to use this index"]


def test_damaged_vectors_are_forgotten_and_indexed_again(
    indexed: tuple[Path, Path], tiny_encoder: object
) -> None:
    root, idx = indexed
    sql(idx, "UPDATE items SET vector = x'0000' WHERE id = (SELECT min(id) FROM items)")
    code, checks, _ = doctor(idx)
    assert code == 1 and checks["items"]["status"] == PROBLEM
    code, checks, _ = doctor(idx, "--repair")
    assert code == 0 and checks["items"]["status"] == OK
    assert str(checks["items"]["repaired"]).startswith("forgot 1 file(s)")
    options = IndexOptions(paths=[str(root)], model=MODEL, workers=0, device="cpu")
    summary = run_index(idx, options, encoders={"clip": tiny_encoder})
    assert summary.new == 1 and summary.unchanged == 3


def test_warnings_roots_failures_and_an_unfinished_run(
    indexed: tuple[Path, Path], tmp_path: Path, tiny_encoder: object
) -> None:
    root, idx = indexed
    gone = tmp_path / "unplugged"
    make_photo(gone / "x.jpg", size=(96, 72), seed=9)
    make_random_bytes(root / "broken.jpg", 500)
    options = IndexOptions(paths=[str(root), str(gone)], model=MODEL, workers=0, device="cpu")
    run_index(idx, options, encoders={"clip": tiny_encoder})
    (gone / "x.jpg").unlink()
    gone.rmdir()
    sql(idx, "INSERT INTO runs(started_at) VALUES (1e9)")  # as a killed run leaves it
    code, checks, _ = doctor(idx)
    assert code == 0  # nothing is damaged
    assert checks["roots"]["status"] == WARNING and str(gone) in str(checks["roots"]["detail"])
    assert checks["failures"]["status"] == WARNING
    assert checks["failures"]["detail"] == "1 file(s) could not be indexed"
    assert checks["last run"]["status"] == WARNING
    assert "did not finish" in str(checks["last run"]["detail"])
    assert checks["last run"]["advice"] == "run `mmfind index` to complete it"


HOLDER = """
import sys
from pathlib import Path
from mmfind.store.lock import writer_lock
with writer_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def lock_held(indexed: tuple[Path, Path]) -> Iterator[int]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(indexed[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_running_index_is_reported_and_repair_waits_for_it(
    indexed: tuple[Path, Path], lock_held: int
) -> None:
    _, idx = indexed
    (idx / "clip.9.hnsw").write_bytes(b"stray")  # not even checked while a run writes
    code, checks, _ = doctor(idx)
    assert code == 0
    assert checks["writer lock"]["status"] == WARNING
    assert f"pid {lock_held}" in str(checks["writer lock"]["detail"])
    assert checks["ann files"]["status"] == OK
    sql(idx, "UPDATE meta SET value='x' WHERE key='ann.clip.model'")
    code, checks, document = doctor(idx, "--repair")
    assert code == 1 and checks["ann:clip"]["status"] == PROBLEM
    assert document["repairs"] == []
    [reason] = document["not_repaired"]
    assert "nothing was repaired: another mmfind index run" in reason
    assert f"pid {lock_held}" in reason


def test_a_lock_file_left_by_a_killed_run_is_no_lock(indexed: tuple[Path, Path]) -> None:
    _, idx = indexed
    (idx / "writer.lock").write_text("999999\n")  # a dead pid: flock died with it
    code, checks, _ = doctor(idx)
    assert code == 0 and checks["writer lock"] == {
        "name": "writer lock", "status": OK, "detail": "free", "advice": None,
        "found": None, "repaired": None,
    }  # fmt: skip


def test_the_core_report(indexed: tuple[Path, Path]) -> None:
    _, idx = indexed
    (idx / "clip.42.hnsw").write_bytes(b"x")
    report = run_doctor(idx)
    assert not report.healthy and [c.name for c in report.problems] == ["ann files"]
    report = run_doctor(idx, repair=True)
    assert report.healthy and report.repairs == ["ann files: removed clip.42.hnsw"]
    stray = report.check("ann files")
    assert stray is not None and stray.found and stray.repaired
