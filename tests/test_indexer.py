"""Index runs end to end on the tiny model: incremental behaviour, failures, model identity."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from media_factory import make_near_duplicate, make_photo, make_random_bytes, make_truncated

from mmfind.errors import ModelMismatchError, UsageError
from mmfind.indexer import SUMMARY_KEYS, IndexOptions, IndexSummary, run_index
from mmfind.search import Query, run_query
from mmfind.store.catalog import Catalog


def index(index_dir: Path, *paths: Path, workers: int = 0, **kw: object) -> IndexSummary:
    options = IndexOptions(
        paths=[str(p) for p in paths], model="test-tiny", workers=workers, device="cpu", **kw
    )  # type: ignore[arg-type]
    return run_index(index_dir, options)


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "2024").mkdir(parents=True)
    for i in range(4):
        make_photo(root / f"p{i}.jpg", size=(160, 120), seed=i)
    make_photo(root / "2024" / "trip.jpg", size=(200, 150), seed=10)
    return root


def file_vectors(index_dir: Path) -> dict[str, np.ndarray]:
    catalog = Catalog.open(index_dir, create=False)
    try:
        return {p: catalog.vectors_of_file(r.id) for p, r in catalog.all_files().items()}
    finally:
        catalog.close()


def test_first_run_then_noop(tmp_path: Path, library: Path) -> None:
    idx = tmp_path / "idx"
    first = index(idx, library)
    assert first.counts() == dict(
        scanned=5, new=5, updated=0, moved=0, removed=0, unchanged=0, failed=0
    )
    assert tuple(first.counts()) == SUMMARY_KEYS
    second = index(idx, library)
    assert second.counts() == dict(
        scanned=5, new=0, updated=0, moved=0, removed=0, unchanged=5, failed=0
    )


def test_noop_run_does_not_load_the_model(tmp_path: Path, library: Path) -> None:
    idx = tmp_path / "idx"
    index(idx, library)

    class Exploding:
        model_id = "test-tiny"

        def __getattr__(self, name: str) -> object:
            raise AssertionError("the encoder must not be used for a no-op run")

    options = IndexOptions(paths=[str(library)], model="test-tiny", workers=0)
    summary = run_index(idx, options, encoders={"clip": Exploding()})
    assert summary.unchanged == 5


def test_changed_moved_copied_removed(tmp_path: Path, library: Path) -> None:
    idx = tmp_path / "idx"
    index(idx, library)
    before = file_vectors(idx)

    make_photo(library / "p0.jpg", size=(160, 120), seed=99)  # new content, same name
    os.rename(library / "p1.jpg", library / "2024" / "renamed.jpg")
    shutil.copy(library / "p2.jpg", library / "copy-of-p2.jpg")
    os.remove(library / "p3.jpg")

    summary = index(idx, library)
    assert summary.counts() == dict(
        scanned=5, new=1, updated=1, moved=1, removed=1, unchanged=2, failed=0
    )
    after = file_vectors(idx)
    p = str(library)
    assert str(library / "p1.jpg") not in after and str(library / "p3.jpg") not in after
    # the move and the copy reuse vectors instead of re-encoding
    np.testing.assert_array_equal(after[f"{p}/2024/renamed.jpg"], before[f"{p}/p1.jpg"])
    np.testing.assert_array_equal(after[f"{p}/copy-of-p2.jpg"], before[f"{p}/p2.jpg"])
    assert not np.array_equal(after[f"{p}/p0.jpg"], before[f"{p}/p0.jpg"])


def test_touched_file_with_same_content_is_unchanged(tmp_path: Path, library: Path) -> None:
    idx = tmp_path / "idx"
    index(idx, library)
    os.utime(library / "p0.jpg", ns=(1_000_000_000, 1_000_000_000))
    summary = index(idx, library)
    assert summary.unchanged == 5 and summary.updated == 0
    assert index(idx, library).unchanged == 5  # the new mtime was recorded


def test_failures_are_recorded_and_not_retried(tmp_path: Path, library: Path) -> None:
    idx = tmp_path / "idx"
    make_random_bytes(library / "noise.jpg")
    make_truncated(library / "p0.jpg", library / "half.jpg")
    (library / "empty.png").write_bytes(b"")
    summary = index(idx, library, workers=1)
    assert summary.failed == 3 and summary.new == 5
    assert sum(summary.failure_reasons.values()) == 3
    catalog = Catalog.open(idx, create=False)
    reasons = {Path(f.path).name: f.reason for f in catalog.failures()}
    catalog.close()
    assert reasons["empty.png"] == "empty file"
    assert set(reasons) == {"noise.jpg", "half.jpg", "empty.png"}
    assert all(reasons.values())

    again = index(idx, library)  # unchanged failures are counted, not re-read
    assert again.failed == 3 and again.unchanged == 5
    # a fixed file is picked up and its failure cleared
    make_photo(library / "noise.jpg", size=(100, 80), seed=5)
    fixed = index(idx, library)
    assert fixed.new == 1 and fixed.failed == 2


def test_file_that_becomes_broken_loses_its_stale_vectors(tmp_path: Path, library: Path) -> None:
    idx = tmp_path / "idx"
    index(idx, library)
    make_random_bytes(library / "p0.jpg", size=1000, seed=3)
    summary = index(idx, library)
    assert summary.failed == 1
    assert str(library / "p0.jpg") not in file_vectors(idx)


def test_unreadable_directory_keeps_its_files(
    tmp_path: Path, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = tmp_path / "idx"
    index(idx, library)
    real_scandir = os.scandir
    blocked = str(library / "2024")

    def scandir(path: str | os.PathLike[str]) -> object:
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = index(idx, library)
    assert summary.removed == 0
    assert any(p.path == blocked for p in summary.problems)
    assert str(library / "2024" / "trip.jpg") in file_vectors(idx)


def test_missing_root_keeps_its_files(tmp_path: Path, library: Path) -> None:
    idx = tmp_path / "idx"
    index(idx, library)
    shutil.move(library, tmp_path / "unplugged")
    summary = run_index(idx, IndexOptions(model="test-tiny", workers=0))  # refresh known roots
    assert summary.removed == 0
    assert len(file_vectors(idx)) == 5


def test_no_paths_refreshes_known_roots(tmp_path: Path, library: Path) -> None:
    idx = tmp_path / "idx"
    index(idx, library)
    make_photo(library / "new.jpg", size=(120, 90), seed=42)
    summary = run_index(idx, IndexOptions(model="test-tiny", workers=0))
    assert summary.new == 1 and summary.roots == [str(library)]


def test_nothing_to_index(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        run_index(tmp_path / "idx", IndexOptions(model="test-tiny", workers=0))
    with pytest.raises(UsageError):
        index(tmp_path / "idx", tmp_path / "does-not-exist")


def test_other_model_is_refused_then_reembedded(tmp_path: Path, library: Path) -> None:
    idx = tmp_path / "idx"
    index(idx, library)
    with pytest.raises(ModelMismatchError, match="--reembed"):
        run_index(idx, IndexOptions(paths=[str(library)], model="laion-b32", workers=0))
    # the refusal changed nothing
    assert len(file_vectors(idx)) == 5


def test_index_folder_inside_root_is_skipped(tmp_path: Path, library: Path) -> None:
    idx = library / "my-index"
    summary = index(idx, library)
    assert summary.scanned == 5
    make_photo(idx / "sneaky.jpg", size=(64, 64), seed=1)
    assert index(idx, library).scanned == 5


def test_near_duplicate_comes_first(tmp_path: Path, library: Path, tiny_encoder: object) -> None:
    idx = tmp_path / "idx"
    for i in range(4, 12):
        make_photo(library / f"extra{i}.jpg", size=(160, 120), seed=100 + i)
    index(idx, library, workers=2)
    probe = tmp_path / "probe.jpg"
    for name in ("p2.jpg", "2024/trip.jpg", "extra7.jpg"):
        make_near_duplicate(library / name, probe, scale=0.5, quality=70)
        response = run_query(
            idx, Query(images=[str(probe)], limit=3), encoders={"clip": tiny_encoder}
        )
        assert Path(response.results[0].hit.path) == library / name


def test_same_vectors_with_and_without_workers(tmp_path: Path, library: Path) -> None:
    index(tmp_path / "a", library, workers=0)
    index(tmp_path / "b", library, workers=2)
    a, b = file_vectors(tmp_path / "a"), file_vectors(tmp_path / "b")
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-6)
