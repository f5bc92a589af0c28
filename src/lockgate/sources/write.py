"""Write Lockgate's own tables into a warehouse: the identity graph's analyst tables and the run
log (`run_log:`), into one schema of a DuckDB file or a Postgres database.

Every write of one call is one transaction: an analyst never reads half of what a run wrote.
A table is created on first use, with its columns' types taken from the Arrow data (a column
named in ``json`` becomes `json`/`jsonb`); a later write that brings a column the table lacks
adds it (a Lockgate upgrade that logs one more count does not break a user's table), and
columns the data lacks are left null. Three ways to write:

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pyarrow as pa

from lockgate.errors import ConfigError, SourceError
from lockgate.project.models import DuckDBSourceConfig, PostgresSourceConfig, resolve_env
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
    if isinstance(source, PostgresSourceConfig) and not source.redshift:
        return None
    kind = "redshift" if isinstance(source, PostgresSourceConfig) else source.type
    return f"writing Lockgate's tables into a `{kind}` warehouse is not supported yet"


def write_tables(project: Project, source_name: str, schema: str, writes: list[TableWrite]) -> str:
    """Write ``writes`` into ``schema`` of source ``source_name`` in one transaction; returns
    where they went, for a message. Raises :class:`SourceError` if the warehouse refused or
    could not be reached (nothing is written then)."""
    source = project.config.sources[source_name]
    if isinstance(source, DuckDBSourceConfig):
        path = source.path if source.path == ":memory:" else str(project.root / source.path)
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
    if isinstance(source, PostgresSourceConfig) and not source.redshift:
        _postgres_write(resolve_env(source.url, field="url") or "", schema, writes)
        return f"source `{source_name}` (schema {schema})"
    raise ConfigError(
        f"source `{source_name}`: {writable(project, source_name)}",
        hint="use a DuckDB file or Postgres source",
        file="lockgate.yml",
    )


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
    con.execute("begin transaction")
    try:
        con.execute(f"create schema if not exists {quote_ident(schema)}")
        for write in writes:
            target = f"{quote_ident(schema)}.{quote_ident(write.table)}"
            names = list(write.data.schema.names)
            con.register("_lockgate_empty", write.data.schema.empty_table())
            if write.mode == "replace":
                con.execute(f"drop table if exists {target}")
            con.execute(
                f"create table if not exists {target} as select "
                + _duckdb_select(names, write.json, "_lockgate_empty")
                + " limit 0"
            )
            have = {r[0] for r in con.execute(f"describe {target}").fetchall()}
            if set(names) - have:
                types = dict(
                    con.execute(
                        "select column_name, column_type from (describe select "
                        + _duckdb_select(names, write.json, "_lockgate_empty")
                        + ")"
                    ).fetchall()
                )
                for name in names:
                    if name not in have:
                        con.execute(
                            f"alter table {target} add column {quote_ident(name)} {types[name]}"
                        )
            con.unregister("_lockgate_empty")
            if write.replacing is not None:
                column, values = write.replacing
                con.execute(
                    f"delete from {target} where {quote_ident(column)} in "
                    "(select unnest(?::varchar[]))",
                    [[str(v) for v in values]],
                )
            con.register("_lockgate_rows", write.data)
            con.execute(
                f"insert into {target} by name select "
                + _duckdb_select(names, write.json, "_lockgate_rows")
            )
            con.unregister("_lockgate_rows")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


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
    cursor.execute(
        "select column_name from information_schema.columns where table_schema = "
        f"{quote_literal(schema)} and table_name = {quote_literal(write.table)}"
    )
    have = {r[0] for r in cursor.fetchall()}
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
        column, values = write.replacing
        listed = ", ".join(quote_literal(str(v)) for v in values) or "null"
        cursor.execute(f"delete from {target} where {quote_ident(column)}::text in ({listed})")
    columns = ", ".join(quote_ident(n) for n in names)
    cursor.execute(f"insert into {target} ({columns}) select {select} from {stage}")
    cursor.execute(f"drop table {stage}")
