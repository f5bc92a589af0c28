"""The same people and events syncs from every warehouse that runs here give the same
Customer.io state: DuckDB, Postgres (real server; also the Redshift path) and Snowflake
(fakesnow behind the official connector)."""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.errors import StepError
from lockgate.project.loader import load_project
from lockgate.sync.run import run_sync

ROWS = [
    (1, "Ada@Example.com", "pro", 99.5, True, "2026-01-02 03:04:05"),
    (2, "grace@example.com", "free", 0.0, False, "2026-02-01 00:00:00"),
    (3, "linus@example.com", None, 10.0, None, None),
]

SYNCS = {
    "profile": """
        name: profile
        source: warehouse
        model: {sql: "select * from lg_sync.users"}
        kind: people
        primary_key: user_id
        identify_by: {id: user_id, email: email}
        attributes:
          plan: plan
          mrr: {column: mrr, type: number}
          vip: {column: vip, type: boolean}
          signed_up_at: {column: signed_up_at, type: timestamp}
    """,
    "activity": """
        name: activity
        source: warehouse
        model:
          sql: >-
            select user_id, 'Signed Up' as event_name, event_id, signed_up_at
            from lg_sync.users where signed_up_at is not null
        kind: events
        identify_by: {id: user_id}
        event: {name: event_name, timestamp: signed_up_at, id: event_id}
        backfill: {older: send}
    """,
}


def create_statements(timestamp_type: str) -> list[str]:
    values = ", ".join(
        "({}, '{}', {}, {}, {}, {}, 'evt{}')".format(
            uid,
            email,
            f"'{plan}'" if plan else "null",
            mrr,
            "null" if vip is None else str(vip).lower(),
            f"cast('{ts}' as {timestamp_type})" if ts else "null",
            uid,
        )
        for uid, email, plan, mrr, vip, ts in ROWS
    )
    return [
        "create schema if not exists lg_sync",
        f"create table lg_sync.users (user_id integer, email varchar(100), plan varchar(20), "
        f"mrr decimal(10, 2), vip boolean, signed_up_at {timestamp_type}, event_id varchar(20))",
        f"insert into lg_sync.users values {values}",
    ]


def duckdb_source(root: Path) -> Iterator[str]:
    import duckdb

    con = duckdb.connect(str(root / "w.duckdb"))
    for statement in create_statements("timestamp"):
        con.execute(statement).fetchall()
    con.close()
    yield "{type: duckdb, path: w.duckdb}"


def postgres_source(dsn: str) -> Iterator[str]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists lg_sync cascade")
        for statement in create_statements("timestamp"):
            conn.execute(statement)
    yield f"{{type: postgres, url: '{dsn}'}}"


def snowflake_source() -> Iterator[str]:
    import fakesnow
    import snowflake.connector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fakesnow's own DuckDB warnings, not Lockgate's
        with fakesnow.patch():
            setup = snowflake.connector.connect(account="lg", user="t", database="LG")
            cursor = setup.cursor()
            for statement in create_statements("timestamp_ntz"):
                cursor.execute(statement)
            yield "{type: snowflake, account: lg, user: t, database: LG}"
            setup.close()


@pytest.fixture(
    params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres), "snowflake"]
)
def source_yaml(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "duckdb":
        yield from duckdb_source(tmp_path)
    elif request.param == "postgres":
        yield from postgres_source(request.getfixturevalue("postgres_dsn"))
    else:
        yield from snowflake_source()


def state(emu: Emulator) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    people = {p.id: (p.email, p.attributes) for p in emu.people()}
    events = sorted((e.name, e.timestamp) for e in emu.events())
    return people, events


def test_same_customerio_state_from_every_warehouse(
    source_yaml: str,
    tmp_path: Path,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(
        f"name: t\nsources:\n  warehouse: {source_yaml}\ndestinations:\n  customerio:\n"
        f"    type: customerio\n    track_url: {customerio_emulator.base_url}\n"
    )
    for name, body in SYNCS.items():
        (tmp_path / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
    project = load_project(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fakesnow's DuckDB copy warning
        reports = [run_sync(project, n, console=NullConsole()) for n in ("profile", "activity")]
    assert [r.status for r in reports] == ["success", "success"]

    people, events = state(customerio_emulator)
    assert people == {
        "1": (
            "Ada@Example.com",
            {"plan": "pro", "mrr": 99.5, "vip": True, "signed_up_at": 1767323045},
        ),
        "2": (
            "grace@example.com",
            {"plan": "free", "mrr": 0.0, "vip": False, "signed_up_at": 1769904000},
        ),
        "3": ("linus@example.com", {"mrr": 10.0}),
    }
    assert events == [("Signed Up", 1767323045), ("Signed Up", 1769904000)]


def test_two_columns_of_one_name_are_refused_on_every_warehouse(
    source_yaml: str,
    tmp_path: Path,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`plan` and `"plan"`: one name in DuckDB and Postgres; on Snowflake `PLAN` and `plan`,
    both read as `plan`. Every driver hands both columns over; the run stops before sending."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(
        f"name: t\nsources:\n  warehouse: {source_yaml}\ndestinations:\n  customerio:\n"
        f"    type: customerio\n    track_url: {customerio_emulator.base_url}\n"
    )
    (tmp_path / "syncs" / "profile.yml").write_text(
        textwrap.dedent(SYNCS["profile"]).replace(
            "select * from lg_sync.users",
            "select user_id, email, plan, mrr, vip, signed_up_at, 'enterprise' as \\\"plan\\\" "
            "from lg_sync.users",
        )
    )
    project = load_project(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fakesnow's DuckDB copy warning
        with pytest.raises(StepError) as caught:
            run_sync(project, "profile", console=NullConsole())
    assert "syncs/profile.yml:4: sync `profile`: the model returns two columns named `plan`" in (
        caught.value.reason
    )
    assert "`a.plan as account_plan`" in str(caught.value.hint)
    assert not customerio_emulator.people()


#: a list, an object and JSON read as `type: string`, as each warehouse writes them
NESTED_MODELS = {
    "duckdb": "select 1 as user_id, ['vip', 'a b'] as tags, {'city': 'Oslo', 'n': 2.5} as doc, "
    "'{\"a\": [1, 2]}'::json as raw, ['{\"x\": 1}'::json] as raws",
    "postgres": "select 1 as user_id, array['vip', 'a b'] as tags, "
    "jsonb_build_object('city', 'Oslo', 'n', 2.5) as doc, '{\"a\": [1, 2]}'::json as raw, "
    "array['{\"x\": 1}'::jsonb] as raws",
    # fakesnow describes no `array_construct` (a DuckDB list): VARIANTs, which arrive as JSON
    "snowflake": 'select 1 as user_id, parse_json(\'["vip", "a b"]\') as tags, '
    'parse_json(\'{"city": "Oslo", "n": 2.5}\') as doc, '
    "parse_json('{\"a\": [1, 2]}') as raw, parse_json('[{\"x\": 1}]') as raws",
}


def test_nested_values_as_strings_are_their_json_text_on_every_warehouse(
    source_yaml: str,
    tmp_path: Path,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`type: string` over a list, struct, map or JSON value sends the value's JSON text,
    whichever warehouse holds it: DuckDB's own text of a list or struct (`[vip, a b]`,
    `{'city': Oslo}`) was sent, which no JSON reader takes."""
    import json

    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    kind = source_yaml.split("type: ")[1].split(",")[0]
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(
        f"name: t\nsources:\n  warehouse: {source_yaml}\ndestinations:\n  customerio:\n"
        f"    type: customerio\n    track_url: {customerio_emulator.base_url}\n"
    )
    fields = ", ".join(
        f"{n}: {{column: {n}, type: string}}" for n in ("tags", "doc", "raw", "raws")
    )
    (tmp_path / "syncs" / "profile.yml").write_text(
        f"name: profile\nsource: warehouse\nmodel: {{sql: {json.dumps(NESTED_MODELS[kind])}}}\n"
        f"kind: people\nprimary_key: user_id\nidentify_by: {{id: user_id}}\n"
        f"attributes: {{{fields}}}\n"
    )
    project = load_project(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fakesnow's DuckDB copy warning
        assert run_sync(project, "profile", console=NullConsole()).status == "success"
    person = customerio_emulator.person(id="1")
    assert person is not None
    sent = person.attributes
    assert all(isinstance(v, str) for v in sent.values()), sent
    assert {k: json.loads(v) for k, v in sent.items()} == {
        "tags": ["vip", "a b"],
        "doc": {"city": "Oslo", "n": 2.5},
        "raw": {"a": [1, 2]},
        "raws": [{"x": 1}],
    }
