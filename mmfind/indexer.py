"""One index run: scan, diff against the catalog, decode, encode, store, refresh the ANN files.

Progress flows out through a callback; errors flow out as typed exceptions; per-file problems
become recorded failures and never stop the run.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmfind import text_towers
from mmfind.config import (
    DEFAULT_FRAME_INTERVAL_S,
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_PIXELS,
    default_workers,
)
from mmfind.decode import (
    DecodeConfig,
    Decoded,
    DecodePool,
    DecodeResult,
    DecodeTask,
    Failed,
    Known,
    Payload,
)
from mmfind.errors import ModelError, UsageError
from mmfind.gpu_decode import (
    BYTES_IN_FLIGHT,
    BYTES_PER_BATCH,
    GPU_DECODE_MODES,
    JpegStage,
    create_jpeg_decoder,
    jpeg_bytes,
)
from mmfind.models import Models
from mmfind.scan import ScanProblem, is_within, scan
from mmfind.spaces import CLAP, CLIP, SPACES
from mmfind.store.ann import AnnStore
from mmfind.store.catalog import Catalog, FileRow, display_path
from mmfind.store.guard import catalog_errors
from mmfind.store.lock import writer_lock
from mmfind.text_towers import TowerStatus

Progress = Callable[[str, int, "int | None"], None]
"""progress(phase, done, total): phases are scan, model, index, finish."""

SUMMARY_KEYS = ("scanned", "new", "updated", "moved", "removed", "unchanged", "failed")
RETRY_MTIME = -1
_ENCODE_METHOD = {
    "pixels": "encode_images",
    "audio": "encode_audio",
    "text": "encode_texts",
    "tensor": "encode_image_tensor",  # JPEGs decoded by the batched decoder (mmfind.gpu_decode)
}  # a file row or failure with this mtime is read again by the next run


@dataclass
class IndexOptions:
    paths: Sequence[str] = ()
    model: str | None = None
    audio_model: str | None = None
    device: str = "auto"
    batch_size: int = 32
    workers: int = field(default_factory=default_workers)
    excludes: Sequence[str] = ()
    follow_symlinks: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    frame_interval_s: float = DEFAULT_FRAME_INTERVAL_S
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    reembed: bool = False
    retry_failed: bool = False
    wait_s: float = 0.0
    gpu_decode: str = "auto"  # "auto" | "on" | "off": see mmfind.gpu_decode
    text_tower: bool = True  # export the light text tower (mmfind.text_towers) when missing


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
    notes: list[str] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)
    roots: list[str] = field(default_factory=list)
    text_towers: dict[str, TowerStatus] = field(default_factory=dict)  # space -> what was done
    seconds: float = 0.0

    @property
    def model(self) -> str:
        return self.models.get(CLIP, "")

    def counts(self) -> dict[str, int]:
        return {key: int(getattr(self, key)) for key in SUMMARY_KEYS}


@catalog_errors
def run_index(
    index_dir: Path,
    options: IndexOptions,
    *,
    progress: Progress | None = None,
    encoders: dict[str, Any] | None = None,
) -> IndexSummary:
    """Index `options.paths` (or every known root) into the index at `index_dir`.

    `encoders` lets a caller (tests, benchmarks) pass already loaded encoders by space."""
    started = time.monotonic()
    report = progress or (lambda phase, done, total: None)
    missing = [p for p in options.paths if not os.path.exists(os.path.expanduser(p))]
    if missing:  # before anything is created: a typo must not leave an empty index behind
        raise UsageError(f"no such file or directory: {missing[0]}")
    if options.gpu_decode not in GPU_DECODE_MODES:
        raise UsageError(f"bad --gpu-decode {options.gpu_decode!r}: want auto, on or off")
    with writer_lock(index_dir, wait_s=options.wait_s):
        catalog = Catalog.open(index_dir, create=True)
        try:
            summary = _Run(catalog, index_dir, options, report, encoders or {}).execute()
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
        encoders: dict[str, Any],
    ) -> None:
        self.catalog = catalog
        self.index_dir = index_dir
        self.options = options
        self.report = report
        self.ann = AnnStore(catalog, index_dir)
        self.models = Models(
            catalog,
            self.ann,
            image_model=options.model,
            audio_model=options.audio_model,
            device=options.device,
            reembed=options.reembed,
            preloaded=encoders,
            on_load=lambda: report("model", 0, None),
        )
        self.summary = IndexSummary()
        self.rows: dict[str, FileRow] = {}
        self.gone_by_hash: dict[bytes, list[FileRow]] = {}
        self.unavailable: dict[str, str] = {}  # space -> why its model could not be loaded
        self.skipped_sound = 0
        self.stage: JpegStage | None = None  # JPEGs decoded on the encoder's device
        self.fallback: list[DecodeTask] = []  # JPEGs that stage refused: the PIL way
        self.done = 0
        self.total = 0

    # -- the run -----------------------------------------------------------------------------
    def execute(self) -> IndexSummary:
        catalog = self.catalog
        self.models.resolve()
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

        under_roots = catalog.all_files()
        self.rows = {p: r for p, r in under_roots.items() if any(is_within(p, x) for x in roots)}
        failures = {
            f.path: f for f in catalog.failures() if any(is_within(f.path, x) for x in roots)
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

        for row in self.rows.values():
            if not kept(row.path):
                self.gone_by_hash.setdefault(row.hash, []).append(row)

        if tasks:
            self._process(tasks)

        leftover = [row.id for rows in self.gone_by_hash.values() for row in rows]
        vanished_failures = [p for p in failures if not kept(p)]
        with catalog.atomic():
            catalog.delete_files(leftover)
            catalog.clear_failures(vanished_failures)
        self.summary.removed = len(leftover)
        self._note_unavailable_models()

        self.report("finish", 0, None)
        for space in catalog.spaces():
            if not self.ann.is_current(space.name, space.dim, space.model):
                self.ann.sync(space.name, space.dim, space.model)
        declared = {s.name: s.model for s in catalog.spaces()}
        self.summary.models = {name: declared[name] for name in SPACES if name in declared}
        self._text_towers(declared)
        with catalog.atomic():
            catalog.mark_roots_indexed(roots, time.time())
            catalog.finish_run(run_id, json.dumps(self.summary.counts()))
        return self.summary

    def _text_towers(self, declared: dict[str, str]) -> None:
        """Export the light text tower of each loaded model whose index lacks it; drop towers of
        models the index no longer holds. A failed export never fails the run."""
        if self.options.text_tower:
            for space in sorted(self.models.used):  # a run with nothing to encode exports nothing
                encoder = self.models.loaded[space]
                if declared.get(space) != encoder.model_id:
                    continue
                status = text_towers.ensure(self.index_dir, encoder)
                if status is None:
                    continue
                self.summary.text_towers[space] = status
                if status.state == text_towers.FAILED:
                    self.summary.notes.append(
                        f"the light text tower of {status.model} could not be written "
                        f"({status.reason}); text queries load the full model instead"
                    )
        text_towers.prune(self.index_dir, declared)

    def _count_failure(self, reason: str) -> None:
        self.summary.failed += 1
        self.summary.failure_reasons[_reason_class(reason)] += 1

    def _roots(self) -> list[str]:
        if self.options.paths:
            roots = sorted({os.path.abspath(os.path.expanduser(p)) for p in self.options.paths})
            with self.catalog.atomic():
                self.catalog.add_roots(roots)
            return roots
        roots = self.catalog.roots()
        if not roots:
            raise UsageError("nothing to index yet: run `mmfind index PATH...` with a folder")
        return roots

    def _note_unavailable_models(self) -> None:
        for space, why in self.unavailable.items():
            what = "audio" if space == CLAP else "image-text"
            self.summary.notes.append(
                f"the {what} model could not be loaded ({why}); {self.skipped_sound} file(s) "
                "were indexed without it and will be completed by the next run"
            )

    # -- decoding and encoding ---------------------------------------------------------------
    def _process(self, tasks: list[DecodeTask]) -> None:
        clip = self.models.encoder(CLIP)  # its input size shapes what the workers produce
        config = DecodeConfig(
            clip.image_spec,
            self.options.max_pixels,
            frame_interval_s=self.options.frame_interval_s,
            max_duration_s=self.options.max_duration_s,
            text_max_tokens=max(16, int(clip.context_length) - 5),  # room for start/end marks
        )
        known = set().union(*(self.catalog.known_hashes(s) for s in SPACES))
        decoder = create_jpeg_decoder(clip, self.options.gpu_decode)
        if decoder is not None:
            self.stage = JpegStage(decoder)
            tasks = [replace(t, jpeg_bytes=True) if t.kind == "image" else t for t in tasks]
        self.done, self.total = 0, len(tasks)
        self.report("index", 0, self.total)
        workers = min(self.options.workers, self.total)
        with DecodePool(
            config,
            known,
            workers=workers,
            in_flight=2 * self.options.batch_size,
            byte_budget=BYTES_IN_FLIGHT if decoder is not None else None,
        ) as pool:
            try:
                self._consume(pool.run(tasks))
                retry, self.fallback = self.fallback, []
                if retry:  # JPEGs the batched decoder refused: decoded the PIL way
                    self._consume(pool.run(retry))
            finally:
                if self.stage is not None:
                    self.stage.close()
        self._note_refused()

    def _consume(self, results: Iterable[DecodeResult]) -> None:
        pending: list[Decoded] = []
        items = size = 0
        for result in results:
            if isinstance(result, Decoded):
                pending.append(result)
                items += sum(len(p) for p in result.payloads)
                size += jpeg_bytes(result)
                if items >= self.options.batch_size or size >= BYTES_PER_BATCH:
                    self._store_batch(pending)
                    pending, items, size = [], 0, 0
            else:
                self._store_other(result)
                self.done += 1
            self.report("index", self.done, self.total)
        if pending:
            self._store_batch(pending)
        self._store_batch(None)
        self.report("index", self.done, self.total)

    def _store_batch(self, batch: list[Decoded] | None) -> None:
        """Encode and store `batch`. With the JPEG stage, `batch` starts its way through it and
        the batch before it is stored; None stores the batch still in the stage."""
        if self.stage is not None:
            batch, refused = self.stage.drain() if batch is None else self.stage.push(batch)
            self.fallback.extend(refused)
        if batch:
            self.done += self._store_decoded(batch)

    def _note_refused(self) -> None:
        if self.stage is not None and self.stage.refused:
            path, reason = self.stage.refused[0]
            self.summary.notes.append(
                f"{len(self.stage.refused)} JPEG(s) were decoded on the CPU instead: the batched "
                f"decoder refused them (first: {display_path(path)}: {reason})"
            )

    def _encode(self, payloads: list[Payload]) -> list[np.ndarray]:
        """Vectors for each payload, encoded in batches per space and modality."""
        out: list[np.ndarray | None] = [None] * len(payloads)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, payload in enumerate(payloads):
            groups.setdefault((payload.space, payload.modality), []).append(i)
        for (space, modality), indexes in groups.items():
            encoder = self.models.encoder(space)
            encode: Callable[[Any], np.ndarray] = getattr(encoder, _ENCODE_METHOD[modality])
            if modality == "text":
                inputs: Any = [t for i in indexes for t in payloads[i].data]
            elif modality == "tensor":
                from mmfind.media.jpeg_batch import concat

                inputs = concat([payloads[i].data for i in indexes])
            else:
                inputs = np.concatenate([payloads[i].data for i in indexes])
            step = self.options.batch_size
            vectors = np.concatenate(
                [encode(inputs[s : s + step]) for s in range(0, len(inputs), step)]
            )
            offset = 0
            for i in indexes:
                n = len(payloads[i])
                out[i] = vectors[offset : offset + n]
                offset += n
        return [v for v in out if v is not None]

    def _usable(self, decoded: Decoded) -> tuple[list[Payload], bool]:
        """The payloads whose space has a model; and whether one had to be left out."""
        usable = []
        dropped = False
        for payload in decoded.payloads:
            if payload.space in self.unavailable:
                dropped = True
                continue
            try:
                self.models.encoder(payload.space)
            except ModelError as exc:
                if payload.space == CLIP:
                    raise  # nothing can be indexed without the image-text model
                self.unavailable[payload.space] = str(exc)
                dropped = True
                continue
            usable.append(payload)
        return usable, dropped

    def _store_decoded(self, batch: list[Decoded]) -> int:
        plans = []
        for decoded in batch:
            payloads, dropped = self._usable(decoded)
            if dropped:
                self.skipped_sound += 1
            plans.append((decoded, payloads, dropped))
        flat = [p for _, payloads, _ in plans for p in payloads]
        vectors = iter(self._encode(flat))
        catalog = self.catalog
        with catalog.atomic():
            for decoded, payloads, dropped in plans:
                task = decoded.task
                if not payloads:  # only a space whose model is unavailable: retry next run
                    reason = f"{payloads_space_name(decoded)} model unavailable"
                    catalog.record_failure(task.path, task.kind, task.size, RETRY_MTIME, reason)
                    self._count_failure(reason)
                    continue
                file_id = self._write_file_row(
                    task,
                    RETRY_MTIME if dropped else task.mtime_ns,
                    decoded.digest,
                    (decoded.width, decoded.height, decoded.duration),
                )
                for payload in payloads:
                    catalog.insert_items(file_id, payload.space, next(vectors), payload.spans)
                catalog.clear_failures([task.path])
                if decoded.warning:  # indexed, but not all of it: keep the reason visible
                    catalog.record_failure(
                        task.path, task.kind, task.size, task.mtime_ns,
                        f"partly indexed: {decoded.warning}",
                    )  # fmt: skip
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
                mtime = RETRY_MTIME if result.retry else task.mtime_ns  # e.g. permissions
                catalog.record_failure(task.path, task.kind, task.size, mtime, result.reason)
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
                source = catalog.files_with_hash(digest)[0]
                file_id = self._write_file_row(
                    task, task.mtime_ns, digest, catalog.file_dimensions(source.id)
                )
                catalog.copy_items(source.id, file_id)
            catalog.clear_failures([task.path])

    def _write_file_row(
        self,
        task: DecodeTask,
        mtime_ns: int,
        digest: bytes,
        shape: tuple[int | None, int | None, float | None],
    ) -> int:
        """Insert the file's row (new) or replace its content (updated, old items dropped)."""
        width, height, duration = shape
        catalog = self.catalog
        row = self.rows.get(task.path)
        if row is None:
            self.summary.new += 1
            return catalog.insert_file(
                task.path, task.kind, task.size, mtime_ns, digest, width, height, duration
            )
        catalog.delete_items_of_file(row.id)
        catalog.update_file(
            row.id, path=task.path, size=task.size, mtime_ns=mtime_ns, digest=digest,
            width=width, height=height, duration=duration,
        )  # fmt: skip
        self.summary.updated += 1
        return row.id


def payloads_space_name(decoded: Decoded) -> str:
    return "audio" if all(p.space == CLAP for p in decoded.payloads) else "image-text"


def _reason_class(reason: str) -> str:
    """Group failure reasons for summaries: the part before the first colon."""
    return reason.split(":", 1)[0].strip()
