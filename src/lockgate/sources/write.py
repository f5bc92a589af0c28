"""Write Lockgate's own tables into a warehouse: the identity graph's analyst tables and the run
log (`run_log:`), into one schema of a DuckDB file, a Postgres database, Redshift or Snowflake.

Every write of one call is one transaction: an analyst never reads half of what a run wrote
(in Snowflake, where DDL commits, the tables are created and widened first, and the rows of
every table are then deleted and inserted in one transaction).

A table is created on first use, with its columns' types taken from the Arrow data (a column
named in ``json`` becomes `json`/`jsonb`/`VARIANT`, and so do lists in Snowflake); a later
write that brings a column the table lacks adds it (a Lockgate upgrade that logs one more
count does not break a user's table), and columns the data lacks are left null. Three ways to write:

- ``replace``: the table becomes exactly the data (the identity graph's current state);
- ``append``: the data is added (logs);
- ``append`` with ``replacing``: rows whose ``replacing[0]`` column holds one of the values in
  ``replacing[1]`` are deleted first, so writing the same runs again leaves them once.

``data`` may be an Arrow table or a record batch reader; a reader is read once, as it is
inserted, so a million-row write never needs the rows in memory at once.

Example::

    where = write_tables(project, "warehouse", "lockgate", [
        TableWrite("sync_runs", runs, replacing=("run_id", ids), json=("report",)),
    ])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pyarrow as pa

from lockgate.errors import ConfigError, SourceError
from lockgate.project.models import (
    DuckDBSourceConfig,
    PostgresSourceConfig,
    SnowflakeSourceConfig,
    resolve_env,
)
from lockgate.sources.base import db_message, quote_ident, quote_literal
from lockgate.sources.duckdb import connect_waiting

if TYPE_CHECKING:
    from lockgate.project.loader import Project


@dataclass(frozen=True)
class TableWrite:
    """One table's part of a :func:`write_tables` call."""

    table: str
    data: pa.Table | pa.RecordBatchReader
    mode: Literal["replace", "append"] = "append"
    replacing: tuple[str, Sequence[Any]] | None = None
    """(column, values): the target's rows holding one of these values are deleted first."""
    json: tuple[str, ...] = ()
    """Columns holding JSON text, stored as the warehouse's JSON type."""


def writable(project: Project, name: str) -> str | None:
    """Why source ``name`` cannot take Lockgate's tables, or None if it can."""
    source = project.config.sources[name]
    if isinstance(source, DuckDBSourceConfig):
        if source.path == ":memory:":
            return "it is an in-memory DuckDB: what is written there is gone with the process"
        return None
    if isinstance(source, PostgresSourceConfig | SnowflakeSourceConfig):
        return None
    return f"writing Lockgate's tables into a `{source.type}` warehouse is not supported yet"


def write_tables(project: Project, source_name: str, schema: str, writes: list[TableWrite]) -> str:
    """Write ``writes`` into ``schema`` of source ``source_name`` in one transaction; returns
    where they went, for a message. Raises :class:`SourceError` if the warehouse refused or
    could not be reached (nothing is written then)."""
    source = project.config.sources[source_name]
    if isinstance(source, DuckDBSourceConfig):
        path = (
            source.path
            if source.path == ":memory:"
            else str(project.path_option(source.path, "sources", source_name, "path"))
        )
        try:
            con = connect_waiting(path)
        except duckdb.Error as exc:
            raise SourceError(
                f"cannot write into `{path}`: {db_message(exc)}",
                hint="another process holds the warehouse file; it is written next run",
            ) from exc
        try:
            _duckdb_write(con, schema, writes)
        except duckdb.Error as exc:
            raise SourceError(f"`{path}` refused the write: {db_message(exc)}") from exc
        finally:
            con.close()
        return f"{path} (schema {schema})"
    if isinstance(source, PostgresSourceConfig):
        url = resolve_env(source.url, field="url", at=source) or ""
        if source.redshift:
            _redshift_write(url, schema, writes)
        else:
            _postgres_write(url, schema, writes)
        return f"source `{source_name}` (schema {schema})"
    if isinstance(source, SnowflakeSourceConfig):
        from lockgate.sources.snowflake import SnowflakeSource

        snowflake = SnowflakeSource.from_config(source, root=project.root, name=source_name)
        try:
            _snowflake_write(snowflake.connection, schema, writes)
        except snowflake.errors as exc:
            raise SourceError(
                f"Snowflake refused the write into schema `{schema}`: {db_message(exc)}",
                hint="the role needs CREATE SCHEMA (or the schema to exist), CREATE TABLE and "
                "INSERT in the database",
            ) from exc
        finally:
            snowflake.close()
        return f"source `{source_name}` (schema {schema.upper()})"
    raise ConfigError(
        f"source `{source_name}`: {writable(project, source_name)}",
        hint="use a DuckDB file, Postgres, Redshift or Snowflake source",
        file="lockgate.yml",
    )


def _existing_columns(cursor: Any, schema: str, table: str) -> set[str]:
    """The target table's column names, from `information_schema` (Postgres, Redshift,
    Snowflake alike; names as the warehouse stores them)."""
    cursor.execute(
        "select column_name from information_schema.columns where table_schema = "
        f"{quote_literal(schema)} and table_name = {quote_literal(table)}"
    )
    return {r[0] for r in cursor.fetchall()}


def _delete_replaced(cursor: Any, target: str, write: TableWrite, column: str, text: str) -> None:
    """Delete the target's rows that ``write.replacing`` names (``column`` quoted as the
    warehouse stores it, compared as ``text``), values inlined as literals."""
    if write.replacing is None:
        return
    listed = ", ".join(quote_literal(str(v)) for v in write.replacing[1]) or "null"
    cursor.execute(f"delete from {target} where {column}::{text} in ({listed})")


def _row_chunks(
    data: pa.Table | pa.RecordBatchReader, size: int, nested: set[str], cut: int | None = None
) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of ``data`` as bind tuples, ``size`` at a time; the ``nested`` columns' values
    as JSON text, and with ``cut`` text longer than that many bytes cut to it."""
    import orjson

    def value(v: Any, as_json: bool) -> Any:
        if v is None:
            return None
        if as_json:
            v = orjson.dumps(v).decode()
        if cut is not None and isinstance(v, str) and len(v) > cut // 4:
            v = v.encode()[:cut].decode(errors="ignore")
        return v

    batches = data.to_batches() if isinstance(data, pa.Table) else data
    for batch in batches:
        columns = [(values, name in nested) for name, values in batch.to_pydict().items()]
        for start in range(0, batch.num_rows, size):
            stop = min(start + size, batch.num_rows)
            yield [
                tuple(value(values[i], as_json) for values, as_json in columns)
                for i in range(start, stop)
            ]


# ------------------------------------------------------------------------------------- DuckDB


def _duckdb_select(names: list[str], json: tuple[str, ...], view: str) -> str:
    return (
        ", ".join(
            f"{quote_ident(n)}::json as {quote_ident(n)}" if n in json else quote_ident(n)
            for n in names
        )
        + f" from {view}"
    )


def _duckdb_write(con: duckdb.DuckDBPyConnection, schema: str, writes: list[TableWrite]) -> None:
    """A few statements per table: a run of the identity graph writes ten small tables, and
    the drop, create, describe and insert each took once made ~50 ms of a small run (a
    statement is ~0.5 ms before it reads a row). A ``replace`` is one `create or replace`; an
    ``append`` of no rows into a table that has its columns is nothing at all."""
    # DuckDB draws its own progress bar on stdout for a long insert: it would break `--json`
    con.execute("set enable_progress_bar = false")
    con.execute("begin transaction")
    try:
        con.execute(f"create schema if not exists {quote_ident(schema)}")
        have: dict[str, set[str]] = {}
        for table_name, column in con.execute(
            "select table_name, column_name from duckdb_columns() "
            "where database_name = current_database() and schema_name = ?",
            [schema],
        ).fetchall():
            have.setdefault(table_name, set()).add(column)
        for write in writes:
            _duckdb_write_one(con, f"{quote_ident(schema)}.{quote_ident(write.table)}", write, have)
        con.execute("commit")
    except BaseException:
        # a commit the disk refused has ended the transaction already: its error, not the
        # rollback's "no transaction is active", is the one to see
        with contextlib.suppress(duckdb.Error):
            con.execute("rollback")
        raise


def _duckdb_write_one(
    con: duckdb.DuckDBPyConnection, target: str, write: TableWrite, have: dict[str, set[str]]
) -> None:
    """One table of :func:`_duckdb_write`; ``have``: the columns of the schema's tables."""
    names = list(write.data.schema.names)
    if write.mode == "replace":
        # the table becomes the data, with the data's columns (a reader is read once, here)
        _duckdb_from_rows(con, f"create or replace table {target} as", write, names)
        return
    columns = have.get(write.table)
    if columns is None or set(names) - columns:
        # created, or widened by the columns it lacks, from the data's schema alone (a reader
        # must not be read for it)
        con.register("_lockgate_empty", write.data.schema.empty_table())
        try:
            select = _duckdb_select(names, write.json, "_lockgate_empty")
            if columns is None:
                con.execute(f"create table {target} as select {select} limit 0")
            else:
                types = dict(
                    con.execute(
                        f"select column_name, column_type from (describe select {select})"
                    ).fetchall()
                )
                for name in names:
                    if name not in columns:
                        con.execute(
                            f"alter table {target} add column {quote_ident(name)} {types[name]}"
                        )
        finally:
            con.unregister("_lockgate_empty")
    if write.replacing is not None:
        column, values = write.replacing
        con.execute(
            f"delete from {target} where {quote_ident(column)} in (select unnest(?::varchar[]))",
            [[str(v) for v in values]],
        )
    if isinstance(write.data, pa.Table) and write.data.num_rows == 0:
        return
    _duckdb_from_rows(con, f"insert into {target} by name", write, names)


def _duckdb_from_rows(
    con: duckdb.DuckDBPyConnection, head: str, write: TableWrite, names: list[str]
) -> None:
    """Run ``head`` followed by a SELECT of ``write``'s rows (registered for the statement)."""
    con.register("_lockgate_rows", write.data)
    try:
        con.execute(f"{head} select " + _duckdb_select(names, write.json, "_lockgate_rows"))
    finally:
        con.unregister("_lockgate_rows")


# ----------------------------------------------------------------------------------- Postgres


def _postgres_write(url: str, schema: str, writes: list[TableWrite]) -> None:
    try:
        import adbc_driver_postgresql.dbapi as adbc
    except ImportError:  # pragma: no cover - a dependency of the package
        from lockgate.errors import MissingDependencyError

        raise MissingDependencyError("adbc-driver-postgresql", "postgres") from None
    try:
        with adbc.connect(url) as conn, conn.cursor() as cursor:
            cursor.execute(f"create schema if not exists {quote_ident(schema)}")
            for i, write in enumerate(writes):
                _postgres_table(cursor, schema, write, f"_lockgate_stage_{i}")
            conn.commit()
    except adbc.Error as exc:
        raise SourceError(
            f"Postgres refused the write into schema `{schema}`: {db_message(exc)}",
            hint="the user needs CREATE on the database (or the schema to exist) and INSERT",
        ) from exc


def _postgres_table(cursor: Any, schema: str, write: TableWrite, stage: str) -> None:
    """Stage the rows in a temporary table (COPY), then move them into the target with SQL:
    that lets JSON columns become `jsonb`, missing columns be added, and a replaced run's rows
    be deleted in the same transaction."""
    target = f"{quote_ident(schema)}.{quote_ident(write.table)}"
    names = list(write.data.schema.names)
    cursor.adbc_ingest(stage, write.data, mode="create", temporary=True)
    select = ", ".join(
        f"{quote_ident(n)}::jsonb as {quote_ident(n)}" if n in write.json else quote_ident(n)
        for n in names
    )
    if write.mode == "replace":
        cursor.execute(f"drop table if exists {target}")
    cursor.execute(
        f"create table if not exists {target} as select {select} from {stage} with no data"
    )
    have = _existing_columns(cursor, schema, write.table)
    cursor.execute(
        "select attname, format_type(atttypid, atttypmod) from pg_attribute "
        f"where attrelid = {quote_literal(stage)}::regclass and attnum > 0"
    )
    types = dict(cursor.fetchall())
    for name in names:
        if name not in have:
            column_type = "jsonb" if name in write.json else types.get(name, "text")
            cursor.execute(f"alter table {target} add column {quote_ident(name)} {column_type}")
    if write.replacing is not None:
        _delete_replaced(cursor, target, write, quote_ident(write.replacing[0]), "text")
    columns = ", ".join(quote_ident(n) for n in names)
    cursor.execute(f"insert into {target} ({columns}) select {select} from {stage}")
    cursor.execute(f"drop table {stage}")


# ---------------------------------------------------------------------------------- Snowflake

SNOWFLAKE_ROWS_PER_INSERT = 1_000
"""Rows bound per multi-row INSERT: the connector inlines the values into the statement's text,
which Snowflake caps at 1 MB."""


def _snowflake_type(kind: pa.DataType, json: bool) -> tuple[str, str]:
    """(the column's type, the staging column's type) for an Arrow type. JSON text, lists and
    structs are staged as text and stored as VARIANT."""
    if json or pa.types.is_nested(kind):
        return "VARIANT", "VARCHAR"
    if pa.types.is_integer(kind):
        column = "NUMBER(38,0)"
    elif pa.types.is_floating(kind):
        column = "FLOAT"
    elif pa.types.is_boolean(kind):
        column = "BOOLEAN"
    elif pa.types.is_timestamp(kind):
        column = "TIMESTAMP_TZ" if kind.tz else "TIMESTAMP_NTZ"
    elif pa.types.is_date(kind):
        column = "DATE"
    else:
        column = "VARCHAR"
    return column, column


def _snowflake_write(conn: Any, schema: str, writes: list[TableWrite]) -> None:
    """Stage each table's rows in a temporary table, then move them in one transaction.
    Names are written upper case (Snowflake's own folding): `lockgate.sync_runs` reads them."""
    cursor = conn.cursor()
    target_schema = quote_ident(schema.upper())
    cursor.execute(f"create schema if not exists {target_schema}")
    moves: list[tuple[TableWrite, str, str, str, str]] = []
    for i, write in enumerate(writes):
        target = f"{target_schema}.{quote_ident(write.table.upper())}"
        stage = f"LOCKGATE_STAGE_{i}"
        fields = list(write.data.schema)
        types = {f.name: _snowflake_type(f.type, f.name in write.json) for f in fields}
        names = [quote_ident(f.name.upper()) for f in fields]
        cursor.execute(
            f"create or replace temporary table {stage} ("
            + ", ".join(f"{n} {types[f.name][1]}" for n, f in zip(names, fields, strict=True))
            + ")"
        )
        insert = (
            f"insert into {stage} ({', '.join(names)}) values ("
            + ", ".join(["%s"] * len(names))
            + ")"
        )
        nested = {f.name for f in fields if pa.types.is_nested(f.type)}
        for chunk in _row_chunks(write.data, SNOWFLAKE_ROWS_PER_INSERT, nested):
            cursor.executemany(insert, chunk)
        select = ", ".join(
            f"parse_json({n}) as {n}" if types[f.name][0] == "VARIANT" else n
            for n, f in zip(names, fields, strict=True)
        )
        if write.mode == "append":
            cursor.execute(
                f"create table if not exists {target} ("
                + ", ".join(f"{n} {types[f.name][0]}" for n, f in zip(names, fields, strict=True))
                + ")"
            )
            have = _existing_columns(cursor, schema.upper(), write.table.upper())
            for n, f in zip(names, fields, strict=True):
                if f.name.upper() not in have:
                    cursor.execute(f"alter table {target} add column {n} {types[f.name][0]}")
        moves.append((write, target, stage, ", ".join(names), select))
    cursor.execute("begin")
    try:
        for write, target, stage, columns, select in moves:
            if write.mode != "append":
                continue
            if write.replacing is not None:
                column = quote_ident(write.replacing[0].upper())
                _delete_replaced(cursor, target, write, column, "varchar")
            cursor.execute(f"insert into {target} ({columns}) select {select} from {stage}")
        cursor.execute("commit")
    except BaseException:
        cursor.execute("rollback")
        raise
    for write, target, stage, _, select in moves:
        if write.mode == "replace":
            cursor.execute(f"create or replace table {target} as select {select} from {stage}")
        cursor.execute(f"drop table if exists {stage}")


# ----------------------------------------------------------------------------------- Redshift

REDSHIFT_TEXT = 65_535
"""Bytes in Redshift's longest VARCHAR: longer text (a large report) is cut to it."""

REDSHIFT_ROWS_PER_INSERT = 500
"""Rows per multi-row INSERT (Redshift's statement limit is 16 MB)."""


def _redshift_type(kind: pa.DataType) -> str:
    """The column type for an Arrow type. JSON text, lists and structs are VARCHAR JSON text
    (`JSON_PARSE` reads it as SUPER); TEXT would be Redshift's VARCHAR(256)."""
    if pa.types.is_integer(kind):
        return "bigint"
    if pa.types.is_floating(kind):
        return "double precision"
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_timestamp(kind):
        return "timestamptz" if kind.tz else "timestamp"
    if pa.types.is_date(kind):
        return "date"
    return f"varchar({REDSHIFT_TEXT})"


def _redshift_write(url: str, schema: str, writes: list[TableWrite]) -> None:
    """Redshift (through psycopg, as its source is read): the tables created and widened, each
    run's rows deleted and inserted with multi-row INSERTs, one transaction. The values are
    bound client-side (literals in the statement's text), which Redshift takes as any SQL."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a dependency of the package
        from lockgate.errors import MissingDependencyError

        raise MissingDependencyError("psycopg", "postgres") from None
    try:
        with psycopg.connect(url, cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.cursor()
            cursor.execute(f"create schema if not exists {quote_ident(schema)}")
            for write in writes:
                _redshift_table(cursor, schema, write)
            conn.commit()
    except psycopg.Error as exc:
        raise SourceError(
            f"Redshift refused the write into schema `{schema}`: {db_message(exc)}",
            hint="the user needs CREATE on the database (or the schema to exist) and INSERT",
        ) from exc


def _redshift_table(cursor: Any, schema: str, write: TableWrite) -> None:
    target = f"{quote_ident(schema)}.{quote_ident(write.table)}"
    fields = list(write.data.schema)
    names = [quote_ident(f.name) for f in fields]
    types = [_redshift_type(f.type) for f in fields]
    if write.mode == "replace":
        cursor.execute(f"drop table if exists {target}")
    cursor.execute(
        f"create table if not exists {target} ("
        + ", ".join(f"{n} {t}" for n, t in zip(names, types, strict=True))
        + ")"
    )
    have = _existing_columns(cursor, schema, write.table)
    for field, name, kind in zip(fields, names, types, strict=True):
        if field.name not in have:
            cursor.execute(f"alter table {target} add column {name} {kind}")
    if write.replacing is not None:
        _delete_replaced(cursor, target, write, quote_ident(write.replacing[0]), "varchar")
    nested = {f.name for f in fields if pa.types.is_nested(f.type)}  # JSON columns: text already
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    for chunk in _row_chunks(write.data, REDSHIFT_ROWS_PER_INSERT, nested, cut=REDSHIFT_TEXT):
        cursor.execute(
            f"insert into {target} ({', '.join(names)}) values " + ", ".join([row] * len(chunk)),
            [value for values in chunk for value in values],
        )
