"""A description of an index, for `mmfind info` (and later `mmfind doctor`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mmfind import text_towers
from mmfind.spaces import CLIP as CLIP_SPACE
from mmfind.store.ann import AnnStore
from mmfind.store.catalog import Catalog, FailureRow
from mmfind.store.guard import catalog_errors


@dataclass
class IndexInfo:
    index: str
    model: str | None
    dim: int | None
    files: int
    items: int
    kinds: dict[str, int]  # files per kind
    items_by_kind: dict[str, int]
    spaces: dict[str, dict[str, object]]
    failed: int
    roots: list[str]
    size_bytes: int
    catalog_bytes: int
    ann_bytes: int
    last_run: float | None
    schema: list[str]
    text_towers: dict[str, dict[str, object]] = field(default_factory=dict)  # see text_towers
    failure_rows: list[FailureRow] = field(default_factory=list)


@catalog_errors
def describe(index_dir: Path, *, with_failures: bool = False) -> IndexInfo:
    catalog = Catalog.open(index_dir, create=False)
    try:
        spaces = catalog.spaces()
        per_space = catalog.items_per_space()
        clip = next((s for s in spaces if s.name == CLIP_SPACE), None)
        files_by_kind, items_by_kind = catalog.counts_by_kind()
        catalog_bytes = sum(
            os.path.getsize(p)
            # the -shm file is a shared-memory index of the WAL, not data: leave it out
            for p in (catalog.path, Path(f"{catalog.path}-wal"))
            if p.exists()
        )
        ann_bytes = AnnStore(catalog, index_dir).size_bytes()
        last = catalog.last_run()
        return IndexInfo(
            index=str(index_dir),
            model=clip.model if clip else None,
            dim=clip.dim if clip else None,
            files=catalog.file_count(),
            items=catalog.item_count(),
            kinds=files_by_kind,
            items_by_kind=items_by_kind,
            spaces={
                s.name: {"model": s.model, "dim": s.dim, "items": per_space.get(s.name, 0)}
                for s in spaces
            },
            failed=catalog.failure_count(),
            roots=catalog.roots(),
            size_bytes=catalog_bytes + ann_bytes,
            catalog_bytes=catalog_bytes,
            ann_bytes=ann_bytes,
            last_run=(last[1] or last[0]) if last else None,
            schema=catalog.applied_migrations(),
            text_towers=text_towers.describe(index_dir, {s.name: s.model for s in spaces}),
            failure_rows=catalog.failures() if with_failures else [],
        )
    finally:
        catalog.close()
