"""Tests for mmfind.store.catalog: real SQLite files in tmp_path, no models."""

from __future__ import annotations

import gc
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmfind.config import CATALOG_NAME
from mmfind.errors import CatalogError, EmptyIndexError
from mmfind.store import catalog as catalog_module
from mmfind.store.catalog import Catalog, ItemSpans, display_path

DIM = 8
NON_UTF8_FILE = os.fsdecode(b"/x/caf\xe9.jpg")
NON_UTF8_DIR = os.fsdecode(b"/x/caf\xe9")


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def cat(index_dir: Path) -> Iterator[Catalog]:
    catalog = Catalog.open(index_dir, create=True)
    yield catalog
    catalog.close()


def unit_vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_file(
    cat: Catalog,
    path: str,
    *,
    kind: str = "image",
    digest: bytes | None = None,
    space: str | None = "clip",
    n_items: int = 1,
    seed: int = 0,
) -> tuple[int, list[int]]:
    """One file row (and its items in `space`) in its own transaction."""
    with cat.atomic():
        file_id = cat.insert_file(
            path, kind, 100, 1_000, digest if digest is not None else os.fsencode(path), 4, 3
        )
        item_ids = cat.insert_items(file_id, space, unit_vectors(n_items, seed)) if space else []
    return file_id, item_ids


# -- opening and migrations ----------------------------------------------------------------------


def test_new_catalog_records_every_migration_by_name(cat: Catalog) -> None:
    names = [name for name, _ in catalog_module.MIGRATIONS]
    assert cat.applied_migrations() == names
    rows = cat.conn.execute("SELECT name, applied_at FROM migrations").fetchall()
    assert [r[0] for r in rows] == names
    assert all(abs(r[1] - time.time()) < 60 for r in rows)
    tables = {r[0] for r in cat.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "roots", "spaces", "files", "items", "tombstones", "failures", "runs"} <= tables


def test_reopening_does_not_reapply_migrations(index_dir: Path) -> None:
    first = Catalog.open(index_dir, create=True)
    applied_at = first.conn.execute("SELECT name, applied_at FROM migrations").fetchall()
    add_file(first, "/p/a.jpg")
    first.close()

    again = Catalog.open(index_dir, create=False)
    try:
        assert (
            again.conn.execute("SELECT name, applied_at FROM migrations").fetchall() == applied_at
        )
        assert list(again.all_files()) == ["/p/a.jpg"]
        assert again.item_count("clip") == 1
    finally:
        again.close()


def test_a_new_migration_is_applied_once_on_reopen(
    index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Catalog.open(index_dir, create=True).close()
    extra = ("9999_test_extra", "CREATE TABLE extra(x INTEGER);")
    monkeypatch.setattr(catalog_module, "MIGRATIONS", [*catalog_module.MIGRATIONS, extra])

    for _ in range(2):
        cat = Catalog.open(index_dir, create=False)
        try:
            assert cat.applied_migrations()[-1] == "9999_test_extra"
            count = cat.conn.execute("SELECT count(*) FROM migrations").fetchone()[0]
            assert count == len(catalog_module.MIGRATIONS)  # the patched list, extra included
            cat.conn.execute("SELECT x FROM extra")  # the table exists
        finally:
            cat.close()


def test_a_failing_migration_leaves_nothing_behind(
    index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Catalog.open(index_dir, create=True).close()
    broken = ("9999_broken", "CREATE TABLE half(x INTEGER);\nINSERT INTO no_such_table VALUES (1);")
    monkeypatch.setattr(catalog_module, "MIGRATIONS", [*catalog_module.MIGRATIONS, broken])

    with pytest.raises(CatalogError):
        Catalog.open(index_dir, create=False)

    raw = sqlite3.connect(index_dir / CATALOG_NAME)
    try:
        names = [r[0] for r in raw.execute("SELECT name FROM migrations")]
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        raw.close()
    assert names == [name for name, _ in catalog_module.MIGRATIONS[:-1]]
    assert "half" not in tables  # the DDL was rolled back with the record


def test_catalog_from_a_newer_mmfind_is_refused(index_dir: Path) -> None:
    _make_newer(index_dir)

    with pytest.raises(CatalogError, match="newer mmfind") as info:
        Catalog.open(index_dir, create=False)
    assert "9999_from_future" in str(info.value)
    assert info.value.exit_code == 3


def _valid_catalog_bytes(index_dir: Path) -> bytes:
    cat = Catalog.open(index_dir, create=True)
    for i in range(200):
        add_file(cat, f"/photos/{i:04d}.jpg", seed=i)
    cat.close()
    path = index_dir / CATALOG_NAME
    assert not path.with_name(CATALOG_NAME + "-wal").exists()  # checkpointed on close
    return path.read_bytes()


def _corrupt(kind: str, index_dir: Path) -> None:
    path = index_dir / CATALOG_NAME
    if kind == "random-bytes":
        index_dir.mkdir(parents=True)
        path.write_bytes(np.random.default_rng(7).bytes(64 * 1024))
    elif kind == "truncated-half":
        data = _valid_catalog_bytes(index_dir)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-header":
        data = _valid_catalog_bytes(index_dir)
        path.write_bytes(data[:50])
    elif kind == "text-file":
        index_dir.mkdir(parents=True)
        path.write_text("this is not a database\n" * 200)


@pytest.mark.parametrize(
    "kind", ["random-bytes", "truncated-half", "truncated-header", "text-file"]
)
def test_corrupt_catalog_raises_catalog_error(kind: str, index_dir: Path) -> None:
    _corrupt(kind, index_dir)

    with pytest.raises(CatalogError) as info:
        Catalog.open(index_dir, create=False)

    assert not isinstance(info.value, sqlite3.Error)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    message = str(info.value)
    assert str(index_dir / CATALOG_NAME) in message and "move it aside" in message


def _make_newer(index_dir: Path) -> None:
    Catalog.open(index_dir, create=True).close()
    raw = sqlite3.connect(index_dir / CATALOG_NAME)
    with raw:
        raw.execute("INSERT INTO migrations(name, applied_at) VALUES ('9999_from_future', 0)")
    raw.close()


@pytest.mark.parametrize("kind", ["random-bytes", "truncated-half", "newer-schema"])
def test_a_refused_catalog_closes_its_connection(
    kind: str, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "newer-schema":
        _make_newer(index_dir)
    else:
        _corrupt(kind, index_dir)
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def spy(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(conn)
        return conn

    monkeypatch.setattr(catalog_module.sqlite3, "connect", spy)

    with pytest.raises(CatalogError):
        Catalog.open(index_dir, create=False)

    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")


def test_after_a_refused_catalog_the_same_process_can_start_over(
    index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The symptom of a leaked connection: it kept a lock, so re-creating the catalog in place
    in the same process (a long-lived caller) hit 'database is locked' after busy_timeout."""
    monkeypatch.setattr(catalog_module, "BUSY_TIMEOUT_MS", 300)
    _corrupt("truncated-half", index_dir)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a lucky collection would otherwise hide a leaked connection
    try:
        with pytest.raises(CatalogError, match="malformed"):
            Catalog.open(index_dir, create=False)
        (index_dir / CATALOG_NAME).write_bytes(b"")  # emptied in place: SQLite starts afresh

        fresh = Catalog.open(index_dir, create=True)
        try:
            add_file(fresh, "/p/new.jpg")
            assert fresh.file_count() == 1
            assert fresh.applied_migrations() == [n for n, _ in catalog_module.MIGRATIONS]
        finally:
            fresh.close()
    finally:
        if gc_was_enabled:
            gc.enable()


def test_open_without_create_on_a_missing_index(index_dir: Path) -> None:
    with pytest.raises(EmptyIndexError, match="mmfind index"):
        Catalog.open(index_dir, create=False)
    assert not index_dir.exists()  # nothing created as a side effect


def test_wal_mode_and_pragmas(cat: Catalog) -> None:
    assert cat.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cat.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert cat.conn.execute("PRAGMA busy_timeout").fetchone()[0] == catalog_module.BUSY_TIMEOUT_MS


# -- transactions --------------------------------------------------------------------------------


def test_atomic_rolls_back_everything_on_error(cat: Catalog) -> None:
    add_file(cat, "/p/kept.jpg")

    with pytest.raises(RuntimeError, match="boom"), cat.atomic():
        file_id = cat.insert_file("/p/lost.jpg", "image", 1, 1, b"h", None, None)
        cat.insert_items(file_id, "clip", unit_vectors(3))
        cat.set_meta("k", "v")
        cat.record_failure("/p/bad.jpg", "image", 1, 1, "broken")
        raise RuntimeError("boom")

    assert not cat.conn.in_transaction
    assert list(cat.all_files()) == ["/p/kept.jpg"]
    assert cat.item_count() == 1
    assert cat.get_meta("k") is None
    assert cat.failures() == []


def test_atomic_nests_into_one_transaction(cat: Catalog, index_dir: Path) -> None:
    reader = Catalog.open(index_dir, create=False)
    try:
        with cat.atomic():
            with cat.atomic():
                cat.set_meta("inner", "1")
            assert cat.conn.in_transaction  # the inner block did not commit
            assert reader.get_meta("inner") is None
            cat.set_meta("outer", "2")
        assert not cat.conn.in_transaction
        assert (reader.get_meta("inner"), reader.get_meta("outer")) == ("1", "2")

        with pytest.raises(KeyError), cat.atomic():
            cat.set_meta("outer2", "x")
            with cat.atomic():
                cat.set_meta("inner2", "y")
                raise KeyError("inner failure")
        assert not cat.conn.in_transaction
        assert cat.get_meta("outer2") is None and cat.get_meta("inner2") is None
    finally:
        reader.close()


def test_reader_sees_last_commit_while_a_writer_transaction_is_open(
    cat: Catalog, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_file(cat, "/p/committed.jpg")
    monkeypatch.setattr(catalog_module, "BUSY_TIMEOUT_MS", 200)  # a lock would fail fast
    reader: Catalog | None = None
    try:
        with cat.atomic():
            file_id = cat.insert_file("/p/pending.jpg", "image", 1, 1, b"h", None, None)
            cat.insert_items(file_id, "clip", unit_vectors(2))
            started = time.monotonic()
            # A query process starting now opens the catalog while the writer holds its lock.
            reader = Catalog.open(index_dir, create=False)
            assert list(reader.all_files()) == ["/p/committed.jpg"]
            assert reader.item_count("clip") == 1
            hits = reader.hits_for_items([1, 2, 3])
            assert sorted(hits) == [1]
            ids, vectors = reader.filtered_vectors("clip", (), ())
            assert ids.tolist() == [1] and vectors.shape == (1, DIM)
            assert time.monotonic() - started < 0.2  # no busy waiting
        assert sorted(reader.all_files()) == ["/p/committed.jpg", "/p/pending.jpg"]
        assert reader.item_count("clip") == 3
    finally:
        if reader is not None:
            reader.close()


# -- files, items, tombstones --------------------------------------------------------------------


def test_item_ids_are_never_reused(cat: Catalog) -> None:
    _, first = add_file(cat, "/p/a.jpg", n_items=3)
    file_b, second = add_file(cat, "/p/b.jpg", n_items=2)
    assert first == [1, 2, 3] and second == [4, 5]

    with cat.atomic():
        cat.delete_files([file_b])  # the highest ids are gone
    _, third = add_file(cat, "/p/c.jpg", n_items=2)

    assert third == [6, 7]
    assert cat.max_item_id("clip") == 7


def test_deleting_a_file_cascades_to_items_and_writes_tombstones(cat: Catalog) -> None:
    file_a, items_a = add_file(cat, "/p/a.jpg", n_items=2)
    file_b, items_b = add_file(cat, "/p/b.jpg", n_items=3, space="clap")
    file_c, items_c = add_file(cat, "/p/c.jpg", n_items=1)

    with cat.atomic():
        cat.delete_files([file_a, file_b])
    # A raw delete of the file row must cascade too (foreign keys are on).
    with cat.atomic():
        cat.conn.execute("DELETE FROM files WHERE id=?", (file_c,))

    assert cat.file_count() == 0 and cat.item_count() == 0
    assert sorted(cat.tombstones("clip")) == items_a + items_c
    assert sorted(cat.tombstones("clap")) == items_b

    with cat.atomic():
        cat.clear_tombstones("clip", up_to_id=items_a[-1])
    assert cat.tombstones("clip") == items_c
    with cat.atomic():
        cat.clear_tombstones("clip")
    assert cat.tombstones("clip") == [] and sorted(cat.tombstones("clap")) == items_b


def test_vectors_round_trip_as_float32(cat: Catalog) -> None:
    vectors = unit_vectors(5, seed=3)
    with cat.atomic():
        file_id = cat.insert_file("/p/v.mp4", "video", 1, 1, b"h", None, None)
        ids = cat.insert_items(
            file_id, "clip", vectors, spans=ItemSpans(times=[(i, i + 1.5) for i in range(5)])
        )

    np.testing.assert_array_equal(cat.vectors_of_file(file_id), vectors)
    chunks = list(cat.iter_vectors("clip", after_id=ids[1], chunk=2))
    assert [c[0].tolist() for c in chunks] == [ids[2:4], ids[4:]]
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), vectors[2:])
    hits = cat.hits_for_items(ids)
    assert [(hits[i].start, hits[i].end) for i in ids] == [(i, i + 1.5) for i in range(5)]


def test_non_utf8_paths_round_trip(cat: Catalog) -> None:
    assert NON_UTF8_FILE == "/x/caf\udce9.jpg"
    file_id, items = add_file(cat, NON_UTF8_FILE, digest=b"d1")
    add_file(cat, "/x/cafe.jpg", digest=b"d2")

    stored = cat.conn.execute("SELECT path FROM files WHERE id=?", (file_id,)).fetchone()[0]
    assert stored == b"/x/caf\xe9.jpg"  # the file system's bytes, not a re-encoding
    files = cat.all_files()
    assert NON_UTF8_FILE in files and files[NON_UTF8_FILE].id == file_id
    assert os.fsencode(files[NON_UTF8_FILE].path) == b"/x/caf\xe9.jpg"
    assert cat.hits_for_items(items)[items[0]].path == NON_UTF8_FILE
    assert cat.files_with_hash(b"d1", "clip")[0].path == NON_UTF8_FILE
    inside = os.path.join(NON_UTF8_DIR, "photo.jpg")
    _, inside_items = add_file(cat, inside, digest=b"d3")
    assert [h.path for h in cat.hits_for_items(items + inside_items, within=["/x"]).values()] == [
        NON_UTF8_FILE,
        inside,
    ]
    assert list(cat.hits_for_items(items + inside_items, within=[NON_UTF8_DIR])) == inside_items
    assert cat.count_filtered("clip", [NON_UTF8_DIR], ()) == 1

    with cat.atomic():
        cat.record_failure(NON_UTF8_FILE, "image", 1, 2, "truncated")
        cat.add_roots([NON_UTF8_DIR])
    assert [f.path for f in cat.failures()] == [NON_UTF8_FILE]
    assert cat.roots() == [NON_UTF8_DIR]

    assert display_path(NON_UTF8_FILE) == "/x/caf\ufffd.jpg"
    assert display_path(b"/x/caf\xe9.jpg") == "/x/caf\ufffd.jpg"
    assert display_path("/x/café.jpg") == "/x/café.jpg"


@pytest.fixture
def tricky_tree(cat: Catalog) -> dict[str, int]:
    """Sibling directories that LIKE patterns ('%', '_') or a bare prefix would confuse."""
    names = [
        "/a/b%c/1.jpg",
        "/a/bXc/2.jpg",
        "/a/b_c/3.jpg",
        "/a/bYc/4.jpg",
        "/a/b/5.jpg",
        "/a/b/deep/6.jpg",
        "/a/bc/7.jpg",
        "/a/b.jpg",
    ]
    return {name: add_file(cat, name, seed=i)[1][0] for i, name in enumerate(names)}


@pytest.mark.parametrize(
    ("within", "expected"),
    [
        (["/a/b%c"], ["/a/b%c/1.jpg"]),
        (["/a/b_c"], ["/a/b_c/3.jpg"]),
        (["/a/b%c/"], ["/a/b%c/1.jpg"]),
        (["/a/b"], ["/a/b/5.jpg", "/a/b/deep/6.jpg"]),
        (["/a/b/"], ["/a/b/5.jpg", "/a/b/deep/6.jpg"]),
        (["/a/b_c", "/a/bc"], ["/a/b_c/3.jpg", "/a/bc/7.jpg"]),
        (["/a/b.jpg"], ["/a/b.jpg"]),  # a file named directly
        (["/a/b%"], []),
        (["/a/"], None),  # everything
    ],
)
def test_within_filter_is_literal_and_respects_path_components(
    cat: Catalog, tricky_tree: dict[str, int], within: list[str], expected: list[str] | None
) -> None:
    if expected is None:
        expected = sorted(tricky_tree)
    hits = cat.hits_for_items(list(tricky_tree.values()), within=within)
    assert sorted(h.path for h in hits.values()) == sorted(expected)
    assert cat.count_filtered("clip", within, ()) == len(expected)
    ids, vectors = cat.filtered_vectors("clip", within, ())
    assert sorted(ids.tolist()) == sorted(tricky_tree[p] for p in expected)
    assert len(vectors) == len(expected)


def test_kind_filter_and_filtered_counts_agree(cat: Catalog) -> None:
    add_file(cat, "/m/a.jpg", kind="image", n_items=1)
    add_file(cat, "/m/b.mp4", kind="video", n_items=4, seed=1)
    add_file(cat, "/n/c.mp4", kind="video", n_items=2, seed=2)
    add_file(cat, "/m/d.wav", kind="audio", n_items=3, space="clap", seed=3)
    clip_ids = list(range(1, 8))

    cases = [
        ((), (), 7),
        ((), ("video",), 6),
        ((), ("image", "video"), 7),
        (("/m",), ("video",), 4),
        ((), ("audio",), 0),  # audio items live in another space
        ((), ("text",), 0),
    ]
    for within, kinds, expected in cases:
        assert cat.count_filtered("clip", within, kinds) == expected, (within, kinds)
        ids, vectors = cat.filtered_vectors("clip", within, kinds)
        assert len(ids) == expected and ids.tolist() == sorted(ids.tolist())
        assert vectors.shape == ((expected, DIM) if expected else (0, 0))
        assert sorted(cat.hits_for_items(clip_ids, within=within, kinds=kinds)) == ids.tolist()
    audio_hits = cat.hits_for_items(range(1, 11), kinds=["audio"])
    assert sorted(audio_hits) == [8, 9, 10] and {h.kind for h in audio_hits.values()} == {"audio"}
    assert cat.count_filtered("clap", (), ("audio",)) == 3


def test_hits_for_items_skips_gone_items_and_handles_many_ids(cat: Catalog) -> None:
    file_id, items = add_file(cat, "/p/a.jpg", n_items=3)
    with cat.atomic():
        cat.delete_items_of_file(file_id)
        new = cat.insert_items(file_id, "clip", unit_vectors(1))
    wanted = [*items, *new, *range(1000, 2200)]  # more than one 500-id chunk
    hits = cat.hits_for_items(wanted)
    assert list(hits) == new
    hit = hits[new[0]]
    assert (hit.file_id, hit.path, hit.kind, hit.size, hit.mtime_ns) == (
        file_id, "/p/a.jpg", "image", 100, 1_000,
    )  # fmt: skip
    assert (hit.width, hit.height, hit.start, hit.end) == (4, 3, None, None)


def test_known_hashes_only_count_files_with_items_in_the_space(cat: Catalog) -> None:
    older, _ = add_file(cat, "/p/a.jpg", digest=b"same", space="clip")
    add_file(cat, "/p/b.wav", digest=b"audio", space="clap")
    add_file(cat, "/p/c.jpg", digest=b"same", space=None)  # no items yet
    add_file(cat, "/p/d.jpg", digest=b"orphan", space=None)
    newer, _ = add_file(cat, "/p/e.jpg", digest=b"same", space="clip")

    assert cat.known_hashes("clip") == {b"same"}
    assert cat.known_hashes("clap") == {b"audio"}
    assert cat.known_hashes("nothing") == set()
    assert [f.id for f in cat.files_with_hash(b"same", "clip")] == [older, newer]
    assert cat.files_with_hash(b"same", "clap") == []
    assert cat.files_with_hash(b"orphan", "clip") == []
    assert [f.path for f in cat.files_with_hash(b"audio", "clap")] == ["/p/b.wav"]


def test_copy_items_reuses_vectors(cat: Catalog) -> None:
    source, source_items = add_file(cat, "/p/a.jpg", n_items=2, digest=b"h")
    target, _ = add_file(cat, "/p/copy.jpg", digest=b"h", space=None)
    with cat.atomic():
        assert cat.copy_items(source, target) == 2
    np.testing.assert_array_equal(cat.vectors_of_file(target), cat.vectors_of_file(source))
    assert cat.max_item_id("clip") == source_items[-1] + 2


def test_record_failure_upserts_and_clear_failures_removes(cat: Catalog) -> None:
    with cat.atomic():
        cat.record_failure("/p/a.jpg", "image", 10, 100, "truncated")
        cat.record_failure("/p/b.jpg", "image", 20, 200, "bomb")
    first_time = cat.failures()[0].failed_at
    with cat.atomic():
        cat.record_failure("/p/a.jpg", "image", 11, 101, "still broken")

    failures = cat.failures()
    assert [(f.path, f.size, f.mtime_ns, f.reason) for f in failures] == [
        ("/p/a.jpg", 11, 101, "still broken"),
        ("/p/b.jpg", 20, 200, "bomb"),
    ]
    assert failures[0].failed_at >= first_time
    assert cat.failure_count() == 2

    with cat.atomic():
        cat.clear_failures(["/p/a.jpg", "/p/not-there.jpg"])
    assert [f.path for f in cat.failures()] == ["/p/b.jpg"]


def test_reset_space_removes_its_files_and_items(cat: Catalog) -> None:
    with cat.atomic():
        cat.set_space("clip", "model-a", DIM)
        cat.set_space("clap", "model-c", 4)
    _, clip_items = add_file(cat, "/p/a.jpg", n_items=2)
    add_file(cat, "/p/b.wav", space="clap", n_items=3)
    _, mixed_items = add_file(cat, "/p/c.mp4", n_items=1)
    with cat.atomic():
        mixed_id = cat.all_files()["/p/c.mp4"].id
        mixed_clap = cat.insert_items(mixed_id, "clap", unit_vectors(1))
    add_file(cat, "/p/d.jpg", space=None)  # no items: not part of the space

    assert cat.reset_space("clip") == 2

    assert sorted(cat.all_files()) == ["/p/b.wav", "/p/d.jpg"]
    assert cat.item_count("clip") == 0 and cat.item_count("clap") == 3
    assert [s.name for s in cat.spaces()] == ["clap"]
    assert cat.space("clip") is None
    assert sorted(cat.tombstones("clip")) == clip_items + mixed_items
    assert cat.tombstones("clap") == mixed_clap

    with cat.atomic():
        cat.set_space("clip", "model-b", 16)
    assert cat.space("clip") == catalog_module.SpaceInfo("clip", "model-b", 16)


def test_meta_spaces_and_roots(cat: Catalog) -> None:
    with cat.atomic():
        cat.set_meta("ann.clip.file", "clip.1.hnsw")
        cat.set_meta("ann.clip.file", "clip.2.hnsw")
        cat.set_meta("ann.clap.file", "clap.1.hnsw")
        cat.set_space("clip", "m1", 512)
        cat.set_space("clip", "m2", 768)
        cat.add_roots(["/r/b", "/r/a", "/r/a"])
        cat.mark_roots_indexed(["/r/a"], 123.0)
    assert cat.get_meta("ann.clip.file") == "clip.2.hnsw"
    assert cat.spaces() == [catalog_module.SpaceInfo("clip", "m2", 768)]
    assert cat.roots() == ["/r/a", "/r/b"]
    assert cat.conn.execute("SELECT last_indexed FROM roots ORDER BY path").fetchall() == [
        (123.0,),
        (None,),
    ]
    with cat.atomic():
        cat.delete_meta_prefix("ann.clip.")
    assert cat.get_meta("ann.clip.file") is None
    assert cat.get_meta("ann.clap.file") == "clap.1.hnsw"
