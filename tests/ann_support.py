"""What the ANN tests share: a real catalog with one space, its ANN store, items added to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmfind.store.ann import AnnState, AnnStore
from mmfind.store.catalog import Catalog

DIM = 32
MODEL = "test-model"
SPACE = "clip"


def unit_vectors(n: int, seed: int) -> np.ndarray:
    """Random unit vectors (no preferred direction)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def cat(index_dir: Path) -> Iterator[Catalog]:
    catalog = Catalog.open(index_dir, create=True)
    with catalog.atomic():
        catalog.set_space(SPACE, MODEL, DIM)
    yield catalog
    catalog.close()


@pytest.fixture
def store(cat: Catalog, index_dir: Path) -> AnnStore:
    return AnnStore(cat, index_dir)


def add_vectors(cat: Catalog, vectors: np.ndarray, tag: str) -> list[int]:
    """One file per vector, one item each; returns the item ids."""
    ids: list[int] = []
    with cat.atomic():
        for i, vector in enumerate(vectors):
            file_id = cat.insert_file(
                f"/photos/{tag}-{i}.jpg", "image", 1, 1, f"{tag}-{i}".encode(), None, None
            )
            ids.extend(cat.insert_items(file_id, SPACE, vector[None, :]))
    return ids


def state(cat: Catalog) -> AnnState:
    current = AnnState.read(cat, SPACE)
    assert current is not None
    return current
