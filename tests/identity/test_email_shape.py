"""`validate: email_shape` is the rule a sync checks an email that addresses a row by
(`project/identity.py`): after normalising (`mailto:` and `Name <...>` taken off, a trailing
dot dropped, the domain IDNA-encoded) junk is dropped as `invalid`, in the embedded engine and in
the warehouse's SQL alike, so the graph gives a sync no email it would reject."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from tests.identity.helpers import config, groups, rows, warehouse_groups
from tests.identity.test_warehouse import load_postgres

from lockgate.identity import resolve
from lockgate.identity.normalize import normalize_column
from lockgate.identity.warehouse import DuckDBRunner, PostgresRunner, WarehouseStitcher

#: warehouse junk no normalising step makes an address of: each is dropped as `invalid`
JUNK = [
    "a@x.com, b@y.com",
    "a@x.com;b@y.com",
    "jane doe@x.com",
    "jane@",
    "@x.com",
    "jane@@x.com",
    "jane@x",
    "jane@x..com",
    "ja\x07ne@x.com",
    "jane\u00a0doe@x.com",
    "jane@x.com;",
    "x" * 294 + "@x.com",
]

#: unusual but real addresses, kept (lower-cased) by both engines
UNUSUAL = ["Jane.Doe+news@Mail.Acme.co.uk", '"jane.doe"@acme.io', "jöhn@acme.de"]


def test_the_normaliser_drops_junk_as_invalid_and_keeps_what_it_can_make_an_address_of() -> None:
    given = [
        *JUNK,
        *UNUSUAL,
        "Jane Doe <Jane@X.com>",
        "mailto:Jane@X.com",
        "jane@x.com.",
        "jane@bücher.de",
    ]
    clean = normalize_column(config(), "email", pa.array(given, pa.string()))
    assert clean.values.to_pylist() == [None] * len(JUNK) + [
        "jane.doe+news@mail.acme.co.uk",
        '"jane.doe"@acme.io',
        "jöhn@acme.de",
        "jane@x.com",
        "jane@x.com",
        "jane@x.com",
        "jane@xn--bcher-kva.de",
    ]
    assert clean.reasons.to_pylist() == ["invalid"] * len(JUNK) + [None] * 7


def sources() -> dict[str, pa.Table]:
    """One user per email: a junk email leaves its user a profile of its own."""
    emails = enumerate([*JUNK, *UNUSUAL])
    return {"app_users": rows(*({"user_id": f"u{i}", "email": e, "ts": 1} for i, e in emails))}


def expected() -> set[frozenset[str]]:
    want = {frozenset({f"user_id:u{i}"}) for i in range(len(JUNK))}
    for i, email in enumerate(UNUSUAL, start=len(JUNK)):
        want.add(frozenset({f"user_id:u{i}", f"email:{email.lower()}"}))
    return want


def test_junk_emails_are_dropped_alike_in_the_embedded_engine_and_on_duckdb() -> None:
    cfg, tables = config(), sources()
    assert groups(resolve(cfg, tables, run_id="r1")) == expected()
    con = duckdb.connect()
    for name, table in tables.items():
        con.register(f"{name}_arrow", table)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
    WarehouseStitcher(
        cfg,
        DuckDBRunner(con),
        tables={k: k for k in tables},
        columns={k: v.column_names for k, v in tables.items()},
    ).run()
    assert warehouse_groups(lambda sql: con.execute(sql).fetchall()) == expected()


@pytest.mark.postgres
def test_junk_emails_are_dropped_alike_on_postgres(postgres_dsn: str) -> None:
    import psycopg

    cfg, tables = config(), sources()
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        load_postgres(con, tables)
        WarehouseStitcher(
            cfg,
            PostgresRunner(con),
            tables={k: k for k in tables},
            columns={k: v.column_names for k, v in tables.items()},
        ).run()
        assert warehouse_groups(PostgresRunner(con).fetch) == expected()
