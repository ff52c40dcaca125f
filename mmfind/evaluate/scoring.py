"""A direction's rankings scored: aggregate metrics, per-query records, notes on what was not
scored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmfind.evaluate.galleries import Plan
from mmfind.evaluate.metrics import aggregate, first_relevant_rank

PerQuery = Callable[[dict[str, Any]], None]
"""Receives one record per ranked query: direction, search ("exact"; "ann" with its ef;
"exact_index" for the ANN section's reference over a larger index), query, query_id (text
queries), ranked (the top max(k) ids), relevant (sorted ids), first_relevant_rank (1-based or
None). The aggregates can be recomputed from these records alone."""


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


class Scorer:
    """Scores rankings at `ks`; writes per-query records to `per_query` (when given) and adds
    notes on unscored queries to `notes`."""

    def __init__(self, ks: list[int], per_query: PerQuery | None, notes: list[str]) -> None:
        self.ks = ks
        self.per_query = per_query
        self.notes = notes

    def __call__(
        self, plan: Plan, rankings: list[list[str]], search: str | None, ef: int | None
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
