"""Run a sync: extract → map → diff → guard → deliver → commit.

This module chains the steps and does none of their work. A failure in any step is
wrapped once as :class:`~lockgate.errors.StepError` naming the step and the run.

Example::

    project = load_project("demo")
    report = run_sync(project, "customer_profile", console=NullConsole())
    assert report.status == "success"
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import duckdb
import orjson
import pyarrow as pa

from lockgate.console import Console
from lockgate.destinations.base import Destination
from lockgate.errors import (
    ConfigError,
    DestinationError,
    LockgateError,
    NothingNamedError,
    StateError,
    StateUnwritableError,
    StepError,
    shorten,
)
from lockgate.project.loader import Project
from lockgate.project.models import ENV_REF, Placed, SyncConfig, check_url, resolve_env
from lockgate.sources import connect
from lockgate.sources.base import Source
from lockgate.state import contract as contract_state
from lockgate.state import workspace
from lockgate.state.store import (
    EMAILS_OF_MERGES_KEPT_BACK,
    LOCK_WAIT_SECONDS,
    StateStore,
    has_table,
    registered,
    run_sql,
    table,
    transaction,
    write_refused,
)
from lockgate.sync import diff as diff_step
from lockgate.sync import guard as guard_step
from lockgate.sync import mapping, rejects
from lockgate.sync import planned as planned_step
from lockgate.sync.extract import InPlace, Staged, stage
from lockgate.sync.planned import Planned

if TYPE_CHECKING:
    from lockgate.destinations.customerio import CustomerIOSettings
    from lockgate.sync.commit import CommitCounts
    from lockgate.sync.resolve import Resolution

DestinationFactory = Callable[[Project, SyncConfig], Destination]


def default_destination(project: Project, sync: SyncConfig) -> Destination:
    """The sync's destination as configured in lockgate.yml, credentials from the env."""
    from lockgate.destinations.customerio import CustomerIOClient

    return CustomerIOClient(destination_settings(project, sync.destination))


def destination_settings(project: Project, name: str) -> CustomerIOSettings:
    """The settings of the destination ``name`` in lockgate.yml, credentials from the env
    (a missing variable is a :class:`ConfigError` naming it)."""
    from lockgate.destinations.customerio import CustomerIOSettings

    config = project.config.destinations[name]
    track_url = destination_url(config.track_url, "track_url", "CUSTOMERIO_TRACK_URL", config)
    # as `lockgate reconcile` and the email checks read it (reconcile.app_settings)
    app_url = destination_url(config.app_url, "app_url", "CUSTOMERIO_APP_URL", config) or track_url
    return CustomerIOSettings(
        site_id=resolve_env(config.site_id, field="site_id", at=config) or "",
        api_key=resolve_env(config.api_key, field="api_key", at=config) or "",
        region=config.region_to_use(),
        track_url=track_url,
        app_api_key=_optional_env(config.app_api_key) or "",
        app_url=app_url,
        rate_limit=config.requests_per_second,
        concurrency=config.concurrency,
        max_retries=config.max_retries,
        stop_after_failed_batches=config.stop_after_failed_batches,
        max_batch_ops=config.batch_size,
    )


def check_destination(project: Project, sync: SyncConfig) -> CustomerIOSettings:
    """The settings of ``sync``'s destination, resolved and checked without a request: every
    variable they name is set, the region and URLs are well-formed, the Track credentials are
    there. A :class:`ConfigError` names what is wrong (the variable, the block, the line of
    lockgate.yml). A run checks them before it reads its model, so a sync that could not send
    fails at once, whether or not it has anything to send; `plan` checks them to warn."""
    settings = destination_settings(project, sync.destination)
    settings.require_track()
    return settings


def destination_url(value: str | None, field: str, variable: str, at: Placed) -> str | None:
    """A destination URL: ``value`` (a URL or an env reference), else the env ``variable``;
    what is not an http(s) URL is a :class:`ConfigError` naming where it came from."""
    where = f"`{field}` in lockgate.yml"
    if value is None:
        value, where = os.environ.get(variable) or None, f"`{variable}`"
    elif ENV_REF.match(value):
        where = f"`{value}` (`{field}` in lockgate.yml)"
        value = resolve_env(value, field=field, at=at)
    if value is None:
        return None
    try:
        return check_url(value)
    except ValueError as exc:
        raise ConfigError(f"{where} is not usable: {exc}", hint="fix it and run again") from exc


def _optional_env(value: str | None) -> str | None:
    try:
        return resolve_env(value, field="app_api_key")
    except LockgateError:
        return None


@dataclass(frozen=True)
class RunReport:
    """The outcome of one run (or plan) of one sync."""

    run_id: str
    sync: str
    kind: str
    status: str  # planned | success | partial | failed
    changes: diff_step.ChangeSet
    delivered: int = 0
    rejected_by_api: int = 0
    dead_lettered: int = 0
    failures: tuple[tuple[str, str, str], ...] = ()
    samples: tuple[dict[str, Any], ...] = ()
    email_release_samples: tuple[dict[str, Any], ...] = ()
    """A plan's first emails released (``changes.email_releases``), as (key, payload) dicts
    like ``samples``: sent before the sync's own records."""
    seconds: float = 0.0
    recovered: int = 0
    guards: tuple[guard_step.GuardResult, ...] = ()
    mode: str = ""
    identity_ops: tuple[dict[str, Any], ...] = ()
    """The identity graph's Customer.io operations, sent before the sync's own changes:
    merges, then the identifiers re-applied to their survivors."""
    anonymous_ops: tuple[dict[str, Any], ...] = ()
    """The identifies carrying the anonymous ids of a profile its own identify does not (one
    each, so that Customer.io attaches every device's earlier anonymous events), sent after
    the sync's own changes."""
    identity_merges_skipped: tuple[dict[str, Any], ...] = ()
    """The merges of Customer.io people the identity graph found to be one that were kept
    from being sent (`profile_id`, `primary`, `secondary`, and `outcome`: `skipped_disabled`
    by `merge_policy.enabled: false`, `held_for_review` by `merge_policy.min_path_rank`): for a
    user to merge by hand (or to turn merges on)."""
    only: tuple[str, ...] = ()
    """The values `--only` named: the run was of their records alone."""
    emails_read_back: int = 0
    """People given a new email whom the run read back through the App API
    (:mod:`lockgate.sync.emailcheck`)."""
    new_emails_checked: int = 0
    """New people whose email the run looked up in Customer.io before sending them, to find a
    person of another `id` holding it (:func:`lockgate.sync.emailcheck.check_new`)."""
    email_check: str = ""
    """What the run (or a plan) could not verify of the emails it sends, and how to, a line
    each: no App API key, a check turned off, people past `read_back_emails` or
    `check_new_emails`; empty otherwise."""
    object_check: str = ""
    """What the run could not verify of the objects it clears (`mirror`), and how to: no App
    API key to look up whether Customer.io still holds them, or an App API that could not be
    read (:func:`_clear_objects_still_there`); empty otherwise."""
    identity_graph: str = ""
    """For a sync through the identity graph: `stitched` when the run stitched it from its
    sources, `reused` when nothing that feeds it had changed since it was saved and the run
    took it as it was (:mod:`lockgate.sync.graphinputs`); empty for other syncs."""
    resent_by: tuple[tuple[str, int], ...] = ()
    """For a people (objects) sync that deletes (`delete_removed`): the other people (objects
    of its type) syncs that had sent people (objects) it deleted (plans: deletes), and how
    many of their rows: they forget them, and
    send them again in full (:func:`diff.forget_people_of`)."""
    naive_timestamps: tuple[str, ...] = ()
    """The model's columns that are timestamps without a time zone, sent as times: read in
    ``timezone``, else as UTC (docs/sync.md, "Time zones")."""
    timezone: str | None = None
    """The sync's `timezone` (its own, or its source's); None: UTC."""
    follow_up_of: str | None = None
    """For a follow-up run (or plan) of `sync --all`: the id of the sync's first run of the
    command, which held back rows taking an email a later sync of the command then freed
    (docs/sync.md, "Emails that change hands between syncs"); None otherwise."""

    @property
    def naive_note(self) -> str | None:
        """What `plan` says of the naive timestamps read as UTC (no `timezone` set), or None."""
        if self.timezone is not None or not self.naive_timestamps:
            return None
        return mapping.naive_text(list(self.naive_timestamps))

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "sync": self.sync,
            "kind": self.kind,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "changes": self.changes.as_dict(),
            "rejected_rows": [{"key": k, "reason": r} for k, r in self.changes.rejected_samples],
            "rejected_reasons": [g.as_dict() for g in self.changes.rejected_reasons],
            "shared_people": [
                {"person": a, "keys": ks.split(", ")} for a, ks in self.changes.shared_samples
            ],
            "delivered": self.delivered,
            "rejected_by_api": self.rejected_by_api,
            "dead_lettered": self.dead_lettered,
            "failures": [{"key": k, "outcome": o, "reason": r} for k, o, r in self.failures],
            "samples": list(self.samples),
            "email_release_samples": list(self.email_release_samples),
            "recovered_from_crash": self.recovered,
            "guardrails": [g.as_dict() for g in self.guards],
            "mode": self.mode,
            "identity_merges": self.identity_merges,
            "identity_reapplied": self.identity_reapplied,
            "identity_ops": list(self.identity_ops[:IDENTITY_OPS_SHOWN]),
            "identity_anonymous_ids": self.identity_anonymous_ids,
            "anonymous_ops": list(self.anonymous_ops[:IDENTITY_OPS_SHOWN]),
            "identity_merges_skipped": list(self.identity_merges_skipped[:IDENTITY_OPS_SHOWN]),
            "only": list(self.only),
            "emails_read_back": self.emails_read_back,
            "new_emails_checked": self.new_emails_checked,
            "email_check": self.email_check,
            "object_check": self.object_check,
            "resent_by": [
                {"sync": n, "objects" if self.kind == "objects" else "people": c}
                for n, c in self.resent_by
            ],
            "identity_graph": self.identity_graph,
            "naive_timestamps": {
                "columns": list(self.naive_timestamps),
                "read_as": self.timezone or "UTC",
                "note": self.naive_note,
            },
            "follow_up_of": self.follow_up_of,
        }

    @property
    def identity_merges(self) -> int:
        return sum(1 for op in self.identity_ops if op.get("action") == "merge")

    @property
    def identity_reapplied(self) -> int:
        return len(self.identity_ops) - self.identity_merges

    @property
    def identity_anonymous_ids(self) -> int:
        return len(self.anonymous_ops)


@dataclass(frozen=True)
class RecordedRun(RunReport):
    """A report read back from the state's `runs` table (:func:`recorded_run`): what it
    lists (identity operations, failures, samples) is cut as the stored report cut it."""

    merges: int = 0
    reapplied: int = 0
    anonymous_ids: int = 0

    @property
    def identity_merges(self) -> int:
        return self.merges

    @property
    def identity_reapplied(self) -> int:
        return self.reapplied

    @property
    def identity_anonymous_ids(self) -> int:
        return self.anonymous_ids


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that are fields of the dataclass ``cls`` (a report stored by
    another Lockgate version may have more or fewer)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def recorded_run(
    run_id: str, sync: str, kind: str, status: str, counts: dict[str, Any]
) -> RecordedRun:
    """The report a run stored at its end (`runs.counts`), as a :class:`RunReport` again; a run
    that failed or was stopped stored only its changes and delivery counts."""
    stored = dict(counts.get("changes") or {})
    changes = diff_step.ChangeSet(
        **{
            "kind": kind,
            "rows": 0,
            "rejected": 0,
            "to_send": 0,
            **_known(diff_step.ChangeSet, stored),
        },
        rejected_samples=tuple((r["key"], r["reason"]) for r in counts.get("rejected_rows", ())),
        shared_samples=tuple(
            (p["person"], ", ".join(p["keys"])) for p in counts.get("shared_people", ())
        ),
        rejected_reasons=tuple(
            rejects.ReasonGroup.from_dict(g) for g in counts.get("rejected_reasons", ())
        ),
    )
    return RecordedRun(
        run_id,
        sync,
        kind,
        status,
        changes,
        delivered=int(counts.get("delivered", 0)),
        rejected_by_api=int(counts.get("rejected_by_api", 0)),
        dead_lettered=int(counts.get("dead_lettered", 0)),
        failures=tuple((f["key"], f["outcome"], f["reason"]) for f in counts.get("failures", ())),
        seconds=float(counts.get("seconds", 0.0)),
        recovered=int(counts.get("recovered_from_crash", 0)),
        guards=tuple(
            guard_step.GuardResult(
                **_known(guard_step.GuardResult, {**g, "samples": tuple(g.get("samples", ()))})
            )
            for g in counts.get("guardrails", ())
        ),
        mode=str(counts.get("mode", "")),
        identity_ops=tuple(counts.get("identity_ops", ())),
        merges=int(counts.get("identity_merges", 0)),
        reapplied=int(counts.get("identity_reapplied", 0)),
        anonymous_ops=tuple(counts.get("anonymous_ops", ())),
        identity_merges_skipped=tuple(counts.get("identity_merges_skipped", ())),
        anonymous_ids=int(counts.get("identity_anonymous_ids", 0)),
        only=tuple(counts.get("only", ())),
        emails_read_back=int(counts.get("emails_read_back", 0)),
        new_emails_checked=int(counts.get("new_emails_checked", 0)),
        email_check=str(counts.get("email_check", "")),
        resent_by=tuple(
            (str(r["sync"]), int(r.get("people", r.get("objects", 0))))
            for r in counts.get("resent_by", ())
        ),
        identity_graph=str(counts.get("identity_graph", "")),
        **_naive(counts.get("naive_timestamps")),
        follow_up_of=counts.get("follow_up_of"),
    )


def _naive(stored: Any) -> dict[str, Any]:
    """The report's `naive_timestamps` and `timezone`, from its stored `naive_timestamps`
    (absent from a run recorded before they were)."""
    if not isinstance(stored, dict):
        return {}
    zone = stored.get("read_as")
    return {
        "naive_timestamps": tuple(stored.get("columns") or ()),
        # `note` is null when a zone was set: `UTC` said, or another
        "timezone": None if stored.get("note") else zone,
    }


#: identity operations listed in a report (the counts cover them all)
IDENTITY_OPS_SHOWN = 100


@dataclass
class _Step:
    run_id: str
    name: str = "prepare"
    timings: dict[str, float] = field(default_factory=dict)
    #: the state file, named when its disk refuses a write (full, read-only)
    state: Path | None = None
    #: the steps of a plan, which records no run (its errors do not name the run id)
    plan: bool = False

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.name = name
        started = time.perf_counter()
        try:
            yield
        except StepError:
            raise
        except (LockgateError, OSError, ValueError, RuntimeError) as exc:
            raise StepError(name, self.run_id, self._refused(exc) or exc, plan=self.plan) from exc
        except duckdb.Error as exc:  # the state's disk full while the step wrote to it
            refused = self._refused(exc)
            if refused is None:
                raise
            raise StepError(name, self.run_id, refused, plan=self.plan) from exc
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started

    def _refused(self, exc: BaseException) -> StateUnwritableError | None:
        """``exc`` as the state's disk or folder refusing a write, if it is one."""
        if self.state is None:
            return None
        return write_refused(exc, self.state, inside=self.state.parent)


@dataclass
class Session:
    """What the runs of one invocation (`lockgate sync --all`, the demo) share.

    The identity graph is resolved once, by the first run that needs it, and used by the
    others: resolving it again from the same sources and the graph that run kept gives the
    same profiles (profile ids are stable across runs), so every later sync of the invocation
    paid for the same work again (at 1M identity edges, seconds per sync) and appended the
    same analyst log rows again. The first run to commit keeps the graph and writes the
    analyst tables; a run that fails before that leaves it to the next.
    """

    resolution: Resolution | None = None
    lock_wait: float = LOCK_WAIT_SECONDS
    """Seconds to wait for another process that holds the state (`lockgate schedule` waits for
    a `lockgate sync` run by hand; a command run by hand says at once who holds it)."""
    waiting: Callable[[str], None] | None = None
    """Told which process holds the state, when the wait for it starts."""
    planned_people: dict[str, set[str]] = field(default_factory=dict)
    """Runs and plans of named records (`--all --only EMAIL`): by destination, the `id`,
    `cio_id` and email of the people a people sync of the command sends (or would). A sync
    finds a person's events and relationships through what the people syncs delivered (their
    snapshots), which a plan does not commit: the later plans of the command find them here
    instead, so they count what the sync would send; the later runs start from them too, so
    they name what their plans did (a record found by one of them, say one delivered with an
    email a named person now has, is found by a run as by its plan)."""
    planned: Planned = field(default_factory=lambda: Planned())
    """What the plans of the command so far would change in the state, for the later plans
    (:mod:`lockgate.sync.planned`): a sync of `sync --all` sees what the syncs before it
    committed, so the plan of it counts what it then sends."""
    waits: set[str] = field(default_factory=set)
    """People syncs whose last run (or plan) of the command held rows back for a person of
    another people sync (``diff.EMAIL_WAITS``, kept on the connection as ``email_waits__S``):
    :meth:`follow_up` looks whether that sync has since moved them on."""
    _store: StateStore | None = field(default=None, repr=False)
    _run_log: tuple[Project, Console] | None = field(default=None, repr=False)
    """Set by a run of a project with `run_log:`: the runs are written when the session ends,
    in one write for all the command's syncs."""

    def state(self, project: Project) -> StateStore:
        """The project's state store, opened by the first run and kept open (and the project
        locked) until :meth:`close`: opening and closing it cost each sync ~0.07 s, and no
        other process can run between the syncs of one command. Each later run starts with
        what the one before left on the connection dropped (its temp tables; a transaction a
        failure left open)."""
        store = self._store
        if store is not None and store.path.parent != project.state_dir:
            raise ValueError("a Session holds the state of one project")
        if store is not None:
            try:
                store.reset_connection(
                    keep=self.planned.tables() | {f"email_waits__{n}" for n in self.waits}
                )
                return store
            except duckdb.Error:  # the connection is unusable (DuckDB invalidates it after
                self.close()  # a fatal error): the next run opens the state afresh
        store = self._store = StateStore.open(
            project.state_dir, wait=self.lock_wait, waiting=self.waiting
        )
        self.planned = Planned()  # kept on the connection closed, if any
        self.waits = set()
        return store

    def keep_waits(self, store: StateStore, sync: str) -> None:
        """After the diff of ``sync``: keep the rows it held back for a person of another
        people sync (``diff.EMAIL_WAITS``) for :meth:`follow_up`, in place of those of its
        run before."""
        kept = table("email_waits", sync)
        run_sql(store.con, f"drop table if exists {kept}")
        self.waits.discard(sync)
        if (
            diff_step.temp_table(store.con, diff_step.EMAIL_WAITS)
            and run_sql(store.con, f"select count(*) from {diff_step.EMAIL_WAITS}")[0][0]
        ):
            run_sql(store.con, f"alter table {diff_step.EMAIL_WAITS} rename to {kept}")
            self.waits.add(sync)

    def follow_up(self, names: Sequence[str], done: Collection[str]) -> str | None:
        """The first of ``names`` (not in ``done``) whose last run, or plan, of the command held
        rows back for a person of another people sync that the other sync has since moved
        on, as its snapshot now says (or, in a command of plans, as the runs planned would
        leave it): a follow-up run of it sends them (docs/sync.md, "Emails that change hands
        between syncs"). None when there is none: nothing waits, or only on people the other
        syncs still hold (a swap between two syncs frees neither)."""
        store = self._store
        if store is None:
            return None
        con = store.con
        for name in names:
            if name in done or name not in self.waits:
                continue
            freed = diff_step.waits_freed(
                con,
                table("email_waits", name),
                lambda other: planned_step.snapshot(con, self.planned, other),
                lambda other: planned_step.emails_kept(con, self.planned, other),
            )
            if freed:
                return name
        return None

    def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            store.close()

    def log_runs(self, project: Project, console: Console) -> None:
        """Write the run log (`run_log:`) when the session ends (:meth:`__exit__`)."""
        self._run_log = (project, console)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        try:
            # not when stopped on purpose (Ctrl-C, SIGTERM): the next run writes them
            if self._run_log is not None and self._store is not None:
                if kind is None or issubclass(kind, Exception):
                    from lockgate.sync.runlog import write_after_runs

                    write_after_runs(*self._run_log, self._store)
        finally:
            self._run_log = None
            self.close()


@contextmanager
def _state(project: Project, session: Session | None) -> Iterator[StateStore]:
    """The state store of one run: the session's, or one opened and closed for the run."""
    if session is None:
        with StateStore.open(project.state_dir) as store:
            yield store
    else:
        yield session.state(project)


def _new_run_id(at: datetime | None = None) -> str:
    """A run's id: the time it started (``at``, now by default), then a random part."""
    return (at or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _prepare(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    console: Console,
    step: _Step,
    *,
    full_resync: bool,
    now: int,
    payloads: bool = True,
    session: Session | None = None,
    only: tuple[str, ...] = (),
    new_workspace: bool = False,
) -> Prepared:
    """Everything before delivery. Without ``payloads`` (a plan), records' payloads are built
    only for the samples shown (``diff.with_payloads``). With ``only``, the run is of the
    records those values name (:func:`_keep_only`). With ``new_workspace``, the sync starts
    over (:func:`workspace.start_over`); otherwise a state of another workspace stops it here
    (:func:`workspace.check`), before anything is read or sent."""
    if store.set_aside is not None:  # said once, by the first run of the store
        console.warn(
            f"the state file was cut off while it was being created (a run killed in its "
            f"first moments) and held nothing: set aside as `{store.set_aside}`, and a new "
            "state created; this run sends every record as a first run does"
        )
        store.set_aside = None
    store.ensure_sync_tables(sync.name)
    if new_workspace:
        workspace.start_over(store, sync.name)
        console.info(
            f"{sync.name}: started over: what the state said was delivered is forgotten, "
            "everything is sent to the workspace the destination points at"
        )
    workspace.check(store, project, sync)
    store.mark_crashed_runs(sync.name, step.run_id)
    # before the fold: the records the journal confirms are left out
    unheard = store.recover_sending(
        sync.name, step.run_id, forget_relationships=_relationships_of(store, project, sync)
    )
    if unheard:
        console.warn(
            f"{sync.name}: a run killed while sending left {unheard} record(s) unconfirmed "
            "(Customer.io may have applied them): they are sent again whatever their rows hold"
        )
    unheard_events = store.recover_sending_events(sync.name, step.run_id)
    if unheard_events:
        console.warn(
            f"{sync.name}: a run killed while sending left {unheard_events} event(s) "
            "unconfirmed (Customer.io may have stored them): they are sent again with the id "
            "they were sent with, whatever their rows hold"
        )
    recovered = store.fold_journal(sync.name)
    if recovered:
        console.warn(f"{sync.name}: recovered {recovered} records delivered by an interrupted run")
    if not payloads and session is not None:  # a plan after others: the state as they leave it
        planned_step.shadow(store, project, sync, session.planned)
    with contextlib.ExitStack() as open_source:
        with step("extract"):
            source = connect(
                project.config.sources[sync.source], root=project.root, name=sync.source
            )
            open_source.callback(source.close)
            # a run of named records copies the rows that may be named (from a DuckDB source,
            # only those, see `_named_in_source`; from others, the model) and keeps those named
            named_in_source = _named_in_source(store, project, sync, source) if only else None
            in_place = (
                None if only else _in_place(store, project, sync, source, full_resync=full_resync)
            )
            if named_in_source is not None:  # the source stays open to find the named rows
                staged = Staged(-1, named_in_source.columns)
            elif in_place is not None:  # the source stays open for the diff
                staged = Staged(-1, in_place.columns)
            else:
                with console.progress(f"extract {sync.name}", None) as advance:
                    try:
                        staged = stage(
                            store.con,
                            source,
                            project.model_sql(sync),
                            sync=sync.name,
                            advance=advance,
                        )
                    except ConfigError as exc:  # two columns of one name
                        raise project.locate(exc, sync.name, ("model",)) from None
                open_source.close()
        resolution = None
        identity_ops = None
        merges_skipped: list[dict[str, Any]] = []
        merge_guard = None
        graph_clears: list[tuple[str, str]] = []
        configured = sync  # the contract (guardrails) is about the sync as configured
        if mapping.needs_identity(project, sync):
            # imported here: the identity stack is ~70 ms of start-up a plain sync does not need
            from lockgate.sync import resolve as resolve_step

            # no count to show, but the elapsed time says the run is working, not stuck
            with step("resolve"), console.progress(f"resolve identities {sync.name}", None):
                config = resolve_step.identity_config(project, sync)
                if session is not None and session.resolution is not None:
                    resolution = session.resolution
                else:
                    resolution = resolve_step.resolve_identities(project, config, step.run_id)
                    if session is not None:
                        session.resolution = resolution
                identity_ops, merges_skipped = resolve_step.merge_operations(
                    store,
                    project,
                    resolution,
                    _app_settings(project, sync),
                    destination=sync.destination,
                    console=console,
                )
                merge_guard = resolve_step.merge_guard(resolution, identity_ops)
                if sync.kind == "people":  # sent ahead of the rows: a row's own is not
                    graph_clears = resolve_step.graph_clears(store, project, resolution)
                if in_place is not None:
                    # an events model read in place: keyed first on no rows, for the columns
                    # the graph adds (and their types) that the mapping reads; the rows of new
                    # events are copied and keyed once the warehouse found them (below)
                    in_place.stage_rows(store.con, _NO_ROWS, lambda _: None)
                sync = resolve_step.key_rows(
                    store.con, sync, resolution, project.sync_files.get(sync.name)
                )
                staged = Staged(staged.rows, {**staged.columns, **_model_columns(store)})
        on_null = project.config.defaults.on_null
        last = contract_state.last(store.con, sync.name)
        # attributes taken out of the mapping, cleared on each record sent (when asked); not
        # one the identity graph's keying adds to the payload
        clear = tuple(
            n
            for n in mapping.removed_attributes(configured, last.mapping if last else None)
            if n not in sync.attributes
        )
        rezone = mapping.rezoned(sync, staged.columns, last.mapping if last else None)
        with step("map"):
            try:
                compiled = mapping.compile_sync(
                    sync,
                    staged.columns,
                    on_null,
                    now,
                    clear,
                    _last_hash(last),
                    # an untimed sync's first run with `older: {rename}`: its history is
                    # backfill, sent under the backfill name
                    history=diff_step.untimed_first_run(sync, last)
                    and sync.backfill.untimed_first_run == "rename",
                    rezone=rezone,
                )
            except ConfigError as exc:
                raise project.locate(exc, sync.name) from None
        naive_columns = tuple(mapping.naive_columns(sync, staged.columns))
        naive = mapping.naive_note(sync, staged.columns) if not payloads else None
        if naive is not None:  # a plan says it once; a run does not repeat it every time
            console.info(f"{sync.name}: {naive}")
        staged_events = None
        if in_place is not None:
            with step("extract"), console.progress(f"extract {sync.name}", None) as advance:
                if sync.kind == "events":
                    ledger = table("ledger", sync.name)
                    # through the graph, the columns it adds are read as nulls: an event's key
                    # is of the model's own columns
                    graph = {c: t for c, t in staged.columns.items() if c not in in_place.columns}
                    in_place.key_events(store.con, compiled, ledger, advance, graph)
                    if resolution is not None:
                        staged_events = _stage_new_events(
                            store, project, configured, in_place, resolution, ledger
                        )
                else:
                    in_place.key(store.con, compiled, advance)
        if only:
            planned = session.planned_people.get(sync.destination) if session else None
            _only_values(store, project, sync, only, planned or ())
            while True:
                if named_in_source is not None:
                    with step("extract"), console.progress(f"extract {sync.name}", None) as advance:
                        values = store.con.sql("select v from only_values").to_arrow_table()
                        named_in_source.stage_named(
                            store.con, compiled, _named("k", "ident"), values, advance
                        )
                if not _name_givers(store, sync, compiled):
                    break
            if named_in_source is not None:
                open_source.close()
            _keep_only(store, sync, compiled, only)
        # columns whose type changed within its family: their rows hash anew
        retyped = guard_step.retyped(
            last.columns if last is not None else {}, staged.columns, compiled.columns_used
        )
        with step("diff"), console.progress(f"diff {sync.name}", None):
            if full_resync and sync.kind != "events":
                _shadow_snapshot(store, sync.name)
            if sync.kind == "events":
                changes = diff_step.diff_events(
                    store.con,
                    sync,
                    compiled,
                    in_place=in_place,
                    staged=staged_events,
                    first_run=diff_step.untimed_first_run(sync, last),
                )
            else:
                related = _related_snapshots(store, project, sync)
                changes = diff_step.diff_records(
                    store.con,
                    sync,
                    compiled,
                    objects_snaps=related.objects,
                    people_snaps=related.people,
                    relationship_snaps=related.relationships,
                    unsure_objects=related.unsure_objects,
                    unsure_people=related.unsure_people,
                    skipped_objects=related.skipped_objects,
                    now=now,
                    in_place=in_place,
                    payloads=payloads,
                    full_resync=full_resync,
                    # through the identity graph, rows of one person are already made one
                    shared_check=sync.kind == "people" and resolution is None,
                    previous_hash=_previous_hash(last, compiled, retyped),
                    retyped=retyped,
                    json_text=_json_text(last, sync, staged.columns),
                    rezoned=rezone.attributes if rezone is not None else (),
                    run_id=step.run_id,
                    undo_unsure=not only,
                    email_holders=_email_holders(store, project, sync),
                    released_first=_released_first(resolution),
                    graph_clears=graph_clears,
                )
        if session is not None and sync.kind == "people":
            session.keep_waits(store, sync.name)
        if only and session is not None and sync.kind == "people":
            session.planned_people.setdefault(sync.destination, set()).update(
                _identifiers_sent(store)
            )
        with step("guard"):
            guards = guard_step.check(
                store.con,
                store,
                project,
                configured,
                changes,
                last=last,
                only=len(only),
                full_resync=full_resync and sync.kind != "events",
            )
            if merge_guard is not None:
                guards.append(merge_guard)
        anonymous_ops = None
        if resolution is not None and not only:  # `--only` sends the named records alone
            from lockgate.sync import resolve as resolve_step

            with step("resolve"):
                reached = _people_reached(store, sync)
                anonymous_ops = resolve_step.anonymous_operations(
                    store,
                    project,
                    resolution,
                    reached,
                    # the people a full resync sends again get their anonymous ids again
                    resent=reached if full_resync and sync.kind == "people" else (),
                    creates=sync.kind == "people",  # one a mirror run deleted comes back
                )
        if only and not full_resync and sync.kind != "events":
            # the snapshot's other records were hidden for the diff; delivery commits to it
            run_sql(store.con, f"drop table if exists temp.{table('snap', sync.name)}")
        return Prepared(
            changes,
            recovered,
            guards,
            resolution,
            identity_ops,
            compiled.src_h,
            naive_columns,
            anonymous_ops,
            tuple(merges_skipped),
            last,
        )


def _answers_recorded(exc: BaseException) -> bool:
    """Whether a run that stopped or failed during or after delivery recorded every answer it
    got: a stop (SIGTERM, Ctrl-C) or a failure commits what was delivered and marks what was
    in flight unconfirmed (``deliver``) unless writing the state failed, a DuckDB error that
    reaches the run as it is (or as the cause of another). Then the run's write-ahead record
    is kept, and the next run takes it as a killed run's."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, duckdb.Error | StateError):  # a write the state refused
            return False
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return True


def _undelivered(*counts: CommitCounts | None) -> bool:
    """Whether a run left records to send again: refused by Customer.io or dead-lettered."""
    return any(c.rejected or c.dead_lettered for c in counts if c is not None)


def _shadow_snapshot(store: StateStore, sync: str) -> None:
    """For `--full-resync`: diff against an empty snapshot without forgetting the real one,
    so a plan, or a run a guardrail stops, leaves the state as it was. A temp table of the
    same name hides the snapshot on this connection; :func:`_reset_snapshot` drops it and
    forgets the snapshot once the run is past the guard.

    What was delivered before stays readable as ``diff.RESYNC_PREVIOUS``: the diff undoes the
    records that left the model from it, and the guardrails measure those removals against
    it. In a run of named records (`--only`, :func:`_keep_only`) that is the named records
    alone, not the whole snapshot: the others are not in this run's model, and have not left
    it."""
    snap = table("snap", sync)
    previous = diff_step.RESYNC_PREVIOUS
    named = store.con.execute(
        "select count(*) from duckdb_tables() where temporary and table_name = ?",
        [f"snap__{sync}"],
    ).fetchall()[0][0]
    _drop_previous(store)
    if named:  # `_keep_only` hid the records not named behind a temp table: keep that one
        run_sql(store.con, f"alter table temp.{snap} rename to {previous}")
    else:
        database = run_sql(store.con, "select current_database()")[0][0]
        run_sql(
            store.con,
            f'create temp view {previous} as select * from "{database}".main.{snap}',
        )
    run_sql(store.con, f"create or replace temp table {snap} as from main.{snap} limit 0")


def _drop_previous(store: StateStore) -> None:
    """Drop ``diff.RESYNC_PREVIOUS``, a view or a table (DuckDB drops each only by its kind)."""
    for kind, name in store.con.execute(
        "select 'table', table_name from duckdb_tables() where temporary and table_name = $1 "
        "union all select 'view', view_name from duckdb_views() where temporary and "
        "view_name = $1",
        [diff_step.RESYNC_PREVIOUS],
    ).fetchall():
        run_sql(store.con, f"drop {kind} temp.main.{name}")


def _reset_snapshot(
    store: StateStore,
    sync: SyncConfig,
    run_id: str,
    only: bool = False,
    refused: Collection[str] = (),
) -> None:
    """Past the guard of a `--full-resync` run: forget the snapshot (with ``only``, of the
    named records alone, :func:`_keep_only`), so what is not delivered is sent again. A
    relationship the run holds because an end left its model stays (``diff.RESYNC_HELD``):
    it may still be in Customer.io, and is deleted if it leaves the model; stale, as the end
    may have been deleted by hand with it, so it is sent again once the end is back. So
    does a record the run undoes (`mirror`: it left the model): its clear or delete forgets it once
    Customer.io confirms it, and one that fails is undone again by the next run, not
    forgotten with the snapshot while Customer.io still holds the record. So does a
    delivered record whose row the run rejects (``rejected_rows``: its key repeated, a bad
    value) or refuses before delivery (``refused``: an email another person holds, a merge
    kept back, :func:`_hold_emails_of_merges_kept_back`): not sent, Customer.io holds what it
    was sent before (the email later runs must know that person holds), which
    is undone if the row leaves the model (`mirror`), as in any run; of an objects sync, it
    is marked (``diff.RESYNC_SKIPPED``, in ``unconfirmed__S``): the resync did not send it
    again, and Customer.io may not hold it (deleted by hand), so it is sent again once its row
    can be, whatever the row holds then, and meanwhile the relationships syncs hold the
    relationships of its object rather than create it empty. So does a relationship
    that left the model while a row of its object is rejected with no person
    (``diff.KEPT_UNADDRESSED``: it may be that row's), removed once the row is fixed or
    leaves. So does, outside `mirror`, a record whose row left the model: nothing is sent for
    it and its person (or object) stays in Customer.io as it was, so later runs still know it
    exists and holds its email (a user who comes back with a retired lead's email has the
    lead merged into them). So does, in `mirror`, a record whose row left while a row still
    in the model reaches the same person (``rekeyed``, :func:`diff._still_reached`: the
    email key in another case on a row the run rejects): it was not undone, and stays until
    the snapshot holds its identifiers under the new key (``diff.forget_rekeyed``, after the
    commit), so it is undone once its person's last row leaves.

    The records forgotten are written ahead (``sending__S``) as records new to the snapshot,
    in the transaction that forgets them: a run killed from here on, before or after its own
    write-ahead, leaves them to the next run as unconfirmed, with the identifiers they were
    delivered to. So that run, with or without the flag, sends each of them again (the
    resync completes), undoes one whose row has left (`mirror`), and counts them among the
    records its guardrails measure removals against; forgotten outright, they were new to
    it (one whose row had left stayed in Customer.io), and the few records the snapshot kept
    made the removals a false share of 100%."""
    snap = table("snap", sync.name)
    run_sql(store.con, f"drop table if exists temp.{snap}")
    undone = "_resync_undone"
    kept = diff_step.temp_table(store.con, diff_step.KEPT_UNADDRESSED)
    # outside `mirror`, a record whose row left the model is left in Customer.io as it is:
    # the snapshot keeps it, as an ordinary run does (what tells later runs that its person
    # exists and holds its email: ``resolve.known_people``, ``diff.order_email_moves``)
    left = (
        ""
        if sync.effective_mode == "mirror" or not diff_step.temp_table(store.con, "keyed")
        else f" union select k from {diff_step.RESYNC_PREVIOUS} anti join keyed m using (k)"
    )
    # in `mirror`, a record whose row left while a row still in the model reaches its person
    # (``rekeyed``: the email key in another case, on a row the run rejects, say) was not
    # undone: kept, as an ordinary run keeps it, until the commit forgets it once the snapshot
    # holds its identifiers under the new key (``diff.forget_rekeyed``); forgotten here, the
    # person the new row never reached would not be undone once that row leaves too
    if diff_step.temp_table(store.con, "rekeyed"):
        left += " union select k from rekeyed"
    with registered(
        store.con, "_resync_refused", pa.table({"k": pa.array(sorted(refused), pa.string())})
    ):
        run_sql(
            store.con,
            f"""
            create or replace temp table {undone} as
            select s.* from {diff_step.RESYNC_PREVIOUS} s
            semi join (
                select k from changes where removed union select k from rejected_rows
                union select k from _resync_refused{left}
                {f"union select k from {diff_step.KEPT_UNADDRESSED}" if kept else ""}
            ) c on c.k = s.k
            """,
        )
    skipped = "_resync_skipped"
    if sync.kind == "objects":
        run_sql(
            store.con,
            f"""
            create or replace temp table {skipped} as
            select distinct s.k from {diff_step.RESYNC_PREVIOUS} s
            semi join rejected_rows r on r.k = s.k
            anti join (
                select k from main.{table("unconfirmed", sync.name)}
                where action = {mapping.lit(diff_step.RESYNC_SKIPPED)}
            ) u on u.k = s.k
            """,
        )
    _drop_previous(store)
    held = sync.kind == "relationships" and diff_step.temp_table(store.con, diff_step.RESYNC_HELD)
    forgotten = "_resync_forgotten"
    with transaction(store.con, store.path):
        if sync.kind == "objects":
            mark = mapping.lit(diff_step.RESYNC_SKIPPED)
            run_sql(
                store.con,
                f"insert into main.{table('unconfirmed', sync.name)} (k, run_id, action) "
                f"select k, {mapping.lit(run_id)}, {mark} from {skipped}; drop table {skipped}",
            )
        run_sql(
            store.con,
            f"create or replace temp table {forgotten} as select k, ident from main.{snap}",
        )
        if not only:
            store.reset_sync(sync.name, in_transaction=True)
            if held:
                run_sql(store.con, f"insert into main.{snap} from {diff_step.RESYNC_HELD}")
        else:
            keep = f" and k not in (select k from {diff_step.RESYNC_HELD})" if held else ""
            run_sql(
                store.con,
                f"delete from main.{snap} where {_named('k', 'ident')}{keep} "
                f"and k not in (select k from {undone})",
            )
        run_sql(
            store.con,
            f"insert into main.{snap} by name select * from {undone} u "
            f"where u.k not in (select k from main.{snap}); drop table {undone}",
        )
        action = "'add_relationships'" if sync.kind == "relationships" else "'identify'"
        store.record_sending(
            sync.name,
            f"(select f.k, f.ident from {forgotten} f anti join main.{snap} s on s.k = f.k)",
            action,
            new="true",
        )
        run_sql(store.con, f"drop table {forgotten}")


def _named(key: str, ident: str) -> str:
    """SQL true for a record the values of the temp table ``only_values`` name (see
    :func:`_keep_only`): by its key, or by its person's `id`, `cio_id` or email (any case)."""

    def who(field: str) -> str:
        return (
            f"case when json_valid({ident}) then coalesce(json_extract_string({ident}, "
            f"'$.person.{field}'), json_extract_string({ident}, '$.{field}')) end"
        )

    # first a cheap test: a value that names a person is in the identifiers' JSON text as the
    # string `to_json` writes (identifiers are always text, `mapping.identifier_sql`); DuckDB
    # parses only the rows that pass it (at 1M records, 1.4-2.7 s -> 0.5-1.1 s)
    in_text = (
        "list_bool_or(list_transform((select list(lower(to_json(v)::varchar)) from "
        f"only_values), lambda s: contains(lower({ident}), s)))"
    )
    named_key = f"{key} in (select v from only_values)"
    return (
        f"(({named_key} or {in_text}) and ({named_key} "
        f"or {who('id')} in (select v from only_values) "
        f"or {who('cio_id')} in (select v from only_values) "
        f"or lower({who('email')}) in (select lower(v) from only_values)))"
    )


def _people_reached(store: StateStore, sync: SyncConfig) -> set[tuple[str, str]]:
    """`(kind, value)` of the people the rows of a people or events sync's diff are sent to
    (`id`, and email lowercased), who exist in Customer.io once the rows are delivered: an
    identify creates its person, and so does an event for an unknown `id` or email."""
    if sync.kind not in ("people", "events"):
        return set()
    rows = run_sql(
        store.con,
        """
        select distinct json_extract_string(ident, '$.id'),
                        lower(json_extract_string(ident, '$.email'))
        from changes where not removed and json_valid(ident)
        """,
    )
    out: set[tuple[str, str]] = set()
    for person_id, email in rows:
        if person_id is not None:
            out.add(("id", str(person_id)))
        if email is not None:
            out.add(("email", str(email)))
    return out


def _identifiers_sent(store: StateStore) -> set[str]:
    """The `id`, `cio_id` and email of the people a people sync's diff would send (the temp
    table ``changes``, not those a `mirror` run undoes)."""
    rows = run_sql(
        store.con,
        """
        select distinct v from (
            select unnest([json_extract_string(ident, '$.id'),
                           json_extract_string(ident, '$.cio_id'),
                           json_extract_string(ident, '$.email')]) as v
            from changes where not removed and json_valid(ident)
        ) where v is not null
        """,
    )
    return {str(r[0]) for r in rows}


def _only_values(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    only: tuple[str, ...],
    planned: Collection[str] = (),
) -> None:
    """For `--only`: the temp table ``only_values`` of the values that name records (see
    :func:`_keep_only`), with the other identifiers of each person they name: those a people
    sync delivered them with, and those the people syncs of the command before it send (or a
    plan's would: ``planned``, :attr:`Session.planned_people`)."""
    con = store.con
    con.execute(
        "create or replace temp table only_values as select unnest(?::varchar[]) as v",
        [list(dict.fromkeys([*only, *sorted(planned)]))],
    ).fetchall()
    # a person named by one identifier is found by the others too: the `id`, `cio_id` and
    # email a people sync delivered them with (an email names their relationships and events,
    # which may carry only the `id`)
    for other in project:
        if other.kind != "people" or other.destination != sync.destination:
            continue
        store.ensure_sync_tables(other.name)
        snap = table("snap", other.name)
        run_sql(
            con,
            f"""
            insert into only_values
            select distinct v from (
                select unnest([json_extract_string(ident, '$.id'),
                               json_extract_string(ident, '$.cio_id'),
                               json_extract_string(ident, '$.email')]) as v
                from main.{snap} where json_valid(ident) and {_named("k", "ident")}
            ) where v is not null and v not in (select v from only_values)
            """,
        )


def _name_givers(store: StateStore, sync: SyncConfig, compiled: mapping.Compiled) -> int:
    """For `--only` in a people sync identified by email: name too the records delivered with
    an email a named row of the model now has (a row giving it up, or still holding it), by
    their key; how many were added. Customer.io drops an update whose email another person
    holds, so the row giving the email up must be sent in the same run, first, as in a whole
    run (``diff.order_email_moves``); a row that gives up its email to someone else is found by
    that email already (:func:`_only_values`)."""
    if sync.kind != "people" or "email" not in sync.identify_by:
        return 0
    con = store.con
    before = int(run_sql(con, "select count(*) from only_values")[0][0])
    run_sql(
        con,
        f"""
        insert into only_values
        select distinct s.k::varchar from main.{table("snap", sync.name)} s
        where json_valid(s.ident)
          and lower(json_extract_string(s.ident, '$.email')) in (
              select lower(json_extract_string(ident, '$.email'))
              from ({compiled.select}) where {_named("k", "ident")})
          and s.k::varchar not in (select v from only_values)
        """,
    )
    return int(run_sql(con, "select count(*) from only_values")[0][0]) - before


def _keep_only(
    store: StateStore, sync: SyncConfig, compiled: mapping.Compiled, only: tuple[str, ...]
) -> None:
    """For `--only`: cut the staged model down to the rows the values of ``only_values``
    (:func:`_only_values`) name, and hide the other records of the snapshot behind a temp
    table of the same name, so the diff, the guardrails and a `mirror` sync's removals see the
    named records alone. A value names a record by its key (as `lockgate runs show` and
    `history` print it), or a person by their `id`, `cio_id` or email: all their records (a
    person's events, their relationships). Nothing matching is an error."""
    con = store.con
    run_sql(
        con,
        f"""
        create or replace temp table model_only as
        select * from model where rowid in (
            select __rid from ({compiled.select}) where {_named("k", "ident")}
        );
        drop table model;
        alter table model_only rename to model;
        """,
    )
    rows = int(run_sql(con, "select count(*) from model")[0][0])
    records = 0
    if sync.kind != "events":
        snap = table("snap", sync.name)
        run_sql(
            con,
            f"create or replace temp table {snap} as "
            f"select * from main.{snap} where {_named('k', 'ident')}",
        )
        records = int(run_sql(con, f"select count(*) from {snap}")[0][0])
    if not rows and not records:
        shown = ", ".join(f"`{v}`" for v in only)
        raise NothingNamedError(
            f"sync `{sync.name}`: nothing matches {shown}: no row of the model, and no record "
            "sent before",
            hint="a value is a record key (as `lockgate runs show` or `lockgate history` print "
            "it), or a person's id, email or cio_id",
        )


def _named_in_source(
    store: StateStore, project: Project, sync: SyncConfig, source: Source
) -> InPlace | None:
    """For a run of named records (`--only`): the model read where it lives, so the source
    finds the named rows (:meth:`InPlace.stage_named`) and a few rows are copied instead of
    the model. A DuckDB model without an identity graph (which keys the staged rows itself)."""
    if mapping.needs_identity(project, sync):
        return None
    return InPlace.open(store.con, source, project.model_sql(sync), sync=sync.name)


#: no rows to copy (:meth:`InPlace.stage_rows` then reads none)
_NO_ROWS = pa.table({"h": pa.array([], pa.uint64())})


def _stage_new_events(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    in_place: InPlace,
    resolution: Resolution,
    ledger: str,
) -> diff_step.StagedEvents:
    """For an events sync through the identity graph read in place: copy the rows of keys the
    ledger lacks (:func:`diff.stage_new_events`) and key them through the graph. The graph is
    built from the identity sources, not from the model, and keys each row alone, so the rows
    of delivered events (never sent again) need not be keyed. ``sync`` is the sync as
    configured (not yet keyed)."""
    from lockgate.sync import resolve as resolve_step

    file = project.sync_files.get(sync.name)

    def restage() -> None:  # the model read differently the second time: all of it
        in_place.stage_all(store.con, lambda _: None)
        resolve_step.key_rows(store.con, sync, resolution, file)

    staged = diff_step.stage_new_events(store.con, ledger, in_place, restage)
    resolve_step.key_rows(store.con, sync, resolution, file)
    return staged


def _in_place(
    store: StateStore, project: Project, sync: SyncConfig, source: Source, *, full_resync: bool
) -> InPlace | None:
    """The model read where it lives (see :class:`InPlace`) when that can save copying it: a
    DuckDB model of a people, objects or relationships sync with a snapshot to diff against
    (not a full resync, which diffs against none) and without an identity graph (which
    rewrites the staged rows), or of an events sync with delivered events in its ledger (a
    full resync keeps the ledger, so it reads in place too). Through the identity graph, only
    the rows of new events are keyed by it (:func:`_stage_new_events`); not when the model has
    a column named like one the graph adds (``profile_id``, ``cio_*``), which the copy drops."""
    through_graph = mapping.needs_identity(project, sync)
    if through_graph and sync.kind != "events":
        return None
    if sync.kind == "events":
        delivered = table("ledger", sync.name)
    elif full_resync:
        return None
    else:
        delivered = table("snap", sync.name)
    if not store.con.execute(f"select exists(select 1 from {delivered})").fetchall()[0][0]:
        return None
    in_place = InPlace.open(store.con, source, project.model_sql(sync), sync=sync.name)
    if in_place is not None and through_graph and _graph_named(sync, list(in_place.columns)):
        return None
    return in_place


def _graph_named(sync: SyncConfig, columns: list[str]) -> bool:
    """Whether the model has a column named like one the identity graph adds to each row (the
    copy drops it, or refuses the sync when it reads it: ``resolve.model_collisions``)."""
    from lockgate.sync import resolve as resolve_step

    try:
        return bool(resolve_step.model_collisions(sync, columns))
    except ConfigError:  # the copied run reports it, naming the sync file
        return True


class Prepared(NamedTuple):
    """What a run knows before it sends anything."""

    changes: diff_step.ChangeSet
    recovered: int
    guards: list[guard_step.GuardResult]
    resolution: Resolution | None
    identity_ops: pa.Table | None
    mapping_hash: str
    """The SQL of the rows' hash under this run's mapping, recorded when the run commits."""
    naive_timestamps: tuple[str, ...] = ()
    """The model's timestamps without a time zone the mapping sends as times
    (:func:`mapping.naive_columns`), read in the sync's `timezone`, else as UTC."""
    anonymous_ops: pa.Table | None = None
    """The identifies carrying the anonymous ids a profile's own identify does not, sent after
    the sync's rows (:func:`resolve.anonymous_operations`); None without the graph or with
    `--only`."""
    merges_skipped: tuple[dict[str, Any], ...] = ()
    """The merges kept back, by `merge_policy.enabled: false` or held for review by
    `min_path_rank` (:func:`resolve.skipped_merge`)."""
    last: contract_state.Contract | None = None
    """The contract of the sync's last committed run (:func:`contract_state.last`), as the run
    found it: nothing but the run's own commit writes it (``contract_state.record``), so the
    commit reads it from here rather than from the state again."""


def _graph_use(resolution: Resolution | None) -> str:
    """The report's `identity_graph`: how the run came by the graph it keyed rows with."""
    if resolution is None:
        return ""
    return "reused" if resolution.reused else "stitched"


def _last_hash(last: contract_state.Contract | None) -> mapping.LastHash | None:
    """The row hash the sync's last committed run recorded, with its mapping: kept when this
    run's mapping sends the same payloads (``mapping.source_hash``)."""
    if last is None or not last.mapping_hash or last.mapping is None:
        return None
    return mapping.LastHash(last.mapping_hash, last.mapping)


def _same_hash(last: contract_state.Contract, sync: SyncConfig, mapping_hash: str) -> bool:
    """Whether a run that hashed rows with ``mapping_hash`` keeps the last recorded mapping:
    the same hash of a mapping only spelt otherwise (``mapping.normal_form``), maybe with the
    terms for list, map and struct values added to it (``mapping.hash_base``). A hash kept from
    before hashes were normalised (``mapping.source_hash``) stays valid only with the mapping
    it was made from."""
    return (
        bool(mapping_hash)
        and last.mapping_hash is not None
        and mapping.hash_base(last.mapping_hash) == mapping.hash_base(mapping_hash)
        and last.mapping is not None
        and mapping.normal_form(last.mapping) == mapping.normal_form(mapping.shaping(sync))
    )


def _json_text(
    last: contract_state.Contract | None, sync: SyncConfig, columns: dict[str, str]
) -> list[str]:
    """The attributes this run sends as the JSON values their column holds
    (``mapping.json_values``) whose last committed run staged that column as text, and so
    sent, and watched for `on_change`, the JSON's text (an earlier Lockgate)."""
    if last is None or not sync.on_change:
        return []
    out = []
    for name in mapping.json_values(sync, columns):
        spec = sync.attributes.get(name)
        was = last.columns.get((spec.column or name) if spec is not None else "")
        if was is not None and not mapping.holds_json(was):
            out.append(name)
    return out


def _previous_hash(
    last: contract_state.Contract | None,
    compiled: mapping.Compiled,
    retyped: dict[str, str] | None = None,
) -> str | None:
    """The row hash SQL of the sync's last committed run (``last``), when its mapping differs
    from this run's, or a column it hashes changed type within its family (``retyped``; see
    ``ChangeSet.remapped``)."""
    if last is None or not last.mapping_hash:
        return None
    if last.mapping_hash == compiled.src_h and not retyped:
        return None
    return last.mapping_hash


def _model_columns(store: StateStore) -> dict[str, str]:
    return {row[0]: row[1] for row in store.con.execute("describe model").fetchall()}


def _deliver_ops(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    destination_factory: DestinationFactory,
    ops: pa.Table,
    name: str,
    *,
    label: str,
    forget_merged: Callable[[StateStore, list[str]], None] | None = None,
    ledger_once: bool = False,
) -> CommitCounts:
    """Deliver the Customer.io operations ``ops`` (``k``, ``op``) to the sync's ledger, kept
    for it as the temp table ``name`` (no row hash, no identifiers, nothing removed);
    ``forget_merged``, ``ledger_once``: see ``Committer``."""
    table_ = ops.append_column("h", pa.nulls(ops.num_rows, pa.uint64()))
    table_ = table_.append_column("ident", pa.nulls(ops.num_rows, pa.string()))
    table_ = table_.append_column("removed", pa.array([False] * ops.num_rows))
    with registered(store.con, f"_{name}", table_):
        run_sql(store.con, f"create or replace temp table {name} as select * from _{name}")
    return _deliver_to_ledger(
        store,
        project,
        sync,
        run_id,
        console,
        destination_factory,
        label=label,
        kind="ops",
        source=name,
        total=ops.num_rows,
        forget_merged=forget_merged,
        ledger_once=ledger_once,
    )


def _deliver_identity_ops(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    ops: pa.Table,
    destination_factory: DestinationFactory,
) -> None:
    """Send the identity graph's Customer.io operations (merges, then identifiers re-applied
    to the survivors) before the sync's own updates; each key is ledgered once delivered, so
    a merge is sent exactly once across re-runs. An undelivered merge stops the run: the
    updates that assume it would land on the wrong person."""
    from lockgate.sync import resolve as resolve_step  # imported by the plan that made ``ops``

    counts = _deliver_ops(
        store,
        project,
        sync,
        run_id,
        console,
        destination_factory,
        ops,
        "identity_ops",
        label="identity merges",
        forget_merged=resolve_step.merged_away(project, ops),
    )
    if counts.failed_keys:
        key, outcome, reason = counts.failures[0]
        raise DestinationError(
            f"sync `{sync.name}`: {len(counts.failed_keys)} identity operation(s) were "
            f"not delivered (e.g. `{key}`: {outcome}, {reason})",
            hint="nothing else was sent; run the sync again once Customer.io accepts them",
        )


def _deliver_anonymous_ids(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    ops: pa.Table,
    rows: CommitCounts,
    destination_factory: DestinationFactory,
) -> tuple[CommitCounts, pa.Table]:
    """Send the identifies carrying the anonymous ids a profile's own identify does not
    (``resolve.anonymous_operations``), after the sync's rows: their people exist now. Each key
    is ledgered once delivered, so an anonymous id reaches one person once; one not delivered
    is sent by the next run. Those of a person whose row was not delivered wait too: sent
    alone, an identify by a new `id` would create a person of its own. The counts join the
    run's, and the operations delivered are returned with them."""
    if rows.failed_keys:
        with registered(
            store.con, "_failed_keys", pa.table({"k": pa.array(sorted(rows.failed_keys))})
        ):
            failed = run_sql(
                store.con,
                "select json_extract_string(ident, '$.id'), "
                "lower(json_extract_string(ident, '$.email')) "
                "from changes where json_valid(ident) and k in (select k from _failed_keys)",
            )
        waiting = {("id", str(i)) for i, _ in failed if i is not None}
        waiting |= {("email", str(e)) for _, e in failed if e is not None}

        def reached(op: str) -> bool:
            ((kind, value),) = orjson.loads(op)["identifiers"].items()
            return (kind, value.lower() if kind == "email" else value) not in waiting

        ops = ops.filter(pa.array([reached(op) for op in ops["op"].to_pylist()], pa.bool_()))
    counts = _deliver_ops(
        store,
        project,
        sync,
        run_id,
        console,
        destination_factory,
        ops,
        "anonymous_ops",
        label="anonymous ids",
        ledger_once=True,  # a full resync sends delivered ones again
    )
    if counts.failed_keys:
        key, outcome, reason = counts.failures[0]
        console.warn(
            f"{sync.name}: {len(counts.failed_keys)} anonymous id(s) could not be attached to "
            f"their person (e.g. `{key}`: {outcome}, {reason}); sent by the next run"
        )
        import pyarrow.compute as pc  # here: 30-60 ms at every start-up otherwise

        failed = pa.array(sorted(counts.failed_keys), pa.string())
        ops = ops.filter(pc.invert(pc.is_in(ops["k"], value_set=failed)))
    return counts, ops


def _deliver_email_clears(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    destination_factory: DestinationFactory,
) -> CommitCounts:
    """Clear the emails that rows of this run take from people who keep theirs otherwise
    (one side of a swap, a person whose email is now null), before the rows are sent
    (``diff.order_email_moves``). When a clear is not delivered, the rows that pass emails
    are left for the next run: sent now, Customer.io would drop them (the email is still
    another person's) and Lockgate would count them delivered. A clear whose answer never came
    (dead-lettered, cut off) may have been applied: its person is marked unconfirmed, so the
    next run sends that person's row whatever it holds then (the swap undone meanwhile would
    otherwise leave the person without an email). The counts join the run's."""
    total = int(store.con.execute("select count(*) from email_clears").fetchall()[0][0])
    counts = _deliver_to_ledger(
        store,
        project,
        sync,
        run_id,
        console,
        destination_factory,
        label="email releases",
        kind="ops",
        source="email_clears",
        total=total,
        unconfirmed_as=lambda key: key.removesuffix("#release-email"),
    )
    if counts.failed_keys:
        key, outcome, reason = counts.failures[0]
        console.warn(
            f"{sync.name}: {len(counts.failed_keys)} email(s) taken by another person of this "
            f"run could not be released first (e.g. `{key}`: {outcome}, {reason}); the rows "
            "passing emails are sent by the next run"
        )
        run_sql(
            store.con,
            "delete from changes where k in (select k from email_phases) "
            "or k in (select k from email_released)",
        )
    return counts


def _delivery_phases(store: StateStore) -> list[str]:
    """The sources a run delivers ``changes`` from (``diff.delivery_phases``); none when it is
    empty: a run with nothing to send builds no client and no payload query (the mapping's
    SQL bound again for no row) and commits no empty batch."""
    phases = diff_step.delivery_phases(store.con)
    if phases == ["changes"] and not run_sql(store.con, "select exists (from changes)")[0][0]:
        return []
    return phases


def _released(store: StateStore, counts: CommitCounts | None) -> set[str]:
    """The keys of the people whose email this run cleared (:func:`_deliver_email_clears`),
    and of those the identity graph's operations cleared ahead of the rows instead
    (``diff.released_keys``)."""
    return diff_step.released_keys(store.con, None if counts is None else counts.failed_keys)


def _app_settings(project: Project, sync: SyncConfig) -> CustomerIOSettings | None:
    """The App API settings to check emails with (as `lockgate reconcile` reads back), or
    None without a key."""
    from lockgate.sync.reconcile import app_settings

    try:
        settings = app_settings(project, sync)
    except LockgateError:  # the key's variable is not set
        return None
    return settings if settings.app_api_key else None


def _email_check_settings(project: Project, sync: SyncConfig) -> CustomerIOSettings | None:
    """The App API settings to read back email changes with, or None without a key or with
    `read_back_emails: 0`."""
    if not project.config.destinations[sync.destination].read_back_emails:
        return None
    return _app_settings(project, sync)


def _new_check_settings(project: Project, sync: SyncConfig) -> CustomerIOSettings | None:
    """The App API settings to check new people's emails with, or None without a key or with
    `check_new_emails: 0`."""
    if not project.config.destinations[sync.destination].check_new_emails:
        return None
    return _app_settings(project, sync)


def _not_verified(
    project: Project, sync: SyncConfig, moves: int, *, planned: bool, new: int = 0
) -> str:
    """The report's line on the ``new`` people whose email nobody checks before they are sent
    and the ``moves`` email changes no read-back verifies, and how to turn the checks on."""
    config = project.config.destinations[sync.destination]
    whats = []
    if new:
        people = f"{new} new {'person' if new == 1 else 'people'}"
        verb = "will not be" if planned else "was not" if new == 1 else "were not"
        whats.append(f"{people}'s {'email' if new == 1 else 'emails'} {verb} checked")
    if moves:
        people = f"{moves} {'person' if moves == 1 else 'people'}"
        verb = "will not be" if planned else "was not" if moves == 1 else "were not"
        whats.append(f"{people} given a new email {verb} read back")
    options = [
        f"`{option}: 0`"
        for option, count in (("check_new_emails", new), ("read_back_emails", moves))
        if count and not getattr(config, option)
    ]
    them = "check them" if new else "read them back"
    match = ENV_REF.match(config.app_api_key or "")
    if options:
        how = f"{' and '.join(options)} in destination `{sync.destination}` turn"
        how += "s it off" if len(options) == 1 else " them off"
    elif match:
        how = f"set `{match.group(1)}` (an App API key) to {them}"
    else:
        how = f"set `app_api_key` in destination `{sync.destination}` to {them}"
    why = []
    if new:
        why.append("gives a new id sent with an email another person holds to that person")
    if moves:
        why.append("drops, unseen, an update whose email another person holds")
    where = "An email someone else holds" if new else "Emails read back"
    return f"{' and '.join(whats)}: Customer.io {', and '.join(why)}; {how} (docs/sync.md, {where})"


def _clear_objects_still_there(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    changes: diff_step.ChangeSet,
) -> tuple[diff_step.ChangeSet, str]:
    """Before an objects sync's `mirror` run (without `delete_removed`) clears the objects
    that left its model: with an App API key, look each up (:mod:`lockgate.sync.objectcheck`).
    One Customer.io holds is cleared by its ``cio_object_id`` (update-only: deleted meanwhile,
    it is not created again); one it no longer holds (deleted by hand since) is not cleared,
    which would create it again, empty, and the run journals it as removed, so the sync
    forgets it. An App API that cannot be read leaves every clear for the next run. Without a
    key the clears go by type and id, as before, and the report's line says what that risks.
    Returns the changes as counted now, and that line (empty when there is nothing to say)."""
    if sync.kind != "objects" or sync.effective_mode != "mirror" or sync.delete_removed:
        return changes, ""
    leaving = [
        (str(k), str(t), str(o))
        for k, t, o in run_sql(
            store.con,
            "select k, json_extract_string(ident, '$.object_type_id'), "
            "json_extract_string(ident, '$.object_id') from changes where removed order by k",
        )
    ]
    if not leaving:
        return changes, ""
    n = len(leaving)
    objects = "1 object" if n == 1 else f"{n} objects"
    settings = _app_settings(project, sync)
    if settings is None:
        match = ENV_REF.match(project.config.destinations[sync.destination].app_api_key or "")
        how = (
            f"set `{match.group(1)}` (an App API key)"
            if match
            else f"set `app_api_key` in destination `{sync.destination}`"
        )
        return changes, (
            f"{objects} that left the model {'was' if n == 1 else 'were'} cleared without "
            f"checking that Customer.io still holds {'it' if n == 1 else 'them'}: an object "
            f"deleted there since is created again, empty, by its clear; {how} to look them up "
            "first (docs/sync.md, Objects and relationships)"
        )
    from lockgate.sync.objectcheck import look_up

    check = look_up(leaving, settings, console=console)
    if check.error:  # none cleared: the snapshot keeps them, gone again in the next run
        run_sql(store.con, "delete from changes where removed")
        note = (
            f"{objects} that left the model {'was' if n == 1 else 'were'} not cleared: the App "
            f"API could not be read to check that Customer.io still holds "
            f"{'it' if n == 1 else 'them'} ({check.error}); the next run tries again"
        )
        return dataclasses.replace(
            changes,
            to_send=changes.to_send - n,
            removed_sent=changes.removed_sent - n,
            attributes_cleared=changes.attributes_cleared - n * len(sync.attributes),
        ), note
    related = [o.name for o in planned_step.relationship_syncs(project, sync)]
    siblings = [
        o.name
        for o in project
        if o.kind == "objects"
        and o.name != sync.name
        and o.destination == sync.destination
        and o.object_type_id == sync.object_type_id
    ]
    for name in (*related, *siblings) if check.gone else ():
        store.ensure_sync_tables(name)
    with transaction(store.con):
        run_sql(store.con, "create or replace temp table objects_found (k varchar, cio varchar)")
        if check.found:
            store.con.executemany(
                "insert into objects_found values (?, ?)", list(check.found.items())
            )
        run_sql(
            store.con,
            """
            update changes set op = '{"type":"object","action":"identify","identifiers":'
                || '{"cio_object_id":' || to_json(f.cio) || '},"attributes":'
                || json_extract(changes.op, '$.attributes')::varchar || '}'
            from objects_found f where f.k = changes.k and changes.removed
            """,
        )
        if check.gone:  # forgotten as a delivered removal is: the journal folds them away
            run_sql(store.con, "create or replace temp table objects_gone (k varchar)")
            store.con.executemany("insert into objects_gone values (?)", [(k,) for k in check.gone])
            run_sql(
                store.con,
                f"insert into {table('journal', sync.name)} (run_id, k, h, ident, removed) "
                "select ?, c.k, null, c.ident, true from changes c "
                "semi join objects_gone g on g.k = c.k where c.removed",
                [run_id],
            )
            # gone with its relationships, as after a delete of ours: the relationships
            # syncs forget them (held, then sent again once the object is back), and the other
            # objects syncs of the type the object (sent again in full)
            idents = [
                str(i)
                for (i,) in run_sql(
                    store.con,
                    "select ident from changes semi join objects_gone g on g.k = changes.k "
                    "where removed",
                )
            ]
            diff_step.forget_relationships_of(store.con, "objects", related, idents, confirmed=True)
            diff_step.forget_people_of(store.con, siblings, idents, "objects")
            run_sql(
                store.con,
                "delete from changes where removed and k in (select k from objects_gone); "
                "drop table objects_gone",
            )
        run_sql(store.con, "drop table objects_found")
    gone = len(check.gone)
    return dataclasses.replace(
        changes,
        to_send=changes.to_send - gone,
        removed_sent=changes.removed_sent - gone,
        removed_gone=gone,
        attributes_cleared=changes.attributes_cleared - gone * len(sync.attributes),
    ), ""


def _hold_relationships_of_rejected_objects(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    changes: diff_step.ChangeSet,
    *,
    plan: bool = False,
) -> tuple[diff_step.ChangeSet, str]:
    """Before a relationships run sends: of its `add_relationships`, those whose object's row
    the objects sync rejects (``diff.REJECTED_OBJECTS``, its last whole run). The objects sync
    sends nothing for such an object, so one deleted in Customer.io by hand stays deleted, and
    an `add_relationships` naming it would create it again, empty (Customer.io creates an
    object a relationship names); `--full-resync` cannot mend it while its row is rejected.

    With an App API key each such object is looked up (:mod:`lockgate.sync.objectcheck`): the
    relationships of one Customer.io holds are sent; those of one it does not hold are held,
    and the object is marked as a full resync marks an object it did not send again
    (``diff.RESYNC_SKIPPED``): sent again once its row can be, whatever the row holds, and its
    relationships held until then (with no further look-up). Without a key Lockgate cannot
    tell, and does the same for every such object: a relationship waits for its row to be
    fixed rather than risk an empty object (docs/sync.md, Objects and relationships). An App
    API that cannot be read holds them for this run only. A run whose objects syncs reject no
    delivered object (the common case) asks nothing: one catalogue look-up per objects sync.
    A ``plan`` looks nothing up and marks nothing: without a key it holds them as the run
    will; with one it shows them as to send (the run looks them up). Returns the changes as
    counted now, and the report's line (empty when nothing is held)."""
    marked = []
    for other in project:
        if (
            other.kind == "objects"
            and other.destination == sync.destination
            and other.object_type_id == sync.object_type_id
            and has_table(store.con, f"{diff_step.REJECTED_OBJECTS}__{other.name}")
        ):
            marked.append((other.name, table(diff_step.REJECTED_OBJECTS, other.name)))
    if not marked:
        return changes, ""
    rejected = " union all ".join(
        f"select {mapping.lit(name)} as sync, o from {t}" for name, t in marked
    )
    at_risk = [
        (str(o), str(name))
        for o, name in run_sql(
            store.con,
            f"select r.o, min(r.sync) from ({rejected}) r "
            "semi join (select object_id from changes where not removed) c on c.object_id = r.o "
            "group by r.o order by r.o",
        )
    ]
    if not at_risk:
        return changes, ""
    type_id = str(sync.object_type_id)
    settings = _app_settings(project, sync)
    if plan and settings is not None:
        return changes, ""
    reasons: dict[str, str] = {}
    mark: list[str] = []
    note = ""
    if settings is None:
        match = ENV_REF.match(project.config.destinations[sync.destination].app_api_key or "")
        how = (
            f"set `{match.group(1)}` (an App API key)"
            if match
            else f"set `app_api_key` in destination `{sync.destination}`"
        )
        for o, name in at_risk:
            reasons[o] = (
                f"the row of object `{o}` is rejected by objects sync `{name}`, and without an "
                "App API key Lockgate cannot check that Customer.io still holds it (an "
                "`add_relationships` would create it again, empty, had it been deleted there): "
                f"held until the objects sync sends it again (fix its row), or {how} to look "
                "it up"
            )
            mark.append(o)
    else:
        from lockgate.sync.objectcheck import look_up

        check = look_up(
            [(o, type_id, o) for o, _ in at_risk],
            settings,
            console=console,
            label="look up objects of rejected rows",
        )
        gone = set(check.gone)
        for o, name in at_risk:
            if check.error:
                reasons[o] = (
                    f"the row of object `{o}` is rejected by objects sync `{name}`, and the App "
                    f"API could not be read to check that Customer.io still holds it "
                    f"({check.error}): held; the next run tries again"
                )
            elif o in gone:
                reasons[o] = (
                    f"object `{o}` is not in Customer.io (deleted there since objects sync "
                    f"`{name}` sent it) and its row is rejected: an `add_relationships` would "
                    "create it again, empty; held until the objects sync sends it again (fix "
                    "its row)"
                )
                mark.append(o)
        if check.error:
            note = (
                f"relationships of {len(at_risk)} object{'s' if len(at_risk) > 1 else ''} "
                "whose row is rejected were held: the App API could not be read to check that "
                f"Customer.io still holds them ({check.error}); the next run tries again"
            )
    if not reasons:
        return changes, ""
    with transaction(store.con, store.path):
        run_sql(
            store.con, "create or replace temp table _rejected_held (o varchar, reason varchar)"
        )
        store.con.executemany("insert into _rejected_held values (?, ?)", list(reasons.items()))
        for name, _ in marked if mark and not plan else ():
            # marked as a full resync marks an object it did not send again
            run_sql(
                store.con,
                f"""
                insert into main.{table("unconfirmed", name)} (k, run_id, action)
                select distinct s.k, {mapping.lit(run_id)}, {mapping.lit(diff_step.RESYNC_SKIPPED)}
                from main.{table("snap", name)} s
                where json_extract_string(s.ident, '$.object_id') in ({
                    ", ".join(mapping.lit(o) for o in mark)
                })
                and s.k not in (
                    select k from main.{table("unconfirmed", name)}
                    where action = {mapping.lit(diff_step.RESYNC_SKIPPED)}
                )
                """,
            )
        run_sql(
            store.con,
            """
            create or replace temp table _held_now as
            select c.k, c.is_new, c.n_set, h.reason from changes c
            join _rejected_held h on h.o = c.object_id where not c.removed;
            delete from changes where k in (select k from _held_now);
            """,
        )
    n, new, attrs = (
        int(x or 0)
        for x in run_sql(
            store.con,
            "select count(*), count(*) filter (where is_new), coalesce(sum(n_set), 0) "
            "from _held_now",
        )[0]
    )
    samples = tuple(
        (str(k), str(r))
        for k, r in run_sql(store.con, "select k, reason from _held_now order by k limit 20")
    )
    run_sql(store.con, "drop table _held_now; drop table _rejected_held")
    return dataclasses.replace(
        changes,
        to_send=changes.to_send - n,
        new=changes.new - new,
        changed=changes.changed - (n - new),
        held=changes.held + n,
        attributes_set=changes.attributes_set - attrs,
        held_samples=(changes.held_samples + samples)[:20],
    ), note


def _refuse_before_delivery(
    store: StateStore, sync: SyncConfig, run_id: str, refused: list[tuple[str, str]]
) -> None:
    """Take the rows of ``refused`` (key, reason) out of ``changes`` and record them as
    rejected before delivery (:meth:`StateStore.refuse_unsent`, with the identifiers each
    row would have been sent with): not sent, tried again by the next run."""
    keys = [k for k, _ in refused]
    idents = dict(
        store.con.execute(
            "select k, ident from changes where k in (select unnest(?))", [keys]
        ).fetchall()
    )
    run_sql(store.con, "delete from changes where k in (select unnest(?))", [keys])
    store.refuse_unsent(sync.name, run_id, refused, idents)


def _check_new_emails(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    resolution: Resolution | None = None,
    identity_ops: pa.Table | None = None,
    merges_skipped: Sequence[dict[str, Any]] = (),
) -> tuple[int, int, str, list[tuple[str, str]]]:
    """Before delivery: look up who holds the emails of the people this run sends for the
    first time (:func:`lockgate.sync.emailcheck.check_new`); the rows whose email a person of
    another `id` holds are taken out of ``changes`` and recorded as rejected, so they are not
    sent (Customer.io would give that person their `id`) and the next run looks at them again.
    Returns (rows checked, rows left unchecked for want of a key or with the check off, the
    report's line on the others not checked, the rows refused). A run without new rows makes
    no App API call. A person the identity graph's operations release the email from, sent
    before the rows (a retired user's family email: ``customerio.releases``), is no holder;
    nor is one they merge into the row's person before the rows (``identity_ops``: a lead's
    person merged into a user's who left a `mirror` sync and came back with the lead's email).
    The rows giving a person Customer.io has the email of a merge kept back into another `id`
    (:func:`_held_from_another_person`) are looked up too: sent, Customer.io would drop them,
    and a giver of theirs refused here gives its email up first
    (``diff.clear_refused_givers``)."""
    config = project.config.destinations[sync.destination]
    limit = config.check_new_emails
    settings = _new_check_settings(project, sync)
    released = _released_first(resolution) if settings is not None else []
    merged: list[tuple[str, str]] = []
    if identity_ops is not None and settings is not None:
        merged = _merged_by_email(identity_ops)
    others = []
    if settings is not None:
        others = [table("snap", name) for name in _people_syncs(store, project, sync)]
    total, rows = diff_step.new_emails(
        store.con,
        sync,
        limit=limit if settings else 0,
        released_first=released,
        merged_first=merged,
        people_snaps=others,
    )
    if settings is not None and resolution is not None:
        extra = _rows_held_from_another_person(
            store, project, sync, merges_skipped, {r[0] for r in rows}
        )
        total, rows = total + len(extra), rows + extra
    if not total:
        return 0, 0, "", []
    if settings is None:
        return 0, total, "", []
    from lockgate.sync.emailcheck import check_new

    check = check_new(sync.name, rows, settings, console=console)
    if check.error and not check.unchecked:
        console.warn(f"{sync.name}: new people's emails not checked: {check.error}")
        people = f"{total} new {'person' if total == 1 else 'people'}"
        return (
            0,
            0,
            (
                f"{people} sent without checking who holds {'its' if total == 1 else 'their'} "
                f"email: the App API failed ({check.error})"
            ),
            [],
        )
    lines = []
    if total > limit:
        past = total - limit
        lines.append(
            f"{past} more new {'person was' if past == 1 else 'people were'} sent without "
            f"checking who holds {'its' if past == 1 else 'their'} email (the first {limit} by "
            f"key were checked: `check_new_emails` in destination `{sync.destination}`)"
        )
    if check.unchecked:  # the emails were looked up, the `id`s leads would get were not
        n = check.unchecked
        console.warn(f"{sync.name}: new people's ids not checked: {check.error}")
        lines.append(
            f"{n} new {'person was' if n == 1 else 'people were'} sent whose email a person "
            f"without an id holds, without checking whether Customer.io has a person with "
            f"{'its' if n == 1 else 'their'} `id` already (it drops such an update whole): the "
            f"App API failed ({check.error})"
        )
    note = "\n".join(lines)
    if check.refused:
        _refuse_before_delivery(store, sync, run_id, check.refused)
        n = len(check.refused)
        console.warn(
            f"{sync.name}: {n} new {'person' if n == 1 else 'people'} not sent: "
            f"{'its' if n == 1 else 'their'} email is held in Customer.io by a person of "
            "another id, who would be renamed (rejected, checked again by the next run)"
        )
    return check.read_back - check.unchecked, 0, note, check.refused


class _KeptBack(NamedTuple):
    """The rows of ``changes`` whose email is held by a person a merge kept back would have
    merged into theirs (:func:`_kept_back_rows`)."""

    #: (key, reason): the rows not sent (no read-back would see Customer.io drop them)
    refused: list[tuple[str, str]]
    #: key -> identifiers, of the refused rows
    idents: dict[str, str]
    #: (key, `id`, email, holder, what kept the merge back): every such row, refused or sent
    kept: list[tuple[str, str, str, str, str]]


def _kept_back_held(
    store: StateStore, sync: SyncConfig, merges_skipped: Sequence[dict[str, Any]]
) -> tuple[dict[tuple[str, str], tuple[str, str]], dict[str, tuple[str, str, str, str]]]:
    """The merges kept back that rows of ``sync`` may run into: (`id`, email lowercased) ->
    (holder, what kept the merge back), of ``merges_skipped`` (this run's) and of the merges an
    earlier run recorded (:data:`EMAILS_OF_MERGES_KEPT_BACK` without a key); and key ->
    (`id`, email, holder, what kept it back) of the rows an earlier run recorded."""
    held = _kept_back_pairs(merges_skipped)
    before: dict[str, tuple[str, str, str, str]] = {}
    if has_table(store.con, EMAILS_OF_MERGES_KEPT_BACK):
        columns = {
            str(r[0])
            for r in store.exec_sql(
                "select column_name from duckdb_columns() where database_name = "
                f"current_database() and table_name = '{EMAILS_OF_MERGES_KEPT_BACK}'"
            )
        }
        outcome = "outcome" if "outcome" in columns else "null"  # recorded before held merges
        for k, person, email, holder, why in store.exec_sql(
            f"select k, person, email, holder, {outcome} from {EMAILS_OF_MERGES_KEPT_BACK} "
            "where sync = ?",
            [sync.name],
        ):
            why = str(why or KEPT_BACK_MERGES_OFF)
            if k is None:  # a merge an earlier run (of any sync) kept back
                held.setdefault((str(person), str(email)), (str(holder), why))
            else:
                before[str(k)] = (str(person), str(email), str(holder), why)
    return held, before


def _changes_with_id_and_email(store: StateStore) -> list[tuple[Any, ...]]:
    """(key, ident, `id`, email lowercased, email as sent) of the rows of ``changes`` sent with
    an `id` and an email."""
    return store.exec_sql(
        "select k, ident, json_extract_string(ident, '$.id'), "
        "lower(trim(json_extract_string(ident, '$.email'))), "
        "json_extract_string(ident, '$.email') from changes "
        "where not removed and contains(ident, '\"email\":') and contains(ident, '\"id\":')"
    )


def _kept_back_rows(
    store: StateStore, project: Project, sync: SyncConfig, merges_skipped: Sequence[dict[str, Any]]
) -> _KeptBack | None:
    """Of ``changes`` of a people sync keyed through the identity graph, the rows that give a
    person of an `id` the email of the person a merge kept back would have merged into it
    (``merges_skipped``, this run's, or one an earlier run of the sync recorded the row for:
    :data:`EMAILS_OF_MERGES_KEPT_BACK`), or give that email to a person of another `id`
    Customer.io has (:func:`_held_from_another_person`), and which of them are not sent (no
    read-back of emails: no App API key, or `read_back_emails: 0`), with the reason. Reads
    only: a plan shows them as the run will reject them. None when there is none."""
    if sync.kind != "people":
        return None
    # with a read-back the rows are sent and recorded: the read-back sees a dropped update,
    # and a row it could not read back is rejected (:func:`_check_emails`)
    read_back = _email_check_settings(project, sync) is not None
    held, before = _kept_back_held(store, sync, merges_skipped)
    if not held and not before:
        return None
    rows = _changes_with_id_and_email(store)
    found = _KeptBack([], {}, [])
    others = _held_from_another_person(store, project, sync, held, rows)
    for k, ident, person, email, _ in rows:
        hit = held.get((person, email)) or held.get((ANY_ID, email))
        if hit is None and before.get(k, ("", "", "", ""))[:2] == (person, email):
            hit = before[k][2:]
        hit = hit or others.get(k)
        if hit is None:
            continue
        holder, why = hit
        if not read_back:
            found.refused.append(
                (k, _kept_back_reason(project, sync, k, person, email, holder, why))
            )
            found.idents[k] = ident
        found.kept.append((k, person, email, holder, why))
    return found


def _held_from_another_person(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    held: dict[tuple[str, str], tuple[str, str]],
    rows: list[tuple[Any, ...]],
) -> dict[str, tuple[str, str]]:
    """Of ``rows`` (:func:`_changes_with_id_and_email`), those giving the email of a merge
    kept back to a person of *another* `id` than the merge's, one Customer.io has already
    (``resolve.known_people``) and that was not last delivered holding that email: key ->
    (holder, what kept the merge back).

    The person known by the email alone still holds it in Customer.io (the graph joined it to
    the merge's `id` in its own view only), so Customer.io drops such an update whole, as it
    does the merge's own `id`'s: a user whose row left after a lead's email joined them, and
    another user who takes that email later. A person Customer.io does not have yet is not
    dropped: the holder is given its `id`."""
    by_email: dict[str, tuple[str, str, str]] = {}
    for (person, email), (holder, why) in sorted(held.items()):
        if person != ANY_ID:
            by_email.setdefault(email, (person, holder, why))
    candidates = {
        str(k): (str(person), str(email))
        for k, _, person, email, _ in rows
        if person
        and email in by_email
        and by_email[email][0] != person
        and (person, email) not in held
    }
    if not candidates:
        return {}
    from lockgate.sync.resolve import known_people

    people = known_people(store, project, among={("id", p) for p, _ in candidates.values()})
    snap = table("snap", sync.name)
    delivered = {
        (str(k), str(email).strip().lower())
        for k, email in store.exec_sql(
            f"select k, json_extract_string(ident, '$.email') from {snap} "
            "where k in (select unnest(?::varchar[]))",
            [sorted(candidates)],
        )
        if email
    }
    return {
        k: by_email[email][1:]
        for k, (person, email) in candidates.items()
        if ("id", person) in people and (k, email) not in delivered
    }


def _rows_held_from_another_person(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    merges_skipped: Sequence[dict[str, Any]],
    seen: Collection[str],
) -> list[tuple[str, str, str, frozenset[str]]]:
    """The rows :func:`_held_from_another_person` finds, not among ``seen``, as rows for
    ``emailcheck.check_new`` (key, `id`, email as sent, no person released first)."""
    held, _ = _kept_back_held(store, sync, merges_skipped)
    if not held:
        return []
    rows = _changes_with_id_and_email(store)
    others = _held_from_another_person(store, project, sync, held, rows)
    return [
        (str(k), str(person), str(sent), frozenset())
        for k, _, person, _, sent in rows
        if k in others and k not in seen
    ]


def _hold_emails_of_merges_kept_back(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    merges_skipped: Sequence[dict[str, Any]],
) -> list[tuple[str, str]]:
    """Before delivery, without a read-back of emails (no App API key, or `read_back_emails:
    0`): take out of ``changes`` the rows :func:`_kept_back_rows` finds (a row that gives a
    person of an `id` the email of the person a merge kept back would have merged into it:
    kept back by `merge_policy.enabled: false`, or held for review by `min_path_rank`), and
    record them as rejected with what to do (with a read-back they are sent, and recorded
    alone: :data:`EMAILS_OF_MERGES_KEPT_BACK`). Customer.io drops such an update whole and
    unseen (the email is another person's), so the row would be counted delivered and never
    sent again. The next run rejects it again while the row gives that `id` that email; a run
    with a read-back sends it and sees whether it lands (once the two people are merged by
    hand, it does), but looks up first one giving up an email another row takes
    (:func:`_check_kept_back_givers`). Returns the rows rejected, (key, reason) each."""
    found = _kept_back_rows(store, project, sync, merges_skipped)
    if found is None:
        return []
    refused, idents, kept = found
    with transaction(store.con, store.path):
        store.exec_sql(
            f"create table if not exists {EMAILS_OF_MERGES_KEPT_BACK} (sync varchar, "
            "k varchar, person varchar, email varchar, holder varchar, outcome varchar)"
        )
        _with_outcome_column(store)
        # a row the run sends, or rejects again, holds no record of an earlier run's
        store.exec_sql(
            f"delete from {EMAILS_OF_MERGES_KEPT_BACK} where sync = ? "
            "and k in (select k from changes)",
            [sync.name],
        )
        for k, person, email, holder, why in kept:
            store.exec_sql(
                f"insert into {EMAILS_OF_MERGES_KEPT_BACK} "
                "(sync, k, person, email, holder, outcome) values (?, ?, ?, ?, ?, ?)",
                [sync.name, k, person, email, holder, why],
            )
        if refused:
            store.exec_sql(
                "delete from changes where k in (select unnest(?::varchar[]))",
                [[k for k, _ in refused]],
            )
    store.refuse_unsent(sync.name, run_id, refused, idents)
    checked = _check_kept_back_givers(store, project, sync, run_id, console, kept, idents)
    outcomes = {why for k, _, _, _, why in kept if k in idents}
    for why in sorted(outcomes):
        n = len([k for k, _, _, _, w in kept if k in idents and w == why])
        console.warn(
            f"{sync.name}: {n} {'row' if n == 1 else 'rows'} not sent: "
            f"{'its' if n == 1 else 'their'} email is held in Customer.io by a person whose "
            f"merge into {'its' if n == 1 else 'theirs'} is {_KEPT_BACK_BY[why]}, and no "
            "read-back would see Customer.io drop the update (rejected, tried again by the "
            "next run)"
        )
    return refused + checked


def _check_kept_back_givers(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    kept: list[tuple[str, str, str, str, str]],
    refused: Collection[str],
) -> list[tuple[str, str]]:
    """With a read-back of emails, before delivery: of the rows of a merge kept back that the
    run sends (``kept``, not among ``refused``), those giving up an email another row of this
    run takes (``email_phases``: sent first, for the taker to follow) are looked up as new rows
    are (:func:`lockgate.sync.emailcheck.check_new`: who holds their email). Customer.io drops
    the update of one whose email the lead's person still holds, and with it the change that
    frees the email it gives up: read back after the fact, the giver's person would keep that
    email, the taker would be dropped too, each run. Refused here, the row is taken out of
    ``changes`` and recorded as rejected, and the run clears the email it gives up first
    (``diff.clear_refused_givers``), so the taker lands. Returns the rows refused."""
    if not kept or not diff_step.temp_table(store.con, "email_phases"):
        return []
    settings = _email_check_settings(project, sync)
    if settings is None:  # the rows are refused before delivery already
        return []
    givers = {
        str(r[0]) for r in store.exec_sql("select distinct giver from email_phases where phase > 0")
    }
    candidates = {k for k, *_ in kept if k in givers and k not in refused}
    if not candidates:
        return []
    rows = [
        (str(k), str(person), str(sent), frozenset[str]())
        for k, _, person, _, sent in _changes_with_id_and_email(store)
        if k in candidates
    ]
    if not rows:
        return []
    from lockgate.sync.emailcheck import check_new

    check = check_new(sync.name, rows, settings, console=console)
    if check.error and not check.refused:  # sent, and read back as any row of the merge
        return []
    if not check.refused:
        return []
    _refuse_before_delivery(store, sync, run_id, check.refused)
    n = len(check.refused)
    console.warn(
        f"{sync.name}: {n} {'row' if n == 1 else 'rows'} not sent: "
        f"{'its' if n == 1 else 'their'} email is held in Customer.io by another person, "
        "who would have to be merged by hand, and the email given up for another row is "
        "cleared first (rejected, checked again by the next run)"
    )
    return list(check.refused)


def _kept_back_pairs(
    merges_skipped: Sequence[dict[str, Any]],
) -> dict[tuple[str, str], tuple[str, str]]:
    """Of the merges kept back, those of a person known by email into a person of an `id`:
    (`id`, email lowercased) -> (the holder of the email as the merge names it, what kept
    the merge back). A row giving that `id` that email is dropped by Customer.io. A merge
    into a person known by email alone (a readdressing: the old email's person into the new
    one's, `identity.customerio.readdress_ops`) gives (:data:`ANY_ID`, old email): the
    profile's rows reach the new email's person, so one giving the person of its `id` the
    old email, which the other person still holds, is dropped too."""
    held: dict[tuple[str, str], tuple[str, str]] = {}
    for merge in merges_skipped:
        primary, secondary = merge["primary"], merge["secondary"]
        if "email" not in secondary:
            continue
        if set(primary) == {"id"}:
            person = str(primary["id"])
        elif set(primary) == {"email"}:
            person = ANY_ID
        else:
            continue
        who = ", ".join(f"{kind} `{value}`" for kind, value in secondary.items())
        why = merge.get("outcome") or KEPT_BACK_MERGES_OFF
        held[(person, str(secondary["email"]).strip().lower())] = (who, why)
    return held


ANY_ID = ""
"""The `id` of a merge kept back into a person known by email alone (:func:`_kept_back_pairs`):
a row of any `id` giving its person the merge's secondary email is held back."""


def _record_merges_kept_back(
    store: StateStore, project: Project, merges_skipped: Sequence[dict[str, Any]]
) -> None:
    """Record, for every people sync keyed through the identity graph, the merges kept back
    that the graph this run saves found (:func:`_kept_back_pairs`; rows of
    :data:`EMAILS_OF_MERGES_KEPT_BACK` without a key). Only the run that first resolves a
    merge lists it: a sync run on its own later starts from the saved graph, where the two
    profiles are one already, and its rows giving that `id` that email would be sent and
    dropped unseen (:func:`_hold_emails_of_merges_kept_back` reads these records). Forgotten
    once a row is read back holding the email (:func:`_forget_merges_kept_back`), and with
    the sync's other records when it starts over in a new workspace."""
    pairs = _kept_back_pairs(merges_skipped)
    syncs = [s.name for s in project if s.kind == "people" and mapping.needs_identity(project, s)]
    if not pairs or not syncs:
        return
    with transaction(store.con, store.path):
        store.exec_sql(
            f"create table if not exists {EMAILS_OF_MERGES_KEPT_BACK} (sync varchar, "
            "k varchar, person varchar, email varchar, holder varchar, outcome varchar)"
        )
        _with_outcome_column(store)
        for name in syncs:
            for (person, email), (holder, why) in sorted(pairs.items()):
                store.exec_sql(
                    f"delete from {EMAILS_OF_MERGES_KEPT_BACK} where sync = ? and k is null "
                    "and person = ? and email = ?",
                    [name, person, email],
                )
                store.exec_sql(
                    f"insert into {EMAILS_OF_MERGES_KEPT_BACK} "
                    "(sync, k, person, email, holder, outcome) values (?, null, ?, ?, ?, ?)",
                    [name, person, email, holder, why],
                )


KEPT_BACK_MERGES_OFF = "skipped_disabled"
"""The outcome of a merge kept back by `merge_policy.enabled: false`
(``resolve.SKIPPED_DISABLED``; that module is not imported until a sync needs the graph)."""
KEPT_BACK_HELD_FOR_REVIEW = "held_for_review"
"""The outcome of a merge held for review by `merge_policy.min_path_rank`
(``resolve.HELD_FOR_REVIEW``)."""

_KEPT_BACK_BY = {
    KEPT_BACK_MERGES_OFF: "kept back (`identity.customerio.merge_policy.enabled: false`)",
    KEPT_BACK_HELD_FOR_REVIEW: "held for review (`identity.customerio.merge_policy."
    "min_path_rank`: the evidence joining them is weaker)",
}
"""What kept a merge back, by its outcome, as the reasons and warnings say it."""


def _with_outcome_column(store: StateStore) -> None:
    """Give :data:`EMAILS_OF_MERGES_KEPT_BACK` its `outcome` column (what kept the merge
    back), when an earlier Lockgate made it without: its records are of merges off, then the
    only ones recorded (a null `outcome`)."""
    store.exec_sql(
        f"alter table {EMAILS_OF_MERGES_KEPT_BACK} add column if not exists outcome varchar"
    )


def _kept_back_reason(
    project: Project,
    sync: SyncConfig,
    key: str,
    person: str,
    email: str,
    holder: str,
    outcome: str = KEPT_BACK_MERGES_OFF,
) -> str:
    """Why :func:`_hold_emails_of_merges_kept_back` rejected row ``key``, and what to do;
    ``outcome`` says what kept the merge back."""
    config = project.config.destinations[sync.destination]
    match = ENV_REF.match(config.app_api_key or "")
    if not config.read_back_emails:
        read_back = f"remove `read_back_emails: 0` from destination `{sync.destination}`"
    elif match:
        read_back = f"set `{match.group(1)}` (an App API key)"
    else:
        read_back = f"set `app_api_key` in destination `{sync.destination}`"
    if outcome == KEPT_BACK_HELD_FOR_REVIEW:
        merge = (
            "If they are one person, merge that person into "
            f"`id` `{shorten(person)}` by hand in Customer.io, then {read_back} so that the "
            "next run sends the row and reads it back; if not, fix the link that joins them, "
            'or give the row another email in the model (docs/identity.md, "Merges held for '
            'review"; a held merge is not sent later, even once `min_path_rank` allows it)'
        )
    else:
        merge = (
            f"Merge that person into `id` `{shorten(person)}` by hand in Customer.io, then "
            f"{read_back} so that the next run sends the row and reads it back; or set "
            "`identity.customerio.merge_policy.enabled: true` for the merges the graph finds "
            'from now on (docs/identity.md, "Merges turned off")'
        )
    return (
        f"row `{key}`: not sent: email `{shorten(email)}` is held in Customer.io by another "
        f"person ({holder}) that the identity graph found to be the same as `id` "
        f"`{shorten(person)}`, and their merge is {_KEPT_BACK_BY[outcome]}: Customer.io would "
        "drop this update unseen, with every attribute of it, and no read-back would catch "
        f"it. {merge}. Each run tries the row again"
    )


def _merged_by_email(identity_ops: pa.Table) -> list[tuple[str, str]]:
    """`(email, id)` of the merges among ``identity_ops`` of the person holding an email (the
    secondary, known by it) into the person of an `id` (the primary): sent before the rows, so
    that email is that `id`'s person's when a row of them is sent."""
    merged = []
    for text in identity_ops["op"].to_pylist():
        op = orjson.loads(text)
        primary, secondary = op.get("primary") or {}, op.get("secondary") or {}
        if op.get("action") == "merge" and "id" in primary and "email" in secondary:
            merged.append((str(secondary["email"]), str(primary["id"])))
    return merged


def _check_emails(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    counts: CommitCounts,
    *,
    new: int = 0,
) -> tuple[int, str]:
    """After delivery, before the journal is folded: read back the people this run gave a new
    email (:mod:`lockgate.sync.emailcheck`); those who do not hold it are taken out of the
    journal as rejected, so the next run sends them again. Returns (people read back, the
    report's line on what was not). A run that changed no email makes no App API call.
    ``new``: the new people whose email was not checked before they were sent, for want of
    a key or with the check off (one line says both)."""
    moves = diff_step.email_moves(store.con, sync, journal_of=run_id)
    kept = _delivered_of_merges_kept_back(store, sync, run_id)
    # a row of a merge kept back is read back even when its email is not new to it (a lead's
    # row that goes to the user's `id` now, the lead's person still holding the email):
    # Customer.io drops its update alike, and nothing else would see it
    listed = {m[0] for m in moves}
    moves += [(k, "id", p, e) for k, (p, e, _, _) in kept.items() if k not in listed]
    moves.sort(key=lambda m: m[0])
    if not moves:
        return 0, _not_verified(project, sync, 0, planned=False, new=new) if new else ""
    settings = _email_check_settings(project, sync)
    if settings is None:
        return 0, _not_verified(project, sync, len(moves), planned=False, new=new)
    lines = [_not_verified(project, sync, 0, planned=False, new=new)] if new else []
    from lockgate.sync.emailcheck import read_back

    limit = project.config.destinations[sync.destination].read_back_emails
    check = read_back(moves[:limit], settings, console=console)
    if check.error:
        console.warn(f"{sync.name}: email changes not read back: {check.error}")
        unverified = len([m for m in moves if m[0] not in kept])
        if unverified:
            people = f"{unverified} {'person was' if unverified == 1 else 'people were'}"
            lines.append(
                f"{people} given a new email, not read back: the App API failed "
                f"({check.error}); `lockgate reconcile {sync.name}` reads them back"
            )
        why = f"the App API failed ({check.error})"
        _refuse_read_back(store, sync, run_id, console, counts, _not_read_back(kept, why))
        return 0, "\n".join(lines)
    read = {m[0] for m in moves[:limit]}
    past_limit = f"`read_back_emails` in destination `{sync.destination}` is {limit}"
    unread = {k: v for k, v in kept.items() if k not in read}
    _forget_merges_kept_back(
        store, sync, [k for k in kept if k in read and k not in dict(check.refused)]
    )
    past = len([m for m in moves[limit:] if m[0] not in unread])
    if past:
        lines.append(
            f"{past} more {'person was' if past == 1 else 'people were'} given a new email, "
            f"committed without a read-back (the first {limit} by key were read back: "
            f"`read_back_emails` in destination `{sync.destination}`)"
        )
    note = "\n".join(lines)
    if check.refused:
        _count_refused(store, sync, run_id, counts, check.refused)
        n = len(check.refused)
        console.warn(
            f"{sync.name}: {n} {'person does' if n == 1 else 'people do'} not hold the new email "
            "sent (read back from Customer.io): rejected, sent again by the next run"
        )
    _refuse_read_back(store, sync, run_id, console, counts, _not_read_back(unread, past_limit))
    return check.read_back, note


def _count_refused(
    store: StateStore,
    sync: SyncConfig,
    run_id: str,
    counts: CommitCounts,
    refused: Sequence[tuple[str, str]],
) -> None:
    """Take the delivered rows ``refused`` (key, reason) out of the run's journal as rejected
    (``StateStore.refuse_delivered``: the next run sends them again), and out of its counts."""
    store.refuse_delivered(sync.name, run_id, refused)
    counts.delivered -= len(refused)
    for key, reason in refused:
        counts.reject(key, reason)


def _delivered_of_merges_kept_back(
    store: StateStore, sync: SyncConfig, run_id: str
) -> dict[str, tuple[str, str, str, str]]:
    """Of :data:`EMAILS_OF_MERGES_KEPT_BACK`, the rows run ``run_id`` delivered (in its
    journal): key -> (`id`, email, holder, what kept the merge back). Customer.io drops their
    update unseen while the holder is not merged by hand, so none is committed without being
    read back."""
    if not has_table(store.con, EMAILS_OF_MERGES_KEPT_BACK):
        return {}
    _with_outcome_column(store)
    rows = store.exec_sql(
        f"select m.k, m.person, m.email, m.holder, m.outcome from {EMAILS_OF_MERGES_KEPT_BACK} "
        f"m semi join {table('journal', sync.name)} j "
        "on j.k = m.k and j.run_id = ? and not j.removed where m.sync = ? order by m.k",
        [run_id, sync.name],
    )
    return {
        str(k): (str(p), str(e), str(h), str(o or KEPT_BACK_MERGES_OFF)) for k, p, e, h, o in rows
    }


def _not_read_back(kept: dict[str, tuple[str, str, str, str]], why: str) -> list[tuple[str, str]]:
    """(key, reason) of the rows of ``kept`` (:func:`_delivered_of_merges_kept_back`) that
    were not read back, ``why`` saying why."""
    return [
        (
            k,
            f"row `{k}`: sent but not read back ({why}): its email `{shorten(email)}` is held in "
            f"Customer.io by another person ({holder}) whose merge into `id` `{shorten(person)}` "
            f"is {_KEPT_BACK_BY[outcome]}, so Customer.io most likely dropped the update unseen, "
            "with every attribute of it; the next run sends the row again and reads it back "
            f"(merge that person into `id` `{shorten(person)}` by hand in Customer.io for it "
            "to land)",
        )
        for k, (person, email, holder, outcome) in kept.items()
    ]


def _refuse_read_back(
    store: StateStore,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    counts: CommitCounts,
    refused: list[tuple[str, str]],
) -> None:
    """Reject the delivered rows of merges kept back that were not read back (``refused``,
    :func:`_not_read_back`): their record stays, so the next run knows them again."""
    if not refused:
        return
    _count_refused(store, sync, run_id, counts, refused)
    n = len(refused)
    console.warn(
        f"{sync.name}: {n} {'row' if n == 1 else 'rows'} whose email a person of a merge kept "
        "back holds could not be read back: rejected, sent again by the next run"
    )


def _forget_merges_kept_back(store: StateStore, sync: SyncConfig, keys: list[str]) -> None:
    """Drop the records of :data:`EMAILS_OF_MERGES_KEPT_BACK` of ``keys``: rows read back
    holding the email sent (the two people were merged by hand), and the merges kept back
    between their `id` and email that every sync was told of (:func:`_record_merges_kept_back`)."""
    if keys:
        with transaction(store.con, store.path):
            store.exec_sql(
                f"delete from {EMAILS_OF_MERGES_KEPT_BACK} m where m.k is null and exists "
                f"(select 1 from {EMAILS_OF_MERGES_KEPT_BACK} r where r.sync = ? "
                "and r.k in (select unnest(?::varchar[])) "
                f"and (r.person = m.person or m.person = '{ANY_ID}') and r.email = m.email)",
                [sync.name, keys],
            )
            store.exec_sql(
                f"delete from {EMAILS_OF_MERGES_KEPT_BACK} where sync = ? "
                "and k in (select unnest(?::varchar[]))",
                [sync.name, keys],
            )


def _hold_takers(
    store: StateStore, sync: SyncConfig, console: Console, phase: int, counts: CommitCounts
) -> None:
    """Before delivery phase ``phase``: hold back the rows taking an email from a row that
    was not delivered, or was held itself (``diff.hold_takers``). Each is counted rejected,
    with its reason, as a row Customer.io refused is: not sent, tried again by the next run
    (and said, not only warned of: a row the run leaves unsent is in its report)."""
    held = diff_step.hold_takers(store.con, phase, counts.failed_keys)
    for key, giver in held:
        counts.reject(
            key,
            f"row `{key}`: not sent: it takes the email row `{giver}` of this sync gives up, "
            f"and row `{giver}` was not delivered (see its own reason), so the email is still "
            "that person's in Customer.io, which would drop this update unseen. Each run tries "
            "the row again, after that row",
        )
    if held:
        console.warn(
            f"{sync.name}: {len(held)} row(s) taking an email that another row of this run "
            "could not give up first (not delivered) are not sent; the next run tries again"
        )


def _deliver_state_events(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    total: int,
    destination_factory: DestinationFactory,
) -> CommitCounts:
    """Send the run's `on_change` events before the attribute updates that caused them.

    Delivered events go to the sync's ledger. A person whose event was not delivered is
    held back from this run's updates, so the snapshot does not advance past the
    transition and the next run fires the same event (same key, same dedupe id) again.
    The same id needs the same timestamp: each event's is kept in ``oc_sent`` before it
    is sent (committed on its own: a crash in delivery leaves it there) and the next diff
    reuses it; events in the ledger leave it once delivered.
    """
    sent = table("oc_sent", sync.name)
    run_sql(
        store.con,
        f"insert into {sent} select k, ts from oc_changes o anti join {sent} s on s.k = o.k",
    )
    counts = _deliver_to_ledger(
        store,
        project,
        sync,
        run_id,
        console,
        destination_factory,
        label="state-change events",
        kind="events",
        source="oc_changes",
        total=total,
    )
    # every delivered event leaves, those of a run that crashed after its ledger commit too
    run_sql(
        store.con,
        f"delete from {sent} where k in (select k from {table('ledger', sync.name)})",
    )
    failed = counts.failed_keys
    if failed:
        with registered(store.con, "_failed_events", pa.table({"k": pa.array(sorted(failed))})):
            for rows in ("changes", diff_step.NULLS_ONLY):  # their rows are not committed
                if rows == "changes" or diff_step.temp_table(store.con, rows):
                    run_sql(
                        store.con,
                        f"delete from {rows} where k in (select o.pk from oc_changes o "
                        "join _failed_events f on f.k = o.k)",
                    )
    return counts


def _deliver_to_ledger(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    run_id: str,
    console: Console,
    destination_factory: DestinationFactory,
    *,
    label: str,
    kind: str,
    source: str,
    total: int,
    unconfirmed_as: Callable[[str], str] | None = None,
    forget_merged: Callable[[StateStore, list[str]], None] | None = None,
    ledger_once: bool = False,
) -> CommitCounts:
    """Deliver a side table of operations ahead of the sync's own; each delivered key goes to
    the sync's ledger, so it is never sent again (``unconfirmed_as``, ``forget_merged``,
    ``ledger_once``: see ``Committer``)."""
    from lockgate.sync.commit import Committer
    from lockgate.sync.deliver import deliver, notify_retries

    committer = Committer(
        store.writer(),
        sync=sync.name,
        run_id=run_id,
        kind="events",
        unconfirmed_as=unconfirmed_as,
        forget_merged=forget_merged,
        ledger_once=ledger_once,
    )
    with committer.store, console.progress(f"deliver {sync.name} {label}", total) as advance:
        deliver(
            store.con,
            notify_retries(destination_factory(project, sync), console, sync.name),
            kind=kind,
            committer=committer,
            advance=advance,
            source=source,
        )
    return committer.counts


class Related(NamedTuple):
    """The snapshots a sync's diff reads besides its own (:func:`_related_snapshots`)."""

    objects: list[str]
    people: list[str]
    relationships: list[str]
    unsure_objects: list[str]
    """Of the objects syncs: the objects whose delete is unconfirmed (``diff.present_ends``),
    left out of ``objects``."""
    unsure_people: list[str]
    """Of the people syncs: the people whose delete is unconfirmed, left out of ``people``."""
    skipped_objects: list[str]
    """Of the objects syncs: the objects a full resync kept without sending them again (their
    rows rejected, ``diff.RESYNC_SKIPPED``), left out of ``objects``."""


def _related_snapshots(store: StateStore, project: Project, sync: SyncConfig) -> Related:
    """For a relationships sync: the snapshots of the project's objects syncs of the same type
    and of its people syncs, which tell whether both ends of a relationship exist yet (without
    the records whose delete is unconfirmed: they may be gone), and of its other relationships
    syncs of the same type, whose relationships a `mirror` run must not delete. For an objects
    sync with `on_change`: the relationships syncs of its type, whose people hear of the
    object's transitions, and the people syncs, which tell when two of those relate one person
    (by `id` and by email) who must hear once."""
    if sync.kind == "objects" and sync.on_change:
        relationships = []
        for other in project:
            if other.kind == "relationships" and other.object_type_id == sync.object_type_id:
                store.ensure_sync_tables(other.name)
                relationships.append(table("snap", other.name))
        people = [table("snap", name) for name in _people_syncs(store, project, sync)]
        return Related([], people, relationships, [], [], [])
    if sync.kind != "relationships":
        return Related([], [], [], [], [], [])
    objects, siblings = [], []
    people = _people_syncs(store, project, sync)
    for other in project:
        if other.destination != sync.destination:
            continue
        if other.kind == "objects" and other.object_type_id == sync.object_type_id:
            store.ensure_sync_tables(other.name)
            objects.append(other.name)
        elif (
            other.kind == "relationships"
            and other.name != sync.name
            and other.object_type_id == sync.object_type_id
        ):
            store.ensure_sync_tables(other.name)
            siblings.append(table("snap", other.name))
    ends, people_ends = (diff_step.present_ends(store.con, syncs) for syncs in (objects, people))
    return Related(
        ends.present,
        people_ends.present,
        siblings,
        ends.unsure,
        people_ends.unsure,
        ends.skipped,
    )


def _people_syncs(store: StateStore, project: Project, sync: SyncConfig) -> list[str]:
    """The project's people syncs of ``sync``'s destination but ``sync`` itself, their tables
    made sure of (a sync not run yet has an empty snapshot)."""
    names = []
    for other in project:
        if other.kind == "people" and other.destination == sync.destination:
            if other.name != sync.name:
                store.ensure_sync_tables(other.name)
                names.append(other.name)
    return names


def _released_first(resolution: Resolution | None) -> list[tuple[str, str]]:
    """`(email, id)` of the people the identity graph's operations release an email from,
    sent before the rows (``customerio.releases``): no longer its holder for the rows."""
    if resolution is None:
        return []
    from lockgate.identity.customerio import releases

    return [(email, person) for _, person, email in releases(resolution.result)]


def _email_holders(store: StateStore, project: Project, sync: SyncConfig) -> list[tuple[str, str]]:
    """For a people sync identified by `email` and an `id` (or `cio_id`): the other people
    syncs of its destination identified by email, each with the SQL of its delivered records
    (without those whose delete is unconfirmed, ``diff.present_ends``; none of a sync whose
    state is of another workspace). The people they delivered an email to hold it in
    Customer.io: a row of this sync taking it waits (``diff._hold_shared_emails``)."""
    if not {"id", "user_id", "cio_id"} & set(sync.identify_by):
        return []
    names = _email_syncs_beside(store, project, sync)
    present = diff_step.present_ends(store.con, names).present
    return list(zip(names, present, strict=True))


def _email_syncs_beside(store: StateStore, project: Project, sync: SyncConfig) -> list[str]:
    """For a people sync identified by `email`: the other people syncs of its destination
    identified by email whose state is of this workspace, as known."""
    if sync.kind != "people" or "email" not in sync.identify_by:
        return []
    names = []
    for other in project:
        if (
            other.kind == "people"
            and other.name != sync.name
            and other.destination == sync.destination
            and "email" in other.identify_by
        ):
            store.ensure_sync_tables(other.name)
            if not workspace.moved(store, project, other):  # of this workspace, as known
                names.append(other.name)
    return names


def _relationships_of(
    store: StateStore, project: Project, sync: SyncConfig
) -> Callable[[StateStore, list[str], bool], None] | None:
    """For a people or objects sync that may delete records (`mirror`, `delete_removed`):
    what forgets, in the relationships syncs of its destination (of its object type), the
    relationships of the records it deletes, or whose delete was not confirmed
    (``Committer``)."""
    if sync.kind not in ("people", "objects") or not sync.delete_removed:
        return None
    syncs = []
    for other in planned_step.relationship_syncs(project, sync):
        store.ensure_sync_tables(other.name)
        syncs.append(other.name)
    if not syncs:
        return None
    kind = sync.kind

    def forget(writer: StateStore, idents: list[str], confirmed: bool) -> None:
        diff_step.forget_relationships_of(writer.con, kind, syncs, idents, confirmed=confirmed)

    return forget


def _people_of(
    store: StateStore, project: Project, sync: SyncConfig
) -> Callable[[StateStore, list[str]], dict[str, int]] | None:
    """For a people (objects) sync that deletes (`mirror`, `delete_removed`): what forgets,
    in the state of the other people syncs of its destination (objects syncs of its object
    type), the people (objects) whose delete Customer.io confirmed, so those syncs send them
    again (``Committer.forget_people``)."""
    syncs = []
    for other in planned_step.people_syncs(project, sync):
        store.ensure_sync_tables(other.name)
        syncs.append(other.name)
    if not syncs:
        return None

    kind = sync.kind

    def forget(writer: StateStore, idents: list[str]) -> dict[str, int]:
        return diff_step.forget_people_of(writer.con, syncs, idents, kind)

    return forget


def _known_of(
    store: StateStore, project: Project, sync: SyncConfig
) -> Callable[[StateStore, list[str]], None] | None:
    """For a people sync that deletes (`mirror`, `delete_removed`): what forgets, in the
    ``people_known__S`` of its own and of the other people syncs of its destination, the
    people whose delete Customer.io confirmed (``Committer.forget_known``)."""
    if sync.kind != "people" or not sync.delete_removed:
        return None
    syncs = [sync.name]
    for other in planned_step.people_syncs(project, sync):
        store.ensure_sync_tables(other.name)
        syncs.append(other.name)

    def forget(writer: StateStore, idents: list[str]) -> None:
        diff_step.forget_known_people(writer.con, syncs, idents)

    return forget


#: `sync --all` runs objects before people before relationships before events, so the
#: things a relationship points to exist before it is sent
KIND_ORDER = {"objects": 0, "people": 1, "relationships": 2, "events": 3}


def _samples(store: StateStore, kind: str, limit: int) -> tuple[dict[str, Any], ...]:
    import numpy as np

    from lockgate.sync.deliver import event_ulids

    out: list[dict[str, Any]] = []
    if kind == "events":
        rows = store.con.execute(f"select k, op, ts, lo, hi from changes limit {limit}").fetchall()
        if rows:
            ids = event_ulids(
                np.array([r[2] for r in rows]),
                np.array([r[3] for r in rows], dtype=np.uint64),
                np.array([r[4] for r in rows], dtype=np.uint64),
            )
            for (k, op, *_), ulid in zip(rows, ids, strict=True):
                out.append(
                    {"key": k, "payload": orjson.loads(b'{"id":"' + ulid + b'",' + op.encode())}
                )
        return tuple(out)
    for k, op in diff_step.sample_ops(store.con, limit):
        out.append({"key": k, "payload": orjson.loads(op)})
    return tuple(out)


def _release_samples(store: StateStore, limit: int) -> tuple[dict[str, Any], ...]:
    """The first emails a people run releases before its records (``email_clears``), by key,
    as sent."""
    if not diff_step.email_clears(store.con):
        return ()
    rows = store.con.execute(f"select k, op from email_clears order by k limit {int(limit)}")
    return tuple({"key": k, "payload": orjson.loads(op)} for k, op in rows.fetchall())


def plan_sync(
    project: Project,
    name: str,
    *,
    console: Console,
    full_resync: bool = False,
    now: int | None = None,
    samples: int = 3,
    session: Session | None = None,
    rejected_sink: Callable[[pa.Table], None] | None = None,
    only: tuple[str, ...] = (),
    follow_up_of: str | None = None,
) -> RunReport:
    """Everything a run would do, counted, with sample payloads; nothing is sent. Plans that
    pass one ``session`` share the identity graph and the state store (see :class:`Session`).
    ``rejected_sink`` gets every row the mapping rejects, as (sync, key, reason).
    ``follow_up_of``: the plan of a follow-up run (:meth:`Session.follow_up`), after the plan
    of that id."""
    sync = project.sync(name)
    with _state(project, session) as store:
        run_id = _new_run_id()  # once it holds the state, as a run (:func:`run_sync`)
        step = _Step(run_id, state=store.path, plan=True)
        started = time.perf_counter()
        prepared = _prepare(
            store,
            project,
            sync,
            console,
            step,
            full_resync=full_resync,
            now=now or int(time.time()),
            payloads=False,
            session=session,
            only=only,
        )
        changes, recovered, guards = prepared.changes, prepared.recovered, prepared.guards
        resolution, identity_ops = prepared.resolution, prepared.identity_ops
        naive, anonymous_ops = prepared.naive_timestamps, prepared.anonymous_ops
        refused = _plan_kept_back(store, project, sync, prepared.merges_skipped, resolution)
        if sync.kind == "relationships" and changes.to_send:
            # as the run holds them without an App API key (with one, it looks them up)
            changes, _ = _hold_relationships_of_rejected_objects(
                store, project, sync, run_id, console, changes, plan=True
            )
        sample = _samples(store, sync.kind, samples)
        releases = _release_samples(store, samples)
        resent_by = planned_step.resent_by(store, project, sync)
        if rejected_sink is not None:
            rejected_sink(rejects.table_of(store.con, sync.name))
        email_check = ""
        if sync.kind == "people":
            # a plan never reads back nor looks up: it says only when the run could not either
            moves = new = 0
            if _email_check_settings(project, sync) is None:
                moves = len(diff_step.email_moves(store.con, sync))
            if (changes.new or changes.changed) and _new_check_settings(project, sync) is None:
                new, _ = diff_step.new_emails(store.con, sync, limit=0)
            if moves or new:
                email_check = _not_verified(project, sync, moves, planned=True, new=new)
        if session is not None and not any(g.breached for g in guards):
            # the later plans of the command see what this run would commit (a run a
            # guardrail stops commits nothing)
            planned_step.record(
                store,
                project,
                sync,
                session.planned,
                full_resync=full_resync,
                only=bool(only),
                email_syncs=_email_syncs_beside(store, project, sync),
                identity_ops=pa.concat_tables(
                    [t for t in (identity_ops, anonymous_ops) if t is not None]
                )
                if identity_ops is not None or anonymous_ops is not None
                else None,
            )
    return RunReport(
        run_id,
        sync.name,
        sync.kind,
        "planned",
        changes,
        samples=sample,
        email_release_samples=releases,
        seconds=time.perf_counter() - started,
        recovered=recovered,
        guards=tuple(guards),
        mode=project.sync(name).effective_mode,
        identity_ops=_op_payloads(identity_ops),
        anonymous_ops=_op_payloads(anonymous_ops),
        identity_merges_skipped=prepared.merges_skipped,
        only=only,
        email_check=email_check,
        failures=tuple((k, "rejected", reason) for k, reason in refused),
        rejected_by_api=len(refused),
        resent_by=tuple(sorted(resent_by.items())),
        identity_graph=_graph_use(resolution),
        naive_timestamps=naive,
        timezone=sync.timezone,
        follow_up_of=follow_up_of,
    )


def _plan_kept_back(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    merges_skipped: Sequence[dict[str, Any]],
    resolution: Resolution | None,
) -> list[tuple[str, str]]:
    """In a plan: the rows the run will not send because their email is held by a person a
    merge kept back would have merged into theirs (:func:`_kept_back_rows`), taken out of the
    plan's ``changes`` as the run takes them out, with the clears of the emails they give up
    that the run sends first (``diff.clear_refused_givers``): the plan's samples, its email
    releases and what it keeps for the later plans of a command are the run's. Returns (key,
    reason) of each, which the plan reports as the run does (``failures``)."""
    if sync.kind != "people" or resolution is None:
        return []
    found = _kept_back_rows(store, project, sync, merges_skipped)
    if found is None or not found.refused:
        return []
    keys = [k for k, _ in found.refused]
    store.exec_sql("delete from changes where k in (select unnest(?::varchar[]))", [keys])
    diff_step.clear_refused_givers(store.con, keys)
    return found.refused


def _stopped_report(
    run_id: str,
    sync: SyncConfig,
    only: tuple[str, ...],
    changes: diff_step.ChangeSet | None,
    committer: Any,
    guards: list[guard_step.GuardResult],
    seconds: float,
    follow_up_of: str | None = None,
) -> RunReport | None:
    """The report of a run that failed or was stopped after its diff: what it planned, the
    rows it rejected and the guardrails' verdicts (why a guardrail stopped it), and what it
    delivered, which is committed, so the counts say how far it got, and in how long. None
    when it failed before its diff."""
    if changes is None:
        return None
    done = committer.counts if committer is not None else None
    return RunReport(
        run_id,
        sync.name,
        sync.kind,
        "failed",
        changes,
        delivered=done.delivered if done else 0,
        rejected_by_api=done.rejected if done else 0,
        dead_lettered=done.dead_lettered if done else 0,
        seconds=seconds,
        guards=tuple(guards),
        mode=sync.effective_mode,
        only=only,
        follow_up_of=follow_up_of,
    )


#: the attribute of a stop (SIGTERM, Ctrl-C: a KeyboardInterrupt) that holds the report of
#: the run it stopped (:func:`stopped_run`)
_STOPPED_RUN = "lockgate_stopped_run"


def report_stop(
    stop: KeyboardInterrupt, run_id: str, sync: SyncConfig, counts: dict[str, Any]
) -> None:
    """Attach to ``stop`` the report of the run it stopped, as recorded (status `failed`,
    error `interrupted`, what it planned and delivered so far): `lockgate sync --json` prints
    it, so a wrapper reading stdout (Airflow, cron) learns how far the run got."""
    report = {"run_id": run_id, "sync": sync.name, "kind": sync.kind, "status": "failed"}
    setattr(stop, _STOPPED_RUN, {**report, **counts, "error": "interrupted"})


def stopped_run(stop: BaseException) -> dict[str, Any] | None:
    """The report :func:`report_stop` attached to ``stop``; None when it stopped no run."""
    report: dict[str, Any] | None = getattr(stop, _STOPPED_RUN, None)
    return report


def _alert(
    store: StateStore,
    project: Project,
    sync: str,
    run_id: str,
    status: str,
    counts: dict[str, Any],
    error: str | None,
    console: Console,
) -> None:
    """Tell the project's `alerts:` of a failed, partial or recovered run (sync/alerts.py)."""
    if not project.config.alerts:
        return
    from lockgate.sync import alerts

    try:
        alerts.notify(
            project,
            sync,
            run_id,
            status,
            previous=store.previous_status(sync, run_id),
            counts=counts,
            error=error,
            console=console,
        )
    except Exception as exc:  # an alert never hides the run's own outcome or error
        console.warn(f"{sync}: alerts not sent: {type(exc).__name__}")


def _log_run(
    store: StateStore, project: Project, console: Console, session: Session | None
) -> None:
    """Write the run to the warehouse's run log (`run_log:`): now for a run on its own, at
    the end of the session for the syncs of one command."""
    if project.config.run_log is None:
        return
    if session is not None:
        session.log_runs(project, console)
        return
    from lockgate.sync.runlog import write_after_runs

    write_after_runs(project, console, store)


def _op_payloads(ops: pa.Table | None) -> tuple[dict[str, Any], ...]:
    return tuple(orjson.loads(op) for op in ops["op"].to_pylist()) if ops is not None else ()


def run_sync(
    project: Project,
    name: str,
    *,
    console: Console,
    destination_factory: DestinationFactory = default_destination,
    full_resync: bool = False,
    force: bool = False,
    now: int | None = None,
    session: Session | None = None,
    only: tuple[str, ...] = (),
    new_workspace: bool = False,
    follow_up_of: str | None = None,
) -> RunReport:
    """Run one sync to the end; returns its report. Raises StepError when a step fails,
    ContractError (before anything is sent) when a guardrail is breached and not ``force``.
    With the default destination, its settings are checked first (:func:`check_destination`):
    a variable not set fails the run before its model is read, sending or not.
    Runs that pass one ``session`` share the identity graph (see :class:`Session`).

    With ``only``, the run is of the records those values name (`lockgate sync --only`): only
    they are diffed, sent and committed; the share guardrails are skipped, identity merges
    waiting to be sent stop it (they belong to a whole run), and the mapping is not recorded
    as delivered (the other records have not been sent with it).

    With ``new_workspace`` (`lockgate sync --new-workspace`), the run first forgets what the
    state says the sync delivered, and the workspace it was to: it sends everything to the
    workspace its destination points at, as a first run does. Without it, a state recorded
    for another workspace stops the run before it sends anything
    (:mod:`lockgate.state.workspace`).

    ``follow_up_of``: a follow-up run of the command (:meth:`Session.follow_up`), after the
    sync's run of that id; its report says so."""
    sync = project.sync(name)
    with _state(project, session) as store:
        # the run starts once it holds the state: a wait for another process (a scheduled
        # round behind a `lockgate sync` by hand) is not in its id, `started_at` or seconds
        begun = datetime.now(UTC)
        run_id = _new_run_id(begun)
        step = _Step(run_id, state=store.path)
        started = time.perf_counter()
        store.start_run(run_id, sync.name, sync.kind, at=begun)
        changes = None
        committer = None
        written_ahead = False
        guards: list[guard_step.GuardResult] = []
        try:
            settings = None
            if destination_factory is default_destination:
                # before the model is read: a variable not set fails the run in milliseconds,
                # not after minutes of extracting and diffing, and on a day with nothing to
                # send as on a busy one
                with step("destination"):
                    settings = check_destination(project, sync)
            prepared = _prepare(
                store,
                project,
                sync,
                console,
                step,
                full_resync=full_resync,
                now=now or int(time.time()),
                session=session,
                only=only,
                new_workspace=new_workspace,
            )
            changes, recovered, guards = prepared.changes, prepared.recovered, prepared.guards
            resolution, identity_ops = prepared.resolution, prepared.identity_ops
            mapping_hash, naive = prepared.mapping_hash, prepared.naive_timestamps
            anonymous_ops = prepared.anonymous_ops
            # before the guardrails: a run they stop still shows which rows were rejected
            store.keep_rejected_rows(run_id, sync.name, rejects.KEPT_PER_RUN)
            guard_step.enforce(sync, guards, force=force)
            new_checked, new_unchecked, new_note = 0, 0, ""
            new_refused: list[tuple[str, str]] = []
            if sync.kind == "people" and (changes.new or changes.changed):
                # before anything of the run's rows is sent (and before a full resync forgets
                # what was delivered): a new row, or a row with a new `id`, whose email another
                # person holds would take that person over
                with step("deliver"):
                    new_checked, new_unchecked, new_note, new_refused = _check_new_emails(
                        store,
                        project,
                        sync,
                        run_id,
                        console,
                        resolution,
                        identity_ops,
                        prepared.merges_skipped,
                    )
            if sync.kind == "people" and resolution is not None:
                with step("deliver"):
                    new_refused += _hold_emails_of_merges_kept_back(
                        store, project, sync, run_id, console, prepared.merges_skipped
                    )
            if new_refused and sync.kind == "people":
                # a giver refused keeps its email otherwise: cleared first for its taker
                diff_step.clear_refused_givers(store.con, [k for k, _ in new_refused])
            if full_resync and sync.kind != "events":
                _reset_snapshot(
                    store, sync, run_id, only=bool(only), refused=[k for k, _ in new_refused]
                )
            diff_step.forget_gone_relationships(store.con, sync, full_resync=full_resync)
            merges = identity_ops is not None and identity_ops.num_rows > 0
            if merges and only:
                raise LockgateError(
                    f"sync `{sync.name}`: the identity graph has merges to send first, and "
                    "`--only` sends the named records alone",
                    hint=f"run `lockgate sync {sync.name}` once without `--only` (`lockgate "
                    f"plan {sync.name}` lists the merges)",
                )
            object_check = ""
            if changes.removed_sent:
                with step("deliver"):
                    changes, object_check = _clear_objects_still_there(
                        store, project, sync, run_id, console, changes
                    )
            if sync.kind == "relationships" and changes.to_send:
                with step("deliver"):
                    changes, held_check = _hold_relationships_of_rejected_objects(
                        store, project, sync, run_id, console, changes
                    )
                object_check = "\n".join(n for n in (object_check, held_check) if n)
            diff_step.rejected_objects_rows(store.con, sync)
            attaching = anonymous_ops is not None and anonymous_ops.num_rows > 0
            if settings is not None and (
                merges or attaching or changes.state_events or changes.to_send
            ):
                # before the first record leaves: refused credentials or the wrong region stop
                # the run here (an EU workspace's data sent to the US host passes through it)
                from lockgate.destinations.customerio.region import check_before_sending

                with step("deliver"):
                    check_before_sending(settings)
            if merges:
                with step("deliver"):
                    _deliver_identity_ops(
                        store, project, sync, run_id, console, identity_ops, destination_factory
                    )
            state_events = None
            email_clears = None
            anonymous = None
            attached: pa.Table | None = None  # the anonymous ids delivered
            emails_read_back, email_check = 0, ""
            if changes.state_events:
                with step("deliver"):
                    state_events = _deliver_state_events(
                        store,
                        project,
                        sync,
                        run_id,
                        console,
                        changes.state_events,
                        destination_factory,
                    )
            with step("deliver"):
                # imported here: HTTP, NumPy and the committer thread are ~0.1 s of start-up
                # that a plan, or a run with nothing to send, does not need
                from lockgate.sync.commit import Committer
                from lockgate.sync.deliver import action_sql, deliver, notify_retries

                if changes.to_send:
                    # committed before the first request (an email release included): a run
                    # killed from here on cannot mark what it has in flight, the next one
                    # does from this; events with the ids they are sent with, which the next
                    # run sends them with again (a row corrected meanwhile makes another id)
                    if sync.kind == "events":
                        store.record_sending_events(sync.name, "changes")
                    else:
                        removed = bool(
                            run_sql(store.con, "select count(*) from changes where removed")[0][0]
                        )
                        store.record_sending(
                            sync.name,
                            "changes",
                            action_sql(sync.kind, removed=removed),
                            new="is_new",
                        )
                    written_ahead = True
                if sync.kind == "people":  # true whether what follows lands or not
                    diff_step.keep_emails(store, sync)
                if diff_step.email_clears(store.con):
                    email_clears = _deliver_email_clears(
                        store, project, sync, run_id, console, destination_factory
                    )
                committer = Committer(
                    store.writer(),
                    sync=sync.name,
                    run_id=run_id,
                    kind=sync.kind,
                    forget_relationships=_relationships_of(store, project, sync),
                    forget_people=_people_of(store, project, sync),
                    forget_known=_known_of(store, project, sync),
                )
                # the writer is closed with the run: a Session's state store outlives it
                for key, reason in new_refused:  # not sent: rejected, as by Customer.io
                    committer.counts.reject(key, reason)
                with (
                    committer.store,
                    console.progress(
                        f"deliver {sync.name}", changes.to_send - len(new_refused)
                    ) as advance,
                ):
                    # rows taking an email another row of the run gives up go after it
                    phases = _delivery_phases(store)
                    if not phases and sync.kind == "events":  # as a delivery of none ends
                        store.keep_event_ids(sync.name, run_id, "changes", [])
                    for phase, source in enumerate(phases):
                        if phase:
                            _hold_takers(store, sync, console, phase, committer.counts)
                        destination = notify_retries(
                            destination_factory(project, sync), console, sync.name
                        )
                        try:
                            deliver(
                                store.con,
                                destination,
                                kind=sync.kind,
                                committer=committer,
                                advance=advance,
                                source=source,
                            )
                        finally:
                            if sync.kind == "events":  # stopped at once too: cut off in flight
                                store.keep_event_ids(
                                    sync.name, run_id, source, committer.unsure_events
                                )
                if sync.kind == "people":
                    emails_read_back, email_check = _check_emails(
                        store, project, sync, run_id, console, committer.counts, new=new_unchecked
                    )
                    email_check = "\n".join(n for n in (new_note, email_check) if n)
                    released = _released(store, email_clears)
                    diff_step.forget_kept_emails(store, sync, run_id, released)
                    diff_step.forget_released_left(store, sync, released)
                    diff_step.forget_released_refused(
                        store, sync, released, [k for k, _ in new_refused]
                    )
                    diff_step.forget_released_elsewhere(
                        store, sync, released, _email_syncs_beside(store, project, sync)
                    )
                if anonymous_ops is not None and anonymous_ops.num_rows:
                    anonymous, attached = _deliver_anonymous_ids(
                        store,
                        project,
                        sync,
                        run_id,
                        console,
                        anonymous_ops,
                        committer.counts,
                        destination_factory,
                    )
            with step("commit"):
                if sync.kind != "events":  # recorded as delivered: nothing to send
                    diff_step.commit_nulls_only(store, sync.name, run_id)
                    before = None if only else prepared.last
                    if mapping.changed_constants(sync, _last_hash(before)):
                        # the records not sent this run do not hold the new constants
                        diff_step.mark_stale(store, sync)
                store.fold_journal(sync.name, sent=True)
                if changes.history_skipped:
                    # before the contract: recorded, a first run's history is never sent; a
                    # run killed between the two leaves a first run to come, which finds these
                    # keys delivered and records the rest of the history as this one did
                    run_sql(
                        store.con,
                        f"insert into {table('ledger', sync.name)} (k, delivered_at) "
                        "select k, current_timestamp from history_keys",
                    )
                if not only:  # records under a new key: their old keys stop counting as gone
                    diff_step.forget_rekeyed(store.con, sync)
                    # the rows rejected with no person (no object), told apart next run
                    diff_step.record_unaddressed(store, sync)
                    # the delivered objects whose row is rejected: relationships check them
                    diff_step.record_rejected_objects(store, sync)
                # the state now says what this workspace holds (kept from the first commit on)
                workspace.record(store, sync.name, workspace.of(project, sync))
                if force and not only:  # the records that left, accepted: they stop counting
                    guard_step.forget_left(store.con, sync, guards)
                if resolution is not None and not resolution.saved:
                    from lockgate.sync.resolve import write_tables

                    # before the graph that no longer shows them is kept
                    _record_merges_kept_back(store, project, prepared.merges_skipped)
                    resolution.save(project.state_dir)
                    resolution.saved = True
                    try:
                        where = write_tables(project, resolution)
                        console.info(f"{sync.name}: identity tables written to {where}")
                    except LockgateError as exc:
                        console.warn(f"{sync.name}: identity tables not written: {exc}")
                    else:  # the next run may reuse the graph only once its tables are written
                        resolution.record_inputs(project.state_dir)
                if not only:  # the other records have not been sent under this mapping
                    # records Customer.io refused or that were dead-lettered are sent by the
                    # next run: under the mapping last recorded, it sees them as a mapping
                    # change still to send (with the clears of attributes taken out of it);
                    # events have no such change (an event is sent once, as first mapped);
                    # a mapping only spelt otherwise keeps the record too (`_same_hash`)
                    left = sync.kind != "events" and _undelivered(
                        committer.counts, state_events, email_clears
                    )
                    kept = prepared.last
                    if kept is not None and not left and not _same_hash(kept, sync, mapping_hash):
                        kept = None
                    contract_state.record(
                        store.con,
                        sync,
                        run_id,
                        # the hash this run made (a kept one with the nested terms added),
                        # unless records are left to send under the last one
                        mapping_hash=kept.mapping_hash if kept and left else mapping_hash or None,
                        mapping=kept.mapping if kept else mapping.recorded_mapping(sync),
                        previous=prepared.last,
                    )
        except BaseException as exc:
            if isinstance(exc, NothingNamedError):  # nothing ran: no run to list
                store.forget_run(run_id)
                raise
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            seconds = time.perf_counter() - started
            stopped_report = _stopped_report(
                run_id, sync, only, changes, committer, guards, seconds, follow_up_of
            )
            # for `lockgate runs` and `runs show`
            stopped = (
                stopped_report.as_dict()
                if stopped_report is not None
                else {"mode": sync.effective_mode, "only": list(only), "seconds": round(seconds, 3)}
            )
            if follow_up_of is not None:
                stopped["follow_up_of"] = follow_up_of
            if isinstance(exc, LockgateError) and exc.report is None:
                exc.report = stopped_report  # for the command's output: why it stopped
            if written_ahead and _answers_recorded(exc):
                with contextlib.suppress(duckdb.Error):  # kept, it only sends more next run
                    store.forget_sending(sync.name)
            try:
                store.finish_run(run_id, "failed", stopped, error=reason or type(exc).__name__)
            except (StateError, duckdb.Error) as unrecorded:  # the disk that failed the run
                # the run's own error is the one to show; the next run marks it `crashed`
                console.warn(f"{sync.name}: run `{run_id}` not recorded as failed: {unrecorded}")
            if isinstance(exc, KeyboardInterrupt):
                report_stop(exc, run_id, sync, stopped)
            if not isinstance(exc, KeyboardInterrupt):  # a stop on purpose is no alarm
                if not only:
                    _alert(store, project, sync.name, run_id, "failed", stopped, reason, console)
                _log_run(store, project, console, session)
            raise
        counts = committer.counts
        if state_events is not None:
            counts.delivered += state_events.delivered
        # a clear not delivered is a dead letter of the run (its rows wait for the next one);
        # those delivered are the means of the rows', not counted apart
        for ahead in (state_events, email_clears, anonymous):
            if ahead is not None:
                counts.rejected += ahead.rejected
                counts.dead_lettered += ahead.dead_lettered
                counts.failures.extend(ahead.failures[: max(0, 20 - len(counts.failures))])
        status = "success" if not (counts.rejected or counts.dead_lettered) else "partial"
        report = RunReport(
            run_id,
            sync.name,
            sync.kind,
            status,
            changes,
            delivered=counts.delivered,
            rejected_by_api=counts.rejected,
            dead_lettered=counts.dead_lettered,
            failures=tuple(counts.failures),
            seconds=time.perf_counter() - started,
            recovered=recovered,
            guards=tuple(guards),
            mode=project.sync(name).effective_mode,
            identity_ops=_op_payloads(identity_ops),
            anonymous_ops=_op_payloads(attached),
            identity_merges_skipped=prepared.merges_skipped,
            only=only,
            emails_read_back=emails_read_back,
            new_emails_checked=new_checked,
            email_check=email_check,
            object_check=object_check,
            resent_by=tuple(sorted(counts.resent_by.items())),
            identity_graph=_graph_use(resolution),
            naive_timestamps=naive,
            timezone=sync.timezone,
            follow_up_of=follow_up_of,
        )
        store.finish_run(run_id, status, report.as_dict())
        if not only:
            _alert(store, project, sync.name, run_id, status, report.as_dict(), None, console)
        days = project.config.history_days
        if days is not None:
            try:
                store.prune_history(days)
            except (duckdb.Error, StateError) as exc:  # the run is committed; prune next time
                console.warn(f"{name}: could not drop history older than {days} days: {exc}")
        _log_run(store, project, console, session)
    return report
