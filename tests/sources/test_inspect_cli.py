"""`lockgate sources inspect` on a DuckDB project, and on Snowflake (fakesnow), through the
real CLI group."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from tests.sources.warehouses import FAKESNOW_WARNING

from lockgate.cli import cli


@pytest.fixture
def project(tmp_path: Path) -> Path:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        conn.execute("create schema analytics")
        conn.execute(
            "create table analytics.users as select range as id, "
            "'u' || range || '@Example.com' as email, now() as signed_up_at from range(42)"
        )
        conn.execute("create view analytics.recent as select * from analytics.users")
    (tmp_path / "lockgate.yml").write_text(
        "name: shop\nsources:\n  warehouse:\n    type: duckdb\n    path: warehouse.duckdb\n"
    )
    return tmp_path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["sources", "inspect", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_inspect_lists_schemas_and_tables_with_kind_and_rows(project: Path) -> None:
    code, output = _run("--project", str(project))

    assert code == 0, output
    assert "analytics" in output
    assert "users" in output and "42" in output
    assert "recent" in output and "view" in output


def test_inspect_row_counts_read_as_counts(project: Path) -> None:
    """Right-aligned as every count in Lockgate's tables; a view's unknown count is empty."""
    code, output = _run("--project", str(project))

    assert code == 0, output
    cells = {
        line.split("│")[2].strip(): line.split("│")[4]
        for line in output.splitlines()
        if line.count("│") == 5  # the tables' rows, not the schemas'
    }
    assert cells["users"].endswith("42 ") and cells["users"].strip() == "42"
    assert cells["recent"].strip() == ""


def test_inspect_a_table_shows_columns_with_warehouse_and_arrow_types(project: Path) -> None:
    code, output = _run("warehouse", "--table", "analytics.users", "--project", str(project))

    assert code == 0, output
    assert "email" in output and "VARCHAR" in output and "string" in output
    assert "TIMESTAMP WITH TIME ZONE" in output


def test_inspect_json_is_machine_readable(project: Path) -> None:
    code, output = _run("--schema", "analytics", "--json", "--project", str(project))

    assert code == 0, output
    data = json.loads(output)
    assert data["source"] == "warehouse" and data["type"] == "duckdb"
    assert {"schema": "analytics", "name": "users", "kind": "table", "rows": 42} in data["tables"]
    assert {t["name"] for t in data["tables"]} == {"users", "recent"}


def test_inspect_columns_as_json(project: Path) -> None:
    code, output = _run("--table", "analytics.users", "--json", "--project", str(project))

    assert code == 0, output
    columns = json.loads(output)["columns"]
    assert columns[0] == {"name": "id", "type": "BIGINT", "arrow_type": "int64", "nullable": True}


def test_inspect_an_unknown_source_says_which_exist(project: Path) -> None:
    result = CliRunner().invoke(cli, ["sources", "inspect", "nope", "--project", str(project)])

    assert result.exit_code != 0
    assert "no source named `nope`" in str(result.exception)
    assert "`warehouse`" in (getattr(result.exception, "hint", "") or "")


def test_inspect_an_unknown_schema_says_which_exist(project: Path) -> None:
    result = CliRunner().invoke(
        cli, ["sources", "inspect", "--schema", "analytcs", "--project", str(project)]
    )
    assert result.exit_code != 0
    assert "has no schema `analytcs`" in str(result.exception)
    assert "`analytics`" in (getattr(result.exception, "hint", "") or "")
    # a schema named in another case is the same schema
    code, output = _run("--schema", "ANALYTICS", "--project", str(project))
    assert code == 0 and "users" in output


@pytest.fixture
def snowflake_project(tmp_path: Path) -> Iterator[Path]:
    """A Snowflake source (fakesnow) holding `USERS` and `"lower_tbl"`, a table created with a
    quoted lower-case name, which unquoted SQL cannot name (`lower_tbl` means `LOWER_TBL`)."""
    import fakesnow
    import snowflake.connector

    (tmp_path / "lockgate.yml").write_text(
        "name: shop\nsources:\n  warehouse: {type: snowflake, account: lg, user: t, "
        "database: LG, schema: PUBLIC}\n"
    )
    with fakesnow.patch():
        conn = snowflake.connector.connect(account="lg", user="t", database="LG", schema="PUBLIC")
        cursor = conn.cursor()
        cursor.execute("create table users (id int, email varchar)")
        cursor.execute('create table "lower_tbl" (id int, "mixedCol" varchar)')
        yield tmp_path
        conn.close()


@pytest.mark.filterwarnings(FAKESNOW_WARNING)
def test_snowflake_tables_are_listed_as_they_can_be_inspected(snowflake_project: Path) -> None:
    code, output = _run("--json", "--project", str(snowflake_project))
    assert code == 0, output
    tables = [(t["schema"], t["name"]) for t in json.loads(output)["tables"]]
    assert set(tables) == {("public", '"lower_tbl"'), ("public", "users")}
    # each name the listing shows, given back to `--table`, bare or with its schema
    for schema, name in tables:
        for given in (name, f"{schema}.{name}"):
            code, output = _run("--table", given, "--json", "--project", str(snowflake_project))
            assert code == 0, output
            assert json.loads(output)["columns"][0]["name"] == "id"
    code, output = _run("--table", '"lower_tbl"', "--project", str(snowflake_project))
    assert code == 0, output
    assert "mixedCol" in output and "TEXT" in output


@pytest.mark.filterwarnings(FAKESNOW_WARNING)
def test_snowflake_lower_case_table_named_unquoted_says_how_to_name_it(
    snowflake_project: Path,
) -> None:
    result = CliRunner().invoke(
        cli, ["sources", "inspect", "--table", "lower_tbl", "--project", str(snowflake_project)]
    )
    assert result.exit_code != 0
    assert "no table or view `lower_tbl`" in str(result.exception)
    assert getattr(result.exception, "hint", "") == (
        'did you mean `public."lower_tbl"`? A name listed in quotes is stored in lower case; '
        "unquoted, `lower_tbl` means `LOWER_TBL`"
    )
