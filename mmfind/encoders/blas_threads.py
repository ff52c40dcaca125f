"""Running NumPy's matrix products on one thread for a while, where it pays.

A text query's matrices are small (a few tokens × 512): OpenBLAS's worker threads cost more to
wake and synchronise than they save, and on a busy machine a product waiting for a descheduled
worker was measured at 0.17 s instead of 0.1 ms (the NumPy text tower: 0.7 s instead of 9 ms on
the tiny test model, 2 cores under load). OpenBLAS ≥ 0.3.27 can set the thread count of the
calling thread only (`openblas_set_num_threads_local`), so nothing else in the process is
affected. With another BLAS, or without that function, this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
from collections.abc import Callable, Iterator

import numpy as np


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    setter = _local_setter()
    if setter is None:
        yield
        return
    previous = setter(1)
    try:
        yield
    finally:
        setter(max(1, previous))


@functools.lru_cache(maxsize=1)
def _local_setter() -> Callable[[int], int] | None:
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*.so*"))):
        try:
            function = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_int]
        setter: Callable[[int], int] = function
        return setter
    return None
