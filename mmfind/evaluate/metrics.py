"""Retrieval metrics on rankings: pure functions, no model, no index.

A query's result is `ranked`, the ids it got, best first (the top D, D = the largest k asked
for), and `relevant`, the set of ids that are right answers. Relevance is binary. Every metric
of a query is computed from those two alone, so the per-query JSONL that `mmfind eval
--per-query` writes is enough to recompute every aggregate. Aggregates are the mean over the
queries that have at least one relevant id (a query with none cannot be scored and is counted
apart as skipped). With rel_i = 1 when the i-th ranked id is relevant, |R| = len(relevant):

- ``recall@k`` (the cross-modal retrieval convention used by CLIP, open_clip and
  CLIP_benchmark for COCO and Flickr30k): 1 if any of the top k is relevant, else 0; its mean is
  the fraction of queries with at least one right answer in the top k. trec_eval calls it
  ``success_k``, others "hit rate". It is *not* the set-based recall below.
- ``precision@k`` = (Σ_{i≤k} rel_i) / k  (k even when fewer than k results exist; trec_eval P_k)
- ``set_recall@k`` = (Σ_{i≤k} rel_i) / |R|  (the IR recall; trec_eval recall_k)
- ``f1@k`` = 2·P·R / (P + R) of that query's precision@k and set_recall@k (0 when both are 0),
  averaged over queries (trec_eval's set_F on the top k when at least k results exist)
- ``mrr`` = 1 / (rank of the first relevant id), 0 when none is in the top D: MRR@D
  (trec_eval recip_rank on the top D)
- ``map@k``: AP@k = (1 / min(|R|, k)) · Σ_{i≤k} rel_i · precision@i. Normalised by min(|R|, k),
  so a perfect top k scores 1 even when a query has more than k relevant ids (trec_eval's
  map_cut_k divides by |R| instead; the two agree whenever |R| ≤ k, e.g. for COCO and
  Flickr30k in both directions)
- ``ndcg@k`` = DCG@k / IDCG@k with DCG@k = Σ_{i≤k} rel_i / log2(i + 1) and IDCG@k the DCG of
  min(|R|, k) relevant ids at the top (trec_eval ndcg_cut_k with binary relevance)
- ``ann_recall@k`` (ANN health): |ANN top k ∩ exact top k| / min(k, |exact top k|)

Each is checked in the tests against trec_eval (pytrec_eval) on random rankings and by hand.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def first_relevant_rank(ranked: Sequence[str], relevant: Collection[str]) -> int | None:
    """1-based rank of the first relevant id in `ranked`, None when there is none."""
    for i, item in enumerate(ranked, 1):
        if item in relevant:
            return i
    return None


def _hits(ranked: Sequence[str], relevant: Collection[str], k: int) -> int:
    return sum(1 for item in ranked[:k] if item in relevant)


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Cross-modal recall@k: 1.0 when at least one of the top k is relevant, else 0.0."""
    _check_k(k)
    return 1.0 if _hits(ranked, relevant, k) > 0 else 0.0


def precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Relevant ids in the top k, divided by k."""
    _check_k(k)
    return _hits(ranked, relevant, k) / k


def set_recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Relevant ids in the top k, divided by the number of relevant ids."""
    _check_k(k)
    return _hits(ranked, relevant, k) / len(relevant) if relevant else 0.0


def f1_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Harmonic mean of precision@k and set_recall@k of one query."""
    p = precision_at_k(ranked, relevant, k)
    r = set_recall_at_k(ranked, relevant, k)
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str]) -> float:
    """1 / rank of the first relevant id in `ranked` (the top D), 0.0 when there is none."""
    rank = first_relevant_rank(ranked, relevant)
    return 0.0 if rank is None else 1.0 / rank


def average_precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """AP@k = Σ_{i≤k} rel_i·precision@i / min(|R|, k)."""
    _check_k(k)
    if not relevant:
        return 0.0
    found = 0
    total = 0.0
    for i, item in enumerate(ranked[:k], 1):
        if item in relevant:
            found += 1
            total += found / i
    return total / min(len(relevant), k)


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Binary-relevance nDCG@k: Σ rel_i / log2(i + 1), over the ideal ordering's value."""
    _check_k(k)
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 1) for i, item in enumerate(ranked[:k], 1) if item in relevant)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
    return dcg / ideal


def ann_recall_at_k(approximate: Sequence[str], exact: Sequence[str], k: int) -> float:
    """Share of the exact top k that the approximate top k also holds."""
    _check_k(k)
    truth = set(exact[:k])
    if not truth:
        return 1.0
    return len(truth & set(approximate[:k])) / len(truth)


def metric_keys(ks: Sequence[int]) -> list[str]:
    """The aggregate keys for these k values, in the order reports show them."""
    depth = max(ks)
    keys = [f"recall@{k}" for k in ks]
    keys += ["mrr", f"map@{depth}", f"ndcg@{depth}"]
    keys += [f"precision@{k}" for k in ks]
    keys += [f"set_recall@{k}" for k in ks]
    keys += [f"f1@{k}" for k in ks]
    return keys


def query_metrics(
    ranked: Sequence[str], relevant: Collection[str], ks: Sequence[int]
) -> dict[str, float]:
    """Every metric of one query (see metric_keys); `ranked` should hold the top max(ks)."""
    depth = max(ks)
    values: dict[str, float] = {}
    for k in ks:
        values[f"recall@{k}"] = recall_at_k(ranked, relevant, k)
    values["mrr"] = reciprocal_rank(ranked[:depth], relevant)
    values[f"map@{depth}"] = average_precision_at_k(ranked, relevant, depth)
    values[f"ndcg@{depth}"] = ndcg_at_k(ranked, relevant, depth)
    for k in ks:
        values[f"precision@{k}"] = precision_at_k(ranked, relevant, k)
    for k in ks:
        values[f"set_recall@{k}"] = set_recall_at_k(ranked, relevant, k)
    for k in ks:
        values[f"f1@{k}"] = f1_at_k(ranked, relevant, k)
    return values


@dataclass
class Aggregate:
    """Mean metrics over the scored queries."""

    values: dict[str, float]
    queries: int  # queries scored (with at least one relevant id)
    skipped: int  # queries without any relevant id


def aggregate(
    rankings: Iterable[tuple[Sequence[str], Collection[str]]], ks: Sequence[int]
) -> Aggregate:
    """Mean of query_metrics over (ranked, relevant) pairs; queries without relevant ids are
    skipped (and counted). With no scored query every mean is 0.0."""
    ks = normalize_ks(ks)
    keys = metric_keys(ks)
    sums = dict.fromkeys(keys, 0.0)
    scored = skipped = 0
    for ranked, relevant in rankings:
        if not relevant:
            skipped += 1
            continue
        scored += 1
        for key, value in query_metrics(ranked, relevant, ks).items():
            sums[key] += value
    means = {key: (sums[key] / scored if scored else 0.0) for key in keys}
    return Aggregate(means, scored, skipped)


def normalize_ks(ks: Iterable[int]) -> list[int]:
    """Sorted, unique, positive k values; ValueError otherwise."""
    values = sorted(set(int(k) for k in ks))
    if not values:
        raise ValueError("at least one k is needed")
    for k in values:
        _check_k(k)
    return values


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default); 0.0 for no values."""
    if not values:
        return 0.0
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
