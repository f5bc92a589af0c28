"""A connection to the process's own in-memory DuckDB, for small computations over values or
Arrow data that need no database of their own: an md5 over a column, a constant coerced as a
column would be, an `unless` condition parsed.

Starting a DuckDB instance costs ~20 ms of CPU (its catalog of built-in functions is filled);
a cursor of one already started costs ~0.1 ms. Each such computation started an instance of
its own, some once per run (the identity graph's new profile ids). A cursor is a connection of
its own: what it registers, its temp tables and its `SET`s are its alone, so threads do not
see each other's; nothing here may create a table in the shared catalog.

Example::

    with scratch() as con:
        con.register("anchors", table)
        ids = con.sql("select md5(v) from anchors").to_arrow_table()
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import duckdb

_INSTANCE: list[duckdb.DuckDBPyConnection] = []
_LOCK = threading.Lock()


@contextlib.contextmanager
def scratch() -> Iterator[duckdb.DuckDBPyConnection]:
    """A new connection (cursor) to the process's in-memory DuckDB, closed after the block."""
    with _LOCK:
        if not _INSTANCE:
            _INSTANCE.append(duckdb.connect(":memory:"))
        con = _INSTANCE[0].cursor()
    try:
        yield con
    finally:
        con.close()
