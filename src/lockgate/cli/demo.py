"""`lockgate demo`: the two-act demo on the embedded warehouse and the local emulator."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import click
from rich.text import Text

from lockgate.cli.sync import render_report
from lockgate.console import RichConsole
from lockgate.sync.run import RunReport


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Where to build the demo project (a previous demo's folder is replaced; any other "
    "existing folder is refused).",
)
def demo(directory: Path) -> None:
    """Build a sample DuckDB warehouse, sync it into a local Customer.io emulator, twice."""
    from lockgate.demo import run_demo

    console = RichConsole()
    result = run_demo(directory.resolve(), console)
    for act, reports in enumerate(result.acts, start=1):
        console.info(Text.assemble("\n", (f"Act {act} report", "bold")))
        for report in reports:
            render_report(console, report, where_rejected=False)

    def total(kind: str, count: Callable[[RunReport], int]) -> Callable[[int], int]:
        return lambda act: sum(count(r) for r in result.acts[act] if r.kind == kind)

    metrics: list[tuple[str, Callable[[int], int]]] = [
        ("people new to the sync", total("people", lambda r: r.changes.new)),
        ("people changed", total("people", lambda r: r.changes.changed)),
        ("people unchanged (not sent)", total("people", lambda r: r.changes.unchanged)),
        ("events sent", total("events", lambda r: r.delivered)),
        (
            "duplicate events prevented",
            total("events", lambda r: r.changes.already_delivered + r.changes.duplicates_in_model),
        ),
        ("backfill events held back", total("events", lambda r: r.changes.backfill_skipped)),
        (
            "Stripe rows put on the app's person (no duplicate profile)",
            lambda act: sum(r.delivered for r in result.acts[act] if r.sync == "billing"),
        ),
        (
            "duplicates merged in Customer.io (total)",
            lambda act: result.merges_in_customerio[act],
        ),
        ("objects (companies) sent", total("objects", lambda r: r.delivered)),
        ("relationships sent", total("relationships", lambda r: r.delivered)),
        (
            "relationships held (person or company not synced yet)",
            total("relationships", lambda r: r.changes.held),
        ),
        (
            "rows rejected (with reasons above)",
            lambda act: sum(r.changes.rejected for r in result.acts[act]),
        ),
        ("people in Customer.io", lambda act: result.people_in_customerio[act]),
        ("events in Customer.io", lambda act: result.events_in_customerio[act]),
        ("objects in Customer.io", lambda act: result.objects_in_customerio[act]),
        ("relationships in Customer.io", lambda act: result.relationships_in_customerio[act]),
    ]
    acts = range(len(result.acts))
    console.table(
        "What went out, act by act",
        ["", *(f"act {i + 1}" for i in acts)],
        [(label, *(value(act) for act in acts)) for label, value in metrics],
    )
    loop = result.engagement
    if loop is not None:
        console.table(
            "Act 3: engagement back into the warehouse, and out again",
            ["", "count"],
            [
                ("people who got the email", loop.people),
                ("reporting webhooks sent (signed)", loop.sent),
                ("acknowledged (durable before 200)", loop.acknowledged),
                ("loaded into warehouse table customerio.email", loop.loaded),
                ("people updated by the email_engagement sync", loop.report.delivered),
                ("people with last_email_opened_at in Customer.io", result.people_with_opens),
            ],
        )
    # from `make demo` the command lives in .venv/bin: show the path that works as typed
    exe = "lockgate"
    venv_exe = Path(sys.prefix, "bin", "lockgate")
    if sys.prefix != sys.base_prefix and venv_exe.exists() and not shutil.which("lockgate"):
        exe = os.path.relpath(venv_exe)
    console.info(
        Text.assemble(
            "\nThe demo project is in ",
            (str(result.directory), "bold"),
            f": try `{exe} plan customer_profile --project {directory}`, "
            f"`{exe} runs show --sync customer_profile --project {directory}` (a run whole, with "
            f"its rejected rows) or `{exe} history --person 1 --project {directory}`. Every run "
            "is also in the warehouse (`run_log:`): `select * from lockgate.sync_runs` in "
            f"{directory}/warehouse.duckdb.",
        )
    )
