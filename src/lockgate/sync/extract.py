"""Extract: stream a sync's model from its source into the state database as Arrow batches.

The source hands over a :class:`pyarrow.RecordBatchReader`; DuckDB pulls it batch by
batch into a temporary table (spilling to disk past its memory limit), so memory stays
flat however large the model is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import duckdb
import pyarrow as pa

from lockgate.console import Advance
from lockgate.errors import ConfigError, LockgateError, SourceError
from lockgate.sources.base import NAN_OF, QueryError, Source, strip_sql
from lockgate.sources.duckdb import DuckDBSource
from lockgate.sources.postgres import PostgresSource
from lockgate.state.store import registered, run_sql
from lockgate.sync.mapping import Compiled, holds_json, q

if TYPE_CHECKING:
    from duckdb.sqltypes import DuckDBPyType


@dataclass(frozen=True, slots=True)
class Staged:
    """What was read: row count and column name → DuckDB type."""

    rows: int
    columns: dict[str, str]


@contextmanager
def quoting_model(sql: str) -> Iterator[None]:
    """A query nesting the model's ``sql`` (read in place, or with some columns as text) that
    fails quotes the model's SQL in its hint: the one the user wrote and can fix, not the
    query around it (`select k, src_h from (select case when "__k" is null ...`)."""
    try:
        yield
    except QueryError as exc:
        if exc.sql == sql:
            raise
        raise exc.quoting(sql) from exc.__cause__


def unique_columns(names: list[str], *, sync: str, warehouse: str = "") -> None:
    """Refuse a model with two columns of one name (``select u.*, a.*`` of two tables that both
    have ``plan``; on Snowflake ``EMAIL`` and ``"email"``, which both come back as ``email``).

    Staged in DuckDB, whose names ignore case, the second becomes ``plan_1`` and a sync mapping
    ``plan`` silently sends the first one's values. Which one the sync file means is not
    clear, so the run stops before a row is copied or sent. ``warehouse`` is the source's
    type (``snowflake`` adds why two names folded into one). A `ConfigError` without a file:
    callers point it at the sync file (:meth:`Project.locate`).

    A name starting with ``__`` is refused too: Lockgate adds such columns to the model's rows
    as it maps them (``__k``, ``__id_id``...), and a model column of one of those names took
    their place: a column `__k` became every row's key, `__id_id` every row's person."""
    own = [name for name in names if name.startswith("__")]
    if own:
        raise ConfigError(
            f"sync `{sync}`: the model returns {', '.join(f'`{n}`' for n in own)}: names "
            "starting with `__` are Lockgate's own, for the columns it adds as it maps rows",
            hint=f"give it another name in the model's SQL (`{own[0]} as {own[0].lstrip('_')}`)",
        )
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() not in seen:
            seen[name.lower()] = name
            continue
        first = seen[name.lower()]
        if first == name:
            same = f"two columns named `{name}`"
        else:
            same = f"columns `{first}` and `{name}`, one name to Lockgate (it ignores case)"
        folded = (
            f' (Snowflake\'s `{name.upper()}` and `"{name.lower()}"` both come back as '
            f"`{name.lower()}`)"
            if warehouse == "snowflake" and first == name
            else ""
        )
        raise ConfigError(
            f"sync `{sync}`: the model returns {same}, so which one the sync file means is not "
            f"clear{folded}",
            hint=f"give one of them its own name in the model's SQL (`a.{name} as "
            f"account_{name}`, with `a` the table it comes from; list that table's columns "
            "instead of `a.*`) and map the one you mean in the sync file",
        )


def _counting(
    reader: pa.RecordBatchReader, advance: Advance, failed: list[BaseException]
) -> pa.RecordBatchReader:
    """``reader`` counted into ``advance``. What the reader raises is also kept in ``failed``:
    DuckDB, which pulls the batches, turns it into an error of its own whose text holds the
    Python traceback, and chains nothing."""

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for batch in reader:
                advance(batch.num_rows)
                yield batch
        except Exception as exc:
            failed.append(exc)
            raise

    return pa.RecordBatchReader.from_batches(reader.schema, batches())


def _load(
    con: duckdb.DuckDBPyConnection,
    reader: pa.RecordBatchReader,
    advance: Advance,
    sql: str,
    *,
    sync: str,
) -> None:
    """Run ``sql`` (which reads ``_model_reader``) over the batches of ``reader``. An error
    the reader raised (a source's `SourceError` naming the column it could not read) is raised
    as it was, once, not inside DuckDB's message with its traceback."""
    failed: list[BaseException] = []
    with registered(con, "_model_reader", _counting(reader, advance, failed)):
        try:
            run_sql(con, sql)
        except LockgateError:
            raise
        except duckdb.Error as exc:
            if failed:
                raise failed[0] from failed[0].__cause__
            raise SourceError(
                f"sync `{sync}`: reading the model failed: {exc}",
                hint="run the model's SQL in the warehouse to check it",
            ) from exc


def stage(
    con: duckdb.DuckDBPyConnection,
    source: Source,
    sql: str,
    *,
    sync: str,
    advance: Advance,
    native: dict[str, str] | None = None,
) -> Staged:
    """Read the model into the temp table ``model``; a model with two columns of one name is
    refused first (:func:`unique_columns`). From DuckDB, a column whose values the Arrow copy
    would change crosses it as text (see :class:`Carry`); ``native``: the model's DuckDB column
    types, when the caller knows them."""
    carry = Carry.of((native if native is not None else model_types(source, sql)) or {})
    with quoting_model(sql):
        if carry.as_text:
            # nested, DuckDB renames a second `plan` to `plan_1`: the names the model gives
            unique_columns(source.schema_of(sql).names, sync=sync, warehouse=source.NAME)
            reader = source.read(carry.read(_subquery(sql) + " __model"))
        else:
            # a `numeric(p,s)` `NaN` rejects its row rather than stopping the read (see
            # `lockgate.sources.base.NAN_FLAG_PREFIX`)
            reader = (
                source.read(sql, flag_nan=True)
                if isinstance(source, PostgresSource)
                else source.read(sql)
            )
            names = [f.name for f in reader.schema if NAN_OF not in (f.metadata or {})]
            try:
                unique_columns(names, sync=sync, warehouse=source.NAME)
            except ConfigError:
                reader.close()
                raise
        load = f"create or replace temp table model as {carry.load()}"
        _load(con, reader, advance, load, sync=sync)
    columns = {row[0]: row[1] for row in con.execute("describe model").fetchall()}
    count = con.execute("select count(*) from model").fetchall()[0][0]
    return Staged(rows=int(count), columns=columns)


#: DuckDB types whose Arrow round trip (what :func:`stage` keeps) is another type, and that
#: type: a model read in place casts these columns so it hashes and maps exactly like a staged
#: one. A column of any other type that changes on the round trip keeps the model staged.
_ROUND_TRIP = {
    "UUID": "VARCHAR",
}

#: DuckDB types whose Arrow export changes their values: a UHUGEINT of 2^127 or more wraps to
#: a negative decimal128 (2^128-1 arrived as -1), a BIT is exported as its internal bytes
#: (`10110` as `\x03\xF6`), a TIME WITH TIME ZONE without its offset. A HUGEINT is exported
#: as a DECIMAL(38,0) holding its 128 bits: -2^127 there is no decimal DuckDB can negate, and
#: writing it as text or JSON failed with an internal error that invalidated the state
#: database (the whole command failed). A column holding one at any depth (a list of
#: UHUGEINT) crosses Arrow as its text, which DuckDB casts back exactly. (DuckDB hashes and
#: writes a whole number alike whatever its integer or decimal type, so a HUGEINT staged as
#: itself keys as it did when it was staged as a DECIMAL(38,0).)
_AS_TEXT = ("hugeint", "uhugeint", "bit", "time with time zone")


def _holds_any(col_type: str, ids: tuple[str, ...]) -> bool:
    """True when a column of DuckDB type ``col_type`` holds a value of one of the types
    ``ids`` (lower case, as ``DuckDBPyType.id``), at any depth."""
    upper = col_type.upper()
    if not any(name.upper() in upper for name in ids):
        return False  # every common type: no parsing
    try:
        return _holds(duckdb.sqltype(col_type), ids)
    except duckdb.Error:
        return False  # a type the client cannot name (an extension's): crosses as it is


def _holds(t: DuckDBPyType, ids: tuple[str, ...]) -> bool:
    if t.id in ids:
        return True
    if t.id not in ("list", "array", "struct", "map", "union"):
        return False
    return any(_holds(m, ids) for _, m in t.children if not isinstance(m, int | list))


@dataclass(frozen=True, slots=True)
class Carry:
    """How a DuckDB model's columns cross Arrow intact: ``as_text`` (column -> its DuckDB type)
    are read as their text (:data:`_AS_TEXT`) and cast back to their type on arrival, so the
    staged model holds the warehouse's values; ``retyped`` (column -> its DuckDB type) hold
    JSON at some depth, which the Arrow copy makes text (a `JSON[]` a `VARCHAR[]`): read as
    they are and cast back, so the mapping knows a JSON value from text (`auto` sends the
    value it holds). Every other column crosses as it is, at no cost."""

    as_text: dict[str, str] = field(default_factory=dict)
    retyped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, native: dict[str, str]) -> Carry:
        as_text = {name: t for name, t in native.items() if _holds_any(t, _AS_TEXT)}
        retyped = {name: t for name, t in native.items() if name not in as_text and holds_json(t)}
        return cls(as_text, retyped)

    @property
    def types(self) -> dict[str, str]:
        """Column -> the DuckDB type it is staged as, for the columns this carry casts back."""
        return {**self.as_text, **self.retyped}

    def read(self, relation: str) -> str:
        """SQL reading ``relation`` (a relation of the model's columns, in its own types) as
        it crosses Arrow."""
        if not self.as_text:
            return f"select * from {relation}"
        texts = ", ".join(f"{q(name)}::varchar as {q(name)}" for name in self.as_text)
        return f"select * replace ({texts}) from {relation}"

    def load(self, relation: str = "_model_reader") -> str:
        """SQL reading ``relation`` (what :meth:`read` gave) back in the model's types."""
        if not self.types:
            return f"select * from {relation}"
        casts = ", ".join(f"{q(name)}::{t} as {q(name)}" for name, t in self.types.items())
        return f"select * replace ({casts}) from {relation}"

    def only(self, names: Iterable[str]) -> Carry:
        """This carry of the columns ``names`` (those a step kept)."""
        kept = set(names)
        return Carry(
            {n: t for n, t in self.as_text.items() if n in kept},
            {n: t for n, t in self.retyped.items() if n in kept},
        )


def read_as_text(source: Source, sql: str) -> pa.RecordBatchReader:
    """``sql``'s rows from ``source``, each scalar column whose Arrow export would change its
    values (a UHUGEINT of 2^127 or more, a HUGEINT of -2^127, see :data:`_AS_TEXT`) read as
    its text: the identity graph reads its identifiers so, the exact digits the syncs send.
    Nested columns, and every column of another warehouse, are read as they are."""
    carry = Carry.of(model_types(source, sql) or {})
    scalar = {n: t for n, t in carry.as_text.items() if _holds_any(t, _AS_TEXT) and _scalar(t)}
    if not scalar:
        return source.read(sql)
    return source.read(Carry(scalar).read(_subquery(sql) + " __model"))


def _scalar(col_type: str) -> bool:
    try:
        return duckdb.sqltype(col_type).id in _AS_TEXT
    except duckdb.Error:
        return False


def model_types(source: Source, sql: str) -> dict[str, str] | None:
    """A DuckDB model's own column types, or None for another source or a model that does not
    describe as a subquery (the read reports a broken model's error itself)."""
    if not isinstance(source, DuckDBSource):
        return None
    try:
        return source.column_types(f"select * from {_subquery(sql)}")
    except SourceError:
        return None


def staged_types(
    con: duckdb.DuckDBPyConnection, schema: pa.Schema, carry: Carry | None = None
) -> dict[str, str]:
    """Column name -> the DuckDB type a model of Arrow ``schema`` is staged as: the type
    DuckDB reads each Arrow type as, or the model's own for the columns ``carry`` casts
    back."""
    # not `schema.empty_table()`, which pyarrow cannot build for a union
    with registered(con, "_model_schema", pa.Table.from_batches([], schema)):
        columns = {row[0]: row[1] for row in con.execute("describe _model_schema").fetchall()}
    return {**columns, **(carry.types if carry else {})}


def _subquery(sql: str) -> str:
    """A model's SQL nested as a subquery: its last `;` dropped (comments after it too), and
    the closing parenthesis on its own line so a trailing `-- comment` does not swallow it."""
    return "(\n" + strip_sql(sql) + "\n)"


def _round_trip(native: str) -> str:
    return "VARCHAR" if native.startswith("ENUM(") else _ROUND_TRIP.get(native, native)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _quotes_model(
    method: Callable[Concatenate[InPlace, _P], _R],
) -> Callable[Concatenate[InPlace, _P], _R]:
    """An :class:`InPlace` read whose failure quotes the model's SQL (:func:`quoting_model`)."""

    @functools.wraps(method)
    def read(self: InPlace, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with quoting_model(self.sql):
            return method(self, *args, **kwargs)

    return read


class InPlace:
    """A DuckDB model keyed where it lives, so a run copies only the rows it has to map.

    :func:`stage` copies the whole model into the state database before the diff, even when
    1% of it changed (0.3-0.7 s at 1M x 22 columns). When the source is DuckDB too, the
    mapping's key and row hash can run in the source itself (:meth:`key`); after the diff,
    only the rows whose (key, hash) the snapshot lacks are copied (:meth:`stage_todo`). Both
    read the model through ``relation``: its columns cast to the types the Arrow round trip of
    :func:`stage` gives (except a column :class:`Carry` brings back in its own type), so keys,
    hashes and payloads are the same as a staged run's.
    """

    def __init__(
        self,
        source: DuckDBSource,
        sql: str,
        *,
        native: dict[str, str],
        columns: dict[str, str],
        sync: str,
    ) -> None:
        self.source = source
        self.sql = sql
        self.native = native
        self.columns = columns
        self.sync = sync
        self.carry = Carry.of(native)
        items = [
            q(name) if kept == native[name] else f"{q(name)}::{kept} as {q(name)}"
            for name, kept in columns.items()
        ]
        self.relation = f"(select {', '.join(items)} from {_subquery(sql)} __model)"

    @classmethod
    def open(
        cls, con: duckdb.DuckDBPyConnection, source: Source, sql: str, *, sync: str
    ) -> InPlace | None:
        """The model read in place, or None when it must be staged (not a DuckDB source, SQL
        that does not nest as a subquery, two columns of one name, or a column whose type the
        round trip changes in a way a cast does not reproduce)."""
        if not isinstance(source, DuckDBSource):
            return None
        try:
            # nested, DuckDB renames a second `plan` to `plan_1`: the names the model gives
            names = source.schema_of(sql).names
            schema = source.schema_of(f"select * from {_subquery(sql)}")
            native = source.column_types(f"select * from {_subquery(sql)}")
        except SourceError:
            # a broken model, or one that runs alone but not nested: the copy reads it as
            # written and reports its own error
            return None
        if len({name.lower() for name in names}) < len(names) or any(
            name.startswith("__") for name in names
        ):
            return None  # two columns of one name, or one of Lockgate's: `stage` refuses it
        columns = staged_types(con, schema, Carry.of(native))
        if list(columns) != list(native):
            return None
        if any(_round_trip(native[name]) != kept for name, kept in columns.items()):
            return None
        return cls(source, sql, native=native, columns=columns, sync=sync)

    @_quotes_model
    def key(self, con: duckdb.DuckDBPyConnection, compiled: Compiled, advance: Advance) -> None:
        """The temp table ``keyed`` (``__rid`` null, ``k``, ``src_h``) of every model row."""
        reader = self.source.read(compiled.keyed_select(self.relation))
        _load(
            con,
            reader,
            advance,
            "create or replace temp table keyed as "
            "select null::bigint as __rid, k, src_h from _model_reader",
            sync=self.sync,
        )

    @_quotes_model
    def stage_todo(self, con: duckdb.DuckDBPyConnection, compiled: Compiled, todo: int) -> bool:
        """Copy the rows of the temp table ``todo`` (``k``, ``src_h``) into the temp table
        ``model``. False when the model did not give them all back: it read differently the
        second time (a column computed from `now()` or `random()`), so the caller copies it
        whole (:meth:`stage_all`) instead of missing rows."""
        hashes = con.sql("select distinct src_h as h from todo").to_arrow_table()
        reader = self.source.read(
            self.carry.read(
                f"(select * from {self.relation} where {compiled.src_h} in (select h from _todo))"
            ),
            tables={"_todo": hashes},
        )
        _load(
            con,
            reader,
            lambda _: None,
            f"create or replace temp table model as {self.carry.load()}",
            sync=self.sync,
        )
        # Read back as many rows as the diff chose: those rows (a model that reads the same
        # gives each of them again, its hash being one asked for), so nothing to filter. The
        # filter below maps the rows again to key them, ~20-50 ms at 1M rows (10,000 read back,
        # its 12 KB of SQL bound once more). Where the model reads differently, a row read back
        # has the mapped and key columns of a chosen row (its hash covers both), so its key and
        # hash are a chosen pair too: the filter would keep it all the same.
        if int(con.execute("select count(*) from model").fetchall()[0][0]) == todo:
            return True
        # only the rows whose (key, hash) the diff chose: a row of another key can share a hash
        run_sql(
            con,
            f"""
            create or replace temp table model_todo as
            select * from model where rowid in (
                select c.__rid from ({compiled.select}) c
                semi join todo t on t.k = c.k and t.src_h = c.src_h);
            drop table model;
            alter table model_todo rename to model;
            """,
        )
        return int(con.execute("select count(*) from model").fetchall()[0][0]) == todo

    @property
    def row_hash(self) -> str:
        """SQL for the hash of all of a row's columns (over ``relation``): how a row keyed in
        the source is found again by a second read."""
        return f"hash({', '.join(q(name) for name in self.columns)})"

    @_quotes_model
    def key_events(
        self,
        con: duckdb.DuckDBPyConnection,
        compiled: Compiled,
        ledger: str,
        advance: Advance,
        added: dict[str, str] | None = None,
    ) -> None:
        """The temp table ``ev_keyed`` (``k``, ``h``, ``done``) of every model row of an events
        sync: its event key as ``compiled`` computes it, the hash of all its columns
        (:attr:`row_hash`, to find it again), and whether the table ``ledger`` holds the key.
        DuckDB computes only those two expressions of the mapping in the source.

        ``added`` (column -> type): columns ``compiled`` reads that the model lacks, read as
        nulls of that type. The identity graph adds them to the rows it keys (the Customer.io
        identifiers); an event's key is of the model's own columns, so they only bind."""
        relation = self.relation
        if added:
            nulls = ", ".join(f"null::{kind} as {q(name)}" for name, kind in added.items())
            relation = f"(select *, {nulls} from {relation})"
        keys = f"select k, __rid as h from ({compiled.over(relation, self.row_hash)})"
        _load(
            con,
            self.source.read(keys),
            advance,
            "create or replace temp table ev_keyed as "
            f"select k, h, k in (select k from {ledger}) as done from _model_reader",
            sync=self.sync,
        )

    def stage_rows(
        self, con: duckdb.DuckDBPyConnection, hashes: pa.Table, advance: Advance
    ) -> None:
        """Copy into the temp table ``model`` the rows whose :attr:`row_hash` the column ``h``
        of ``hashes`` holds (every copy of each), read in the model's own types."""
        # none: DuckDB reads no row of `where false`, so nothing new costs no scan
        wanted = "__row in (select h from _hashes)" if hashes.num_rows else "false"
        self._copy_rows(con, wanted, {"_hashes": hashes}, advance)

    def stage_named(
        self,
        con: duckdb.DuckDBPyConnection,
        compiled: Compiled,
        named: str,
        values: pa.Table,
        advance: Advance,
    ) -> None:
        """Copy into the temp table ``model`` the rows a run of named records (`--only`) may
        need: those whose ``k`` or ``ident`` (as ``compiled`` computes them) ``named`` (SQL
        reading the table ``only_values``, here ``values``) holds true for. The source finds
        them, so a few rows are copied, not the model. A row is found again by the hash of all
        its columns: a row equal to a named one comes too, and the caller keeps exactly the
        named rows."""
        rows = f"select __rid from ({compiled.over(self.relation, self.row_hash)}) where {named}"
        self._copy_rows(con, f"__row in ({rows})", {"only_values": values}, advance)

    @_quotes_model
    def _copy_rows(
        self,
        con: duckdb.DuckDBPyConnection,
        where: str,
        tables: dict[str, pa.Table],
        advance: Advance,
    ) -> None:
        """Copy into the temp table ``model`` the model's rows, in their own types, for which
        ``where`` (SQL over the row's hash ``__row`` and the Arrow ``tables`` the source is
        given) holds."""
        reader = self.source.read(
            self.carry.read(
                f"(select * exclude (__row) from (select *, {self.row_hash} as __row from "
                f"{self.relation}) where {where})"
            ),
            tables=tables,
        )
        _load(
            con,
            reader,
            advance,
            f"create or replace temp table model as {self.carry.load()}",
            sync=self.sync,
        )

    def stage_all(self, con: duckdb.DuckDBPyConnection, advance: Advance) -> None:
        """Copy the whole model into the temp table ``model``, as :func:`stage` does."""
        stage(con, self.source, self.sql, sync=self.sync, advance=advance, native=self.native)
