"""Typed errors. The CLI maps each class to an exit code and a one-line message."""

from __future__ import annotations


class MmfindError(Exception):
    """Base class for every error mmfind reports to a user."""

    exit_code = 3


class UsageError(MmfindError):
    """The command line asks for something impossible or contradictory."""

    exit_code = 2


class InputError(MmfindError):
    """An input named by the user (query image, path, dataset) cannot be used."""

    exit_code = 2


class EmptyIndexError(InputError):
    """The index has nothing to search."""


class ModelError(MmfindError):
    """A model cannot be resolved, downloaded or loaded."""

    exit_code = 2


class ModelMismatchError(MmfindError):
    """The index was built with another model than the one asked for."""

    exit_code = 2


class IndexBusyError(MmfindError):
    """Another process holds the index's writer lock."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class CatalogError(MmfindError):
    """The catalog is unreadable, corrupt or from a newer mmfind."""

    exit_code = 3


class MediaError(Exception):
    """One file cannot be decoded. Never fatal to a run: it becomes a recorded failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
