"""`mmfind query`: ranked files for a text and/or image query."""

from __future__ import annotations

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
    write_paths,
)
from mmfind.errors import UsageError
from mmfind.media.kinds import KINDS
from mmfind.search import Query, Response, run_query
from mmfind.store.catalog import display_path


@handles_errors
def query_command(
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", "-i", help="Find pictures like this one (repeatable)."),
    ] = None,
    negative: Annotated[
        list[str] | None,
        typer.Option("--not", help="Push results away from this text (repeatable)."),
    ] = None,
    text_weight: Annotated[float, typer.Option(help="Weight of TEXT in the fused query.")] = 1.0,
    image_weight: Annotated[
        float, typer.Option(help="Weight of the --image examples (their mean) in the fused query.")
    ] = 1.0,
    not_weight: Annotated[float, typer.Option(help="Weight subtracted for --not texts.")] = 0.5,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Results to show.")] = 10,
    within: Annotated[
        list[str] | None,
        typer.Option("--in", help="Only results under this folder (repeatable)."),
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Only results scoring at least this (cosine).")
    ] = None,
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
) -> None:
    """Search the index by text, by example images, or both.

    Exit status: 0 with results, 1 with none, 2 for a usage or input error."""
    for k in kind or ():
        if k not in KINDS:
            raise UsageError(f"--type must be one of {', '.join(KINDS)}, not {k!r}")
    if sum([json_output, paths_output or nul, table]) > 1:
        raise UsageError("choose one output format: --json, --paths/-0 or --table")
    query = Query(
        text=text,
        images=image or (),
        negatives=negative or (),
        text_weight=text_weight,
        image_weight=image_weight,
        not_weight=not_weight,
        limit=limit,
        within=within or (),
        kinds=kind or (),
        min_score=min_score,
    )
    response = run_query(config.index_dir(index), query, device=device)
    for message in response.notes:
        note(message)
    if json_output:
        print_json(_json(query, response))
    elif paths_output or nul:
        write_paths((r.hit.path for r in response.results), nul=nul)
    elif use_table(table):
        _table(query, response)
    else:
        out = out_console()
        for r in response.results:
            out.print(f"{r.score:.4f}\t{display_path(r.hit.path)}", markup=False)
    if not response.results:
        raise typer.Exit(1)


def _json(query: Query, response: Response) -> dict[str, Any]:
    return {
        "query": {
            "text": query.text,
            "images": list(query.images),
            "not": list(query.negatives),
        },
        "model": response.model,
        "results": [
            {
                "rank": r.rank,
                "score": round(r.score, 6),
                "path": display_path(r.hit.path),
                "kind": r.hit.kind,
                "start": r.hit.start,
                "end": r.hit.end,
                "size": r.hit.size,
                "width": r.hit.width,
                "height": r.hit.height,
            }
            for r in response.results
        ],
    }


def _table(query: Query, response: Response) -> None:
    title = query.text or ", ".join(query.images)
    table = Table(title=f"{title!r}: {len(response.results)} result(s)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    timed = any(r.hit.start is not None for r in response.results)
    if timed:
        table.add_column("when", justify="right")
    table.add_column("size", justify="right")
    table.add_column("dimensions", justify="right")
    for r in response.results:
        hit = r.hit
        dims = f"{hit.width}×{hit.height}" if hit.width and hit.height else ""
        cells: list[str | Text] = [str(r.rank), f"{r.score:.3f}", path_link(hit.path)]
        if timed:
            cells.append(mmss(hit.start) if hit.start is not None else "")
        table.add_row(*cells, human_bytes(hit.size), dims)
    out_console().print(table)
