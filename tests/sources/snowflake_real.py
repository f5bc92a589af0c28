"""Snowflake's own result encoding on loopback, behind the official connector.

fakesnow's server encodes a result from DuckDB's Arrow types: a `NUMBER(p,s)` as a
`decimal128`, a timestamp struct without a null mask. Snowflake itself sends a chunk in its
own compact forms, which the connector's `CArrowTableIterator` then converts for
`fetch_arrow_batches`:

- `NUMBER(p,s)` as the narrowest integer (`int8` ... `int64`) holding the value times 10^s,
  with `logicalType: FIXED` and `scale` in the field's metadata (`decimal128(38,s)` only when
  the unscaled value exceeds `int64`);
- `TIMESTAMP_NTZ/LTZ(9)` as a struct of `epoch` (seconds) and `fraction` (nanoseconds),
  `TIMESTAMP_TZ(9)` with a third field `timezone` (the offset in minutes plus 1440);
- `TIME(9)` as `int64` nanoseconds; `VARIANT`, `OBJECT` and `ARRAY` as JSON text, indented;
  a `GEOGRAPHY` as its GeoJSON text, its Arrow field marked `OBJECT` (the connector knows no
  `GEOGRAPHY` there);
- the session's `TIMEZONE` (default `America/Los_Angeles`) sent with the result, which the
  connector stamps on `TIMESTAMP_LTZ` and `TIMESTAMP_TZ` columns.

:func:`real_server` logs any connection in and answers every query with such a result, built
by :func:`chunk` (no rows for Lockgate's `limit 0` probe). It runs no SQL: it is for what a
result looks like, not for what a query means.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from tests.sources.snowflake_loopback import serve

TABLE = "REAL_SHAPED"


@dataclass
class Column:
    """One result column: Snowflake's rowtype entry and the Arrow array it sends."""

    name: str
    logical: str  # FIXED, TEXT, TIMESTAMP_NTZ, ...
    array: pa.Array
    precision: int | None = None
    scale: int | None = None
    byte_length: int | None = None
    sql_type: str | None = None  # the rowtype's type when not ``logical`` (GEOGRAPHY)

    def rowtype(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "database": "LG",
            "schema": "PUBLIC",
            "table": TABLE,
            "nullable": True,
            "type": (self.sql_type or self.logical).lower(),
            "byteLength": self.byte_length,
            "length": None,
            "scale": self.scale,
            "precision": self.precision,
            "collation": None,
        }

    def field(self) -> pa.Field:
        meta = {"logicalType": self.logical, "scale": str(self.scale or 0)}
        if self.precision is not None:
            meta["precision"] = str(self.precision)
        if self.byte_length is not None:
            meta["byteLength"] = str(self.byte_length)
        return pa.field(self.name, self.array.type, nullable=True, metadata=meta)


def timestamps(values: list[tuple[int, int] | None], tz_minutes: int | None = None) -> pa.Array:
    """(epoch seconds, nanoseconds) pairs as Snowflake's timestamp struct, nulls masked;
    with ``tz_minutes``, the `TIMESTAMP_TZ` form with its `timezone` field."""
    mask = pa.array([v is None for v in values])
    epoch = pa.array([v[0] if v else 0 for v in values], pa.int64())
    fraction = pa.array([v[1] if v else 0 for v in values], pa.int32())
    arrays = [epoch, fraction]
    fields = [pa.field("epoch", pa.int64(), False), pa.field("fraction", pa.int32(), False)]
    if tz_minutes is not None:
        arrays.append(pa.array([tz_minutes + 1440] * len(values), pa.int32()))
        fields.append(pa.field("timezone", pa.int32(), False))
    return pa.StructArray.from_arrays(arrays, fields=fields, mask=mask)


def chunk(columns: list[Column]) -> bytes:
    """The columns as one Arrow IPC stream, as Snowflake sends a result chunk."""
    schema = pa.schema([c.field() for c in columns])
    batch = pa.RecordBatch.from_arrays([c.array for c in columns], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


@dataclass
class Result:
    """What the server answers every query with (models name :data:`TABLE`)."""

    columns: list[Column]
    timezone: str = "America/Los_Angeles"


Server = tuple[dict[str, Any], Result]


@contextlib.contextmanager
def real_server(result: Result) -> Iterator[Server]:
    """A loopback server that logs the connector in and answers every query with ``result``
    in Snowflake's own encoding. Yields the connector arguments that point at it, and
    ``result`` (to change)."""

    async def respond(send: Any, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        if dict(scope["headers"]).get(b"content-encoding") == b"gzip":
            raw = gzip.decompress(raw)
        if scope["path"] == "/session/v1/login-request":
            session = {"databaseName": "LG", "schemaName": "PUBLIC"}
            return await respond(
                send,
                {
                    "data": {
                        "token": "session-token",
                        "masterToken": "master-token",
                        "serverVersion": "9.0.0",
                        "parameters": [{"name": "TIMEZONE", "value": result.timezone}],
                        "sessionInfo": session,
                    },
                    "success": True,
                },
            )
        if scope["path"] != "/queries/v1/query-request":  # closing the session, telemetry
            return await respond(send, {"data": {}, "success": True})
        columns = result.columns
        if "limit 0" in json.loads(raw)["sqlText"].lower():
            columns = [
                Column(
                    c.name,
                    c.logical,
                    c.array.slice(0, 0),
                    c.precision,
                    c.scale,
                    c.byte_length,
                    c.sql_type,
                )
                for c in columns
            ]
        rows = len(columns[0].array)
        await respond(
            send,
            {
                "data": {
                    "parameters": [{"name": "TIMEZONE", "value": result.timezone}],
                    "rowtype": [c.rowtype() for c in columns],
                    "rowsetBase64": base64.b64encode(chunk(columns)).decode(),
                    "queryResultFormat": "arrow",
                    "total": rows,
                    "returned": rows,
                    "queryId": "01b2c3d4-0000-0000-0000-000000000001",
                    "statementTypeId": 4096,  # SELECT
                    "finalDatabaseName": "LG",
                    "finalSchemaName": "PUBLIC",
                },
                "success": True,
            },
        )

    with serve(app) as where:
        yield where, result
