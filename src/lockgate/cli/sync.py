"""`lockgate plan`, `sync`, `runs`, `history`: run syncs and look at what they did."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from lockgate.cli import signals_let_requests_finish
from lockgate.cli.options import json_option, open_project, project_option
from lockgate.console import RichConsole
from lockgate.errors import ConfigError, LockgateError, StateError
from lockgate.project.loader import Project
from lockgate.state.store import StateStore, read_runs_log
from lockgate.sync.run import KIND_ORDER, RunReport, Session, plan_sync, run_sync


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def _remapped_row(c: Any) -> list[tuple[str, Any]]:
    """The changed records sent again only because the mapping changed, when there are any."""
    return [("  of which only for the mapping change", c.remapped)] if c.remapped else []


def change_rows(report: RunReport) -> list[tuple[str, Any]]:
    """The counts worth showing for a report, as (label, value) rows."""
    c = report.changes
    rows: list[tuple[str, Any]] = [("rows in model", c.rows), ("rows rejected", c.rejected)]
    if c.kind in ("objects", "relationships"):
        noun = "objects" if c.kind == "objects" else "relationships"
        rows += [
            (f"{noun} new to this sync", c.new),
            (f"{noun} changed", c.changed),
            *_remapped_row(c),
            (f"{noun} unchanged (not sent)", c.unchanged),
            (f"{noun} removed from model", c.removed),
            (
                "  of which removed in Customer.io (mirror)"
                if c.kind == "relationships"
                else "  of which cleared/deleted (mirror)",
                c.removed_sent,
            ),
        ]
        if c.kind == "relationships":
            rows.append(("held: person or object not synced yet", c.held))
        else:
            rows += [
                ("attributes set", c.attributes_set),
                ("attributes cleared", c.attributes_cleared),
            ]
    elif c.kind == "people":
        if report.identity_ops:
            rows += [
                ("identity merges, sent first", report.identity_merges),
                (
                    "  identifiers re-applied after them",
                    len(report.identity_ops) - report.identity_merges,
                ),
            ]
        rows += [
            ("people new to this sync", c.new),
            ("people changed", c.changed),
            *_remapped_row(c),
            ("people unchanged (not sent)", c.unchanged),
            ("people removed from model", c.removed),
            ("  of which cleared/deleted (mirror)", c.removed_sent),
            *(
                [
                    (
                        "  of which kept: another row still syncs the person",
                        c.removed - c.removed_sent,
                    )
                ]
                if report.mode == "mirror" and c.removed > c.removed_sent
                else []
            ),
            ("attributes set", c.attributes_set),
            ("attributes cleared", c.attributes_cleared),
        ]
        if c.shared_person:
            rows.append(
                ("rows sharing a person with another row (last sent wins)", c.shared_person)
            )
    else:
        rows += [
            ("events new", c.new),
            ("duplicates prevented (already delivered)", c.already_delivered),
            ("duplicates prevented (repeated in model)", c.duplicates_in_model),
            ("backfill skipped (older than max_age)", c.backfill_skipped),
            ("backfill sent", c.backfill_sent),
        ]
    if c.state_events:
        rows.append(("on_change events fired", c.state_events))
    if report.status != "planned":
        rows += [
            ("delivered", report.delivered),
            ("rejected by Customer.io", report.rejected_by_api),
            ("dead-lettered after retries", report.dead_lettered),
        ]
    return rows


def _kind_and_mode(report: RunReport) -> str:
    """`people, upsert` (the mode in the title, so the table's column holds counts only and
    right-aligns them)."""
    if not report.mode or report.kind == "events":
        return report.kind
    return f"{report.kind}, {report.mode}"


def render_report(console: RichConsole, report: RunReport) -> None:
    title = f"{report.sync} ({_kind_and_mode(report)}) — {report.status}" + (
        f" in {report.seconds:.1f}s" if report.status != "planned" else ""
    )
    console.table(title, ["", "count"], change_rows(report))
    if report.changes.rejected_samples:
        console.table(
            f"{report.sync}: rows rejected (first {len(report.changes.rejected_samples)})",
            ["key", "reason"],
            list(report.changes.rejected_samples),
        )
    if report.changes.shared_samples:
        console.table(
            f"{report.sync}: rows that reach one person (first "
            f"{len(report.changes.shared_samples)}; their attributes overwrite each other: "
            "dedupe the model, or add an `identity:` section)",
            ["person", "keys"],
            list(report.changes.shared_samples),
        )
    if report.changes.held_samples:
        console.table(
            f"{report.sync}: held until both ends exist (first {len(report.changes.held_samples)})",
            ["key", "reason"],
            list(report.changes.held_samples),
        )
    if report.guards:
        console.table(
            f"{report.sync}: guardrails",
            ["guardrail", "limit", "this run", "status"],
            [
                (g.name, g.limit, g.actual, "BREACHED" if g.breached else "ok")
                for g in report.guards
            ],
        )
    if report.failures:
        # one line per distinct answer: Customer.io down gives every record the same reason
        grouped: dict[tuple[str, str], list[str]] = {}
        for key, outcome, reason in report.failures:
            grouped.setdefault((outcome, reason), []).append(key)
        shown = len(report.failures)
        total = report.rejected_by_api + report.dead_lettered
        console.table(
            f"{report.sync}: records not delivered"
            + (f" (the first {shown} of {total})" if total > shown else ""),
            ["outcome", "reason", "records", "keys"],
            [
                (outcome, reason, len(keys), ", ".join(keys[:5]) + (", …" if len(keys) > 5 else ""))
                for (outcome, reason), keys in grouped.items()
            ],
        )
        console.info(
            f"{report.sync}: {total} records not delivered are not in the snapshot: the next "
            "run sends them again (fix the rejected ones' rows first)."
        )


@click.command()
@click.argument("sync_names", nargs=-1)
@click.option("--all", "plan_all", is_flag=True, help="Plan every sync in the project.")
@project_option
@json_option
@click.option("--full-resync", is_flag=True, help="Compare against an empty snapshot.")
@click.option("--samples", default=3, show_default=True, help="Sample payloads to show.")
def plan(
    sync_names: tuple[str, ...],
    plan_all: bool,
    project_path: Path,
    as_json: bool,
    full_resync: bool,
    samples: int,
) -> None:
    """Show what `lockgate sync SYNC_NAME...` (or `--all`) would send, without sending
    anything. `--json` prints one report for one sync, a list for several."""
    project = open_project(project_path)
    names = _sync_names(project, sync_names, plan_all)
    console = RichConsole(quiet=as_json)
    # the plans of one command share the identity graph and the state store, as syncs do
    with Session() as session:
        reports, failed = _each(
            names,
            lambda name: plan_sync(
                project,
                name,
                console=console,
                full_resync=full_resync,
                samples=samples,
                session=session,
            ),
            console,
            "plan",
            None if as_json else lambda report: _render_plan(console, report, samples),
        )
    _finish(reports, failed, "plan", as_json=as_json, one=len(sync_names) == 1 and not plan_all)


Failures = list[tuple[str, LockgateError]]


def _each(
    names: list[str],
    work: Callable[[str], RunReport],
    console: RichConsole,
    what: str,
    show: Callable[[RunReport], None] | None,
) -> tuple[list[RunReport], Failures]:
    """``work`` for every sync named. With several, one sync's failure (a guardrail, a broken
    model) does not stop the others: their data is independent, and a relationship whose end
    is missing waits. ``show`` draws each report as it comes."""
    reports: list[RunReport] = []
    failed: Failures = []
    for name in names:
        try:
            report = work(name)
        except LockgateError as exc:
            if len(names) == 1:
                raise
            failed.append((name, exc))
            console.warn(f"{what} of `{name}` failed, the others go on: {exc}")
            continue
        reports.append(report)
        if show is not None:
            show(report)
    return reports, failed


def _finish(
    reports: list[RunReport], failed: Failures, what: str, *, as_json: bool, one: bool
) -> None:
    """The reports as JSON (a list, or with ``one`` the only report), then exit 1 naming the
    syncs that failed, if any did."""
    if as_json:
        docs = [report.as_dict() for report in reports]
        docs += [{"sync": n, "status": "failed", "error": str(e)} for n, e in failed]
        _print_json(docs[0] if one and docs else docs)
    if failed:
        total = len(reports) + len(failed)
        raise LockgateError(
            f"{len(failed)} of {total} {what}s failed: {', '.join(n for n, _ in failed)}",
            hint=f"each one's error is above; the other syncs' {what}s went on",
        )


def _render_plan(console: RichConsole, report: RunReport, samples: int) -> None:
    render_report(console, report)
    for op in report.identity_ops[:samples]:
        console.info("[bold]identity operation[/bold] (sent before the sync's own changes):")
        console.info(orjson.dumps(op, option=orjson.OPT_INDENT_2).decode())
    for sample in report.samples:
        console.info(f"[bold]sample payload[/bold] (key {sample['key']}):")
        console.info(orjson.dumps(sample["payload"], option=orjson.OPT_INDENT_2).decode())


def _sync_names(project: Project, names: tuple[str, ...], every: bool) -> list[str]:
    """The syncs a command names, or with ``every`` all of them in the order `sync --all`
    runs them (objects before the relationships that need them)."""
    if every:
        return sorted(project.syncs, key=lambda n: KIND_ORDER[project.syncs[n].kind])
    if not names:
        raise ConfigError(
            "name a sync, or pass `--all`",
            hint=f"syncs: {', '.join(sorted(project.syncs)) or 'none'}",
        )
    return list(names)


@click.command()
@click.argument("sync_names", nargs=-1)
@click.option("--all", "run_all", is_flag=True, help="Run every sync in the project.")
@project_option
@json_option
@click.option(
    "--full-resync",
    is_flag=True,
    help="Send every person again (events stay exactly-once: the ledger is kept).",
)
@click.option("--force", is_flag=True, help="Run even if a guardrail is breached (this run only).")
def sync(
    sync_names: tuple[str, ...],
    run_all: bool,
    project_path: Path,
    as_json: bool,
    full_resync: bool,
    force: bool,
) -> None:
    """Run one or more syncs: send only what changed, record what was delivered."""
    project = open_project(project_path)
    names = _sync_names(project, sync_names, run_all)
    console = RichConsole(quiet=as_json)
    # the syncs of this command resolve the identity graph once and share the state store
    with signals_let_requests_finish(), Session() as session:
        reports, failed = _each(
            names,
            lambda name: run_sync(
                project,
                name,
                console=console,
                full_resync=full_resync,
                force=force,
                session=session,
            ),
            console,
            "sync",
            None if as_json else lambda report: render_report(console, report),
        )
    _finish(reports, failed, "sync", as_json=as_json, one=False)
    if any(r.status != "success" for r in reports):
        sys.exit(2)


@click.command()
@project_option
@json_option
@click.option("--sync", "sync_name", default=None, help="Only this sync's runs.")
@click.option("--limit", default=20, show_default=True)
def runs(project_path: Path, as_json: bool, sync_name: str | None, limit: int) -> None:
    """List recent runs with their counts and outcome."""
    project = open_project(project_path)
    busy = None
    try:
        with StateStore.open(project.state_dir) as store:
            rows = store.runs(sync=sync_name, limit=limit)
    except StateError as exc:
        if "in use" not in exc.reason:
            raise
        # a sync holds the state: list the runs from the log it keeps beside it
        busy = exc.reason
        rows = read_runs_log(project.state_dir, sync=sync_name, limit=limit)
    if as_json:
        _print_json([dataclasses.asdict(r) for r in rows])
        return
    console = RichConsole()
    if busy:
        console.info(f"{busy}: runs as of its start (runs.json)")
    console.table(
        "runs",
        ["run", "sync", "started", "status", "sent", "delivered", "rejected", "dead-lettered"],
        [
            (
                r.run_id,
                r.sync,
                f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                r.status,
                r.counts.get("changes", {}).get("to_send", ""),
                r.counts.get("delivered", ""),
                r.counts.get("rejected_by_api", ""),
                r.counts.get("dead_lettered", ""),
            )
            for r in rows
        ],
    )


@click.command()
@click.option("--person", required=True, help="A record key or identifier value (id, email).")
@project_option
@json_option
@click.option("--limit", default=200, show_default=True)
def history(person: str, project_path: Path, as_json: bool, limit: int) -> None:
    """Every call made for one person: when, what, and the API's answer."""
    project = open_project(project_path)
    with StateStore.open(project.state_dir) as store:
        rows = store.history(person, limit=limit)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        days = project.config.history_days
        kept = f" in the last {days} days (`history_days`)" if days is not None else ""
        RichConsole().info(
            f"No call recorded for `{person}`{kept}. A person is found by a record key, an "
            "`id`, an email in any case, a `cio_id` or an anonymous id exactly as sent; "
            "`lockgate plan SYNC` shows what a sync would send."
        )
        return
    RichConsole().table(
        f"history of {person}",
        ["at", "sync", "run", "action", "outcome", "status", "reason"],
        [
            (
                f"{r['sent_at']:%Y-%m-%d %H:%M:%S}",
                r["sync"],
                r["run_id"],
                r["action"],
                r["outcome"],
                r["status"] if r["status"] is not None else "",
                r["reason"] or "",
            )
            for r in rows
        ],
    )
