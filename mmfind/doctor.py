"""`mmfind doctor`: check an index, and repair what can be rebuilt from its catalog.

Checks (each a `Check` with status ok, warning or problem):
- catalog: SQLite's `quick_check` (`integrity_check` with full=True) and `foreign_key_check`.
- schema: the named migrations applied, against the ones this mmfind knows.
- items: every vector has its space's dimension and belongs to a declared space.
- ann:<space>: the hnswlib file the catalog names exists, has the size and head/tail hash that
  were recorded, loads, holds the recorded element count, and was built with the space's model
  and dimension; whether it is behind the catalog (items added or removed since it was written).
- ann files: `.hnsw` / `.hnsw.tmp` files no catalog entry names (left by a killed run).
- text tower:<space>: the light text tower (mmfind.text_towers) opens, holds the space's model
  and passes its probe texts; a damaged one is removed by a repair (a query rewrites it).
- roots, failures, last run, writer lock: worth knowing, never damage (warnings at most).

A problem is damage; `repair=True` takes the writer lock and fixes what the catalog can rebuild
(ANN files through `AnnStore.sync`, stale files, pending migrations, entries with damaged
vectors), then checks again. A damaged catalog cannot be repaired in place: the report says how to
start over. Checking never writes: the catalog is opened read-only (`query_only`).

The core never prints: `run_doctor` returns a `DoctorReport`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import shlex
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from mmfind import text_towers
from mmfind.config import CATALOG_NAME
from mmfind.config import index_dir as index_dir_default
from mmfind.errors import CatalogError, EmptyIndexError, IndexBusyError
from mmfind.store.ann import AnnIndex, AnnState, AnnStore, file_digest
from mmfind.store.catalog import BUSY_TIMEOUT_MS, MIGRATIONS, Catalog, display_path
from mmfind.store.lock import lock_holder, writer_lock

OK = "ok"
WARNING = "warning"
PROBLEM = "problem"

_CHECK_ROWS = 20  # messages kept from quick_check / integrity_check
T = TypeVar("T")


@dataclass
class Check:
    name: str
    status: str  # OK | WARNING | PROBLEM
    detail: str
    advice: str | None = None  # what to do about it
    found: str | None = None  # after a repair: what was wrong before
    repaired: str | None = None  # after a repair: what was done
    fix: str | None = field(default=None, repr=False)  # the repair that applies, if any


@dataclass
class DoctorReport:
    index: str
    checks: list[Check]
    repairs: list[str] = field(default_factory=list)  # what --repair did, in order
    not_repaired: list[str] = field(default_factory=list)  # why something was left as it was
    repair_requested: bool = False

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status == PROBLEM]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


def run_doctor(index_dir: Path, *, full: bool = False, repair: bool = False) -> DoctorReport:
    """Check the index at index_dir; with repair, fix what can be rebuilt and check again."""
    path = index_dir / CATALOG_NAME
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        raise EmptyIndexError(
            f"no index at {index_dir}: nothing to check (point --index / MMFIND_HOME at one)"
        )
    before = diagnose(index_dir, full=full)
    before.repair_requested = repair
    if not repair or not any(c.fix for c in before.checks):
        if repair and before.problems:
            before.not_repaired.extend(_manual_steps(before))
        return before
    try:
        with writer_lock(index_dir, wait_s=0):
            repairs, not_repaired = _repair(index_dir, before)
    except IndexBusyError as exc:
        before.not_repaired.append(f"nothing was repaired: {exc}")
        return before
    after = diagnose(index_dir, full=full)
    after.repair_requested = True
    after.repairs = repairs
    after.not_repaired = not_repaired
    previous = {c.name: c for c in before.checks}
    for check in after.checks:
        old = previous.get(check.name)
        if old is not None and old.fix and old.repaired:
            check.found, check.repaired = old.detail, old.repaired
    after.not_repaired.extend(_manual_steps(after))
    return after


# -- checks ----------------------------------------------------------------------------------


def diagnose(index_dir: Path, *, full: bool = False) -> DoctorReport:
    """Every check, read-only."""
    report = DoctorReport(str(index_dir), [])
    holder = lock_holder(index_dir)
    conn = _connect(index_dir / CATALOG_NAME)
    try:
        catalog = Catalog(conn, index_dir / CATALOG_NAME)
        sound = _run(report, "catalog", lambda: _check_catalog(catalog, full))
        if sound is None or sound.status != OK:
            # Nothing else can be trusted; the roots say what to index again.
            with contextlib.suppress(sqlite3.Error):
                roots = catalog.roots()
                for check in report.problems:
                    check.advice = _start_over(index_dir, roots)
        else:
            _run(report, "schema", lambda: _check_schema(catalog))
            _run(report, "items", lambda: _check_items(catalog))
            spaces = _run(report, "spaces", lambda: catalog.spaces(), record=False)
            for space in spaces or []:
                check_ann = functools.partial(_check_ann, catalog, index_dir, space.name)
                _run(report, f"ann:{space.name}", check_ann)
            for space in spaces or []:
                if space.name in text_towers.EXPORTABLE:
                    report.checks.append(_check_text_tower(index_dir, space.name, space.model))
            _run(report, "ann files", lambda: _check_stale_files(catalog, index_dir, holder))
            _run(report, "roots", lambda: _check_roots(catalog))
            _run(report, "failures", lambda: _check_failures(catalog))
            _run(report, "last run", lambda: _check_last_run(catalog, holder))
    finally:
        conn.close()
    report.checks.append(_check_lock(holder))
    return report


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA query_only=ON")  # checking never writes
    return conn


def _run(
    report: DoctorReport, name: str, check: Callable[[], T], *, record: bool = True
) -> T | None:
    """Run one check; an SQLite error while reading becomes a problem of that check."""
    try:
        result = check()
    except sqlite3.Error as exc:
        index_dir = Path(report.index)
        report.checks.append(
            Check(name, PROBLEM, f"cannot be read: {exc}", advice=_start_over(index_dir))
        )
        return None
    if record and isinstance(result, Check):
        report.checks.append(result)
    return result


def _start_over(index_dir: Path, roots: list[str] | None = None) -> str:
    """What to do with a catalog that cannot be repaired in place."""
    path = index_dir / CATALOG_NAME
    folders = " ".join(shlex.quote(display_path(r)) for r in roots) if roots else "FOLDER..."
    index = "" if index_dir == index_dir_default() else f" --index {shlex.quote(str(index_dir))}"
    return (
        f"the catalog cannot be repaired in place: move it aside "
        f"(mv {shlex.quote(str(path))} {shlex.quote(str(path) + '.damaged')}) and run "
        f"`mmfind index{index} {folders}` to build the index again"
    )


def _check_catalog(catalog: Catalog, full: bool) -> Check:
    pragma = "integrity_check" if full else "quick_check"
    try:
        rows = [
            line.strip()
            for r in catalog.conn.execute(f"PRAGMA {pragma}({_CHECK_ROWS})")
            for line in str(r[0]).splitlines()
            if line.strip() and not line.startswith("*** in database")
        ]
    except sqlite3.DatabaseError as exc:
        return Check(
            "catalog",
            PROBLEM,
            f"unreadable: {exc}",
            advice=_start_over(catalog.path.parent),
        )
    if rows != ["ok"]:
        shown = "; ".join(rows[:3]) + (f" (and {len(rows) - 3} more)" if len(rows) > 3 else "")
        return Check(
            "catalog",
            PROBLEM,
            f"damaged ({pragma}): {shown}",
            advice=_start_over(catalog.path.parent),
        )
    orphans = catalog.conn.execute("PRAGMA foreign_key_check").fetchall()
    if orphans:
        return Check(
            "catalog",
            PROBLEM,
            f"{len(orphans)} row(s) refer to rows that do not exist (foreign_key_check)",
            advice=_start_over(catalog.path.parent),
        )
    files, items = catalog.file_count(), catalog.item_count()
    return Check("catalog", OK, f"{pragma} ok: {files} files, {items} items")


def _check_schema(catalog: Catalog) -> Check:
    known = [name for name, _ in MIGRATIONS]
    has_table = catalog.conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='migrations'"
    ).fetchone()
    if has_table is None:
        return Check(
            "schema",
            PROBLEM,
            "no migrations table: this is not an mmfind catalog (or its creation was cut short)",
            advice=_start_over(catalog.path.parent),
        )
    applied = set(catalog.applied_migrations())
    unknown = sorted(applied - set(known))
    if unknown:
        return Check(
            "schema",
            PROBLEM,
            f"written by a newer mmfind (schema {unknown[-1]})",
            advice="upgrade mmfind to use this index",
        )
    pending = [name for name in known if name not in applied]
    if pending:
        return Check(
            "schema",
            WARNING,
            f"{len(pending)} migration(s) not applied yet: {', '.join(pending)}",
            advice="the next `mmfind index` (or `mmfind doctor --repair`) applies them",
            fix="migrate",
        )
    return Check("schema", OK, f"up to date ({known[-1]})")


def _check_items(catalog: Catalog) -> Check:
    bad = catalog.conn.execute(
        "SELECT count(*), count(DISTINCT i.file_id) FROM items i LEFT JOIN spaces s "
        "ON s.name=i.space WHERE s.name IS NULL OR length(i.vector) != 4 * s.dim"
    ).fetchone()
    if bad[0]:
        return Check(
            "items",
            PROBLEM,
            f"{bad[0]} item(s) of {bad[1]} file(s) have a vector of the wrong size or no space",
            advice="`mmfind doctor --repair` forgets those files; the next `mmfind index` "
            "indexes them again",
            fix="drop-bad-items",
        )
    return Check("items", OK, "every vector has its space's dimension")


def _check_ann(catalog: Catalog, index_dir: Path, space: str) -> Check:
    name = f"ann:{space}"
    info = catalog.space(space)
    assert info is not None
    items = catalog.item_count(space)
    state = AnnState.read(catalog, space)
    rebuild = "`mmfind doctor --repair` (or the next query) rebuilds it from the catalog"
    if state is None:
        if items == 0:
            return Check(name, OK, "no items, no ANN file")
        return Check(
            name,
            WARNING,
            f"no ANN file yet for {items} items (an index run did not get to write it)",
            advice=rebuild,
            fix=f"sync:{space}",
        )
    if state.model != info.model or state.dim != info.dim:
        return Check(
            name,
            PROBLEM,
            f"{state.file} was built with another model ({state.model}, {state.dim} dims; "
            f"the space holds {info.model}, {info.dim} dims)",
            advice=rebuild,
            fix=f"sync:{space}",
        )
    path = index_dir / state.file
    try:
        size = path.stat().st_size
    except OSError:
        return Check(name, PROBLEM, f"{state.file} is missing", advice=rebuild, fix=f"sync:{space}")
    if size != state.size or file_digest(path) != state.digest:
        return Check(
            name,
            PROBLEM,
            f"{state.file} is damaged or was replaced ({size} bytes, {state.size} written)",
            advice=rebuild,
            fix=f"sync:{space}",
        )
    try:
        projection, source = AnnStore(catalog, index_dir).projection_of(space, state)
        ann = AnnIndex.load(path, state.dim, state.count, projection, source)
    except (OSError, ValueError) as exc:
        return Check(name, PROBLEM, str(exc), advice=rebuild, fix=f"sync:{space}")
    live = ann.count - state.deleted
    added = catalog.count_items_after(space, state.max_id)
    removed = len(catalog.tombstones(space))
    summary = f"{state.file}: {live} items, {info.model}, {info.dim} dims"
    if added or removed:
        return Check(
            name,
            WARNING,
            f"{summary}; {added} item(s) added and {removed} removed since it was written "
            "(queries search those exactly)",
            advice="the next `mmfind index` (or `mmfind doctor --repair`) brings it up to date",
            fix=f"sync:{space}",
        )
    return Check(name, OK, summary)


def _check_text_tower(index_dir: Path, space: str, model: str) -> Check:
    """The light text tower (mmfind.text_towers): derived from the model, so a damaged one is
    removed by a repair and written again by the next query or index run that loads the model."""
    state, detail = text_towers.health(index_dir, space, model)
    if state != "damaged":
        return Check(f"text tower:{space}", OK, detail)
    return Check(
        f"text tower:{space}",
        PROBLEM,
        f"{detail}; text queries load the full model instead",
        advice="`mmfind doctor --repair` removes it; the next `mmfind index` or text query "
        "that loads the model writes a sound one",
        fix=f"remove-tower:{space}",
    )


def _stale_ann_files(catalog: Catalog, index_dir: Path) -> list[str]:
    keep = AnnStore(catalog, index_dir).in_force()
    return sorted(p.name for p in index_dir.glob("*.hnsw*") if p.name not in keep)


def _check_stale_files(catalog: Catalog, index_dir: Path, holder: int | None) -> Check:
    if holder is not None:
        return Check("ann files", OK, "not checked: an index run is writing them")
    stale = _stale_ann_files(catalog, index_dir)
    if stale:
        return Check(
            "ann files",
            PROBLEM,
            f"{len(stale)} file(s) no catalog entry names (left by an interrupted run): "
            + ", ".join(stale[:5])
            + (" …" if len(stale) > 5 else ""),
            advice="`mmfind doctor --repair` (or the next `mmfind index`) removes them",
            fix="remove-stale",
        )
    return Check("ann files", OK, "no stray files")


def _check_roots(catalog: Catalog) -> Check:
    roots = catalog.roots()
    missing = [r for r in roots if not os.path.exists(r)]
    if missing:
        shown = ", ".join(display_path(r) for r in missing[:5])
        return Check(
            "roots",
            WARNING,
            f"{len(missing)} of {len(roots)} missing: {shown}",
            advice="their files stay in the index until the folders are back",
        )
    return Check("roots", OK, f"{len(roots)} folder(s), all present")


def _check_failures(catalog: Catalog) -> Check:
    failed = catalog.failure_count()
    if failed:
        return Check(
            "failures",
            WARNING,
            f"{failed} file(s) could not be indexed",
            advice="`mmfind info --failures` lists them with their reasons",
        )
    return Check("failures", OK, "none")


def _check_last_run(catalog: Catalog, holder: int | None) -> Check:
    last = catalog.last_run()
    if last is None:
        return Check("last run", OK, "never run")
    started, finished = last
    when = dt.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds")
    if finished is not None:
        return Check("last run", OK, f"started {when}, finished")
    if holder is not None:
        return Check("last run", OK, f"started {when}, in progress")
    return Check(
        "last run",
        WARNING,
        f"started {when} and did not finish (killed or interrupted); what it committed is kept",
        advice="run `mmfind index` to complete it",
    )


def _check_lock(holder: int | None) -> Check:
    if holder is None:
        return Check("writer lock", OK, "free")
    who = f"pid {holder}" if holder > 0 else "a process"
    return Check(
        "writer lock",
        WARNING,
        f"held by a running index run ({who})",
        advice="its changes show as pending until it finishes",
    )


# -- repairs ---------------------------------------------------------------------------------


def _repair(index_dir: Path, report: DoctorReport) -> tuple[list[str], list[str]]:
    """Apply every fix the report names (under the writer lock); returns (done, not done)."""
    done: list[str] = []
    left: list[str] = []
    fixes = [c for c in report.checks if c.fix]
    try:
        catalog = Catalog.open(index_dir, create=False)  # applies pending migrations
    except CatalogError as exc:
        return done, [f"nothing was repaired: {exc}"]
    try:
        for check in fixes:
            if check.fix == "migrate":
                check.repaired = "migrations applied"
                done.append(f"schema: {check.repaired}")
        for check in fixes:
            if check.fix == "drop-bad-items":
                check.repaired = _drop_bad_items(catalog)
                done.append(f"items: {check.repaired}")
        store = AnnStore(catalog, index_dir)
        for check in fixes:
            if check.fix is not None and check.fix.startswith("sync:"):
                space = check.fix.split(":", 1)[1]
                info = catalog.space(space)
                if info is None:
                    left.append(f"{check.name}: the space is gone; nothing to rebuild")
                    continue
                rebuilt = store.sync(space, info.dim, info.model)
                items = catalog.item_count(space)
                check.repaired = (
                    f"rebuilt from the catalog ({items} items)"
                    if rebuilt
                    else f"brought up to date ({items} items)"
                )
                done.append(f"{check.name}: {check.repaired}")
        for check in fixes:
            if check.fix is not None and check.fix.startswith("remove-tower:"):
                text_towers.remove(index_dir, check.fix.split(":", 1)[1])
                check.repaired = "removed; the next index run or text query writes it again"
                done.append(f"{check.name}: {check.repaired}")
        for check in fixes:
            if check.fix == "remove-stale":
                stale = _stale_ann_files(catalog, index_dir)
                store.remove_stale_files()
                check.repaired = f"removed {', '.join(stale) or 'nothing'}"
                done.append(f"ann files: {check.repaired}")
    except sqlite3.Error as exc:
        left.append(f"repair stopped: the catalog cannot be written ({exc})")
    finally:
        catalog.close()
    return done, left


def _drop_bad_items(catalog: Catalog) -> str:
    with catalog.atomic():
        ids = [
            int(r[0])
            for r in catalog.conn.execute(
                "SELECT DISTINCT i.file_id FROM items i LEFT JOIN spaces s ON s.name=i.space "
                "WHERE s.name IS NULL OR length(i.vector) != 4 * s.dim"
            ).fetchall()
        ]
        catalog.delete_files(ids)
    return f"forgot {len(ids)} file(s) with damaged vectors; the next `mmfind index` reads them"


def _manual_steps(report: DoctorReport) -> list[str]:
    """What is left for the user: problems no repair applies to, or that a repair left."""
    return [
        f"{c.name}: {c.advice or c.detail}" if not c.fix else f"{c.name}: still {c.detail}"
        for c in report.problems
    ]
