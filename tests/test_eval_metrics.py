"""Retrieval metrics: hand-worked cases, and agreement with trec_eval (pytrec_eval) on random
rankings."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from mmfind.evaluate.metrics import (
    aggregate,
    ann_recall_at_k,
    average_precision_at_k,
    f1_at_k,
    first_relevant_rank,
    metric_keys,
    ndcg_at_k,
    normalize_ks,
    percentile,
    precision_at_k,
    query_metrics,
    recall_at_k,
    reciprocal_rank,
    set_recall_at_k,
)

# --- hand-worked cases --------------------------------------------------------------------------

# ranked: a b c d e; relevant: b d x (x never retrieved); rel = 0 1 0 1 0, |R| = 3
RANKED = ["a", "b", "c", "d", "e"]
RELEVANT = {"b", "d", "x"}


def test_first_relevant_rank_and_reciprocal_rank() -> None:
    assert first_relevant_rank(RANKED, RELEVANT) == 2
    assert reciprocal_rank(RANKED, RELEVANT) == 0.5
    assert first_relevant_rank(RANKED, {"z"}) is None
    assert reciprocal_rank(RANKED, {"z"}) == 0.0
    assert first_relevant_rank([], {"a"}) is None


def test_recall_is_the_cross_modal_hit_rate() -> None:
    assert recall_at_k(RANKED, RELEVANT, 1) == 0.0
    assert recall_at_k(RANKED, RELEVANT, 2) == 1.0
    assert recall_at_k(RANKED, RELEVANT, 10) == 1.0  # fewer results than k: still a hit


def test_precision_set_recall_f1() -> None:
    assert precision_at_k(RANKED, RELEVANT, 1) == 0.0
    assert precision_at_k(RANKED, RELEVANT, 2) == 0.5
    assert precision_at_k(RANKED, RELEVANT, 4) == 0.5
    assert precision_at_k(RANKED, RELEVANT, 10) == 0.2  # divided by k, not by len(ranked)
    assert set_recall_at_k(RANKED, RELEVANT, 2) == pytest.approx(1 / 3)
    assert set_recall_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 3)
    # P@4 = 1/2, R@4 = 2/3 -> F1 = 2 * (1/2 * 2/3) / (1/2 + 2/3) = 4/7
    assert f1_at_k(RANKED, RELEVANT, 4) == pytest.approx(4 / 7)
    assert f1_at_k(RANKED, RELEVANT, 1) == 0.0


def test_average_precision_hand_worked() -> None:
    # hits at ranks 2 and 4: precisions 1/2 and 2/4; normaliser min(|R|=3, k)
    assert average_precision_at_k(RANKED, RELEVANT, 5) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert average_precision_at_k(RANKED, RELEVANT, 2) == pytest.approx((1 / 2) / 2)
    assert average_precision_at_k(RANKED, RELEVANT, 1) == 0.0
    # a perfect top k scores 1 even with more relevant items than k
    assert average_precision_at_k(["a", "b"], {"a", "b", "c", "d"}, 2) == 1.0
    assert average_precision_at_k(["a"], {"a"}, 10) == 1.0


def test_ndcg_hand_worked() -> None:
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # three relevant at the top
    assert ndcg_at_k(RANKED, RELEVANT, 5) == pytest.approx(dcg / ideal)
    ideal2 = 1 + 1 / math.log2(3)
    assert ndcg_at_k(RANKED, RELEVANT, 2) == pytest.approx((1 / math.log2(3)) / ideal2)
    assert ndcg_at_k(["q", "a"], {"a"}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["a"], {"a"}, 10) == 1.0


def test_single_relevant_item_metrics_coincide() -> None:
    # one relevant item (text->image on COCO): AP = MRR, P@k = R@k / k
    ranked = ["x", "y", "a", "z"]
    assert average_precision_at_k(ranked, {"a"}, 10) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranked, {"a"}) == pytest.approx(1 / 3)
    assert set_recall_at_k(ranked, {"a"}, 5) == recall_at_k(ranked, {"a"}, 5) == 1.0
    assert precision_at_k(ranked, {"a"}, 5) == pytest.approx(1 / 5)


def test_ann_recall() -> None:
    assert ann_recall_at_k(["a", "b", "c"], ["a", "c", "d"], 3) == pytest.approx(2 / 3)
    assert ann_recall_at_k(["b"], ["a"], 1) == 0.0
    assert ann_recall_at_k(["a", "b"], ["b", "a"], 2) == 1.0  # order within k does not matter
    assert ann_recall_at_k(["a"], ["a"], 10) == 1.0  # fewer than k exist
    assert ann_recall_at_k([], [], 5) == 1.0


def test_aggregate_means_and_skips_queries_without_relevant_items() -> None:
    result = aggregate([(["a", "b"], {"a"}), (["a", "b"], {"b"}), (["a", "b"], set())], ks=[1, 2])
    assert result.queries == 2
    assert result.skipped == 1
    assert list(result.values) == metric_keys([1, 2])
    assert result.values["recall@1"] == 0.5
    assert result.values["recall@2"] == 1.0
    assert result.values["mrr"] == pytest.approx(0.75)
    assert result.values["precision@2"] == 0.5
    empty = aggregate([], ks=[1])
    assert empty.queries == 0
    assert empty.values["recall@1"] == 0.0


def test_metric_keys_and_k_validation() -> None:
    assert metric_keys([1, 5, 10]) == [
        "recall@1", "recall@5", "recall@10", "mrr", "map@10", "ndcg@10",
        "precision@1", "precision@5", "precision@10",
        "set_recall@1", "set_recall@5", "set_recall@10", "f1@1", "f1@5", "f1@10",
    ]  # fmt: skip
    assert normalize_ks([10, 1, 5, 5]) == [1, 5, 10]
    with pytest.raises(ValueError):
        normalize_ks([0, 5])
    with pytest.raises(ValueError):
        normalize_ks([])
    with pytest.raises(ValueError):
        precision_at_k(["a"], {"a"}, 0)


def test_percentile_matches_numpy() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) == 0.0


# --- against trec_eval --------------------------------------------------------------------------


def _random_queries(seed: int, n: int) -> list[tuple[list[str], set[str]]]:
    rng = random.Random(seed)
    queries = []
    for _ in range(n):
        pool = [f"d{i}" for i in range(rng.randint(1, 40))]
        rng.shuffle(pool)
        ranked = pool[: rng.randint(0, min(len(pool), 15))]
        relevant = set(rng.sample(pool, rng.randint(1, min(len(pool), 12))))
        if rng.random() < 0.2:  # relevant items that were never retrieved
            relevant |= {f"missing{j}" for j in range(rng.randint(1, 3))}
        queries.append((ranked, relevant))
    return queries


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_agrees_with_trec_eval_on_random_rankings(seed: int) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    ks = [1, 3, 5, 10]
    depth = max(ks)
    queries = _random_queries(seed, 150)
    qrels = {f"q{i}": {doc: 1 for doc in relevant} for i, (_, relevant) in enumerate(queries)}

    def run_at(cut: int) -> dict[str, dict[str, float]]:
        # strictly decreasing scores: trec_eval keeps our order (it sorts by score)
        return {
            f"q{i}": {doc: float(100 - r) for r, doc in enumerate(ranked[:cut])}
            for i, (ranked, _) in enumerate(queries)
        }

    measures = {"recip_rank"} | {
        f"{m}_{k}" for k in ks for m in ("success", "P", "recall", "map_cut", "ndcg_cut")
    }
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run_at(depth))
    per_k_sets = {
        k: pytrec_eval.RelevanceEvaluator(qrels, {"set_F", "set_P", "set_recall"}).evaluate(
            run_at(k)
        )
        for k in ks
    }
    for i, (ranked, relevant) in enumerate(queries):
        ours = query_metrics(ranked, relevant, ks)
        ref = full.get(f"q{i}", {})
        name = f"q{i} ranked={ranked} relevant={sorted(relevant)}"
        # trec_eval drops queries without retrieved documents: every measure is then 0
        assert ours["mrr"] == pytest.approx(ref.get("recip_rank", 0.0)), name
        for k in ks:
            assert ours[f"recall@{k}"] == pytest.approx(ref.get(f"success_{k}", 0.0)), name
            assert ours[f"precision@{k}"] == pytest.approx(ref.get(f"P_{k}", 0.0)), name
            assert ours[f"set_recall@{k}"] == pytest.approx(ref.get(f"recall_{k}", 0.0)), name
            # F1 of trec_eval's P_k and recall_k (its set_F divides by what was retrieved,
            # which is the same only when at least k results exist)
            p, r = ref.get(f"P_{k}", 0.0), ref.get(f"recall_{k}", 0.0)
            assert ours[f"f1@{k}"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0), name
            if len(ranked) >= k:
                sets = per_k_sets[k].get(f"q{i}", {})
                assert ours[f"f1@{k}"] == pytest.approx(sets.get("set_F", 0.0)), name
            # ours is normalised by min(|R|, k), trec_eval's map_cut by |R|
            ap = average_precision_at_k(ranked, relevant, k)
            scale = len(relevant) / min(len(relevant), k)
            assert ap == pytest.approx(ref.get(f"map_cut_{k}", 0.0) * scale), name
            assert ndcg_at_k(ranked, relevant, k) == pytest.approx(ref.get(f"ndcg_cut_{k}", 0.0)), (
                name
            )
        assert ours[f"map@{depth}"] == pytest.approx(
            ref.get(f"map_cut_{depth}", 0.0) * len(relevant) / min(len(relevant), depth)
        ), name


def test_aggregate_is_the_mean_of_trec_eval_per_query_values() -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    queries = _random_queries(7, 80)
    qrels = {f"q{i}": {doc: 1 for doc in relevant} for i, (_, relevant) in enumerate(queries)}
    run = {
        f"q{i}": {doc: float(100 - r) for r, doc in enumerate(ranked[:5])}
        for i, (ranked, _) in enumerate(queries)
    }
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"success_1", "success_5", "ndcg_cut_5"}).evaluate(
        run
    )
    result = aggregate(queries, ks=[1, 5])
    for ours, theirs in (("recall@1", "success_1"), ("recall@5", "success_5")):
        expected = sum(ref.get(f"q{i}", {}).get(theirs, 0.0) for i in range(80)) / 80
        assert result.values[ours] == pytest.approx(expected)
    expected = sum(ref.get(f"q{i}", {}).get("ndcg_cut_5", 0.0) for i in range(80)) / 80
    assert result.values["ndcg@5"] == pytest.approx(expected)
