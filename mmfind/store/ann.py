"""The ANN cache: one hnswlib file per embedding space, always rebuildable from the catalog.

A saved index is named `<space>.<generation>.hnsw`. The catalog's meta names the file in force and
what it covers (dim, model, element count, highest item id). A new generation is written to a
temporary file, fsync'ed and renamed, and only then named in the meta (one transaction that also
clears the tombstones it absorbed); the old file is deleted afterwards. A crash at any point leaves
either the old or the new generation in force, never a half-written one.

Items added after the file was written (id > max_id) are searched exactly; deleted items are
filtered out by joining hits back to live catalog rows, so a stale file never returns a gone file.

Large spaces (PROJECT_MIN_ITEMS and more) get a graph over a projection of the vectors onto their
main directions (half the dimensions, fitted on a sample when the graph is built, kept only if it
holds PROJECT_ENERGY of the vectors' energy): distances cost half as much, so the search can look
at more candidates in the same time, and the best RERANK of them are scored again exactly with the
full vectors, kept beside the graph in a memory-mapped file (mmfind.store.vectors_file). Returned
scores are always exact cosines. The matrix is saved in the catalog with the generation it belongs
to, in the same transaction that names the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from mmfind.fsutil import durable_replace
from mmfind.store import huge_pages
from mmfind.store.catalog import Catalog
from mmfind.store.vectors_file import SUFFIX, MappedVectors, write_vectors

M = 16
EF_CONSTRUCTION = 200
EF_SEARCH = 256  # recall@10 0.986 at 100k (0.967 at 128), p50 ~1 ms (make bench-quick)
REBUILD_DELETED_FRACTION = 0.25
EF_CONSTRUCTION_PROJECTED = 400
PROJECT_MIN_ITEMS = 200_000
PROJECT_ENERGY = 0.9
PROJECTION_SAMPLE = 20_000
RERANK = 200

VectorSource = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(ids, vectors) of the live items among the given ids, in any order."""


@dataclass
class AnnState:
    """What the catalog says about a space's ANN file."""

    file: str
    dim: int
    model: str
    count: int  # elements in the file, deleted ones included
    deleted: int
    max_id: int
    generation: int
    size: int  # bytes of the saved file
    digest: str  # hash of its head and tail (header and last elements), checked before loading
    rank: int = 0  # dimensions of the projected graph; 0: the graph holds the vectors as they are
    vectors_file: str = ""  # a projected graph's full vectors (mmfind.store.vectors_file)
    vectors_digest: str = ""

    @classmethod
    def read(cls, catalog: Catalog, space: str) -> AnnState | None:
        prefix = f"ann.{space}."
        keys = ("file", "dim", "model", "count", "deleted", "max_id", "generation", "size")
        values = {k: catalog.get_meta(prefix + k) for k in (*keys, "digest")}
        if any(v is None for v in values.values()):
            return None
        # absent in files written before projections existed
        rank = catalog.get_meta(prefix + "rank") or "0"
        vectors_file = catalog.get_meta(prefix + "vectors_file") or ""
        vectors_digest = catalog.get_meta(prefix + "vectors_digest") or ""
        try:
            return cls(
                file=str(values["file"]),
                dim=int(str(values["dim"])),
                model=str(values["model"]),
                count=int(str(values["count"])),
                deleted=int(str(values["deleted"])),
                max_id=int(str(values["max_id"])),
                generation=int(str(values["generation"])),
                size=int(str(values["size"])),
                digest=str(values["digest"]),
                rank=int(rank),
                vectors_file=vectors_file,
                vectors_digest=vectors_digest,
            )
        except ValueError:
            return None

    def write(self, catalog: Catalog, space: str) -> None:
        prefix = f"ann.{space}."
        for key, value in vars(self).items():
            catalog.set_meta(prefix + key, str(value))


class AnnIndex:
    """A thin wrapper over hnswlib's Index with inner-product space on unit vectors, optionally
    over a projection of them (see the module's docstring)."""

    def __init__(
        self,
        index: hnswlib.Index,
        dim: int,
        projection: np.ndarray | None = None,
        rerank_source: VectorSource | None = None,
    ) -> None:
        self.index = index
        self.dim = dim
        self.projection = projection  # (dim, rank) float32, or None
        self.rerank_source = rerank_source  # where a projected graph's full vectors are read
        self.memory: set[huge_pages.Region] = set()  # where hnswlib put a large loaded graph

    @classmethod
    def empty(
        cls,
        dim: int,
        capacity: int,
        projection: np.ndarray | None = None,
        rerank_source: VectorSource | None = None,
    ) -> AnnIndex:
        graph_dim = dim if projection is None else projection.shape[1]
        index = hnswlib.Index(space="ip", dim=graph_dim)
        efc = EF_CONSTRUCTION if projection is None else EF_CONSTRUCTION_PROJECTED
        index.init_index(max_elements=max(capacity, 16), ef_construction=efc, M=M)
        index.set_ef(EF_SEARCH)
        return cls(index, dim, projection, rerank_source)

    @classmethod
    def load(
        cls,
        path: Path,
        dim: int,
        expected_count: int,
        projection: np.ndarray | None = None,
        rerank_source: VectorSource | None = None,
    ) -> AnnIndex:
        """Load and verify a saved file; raises ValueError when it does not match."""
        if not path.is_file() or path.stat().st_size == 0:
            raise ValueError(f"ANN file {path.name} is missing or empty")
        graph_dim = dim if projection is None else projection.shape[1]
        index = hnswlib.Index(space="ip", dim=graph_dim)
        large = path.stat().st_size >= huge_pages.MIN_BYTES
        before = huge_pages.anonymous_regions() if large else set()
        try:
            index.load_index(str(path), max_elements=0)
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            raise ValueError(f"ANN file {path.name} cannot be loaded: {exc}") from exc
        if index.dim != graph_dim or index.get_current_count() != expected_count:
            raise ValueError(f"ANN file {path.name} does not match the catalog")
        index.set_ef(EF_SEARCH)  # hnswlib does not save ef
        loaded = cls(index, dim, projection, rerank_source)
        if large:
            loaded.memory = huge_pages.anonymous_regions() - before
        return loaded

    def use_huge_pages(self) -> int:
        """Back a large loaded graph with huge pages (seconds for a 1M graph; for processes
        that keep it, see mmfind.store.huge_pages). Returns the bytes now backed so."""
        return huge_pages.advise(self.memory)

    @property
    def count(self) -> int:
        return int(self.index.get_current_count())

    @property
    def rank(self) -> int:
        return 0 if self.projection is None else int(self.projection.shape[1])

    def _graph_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = vectors.astype(np.float32, copy=False)
        if self.projection is None:
            return vectors
        return np.ascontiguousarray(vectors @ self.projection)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        needed = self.count + len(ids)
        if needed > self.index.get_max_elements():
            self.index.resize_index(max(needed, int(self.index.get_max_elements() * 1.5)))
        self.index.add_items(self._graph_vectors(vectors), ids)

    def mark_deleted(self, ids: list[int]) -> int:
        done = 0
        for item_id in ids:
            try:
                self.index.mark_deleted(int(item_id))
                done += 1
            except RuntimeError:
                continue  # not in this file (added and deleted since it was written)
        return done

    def search(
        self, vector: np.ndarray, k: int, *, ef: int | None = None, rerank: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (ids, cosine scores), best first; k is clamped by the caller to the live count.
        `ef` (default: EF_SEARCH, projected_ef(count) on a projected graph) is raised to the
        candidates wanted when smaller, as hnswlib needs. On a projected graph the `rerank`
        (default RERANK) best candidates are re-scored with their full vectors."""
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        wanted, default_ef = k, EF_SEARCH
        if self.projection is not None:
            if self.rerank_source is None:
                raise TypeError("a projected ANN graph needs the vectors to re-rank with")
            wanted = min(max(k, rerank or RERANK), self.count)
            default_ef = projected_ef(self.count)
        self.index.set_ef(max(ef or default_ef, wanted))
        query = self._graph_vectors(vector.reshape(1, -1))
        try:
            labels, distances = self._knn(query, wanted)
        except ValueError:
            if wanted == k:
                raise
            labels, distances = self._knn(query, k)
        if self.rerank_source is None:  # (a projected graph always has one: checked above)
            return labels[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)
        ids, rows = self.rerank_source(labels[0].astype(np.int64))
        if len(ids) == 0:
            return ids, np.zeros(0, dtype=np.float32)
        scores = (rows @ vector.astype(np.float32, copy=False)).astype(np.float32)
        order = np.lexsort((ids, -scores))[:k]
        return ids[order], scores[order]

    def _knn(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            labels, distances = self.index.knn_query(query, k=k)
        except RuntimeError as exc:  # hnswlib found fewer than k live neighbours
            raise ValueError(str(exc)) from exc
        return labels, distances

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same directory, fsync, rename."""
        tmp = path.with_name(path.name + ".tmp")
        self.index.save_index(str(tmp))
        durable_replace(tmp, path)


def file_digest(path: Path, span: int = 1 << 16) -> str:
    """blake2b of a file's first and last 64 KiB: catches a damaged header (which could crash
    hnswlib) or a different file, without reading a large index whole."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        digest.update(fh.read(span))
        size = os.fstat(fh.fileno()).st_size
        if size > span:
            fh.seek(max(span, size - span))
            digest.update(fh.read(span))
    return digest.hexdigest()


def projected_ef(count: int) -> int:
    """The default ef of a projected graph of `count` elements. Recall at a fixed ef falls as
    the graph grows. make bench, 1,000,000 CLIP-like vectors, 1,000 text queries: recall@10
    0.9795 at ef 512 (1.85 ms), 0.988 at ef 640 (2.21 ms); 544 sits between (~0.982, ~1.94 ms).
    A 200,000-item graph reached 0.982 at ef 256 (bench smoke run, 50 queries). ef grows as a
    power of count through (200,000, 256) and (1,000,000, 544), in multiples of 32, at most
    1024."""
    exponent = math.log(544 / 256) / math.log(1_000_000 / PROJECT_MIN_ITEMS)
    ef = 256 * (max(count, PROJECT_MIN_ITEMS) / PROJECT_MIN_ITEMS) ** exponent
    return int(min(1024, round(ef / 32) * 32))


def fit_projection(sample: np.ndarray) -> np.ndarray | None:
    """(dim, dim // 2) float32 orthonormal columns: the main directions of the sample's vectors
    (eigenvectors of their uncentred second moment, so the mean direction is kept), or None when
    half the dimensions hold less than PROJECT_ENERGY of the energy (a projection would cost
    recall for little gain)."""
    if sample.ndim != 2 or len(sample) < 2 * sample.shape[1]:
        return None
    rank = sample.shape[1] // 2
    sample64 = sample.astype(np.float64)
    weights, directions = np.linalg.eigh(sample64.T @ sample64)
    order = np.argsort(weights)[::-1]
    if float(weights[order[:rank]].sum()) < PROJECT_ENERGY * float(weights.sum()):
        return None
    return np.ascontiguousarray(directions[:, order[:rank]], dtype=np.float32)


def build_from_catalog(catalog: Catalog, space: str, dim: int) -> tuple[AnnIndex, int]:
    """A fresh index of every live item of a space; returns it with the highest id it holds."""
    total = catalog.item_count(space)
    projection = None
    if total >= PROJECT_MIN_ITEMS:
        sample = catalog.sample_vectors(space, PROJECTION_SAMPLE)
        projection = fit_projection(sample) if sample.size and sample.shape[1] == dim else None
    source = None
    if projection is not None:  # a temporary graph re-ranks from the catalog (slower)

        def source(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return catalog.vectors_by_id(space, ids.tolist())

    ann = AnnIndex.empty(dim, total, projection, source)
    max_id = 0
    for ids, vectors in catalog.iter_vectors(space):
        ann.add(ids, vectors)
        max_id = int(ids[-1])
    return ann, max_id


def projection_from_blob(blob: bytes | None, dim: int, rank: int) -> np.ndarray | None:
    if blob is None or rank <= 0 or len(blob) != 4 * dim * rank:
        return None
    return np.frombuffer(blob, dtype=np.float32).reshape(dim, rank).copy()


class AnnStore:
    """Keeps the ANN files of an index directory in step with its catalog."""

    def __init__(self, catalog: Catalog, index_dir: Path) -> None:
        self.catalog = catalog
        self.dir = index_dir

    def is_current(self, space: str, dim: int, model: str) -> bool:
        """True when the saved file covers every live item and nothing deleted (no load needed)."""
        state = AnnState.read(self.catalog, space)
        if state is None or state.dim != dim or state.model != model:
            return False
        try:
            if (self.dir / state.file).stat().st_size != state.size:
                return False
        except OSError:
            return False
        if self.catalog.tombstones(space):
            return False
        return self.catalog.max_item_id(space) <= state.max_id

    def load(self, space: str, dim: int, model: str) -> tuple[AnnIndex, int, int] | None:
        """The saved index of a space, the highest item id it covers and how many of its
        elements are live (not marked deleted), if the file is sound."""
        state = AnnState.read(self.catalog, space)
        if state is None or state.dim != dim or state.model != model:
            return None
        path = self.dir / state.file
        try:
            if path.stat().st_size != state.size or file_digest(path) != state.digest:
                return None
            projection, source = self.projection_of(space, state)
            ann = AnnIndex.load(path, dim, state.count, projection, source)
        except (OSError, ValueError):
            return None
        return ann, state.max_id, state.count - state.deleted

    def projection_of(
        self, space: str, state: AnnState
    ) -> tuple[np.ndarray | None, MappedVectors | None]:
        """A projected generation's matrix and full vectors; ValueError when either is bad."""
        if not state.rank:
            return None, None
        blob = self.catalog.ann_projection(space, state.generation)
        projection = projection_from_blob(blob, state.dim, state.rank)
        if projection is None:
            raise ValueError(f"the projection of {state.file} is missing or damaged")
        path = self.dir / state.vectors_file
        try:
            intact = bool(state.vectors_file) and file_digest(path) == state.vectors_digest
        except OSError:
            intact = False
        if not intact:
            raise ValueError(f"the vectors file of {state.file} is missing or damaged")
        vectors = MappedVectors(path, state.dim)
        if vectors.count != state.count - state.deleted:
            raise ValueError(f"the vectors file of {state.file} does not match the catalog")
        return projection, vectors

    def sync(self, space: str, dim: int, model: str) -> bool:
        """Bring the space's file up to date with the catalog (writer only, under the lock).

        Returns True when the file had to be rebuilt from scratch."""
        state = AnnState.read(self.catalog, space)
        loaded = self.load(space, dim, model) if state is not None else None
        tombstones = self.catalog.tombstones(space)
        rebuilt = False
        if loaded is None or state is None:
            ann, max_id = build_from_catalog(self.catalog, space, dim)
            deleted = 0
            rebuilt = True
        else:
            ann, max_id, _ = loaded
            deleted = state.deleted + ann.mark_deleted([t for t in tombstones if t <= max_id])
            if deleted > REBUILD_DELETED_FRACTION * max(ann.count, 1) or self._outgrown(
                ann, space, max_id
            ):
                ann, max_id = build_from_catalog(self.catalog, space, dim)
                deleted = 0
                rebuilt = True
            else:
                for ids, vectors in self.catalog.iter_vectors(space, after_id=max_id):
                    ann.add(ids, vectors)
                    max_id = int(ids[-1])
        generation = (state.generation + 1) if state is not None else 1
        name = f"{space}.{generation}.hnsw"
        ann.save(self.dir / name)
        size = (self.dir / name).stat().st_size
        digest = file_digest(self.dir / name)
        vectors_file = vectors_digest = ""
        if ann.projection is not None:
            vectors_file = name + SUFFIX
            write_vectors(self.catalog, space, dim, self.dir / vectors_file, max_id=max_id)
            vectors_digest = file_digest(self.dir / vectors_file)
        new_state = AnnState(
            name, dim, model, ann.count, deleted, max_id, generation, size, digest, ann.rank,
            vectors_file, vectors_digest,
        )  # fmt: skip
        projection = None if ann.projection is None else ann.projection.tobytes()
        with self.catalog.atomic():
            new_state.write(self.catalog, space)
            self.catalog.set_ann_projection(space, generation, projection)
            # Every tombstone is absorbed now: older ids were marked deleted, newer ones were
            # never added (only live rows are read from the catalog).
            self.catalog.clear_tombstones(space)
        self.remove_stale_files()
        return rebuilt

    def _outgrown(self, ann: AnnIndex, space: str, max_id: int) -> bool:
        """Whether the items added since the graph was built call for a new one: the space
        crossed PROJECT_MIN_ITEMS, or the new items lie outside a projection fitted before them
        (their kept energy is below PROJECT_ENERGY and they are a tenth of the space or more)."""
        added = self.catalog.count_items_after(space, max_id)
        if not added:
            return False
        if ann.projection is None:
            return ann.count < PROJECT_MIN_ITEMS <= ann.count + added
        if added * 10 < ann.count:
            return False
        kept, total = 0.0, 0.0
        for _, vectors in self.catalog.iter_vectors(space, after_id=max_id):
            total += float(np.square(vectors).sum())
            kept += float(np.square(vectors @ ann.projection).sum())
        return total > 0 and kept < PROJECT_ENERGY * total

    def drop(self, space: str) -> None:
        """Forget a space's file (after a model change)."""
        with self.catalog.atomic():
            self.catalog.delete_meta_prefix(f"ann.{space}.")
            self.catalog.set_ann_projection(space, 0, None)
            self.catalog.clear_tombstones(space)
        self.remove_stale_files()

    def in_force(self) -> set[str]:
        """The files the catalog's meta names (whatever space they belong to)."""
        return self.catalog.meta_values(prefix="ann.", suffix=".file") | {
            name for name in self.catalog.meta_values(prefix="ann.", suffix=".vectors_file") if name
        }

    def remove_stale_files(self) -> None:
        keep = self.in_force()
        for path in self.dir.glob("*.hnsw*"):
            if path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def size_bytes(self) -> int:
        total = 0
        for name in self.in_force():
            with contextlib.suppress(FileNotFoundError):
                total += (self.dir / name).stat().st_size
        return total
