"""The Typer application: wires commands, maps errors to exit codes in one place."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from mmfind import __version__
from mmfind.cli.render import error
from mmfind.errors import MmfindError

EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="mmfind",
    help="Search your own media by meaning: index folders, then query by text or by example.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

IndexOption = Annotated[
    str | None,
    typer.Option(
        "--index",
        help="Index directory (default: $MMFIND_HOME, else $XDG_DATA_HOME/mmfind).",
        show_default=False,
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(func: F) -> F:
    """Typed errors become a one-line message and their exit code; nothing prints a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except MmfindError as exc:
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted; the index keeps everything committed so far")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # the reader went away (`mmfind query x | head -1`): not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        except Exception as exc:
            if os.environ.get("MMFIND_DEBUG"):
                traceback.print_exc()
            error(
                f"internal error: {type(exc).__name__}: {exc} "
                "(set MMFIND_DEBUG=1 for a traceback, and please report it)"
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mmfind {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """mmfind: search your photos by meaning."""


def _register() -> None:
    from mmfind.cli import doctor, index, info, query, serve
    from mmfind.cli import eval as eval_cli

    app.command("index")(index.index_command)
    app.command("query")(query.query_command)
    app.command("info")(info.info_command)
    app.command("serve")(serve.serve_command)
    app.command("eval")(eval_cli.eval_command)
    app.command("doctor")(doctor.doctor_command)


_register()


def main() -> None:
    app()
