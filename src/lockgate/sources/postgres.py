"""Postgres through Apache Arrow ADBC, and Amazon Redshift through psycopg 3.

Postgres results stream as Arrow straight from the server's binary COPY format
(`adbc-driver-postgresql`): no Python object per value, and about 4.6x faster than a psycopg
server-side cursor on a million rows (see the commit that added this module). Redshift cannot
`COPY ... TO STDOUT`, so with `redshift: true` rows come through a psycopg server-side cursor
(`DECLARE ... CURSOR`, `FETCH` ``batch_rows`` at a time) and are converted to Arrow per batch.
Either way memory holds one batch, never the whole result.

Both paths give the same Arrow types: `numeric(p,s)` → `decimal128(p,s)` (bare `numeric`, or
one wider than 38 digits → `float64`, as DuckDB's postgres extension does), `timestamptz` →
`timestamp[us, UTC]`, `json`/`jsonb` → the canonical `arrow.json` extension (the JSON text,
which DuckDB stages as `JSON`, so a field tells a JSON value from text), `uuid` → the canonical
`arrow.uuid` extension, `money` → `decimal128(19,s)`, `interval` → `month_day_nano_interval`,
±infinity dates and timestamps → the extreme values DuckDB reads as ±infinity, arrays →
`list<...>` (of one dimension: a 2-D array stops the read), and types Arrow lacks (`inet`,
`timetz`, ranges, records) → `string`, the server's own text for them. A `numeric(p,s)` `NaN`,
which no decimal holds, stops the read naming the column, unless the caller asks for it as a
null and a flag column beside it (`flag_nan`, as a sync's extract does: its row is rejected).

Example::

    source = PostgresSource("postgresql://app@db:5432/warehouse")
    schema = source.schema_of("select * from users")
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import pyarrow as pa

from lockgate.errors import MissingDependencyError, SourceError
from lockgate.project.models import resolve_env
from lockgate.sources.base import (
    DEFAULT_BATCH_ROWS,
    JSON,
    NAN_OF,
    UTC_TS,
    ColumnInfo,
    TableInfo,
    check_batch_rows,
    db_message,
    label,
    limit_zero,
    nan_flag,
    query_error,
    quote_ident,
    quote_literal,
    split_table,
    sql_name,
    stream,
    strip_sql,
)

if TYPE_CHECKING:
    from lockgate.project.models import PostgresSourceConfig

#: a model's error naming a table that does not exist: `relation "analytics.users" does ...`
_MISSING_RELATION = re.compile(r'relation "([^"]+)" does not exist')
_SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema', 'pg_toast')"


def server_of(url: str) -> str:
    """``host:port`` of a connection URL, for hints (never the user or password)."""
    try:
        parts = urlsplit(url)
        if parts.hostname:
            return f"{parts.hostname}:{parts.port or 5432}"
    except ValueError:
        pass
    return "the configured host"


def _secrets_in(url: str) -> list[str]:
    """What a malformed URL's password may look like once a driver quotes it back: the URL
    itself, the text between the user's `:` and the host's `@` (an unescaped `@` inside the
    password included), and each `@`-separated part of it."""
    rest = url.split("//", 1)[1] if "//" in url else url.split(":", 1)[-1]
    userinfo = rest.rpartition("@")[0]
    password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
    found = [url, password, *password.split("@")]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def connect_error(who: str, url: str, exc: BaseException) -> SourceError:
    server = server_of(url)
    message = db_message(exc)
    for secret in _secrets_in(url):
        message = message.replace(secret, "***")
    hint = (
        f"is the server running at {server}, and are the user, password and database in "
        "`url` right?"
    )
    if server == "the configured host":
        hint = (
            "is `url` a URL like `postgresql://user:password@host:5432/database` (a `@` or "
            "`:` in the password written as `%40`, `%3A`)?"
        )
    return SourceError(f"{who}: cannot connect to `{server}`: {message}", hint=hint)


# --------------------------------------------------------------------------- type mapping


def _numeric_type(precision: int | None, scale: int | None) -> pa.DataType:
    if not precision or precision > 38:
        # DuckDB, which maps every model, reads no `decimal256`: a wider numeric failed the
        # whole run. As a float it goes out as the same number a decimal would (`::double`).
        return pa.float64()
    return pa.decimal128(precision, scale or 0)


def _unpad(array: pa.Array) -> pa.Array:
    """A `char(n)` column without the trailing spaces Postgres pads it with (its own
    comparisons and `::text` ignore them; DuckDB and Snowflake never add them)."""
    import pyarrow.compute as pc

    return pc.utf8_rtrim(array, characters=" ")


def _is_bpchar(field: pa.Field) -> bool:
    return (field.metadata or {}).get(b"POSTGRESQL:type") == b"bpchar"


def _is_money(field: pa.Field) -> bool:
    return (field.metadata or {}).get(b"POSTGRESQL:type") in (b"money", b"_money")


def _adbc_target(field: pa.Field, money_scale: int = 2) -> pa.DataType:
    """The Arrow type Lockgate yields for a column the ADBC driver produced. ``money`` comes
    from ADBC as an integer count of cents (of ``money_scale`` decimal places): a decimal."""
    kind = field.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.list_(_adbc_target(kind.value_field, money_scale))
    if _is_money(field):
        return pa.decimal128(19, money_scale)
    if pa.types.is_struct(kind):
        return pa.string()  # a `record`, which `read` casts to text
    if not isinstance(kind, pa.BaseExtensionType):
        return kind
    name = kind.extension_name
    if name == "arrow.json":
        return JSON
    if name == "arrow.uuid":
        return kind
    if name == "arrow.opaque" and getattr(kind, "type_name", "") == "citext":
        return pa.string()  # its binary wire form is the text itself
    if name == "arrow.opaque" and getattr(kind, "type_name", "") == "numeric":
        typmod = int((field.metadata or {}).get(b"POSTGRESQL:typmod", b"-1"))
        if typmod < 4:  # no declared precision
            return pa.float64()
        typmod -= 4
        return _numeric_type((typmod >> 16) & 0xFFFF, typmod & 0xFFFF)
    if name == "arrow.opaque":
        return pa.string()  # other Postgres-only types (inet, ...): `read` casts them to text
    return kind.storage_type


def _is_numeric(field: pa.Field) -> bool:
    """Whether ADBC read ``field`` as a Postgres `numeric` (not an array of them)."""
    kind = field.type
    if not isinstance(kind, pa.BaseExtensionType) or kind.extension_name != "arrow.opaque":
        return False
    return bool(getattr(kind, "type_name", "") == "numeric")


def nan_flags(columns: list[str]) -> list[pa.Field]:
    """The NaN flag columns of a read with `flag_nan` (see
    :data:`~lockgate.sources.base.NAN_FLAG_PREFIX`): one boolean per `numeric(p,s)` column."""
    return [
        pa.field(nan_flag(column), pa.bool_(), metadata={NAN_OF: column.encode()})
        for column in columns
    ]


def _without_nan(array: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """ADBC's text of a `numeric` column with each `NaN` made null, and a boolean array true
    where one was; None when it holds no `NaN` (another value failed)."""
    import pyarrow.compute as pc

    text = array.storage if isinstance(array, pa.ExtensionArray) else array
    nan = pc.equal(pc.utf8_lower(text), "nan")
    if not pc.any(nan).as_py():
        return None
    return pc.if_else(nan, pa.scalar(None, text.type), text), nan


def _text_cast(field: pa.Field, column: str) -> str | None:
    """SQL that makes ``column`` its text when ADBC would give it as its binary wire form
    (`inet`, `timetz`, ranges, `bit`, `xml`, ...: types Arrow has no equivalent for) or cannot
    read it (a `record`); an array of one becomes a `text[]`. The text is the type's own
    output, as `psql` and the Redshift path show it. None for every other column."""
    kind = field.type
    if pa.types.is_list(kind):
        item = _text_cast(kind.value_field, "e")
        if item is None:
            return None
        if item == "e::text":
            return f"{column}::text[]"
        return (
            f"case when {column} is null then null else array(select {item} from "
            f"unnest({column}) with ordinality as u(e, n) order by n) end"
        )
    if pa.types.is_struct(kind):
        return f"{column}::text"
    if not isinstance(kind, pa.BaseExtensionType) or kind.extension_name != "arrow.opaque":
        return None
    type_name = getattr(kind, "type_name", "")
    if type_name in ("citext", "numeric"):
        return None
    if type_name == "inet":  # `inet::text` always adds the netmask (`1.1.1.1/32`)
        return f"abbrev({column})"
    return f"{column}::text"


#: Postgres dates and timestamps count from 2000-01-01; ADBC shifts them to 1970 in 32/64-bit
#: integers, so `infinity` (the largest integer) wraps to a date in 5877612 BC and `-infinity`
#: lands next to it. Nothing real lies below Postgres's first day (4714-11-24 BC).
_PG_FIRST = {"date32": -2_440_588, "timestamp": -210_866_803_200_000_000}
_PG_MINUS_INFINITY = {"date32": -(2**31) + 10_957, "timestamp": -(2**63) + 946_684_800_000_000}
#: how DuckDB (and Arrow readers generally) spell ±infinity: the extreme values
_INFINITY = {"date32": 2**31 - 1, "timestamp": 2**63 - 1}


def _infinities(array: pa.Array) -> pa.Array:
    """A date or timestamp column with ADBC's wrapped ±infinity made DuckDB's ±infinity."""
    import pyarrow.compute as pc

    kind = "date32" if pa.types.is_date32(array.type) else "timestamp"
    raw = array.cast(pa.int32() if kind == "date32" else pa.int64())
    wrapped = pc.less(raw, _PG_FIRST[kind])
    if not pc.any(wrapped).as_py():
        return array
    infinity = pa.scalar(_INFINITY[kind], raw.type)
    minus = pc.equal(raw, _PG_MINUS_INFINITY[kind])
    value = pc.if_else(minus, pc.negate(infinity), infinity)
    return pc.if_else(wrapped, value, raw).cast(array.type)


def _adbc_convert(array: pa.Array, target: pa.DataType) -> pa.Array:
    if isinstance(array, pa.ListArray) and pa.types.is_list(target):
        # before the type check: a `date[]` has its target's type and still its items' infinities
        values = _adbc_convert(array.values, target.value_type)
        return pa.ListArray.from_arrays(array.offsets, values, mask=array.is_null())
    if pa.types.is_date32(array.type) or pa.types.is_timestamp(array.type):
        array = _infinities(array)
    if array.type.equals(target):
        return array
    if pa.types.is_int64(array.type) and pa.types.is_decimal(target):  # money, in cents
        whole = array.cast(pa.decimal128(19, 0))  # the same 128-bit integers, read with a scale
        return pa.Array.from_buffers(target, len(whole), whole.buffers(), offset=whole.offset)
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    return array.cast(target)


def _wrapped(sql: str, width: int, lists: list[int], casts: dict[int, str]) -> str:
    """``sql`` (of ``width`` columns) with the columns at ``casts`` replaced by their SQL (the
    column is `q.cN`) and, after its own columns, the `array_ndims` of each array column at
    the positions ``lists``. ADBC reads a 2-D array `{{1,2},{3,4}}` as `[1,2,3,4]`, and its
    Arrow type is the same as a 1-D array's: the server's count is what tells them apart. The
    columns are renamed by position, so duplicate names do not clash."""
    renamed = ", ".join(f"c{i}" for i in range(width))
    columns = ", ".join(f"{casts[i]} as c{i}" if i in casts else f"q.c{i}" for i in range(width))
    counts = "".join(f", array_ndims(q.c{i}) as n{i}" for i in lists)
    return f"select {columns}{counts} from (\n{strip_sql(sql)}\n) as q({renamed})"


def dimensions_error(who: str, column: str, dimensions: int) -> SourceError:
    """An array column holding arrays of several dimensions, which would be sent flattened."""
    name = sql_name(column)
    return SourceError(
        f"{who}: column `{column}` holds a {dimensions}-dimensional array; Lockgate reads "
        "arrays of one dimension only, and would send `{{1,2},{3,4}}` as [1,2,3,4]",
        hint=f"send it as JSON, which keeps the nesting: `array_to_json({name}) as {name}` "
        "in the model, and `type: json` on the field that reads it",
    )


def _depth(value: Any) -> int:
    """How many arrays deep psycopg's nested lists for one value go (0 for a scalar)."""
    return 1 + max(map(_depth, value), default=0) if isinstance(value, list) else 0


def _values(array: pa.Array) -> list[Any]:
    """An ADBC column's values as Python objects, for an error message (a Postgres `numeric`
    is its text: Arrow would make the `NaN` it cannot hold an error again)."""
    if isinstance(array, pa.ListArray):
        return _values(array.flatten())
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    values: list[Any] = array.to_pylist()
    return values


_SCALARS: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "char": pa.string(),
    "json": JSON,
    "jsonb": JSON,
    "bytea": pa.binary(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    "timestamptz": UTC_TS,
    "interval": pa.month_day_nano_interval(),  # as ADBC: months and days are not seconds
    "uuid": pa.uuid(),
    # an array's items carry no precision: ADBC reads a `numeric[]` as floats too
    "numeric": pa.float64(),
}


def psycopg_type(
    type_name: str | None, precision: int | None, scale: int | None, money_scale: int = 2
) -> pa.DataType:
    """The Arrow type for a column psycopg describes (unknown types become text), the one
    ADBC gives the same Postgres type; ``money_scale`` is `money`'s decimal places."""
    if type_name == "numeric":
        return _numeric_type(precision, scale)
    scalars = {**_SCALARS, "money": pa.decimal128(19, money_scale)}
    if type_name and type_name.startswith("_") and type_name[1:] in scalars:
        return pa.list_(scalars[type_name[1:]])
    return scalars.get(type_name or "", pa.string())


def _to_arrow_value(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_list(kind) and isinstance(value, list):
        return [_to_arrow_value(item, kind.value_type) for item in value]
    if isinstance(value, _Cents):
        return Decimal(value).scaleb(-kind.scale)
    if isinstance(kind, pa.UuidType):
        return value.bytes if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).bytes
    if pa.types.is_floating(kind):
        return float(value)
    if (pa.types.is_string(kind) or isinstance(kind, pa.JsonType)) and not isinstance(value, str):
        return str(value)
    return value


#: A date or timestamp as Postgres writes it in `DateStyle` ISO, of any year (`20241-01-01`,
#: `0044-03-15 12:00:00.5+00 BC`), for the values Python's `datetime` cannot hold
_ISO = re.compile(
    r"(?P<year>\d{4,})-(?P<month>\d\d)-(?P<day>\d\d)"
    r"(?: (?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)(?:\.(?P<fraction>\d{1,6}))?)?"
    r"(?:(?P<sign>[+-])(?P<oh>\d\d)(?::(?P<om>\d\d))?(?::(?P<os>\d\d))?)?(?P<bc> BC)?"
)


def _civil_days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a date of the proleptic Gregorian calendar (year 0 is 1 BC)."""
    year -= month <= 2
    era = year // 400
    of_era = year - era * 400
    of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146_097 + of_era * 365 + of_era // 4 - of_era // 100 + of_year - 719_468


def _iso_units(text: str, kind: str) -> int | None:
    """A date's days (``kind`` `date32`) or a timestamp's microseconds from 1970, as ADBC
    reads them, from its ISO text; None when ``text`` is not one."""
    found = _ISO.fullmatch(text)
    if found is None:
        return None
    part = {k: int(v) for k, v in found.groupdict().items() if v and k not in ("sign", "bc")}
    year = 1 - part["year"] if found["bc"] else part["year"]
    days = _civil_days(year, part["month"], part["day"])
    if kind == "date32":
        return days
    seconds = days * 86_400 + part.get("hour", 0) * 3_600 + part.get("minute", 0) * 60
    seconds += part.get("second", 0)
    offset = part.get("oh", 0) * 3_600 + part.get("om", 0) * 60 + part.get("os", 0)
    seconds -= -offset if found["sign"] == "-" else offset
    return seconds * 10**6 + int((found["fraction"] or "0").ljust(6, "0"))


def _infinite(loader: type[Any], kind: str) -> type[Any]:
    """A psycopg text loader for dates, timestamps or times (``kind`` `date32`, `timestamp`,
    `time64`) that gives the values Python's cannot hold as the integers the ADBC path ends
    with, which Arrow stores as they are: ``infinity`` and ``-infinity`` as :data:`_INFINITY`
    (DuckDB reads them back as its own ±infinity), a year before 1 or after 9999 as its days
    or microseconds from 1970, and a time of `24:00:00` (Postgres and Redshift allow it) as
    its microseconds. psycopg's own loaders refuse them ("date too large"), which failed the
    whole read for one row; every other value is parsed by ``loader`` (psycopg's C one when
    installed)."""
    import psycopg
    from psycopg.adapt import Loader

    infinity = _INFINITY.get(kind, 0)

    class InfinityLoader(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._parse = loader(oid, context).load

        def load(self, data: Any) -> Any:
            if kind != "time64" and data[-8:] == b"infinity":
                return -infinity if data[:1] == b"-" else infinity
            try:
                return self._parse(data)
            except psycopg.DataError:
                text = bytes(data).decode()
                if kind == "time64" and text in ("24:00:00", "24:00:00+00"):
                    return 86_400 * 10**6
                units = None if kind == "time64" else _iso_units(text, kind)
                if units is None:
                    raise
                return units

    return InfinityLoader


#: Postgres's default `IntervalStyle` (`postgres`), which Redshift writes too:
#: `1 year 2 mons 3 days 04:05:06`, `-1 days -00:00:01.5`
_INTERVAL = re.compile(
    r"(?:(?P<years>[+-]?\d+) years? ?)?(?:(?P<months>[+-]?\d+) mons? ?)?"
    r"(?:(?P<days>[+-]?\d+) days? ?)?"
    r"(?:(?P<sign>[+-])?(?P<hours>\d+):(?P<minutes>\d+):(?P<seconds>\d+)(?:\.(?P<fraction>\d+))?)?"
)


class _Cents(int):
    """A `money` value as its whole number of cents; `read` knows the scale."""


def _money_cents(text: str) -> _Cents:
    """A `money`'s text ("$1,234.56", "-$0.05", "1.234,56 €" by `lc_monetary`) as its whole
    number of cents, as ADBC reads it: every locale prints all of the currency's decimal
    places, so the digits are the cents whatever the separators."""
    cents = int("".join(c for c in text if c.isdigit()))
    return _Cents(-cents if "-" in text or "(" in text else cents)


def _interval_parts(text: str) -> tuple[int, int, int]:
    """An `interval`'s text as (months, days, nanoseconds), ADBC's `month_day_nano_interval`.
    psycopg's own loader counts a month as 30 days (a `timedelta`), so `1 year 2 mons` reached
    Customer.io as `10276:05:06` instead of `1 year 2 months`."""
    import psycopg

    found = _INTERVAL.fullmatch(text)
    if found is None:
        raise psycopg.DataError(
            f"cannot read the interval {text!r}: set `IntervalStyle` to `postgres`"
        )
    part = {k: int(v) for k, v in found.groupdict().items() if v and k not in ("sign", "fraction")}
    months = part.get("years", 0) * 12 + part.get("months", 0)
    seconds = part.get("hours", 0) * 3600 + part.get("minutes", 0) * 60 + part.get("seconds", 0)
    nanos = seconds * 10**9 + int((found["fraction"] or "0").ljust(9, "0")[:9])
    return months, part.get("days", 0), -nanos if found["sign"] == "-" else nanos


def _text_loader(parse: Any) -> type[Any]:
    """A psycopg text loader that gives ``parse(text)``."""
    from psycopg.adapt import Loader

    class TextParser(Loader):
        def load(self, data: Any) -> Any:
            return parse(bytes(data).decode())

    return TextParser


def _storage(kind: pa.DataType) -> pa.DataType:
    """``kind`` with JSON as the text it is stored as (a `json[]` a list of strings)."""
    if isinstance(kind, pa.JsonType):
        return kind.storage_type
    if pa.types.is_list(kind):
        return pa.list_(_storage(kind.value_type))
    return kind


def _rows_to_batch(
    who: str, rows: list[tuple[Any, ...]], schema: pa.Schema, flagged: list[int] | None = None
) -> pa.RecordBatch:
    """psycopg's ``rows`` as a batch of ``schema``. ``flagged``: the `numeric(p,s)` columns
    whose `NaN` is read as null, each with its NaN flag at the end of ``schema`` (see
    :meth:`RedshiftSource.read`)."""
    flagged = flagged or []
    width = len(schema) - len(flagged)
    columns = []
    nan: dict[int, pa.Array] = {}
    for i, field in enumerate(schema):
        if i >= width:
            columns.append(nan.get(flagged[i - width], pa.nulls(len(rows), pa.bool_())))
            continue
        raw = [row[i] for row in rows]
        if i in flagged:
            found = [isinstance(value, Decimal) and value.is_nan() for value in raw]
            if any(found):
                nan[i] = pa.array(found, pa.bool_())
                raw = [None if is_nan else value for value, is_nan in zip(raw, found, strict=True)]
        if pa.types.is_list(field.type):
            deepest = max(map(_depth, raw), default=0)
            if deepest > 1:
                raise dimensions_error(who, field.name, deepest)
        try:
            values = [_to_arrow_value(value, field.type) for value in raw]
            # built as text, then made JSON: pyarrow builds no list of an extension type
            storage = _storage(field.type)
            array = pa.array(values, type=storage)
            columns.append(array if storage.equals(field.type) else array.cast(field.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise column_error(who, field.name, raw, exc) from exc
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _holds_nan(values: list[Any]) -> bool:
    """Whether numeric values (ADBC's text, psycopg's `Decimal`, arrays of them) hold `NaN`."""
    for value in values:
        if isinstance(value, list):
            if _holds_nan(value):
                return True
        elif isinstance(value, Decimal) and value.is_nan():
            return True
        elif isinstance(value, str) and value.lower() == "nan":
            return True
    return False


def column_error(who: str, column: str, values: list[Any], exc: BaseException) -> SourceError:
    """A column whose values could not become its Arrow type: names the column, and for a
    `numeric(p,s)` `NaN` (which no decimal holds) says how to change the model."""
    name = sql_name(column)
    if _holds_nan(values):
        return SourceError(
            f"{who}: column `{column}` holds a numeric `NaN`, which a `numeric(p,s)` column "
            "cannot read as a decimal",
            hint=f"in the model, `nullif({name}, 'NaN') as {name}` makes it a null (the "
            f"field's `on_null` applies), and `{name}::double precision as {name}` rejects "
            "only the rows holding it",
        )
    return SourceError(
        f"{who}: column `{column}` could not be read: {db_message(exc)}",
        hint=f"cast it in the model to a type Lockgate reads, such as `{name}::text as {name}`",
    )


# --------------------------------------------------------------------------- the source


class PostgresSource:
    """A Postgres server, read through ADBC (Arrow-native, streaming binary COPY).

    Example::

        source = PostgresSource.from_config(config, root=project.root)
        reader = source.read("select * from analytics.users")
    """

    NAME: ClassVar[str] = "postgres"
    SUPPORTS_ARROW_NATIVE: ClassVar[bool] = True
    SUPPORTS_ROW_COUNTS: ClassVar[bool] = True

    def __init__(self, url: str, *, name: str | None = None) -> None:
        self.url = url
        self.who = label(self.NAME, name)
        self._catalog: Any = None
        #: the connection of the open :meth:`snapshot`, if any
        self._snapshot: Any = None
        #: the server-side cursors opened so far (Redshift's reads name theirs by it)
        self._cursors = 0

    @classmethod
    def from_config(
        cls, config: PostgresSourceConfig, *, root: Path, name: str | None = None
    ) -> PostgresSource:
        """A Postgres source, or a :class:`RedshiftSource` when `redshift: true`."""
        url = resolve_env(config.url, field="url", at=config)
        assert url is not None
        source_class = RedshiftSource if config.redshift else cls
        return source_class(url, name=name)

    # ------------------------------------------------------------------ driver

    def _driver(self) -> Any:
        try:
            import adbc_driver_postgresql.dbapi as dbapi
        except ImportError:
            raise MissingDependencyError("adbc-driver-postgresql", "postgres") from None
        return dbapi

    def _errors(self) -> tuple[type[BaseException], ...]:
        import adbc_driver_manager

        return (adbc_driver_manager.Error, pa.ArrowException)

    def _connect(self) -> Any:
        try:
            return self._driver().connect(self.url, autocommit=True)
        except self._errors() as exc:
            raise connect_error(self.who, self.url, exc) from exc

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within, every :meth:`read` and :meth:`session` of this source sees the database as
        one snapshot: they run one after another on one connection, in one `REPEATABLE READ`
        transaction, so a row another session commits meanwhile is seen by none of them (or,
        committed before the first, by all). Each reader must be read to its end before the
        next statement (one connection streams one result at a time). The transaction is
        committed at the end (Lockgate writes nothing in it; a function a model calls keeps
        its effects, as in a read of its own) and rolled back on an error; catalog queries
        (:meth:`schema_of`, hints) keep their own connection. Not `READ ONLY`: a view that
        calls `nextval()` reads as it does outside one."""
        if self._snapshot is not None:  # nested: the outer snapshot holds
            yield
            return
        conn = self._snapshot = self._snapshot_connection()
        try:
            # the snapshot is taken by the first statement that reads (PostgreSQL) and is the
            # transaction's to its end
            self._statement("begin isolation level repeatable read")
            yield
            self._end_snapshot("commit")
        finally:
            self._snapshot = None
            conn.close()  # rolls back a transaction still open (an error)

    def _snapshot_connection(self) -> Any:
        """A connection for :meth:`snapshot`, which begins its transaction itself."""
        return self._connect()

    @property
    def in_snapshot(self) -> bool:
        """Whether a :meth:`snapshot` is open: every read and session sees one snapshot."""
        return self._snapshot is not None

    def _end_snapshot(self, how: str) -> None:
        with contextlib.suppress(SourceError):
            # the reads are done: ending their transaction only lets go of its snapshot
            self._statement(how)

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """A connection whose settings (`SET`) go with it: inside :meth:`snapshot`, the
        snapshot's own, in a savepoint rolled back at the end (which undoes the settings and
        a failed statement, not the snapshot); else a connection of its own, closed at the
        end."""
        if self._snapshot is None:
            conn = self._connect()
            try:
                yield conn
            finally:
                conn.close()
            return
        self._statement("savepoint lockgate_session")
        try:
            yield self._snapshot
        finally:
            self._statement("rollback to savepoint lockgate_session")
            self._statement("release savepoint lockgate_session")

    def _statement(self, sql: str) -> None:
        """Run ``sql``, which returns no rows, on the snapshot's connection."""
        cursor = self._snapshot.cursor()
        try:
            cursor.execute(sql)
        except self._errors() as exc:
            raise query_error(self.who, sql, exc) from exc
        finally:
            cursor.close()

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a small catalog query on the shared catalog connection."""
        if self._catalog is None:
            self._catalog = self._connect()
        cursor = self._catalog.cursor()
        try:
            cursor.execute(sql)
            return [tuple(row) for row in cursor.fetchall()]
        except self._errors() as exc:
            raise query_error(self.who, sql, exc) from exc
        finally:
            cursor.close()

    def _query_error(self, sql: str, exc: BaseException) -> SourceError:
        """A failed model query; when it names a table that does not exist but one does in
        other case (`analytics.users` for `"Analytics"."Users"`), the hint names that one."""
        error = query_error(self.who, sql, exc)
        missing = _MISSING_RELATION.search(db_message(exc))
        if missing is None:
            return error
        schema, _, name = missing.group(1).rpartition(".")
        in_schema = f"and lower(n.nspname) = lower({quote_literal(schema)})" if schema else ""
        try:
            rows = self._rows(
                "select n.nspname, c.relname from pg_catalog.pg_class c "
                "join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
                "where c.relkind in ('r', 'p', 'v', 'm', 'f') "
                f"and lower(c.relname) = lower({quote_literal(name)}) {in_schema} order by 1, 2"
            )
        except SourceError:
            return error
        near = [f"{sql_name(s)}.{sql_name(n)}" for s, n in rows if (s, n) != (schema, name)]
        if not near:
            return error
        return SourceError(
            error.reason,
            hint=f"did you mean {' or '.join(f'`{n}`' for n in near)}? Postgres reads an unquoted "
            "name in lower case, so SQL quotes one with capitals or spaces; as a model: "
            f"`table: '{near[0]}'`",
        )

    # ------------------------------------------------------------------ reading

    def read(
        self, sql: str, *, batch_rows: int = DEFAULT_BATCH_ROWS, flag_nan: bool = False
    ) -> pa.RecordBatchReader:
        """Stream the result; each read has its own connection, closed when the reader ends
        (inside :meth:`snapshot`, the snapshot's, kept open).

        A `numeric(p,s)` column holding `NaN`, which no decimal holds, stops the read
        (:func:`column_error`); with ``flag_nan`` its `NaN` is read as null instead, and a
        boolean column :func:`~lockgate.sources.base.nan_flag` after the result's own says
        which rows held one (:func:`nan_flags`), so a sync rejects those rows alone."""
        check_batch_rows(batch_rows)
        shared = self._snapshot
        conn = shared if shared is not None else self._connect()
        cursor = conn.cursor()

        def close() -> None:
            cursor.close()
            if shared is None:
                conn.close()

        try:
            described = cursor.adbc_execute_schema(sql)  # planned, not run
            lists = [i for i, f in enumerate(described) if pa.types.is_list(f.type)]
            casts = {
                i: cast
                for i, f in enumerate(described)
                if (cast := _text_cast(f, f"q.c{i}")) is not None
            }
            # ADBC runs `COPY (<sql>) TO STDOUT`: the newline ends a last `-- comment`
            query = strip_sql(sql)
            if lists or casts:
                query = _wrapped(sql, len(described), lists, casts)
            cursor.execute(f"{query}\n")
            reader = cursor.fetch_record_batch()
        except self._errors() as exc:
            close()
            raise self._query_error(sql, exc) from exc
        width = len(described)
        fields = list(reader.schema)[:width]
        try:
            scale = self._money_scale(pa.schema(fields))
        except SourceError:
            close()
            raise
        own = [
            pa.field(name, _adbc_target(f, scale), f.nullable)
            for name, f in zip(described.names, fields, strict=True)
        ]
        flagged = [
            i
            for i, f in enumerate(fields)
            if flag_nan and _is_numeric(f) and pa.types.is_decimal(own[i].type)
        ]
        schema = pa.schema(own + nan_flags([own[i].name for i in flagged]))

        padded = {i for i, f in enumerate(fields) if _is_bpchar(f)}

        def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
            import pyarrow.compute as pc

            for i, dimensions in zip(lists, batch.columns[width:], strict=True):
                most = pc.max(dimensions).as_py()
                if most is not None and most > 1:
                    raise dimensions_error(self.who, schema.field(i).name, most)
            arrays = []
            nan: dict[int, pa.Array] = {}
            for i, (column, field) in enumerate(zip(batch.columns[:width], own, strict=True)):
                try:
                    arrays.append(_adbc_convert(column, field.type))
                except pa.ArrowException as exc:
                    # only a batch whose cast failed pays for looking for `NaN`
                    cleared = _without_nan(column) if i in flagged else None
                    if cleared is None:
                        raise column_error(self.who, field.name, _values(column), exc) from exc
                    column, nan[i] = cleared
                    try:
                        arrays.append(_adbc_convert(column, field.type))
                    except pa.ArrowException as again:
                        raise column_error(self.who, field.name, _values(column), again) from again
            for i in padded:
                arrays[i] = _unpad(arrays[i])
            none = pa.nulls(batch.num_rows, pa.bool_())
            arrays += [nan.get(i, none) for i in flagged]
            return pa.RecordBatch.from_arrays(arrays, schema=schema)

        return stream(
            schema,
            reader,
            batch_rows=batch_rows,
            on_error=lambda exc: self._query_error(sql, exc),
            errors=self._errors(),
            close=close,
            convert=convert,
        )

    def schema_of(self, sql: str) -> pa.Schema:
        """The result schema from a `LIMIT 0` wrapper: the server plans, returns no rows."""
        probe = limit_zero(sql)
        if self._catalog is None:
            self._catalog = self._connect()
        cursor = self._catalog.cursor()
        try:
            cursor.execute(probe)
            fields = cursor.fetch_arrow_table().schema
        except self._errors() as exc:
            raise self._query_error(sql, exc) from exc
        finally:
            cursor.close()
        scale = self._money_scale(fields)
        return pa.schema([pa.field(f.name, _adbc_target(f, scale), f.nullable) for f in fields])

    def _money_scale(self, schema: pa.Schema) -> int:
        """Decimal places of `money` (from `lc_monetary`), asked only when a column is money."""
        fields = [*schema, *(f.type.value_field for f in schema if pa.types.is_list(f.type))]
        if not any(_is_money(f) for f in fields):
            return 2
        return int(self._rows("select scale(1::money::numeric)")[0][0])

    # ------------------------------------------------------------------ catalog

    def schemas(self) -> list[str]:
        """Schemas the user can see, without `pg_*` and `information_schema`."""
        rows = self._rows(
            "select schema_name from information_schema.schemata "
            f"where schema_name not in {_SYSTEM_SCHEMAS} and schema_name not like 'pg\\_%' "
            "order by 1"
        )
        return [row[0] for row in rows]

    def tables(self, schema: str | None = None) -> list[TableInfo]:
        """Tables, views and materialized views; `rows` is the planner's estimate when analyzed."""
        where = f"and n.nspname = {quote_literal(schema)}" if schema is not None else ""
        rows = self._rows(
            "select n.nspname, c.relname, "
            "case when c.relkind in ('v', 'm') then 'view' else 'table' end, "
            "case when c.relkind in ('v', 'm') or c.reltuples < 0 then null "
            "else c.reltuples::bigint end "
            "from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
            "where c.relkind in ('r', 'p', 'v', 'm', 'f') "
            f"and n.nspname not in {_SYSTEM_SCHEMAS} and n.nspname not like 'pg\\_%' {where} "
            "order by 1, 2"
        )
        return [TableInfo(schema=s, name=n, kind=k, rows=r) for s, n, k, r in rows]

    def columns(self, table: str) -> list[ColumnInfo]:
        """Columns with their Postgres type names and the Arrow types `read` yields."""
        schema, name = split_table(table)
        in_schema = (
            f"table_schema = {quote_literal(schema)}"
            if schema is not None
            else "table_schema = current_schema()"
        )
        rows = self._rows(
            "select table_schema, column_name, "
            "case when data_type in ('ARRAY', 'USER-DEFINED') then udt_name "
            "when data_type = 'numeric' and numeric_precision is not null then "
            "'numeric(' || numeric_precision || ',' || numeric_scale || ')' "
            "else data_type end, "
            "is_nullable from information_schema.columns "
            f"where table_name = {quote_literal(name)} and {in_schema} "
            "order by table_schema, ordinal_position"
        )
        if not rows:
            raise SourceError(
                f"{self.who}: no table or view `{table}`",
                hint="`lockgate sources inspect` lists the tables; qualify it as `schema.table`",
            )
        found = rows[0][0]
        arrow = self.schema_of(f"select * from {quote_ident(found)}.{quote_ident(name)}")
        return [
            ColumnInfo(name=c, type=t, arrow_type=arrow.field(c).type, nullable=n == "YES")
            for s, c, t, n in rows
            if s == found
        ]

    def close(self) -> None:
        """Close the catalog connection (readers close their own)."""
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None


class RedshiftSource(PostgresSource):
    """Amazon Redshift (`type: postgres` with `redshift: true`), read through psycopg 3.

    Redshift speaks the Postgres protocol but has no binary `COPY ... TO STDOUT`, no `jsonb`,
    `uuid` or arrays, and no reliable row estimates in `pg_class`; see docs/sources.md.
    """

    NAME: ClassVar[str] = "redshift"
    SUPPORTS_ARROW_NATIVE: ClassVar[bool] = False
    SUPPORTS_ROW_COUNTS: ClassVar[bool] = False

    def _driver(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise MissingDependencyError("psycopg", "postgres") from None
        return psycopg

    def _errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error, pa.ArrowException)

    def _connect(self) -> Any:
        psycopg = self._driver()
        from psycopg.pq import Format
        from psycopg.types.string import TextLoader

        try:
            # Named (server-side) cursors live in a transaction, so no autocommit here.
            conn = psycopg.connect(self.url)
        except psycopg.Error as exc:
            raise connect_error(self.who, self.url, exc) from exc
        for json_type in ("json", "jsonb"):  # keep JSON as its text, like the ADBC path
            conn.adapters.register_loader(json_type, TextLoader)
        # A type Lockgate reads as text (`inet`, `timetz`, ranges, records, and arrays of
        # them) keeps the server's own text: psycopg's Python objects printed otherwise
        # (`[1, 5)` for `[1,5)`, `[IPv4Address('1.1.1.1')]` for `{1.1.1.1}`).
        for info in conn.adapters.types:
            if info.name not in _SCALARS and info.name not in ("money", "interval"):
                conn.adapters.register_loader(info.oid, TextLoader)
                if info.array_oid:
                    conn.adapters.register_loader(info.array_oid, TextLoader)
        # as ADBC reads them: `money` in cents (scaled by `read`), `interval` in months and days
        conn.adapters.register_loader("money", _text_loader(_money_cents))
        conn.adapters.register_loader("interval", _text_loader(_interval_parts))
        for name, kind in (
            ("date", "date32"),
            ("timestamp", "timestamp"),
            ("timestamptz", "timestamp"),
            ("time", "time64"),
        ):
            oid = conn.adapters.types[name].oid
            parse = conn.adapters.get_loader(oid, Format.TEXT)
            assert parse is not None  # psycopg loads every built-in type
            conn.adapters.register_loader(name, _infinite(parse, kind))
        return conn

    def _snapshot_connection(self) -> Any:
        """Autocommit, so the snapshot's own `BEGIN ISOLATION LEVEL REPEATABLE READ` opens
        its transaction (psycopg would otherwise have begun one at the default level, and
        the second `BEGIN` only warns). Redshift takes any isolation level as
        `SERIALIZABLE`: every statement of the transaction reads one snapshot of the
        database. The reads' server-side cursors live in it (:meth:`read`)."""
        conn = self._connect()
        conn.autocommit = True
        return conn

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self._catalog is None:
            self._catalog = self._connect()
            self._catalog.autocommit = True
        try:
            with self._catalog.cursor() as cursor:
                cursor.execute(sql)
                return [tuple(row) for row in cursor.fetchall()]
        except self._errors() as exc:
            raise query_error(self.who, sql, exc) from exc

    def read(
        self, sql: str, *, batch_rows: int = DEFAULT_BATCH_ROWS, flag_nan: bool = False
    ) -> pa.RecordBatchReader:
        """Stream through a server-side cursor, ``batch_rows`` rows per `FETCH`: on a
        connection of its own, closed when the reader ends, or inside :meth:`snapshot` in
        the snapshot's transaction (the cursor closed at the end, the connection kept).
        ``flag_nan``: as :meth:`PostgresSource.read`."""
        check_batch_rows(batch_rows)
        from psycopg.postgres import types as pg_types

        shared = self._snapshot
        conn = shared if shared is not None else self._connect()
        self._cursors += 1  # a cursor name is the transaction's: one per read
        cursor = conn.cursor(name=f"lockgate_read_{self._cursors}")
        cursor.itersize = batch_rows

        def close() -> None:
            try:
                cursor.close()
            finally:
                if shared is None:
                    conn.close()

        try:
            cursor.execute(sql)
        except self._errors() as exc:
            close()
            raise self._query_error(sql, exc) from exc
        described = []
        for column in cursor.description or []:
            info = pg_types.get(column.type_code)
            type_name = info.name if info else None
            if info is not None and info.array_oid == column.type_code:
                type_name = f"_{info.name}"  # the registry answers an array's oid with its item
            described.append((column, type_name))
        money_scale = 2
        if any(type_name in ("money", "_money") for _, type_name in described):
            try:
                money_scale = int(self._rows("select scale(1::money::numeric)")[0][0])
            except SourceError:
                close()
                raise
        fields = []
        padded = set()
        flagged = []
        for i, (column, type_name) in enumerate(described):
            kind = psycopg_type(type_name, column.precision, column.scale, money_scale)
            fields.append(pa.field(column.name, kind))
            if type_name == "bpchar":
                padded.add(i)
            if flag_nan and type_name == "numeric" and pa.types.is_decimal(kind):
                flagged.append(i)
        schema = pa.schema(fields + nan_flags([fields[i].name for i in flagged]))

        def batches() -> Iterator[pa.RecordBatch]:
            while rows := cursor.fetchmany(batch_rows):
                batch = _rows_to_batch(self.who, rows, schema, flagged)
                if padded:
                    arrays = [_unpad(c) if i in padded else c for i, c in enumerate(batch.columns)]
                    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
                yield batch

        return stream(
            schema,
            batches(),
            batch_rows=batch_rows,
            on_error=lambda exc: self._query_error(sql, exc),
            errors=self._errors(),
            close=close,
        )

    def schema_of(self, sql: str) -> pa.Schema:
        """The result schema from a `LIMIT 0` wrapper, described by a cursor of its own."""
        reader = self.read(limit_zero(sql))
        schema = reader.schema
        reader.read_all()  # no rows; closes the cursor's connection
        return schema

    def tables(self, schema: str | None = None) -> list[TableInfo]:
        """Tables and views from `information_schema` (Redshift keeps no cheap row counts)."""
        where = f"and table_schema = {quote_literal(schema)}" if schema is not None else ""
        rows = self._rows(
            "select table_schema, table_name, "
            "case when table_type = 'VIEW' then 'view' else 'table' end "
            "from information_schema.tables "
            f"where table_schema not in {_SYSTEM_SCHEMAS} and table_schema not like 'pg\\_%' "
            f"{where} order by 1, 2"
        )
        return [TableInfo(schema=s, name=n, kind=k, rows=None) for s, n, k in rows]
