"""`mmfind info`: what the index holds and where."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.table import Table

from mmfind import config
from mmfind.cli.app import IndexOption, handles_errors
from mmfind.cli.render import human_bytes, out_console, print_json, use_table, write_lines
from mmfind.index_info import IndexInfo, describe
from mmfind.store.catalog import display_path


@handles_errors
def info_command(
    index: IndexOption = None,
    failures: Annotated[
        bool, typer.Option("--failures", help="List the files that failed, with reasons.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Describe the index: location, model, counts, roots, size, last run."""
    info = describe(config.index_dir(index), with_failures=failures)
    if json_output:
        print_json(_json(info, failures))
        return
    console = out_console()
    if failures:
        if use_table():
            table = Table(title=f"{len(info.failure_rows)} failed file(s)", title_justify="left")
            table.add_column("path", overflow="fold")
            table.add_column("reason", overflow="fold")
            for f in info.failure_rows:
                table.add_row(display_path(f.path), f.reason)
            console.print(table)
        else:
            write_lines(f"{display_path(f.path)}\t{f.reason}" for f in info.failure_rows)
        return
    rows = [
        ("index", info.index),
        ("model", info.model or "(none yet)"),
        ("dimensions", str(info.dim or "")),
        *(
            (f"{name} space", f"{s['model']} ({s['dim']} dims): {s['items']} items")
            for name, s in info.spaces.items()
        ),
        ("files", str(info.files)),
        ("items", str(info.items)),
        (
            "kinds",
            ", ".join(
                f"{k}: {n} files, {info.items_by_kind.get(k, 0)} items"
                for k, n in info.kinds.items()
            )
            or "-",
        ),
        ("failed", str(info.failed)),
        ("roots", "\n".join(display_path(r) for r in info.roots) or "-"),
        (
            "size",
            f"{human_bytes(info.size_bytes)} (catalog {human_bytes(info.catalog_bytes)}, "
            f"ANN {human_bytes(info.ann_bytes)})",
        ),
        ("last run", _when(info.last_run)),
        *((f"{name} text tower", _tower(t)) for name, t in info.text_towers.items()),
    ]
    if use_table():
        table = Table(show_header=False, title="mmfind index", title_justify="left")
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in rows:
            table.add_row(key, value)
        console.print(table)
    else:
        write_lines(f"{key}\t{value.replace(chr(10), ', ')}" for key, value in rows)


def _tower(tower: dict[str, object]) -> str:
    if tower["state"] == "present":
        return f"present ({human_bytes(int(str(tower['bytes'])))}): text queries run without torch"
    if tower["state"] == "refused":
        return f"none: {tower['reason']}"
    return "none yet (written by the next index run or query that loads the model)"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return dt.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _json(info: IndexInfo, failures: bool) -> dict[str, Any]:
    document: dict[str, Any] = {
        "index": info.index,
        "model": info.model,
        "dim": info.dim,
        "files": info.files,
        "items": info.items,
        "kinds": info.kinds,
        "items_by_kind": info.items_by_kind,
        "spaces": info.spaces,
        "failed": info.failed,
        "roots": [display_path(r) for r in info.roots],
        "size_bytes": info.size_bytes,
        "catalog_bytes": info.catalog_bytes,
        "ann_bytes": info.ann_bytes,
        "last_run": _when(info.last_run) if info.last_run is not None else None,
        "schema": info.schema,
        "text_towers": info.text_towers,
    }
    if failures:
        document["failures"] = [
            {"path": display_path(f.path), "kind": f.kind, "reason": f.reason}
            for f in info.failure_rows
        ]
    return document
