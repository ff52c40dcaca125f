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

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus", ".aif",
        ".aiff", ".wma",
    }
)  # fmt: skip

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".3gp", ".mts",
        ".m2ts",
    }
)  # fmt: skip

TEXT_EXTENSIONS = frozenset({".txt", ".md", ".markdown", ".rst", ".org", ".text"})

KINDS = ("image", "video", "audio", "text")

_BY_EXTENSION = {
    **{ext: "image" for ext in IMAGE_EXTENSIONS},
    **{ext: "audio" for ext in AUDIO_EXTENSIONS},
    **{ext: "video" for ext in VIDEO_EXTENSIONS},
    **{ext: "text" for ext in TEXT_EXTENSIONS},
}


def kind_of(path: str | bytes) -> str | None:
    """The kind of media a path holds, judged by its extension; None when mmfind skips it."""
    name = os.fsdecode(path)
    ext = os.path.splitext(name)[1].lower()
    return _BY_EXTENSION.get(ext)
