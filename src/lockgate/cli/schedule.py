"""`lockgate schedule`: run each sync on its `schedule:` until stopped."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from lockgate.cli import signals_let_requests_finish, unexpected
from lockgate.cli.options import json_option, mark_printed_as_json, open_project, project_option
from lockgate.cli.sync import Progress, after_people, failed_doc, follow_ups
from lockgate.console import RichConsole
from lockgate.errors import ConfigError, LockgateError
from lockgate.project.loader import Project
from lockgate.stopping import Stopped
from lockgate.sync.contract import run_warnings
from lockgate.sync.run import RunReport, Session, check_destination, run_sync, stopped_run
from lockgate.sync.schedule import Timetable

#: how long a round waits for a `lockgate sync` run by hand (or another process) that holds
#: the project state, before its syncs are reported failed and left to their next slot
STATE_WAIT = 600.0

#: the longest the scheduler sleeps at once: `--heartbeat` is rewritten at least this often
#: while it waits
HEARTBEAT_SECONDS = 30.0


def _now() -> datetime:
    return datetime.now(UTC)


def _at(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


@click.command()
@project_option
@json_option
@click.option("--list", "list_only", is_flag=True, help="Show when each sync is next due; exit.")
@click.option(
    "--heartbeat",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Rewrite this file (JSON: time, state, next run) at least every 30 s while waiting and "
    "at each run's start and end, for a container's liveness probe.",
)
@click.option(
    "--cycles",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many rounds of due syncs (default: run until stopped).",
)
def schedule(
    project_path: Path,
    as_json: bool,
    list_only: bool,
    heartbeat: Path | None,
    cycles: int | None,
) -> None:
    """Run each sync with a `schedule:` (cron, UTC) when it is due, until stopped.

    The syncs due at one moment run together as `lockgate sync` runs them (one state, one
    identity graph; objects, then people, the follow-ups that complete an email handed over
    between people syncs, relationships and events); a run longer than its
    interval skips the slots that passed, and says so. Each round reloads the project, so an
    edited sync file takes effect at its next run (a broken one is reported and the last good
    project kept). It refuses to start when a scheduled sync's destination names a variable
    that is not set (`--list` needs none).
    SIGTERM or Ctrl-C between runs stops at once (exit 0); during a run, the run stops as
    `lockgate sync` does. `--json` prints one JSON line per run, for log collectors."""
    project = open_project(project_path)
    console = RichConsole(quiet=as_json)
    table = Timetable.of(project, _now())
    if not table.entries:
        raise LockgateError(
            "no sync of this project has a `schedule:`",
            hint='add e.g. `schedule: "*/15 * * * *"` (cron, UTC) to a sync file, or run '
            "`lockgate sync NAME` from your own scheduler",
        )
    if list_only:
        if as_json:
            _print_timetable_json(table)
        else:
            _show_timetable(console, table)
        return
    _check_destinations(project, table)
    worst = 0  # 0 every run succeeded, 2 some records not delivered, 1 a run failed
    done = 0
    warned: set[str] = set()  # each said once, as `lockgate sync` says it once per command

    def beat(state: str, syncs: list[str]) -> None:
        if heartbeat is not None:
            _beat(heartbeat, state, syncs, table, console)

    with signals_let_requests_finish():
        try:
            _show_timetable(console, table)  # not with `--json`: its stdout is JSON lines
        except KeyboardInterrupt as stop:  # SIGTERM or Ctrl-C while it is shown
            _stopped_idle(console, stop)
            return
        idle = False  # every `schedule:` is gone from the project (a deploy replacing it)
        while cycles is None or done < cycles:
            if not _wait_for(table, console, beat):
                return
            project = _reload(project_path, project, console)
            table = Timetable.of(project, _now(), before=table)
            if not table.entries and not idle:
                console.warn(
                    "no sync of the project has a `schedule:` any more: waiting for one "
                    f"(the project is reloaded every {HEARTBEAT_SECONDS:.0f} s; SIGTERM stops)"
                )
            elif table.entries and idle:
                console.info("scheduled syncs are back in the project")
                _show_timetable(console, table)
            idle = not table.entries
            due = table.due(_now())
            if not due:  # the sync due was taken out of the project while we waited
                continue
            beat("running", due)
            # as `lockgate sync` warns before it runs: two syncs writing one attribute
            # unacknowledged, an attribute budget passed (an edited file may add one)
            for warning in run_warnings(project, due):
                if warning not in warned:
                    console.warn(warning)
                    warned.add(warning)
            code = _round(project, due, table, console, as_json)
            if code is None:  # stopped while it waited for the state: nothing was running
                return
            worst = max(worst, code, key=_severity)
            beat("waiting", [])
            done += 1
    if worst:
        sys.exit(worst)


def _check_destinations(project: Project, table: Timetable) -> None:
    """Refuse to start when a scheduled sync's destination settings would fail each of its
    runs (a variable not set): the scheduler's environment does not change while it runs, and
    the first round may be hours away. The error names every sync it stops."""
    failing: dict[str, tuple[ConfigError, list[str]]] = {}
    for name in table.entries:
        try:
            check_destination(project, project.sync(name))
        except ConfigError as exc:
            failing.setdefault(str(exc), (exc, []))[1].append(name)
    if failing:
        first, names = next(iter(failing.values()))
        syncs = ", ".join(f"`{n}`" for n in names)
        raise ConfigError(
            f"{'sync' if len(names) == 1 else 'syncs'} {syncs} could not send: {first.reason}",
            hint=first.hint,
            file=first.file,
            line=first.line,
        ) from first


def _debug() -> bool:
    """`lockgate --debug` (or LOCKGATE_DEBUG=1): an unexpected error ends the scheduler with
    its traceback instead of being reported and left to the next slot."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().obj if ctx is not None else None
    return os.environ.get("LOCKGATE_DEBUG") == "1" or bool((root or {}).get("debug"))


def _why(exc: Exception) -> str:
    """A failed run's error, as `lockgate sync` would print it (its hint on the next line)."""
    if isinstance(exc, LockgateError):
        return str(exc)
    reason, hint = unexpected(exc)
    return f"{reason}\n  hint: {hint}"


def _severity(code: int) -> int:
    return {0: 0, 2: 1, 1: 2}[code]


def _show_timetable(console: RichConsole, table: Timetable) -> None:
    console.table(
        "scheduled syncs (cron in UTC)",
        ["sync", "schedule", "next run"],
        [
            (e.name, e.expression, _at(e.next_at))
            for e in sorted(table.entries.values(), key=lambda e: (e.next_at, e.name))
        ],
    )


def _print_timetable_json(table: Timetable) -> None:
    """`--list --json`: one document, the syncs in the order they are next due."""
    syncs = [
        {"sync": e.name, "schedule": e.expression, "next_run": e.next_at.isoformat()}
        for e in sorted(table.entries.values(), key=lambda e: (e.next_at, e.name))
    ]
    sys.stdout.write(orjson.dumps({"syncs": syncs}).decode() + "\n")


def _beat(path: Path, state: str, syncs: list[str], table: Timetable, console: RichConsole) -> None:
    """Rewrite the heartbeat file (atomically: a probe never reads half of it)."""
    due_at = table.next_at()
    doc = {
        "at": _now().isoformat(),
        "pid": os.getpid(),
        "state": state,  # waiting | running
        "syncs": syncs,
        "next_run": due_at.isoformat() if due_at is not None else None,
    }
    try:
        partial = path.with_name(path.name + ".tmp")
        partial.write_bytes(orjson.dumps(doc))
        os.replace(partial, path)
    except OSError as exc:
        console.warn(f"heartbeat `{path}` not written: {exc.strerror}")


def _wait_for(
    table: Timetable, console: RichConsole, beat: Callable[[str, list[str]], None]
) -> bool:
    """Sleep until the next sync is due; False when a stop signal came first. When nothing is
    scheduled (every `schedule:` was taken out of the project, or its `syncs/` folder is being
    replaced by a deploy), True after one heartbeat's sleep: the caller reloads the project
    and waits on. Stopping there, exit 0, left a service manager that restarts only failures
    with no scheduler once the deploy finished."""
    try:
        while True:
            due_at = table.next_at()
            if due_at is None:
                beat("waiting", [])
                time.sleep(HEARTBEAT_SECONDS)
                return True
            left = (due_at - _now()).total_seconds()
            if left <= 0:
                return True
            beat("waiting", [])
            time.sleep(min(left, HEARTBEAT_SECONDS))
    except KeyboardInterrupt as stop:
        _stopped_idle(console, stop)
        return False


def _stopped_idle(
    console: RichConsole, stop: KeyboardInterrupt, when: str = "between runs"
) -> None:
    by = stop.by if isinstance(stop, Stopped) else "Ctrl-C"
    console.warn(f"stopped by {by} {when}; nothing was running")


def _reload(path: Path, project: Project, console: RichConsole) -> Project:
    """The project as its files are now; the last good one when they no longer load."""
    try:
        return open_project(path)
    except LockgateError as exc:
        console.warn(f"project not reloaded, the last good one runs: {exc}")
        return project


def _round(
    project: Project, due: list[str], table: Timetable, console: RichConsole, as_json: bool
) -> int | None:
    """Run the syncs due now; returns the round's exit code (0, 2 or 1, as `lockgate sync`),
    or None when a stop signal came before a run began (while the round waited for the state
    a `lockgate sync` by hand held): the scheduler then stops as between runs."""
    scheduled_at = min(table.entries[n].next_at for n in due)
    worst = 0
    quiet = RichConsole(quiet=True)

    def waiting(holder: str) -> None:
        console.warn(
            f"the project state is in use by {holder}: waiting for it (at most "
            f"{STATE_WAIT / 60:.0f} minutes) before running {', '.join(due)}"
        )

    def run_one(name: str, follow_up_of: str | None = None) -> RunReport:
        """One run of the round, a follow-up (``follow_up_of``) or not. A failure that is no
        LockgateError (the state out of memory, a bug) is raised as one, its run recorded
        failed (and alerted) by run_sync: the other syncs and the next slots go on."""
        try:
            # no progress bars in a scheduler's log: one line per run, warnings kept
            return run_sync(
                project, name, console=quiet, session=session, follow_up_of=follow_up_of
            )
        except KeyboardInterrupt as stop:  # SIGTERM or Ctrl-C during the run
            if as_json:  # the stopped run's line: its report as recorded
                line = stopped_run(stop) or {"sync": name, "status": "failed"}
                _say_json({**line, "error": "interrupted"}, scheduled_at)
                mark_printed_as_json(stop)
            raise
        except LockgateError:
            raise
        except Exception as exc:
            if _debug():
                raise
            reason, hint = unexpected(exc)
            raise LockgateError(reason, hint=hint) from exc

    def said(report: RunReport) -> None:
        _say(console, as_json, report.sync, scheduled_at, report, None)

    def failed(name: str, exc: LockgateError) -> None:
        _say_failed(console, as_json, name, scheduled_at, exc)

    with Session(lock_wait=STATE_WAIT, waiting=waiting) as session:
        to_run = due
        try:  # the state first: a `lockgate sync` by hand may hold it for minutes
            session.state(project)
        except KeyboardInterrupt as stop:  # no run began, none is recorded: was a failed,
            # interrupted run's line and exit 143 for a run that never was
            _stopped_idle(console, stop, "while waiting for the project state")
            return None
        except Exception as exc:  # still held after STATE_WAIT (or unusable): the round's syncs
            # fail, and run at their next slot
            if _debug() and not isinstance(exc, LockgateError):
                raise
            for name in due:
                _say(console, as_json, name, scheduled_at, None, _why(exc))
            to_run, worst = [], 1
        # as `lockgate sync --all`: once the last people sync has ended, the follow-up runs of
        # the people syncs that held rows back for an email another sync of the round has
        # since freed, before the relationships and events syncs
        progress = Progress(list(to_run))
        after = after_people(
            project,
            to_run,
            lambda: follow_ups(
                progress, session, run_one, console, "sync", said, failed, of="round"
            ),
        )
        for name in to_run:
            try:
                report = run_one(name)
            except LockgateError as exc:
                progress.failed.append((name, exc))
                failed(name, exc)
            else:
                progress.reports.append(report)
                said(report)
            after(name)
        if progress.failed:
            worst = 1
        elif any(r.status != "success" for r in progress.reports):
            worst = 2
    finished = _now()
    for name, skipped in table.ran(due, finished).items():
        if skipped:
            console.warn(
                f"{name}: skipped {skipped} run{'' if skipped == 1 else 's'} due while this "
                f"one ran; next at {_at(table.entries[name].next_at)}"
            )
    return worst


def _say(
    console: RichConsole,
    as_json: bool,
    name: str,
    scheduled_at: datetime,
    report: RunReport | None,
    error: str | None,
) -> None:
    """One line per run: the time it was due, what it sent, or why it failed."""
    if as_json:
        line: dict[str, Any] = (
            report.as_dict() if report is not None else {"sync": name, "status": "failed"}
        )
        if error is not None:
            line["error"] = error
        _say_json(line, scheduled_at)
        return
    if report is None:
        console.warn(f"{_at(scheduled_at)} {name}: failed: {error}")
        return
    c = report.changes
    run = f"{name} follow-up" if report.follow_up_of is not None else name
    console.info(
        f"{_at(scheduled_at)} {run}: {report.status} in {report.seconds:.1f}s, "
        f"{c.to_send:,} to send, {report.delivered:,} delivered, "
        f"{c.rejected + report.rejected_by_api:,} rejected, {report.dead_lettered:,} "
        f"dead-lettered (run {report.run_id})"
    )


def _say_failed(
    console: RichConsole, as_json: bool, name: str, scheduled_at: datetime, exc: LockgateError
) -> None:
    """The line of a run that failed: with `--json`, the document `lockgate sync --json`
    prints for it (its report when it got as far as its diff, `follow_up_of` for a
    follow-up run)."""
    if as_json:
        _say_json(failed_doc(name, exc), scheduled_at)
        return
    run = f"{name} follow-up" if exc.follow_up_of is not None else name
    console.warn(f"{_at(scheduled_at)} {run}: failed: {exc}")


def _say_json(line: dict[str, Any], scheduled_at: datetime) -> None:
    """One run's line for `--json`: its report (or failure) and the time it was due."""
    line["scheduled_at"] = scheduled_at.isoformat()
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()
