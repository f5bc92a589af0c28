"""A DuckDB model is keyed where it lives on re-runs, and that changes nothing a user sees.

A first run copies the model into the state database (there is no snapshot to diff against).
Later runs of a DuckDB model compute each row's key and hash in the warehouse itself and copy
only the rows that changed (`lockgate.sync.extract.InPlace`). Columns whose type the copy
changes (UUID, ENUM, JSON) are cast the same way, so keys, hashes and payloads match a copied
run's exactly; a column type the cast cannot reproduce keeps the model copied. Types whose Arrow
copy would change their values (UHUGEINT, BIT, TIME WITH TIME ZONE) cross it as their text, cast
back to their own type: sent exactly, and keyed in place too.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pytest
from tests.sync.test_objects import COMPANIES, MEMBERSHIPS, PEOPLE, rels, seed

from lockgate.console import NullConsole
from lockgate.errors import LockgateError
from lockgate.sources.duckdb import DuckDBSource
from lockgate.state.store import StateStore
from lockgate.sync.extract import InPlace
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

ACCOUNTS = """
name: accounts
source: warehouse
model: {table: accounts}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  big: {column: big, type: string}
  token: token
  tier: tier
  prefs: {column: prefs, type: json}
  seats: {column: seats, type: integer}
"""

BUILD = """
create type if not exists tier as enum ('free', 'pro', 'enterprise');
create or replace table accounts as
select i::hugeint * 100000000000000000000 as id,
       (i::hugeint * 3)::varchar as big,
       ('00000000-0000-0000-0000-' || lpad(i::varchar, 12, '0'))::uuid as token,
       (case when i % 3 = 0 then 'free' when i % 3 = 1 then 'pro' else 'enterprise' end)::tier
           as tier,
       ('{"lang": "en", "n": ' || i || '}')::json as prefs,
       i % 7 as seats
from range(1, 301) t(i);
"""


def batch_ops(emu: Any) -> dict[str, dict[str, Any]]:
    """Every identify operation the emulator received, by person id (the last one wins)."""
    ops: dict[str, dict[str, Any]] = {}
    for request in emu.request_log():
        if request.path == "/api/v2/batch" and request.body:
            for op in request.body["batch"]:
                ops[op["identifiers"]["id"]] = op
    return ops


def in_place_for(project: Any, sync: str) -> InPlace | None:
    source = DuckDBSource(project.root / "warehouse.duckdb")
    try:
        with StateStore.open(project.state_dir) as store:
            return InPlace.open(store.con, source, project.model_sql(project.sync(sync)), sync=sync)
    finally:
        source.close()


def test_types_changed_by_the_copy_key_and_map_the_same_in_place(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(BUILD)
    project = project_factory.write({"accounts": ACCOUNTS})
    first = run_sync(project, "accounts", console=NullConsole())  # copied: no snapshot yet
    assert first.delivered == 300
    copied_ops = batch_ops(project_factory.emulator)
    assert in_place_for(project, "accounts") is not None

    # keyed in the warehouse: were a hash or a key computed differently, all 300 would differ
    again = plan_sync(project, "accounts", console=NullConsole())
    assert (again.changes.to_send, again.changes.unchanged) == (0, 300)

    project_factory.sql(
        "update accounts set seats = seats + 1 where id in "
        "(700000000000000000000, 4200000000000000000000)"
    )
    changed = run_sync(project, "accounts", console=NullConsole())
    assert (changed.changes.changed, changed.changes.unchanged, changed.delivered) == (2, 298, 2)
    sent = batch_ops(project_factory.emulator)
    person = "700000000000000000000"
    expected = {**copied_ops[person]["attributes"], "seats": 1}  # 7 % 7 = 0, now 1
    assert sent[person]["attributes"] == expected
    assert sent[person]["attributes"]["token"] == "00000000-0000-0000-0000-000000000007"
    assert sent[person]["attributes"]["prefs"] == {"lang": "en", "n": 7}
    profile = project_factory.emulator.person(id=person)
    assert profile is not None and profile.attributes["tier"] == "pro"


def test_a_type_the_cast_cannot_reproduce_keeps_the_model_copied(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        "create or replace table flags as select i as id, "
        "['00000000-0000-0000-0000-00000000000' || (i % 10)]::uuid[] as tokens, "
        "'v' || i as version from range(50) t(i)"
    )
    sync = """
name: flags
source: warehouse
model: {table: flags}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  version: version
  tokens: tokens
"""
    project = project_factory.write({"flags": sync})
    assert run_sync(project, "flags", console=NullConsole()).delivered == 50
    assert in_place_for(project, "flags") is None  # UUID[] becomes VARCHAR[] in the copy

    project_factory.sql("update flags set version = 'v99' where id = 3")
    second = run_sync(project, "flags", console=NullConsole())
    assert (second.changes.changed, second.changes.unchanged, second.delivered) == (1, 49, 1)


def sent_again(project: Any, sync: str) -> int:
    """What a plan of ``sync`` would send now, checking it is keyed in the warehouse."""
    assert in_place_for(project, sync) is not None
    return plan_sync(project, sync, console=NullConsole()).changes.to_send


U128 = 2**128 - 1  # the largest UHUGEINT
U127 = 2**127  # the smallest UHUGEINT that DuckDB's Arrow export wrapped to a negative number
HUGE = """
name: huge
source: warehouse
model: {table: huge}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  n: n
  n_text: {column: n, type: string}
  ns: ns
"""


def test_uhugeints_past_2_127_are_sent_exactly_as_identifiers_and_attributes(
    project_factory: ProjectFactory,
) -> None:
    """A UHUGEINT of 2^127 or more reached Customer.io as a negative number (2^128-1 as `-1`),
    and 2^127 with `type: string` crashed the run's database. Now it names its person by its
    own digits, `type: string` sends them, and `auto` the number (a double past 2^64, as for
    a HUGEINT); a list of them too. The next run, keyed in place, sends nothing."""
    project_factory.sql(
        f"""
        create or replace table huge as select id::uhugeint as id, n::uhugeint as n,
            [n::uhugeint, 5] as ns
        from (values ('{U128}', '{U128}'), ('{U127}', '{U127}'), ('42', '7')) v(id, n)
        """
    )
    project = project_factory.write({"huge": HUGE})
    first = run_sync(project, "huge", console=NullConsole())
    assert (first.delivered, first.changes.rejected) == (3, 0)
    emu = project_factory.emulator
    people = {p.id: dict(p.attributes) for p in emu.people()}
    assert people == {
        str(U128): {"n": float(U128), "n_text": str(U128), "ns": [float(U128), 5]},
        str(U127): {"n": float(U127), "n_text": str(U127), "ns": [float(U127), 5]},
        "42": {"n": 7, "n_text": "7", "ns": [7, 5]},
    }
    assert sent_again(project, "huge") == 0


def test_39_digit_hugeints_are_keyed_in_place_and_sent_exactly(
    project_factory: ProjectFactory,
) -> None:
    """A HUGEINT of 39 digits (10^38 up to 2^127-1) made every run after the first fail: keyed
    in place, it was cast to DECIMAL(38,0). It is keyed as it is, and the next run sends
    nothing."""
    project_factory.sql(
        f"""
        create or replace table huge as select id, n::hugeint as n, [id] as ns
        from (values (1, '{2**127 - 1}'), (2, '{-(2**127) + 1}'), (3, '{10**38}'), (4, '42'))
            v(id, n)
        """
    )
    project = project_factory.write({"huge": HUGE})
    first = run_sync(project, "huge", console=NullConsole())
    assert (first.delivered, first.changes.rejected) == (4, 0)
    people = {p.id: dict(p.attributes) for p in project_factory.emulator.people()}
    assert {k: a["n_text"] for k, a in people.items()} == {
        "1": str(2**127 - 1),
        "2": str(-(2**127) + 1),
        "3": str(10**38),
        "4": "42",
    }
    assert people["1"]["n"] == float(2**127 - 1) and people["4"]["n"] == 42
    assert sent_again(project, "huge") == 0

    project_factory.sql("update huge set n = n - 1 where id = 1")
    again = run_sync(project, "huge", console=NullConsole())
    assert (again.changes.changed, again.changes.unchanged, again.delivered) == (1, 3, 1)
    person = project_factory.emulator.person(id="1")
    assert person is not None and person.attributes["n_text"] == str(2**127 - 2)


H127 = -(2**127)  # the smallest HUGEINT: no DECIMAL(38,0) DuckDB can negate

HUGE_EVENTS = """
name: huge_events
source: warehouse
model: {table: huge}
kind: events
identify_by: {id: id}
event: {name: {value: Counted}, timestamp: ts, id: id}
properties:
  n: n
  n_text: {column: n, type: string}
  ns: ns
"""


def test_the_smallest_hugeint_is_sent_like_any_other_by_people_and_events_syncs_and_plan(
    project_factory: ProjectFactory,
) -> None:
    """A HUGEINT of -2^127 crossed into the state as a DECIMAL(38,0) no decimal can hold:
    writing it as text or JSON was an internal DuckDB error that invalidated the state
    database, failing the plan and the run of every sync of the command. It now crosses as
    its text and is sent as -(2^127)+1 is: its digits with `type: string`, the number with
    `auto`; the other rows as ever, and the next run, keyed in place, sends nothing."""
    project_factory.sql(
        f"""
        create or replace table huge as select id, n::hugeint as n, [n::hugeint, 5] as ns,
            now() - interval 1 hour as ts
        from (values (1, '{H127}'), (2, '{H127 + 1}'), (4, '42')) v(id, n)
        """
    )
    project = project_factory.write({"huge": HUGE, "huge_events": HUGE_EVENTS})
    assert plan_sync(project, "huge", console=NullConsole()).changes.to_send == 3
    first = run_sync(project, "huge", console=NullConsole())
    assert (first.delivered, first.changes.rejected) == (3, 0)
    people = {p.id: dict(p.attributes) for p in project_factory.emulator.people()}
    assert people == {
        "1": {"n": float(H127), "n_text": str(H127), "ns": [float(H127), 5]},
        "2": {"n": float(H127 + 1), "n_text": str(H127 + 1), "ns": [float(H127 + 1), 5]},
        "4": {"n": 42, "n_text": "42", "ns": [42, 5]},
    }
    assert sent_again(project, "huge") == 0

    events = run_sync(project, "huge_events", console=NullConsole())
    assert (events.delivered, events.changes.rejected) == (3, 0)
    person = project_factory.emulator.person(id="1")
    assert person is not None
    [event] = project_factory.emulator.events(person)
    assert event.data == {"n": float(H127), "n_text": str(H127), "ns": [float(H127), 5]}


def test_bit_and_time_with_time_zone_are_sent_as_their_text(
    project_factory: ProjectFactory,
) -> None:
    """A BIT was sent as the text of its internal bytes (`10110` as `\\x03\\xF6`) and a TIME
    WITH TIME ZONE without its offset; both are their text now, under `auto` and `type:
    string`, in a struct too, and a later run keyed in place sends nothing. A BIT under
    `number` or `integer` is the integer its bits spell."""
    project_factory.sql(
        """
        create or replace table clocks as select i as id, '10110'::bit as flags,
            '12:34:56+02'::timetz as opens, {'mask': '01'::bit, 'at': '08:00:00-05:30'::timetz}
            as nested, 'v' || i as version
        from range(2) t(i)
        """
    )
    sync = """
name: clocks
source: warehouse
model: {table: clocks}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  flags: flags
  flags_text: {column: flags, type: string}
  flags_number: {column: flags, type: number}
  flags_integer: {column: flags, type: integer}
  opens: opens
  opens_text: {column: opens, type: string}
  nested: nested
  version: version
"""
    project = project_factory.write({"clocks": sync})
    assert run_sync(project, "clocks", console=NullConsole()).delivered == 2
    person = project_factory.emulator.person(id="1")
    assert person is not None
    assert person.attributes == {
        "flags": "10110",
        "flags_text": "10110",
        # as a number, the integer its bits spell (a `number` was its bits read as a double,
        # 1.1e-322)
        "flags_number": 22,
        "flags_integer": 22,
        "opens": "12:34:56+02",
        "opens_text": "12:34:56+02",
        "nested": {"mask": "01", "at": "08:00:00-05:30"},
        "version": "v1",
    }
    assert sent_again(project, "clocks") == 0

    project_factory.sql("update clocks set version = 'v9' where id = 1")
    again = run_sync(project, "clocks", console=NullConsole())
    assert (again.changes.changed, again.delivered) == (1, 1)
    assert batch_ops(project_factory.emulator)["1"]["attributes"] == {
        **person.attributes,
        "version": "v9",
    }


def test_a_union_column_is_keyed_in_place_and_sent_as_on_the_first_run(
    project_factory: ProjectFactory,
) -> None:
    """A UNION column in the model, mapped or not, made every run after the first fail
    (`sparse_union`): the model is keyed in place like any other, and its values are sent as
    the first run sent them."""
    project_factory.sql(
        """
        create or replace table tagged as select i as id, 'v' || i as version,
            case when i = 0 then union_value(num := 5)::union(num int, s varchar)
                 else union_value(s := 'hi')::union(num int, s varchar) end as tag,
            union_value(num := i)::union(num int, s varchar) as unmapped
        from range(2) t(i)
        """
    )
    sync = """
name: tagged
source: warehouse
model: {table: tagged}
kind: people
primary_key: id
identify_by: {id: id}
attributes: [version, tag]
"""
    project = project_factory.write({"tagged": sync})
    assert run_sync(project, "tagged", console=NullConsole()).delivered == 2
    first = batch_ops(project_factory.emulator)
    assert first["0"]["attributes"] == {"version": "v0", "tag": {"num": 5}}
    assert first["1"]["attributes"] == {"version": "v1", "tag": {"s": "hi"}}
    assert sent_again(project, "tagged") == 0

    project_factory.sql("update tagged set version = 'v9'")
    again = run_sync(project, "tagged", console=NullConsole())
    assert (again.changes.changed, again.delivered) == (2, 2)
    sent = batch_ops(project_factory.emulator)
    assert sent["0"]["attributes"] == {"version": "v9", "tag": {"num": 5}}
    assert sent["1"]["attributes"] == {"version": "v9", "tag": {"s": "hi"}}


def test_an_in_place_run_rejects_and_removes_like_a_copied_one(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        "create or replace table members as "
        "select i as id, 'user' || i || '@example.com' as email, i * 2 as score "
        "from range(100) t(i)"
    )
    sync = """
name: members
source: warehouse
model: {table: members}
kind: people
mode: mirror
primary_key: id
identify_by: {id: id, email: email}
attributes:
  score: {column: score, type: integer}
"""
    project = project_factory.write({"members": sync})
    assert run_sync(project, "members", console=NullConsole()).delivered == 100
    project_factory.sql(
        """
        delete from members where id = 10;                       -- left the model: cleared
        insert into members values (null, 'nokey@example.com', 1); -- rejected: no key
        insert into members values (500, 'new@example.com', 1);    -- new
        insert into members select * from members where id = 20;  -- repeated, both copies
        update members set score = -1 where id = 30;               -- changed
        """
    )
    report = run_sync(project, "members", console=NullConsole())
    reasons = dict(report.changes.rejected_samples)
    assert report.changes.rows == 102
    assert report.changes.rejected == 3
    assert "appears 2 times" in reasons["20"]
    assert any("primary key is null" in r for r in reasons.values())
    assert (report.changes.new, report.changes.changed, report.changes.removed_sent) == (1, 1, 1)
    assert report.changes.unchanged == 97  # 100 - 1 removed - 1 changed - 1 repeated
    # keyed in place, only the rows to map were copied: the keyless row, the new one, both
    # copies of the repeated key and the changed one
    assert report.changes.rows_copied == 5
    emu = project_factory.emulator
    gone, changed = emu.person(id="10"), emu.person(id="30")
    assert gone is not None and "score" not in gone.attributes
    assert changed is not None and changed.attributes["score"] == -1


def test_the_warehouse_is_only_read(project_factory: ProjectFactory) -> None:
    project_factory.sql("create or replace table t as select i as id from range(10) t(i)")
    sync = """
name: t
source: warehouse
model: {table: t}
kind: people
primary_key: id
identify_by: {id: id}
attributes: {}
"""
    project = project_factory.write({"t": sync})
    run_sync(project, "t", console=NullConsole())
    run_sync(project, "t", console=NullConsole())
    con = duckdb.connect(str(project.root / "warehouse.duckdb"), read_only=True)
    try:
        tables = {
            row[0] for row in con.execute("select table_name from duckdb_tables()").fetchall()
        }
    finally:
        con.close()
    assert tables == {"t"}


def test_a_model_that_reads_differently_each_time_is_copied_whole_not_skipped(
    project_factory: ProjectFactory,
) -> None:
    # `random()`: every read of the model differs, so the rows the warehouse keyed are not the
    # rows a second read gives back; the run must copy the model whole, not send nothing
    project_factory.sql(
        "create or replace view draws as "
        "select i as id, (random() * 1000000)::bigint as ticket from range(40) t(i)"
    )
    sync = """
name: draws
source: warehouse
model: {table: draws}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  ticket: {column: ticket, type: integer}
"""
    project = project_factory.write({"draws": sync})
    assert run_sync(project, "draws", console=NullConsole()).delivered == 40
    assert in_place_for(project, "draws") is not None
    second = run_sync(project, "draws", console=NullConsole())
    assert (second.changes.changed, second.delivered) == (40, 40)
    tickets = [r.body for r in project_factory.emulator.request_log() if r.path == "/api/v2/batch"]
    assert sum(len(body["batch"]) for body in tickets) == 80


def test_model_files_ending_in_a_semicolon_or_a_comment_are_read_in_place_or_copied(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        "create or replace table plans as select i as id, 'free' as plan from range(30) t(i)"
    )
    models = project_factory.root / "models"
    models.mkdir()
    endings = {
        "semicolon": "select * from plans;\n",
        "comment": "select * from plans -- every account\n",
        "both": "select * from plans; -- every account\n",
    }
    for name, text in endings.items():
        (models / f"{name}.sql").write_text(text)
    syncs = {
        name: f"""
name: {name}
source: warehouse
model: {{file: models/{name}.sql}}
kind: people
primary_key: id
identify_by: {{id: id}}
attributes:
  plan_{name}: plan
"""
        for name in endings
    }
    project = project_factory.write(syncs)
    for name in endings:
        assert run_sync(project, name, console=NullConsole()).delivered == 30
    assert in_place_for(project, "semicolon") is not None
    assert in_place_for(project, "comment") is not None

    project_factory.sql("update plans set plan = 'pro' where id = 4")
    for name in endings:
        again = run_sync(project, name, console=NullConsole())
        assert (again.changes.changed, again.changes.unchanged, again.delivered) == (1, 29, 1)
    person = project_factory.emulator.person(id="4")
    assert person is not None
    assert {person.attributes[f"plan_{name}"] for name in endings} == {"pro"}


def test_objects_and_relationships_are_keyed_in_place_too(
    project_factory: ProjectFactory,
) -> None:
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    for name in ("companies", "people", "memberships"):
        assert run_sync(project, name, console=NullConsole()).status == "success"
    assert in_place_for(project, "companies") is not None
    assert in_place_for(project, "memberships") is not None

    project_factory.sql(
        "update companies set seats = 30 where company_id = 'acme'; "
        "update members set role = 'owner' where user_id = 2; "
        "delete from members where user_id = 3"
    )
    companies = run_sync(project, "companies", console=NullConsole())
    assert (companies.changes.changed, companies.changes.unchanged, companies.delivered) == (
        1,
        1,
        1,
    )
    memberships = run_sync(project, "memberships", console=NullConsole())
    assert (memberships.changes.changed, memberships.changes.removed_sent) == (1, 1)
    emu = project_factory.emulator
    assert {(o.object_id, o.attributes["seats"]) for o in emu.objects()} == {
        ("acme", 30),
        ("globex", 3),
    }
    assert rels(emu) == {("1", "1", "acme", "admin"), ("2", "1", "acme", "owner")}


def test_a_model_failing_in_place_quotes_its_own_sql_and_line(
    project_factory: ProjectFactory,
) -> None:
    # read in place, the model is nested in the query that keys it: a failure quoted that
    # query (`select k, src_h from (select case when "__k" is null ...`) and its line 14
    project_factory.sql("create table users as select i as id, 'pro' as plan from range(3) t(i)")
    (project_factory.root / "models").mkdir()
    model = project_factory.root / "models" / "profile.sql"
    model.write_text("select id,\n  plan\nfrom users\n")
    sync = "name: profile\nsource: warehouse\nmodel: models/profile.sql\nkind: people\n"
    sync += "primary_key: id\nidentify_by: {id: id}\nattributes: [plan]\n"
    project = project_factory.write({"profile": sync})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 3
    model.write_text("select id,\n  'x'::int as plan\nfrom users\n")
    assert in_place_for(project, "profile") is not None  # it fails as it reads the rows
    with pytest.raises(LockgateError) as failed:
        plan_sync(project, "profile", console=NullConsole())
    said = " ".join(str(failed.value).split())
    assert "Could not convert string 'x' to INT32 LINE 2: 'x'::int as plan" in said
    assert "check the model's SQL (`select id, 'x'::int as plan from users`)" in said
    assert "__k" not in said and "src_h" not in said
