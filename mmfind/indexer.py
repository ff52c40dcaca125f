"""One index run: scan, diff against the catalog, decode, encode, store, refresh the ANN.

Progress flows out through a callback; errors flow out as typed exceptions; per-file problems
become recorded failures and never stop the run.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmfind.config import DEFAULT_MODEL, default_workers
from mmfind.decode import DecodeConfig, Decoded, DecodePool, DecodeResult, DecodeTask, Failed, Known
from mmfind.encoders.clip import SPACE as CLIP_SPACE
from mmfind.encoders.presets import canonical_model, load_image_encoder
from mmfind.errors import ModelMismatchError, UsageError
from mmfind.media.image import DEFAULT_MAX_PIXELS
from mmfind.scan import ScanProblem, is_within, scan
from mmfind.store.ann import AnnStore
from mmfind.store.catalog import Catalog, FileRow
from mmfind.store.lock import writer_lock

Progress = Callable[[str, int, "int | None"], None]
"""progress(phase, done, total): phases are scan, model, index, finish."""

SUMMARY_KEYS = ("scanned", "new", "updated", "moved", "removed", "unchanged", "failed")


@dataclass
class IndexOptions:
    paths: Sequence[str] = ()
    model: str | None = None
    device: str = "auto"
    batch_size: int = 32
    workers: int = field(default_factory=default_workers)
    excludes: Sequence[str] = ()
    follow_symlinks: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    reembed: bool = False
    retry_failed: bool = False
    wait_s: float = 0.0


@dataclass
class IndexSummary:
    scanned: int = 0
    new: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    failure_reasons: Counter[str] = field(default_factory=Counter)
    problems: list[ScanProblem] = field(default_factory=list)
    model: str = ""
    roots: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return {key: int(getattr(self, key)) for key in SUMMARY_KEYS}


def run_index(
    index_dir: Path,
    options: IndexOptions,
    *,
    progress: Progress | None = None,
    encoder: Any | None = None,
) -> IndexSummary:
    """Index `options.paths` (or every known root) into the index at `index_dir`.

    `encoder` lets a caller (tests, benchmarks) pass an already loaded encoder."""
    started = time.monotonic()
    report = progress or (lambda phase, done, total: None)
    with writer_lock(index_dir, wait_s=options.wait_s):
        catalog = Catalog.open(index_dir, create=True)
        try:
            run = _Run(catalog, index_dir, options, report, encoder)
            summary = run.execute()
        finally:
            catalog.close()
    summary.seconds = time.monotonic() - started
    return summary


class _Run:
    def __init__(
        self,
        catalog: Catalog,
        index_dir: Path,
        options: IndexOptions,
        report: Progress,
        encoder: Any | None,
    ) -> None:
        self.catalog = catalog
        self.index_dir = index_dir
        self.options = options
        self.report = report
        self.encoder = encoder
        self.ann = AnnStore(catalog, index_dir)
        self.summary = IndexSummary()
        self.model_id = ""
        self.rows: dict[str, FileRow] = {}
        self.gone_by_hash: dict[bytes, list[FileRow]] = {}

    # -- the run -----------------------------------------------------------------------------
    def execute(self) -> IndexSummary:
        catalog = self.catalog
        self.model_id = self._resolve_model()
        self.summary.model = self.model_id
        roots = self._roots()
        self.summary.roots = roots
        run_id = catalog.start_run()

        scanned = scan(
            roots,
            excludes=self.options.excludes,
            follow_symlinks=self.options.follow_symlinks,
            skip_dirs=[str(self.index_dir)],
            on_progress=lambda n: self.report("scan", n, None),
        )
        self.summary.problems = list(scanned.problems)
        self.summary.scanned = len(scanned.files)

        all_rows = catalog.all_files()
        self.rows = {p: r for p, r in all_rows.items() if any(is_within(p, r_) for r_ in roots)}
        failures = {
            f.path: f for f in catalog.failures() if any(is_within(f.path, r_) for r_ in roots)
        }
        seen = {rec.path for rec in scanned.files}

        tasks: list[DecodeTask] = []
        for rec in scanned.files:
            row = self.rows.get(rec.path)
            if row is not None and (row.size, row.mtime_ns) == (rec.size, rec.mtime_ns):
                self.summary.unchanged += 1
                continue
            failure = failures.get(rec.path)
            if (
                failure is not None
                and not self.options.retry_failed
                and (failure.size, failure.mtime_ns) == (rec.size, rec.mtime_ns)
            ):
                self._count_failure(failure.reason)
                continue
            tasks.append(DecodeTask(rec.path, rec.kind, rec.size, rec.mtime_ns))

        def kept(path: str) -> bool:
            return path in seen or any(is_within(path, d) for d in scanned.incomplete)

        gone = [row for path, row in self.rows.items() if not kept(path)]
        for row in gone:
            self.gone_by_hash.setdefault(row.hash, []).append(row)

        if tasks:
            self._process(tasks)

        leftover = [row.id for rows in self.gone_by_hash.values() for row in rows]
        vanished_failures = [p for p in failures if not kept(p)]
        with catalog.atomic():
            catalog.delete_files(leftover)
            catalog.clear_failures(vanished_failures)
        self.summary.removed = len(leftover)

        self.report("finish", 0, None)
        space = catalog.space(CLIP_SPACE)
        if space is not None and not self.ann.is_current(space.name, space.dim, space.model):
            self.ann.sync(space.name, space.dim, space.model)
        now = time.time()
        with catalog.atomic():
            catalog.mark_roots_indexed(roots, now)
            catalog.finish_run(run_id, json.dumps(self.summary.counts()))
        return self.summary

    def _count_failure(self, reason: str) -> None:
        self.summary.failed += 1
        self.summary.failure_reasons[_reason_class(reason)] += 1

    # -- model -------------------------------------------------------------------------------
    def _resolve_model(self) -> str:
        space = self.catalog.space(CLIP_SPACE)
        requested = canonical_model(self.options.model) if self.options.model else None
        if space is None:
            return requested or canonical_model(DEFAULT_MODEL)
        if requested is None or requested == space.model:
            return space.model
        if not self.options.reembed:
            raise ModelMismatchError(
                f"this index was built with {space.model}; you asked for {requested}. "
                "Vectors of two models never mix: pass --reembed to re-encode everything with "
                f"{requested}, or use another --index"
            )
        # Load the new model before dropping anything: a failed download must cost nothing.
        self._encoder()
        self.catalog.reset_space(CLIP_SPACE)
        self.ann.drop(CLIP_SPACE)
        return requested

    def _encoder(self) -> Any:
        if self.encoder is None:
            self.report("model", 0, None)
            model_id = self.model_id or canonical_model(self.options.model or DEFAULT_MODEL)
            self.encoder = load_image_encoder(model_id, self.options.device)
        if self.model_id and self.encoder.model_id != self.model_id:
            raise ModelMismatchError(
                f"encoder {self.encoder.model_id} does not match the index model {self.model_id}"
            )
        space = self.catalog.space(CLIP_SPACE)
        if space is None:
            with self.catalog.atomic():
                self.catalog.set_space(CLIP_SPACE, self.encoder.model_id, self.encoder.dim)
        return self.encoder

    def _roots(self) -> list[str]:
        if self.options.paths:
            roots = sorted({os.path.abspath(os.path.expanduser(p)) for p in self.options.paths})
            missing = [r for r in roots if not os.path.exists(r)]
            if missing:
                raise UsageError(f"no such file or directory: {missing[0]}")
            with self.catalog.atomic():
                self.catalog.add_roots(roots)
            return roots
        roots = self.catalog.roots()
        if not roots:
            raise UsageError("nothing to index yet: run `mmfind index PATH...` with a folder")
        return roots

    # -- decoding and encoding ---------------------------------------------------------------
    def _process(self, tasks: list[DecodeTask]) -> None:
        encoder = self._encoder()
        config = DecodeConfig(encoder.image_spec, self.options.max_pixels)
        known = self.catalog.known_hashes(CLIP_SPACE)
        batch: list[Decoded] = []
        done = 0
        total = len(tasks)
        self.report("index", 0, total)
        workers = min(self.options.workers, total)
        with DecodePool(config, known, workers=workers) as pool:
            for result in pool.run(tasks):
                if isinstance(result, Decoded):
                    batch.append(result)
                    if len(batch) >= self.options.batch_size:
                        done += self._store_batch(batch)
                        batch = []
                else:
                    self._store_other(result)
                    done += 1
                self.report("index", done, total)
            if batch:
                done += self._store_batch(batch)
                self.report("index", done, total)

    def _store_batch(self, batch: list[Decoded]) -> int:
        vectors = self._encoder().encode_images(np.stack([d.pixels for d in batch]))
        catalog = self.catalog
        with catalog.atomic():
            for decoded, vector in zip(batch, vectors, strict=True):
                task = decoded.task
                row = self.rows.get(task.path)
                if row is None:
                    file_id = catalog.insert_file(
                        task.path, task.kind, task.size, task.mtime_ns, decoded.digest,
                        decoded.width, decoded.height,
                    )  # fmt: skip
                    self.summary.new += 1
                else:
                    file_id = row.id
                    catalog.delete_items_of_file(file_id)
                    catalog.update_file(
                        file_id, path=task.path, size=task.size, mtime_ns=task.mtime_ns,
                        digest=decoded.digest, width=decoded.width, height=decoded.height,
                    )  # fmt: skip
                    self.summary.updated += 1
                catalog.insert_items(file_id, CLIP_SPACE, vector.reshape(1, -1))
            catalog.clear_failures(d.task.path for d in batch)
        return len(batch)

    def _store_other(self, result: DecodeResult) -> None:
        catalog = self.catalog
        task = result.task
        row = self.rows.get(task.path)
        with catalog.atomic():
            if isinstance(result, Failed):
                if row is not None:  # its old vectors describe content that is gone
                    catalog.delete_files([row.id])
                    self.rows.pop(task.path, None)
                catalog.record_failure(
                    task.path, task.kind, task.size, task.mtime_ns, result.reason
                )
                self._count_failure(result.reason)
                return
            assert isinstance(result, Known)
            digest = result.digest
            if row is not None and row.hash == digest:  # touched, same content
                catalog.update_file(
                    row.id, path=task.path, size=task.size, mtime_ns=task.mtime_ns,
                    digest=digest, keep_dimensions=True,
                )  # fmt: skip
                self.summary.unchanged += 1
            elif self.gone_by_hash.get(digest):
                source = self.gone_by_hash[digest].pop(0)
                if row is not None:
                    catalog.delete_files([row.id])
                catalog.update_file(
                    source.id, path=task.path, size=task.size, mtime_ns=task.mtime_ns,
                    digest=digest, keep_dimensions=True,
                )  # fmt: skip
                self.summary.moved += 1
            else:
                source = catalog.files_with_hash(digest, CLIP_SPACE)[0]
                width, height = catalog.file_dimensions(source.id)
                if row is None:
                    file_id = catalog.insert_file(
                        task.path, task.kind, task.size, task.mtime_ns, digest, width, height
                    )
                    self.summary.new += 1
                else:
                    file_id = row.id
                    catalog.delete_items_of_file(file_id)
                    catalog.update_file(
                        file_id, path=task.path, size=task.size, mtime_ns=task.mtime_ns,
                        digest=digest, width=width, height=height,
                    )  # fmt: skip
                    self.summary.updated += 1
                catalog.copy_items(source.id, file_id)
            catalog.clear_failures([task.path])


def _reason_class(reason: str) -> str:
    """Group failure reasons for summaries: the part before the first colon."""
    return reason.split(":", 1)[0].strip()
