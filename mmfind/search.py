"""Queries: one vector per embedding space from text, images and audio; nearest items per space
(ANN plus what it does not cover yet); hits joined to live catalog rows and filtered; spaces
merged by a calibrated score; grouped by file; ranked.

Calibration. Raw cosines are not comparable across models (a CLAP text-audio match of 0.3 may be
excellent while a CLIP text-image 0.3 is ordinary), nor across modalities inside one space (a
text query is far closer to any text chunk than to any photo in CLIP space). So results come
from populations — (space, group) pairs: clip/text (text-file chunks), clip/visual (images and
video frames), clap/sound (audio and video sound tracks) — and when a query reaches more than one
population, each hit's cosine is standardised against its population's distribution of scores
for the same query vector: z = (cosine - median) / scale, over a fixed, evenly spread sample of
up to 1000 items of that population, with scale = 1.4826 × the median absolute deviation (the
robust estimate of a standard deviation: the strong matches themselves do not inflate it), and
at least MIN_SCALE. Results are merged by z; the reported `score` is then z and the raw cosine
stays available. With one population, `score` is the cosine.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmfind import text_towers
from mmfind.config import DEFAULT_MAX_PIXELS
from mmfind.encoders.light_tower import TowerError
from mmfind.errors import EmptyIndexError, IndexBusyError, InputError, MediaError, UsageError
from mmfind.media.kinds import KINDS
from mmfind.models import Models
from mmfind.spaces import CLAP, CLIP
from mmfind.store.ann import AnnIndex, AnnState, AnnStore, build_from_catalog
from mmfind.store.catalog import Catalog, ItemHit, SpaceInfo
from mmfind.store.guard import catalog_errors
from mmfind.store.lock import writer_lock

EXACT_FILTER_LIMIT = 50_000  # filtered searches over at most this many items are exact
CALIBRATION_SAMPLE = 1000
MIN_SCALE = 0.01  # cosine spread below which a population is treated as this spread
QUERY_AUDIO_MAX_S = 60.0  # a query sound is described by its first minute

SPACE_KINDS = {CLIP: ("image", "video", "text"), CLAP: ("audio", "video")}
# populations whose scores are calibrated separately: (space, group) -> kinds of file
POPULATIONS: dict[tuple[str, str], tuple[str, ...]] = {
    (CLIP, "visual"): ("image", "video"),
    (CLIP, "text"): ("text",),
    (CLAP, "sound"): ("audio", "video"),
}


@dataclass
class Query:
    text: str | None = None
    images: Sequence[str] = ()
    audios: Sequence[str] = ()
    negatives: Sequence[str] = ()
    text_weight: float = 1.0
    image_weight: float = 1.0
    audio_weight: float = 1.0
    not_weight: float = 0.5
    limit: int = 10
    within: Sequence[str] = ()
    kinds: Sequence[str] = ()
    min_score: float | None = None
    all_moments: bool = False

    @property
    def has_text(self) -> bool:
        return bool(self.text and self.text.strip())


@dataclass
class Result:
    rank: int
    score: float  # calibrated when several spaces were searched, else the cosine
    cosine: float
    hit: ItemHit


@dataclass
class Response:
    results: list[Result]
    models: dict[str, str]
    spaces: list[str]
    calibrated: bool
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.models.get(CLIP) or next(iter(self.models.values()), "")


def validate(query: Query) -> None:
    if not query.has_text and not query.images and not query.audios:
        raise UsageError("nothing to search for: give TEXT, --image PATH and/or --audio PATH")
    if query.limit < 1:
        raise UsageError("--limit must be at least 1")
    for kind in query.kinds:
        if kind not in KINDS:
            raise UsageError(f"--type must be one of {', '.join(KINDS)}, not {kind!r}")
    for what, paths in (("image", query.images), ("audio", query.audios)):
        for path in paths:
            if not os.path.isfile(path):
                raise InputError(f"query {what} not found: {path}")


def wanted_spaces(query: Query) -> list[str]:
    """The spaces this query has something to say to, narrowed by --type."""
    spaces = []
    if query.has_text or query.images:
        spaces.append(CLIP)
    if query.has_text or query.audios:
        spaces.append(CLAP)
    if query.kinds:
        spaces = [s for s in spaces if set(SPACE_KINDS[s]) & set(query.kinds)]
    return spaces


def query_vector(encoder: Any, space: str, query: Query) -> np.ndarray:
    """Weighted sum of unit vectors: the text, the mean of the examples, minus the --not texts."""
    parts: list[np.ndarray] = []
    if query.has_text:
        parts.append(query.text_weight * encoder.encode_texts([query.text])[0])
    if space == CLIP and query.images:
        pixels = [_query_image(encoder, p) for p in query.images]
        parts.append(query.image_weight * _unit(encoder.encode_images(np.stack(pixels)).mean(0)))
    if space == CLAP and query.audios:
        windows = np.concatenate([_query_audio(p) for p in query.audios])
        parts.append(query.audio_weight * _unit(encoder.encode_audio(windows).mean(0)))
    if not parts:
        raise UsageError(f"nothing in this query can be searched in the {space} space")
    vector = np.sum(parts, axis=0)
    if query.negatives:
        negative = encoder.encode_texts(list(query.negatives)).mean(axis=0)
        vector = vector - query.not_weight * _unit(negative)
    return _unit(vector)


def _query_image(encoder: Any, path: str) -> np.ndarray:
    from mmfind.media.image import prepare_image  # (Pillow: only for image queries)

    try:
        return prepare_image(path, encoder.image_spec, max_pixels=DEFAULT_MAX_PIXELS).pixels
    except MediaError as exc:
        raise InputError(f"cannot use query image {path}: {exc.reason}") from exc
    except OSError as exc:
        raise InputError(f"cannot read query image {path}: {exc.strerror}") from exc


def _query_audio(path: str) -> np.ndarray:
    from mmfind.media.audio import decode_audio_file

    try:
        return decode_audio_file(path, max_duration_s=QUERY_AUDIO_MAX_S).windows
    except MediaError as exc:
        raise InputError(f"cannot use query audio {path}: {exc.reason}") from exc
    except OSError as exc:
        raise InputError(f"cannot read query audio {path}: {exc.strerror}") from exc


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if norm < 1e-12:
        raise UsageError("the query parts cancel out; lower --not-weight")
    return (v / norm).astype(np.float32)


class AnnCache:
    """ANN indexes kept between queries by a long-lived process (the query server), keyed by
    the file in force: a new generation written by an index run is picked up at once."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[str, str], tuple[AnnIndex, int, int]]] = {}
        self._samples: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, str], np.ndarray]] = {}

    def sample(self, catalog: Catalog, space: str, kinds: tuple[str, ...], n: int) -> np.ndarray:
        """A population's calibration sample, kept while the space's ANN file stays the same
        (an index run that changes the space writes a new one)."""
        state = AnnState.read(catalog, space)
        key = (state.file, state.digest) if state is not None else None
        cached = self._samples.get((space, kinds))
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        sample = catalog.sample_vectors(space, n, kinds=kinds)
        if key is not None:
            self._samples[(space, kinds)] = (key, sample)
        return sample

    def get(self, space: str, key: tuple[str, str]) -> tuple[AnnIndex, int, int] | None:
        entry = self._entries.get(space)
        return entry[1] if entry is not None and entry[0] == key else None

    def put(self, space: str, key: tuple[str, str], value: tuple[AnnIndex, int, int]) -> None:
        """Keep an index; a large graph is moved onto huge pages in the background (seconds for
        a 1M graph, queries meanwhile run as before; see mmfind.store.huge_pages)."""
        self._entries[space] = (key, value)
        if value[0].memory:
            threading.Thread(
                target=value[0].use_huge_pages, name="mmfind-huge-pages", daemon=True
            ).start()


@catalog_errors
def run_query(
    index_dir: Path,
    query: Query,
    *,
    device: str = "auto",
    encoders: dict[str, Any] | None = None,
    ann_cache: AnnCache | None = None,
    light_text: bool = False,
    deferred: list[Callable[[], None]] | None = None,
) -> Response:
    """Answer a query against the index at index_dir with the models that built it.

    `light_text`: a text-only query on the CPU encodes its text with the index's light text
    tower where it has one (see mmfind.text_towers), without loading torch; a query that loads
    the full model exports the tower when it is missing. For cold one-off queries (the CLI);
    a resident process keeps the full model loaded instead. With `deferred`, that export (seconds,
    once per index) is appended to it for the caller to run after showing the results."""
    validate(query)
    catalog = Catalog.open(index_dir, create=False)
    try:
        per_space = catalog.items_per_space()
        if not any(per_space.values()):
            raise EmptyIndexError(f"the index at {index_dir} is empty: run `mmfind index PATH`")
        infos = {s.name: s for s in catalog.spaces() if per_space.get(s.name)}
        targets = [s for s in wanted_spaces(query) if s in infos]
        if query.audios and CLAP not in infos:
            raise InputError("--audio: this index holds no audio (index audio or video files)")
        if query.images and CLIP not in infos:
            raise InputError("--image: this index holds no images, video or text")
        models = Models(catalog, None, device=device, preloaded=encoders)
        models.ids = {name: info.model for name, info in infos.items()}
        exclude = _own_paths([*query.images, *query.audios])
        populations = _populations(catalog, targets, query)
        calibrated = len(populations) > 1
        merged: list[tuple[float, float, ItemHit]] = []
        notes: list[str] = []
        searchers = {s: Searcher(catalog, index_dir, infos[s], ann_cache) for s in targets}
        vectors: dict[str, np.ndarray] = {}
        light = (
            _light_encoders(index_dir, infos, [s for s, _ in populations], query, device, encoders)
            if light_text
            else {}
        )
        for space, kinds in populations:
            if space not in vectors:
                vectors[space] = _encode(models, light.get(space), space, query, notes)
            scoped = replace(query, kinds=kinds)
            scored = searchers[space].search(vectors[space], scoped, exclude=exclude)
            mean, std = (
                _calibration(catalog, space, kinds, vectors[space], ann_cache)
                if calibrated
                else (0.0, 1.0)
            )
            merged.extend(((cos - mean) / std, cos, hit) for cos, hit in scored)
        for searcher in searchers.values():
            notes.extend(searcher.notes)
        results = _merge(merged, query)
        if light_text:
            export = functools.partial(_export_towers, index_dir, models, encoders or {})
            if deferred is None:
                export()
            else:
                deferred.append(export)
        return Response(results, {s: infos[s].model for s in targets}, targets, calibrated, notes)
    finally:
        catalog.close()


def _light_encoders(
    index_dir: Path,
    infos: dict[str, SpaceInfo],
    searched: Sequence[str],
    query: Query,
    device: str,
    preloaded: dict[str, Any] | None,
) -> dict[str, Any]:
    """The light text encoders this query can use: for the spaces it searches, text only (no
    --image in the clip space, no --audio in the clap space), on the CPU, for spaces whose
    model the caller did not pass already loaded."""
    if device not in ("auto", "cpu"):
        return {}
    found = {}
    for space in dict.fromkeys(searched):
        if (
            (preloaded and space in preloaded)
            or (space == CLIP and query.images)
            or (space == CLAP and query.audios)
        ):
            continue
        encoder = text_towers.light_encoder(index_dir, space, infos[space].model)
        if encoder is not None:
            found[space] = encoder
    return found


def _encode(
    models: Models, light: Any | None, space: str, query: Query, notes: list[str]
) -> np.ndarray:
    if light is not None:
        try:
            return query_vector(light, space, query)
        except TowerError as exc:  # damaged weights: the full model answers (and rewrites it)
            notes.append(f"the {space} text tower failed its checks ({exc}); used the full model")
    return query_vector(models.encoder(space, declare=False), space, query)


def _export_towers(index_dir: Path, models: Models, preloaded: dict[str, Any]) -> None:
    """Export the text tower of each model this query had to load, when the index lacks a
    sound one (an index built before towers existed, or a damaged tower). Only while no index
    run holds the writer lock; never fails the query."""
    for space, encoder in models.loaded.items():
        if space in preloaded or space not in text_towers.EXPORTABLE:
            continue
        with contextlib.suppress(IndexBusyError, OSError), writer_lock(index_dir, wait_s=0):
            text_towers.ensure(index_dir, encoder, check_weights=True)


def _populations(
    catalog: Catalog, targets: Sequence[str], query: Query
) -> list[tuple[str, tuple[str, ...]]]:
    """The (space, kinds) populations this query searches: non-empty, narrowed by --type."""
    chosen = []
    for (space, _group), kinds in POPULATIONS.items():
        if space not in targets:
            continue
        kept = tuple(k for k in kinds if not query.kinds or k in query.kinds)
        if kept and catalog.has_items(space, kept):
            chosen.append((space, kept))
    return chosen


def _calibration(
    catalog: Catalog,
    space: str,
    kinds: tuple[str, ...],
    vector: np.ndarray,
    cache: AnnCache | None,
) -> tuple[float, float]:
    if cache is not None:
        sample = cache.sample(catalog, space, kinds, CALIBRATION_SAMPLE)
    else:
        sample = catalog.sample_vectors(space, CALIBRATION_SAMPLE, kinds=kinds)
    if len(sample) == 0:
        return 0.0, 1.0
    scores = sample @ vector
    median = float(np.median(scores))
    mad = float(np.median(np.abs(scores - median)))
    return median, max(1.4826 * mad, MIN_SCALE)


def _merge(scored: list[tuple[float, float, ItemHit]], query: Query) -> list[Result]:
    """Best item per file (or every item with all_moments), ranked by the (calibrated) score."""
    if query.all_moments:
        chosen = scored
    else:
        best: dict[int, tuple[float, float, ItemHit]] = {}
        for entry in scored:
            current = best.get(entry[2].file_id)
            if current is None or entry[0] > current[0]:
                best[entry[2].file_id] = entry
        chosen = list(best.values())
    chosen.sort(key=lambda e: (-e[0], e[2].path, e[2].start or 0.0, e[2].item_id))
    return [
        Result(rank=i + 1, score=float(z), cosine=float(cos), hit=hit)
        for i, (z, cos, hit) in enumerate(chosen[: query.limit])
    ]


def _own_paths(paths: Sequence[str]) -> set[str]:
    own = set()
    for p in paths:
        own.add(os.path.abspath(p))
        own.add(os.path.realpath(p))
    return own


class Searcher:
    """Nearest items of one space: the ANN file for what it covers, exact search for the rest."""

    def __init__(
        self,
        catalog: Catalog,
        index_dir: Path,
        space: SpaceInfo,
        cache: AnnCache | None = None,
        *,
        ef: int | None = None,
    ) -> None:
        self.catalog = catalog
        self.index_dir = index_dir
        self.space = space
        self.cache = cache
        self.ef = ef  # hnswlib's search breadth (None: the default)
        self.notes: list[str] = []
        self._ann: tuple[AnnIndex, int, int] | None = None

    def ann(self) -> tuple[AnnIndex, int, int]:
        """(index, highest item id it covers, live elements in it)."""
        if self._ann is None:
            key = self._file_key()
            cached = self.cache.get(self.space.name, key) if self.cache and key else None
            if cached is not None:
                self._ann = cached
                return cached
            store = AnnStore(self.catalog, self.index_dir)
            loaded = store.load(self.space.name, self.space.dim, self.space.model)
            if loaded is None:
                loaded = self._rebuild(store)
                key = self._file_key()
            if self.cache is not None and key is not None:
                self.cache.put(self.space.name, key, loaded)
            self._ann = loaded
        return self._ann

    def _file_key(self) -> tuple[str, str] | None:
        state = AnnState.read(self.catalog, self.space.name)
        return (state.file, state.digest) if state is not None else None

    def _rebuild(self, store: AnnStore) -> tuple[AnnIndex, int, int]:
        """The ANN file is missing, damaged or stale: rebuild it (and save it if no run is)."""
        try:
            with writer_lock(self.index_dir, wait_s=0):
                store.sync(self.space.name, self.space.dim, self.space.model)
                loaded = store.load(self.space.name, self.space.dim, self.space.model)
                if loaded is not None:
                    self.notes.append(
                        f"the {self.space.name} ANN index was missing or damaged and was rebuilt"
                    )
                    return loaded
        except IndexBusyError:
            pass
        self.notes.append("the ANN index is being rewritten; searched a temporary copy")
        ann, max_id = build_from_catalog(self.catalog, self.space.name, self.space.dim)
        return ann, max_id, ann.count

    def search(
        self, vector: np.ndarray, query: Query, *, exclude: frozenset[str] | set[str] = frozenset()
    ) -> list[tuple[float, ItemHit]]:
        """Up to query.limit best (cosine, hit) pairs: one per file unless all_moments."""
        within = [os.path.abspath(d) for d in query.within]
        kinds = list(query.kinds)
        name = self.space.name
        if kinds and not within:
            present = self.catalog.kinds_present() & set(SPACE_KINDS[name])
            if present <= set(kinds):
                kinds = []  # the filter keeps every item of the space: the ANN serves as is
        if (within or kinds) and self.catalog.count_filtered(name, within, kinds) <= (
            EXACT_FILTER_LIMIT
        ):
            return self._exact(vector, query, within, kinds, exclude)
        ann, covered, live_in_ann = self.ann()
        tail: dict[int, float] = {}
        for ids, vectors in self.catalog.iter_vectors(name, after_id=covered):
            tail.update(zip(ids.tolist(), (vectors @ vector).tolist(), strict=True))
        k = min(live_in_ann, max(query.limit * 4, 40))
        while True:
            try:
                labels, scores = ann.search(vector, k, ef=self.ef)
            except ValueError:  # the graph cannot yield k live neighbours: be exact instead
                return self._exact(vector, query, within, kinds, exclude)
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

    def _exact(
        self,
        vector: np.ndarray,
        query: Query,
        within: Sequence[str],
        kinds: Sequence[str],
        exclude: frozenset[str] | set[str],
    ) -> list[tuple[float, ItemHit]]:
        ids, vectors = self.catalog.filtered_vectors(self.space.name, within, kinds)
        scores = vectors @ vector if len(ids) else np.zeros(0, dtype=np.float32)
        candidates = dict(zip(ids.tolist(), scores.tolist(), strict=True))
        return self._rank(candidates, query, within, kinds, exclude)

    def _rank(
        self,
        candidates: dict[int, float],
        query: Query,
        within: Sequence[str],
        kinds: Sequence[str],
        exclude: frozenset[str] | set[str],
    ) -> list[tuple[float, ItemHit]]:
        if query.min_score is not None:
            candidates = {i: s for i, s in candidates.items() if s >= query.min_score}
        hits = self.catalog.hits_for_items(list(candidates), within=within, kinds=kinds)
        scored = [
            (candidates[item_id], hit) for item_id, hit in hits.items() if hit.path not in exclude
        ]
        if not query.all_moments:
            best: dict[int, tuple[float, ItemHit]] = {}
            for score, hit in scored:
                if hit.file_id not in best or score > best[hit.file_id][0]:
                    best[hit.file_id] = (score, hit)
            scored = list(best.values())
        scored.sort(key=lambda sh: (-sh[0], sh[1].path, sh[1].start or 0.0, sh[1].item_id))
        return scored[: query.limit]
