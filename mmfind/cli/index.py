"""`mmfind index`: scan folders and embed what is new or changed."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from mmfind import config
from mmfind.cli.app import IndexOption, handles_errors
from mmfind.cli.render import (
    PhaseProgress,
    out_console,
    print_json,
    stderr_is_tty,
    use_table,
    warn,
    write_lines,
)
from mmfind.config import DEFAULT_FRAME_INTERVAL_S, DEFAULT_MAX_DURATION_S, DEFAULT_MAX_PIXELS
from mmfind.store.catalog import display_path

if TYPE_CHECKING:
    from mmfind.indexer import IndexSummary


@handles_errors
def index_command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Folders or files to index. None: refresh every folder indexed before."
        ),
    ] = None,
    index: IndexOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            envvar="MMFIND_MODEL",
            help="Image-text model: a preset (default, laion-b32, siglip2-b32, siglip-b16, "
            "multilingual), open_clip ARCH:PRETRAINED, hf-hub:ORG/REPO, or ARCH:/path/to/"
            "checkpoint. Default: the index's model, or 'default' for a new index.",
            show_default=False,
        ),
    ] = None,
    audio_model: Annotated[
        str | None,
        typer.Option(
            envvar="MMFIND_AUDIO_MODEL",
            help="Audio-text model (CLAP): a preset (default, larger), a Hugging Face repo id "
            "or a local model folder. Default: the index's, or laion/clap-htsat-unfused "
            "(test-tiny-clap when --model is test-tiny).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    batch_size: Annotated[
        int, typer.Option(min=1, help="Items (images, frames, windows) per encoder batch.")
    ] = 32,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Decode processes (0: decode in-process).", show_default=False),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            help="Skip matching files/folders (glob; repeatable). Without '/': any name; "
            "with '/': the path relative to the root."
        ),
    ] = None,
    follow_symlinks: Annotated[
        bool, typer.Option(help="Follow symbolic links (loops are detected).")
    ] = False,
    max_pixels: Annotated[
        int,
        typer.Option(
            envvar="MMFIND_MAX_PIXELS", min=1, help="Refuse images with more pixels than this."
        ),
    ] = DEFAULT_MAX_PIXELS,
    frame_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between the video frames that are indexed.")
    ] = DEFAULT_FRAME_INTERVAL_S,
    max_duration: Annotated[
        float,
        typer.Option(
            envvar="MMFIND_MAX_DURATION",
            min=1,
            help="Index at most this many seconds of each video or audio file.",
        ),
    ] = DEFAULT_MAX_DURATION_S,
    reembed: Annotated[
        bool,
        typer.Option(
            help="Re-encode a space whose --model/--audio-model differs from the index's."
        ),
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option(help="Retry files that failed before even if they did not change.")
    ] = False,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for another index run to finish.")
    ] = 0.0,
    gpu_decode: Annotated[
        str,
        typer.Option(
            hidden=True,
            help="auto, on or off: decode JPEGs batched on the encoder's device (auto: on CUDA).",
        ),
    ] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no summary.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Index folders of photos, videos, audio and text files (incremental: only new and changed
    files are read)."""
    from mmfind.indexer import IndexOptions, run_index  # (decoders: not for other commands)

    options = IndexOptions(
        paths=paths or (),
        model=model,
        audio_model=audio_model,
        frame_interval_s=frame_interval,
        max_duration_s=max_duration,
        device=device,
        batch_size=batch_size,
        workers=config.default_workers() if workers is None else workers,
        excludes=exclude or (),
        follow_symlinks=follow_symlinks,
        max_pixels=max_pixels,
        reembed=reembed,
        retry_failed=retry_failed,
        wait_s=wait,
        gpu_decode=gpu_decode,
    )
    show_progress = stderr_is_tty() and not quiet
    reporter = PhaseProgress(_LABELS, rated=frozenset({"index"})) if show_progress else None
    with reporter.progress if reporter else nullcontext():
        summary = run_index(config.index_dir(index), options, progress=reporter)
    if json_output:
        print_json(summary.counts())
    elif not quiet:
        _print_summary(summary)


_LABELS = {
    "scan": "Scanning",
    "model": "Loading model",
    "index": "Indexing",
    "finish": "Saving search index",
}


def _print_summary(summary: IndexSummary) -> None:
    console = out_console()
    counts = summary.counts()
    if use_table():
        models = ", ".join(summary.models.values())
        table = Table(title=f"Indexed in {summary.seconds:.1f} s with {models}")
        for key in counts:
            table.add_column(key, justify="right")
        table.add_row(*(str(v) for v in counts.values()))
        console.print(table)
    else:
        write_lines([" ".join(f"{k}={v}" for k, v in counts.items())])
    if summary.failure_reasons:
        reasons = ", ".join(f"{n}× {r}" for r, n in summary.failure_reasons.most_common(5))
        warn(f"{summary.failed} file(s) failed: {reasons} (`mmfind info --failures` lists them)")
    for problem in summary.problems[:10]:
        warn(
            f"warning: {display_path(problem.path)}: {problem.reason} (its indexed files are kept)"
        )
    if len(summary.problems) > 10:
        warn(f"warning: … and {len(summary.problems) - 10} more folder problems")
    for message in summary.notes:
        warn(f"warning: {message}")
