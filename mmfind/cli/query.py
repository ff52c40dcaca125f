"""`mmfind query`: ranked files (and moments) for a text, image and/or audio query."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from mmfind import config
from mmfind.cli.app import IndexOption, handles_errors
from mmfind.cli.render import (
    human_bytes,
    mmss,
    note,
    out_console,
    path_link,
    print_json,
    use_table,
    write_lines,
    write_paths,
)
from mmfind.errors import UsageError
from mmfind.media.kinds import KINDS
from mmfind.search import Query, Response, Result, run_query
from mmfind.server import ask
from mmfind.store.catalog import ItemHit, display_path


@handles_errors
def query_command(
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", "-i", help="Find pictures like this one (repeatable)."),
    ] = None,
    audio: Annotated[
        list[str] | None,
        typer.Option("--audio", "-a", help="Find sounds like this one (repeatable)."),
    ] = None,
    negative: Annotated[
        list[str] | None,
        typer.Option("--not", help="Push results away from this text (repeatable)."),
    ] = None,
    text_weight: Annotated[float, typer.Option(help="Weight of TEXT in the fused query.")] = 1.0,
    image_weight: Annotated[
        float, typer.Option(help="Weight of the --image examples (their mean) in the fused query.")
    ] = 1.0,
    audio_weight: Annotated[
        float, typer.Option(help="Weight of the --audio examples (their mean) in the fused query.")
    ] = 1.0,
    not_weight: Annotated[float, typer.Option(help="Weight subtracted for --not texts.")] = 0.5,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Results to show.")] = 10,
    within: Annotated[
        list[str] | None,
        typer.Option("--in", help="Only results under this folder (repeatable)."),
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Only results whose cosine is at least this.")
    ] = None,
    all_moments: Annotated[
        bool,
        typer.Option(
            "--all-moments", help="Every matching frame, window or text chunk, not one per file."
        ),
    ] = False,
    kind: Annotated[
        list[str] | None,
        typer.Option("--type", help=f"Only these kinds ({', '.join(KINDS)}; repeatable)."),
    ] = None,
    index: IndexOption = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    paths_output: Annotated[bool, typer.Option("--paths", help="One path per line.")] = False,
    nul: Annotated[bool, typer.Option("-0", "--null", help="NUL-separated paths.")] = False,
    table: Annotated[
        bool, typer.Option("--table", help="A table even when the output is not a terminal.")
    ] = False,
    server: Annotated[
        bool,
        typer.Option(
            help="Use a running `mmfind serve` for this index when there is one (much faster)."
        ),
    ] = True,
) -> None:
    """Search the index by text, example images and/or example sounds.

    Exit status: 0 with results, 1 with none, 2 for a usage or input error."""
    if sum([json_output, paths_output or nul, table]) > 1:
        raise UsageError("choose one output format: --json, --paths/-0 or --table")
    query = Query(
        text=text,
        images=image or (),
        audios=audio or (),
        negatives=negative or (),
        text_weight=text_weight,
        image_weight=image_weight,
        audio_weight=audio_weight,
        not_weight=not_weight,
        limit=limit,
        within=within or (),
        kinds=kind or (),
        min_score=min_score,
        all_moments=all_moments,
    )
    index_dir = config.index_dir(index)
    response = ask(index_dir, query) if server else None
    later: list[Callable[[], None]] = []  # work that need not delay the results
    if response is None:
        response = run_query(index_dir, query, device=device, light_text=True, deferred=later)
    for message in response.notes:
        note(message)
    if json_output:
        print_json(_json(query, response))
    elif paths_output or nul:
        write_paths((r.hit.path for r in response.results), nul=nul)
    elif use_table(table):
        _table(query, response)
    else:
        write_lines(_plain_line(r) for r in response.results)
    if later:
        sys.stdout.flush()  # the results first (a pipe would hold them until exit)
        for task in later:
            task()
    if not response.results:
        raise typer.Exit(1)


def _plain_line(r: Result) -> str:
    """`score<TAB>path`, plus a third field with the moment (`mm:ss–mm:ss` or `lines a–b`)
    for time-based media and text, so `cut -f2` always gives the path."""
    line = f"{r.score:.4f}\t{display_path(r.hit.path)}"
    where = _where(r.hit)
    return f"{line}\t{where}" if where else line


def _json(query: Query, response: Response) -> dict[str, Any]:
    return {
        "query": {
            "text": query.text,
            "images": [display_path(p) for p in query.images],
            "audio": [display_path(p) for p in query.audios],
            "not": list(query.negatives),
        },
        "model": response.model,
        "models": response.models,
        "calibrated": response.calibrated,
        "results": [
            {
                "rank": r.rank,
                "score": round(r.score, 6),
                "cosine": round(r.cosine, 6),
                "path": display_path(r.hit.path),
                "kind": r.hit.kind,
                "space": r.hit.space,
                "start": r.hit.start,
                "end": r.hit.end,
                "lines": (
                    [r.hit.line_start, r.hit.line_end] if r.hit.line_start is not None else None
                ),
                "size": r.hit.size,
                "width": r.hit.width,
                "height": r.hit.height,
                "duration": r.hit.duration,
            }
            for r in response.results
        ],
    }


def _table(query: Query, response: Response) -> None:
    title = query.text or ", ".join(display_path(p) for p in (*query.images, *query.audios))
    table = Table(title=f"{title!r}: {len(response.results)} result(s)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    located = any(r.hit.start is not None or r.hit.line_start is not None for r in response.results)
    if located:
        table.add_column("where", justify="right")
    table.add_column("size", justify="right")
    table.add_column("dimensions", justify="right")
    for r in response.results:
        hit = r.hit
        dims = f"{hit.width}×{hit.height}" if hit.width and hit.height else ""
        cells: list[str | Text] = [str(r.rank), f"{r.score:.3f}", path_link(hit.path)]
        if located:
            cells.append(_where(hit))
        table.add_row(*cells, human_bytes(hit.size), dims)
    out_console().print(table)


def _where(hit: ItemHit) -> str:
    if hit.start is not None:
        end = f"–{mmss(hit.end)}" if hit.end is not None else ""
        return f"{mmss(hit.start)}{end}"
    if hit.line_start is not None:
        return f"lines {hit.line_start}–{hit.line_end}"
    return ""
