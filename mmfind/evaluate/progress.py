"""How an evaluation reports progress: the callback's shape, and a step counter feeding it."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, "int | None"], None]
"""progress(phase, done, total). Phases: the index run's (scan, model, index, finish), then
encode (text queries), exact (ranked queries), ann (queries answered by the ANN index)."""


class Ticker:
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
