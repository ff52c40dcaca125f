"""Backing a loaded ANN graph with huge pages (Linux), for processes that keep it loaded.

A graph search jumps between random nodes of a large block of memory: at 1,000,000 vectors the
projected graph is 1.2 GB, and with 4 KiB pages nearly every node visited misses the TLB. With
2 MiB pages the same queries ran 18-25 % faster (make bench's 1M graph, p50 1.82 -> 1.49 ms,
same recall; bench/HISTORY.md). hnswlib allocates and fills that block inside `load_index`,
so the block is found afterwards as the large anonymous mapping that appeared during the load,
then advised (MADV_HUGEPAGE) and collapsed into huge pages at once (MADV_COLLAPSE, Linux 6.1+,
~2.8 s for 1.2 GB here, so resident processes do it in the background). It is a hint: contents
never change, and where the kernel or the platform says no, nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable
from pathlib import Path

MIN_BYTES = 64 << 20  # smaller blocks gain little and cost a collapse all the same
HUGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25

Region = tuple[int, int]  # [start, end) addresses


def anonymous_regions() -> set[Region]:
    """This process's writable anonymous mappings of at least MIN_BYTES (none off Linux)."""
    if not sys.platform.startswith("linux"):
        return set()
    regions = set()
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    for line in lines:
        fields = line.split()
        if len(fields) != 5 or not fields[1].startswith("rw"):  # 6th field: a path or [name]
            continue
        start, _, end = fields[0].partition("-")
        lo, hi = int(start, 16), int(end, 16)
        if hi - lo >= MIN_BYTES:
            regions.add((lo, hi))
    return regions


def advise(regions: set[Region] | list[Region]) -> int:
    """Ask for huge pages over the 2 MiB-aligned part of each region; returns the bytes the
    kernel accepted to collapse at once (0 where it cannot: another OS, an older kernel,
    transparent huge pages turned off)."""
    madvise = _madvise()
    if madvise is None:
        return 0
    done = 0
    for lo, hi in sorted(regions):
        start, end = -(-lo // HUGE) * HUGE, hi // HUGE * HUGE
        if end <= start:
            continue
        if madvise(start, end - start, MADV_HUGEPAGE) != 0:
            continue
        if madvise(start, end - start, MADV_COLLAPSE) == 0:
            done += end - start
    return done


def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        func = ctypes.CDLL(name, use_errno=True).madvise  # releases the GIL while it runs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    func.restype = ctypes.c_int
    result: Callable[[int, int, int], int] = func
    return result
