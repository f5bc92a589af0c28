"""An Arrow table registered for a statement (`store.registered`) never hides that statement's
error: inside a transaction, a failed statement aborts it, and DuckDB refuses to unregister
anything until the rollback (`Current transaction is aborted`)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from lockgate.state.store import registered, transaction


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(tmp_path / "state.duckdb"))
    con.execute("create table ledger (k varchar primary key)")
    return con


def test_a_statement_failing_inside_a_transaction_raises_its_own_error(
    con: duckdb.DuckDBPyConnection,
) -> None:
    batch = pa.table({"k": ["a", "a"]})
    with pytest.raises(duckdb.ConstraintException, match='duplicate key "a"'):
        with transaction(con), registered(con, "_batch", batch):
            con.execute("insert into ledger select k from _batch")

    # rolled back, the name gone: the connection takes the next batch
    with transaction(con), registered(con, "_batch", pa.table({"k": ["b"]})):
        con.execute("insert into ledger select k from _batch")
    assert con.execute("select k from ledger").fetchall() == [("b",)]
    with pytest.raises(duckdb.CatalogException):
        con.execute("select * from _batch")


def test_a_name_registered_before_the_transaction_is_dropped_after_the_block(
    con: duckdb.DuckDBPyConnection,
) -> None:
    with registered(con, "_batch", pa.table({"k": ["a"]})):
        assert con.execute("select count(*) from _batch").fetchall() == [(1,)]
    with pytest.raises(duckdb.CatalogException):
        con.execute("select * from _batch")
