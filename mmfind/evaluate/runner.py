"""One evaluation: index a dataset's media, answer its queries, score the rankings.

Nothing here has its own encoder or search path:

- media are embedded by `run_index` (the code behind `mmfind index`) into a throw-away index in a
  temporary folder, or read from an existing index (`EvalOptions.index`);
- a text query's vector is `search.query_vector(encoder, space, Query(text=...))`, computed in
  batches (`text_query_vectors`, whose equality with query_vector the tests check); a media
  query's vector is the mean of that file's item vectors in the catalog, normalised: what
  `mmfind query --image FILE` computes from the same decode and encoder (and `--audio FILE`,
  which reads a query sound's first minute, for sounds up to a minute long);
- zero-shot class queries average the text vectors of every prompt template, renormalised (CLIP's
  zero-shot classifier);
- rankings are exact by default: the cosine of the query with every item of the gallery, a file
  scored by its best item (as `Searcher` groups items by file), ties broken by dataset order;
- with ANN, each query is also answered by `Searcher.search` (the ANN index plus the items it does
  not cover, joined to live catalog rows: what `mmfind query` runs) and compared with the exact
  answer over the same vectors.

The gallery of a media-side direction is the dataset's media that were indexed; with an existing
index and `distractors`, every other file of that index's space joins the gallery as a
non-relevant distractor. Progress goes out through a callback, per-query records through another;
nothing prints.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmfind import config
from mmfind.errors import InputError, ModelMismatchError, UsageError
from mmfind.evaluate.datasets import Dataset, Media, load_dataset
from mmfind.evaluate.metrics import (
    aggregate,
    ann_recall_at_k,
    first_relevant_rank,
    normalize_ks,
    percentile,
)

Progress = Callable[[str, int, "int | None"], None]
"""progress(phase, done, total). Phases: the index run's (scan, model, index, finish), then
encode (text queries), exact (ranked queries), ann (queries answered by the ANN index)."""
PerQuery = Callable[[dict[str, Any]], None]
"""Receives one record per ranked query: direction, search ("exact"; "ann" with its ef;
"exact_index" for the ANN section's reference over a larger index), query, query_id (text
queries), ranked (the top max(k) ids), relevant (sorted ids), first_relevant_rank (1-based or
None). The aggregates can be recomputed from these records alone."""

DIRECTIONS = (
    "text_to_image", "image_to_text", "image_to_image",
    "text_to_audio", "audio_to_text", "audio_to_audio",
)  # fmt: skip
DEFAULT_TEMPLATES = {"image": ("a photo of a {}.",), "audio": ("this is a sound of {}.",)}
TEXT_BATCH = 256
SCORE_BLOCK = 1 << 24  # floats of one block of the query × gallery score matrix (64 MB)


@dataclass
class EvalOptions:
    format: str | None = None
    media_root: str | None = None
    split: str | None = None
    index: str | os.PathLike[str] | None = None  # an existing index; None: a throw-away one
    model: str | None = None
    audio_model: str | None = None
    device: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    limit: int | None = None
    seed: int = 0
    ks: Sequence[int] = (1, 5, 10)
    ann: bool = False
    efs: Sequence[int] = ()  # ef values for the ANN comparison; none: mmfind's default
    templates: Sequence[str] = ()  # zero-shot prompt templates ("a photo of a {}.")
    directions: Sequence[str] = ()  # only these directions; none: every one the data allows
    distractors: bool = False  # with index: the whole index is the gallery


@dataclass
class DirectionResult:
    name: str
    metrics: dict[str, float]
    queries: int
    skipped: int  # queries without any relevant item (not scored)
    gallery: int

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: round(v, 6) for k, v in self.metrics.items()},
            "queries": self.queries,
            "skipped": self.skipped,
            "gallery": self.gallery,
        }


@dataclass
class AnnDirection:
    queries: int
    ann_recall: dict[int, float]  # k -> |ANN top k ∩ exact top k| / k, mean over queries
    exact: dict[str, float]  # metrics of the exact rankings (over the same gallery)
    ann: dict[str, float]  # metrics of the ANN rankings
    latency_ms: dict[str, float]  # ann_p50, ann_p95, exact_p50, exact_p95

    @property
    def loss(self) -> dict[str, float]:
        """What the ANN costs: exact minus ANN, per metric (positive: ANN is worse)."""
        return {k: self.exact[k] - self.ann[k] for k in self.exact}

    def to_json(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            **{f"ann_recall@{k}": round(v, 6) for k, v in self.ann_recall.items()},
            "loss": {k: round(v, 6) for k, v in self.loss.items()},
            "exact": {k: round(v, 6) for k, v in self.exact.items()},
            "ann": {k: round(v, 6) for k, v in self.ann.items()},
            "latency_ms": {k: round(v, 4) for k, v in self.latency_ms.items()},
        }


@dataclass
class AnnRun:
    ef: int
    directions: dict[str, AnnDirection]


@dataclass
class AnnReport:
    m: int
    ef_construction: int
    default_ef: int
    items: int
    files: int
    bytes: int
    runs: list[AnnRun]

    def to_json(self) -> dict[str, Any]:
        return {
            "M": self.m,
            "ef_construction": self.ef_construction,
            "default_ef": self.default_ef,
            "items": self.items,
            "files": self.files,
            "bytes": self.bytes,
            "runs": [
                {"ef": run.ef, **{d: r.to_json() for d, r in run.directions.items()}}
                for run in self.runs
            ],
        }


@dataclass
class EvalReport:
    dataset: Dataset
    ks: list[int]
    space: str
    model: str
    device: str
    index: str | None  # None: a throw-away index
    gallery: int  # files the media-side directions rank
    distractors: int  # of which outside the dataset
    directions: dict[str, DirectionResult]
    ann: AnnReport | None = None
    failed: dict[str, str] = field(default_factory=dict)  # media id -> why it is left out
    templates: list[str] = field(default_factory=list)
    limit: int | None = None
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    index_seconds: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        ds = self.dataset
        dataset: dict[str, Any] = {
            "path": ds.source,
            "format": ds.format,
            "modality": ds.modality,
            "split": ds.split,
            "media": len(ds.media) - len(self.failed),
            "captions": None if ds.is_classes else _kept_captions(ds, self.failed),
            "classes": len(ds.classes) if ds.is_classes else None,
            "missing": len(ds.missing),
            "failed": len(self.failed),
            "limit": self.limit,
            "seed": self.seed,
        }
        if ds.is_classes:
            dataset["templates"] = self.templates
        document: dict[str, Any] = {
            "dataset": dataset,
            "model": {"space": self.space, "id": self.model, "device": self.device},
            "index": {
                "path": self.index,
                "temporary": self.index is None,
                "gallery": self.gallery,
                "distractors": self.distractors,
                "seconds": round(self.index_seconds, 3),
            },
            "k": self.ks,
        }
        for name, result in self.directions.items():
            document[name] = result.to_json()
        if self.ann is not None:
            document["ann"] = self.ann.to_json()
        document["notes"] = self.notes
        document["seconds"] = round(self.seconds, 3)
        return document


# -- adapters onto the rest of mmfind (kept small: the index/search APIs are still moving) -----


def _spaces() -> tuple[str, str]:
    from mmfind.spaces import CLAP, CLIP

    return CLIP, CLAP


def _require_audio() -> None:
    """Audio datasets need the audio space (CLAP encoder and audio decoding)."""
    try:
        for module in ("mmfind.media.audio", "mmfind.encoders.clap"):
            importlib.import_module(module)
    except ImportError as exc:
        raise InputError(
            f"audio datasets need mmfind's audio support, which is not available here ({exc})"
        ) from exc


def _index(
    index_dir: Path,
    paths: list[str],
    options: EvalOptions,
    progress: Progress,
    encoders: dict[str, Any] | None,
) -> None:
    from mmfind.indexer import IndexOptions, run_index

    index_options = IndexOptions(
        paths=paths,
        model=options.model,
        audio_model=options.audio_model,
        device=options.device,
        batch_size=options.batch_size,
    )
    if options.workers is not None:
        index_options.workers = options.workers
    run_index(index_dir, index_options, progress=progress, encoders=encoders)


def _encoder(catalog: Any, space: str, device: str, encoders: dict[str, Any] | None) -> Any:
    """The encoder of the model that built the space (as run_query loads it)."""
    from mmfind.models import Models

    models = Models(catalog, None, device=device, preloaded=encoders)
    models.ids = {s.name: s.model for s in catalog.spaces()}
    return models.encoder(space, declare=False)


def _canonical(space: str, name: str) -> str:
    CLIP, _ = _spaces()
    if space == CLIP:
        from mmfind.encoders.presets import canonical_model

        return canonical_model(name)
    from mmfind.encoders.audio_presets import canonical_audio_model

    return canonical_audio_model(name)


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
        parts.append(_unit_rows(vectors))
        if on_batch is not None:
            on_batch(min(start + batch, len(texts)))
    if not parts:
        return np.zeros((0, int(encoder.dim)), dtype=np.float32)
    return np.concatenate(parts)


# -- galleries and exact ranking ---------------------------------------------------------------


@dataclass
class _Gallery:
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
            return _unit_rows(self.rows.copy())
        sums = np.add.reduceat(self.rows, self.starts, axis=0)
        return _unit_rows(sums)


def _top(
    queries: np.ndarray,
    gallery: _Gallery,
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


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: np.ndarray = (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return unit


@dataclass
class _SpaceItems:
    """Live items of one space: ids, their files and vectors; the files' paths."""

    item_ids: np.ndarray
    file_ids: np.ndarray
    vectors: np.ndarray
    paths: dict[int, str]

    @classmethod
    def load(cls, catalog: Any, space: str, keep: set[int] | None, dim: int) -> _SpaceItems:
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

    def gallery(self, order: Sequence[int], keys: Sequence[str]) -> _Gallery:
        """The files `order` (file ids, each with items here) as a gallery with these keys."""
        position = {fid: p for p, fid in enumerate(order)}
        where = np.array([position.get(int(f), -1) for f in self.file_ids], dtype=np.int64)
        chosen = np.flatnonzero(where >= 0)
        sort = chosen[np.argsort(where[chosen], kind="stable")]
        pos = where[sort]
        starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]]) if len(pos) else pos
        grouped = len(starts) != len(pos)
        return _Gallery(
            keys=list(keys),
            rows=self.vectors[sort],
            starts=starts if grouped else None,
            file_ids=list(order),
            first_items=self.item_ids[sort][starts] if len(pos) else np.zeros(0, np.int64),
        )


# -- the run -----------------------------------------------------------------------------------


def run_eval(
    path: str | os.PathLike[str],
    options: EvalOptions,
    *,
    progress: Progress | None = None,
    per_query: PerQuery | None = None,
    encoders: dict[str, Any] | None = None,
) -> EvalReport:
    """Evaluate retrieval on the dataset at `path` (see the module docstring).

    `encoders` lets a caller (tests) pass already loaded encoders by space."""
    started = time.monotonic()
    report: Progress = progress or (lambda phase, done, total: None)
    try:
        ks = normalize_ks(options.ks)
    except ValueError as exc:
        raise UsageError(f"--k: {exc}") from None
    for ef in options.efs:
        if ef < 1:
            raise UsageError(f"--ef values must be at least 1, not {ef}")
    if options.distractors and options.index is None:
        raise UsageError("--distractors needs --index (a throw-away index holds only the dataset)")
    if options.limit is not None and options.limit < 1:
        raise UsageError("--limit must be at least 1")
    for name in options.directions:
        if name not in DIRECTIONS:
            raise UsageError(f"--direction must be one of {', '.join(DIRECTIONS)}, not {name!r}")

    dataset = load_dataset(
        path, format=options.format, media_root=options.media_root, split=options.split
    )
    if options.limit is not None:
        dataset = dataset.sample(options.limit, options.seed)
    if dataset.modality == "audio":
        _require_audio()
    directions = _plan(dataset, options.directions)
    templates = _templates(dataset, options.templates)

    run = _Evaluation(dataset, options, ks, directions, templates, report, per_query, encoders)
    if options.index is not None:
        index_dir = config.index_dir(options.index)
        result = run.execute(index_dir, temporary=False)
    else:
        with tempfile.TemporaryDirectory(prefix="mmfind-eval-") as tmp:
            index_dir = Path(tmp) / "index"
            t0 = time.monotonic()
            _index(index_dir, sorted({m.path for m in dataset.media}), options, report, encoders)
            run.index_seconds = time.monotonic() - t0
            result = run.execute(index_dir, temporary=True)
    result.seconds = time.monotonic() - started
    return result


def _plan(dataset: Dataset, wanted: Sequence[str]) -> list[str]:
    media = dataset.modality
    if dataset.is_classes:
        available = [f"{media}_to_{media}", f"text_to_{media}", f"{media}_to_text"]
    else:
        available = [f"text_to_{media}", f"{media}_to_text"]
    if not wanted:
        return available
    chosen = [d for d in available if d in wanted]
    if not chosen:
        raise UsageError(
            f"--direction: this dataset allows {', '.join(available)}, not {', '.join(wanted)}"
        )
    return chosen


def _templates(dataset: Dataset, given: Sequence[str]) -> list[str]:
    if not dataset.is_classes:
        if given:
            raise UsageError("--prompt-template applies to class-folder datasets only")
        return []
    templates = list(given) or list(DEFAULT_TEMPLATES[dataset.modality])
    for template in templates:
        if template.count("{}") != 1:
            raise UsageError(
                f"--prompt-template needs exactly one '{{}}' for the class name: {template!r}"
            )
    return templates


def _kept_captions(dataset: Dataset, failed: dict[str, str]) -> int:
    return sum(len(m.captions) for m in dataset.media if m.id not in failed)


class _Evaluation:
    def __init__(
        self,
        dataset: Dataset,
        options: EvalOptions,
        ks: list[int],
        directions: list[str],
        templates: list[str],
        report: Progress,
        per_query: PerQuery | None,
        encoders: dict[str, Any] | None,
    ) -> None:
        self.dataset = dataset
        self.options = options
        self.ks = ks
        self.depth = max(ks)
        self.directions = directions
        self.templates = templates
        self.report = report
        self.per_query = per_query
        self.encoders = encoders
        self.index_seconds = 0.0
        self.notes: list[str] = list(dataset.notes)

    def execute(self, index_dir: Path, *, temporary: bool) -> EvalReport:
        from mmfind.store.catalog import Catalog

        clip, clap = _spaces()
        space = clip if self.dataset.modality == "image" else clap
        catalog = Catalog.open(index_dir, create=False)
        try:
            return self._execute(catalog, index_dir, space, temporary)
        finally:
            catalog.close()

    # -- which media the index holds ---------------------------------------------------------
    def _match(
        self, catalog: Any, index_dir: Path, space: str, temporary: bool
    ) -> tuple[list[Media], list[int], dict[str, str]]:
        """(media present, their file ids, failed media id -> reason)."""
        files = catalog.all_files()
        failures = {f.path: f.reason for f in catalog.failures()}
        resolved: dict[str, Any] | None = None
        present: list[Media] = []
        file_ids: list[int] = []
        failed: dict[str, str] = {}
        absent: list[Media] = []
        for media in self.dataset.media:
            row = files.get(media.path)
            if row is None and not temporary:
                if resolved is None:
                    resolved = {os.path.realpath(p): r for p, r in files.items()}
                row = resolved.get(os.path.realpath(media.path))
            if row is not None:
                present.append(media)
                file_ids.append(row.id)
            elif media.path in failures:
                failed[media.id] = failures[media.path]
            else:
                absent.append(media)
        if absent and not temporary:
            raise InputError(
                f"{len(absent)} of the dataset's {len(self.dataset.media)} media files are not "
                f"in the index at {index_dir} (first: {absent[0].path}): index them with "
                f"`mmfind index --index {index_dir} FOLDER`, or leave out --index to evaluate "
                "in a throw-away index"
            )
        for media in absent:  # a throw-away index saw every file: this should not happen
            failed[media.id] = "not indexed"
        return present, file_ids, failed

    def _check_model(self, space: str, model: str) -> None:
        clip, _ = _spaces()
        asked = self.options.model if space == clip else self.options.audio_model
        if asked and _canonical(space, asked) != model:
            flag = "--model" if space == clip else "--audio-model"
            raise ModelMismatchError(
                f"the index was built with {model}; {flag} asks for {_canonical(space, asked)}: "
                f"leave out {flag} to evaluate the index's model, or leave out --index to "
                "evaluate another model in a throw-away index"
            )

    def _execute(self, catalog: Any, index_dir: Path, space: str, temporary: bool) -> EvalReport:
        info = catalog.space(space)
        if info is None or not catalog.items_per_space().get(space):
            if temporary:
                reasons = Counter(f.reason.split(":", 1)[0] for f in catalog.failures())
                why = ", ".join(f"{n}× {r}" for r, n in reasons.most_common(3)) or "no reason"
                raise InputError(f"none of the dataset's media could be indexed ({why})")
            what = "images" if self.dataset.modality == "image" else "sound"
            raise InputError(f"the index at {index_dir} holds no {what}")
        if not temporary:
            self._check_model(space, info.model)
        present, file_ids, failed = self._match(catalog, index_dir, space, temporary)
        keep = None if (self.options.ann or self.options.distractors) else set(file_ids)
        items = _SpaceItems.load(catalog, space, keep, info.dim)
        with_items = set(np.unique(items.file_ids).tolist())
        kept_media: list[Media] = []
        kept_ids: list[int] = []
        for media, fid in zip(present, file_ids, strict=True):
            if fid in with_items:
                kept_media.append(media)
                kept_ids.append(fid)
            else:
                failed[media.id] = f"no {space} vectors in the index"
        if failed:
            reasons = Counter(r.split(":", 1)[0] for r in failed.values())
            summary = ", ".join(f"{n}× {r}" for r, n in reasons.most_common(3))
            self.notes.append(
                f"{len(failed)} media file(s) could not be indexed and are left out with their "
                f"captions ({summary})"
            )
        if not kept_media:
            raise InputError("none of the dataset's media is in the index")

        keys = [m.id for m in kept_media]
        gallery_ids = list(kept_ids)
        gallery_keys = list(keys)
        if self.options.distractors:
            dataset_files = set(kept_ids)
            others = sorted(f for f in with_items if f not in dataset_files)
            gallery_ids += others
            gallery_keys += [_display(items.paths[f]) for f in others]
        gallery = items.gallery(gallery_ids, gallery_keys)
        encoder = _encoder(catalog, space, self.options.device, self.encoders)
        media_vectors = gallery.position_vectors()[: len(kept_media)]

        results: dict[str, DirectionResult] = {}
        media_paths = [items.paths[fid] for fid in kept_ids]
        plans = self._plans(kept_media, media_paths, media_vectors, gallery, encoder)
        total = sum(len(p.vectors) for p in plans)
        done = 0
        self.report("exact", 0, total)
        for plan in plans:
            tops = _top(
                plan.vectors,
                plan.gallery,
                self.depth,
                plan.exclude,
                on_block=self._progress_from("exact", done, total),
            )
            done += len(plan.vectors)
            rankings = [[plan.gallery.keys[p] for p in top] for top in tops]
            results[plan.name] = self._score(plan, rankings, "exact", None)

        ann = None
        if self.options.ann:
            ann = self._ann(catalog, index_dir, info, items, plans, kept_media, kept_ids)

        model = info.model
        return EvalReport(
            dataset=self.dataset,
            ks=self.ks,
            space=space,
            model=model,
            device=str(getattr(encoder, "device", self.options.device)),
            index=None if temporary else str(index_dir),
            gallery=len(gallery),
            distractors=len(gallery) - len(kept_media),
            directions=results,
            ann=ann,
            failed=failed,
            templates=self.templates,
            limit=self.options.limit,
            seed=self.options.seed,
            notes=self.notes,
            index_seconds=self.index_seconds,
        )

    # -- the queries of each direction -------------------------------------------------------
    def _plans(
        self,
        media: list[Media],
        media_paths: list[str],
        media_vectors: np.ndarray,
        gallery: _Gallery,
        encoder: Any,
    ) -> list[_Plan]:
        modality = self.dataset.modality
        plans: list[_Plan] = []
        if self.dataset.is_classes:
            classes = self.dataset.classes
            members: dict[str, list[str]] = {c: [] for c in classes}
            for m in media:
                members[str(m.label)].append(m.id)
            prompts = [_prompt(t, c) for c in classes for t in self.templates]
            text = self._texts(encoder, prompts) if self._wants_text() else None
            if f"{modality}_to_{modality}" in self.directions:
                plans.append(
                    _Plan(
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
                per_class = text.reshape(len(classes), len(self.templates), -1).mean(axis=1)
                class_vectors = _unit_rows(per_class)
                if f"text_to_{modality}" in self.directions:
                    plans.append(
                        _Plan(
                            f"text_to_{modality}",
                            vectors=class_vectors,
                            gallery=gallery,
                            queries=list(classes),
                            query_ids=None,
                            relevant=[frozenset(members[c]) for c in classes],
                        )
                    )
                if f"{modality}_to_text" in self.directions:
                    plans.append(
                        _Plan(
                            f"{modality}_to_text",
                            vectors=media_vectors,
                            gallery=_Gallery(list(classes), class_vectors),
                            queries=[m.id for m in media],
                            query_ids=None,
                            relevant=[frozenset([str(m.label)]) for m in media],
                        )
                    )
            return plans

        captions = [c for m in media for c in m.captions]
        caption_ids = [cid for m in media for cid in m.caption_ids()]
        owners = [m.id for m in media for _ in m.captions]
        text = self._texts(encoder, captions)
        if f"text_to_{modality}" in self.directions:
            plans.append(
                _Plan(
                    f"text_to_{modality}",
                    vectors=text,
                    gallery=gallery,
                    queries=captions,
                    query_ids=caption_ids,
                    relevant=[frozenset([owner]) for owner in owners],
                )
            )
        if f"{modality}_to_text" in self.directions:
            plans.append(
                _Plan(
                    f"{modality}_to_text",
                    vectors=media_vectors,
                    gallery=_Gallery(caption_ids, text),
                    queries=[m.id for m in media],
                    query_ids=None,
                    relevant=[frozenset(m.caption_ids()) for m in media],
                )
            )
        return plans

    def _progress_from(self, phase: str, base: int, total: int) -> Callable[[int], None]:
        def report(n: int) -> None:
            self.report(phase, base + n, total)

        return report

    def _wants_text(self) -> bool:
        return any(d.startswith("text_") or d.endswith("_text") for d in self.directions)

    def _texts(self, encoder: Any, texts: list[str]) -> np.ndarray:
        self.report("encode", 0, len(texts))
        return text_query_vectors(
            encoder,
            texts,
            on_batch=lambda n: self.report("encode", n, len(texts)),
        )

    def _score(
        self, plan: _Plan, rankings: list[list[str]], search: str | None, ef: int | None
    ) -> DirectionResult:
        """Aggregate metrics of a direction's rankings; per-query records are written under
        `search` ("exact", "ann", "exact_index"), none when it is None."""
        if self.per_query is not None and search is not None:
            for i, ranked in enumerate(rankings):
                relevant = plan.relevant[i]
                record: dict[str, Any] = {"direction": plan.name, "search": search}
                if ef is not None:
                    record["ef"] = ef
                record["query"] = plan.queries[i]
                if plan.query_ids is not None:
                    record["query_id"] = plan.query_ids[i]
                record["ranked"] = ranked
                record["relevant"] = sorted(relevant)
                record["first_relevant_rank"] = first_relevant_rank(ranked, relevant)
                self.per_query(record)
        result = aggregate(zip(rankings, plan.relevant, strict=True), self.ks)
        if search != "exact":
            pass  # the ANN section scores the same queries again: noted once, below
        elif result.queries == 0:
            self.notes.append(f"{plan.name}: no query has a relevant item; nothing to score")
        elif result.skipped:
            self.notes.append(
                f"{plan.name}: {result.skipped} query(ies) without any relevant item were not "
                "scored"
            )
        return DirectionResult(
            plan.name, result.values, result.queries, result.skipped, len(plan.gallery)
        )

    # -- ANN against exact -------------------------------------------------------------------
    def _ann(
        self,
        catalog: Any,
        index_dir: Path,
        info: Any,
        items: _SpaceItems,
        plans: list[_Plan],
        media: list[Media],
        media_file_ids: list[int],
    ) -> AnnReport:
        from mmfind.search import Searcher
        from mmfind.store import ann as ann_module
        from mmfind.store.ann import AnnStore

        key_of = {fid: m.id for fid, m in zip(media_file_ids, media, strict=True)}
        whole_ids = sorted(set(items.file_ids.tolist()))
        whole = items.gallery(
            whole_ids, [key_of.get(f) or _display(items.paths[f]) for f in whole_ids]
        )
        own_position = {m.id: p for p, m in enumerate(media)}
        whole_position = {fid: p for p, fid in enumerate(whole_ids)}
        scope_is_gallery = len(whole_ids) == len(media) or self.options.distractors
        if not scope_is_gallery:
            self.notes.append(
                f"ANN: searched the whole index ({len(whole_ids)} files), as `mmfind query` does; "
                "files outside the dataset count as not relevant"
            )
        searcher = Searcher(catalog, index_dir, info)
        searcher.ann()  # load (or rebuild) the ANN file before timing anything
        self.notes.extend(searcher.notes)
        ann_plans = [p for p in plans if p.gallery.file_ids]
        efs = list(self.options.efs) or [ann_module.EF_SEARCH]
        total = (len(efs) + 1) * sum(len(p.vectors) for p in ann_plans)
        tick = _Ticker(self.report, "ann", total)
        references: dict[str, tuple[list[list[str]], list[float], DirectionResult]] = {}
        for plan in ann_plans:
            rankings: list[list[str]] = []
            times: list[float] = []
            for i, vector in enumerate(plan.vectors):
                skip = None
                if plan.exclude is not None:
                    fid = media_file_ids[own_position[plan.queries[i]]]
                    skip = np.array([whole_position[fid]], dtype=np.int64)
                t0 = time.perf_counter()
                top = _top(vector[np.newaxis], whole, self.depth, skip)[0]
                assert whole.first_items is not None
                catalog.hits_for_items(whole.first_items[top].tolist())  # as Searcher joins
                times.append(time.perf_counter() - t0)
                rankings.append([whole.keys[p] for p in top])
                tick()
            if scope_is_gallery:
                exact = self._score(plan, rankings, None, None)
            else:
                exact = self._score(plan, rankings, "exact_index", None)
            references[plan.name] = (rankings, times, exact)
        runs: list[AnnRun] = []
        for ef in efs:
            per_direction: dict[str, AnnDirection] = {}
            for plan in ann_plans:
                exact_rankings, exact_times, exact = references[plan.name]
                approx_rankings: list[list[str]] = []
                ann_times: list[float] = []
                searcher.ef = ef
                for i, vector in enumerate(plan.vectors):
                    query = _ann_query(self.depth)
                    own = {plan.paths[i]} if plan.paths is not None else set()
                    t0 = time.perf_counter()
                    scored = searcher.search(vector, query, exclude=own)
                    ann_times.append(time.perf_counter() - t0)
                    approx_rankings.append(
                        [key_of.get(hit.file_id) or _display(hit.path) for _, hit in scored]
                    )
                    tick()
                approx = self._score(plan, approx_rankings, "ann", ef)
                pairs = list(zip(approx_rankings, exact_rankings, strict=True))
                per_direction[plan.name] = AnnDirection(
                    queries=len(plan.vectors),
                    ann_recall={
                        k: float(np.mean([ann_recall_at_k(a, e, k) for a, e in pairs]))
                        for k in self.ks
                    },
                    exact=exact.metrics,
                    ann=approx.metrics,
                    latency_ms={
                        "ann_p50": 1000 * percentile(ann_times, 50),
                        "ann_p95": 1000 * percentile(ann_times, 95),
                        "exact_p50": 1000 * percentile(exact_times, 50),
                        "exact_p95": 1000 * percentile(exact_times, 95),
                    },
                )
            runs.append(AnnRun(ef, per_direction))
        return AnnReport(
            m=ann_module.M,
            ef_construction=ann_module.EF_CONSTRUCTION,
            default_ef=ann_module.EF_SEARCH,
            items=len(items.item_ids),
            files=len(whole_ids),
            bytes=AnnStore(catalog, index_dir).size_bytes(),
            runs=runs,
        )


def _ann_query(depth: int) -> Any:
    """The query `mmfind query -n DEPTH` builds (no filters: the ANN path)."""
    from mmfind.search import Query

    return Query(limit=depth)


class _Ticker:
    """Progress in steps of one, reported every `every` steps and at the end."""

    def __init__(self, report: Progress, phase: str, total: int, every: int = 64) -> None:
        self.report = report
        self.phase = phase
        self.total = total
        self.every = every
        self.done = 0
        report(phase, 0, total)

    def __call__(self) -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            self.report(self.phase, self.done, self.total)


@dataclass
class _Plan:
    """The queries of one direction and what they rank."""

    name: str
    vectors: np.ndarray
    gallery: _Gallery
    queries: list[str]  # what each query is: its text, or the id of its media file / class
    query_ids: list[str] | None  # caption ids of text queries
    relevant: list[frozenset[str]]
    exclude: np.ndarray | None = None  # the gallery position of the query itself (media→media)
    paths: list[str] | None = None  # the query's own file (left out of its ANN results)


def _display(path: str) -> str:
    from mmfind.store.catalog import display_path

    return display_path(path)


def _prompt(template: str, class_name: str) -> str:
    """A zero-shot prompt: the class folder's name (underscores as spaces) in place of '{}'."""
    return template.replace("{}", class_name.replace("_", " "))


__all__ = [
    "DIRECTIONS",
    "AnnDirection",
    "AnnReport",
    "AnnRun",
    "DirectionResult",
    "EvalOptions",
    "EvalReport",
    "run_eval",
    "text_query_vectors",
]
