"""What feeds the identity graph, as one key: a run whose key matches the saved graph's reuses it.

Stitching re-reads every identity source and rebuilds the graph; on unchanged inputs it gives
back the graph it started from (``resolve`` is idempotent: tests/identity/test_reuse.py). So a
run first asks each warehouse for a fingerprint of every identity source and operator table,
computed where the rows live (nothing is copied out), and hashes them with the identity
config and the resolver's version. When that key is the one recorded with the saved graph,
the run takes the saved graph's profiles as they are (:meth:`IdentityResult.reused`).

The fingerprint of a query's rows is its column names and types, its row count, and the sums
(as 128-bit integers, not wrapped) of the two 64-bit halves of each row's MD5: an
order-independent 128-bit hash of the rows as a multiset, in which a change of a value, a
row added, removed or repeated changes the key (two different inputs share one only by an
MD5-sum coincidence, far less likely than a disk error). Each row is encoded
unambiguously: every value as its text prefixed with its length, `~` for a null.

DuckDB and Postgres compute it. Postgres renders each value with `::text` on a session of
its own whose settings fix the text of floats (`extra_float_digits = 3`: every bit) and bytes
(hex), and takes each half of `md5()` as a signed `bigint` summed as `numeric`. Its
`TimeZone`, `DateStyle` and `IntervalStyle` stay the database's (and role's), as the read
that follows has them, since a query's rows can depend on them (`created_at::date`); they are
part of the fingerprint. Redshift (no `bit(64)` cast), Snowflake and BigQuery are not
fingerprinted yet: their text of a float or a timestamp can drop digits under the account's
output formats, and a fingerprint that does not see a change must never say "unchanged".

Anything that cannot be fingerprinted gives no key, and the run resolves in full: a source
that is not DuckDB or Postgres, a query calling a function whose value changes between two reads
(`random()`, `now()`, ...), a failed fingerprint query. A full run records its key only when
the fingerprints taken before and after it read the sources agree (nothing changed while it
read) and it read as many rows of each as they counted (a table emptied and refilled while it
read, by a rebuild that is not one transaction, can agree before and after), and only once
the graph and its analyst tables are written. On Postgres the fingerprints and the reads of
one warehouse share one `REPEATABLE READ` snapshot (:meth:`PostgresSource.snapshot`, opened
by :class:`lockgate.sync.resolve.Warehouses`), so a writer that commits between them, even a
change undone before the run ends, cannot make the key describe other rows than the graph
was stitched from; the second fingerprint is taken only for a warehouse read outside one
(DuckDB).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

import lockgate
from lockgate.identity.engine import RESOLVER_VERSION
from lockgate.project.identity import IdentityConfig
from lockgate.project.loader import Project
from lockgate.sources.base import Source, query_error, strip_sql
from lockgate.sources.duckdb import DuckDBSource
from lockgate.sources.postgres import PostgresSource, RedshiftSource
from lockgate.sync.mapping import same_zone

if TYPE_CHECKING:
    from lockgate.sync.resolve import Warehouses

#: next to the saved graph (`identity/`): the key of the inputs it was stitched from
INPUTS_FILE = "identity.inputs.json"

#: functions whose value differs between two reads of the same rows
_VOLATILE = re.compile(
    r"\b(?:random|gen_random_uuid|uuid|uuidv4|uuidv7|now|today|get_current_time|"
    r"get_current_timestamp|transaction_timestamp|statement_timestamp|clock_timestamp|"
    r"nextval|currval|setseed|timeofday|txid_current|pg_current_xact_id|pg_backend_pid)\s*\(|\b(?:current_timestamp|current_date|current_time|"
    r"localtimestamp|localtime)\b",
    re.IGNORECASE,
)

#: (U)HUGEINT's text form costs ~20 µs a value in DuckDB: these go as their two 64-bit halves
_WIDE = ("HUGEINT", "UHUGEINT")


def volatile(sql: str) -> bool:
    """Whether ``sql`` calls a function whose value changes from one read to the next."""
    return _VOLATILE.search(sql) is not None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(name: str, type_name: str) -> str:
    column = _quote(name)
    if type_name in _WIDE:
        low = "::uhugeint" if type_name == "UHUGEINT" else "::hugeint"
        high = "ubigint" if type_name == "UHUGEINT" else "bigint"
        value = (
            f"(({column} >> 64)::{high}::varchar || ',' || "
            f"({column} & 18446744073709551615{low})::ubigint::varchar)"
        )
    else:
        value = f"{column}::varchar"
    return f"coalesce(length({value})::varchar || ':' || {value}, '~')"


def fingerprint(source: Source, sql: str) -> str | None:
    """The fingerprint of ``sql``'s rows, computed where they live (module docstring), or
    None for a warehouse that cannot compute one."""
    found = fingerprints(source, [sql])
    return None if found is None else found[0]


def fingerprints(source: Source, queries: list[str]) -> list[str] | None:
    """:func:`fingerprint` of each query, on one session; None for a warehouse that cannot."""
    if isinstance(source, DuckDBSource):
        return _duckdb_fingerprints(source, queries)
    if isinstance(source, PostgresSource) and not isinstance(source, RedshiftSource):
        return _postgres_fingerprints(source, queries)
    return None


def _duckdb_fingerprints(source: DuckDBSource, queries: list[str]) -> list[str]:
    """:func:`fingerprints` on DuckDB: each query's columns, then every query's sums in one
    statement (a run of the identity graph asks for five or more: one round trip each
    otherwise)."""
    if not queries:
        return []
    wrapped = ["(\n" + strip_sql(sql) + "\n)" for sql in queries]
    described = source.queries([f"describe select * from {query}" for query in wrapped])
    columns = [[(r[0], r[1]) for r in rows] for rows in described]
    sums = []
    for i, (query, cols) in enumerate(zip(wrapped, columns, strict=True)):
        row = "concat(" + ", ".join(_text(n, t) for n, t in cols) + ")" if cols else "''"
        sums.append(
            f"""
            select {i} as i, count(*) as n, coalesce(sum((m >> 64)::ubigint), 0)::varchar,
                   coalesce(sum((m & 18446744073709551615::uhugeint)::ubigint), 0)::varchar
            from (select md5_number({row}) as m from {query} __rows)
            """
        )
    found = {row[0]: row[1:] for row in source.queries([" union all ".join(sums)])[0]}
    return [json.dumps([cols, *found[i]]) for i, cols in enumerate(columns)]


#: fixed for the fingerprint's own session: every bit of a float's text (also inside arrays
#: and JSON), bytes in hex. Neither changes which rows a query returns or their values, only
#: how a value is spelt
_POSTGRES_SETTINGS = (
    "set extra_float_digits = 3",
    "set bytea_output = 'hex'",
)

#: the settings a source's `sql:` is read under (the database's and role's), recorded in the
#: fingerprint before the two above are set: a query's rows can depend on them (`created_at::date`
#: of a `timestamptz` in the zone, `score::text`), so a change to one stitches again. The zone
#: and the styles are left as they are (the fingerprint is taken in them, as the read is; each
#: spells a value one way: a time's text keeps its offset)
_POSTGRES_READ_SETTINGS = (
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "extra_float_digits",
    "bytea_output",
)


def _postgres_text(name: str) -> str:
    value = f"{_quote(name)}::text"
    return f"coalesce(length({value})::text || ':' || {value}, '~')"


def _postgres_fingerprints(source: PostgresSource, queries: list[str]) -> list[str]:
    # a session whose settings go with it: in the source's snapshot, if one is open (the
    # reads that follow see the rows fingerprinted), else a connection of its own
    with source.session() as conn:
        cursor = conn.cursor()
        sql = ""
        try:
            sql = "select " + ", ".join(f"current_setting('{n}')" for n in _POSTGRES_READ_SETTINGS)
            cursor.execute(sql)
            read_as = list(cursor.fetchall()[0])
            for setting in _POSTGRES_SETTINGS:
                cursor.execute(setting)
            found = []
            for sql in queries:
                found.append(_postgres_fingerprint(cursor, sql, read_as))
            return found
        except source._errors() as exc:
            raise query_error(source.who, sql, exc) from exc
        finally:
            cursor.close()


def _postgres_fingerprint(cursor: Any, sql: str, read_as: list[str]) -> str:
    query = "(\n" + strip_sql(sql) + "\n)"
    cursor.execute(f"select * from {query} __rows limit 0")
    fields = cursor.fetch_arrow_table().schema
    # the server's type name (and a numeric's `typmod`: `numeric(12, 2)`) beside Arrow's
    columns = [
        [f.name, str(f.type), *(v.decode() for k, v in sorted(meta.items()) if b"typ" in k)]
        for f in fields
        for meta in [f.metadata or {}]
    ]
    names = [f.name for f in fields]
    row = "concat(" + ", ".join(_postgres_text(n) for n in names) + ")" if names else "''"
    # each half of the MD5 as a signed bigint; their sums as numeric do not wrap
    half = "coalesce(sum(('x' || substr(h, {}, 16))::bit(64)::bigint::numeric), 0)::text"
    cursor.execute(
        f"select count(*)::text, {half.format(1)}, {half.format(17)} "
        f"from (select md5({row}) as h from {query} __rows) __hashed"
    )
    n, high, low = cursor.fetchall()[0]
    return json.dumps([columns, n, high, low, read_as])


class Inputs(NamedTuple):
    """What :func:`inputs` found: the key, and the rows each input held when fingerprinted."""

    key: str
    #: `source:<name>`, `blocked_values_table`, `overrides_table` -> its row count
    rows: dict[str, int]
    #: every input was fingerprinted in its warehouse's open snapshot (Postgres,
    #: :class:`lockgate.sync.resolve.Warehouses`): the reads of the same warehouses see the
    #: rows fingerprinted, and need no second fingerprint to tell
    in_snapshot: bool = False

    def read_as(self, sources: dict[str, pa.Table], *operator: pa.Table | None) -> bool:
        """Whether a read of the identity sources (and the operator's tables, in the order of
        :data:`OPERATOR_TABLES`) got as many rows of each as its fingerprint counted. The
        fingerprints taken before and after a read can agree while the read between them
        saw other rows (a table emptied and refilled by a rebuild that is not one
        transaction): such a graph is never recorded as the graph of the rows fingerprinted."""
        got = {f"source:{name}": table.num_rows for name, table in sources.items()}
        got.update(
            (what, table.num_rows)
            for what, table in zip(OPERATOR_TABLES, operator, strict=True)
            if table is not None
        )
        return got == self.rows


#: the operator's tables, in the order `read_operator_tables` returns them
OPERATOR_TABLES = ("blocked_values_table", "overrides_table")


def inputs_key(
    project: Project, config: IdentityConfig, warehouses: Warehouses | None = None
) -> str | None:
    """The key of everything that feeds the graph, or None when some of it cannot be
    fingerprinted (the run then resolves in full)."""
    found = inputs(project, config, warehouses)
    return None if found is None else found.key


def inputs(
    project: Project, config: IdentityConfig, warehouses: Warehouses | None = None
) -> Inputs | None:
    """:func:`inputs_key` and the rows of each input it counted, or None when some of it
    cannot be fingerprinted. ``warehouses``: the connections the run then reads the inputs
    through (a Postgres one in the snapshot the fingerprints are taken in); by default, its
    own."""
    from lockgate.sync.resolve import Warehouses

    if warehouses is None:
        with Warehouses(project) as own:
            return inputs(project, config, own)
    return _inputs(project, config, warehouses)


def _inputs(project: Project, config: IdentityConfig, warehouses: Warehouses) -> Inputs | None:
    from lockgate.sync.resolve import identity_queries, identity_warehouse

    wanted: dict[str, list[tuple[str, str]]] = {}
    #: the zone each identity source's naive `observed_at` is read in (`resolve.observed_in_zone`)
    zones: dict[str, str] = {}
    for name, specs in identity_queries(project, config).items():
        zone = project.config.sources[name].timezone
        for spec, sql in specs:
            if spec.sql and volatile(spec.sql):
                return None
            wanted.setdefault(name, []).append((f"source:{spec.name}", sql))
            if spec.observed_at and zone is not None and not same_zone(None, zone):
                zones[spec.name] = zone
    for what, table_name in zip(
        OPERATOR_TABLES,
        (config.blocked_values_table, config.rules.overrides_table),
        strict=True,
    ):
        if table_name:
            warehouse = identity_warehouse(project, config)
            wanted.setdefault(warehouse, []).append((what, f"SELECT * FROM {table_name}"))
    parts: dict[str, str] = {}
    in_snapshot = True
    for name, queries in wanted.items():
        if project.config.sources[name].type not in ("duckdb", "postgres"):
            return None
        try:
            source = warehouses.get(name)
        except lockgate.LockgateError:
            return None  # the read that follows reports it
        try:
            found = fingerprints(source, [sql for _, sql in queries])
            if found is None:
                return None
            parts.update(zip([what for what, _ in queries], found, strict=True))
        except lockgate.LockgateError:
            return None  # the read that follows reports what is wrong
        in_snapshot = in_snapshot and isinstance(source, PostgresSource) and source.in_snapshot
    key = {
        "lockgate": lockgate.__version__,
        "resolver": RESOLVER_VERSION,
        "libraries": libraries(),
        "config": config.model_dump(mode="json"),
        "inputs": parts,
    }
    if zones:  # a key without them stays the key it was
        key["observed_in"] = zones
    rows = {what: int(json.loads(part)[1]) for what, part in parts.items()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Inputs(digest, rows, in_snapshot)


#: the libraries that read the identity sources and stitch them: an upgrade of one can read
#: a value otherwise (ADBC's conversion of a Postgres type) or normalise it otherwise
_LIBRARIES = ("duckdb", "pyarrow", "numpy", "adbc-driver-postgresql")


def libraries() -> dict[str, str | None]:
    """The installed version of each of :data:`_LIBRARIES` (None when not installed)."""
    import duckdb
    import numpy as np

    found: dict[str, str | None] = {
        "duckdb": duckdb.__version__,
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
    }
    for name in _LIBRARIES:
        if name not in found:
            try:
                found[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                found[name] = None
    return found


def graph_id(batch: int, profiles: pa.Table) -> str:
    """Which saved graph a key goes with: its batch and the run that stitched it."""
    run = profiles["run_id"][0].as_py() if profiles.num_rows else ""
    return f"{batch}:{run}"


def recorded(state_dir: Path, graph: str) -> str | None:
    """The inputs key recorded with the saved graph ``graph`` (:func:`graph_id`), if any."""
    try:
        data = json.loads((state_dir / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("graph") != graph:
        return None
    key = data.get("key")
    return key if isinstance(key, str) else None


def forget(state_dir: Path) -> None:
    """Drop the recorded key: done before the graph is replaced, so a run stopped between
    the two never pairs a key with a graph it does not describe."""
    (state_dir / INPUTS_FILE).unlink(missing_ok=True)


def record(state_dir: Path, graph: str, key: str) -> None:
    """Record ``key`` as the inputs of the saved graph ``graph`` (:func:`graph_id`)."""
    path = state_dir / INPUTS_FILE
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(json.dumps({"graph": graph, "key": key}))
    fresh.replace(path)
