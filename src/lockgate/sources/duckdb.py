"""DuckDB, the embedded default warehouse: a database file (opened read-only) or `:memory:`.

DuckDB produces Arrow itself and streams it: `read` returns DuckDB's own record batch reader
(`to_arrow_reader`, the DuckDB 2 name of `fetch_record_batch`), so a model larger than memory
flows through in batches. Each read runs on its own cursor, so listings and `schema_of` work
while a read is still open.

A read-only file is attached to an in-memory DuckDB kept for the process (:class:`KeptInstances`)
rather than opened as a DuckDB of its own: starting an instance costs ~14 ms of CPU, attaching
a file to a running one under 1 ms, and a run opens its warehouse two or three times.

Example::

    source = DuckDBSource("warehouse.duckdb")
    for batch in source.read("select * from users", batch_rows=10_000):
        ...
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
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
    lock_held,
    query_error,
    quote_ident,
    quote_literal,
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
            if not lock_held(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _set_up(conn: duckdb.DuckDBPyConnection) -> None:
    """Settings ``conn`` and every cursor of its instance read under."""
    # the model reads the same on a laptop and a server, and keyed in place (the mapping's
    # SQL run here) it gives what the state database gives: both in UTC. `SET` alone is per
    # connection (DuckDB's session), and each read runs on a cursor of its own
    conn.execute("set global TimeZone='UTC'")
    # DuckDB draws a progress bar on stdout for a query over 2 s; the console draws
    # Lockgate's, and `--json` output must stay JSON. It is per connection only; a cursor
    # starts without it
    conn.execute("set enable_progress_bar = false")


def _catalogs(instance: duckdb.DuckDBPyConnection) -> set[str]:
    """The names of the databases attached to ``instance``."""
    rows = instance.execute("select database_name from duckdb_databases()").fetchall()
    return {str(row[0]) for row in rows}


@dataclass
class _Attachment:
    """A file attached to a kept instance: its catalog name and how many sources hold it."""

    catalog: str
    holders: int = 1


#: (memory_limit, absolute path) of an attached file
_Key = tuple[str, str]


class KeptInstances:
    """In-memory DuckDB instances kept for the process, one per `memory_limit` (a buffer pool
    is per instance), that read-only database files are attached to.

    A file is attached once however many sources hold it (a run and its identity step read
    the warehouse at once), under the name a DuckDB of its own gives its catalog (the file's
    stem), and detached when the last source closes: the file is then free for a writer, in
    this process or another. A source dropped without `close` is released when it is
    collected, as a connection of its own closed then. Sources are opened and closed from
    several threads (the crash harness, the scheduler): one lock guards the instances.

    Example::

        kept = KeptInstances()
        opened = kept.attach("warehouse.duckdb", "64MB")
        if opened is not None:
            conn, catalog, key = opened
            ...
            conn.close()
            kept.release(key)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instances: dict[str, duckdb.DuckDBPyConnection] = {}
        self._attached: dict[_Key, _Attachment] = {}
        # sources collected without `close`: released by whoever holds the lock next, as a
        # collection can run while this thread holds it
        self._dropped: collections.deque[_Key] = collections.deque()

    def attach(
        self, path: str, memory_limit: str
    ) -> tuple[duckdb.DuckDBPyConnection, str, _Key] | None:
        """A new connection reading ``path`` (its catalog `USE`d), the catalog's name and the
        key to :meth:`release`; None when the name is another file's here, or DuckDB refuses
        the attach for a reason a DuckDB of the file's own reports better (open one then).
        Waits up to LOCK_WAIT_SECONDS while another process holds the file, as
        :func:`connect_waiting` does; raises DuckDB's error for a file it cannot read."""
        key = (memory_limit, os.path.abspath(path))
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                with self._guard():
                    catalog = self._attach(key)
                    if catalog is None:
                        return None
                    conn = self._instances[memory_limit].cursor()
                try:
                    conn.execute(f"use {quote_ident(catalog)}")
                except BaseException:
                    conn.close()
                    self.release(key)
                    raise
                return conn, catalog, key
            except duckdb.IOException as exc:
                # the file is missing, not DuckDB, or held by a writer past the wait: the same
                # error `duckdb.connect` gives
                if not lock_held(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def _attach(self, key: _Key) -> str | None:
        memory_limit, path = key
        attachment = self._attached.get(key)
        if attachment is not None:
            attachment.holders += 1
            return attachment.catalog
        instance = self._instances.get(memory_limit)
        if instance is None:
            try:
                instance = duckdb.connect(
                    MEMORY,
                    config={
                        "memory_limit": memory_limit,
                        # an in-memory DuckDB spills into `.tmp` in the working folder; a
                        # file's own spilled beside the file. One folder per instance: two
                        # instances must not share spill files
                        "temp_directory": os.path.join(
                            tempfile.gettempdir(),
                            f"lockgate-duckdb-{os.getpid()}-{len(self._instances)}",
                        ),
                    },
                )
                _set_up(instance)
            except duckdb.Error:
                return None  # a `memory_limit` DuckDB refuses: `connect` says so
            self._instances[memory_limit] = instance
        before = _catalogs(instance)
        try:
            instance.execute(f"attach {quote_literal(path)} (type duckdb, read_only)")
        except duckdb.IOException:
            raise
        except duckdb.Error:
            # the catalog name is another file's (or the instance's own `memory`), or the
            # file is open for writing in this process
            return None
        (catalog,) = _catalogs(instance) - before
        self._attached[key] = _Attachment(catalog)
        return catalog

    def release(self, key: _Key) -> None:
        """One source of ``key`` closed: detach the file when it was the last."""
        self._dropped.append(key)
        with self._guard():
            pass

    def release_dropped(self, key: _Key) -> None:
        """:meth:`release` for a source collected without `close`: never waits for the lock
        (a collection may run in a thread holding it; the holder releases it then)."""
        self._dropped.append(key)
        self._release_dropped()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        with self._lock:
            self._detach_dropped()
            yield
        self._release_dropped()

    def _release_dropped(self) -> None:
        # a key added while another thread held the lock is released by that thread's own
        # call here after it lets go
        while self._dropped and self._lock.acquire(blocking=False):
            try:
                self._detach_dropped()
            finally:
                self._lock.release()

    def _detach_dropped(self) -> None:
        while self._dropped:
            key = self._dropped.popleft()
            attachment = self._attached.get(key)
            if attachment is None:
                continue
            attachment.holders -= 1
            if attachment.holders > 0:
                continue
            del self._attached[key]
            # a read still streaming keeps the file open (and locked) until it ends
            with contextlib.suppress(duckdb.Error):
                self._instances[key[0]].execute(f"detach {quote_ident(attachment.catalog)}")

    def close(self) -> None:
        """Close the kept instances (at exit: DuckDB removes its spill folder as an instance
        closes, which a process's end alone does not do). A source still open keeps its
        instance until it closes."""
        with self._guard():
            for instance in self._instances.values():
                with contextlib.suppress(duckdb.Error):
                    instance.close()
            self._instances.clear()
            self._attached.clear()


KEPT = KeptInstances()
atexit.register(KEPT.close)


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
        # the catalog this source reads, `USE`d by each of its cursors; None on a DuckDB of
        # its own, whose cursors start in it
        self._catalog: str | None = None
        self._release: weakref.finalize[[_Key], DuckDBSource] | None = None
        try:
            opened = None
            if read_only and not in_memory:
                opened = KEPT.attach(self.path, memory_limit)
            if opened is not None:
                self._conn, self._catalog, key = opened
                self._release = weakref.finalize(self, KEPT.release_dropped, key)
                self._release.atexit = False
            else:
                # DuckDB refuses a read-only in-memory database; there is nothing to protect
                # there. A source only streams results out: keep its buffer pool small so the
                # process stays within its memory budget (the state engine has its own); 64 MB
                # instead of 256 MB took the peak of a 10M-row plan from 808 to 589 MiB at the
                # same speed. An in-memory database cannot spill, so it keeps room for its own
                # tables.
                self._conn = connect_waiting(
                    self.path,
                    read_only=read_only and not in_memory,
                    config={"memory_limit": "256MB" if in_memory else memory_limit},
                )
                _set_up(self._conn)
        except duckdb.Error as exc:
            hint = "check `path` in lockgate.yml and the file's permissions"
            if lock_held(exc):
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
        cursor = self._cursor()
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

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own (a DuckDB connection), in this source's catalog."""
        cursor = self._conn.cursor()
        if self._catalog is not None:
            try:
                cursor.execute(f"use {quote_ident(self._catalog)}")
            except BaseException:
                cursor.close()
                raise
        return cursor

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
        cursor = self._cursor()
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

    def queries(self, queries: Sequence[str]) -> list[list[tuple[Any, ...]]]:
        """Each of ``queries``' rows (small results), on one cursor: a cursor of its own for
        each costs a round trip more (the `use` of its catalog)."""
        return self._run([(sql, None) for sql in queries])

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self._run([(sql, params)])[0]

    def _run(
        self, statements: Sequence[tuple[str, list[Any] | None]]
    ) -> list[list[tuple[Any, ...]]]:
        """Each statement's rows, on one cursor of this source's; an error names the one that
        failed."""
        cursor = self._cursor()
        try:
            out = []
            for sql, params in statements:
                try:
                    out.append(cursor.execute(sql, params or []).fetchall())
                except duckdb.Error as exc:
                    raise query_error(self.who, sql, exc) from exc
            return out
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
        """Close the database (a kept instance's file is detached when no source holds it)."""
        self._conn.close()
        if self._release is not None:
            self._release()
