"""DuckDB, the embedded default warehouse: a database file (opened read-only) or `:memory:`.

DuckDB produces Arrow itself and streams it: `read` returns DuckDB's own record batch reader
(`to_arrow_reader`, the DuckDB 2 name of `fetch_record_batch`), so a model larger than memory
flows through in batches. Each read runs on its own cursor, so listings and `schema_of` work
while a read is still open.

Example::

    source = DuckDBSource("warehouse.duckdb")
    for batch in source.read("select * from users", batch_rows=10_000):
        ...
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import duckdb
import pyarrow as pa

from lockgate.errors import SourceError
from lockgate.sources.base import (
    DEFAULT_BATCH_ROWS,
    ColumnInfo,
    TableInfo,
    check_batch_rows,
    label,
    query_error,
    quote_ident,
    split_table,
    sql_excerpt,
    stream,
    strip_sql,
)

if TYPE_CHECKING:
    from lockgate.project.models import DuckDBSourceConfig

MEMORY = ":memory:"


LOCK_WAIT_SECONDS = 10.0


def connect_waiting(
    path: str,
    *,
    read_only: bool = False,
    config: dict[str, str | bool | int | float | list[str]] | None = None,
) -> duckdb.DuckDBPyConnection:
    """`duckdb.connect`, waiting up to LOCK_WAIT_SECONDS while another process holds the file.

    DuckDB lets one process write a file and refuses every other process meanwhile, at once.
    Lockgate's own writers (the webhook loader, the identity tables) hold it for moments, so a
    reader that arrives then waits instead of failing the run.
    """
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config=config or {})
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class DuckDBSource:
    """A DuckDB database file, read-only by default.

    Example::

        source = DuckDBSource.from_config(config, root=project.root)
        print(source.tables())
    """

    NAME: ClassVar[str] = "duckdb"
    SUPPORTS_ARROW_NATIVE: ClassVar[bool] = True
    SUPPORTS_ROW_COUNTS: ClassVar[bool] = True

    def __init__(
        self,
        path: str | Path = MEMORY,
        *,
        read_only: bool = True,
        name: str | None = None,
        memory_limit: str = "64MB",
    ) -> None:
        self.path = str(path)
        self.who = label(self.NAME, name)
        in_memory = self.path == MEMORY
        if not in_memory and read_only and not Path(self.path).exists():
            raise SourceError(
                f"{self.who}: database file `{self.path}` does not exist",
                hint="check `path` in lockgate.yml (relative to the project folder), "
                "or create the warehouse first",
            )
        try:
            # DuckDB refuses a read-only in-memory database; there is nothing to protect there.
            # a source only streams results out: keep its buffer pool small so the process
            # stays within its memory budget (the state engine has its own); 64 MB instead of
            # 256 MB took the peak of a 10M-row plan from 808 to 589 MiB at the same speed.
            # An in-memory database cannot spill, so it keeps room for its own tables.
            self._conn = connect_waiting(
                self.path,
                read_only=read_only and not in_memory,
                config={"memory_limit": "256MB" if in_memory else memory_limit},
            )
            # the model reads the same on a laptop and a server, and keyed in place (the
            # mapping's SQL run here) it gives what the state database gives: both in UTC
            self._conn.execute("set TimeZone='UTC'")
            # DuckDB draws a progress bar on stdout for a query over 2 s; the console draws
            # Lockgate's, and `--json` output must stay JSON
            self._conn.execute("set enable_progress_bar = false")
        except duckdb.Error as exc:
            hint = "check `path` in lockgate.yml and the file's permissions"
            if "lock" in str(exc).lower():
                hint = "another process holds a write lock on the file; stop it or open a copy"
            raise SourceError(
                f"{self.who}: cannot open `{self.path}`: {exc}".rstrip(), hint=hint
            ) from exc

    @classmethod
    def from_config(
        cls, config: DuckDBSourceConfig, *, root: Path, name: str | None = None
    ) -> DuckDBSource:
        """Open the configured file; a relative `path` is relative to the project folder."""
        from lockgate.project.models import project_path

        field = f"sources.{name}.path" if name else "path"
        path = config.path
        if path != MEMORY:
            path = str(project_path(root, path, field=field, at=config))
        return cls(path, read_only=config.read_only, name=name, memory_limit=config.memory_limit)

    # ------------------------------------------------------------------ reading

    def read(
        self,
        sql: str,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        tables: Mapping[str, pa.Table] | None = None,
    ) -> pa.RecordBatchReader:
        """Stream the result in batches of at most ``batch_rows`` rows. ``tables`` are Arrow
        tables the query may read by name (visible to this read only)."""
        check_batch_rows(batch_rows)
        cursor = self._conn.cursor()
        try:
            for name, arrow in (tables or {}).items():
                cursor.register(name, arrow)
            relation = self._relation(cursor, sql)
            # DuckDB 2 renamed `fetch_record_batch` to `to_arrow_reader`; 1.x has only the former.
            to_reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
            reader = to_reader(batch_rows)
        except duckdb.Error as exc:
            cursor.close()
            raise query_error(self.who, sql, exc) from exc
        except BaseException:
            cursor.close()
            raise
        return stream(
            reader.schema,
            reader,
            batch_rows=batch_rows,
            on_error=lambda exc: query_error(self.who, sql, exc),
            errors=(duckdb.Error,),
            close=cursor.close,
        )

    def _relation(self, cursor: duckdb.DuckDBPyConnection, sql: str) -> duckdb.DuckDBPyRelation:
        """``sql`` as a relation: one query, after any statements that set things up (`set`).
        DuckDB runs every statement and gives the last one's rows, so a model holding two
        queries (`select ... from users; select 1`, a test query left in) read only the last:
        it is refused, naming both, not reported as the columns the sync maps missing."""
        queries = [
            statement.query.strip()
            for statement in cursor.extract_statements(sql)
            if statement.type == duckdb.StatementType.SELECT
        ]
        if len(queries) > 1:
            shown = ", ".join(f"`{sql_excerpt(query, 60)}`" for query in queries)
            raise SourceError(
                f"{self.who}: the model's SQL holds {len(queries)} queries ({shown}); DuckDB "
                "would give the sync the rows of the last one only",
                hint="keep the one query the sync reads and remove the others (a `;` ends each)",
            )
        # `limit` below nests the query's text, where a last `;` is a syntax error
        relation = cursor.sql(strip_sql(sql))
        if relation is None:
            raise SourceError(
                f"{self.who}: the model's SQL returns no result set",
                hint="a model must be a query (`select ...`), not a statement",
            )
        return relation

    def schema_of(self, sql: str) -> pa.Schema:
        """The result schema; DuckDB plans the query and reads no rows."""
        cursor = self._conn.cursor()
        try:
            relation = self._relation(cursor, sql)
            empty = relation.limit(0)
            to_table = getattr(empty, "to_arrow_table", None) or empty.fetch_arrow_table
            schema: pa.Schema = to_table().schema
            # `limit` nests the query, and DuckDB renames a second `plan` of a nested query to
            # `plan_1`; `read` keeps the names as the query gives them, and so does this
            names = relation.columns
            return pa.schema(f.with_name(n) for f, n in zip(schema, names, strict=True))
        except duckdb.Error as exc:
            raise query_error(self.who, sql, exc) from exc
        finally:
            cursor.close()

    def column_types(self, sql: str) -> dict[str, str]:
        """The result's columns and their DuckDB type names (as `describe` gives them)."""
        return {row[0]: row[1] for row in self._rows(f"describe {strip_sql(sql)}")}

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """``sql``'s rows as tuples (a small result: an aggregate, a catalog query)."""
        return self._rows(sql)

    # ------------------------------------------------------------------ catalog

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        cursor = self._conn.cursor()
        try:
            rows: list[tuple[Any, ...]] = cursor.execute(sql, params or []).fetchall()
            return rows
        except duckdb.Error as exc:
            raise query_error(self.who, sql, exc) from exc
        finally:
            cursor.close()

    def schemas(self) -> list[str]:
        """Schemas of the opened database, without DuckDB's internal ones."""
        rows = self._rows(
            "select schema_name from duckdb_schemas() "
            "where database_name = current_database() "
            "and schema_name not in ('information_schema', 'pg_catalog') order by 1"
        )
        return [row[0] for row in rows]

    def tables(self, schema: str | None = None) -> list[TableInfo]:
        """Tables with DuckDB's estimated row count, then views."""
        rows = self._rows(
            "select schema_name, table_name, 'table', estimated_size from duckdb_tables() "
            "where database_name = current_database() and not internal "
            "and ($1 is null or schema_name = $1) "
            "union all "
            "select schema_name, view_name, 'view', null from duckdb_views() "
            "where database_name = current_database() and not internal "
            "and ($1 is null or schema_name = $1) "
            "order by 1, 2",
            [schema],
        )
        return [TableInfo(schema=s, name=n, kind=k, rows=r) for s, n, k, r in rows]

    def columns(self, table: str) -> list[ColumnInfo]:
        """Columns of a table or view: DuckDB's type name and the Arrow type `read` yields."""
        schema, name = split_table(table)
        rows = self._rows(
            "select schema_name, column_name, data_type, is_nullable from duckdb_columns() "
            "where database_name = current_database() and table_name = $1 "
            "and ($2 is null or schema_name = $2) order by schema_name = 'main' desc, "
            "schema_name, column_index",
            [name, schema],
        )
        if not rows:
            raise SourceError(
                f"{self.who}: no table or view `{table}`",
                hint="`lockgate sources inspect` lists the tables; qualify it as `schema.table`",
            )
        found_schema = rows[0][0]
        rows = [row for row in rows if row[0] == found_schema]
        arrow = self.schema_of(f"select * from {quote_ident(found_schema)}.{quote_ident(name)}")
        return [
            ColumnInfo(name=c, type=t, arrow_type=arrow.field(c).type, nullable=bool(nullable))
            for _, c, t, nullable in rows
        ]

    def close(self) -> None:
        """Close the database."""
        self._conn.close()
