"""`mmfind eval`: retrieval quality on labelled datasets, and what the ANN index costs.

- `datasets`: readers (COCO, Flickr30k, CSV/JSONL, AudioCaps/Clotho, class folders).
- `metrics`: pure metric functions on rankings (formulas in its docstring).
- `runner`: one evaluation through the same index and search code as `mmfind index`/`query`.
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
