"""What a direction ranks, and the exact ranking of it.

- `text_query_vectors`: text query vectors, computed in batches;
- `SpaceItems`: the live items of one space in an index, and galleries drawn from them;
- `Gallery`: one key per position (a file or a text) with its vectors, a file scored by its
  best item;
- `Plan` / `plan_queries`: the queries of each direction, their vectors and relevant keys;
- `exact_top`: the exact top k of each query over a gallery, ties broken by position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmfind.evaluate.datasets import Dataset, Media
from mmfind.evaluate.progress import Progress

TEXT_BATCH = 256
SCORE_BLOCK = 1 << 24  # floats of one block of the query × gallery score matrix (64 MB)


def text_query_vectors(
    encoder: Any,
    texts: Sequence[str],
    *,
    batch: int = TEXT_BATCH,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The vectors `search.query_vector(encoder, space, Query(text=t))` gives for each text (the
    encoder's unit text embedding), computed in batches instead of one call per text."""
    parts = []
    for start in range(0, len(texts), batch):
        vectors = np.asarray(encoder.encode_texts(list(texts[start : start + batch])), np.float32)
        parts.append(unit_rows(vectors))
        if on_batch is not None:
            on_batch(min(start + batch, len(texts)))
    if not parts:
        return np.zeros((0, int(encoder.dim)), dtype=np.float32)
    return np.concatenate(parts)


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: np.ndarray = (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return unit


@dataclass
class Gallery:
    """What a direction ranks: one key per position (a file or a text), with its vectors.

    `rows` are item vectors sorted by position; `starts[p]` is the first row of position p when
    some position has several items (a file with several windows or frames), else None."""

    keys: list[str]
    rows: np.ndarray
    starts: np.ndarray | None = None
    file_ids: list[int] = field(default_factory=list)
    first_items: np.ndarray | None = None  # the first item id of each position (files only)

    def __len__(self) -> int:
        return len(self.keys)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(queries, positions) cosine; a file scores as its best item."""
        s: np.ndarray = queries @ self.rows.T
        if self.starts is not None:
            grouped: np.ndarray = np.maximum.reduceat(s, self.starts, axis=1)
            return grouped
        return s

    def position_vectors(self) -> np.ndarray:
        """One unit vector per position: the normalised mean of its items."""
        if self.starts is None:
            return unit_rows(self.rows.copy())
        sums = np.add.reduceat(self.rows, self.starts, axis=0)
        return unit_rows(sums)


def exact_top(
    queries: np.ndarray,
    gallery: Gallery,
    depth: int,
    exclude: np.ndarray | None = None,
    on_block: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Positions of the best `depth` gallery entries per query, best first; ties by position.
    `exclude[i]` (a position, or -1) is left out of query i's ranking."""
    n = len(gallery)
    out: list[list[int]] = []
    if len(queries) == 0:
        return out
    kk = min(depth, n - (1 if exclude is not None else 0))
    if kk <= 0:
        return [[] for _ in range(len(queries))]
    block = max(1, min(len(queries), SCORE_BLOCK // max(1, len(gallery.rows))))
    for start in range(0, len(queries), block):
        s = gallery.scores(queries[start : start + block])
        rows = np.arange(len(s))
        if exclude is not None:
            drop = exclude[start : start + block]
            mask = drop >= 0
            s[rows[mask], drop[mask]] = -np.inf
        if kk < n:
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(n), s.shape).copy()
        picked = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -picked), axis=1)
        top = np.take_along_axis(part, order, axis=1)[:, :kk]
        out.extend(top.tolist())
        if on_block is not None:
            on_block(len(out))
    return out


@dataclass
class SpaceItems:
    """Live items of one space: ids, their files and vectors; the files' paths."""

    item_ids: np.ndarray
    file_ids: np.ndarray
    vectors: np.ndarray
    paths: dict[int, str]

    @classmethod
    def load(cls, catalog: Any, space: str, keep: set[int] | None, dim: int) -> SpaceItems:
        ids_parts: list[np.ndarray] = []
        file_parts: list[np.ndarray] = []
        vec_parts: list[np.ndarray] = []
        paths: dict[int, str] = {}
        wanted_files = None if keep is None else np.fromiter(keep, dtype=np.int64, count=len(keep))
        for ids, vectors in catalog.iter_vectors(space):
            hits = catalog.hits_for_items(ids.tolist())
            files = np.array([hits[i].file_id if i in hits else -1 for i in ids.tolist()])
            for hit in hits.values():
                paths[hit.file_id] = hit.path
            wanted = files >= 0
            if wanted_files is not None:
                wanted &= np.isin(files, wanted_files)
            ids_parts.append(ids[wanted])
            file_parts.append(files[wanted])
            vec_parts.append(vectors[wanted])
        if not ids_parts:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty, np.zeros((0, dim), dtype=np.float32), paths)
        return cls(
            np.concatenate(ids_parts),
            np.concatenate(file_parts).astype(np.int64),
            np.concatenate(vec_parts).astype(np.float32, copy=False),
            paths,
        )

    def gallery(self, order: Sequence[int], keys: Sequence[str]) -> Gallery:
        """The files `order` (file ids, each with items here) as a gallery with these keys."""
        position = {fid: p for p, fid in enumerate(order)}
        where = np.array([position.get(int(f), -1) for f in self.file_ids], dtype=np.int64)
        chosen = np.flatnonzero(where >= 0)
        sort = chosen[np.argsort(where[chosen], kind="stable")]
        pos = where[sort]
        starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]]) if len(pos) else pos
        grouped = len(starts) != len(pos)
        return Gallery(
            keys=list(keys),
            rows=self.vectors[sort],
            starts=starts if grouped else None,
            file_ids=list(order),
            first_items=self.item_ids[sort][starts] if len(pos) else np.zeros(0, np.int64),
        )


@dataclass
class Plan:
    """The queries of one direction and what they rank."""

    name: str
    vectors: np.ndarray
    gallery: Gallery
    queries: list[str]  # what each query is: its text, or the id of its media file / class
    query_ids: list[str] | None  # caption ids of text queries
    relevant: list[frozenset[str]]
    exclude: np.ndarray | None = None  # the gallery position of the query itself (media→media)
    paths: list[str] | None = None  # the query's own file (left out of its ANN results)


def plan_queries(
    dataset: Dataset,
    directions: list[str],
    templates: list[str],
    media: list[Media],
    media_paths: list[str],
    media_vectors: np.ndarray,
    gallery: Gallery,
    encoder: Any,
    report: Progress,
) -> list[Plan]:
    """The queries of each of `directions` over `media` (the gallery's first positions, with
    their vectors and paths); text queries are encoded in batches, reported as "encode"."""
    modality = dataset.modality
    plans: list[Plan] = []
    if dataset.is_classes:
        classes = dataset.classes
        members: dict[str, list[str]] = {c: [] for c in classes}
        for m in media:
            members[str(m.label)].append(m.id)
        prompts = [_prompt(t, c) for c in classes for t in templates]
        text = _texts(encoder, prompts, report) if _wants_text(directions) else None
        if f"{modality}_to_{modality}" in directions:
            plans.append(
                Plan(
                    f"{modality}_to_{modality}",
                    vectors=media_vectors,
                    gallery=gallery,
                    queries=[m.id for m in media],
                    query_ids=None,
                    relevant=[
                        frozenset(i for i in members[str(m.label)] if i != m.id) for m in media
                    ],
                    exclude=np.arange(len(media), dtype=np.int64),
                    paths=media_paths,
                )
            )
        if text is not None:
            per_class = text.reshape(len(classes), len(templates), -1).mean(axis=1)
            class_vectors = unit_rows(per_class)
            if f"text_to_{modality}" in directions:
                plans.append(
                    Plan(
                        f"text_to_{modality}",
                        vectors=class_vectors,
                        gallery=gallery,
                        queries=list(classes),
                        query_ids=None,
                        relevant=[frozenset(members[c]) for c in classes],
                    )
                )
            if f"{modality}_to_text" in directions:
                plans.append(
                    Plan(
                        f"{modality}_to_text",
                        vectors=media_vectors,
                        gallery=Gallery(list(classes), class_vectors),
                        queries=[m.id for m in media],
                        query_ids=None,
                        relevant=[frozenset([str(m.label)]) for m in media],
                    )
                )
        return plans

    captions = [c for m in media for c in m.captions]
    caption_ids = [cid for m in media for cid in m.caption_ids()]
    owners = [m.id for m in media for _ in m.captions]
    text = _texts(encoder, captions, report)
    if f"text_to_{modality}" in directions:
        plans.append(
            Plan(
                f"text_to_{modality}",
                vectors=text,
                gallery=gallery,
                queries=captions,
                query_ids=caption_ids,
                relevant=[frozenset([owner]) for owner in owners],
            )
        )
    if f"{modality}_to_text" in directions:
        plans.append(
            Plan(
                f"{modality}_to_text",
                vectors=media_vectors,
                gallery=Gallery(caption_ids, text),
                queries=[m.id for m in media],
                query_ids=None,
                relevant=[frozenset(m.caption_ids()) for m in media],
            )
        )
    return plans


def _wants_text(directions: list[str]) -> bool:
    return any(d.startswith("text_") or d.endswith("_text") for d in directions)


def _texts(encoder: Any, texts: list[str], report: Progress) -> np.ndarray:
    report("encode", 0, len(texts))
    return text_query_vectors(
        encoder,
        texts,
        on_batch=lambda n: report("encode", n, len(texts)),
    )


def display_key(path: str) -> str:
    """The gallery key of a file outside the dataset: its display path."""
    from mmfind.store.catalog import display_path

    return display_path(path)


def _prompt(template: str, class_name: str) -> str:
    """A zero-shot prompt: the class folder's name (underscores as spaces) in place of '{}'."""
    return template.replace("{}", class_name.replace("_", " "))
