"""Walking roots: which files an index run looks at.

The scanner never opens a file. It lists directories with os.scandir, reuses the stat results the
directory entries carry (one stat per indexed file, none for the rest), and reports what it could
not see: every directory or file it failed to read lands in `ScanResult.incomplete`, so the caller
keeps, rather than drops, what the index already holds under it. An unplugged disk or a folder
that lost its permissions must never erase its files from the index.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import re
import stat
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mmfind.media.kinds import kind_of

# Folders that never hold a person's media, matched by name at any depth. Hidden names (".git",
# ".Trash-1000", ".mmfind" ...) are skipped anyway; they are listed so that the rule stays
# explicit.
DEFAULT_EXCLUDED_DIRS = frozenset(
    {
        ".git", ".hg", ".svn", ".mmfind", ".Trash", ".Trashes", ".Spotlight-V100", ".fseventsd",
        ".thumbnails", ".cache", "__pycache__", "node_modules", ".venv",
        "@eaDir", "#recycle", "#snapshot", "@Recycle", ".@__thumb",  # Synology, QNAP
        "$RECYCLE.BIN", "System Volume Information", "lost+found",
    }
)  # fmt: skip

PROGRESS_EVERY = 1000  # entries seen between two on_progress calls

_DirId = tuple[int, int]  # (st_dev, st_ino)


@dataclass(frozen=True)
class FileRecord:
    """One file to index. `path` is absolute, not symlink-resolved, and may hold surrogate escapes
    (a name that is not valid UTF-8): `os.fsencode(path)` gives back the bytes on disk."""

    path: str
    size: int
    mtime_ns: int
    kind: str


@dataclass(frozen=True)
class ScanProblem:
    path: str
    reason: str


@dataclass
class ScanResult:
    files: list[FileRecord] = field(default_factory=list)  # sorted by path
    problems: list[ScanProblem] = field(default_factory=list)
    # Directories (or files) whose contents are unknown this run: keep what the index holds
    # under them, never mark it deleted. Test with is_within().
    incomplete: list[str] = field(default_factory=list)
    skipped: int = 0  # entries seen but not indexed: unknown kind, hidden, excluded, symlink


def is_within(path: str, directory: str) -> bool:
    """True when `path` is `directory` or lies below it, comparing whole path components.

    Purely lexical (no symlink resolution): give both in the same form, e.g. os.path.abspath'd.
    """
    path = os.path.normpath(path)
    directory = os.path.normpath(directory)
    if path == directory:
        return True
    if not directory.endswith(os.sep):
        directory += os.sep
    return path.startswith(directory)


def scan(
    roots: Sequence[str],
    *,
    excludes: Sequence[str] = (),
    follow_symlinks: bool = False,
    skip_dirs: Sequence[str] = (),
    on_progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """List the media files under `roots`.

    - Hidden entries (name starts with ".") and DEFAULT_EXCLUDED_DIRS are skipped; a root given
      explicitly is always walked, even when hidden or a symlink.
    - `excludes` are case-sensitive fnmatch patterns. Without "/" a pattern matches the name of any
      file or folder ("*.tmp", "Screenshots"); with "/" it matches the path relative to its root
      ("2019/raw/*", "/Screenshots" for the top level only). Excluded folders are not entered.
    - `skip_dirs` are never entered, matched by identity (st_dev, st_ino), whatever the spelling.
    - Symlinks are ignored unless `follow_symlinks`. When following, loops terminate, folders are
      reached through real paths before symlinked ones, and a file reached twice is listed once
      (a real path first, else the first symlinked path in sorted order).
    - `on_progress(n)` is called every PROGRESS_EVERY entries and once at the end, with the number
      of files found so far.
    """
    walker = _Walker(_Excludes(excludes), follow_symlinks, _dir_ids(skip_dirs), on_progress)
    for root in roots:
        walker.scan_root(os.path.abspath(os.fsdecode(root)))
    return walker.result()


class _Excludes:
    """User exclude patterns, compiled to two regular expressions (names, relative paths)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        names: list[str] = []
        rels: list[str] = []
        for pattern in patterns:
            anchored = "/" in pattern.rstrip("/")
            stripped = pattern.strip("/")
            cleaned = posixpath.normpath(stripped) if stripped else "."
            if cleaned == ".":
                continue
            (rels if anchored else names).append(fnmatch.translate(cleaned))
        self._names = re.compile("|".join(names)) if names else None
        self._rels = re.compile("|".join(rels)) if rels else None

    def match(self, name: str, rel: str) -> bool:
        return (self._names is not None and self._names.match(name) is not None) or (
            self._rels is not None and self._rels.match(rel) is not None
        )


def _dir_ids(dirs: Sequence[str]) -> set[_DirId]:
    ids: set[_DirId] = set()
    for d in dirs:
        try:
            st = os.stat(d)
        except OSError:
            continue  # nothing there yet: nothing to skip
        if stat.S_ISDIR(st.st_mode):
            ids.add((st.st_dev, st.st_ino))
    return ids


def _reason(what: str, err: OSError) -> str:
    if isinstance(err, PermissionError):
        return "permission denied"
    return f"{what}: {err.strerror or err}"


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


class _Walker:
    def __init__(
        self,
        excludes: _Excludes,
        follow_symlinks: bool,
        skip_ids: set[_DirId],
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.excludes = excludes
        self.follow = follow_symlinks
        self.skip_ids = skip_ids
        self.on_progress = on_progress
        self.files: list[FileRecord] = []  # reached through real paths only
        self.linked: list[tuple[FileRecord, _DirId]] = []  # reached through a symlink
        self.file_ids: set[_DirId] = set()  # identities in self.files (filled when following)
        self.problems: list[ScanProblem] = []
        self.incomplete: list[str] = []
        self.skipped = 0
        self.seen = 0

    def scan_root(self, root: str) -> None:
        self._tick()
        try:
            st = os.stat(root)  # a root given explicitly is followed even if it is a symlink
        except (FileNotFoundError, NotADirectoryError):
            self._problem(root, "root not found")
            return
        except OSError as err:
            self._problem(root, _reason("cannot stat", err))
            return
        if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in self.skip_ids:
            self._walk(root, (st.st_dev, st.st_ino))
            return
        kind = kind_of(root) if stat.S_ISREG(st.st_mode) else None
        if kind is None:
            self.skipped += 1
        else:
            self._add(root, st, kind, via_link=False)

    def _walk(self, root: str, root_id: _DirId) -> None:
        visited = {root_id}
        # Depth-first over real folders; symlinked folders wait in `deferred` until the real tree
        # is done, so a folder is reached through its real path whenever it lies in the root.
        stack: list[tuple[str, str, bool]] = [(root, "", False)]  # (path, rel, via_link)
        deferred: deque[tuple[str, str, _DirId]] = deque()
        while stack or deferred:
            if stack:
                path, rel, via_link = stack.pop()
            else:
                path, rel, target = deferred.popleft()
                if target in visited:
                    continue  # a loop, or a folder already walked
                visited.add(target)
                via_link = True
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=_entry_name)
            except OSError as err:
                self._problem(path, _reason("cannot list directory", err))
                continue
            prefix = rel + "/" if rel else ""
            subdirs: list[tuple[str, str, bool]] = []
            for entry in entries:
                self._tick()
                name = entry.name
                if (
                    name.startswith(".")
                    or name in DEFAULT_EXCLUDED_DIRS
                    or self.excludes.match(name, prefix + name)
                ):
                    self.skipped += 1
                    continue
                try:
                    sub = self._entry(entry, via_link)
                except OSError as err:
                    self._problem(entry.path, _reason("cannot stat", err))
                    continue
                if sub is None:
                    continue
                sub_id, is_link = sub
                if is_link:
                    deferred.append((entry.path, prefix + name, sub_id))
                elif sub_id not in visited:  # a bind mount can loop too
                    visited.add(sub_id)
                    subdirs.append((entry.path, prefix + name, via_link))
            stack.extend(reversed(subdirs))  # pop in sorted order

    def _entry(self, entry: os.DirEntry[str], via_link: bool) -> tuple[_DirId, bool] | None:
        """Record a file entry; for a folder to enter, return its identity and whether it is a
        symlink. Raises OSError when the entry cannot be examined."""
        st: os.stat_result | None = None
        is_link = entry.is_symlink()
        if is_link:
            if not self.follow:
                self.skipped += 1
                return None
            try:
                st = entry.stat()  # the target
            except OSError as err:
                if not isinstance(err, FileNotFoundError) and err.errno != errno.ELOOP:
                    raise
                self.problems.append(ScanProblem(entry.path, "broken symlink"))
                return None
            is_dir = stat.S_ISDIR(st.st_mode)
        else:
            is_dir = entry.is_dir(follow_symlinks=False)  # from d_type: no syscall
        if is_dir:
            st = entry.stat(follow_symlinks=False) if st is None else st
            dir_id = (st.st_dev, st.st_ino)
            if dir_id in self.skip_ids:
                self.skipped += 1
                return None
            return dir_id, is_link
        kind = kind_of(entry.name)  # by extension, before any syscall
        if kind is None:
            self.skipped += 1
            return None
        st = entry.stat(follow_symlinks=False) if st is None else st
        if not stat.S_ISREG(st.st_mode):
            self.skipped += 1
            return None
        self._add(entry.path, st, kind, via_link or is_link)
        return None

    def _add(self, path: str, st: os.stat_result, kind: str, via_link: bool) -> None:
        record = FileRecord(path, st.st_size, st.st_mtime_ns, kind)
        if via_link:
            self.linked.append((record, (st.st_dev, st.st_ino)))
        else:
            self.files.append(record)
            if self.follow:
                self.file_ids.add((st.st_dev, st.st_ino))

    def _problem(self, path: str, reason: str) -> None:
        self.problems.append(ScanProblem(path, reason))
        self.incomplete.append(path)

    def _tick(self) -> None:
        self.seen += 1
        if self.on_progress is not None and self.seen % PROGRESS_EVERY == 0:
            self.on_progress(len(self.files) + len(self.linked))

    def result(self) -> ScanResult:
        files = list(self.files)
        for record, file_id in sorted(self.linked, key=lambda item: item[0].path):
            if file_id not in self.file_ids:
                self.file_ids.add(file_id)
                files.append(record)
        files.sort(key=lambda record: record.path)
        unique = [r for i, r in enumerate(files) if i == 0 or r.path != files[i - 1].path]
        if self.on_progress is not None:
            self.on_progress(len(unique))
        return ScanResult(
            files=unique,
            problems=sorted(self.problems, key=lambda p: p.path),
            incomplete=sorted(set(self.incomplete)),
            skipped=self.skipped,
        )
