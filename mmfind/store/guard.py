"""SQLite errors that escape a command become typed errors with a way out.

A catalog whose header is intact opens fine even when pages in its middle are damaged; the damage
surfaces later, as `sqlite3.DatabaseError: database disk image is malformed`, in whichever
statement first reads a bad page. The core's entry points (`run_index`, `run_query`, `describe`)
are wrapped with `catalog_errors`, so a user sees one line that says what is wrong and what to do,
never an internal error, and the words "database is locked" never reach anyone.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from mmfind.config import CATALOG_NAME
from mmfind.errors import CatalogError, IndexBusyError, MmfindError

P = ParamSpec("P")
R = TypeVar("R")

_BUSY_WORDS = ("locked", "busy")


def damaged_catalog_message(path: Path, detail: str) -> str:
    return (
        f"the catalog {path} is damaged ({detail}): `mmfind doctor` shows what is wrong; "
        "to start over, move it aside and re-run `mmfind index PATH...` to rebuild the index"
    )


def catalog_failure(index_dir: Path, exc: sqlite3.Error) -> MmfindError | None:
    """The error to report for an SQLite error, or None when it is a bug (a constraint or an
    API misuse), which must stay an internal error."""
    path = index_dir / CATALOG_NAME
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError):
        if any(word in text.lower() for word in _BUSY_WORDS):
            return IndexBusyError(
                f"the catalog {path} stayed busy: another process held a write lock on it for "
                "longer than mmfind waits; try again"
            )
        return CatalogError(f"the catalog {path} cannot be used ({text})")
    if type(exc) is sqlite3.DatabaseError:  # SQLITE_CORRUPT, SQLITE_NOTADB
        return CatalogError(damaged_catalog_message(path, text))
    return None


def catalog_errors(
    func: Callable[Concatenate[Path, P], R],
) -> Callable[Concatenate[Path, P], R]:
    """Decorate a function whose first argument is the index directory."""

    @functools.wraps(func)
    def wrapper(index_dir: Path, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(index_dir, *args, **kwargs)
        except sqlite3.Error as exc:
            typed = catalog_failure(Path(index_dir), exc)
            if typed is None:
                raise
            raise typed from exc

    return wrapper
