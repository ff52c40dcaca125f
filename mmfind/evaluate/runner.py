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
from mmfind.evaluate.ann_check import AnnDirection, AnnReport, AnnRun, compare_ann
from mmfind.evaluate.datasets import Dataset, Media, load_dataset
from mmfind.evaluate.galleries import (
    SpaceItems,
    display_key,
    exact_top,
    plan_queries,
    text_query_vectors,
)
from mmfind.evaluate.metrics import normalize_ks
from mmfind.evaluate.progress import Progress
from mmfind.evaluate.scoring import DirectionResult, PerQuery, Scorer

DIRECTIONS = (
    "text_to_image", "image_to_text", "image_to_image",
    "text_to_audio", "audio_to_text", "audio_to_audio",
)  # fmt: skip
DEFAULT_TEMPLATES = {"image": ("a photo of a {}.",), "audio": ("this is a sound of {}.",)}


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
        text_tower=False,  # a throw-away index: its queries never run cold
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
        self.encoders = encoders
        self.index_seconds = 0.0
        self.notes: list[str] = list(dataset.notes)
        self.score = Scorer(ks, per_query, self.notes)

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
        items = SpaceItems.load(catalog, space, keep, info.dim)
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
            gallery_keys += [display_key(items.paths[f]) for f in others]
        gallery = items.gallery(gallery_ids, gallery_keys)
        encoder = _encoder(catalog, space, self.options.device, self.encoders)
        media_vectors = gallery.position_vectors()[: len(kept_media)]

        results: dict[str, DirectionResult] = {}
        media_paths = [items.paths[fid] for fid in kept_ids]
        plans = plan_queries(
            self.dataset,
            self.directions,
            self.templates,
            kept_media,
            media_paths,
            media_vectors,
            gallery,
            encoder,
            self.report,
        )
        total = sum(len(p.vectors) for p in plans)
        done = 0
        self.report("exact", 0, total)
        for plan in plans:
            tops = exact_top(
                plan.vectors,
                plan.gallery,
                self.depth,
                plan.exclude,
                on_block=self._progress_from("exact", done, total),
            )
            done += len(plan.vectors)
            rankings = [[plan.gallery.keys[p] for p in top] for top in tops]
            results[plan.name] = self.score(plan, rankings, "exact", None)

        ann = None
        if self.options.ann:
            ann = compare_ann(
                catalog,
                index_dir,
                info,
                items,
                plans,
                kept_media,
                kept_ids,
                efs=self.options.efs,
                distractors=self.options.distractors,
                depth=self.depth,
                ks=self.ks,
                score=self.score,
                report=self.report,
                notes=self.notes,
            )

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

    def _progress_from(self, phase: str, base: int, total: int) -> Callable[[int], None]:
        def report(n: int) -> None:
            self.report(phase, base + n, total)

        return report


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
