"""`lockgate reconcile SYNC`: what Customer.io holds for a sync's people, against the warehouse."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson

from lockgate.cli.options import json_option, open_project, project_option
from lockgate.console import RichConsole
from lockgate.sync.reconcile import ReconcileReport
from lockgate.sync.reconcile import reconcile as run_reconcile
from lockgate.sync.reconcile_events import EventsReconcileReport


def _value(value: object) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return repr(text) if isinstance(value, str) else text


def render(console: RichConsole, report: ReconcileReport) -> None:
    """The report as rich tables: one row per attribute, then the drifting samples."""
    scope = (
        f"a sample of {report.compared:,} of {report.population:,} people"
        if report.sampled
        else f"all {report.compared:,} people"
    )
    verdict = "DRIFT" if report.drifting else "no drift"
    console.table(
        f"reconcile {report.sync}: {scope} — {verdict}",
        ["attribute", "matched", "differing", "missing in Customer.io"],
        [(a.attribute, a.matched, a.differing, a.missing) for a in report.attributes],
    )
    rows = [
        (a.attribute, key, _value(want), _value(held))
        for a in report.attributes
        for key, want, held in a.samples
    ]
    if rows:
        console.table(
            f"reconcile {report.sync}: samples that drift",
            ["attribute", "key", "warehouse", "Customer.io"],
            rows,
        )
    if report.not_found:
        console.warn(
            f"{report.not_found:,} people are not in Customer.io "
            f"(e.g. {', '.join(report.not_found_samples)})"
        )


def _when(ts: int | None) -> str:
    if ts is None:
        return "(the time of its run)"
    return f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M:%S} UTC ({ts})"


def render_events(console: RichConsole, report: EventsReconcileReport) -> None:
    """The events report: one row per event name, then the missing and duplicated ones."""
    scope = (
        f"the events of a sample of {report.compared:,} of {report.people:,} people"
        if report.sampled
        else f"the events of all {report.compared:,} people"
    )
    verdict = "DRIFT" if report.drifting else "every event found once"
    console.table(
        f"reconcile {report.sync}: {scope} — {verdict}",
        ["event", "found", "missing", "duplicated", "not checked"],
        [(n.name, n.found, n.missing, n.duplicated, n.not_checked) for n in report.names],
    )
    rows = [
        (verdict, name.name, key, person, _when(ts))
        for name in report.names
        for verdict, key, person, ts in name.samples
    ]
    if rows:
        console.table(
            f"reconcile {report.sync}: events missing or duplicated",
            ["", "event", "key", "person", "timestamp"],
            rows,
        )
    for reason, count in sorted(report.not_checked.items()):
        console.info(f"{count:,} events not checked: {reason}")
    if report.not_found:
        console.warn(
            f"{report.not_found:,} people are not in Customer.io; their events count as "
            f"missing (e.g. {', '.join(report.not_found_samples)})"
        )


@click.command()
@click.argument("sync_name")
@project_option
@json_option
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=None,
    help="People to read back (0: all); for an events sync, the people its events went to. "
    "Default: all against a loopback workspace (the emulator), 1000 against a real one.",
)
def reconcile(sync_name: str, project_path: Path, as_json: bool, sample: int | None) -> None:
    """Read back what Customer.io holds for SYNC_NAME and report drift.

    A people sync: drift per attribute against the warehouse. An events sync: per event
    name, the delivered events found, missing and found more than once, looked for in each
    person's activities (those older than the 30 days Customer.io keeps are not checked).

    Exits 2 when anything drifts (a value differs or is missing, a person is not found, an
    event is missing or duplicated).
    """
    project = open_project(project_path)
    console = RichConsole(quiet=as_json)
    report = run_reconcile(project, sync_name, console=console, sample=sample)
    if as_json:
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    elif isinstance(report, EventsReconcileReport):
        render_events(console, report)
    else:
        render(console, report)
    if report.drifting:
        sys.exit(2)
