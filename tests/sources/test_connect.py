"""`connect()`, the registry, and the errors a user sees before any query runs."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import duckdb
import pytest

from lockgate.errors import ConfigError, MissingDependencyError, SourceError
from lockgate.project.models import DuckDBSourceConfig, PostgresSourceConfig
from lockgate.sources import (
    SOURCES,
    BigQuerySource,
    DuckDBSource,
    PostgresSource,
    RedshiftSource,
    SnowflakeSource,
    Source,
    connect,
)
from lockgate.sources.base import redact


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_registry_maps_each_type_key_to_its_class() -> None:
    assert SOURCES == {
        "duckdb": DuckDBSource,
        "postgres": PostgresSource,
        "snowflake": SnowflakeSource,
        "bigquery": BigQuerySource,
    }
    assert all(cls.NAME == key for key, cls in SOURCES.items())
    classes: list[type[Source]] = [*SOURCES.values(), RedshiftSource]
    for cls in classes:
        assert isinstance(cls.SUPPORTS_ARROW_NATIVE, bool)
        assert isinstance(cls.SUPPORTS_ROW_COUNTS, bool)


def test_duckdb_path_is_relative_to_the_project_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with duckdb.connect(str(tmp_path / "data" / "wh.duckdb")) as conn:
        conn.execute("create table t as select 1 as x")

    source = connect(DuckDBSourceConfig(path="data/wh.duckdb"), root=tmp_path)

    assert isinstance(source, Source)
    assert source.read("select x from t").read_all().to_pylist() == [{"x": 1}]
    source.close()


def test_duckdb_is_opened_read_only(tmp_path: Path) -> None:
    duckdb.connect(str(tmp_path / "wh.duckdb")).close()
    source = connect(DuckDBSourceConfig(path="wh.duckdb"), root=tmp_path)

    with pytest.raises(SourceError, match="read-only"):
        source.read("create table t (x int)").read_all()
    source.close()


def test_a_missing_duckdb_file_is_named_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        connect(DuckDBSourceConfig(path="nope.duckdb"), root=tmp_path, name="warehouse")

    assert "duckdb source `warehouse`" in caught.value.reason
    assert "nope.duckdb" in caught.value.reason
    assert "`path`" in (caught.value.hint or "")


def test_duckdb_in_memory_works() -> None:
    source = connect(DuckDBSourceConfig(path=":memory:"), root=Path("."))

    assert source.read("select 42 as answer").read_all().to_pylist() == [{"answer": 42}]
    source.close()


@pytest.mark.parametrize("redshift", [False, True])
def test_unreachable_postgres_names_host_and_port_but_never_the_password(
    monkeypatch: pytest.MonkeyPatch, redshift: bool
) -> None:
    port = _closed_port()
    monkeypatch.setenv("WAREHOUSE_URL", f"postgresql://app:hunter2@127.0.0.1:{port}/db")
    source = connect(
        PostgresSourceConfig(url="${WAREHOUSE_URL}", redshift=redshift),
        root=Path("."),
        name="warehouse",
    )

    with pytest.raises(SourceError) as caught:
        source.read("select 1")

    text = str(caught.value)
    assert "hunter2" not in text
    assert f"127.0.0.1:{port}" in caught.value.reason
    assert f"is the server running at 127.0.0.1:{port}" in (caught.value.hint or "")
    assert ("redshift" if redshift else "postgres") + " source `warehouse`" in text


def test_an_unset_url_variable_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="`WAREHOUSE_URL`"):
        connect(PostgresSourceConfig(url="${WAREHOUSE_URL}"), root=Path("."))


@pytest.mark.postgres
def test_postgres_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> None:
    monkeypatch.setenv("WAREHOUSE_URL", postgres_dsn)
    source = connect(PostgresSourceConfig(url="${WAREHOUSE_URL}"), root=Path("."))

    assert source.read("select 1 as one").read_all().to_pylist() == [{"one": 1}]
    source.close()


def test_a_missing_driver_prints_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "adbc_driver_postgresql.dbapi", None)
    source = connect(PostgresSourceConfig(url="postgresql://app@127.0.0.1/db"), root=Path("."))

    with pytest.raises(MissingDependencyError) as caught:
        source.read("select 1")

    assert caught.value.hint == 'pip install "lockgate[postgres]"'
    assert "adbc-driver-postgresql" in caught.value.reason


def test_a_missing_snowflake_driver_prints_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "snowflake.connector", None)

    with pytest.raises(MissingDependencyError) as caught:
        SnowflakeSource(account="x", user="y")

    assert caught.value.hint == 'pip install "lockgate[snowflake]"'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:hunter2@db:5432/x failed", "postgresql://app:***@db:5432/x failed"),
        ("host=db password=hunter2 user=app", "host=db password=*** user=app"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_redact_removes_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_batch_rows_must_be_positive() -> None:
    source = DuckDBSource()

    with pytest.raises(ValueError, match="`batch_rows`"):
        source.read("select 1", batch_rows=0)
    source.close()


@pytest.mark.postgres
@pytest.mark.parametrize("redshift", [False, True])
def test_readers_release_their_connections_read_or_not(postgres_dsn: str, redshift: bool) -> None:
    import gc

    import psycopg

    def backends() -> int:
        with psycopg.connect(postgres_dsn) as conn:
            row = conn.execute(
                "select count(*) from pg_stat_activity "
                "where backend_type = 'client backend' and pid <> pg_backend_pid()"
            ).fetchone()
            return int(row[0]) if row else 0

    source = connect(PostgresSourceConfig(url=postgres_dsn, redshift=redshift), root=Path("."))
    source.schema_of("select 1 as x")  # opens the shared catalog connection
    before = backends()

    source.read("select generate_series(1, 10) as x").read_all()
    unread = source.read("select generate_series(1, 10) as x")
    del unread
    gc.collect()

    assert backends() == before
    source.close()


@pytest.mark.parametrize("redshift", [False, True])
@pytest.mark.parametrize(
    "url",
    [
        "postgresql//app:s3cretpw@127.0.0.1:{port}/db",  # the colon after the scheme missing
        "postgres:/app:s3cretpw@127.0.0.1:{port}/db",
        "postgresql://app:s3cret@pw99x@127.0.0.1:{port}/db",  # an `@` in the password unescaped
    ],
)
def test_a_malformed_url_never_shows_its_password(
    monkeypatch: pytest.MonkeyPatch, redshift: bool, url: str
) -> None:
    monkeypatch.setenv("WAREHOUSE_URL", url.format(port=_closed_port()))
    source = connect(
        PostgresSourceConfig(url="${WAREHOUSE_URL}", redshift=redshift),
        root=Path("."),
        name="warehouse",
    )
    with pytest.raises(SourceError) as caught:
        source.read("select 1")
    text = str(caught.value)
    assert "s3cret" not in text and "pw99x" not in text
