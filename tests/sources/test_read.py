"""Every source reads the same users table the same way (written once, run per warehouse)."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest
from tests.sources.warehouses import BIG_ROWS, FAKESNOW_WARNING, USERS, Warehouse

from lockgate.errors import SourceError
from lockgate.sources import ColumnInfo, Source, TableInfo

pytestmark = pytest.mark.filterwarnings(FAKESNOW_WARNING)

USERS_SQL = "select * from lg_sources.users order by id"


def _normalise(row: dict[str, object]) -> dict[str, object]:
    """JSON columns come back as JSON text; compare their meaning, not their spacing."""
    prefs = row["prefs"]
    return {**row, "prefs": json.loads(prefs) if isinstance(prefs, str) else prefs}


def _expected_users(kind: str) -> list[dict[str, object]]:
    if kind != "snowflake-server":
        return USERS
    # fakesnow 0.12's server encodes timestamps as Snowflake's epoch/fraction struct without a
    # null mask (fakesnow/arrow.py `timestamp_to_sf_struct`), so a null arrives as 1970-01-01;
    # the connector's own `fetchall` shows the same. Real Snowflake sends the nulls.
    epoch = dt.datetime(1970, 1, 1)
    fixed = {"signed_up_at": epoch.replace(tzinfo=dt.UTC), "last_seen": epoch}
    return [
        {k: fixed[k] if k in fixed and v is None else v for k, v in row.items()} for row in USERS
    ]


def test_users_come_back_with_their_values(warehouse: Warehouse) -> None:
    table = warehouse.source.read(USERS_SQL).read_all()

    assert table.column_names == list(USERS[0])
    assert [_normalise(row) for row in table.to_pylist()] == _expected_users(warehouse.kind)


def test_users_come_back_with_sensible_arrow_types(warehouse: Warehouse) -> None:
    schema = warehouse.source.read(USERS_SQL).schema
    types = {field.name: field.type for field in schema}

    assert pa.types.is_integer(types["id"])
    assert types["name"] == pa.string() and types["email"] == pa.string()
    assert types["active"] == pa.bool_()
    assert pa.types.is_timestamp(types["signed_up_at"]) and types["signed_up_at"].tz is not None
    assert pa.types.is_timestamp(types["last_seen"]) and types["last_seen"].tz is None
    assert types["birthday"] == pa.date32()
    assert types["balance"] == pa.decimal128(12, 2)
    # JSON text, tagged as JSON (DuckDB stages it as its `JSON` type) except from DuckDB, whose
    # own export drops the tag: the stage reads the model's types there (`extract.Carry`)
    json = pa.string() if warehouse.kind == "duckdb" else pa.json_(pa.string())
    assert types["prefs"] == json


def test_schema_of_matches_what_read_yields_without_reading(warehouse: Warehouse) -> None:
    expected = warehouse.source.read(USERS_SQL).schema

    assert warehouse.source.schema_of(USERS_SQL + ";\n").equals(expected)


def test_large_results_stream_in_bounded_batches(warehouse: Warehouse) -> None:
    reader = warehouse.source.read("select id from lg_sources.big", batch_rows=1_000)
    sizes, ids = [], set()
    for batch in reader:
        sizes.append(batch.num_rows)
        ids.update(batch.column("id").to_pylist())

    assert len(sizes) >= 3
    assert max(sizes) <= 1_000
    assert sum(sizes) == BIG_ROWS and ids == set(range(1, BIG_ROWS + 1))


def test_a_reader_left_half_read_does_not_block_the_source(warehouse: Warehouse) -> None:
    reader = warehouse.source.read("select id from lg_sources.big", batch_rows=100)
    next(iter(reader))

    assert warehouse.source.read("select count(*) as n from lg_sources.users").read_all()[
        "n"
    ].to_pylist() == [3]
    reader.close()


def test_a_bad_query_names_the_source_and_quotes_the_database(warehouse: Warehouse) -> None:
    with pytest.raises(SourceError) as caught:
        warehouse.source.read("select * from lg_sources.no_such_table").read_all()

    reason = caught.value.reason
    assert reason.startswith(f"{warehouse.source.NAME} source `warehouse`: query failed:")
    assert "no_such_table" in reason.lower()
    assert caught.value.hint is not None and "no_such_table" in caught.value.hint


def test_schema_of_a_bad_query_is_a_source_error(warehouse: Warehouse) -> None:
    with pytest.raises(SourceError, match="query failed"):
        warehouse.source.schema_of("select nope from lg_sources.users")


def test_schemas_tables_and_columns_are_listed(warehouse: Warehouse) -> None:
    source: Source = warehouse.source

    assert "lg_sources" in source.schemas()
    tables = {t.name: t for t in source.tables("lg_sources")}
    assert tables["users"] == TableInfo("lg_sources", "users", "table", tables["users"].rows)
    assert tables["users"].rows in (None, 3)
    if source.SUPPORTS_ROW_COUNTS and warehouse.kind != "postgres":
        assert tables["big"].rows == BIG_ROWS  # postgres estimates only after ANALYZE
    if "active_users" in tables:  # fakesnow keeps views out of information_schema.tables
        assert tables["active_users"].kind == "view"

    columns = source.columns("lg_sources.users")
    read_types = {f.name: f.type for f in source.read(USERS_SQL).schema}
    assert [c.name for c in columns] == list(USERS[0])
    assert all(isinstance(c, ColumnInfo) and c.type for c in columns)
    assert {c.name: c.arrow_type for c in columns} == read_types
    assert next(c for c in columns if c.name == "balance").type.lower().replace(" ", "") in (
        "decimal(12,2)",
        "numeric(12,2)",
        "number(12,2)",
    )


def test_an_unknown_table_is_a_source_error_with_a_way_forward(warehouse: Warehouse) -> None:
    with pytest.raises(SourceError) as caught:
        warehouse.source.columns("lg_sources.nope")

    assert "`lg_sources.nope`" in caught.value.reason
    assert "lockgate sources inspect" in (caught.value.hint or "")
