"""Huge pages for large loaded ANN graphs: found where hnswlib put them, advised without
changing a byte, used by resident processes only."""

from __future__ import annotations

import mmap
import sys
import threading
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from mmfind.search import AnnCache
from mmfind.store import huge_pages
from mmfind.store.ann import AnnIndex

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps")


def anon_huge_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@linux_only
def test_a_large_block_is_found_and_advised_without_changing_it() -> None:
    before = huge_pages.anonymous_regions()
    memory = mmap.mmap(-1, 96 << 20, flags=mmap.MAP_PRIVATE)  # like hnswlib's: not advised
    block = np.frombuffer(memory, dtype=np.float64)
    block[:] = np.arange(len(block))
    copy = block[:: 1 << 12].copy()
    found = huge_pages.anonymous_regions() - before
    lo_b, hi_b = block.ctypes.data, block.ctypes.data + block.nbytes
    covered = sum(max(0, min(hi, hi_b) - max(lo, lo_b)) for lo, hi in found)
    assert covered >= block.nbytes - (4 << 20)  # (numpy may split off an unaligned head)
    huge_before = anon_huge_kb()
    backed = huge_pages.advise(found)
    assert np.array_equal(block[:: 1 << 12], copy) and block[-1] == len(block) - 1
    assert backed % huge_pages.HUGE == 0
    if backed:  # the kernel accepted: the process now holds huge pages
        assert anon_huge_kb() > huge_before


def test_nothing_to_advise_is_no_error() -> None:
    assert huge_pages.advise(set()) == 0
    assert huge_pages.advise({(4096, 8192)}) == 0  # smaller than one huge page


def graph_file(tmp_path: Path, n: int = 10_000, dim: int = 1024) -> tuple[Path, np.ndarray]:
    """A ~42 MB hnswlib file: above glibc's largest mmap threshold (32 MiB), so loading it
    always maps a block of its own."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, ef_construction=20, M=8, random_seed=1)
    index.add_items(vectors, np.arange(1, n + 1))
    path = tmp_path / "g.hnsw"
    index.save_index(str(path))
    return path, vectors


@linux_only
def test_a_loaded_large_graph_answers_the_same_on_huge_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, vectors = graph_file(tmp_path)
    monkeypatch.setattr(huge_pages, "MIN_BYTES", 32 << 20)
    ann = AnnIndex.load(path, vectors.shape[1], len(vectors))
    assert ann.memory, "the graph's block was not found"
    assert sum(hi - lo for lo, hi in ann.memory) >= 0.9 * path.stat().st_size
    queries = vectors[:20] * 0.9 + vectors[20:40] * 0.1
    before = [ann.search(q, 10) for q in queries]
    ann.use_huge_pages()
    after = [ann.search(q, 10) for q in queries]
    for (ids0, s0), (ids1, s1) in zip(before, after, strict=True):
        assert np.array_equal(ids0, ids1) and np.array_equal(s0, s1)


def test_a_small_graph_is_left_as_it_is(tmp_path: Path) -> None:
    path, _ = graph_file(tmp_path, n=300, dim=64)
    assert not AnnIndex.load(path, 64, 300).memory


def test_only_a_resident_cache_moves_a_large_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = graph_file(tmp_path, n=300, dim=64)
    ann = AnnIndex.load(path, 64, 300)
    called = threading.Event()
    monkeypatch.setattr(AnnIndex, "use_huge_pages", lambda self: called.set() or 0)
    cache = AnnCache()
    cache.put("clip", ("f", "d"), (ann, 300, 300))
    assert not called.wait(0.2)  # nothing to move
    ann.memory = {(1 << 30, (1 << 30) + (64 << 20))}
    cache.put("clip", ("f", "d2"), (ann, 300, 300))
    assert called.wait(10)
