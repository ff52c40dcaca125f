"""Where the index lives and the defaults a run starts from (flags > environment > defaults)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "default"
CATALOG_NAME = "catalog.sqlite3"
LOCK_NAME = "writer.lock"
# Limits of what one file costs; here (not in mmfind.media) so the CLI can show them as option
# defaults without importing the decoders.
DEFAULT_MAX_PIXELS: int = 200_000_000  # larger images fail with a reason instead of eating memory
DEFAULT_FRAME_INTERVAL_S = 2.0  # one video frame per this many seconds
DEFAULT_MAX_DURATION_S = 3600.0  # only a file's first hour is indexed (bounded cost per file)


def index_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The index directory: --index, else $MMFIND_HOME, else $XDG_DATA_HOME/mmfind."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    home = os.environ.get("MMFIND_HOME")
    if home:
        return Path(home).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return (Path(xdg) / "mmfind").absolute()


def model_name(explicit: str | None = None) -> str | None:
    """The image-text model asked for: --model, else $MMFIND_MODEL, else None (the index's own)."""
    return explicit or os.environ.get("MMFIND_MODEL") or None


def default_workers() -> int:
    """Decode worker processes: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))
