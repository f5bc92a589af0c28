"""One `warehouse` fixture, parametrised over every source that runs here.

Each warehouse holds the same `lg_sources.users` table (ints, unicode text, mixed-case emails,
booleans, timestamps with and without time zone, dates, decimals, JSON, nulls) and a
`lg_sources.big` table of 2,500 rows. The tests are written once and run on:

- `duckdb`: a real DuckDB file, opened read-only as projects do;
- `postgres`: the session's real Postgres server, read through ADBC;
- `redshift`: the same server with `redshift: true`, i.e. the psycopg server-side-cursor path;
- `snowflake`: fakesnow (Snowflake's SQL run on DuckDB) patched into the official connector,
  whose fake cursor has no `fetch_arrow_batches` (the `fetchmany` fallback);
- `snowflake-server`: fakesnow's HTTP server on loopback and the real connector's own cursor
  (the `fetch_arrow_batches` path used against Snowflake).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.sources.warehouses import (
    Warehouse,
    duckdb_warehouse,
    postgres_warehouse,
    snowflake_server_warehouse,
    snowflake_warehouse,
)


@pytest.fixture(
    scope="module",
    params=[
        "duckdb",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redshift", marks=pytest.mark.postgres),
        "snowflake",
        "snowflake-server",
    ],
)
def warehouse(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Warehouse]:
    """A source holding `lg_sources.users` and `lg_sources.big`, once per warehouse kind."""
    if request.param == "duckdb":
        yield from duckdb_warehouse(tmp_path_factory.mktemp("duckdb"))
    elif request.param in ("postgres", "redshift"):
        dsn = request.getfixturevalue("postgres_dsn")
        yield from postgres_warehouse(dsn, redshift=request.param == "redshift")
    elif request.param == "snowflake":
        yield from snowflake_warehouse()
    else:
        yield from snowflake_server_warehouse()
