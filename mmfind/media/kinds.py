"""Which files mmfind indexes, by extension."""

from __future__ import annotations

import os

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
        ".heic", ".heif", ".avif",
        # RAW formats (decoded through their embedded preview)
        ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2",
        ".orf", ".rw2", ".raf", ".pef", ".srw", ".x3f", ".3fr", ".erf", ".kdc",
        ".mrw", ".raw", ".rwl", ".iiq",
    }
)  # fmt: skip

RAW_EXTENSIONS = frozenset(
    {
        ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2",
        ".orf", ".rw2", ".raf", ".pef", ".srw", ".x3f", ".3fr", ".erf", ".kdc",
        ".mrw", ".raw", ".rwl", ".iiq",
    }
)  # fmt: skip

KINDS = ("image",)


def kind_of(path: str | bytes) -> str | None:
    """The kind of media a path holds, judged by its extension; None when mmfind skips it."""
    name = os.fsdecode(path)
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None
