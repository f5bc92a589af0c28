"""A JSON column mapped with the default type (`auto`) sends the JSON value it holds, on every
warehouse: a DuckDB `JSON`, a Postgres `jsonb` (through ADBC) and `json` (through psycopg, the
Redshift path), a Snowflake `VARIANT`. The Arrow copy made them text, so `"pro"` reached
Customer.io with its quotes, `5` as the string `"5"`, and a JSON `null` as the string `"null"`,
which overwrote the attribute although a null never does by default."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from tests.sources import test_type_parity
from tests.sources.test_type_parity import Warehouse, sync_people, write_project

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.project.loader import load_project
from lockgate.sync.run import RunReport, plan_sync, run_sync

#: the fixture: DuckDB, Postgres through ADBC and through psycopg (`redshift`), Snowflake
warehouse = test_type_parity.warehouse

#: the JSON texts of the rows `id` 1..7 (None: SQL null)
VALUES: dict[int, str | None] = {
    1: '"pro"',
    2: "5",
    3: "true",
    4: '{"seats": [1, null], "tier": "gold"}',
    5: '[1, "x"]',
    6: "null",
    7: None,
}


def json_table(wh: Warehouse, values: dict[int, str | None]) -> None:
    """The table `t (id, data)` with ``data`` of the warehouse's JSON type."""
    if wh.kind == "snowflake":
        wh.execute(
            [
                "create or replace table t (id int, data variant)",
                *(f"insert into t select {i}, parse_json({_lit(v)})" for i, v in values.items()),
            ]
        )
        return
    kind = {"duckdb": "json", "postgres": "jsonb", "redshift": "json"}[wh.kind]
    rows = ", ".join(f"({i}, {_lit(v)})" for i, v in values.items())
    wh.execute(
        [
            "drop table if exists t",
            f"create table t (id int, data {kind})",
            f"insert into t values {rows}",
        ]
    )


def _lit(value: str | None) -> str:
    return "null" if value is None else "'" + value.replace("'", "''") + "'"


def run(wh: Warehouse, *, plan: bool = False) -> RunReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fakesnow's DuckDB copy warning
        step = plan_sync if plan else run_sync
        return step(load_project(wh.root), "people", console=NullConsole())


def held(emulator: Emulator) -> dict[str, dict[str, Any]]:
    return {p.id: dict(p.attributes) for p in emulator.people() if p.id is not None}


def test_a_json_column_under_auto_sends_the_json_value_it_holds(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_table(warehouse, {**VALUES, 6: '"good"'})
    first = sync_people(warehouse, customerio_emulator, monkeypatch, "plan: data")

    assert first.rejected == {}
    assert first.people == {
        "1": {"plan": "pro"},
        "2": {"plan": 5},
        "3": {"plan": True},
        "4": {"plan": {"seats": [1, None], "tier": "gold"}},
        "5": {"plan": [1, "x"]},
        "6": {"plan": "good"},
        "7": {},
    }

    # a JSON `null` is a null: by default it is left out (not sent as the text `"null"`), and
    # the good value stays; with nothing else to send, record 6 is not sent at all
    json_table(warehouse, VALUES)
    plan = run(warehouse, plan=True)
    assert not plan.samples
    assert (plan.changes.changed, plan.changes.nulls_only) == (0, 1)
    report = run(warehouse)
    assert (report.changes.changed, report.changes.nulls_only, report.delivered) == (0, 1, 0)
    assert held(customerio_emulator)["6"] == {"plan": "good"}


def test_a_json_null_under_auto_follows_the_fields_null_policy(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_table(warehouse, {1: '"pro"', 2: '"pro"'})
    write_project(
        warehouse,
        customerio_emulator,
        monkeypatch,
        """
        plan: {column: data, on_null: clear}
        tier: {column: data, on_null: default, default: free}
        """,
    )
    run(warehouse)
    json_table(warehouse, {1: "null", 2: None})

    report = run(warehouse)

    # `""` clears: Customer.io removes the attribute
    assert (report.changes.rejected, report.changes.attributes_cleared) == (0, 2)
    assert held(customerio_emulator) == {"1": {"tier": "free"}, "2": {"tier": "free"}}


#: a field of each type other than `auto` and `json` over the JSON column, and what its
#: `default` is sent as
TYPED_DEFAULTS = {
    "string": ("none", "none"),
    "number": ("0", 0),
    "integer": ("7", 7),
    "boolean": ("false", False),
    "timestamp": ('"2030-01-01T00:00:00Z"', 1893456000),
    "date": ('"2030-01-01"', 1893456000),
}


def test_a_json_null_under_any_other_type_is_a_null(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A field of another type reads a JSON column as its text, but a JSON `null` is no text:
    it is a null, as under `auto`, and the field's `on_null` applies. `type: string` sent it as
    the text `null` (overwriting the value Customer.io held), and the other types rejected its
    row as not a number, a boolean or a timestamp."""
    json_table(warehouse, {1: "null", 2: None})
    outcome = sync_people(
        warehouse,
        customerio_emulator,
        monkeypatch,
        "\n".join(
            f"as_{t}: {{column: data, type: {t}, on_null: default, default: {d}}}"
            for t, (d, _) in TYPED_DEFAULTS.items()
        ),
    )
    assert outcome.rejected == {}
    defaults = {f"as_{t}": sent for t, (_, sent) in TYPED_DEFAULTS.items()}
    assert outcome.people == {"1": defaults, "2": defaults}


def test_a_plan_shows_the_json_values_the_run_sends(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_table(warehouse, VALUES)
    write_project(warehouse, customerio_emulator, monkeypatch, "plan: data")

    plan = run(warehouse, plan=True)
    report = run(warehouse)

    planned = {s["key"]: s["payload"]["attributes"] for s in plan.samples}
    assert planned["1"] == {"plan": "pro"}
    assert planned == {k: v for k, v in held(customerio_emulator).items() if k in planned}
    assert report.changes.new == 7


def test_records_sent_as_json_text_before_are_sent_once_more_as_json_values(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a project synced with an earlier Lockgate holds: the model's JSON column staged
    as text (as the column cast to text stages now), its text in Customer.io. The run after
    the upgrade sends each record with a value once more, counted as remapped (no guardrail
    trips), and says why; the next sends nothing."""
    json_table(warehouse, {i: v for i, v in VALUES.items() if v != "null"})
    as_text = {
        "duckdb": "data::varchar",
        "postgres": "data::text",
        "redshift": "data::text",
        "snowflake": "to_json(data)",
    }[warehouse.kind]
    old = sync_people(
        warehouse,
        customerio_emulator,
        monkeypatch,
        "plan: data",
        sql=f"select id, {as_text} as data from t",
    )
    assert old.people["1"] == {"plan": '"pro"'}  # what an earlier Lockgate sent

    write_project(warehouse, customerio_emulator, monkeypatch, "plan: data")
    plan = run(warehouse, plan=True)
    mapping = next(g for g in plan.guards if g.name == "mapping")
    assert "`plan` sent as the JSON value column `data` holds" in mapping.actual
    assert not any(g.breached for g in plan.guards)
    report = run(warehouse)

    # every record with a value: the mapping's fingerprint changed, as for any mapping
    # change; record 7 holds only a null, which is not sent (nothing to send)
    assert (report.changes.changed, report.changes.remapped) == (5, 5)
    assert report.changes.nulls_only == 1
    assert held(customerio_emulator) == {
        "1": {"plan": "pro"},
        "2": {"plan": 5},
        "3": {"plan": True},
        "4": {"plan": {"seats": [1, None], "tier": "gold"}},
        "5": {"plan": [1, "x"]},
        "7": {},
    }
    again = run(warehouse)
    assert again.changes.to_send == 0


def write_sync(
    wh: Warehouse, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    """The project of :func:`write_project` with the sync `people` replaced by ``body``."""
    write_project(wh, emulator, monkeypatch, "unused: id")
    (wh.root / "syncs" / "people.yml").write_text(body)


def test_event_properties_from_a_json_column_under_auto_are_json_values(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_table(warehouse, VALUES)
    body = """
name: people
source: warehouse
model: {sql: "select * from t"}
kind: events
identify_by: {id: id}
event: {name: {value: viewed}, id: id}
properties: {plan: data}
backfill: {first_run: send}
"""
    write_sync(warehouse, customerio_emulator, monkeypatch, body)

    plan = run(warehouse, plan=True)
    report = run(warehouse)

    assert report.changes.rejected == 0
    people = customerio_emulator.people()
    sent = {p.id: e.data for p in people for e in customerio_emulator.events(p)}
    assert sent == {
        "1": {"plan": "pro"},
        "2": {"plan": 5},
        "3": {"plan": True},
        "4": {"plan": {"seats": [1, None], "tier": "gold"}},
        "5": {"plan": [1, "x"]},
        "6": {},  # a JSON `null`, left out as a SQL null is
        "7": {},
    }
    planned = {s["key"]: s["payload"]["attributes"] for s in plan.samples}
    assert planned == {k: v for k, v in sent.items() if k in planned}


def test_object_attributes_from_a_json_column_under_auto_are_json_values(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_table(warehouse, VALUES)
    body = """
name: people
source: warehouse
model: {sql: "select * from t"}
kind: objects
object_type_id: "1"
primary_key: id
attributes: {plan: data}
"""
    write_sync(warehouse, customerio_emulator, monkeypatch, body)

    report = run(warehouse)

    assert report.changes.rejected == 0
    assert {o.object_id: o.attributes for o in customerio_emulator.objects()} == {
        "1": {"plan": "pro"},
        "2": {"plan": 5},
        "3": {"plan": True},
        "4": {"plan": {"seats": [1, None], "tier": "gold"}},
        "5": {"plan": [1, "x"]},
        "6": {},
        "7": {},
    }


def test_lists_and_structs_holding_json_send_the_json_values_in_them(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    if warehouse.kind == "snowflake":
        pytest.skip("a Snowflake ARRAY or OBJECT is one JSON value (see the tests above)")
    if warehouse.postgres:
        warehouse.execute(
            [
                "drop table if exists t",
                "create table t (id int, tags jsonb[])",
                """insert into t values (1, array['"pro"', '5', 'null', '{"a": true}']::jsonb[])""",
            ]
        )
    else:
        warehouse.execute(
            [
                "create table t (id int, tags json[], s struct(tier json, n int))",
                """insert into t values (1, ['"pro"', '5', 'null', '{"a": true}'],
                   {'tier': '"gold"', 'n': 2}), (2, ['NaN'], null)""",
            ]
        )
    attributes = "tags: tags" + ("" if warehouse.postgres else "\ns: s")
    # first as an earlier Lockgate staged them (as text), then as they are: sent once more,
    # counted as remapped (the same data hashes alike)
    as_text = (
        "tags::text[] as tags"
        if warehouse.postgres
        else "tags::varchar[] as tags, s::struct(tier varchar, n int) as s"
    )
    sync_people(
        warehouse, customerio_emulator, monkeypatch, attributes, f"select id, {as_text} from t"
    )

    out = sync_people(warehouse, customerio_emulator, monkeypatch, attributes)

    expected: dict[str, Any] = {"1": {"tags": ["pro", 5, None, {"a": True}]}}
    if not warehouse.postgres:
        expected["1"]["s"] = {"tier": "gold", "n": 2}
        # DuckDB reads `NaN` as JSON, which no JSON parser does: rejected, not sent (the
        # person keeps the text the first run sent)
        assert list(out.rejected) == ["2"] and "column `tags`" in out.rejected["2"]
        expected["2"] = {"tags": ["NaN"]}
    assert out.people == expected
    assert (out.report.changes.changed, out.report.changes.remapped) == (1, 1)
