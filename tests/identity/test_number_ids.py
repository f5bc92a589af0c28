"""A number identifier is one node whatever its column type, in both identity engines.

The same people's CRM id is an integer in one table, a decimal (`7.00`) in another and a
float (`7.0`) in a third: each warehouse (DuckDB, real Postgres, Snowflake on fakesnow) holds
the tables with its own types, the embedded engine reads them through Lockgate's source, the
warehouse-native SQL reads them in place, and both give one profile per person with the text
the sync sends (`7`). A fraction, NaN or a float beyond 2^53 is no identifier: dropped as
`invalid`.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import sqlglot
from tests.identity.helpers import groups, warehouse_groups

from lockgate.identity import resolve
from lockgate.identity.normalize import normalize_column
from lockgate.identity.warehouse import DuckDBRunner, PostgresRunner, WarehouseStitcher
from lockgate.project.identity import IdentityConfig

CONFIG = IdentityConfig.model_validate(
    {
        "identifier_types": {
            "user_id": {"priority": 1, "limit": 1, "customerio": "id"},
            "email": {"priority": 2, "limit": 5, "customerio": "email"},
            # no `coerce_numeric_string`: only the column type tells `7.0` is the number 7
            "crm_id": {"priority": 3, "limit": 1, "customerio": "attribute:crm_id"},
            "anonymous_id": {"priority": 9, "limit": 25, "customerio": "anonymous_id"},
        },
        "sources": [
            {"name": "app_users", "table": "app_users", "trust": 1},
            {"name": "crm_contacts", "table": "crm_contacts", "trust": 2},
            {"name": "events", "table": "events", "trust": 3},
        ],
    }
)

# column types per warehouse: DuckDB, Postgres, Snowflake. `events.user_id` is a bare
# Postgres `numeric`, which Lockgate reads as a float.
TABLES: dict[str, list[tuple[str, str, str, str]]] = {
    "app_users": [
        ("user_id", "BIGINT", "bigint", "NUMBER(38,0)"),
        ("email", "VARCHAR", "text", "VARCHAR"),
        ("crm_id", "BIGINT", "bigint", "NUMBER(38,0)"),
    ],
    "crm_contacts": [
        ("crm_id", "DECIMAL(12,2)", "numeric(12,2)", "NUMBER(12,2)"),
        ("email", "VARCHAR", "text", "VARCHAR"),
    ],
    "events": [
        ("anonymous_id", "VARCHAR", "text", "VARCHAR"),
        ("crm_id", "DOUBLE", "double precision", "FLOAT"),
        ("user_id", "DOUBLE", "numeric", "FLOAT"),
    ],
}
ROWS: dict[str, list[str]] = {
    "app_users": ["101, 'ada@acme.io', 7", "102, 'grace@acme.io', 8"],
    "crm_contacts": [
        "7.00, 'ada.work@acme.io'",
        "8.00, 'grace.work@acme.io'",
        "9.50, 'lin@acme.io'",  # a fraction: no CRM id, Lin is her email alone
    ],
    "events": [
        "'anon-a', 7.0, 101",
        "'anon-b', 8.0, NULL",
        "'anon-c', 9.25, 5.5",
        "'anon-d', {nan}, NULL",
        "'anon-e', 1152921504606846976, NULL",  # 2^60: a float no longer exact
    ],
}
NAN = {"duckdb": "'nan'::DOUBLE", "postgres": "'NaN'::float8", "snowflake": "'nan'::FLOAT"}
COLUMN = {"duckdb": 1, "postgres": 2, "snowflake": 3}

ADA = {
    "user_id:101",
    "email:ada@acme.io",
    "email:ada.work@acme.io",
    "crm_id:7",
    "anonymous_id:anon-a",
}
GRACE = {
    "user_id:102",
    "email:grace@acme.io",
    "email:grace.work@acme.io",
    "crm_id:8",
    "anonymous_id:anon-b",
}


def create_statements(dialect: str) -> list[str]:
    out = []
    for name, columns in TABLES.items():
        ddl = ", ".join(f"{c[0]} {c[COLUMN[dialect]]}" for c in columns)
        rows = " UNION ALL ".join("SELECT " + row.format(nan=NAN[dialect]) for row in ROWS[name])
        out += [f"DROP TABLE IF EXISTS {name}", f"CREATE TABLE {name} ({ddl})"]
        out.append(f"INSERT INTO {name} {rows}")
    return out


def embedded(tables: dict[str, pa.Table]) -> set[frozenset[str]]:
    """The embedded engine's partition, one profile per person; asserts what it dropped."""
    result = resolve(CONFIG, tables, run_id="r1")
    partition = groups(result)
    assert_one_profile_per_person(partition)
    dropped = {
        (r["source"], r["id_type"], r["reason"], r["count"]) for r in result.blocked.to_pylist()
    }
    assert dropped == {
        ("crm_contacts", "crm_id", "invalid", 1),  # 9.50
        ("events", "crm_id", "invalid", 3),  # 9.25, NaN, 2^60
        ("events", "user_id", "invalid", 1),  # 5.5
    }
    [lin] = [r for r in result.blocked.to_pylist() if r["source"] == "crm_contacts"]
    assert lin["raw_sample"] == "9.50"  # the value as the warehouse holds it
    return partition


def in_warehouse(
    stitcher: WarehouseStitcher, fetch: Callable[[str], list[tuple[Any, ...]]]
) -> set[frozenset[str]]:
    stitcher.run()
    return warehouse_groups(fetch)


def assert_one_profile_per_person(partition: set[frozenset[str]]) -> None:
    assert frozenset(ADA) in partition and frozenset(GRACE) in partition
    assert frozenset({"email:lin@acme.io"}) in partition
    nodes = {node for group in partition for node in group}
    assert not {n for n in nodes if n.startswith("crm_id:")} - {"crm_id:7", "crm_id:8"}
    assert {n for n in nodes if n.startswith("user_id:")} == {"user_id:101", "user_id:102"}


def test_a_number_id_is_its_integers_text_and_a_fraction_is_invalid() -> None:
    nan, inf = float("nan"), float("inf")
    floats = pa.array([7.0, -3.0, 9.25, nan, inf, 2.0**53, 2.0**60, None])
    clean = normalize_column(CONFIG, "crm_id", floats)
    assert clean.values.to_pylist() == ["7", "-3", None, None, None, "9007199254740992", None, None]
    invalid = [None, None, "invalid", "invalid", "invalid", None, "invalid", None]
    assert clean.reasons.to_pylist() == invalid
    decimals = pa.array([Decimal("7.00"), Decimal("9.50"), None], pa.decimal128(12, 2))
    clean = normalize_column(CONFIG, "crm_id", decimals)
    assert clean.values.to_pylist() == ["7", None, None]
    assert clean.reasons.to_pylist() == [None, "invalid", None]
    # a long column of repeated values is normalised once per distinct value: same outcome
    many = pa.chunked_array([pa.array([7.0, 9.25] * 30_000)])
    clean = normalize_column(CONFIG, "crm_id", many)
    assert clean.values.to_pylist()[:2] == ["7", None]
    assert clean.reasons.value_counts().to_pylist() == [
        {"values": None, "counts": 30_000},
        {"values": "invalid", "counts": 30_000},
    ]


def test_duckdb_float_decimal_and_integer_ids_are_one_person_in_both_engines() -> None:
    con = duckdb.connect()
    for sql in create_statements("duckdb"):
        con.execute(sql)
    tables = {name: con.sql(f"SELECT * FROM {name}").to_arrow_table() for name in TABLES}
    assert pa.types.is_decimal(tables["crm_contacts"].schema.field("crm_id").type)
    want = embedded(tables)
    # columns by name only: the stitcher reads their types from DuckDB
    stitcher = WarehouseStitcher(
        CONFIG, DuckDBRunner(con), columns={k: v.column_names for k, v in tables.items()}
    )
    assert in_warehouse(stitcher, lambda sql: con.execute(sql).fetchall()) == want


@pytest.mark.postgres
def test_postgres_float_decimal_and_integer_ids_are_one_person_in_both_engines(
    postgres_dsn: str,
) -> None:
    import psycopg

    from lockgate.project.models import PostgresSourceConfig
    from lockgate.sources import connect

    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        for sql in create_statements("postgres"):
            con.execute(sql)
        source = connect(PostgresSourceConfig(url=postgres_dsn), root=Path("."), name="w")
        try:
            tables = {n: source.read(f"SELECT * FROM {n}").read_all() for n in TABLES}
        finally:
            source.close()
        assert pa.types.is_floating(tables["events"].schema.field("user_id").type)
        want = embedded(tables)
        runner = PostgresRunner(con)
        stitcher = WarehouseStitcher(
            CONFIG, runner, columns={k: v.column_names for k, v in tables.items()}
        )
        assert in_warehouse(stitcher, runner.fetch) == want


class FakesnowRunner:
    """A Snowflake connection (here fakesnow's) as a `Runner`; SQL is transpiled to Snowflake."""

    dialect = "snowflake"

    def __init__(self, con: Any) -> None:
        self.con = con

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        cur = self.con.cursor()
        for statement in sqlglot.transpile(sql, read="duckdb", write="snowflake"):
            cur.execute(statement)
        return list(cur.fetchall())

    def execute(self, sql: str) -> None:
        self.fetch(sql)

    def schema_of(self, relation: str) -> pa.Schema:  # the test passes schemas instead
        raise AssertionError(relation)


@pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")
def test_snowflake_float_decimal_and_integer_ids_are_one_person_in_both_engines() -> None:
    import fakesnow
    import snowflake.connector

    from lockgate.project.models import SnowflakeSourceConfig
    from lockgate.sources import connect

    where = {"account": "lockgate", "user": "tester", "database": "LG", "schema": "IDS"}
    with fakesnow.patch():
        con = snowflake.connector.connect(**where)
        cur = con.cursor()
        cur.execute("CREATE SCHEMA IF NOT EXISTS IDS")
        for sql in create_statements("snowflake"):
            cur.execute(sql)
        source = connect(SnowflakeSourceConfig.model_validate(where), root=Path("."), name="w")
        try:
            tables = {n: source.read(f"SELECT * FROM {n}").read_all() for n in TABLES}
        finally:
            source.close()
        want = embedded(tables)
        # columns with their types, as `Source.schema_of` gives them
        runner = FakesnowRunner(con)
        stitcher = WarehouseStitcher(
            CONFIG, runner, columns={k: v.schema for k, v in tables.items()}
        )
        assert in_warehouse(stitcher, runner.fetch) == want
        con.close()
