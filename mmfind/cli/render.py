"""Output helpers: TTY detection, Rich consoles, tables, JSON and path lists."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.style import Style
from rich.text import Text

from mmfind.store.catalog import display_path


def no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def use_table(force: bool = False) -> bool:
    """Tables only for a person at a terminal (or when asked with --table)."""
    return force or (stdout_is_tty() and not no_color())


def out_console() -> Console:
    # NO_COLOR: no escape codes at all (Rich's no_color alone keeps bold, italic and links)
    return Console(
        highlight=False,
        no_color=no_color(),
        soft_wrap=False,
        color_system=None if no_color() else "auto",
    )


def err_console() -> Console:
    return Console(
        stderr=True,
        highlight=False,
        no_color=no_color(),
        color_system=None if no_color() else "auto",
    )


def error(message: str) -> None:
    """One line on stderr, no traceback."""
    sys.stderr.write(f"mmfind: {message}\n")
    sys.stderr.flush()


def note(message: str) -> None:
    sys.stderr.write(f"mmfind: note: {message}\n")
    sys.stderr.flush()


def write_lines(lines: Iterable[str]) -> None:
    """Plain lines on stdout, exactly as given: no wrapping, tabs kept (for pipelines)."""
    out = sys.stdout
    for line in lines:
        out.write(line + "\n")
    out.flush()


def warn(message: str) -> None:
    """A plain line on stderr, never wrapped (unlike a Rich console that is not a terminal)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def write_paths(paths: Iterable[str], *, nul: bool) -> None:
    """Exact file-system bytes, one per line or NUL-terminated, so pipelines can open them."""
    end = b"\0" if nul else b"\n"
    out = sys.stdout.buffer
    for path in paths:
        out.write(os.fsencode(path) + end)
    out.flush()


def path_link(path: str) -> Text:
    """A path as shown in tables: replacement characters for bad UTF-8, clickable file:// link."""
    text = display_path(path)
    try:
        uri = Path(path).as_uri()
    except ValueError:
        return Text(text)
    return Text(text, style=Style(link=uri))


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def mmss(seconds: float | None) -> str:
    if seconds is None:
        return ""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class PhaseProgress:
    """Rich progress on stderr for a core that reports `progress(phase, done, total)`: one bar
    per phase (the previous one hidden), with a rate for the phases named in `rated`."""

    def __init__(self, labels: dict[str, str], *, rated: frozenset[str] = frozenset()) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.labels = labels
        self.rated = rated
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console(),
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        task = self.tasks.get(phase)
        if task is None:
            for other in self.tasks.values():
                self.progress.update(other, visible=False)
            task = self.progress.add_task(self.labels.get(phase, phase), total=total, rate="")
            self.tasks[phase] = task
        self.progress.update(task, completed=done, total=total)
        elapsed = self.progress.tasks[task].elapsed or 0.0
        if phase in self.rated and elapsed > 0.5 and done:
            self.progress.update(task, rate=f"{done / elapsed:.1f}/s")
