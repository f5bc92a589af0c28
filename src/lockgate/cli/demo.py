"""`lockgate demo`: the two-act demo on the embedded warehouse and the local emulator."""

from __future__ import annotations

from pathlib import Path

import click

from lockgate.cli.sync import render_report
from lockgate.console import RichConsole


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Where to build the demo project (replaced if it exists).",
)
def demo(directory: Path) -> None:
    """Build a sample DuckDB warehouse, sync it into a local Customer.io emulator, twice."""
    from lockgate.demo import run_demo

    console = RichConsole()
    result = run_demo(directory.resolve(), console)
    for act, reports in enumerate(result.acts, start=1):
        console.info(f"\n[bold]Act {act} report[/bold]")
        for report in reports:
            render_report(console, report)
    metrics: list[tuple[str, list[object]]] = [
        ("people new to the sync", []),
        ("people changed", []),
        ("people unchanged (not sent)", []),
        ("events sent", []),
        ("duplicate events prevented", []),
        ("backfill events held back", []),
        ("rows rejected (with reasons above)", []),
        ("people in Customer.io", []),
        ("events in Customer.io", []),
    ]
    for act, reports in enumerate(result.acts):
        people = [r for r in reports if r.kind == "people"]
        events = [r for r in reports if r.kind == "events"]
        values = [
            sum(r.changes.new for r in people),
            sum(r.changes.changed for r in people),
            sum(r.changes.unchanged for r in people),
            sum(r.delivered for r in events),
            sum(r.changes.already_delivered + r.changes.duplicates_in_model for r in events),
            sum(r.changes.backfill_skipped for r in events),
            sum(r.changes.rejected for r in reports),
            result.people_in_customerio[act],
            result.events_in_customerio[act],
        ]
        for (_, column), value in zip(metrics, values, strict=True):
            column.append(value)
    console.table(
        "What went out, act by act",
        ["", *(f"act {i}" for i in range(1, len(result.acts) + 1))],
        [(label, *column) for label, column in metrics],
    )
    console.info(
        f"\nThe demo project is in [bold]{result.directory}[/bold]: try "
        f"`lockgate plan customer_profile --project {directory}` or "
        f"`lockgate history --person 1 --project {directory}`."
    )
