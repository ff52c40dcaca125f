"""`mmfind doctor`: check the index; `--repair` rebuilds what the catalog can rebuild."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from mmfind import config
from mmfind.cli.app import IndexOption, handles_errors
from mmfind.cli.render import out_console, print_json, use_table, warn, write_lines
from mmfind.doctor import OK, PROBLEM, WARNING, Check, DoctorReport, run_doctor

_STYLE = {OK: "green", WARNING: "yellow", PROBLEM: "bold red"}


@handles_errors
def doctor_command(
    index: IndexOption = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Rebuild what the catalog can rebuild (ANN files, stray files), and say so.",
        ),
    ] = False,
    full: Annotated[
        bool,
        typer.Option("--full", help="SQLite integrity_check instead of quick_check (slower)."),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Check the index: catalog integrity, schema, ANN files against the catalog, roots, lock.

    Exit status: 0 healthy, 1 problems found (after --repair: problems left)."""
    report = run_doctor(config.index_dir(index), full=full, repair=repair)
    if json_output:
        print_json(_json(report))
    elif use_table():
        _table(report)
    else:
        write_lines(_plain_line(c) for c in report.checks)
    if not json_output:
        for line in report.repairs:
            warn(f"repaired: {line}")
        for line in report.not_repaired:
            warn(f"not repaired: {line}")
        warn(_verdict(report))
    if not report.healthy:
        raise typer.Exit(1)


def _status(check: Check) -> str:
    return "repaired" if check.repaired and check.status != PROBLEM else check.status


def _detail(check: Check) -> str:
    if check.repaired:
        return f"{check.found} → {check.repaired}"
    if check.advice and check.status != OK:
        return f"{check.detail} ({check.advice})"
    return check.detail


def _plain_line(check: Check) -> str:
    return f"{check.name}\t{_status(check)}\t{_detail(check)}"


def _table(report: DoctorReport) -> None:
    table = Table(title=f"mmfind doctor: {report.index}", title_justify="left")
    table.add_column("check", style="bold")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        status = _status(check)
        style = "cyan" if status == "repaired" else _STYLE.get(status, "")
        table.add_row(check.name, Text(status, style=style), _detail(check))
    out_console().print(table)


def _verdict(report: DoctorReport) -> str:
    problems = len(report.problems)
    if not problems:
        repaired = sum(1 for c in report.checks if c.repaired)
        warnings = sum(1 for c in report.checks if c.status == WARNING)
        notes = [f"{repaired} repaired"] if repaired else []
        notes += [f"{warnings} warning(s)"] if warnings else []
        return "mmfind: healthy" + (f" ({', '.join(notes)})" if notes else "")
    fixable = sum(1 for c in report.problems if c.fix)
    hint = (
        f"; `mmfind doctor --repair` fixes {fixable} of them"
        if fixable and not report.repair_requested
        else ""
    )
    return f"mmfind: {problems} problem(s) found{hint}"


def _json(report: DoctorReport) -> dict[str, Any]:
    return {
        "index": report.index,
        "healthy": report.healthy,
        "checks": [
            {
                "name": c.name,
                "status": c.status,
                "detail": c.detail,
                "advice": c.advice,
                "found": c.found,
                "repaired": c.repaired,
            }
            for c in report.checks
        ],
        "repairs": report.repairs,
        "not_repaired": report.not_repaired,
    }
