"""`mmfind eval`: retrieval quality on labelled datasets, and what the ANN index costs.

- `datasets`: readers (COCO, Flickr30k, CSV/JSONL, AudioCaps/Clotho, class folders).
- `metrics`: pure metric functions on rankings (formulas in its docstring).
- `runner`: one evaluation through the same index and search code as `mmfind index`/`query`:
  options, report, index and orchestration.
- `galleries`: what a direction ranks (galleries, query plans, text query vectors) and the exact
  top k over it.
- `scoring`: a direction's rankings scored (aggregate metrics, per-query records).
- `ann_check`: `--ann`, the ANN index against exact ranking (recall, loss, latency, per ef).
- `progress`: the progress callback and a step counter for it.
"""

from __future__ import annotations

from mmfind.evaluate.datasets import FORMATS, Dataset, Media, load_dataset
from mmfind.evaluate.runner import DIRECTIONS, EvalOptions, EvalReport, run_eval

__all__ = [
    "DIRECTIONS",
    "FORMATS",
    "Dataset",
    "EvalOptions",
    "EvalReport",
    "Media",
    "load_dataset",
    "run_eval",
]
