"""Warehouse-native stitching gives the embedded partition, on DuckDB and on Postgres."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa
import pytest
import sqlglot
from tests.identity.helpers import config, groups, rows, warehouse_groups

from lockgate.identity import resolve
from lockgate.identity.synthetic import synthetic_config, synthetic_sources
from lockgate.identity.warehouse import (
    DuckDBRunner,
    PostgresRunner,
    WarehouseStitcher,
    transpiled,
)

N = 400


def corpus() -> dict[str, pa.Table]:
    return synthetic_sources(N, seed=3, shared_device_every=N // 4, shared_email_every=N // 20)


def embedded(cfg, sources):  # type: ignore[no-untyped-def]
    result = resolve(cfg, sources, run_id="r1")
    assert result.refused.num_rows > 0  # the corpus exercises the exact path
    return groups(result), result.refused.num_rows


def on_duckdb(cfg, sources):  # type: ignore[no-untyped-def]
    con = duckdb.connect()
    for name, table in sources.items():
        con.register(f"{name}_arrow", table)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
    stitcher = WarehouseStitcher(
        cfg,
        DuckDBRunner(con),
        tables={k: k for k in sources},
        columns={k: v.column_names for k, v in sources.items()},
    )
    stats = stitcher.run()
    refused = con.execute("SELECT COUNT(*) FROM lg_wh_refused").fetchone()
    return warehouse_groups(lambda sql: con.execute(sql).fetchall()), refused[0], stats


def test_duckdb_matches_embedded_on_the_synthetic_corpus() -> None:
    cfg, sources = synthetic_config(), corpus()
    want, refused = embedded(cfg, sources)
    got, got_refused, stats = on_duckdb(cfg, sources)
    assert got == want and got_refused == refused
    assert stats["passes"] >= 2


def test_duckdb_matches_embedded_with_caps_blocklists_and_bridges() -> None:
    cfg = config()
    sources = {
        "app_users": rows(
            {"user_id": "u1", "email": " Fam@X.com", "ts": 1},
            {"user_id": "u2", "email": "fam@x.com", "ts": 2},
            {"user_id": "null", "email": "test@example.com", "ts": 2},
            {"user_id": "123.0", "email": "n@x.com", "ts": 3},
        ),
        "crm_contacts": rows(
            {"phone": "+14155550100", "user_id": "u1", "ts": 1},
            {"phone": "+14155550100", "user_id": "u2", "ts": 9},
        ),
        "identifies": rows(
            *({"anonymous_id": "shared", "user_id": f"u{i}", "ts": i} for i in range(3)),
            {"anonymous_id": "d", "user_id": "u1", "email": "e1@x.com", "ts": 1},
            {"anonymous_id": "d", "email": "e9@x.com", "ts": 2},
        ),
    }
    # six more emails for u1 from `app_users`, exempt from the email limit
    sources["app_users"] = pa.concat_tables(
        [
            sources["app_users"],
            rows(*({"user_id": "u1", "email": f"old{i}@x.com", "ts": 5} for i in range(6))),
        ]
    )
    result = resolve(cfg, sources, run_id="r1")
    assert result.profiles.filter(pa.compute.equal(result.profiles["cio_person_id"], "u1"))[
        "n_email"
    ].to_pylist() == [7]  # fam@ and old0-5@ (exempt); e1@ from identifies is refused
    got, _, _ = on_duckdb(cfg, sources)
    assert got == groups(result)


def load_postgres(con: Any, sources: dict[str, pa.Table]) -> None:
    """Each source as a Postgres table of its name (`ts` a timestamptz, the rest text)."""
    for name, table in sources.items():
        con.execute(f"DROP TABLE IF EXISTS {name}")
        cols = ", ".join(
            f"{c} TIMESTAMPTZ" if c == "ts" else f"{c} TEXT" for c in table.column_names
        )
        con.execute(f"CREATE TABLE {name} ({cols})")
        with con.cursor().copy(f"COPY {name} ({', '.join(table.column_names)}) FROM STDIN") as cp:
            for row in table.to_pylist():
                cp.write_row([row[c] for c in table.column_names])


@pytest.mark.postgres
def test_postgres_matches_embedded_on_the_synthetic_corpus(postgres_dsn: str) -> None:
    import psycopg

    cfg, sources = synthetic_config(), corpus()
    want, refused = embedded(cfg, sources)
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        load_postgres(con, sources)
        stitcher = WarehouseStitcher(
            cfg, PostgresRunner(con), columns={k: v.column_names for k, v in sources.items()}
        )
        stitcher.run()
        runner = PostgresRunner(con)
        got = warehouse_groups(runner.fetch)
        got_refused = runner.fetch("SELECT COUNT(*) FROM lg_wh_refused")[0][0]
    assert got == want and got_refused == refused


@pytest.mark.parametrize("dialect", ["snowflake", "bigquery", "postgres"])
def test_sql_transpiles_and_parses_in_each_dialect(dialect: str) -> None:
    stitcher = WarehouseStitcher(
        synthetic_config(),
        dialect=dialect,
        columns={k: v.column_names for k, v in corpus().items()},
    )
    statements = transpiled(stitcher, dialect)
    assert len(statements) > 10
    for sql in statements:
        assert sqlglot.parse_one(sql, read=dialect) is not None


def padded_sources() -> dict[str, pa.Table]:
    """One person's identifiers with the white space a CSV load or a web form leaves around
    them, in one source, and bare in another; `u8` ends with a zero-width space, which the
    `trim` step (user ids) keeps and `trim_unicode_space` (emails) takes off."""
    return {
        "app_users": rows(
            {"user_id": "u7\r\n", "email": "\tpad@x.com\n", "ts": 1},
            {"user_id": "u8\u200b", "email": "zw@x.com\u200b", "ts": 1},
        ),
        "crm_contacts": rows({"phone": "+14155550101", "user_id": "\u00a0u7", "ts": 2}),
        "identifies": rows(
            {"anonymous_id": "dev-1", "email": "pad@x.com", "ts": 3},
            {"anonymous_id": "dev-2", "user_id": "u8", "ts": 3},
            {"anonymous_id": "dev-3", "email": "zw@x.com", "ts": 3},
        ),
    }


def test_padded_identifiers_are_trimmed_as_the_embedded_engine_trims() -> None:
    cfg, sources = config(), padded_sources()
    want = groups(resolve(cfg, sources, run_id="r1"))
    together = [g for g in want if any("dev-1" in str(node) for node in g)]
    assert len(together) == 1 and any("+14155550101" in str(n) for n in together[0])
    # a zero-width space is not white space to `trim`: `u8\u200b` and `u8` stay apart
    assert not any(
        any("dev-2" in str(n) for n in g) and any("zw@x.com" in str(n) for n in g) for g in want
    )
    got, _, _ = on_duckdb(cfg, sources)
    assert got == want


@pytest.mark.postgres
def test_padded_identifiers_on_postgres(postgres_dsn: str) -> None:
    import psycopg

    cfg, sources = config(), padded_sources()
    want = groups(resolve(cfg, sources, run_id="r1"))
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        load_postgres(con, sources)
        stitcher = WarehouseStitcher(
            cfg,
            PostgresRunner(con),
            tables={k: k for k in sources},
            columns={k: v.column_names for k, v in sources.items()},
        )
        stitcher.run()
        assert warehouse_groups(PostgresRunner(con).fetch) == want


def test_exact_ci_written_in_capitals_blocks_in_both_engines() -> None:
    """`exact_ci: [TBD]` blocks `TBD` and `tbd` in the warehouse's SQL as in the embedded
    engine: the CRM's placeholder links nobody (before, the SQL compared lower-cased values
    with the list as written, and both leads ended up in one profile)."""
    cfg = config(blocked_values={"crm_contact_id": {"exact_ci": ["TBD"]}})
    sources = {
        "crm_contacts": rows(
            {"crm_contact_id": "TBD", "email": "ann@a.com", "ts": 1},
            {"crm_contact_id": "tbd", "email": "bob@b.com", "ts": 1},
            {"crm_contact_id": "TBD", "email": "cy@c.com", "ts": 1},
        )
    }
    want = groups(resolve(cfg, sources, run_id="r1"))
    assert want == {frozenset({f"email:{e}"}) for e in ("ann@a.com", "bob@b.com", "cy@c.com")}
    got, _, _ = on_duckdb(cfg, sources)
    assert got == want
