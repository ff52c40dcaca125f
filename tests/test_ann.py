"""Tests for mmfind.store.ann: real hnswlib files kept in step with a real SQLite catalog."""

# ruff: noqa: F811  (the fixtures imported from ann_support are requested by their names)

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ann_support import (  # noqa: F401
    DIM,
    MODEL,
    SPACE,
    add_vectors,
    cat,
    index_dir,
    state,
    store,
    unit_vectors,
)

from mmfind.store import ann as ann_module
from mmfind.store.ann import AnnIndex, AnnState, AnnStore, build_from_catalog
from mmfind.store.catalog import Catalog


def add_items(cat: Catalog, n: int, seed: int) -> tuple[list[int], np.ndarray]:
    """n files with one item each; returns the item ids and their vectors."""
    vectors = unit_vectors(n, seed)
    return add_vectors(cat, vectors, str(seed)), vectors


def delete_items(cat: Catalog, item_ids: list[int]) -> None:
    """Delete the files owning these items (as the indexer does for gone files)."""
    hits = cat.hits_for_items(item_ids)
    assert len(hits) == len(item_ids)
    with cat.atomic():
        cat.delete_files(sorted({h.file_id for h in hits.values()}))


def summary(s: AnnState) -> tuple[str, int, str, int, int, int, int]:
    """The fields that describe what the file holds (size and digest are checked apart)."""
    return (s.file, s.dim, s.model, s.count, s.deleted, s.max_id, s.generation)


def hnsw_files(index_dir: Path) -> list[str]:
    return sorted(p.name for p in index_dir.glob("*.hnsw*"))


def loaded(store: AnnStore) -> tuple[AnnIndex, int, int]:
    result = store.load(SPACE, DIM, MODEL)
    assert result is not None
    return result


def all_labels(ann: AnnIndex, query: np.ndarray, k: int) -> list[int]:
    return [int(x) for x in ann.search(query, k)[0]]


# -- first build and search ----------------------------------------------------------------------


def test_sync_builds_saves_and_records_meta(cat: Catalog, store: AnnStore, index_dir: Path) -> None:
    ids, _ = add_items(cat, 50, seed=1)
    assert not store.is_current(SPACE, DIM, MODEL)
    assert store.load(SPACE, DIM, MODEL) is None

    assert store.sync(SPACE, DIM, MODEL) is True  # built from scratch

    assert hnsw_files(index_dir) == ["clip.1.hnsw"]
    saved = index_dir / "clip.1.hnsw"
    current = state(cat)
    assert summary(current) == ("clip.1.hnsw", DIM, MODEL, 50, 0, max(ids), 1)
    assert current.size == saved.stat().st_size
    assert current.digest == ann_module.file_digest(saved)
    assert store.is_current(SPACE, DIM, MODEL)
    assert not store.is_current(SPACE, DIM, "another-model")
    assert not store.is_current(SPACE, DIM + 1, MODEL)
    assert store.in_force() == {"clip.1.hnsw"}
    assert store.size_bytes() == saved.stat().st_size

    ann, max_id, live = loaded(store)
    assert (ann.count, max_id, live) == (50, max(ids), 50)
    assert sorted(ann.index.get_ids_list()) == ids


def test_search_matches_exact_brute_force(cat: Catalog, store: AnnStore) -> None:
    ids, vectors = add_items(cat, 200, seed=2)
    store.sync(SPACE, DIM, MODEL)
    ann, _, _ = loaded(store)
    id_array = np.array(ids)

    queries = unit_vectors(25, seed=99)
    for query in queries:
        labels, scores = ann.search(query, 10)
        exact = vectors @ query
        order = np.argsort(-exact)[:10]
        assert set(labels.tolist()) == set(id_array[order].tolist())  # recall 1.0
        np.testing.assert_allclose(np.sort(scores)[::-1], exact[order], atol=1e-5)
        assert list(scores) == sorted(scores, reverse=True)


def test_build_from_catalog_holds_every_live_item(cat: Catalog) -> None:
    ids, vectors = add_items(cat, 30, seed=3)
    delete_items(cat, ids[-5:])
    ann, max_id = build_from_catalog(cat, SPACE, DIM)
    assert ann.count == 25 and max_id == ids[-6]
    np.testing.assert_allclose(ann.index.get_items(ids[:3]), vectors[:3], atol=1e-6)

    empty, empty_max = build_from_catalog(cat, "nothing", DIM)
    assert (empty.count, empty_max) == (0, 0)


# -- incremental updates -------------------------------------------------------------------------


def test_incremental_sync_after_adding_items(
    cat: Catalog, store: AnnStore, index_dir: Path
) -> None:
    ids, _ = add_items(cat, 40, seed=4)
    store.sync(SPACE, DIM, MODEL)
    new_ids, new_vectors = add_items(cat, 10, seed=5)
    assert not store.is_current(SPACE, DIM, MODEL)

    assert store.sync(SPACE, DIM, MODEL) is False  # no rebuild

    assert hnsw_files(index_dir) == ["clip.2.hnsw"]  # the old generation is gone
    current = state(cat)
    assert (current.generation, current.count, current.deleted) == (2, 50, 0)
    assert current.max_id == max(new_ids)
    assert store.is_current(SPACE, DIM, MODEL)
    ann, _, live = loaded(store)
    assert live == 50
    assert sorted(ann.index.get_ids_list()) == ids + new_ids
    for item_id, vector in zip(new_ids, new_vectors, strict=True):
        labels, scores = ann.search(vector, 1)
        assert labels.tolist() == [item_id]
        assert scores[0] == pytest.approx(1.0, abs=1e-5)


def test_incremental_sync_after_deleting_items(
    cat: Catalog, store: AnnStore, index_dir: Path
) -> None:
    ids, vectors = add_items(cat, 40, seed=6)
    store.sync(SPACE, DIM, MODEL)
    gone = ids[5:15]  # 25%: not above the rebuild threshold
    delete_items(cat, gone)
    assert sorted(cat.tombstones(SPACE)) == gone
    assert not store.is_current(SPACE, DIM, MODEL)

    assert store.sync(SPACE, DIM, MODEL) is False

    assert cat.tombstones(SPACE) == []
    assert hnsw_files(index_dir) == ["clip.2.hnsw"]
    current = state(cat)
    assert (current.generation, current.count, current.deleted) == (2, 40, 10)
    assert store.is_current(SPACE, DIM, MODEL)
    ann, _, live = loaded(store)
    assert live == 30
    for item_id in gone:
        query = vectors[ids.index(item_id)]
        found = all_labels(ann, query, live)
        assert len(found) == live and item_id not in found
        assert sorted(found) == sorted(set(ids) - set(gone))


def test_items_added_and_deleted_between_syncs_are_absorbed(cat: Catalog, store: AnnStore) -> None:
    ids, _ = add_items(cat, 40, seed=7)
    store.sync(SPACE, DIM, MODEL)
    transient, _ = add_items(cat, 3, seed=8)
    kept, _ = add_items(cat, 2, seed=9)
    delete_items(cat, transient)  # never in the file: nothing to mark

    assert store.sync(SPACE, DIM, MODEL) is False

    current = state(cat)
    assert (current.count, current.deleted, current.max_id) == (42, 0, max(kept))
    assert cat.tombstones(SPACE) == []
    ann, _, _ = loaded(store)
    assert sorted(ann.index.get_ids_list()) == ids + kept


def test_deleted_fraction_above_a_quarter_forces_a_rebuild(
    cat: Catalog, store: AnnStore, index_dir: Path
) -> None:
    assert ann_module.REBUILD_DELETED_FRACTION == 0.25
    ids, _ = add_items(cat, 40, seed=10)
    store.sync(SPACE, DIM, MODEL)
    delete_items(cat, ids[:10])  # exactly 25%
    assert store.sync(SPACE, DIM, MODEL) is False
    assert state(cat).deleted == 10

    delete_items(cat, ids[10:11])  # 11 of 40 deleted in all: above the threshold
    assert store.sync(SPACE, DIM, MODEL) is True

    current = state(cat)
    assert (current.generation, current.count, current.deleted) == (3, 29, 0)
    assert hnsw_files(index_dir) == ["clip.3.hnsw"]
    ann, _, live = loaded(store)
    assert live == 29 and sorted(ann.index.get_ids_list()) == ids[11:]


def test_sync_without_changes_keeps_the_same_content(cat: Catalog, store: AnnStore) -> None:
    add_items(cat, 20, seed=11)
    store.sync(SPACE, DIM, MODEL)
    before = state(cat)
    assert store.sync(SPACE, DIM, MODEL) is False
    after = state(cat)
    assert after.generation == before.generation + 1
    assert (after.count, after.deleted, after.max_id) == (before.count, 0, before.max_id)


# -- rebuilding a broken or foreign cache --------------------------------------------------------


def _break_file(how: str, path: Path, cat: Catalog) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage-same-size":
        path.write_bytes(np.random.default_rng(12).bytes(path.stat().st_size))
    elif how == "garbage":
        path.write_bytes(b"not an hnsw index\n" * 10)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "other-model":
        with cat.atomic():
            cat.set_meta(f"ann.{SPACE}.model", "some-other-model")
    elif how == "other-dim":
        with cat.atomic():
            cat.set_meta(f"ann.{SPACE}.dim", str(DIM * 2))
    elif how == "wrong-count":
        with cat.atomic():
            cat.set_meta(f"ann.{SPACE}.count", "41")
    elif how == "unparsable-meta":
        with cat.atomic():
            cat.set_meta(f"ann.{SPACE}.generation", "two")
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "deleted",
        "truncated",
        "garbage-same-size",
        "garbage",
        "empty",
        "other-model",
        "other-dim",
        "wrong-count",
        "unparsable-meta",
    ],
)
def test_a_broken_or_foreign_file_is_rebuilt(
    how: str, cat: Catalog, store: AnnStore, index_dir: Path
) -> None:
    ids, vectors = add_items(cat, 40, seed=13)
    store.sync(SPACE, DIM, MODEL)
    _break_file(how, index_dir / "clip.1.hnsw", cat)

    # is_current is a cheap check (meta and file size, no read): damage that keeps the size is
    # only caught by load(), which checks a digest and the element count.
    cheap_check_misses = how in ("garbage-same-size", "wrong-count")
    assert store.is_current(SPACE, DIM, MODEL) is cheap_check_misses
    assert store.load(SPACE, DIM, MODEL) is None
    extra, _ = add_items(cat, 2, seed=14)

    assert store.sync(SPACE, DIM, MODEL) is True

    current = state(cat)
    generation = 1 if how == "unparsable-meta" else 2
    assert summary(current) == (
        f"clip.{generation}.hnsw",
        DIM,
        MODEL,
        42,
        0,
        max(extra),
        generation,
    )
    assert current.size == (index_dir / current.file).stat().st_size
    assert hnsw_files(index_dir) == [current.file]
    assert store.is_current(SPACE, DIM, MODEL)
    ann, _, _ = loaded(store)
    assert sorted(ann.index.get_ids_list()) == ids + extra
    assert all_labels(ann, vectors[7], 1) == [ids[7]]


def test_a_new_model_rebuilds_under_its_own_identity(cat: Catalog, store: AnnStore) -> None:
    add_items(cat, 20, seed=15)
    store.sync(SPACE, DIM, MODEL)
    assert store.sync(SPACE, DIM, "model-b") is True
    assert state(cat).model == "model-b"
    assert store.is_current(SPACE, DIM, "model-b")
    assert not store.is_current(SPACE, DIM, MODEL)
    assert store.load(SPACE, DIM, MODEL) is None


def test_annindex_load_rejects_bad_files(tmp_path: Path) -> None:
    ann = AnnIndex.empty(DIM, 20)
    ann.add(np.arange(1, 21), unit_vectors(20, seed=16))
    path = tmp_path / "x.hnsw"
    ann.save(path)
    assert not path.with_name("x.hnsw.tmp").exists()

    reloaded = AnnIndex.load(path, DIM, 20)
    assert reloaded.count == 20
    assert reloaded.index.ef == ann_module.EF_SEARCH  # set again after load
    with pytest.raises(ValueError, match="does not match"):
        AnnIndex.load(path, DIM, 21)
    with pytest.raises(ValueError, match="missing or empty"):
        AnnIndex.load(tmp_path / "absent.hnsw", DIM, 20)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot be loaded"):
        AnnIndex.load(path, DIM, 20)


# -- crashes and stray files ---------------------------------------------------------------------


def test_stray_files_from_a_crash_leave_the_old_generation_in_force(
    cat: Catalog, store: AnnStore, index_dir: Path
) -> None:
    ids, _ = add_items(cat, 30, seed=17)
    store.sync(SPACE, DIM, MODEL)
    good = (index_dir / "clip.1.hnsw").read_bytes()
    (index_dir / "clip.99.hnsw").write_bytes(b"half a file")
    (index_dir / "clip.2.hnsw.tmp").write_bytes(good[:100])
    (index_dir / "clip.2.hnsw").write_bytes(good[:-10])  # renamed, meta never committed

    assert store.is_current(SPACE, DIM, MODEL)
    assert state(cat).file == "clip.1.hnsw"
    ann, _, _ = loaded(store)
    assert sorted(ann.index.get_ids_list()) == ids

    new_ids, _ = add_items(cat, 1, seed=18)
    assert store.sync(SPACE, DIM, MODEL) is False
    assert hnsw_files(index_dir) == ["clip.2.hnsw"]
    assert state(cat).generation == 2
    ann, _, _ = loaded(store)
    assert sorted(ann.index.get_ids_list()) == ids + new_ids


def test_a_crash_before_the_meta_commit_keeps_the_old_generation(
    cat: Catalog, store: AnnStore, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, vectors = add_items(cat, 40, seed=19)
    store.sync(SPACE, DIM, MODEL)
    delete_items(cat, ids[:2])
    added, _ = add_items(cat, 3, seed=20)

    def crash(self: AnnState, catalog: Catalog, space: str) -> None:
        catalog.set_meta(f"ann.{space}.file", self.file)  # half written, then the crash
        raise OSError("simulated crash")

    monkeypatch.setattr(AnnState, "write", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.sync(SPACE, DIM, MODEL)
    monkeypatch.undo()

    # The new file exists, but the meta (and the tombstones) still describe generation 1.
    assert (index_dir / "clip.2.hnsw").exists()
    assert state(cat).file == "clip.1.hnsw" and state(cat).generation == 1
    assert sorted(cat.tombstones(SPACE)) == ids[:2]
    ann, max_id, live = loaded(store)
    assert (max_id, live) == (ids[-1], 40)

    assert store.sync(SPACE, DIM, MODEL) is False
    current = state(cat)
    assert (current.generation, current.count, current.deleted) == (2, 43, 2)
    assert hnsw_files(index_dir) == ["clip.2.hnsw"]
    assert cat.tombstones(SPACE) == []
    ann, _, live = loaded(store)
    assert live == 41
    assert sorted(ann.index.get_ids_list()) == ids + added  # deleted ones are only marked
    assert ids[0] not in all_labels(ann, vectors[0], live)


def test_drop_forgets_the_space(cat: Catalog, store: AnnStore, index_dir: Path) -> None:
    ids, _ = add_items(cat, 20, seed=21)
    store.sync(SPACE, DIM, MODEL)
    delete_items(cat, ids[:2])
    assert cat.tombstones(SPACE)

    store.drop(SPACE)

    assert AnnState.read(cat, SPACE) is None
    assert cat.conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'ann.%'").fetchone()[0] == 0
    assert cat.tombstones(SPACE) == []
    assert hnsw_files(index_dir) == []
    assert not store.is_current(SPACE, DIM, MODEL)
    assert store.load(SPACE, DIM, MODEL) is None
    assert store.size_bytes() == 0

    assert store.sync(SPACE, DIM, MODEL) is True
    assert state(cat).generation == 1 and state(cat).count == 18


def test_stale_files_of_other_spaces_are_kept_only_while_in_force(
    cat: Catalog, store: AnnStore, index_dir: Path
) -> None:
    with cat.atomic():
        cat.set_space("clap", "clap-model", DIM)
        file_id = cat.insert_file("/a.wav", "audio", 1, 1, b"a", None, None)
        cat.insert_items(file_id, "clap", unit_vectors(3, seed=22))
    add_items(cat, 5, seed=23)
    store.sync(SPACE, DIM, MODEL)
    store.sync("clap", DIM, "clap-model")
    store.sync(SPACE, DIM, MODEL)
    assert hnsw_files(index_dir) == ["clap.1.hnsw", "clip.2.hnsw"]

    store.drop("clap")
    assert hnsw_files(index_dir) == ["clip.2.hnsw"]
    assert store.is_current(SPACE, DIM, MODEL)


# -- AnnIndex.search and k -----------------------------------------------------------------------


def test_search_with_k_up_to_the_live_count_after_deletions() -> None:
    vectors = unit_vectors(50, seed=24)
    ann = AnnIndex.empty(DIM, 10)  # grows on add
    ann.add(np.arange(1, 51), vectors)
    assert ann.count == 50

    assert ann.mark_deleted(list(range(1, 21))) == 20
    assert ann.mark_deleted([1, 2, 999]) == 0  # already deleted / never added: skipped

    for k in (1, 10, 30):
        labels, scores = ann.search(vectors[0], k)
        assert len(labels) == k == len(scores)
        assert not set(labels.tolist()) & set(range(1, 21))
    assert sorted(all_labels(ann, vectors[0], 30)) == list(range(21, 51))
    empty_labels, empty_scores = ann.search(vectors[0], 0)
    assert empty_labels.size == 0 and empty_scores.size == 0

    # Above the live count hnswlib cannot fill k slots: AnnIndex turns that into ValueError,
    # so callers (the Searcher) must clamp k to the live count first.
    with pytest.raises(ValueError, match="contiguous 2D array"):
        ann.search(vectors[0], 31)
    with pytest.raises(ValueError):
        ann.search(vectors[0], 1000)
