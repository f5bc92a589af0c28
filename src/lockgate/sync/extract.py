"""Extract: stream a sync's model from its source into the state database as Arrow batches.

The source hands over a :class:`pyarrow.RecordBatchReader`; DuckDB pulls it batch by
batch into a temporary table (spilling to disk past its memory limit), so memory stays
flat however large the model is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from lockgate.console import Advance
from lockgate.errors import LockgateError, SourceError
from lockgate.sources.base import Source
from lockgate.state.store import run_sql


@dataclass(frozen=True, slots=True)
class Staged:
    """What was read: row count and column name → DuckDB type."""

    rows: int
    columns: dict[str, str]


def _counting(reader: pa.RecordBatchReader, advance: Advance) -> pa.RecordBatchReader:
    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            advance(batch.num_rows)
            yield batch

    return pa.RecordBatchReader.from_batches(reader.schema, batches())


def stage(
    con: duckdb.DuckDBPyConnection, source: Source, sql: str, *, sync: str, advance: Advance
) -> Staged:
    """Read the model into the temp table ``model``."""
    reader = source.read(sql)
    con.register("_model_reader", _counting(reader, advance))
    try:
        run_sql(con, "create or replace temp table model as select * from _model_reader")
    except LockgateError:
        raise
    except duckdb.Error as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, LockgateError):
            raise cause from None
        raise SourceError(
            f"sync `{sync}`: reading the model failed: {exc}",
            hint="run the model's SQL in the warehouse to check it",
        ) from exc
    finally:
        con.unregister("_model_reader")
    columns = {row[0]: row[1] for row in con.execute("describe model").fetchall()}
    count = con.execute("select count(*) from model").fetchall()[0][0]
    return Staged(rows=int(count), columns=columns)
