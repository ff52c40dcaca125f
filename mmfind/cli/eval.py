"""`mmfind eval`: retrieval quality on a labelled dataset, and what the ANN index costs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import IO, Annotated, Any

import typer
from rich.table import Table

from mmfind.cli.app import handles_errors
from mmfind.cli.render import (
    PhaseProgress,
    note,
    out_console,
    print_json,
    stderr_is_tty,
    use_table,
    write_lines,
)
from mmfind.errors import InputError, UsageError
from mmfind.evaluate.datasets import FORMATS
from mmfind.evaluate.runner import DIRECTIONS, EvalOptions, EvalReport, run_eval

_LABELS = {
    "scan": "Scanning the dataset",
    "model": "Loading the model",
    "index": "Indexing the dataset",
    "finish": "Building the ANN index",
    "encode": "Encoding text queries",
    "exact": "Ranking (exact)",
    "ann": "Searching (ANN and exact, timed)",
}


@handles_errors
def eval_command(
    path: Annotated[
        str,
        typer.Argument(
            metavar="PATH",
            help="Dataset: COCO / Karpathy captions JSON, Flickr30k JSON/CSV/token file, a "
            "path,caption CSV/TSV/JSONL, an AudioCaps/Clotho CSV, or a folder of class folders.",
            show_default=False,
        ),
    ],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help=f"Dataset format ({'|'.join(FORMATS)}); detected from PATH when left out.",
            show_default=False,
        ),
    ] = None,
    media_root: Annotated[
        str | None,
        typer.Option(
            help="Folder that relative media paths are relative to (default: the dataset "
            "file's folder).",
            show_default=False,
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Split to evaluate when the dataset has splits (default: test; 'all': every "
            "split).",
            show_default=False,
        ),
    ] = None,
    index: Annotated[
        str | None,
        typer.Option(
            "--index",
            help="Evaluate against this existing index (it must hold the dataset's media). "
            "Default: a throw-away index in a temporary folder.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Image-text model for the throw-away index (a preset, ARCH:PRETRAINED, "
            "hf-hub:ORG/REPO, ...; default: $MMFIND_MODEL, else 'default'). With --index the "
            "index's own model is used.",
            show_default=False,
        ),
    ] = None,
    audio_model: Annotated[
        str | None,
        typer.Option(
            help="Audio-text (CLAP) model for the throw-away index (default: "
            "$MMFIND_AUDIO_MODEL, else the default CLAP).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Evaluate a deterministic sample of N media files (with --seed).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --limit sample.")] = 0,
    k: Annotated[
        list[str] | None,
        typer.Option(
            "--k", help="Cut-offs for recall@k etc., comma-separated or repeated (1,5,10)."
        ),
    ] = None,
    ann: Annotated[
        bool,
        typer.Option(
            "--ann", help="Also answer the queries with the ANN index: recall and latency."
        ),
    ] = False,
    ef: Annotated[
        list[str] | None,
        typer.Option(
            "--ef",
            help="hnswlib ef values for --ann (comma-separated or repeated; implies --ann): a "
            "recall/latency trade-off table.",
            show_default=False,
        ),
    ] = None,
    per_query: Annotated[
        str | None,
        typer.Option(
            "--per-query",
            help="Write one JSON line per query (direction, query, ranked, relevant, "
            "first_relevant_rank) to FILE.",
            show_default=False,
        ),
    ] = None,
    prompt_template: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt-template",
            help="Zero-shot prompt for class folders, '{}' standing for the class name "
            "(repeatable: the prompts are averaged). Default: 'a photo of a {}.' / "
            "'this is a sound of {}.'",
            show_default=False,
        ),
    ] = None,
    direction: Annotated[
        list[str] | None,
        typer.Option(
            "--direction",
            help=f"Only these directions (repeatable): {', '.join(DIRECTIONS)}.",
            show_default=False,
        ),
    ] = None,
    distractors: Annotated[
        bool,
        typer.Option(
            "--distractors",
            help="With --index: rank against every file of the index, files outside the "
            "dataset counting as not relevant.",
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Items per encoder batch.")] = 32,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Decode processes (0: decode in-process).", show_default=False),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the aggregate as one JSON document.")
    ] = False,
    table: Annotated[
        bool, typer.Option("--table", help="Tables even when the output is not a terminal.")
    ] = False,
) -> None:
    """Measure retrieval quality on a labelled dataset: recall@k, MRR, mAP, nDCG, P/R/F1 for
    every direction (text→image, image→text, image→image, text→audio, audio→text), and with
    --ann what the ANN index costs against exact search.

    Exit status: 0 on success, 2 for a usage or input error."""
    if json_output and table:
        raise UsageError("choose one output format: --json or --table")
    efs = _ints(ef or [], "--ef")
    if index is None:
        model = model or os.environ.get("MMFIND_MODEL") or None
        audio_model = audio_model or os.environ.get("MMFIND_AUDIO_MODEL") or None
    options = EvalOptions(
        format=format,
        media_root=media_root,
        split=split,
        index=index,
        model=model,
        audio_model=audio_model,
        device=device,
        batch_size=batch_size,
        workers=workers,
        limit=limit,
        seed=seed,
        ks=_ints(k, "--k") if k else (1, 5, 10),
        ann=ann or bool(efs),
        efs=efs,
        templates=prompt_template or (),
        directions=direction or (),
        distractors=distractors,
    )
    with ExitStack() as stack:
        sink = stack.enter_context(_per_query_sink(per_query)) if per_query else None
        reporter = PhaseProgress(_LABELS) if stderr_is_tty() else None
        if reporter is not None:
            stack.enter_context(reporter.progress)
        result = run_eval(path, options, progress=reporter, per_query=sink)
    for message in result.notes:
        note(message)
    if json_output:
        print_json(result.to_json())
    elif use_table(table):
        _tables(result)
    else:
        write_lines(_plain(result))


def _ints(values: list[str], flag: str) -> tuple[int, ...]:
    out: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                number = int(part)
            except ValueError:
                raise UsageError(f"{flag} takes whole numbers, not {part!r}") from None
            if number < 1:
                raise UsageError(f"{flag} values must be at least 1, not {number}")
            out.append(number)
    if values and not out:
        raise UsageError(f"{flag} needs at least one number")
    return tuple(dict.fromkeys(out))


class _JsonLines:
    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def __call__(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record, ensure_ascii=False) + "\n")


@contextmanager
def _per_query_sink(target: str) -> Iterator[_JsonLines]:
    try:
        fh = open(target, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InputError(f"cannot write --per-query file {target}: {exc.strerror}") from None
    with fh:
        yield _JsonLines(fh)


# -- rendering ---------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _title(result: EvalReport) -> str:
    ds = result.dataset
    data = result.to_json()["dataset"]
    what = f"{data['media']} {'images' if ds.modality == 'image' else 'sounds'}"
    if ds.is_classes:
        what += f", {data['classes']} classes"
    else:
        what += f", {data['captions']} captions"
    split = f" ({ds.split} split)" if ds.split else ""
    where = "throw-away index" if result.index is None else f"index {result.index}"
    return f"{ds.format}{split}: {what}; {result.model} on {result.device}; {where}"


def _tables(result: EvalReport) -> None:
    console = out_console()
    depth = max(result.ks)
    table = Table(title=_title(result), title_justify="left")
    table.add_column("direction")
    table.add_column("queries", justify="right")
    for k in result.ks:
        table.add_column(f"R@{k}", justify="right")
    for name in ("MRR", f"mAP@{depth}", f"nDCG@{depth}", f"P@{depth}", f"R_set@{depth}"):
        table.add_column(name, justify="right")
    table.add_column(f"F1@{depth}", justify="right")
    for name, d in result.directions.items():
        m = d.metrics
        cells = [name.replace("_to_", "→"), str(d.queries)]
        cells += [_pct(m[f"recall@{k}"]) for k in result.ks]
        cells += [
            _pct(m["mrr"]),
            _pct(m[f"map@{depth}"]),
            _pct(m[f"ndcg@{depth}"]),
            _pct(m[f"precision@{depth}"]),
            _pct(m[f"set_recall@{depth}"]),
            _pct(m[f"f1@{depth}"]),
        ]
        table.add_row(*cells)
    table.caption = (
        "percent. R@k: queries with a relevant item in the top k (the cross-modal recall); "
        f"MRR over the top {depth}; R_set: share of a query's relevant items found"
    )
    if result.dataset.is_classes:
        modality = result.dataset.modality
        table.caption += f"; {modality}→text ranks the class prompts: R@1 = zero-shot accuracy"
    console.print(table)
    if result.ann is not None:
        console.print(_ann_table(result))


def _ann_table(result: EvalReport) -> Table:
    assert result.ann is not None
    ann = result.ann
    small, big = min(result.ks), max(result.ks)
    depth = max(result.ks)
    table = Table(
        title=f"ANN (hnswlib M={ann.m}, ef_construction={ann.ef_construction}, "
        f"{ann.items} vectors, {ann.bytes / 1e6:.1f} MB) against exact search",
        title_justify="left",
    )
    for name in ("ef", "direction", f"ANN recall@{small}", f"ANN recall@{big}"):
        table.add_column(name, justify="right" if name != "direction" else "left")
    for name in (f"ΔR@{small}", f"ΔR@{big}", f"ΔmAP@{depth}"):
        table.add_column(name, justify="right")
    for name in ("ANN p50/p95 ms", "exact p50/p95 ms"):
        table.add_column(name, justify="right")
    for run in ann.runs:
        for name, d in run.directions.items():
            loss = d.loss
            lat = d.latency_ms
            table.add_row(
                str(run.ef),
                name.replace("_to_", "→"),
                _pct(d.ann_recall[small]),
                _pct(d.ann_recall[big]),
                f"{-100 * loss[f'recall@{small}']:+.2f}",
                f"{-100 * loss[f'recall@{big}']:+.2f}",
                f"{-100 * loss[f'map@{depth}']:+.2f}",
                f"{lat['ann_p50']:.2f} / {lat['ann_p95']:.2f}",
                f"{lat['exact_p50']:.2f} / {lat['exact_p95']:.2f}",
            )
    table.caption = (
        "ANN recall@k: share of the exact top k that the ANN finds. Δ: ANN minus exact, in "
        "points. Latency: one query after encoding (ANN: mmfind's search with its catalog join; "
        "exact: brute force over the vectors in memory with the same join). hnswlib never "
        "searches with ef below the number of candidates mmfind asks for, so small ef values "
        "behave alike"
    )
    return table


def _plain(result: EvalReport) -> list[str]:
    lines = []
    for name, d in result.directions.items():
        values = " ".join(f"{k}={v:.4f}" for k, v in d.metrics.items())
        lines.append(f"{name} queries={d.queries} {values}")
    if result.ann is not None:
        for run in result.ann.runs:
            for name, a in run.directions.items():
                recall = " ".join(f"ann_recall@{k}={v:.4f}" for k, v in a.ann_recall.items())
                loss = " ".join(f"loss_{k}={v:.4f}" for k, v in a.loss.items())
                lat = " ".join(f"{k}_ms={v:.3f}" for k, v in a.latency_ms.items())
                lines.append(f"ann ef={run.ef} {name} {recall} {lat} {loss}")
    return lines
