"""`--ann`: what the ANN index costs, against exact ranking over the same vectors.

Each query of a direction that ranks files is ranked exactly over every file of the index's
space (the reference, timed with the catalog join `Searcher` does), then answered by
`Searcher.search` at each ef (what `mmfind query` runs). Per ef and direction: ANN recall@k
against the exact top k, the metrics of both rankings and their difference (loss), latency
percentiles of both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmfind.evaluate.datasets import Media
from mmfind.evaluate.galleries import Plan, SpaceItems, display_key, exact_top
from mmfind.evaluate.metrics import ann_recall_at_k, percentile
from mmfind.evaluate.progress import Progress, Ticker
from mmfind.evaluate.scoring import DirectionResult, Scorer


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


def compare_ann(
    catalog: Any,
    index_dir: Path,
    info: Any,
    items: SpaceItems,
    plans: list[Plan],
    media: list[Media],
    media_file_ids: list[int],
    *,
    efs: Sequence[int],
    distractors: bool,
    depth: int,
    ks: list[int],
    score: Scorer,
    report: Progress,
    notes: list[str],
) -> AnnReport:
    """ANN against exact for those of `plans` whose gallery is files, at each of `efs` (none:
    mmfind's default ef); `media` are the dataset's files in the index, `media_file_ids` theirs."""
    from mmfind.search import Searcher
    from mmfind.store import ann as ann_module
    from mmfind.store.ann import AnnStore

    key_of = {fid: m.id for fid, m in zip(media_file_ids, media, strict=True)}
    whole_ids = sorted(set(items.file_ids.tolist()))
    whole = items.gallery(
        whole_ids, [key_of.get(f) or display_key(items.paths[f]) for f in whole_ids]
    )
    own_position = {m.id: p for p, m in enumerate(media)}
    whole_position = {fid: p for p, fid in enumerate(whole_ids)}
    scope_is_gallery = len(whole_ids) == len(media) or distractors
    if not scope_is_gallery:
        notes.append(
            f"ANN: searched the whole index ({len(whole_ids)} files), as `mmfind query` does; "
            "files outside the dataset count as not relevant"
        )
    searcher = Searcher(catalog, index_dir, info)
    searcher.ann()  # load (or rebuild) the ANN file before timing anything
    notes.extend(searcher.notes)
    ann_plans = [p for p in plans if p.gallery.file_ids]
    efs = list(efs) or [ann_module.EF_SEARCH]
    total = (len(efs) + 1) * sum(len(p.vectors) for p in ann_plans)
    tick = Ticker(report, "ann", total)
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
            top = exact_top(vector[np.newaxis], whole, depth, skip)[0]
            assert whole.first_items is not None
            catalog.hits_for_items(whole.first_items[top].tolist())  # as Searcher joins
            times.append(time.perf_counter() - t0)
            rankings.append([whole.keys[p] for p in top])
            tick()
        if scope_is_gallery:
            exact = score(plan, rankings, None, None)
        else:
            exact = score(plan, rankings, "exact_index", None)
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
                query = _ann_query(depth)
                own = {plan.paths[i]} if plan.paths is not None else set()
                t0 = time.perf_counter()
                scored = searcher.search(vector, query, exclude=own)
                ann_times.append(time.perf_counter() - t0)
                approx_rankings.append(
                    [key_of.get(hit.file_id) or display_key(hit.path) for _, hit in scored]
                )
                tick()
            approx = score(plan, approx_rankings, "ann", ef)
            pairs = list(zip(approx_rankings, exact_rankings, strict=True))
            per_direction[plan.name] = AnnDirection(
                queries=len(plan.vectors),
                ann_recall={
                    k: float(np.mean([ann_recall_at_k(a, e, k) for a, e in pairs])) for k in ks
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
