"""Snowflake through the official `snowflake-connector-python`.

Results stream as Arrow with `fetch_arrow_batches` (one result chunk at a time), the connector
asked for decimals (`arrow_number_to_decimal`: a `NUMBER(p,s)` is otherwise a float) and for
timestamps in microseconds. Cursors without it (fakesnow's in-process patch, which some tests
use) fall back to `fetchmany` converted to Arrow in chunks of ``batch_rows``. The connector
picks the narrowest integer per chunk, so every batch is cast to one schema derived from the
cursor's description; a `VECTOR` or a structured `OBJECT`, `ARRAY` or `MAP` (an Arrow list,
struct or map) becomes its JSON text.

Snowflake upper-cases unquoted identifiers. Lockgate lower-cases every all-upper-case column,
table and schema name (`EMAIL` → `email`), so models read the same on every warehouse; a name
that was quoted in mixed case (`"signupSource"`) keeps its case. A table or schema stored in
lower case (created as `"lower_tbl"`) is listed quoted, as SQL names it: `lower_tbl` unquoted
is `LOWER_TBL`.

Example::

    source = SnowflakeSource.from_config(config, root=project.root)
    reader = source.read("select id, email from analytics.users")
"""

from __future__ import annotations

import base64
import datetime as dt
import inspect
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from lockgate.errors import ConfigError, MissingDependencyError, SourceError
from lockgate.project.models import key_file, resolve_env
from lockgate.sources.base import (
    DEFAULT_BATCH_ROWS,
    JSON,
    UTC_TS,
    ColumnInfo,
    TableInfo,
    check_batch_rows,
    db_message,
    label,
    limit_zero,
    query_error,
    quote_ident,
    quote_literal,
    split_quoted,
    stream,
)

if TYPE_CHECKING:
    from lockgate.project.models import SnowflakeSourceConfig


# Snowflake's result type codes (snowflake.connector.constants.FIELD_TYPES) → Arrow.
_BY_CODE: dict[int, pa.DataType] = {
    1: pa.float64(),  # REAL
    2: pa.string(),  # TEXT
    3: pa.date32(),  # DATE
    4: pa.timestamp("us"),  # TIMESTAMP (an alias, NTZ by default)
    5: JSON,  # VARIANT, as JSON text
    6: UTC_TS,  # TIMESTAMP_LTZ
    7: UTC_TS,  # TIMESTAMP_TZ
    8: pa.timestamp("us"),  # TIMESTAMP_NTZ
    9: JSON,  # OBJECT, as JSON text
    10: JSON,  # ARRAY, as JSON text
    11: pa.binary(),  # BINARY
    12: pa.time64("us"),  # TIME
    13: pa.bool_(),  # BOOLEAN
    16: JSON,  # VECTOR, as JSON text: `[1.5, 2, 3]`
    17: JSON,  # MAP, as JSON text
}


def arrow_type(type_code: int, precision: int | None, scale: int | None) -> pa.DataType:
    """The Arrow type for a Snowflake result column (unknown types become text)."""
    if type_code == 0:  # FIXED: NUMBER(p, s)
        if not scale:
            return pa.int64()
        return pa.decimal128(precision or 38, scale)
    return _BY_CODE.get(type_code, pa.string())


def fold(name: str) -> str:
    """Snowflake's upper-case folding undone: `EMAIL` → `email`; `"mixedCase"` stays."""
    return name.lower() if name == name.upper() else name


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def listed(name: str) -> str:
    """How the listings show a stored schema or table name, such that :func:`unfold` gives the
    stored name back: `USERS` → `users`, `signupSource` as it is, and a name stored in lower case
    (or one SQL must quote: a space, a dot) quoted, `"lower_tbl"`, since `lower_tbl` unquoted
    means `LOWER_TBL`."""
    if _PLAIN.fullmatch(name) and name == name.upper():
        return name.lower()
    if _PLAIN.fullmatch(name) and name != name.lower():
        return name
    return quote_ident(name)


def unfold(name: str) -> str:
    """The stored form of a name the user typed: a quoted name as written (`"lower_tbl"` →
    `lower_tbl`); unquoted lower case is upper case in Snowflake (`users` → `USERS`)."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name.upper() if name == name.lower() else name


def key_bytes(text: str) -> bytes:
    """The key a `private_key` variable holds: PEM text (its line breaks possibly written as
    `\\n`, as some secret stores keep one line), else base64 DER. Returned as given when it
    is neither; :func:`private_key_der` then says the key cannot be read."""
    text = text.strip()
    if "-----BEGIN" in text:
        if "\n" not in text and "\\n" in text:
            text = text.replace("\\n", "\n")
        return text.encode()
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except ValueError:
        return text.encode()


def private_key_der(data: bytes, passphrase: str | None, *, who: str, where: str) -> bytes:
    """``data`` (a PEM or DER private key, perhaps encrypted) as unencrypted DER in PKCS#8,
    what the connector's `private_key` takes. A ConfigError naming ``who`` and ``where`` the
    key is (`` `private_key` ``, `` `private_key_path` (`keys/rsa_key.p8`) ``), never
    the key or the passphrase, when it is encrypted and no passphrase is set, the passphrase
    is wrong, a passphrase is set for a key that is not encrypted, or it is not a key."""
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # installed with the connector
        raise MissingDependencyError("snowflake-connector-python", "snowflake") from None

    load = (
        serialization.load_pem_private_key
        if data.lstrip().startswith(b"-----BEGIN")
        else serialization.load_der_private_key
    )
    fix = (
        "set `private_key_passphrase: ${SNOWFLAKE_PRIVATE_KEY_PASSPHRASE}` and export the "
        "passphrase the key was encrypted with"
    )
    try:
        key = load(data, password=None)
    except TypeError:  # encrypted
        if passphrase is None:
            raise ConfigError(
                f"{who}: the key in {where} is encrypted and `private_key_passphrase` is not set",
                hint=fix,
            ) from None
        try:
            key = load(data, password=passphrase.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(
                f"{who}: `private_key_passphrase` does not decrypt the key in {where} "
                "(wrong passphrase; neither is shown)",
                hint="check the variable `private_key_passphrase` names holds the passphrase "
                "this key was encrypted with, and that the key is the one you meant",
            ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{who}: {where} does not hold a private key Lockgate can read (not shown)",
            hint="give a PEM private key (`-----BEGIN PRIVATE KEY-----` or `-----BEGIN "
            "ENCRYPTED PRIVATE KEY-----`, as `openssl genrsa` / `openssl pkcs8` write it) or "
            "its DER bytes in base64; a key file's path goes in `private_key_path`",
        ) from None
    else:
        if passphrase is not None:
            raise ConfigError(
                f"{who}: `private_key_passphrase` is set but the key in {where} is not encrypted",
                hint="remove `private_key_passphrase`, or give the encrypted key you meant",
            )
    return key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def arrow_batches(cursor: Any) -> Iterator[pa.Table]:
    """The cursor's result as the connector's Arrow tables, timestamps in microseconds when
    the connector can be asked to (`force_microsecond_precision`, connector 4): Lockgate keeps
    microseconds anyway, and otherwise a nanosecond timestamp after 2262 (`9999-12-31
    23:59:59.999999999`, a common "no end" value) fails the whole result."""
    fetch = cursor.fetch_arrow_batches
    try:
        options = inspect.signature(fetch).parameters
    except (TypeError, ValueError):  # no signature to read
        return iter(fetch())
    if "force_microsecond_precision" in options:
        return iter(fetch(force_microsecond_precision=True))
    return iter(fetch())


#: the integers JSON readers take as integers, and those every double holds exactly: a nested
#: number is written as a scalar number field sends it (`lockgate.sync.mapping._number_json`)
_MIN_JSON_INT, _MAX_JSON_INT, _MAX_EXACT_FLOAT = -(2**63), 2**64 - 1, 2**53


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # a whole one an integer (every digit) within JSON's integers, else the double it is
        whole = value == value.to_integral_value()
        return int(value) if whole and _MIN_JSON_INT <= value <= _MAX_JSON_INT else float(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex().upper()  # as Snowflake prints BINARY
    raise TypeError(f"{type(value).__name__} is not JSON")


def _plain(value: Any, kind: pa.DataType) -> Any:
    """A nested value from `to_pylist` as JSON would have it: a map (pairs) an object."""
    if value is None:
        return None
    if pa.types.is_map(kind):
        return {str(k): _plain(v, kind.item_type) for k, v in value}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return [_plain(v, kind.value_type) for v in value]
    if pa.types.is_struct(kind):
        return {f.name: _plain(value[f.name], f.type) for f in kind}
    if isinstance(value, float):
        if pa.types.is_float32(kind):
            # the number the warehouse prints (0.1), not the double it widens to
            # (0.10000000149011612), as a scalar FLOAT/real is sent
            value = float(str(np.float32(value)))
        if value.is_integer() and abs(value) <= _MAX_EXACT_FLOAT:
            return int(value)  # `2`, not `2.0` (which Liquid prints as `2.0`)
    return value


def nested_as_json(column: pa.Array) -> pa.Array:
    """A list, struct or map column (a `VECTOR`, or an `OBJECT`, `ARRAY` or `MAP` of
    Snowflake's structured types) as the JSON text of each value, as Snowflake writes a
    semi-structured one; a map as an object of its keys."""
    return pa.array(
        [
            None if value is None else json.dumps(_plain(value, column.type), default=_json_default)
            for value in column.to_pylist()
        ],
        pa.string(),
    )


def _nested(kind: pa.DataType) -> bool:
    return bool(pa.types.is_nested(kind))


def _to_arrow_value(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if (pa.types.is_string(kind) or isinstance(kind, pa.JsonType)) and not isinstance(value, str):
        return str(value)
    return value


class SnowflakeSource:
    """A Snowflake account, read with the official connector.

    Example::

        source = SnowflakeSource(account="xy12345", user="LOCKGATE", password="...",
                                 warehouse="COMPUTE_WH", database="ANALYTICS")
    """

    NAME: ClassVar[str] = "snowflake"
    SUPPORTS_ARROW_NATIVE: ClassVar[bool] = True
    SUPPORTS_ROW_COUNTS: ClassVar[bool] = True

    def __init__(self, *, name: str | None = None, **connect_kwargs: Any) -> None:
        self.who = label(self.NAME, name)
        try:
            import snowflake.connector
        except ImportError:
            raise MissingDependencyError("snowflake-connector-python", "snowflake") from None
        self._errors: tuple[type[BaseException], ...] = (
            snowflake.connector.Error,
            pa.ArrowException,
            OverflowError,  # a NUMBER(38,0) value beyond int64
        )
        try:
            # `arrow_number_to_decimal`: Snowflake sends a NUMBER(p,s) of up to 18 digits as an
            # integer with its scale, which the connector's Arrow batches turn into a float64
            # unless asked for decimals: 1234567890123456.78 became ...456.75, and 18 nines a
            # float that no NUMBER(18,2) holds
            self._conn = snowflake.connector.connect(
                application="lockgate", arrow_number_to_decimal=True, **connect_kwargs
            )
        except snowflake.connector.Error as exc:
            account = connect_kwargs.get("account", "?")
            raise SourceError(
                f"{self.who}: cannot connect to account `{account}`: {db_message(exc)}",
                hint="check `account`, `user` and the password, key or token in lockgate.yml and "
                "the environment; is the account reachable from here?",
            ) from exc

    @classmethod
    def from_config(
        cls, config: SnowflakeSourceConfig, *, root: Path, name: str | None = None
    ) -> SnowflakeSource:
        """Connect with the configured account; `${ENV}` references are resolved here."""
        return cls(name=name, **cls.connect_args(config, root=root, name=name))

    @classmethod
    def connect_args(
        cls, config: SnowflakeSourceConfig, *, root: Path, name: str | None = None
    ) -> dict[str, Any]:
        """The connector's arguments for ``config``: `${ENV}` references resolved, and a key
        (`private_key` or `private_key_path`, decrypted with `private_key_passphrase`) loaded
        as the unencrypted DER (PKCS#8) bytes the connector's `private_key` takes."""
        who = label(cls.NAME, name)
        kwargs: dict[str, Any] = {
            "account": resolve_env(config.account, field="account", at=config),
            "user": resolve_env(config.user, field="user", at=config),
        }
        if config.password is not None:
            kwargs["password"] = resolve_env(config.password, field="password", at=config)
        if config.authenticator == "oauth":
            kwargs["authenticator"] = "oauth"
            kwargs["token"] = resolve_env(config.token, field="token", at=config)
        passphrase = resolve_env(
            config.private_key_passphrase, field="private_key_passphrase", at=config
        )
        if config.private_key is not None:
            text = resolve_env(config.private_key, field="private_key", at=config) or ""
            kwargs["private_key"] = private_key_der(
                key_bytes(text), passphrase, who=who, where="`private_key`"
            )
        if config.private_key_path is not None:
            path = key_file(
                root, config.private_key_path, field="private_key_path", who=who, at=config
            )
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise SourceError(
                    f"{who}: cannot read key file `{config.private_key_path}`: "
                    f"{exc.strerror or exc}",
                    hint="check that the file is readable by the user running Lockgate",
                ) from exc
            kwargs["private_key"] = private_key_der(
                data,
                passphrase,
                who=who,
                where=f"`private_key_path` (`{config.private_key_path}`)",
            )
        for key, value in (
            ("warehouse", config.warehouse),
            ("database", config.database),
            ("schema", config.schema_),
            ("role", config.role),
        ):
            if value is not None:
                kwargs[key] = resolve_env(value, field=key, at=config)
        return kwargs

    # ------------------------------------------------------------------ reading

    def _execute(self, sql: str) -> Any:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql)
        except self._errors as exc:
            cursor.close()
            raise query_error(self.who, sql, exc) from exc
        return cursor

    @staticmethod
    def _schema(cursor: Any) -> pa.Schema:
        return pa.schema(
            pa.field(fold(c.name), arrow_type(c.type_code, c.precision, c.scale))
            for c in cursor.description or []
        )

    def read(self, sql: str, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> pa.RecordBatchReader:
        """Stream the result: Arrow result chunks when the cursor offers them, else rows."""
        check_batch_rows(batch_rows)
        cursor = self._execute(sql)
        schema = self._schema(cursor)

        def batches() -> Iterator[pa.RecordBatch]:
            if hasattr(cursor, "fetch_arrow_batches"):
                for table in arrow_batches(cursor):
                    yield from table.to_batches(max_chunksize=batch_rows)
                return
            while rows := cursor.fetchmany(batch_rows):
                columns = [
                    pa.array([_to_arrow_value(row[i], f.type) for row in rows], type=f.type)
                    for i, f in enumerate(schema)
                ]
                yield pa.RecordBatch.from_arrays(columns, schema=schema)

        def fit(column: pa.Array, field: pa.Field) -> pa.Array:
            if _nested(column.type) and not _nested(field.type):
                # a structured OBJECT/ARRAY/MAP or a VECTOR comes as a list, struct or map
                return nested_as_json(column)
            if pa.types.is_decimal(column.type) and pa.types.is_integer(field.type):
                # a chunk of NUMBER(p,0) holding a value beyond int64 comes as decimal128
                try:
                    return column.cast(field.type)
                except pa.ArrowInvalid:
                    raise SourceError(
                        f"{self.who}: column `{field.name}` holds a NUMBER beyond 64-bit "
                        "integers (±9,223,372,036,854,775,807), which Lockgate reads as integers",
                        hint=f"in the model, `to_varchar({field.name}) as {field.name}` sends "
                        "every digit as text; `::float` an approximate number",
                    ) from None
            return column

        def rename(batch: pa.RecordBatch) -> pa.RecordBatch:
            columns = [fit(c, f) for c, f in zip(batch.columns, schema, strict=True)]
            return pa.RecordBatch.from_arrays(columns, names=schema.names)

        return stream(
            schema,
            batches(),
            batch_rows=batch_rows,
            on_error=lambda exc: query_error(self.who, sql, exc),
            errors=self._errors,
            close=cursor.close,
            convert=rename,
        )

    def schema_of(self, sql: str) -> pa.Schema:
        """The result schema from a `LIMIT 0` wrapper (Snowflake compiles, reads nothing)."""
        cursor = self._execute(limit_zero(sql))
        try:
            return self._schema(cursor)
        finally:
            cursor.close()

    # ------------------------------------------------------------------ catalog

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        cursor = self._execute(sql)
        try:
            return [tuple(row) for row in cursor.fetchall()]
        except self._errors as exc:
            raise query_error(self.who, sql, exc) from exc
        finally:
            cursor.close()

    def schemas(self) -> list[str]:
        """Schemas of the current database, without `INFORMATION_SCHEMA`."""
        rows = self._rows(
            "select schema_name from information_schema.schemata "
            "where schema_name <> 'INFORMATION_SCHEMA' order by 1"
        )
        return [listed(row[0]) for row in rows]

    def tables(self, schema: str | None = None) -> list[TableInfo]:
        """Tables (with Snowflake's stored row count) and views of the current database."""
        where = f"and table_schema = {quote_literal(unfold(schema))}" if schema else ""
        rows = self._rows(
            "select table_schema, table_name, table_type, row_count "
            "from information_schema.tables "
            f"where table_schema <> 'INFORMATION_SCHEMA' {where} order by 1, 2"
        )
        return [
            TableInfo(
                schema=listed(s),
                name=listed(n),
                kind="view" if "VIEW" in str(kind).upper() else "table",
                rows=None if count is None else int(count),
            )
            for s, n, kind, count in rows
        ]

    def columns(self, table: str) -> list[ColumnInfo]:
        """Columns with Snowflake's type names and the Arrow types `read` yields. ``table`` is
        named as the listings show it: `users` is `USERS`, `"lower_tbl"` is `lower_tbl`."""
        schema, name = split_quoted(table)
        in_schema = (
            f"table_schema = {quote_literal(unfold(schema))}"
            if schema
            else "table_schema = current_schema()"
        )
        rows = self._rows(
            "select column_name, data_type, is_nullable, numeric_precision, numeric_scale "
            "from information_schema.columns "
            f"where table_name = {quote_literal(unfold(name))} and {in_schema} "
            "order by ordinal_position"
        )
        if not rows:
            raise SourceError(
                f"{self.who}: no table or view `{table}`", hint=self._near(schema, name)
            )
        stored = quote_ident(unfold(name))
        if schema:
            stored = f"{quote_ident(unfold(schema))}.{stored}"
        arrow = self.schema_of(f"select * from {stored}")
        return [
            ColumnInfo(
                name=fold(column),
                type=f"{data_type}({precision},{scale})"
                if data_type == "NUMBER" and precision is not None
                else str(data_type),
                arrow_type=arrow.field(fold(column)).type,
                nullable=nullable == "YES",
            )
            for column, data_type, nullable, precision, scale in rows
        ]

    def _near(self, schema: str | None, name: str) -> str:
        """The hint for a table not found: the listed names that differ from it only in case
        or quoting (`lower_tbl` typed for the table stored as `lower_tbl`, listed
        `"lower_tbl"`), else where to find the tables."""
        hint = "`lockgate sources inspect` lists the tables; qualify it as `schema.table`"
        try:
            tables = self.tables(schema)
        except SourceError:
            return hint
        near = [
            f"{t.schema}.{t.name}" for t in tables if unfold(t.name).lower() == unfold(name).lower()
        ]
        if not near:
            return hint
        return (
            f"did you mean {' or '.join(f'`{n}`' for n in near)}? A name listed in quotes is "
            f"stored in lower case; unquoted, `{name}` means `{unfold(name)}`"
        )

    @property
    def connection(self) -> Any:
        """The connector's connection, for Lockgate's own tables (sources/write.py)."""
        return self._conn

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What the connector raises for a refused or failed statement."""
        return self._errors

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
