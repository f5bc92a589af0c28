"""`lockgate identity explain` and `lockgate identity plan` on a DuckDB project."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from lockgate.cli import cli, main
from lockgate.errors import ConfigError

PROJECT = """\
name: acme
sources:
  warehouse: {type: duckdb, path: warehouse.duckdb}
identity:
  identifier_types:
    user_id: {priority: 1, limit: 1, customerio: id}
    email: {priority: 2, limit: 5, customerio: email}
    anonymous_id: {priority: 9, limit: 25, bridge_known_profiles: false, customerio: anonymous_id}
  sources:
    - {name: app_users, table: users, key: id}
    - name: identifies
      sql: "select anonymous_id, user_id from events"
      mode: append_only
      trust: 3
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    con.execute("CREATE TABLE users (id INT, user_id VARCHAR, email VARCHAR)")
    con.execute(
        "INSERT INTO users VALUES (1, 'u1', 'Fam@x.com'), (2, 'u2', 'fam@x.com'), (3, 'u3', 'null')"
    )
    con.execute("CREATE TABLE events (anonymous_id VARCHAR, user_id VARCHAR)")
    con.execute("INSERT INTO events VALUES ('a1', 'u1'), ('a2', NULL)")
    con.close()
    (tmp_path / "lockgate.yml").write_text(PROJECT)
    return tmp_path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False, standalone_mode=False)
    return result.exit_code, result.output


def test_explain_shows_the_profile_rows_and_refusal(project: Path) -> None:
    code, out = invoke("identity", "explain", "FAM@x.com", "--project", str(project), "--json")
    assert code == 0
    why = json.loads(out)
    assert why["profile"]["cio_person_id"] == "u1"
    assert {r["row_key"] for r in why["rows"] if r["source"] == "app_users"} == {"1", "2"}
    assert [r["rule"] for r in why["refused"]] == ["limit:user_id 2>1"]
    code, out = invoke("identity", "explain", "a1", "--project", str(project))
    assert code == 0 and "u1" in out and "identifiers" in out


def test_plan_previews_a_blocklist_change(project: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.yml"
    old.write_text(PROJECT)
    (project / "lockgate.yml").write_text(
        PROJECT + "  blocked_values:\n    email: {exact_ci: [fam@x.com]}\n"
    )
    code, out = invoke("identity", "plan", "--old", str(old), "--project", str(project), "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["merges"] == [] and plan["splits"] == []


def test_explain_reads_the_operator_blocklist_table(project: Path) -> None:
    con = duckdb.connect(str(project / "warehouse.duckdb"))
    con.execute("CREATE TABLE blocklist AS SELECT 'email' AS id_type, 'fam@x.com' AS id_value")
    con.close()
    (project / "lockgate.yml").write_text(PROJECT + "  blocked_values_table: blocklist\n")
    code, out = invoke("identity", "explain", "fam@x.com", "--project", str(project), "--json")
    assert code == 0 and json.loads(out)["profile_id"] is None


def test_bad_identity_config_names_file_and_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "lockgate.yml").write_text(PROJECT.replace("limit: 5", "limit: 5, limt: 2"))
    with pytest.raises(SystemExit) as exit_:
        main(["identity", "explain", "x", "--project", str(project)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "lockgate.yml:7" in err and "limt" in err


def test_explain_names_a_key_column_the_source_lacks(project: Path) -> None:
    # each row was shown by its number (`row_key: "0"`), as if `key` were not set
    (project / "lockgate.yml").write_text(PROJECT.replace("key: id}", "key: idd}"))
    with pytest.raises(ConfigError) as caught:
        invoke("identity", "explain", "fam@x.com", "--project", str(project), "--json")
    assert caught.value.reason == "identity source `app_users` has no column `idd` (its `key`)"
    assert caught.value.hint == "the columns are id, user_id, email"
