"""The catalog: one SQLite file, the source of truth for files, items, vectors and failures.

WAL mode lets queries read while an index run writes. Every write goes through `atomic()`
(BEGIN IMMEDIATE ... COMMIT), so a killed run leaves the last committed batch and nothing
half-written. Paths are stored as the file system's bytes (BLOB), so names that are not valid
UTF-8 round-trip. Item ids are AUTOINCREMENT (never reused): they are the ANN labels.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfind.config import CATALOG_NAME
from mmfind.errors import CatalogError, EmptyIndexError

# Named, append-only migrations. Never edit a released one: add a new one.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE roots(
            path BLOB PRIMARY KEY,
            added_at REAL NOT NULL,
            last_indexed REAL
        );
        CREATE TABLE spaces(
            name TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE files(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            path BLOB NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            hash BLOB NOT NULL,
            width INTEGER,
            height INTEGER,
            indexed_at REAL NOT NULL
        );
        CREATE INDEX files_hash ON files(hash);
        CREATE TABLE items(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
            space TEXT NOT NULL,
            start_s REAL,
            end_s REAL,
            vector BLOB NOT NULL
        );
        CREATE INDEX items_file ON items(file_id);
        CREATE INDEX items_space ON items(space, id);
        CREATE TABLE tombstones(item_id INTEGER PRIMARY KEY, space TEXT NOT NULL);
        CREATE TRIGGER items_tombstone AFTER DELETE ON items BEGIN
            INSERT OR IGNORE INTO tombstones(item_id, space) VALUES (old.id, old.space);
        END;
        CREATE TABLE failures(
            path BLOB PRIMARY KEY,
            kind TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            reason TEXT NOT NULL,
            failed_at REAL NOT NULL
        );
        CREATE TABLE runs(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at REAL NOT NULL,
            finished_at REAL,
            summary TEXT
        );
        """,
    ),
    (
        "0002_durations_and_lines",
        """
        ALTER TABLE files ADD COLUMN duration REAL;
        ALTER TABLE items ADD COLUMN line_start INTEGER;
        ALTER TABLE items ADD COLUMN line_end INTEGER;
        CREATE INDEX files_kind ON files(kind);
        """,
    ),
    (
        "0003_ann_projections",
        """
        CREATE TABLE ann_projections(
            space TEXT PRIMARY KEY,
            generation INTEGER NOT NULL,
            matrix BLOB NOT NULL
        );
        """,
    ),
]

BUSY_TIMEOUT_MS = 30_000


def encode_path(path: str) -> bytes:
    """A path as the file system's bytes (round-trips non-UTF-8 names)."""
    return os.fsencode(path)


def decode_path(raw: bytes) -> str:
    """Stored bytes back to a str path (surrogateescape: opens the same file)."""
    return os.fsdecode(raw)


def display_path(raw: bytes | str) -> str:
    """A path for humans and JSON: invalid UTF-8 becomes U+FFFD."""
    data = raw if isinstance(raw, bytes) else os.fsencode(raw)
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class FileRow:
    id: int
    path: str
    kind: str
    size: int
    mtime_ns: int
    hash: bytes


@dataclass(frozen=True)
class FailureRow:
    path: str
    kind: str
    size: int
    mtime_ns: int
    reason: str
    failed_at: float


@dataclass(frozen=True)
class SpaceInfo:
    name: str
    model: str
    dim: int


@dataclass(frozen=True)
class ItemHit:
    """One item joined to its live file row."""

    item_id: int
    file_id: int
    path: str
    kind: str
    size: int
    mtime_ns: int
    width: int | None
    height: int | None
    start: float | None
    end: float | None
    space: str = ""
    line_start: int | None = None
    line_end: int | None = None
    duration: float | None = None


@dataclass(frozen=True)
class ItemSpans:
    """Where each of a file's items sits: seconds for time-based media, lines for text."""

    times: Sequence[tuple[float | None, float | None]] | None = None
    lines: Sequence[tuple[int, int]] | None = None


def _vector_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


class Catalog:
    """All access to the SQLite catalog goes through this class."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: Path, *, create: bool) -> Catalog:
        path = index_dir / CATALOG_NAME
        if not path.exists() or (not create and path.stat().st_size == 0):
            if not create:
                raise EmptyIndexError(
                    f"no index at {index_dir}: run `mmfind index PATH` first "
                    "(or point --index / MMFIND_HOME at an existing one)"
                )
            index_dir.mkdir(parents=True, exist_ok=True)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            catalog = cls(conn, path)
            catalog._migrate()
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()  # never leak a refused catalog's connection (and its locks)
            raise CatalogError(
                f"the catalog {path} is unreadable ({exc}); move it aside and re-run "
                "`mmfind index` to rebuild the index"
            ) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return catalog

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        known = {name for name, _ in MIGRATIONS}
        has_table = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='migrations'"
        ).fetchone()
        if has_table is None:
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS migrations("
                "name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
            )
        applied = {row[0] for row in self.conn.execute("SELECT name FROM migrations")}
        if applied == known:
            return  # the common case: read only, no write lock taken
        unknown = applied - known
        if unknown:
            raise CatalogError(
                f"the index at {self.path.parent} was written by a newer mmfind "
                f"(schema {sorted(unknown)[-1]}); upgrade mmfind to use it"
            )
        for name, sql in MIGRATIONS:
            if name in applied:
                continue
            with self.atomic():
                if self.conn.execute("SELECT 1 FROM migrations WHERE name=?", (name,)).fetchone():
                    continue  # another process applied it while this one waited for the lock
                for statement in _statements(sql):
                    self.conn.execute(statement)
                self.conn.execute(
                    "INSERT INTO migrations(name, applied_at) VALUES (?, ?)", (name, time.time())
                )

    def applied_migrations(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM migrations ORDER BY name")]

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One write transaction: BEGIN IMMEDIATE, commit on success, roll back on error."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- meta and spaces ---------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def meta_values(self, *, prefix: str, suffix: str) -> set[str]:
        rows = self.conn.execute(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return {str(value) for key, value in rows if str(key).endswith(suffix)}

    def delete_meta_prefix(self, prefix: str) -> None:
        self.conn.execute("DELETE FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))

    def space(self, name: str) -> SpaceInfo | None:
        row = self.conn.execute(
            "SELECT name, model, dim FROM spaces WHERE name=?", (name,)
        ).fetchone()
        return None if row is None else SpaceInfo(row[0], row[1], int(row[2]))

    def spaces(self) -> list[SpaceInfo]:
        rows = self.conn.execute("SELECT name, model, dim FROM spaces ORDER BY name")
        return [SpaceInfo(r[0], r[1], int(r[2])) for r in rows]

    def set_space(self, name: str, model: str, dim: int) -> None:
        """Declare (or redeclare, after a reset) which model fills an embedding space."""
        self.conn.execute(
            "INSERT INTO spaces(name, model, dim, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET model=excluded.model, dim=excluded.dim",
            (name, model, dim, time.time()),
        )

    def reset_space(self, name: str) -> int:
        """Forget a space and every file that had items in it (they are re-indexed as new)."""
        with self.atomic():
            ids = [
                int(r[0])
                for r in self.conn.execute(
                    "SELECT DISTINCT file_id FROM items WHERE space=?", (name,)
                ).fetchall()
            ]
            self.delete_files(ids)
            self.conn.execute("DELETE FROM spaces WHERE name=?", (name,))
        return len(ids)

    # -- roots -------------------------------------------------------------------------------
    def add_roots(self, paths: Iterable[str]) -> None:
        now = time.time()
        for p in paths:
            self.conn.execute(
                "INSERT OR IGNORE INTO roots(path, added_at) VALUES (?, ?)", (encode_path(p), now)
            )

    def roots(self) -> list[str]:
        return [
            decode_path(r[0]) for r in self.conn.execute("SELECT path FROM roots ORDER BY path")
        ]

    def mark_roots_indexed(self, paths: Iterable[str], when: float) -> None:
        for p in paths:
            self.conn.execute(
                "UPDATE roots SET last_indexed=? WHERE path=?", (when, encode_path(p))
            )

    # -- files -------------------------------------------------------------------------------
    def all_files(self) -> dict[str, FileRow]:
        rows = self.conn.execute("SELECT id, path, kind, size, mtime_ns, hash FROM files")
        result = {}
        for r in rows:
            path = decode_path(r[1])
            result[path] = FileRow(r[0], path, r[2], r[3], r[4], bytes(r[5]))
        return result

    def known_hashes(self, space: str) -> set[bytes]:
        """Content hashes of files whose vectors in `space` can be reused."""
        rows = self.conn.execute(
            "SELECT DISTINCT f.hash FROM files f JOIN items i ON i.file_id=f.id WHERE i.space=?",
            (space,),
        )
        return {bytes(r[0]) for r in rows}

    def files_with_hash(self, digest: bytes, space: str | None = None) -> list[FileRow]:
        """Files with this content that have items (in `space`, or in any), oldest first."""
        rows = self.conn.execute(
            "SELECT id, path, kind, size, mtime_ns, hash FROM files f WHERE hash=? AND "
            "EXISTS (SELECT 1 FROM items i WHERE i.file_id=f.id AND (? IS NULL OR i.space=?)) "
            "ORDER BY id",
            (digest, space, space),
        )
        return [FileRow(r[0], decode_path(r[1]), r[2], r[3], r[4], bytes(r[5])) for r in rows]

    def insert_file(
        self,
        path: str,
        kind: str,
        size: int,
        mtime_ns: int,
        digest: bytes,
        width: int | None,
        height: int | None,
        duration: float | None = None,
    ) -> int:
        cur = self.conn.execute(
            "INSERT INTO files(path, kind, size, mtime_ns, hash, width, height, duration, "
            "indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (encode_path(path), kind, size, mtime_ns, digest, width, height, duration, time.time()),
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def update_file(
        self,
        file_id: int,
        *,
        path: str,
        size: int,
        mtime_ns: int,
        digest: bytes,
        width: int | None = None,
        height: int | None = None,
        duration: float | None = None,
        keep_dimensions: bool = False,
    ) -> None:
        if keep_dimensions:
            self.conn.execute(
                "UPDATE files SET path=?, size=?, mtime_ns=?, hash=?, indexed_at=? WHERE id=?",
                (encode_path(path), size, mtime_ns, digest, time.time(), file_id),
            )
        else:
            self.conn.execute(
                "UPDATE files SET path=?, size=?, mtime_ns=?, hash=?, width=?, height=?, "
                "duration=?, indexed_at=? WHERE id=?",
                (
                    encode_path(path), size, mtime_ns, digest, width, height, duration,
                    time.time(), file_id,
                ),
            )  # fmt: skip

    def file_dimensions(self, file_id: int) -> tuple[int | None, int | None, float | None]:
        row = self.conn.execute(
            "SELECT width, height, duration FROM files WHERE id=?", (file_id,)
        ).fetchone()
        return (None, None, None) if row is None else (row[0], row[1], row[2])

    def delete_files(self, file_ids: Sequence[int]) -> None:
        for chunk_start in range(0, len(file_ids), 500):
            chunk = file_ids[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            self.conn.execute(f"DELETE FROM items WHERE file_id IN ({marks})", chunk)
            self.conn.execute(f"DELETE FROM files WHERE id IN ({marks})", chunk)

    # -- items -------------------------------------------------------------------------------
    def insert_items(
        self,
        file_id: int,
        space: str,
        vectors: np.ndarray,
        spans: ItemSpans | None = None,
    ) -> list[int]:
        ids = []
        for i, vector in enumerate(vectors):
            start, end = spans.times[i] if spans and spans.times else (None, None)
            first, last = spans.lines[i] if spans and spans.lines else (None, None)
            cur = self.conn.execute(
                "INSERT INTO items(file_id, space, start_s, end_s, line_start, line_end, vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (file_id, space, start, end, first, last, _vector_blob(vector)),
            )
            assert cur.lastrowid is not None
            ids.append(int(cur.lastrowid))
        return ids

    def delete_items_of_file(self, file_id: int) -> None:
        self.conn.execute("DELETE FROM items WHERE file_id=?", (file_id,))

    def copy_items(self, source_file_id: int, target_file_id: int) -> int:
        cur = self.conn.execute(
            "INSERT INTO items(file_id, space, start_s, end_s, line_start, line_end, vector) "
            "SELECT ?, space, start_s, end_s, line_start, line_end, vector FROM items "
            "WHERE file_id=? ORDER BY id",
            (target_file_id, source_file_id),
        )
        return int(cur.rowcount)

    def item_count(self, space: str | None = None) -> int:
        if space is None:
            row = self.conn.execute("SELECT count(*) FROM items").fetchone()
        else:
            row = self.conn.execute("SELECT count(*) FROM items WHERE space=?", (space,)).fetchone()
        return int(row[0])

    def max_item_id(self, space: str) -> int:
        row = self.conn.execute("SELECT max(id) FROM items WHERE space=?", (space,)).fetchone()
        return int(row[0] or 0)

    def iter_vectors(
        self, space: str, *, after_id: int = 0, chunk: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) chunks of a space's items with id > after_id, in id order."""
        last = after_id
        while True:
            rows = self.conn.execute(
                "SELECT id, vector FROM items WHERE space=? AND id>? ORDER BY id LIMIT ?",
                (space, last, chunk),
            ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            yield ids, vectors
            last = int(ids[-1])

    def count_items_after(self, space: str, after_id: int) -> int:
        """Items of a space with id > after_id (added since an ANN file was written)."""
        row = self.conn.execute(
            "SELECT count(*) FROM items WHERE space=? AND id>?", (space, after_id)
        ).fetchone()
        return int(row[0])

    def item_ids(self, space: str, *, up_to: int | None = None) -> np.ndarray:
        """The ids of a space's items (<= up_to), ascending."""
        rows = self.conn.execute(
            "SELECT id FROM items WHERE space=? AND id<=? ORDER BY id",
            (space, up_to if up_to is not None else 2**63 - 1),
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def vectors_by_id(self, space: str, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the live items among `ids` (primary-key lookups, any order)."""
        rows: list[tuple[int, bytes]] = []
        wanted = [int(i) for i in ids]
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            rows += self.conn.execute(
                f"SELECT id, vector FROM items WHERE id IN ({','.join('?' * len(chunk))}) "
                "AND space=?",
                [*chunk, space],
            ).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        found = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return found, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def ann_projection(self, space: str, generation: int) -> bytes | None:
        """The projection matrix saved with generation `generation` of a space's ANN file."""
        row = self.conn.execute(
            "SELECT matrix FROM ann_projections WHERE space=? AND generation=?",
            (space, generation),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def set_ann_projection(self, space: str, generation: int, matrix: bytes | None) -> None:
        """Name the projection of a new ANN generation (None: that generation has none)."""
        self.conn.execute("DELETE FROM ann_projections WHERE space=?", (space,))
        if matrix is not None:
            self.conn.execute(
                "INSERT INTO ann_projections(space, generation, matrix) VALUES (?, ?, ?)",
                (space, generation, matrix),
            )

    def vectors_of_file(self, file_id: int) -> np.ndarray:
        rows = self.conn.execute(
            "SELECT vector FROM items WHERE file_id=? ORDER BY id", (file_id,)
        ).fetchall()
        return np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows])

    def sample_vectors(self, space: str, n: int = 1000, *, kinds: Sequence[str] = ()) -> np.ndarray:
        """Up to n vectors of a space (of files of these kinds), deterministic: the items at
        3n evenly spaced ids (primary-key lookups, no scan); for a population too sparse for
        that, its first n items (reached through the kind index)."""
        where, params = _filters((), kinds)
        low, high = self.conn.execute(
            "SELECT min(id), max(id) FROM items WHERE space=?", (space,)
        ).fetchone()
        if low is None:
            return np.zeros((0, 0), dtype=np.float32)
        probes = sorted({int(x) for x in np.linspace(low, high, num=3 * n)})
        rows = []
        for start in range(0, len(probes), 900):
            chunk = probes[start : start + 900]
            rows += self.conn.execute(
                "SELECT i.vector FROM items i CROSS JOIN files f ON f.id=i.file_id "
                f"WHERE i.id IN ({','.join('?' * len(chunk))}) AND i.space=?{where}",
                [*chunk, space, *params],
            ).fetchall()
        if len(rows) < min(n, 100):
            rows = self.conn.execute(
                "SELECT i.vector FROM files f CROSS JOIN items i ON i.file_id=f.id "
                f"WHERE i.space=?{where} ORDER BY i.id LIMIT ?",
                [space, *params, n],
            ).fetchall()
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows[:n]])

    def has_items(self, space: str, kinds: Sequence[str]) -> bool:
        """Whether any file of these kinds has items in the space (index lookups only)."""
        marks = ",".join("?" * len(kinds))
        row = self.conn.execute(
            f"SELECT 1 FROM files f WHERE f.kind IN ({marks}) AND EXISTS "
            "(SELECT 1 FROM items i WHERE i.file_id=f.id AND i.space=?) LIMIT 1",
            [*kinds, space],
        ).fetchone()
        return row is not None

    def kinds_present(self) -> set[str]:
        return {str(r[0]) for r in self.conn.execute("SELECT DISTINCT kind FROM files")}

    def tombstones(self, space: str) -> list[int]:
        rows = self.conn.execute("SELECT item_id FROM tombstones WHERE space=?", (space,))
        return [int(r[0]) for r in rows]

    def clear_tombstones(self, space: str, up_to_id: int | None = None) -> None:
        if up_to_id is None:
            self.conn.execute("DELETE FROM tombstones WHERE space=?", (space,))
        else:
            self.conn.execute(
                "DELETE FROM tombstones WHERE space=? AND item_id<=?", (space, up_to_id)
            )

    def hits_for_items(
        self,
        item_ids: Sequence[int],
        *,
        within: Sequence[str] = (),
        kinds: Sequence[str] = (),
    ) -> dict[int, ItemHit]:
        """Join item ids to their live file rows, applying the path and kind filters."""
        result: dict[int, ItemHit] = {}
        where, params = _filters(within, kinds)
        for start in range(0, len(item_ids), 500):
            chunk = [int(i) for i in item_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                "SELECT i.id, f.id, f.path, f.kind, f.size, f.mtime_ns, f.width, f.height, "
                "i.start_s, i.end_s, i.space, i.line_start, i.line_end, f.duration "
                # items first: the planner must not scan files by kind for a handful of ids
                "FROM items i CROSS JOIN files f ON f.id=i.file_id "
                f"WHERE i.id IN ({marks}){where}",
                [*chunk, *params],
            )
            for r in rows:
                result[int(r[0])] = ItemHit(
                    int(r[0]), int(r[1]), decode_path(r[2]), r[3], r[4], r[5], r[6], r[7], r[8],
                    r[9], r[10], r[11], r[12], r[13],
                )  # fmt: skip
        return result

    def count_filtered(self, space: str, within: Sequence[str], kinds: Sequence[str]) -> int:
        where, params = _filters(within, kinds)
        row = self.conn.execute(
            "SELECT count(*) FROM files f CROSS JOIN items i ON i.file_id=f.id "
            f"WHERE i.space=?{where}",
            [space, *params],
        ).fetchone()
        return int(row[0])

    def filtered_vectors(
        self, space: str, within: Sequence[str], kinds: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        where, params = _filters(within, kinds)
        rows = self.conn.execute(
            "SELECT i.id, i.vector FROM files f CROSS JOIN items i ON i.file_id=f.id "
            f"WHERE i.space=?{where} ORDER BY i.id",
            [space, *params],
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, 0), dtype=np.float32)
        return ids, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    # -- failures ----------------------------------------------------------------------------
    def record_failure(self, path: str, kind: str, size: int, mtime_ns: int, reason: str) -> None:
        self.conn.execute(
            "INSERT INTO failures(path, kind, size, mtime_ns, reason, failed_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET kind=excluded.kind, "
            "size=excluded.size, mtime_ns=excluded.mtime_ns, reason=excluded.reason, "
            "failed_at=excluded.failed_at",
            (encode_path(path), kind, size, mtime_ns, reason, time.time()),
        )

    def clear_failures(self, paths: Iterable[str]) -> None:
        for p in paths:
            self.conn.execute("DELETE FROM failures WHERE path=?", (encode_path(p),))

    def failures(self) -> list[FailureRow]:
        rows = self.conn.execute(
            "SELECT path, kind, size, mtime_ns, reason, failed_at FROM failures ORDER BY path"
        )
        return [FailureRow(decode_path(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]

    # -- runs and statistics -----------------------------------------------------------------
    def start_run(self) -> int:
        cur = self.conn.execute("INSERT INTO runs(started_at) VALUES (?)", (time.time(),))
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, summary_json: str) -> None:
        self.conn.execute(
            "UPDATE runs SET finished_at=?, summary=? WHERE id=?",
            (time.time(), summary_json, run_id),
        )

    def last_run(self) -> tuple[float, float | None] | None:
        row = self.conn.execute(
            "SELECT started_at, finished_at FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (float(row[0]), row[1])

    def counts_by_kind(self) -> tuple[dict[str, int], dict[str, int]]:
        """(files per kind, items per kind)."""
        files = dict(self.conn.execute("SELECT kind, count(*) FROM files GROUP BY kind").fetchall())
        items = dict(
            self.conn.execute(
                "SELECT f.kind, count(*) FROM items i JOIN files f ON f.id=i.file_id "
                "GROUP BY f.kind"
            ).fetchall()
        )
        return files, items

    def items_per_space(self) -> dict[str, int]:
        return dict(
            self.conn.execute("SELECT space, count(*) FROM items GROUP BY space").fetchall()
        )

    def file_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM files").fetchone()[0])

    def failure_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM failures").fetchone()[0])


def _statements(script: str) -> Iterator[str]:
    """Split a script into complete statements (triggers hold inner semicolons)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:60]}")


def _filters(within: Sequence[str], kinds: Sequence[str]) -> tuple[str, list[object]]:
    """SQL for 'under one of these directories' and 'one of these kinds' (no LIKE patterns)."""
    clauses: list[str] = []
    params: list[object] = []
    if within:
        ors = []
        for directory in within:
            prefix = encode_path(directory.rstrip(os.sep) + os.sep)
            ors.append("(f.path = ? OR substr(f.path, 1, ?) = ?)")
            params.extend([encode_path(directory), len(prefix), prefix])
        clauses.append("(" + " OR ".join(ors) + ")")
    if kinds:
        clauses.append(f"f.kind IN ({','.join('?' * len(kinds))})")
        params.extend(kinds)
    where = "".join(f" AND {c}" for c in clauses)
    return where, params
