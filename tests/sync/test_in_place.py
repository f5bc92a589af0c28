"""A DuckDB model is keyed where it lives on re-runs, and that changes nothing a user sees.

A first run copies the model into the state database (there is no snapshot to diff against).
Later runs of a DuckDB model compute each row's key and hash in the warehouse itself and copy
only the rows that changed (`lockgate.sync.extract.InPlace`). Columns whose type the copy
changes (HUGEINT, UUID, ENUM, JSON) are cast the same way, so keys, hashes and payloads match a
copied run's exactly; a column type the cast cannot reproduce keeps the model copied.
"""

from __future__ import annotations

from typing import Any

import duckdb
from tests.sync.test_objects import COMPANIES, MEMBERSHIPS, PEOPLE, rels, seed

from lockgate.console import NullConsole
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
        "create or replace table flags as "
        "select i as id, '1011'::bit as mask, 'v' || i as version from range(50) t(i)"
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
  mask: {column: mask, type: string}
"""
    project = project_factory.write({"flags": sync})
    assert run_sync(project, "flags", console=NullConsole()).delivered == 50
    assert in_place_for(project, "flags") is None  # BIT becomes BLOB in the copy

    project_factory.sql("update flags set version = 'v99' where id = 3")
    second = run_sync(project, "flags", console=NullConsole())
    assert (second.changes.changed, second.changes.unchanged, second.delivered) == (1, 49, 1)


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
