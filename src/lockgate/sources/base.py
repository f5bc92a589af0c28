"""The `Source` protocol every warehouse connector implements, and the helpers they share.

A source streams a query's result as Arrow record batches (`read`), describes a result
without reading it (`schema_of`) and lists what the warehouse holds (`schemas`, `tables`,
`columns`). The sync engine hands the reader straight to DuckDB, so memory stays flat
however large the model is: no source ever fetches a whole result into Python objects.

Example::

    from lockgate.sources import connect

    source = connect(project.config.sources["warehouse"], root=project.root)
    reader = source.read("select * from users", batch_rows=50_000)
    for batch in reader:
        ...
    source.close()
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import pyarrow as pa

from lockgate.errors import SourceError

DEFAULT_BATCH_ROWS = 100_000

#: the Arrow type a warehouse's timestamp with a time zone is read as
UTC_TS = pa.timestamp("us", tz="UTC")
#: JSON text that DuckDB stages as its `JSON` type (the canonical `arrow.json` extension), so
#: a field tells a JSON value's `"pro"` (Postgres `jsonb`, a Snowflake VARIANT) from the text
#: `"pro"`
JSON = pa.json_(pa.string())

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^@\s]*@")
_KEYWORD_PASSWORD = re.compile(r"(?i)(password\s*=\s*)('[^']*'|\S+)")


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column of a table or query result.

    ``type`` is the warehouse's own type name (``NUMERIC(12,2)``, ``TIMESTAMP_TZ``); ``arrow_type``
    is what `Source.read` yields for it, when known.
    """

    name: str
    type: str
    arrow_type: pa.DataType | None = None
    nullable: bool | None = None


@dataclass(frozen=True, slots=True)
class TableInfo:
    """One table or view. ``rows`` is a cheap estimate when the warehouse keeps one, else None."""

    schema: str
    name: str
    kind: str  # "table" | "view"
    rows: int | None = None


@runtime_checkable
class Source(Protocol):
    """A warehouse the sync engine reads models from.

    Capabilities are upper-case class constants (``SUPPORTS_ARROW_NATIVE``: the driver produces
    Arrow itself rather than Lockgate converting rows; ``SUPPORTS_ROW_COUNTS``: `tables` fills
    ``rows``). Every failure raises :class:`~lockgate.errors.SourceError`.

    Example::

        schema = source.schema_of("select * from users")
        with source.read("select * from users") as reader:
            for batch in reader:
                ...
    """

    NAME: ClassVar[str]
    SUPPORTS_ARROW_NATIVE: ClassVar[bool]
    SUPPORTS_ROW_COUNTS: ClassVar[bool]

    def read(self, sql: str, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> pa.RecordBatchReader:
        """Stream the query's result as Arrow batches of at most ``batch_rows`` rows."""
        ...

    def schema_of(self, sql: str) -> pa.Schema:
        """The query's result schema, without reading its rows."""
        ...

    def schemas(self) -> list[str]:
        """Schema (dataset) names, without the warehouse's own system schemas."""
        ...

    def tables(self, schema: str | None = None) -> list[TableInfo]:
        """Tables and views, in one schema or in all of them."""
        ...

    def columns(self, table: str) -> list[ColumnInfo]:
        """The columns of ``schema.table`` (or ``table`` in the default schema)."""
        ...

    def close(self) -> None:
        """Release connections; the source is unusable afterwards."""
        ...


# --------------------------------------------------------------------------- helpers


def redact(text: str) -> str:
    """Remove passwords from URLs and ``password=...`` pairs inside a message."""
    text = _URL_PASSWORD.sub(r"\g<scheme>:***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


#: one token of SQL, enough to tell code from comments: a comment, a quoted string or name
#: (whose `--`, `/*` or `;` is not one; `''` inside is a quote, as is `\'` in Postgres's
#: `E'...'`; `$tag$...$tag$` is Postgres's and Snowflake's dollar quoting), white space, or
#: code. An unclosed one runs to the end.
_TOKEN = re.compile(
    r"""(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<quoted>(?<![\w$])[eE]'(?:[^'\\]|\\.|'')*(?:'|\Z)|'(?:[^']|'')*(?:'|\Z)
      |"(?:[^"]|"")*(?:"|\Z)|`[^`]*(?:`|\Z)
      |(?<![\w$])(?P<tag>\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$).*?(?:(?P=tag)|\Z))
    |(?P<space>\s+)
    |[^\s'"`$/eE-]+|.""",
    re.S | re.X,
)


def _code_end(sql: str) -> int:
    """Where the last token of ``sql`` that is code ends: only white space and comments lie
    after it."""
    end = 0
    for token in _TOKEN.finditer(sql):
        if token.lastgroup not in ("comment", "space"):
            end = token.end()
    return end


def strip_sql(sql: str) -> str:
    """The query without surrounding white space and without the semicolons that end it, even
    with comments after them (`select ...; -- done`), so that it can be wrapped: `select *
    from (\n<sql>\n) ...`, the closing parenthesis on a line of its own, after a comment the
    query may still end with. A `;` inside a string, a quoted name or a comment stays."""
    sql = sql.strip()
    while (end := _code_end(sql)) and sql[end - 1] == ";":
        sql = (sql[: end - 1] + sql[end:]).strip()
    return sql


_SQL_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)


def sql_excerpt(sql: str, width: int = 80) -> str:
    """The query on one line without its comments, shortened, for quoting in a hint."""
    flat = " ".join(_SQL_COMMENT.sub(" ", strip_sql(sql)).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def limit_zero(sql: str) -> str:
    """A query with the same columns as ``sql`` and no rows."""
    return f"select * from (\n{strip_sql(sql)}\n) as lockgate_schema_probe limit 0"


_UNQUOTED_DOT = re.compile(r"\.(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)")


def split_table(table: str) -> tuple[str | None, str]:
    """``schema.table`` → (schema, table); a bare ``table`` → (None, table). Quotes are removed."""
    parts = [p.strip().strip('"`') for p in _UNQUOTED_DOT.split(table)]
    if len(parts) == 1:
        return None, parts[0]
    return ".".join(parts[:-1]), parts[-1]


def split_quoted(table: str) -> tuple[str | None, str]:
    """As :func:`split_table`, with the quotes kept (``public."lower_tbl"``), for a warehouse
    where quoting a name changes which one it is (Snowflake)."""
    parts = [p.strip() for p in _UNQUOTED_DOT.split(table)]
    if len(parts) == 1:
        return None, parts[0]
    return ".".join(parts[:-1]), parts[-1]


def quote_ident(name: str, quote: str = '"') -> str:
    """An identifier quoted for SQL (``"my ""odd"" name"``)."""
    return quote + name.replace(quote, quote * 2) + quote


def quote_literal(value: str) -> str:
    """A string literal for catalog queries (standard-conforming strings)."""
    return "'" + value.replace("'", "''") + "'"


def sql_name(column: str) -> str:
    """A column's name as a model's SQL writes it: bare when Postgres (and most warehouses)
    would not fold or misread it, else quoted."""
    plain = column.isidentifier() and column == column.lower() and column.isascii()
    return column if plain else quote_ident(column)


#: The columns a source adds, when asked (`PostgresSource.read(..., flag_nan=True)`), beside
#: each `numeric(p,s)` column, named this and the column's name: true on the rows whose value
#: was `NaN`, which no decimal holds, and which the decimal column reads as null. Staging keeps
#: them in the staged model and out of its columns (`is_nan_flag`); the mapping rejects a row
#: whose flag is set on a column it reads (`nan_reason`). A model's own column cannot clash:
#: names starting with `__` are refused (`extract.unique_columns`).
NAN_FLAG_PREFIX = "__nan_"
#: the metadata key of a NaN flag's Arrow field: the column it flags
NAN_OF = b"lockgate:nan_of"


def nan_flag(column: str) -> str:
    """The name of the column flagging the rows whose ``column`` held `NaN`."""
    return NAN_FLAG_PREFIX + column


def is_nan_flag(column: str) -> bool:
    """Whether ``column`` is a NaN flag a source added (see :data:`NAN_FLAG_PREFIX`)."""
    return column.startswith(NAN_FLAG_PREFIX)


def nan_reason(column: str) -> str:
    """Why a row whose ``column`` held a numeric `NaN` is rejected, and how to fix it."""
    name = sql_name(column)
    return (
        f"column `{column}`: value `NaN` is not a finite number (JSON, and so Customer.io, has "
        f"no NaN); `nullif({name}, 'NaN') as {name}` in the model sends a null instead"
    )


def db_message(exc: BaseException) -> str:
    """The database's own message, trimmed to its meaningful lines, with secrets removed."""
    lines = [line.rstrip() for line in str(exc).strip().splitlines() if line.strip()]
    return redact(" ".join(lines[:3]) if lines else type(exc).__name__)


def lock_held(exc: BaseException) -> bool:
    """Whether DuckDB refused a file because another process holds it ("Could not set lock on
    file"). Not the word `lock` anywhere in the message: the message names the file, and a
    project under a folder such as `lockgate/` then had every unreadable file (not DuckDB,
    damaged) wait out the lock wait (10 s) before its error."""
    return "could not set lock on file" in str(exc).lower()


def label(kind: str, name: str | None) -> str:
    """How messages name a source: ``postgres source `warehouse``` or ``postgres source``."""
    return f"{kind} source `{name}`" if name else f"{kind} source"


#: `${NAME}`, an environment reference as lockgate.yml writes one
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


class QueryError(SourceError):
    """A failed query: names the source, quotes the database, says which SQL to check."""

    def __init__(self, who: str, sql: str, message: str) -> None:
        unexpanded = _ENV_REFERENCE.search(sql)
        super().__init__(
            f"{who}: query failed: {message}",
            hint=f"check the model's SQL (`{sql_excerpt(sql)}`) against the warehouse; "
            "`lockgate sources inspect` lists its tables and columns"
            + (
                f"; `{unexpanded[0]}` is not expanded in a model (environment references are "
                "read only in lockgate.yml's settings: `url`, `path`, `state`, secrets)"
                if unexpanded
                else ""
            ),
        )
        self.who = who
        self.sql = sql
        self.message = message

    def quoting(self, model: str) -> QueryError:
        """This error with its hint quoting ``model``, the model's own SQL, rather than the
        query Lockgate nested it in (read in place, or with some columns as text), which the
        user never wrote."""
        error = QueryError(self.who, model, _model_line(self.message, model))
        error.__cause__ = self.__cause__
        return error


_LINE = re.compile(r"\bLINE (\d+): (.*?)(?=\s{2,}\^|$)")


def _model_line(message: str, model: str) -> str:
    """A database's ``LINE 14: <text>`` counted in the query around the model, made the line of
    ``model`` holding that text (dropped when none does)."""
    found = _LINE.search(message)
    if found is None:
        return message
    text = found.group(2).strip()
    lines = [n for n, line in enumerate(model.splitlines(), start=1) if line.strip() == text]
    where = f"LINE {lines[0]}: " if len(lines) == 1 else ""
    return message[: found.start()] + where + message[found.start(2) :]


def query_error(who: str, sql: str, exc: BaseException) -> QueryError:
    """A failed query: names the source, quotes the database, says which SQL to check."""
    return QueryError(who, sql, db_message(exc))


def check_batch_rows(batch_rows: int) -> None:
    """Refuse a batch size that could never make progress."""
    if batch_rows < 1:
        raise ValueError(f"`batch_rows` must be at least 1, not `{batch_rows}`")


def cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Give a batch the declared schema: names, and types the driver may vary per batch."""
    if batch.schema.equals(schema):
        return batch
    columns = []
    for column, field in zip(batch.columns, schema, strict=True):
        if column.type.equals(field.type):
            columns.append(column)
            continue
        # Warehouses keep timestamps in ns; Arrow's `us` drops sub-microsecond digits on purpose.
        safe = not pa.types.is_timestamp(field.type)
        columns.append(column.cast(field.type, safe=safe))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def stream(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    *,
    batch_rows: int,
    on_error: Callable[[BaseException], SourceError],
    errors: tuple[type[BaseException], ...],
    close: Callable[[], None] | None = None,
    convert: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
) -> pa.RecordBatchReader:
    """Wrap a driver's batches into a reader of ``schema`` with at most ``batch_rows`` rows each.

    Driver errors raised while reading become `SourceError` (via ``on_error``); ``close`` runs
    once the reader is exhausted, fails or is closed.
    """
    check_batch_rows(batch_rows)
    closed = False

    def close_once() -> None:
        nonlocal closed
        if not closed and close is not None:
            closed = True
            close()

    def generate() -> Iterator[pa.RecordBatch]:
        try:
            for raw in batches:
                batch = cast_batch(convert(raw) if convert else raw, schema)
                for offset in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(offset, batch_rows)
        except errors as exc:
            raise on_error(exc) from exc
        finally:
            close_once()

    reader = pa.RecordBatchReader.from_batches(schema, generate())
    # A reader dropped before its first batch never enters `generate`, so its `finally` would
    # not run; closing on garbage collection too keeps the connection from leaking.
    weakref.finalize(reader, close_once)
    return reader
