"""`lockgate plan`, `sync`, `runs`, `history`: run syncs and look at what they did."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import orjson
from rich.text import Text

from lockgate.cli import signals_let_requests_finish
from lockgate.cli.options import (
    json_option,
    mark_printed_as_json,
    open_project,
    project_option,
)
from lockgate.console import RichConsole
from lockgate.errors import (
    ConfigError,
    LockgateError,
    NothingNamedError,
    StateError,
    StateUnwritableError,
)
from lockgate.project.loader import Project
from lockgate.state.store import StateStore, named_runs, read_runs_log
from lockgate.sync import rejects
from lockgate.sync.run import (
    KIND_ORDER,
    RunReport,
    Session,
    check_destination,
    plan_sync,
    recorded_run,
    run_sync,
    stopped_run,
)

#: `--only KEY` of `plan` and `sync` (docs/sync.md "One person first")
only_option = click.option(
    "--only",
    "only",
    multiple=True,
    metavar="KEY",
    help="Only the records this names (repeatable): a record key, or a person's id, email or "
    "cio_id (all their records). With --full-resync, sent even if unchanged.",
)


Failures = list[tuple[str, LockgateError]]


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


@dataclasses.dataclass
class Progress:
    """How far the syncs (or plans) of one command got: ``names`` those it runs (known once the
    project is read), each one's report or failure as it ends, and the one under way. A
    command stopped half-way (SIGTERM, Ctrl-C) prints it with `--json`."""

    names: list[str]
    reports: list[RunReport] = dataclasses.field(default_factory=list)
    failed: Failures = dataclasses.field(default_factory=list)
    ended: set[str] = dataclasses.field(default_factory=set)
    current: str | None = None
    following: str | None = None
    """The sync whose follow-up run (:func:`follow_ups`) is under way."""

    def stopped(self, stop: BaseException) -> list[dict[str, Any]]:
        """The `--json` documents of a command ``stop`` ended: the reports of the syncs that
        ran, the report of the run it stopped as recorded (status `failed`, error
        `interrupted`, what it delivered so far), and `{sync, status: failed, error: not
        started ...}` for each sync it never began."""
        docs = [report.as_dict() for report in self.reports]
        docs += [failed_doc(n, e) for n, e in self.failed]
        for name in self.names:
            if name in self.ended:
                continue
            if name == self.current:
                docs.append(stopped_run(stop) or _failed(name, "interrupted"))
            else:
                docs.append(_failed(name, "not started: the command was stopped before it"))
        if self.following is not None:
            docs.append(stopped_run(stop) or _failed(self.following, "interrupted"))
        return docs or [_failed(None, "interrupted")]  # stopped while the project was read


def _failed(name: str | None, error: str) -> dict[str, Any]:
    return {"sync": name, "status": "failed", "error": error}


@contextmanager
def _failure_as_json(as_json: bool, progress: Progress, *, one: bool) -> Iterator[None]:
    """With ``as_json``, an error that stops the command before its reports are printed (the
    project does not load, the only sync to run fails) is printed on stdout as each of the
    syncs' `{"sync", "status": "failed", "error"}` (the list as it stands then: the syncs
    named, or `--all`'s once the project is read), in the shape of a success (a list, or with
    ``one`` the only report; `"sync": null` before any sync is known): a script reading stdout
    always gets a document, as it does when one sync of several fails. The error still goes
    to stderr and the exit code stays 1. A stop by SIGTERM or Ctrl-C prints how far the
    command got (:meth:`Progress.stopped`); the exit code stays 143 or 130."""
    try:
        yield
    except LockgateError as exc:
        if as_json:
            docs = [failed_doc(n, exc) for n in progress.names or (None,)]
            _print_json(docs[0] if one and len(docs) == 1 else docs)
            exc.printed_as_json = True
        raise
    except KeyboardInterrupt as stop:
        if as_json:
            docs = progress.stopped(stop)
            _print_json(docs[0] if one and len(docs) == 1 else docs)
            mark_printed_as_json(stop)
        raise


def failed_doc(name: str | None, exc: LockgateError) -> dict[str, Any]:
    """The `--json` document of a sync that failed: `{sync, status: failed, error}`, and when
    its run got as far as its diff (a guardrail stopped it), that run's report (`run_id`, the
    counts, `guardrails`) as a successful run has it."""
    stopped = exc.report
    report = stopped.as_dict() if stopped is not None and stopped.sync == name else {"sync": name}
    if exc.follow_up_of is not None:  # a follow-up run: the sync's first run is a report too
        report["follow_up_of"] = exc.follow_up_of
    return {**report, "status": "failed", "error": str(exc)}


def _remapped_row(c: Any) -> list[tuple[str, Any]]:
    """The changed records sent again only because the mapping changed, or because Customer.io
    did not confirm their last delivery, when there are any."""
    rows = [("  of which only for the mapping change", c.remapped)] if c.remapped else []
    if c.unconfirmed:
        rows.append(("  of which unconfirmed last time (sent again)", c.unconfirmed))
    return rows


def _nulls_only_row(c: Any) -> list[tuple[str, Any]]:
    """The unchanged records whose row changed only to nulls the null policy skips (nothing
    to send, recorded), when there are any."""
    if not c.nulls_only:
        return []
    return [("  of which changed only to nulls (nothing to send)", c.nulls_only)]


def change_rows(report: RunReport) -> list[tuple[str, Any]]:
    """The counts worth showing for a report, as (label, value) rows."""
    c = report.changes
    rows: list[tuple[str, Any]] = [("rows in model", c.rows), ("rows rejected", c.rejected)]
    if c.email_held_sent:
        rows.append(("  of which held back for email, other changes sent", c.email_held_sent))
    if c.kind in ("objects", "relationships"):
        noun = "objects" if c.kind == "objects" else "relationships"
        rows += [
            (f"{noun} new to this sync", c.new),
            (f"{noun} changed", c.changed),
            *_remapped_row(c),
            (f"{noun} unchanged (not sent)", c.unchanged),
            *_nulls_only_row(c),
            (f"{noun} removed from model", c.removed),
            (
                "  of which removed in Customer.io (mirror)"
                if c.kind == "relationships"
                else "  of which cleared/deleted (mirror)",
                c.removed_sent,
            ),
        ]
        if c.removed_gone:
            rows.append(("  of which already deleted in Customer.io (forgotten)", c.removed_gone))
        if c.kind == "relationships":
            rows.append(("held: person or object not sent (or left its model)", c.held))
        else:
            rows += [
                ("attributes set", c.attributes_set),
                ("attributes cleared", c.attributes_cleared),
            ]
    elif c.kind == "people":
        if report.identity_merges or report.identity_reapplied:
            rows += [
                ("identity merges, sent first", report.identity_merges),
                ("  identifiers re-applied after them", report.identity_reapplied),
            ]
        held = len([m for m in report.identity_merges_skipped if _held_for_review(m)])
        off = len(report.identity_merges_skipped) - held
        if off:
            rows.append(("identity merges not sent (merges off)", off))
        if held:
            rows.append(("identity merges held for review (min_path_rank)", held))
        if c.email_releases:
            rows.append(("email releases, sent first", c.email_releases))
        rows += [
            ("people new to this sync", c.new),
            ("people changed", c.changed),
            *_remapped_row(c),
            ("people unchanged (not sent)", c.unchanged),
            *_nulls_only_row(c),
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
            *(
                [("  of which unconfirmed last time (sent again, same id)", c.unconfirmed)]
                if c.unconfirmed
                else []
            ),
            ("duplicates prevented (already delivered)", c.already_delivered),
            ("duplicates prevented (repeated in model)", c.duplicates_in_model),
            ("backfill skipped (older than max_age)", c.backfill_skipped),
            ("backfill sent", c.backfill_sent),
            *(
                [("history recorded, not sent (first run, no timestamps)", c.history_skipped)]
                if c.history_skipped
                else []
            ),
        ]
    if c.state_events:
        rows.append(("on_change events fired", c.state_events))
    if report.identity_anonymous_ids:
        rows.append(("anonymous ids attached, sent after the rows", report.identity_anonymous_ids))
    if report.status != "planned":
        rows += [
            ("delivered", report.delivered),
            ("rejected by Customer.io", report.rejected_by_api),
            ("dead-lettered after retries", report.dead_lettered),
        ]
        if report.new_emails_checked:
            rows.append(("new people's emails checked", report.new_emails_checked))
        if report.emails_read_back:
            rows.append(("people given a new email, read back", report.emails_read_back))
    return rows


def _kind_and_mode(report: RunReport) -> str:
    """`people, upsert` (the mode, and whether the identity graph was reused, in the title, so
    the table's column holds counts only and right-aligns them)."""
    kind = (
        report.kind
        if not report.mode or report.kind == "events"
        else (f"{report.kind}, {report.mode}")
    )
    if report.identity_graph:
        # in the title, as the mode is: the table's column holds counts only
        kind += (
            "; identity graph reused (sources unchanged)"
            if report.identity_graph == "reused"
            else "; identity graph stitched from its sources"
        )
    if report.only:
        named = ", ".join(f"`{v}`" for v in report.only[:3])
        kind += f"; only {named}" + (
            f" and {len(report.only) - 3} more" if len(report.only) > 3 else ""
        )
    return kind


def resent_lines(report: RunReport) -> list[str]:
    """A line per other people (objects) sync that sends people (objects) this (plan's) run
    of a people (objects) sync deletes: it sends them again, so a person (an object) meant to
    be erased must leave its model too."""
    deletes = "deletes" if report.status == "planned" else "deleted"
    again = "will send" if report.status == "planned" else "forgot them and sends"
    one, many = ("object", "objects") if report.kind == "objects" else ("person", "people")
    return [
        f"{f'1 {one}' if n == 1 else f'{n} {many}'} it {deletes} "
        f"{'is' if n == 1 else 'are'} also sent by {report.kind} sync `{other}`, which "
        f"{again} them again in full on its next run: to erase them from Customer.io, "
        f"remove them from `{other}`'s model too"
        for other, n in report.resent_by
    ]


def render_report(
    console: RichConsole,
    report: RunReport,
    *,
    where_rejected: bool = True,
    merges_said: set[str] | None = None,
) -> None:
    """The report's tables; ``where_rejected`` says where every rejected row is found;
    ``merges_said``: the merges kept back that an earlier report of the command listed
    (:func:`_render_skipped_merges`)."""
    title = (
        f"{report.sync}{' follow-up' if report.follow_up_of else ''} "
        f"({_kind_and_mode(report)}) — {report.status}"
        + (f" in {report.seconds:.1f}s" if report.status != "planned" else "")
    )
    console.table(title, ["", "count"], change_rows(report))
    for line in (*report.email_check.splitlines(), *report.object_check.splitlines()):
        console.info(f"{report.sync}: {line}")
    for line in resent_lines(report):
        console.info(f"{report.sync}: {line}")
    _render_skipped_merges(console, report, merges_said)
    _render_rejected(console, report, where=where_rejected)
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
            [(g.name, g.limit, g.actual, g.status) for g in report.guards],
        )
    if report.failures:
        # one line per distinct answer: Customer.io down gives every record the same reason
        grouped: dict[tuple[str, str], list[str]] = {}
        for key, outcome, reason in report.failures:
            grouped.setdefault((outcome, reason), []).append(key)
        shown = len(report.failures)
        total = report.rejected_by_api + report.dead_lettered
        planned = report.status == "planned"
        console.table(
            f"{report.sync}: records {'the run will not send' if planned else 'not delivered'}"
            + (f" (the first {shown} of {total})" if total > shown else ""),
            ["outcome", "reason", "records", "keys"],
            [
                (outcome, reason, len(keys), ", ".join(keys[:5]) + (", …" if len(keys) > 5 else ""))
                for (outcome, reason), keys in grouped.items()
            ],
        )
        console.info(
            f"{report.sync}: {total} records the run will not send, rejected as the reasons "
            "say; each run tries them again."
            if planned
            else f"{report.sync}: {total} records not delivered are not in the snapshot: the "
            "next run sends them again (fix the rejected ones' rows first)."
        )


def _render_skipped_merges(
    console: RichConsole, report: RunReport, said: set[str] | None = None
) -> None:
    """The merges kept back (by `merge_policy.enabled: false`, or held for review by
    `min_path_rank`), each naming its profile and both people, and how to fix them. The syncs
    of one command share the identity graph, so each report lists the same merges: with
    ``said`` (the merges an earlier report of the command listed, added to here), a merge is
    listed, and the warning given, once per command."""
    skipped = report.identity_merges_skipped
    if said is not None:
        skipped = tuple(m for m in skipped if _merge_said(m) not in said)
        said.update(_merge_said(m) for m in skipped)
    if not skipped:
        return

    def person(address: dict[str, str]) -> str:
        return ", ".join(f"{kind} `{value}`" for kind, value in address.items())

    off = [m for m in skipped if not _held_for_review(m)]
    held = [m for m in skipped if _held_for_review(m)]
    said_as = (
        (
            off,
            "not merged (`identity.customerio.merge_policy.enabled: false`)",
            "not sent: both people stay in Customer.io, and a row giving one of them an email "
            'the other holds does not land there (docs/identity.md, "Merges turned off"). Merge '
            "each person into the one it is the same as by hand in Customer.io, or set "
            "`identity.customerio.merge_policy.enabled: true`.",
        ),
        (
            held,
            "on weak evidence, merge held for review "
            "(`identity.customerio.merge_policy.min_path_rank`)",
            "held for review (min_path_rank), not sent: both people stay in Customer.io, and a "
            "row giving one of them an email the other holds does not land there "
            '(docs/identity.md, "Merges held for review"). If they are one person, merge each '
            "person into the one it is the same as by hand in Customer.io; if not, fix the link "
            "that joins them (`lockgate identity explain`).",
        ),
    )
    for merges, title, warning in said_as:
        if merges:
            console.table(
                f"{report.sync}: Customer.io people found to be one, {title}",
                ["profile", "person", "is the same as"],
                [(m["profile_id"], person(m["secondary"]), person(m["primary"])) for m in merges],
            )
            console.warn(f"{report.sync}: {len(merges)} merge(s) {warning}")


def _held_for_review(merge: dict[str, Any]) -> bool:
    """Whether a merge kept back (:func:`lockgate.sync.resolve.skipped_merge`) was held for
    review by `min_path_rank` rather than kept back by merges off."""
    return merge.get("outcome") == "held_for_review"


def _merge_said(merge: dict[str, Any]) -> str:
    """A merge kept back (:func:`lockgate.sync.resolve.skipped_merge`), as one text."""
    return orjson.dumps(merge, option=orjson.OPT_SORT_KEYS).decode()


@click.command()
@click.argument("sync_names", nargs=-1)
@click.option("--all", "plan_all", is_flag=True, help="Plan every sync in the project.")
@project_option
@json_option
@click.option("--full-resync", is_flag=True, help="Compare against an empty snapshot.")
@click.option("--samples", default=3, show_default=True, help="Sample payloads to show.")
@only_option
@click.option(
    "--export-rejected",
    "export",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write every row the mapping would reject now to this CSV file (sync, key, reason).",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when nothing would be sent, 2 when something would, 3 when a guardrail would "
    "stop a sync (1 stays an error): for CI checks on a change to a model or mapping.",
)
def plan(
    sync_names: tuple[str, ...],
    plan_all: bool,
    project_path: Path,
    as_json: bool,
    full_resync: bool,
    samples: int,
    export: Path | None,
    only: tuple[str, ...],
    detailed_exitcode: bool,
) -> None:
    """Show what `lockgate sync SYNC_NAME...` (or `--all`) would send, without sending
    anything. Several are planned in the order `sync` runs them: objects, people,
    relationships, events. `--json` prints one report for one sync, a list for several. A
    plan needs no credentials; it warns when a run would fail for want of one."""
    one = len(sync_names) == 1 and not plan_all
    progress = Progress(list(sync_names))
    with _failure_as_json(as_json, progress, one=one):
        project = open_project(project_path)
        progress.names = _sync_names(project, sync_names, plan_all)
        console = RichConsole(quiet=as_json)
        _warn_attribute_budget(project, progress.names, console)
        _warn_destinations(project, progress.names, console)
        # the rejected rows of each sync's last plan, for `--export-rejected` (a follow-up's
        # in place of its first plan's: those the command would leave rejected)
        found: dict[str, Any] = {}

        def plan_one(name: str, follow_up_of: str | None = None) -> RunReport:
            return plan_sync(
                project,
                name,
                console=console,
                full_resync=full_resync and follow_up_of is None,
                samples=samples,
                session=session,
                rejected_sink=None if export is None else lambda t: found.__setitem__(name, t),
                only=only,
                follow_up_of=follow_up_of,
            )

        said: set[str] = set()  # the merges kept back listed so far: each once
        show = None if as_json else lambda report: _render_plan(console, report, samples, said)
        # the plans of one command share the identity graph and the state store, as syncs do
        with Session() as session:
            reports, failed = _each(
                progress,
                plan_one,
                console,
                "plan",
                show,
                after_people(
                    project,
                    progress.names,
                    lambda: follow_ups(progress, session, plan_one, console, "plan", show),
                ),
            )
    if export is not None:
        import pyarrow as pa

        empty = pa.table({c: pa.array([], pa.string()) for c in ("sync", "key", "reason")})
        rows = pa.concat_tables(list(found.values())) if found else empty
        _write_csv(export, rows)
        console.info(f"Wrote {rows.num_rows:,} rejected rows to {export}.")
    _finish(reports, failed, "plan", as_json=as_json, one=one)
    if detailed_exitcode:
        stopped = [r.sync for r in reports if any(g.breached for g in r.guards)]
        sending = [r.sync for r in reports if would_send(r)]
        if stopped:
            console.info(f"a guardrail would stop: {', '.join(stopped)} (exit 3)")
            sys.exit(3)
        if sending:
            console.info(f"would send: {', '.join(sending)} (exit 2)")
            sys.exit(2)
        console.info("nothing would be sent (exit 0)")


def _warn_attribute_budget(project: Project, names: Sequence[str], console: RichConsole) -> None:
    """Once per command: the syncs run that, with others, write more distinct attributes onto
    one person (or object) than Customer.io keeps, or one attribute unacknowledged
    (`validate` says the same, ownership as an error)."""
    from lockgate.sync.contract import run_warnings

    for warning in run_warnings(project, names):
        console.warn(warning)


def _warn_destinations(project: Project, names: Sequence[str], console: RichConsole) -> None:
    """Once per command, for `plan` (which needs no credentials): the syncs whose destination
    settings a run would refuse before reading its model (a variable not set), and why."""
    failing: dict[str, list[str]] = {}
    for name in names:
        sync = project.syncs.get(name)
        if sync is None:
            continue
        try:
            check_destination(project, sync)
        except LockgateError as exc:
            failing.setdefault(str(exc).split("\n", 1)[0], []).append(name)
    for why, syncs in failing.items():
        console.warn(f"`lockgate sync {' '.join(syncs)}` would fail until this is fixed: {why}")


def would_send(report: RunReport) -> bool:
    """Whether the run a plan describes would send anything: records, events from state
    changes, identity merges, or anonymous ids to attach."""
    return bool(
        report.changes.to_send
        or report.changes.state_events
        or report.identity_ops
        or report.anonymous_ops
    )


def _each(
    progress: Progress,
    work: Callable[[str], RunReport],
    console: RichConsole,
    what: str,
    show: Callable[[RunReport], None] | None,
    after: Callable[[str], None] | None = None,
) -> tuple[list[RunReport], Failures]:
    """``work`` for every sync of ``progress``, which it keeps up to date. With several, one
    sync's failure (a guardrail, a broken model) does not stop the others: their data is
    independent, and a relationship whose end is missing waits. ``show`` draws each report as
    it comes; ``after(name)`` runs once each sync has ended (the follow-ups of
    :func:`follow_ups`)."""
    names = progress.names
    for name in names:
        if after is not None and progress.current is not None:
            previous, progress.current = progress.current, None
            after(previous)
        progress.current = name
        try:
            report = work(name)
        except NothingNamedError as exc:
            if len(names) == 1:
                raise
            # `--only` with several syncs: a sync without the named records has nothing to do
            console.info(f"{name}: skipped, {exc.reason.split(': ', 1)[-1]}")
            progress.ended.add(name)
            continue
        except LockgateError as exc:
            if show is not None and exc.report is not None:
                show(exc.report)  # a run a guardrail stopped: its counts and guardrails table
            if len(names) == 1:
                raise
            progress.failed.append((name, exc))
            progress.ended.add(name)
            console.warn(f"{what} of `{name}` failed, the others go on: {exc}")
            continue
        progress.reports.append(report)
        progress.ended.add(name)
        if show is not None:
            show(report)
    if after is not None and progress.current is not None:
        previous, progress.current = progress.current, None
        after(previous)
    progress.current = None
    return progress.reports, progress.failed


def after_people(
    project: Project, names: list[str], then: Callable[[], None]
) -> Callable[[str], None]:
    """What :func:`_each` (and a `lockgate schedule` round) runs after each sync: once the
    last people sync of ``names`` has ended, ``then`` (:func:`follow_ups`), before the
    relationships and events syncs, which then find the people a follow-up creates."""
    people = [n for n in names if project.sync(n).kind == "people"]

    def after(name: str) -> None:
        if people and name == people[-1]:
            then()

    return after


def follow_ups(
    progress: Progress,
    session: Session,
    work: Callable[[str, str], RunReport],
    console: RichConsole,
    what: str,
    show: Callable[[RunReport], None] | None,
    failed: Callable[[str, LockgateError], None] | None = None,
    of: str = "command",
) -> None:
    """After the syncs of a command of several: run once more (``work(name, first run id)``)
    each people sync that held rows back for a person of another people sync which a sync of
    the command then moved on (:meth:`Session.follow_up`), so one `sync --all` completes a
    handover whichever order the syncs run in; the plans of `plan --all` and the syncs of a
    `lockgate schedule` round the same. A giver's follow-up comes before its taker's; each
    sync follows up at most once (a row that still waits is tried by the next command), so
    a swap between two syncs, which frees neither, runs none. A sync that failed (a plan a
    guardrail would stop) has none. A follow-up that fails is added to ``progress.failed``
    and told to ``failed`` (the scheduler's line for it), or else shown and warned of;
    ``of`` names what runs the syncs in the line that announces a follow-up."""
    if len(progress.names) < 2:
        return
    done: set[str] = set()
    while True:
        first = {
            r.sync: r
            for r in progress.reports
            if r.follow_up_of is None and not (what == "plan" and any(g.breached for g in r.guards))
        }
        name = session.follow_up([n for n in progress.names if n in first], done)
        if name is None:
            return
        done.add(name)
        console.info(
            f"{name}: follow-up {'run' if what == 'sync' else what}: the rows it held back "
            f"for people another sync of this {of} "
            + ("has moved" if what == "sync" else "would move")
            + " to another email are tried again"
        )
        progress.following = name
        try:
            report = work(name, first[name].run_id)
        except LockgateError as exc:
            exc.follow_up_of = first[name].run_id
            progress.failed.append((name, exc))
            if failed is not None:
                failed(name, exc)
                continue
            if show is not None and exc.report is not None:
                show(exc.report)
            console.warn(f"follow-up {what} of `{name}` failed, the others go on: {exc}")
            continue
        finally:
            progress.following = None
        progress.reports.append(report)
        if show is not None:
            show(report)


def _finish(
    reports: list[RunReport], failed: Failures, what: str, *, as_json: bool, one: bool
) -> None:
    """The reports as JSON (a list, or with ``one`` the only report), then exit 1 naming the
    syncs that failed, if any did."""
    if as_json:
        docs = [report.as_dict() for report in reports]
        docs += [failed_doc(n, e) for n, e in failed]
        _print_json(docs[0] if one and docs else docs)
    if failed:
        total = len(reports) + len(failed)
        error = LockgateError(
            f"{len(failed)} of {total} {what}s failed: "
            + ", ".join(f"{n} (follow-up)" if e.follow_up_of else str(n) for n, e in failed),
            hint="each one's error is above; the other syncs "
            + ("went on" if what == "sync" else f"were {what}ned"),
        )
        error.printed_as_json = as_json  # each failure is in the document printed above
        raise error


def _render_rejected(console: RichConsole, report: RunReport, *, where: bool) -> None:
    """The rows the mapping rejected, grouped by the kind of reason (one example each), and
    where to find every one of them."""
    c = report.changes
    if not c.rejected_reasons:
        if c.rejected_samples:  # a run recorded by a Lockgate that did not group them
            console.table(
                f"{report.sync}: rows rejected (first {len(c.rejected_samples)})",
                ["key", "reason"],
                list(c.rejected_samples),
            )
        return
    console.table(
        f"{report.sync}: {c.rejected:,} {'row' if c.rejected == 1 else 'rows'} rejected, by reason",
        ["rows", "reason", "key (e.g.)"],
        [(g.rows, g.text, g.key) for g in c.rejected_reasons],
    )
    if not where:
        return
    if report.status == "planned":
        found = f"`lockgate plan {report.sync} --export-rejected rejected.csv`"
    else:
        found = f"`lockgate runs show {report.run_id}`"
        if c.rejected > rejects.KEPT_PER_RUN:
            found += (
                f" (the first {rejects.KEPT_PER_RUN:,} by key; all of them: "
                f"`lockgate plan {report.sync} --export-rejected rejected.csv`)"
            )
    console.info(
        f"{report.sync}: every rejected row with its reason: {found}. They are not sent and "
        "are tried again on each run until fixed."
    )


def _render_plan(
    console: RichConsole, report: RunReport, samples: int, merges_said: set[str] | None = None
) -> None:
    render_report(console, report, merges_said=merges_said)
    for op in report.identity_ops[:samples]:
        console.info(
            Text.assemble(("identity operation", "bold"), " (sent before the sync's own changes):")
        )
        console.info(orjson.dumps(op, option=orjson.OPT_INDENT_2).decode())
    for op in report.anonymous_ops[:samples]:
        console.info(
            Text.assemble(
                ("anonymous id", "bold"), " (attached after the sync's own changes, once):"
            )
        )
        console.info(orjson.dumps(op, option=orjson.OPT_INDENT_2).decode())
    for release in report.email_release_samples:
        console.info(
            Text.assemble(
                ("email release", "bold"),
                f" (key {release['key']}; sent before the rows taking the email):",
            )
        )
        console.info(orjson.dumps(release["payload"], option=orjson.OPT_INDENT_2).decode())
    for sample in report.samples:
        console.info(Text.assemble(("sample payload", "bold"), f" (key {sample['key']}):"))
        console.info(orjson.dumps(sample["payload"], option=orjson.OPT_INDENT_2).decode())


def _sync_names(project: Project, names: tuple[str, ...], every: bool) -> list[str]:
    """The syncs a command names, or with ``every`` all of them, in the order `sync --all`
    runs them: objects before people before relationships before events, so the objects and
    people a relationship points to exist before it is sent, whatever order they were typed
    in (within a kind, the order given). A name the project lacks comes first, so its error
    is the first thing said; the others still run. Names and ``every`` together are refused:
    `--all` used to drop the names unread, a misspelt one included, and run every sync."""
    if every and names:
        raise ConfigError(
            f"name syncs ({', '.join(f'`{n}`' for n in names)}) or pass `--all`, not both",
            hint="drop the names to run every sync, or drop `--all` to run only those; "
            f"syncs: {', '.join(sorted(project.syncs)) or 'none'}",
        )
    if every:
        names = tuple(project.syncs)
    elif not names:
        raise ConfigError(
            "name a sync, or pass `--all`",
            hint=f"syncs: {', '.join(sorted(project.syncs)) or 'none'}",
        )

    def kind_order(name: str) -> int:
        sync = project.syncs.get(name)
        return -1 if sync is None else KIND_ORDER[sync.kind]

    return sorted(names, key=kind_order)


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
@only_option
@click.option(
    "--new-workspace",
    is_flag=True,
    help="Start the syncs over in the Customer.io workspace they point at now: forget what "
    "the state says they delivered (snapshot, event ledger, unconfirmed records) and send "
    "every record and event again (an events sync without a timestamp: as on its first "
    "run, see `backfill.first_run`).",
)
def sync(
    sync_names: tuple[str, ...],
    run_all: bool,
    project_path: Path,
    as_json: bool,
    full_resync: bool,
    force: bool,
    only: tuple[str, ...],
    new_workspace: bool,
) -> None:
    """Run one or more syncs: send only what changed, record what was delivered. Several run
    objects first, then people, relationships and events, whatever order they are named in.
    `--only` sends the named records alone: one person first, to see them in Customer.io."""
    progress = Progress(list(sync_names))
    with _failure_as_json(as_json, progress, one=False):
        if new_workspace and only:
            raise ConfigError(
                "`--new-workspace` starts the syncs over with every record, `--only` sends the "
                "named ones alone: they do not go together",
                hint="run `lockgate sync SYNC --new-workspace` without `--only`",
            )
        project = open_project(project_path)
        progress.names = _sync_names(project, sync_names, run_all)
        console = RichConsole(quiet=as_json)
        _warn_attribute_budget(project, progress.names, console)
        # the syncs of this command resolve the identity graph once and share the state store

        def run_one(name: str, follow_up_of: str | None = None) -> RunReport:
            # a follow-up sends what the first run held back: it does not start over again
            again = follow_up_of is not None
            return run_sync(
                project,
                name,
                console=console,
                full_resync=full_resync and not again,
                force=force,
                session=session,
                only=only,
                new_workspace=new_workspace and not again,
                follow_up_of=follow_up_of,
            )

        said: set[str] = set()  # the merges kept back listed so far: each once
        show = None if as_json else lambda report: render_report(console, report, merges_said=said)
        with signals_let_requests_finish(), Session() as session:
            reports, failed = _each(
                progress,
                run_one,
                console,
                "sync",
                show,
                after_people(
                    project,
                    progress.names,
                    lambda: follow_ups(progress, session, run_one, console, "sync", show),
                ),
            )
    _finish(reports, failed, "sync", as_json=as_json, one=False)
    if any(r.status != "success" for r in reports):
        sys.exit(2)


@click.group(invoke_without_command=True)
@project_option
@json_option
@click.option("--sync", "sync_name", default=None, help="Only this sync's runs.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Runs to list, latest first.",
)
@click.pass_context
def runs(
    ctx: click.Context, project_path: Path, as_json: bool, sync_name: str | None, limit: int
) -> None:
    """List recent runs with their counts and outcome; `runs show [RUN]` shows one whole."""
    if ctx.invoked_subcommand is not None:
        return
    project = open_project(project_path)
    busy = None
    try:
        with StateStore.open_read_only(project.state_dir) as store:
            rows = store.runs(sync=sync_name, limit=limit)
    except StateError as exc:
        if "in use" not in exc.reason and not isinstance(exc, StateUnwritableError):
            raise
        # a sync holds the state, or its folder cannot be written (read-only, full): list
        # the runs from the log kept beside it
        busy = exc.reason
        rows = read_runs_log(project.state_dir, sync=sync_name, limit=limit)
    if sync_name is not None and not rows and limit > 0 and sync_name not in project.syncs:
        # a name no sync has (a typo) is an error; a sync taken out of the project keeps
        # its runs listed
        project.sync(sync_name)
    if as_json:
        _print_json([dataclasses.asdict(r) for r in rows])
        return
    console = RichConsole()
    if busy:
        console.info(f"{busy}: runs as of the last start or finish of a run (runs.json)")
    console.table(
        "runs",
        ["run", "sync", "started", "status", "sent", "delivered", "rejected", "dead-lettered"],
        [
            (
                r.run_id,
                r.sync,
                f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                _status_text(r.status, r.counts),
                _sent_count(r.counts),
                r.counts.get("delivered", ""),
                _rejected_count(r.counts),
                r.counts.get("dead_lettered", ""),
            )
            for r in rows
        ],
    )
    if rows:
        console.info("One run whole, with its rejected rows: `lockgate runs show RUN`.")


def _status_text(status: str, counts: dict[str, Any]) -> str:
    """A run's status, and the guardrails it came near (`warn_at`), if any."""
    near = [g.get("name") for g in counts.get("guardrails") or () if g.get("near")]
    # the second run of a sync in one `sync --all` (or `lockgate schedule` round)
    if counts.get("follow_up_of"):
        status = f"{status} (follow-up)"
    return f"{status}, near limit: {', '.join(map(str, near))}" if near else status


def _sent_count(counts: dict[str, Any]) -> int | str:
    """Records sent to Customer.io: delivered, rejected by it, or dead-lettered after their
    retries ("" for a run still going, or one that failed before its diff). Not the records
    planned: a run a guardrail or Ctrl-C stopped sent fewer, or none."""
    if "delivered" not in counts:
        return ""
    return sum(int(counts.get(k, 0)) for k in ("delivered", "rejected_by_api", "dead_lettered"))


def _rejected_count(counts: dict[str, Any]) -> int | str:
    """Rows the mapping rejected plus records Customer.io rejected ("" for a run still going,
    or one that failed before its diff)."""
    if "changes" not in counts and "rejected_by_api" not in counts:
        return ""
    return int(counts.get("changes", {}).get("rejected", 0)) + int(counts.get("rejected_by_api", 0))


@runs.command("show")
@click.argument("run_id", required=False)
@project_option
@json_option
@click.option("--sync", "sync_name", default=None, help="Without RUN: this sync's latest run.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Rejected rows to list (the state keeps the first "
    f"{rejects.KEPT_PER_RUN:,} of each run by key).",
)
@click.option(
    "--export-rejected",
    "export",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write every rejected row the state keeps for the run to this CSV file "
    "(sync, stage, key, reason).",
)
@click.pass_context
def show_run(
    ctx: click.Context,
    run_id: str | None,
    project_path: Path,
    as_json: bool,
    sync_name: str | None,
    limit: int,
    export: Path | None,
) -> None:
    """One run whole: its counts, guardrails, the records Customer.io refused and the rows the
    mapping rejected, grouped by reason and listed. RUN is a run id from `lockgate runs`, a
    unique prefix of it or its last part; without it, the latest run (of `--sync`)."""
    project_path, as_json, parent = _with_parent(ctx, project_path, as_json)
    if sync_name is None:
        sync_name = parent.get("sync_name")
    project = open_project(project_path)
    busy = None
    try:
        with StateStore.open_read_only(project.state_dir) as store:
            if run_id is None:
                found = store.runs(sync=sync_name, limit=1)
            else:
                found = [r for r in store.find_runs(run_id) if sync_name in (None, r.sync)]
            rejected = store.rejected(found[0].run_id, limit=None) if len(found) == 1 else []
    except StateError as exc:
        if "in use" not in exc.reason and not isinstance(exc, StateUnwritableError):
            raise
        # a sync holds the state (or its folder cannot be written): the run from the log
        # kept beside it (its report and the
        # groups of its rejected rows; the rows themselves are in the state)
        busy = exc.reason
        logged = read_runs_log(project.state_dir, sync=sync_name, limit=200)
        found = logged[:1] if run_id is None else named_runs(logged, run_id)
        rejected = []
    if not found and sync_name is not None and sync_name not in project.syncs:
        # a name no sync has is an error that lists the syncs; a sync taken out of the
        # project still shows its runs
        project.sync(sync_name)
    if len(found) != 1:
        raise _no_such_run(run_id, sync_name, found)
    row = found[0]
    if export is not None:
        _write_rejected_csv(export, row.sync, rejected)
    if as_json:
        data = dataclasses.asdict(row)
        data["rejected"] = [
            {"stage": _STAGES.get(stage, stage), "key": key, "reason": reason}
            for stage, key, reason in rejected[:limit]
        ]
        data["rejected_recorded"] = len(rejected)
        _print_json(data)
        return
    console = RichConsole()
    if busy:
        console.info(
            f"{busy}: the run as of its last start or finish (runs.json), without its rows"
        )
    console.info(
        Text.assemble(
            (f"run {row.run_id}", "bold"),
            f" of {row.sync}: started {row.started_at:%Y-%m-%d %H:%M:%S %Z}, {row.status}"
            + (f": {row.error}" if row.error else "")
            + (
                f" (follow-up of run {row.counts['follow_up_of']} in the same command or "
                "schedule round)"
                if row.counts.get("follow_up_of")
                else ""
            ),
        )
    )
    if row.counts.get("changes"):  # a run still going, or one that failed before its diff, has none
        took = (row.finished_at - row.started_at).total_seconds() if row.finished_at else 0.0
        # a failed run recorded by an older Lockgate stored no time of its own (0)
        counts = {**row.counts, "seconds": row.counts.get("seconds") or took}
        report = recorded_run(row.run_id, row.sync, row.kind, row.status, counts)
        render_report(console, report, where_rejected=False)
    if rejected:
        shown = rejected[:limit]
        more = len(rejected) - len(shown)
        console.table(
            f"{row.sync}: rejected rows recorded for this run"
            + (
                f" (the first {len(shown):,} of {len(rejected):,}; `--limit`, `--export-rejected`)"
                if more
                else ""
            ),
            ["stage", "key", "reason"],
            [(_STAGES.get(stage, stage), key, reason) for stage, key, reason in shown],
        )
    if export is not None:
        console.info(f"Wrote {len(rejected):,} rejected rows to {export}.")


def _with_parent(
    ctx: click.Context, project_path: Path, as_json: bool
) -> tuple[Path, bool, dict[str, Any]]:
    """`lockgate runs --project P --json show` means the same as `runs show --project P
    --json`: the group's options, unless the subcommand set its own; and the group's params."""
    parent = ctx.parent.params if ctx.parent is not None else {}
    if ctx.get_parameter_source("project_path") == click.core.ParameterSource.DEFAULT:
        project_path = parent.get("project_path", project_path)
    return project_path, as_json or bool(parent.get("as_json")), parent


@runs.command("export")
@project_option
@json_option
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Write every finished run the state keeps, again (a run's rows replace its old ones).",
)
@click.pass_context
def export_runs(ctx: click.Context, project_path: Path, as_json: bool, everything: bool) -> None:
    """Write the runs not yet in the warehouse's run log (`run_log:` in lockgate.yml) now:
    after the warehouse was down or refused them, or to fill a new run log with the runs
    the state already has (`--all`). Syncs write their runs themselves."""
    from lockgate.sync.runlog import write_run_log

    project_path, as_json, _ = _with_parent(ctx, project_path, as_json)
    project = open_project(project_path)
    console = RichConsole(quiet=as_json)
    with StateStore.open(project.state_dir) as store:
        written = write_run_log(project, store, everything=everything)
    if as_json:
        _print_json({"runs": written.runs, "where": written.where})
    elif written.runs:
        console.info(f"run log: {written.runs} run(s) written to {written.where}")
    else:
        console.info("run log: nothing to write (every finished run is in the warehouse)")


#: where a row was rejected, by the `rejected` table's stage: by the mapping (`map`: a null
#: identifier, a bad value) or in delivery (`deliver`: Customer.io's answer, or an operation
#: over its limits that the client refused to send)
_STAGES = {"map": "mapping", "deliver": "delivery"}


def _no_such_run(run_id: str | None, sync_name: str | None, found: list[Any]) -> LockgateError:
    of_sync = f" of `{sync_name}`" if sync_name else ""
    if run_id is None:
        return LockgateError(f"no run{of_sync} yet", hint="`lockgate sync NAME` runs one")
    if found:
        return LockgateError(
            f"more than one run{of_sync} matches `{run_id}`: " + ", ".join(r.run_id for r in found),
            hint="give more of the run id",
        )
    return LockgateError(
        f"no run{of_sync} has the id `{run_id}`",
        hint="`lockgate runs` lists the recent runs and their ids",
    )


def _write_rejected_csv(path: Path, sync: str, rows: list[tuple[str, str, str]]) -> None:
    """``rows`` of (stage, key, reason) as CSV with a header, one sync's."""
    import pyarrow as pa

    table = pa.table(
        {
            "sync": pa.array([sync] * len(rows), pa.string()),
            "stage": pa.array([_STAGES.get(r[0], r[0]) for r in rows], pa.string()),
            "key": pa.array([r[1] for r in rows], pa.string()),
            "reason": pa.array([r[2] for r in rows], pa.string()),
        }
    )
    _write_csv(path, table)


def _write_csv(path: Path, table: Any) -> None:
    import pyarrow.csv as pacsv

    try:
        pacsv.write_csv(table, str(path))
    except OSError as exc:
        raise LockgateError(
            f"could not write `{path}`: {exc}", hint="choose a file in a folder you can write to"
        ) from exc


@click.command()
@click.option(
    "--person",
    required=True,
    help="A record key, or a person's id, email (any case), cio_id or anonymous id as sent.",
)
@project_option
@json_option
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Calls to show, the latest.",
)
def history(person: str, project_path: Path, as_json: bool, limit: int) -> None:
    """Every call made for one person: when, what, and the API's answer."""
    project = open_project(project_path)
    also: list[str] = []
    if project.config.identity is not None:
        from lockgate.sync.resolve import people_of_anonymous_id

        # an anonymous id rides on its person's identify as an attribute, and their anonymous
        # events go out by `id`: the graph names the person the calls were sent to
        also = people_of_anonymous_id(project, person)
    with StateStore.open_read_only(project.state_dir) as store:
        rows = store.history(person, limit=limit, also=also)
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
    console = RichConsole()
    # the latest `limit` calls: a person with more is not shown whole, so the title says so
    shown = f"the latest {len(rows):,} calls (`--limit` for more)" if len(rows) >= limit else ""
    console.table(
        f"history of {person}" + (f": {shown}" if shown else ""),
        ["at", "sync", "run", "action", "key", "outcome", "status", "reason"],
        [
            (
                f"{r['sent_at']:%Y-%m-%d %H:%M:%S}",
                r["sync"],
                r["run_id"],
                r["action"],
                r["k"],
                r["outcome"],
                r["status"] if r["status"] is not None else "",
                r["reason"] or "",
            )
            for r in rows
        ],
    )
