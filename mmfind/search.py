"""Queries: build one vector from text and images, search the ANN (plus what it does not cover
yet), join hits back to live catalog rows, filter, group by file and rank."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmfind.encoders.clip import SPACE as CLIP_SPACE
from mmfind.encoders.presets import load_image_encoder
from mmfind.errors import EmptyIndexError, IndexBusyError, InputError, MediaError, UsageError
from mmfind.media.image import DEFAULT_MAX_PIXELS, prepare_image
from mmfind.store.ann import AnnIndex, AnnStore, build_from_catalog
from mmfind.store.catalog import Catalog, ItemHit, SpaceInfo
from mmfind.store.lock import writer_lock

EXACT_FILTER_LIMIT = 50_000  # filtered searches over at most this many items are exact


@dataclass
class Query:
    text: str | None = None
    images: Sequence[str] = ()
    negatives: Sequence[str] = ()
    text_weight: float = 1.0
    image_weight: float = 1.0
    not_weight: float = 0.5
    limit: int = 10
    within: Sequence[str] = ()
    kinds: Sequence[str] = ()
    min_score: float | None = None


@dataclass
class Result:
    rank: int
    score: float
    hit: ItemHit


@dataclass
class Response:
    results: list[Result]
    model: str
    searched_items: int
    notes: list[str] = field(default_factory=list)


def validate(query: Query) -> None:
    if not (query.text and query.text.strip()) and not query.images:
        raise UsageError("nothing to search for: give TEXT and/or --image PATH")
    if query.limit < 1:
        raise UsageError("--limit must be at least 1")
    for path in query.images:
        if not os.path.isfile(path):
            raise InputError(f"query image not found: {path}")


def query_vector(encoder: Any, query: Query, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Weighted sum of unit vectors: text and the mean of the images, minus the --not texts."""
    parts: list[np.ndarray] = []
    if query.text and query.text.strip():
        parts.append(query.text_weight * encoder.encode_texts([query.text])[0])
    if query.images:
        pixels = []
        for path in query.images:
            try:
                pixels.append(prepare_image(path, encoder.image_spec, max_pixels=max_pixels).pixels)
            except MediaError as exc:
                raise InputError(f"cannot use query image {path}: {exc.reason}") from exc
            except OSError as exc:
                raise InputError(f"cannot read query image {path}: {exc.strerror}") from exc
        image_vectors = encoder.encode_images(np.stack(pixels))
        parts.append(query.image_weight * _unit(image_vectors.mean(axis=0)))
    vector = np.sum(parts, axis=0)
    if query.negatives:
        negative = encoder.encode_texts(list(query.negatives)).mean(axis=0)
        vector = vector - query.not_weight * _unit(negative)
    return _unit(vector)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if norm < 1e-12:
        raise UsageError("the query parts cancel out; lower --not-weight")
    return (v / norm).astype(np.float32)


def run_query(
    index_dir: Path, query: Query, *, device: str = "auto", encoder: Any | None = None
) -> Response:
    """Answer a query against the index at index_dir with the model that built it."""
    validate(query)
    catalog = Catalog.open(index_dir, create=False)
    try:
        space = catalog.space(CLIP_SPACE)
        live = catalog.item_count(CLIP_SPACE) if space is not None else 0
        if space is None or live == 0:
            raise EmptyIndexError(f"the index at {index_dir} is empty: run `mmfind index PATH`")
        if encoder is None:
            encoder = load_image_encoder(space.model, device)
        vector = query_vector(encoder, query)
        searcher = Searcher(catalog, index_dir, space)
        exclude = _own_paths(query.images)
        results = searcher.search(vector, query, exclude=exclude)
        return Response(results, space.model, live, searcher.notes)
    finally:
        catalog.close()


def _own_paths(images: Sequence[str]) -> set[str]:
    paths = set()
    for p in images:
        paths.add(os.path.abspath(p))
        paths.add(os.path.realpath(p))
    return paths


class Searcher:
    """Nearest items of one space: the ANN file for what it covers, exact search for the rest."""

    def __init__(self, catalog: Catalog, index_dir: Path, space: SpaceInfo) -> None:
        self.catalog = catalog
        self.index_dir = index_dir
        self.space = space
        self.notes: list[str] = []
        self._ann: tuple[AnnIndex, int, int] | None = None

    def ann(self) -> tuple[AnnIndex, int, int]:
        """(index, highest item id it covers, live elements in it)."""
        if self._ann is None:
            store = AnnStore(self.catalog, self.index_dir)
            loaded = store.load(self.space.name, self.space.dim, self.space.model)
            if loaded is None:
                loaded = self._rebuild(store)
            self._ann = loaded
        return self._ann

    def _rebuild(self, store: AnnStore) -> tuple[AnnIndex, int, int]:
        """The ANN file is missing, damaged or stale: rebuild it (and save it if no run is)."""
        try:
            with writer_lock(self.index_dir, wait_s=0):
                store.sync(self.space.name, self.space.dim, self.space.model)
                loaded = store.load(self.space.name, self.space.dim, self.space.model)
                if loaded is not None:
                    self.notes.append("the ANN index was missing or damaged and was rebuilt")
                    return loaded
        except IndexBusyError:
            pass
        self.notes.append("the ANN index is being rewritten; searched a temporary copy")
        ann, max_id = build_from_catalog(self.catalog, self.space.name, self.space.dim)
        return ann, max_id, ann.count

    def search(
        self, vector: np.ndarray, query: Query, *, exclude: frozenset[str] | set[str] = frozenset()
    ) -> list[Result]:
        within = [os.path.abspath(d) for d in query.within]
        kinds = list(query.kinds)
        if (within or kinds) and self.catalog.count_filtered(
            self.space.name, within, kinds
        ) <= EXACT_FILTER_LIMIT:
            ids, vectors = self.catalog.filtered_vectors(self.space.name, within, kinds)
            scores = vectors @ vector if len(ids) else np.zeros(0, dtype=np.float32)
            candidates = dict(zip(ids.tolist(), scores.tolist(), strict=True))
            return self._rank(candidates, query, within, kinds, exclude)

        ann, covered, live_in_ann = self.ann()
        tail: dict[int, float] = {}
        for ids, vectors in self.catalog.iter_vectors(self.space.name, after_id=covered):
            tail.update(zip(ids.tolist(), (vectors @ vector).tolist(), strict=True))
        k = min(live_in_ann, max(query.limit * 4, 40))
        while True:
            try:
                labels, scores = ann.search(vector, k)
            except ValueError:  # the graph cannot yield k live neighbours: be exact instead
                ids, vectors = self.catalog.filtered_vectors(self.space.name, within, kinds)
                exact = dict(zip(ids.tolist(), (vectors @ vector).tolist(), strict=True))
                return self._rank(exact, query, within, kinds, exclude)
            candidates = dict(tail)
            candidates.update(zip(labels.tolist(), scores.tolist(), strict=True))
            results = self._rank(candidates, query, within, kinds, exclude)
            exhausted = k >= live_in_ann
            below_floor = query.min_score is not None and (
                len(scores) == 0 or float(scores[-1]) < query.min_score
            )
            if len(results) >= query.limit or exhausted or below_floor:
                return results
            k = min(live_in_ann, k * 4)

    def _rank(
        self,
        candidates: dict[int, float],
        query: Query,
        within: Sequence[str],
        kinds: Sequence[str],
        exclude: frozenset[str] | set[str],
    ) -> list[Result]:
        if query.min_score is not None:
            candidates = {i: s for i, s in candidates.items() if s >= query.min_score}
        hits = self.catalog.hits_for_items(list(candidates), within=within, kinds=kinds)
        best: dict[int, tuple[float, ItemHit]] = {}
        for item_id, hit in hits.items():
            if hit.path in exclude:
                continue
            score = candidates[item_id]
            current = best.get(hit.file_id)
            if current is None or score > current[0]:
                best[hit.file_id] = (score, hit)
        ordered = sorted(best.values(), key=lambda sh: (-sh[0], sh[1].path))
        return [
            Result(rank=i + 1, score=float(score), hit=hit)
            for i, (score, hit) in enumerate(ordered[: query.limit])
        ]
