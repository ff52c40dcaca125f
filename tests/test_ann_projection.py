"""The projected ANN graph of large spaces: a real hnswlib graph over the vectors' main
directions, its candidates re-scored exactly with the full vectors."""

# ruff: noqa: F811  (the fixtures imported from ann_support are requested by their names)

from __future__ import annotations

import os
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

from mmfind.doctor import diagnose
from mmfind.search import Query, Searcher
from mmfind.store import ann as ann_module
from mmfind.store.ann import AnnIndex, AnnStore, build_from_catalog, fit_projection
from mmfind.store.catalog import Catalog, SpaceInfo
from mmfind.store.vectors_file import MappedVectors, write_vectors


def skewed(n: int, seed: int, *, tail: bool = False) -> np.ndarray:
    """Unit vectors with most of their energy in the first half of the dimensions (or, with
    `tail`, in the second half), like embeddings whose spectrum decays."""
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, DIM + 1, dtype=np.float32) ** -1.0
    if tail:
        spectrum = spectrum[::-1].copy()
    v = rng.standard_normal((n, DIM)).astype(np.float32) * spectrum
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def synced(cat: Catalog, store: AnnStore, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """`n` skewed vectors added as items and synced: (the vectors, their item ids)."""
    vectors = skewed(n, seed)
    ids = add_vectors(cat, vectors, "a")
    store.sync(SPACE, DIM, MODEL)
    return vectors, ids


@pytest.fixture
def large_from_100(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spaces of 100 items and more count as large (the real threshold is 200,000)."""
    monkeypatch.setattr(ann_module, "PROJECT_MIN_ITEMS", 100)


def exact_top(ids: list[int], vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = vectors @ query
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    return [ids[i] for i in order[:k]]


# -- fitting -------------------------------------------------------------------------------------


def test_fit_projection_keeps_the_main_directions() -> None:
    sample = skewed(2000, seed=0)
    projection = fit_projection(sample)
    assert projection is not None
    assert projection.shape == (DIM, DIM // 2) and projection.dtype == np.float32
    np.testing.assert_allclose(projection.T @ projection, np.eye(DIM // 2), atol=1e-5)
    kept = np.square(sample @ projection).sum() / np.square(sample).sum()
    assert kept >= ann_module.PROJECT_ENERGY
    # it is the best half: the leading coordinates (where the energy is) are spanned
    leading = np.eye(DIM, dtype=np.float32)[:, :4]
    assert np.linalg.norm(projection.T @ leading, axis=0).min() > 0.99


def test_fit_projection_declines_a_flat_spectrum_or_too_few_vectors() -> None:
    assert fit_projection(unit_vectors(2000, seed=1)) is None
    assert fit_projection(skewed(DIM, seed=2)) is None  # fewer than 2·dim vectors
    assert fit_projection(np.zeros((0, DIM), dtype=np.float32)) is None


# -- building, saving, loading -------------------------------------------------------------------


def test_a_small_space_keeps_its_vectors_as_they_are(cat: Catalog, store: AnnStore) -> None:
    synced(cat, store, 150, seed=3)
    assert state(cat).rank == 0
    assert cat.ann_projection(SPACE, state(cat).generation) is None


def test_a_large_space_gets_a_projected_graph_with_exact_scores(
    cat: Catalog, store: AnnStore, index_dir: Path, large_from_100: None
) -> None:
    vectors, ids = synced(cat, store, 600, seed=4)
    current = state(cat)
    assert current.rank == DIM // 2
    blob = cat.ann_projection(SPACE, current.generation)
    assert blob is not None and len(blob) == 4 * DIM * (DIM // 2)
    loaded = store.load(SPACE, DIM, MODEL)
    assert loaded is not None
    ann, max_id, live = loaded
    assert (ann.rank, max_id, live) == (DIM // 2, ids[-1], 600)
    assert ann.index.dim == DIM // 2  # the graph holds the projected vectors
    assert current.vectors_file == current.file + ".vectors"
    assert (index_dir / current.vectors_file).is_file()  # ... and the full ones lie beside it

    queries = skewed(30, seed=5)
    found = 0
    by_id = dict(zip(ids, vectors, strict=True))
    for query in queries:
        labels, scores = ann.search(query, 10)
        assert len(labels) == 10
        # the scores are the exact cosines of the full vectors, best first
        exact = np.array([by_id[int(i)] @ query for i in labels], dtype=np.float32)
        np.testing.assert_allclose(scores, exact, atol=1e-6)
        assert list(scores) == sorted(scores, reverse=True)
        found += len(set(labels.tolist()) & set(exact_top(ids, vectors, query, 10)))
    assert found / (10 * len(queries)) >= 0.95


def test_a_projected_graph_needs_the_vectors(
    cat: Catalog, store: AnnStore, large_from_100: None
) -> None:
    synced(cat, store, 300, seed=6)
    loaded = store.load(SPACE, DIM, MODEL)
    assert loaded is not None
    graph_only = AnnIndex(loaded[0].index, DIM, loaded[0].projection)
    with pytest.raises(TypeError, match="re-rank"):
        graph_only.search(skewed(1, seed=7)[0], 5)


def test_few_candidates_still_rerank_to_the_exact_order(
    cat: Catalog, store: AnnStore, large_from_100: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With RERANK below the space's size the graph's own (projected) order must not leak: the
    re-ranked list is sorted by exact score even where the projection would order it otherwise."""
    monkeypatch.setattr(ann_module, "RERANK", 20)
    vectors, ids = synced(cat, store, 400, seed=8)
    loaded = store.load(SPACE, DIM, MODEL)
    assert loaded is not None
    ann = loaded[0]
    query = skewed(1, seed=9)[0]
    labels, scores = ann.search(query, 20)
    projected = ann.index.knn_query((query @ ann.projection)[None, :], k=20)[0][0].tolist()
    assert set(labels.tolist()) == set(projected)  # the same candidates ...
    exact = {i: float(v @ query) for i, v in zip(ids, vectors, strict=True)}
    assert labels.tolist() == sorted(labels.tolist(), key=lambda i: -exact[i])  # ... re-ordered
    np.testing.assert_allclose(scores, [exact[i] for i in labels.tolist()], atol=1e-6)


def test_items_gone_from_the_catalog_are_never_returned(
    cat: Catalog, store: AnnStore, index_dir: Path, large_from_100: None
) -> None:
    """The vectors file is a snapshot: files deleted since are still scored by the re-rank, and
    dropped by the search's join to live catalog rows, like hits of an unprojected graph."""
    vectors, ids = synced(cat, store, 300, seed=10)
    query = vectors[0]
    victims = exact_top(ids, vectors, query, 5)
    hits = cat.hits_for_items(victims)
    with cat.atomic():
        cat.delete_files(sorted({h.file_id for h in hits.values()}))
    searcher = Searcher(cat, index_dir, SpaceInfo(SPACE, MODEL, DIM))
    got = searcher.search(query, Query(text="x", limit=10))
    assert len(got) == 10
    assert not {h.item_id for _, h in got} & set(victims)
    assert [h.item_id for _, h in got] == exact_top(ids, vectors, query, 15)[5:15]


# -- keeping it in step --------------------------------------------------------------------------


def test_crossing_the_threshold_rebuilds_once_with_a_projection(
    cat: Catalog, store: AnnStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ann_module, "PROJECT_MIN_ITEMS", 200)
    add_vectors(cat, skewed(150, seed=11), "a")
    assert store.sync(SPACE, DIM, MODEL) is True  # first build
    assert state(cat).rank == 0
    add_vectors(cat, skewed(100, seed=12), "b")
    assert store.sync(SPACE, DIM, MODEL) is True  # crossed 200: rebuilt, projected
    first = state(cat)
    assert first.rank == DIM // 2
    matrix = cat.ann_projection(SPACE, first.generation)
    add_vectors(cat, skewed(10, seed=13), "c")
    assert store.sync(SPACE, DIM, MODEL) is False  # a few more: added to the same graph
    second = state(cat)
    assert second.generation == first.generation + 1 and second.rank == DIM // 2
    assert cat.ann_projection(SPACE, second.generation) == matrix
    assert cat.ann_projection(SPACE, first.generation) is None  # only the one in force is kept


def test_new_items_outside_the_projection_make_a_new_one(
    cat: Catalog, store: AnnStore, large_from_100: None
) -> None:
    synced(cat, store, 300, seed=14)
    old = cat.ann_projection(SPACE, state(cat).generation)
    assert old is not None
    other = skewed(300, seed=15, tail=True)  # their energy lies in the other half
    ids = add_vectors(cat, other, "b")
    assert store.sync(SPACE, DIM, MODEL) is True
    current = state(cat)
    assert current.rank == DIM // 2 and current.count == 600 and current.max_id == ids[-1]
    assert cat.ann_projection(SPACE, current.generation) != old
    loaded = store.load(SPACE, DIM, MODEL)
    assert loaded is not None
    labels, scores = loaded[0].search(other[0], 1)
    assert labels.tolist() == [ids[0]] and scores[0] == pytest.approx(1.0, abs=1e-5)


def test_a_flat_space_is_not_projected_nor_rebuilt_at_every_sync(
    cat: Catalog, store: AnnStore, large_from_100: None
) -> None:
    add_vectors(cat, unit_vectors(300, seed=16), "a")
    assert store.sync(SPACE, DIM, MODEL) is True
    assert state(cat).rank == 0
    add_vectors(cat, unit_vectors(40, seed=17), "b")
    assert store.sync(SPACE, DIM, MODEL) is False
    assert state(cat).rank == 0


def assert_noticed_and_rebuilt(store: AnnStore, index_dir: Path, what: str) -> None:
    """The damage fails the load, `mmfind doctor` names it with the repair, a sync rebuilds."""
    assert store.load(SPACE, DIM, MODEL) is None
    check = next(c for c in diagnose(index_dir).checks if c.name == f"ann:{SPACE}")
    assert what in check.detail and check.fix == f"sync:{SPACE}"
    assert store.sync(SPACE, DIM, MODEL) is True
    assert store.load(SPACE, DIM, MODEL) is not None


def test_a_lost_projection_is_noticed_and_rebuilt(
    cat: Catalog, store: AnnStore, index_dir: Path, large_from_100: None
) -> None:
    synced(cat, store, 300, seed=18)
    with cat.atomic():
        cat.conn.execute("DELETE FROM ann_projections")
    assert_noticed_and_rebuilt(store, index_dir, "projection")


def test_a_state_written_before_projections_reads_as_unprojected(
    cat: Catalog, store: AnnStore
) -> None:
    synced(cat, store, 50, seed=19)
    assert cat.get_meta(f"ann.{SPACE}.rank") == "0"
    with cat.atomic():  # what an index written before projections existed holds
        for key in ("rank", "vectors_file", "vectors_digest"):
            cat.delete_meta_prefix(f"ann.{SPACE}.{key}")
    assert cat.get_meta(f"ann.{SPACE}.rank") is None
    assert state(cat).rank == 0
    assert store.load(SPACE, DIM, MODEL) is not None


def test_drop_forgets_the_projection(cat: Catalog, store: AnnStore, large_from_100: None) -> None:
    synced(cat, store, 300, seed=20)
    assert cat.conn.execute("SELECT count(*) FROM ann_projections").fetchone()[0] == 1
    store.drop(SPACE)
    assert cat.conn.execute("SELECT count(*) FROM ann_projections").fetchone()[0] == 0


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage"])
def test_a_damaged_vectors_file_is_noticed_and_rebuilt(
    cat: Catalog, store: AnnStore, index_dir: Path, large_from_100: None, damage: str
) -> None:
    synced(cat, store, 300, seed=23)
    path = index_dir / state(cat).vectors_file
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(os.urandom(path.stat().st_size))
    assert_noticed_and_rebuilt(store, index_dir, "vectors file")


def test_only_the_vectors_file_in_force_is_kept(
    cat: Catalog, store: AnnStore, index_dir: Path, large_from_100: None
) -> None:
    synced(cat, store, 300, seed=24)
    first = state(cat)
    add_vectors(cat, skewed(5, seed=25), "b")
    store.sync(SPACE, DIM, MODEL)
    second = state(cat)
    assert sorted(p.name for p in index_dir.glob("*.hnsw*")) == sorted(
        [second.file, second.vectors_file]
    )
    assert first.vectors_file != second.vectors_file
    loaded = store.load(SPACE, DIM, MODEL)
    assert loaded is not None and loaded[0].rerank_source is not None
    assert loaded[0].rerank_source.count == 305  # type: ignore[attr-defined]


def test_a_temporary_graph_reranks_from_the_catalog(cat: Catalog, large_from_100: None) -> None:
    vectors = skewed(300, seed=26)
    ids = add_vectors(cat, vectors, "a")
    ann, max_id = build_from_catalog(cat, SPACE, DIM)
    assert ann.rank == DIM // 2 and max_id == ids[-1]
    labels, scores = ann.search(vectors[7], 3)
    assert labels[0] == ids[7] and scores[0] == pytest.approx(1.0, abs=1e-5)


# -- through the search code ---------------------------------------------------------------------


def test_searcher_on_a_projected_space_matches_exact_search(
    cat: Catalog, store: AnnStore, index_dir: Path, large_from_100: None
) -> None:
    vectors, ids = synced(cat, store, 500, seed=21)
    assert state(cat).rank == DIM // 2
    paths = {h.item_id: h.path for h in cat.hits_for_items(ids).values()}
    searcher = Searcher(cat, index_dir, SpaceInfo(SPACE, MODEL, DIM))
    for query in skewed(10, seed=22):
        got = searcher.search(query, Query(text="x", limit=10))
        assert [h.path for _, h in got] == [paths[i] for i in exact_top(ids, vectors, query, 10)]
        np.testing.assert_allclose(
            [s for s, _ in got], np.sort(vectors @ query)[::-1][:10], atol=1e-6
        )


def test_the_default_ef_of_a_projected_graph_grows_with_it() -> None:
    efs = [ann_module.projected_ef(n) for n in (1, 200_000, 500_000, 1_000_000, 10**9)]
    assert efs[0] == efs[1] == 256  # the measured points: 0.98 at 200k and at 1M
    assert efs[3] == 544
    assert efs == sorted(efs) and efs[-1] == 1024


@pytest.mark.parametrize("spread", [1, 7], ids=["dense ids (position table)", "sparse ids"])
def test_mapped_vectors_find_exactly_the_ids_they_hold(
    cat: Catalog, index_dir: Path, spread: int
) -> None:
    """Both lookups (the dense position table and, for thinly spread ids, the binary search)
    return each held id's own row and nothing for ids absent, below or above the file's."""
    vectors = unit_vectors(60, 11)
    ids, files = [], []
    with cat.atomic():
        for i, vector in enumerate(vectors):
            files.append(cat.insert_file(f"/v/{i}.jpg", "image", 1, 1, b"%d" % i, None, None))
            ids.extend(cat.insert_items(files[-1], SPACE, vector[None, :]))
        cat.delete_files([f for i, f in enumerate(files) if i % spread])
    keep = ids[::spread]
    path = index_dir / "x.vectors"
    write_vectors(cat, SPACE, DIM, path, max_id=max(keep))
    mapped = MappedVectors(path, DIM)
    assert (mapped._table is not None) == (spread == 1)
    row_of = {item_id: vectors[ids.index(item_id)] for item_id in keep}
    asked = np.array([keep[3], 0, keep[-1] + 5, keep[0], keep[0] + 1, keep[-1], -4], np.int64)
    found, rows = mapped(asked)
    expected = [i for i in asked.tolist() if i in row_of]
    assert found.tolist() == expected and len(expected) >= 3
    assert np.array_equal(rows, np.stack([row_of[i] for i in expected]))
