"""Reconcile an events sync: did every event its ledger says it delivered arrive, once?

What was delivered comes from the state: the keys in the sync's ledger that the history
records as delivered (action `event`, outcome `delivered`), with the identifiers each was
sent to (the person, as Customer.io knows them: for an identity-graph sync, the person the
graph resolved), and the name and timestamp the ledger recorded each was sent with (state
format 4), whatever the model holds now. An event ledgered before that has neither: its name
and time come from the model, read and mapped as a run would (``mapping.compile_events``, in
a private in-memory DuckDB), and one whose row has left the model cannot be checked. The
model is read only when the people read back have such events.

Each person's activities are read through the App API (``GET /v1/customers/{id}/activities
?type=event``, 100 a page, 10 requests a second) and each delivered event is looked for:
first by the dedupe id Lockgate sent it with (when Customer.io's activity `id` is that id;
known for the events read from the model), then by its name (or its backfill name) and
timestamp. Customer.io guarantees 30 days of
activities: an event not found that is older than that, or that lies beyond the pages read
(:data:`MAX_PAGES` a person), is *not checked*, never *missing*. An activity left over with
the name and timestamp of an event found is a *duplicate*.

Against a workspace on a loopback address (the emulator) every person is read; against a
real workspace a deterministic sample (default 1,000 people, picked by a hash).

Example::

    report = reconcile_events(project, sync, console=NullConsole())
    for name in report.names:
        print(name.name, name.found, name.missing, name.duplicated)
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pyarrow as pa

from lockgate.console import Console
from lockgate.destinations.customerio.app_api import AppAPIClient
from lockgate.destinations.customerio.settings import CustomerIOSettings
from lockgate.errors import ConfigError
from lockgate.project.loader import Project
from lockgate.project.models import SyncConfig
from lockgate.sources import connect
from lockgate.sources.base import quote_literal
from lockgate.state.store import StateStore, has_table, run_sql, table
from lockgate.sync import mapping
from lockgate.sync.deliver import event_ulids
from lockgate.sync.extract import Staged, stage

RETENTION_SECONDS = 30 * 86400
"""Customer.io guarantees the activities of the past 30 days (App API spec)."""
MAX_PAGES = 50
"""Pages of 100 activities read per person at most (5,000 events)."""
SAMPLES = 5
"""Missing or duplicated events shown per event name."""

NOT_IN_HISTORY = "no delivery in the history (pruned by `history_days`, or never sent)"
NOT_IN_MODEL = (
    "its row has left the model, and it was delivered before the state kept the name and "
    "time each event is sent with (state format 4): both unknown"
)
NO_PERSON = "sent to an anonymous id only (no person to read back)"
TOO_OLD = "older than the 30 days of activities Customer.io guarantees"
BEYOND_PAGES = f"beyond the {MAX_PAGES * 100:,} latest activities read for the person"


@dataclass(frozen=True)
class EventNameCount:
    """The delivered events of one name, as found in Customer.io."""

    name: str
    found: int = 0
    missing: int = 0
    duplicated: int = 0
    """Copies beyond the one expected (an event found twice counts 1)."""
    not_checked: int = 0
    samples: tuple[tuple[str, str, str, int | None], ...] = ()
    """(verdict `missing`/`duplicated`, event key, person, timestamp)."""

    @property
    def drifting(self) -> bool:
        return bool(self.missing or self.duplicated)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "found": self.found,
            "missing": self.missing,
            "duplicated": self.duplicated,
            "not_checked": self.not_checked,
            "samples": [
                {"verdict": v, "key": k, "person": p, "timestamp": ts}
                for v, k, p, ts in self.samples
            ],
        }


@dataclass(frozen=True)
class EventsReconcileReport:
    """What Customer.io holds of the events an events sync delivered."""

    sync: str
    delivered: int
    """Events the ledger holds."""
    people: int
    """People those events were delivered to."""
    compared: int
    """People read back (all of them, or a sample)."""
    sampled: bool
    names: tuple[EventNameCount, ...] = ()
    not_checked: dict[str, int] = field(default_factory=dict)
    """Why events were not checked (reason → events), for those not looked for at all."""
    not_found: int = 0
    not_found_samples: tuple[str, ...] = ()
    app_requests: int = 0

    @property
    def drifting(self) -> bool:
        return bool(self.not_found) or any(n.drifting for n in self.names)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "kind": "events",
            "delivered": self.delivered,
            "people": self.people,
            "compared": self.compared,
            "sampled": self.sampled,
            "drifting": self.drifting,
            "found": sum(n.found for n in self.names),
            "missing": sum(n.missing for n in self.names),
            "duplicated": sum(n.duplicated for n in self.names),
            "not_checked": sum(self.not_checked.values()),
            "not_checked_reasons": dict(sorted(self.not_checked.items())),
            "people_not_found": self.not_found,
            "people_not_found_samples": list(self.not_found_samples),
            "events": [n.as_dict() for n in self.names],
            "app_api_requests": self.app_requests,
        }


@dataclass
class _Event:
    key: str
    name: str
    names: frozenset[str]
    """The names Customer.io may hold it under: its own, and its backfill name."""
    timestamp: int | None
    """None: the sync has no timestamp column (it went out with the time of its run)."""
    dedupe_id: str
    """Empty when not known (an event the ledger names: the model is not read for it)."""
    delivered_at: float
    sent_ts: int | None = None
    """Of an event of a sync without a timestamp column, the time it went out with, when
    the ledger recorded it: an activity of its name at that second is taken first."""


@dataclass
class _Delivered:
    """The ledger of an events sync, read for a sample of the people its events went to."""

    events: int = 0
    people: int = 0
    no_history: int = 0
    no_person: int = 0
    chosen: dict[tuple[str, str], list[tuple[str, float, str | None, int | None]]] = field(
        default_factory=dict
    )
    """(id_type, identifier) → [(key, delivered at as epoch seconds, name and timestamp sent
    as the ledger recorded them, or None)] of the people sampled."""


_PEOPLE_SQL = """
with d as (
    select l.k, epoch(l.delivered_at) as delivered, {sent}, h.ident,
           case when json_valid(h.ident)
                then coalesce(json_extract(h.ident, '$.person'), h.ident::json) end as who
    from {ledger} l
    left join (
        select k, arg_max(ident, sent_at) as ident from history
        where sync = $sync and action = 'event' and outcome = 'delivered'
        group by k
    ) h on h.k = l.k
), r as (
    select k, delivered, sent_name, sent_ts, ident is null as no_history,
           nullif(json_extract_string(who, '$.id'), '') as id,
           nullif(json_extract_string(who, '$.email'), '') as email,
           nullif(json_extract_string(who, '$.cio_id'), '') as cio_id
    from d
)
, _delivered as (
select k, delivered, sent_name, sent_ts, no_history,
       case when id is not null then 'id' when email is not null then 'email'
            when cio_id is not null then 'cio_id' end as id_type,
       case when id is not null then id when email is not null then email
            when starts_with(cio_id, 'cio_') then cio_id else 'cio_' || cio_id end as ref
from r
)
"""


def _delivered(project: Project, sync: SyncConfig, sample: int) -> _Delivered:
    """What the ledger holds: counts, and the events of ``sample`` people (0: all) picked by
    a hash of their identifier (a person by their `id`, else email, else `cio_id`, as the
    history recorded the delivery: for an identity-graph sync, the person the graph
    resolved). Done in the state's DuckDB: a ledger of millions of events stays there."""
    out = _Delivered()
    if not (project.state_dir / "state.duckdb").exists():
        return out
    with StateStore.open_read_only(project.state_dir) as store:
        if not has_table(store.con, f"ledger__{sync.name}"):
            return out
        con = store.con
        ledger = table("ledger", sync.name)
        columns = {r[0] for r in con.execute(f"describe {ledger}").fetchall()}
        # a state of format 3 (read as it is: reconcile does not upgrade it) has neither
        sent = (
            "l.name as sent_name, l.sent_ts"
            if {"name", "sent_ts"} <= columns
            else "null::varchar as sent_name, null::bigint as sent_ts"
        )
        people_sql = _PEOPLE_SQL.format(ledger=ledger, sent=sent)
        events, no_history, no_person, people = con.execute(
            f"{people_sql} select count(*), count(*) filter (no_history), "
            "count(*) filter (not no_history and id_type is null), "
            "count(distinct (id_type, ref)) filter (id_type is not null) from _delivered",
            {"sync": sync.name},
        ).fetchall()[0]
        limit = f"limit {int(sample)}" if sample else ""
        rows = con.execute(
            f"""
            {people_sql}, chosen as (
                select distinct id_type, ref from _delivered where id_type is not null
                order by hash(id_type || ':' || ref), id_type, ref {limit}
            )
            select id_type, ref, k, delivered, sent_name, sent_ts
            from _delivered join chosen using (id_type, ref)
            order by hash(id_type || ':' || ref), id_type, ref, k
            """,
            {"sync": sync.name},
        ).fetchall()
    out.events, out.no_history, out.no_person, out.people = (
        int(events),
        int(no_history),
        int(no_person),
        int(people),
    )
    for id_type, ref, k, at, name, ts in rows:
        out.chosen.setdefault((str(id_type), str(ref)), []).append(
            (str(k), float(at or 0), None if name is None else str(name), ts)
        )
    return out


@contextmanager
def staged_model(
    project: Project, sync: SyncConfig, console: Console
) -> Iterator[tuple[duckdb.DuckDBPyConnection, Staged]]:
    """The sync's model read, as a run reads it (``extract.stage``), into the temp table
    ``model`` of a private in-memory DuckDB (no state lock taken), closed on leaving.

    A model larger than the memory limit spills to a private temporary directory, removed on
    leaving, never to the state folder: reconcile only reads the state, which may be on a
    read-only disk."""
    with tempfile.TemporaryDirectory(prefix="lockgate-reconcile-") as spill:
        with _model_connection(project, sync, console, Path(spill)) as found:
            yield found


@contextmanager
def _model_connection(
    project: Project, sync: SyncConfig, console: Console, spill: Path
) -> Iterator[tuple[duckdb.DuckDBPyConnection, Staged]]:
    con = duckdb.connect()
    try:
        run_sql(con, "set memory_limit='512MB'")
        run_sql(con, f"set temp_directory={quote_literal(str(spill))}")
        source = connect(project.config.sources[sync.source], root=project.root, name=sync.source)
        try:
            with console.progress(f"extract {sync.name}", None) as advance:
                try:
                    staged = stage(
                        con, source, project.model_sql(sync), sync=sync.name, advance=advance
                    )
                except ConfigError as exc:  # two columns of one name
                    raise project.locate(exc, sync.name, ("model",)) from None
        finally:
            source.close()
        yield con, staged
    finally:
        con.close()


def _model_events(
    project: Project, sync: SyncConfig, console: Console, keys: set[str]
) -> dict[str, _Event]:
    """The events of ``keys`` as the model maps them now: name, timestamp and dedupe id."""
    assert sync.event is not None
    with staged_model(project, sync, console) as (con, staged):
        compiled = mapping.compile_events(sync, staged.columns, int(time.time()))
        con.register("_keys", pa.table({"k": pa.array(sorted(keys), pa.string())}))
        rows = con.execute(
            f"""
            select k, id_seed, ts,
                   md5_number_lower(k || chr(31) || id_seed) as lo,
                   md5_number_upper(k || chr(31) || id_seed) as hi
            from ({compiled.select}) e semi join _keys using (k)
            where reject is null
            qualify row_number() over (partition by k order by ts) = 1
            """
        ).fetchall()
    if not rows:
        return {}
    ids = event_ulids(
        np.array([r[2] for r in rows], dtype=np.int64),
        np.array([int(r[3]) for r in rows], dtype=np.uint64),
        np.array([int(r[4]) for r in rows], dtype=np.uint64),
    )
    older = sync.backfill.older
    rename = older["rename"] if isinstance(older, dict) else None
    out = {}
    for (k, seed, ts, _, _), dedupe in zip(rows, ids, strict=True):
        name = str(seed).split("\x1f", 1)[0]
        names = {name} | ({rename.replace("{name}", name)} if rename else set())
        out[str(k)] = _Event(
            key=str(k),
            name=name,
            names=frozenset(names),
            timestamp=int(ts) if sync.event.timestamp else None,
            dedupe_id=dedupe.decode(),
            delivered_at=0.0,
        )
    return out


async def _activities(
    settings: CustomerIOSettings,
    people: list[tuple[str, str]],
    console: Console,
    transport: httpx.AsyncBaseTransport | None,
) -> tuple[dict[tuple[str, str], tuple[list[dict[str, Any]], bool] | None], int]:
    """(person → (their `event` activities, whether every page was read), or None when
    Customer.io has no such person) and the requests made."""
    out: dict[tuple[str, str], tuple[list[dict[str, Any]], bool] | None] = {}
    async with AppAPIClient(settings, transport=transport) as app:
        with console.progress("read back from Customer.io", len(people)) as advance:
            for id_type, ref in people:
                rows: list[dict[str, Any]] = []
                start: str | None = None
                complete = known = False
                for _ in range(MAX_PAGES):
                    page = await app.get_person_activities(ref, id_type, type="event", start=start)
                    if page is None:  # no such person
                        break
                    known = True
                    rows.extend(page[0])
                    start = page[1]
                    if not start:
                        complete = True
                        break
                out[(id_type, ref)] = (rows, complete) if known else None
                advance(1)
        return out, app.requests


def _timestamp(activity: dict[str, Any]) -> int | None:
    value = activity.get("timestamp")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _match(
    events: list[_Event], activities: list[dict[str, Any]]
) -> tuple[list[_Event], list[_Event], list[_Event]]:
    """(events found, events not found, one entry per extra copy of an event found) among a
    person's activities: by dedupe id first, then by name (or backfill name) and timestamp
    (by name alone for a sync without timestamps), each activity taken once. An activity
    left over with the name and timestamp of an event found is a second copy of it."""
    by_id = {str(a.get("id")): i for i, a in enumerate(activities) if a.get("id")}
    by_name_ts: dict[tuple[Any, int | None], list[int]] = defaultdict(list)
    by_name: dict[Any, list[int]] = defaultdict(list)
    for i, a in enumerate(activities):
        by_name_ts[(a.get("name"), _timestamp(a))].append(i)
        by_name[a.get("name")].append(i)
    taken: set[int] = set()
    matched: list[_Event] = []
    rest: list[_Event] = []
    for event in events:
        same = by_id.get(event.dedupe_id) if event.dedupe_id else None
        if same is not None and same not in taken:
            taken.add(same)
            matched.append(event)
        else:
            rest.append(event)

    def take(event: _Event, candidates: Iterator[list[int]]) -> bool:
        hit = next((i for c in candidates for i in c if i not in taken), None)
        if hit is None:
            return False
        taken.add(hit)
        matched.append(event)
        return True

    # by name and timestamp first (for an event without a timestamp column, the time it went
    # out with, when the ledger has it), then, those without one, by name alone
    loose: list[_Event] = []
    unmatched: list[_Event] = []
    for event in rest:
        at = event.timestamp if event.timestamp is not None else event.sent_ts
        if at is not None and take(event, (by_name_ts[(n, at)] for n in sorted(event.names))):
            continue
        (loose if event.timestamp is None else unmatched).append(event)
    for event in loose:
        if not take(event, (by_name[n] for n in sorted(event.names))):
            unmatched.append(event)
    duplicates: list[_Event] = []
    for event in matched:
        if event.timestamp is None:
            continue  # without a timestamp, a second event of a name is not a copy
        for name in sorted(event.names):
            for i in by_name_ts.get((name, event.timestamp), ()):
                if i not in taken:
                    taken.add(i)
                    duplicates.append(event)
    return matched, unmatched, duplicates


def reconcile_events(
    project: Project,
    sync: SyncConfig,
    settings: CustomerIOSettings,
    *,
    console: Console,
    sample: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> EventsReconcileReport:
    """Look for each event ``sync``'s ledger holds in its person's Customer.io activities.
    ``sample``: people to read (0: all)."""
    delivered = _delivered(project, sync, sample)
    not_checked: dict[str, int] = defaultdict(int)
    if delivered.no_history:
        not_checked[NOT_IN_HISTORY] = delivered.no_history
    if delivered.no_person:
        not_checked[NO_PERSON] = delivered.no_person
    by_person = delivered.chosen
    chosen = list(by_person)
    # the model is read only for the events the ledger does not name (from before format 4)
    keys = {k for p in chosen for k, _, name, _ in by_person[p] if name is None}
    model = _model_events(project, sync, console, keys) if keys else {}
    timed = sync.event is not None and bool(sync.event.timestamp)
    found_people, requests = (
        asyncio.run(_activities(settings, chosen, console, transport)) if chosen else ({}, 0)
    )
    now = time.time()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    samples: dict[str, list[tuple[str, str, str, int | None]]] = defaultdict(list)

    def mark(event: _Event, verdict: str, person: str) -> None:
        counts[event.name][verdict] += 1
        if verdict in ("missing", "duplicated") and len(samples[event.name]) < SAMPLES:
            at = event.timestamp if event.timestamp is not None else event.sent_ts
            samples[event.name].append((verdict, event.key, person, at))

    not_found: list[str] = []
    for ref in chosen:
        person = ref[1]
        events = []
        for k, at, name, ts in by_person[ref]:
            if name is not None:  # as the ledger recorded it was sent
                event = _Event(
                    key=k,
                    name=name,
                    names=frozenset({name}),
                    timestamp=ts if timed else None,
                    dedupe_id="",
                    delivered_at=at,
                    sent_ts=None if timed else ts,
                )
                events.append(event)
                continue
            found = model.get(k)
            if found is None:
                not_checked[NOT_IN_MODEL] += 1
                continue
            found.delivered_at = at
            events.append(found)
        held = found_people.get(ref)
        if held is None:
            if events:
                not_found.append(person)
            for event in events:
                mark(event, "missing", person)
            continue
        activities, complete = held
        matched, unmatched, duplicates = _match(events, activities)
        for event in unmatched:
            oldest = min(event.delivered_at, event.timestamp or event.delivered_at)
            if not complete:
                not_checked[BEYOND_PAGES] += 1
                counts[event.name]["not_checked"] += 1
            elif oldest < now - RETENTION_SECONDS:
                not_checked[TOO_OLD] += 1
                counts[event.name]["not_checked"] += 1
            else:
                mark(event, "missing", person)
        for event in matched:
            counts[event.name]["found"] += 1
        for event in duplicates:
            mark(event, "duplicated", person)
    names = tuple(
        EventNameCount(
            name,
            found=c["found"],
            missing=c["missing"],
            duplicated=c["duplicated"],
            not_checked=c["not_checked"],
            samples=tuple(samples[name]),
        )
        for name, c in sorted(counts.items())
    )
    return EventsReconcileReport(
        sync=sync.name,
        delivered=delivered.events,
        people=delivered.people,
        compared=len(chosen),
        sampled=len(chosen) < delivered.people,
        names=names,
        not_checked=dict(not_checked),
        not_found=len(not_found),
        not_found_samples=tuple(not_found[:SAMPLES]),
        app_requests=requests,
    )
