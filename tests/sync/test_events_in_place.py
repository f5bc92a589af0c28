"""An events sync of a DuckDB model reads it where it lives once events were delivered.

The first run copies the model into the state database (the ledger is empty: every row is
mapped). Later runs compute only each row's event key in the warehouse
(`lockgate.sync.extract.InPlace.key_events`) and copy only the rows of keys the ledger lacks,
every copy of each. What reaches Customer.io and what the report counts are the same as when
the whole model is copied: here the same events run twice, once from a table Lockgate reads in
place and once from one it must copy (a `UUID[]` column, which the Arrow copy makes text).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from tests.sync.test_in_place import in_place_for

from lockgate.console import NullConsole
from lockgate.project.loader import load_project
from lockgate.sync.run import run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

NOW = 1_780_000_000  # a fixed "now" for the runs, so ages (and the events' ids) are exact

ORDERS = """
name: orders
source: warehouse
model: {table: orders}
kind: events
identify_by: {id: user_id}
event:
  name: kind
  timestamp: placed_at
  id: {hash: [order_id, line, token, placed_at]}
properties:
  amount: {column: amount, type: number}
  meta: {column: meta, type: json}
"""

# key columns of several type families (an integer, a decimal, a UUID, a timestamp), an ENUM
# name and a JSON property: the types whose text the in-place read must give as the copy does
BUILD = """
create type if not exists kind as enum ('signup', 'purchase');
create or replace table orders as
select i as order_id,
       (i % 3 + 0.5)::decimal(6, 2) as line,
       ('00000000-0000-0000-0000-' || lpad(i::varchar, 12, '0'))::uuid as token,
       case when i = 5 then null else i % 7 end as user_id,        -- 5: rejected
       (case when i % 2 = 0 then 'signup' else 'purchase' end)::kind as kind,
       -- 10, 20, ... 60: older than the backfill window
       to_timestamp({now} - case when i % 10 = 0 then 200 else i end * 3600) as placed_at,
       i * 1.25 as amount,
       ('{{"n": ' || i || '}}')::json as meta{extra}
from range(1, 61) t(i);
insert into orders select * from orders where order_id = 7;        -- an identical copy
insert into orders select * replace (99.5 as amount) from orders where order_id = 8;
"""

# appended before the second run: new events (one with two copies, one with two differing
# copies), a new rejected row, a new backfill row; a copy of a delivered event and a delivered
# event whose row changed (both already delivered, never sent again)
APPEND = """
insert into orders
select * replace (order_id + 100 as order_id, to_timestamp({now} - 60) as placed_at)
from orders where order_id between 1 and 12 and order_id not in (5, 7, 8, 10);
insert into orders select * replace (201 as order_id) from orders where order_id = 11;
insert into orders select * replace (201 as order_id) from orders where order_id = 11;
insert into orders select * replace (202 as order_id, 1.0 as amount)
from orders where order_id = 11;
insert into orders select * replace (202 as order_id, 2.0 as amount)
from orders where order_id = 11;
insert into orders select * replace (203 as order_id, null as user_id)
from orders where order_id = 11;
insert into orders select * replace (204 as order_id, to_timestamp({now} - 99 * 3600) as placed_at)
from orders where order_id = 11;
insert into orders select * from orders where order_id = 9;
update orders set amount = -1 where order_id = 12;
"""


def counts(report: Any) -> dict[str, Any]:
    """What a user reads of a run: its counts and rejected rows (not how it read the model)."""
    changes = {k: v for k, v in report.changes.as_dict().items() if k != "rows_copied"}
    return {
        "changes": changes,
        "rejected": sorted(report.changes.rejected_samples),
        "delivered": report.delivered,
    }


def stored(emu: Any) -> list[tuple[Any, ...]]:
    """Every event Customer.io holds: its person's id, name, time, dedupe id and data."""
    by_cio = {p.cio_id: p.id for p in emu.people()}
    return sorted(
        (by_cio.get(e.person), e.name, e.timestamp, e.id, sorted(e.data.items()))
        for e in emu.events()
    )


def three_runs(
    factory: ProjectFactory, *, copied: bool
) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]], list[int]]:
    """A first run, a run after `APPEND`, a run with nothing new: their counts, the events
    Customer.io holds, and how many rows each run copied into the state."""
    factory.emulator.reset()
    extra = ", ['00000000-0000-0000-0000-000000000001']::uuid[] as tags" if copied else ""
    factory.sql(BUILD.format(now=NOW, extra=extra))
    project = factory.write({"orders": ORDERS})
    shutil.rmtree(project.state_dir, ignore_errors=True)
    reports = [run_sync(project, "orders", console=NullConsole(), now=NOW)]
    assert (in_place_for(project, "orders") is None) is copied
    factory.sql(APPEND.format(now=NOW))
    reports.append(run_sync(project, "orders", console=NullConsole(), now=NOW))
    reports.append(run_sync(project, "orders", console=NullConsole(), now=NOW))
    assert factory.emulator.stats.duplicate_events_dropped == 0  # nothing offered twice
    return (
        [counts(r) for r in reports],
        stored(factory.emulator),
        [r.changes.rows_copied for r in reports],
    )


def test_an_events_run_in_place_sends_and_counts_what_a_copied_run_does(
    project_factory: ProjectFactory,
) -> None:
    copied, copied_events, copied_rows = three_runs(project_factory, copied=True)
    in_place, in_place_events, in_place_rows = three_runs(project_factory, copied=False)

    assert in_place == copied
    assert in_place_events == copied_events  # same events, same ids, same payloads
    second = in_place[1]["changes"]
    # 60 + 2 first rows, then 15 appended: 10 new events (101 ... 112, 201, 202); a copy of
    # 201, of 202 and of 9 counted as duplicates (with those of 7 and 8); 203 rejected (with
    # 5), 204 skipped as backfill (with 10, 20, ... 60)
    assert second["rows"] == 77
    assert (second["new"], second["to_send"], second["already_delivered"]) == (10, 10, 53)
    assert (second["duplicates_in_model"], second["rejected"], second["backfill_skipped"]) == (
        5,
        2,
        7,
    )
    assert in_place[2]["changes"]["to_send"] == 0
    assert len(in_place_events) == 53 + 10
    # copied, every run copies every row; in place, a later run copies only the rows of keys
    # the ledger lacks, every copy of each: the 14 appended rows of new keys, and the rows never
    # sent (5 rejected, 10 ... 60 skipped as backfill), then those and 203, 204 again
    assert copied_rows == [62, 77, 77]
    assert in_place_rows == [62, 14 + 7, 9]


#: an events sync of the `events` table, no properties (they follow when a test needs them)
PLAIN = """
name: activity
source: warehouse
model: {table: events}
kind: events
identify_by: {id: user_id}
event: {name: event_name, timestamp: occurred_at, id: event_id}
"""


def test_a_run_with_a_few_new_events_copies_only_their_rows(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        f"create or replace table events as select 'e' || i as event_id, i % 50 as user_id, "
        f"'Used' as event_name, to_timestamp({NOW} - i) as occurred_at from range(2000) t(i)"
    )
    project = project_factory.write({"activity": PLAIN})
    first = run_sync(project, "activity", console=NullConsole(), now=NOW)
    assert (first.delivered, first.changes.rows_copied) == (2000, 2000)
    project_factory.sql(
        f"insert into events select 'new' || i, i, 'Used', to_timestamp({NOW} - 5) "
        "from range(3) t(i)"
    )
    again = run_sync(project, "activity", console=NullConsole(), now=NOW)
    assert (again.delivered, again.changes.already_delivered) == (3, 2000)
    assert again.changes.rows_copied == 3
    assert len(project_factory.emulator.events()) == 2003


@pytest.mark.parametrize("full_resync", [False, True])
def test_an_events_model_that_reads_differently_each_time_is_copied_whole(
    project_factory: ProjectFactory, full_resync: bool
) -> None:
    # `random()` in a column the key does not read: the rows the warehouse keyed are not found
    # again by a second read, so the run copies the model whole rather than miss new events
    project_factory.sql(
        f"create or replace view events as select 'e' || i as event_id, 1 as user_id, "
        f"'Used' as event_name, to_timestamp({NOW} - i) as occurred_at, random() as draw "
        "from range(30) t(i)"
    )
    project = project_factory.write({"activity": PLAIN + "properties: {draw: draw}\n"})
    assert run_sync(project, "activity", console=NullConsole(), now=NOW).delivered == 30
    project_factory.sql(
        f"create or replace view events as select 'e' || i as event_id, 1 as user_id, "
        f"'Used' as event_name, to_timestamp({NOW} - i) as occurred_at, random() as draw "
        "from range(35) t(i)"
    )
    assert in_place_for(project, "activity") is not None
    again = run_sync(project, "activity", console=NullConsole(), now=NOW, full_resync=full_resync)
    assert (again.delivered, again.changes.already_delivered) == (5, 30)
    assert again.changes.rows_copied == 35  # copied whole after the second read missed them
    assert len(project_factory.emulator.events()) == 35


#: an events sync through the identity graph: rows name a user id or only an email, and the
#: graph (built from `app_users`, not from the model) sends each to its user's person
THROUGH_GRAPH = """
name: activity
source: warehouse
model: {table: events}
kind: events
identify_by: {user_id: user_id, email: email}
event: {name: event_name, timestamp: occurred_at, id: event_id}
properties: {n: n}
"""

IDENTITY = """\
identity:
  identifier_types:
    user_id: {priority: 1, limit: 1, customerio: id}
    email: {priority: 2, limit: 5, customerio: email}
  sources:
    - {name: app_users, table: app_users}
"""

# events of u0 ... u9 (then u0 ... u10): by user id, or (every third) by the user's email
# alone; every seventh of nobody the graph knows (`ghost@x.com`: rejected, "no identifier")
GRAPH_EVENTS = """
create or replace table app_users as
select 'u' || i as user_id, 'user' || i || '@x.com' as email from range({users}) t(i);
create or replace table events as
select 'e' || i as event_id,
       case when i % 3 = 0 or i % 7 = 0 then null else 'u' || (i % {users}) end as user_id,
       case when i % 7 = 0 then 'ghost@x.com'
            when i % 3 = 0 then 'USER' || (i % {users}) || '@x.com' end as email,
       'Used' as event_name, to_timestamp({now} - i * 60) as occurred_at, i as n{extra}
from range({first}, {last}) t(i)
"""


def graph_runs(
    factory: ProjectFactory, *, copied: bool
) -> tuple[list[tuple[Any, ...]], list[int], list[int], list[dict[str, Any]]]:
    """Two runs of an events sync through the identity graph: 40 events of ten users, then 12
    more, one of a new user `u10` (added to `app_users` with them), some by email alone.
    The events Customer.io holds, what each run delivered and copied, and its counts."""
    factory.emulator.reset()
    extra = ", ['00000000-0000-0000-0000-000000000001']::uuid[] as tags" if copied else ""
    factory.sql(GRAPH_EVENTS.format(users=10, now=NOW, extra=extra, first=0, last=40))
    project = factory.write({"activity": THROUGH_GRAPH})
    yml = project.root / "lockgate.yml"
    yml.write_text(yml.read_text() + IDENTITY)
    project = load_project(project.root)
    shutil.rmtree(project.state_dir, ignore_errors=True)
    reports = [run_sync(project, "activity", console=NullConsole(), now=NOW)]
    assert (in_place_for(project, "activity") is None) is copied
    more = GRAPH_EVENTS.format(users=11, now=NOW, extra=extra, first=40, last=52)
    factory.sql(more.replace("create or replace table events as", "insert into events"))
    factory.sql("insert into events select * from events where event_id = 'e40'")
    factory.sql("update events set n = -1 where event_id = 'e1'")  # delivered: never again
    reports.append(run_sync(project, "activity", console=NullConsole(), now=NOW))
    reports.append(run_sync(project, "activity", console=NullConsole(), now=NOW))
    assert factory.emulator.stats.duplicate_events_dropped == 0  # nothing offered twice
    return (
        stored(factory.emulator),
        [r.delivered for r in reports],
        [r.changes.rows_copied for r in reports],
        [counts(r) for r in reports],
    )


def test_an_events_sync_through_the_identity_graph_copies_only_the_rows_of_new_events(
    project_factory: ProjectFactory,
) -> None:
    copied_events, copied_sent, copied_rows, copied_counts = graph_runs(
        project_factory, copied=True
    )
    events, sent, rows, in_place_counts = graph_runs(project_factory, copied=False)

    # each event on the same person, with the same id and data, as when the model is copied
    assert events == copied_events
    assert in_place_counts == copied_counts
    # 40 rows, 6 of nobody (0, 7, 14, ... 35); then 12 new (42 and 49 of nobody) and a
    # second row of `e40`, counted as a duplicate
    assert sent == copied_sent == [34, 10, 0]
    by_person: dict[Any, int] = {}
    for person, *_ in events:
        by_person[person] = by_person.get(person, 0) + 1
    assert by_person["u10"] == 1 and None not in by_person  # u10's event (e43) on u10
    assert ("u1", "Used", NOW - 45 * 60) in {e[:3] for e in events}  # e45, by email alone
    # copied, every run copies every row; in place, the second copies the 13 new rows and the
    # 6 never sent (rejected: no identifier), the third those 8 again
    assert copied_rows == [40, 53, 53]
    assert rows == [40, 13 + 6, 8]


def graph_project(factory: ProjectFactory, sync: str) -> Any:
    """A project with the identity section and `sync` (the activity sync); `app_users`
    holds u0 ... u2."""
    factory.sql(
        "create or replace table app_users as "
        "select 'u' || i as user_id, 'user' || i || '@x.com' as email from range(3) t(i)"
    )
    project = factory.write({"activity": sync})
    yml = project.root / "lockgate.yml"
    yml.write_text(yml.read_text() + IDENTITY)
    return load_project(project.root)


def test_an_events_model_through_the_graph_that_reads_differently_is_copied_and_keyed_whole(
    project_factory: ProjectFactory,
) -> None:
    # `random()` in a property: the rows keyed in the warehouse are not found again, so the
    # whole model is copied and keyed through the graph, and only the new events are sent
    view = (
        "create or replace view events as select 'e' || i as event_id, "
        "case when i % 2 = 0 then 'u' || (i % 3) end as user_id, "
        "case when i % 2 = 1 then 'user' || (i % 3) || '@x.com' end as email, "
        f"'Used' as event_name, to_timestamp({NOW} - i) as occurred_at, i as n, "
        "random() as draw from range({rows}) t(i)"
    )
    project_factory.sql(view.format(rows=30))
    project = graph_project(project_factory, THROUGH_GRAPH.replace("{n: n}", "{n: n, draw: draw}"))
    assert run_sync(project, "activity", console=NullConsole(), now=NOW).delivered == 30
    project_factory.sql(view.format(rows=35))
    assert in_place_for(project, "activity") is not None
    again = run_sync(project, "activity", console=NullConsole(), now=NOW)
    assert (again.delivered, again.changes.already_delivered) == (5, 30)
    assert again.changes.rows_copied == 35
    by_cio = {p.cio_id: p.id for p in project_factory.emulator.people()}
    landed = sorted((e.data["n"], by_cio[e.person]) for e in project_factory.emulator.events())
    assert landed == [(i, f"u{i % 3}") for i in range(35)]  # by email alone too


def test_an_events_model_with_a_column_named_like_the_graphs_is_copied(
    project_factory: ProjectFactory,
) -> None:
    # the model's own `profile_id` (not read by the sync): the copy leaves it out for the
    # graph's, so the model is copied as before, and the graph's person stands
    table = (
        "create or replace table events as select 'e' || i as event_id, 'u' || (i % 3) as "
        f"user_id, null::varchar as email, 'Used' as event_name, to_timestamp({NOW} - i) as "
        "occurred_at, i as n, 'theirs' as profile_id from range({first}, {last}) t(i)"
    )
    project_factory.sql(table.format(first=0, last=10))
    project = graph_project(project_factory, THROUGH_GRAPH)
    assert run_sync(project, "activity", console=NullConsole(), now=NOW).delivered == 10
    project_factory.sql(
        table.format(first=10, last=12).replace(
            "create or replace table events as", "insert into events"
        )
    )
    again = run_sync(project, "activity", console=NullConsole(), now=NOW)
    assert (again.delivered, again.changes.rows_copied) == (2, 12)
    by_cio = {p.cio_id: p.id for p in project_factory.emulator.people()}
    assert sorted(by_cio[e.person] for e in project_factory.emulator.events()) == sorted(
        f"u{i % 3}" for i in range(12)
    )
