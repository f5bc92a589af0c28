"""A JSON column read as an identifier, a primary key, an event id or an object id (a
Postgres `props->'user_id'`, which is `jsonb`, where `->>` was meant): the id is the JSON
value, not its text. The string `"u1"` names the person `u1`, never `"u1"` with its quotes; a
JSON `null` is a null, so the row is rejected as a null id would be (never one person named
`null`, nor one event standing for every row whose id is `null`); an object, an array or a
number no float holds exactly rejects its row naming the column and how to pick the value."""

from __future__ import annotations

from typing import Any

import pytest

from lockgate.console import NullConsole
from lockgate.project.loader import load_project
from lockgate.state.store import StateStore, table
from lockgate.sync import mapping
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: row_id
identify_by: {id: uid}
attributes:
  plan: plan
"""

EVENTS = """
name: activity
source: warehouse
model: {sql: "select *, now() - interval 1 hour as ts from events"}
kind: events
identify_by: {id: uid}
event: {name: {value: Clicked}, timestamp: ts, id: event_id}
properties:
  n: n
"""

ACCOUNTS = """
name: accounts
source: warehouse
model: {table: accounts}
kind: objects
object_type_id: "1"
primary_key: account_id
attributes:
  plan: plan
"""


def rejected(project: Any, sync: str) -> dict[str, str]:
    """The rows a plan of ``sync`` rejects: key -> reason."""
    rows: list[dict[str, Any]] = []
    plan_sync(
        project, sync, console=NullConsole(), rejected_sink=lambda t: rows.extend(t.to_pylist())
    )
    return {r["key"]: r["reason"] for r in rows}


@pytest.mark.parametrize(
    ("value", "person"),
    [
        ('"u1"', "u1"),  # a JSON string: its value, without the quotes
        (' "u1" ', "u1"),
        ("42", "42"),
        ("7.0", "7"),  # a whole JSON number: its integer, as a float column's is
        ("18446744073709551615", "18446744073709551615"),
    ],
)
def test_a_json_identifier_names_the_person_its_value_names(
    project_factory: ProjectFactory, value: str, person: str
) -> None:
    project_factory.sql(
        f"create or replace table users as select 1 as row_id, '{value}'::json as uid, "
        "'pro' as plan"
    )
    project = project_factory.write({"profile": PROFILE})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    assert [(p.id, p.attributes) for p in project_factory.emulator.people()] == [
        (person, {"plan": "pro"})
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("null", "no identifier: `uid` is null"),
        ('"  "', "no identifier: `uid` is blank (only white space)"),
        ('{"id": "u9"}', 'column `uid` (identifier `id`): value `{"id": "u9"}` is a JSON object'),
        ('["u9"]', 'column `uid` (identifier `id`): value `["u9"]` is a JSON array'),
        ("1.5", "column `uid` (identifier `id`): value `1.5` is not a whole number"),
        (
            "12345678901234567890123",
            "column `uid` (identifier `id`): value `12345678901234567890123` is not a whole "
            "number a float holds exactly (up to 2^53)",
        ),
    ],
)
def test_a_json_identifier_that_names_no_one_rejects_its_row(
    project_factory: ProjectFactory, value: str, reason: str
) -> None:
    """The other rows are sent; the bad one is rejected, saying which column and why, and no
    person is named by the JSON's text (`null`, `{"id": "u9"}`)."""
    project_factory.sql(
        "create or replace table users as select * from (values "
        f"(1, '{value}'::json, 'pro'), (2, '\"u2\"'::json, 'free')) t(row_id, uid, plan)"
    )
    project = project_factory.write({"profile": PROFILE})
    reasons = rejected(project, "profile")
    assert list(reasons) == ["1"] and reasons["1"].startswith(reason), reasons
    if value.startswith(("{", "[", "1")):
        assert "Postgres `->>`" in reasons["1"]  # how to pick the value in the model
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    assert [p.id for p in project_factory.emulator.people()] == ["u2"]


def test_a_json_null_primary_key_is_a_null_key(project_factory: ProjectFactory) -> None:
    project_factory.sql(
        "create or replace table users as select * from (values "
        "('null'::json, 'u1', 'pro'), ('\"r2\"'::json, 'u2', 'free')) t(row_id, uid, plan)"
    )
    project = project_factory.write({"profile": PROFILE})
    reasons = rejected(project, "profile")
    assert list(reasons.values()) == ["primary key is null"], reasons
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    assert [p.id for p in project_factory.emulator.people()] == ["u2"]


@pytest.mark.parametrize("blank", ["null", '""', '" "'])
def test_json_null_event_ids_are_rejected_not_one_event(
    project_factory: ProjectFactory, blank: str
) -> None:
    """Two events whose id is a JSON `null` (or an empty string) were one event keyed `null`:
    the second was dropped as a repeat of the first, in no report."""
    project_factory.sql(
        "create or replace table events as select * from (values "
        f"('u1', '{blank}'::json, 'a'), ('u2', '{blank}'::json, 'b'), "
        "('u3', '\"e3\"'::json, 'c')) t(uid, event_id, n)"
    )
    project = project_factory.write({"activity": EVENTS})
    reasons = rejected(project, "activity")
    assert sorted(reasons.values()) == ["column `event_id`: event id is null, empty or blank"] * 2
    assert run_sync(project, "activity", console=NullConsole()).delivered == 1
    assert [e.data for e in project_factory.emulator.events()] == [{"n": "c"}]


@pytest.mark.parametrize(("value", "sent"), [('"acc1"', "acc1"), ("null", None)])
def test_a_json_object_id_is_its_value(
    project_factory: ProjectFactory, value: str, sent: str | None
) -> None:
    project_factory.sql(
        f"create or replace table accounts as select '{value}'::json as account_id, 'pro' as plan"
    )
    project = project_factory.write({"accounts": ACCOUNTS})
    reasons = rejected(project, "accounts")
    assert list(reasons.values()) == ([] if sent else ["column `account_id`: object id is null"])
    run_sync(project, "accounts", console=NullConsole())
    assert [o.object_id for o in project_factory.emulator.objects()] == ([sent] if sent else [])


@pytest.mark.postgres
def test_a_postgres_jsonb_field_picked_with_the_json_operator_names_its_person(
    project_factory: ProjectFactory, postgres_dsn: str
) -> None:
    """`props->'user_id'` is `jsonb`: its person is `u1`, and a row whose `props` has no
    `user_id` (or a JSON `null` one) is rejected, not sent as a person named `null`."""
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("drop table if exists lg_json_signups")
        conn.execute(
            "create table lg_json_signups as select * from (values "
            '(1, \'{"user_id": "u1"}\'::jsonb), (2, \'{"user_id": null}\'::jsonb)) '
            "t(row_id, props)"
        )
    project_factory.write({"profile": PROFILE})
    yml = project_factory.root / "lockgate.yml"
    yml.write_text(
        yml.read_text().replace(
            "type: duckdb\n    path: warehouse.duckdb", f"type: postgres\n    url: '{postgres_dsn}'"
        )
    )
    (project_factory.root / "syncs" / "profile.yml").write_text(
        PROFILE.replace(
            "{table: users}",
            "{sql: \"select row_id, props->'user_id' as uid, 'pro' as plan from lg_json_signups\"}",
        )
    )
    project = load_project(project_factory.root)
    assert rejected(project, "profile") == {"2": "no identifier: `uid` is null"}
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    assert [p.id for p in project_factory.emulator.people()] == ["u1"]


def test_people_named_by_a_json_column_before_upgrading_are_sent_again_once(
    project_factory: ProjectFactory,
) -> None:
    """A state whose run named people by the JSON's text (`"u1"`, with its quotes): the next
    run sends each record once again, saying why, so the people the values name get their
    attributes; then nothing."""
    project_factory.sql(
        "create or replace table users as select i as row_id, ('\"u' || i || '\"')::json as uid, "
        "'pro' as plan from range(1, 4) t(i)"
    )
    project = project_factory.write({"profile": PROFILE})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 3
    sync = project.sync("profile")
    types = {"row_id": "BIGINT", "uid": "JSON", "plan": "VARCHAR"}
    now, before = (
        mapping.lit(mapping._fingerprint(mapping._hash_normal(sync, types, json_ids=flag)))
        for flag in (True, False)
    )
    # the state as the Lockgate that sent `"u1"` wrote it: its fingerprint had no
    # `json_identifiers`
    with StateStore.open(project.state_dir) as store:
        (recorded,) = store.exec_sql(
            "select mapping_hash from contract_mappings where sync = 'profile'"
        )[0]
        assert now in recorded
        old = recorded.replace(now, before)
        store.exec_sql(f"attach '{project.root / 'warehouse.duckdb'}' as wh (read_only)")
        store.exec_sql(
            f"update {table('snap', 'profile')} s set h = u.h "
            f"from (select row_id::varchar as k, {old} as h from wh.users) u where u.k = s.k"
        )
        store.exec_sql(
            "update contract_mappings set mapping_hash = ? where sync = 'profile'", [old]
        )
        store.exec_sql("detach wh")

    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.changes.to_send == plan.changes.remapped == 3
    guards = {g.name: g.actual for g in plan.guards}
    assert guards["mapping"] == (
        "`uid` (JSON) names each record by the JSON value it holds, no longer by the JSON's "
        'text (`"u1"` with its quotes): 3 people sent again for it'
    )
    assert run_sync(project, "profile", console=NullConsole()).delivered == 3
    assert plan_sync(project, "profile", console=NullConsole()).changes.to_send == 0
    assert {p.id: p.attributes for p in project_factory.emulator.people()} == {
        f"u{i}": {"plan": "pro"} for i in range(1, 4)
    }


@pytest.mark.postgres
def test_a_postgres_json_value_duckdb_cannot_parse_rejects_its_row_alone(
    project_factory: ProjectFactory, postgres_dsn: str
) -> None:
    """A Postgres `json` (unlike `jsonb`) keeps a lone surrogate escape (`"\\ud800"`), which
    DuckDB's JSON parser refuses: as an identifier its row is rejected, saying so, and read as
    text (`type: string`) it is sent as it is; reading it never fails the run."""
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("drop table if exists lg_json_raw")
        conn.execute(
            "create table lg_json_raw as select * from (values "
            "(1, '\"u1\"'::json, '\"\\ud800\"'::json), (2, '\"\\ud800\"'::json, '\"x\"'::json)) "
            "t(row_id, uid, raw)"
        )
    project_factory.write({"profile": PROFILE})
    yml = project_factory.root / "lockgate.yml"
    yml.write_text(
        yml.read_text().replace(
            "type: duckdb\n    path: warehouse.duckdb", f"type: postgres\n    url: '{postgres_dsn}'"
        )
    )
    (project_factory.root / "syncs" / "profile.yml").write_text(
        PROFILE.replace("{table: users}", '{sql: "select * from lg_json_raw"}').replace(
            "plan: plan", "plan: {column: raw, type: string}"
        )
    )
    project = load_project(project_factory.root)
    assert rejected(project, "profile") == {
        "2": 'column `uid` (identifier `id`): value `"\\ud800"` is not valid JSON'
    }
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    assert [(p.id, p.attributes) for p in project_factory.emulator.people()] == [
        ("u1", {"plan": '"\\ud800"'})
    ]
