"""Search semantics: fusion, filters, exclusion of the query image, ANN vs exact, stale caches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from media_factory import make_near_duplicate, make_photo

from mmfind.errors import EmptyIndexError, InputError, UsageError
from mmfind.indexer import IndexOptions, run_index
from mmfind.search import Query, Searcher, query_vector, run_query
from mmfind.store.ann import AnnState
from mmfind.store.catalog import Catalog


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("search")
    root = base / "photos"
    for sub in ("a_b", "aXb", "a%b", "other"):
        (root / sub).mkdir(parents=True)
    for i in range(16):
        sub = ("a_b", "aXb", "a%b", "other")[i % 4]
        make_photo(root / sub / f"img{i:02d}.jpg", size=(128, 96), seed=200 + i)
    idx = base / "idx"
    run_index(idx, IndexOptions(paths=[str(root)], model="test-tiny", workers=0))
    return idx, root


def exact_ranking(idx: Path, vector: np.ndarray) -> list[str]:
    catalog = Catalog.open(idx, create=False)
    try:
        files = catalog.all_files()
        scored = [(float(catalog.vectors_of_file(r.id)[0] @ vector), p) for p, r in files.items()]
    finally:
        catalog.close()
    return [p for _, p in sorted(scored, key=lambda sp: (-sp[0], sp[1]))]


def test_text_query_matches_exact_search(indexed: tuple[Path, Path], tiny_encoder: object) -> None:
    idx, _ = indexed
    query = Query(text="a dog on a beach", limit=16)
    response = run_query(idx, query, encoders={"clip": tiny_encoder})
    expected = exact_ranking(idx, query_vector(tiny_encoder, "clip", query))
    assert [r.hit.path for r in response.results] == expected
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    assert [r.rank for r in response.results] == list(range(1, 17))


def test_limit_and_min_score(indexed: tuple[Path, Path], tiny_encoder: object) -> None:
    idx, _ = indexed
    top3 = run_query(idx, Query(text="sunset", limit=3), encoders={"clip": tiny_encoder}).results
    assert len(top3) == 3
    floor = top3[1].score
    above = run_query(
        idx, Query(text="sunset", min_score=floor), encoders={"clip": tiny_encoder}
    ).results
    assert [r.hit.path for r in above] == [r.hit.path for r in top3[:2]]
    assert (
        run_query(
            idx, Query(text="sunset", min_score=1.01), encoders={"clip": tiny_encoder}
        ).results
        == []
    )


def test_in_filter_is_not_a_like_pattern(indexed: tuple[Path, Path], tiny_encoder: object) -> None:
    idx, root = indexed
    for sub in ("a_b", "a%b"):
        results = run_query(
            idx,
            Query(text="x", limit=16, within=[str(root / sub)]),
            encoders={"clip": tiny_encoder},
        ).results
        assert len(results) == 4
        assert all(Path(r.hit.path).parent == root / sub for r in results)
    # a prefix of a directory name is not that directory
    none = run_query(
        idx, Query(text="x", within=[str(root / "a")]), encoders={"clip": tiny_encoder}
    )
    assert none.results == []


def test_query_image_is_left_out(indexed: tuple[Path, Path], tiny_encoder: object) -> None:
    idx, root = indexed
    own = root / "other" / "img03.jpg"
    results = run_query(
        idx, Query(images=[str(own)], limit=16), encoders={"clip": tiny_encoder}
    ).results
    assert len(results) == 15
    assert str(own) not in {r.hit.path for r in results}


def test_fusion_and_negation_move_the_ranking(
    indexed: tuple[Path, Path], tiny_encoder: object, tmp_path: Path
) -> None:
    idx, root = indexed
    probe = make_near_duplicate(root / "aXb" / "img05.jpg", tmp_path / "probe.jpg")
    image_only = query_vector(tiny_encoder, "clip", Query(images=[str(probe)]))
    fused = query_vector(tiny_encoder, "clip", Query(text="red car", images=[str(probe)]))
    heavier = query_vector(
        tiny_encoder, "clip", Query(text="red car", images=[str(probe)], image_weight=3.0)
    )
    negated = query_vector(tiny_encoder, "clip", Query(images=[str(probe)], negatives=["red car"]))
    text = query_vector(tiny_encoder, "clip", Query(text="red car"))
    assert abs(float(np.linalg.norm(fused)) - 1) < 1e-5
    # more image weight pulls the fused vector towards the image
    assert float(heavier @ image_only) > float(fused @ image_only)
    # --not pushes away from the text
    assert float(negated @ text) < float(image_only @ text)
    top = run_query(idx, Query(text="red car", images=[str(probe)], image_weight=3.0, limit=1),
                    encoders={"clip": tiny_encoder})  # fmt: skip
    assert Path(top.results[0].hit.path) == root / "aXb" / "img05.jpg"


def test_bad_queries(indexed: tuple[Path, Path], tiny_encoder: object, tmp_path: Path) -> None:
    idx, _ = indexed
    with pytest.raises(UsageError):
        run_query(idx, Query(), encoders={"clip": tiny_encoder})
    with pytest.raises(InputError, match="not found"):
        run_query(idx, Query(images=[str(tmp_path / "nope.jpg")]), encoders={"clip": tiny_encoder})
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"broken\.jpg"):
        run_query(idx, Query(images=[str(broken)]), encoders={"clip": tiny_encoder})
    with pytest.raises(EmptyIndexError):
        run_query(tmp_path / "no-index", Query(text="x"), encoders={"clip": tiny_encoder})


def _clone(idx: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(idx, copy)
    return copy


def test_deleted_rows_never_returned_from_stale_ann(
    indexed: tuple[Path, Path], tiny_encoder: object, tmp_path: Path
) -> None:
    idx = _clone(indexed[0], tmp_path)
    catalog = Catalog.open(idx, create=False)
    files = catalog.all_files()
    victims = sorted(files)[:5]
    with catalog.atomic():  # delete behind the ANN's back: the file still holds them
        catalog.delete_files([files[p].id for p in victims])
    catalog.close()
    results = run_query(idx, Query(text="x", limit=50), encoders={"clip": tiny_encoder}).results
    assert len(results) == 11
    assert not set(victims) & {r.hit.path for r in results}


def test_items_newer_than_the_ann_are_searched(
    indexed: tuple[Path, Path], tiny_encoder: object, tmp_path: Path
) -> None:
    idx = _clone(indexed[0], tmp_path)
    catalog = Catalog.open(idx, create=False)
    state = AnnState.read(catalog, "clip")
    assert state is not None
    vector = tiny_encoder.encode_texts(["a very specific query"])[0]  # type: ignore[attr-defined]
    with catalog.atomic():  # an item the ANN file has never seen, equal to the query
        fid = catalog.insert_file("/elsewhere/new.jpg", "image", 1, 1, b"h" * 16, 10, 10)
        catalog.insert_items(fid, "clip", vector.reshape(1, -1))
    catalog.close()
    top = run_query(
        idx, Query(text="a very specific query", limit=1), encoders={"clip": tiny_encoder}
    )
    assert top.results[0].hit.path == "/elsewhere/new.jpg"
    assert top.results[0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage"])
def test_damaged_ann_is_rebuilt(
    indexed: tuple[Path, Path], tiny_encoder: object, tmp_path: Path, damage: str
) -> None:
    idx = _clone(indexed[0], tmp_path)
    catalog = Catalog.open(idx, create=False)
    state = AnnState.read(catalog, "clip")
    catalog.close()
    assert state is not None
    ann_file = idx / state.file
    if damage == "delete":
        ann_file.unlink()
    elif damage == "truncate":
        data = ann_file.read_bytes()
        ann_file.write_bytes(data[: len(data) // 2])
    else:
        ann_file.write_bytes(os.urandom(ann_file.stat().st_size))
    query = Query(text="harbour at night", limit=16)
    response = run_query(idx, query, encoders={"clip": tiny_encoder})
    assert [r.hit.path for r in response.results] == exact_ranking(
        idx, query_vector(tiny_encoder, "clip", query)
    )
    assert any("rebuilt" in n for n in response.notes)
    catalog = Catalog.open(idx, create=False)
    new_state = AnnState.read(catalog, "clip")
    catalog.close()
    assert new_state is not None and new_state.generation == state.generation + 1
    assert (idx / new_state.file).is_file()


def test_k_larger_than_live_count(indexed: tuple[Path, Path], tiny_encoder: object) -> None:
    idx, _ = indexed
    results = run_query(idx, Query(text="x", limit=1000), encoders={"clip": tiny_encoder}).results
    assert len(results) == 16


def test_searcher_uses_ann_for_unfiltered_queries(
    indexed: tuple[Path, Path], tiny_encoder: object
) -> None:
    idx, _ = indexed
    catalog = Catalog.open(idx, create=False)
    try:
        space = catalog.space("clip")
        assert space is not None
        searcher = Searcher(catalog, idx, space)
        vector = query_vector(tiny_encoder, "clip", Query(text="mountains"))
        results = searcher.search(vector, Query(text="mountains", limit=5))
        ann, covered, live = searcher.ann()
        assert covered == catalog.max_item_id("clip") and live == 16
        _, scores = ann.search(vector, 5)
        assert [score for score, _ in results] == pytest.approx(scores.tolist(), abs=1e-5)
    finally:
        catalog.close()
