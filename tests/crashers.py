"""Worker functions for crash-isolation tests (importable by spawned worker processes)."""

from __future__ import annotations

import os

from mmfind.decode import DecodeResult, DecodeTask, decode_one


def abort_on_crash_name(task: DecodeTask) -> DecodeResult:
    """Like decode_one, but the process dies (SIGABRT) on files named *crash*: a decoder
    that takes the whole process down, as a buggy native codec can."""
    if "crash" in os.path.basename(task.path):
        os.abort()
    return decode_one(task)
