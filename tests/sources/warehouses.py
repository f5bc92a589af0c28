"""Test data and builders for the per-warehouse `warehouse` fixture (see conftest.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from lockgate.project.models import (
    DuckDBSourceConfig,
    PostgresSourceConfig,
    SnowflakeSourceConfig,
)
from lockgate.sources import SnowflakeSource, Source, connect

UTC = dt.UTC
FAKESNOW_WARNING = "ignore:Arrow output on a DB-API result:UserWarning"
BIG_ROWS = 2_500

# The rows every warehouse returns for `select * from lg_sources.users order by id`.
USERS: list[dict[str, Any]] = [
    {
        "id": 1,
        "name": "Zoë Ångström",
        "email": "Zoe.Angstrom@Example.COM",
        "active": True,
        "signed_up_at": dt.datetime(2024, 3, 1, 12, 30, tzinfo=UTC),  # inserted as 14:30+02:00
        "last_seen": dt.datetime(2024, 3, 5, 8, 0, 0),
        "birthday": dt.date(1990, 1, 15),
        "balance": Decimal("1234.50"),
        "prefs": {"plan": "pro", "tags": ["a", "b"]},
    },
    {
        "id": 2,
        "name": "李雷",
        "email": "li.lei@example.cn",
        "active": False,
        "signed_up_at": dt.datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC),
        "last_seen": None,
        "birthday": None,
        "balance": Decimal("0.00"),
        "prefs": {"plan": "free"},
    },
    {
        "id": 3,
        "name": None,
        "email": "MIXED.Case@Mail.org",
        "active": None,
        "signed_up_at": None,
        "last_seen": dt.datetime(2024, 1, 1, 0, 0, 0),
        "birthday": dt.date(2000, 2, 29),
        "balance": None,
        "prefs": None,
    },
]

# name, DuckDB, Postgres, Snowflake column types
COLUMNS = [
    ("id", "INTEGER", "integer", "INT"),
    ("name", "VARCHAR", "text", "VARCHAR"),
    ("email", "VARCHAR", "text", "VARCHAR"),
    ("active", "BOOLEAN", "boolean", "BOOLEAN"),
    ("signed_up_at", "TIMESTAMPTZ", "timestamptz", "TIMESTAMP_TZ"),
    ("last_seen", "TIMESTAMP", "timestamp", "TIMESTAMP_NTZ"),
    ("birthday", "DATE", "date", "DATE"),
    ("balance", "DECIMAL(12,2)", "numeric(12,2)", "NUMBER(12,2)"),
    ("prefs", "JSON", "jsonb", "VARIANT"),
]

_TZ_LITERALS = {1: "2024-03-01 14:30:00+02:00", 2: "2023-12-31 23:59:59+00:00"}
_JSON_LITERALS = {1: '{"plan": "pro", "tags": ["a", "b"]}', 2: '{"plan": "free"}'}


def _literal(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _users_rows(dialect: str) -> list[list[str]]:
    """Each user as SQL literals, cast the way the dialect wants them."""
    out = []
    for row in USERS:
        rid = int(row["id"])
        tz = _TZ_LITERALS.get(rid)
        js = _JSON_LITERALS.get(rid)
        values = [_literal(row[name]) for name, *_ in COLUMNS]
        tz_type = {"duckdb": "timestamptz", "postgres": "timestamptz"}.get(dialect, "timestamp_tz")
        values[4] = f"'{tz}'::{tz_type}" if tz else "null"
        values[5] = f"{values[5]}::timestamp" if row["last_seen"] else "null"
        values[6] = f"{values[6]}::date" if row["birthday"] else "null"
        if dialect == "snowflake":
            values[8] = f"parse_json('{js}')" if js else "null"
        else:
            values[8] = f"'{js}'" if js else "null"
        out.append(values)
    return out


def _create_users(dialect: str) -> list[str]:
    types = {"duckdb": 1, "postgres": 2, "snowflake": 3}[dialect]
    ddl = ", ".join(f"{c[0]} {c[types]}" for c in COLUMNS)
    rows = _users_rows(dialect)
    if dialect == "snowflake":  # fakesnow wants parse_json in a SELECT, not in VALUES
        insert = "insert into lg_sources.users " + " union all ".join(
            "select " + ", ".join(r) for r in rows
        )
    else:
        insert = "insert into lg_sources.users values " + ", ".join(
            "(" + ", ".join(r) + ")" for r in rows
        )
    return [
        "create schema if not exists lg_sources",
        f"create table lg_sources.users ({ddl})",
        insert,
    ]


@dataclass
class Warehouse:
    """A source under test and what to expect from it."""

    kind: str
    source: Source


def duckdb_warehouse(tmp: Path) -> Iterator[Warehouse]:
    with duckdb.connect(str(tmp / "warehouse.duckdb")) as conn:
        for statement in _create_users("duckdb"):
            conn.execute(statement)
        conn.execute(
            f"create table lg_sources.big as select range + 1 as id from range({BIG_ROWS})"
        )
        conn.execute("create view lg_sources.active_users as select * from lg_sources.users")
    source = connect(DuckDBSourceConfig(path="warehouse.duckdb"), root=tmp, name="warehouse")
    yield Warehouse("duckdb", source)
    source.close()


def postgres_warehouse(dsn: str, redshift: bool) -> Iterator[Warehouse]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists lg_sources cascade")
        for statement in _create_users("postgres"):
            conn.execute(statement)
        conn.execute(
            "create table lg_sources.big as "
            f"select i as id from generate_series(1, {BIG_ROWS}) as i"
        )
        conn.execute("create view lg_sources.active_users as select * from lg_sources.users")
    config = PostgresSourceConfig(url=dsn, redshift=redshift)
    source = connect(config, root=Path("."), name="warehouse")
    yield Warehouse("redshift" if redshift else "postgres", source)
    source.close()


def _fill_snowflake(setup: Any) -> None:
    cursor = setup.cursor()
    for statement in _create_users("snowflake"):
        cursor.execute(statement)
    cursor.execute(
        "create table lg_sources.big as select seq4() + 1 as id "
        f"from table(generator(rowcount => {BIG_ROWS}))"
    )
    cursor.close()


def snowflake_server_warehouse() -> Iterator[Warehouse]:
    """fakesnow's HTTP server on loopback behind the real connector: the Arrow result path.

    In-process patching (`snowflake_warehouse`) replaces the cursor with one that has no
    `fetch_arrow_batches`; over the server, the connector's own cursor decodes Arrow chunks,
    as it does against Snowflake.
    """
    import fakesnow
    import snowflake.connector

    with fakesnow.server() as server:
        setup = snowflake.connector.connect(database="LOCKGATE", schema="LG_SOURCES", **server)
        _fill_snowflake(setup)
        source = SnowflakeSource(
            name="warehouse", database="LOCKGATE", schema="LG_SOURCES", **server
        )
        yield Warehouse("snowflake-server", source)
        source.close()
        setup.close()


def snowflake_warehouse() -> Iterator[Warehouse]:
    import fakesnow
    import snowflake.connector

    # fakesnow's own DuckDB calls warn about an extra copy of rows; the test modules ignore
    # that warning (`FAKESNOW_WARNING`): it is the fake's, not Lockgate's.
    with fakesnow.patch():
        setup = snowflake.connector.connect(
            account="lockgate", user="tester", database="LOCKGATE", schema="LG_SOURCES"
        )
        _fill_snowflake(setup)
        config = SnowflakeSourceConfig.model_validate(
            {
                "account": "lockgate",
                "user": "tester",
                "database": "LOCKGATE",
                "schema": "LG_SOURCES",
            }
        )
        source = connect(config, root=Path("."), name="warehouse")
        yield Warehouse("snowflake", source)
        source.close()
        setup.close()
