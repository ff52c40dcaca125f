"""`mmfind serve`: keep the models and the index loaded so queries answer in milliseconds."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from mmfind import config
from mmfind.cli.app import IndexOption, handles_errors
from mmfind.cli.render import note
from mmfind.server import Server
from mmfind.server import stop as stop_running_server


@handles_errors
def serve_command(
    index: IndexOption = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    stop_server: Annotated[
        bool, typer.Option("--stop", help="Stop the server of this index and exit.")
    ] = False,
    idle_timeout: Annotated[
        float | None,
        typer.Option(
            min=1, help="Stop after this many seconds without a query.", show_default=False
        ),
    ] = None,
) -> None:
    """Answer `mmfind query` from a resident process (models and ANN files stay loaded).

    While it runs, every `mmfind query` on the same index is sent to it; without it, queries
    load everything themselves. Stop it with Ctrl-C (or SIGTERM)."""
    index_dir = config.index_dir(index)
    if stop_server:
        if not stop_running_server(index_dir):
            note(f"no server is running for {index_dir}")
            raise typer.Exit(1)
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)  # unwinds through the server's cleanup (the socket file is removed)

    signal.signal(signal.SIGTERM, stop)

    def ready(path: Path) -> None:
        note(f"serving queries for {index_dir} on {path} (Ctrl-C to stop)")

    with contextlib.suppress(KeyboardInterrupt):
        Server(
            index_dir, device=device, idle_timeout_s=idle_timeout, on_ready=ready
        ).serve_forever()
