"""`lockgate validate --connect`: every warehouse, model and Customer.io credential is tried,
each on its own, before any run; a failure names what and why, with the hint a run would give,
and does not hide the others."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from lockgate.cli import cli
from lockgate.demo import warehouse
from lockgate.emulator import Emulator, EmulatorConfig
from lockgate.errors import ConnectionCheckError

SYNCS = ["billing", "companies", "customer_profile", "leads", "memberships", "product_events"]


def project(root: Path, url: str, monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> Path:
    """The scaffolded project with the sample warehouse, its credentials set for ``url``."""
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    monkeypatch.setenv("CUSTOMERIO_TRACK_URL", url)
    assert CliRunner().invoke(cli, ["init", str(root)]).exit_code == 0
    warehouse.build(root / "warehouse.duckdb", users=40)
    return root


def add_postgres(root: Path, name: str, url: str) -> None:
    """Declare a Postgres source ``name`` in the project's lockgate.yml."""
    yml = root / "lockgate.yml"
    declared = f"sources:\n  {name}:\n    type: postgres\n    url: {url}\n"
    yml.write_text(yml.read_text().replace("sources:\n", declared, 1))


def connect(root: Path) -> tuple[int, dict[tuple[str, str], dict[str, object]]]:
    """Exit code, and each check's JSON by (what, name)."""
    result = CliRunner().invoke(cli, ["validate", "--connect", "--json", "--project", str(root)])
    doc = json.loads(result.stdout)
    checks = {(c["what"], c["name"]): c for c in doc["connections"]}
    assert len(checks) == len(doc["connections"])  # one line per thing checked
    assert doc["valid"] == (result.exit_code == 0)
    return result.exit_code, checks


def test_a_working_project_passes_every_check_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = Emulator(EmulatorConfig(environment_id=4242))
    with emulator.serve() as url:
        root = project(tmp_path / "p", url, monkeypatch, emulator)
        code, checks = connect(root)
        monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emulator.config.app_api_key)
        code_with_app, with_app = connect(root)
    assert code == 0 and code_with_app == 0
    assert checks["source", "warehouse"]["ok"] is True
    for sync in SYNCS:
        assert checks["model", sync]["ok"] is True, checks["model", sync]
        assert "the mapping compiles" in str(checks["model", sync]["detail"])
    assert {name for what, name in checks if what == "identity source"} == {
        "app_users",
        "stripe",
        "crm",
        "sessions",
        "leads",
    }
    assert "workspace 4242 (region us)" in str(checks["Track API", "customerio"]["detail"])
    # no App API key: skipped, not failed (syncs run without one), with how to set it
    assert checks["App API", "customerio"]["ok"] is None
    assert "CUSTOMERIO_APP_API_KEY" in str(checks["App API", "customerio"]["hint"])
    assert with_app["App API", "customerio"]["ok"] is True
    # the scaffold's `run_log: {}` writes to the sample warehouse, which this user can write
    assert checks["run log", "run_log"]["ok"] is True
    assert "writes `warehouse`.lockgate" in str(checks["run log", "run_log"]["detail"])
    # nothing was sent, nothing written
    assert not emulator.people() and not emulator.events()
    assert not (root / ".lockgate").exists()


def test_each_failure_is_named_with_its_hint_and_hides_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = Emulator()
    with emulator.serve() as url:
        root = project(tmp_path / "p", url, monkeypatch, emulator)
        # a model that no longer returns a column its sync maps
        sync_file = root / "syncs" / "customer_profile.yml"
        sync_file.write_text(
            sync_file.read_text().replace("plan_tier: plan_tier", "plan_tier: plan")
        )
        # a wrong Track key and App API key
        monkeypatch.setenv("CUSTOMERIO_API_KEY", "rotated-yesterday")
        monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", "not-an-app-key")
        code, checks = connect(root)
        result = CliRunner().invoke(cli, ["validate", "--connect", "--project", str(root)])
    assert code == 1
    model = checks["model", "customer_profile"]
    assert model["ok"] is False
    assert "`plan_tier`" in str(model["detail"]) and "`plan`" in str(model["detail"])
    track = checks["Track API", "customerio"]
    assert track["ok"] is False and "refused the Track API credentials (HTTP 401)" in str(
        track["detail"]
    )
    assert "CUSTOMERIO_API_KEY" in str(track["hint"])
    assert checks["App API", "customerio"]["ok"] is False
    # the others still ran and passed
    assert all(checks["model", s]["ok"] for s in SYNCS if s != "customer_profile")
    assert checks["source", "warehouse"]["ok"] is True
    # on the terminal: the table, the hints, and one error saying how many failed
    assert isinstance(result.exception, ConnectionCheckError)
    assert str(result.exception).startswith("3 of 15 connection checks failed")
    assert "FAILED" in result.output and "CUSTOMERIO_APP_API_KEY: an App API key" in result.output
    assert "rotated-yesterday" not in result.output + str(checks)


def test_an_unreachable_workspace_a_missing_variable_and_a_wrong_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eu = Emulator(EmulatorConfig(region="eu"))
    with eu.serve() as url:
        root = project(tmp_path / "p", url, monkeypatch, eu)
        _, checks = connect(root)
        region = checks["Track API", "customerio"]
        assert region["ok"] is False and "`eu` region" in str(region["detail"])
        assert "CUSTOMERIO_REGION=eu" in str(region["hint"])
        monkeypatch.setenv("CUSTOMERIO_REGION", "eu")
        code, checks = connect(root)
        assert code == 0 and checks["Track API", "customerio"]["ok"] is True
    # the emulator has stopped: nothing listens there any more
    _, checks = connect(root)
    down = checks["Track API", "customerio"]
    assert down["ok"] is False and "cannot reach" in str(down["detail"])
    monkeypatch.delenv("CUSTOMERIO_SITE_ID")
    _, checks = connect(root)
    missing = checks["Track API", "customerio"]
    assert missing["ok"] is False and "CUSTOMERIO_SITE_ID" in str(missing["detail"])


def test_a_warehouse_that_does_not_answer_skips_its_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Postgres nobody listens on: its source check fails with the driver's reason, and the
    sync reading it is skipped (not failed twice); the DuckDB source's checks still pass."""
    emulator = Emulator()
    with emulator.serve() as url:
        root = project(tmp_path / "p", url, monkeypatch, emulator)
        add_postgres(root, "crm_db", "postgresql://lockgate@127.0.0.1:9/crm?connect_timeout=3")
        (root / "syncs" / "crm_people.yml").write_text(
            "name: crm_people\nsource: crm_db\nkind: people\nmodel: {table: contacts}\n"
            "primary_key: id\nidentify_by: {id: id}\nattributes: {plan: plan}\n"
        )
        code, checks = connect(root)
    assert code == 1
    source = checks["source", "crm_db"]
    assert source["ok"] is False and "crm_db" in str(source["detail"])
    assert checks["model", "crm_people"]["ok"] is None
    assert "did not connect" in str(checks["model", "crm_people"]["detail"])
    assert checks["source", "warehouse"]["ok"] is True
    assert checks["model", "customer_profile"]["ok"] is True


@pytest.mark.postgres
def test_a_postgres_model_is_planned_and_its_mapping_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> None:
    """On Postgres the model is planned with `LIMIT 0` (no rows read) and the mapping is
    compiled against the columns it returns: a column renamed away fails, named."""
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists lg_check cascade")
        conn.execute("create schema lg_check")
        conn.execute(
            "create table lg_check.accounts (id bigint primary key, email text, "
            "signed_up_at timestamptz, plan text, seats int)"
        )
    emulator = Emulator()
    with emulator.serve() as url:
        root = project(tmp_path / "p", url, monkeypatch, emulator)
        add_postgres(root, "app_db", postgres_dsn)
        accounts = root / "syncs" / "accounts.yml"
        accounts.write_text(
            "name: accounts\nsource: app_db\nkind: people\nmodel: {table: lg_check.accounts}\n"
            "primary_key: id\nidentify_by: {id: id, email: email}\nattributes:\n"
            "  account_created_at: {column: signed_up_at, type: timestamp}\n"
            "  account_seats: {column: seats, type: number}\n"
        )
        code, checks = connect(root)
        assert code == 0, [c for c in checks.values() if c["ok"] is False]
        assert checks["source", "app_db"]["ok"] is True
        assert checks["model", "accounts"]["detail"] == "5 columns; the mapping compiles (people)"
        accounts.write_text(
            accounts.read_text().replace("column: signed_up_at", "column: signup_at")
        )
        code, checks = connect(root)
    assert code == 1
    # the sync file and the line of the field, as a load error names them
    assert "syncs/accounts.yml:8: sync `accounts`: field `account_created_at` reads column " in (
        detail := str(checks["model", "accounts"]["detail"])
    )
    assert "`signup_at`, which the model does not return" in detail


def test_the_webhook_receiver_is_checked_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `webhooks:` section adds one check: the signing key's variable, and the warehouse the
    events load into (the first DuckDB or Postgres source unless `webhooks.warehouse` says)."""
    emulator = Emulator()
    with emulator.serve() as url:
        root = project(tmp_path / "p", url, monkeypatch, emulator)
        code, checks = connect(root)
        assert code == 0 and not any(what == "webhooks" for what, _ in checks)
        yml = root / "lockgate.yml"
        yml.write_text(yml.read_text() + "webhooks: {dataset: engagement}\n")
        monkeypatch.delenv("CUSTOMERIO_WEBHOOK_SIGNING_KEY", raising=False)
        code, checks = connect(root)
        receiver = checks["webhooks", "receiver"]
        assert code == 1 and receiver["ok"] is False
        assert "CUSTOMERIO_WEBHOOK_SIGNING_KEY" in str(receiver["detail"]) + str(receiver["hint"])
        monkeypatch.setenv("CUSTOMERIO_WEBHOOK_SIGNING_KEY", "whsec-from-the-settings-page")
        code, checks = connect(root)
        receiver = checks["webhooks", "receiver"]
        assert code == 0 and receiver["ok"] is True
        assert "loads into `warehouse`.engagement" in str(receiver["detail"])
        assert "whsec-from-the-settings-page" not in str(checks)


def test_a_snowflake_model_is_planned_and_its_mapping_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snowflake through the official connector (fakesnow behind it): the source plans
    `select 1`, the model plans with `LIMIT 0`, and its mapping compiles against the columns."""
    import warnings

    import fakesnow
    import snowflake.connector

    emulator = Emulator()
    with warnings.catch_warnings(), fakesnow.patch(), emulator.serve() as url:
        warnings.simplefilter("ignore")  # fakesnow's own DuckDB warnings
        con = snowflake.connector.connect(account="lg", user="t", database="LG", schema="PUBLIC")
        con.cursor().execute(
            "create table accounts (id integer, email varchar, plan varchar, created_at timestamp)"
        )
        root = project(tmp_path / "p", url, monkeypatch, emulator)
        yml = root / "lockgate.yml"
        declared = (
            "sources:\n  sf:\n    type: snowflake\n    account: lg\n    user: t\n"
            "    database: LG\n    schema: PUBLIC\n"
        )
        yml.write_text(yml.read_text().replace("sources:\n", declared, 1))
        accounts = root / "syncs" / "sf_accounts.yml"
        accounts.write_text(
            "name: sf_accounts\nsource: sf\nkind: people\nmodel: {table: accounts}\n"
            "primary_key: id\nidentify_by: {id: id, email: email}\nattributes:\n"
            "  sf_plan: plan\n  sf_created_at: {column: created_at, type: timestamp}\n"
        )
        code, checks = connect(root)
        accounts.write_text(accounts.read_text().replace("sf_plan: plan", "sf_plan: tier"))
        _, renamed = connect(root)
        con.close()
    assert code == 0, [c for c in checks.values() if c["ok"] is False]
    assert checks["source", "sf"]["ok"] is True
    assert checks["source", "sf"]["detail"] == "snowflake: connected"
    assert checks["model", "sf_accounts"]["ok"] is True
    assert renamed["model", "sf_accounts"]["ok"] is False
    assert "`tier`" in str(renamed["model", "sf_accounts"]["detail"])


@pytest.mark.postgres
def test_a_run_log_the_postgres_user_may_not_create_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> None:
    """The run log's check reads the user's CREATE grant (nothing is created): a reader role
    fails it with the grant to give; the server's owner passes."""
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists lg_runs cascade")
        conn.execute("drop role if exists lg_reader")
        conn.execute("create role lg_reader login")
        conn.execute("revoke create on database postgres from public, lg_reader")
        conn.execute("revoke create on schema public from public")
    reader = postgres_dsn.replace("postgres@", "lg_reader@", 1)
    emulator = Emulator()
    with emulator.serve() as url:
        root = project(tmp_path / "p", url, monkeypatch, emulator)
        add_postgres(root, "app_db", reader)
        yml = root / "lockgate.yml"
        yml.write_text(
            yml.read_text().replace("run_log: {}", "run_log: {warehouse: app_db, dataset: lg_runs}")
        )
        code, checks = connect(root)
        refused = checks["run log", "run_log"]
        assert code == 1 and refused["ok"] is False
        assert "user `lg_reader` may not create tables in schema `lg_runs`" in str(
            refused["detail"]
        )
        assert "grant CREATE on schema lg_runs" in str(refused["hint"])
        yml.write_text(yml.read_text().replace(reader, postgres_dsn))
        code, checks = connect(root)
    assert checks["run log", "run_log"]["ok"] is True
    assert "user `postgres` may create its tables" in str(checks["run log", "run_log"]["detail"])


def test_a_duckdb_model_with_a_union_column_is_planned_and_its_mapping_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow cannot build an empty table of a union type: the model's check failed with
    `ArrowNotImplementedError: sparse_union` where a run reads the model fine."""
    emulator = Emulator()
    with emulator.serve() as url:
        root = project(tmp_path / "p", url, monkeypatch, emulator)
        with duckdb.connect(str(root / "warehouse.duckdb")) as con:
            con.execute(
                "create table tagged as select 1 as id, "
                "union_value(num := 5)::union(num int, s varchar) as tag"
            )
        (root / "syncs" / "tagged.yml").write_text(
            "name: tagged\nsource: warehouse\nmodel: {table: tagged}\nkind: people\n"
            "primary_key: id\nidentify_by: {id: id}\nattributes: [tag]\n"
        )
        code, checks = connect(root)
    assert checks["model", "tagged"]["ok"] is True, checks["model", "tagged"]
    assert "the mapping compiles" in str(checks["model", "tagged"]["detail"])
    assert code == 0


def test_a_model_of_naive_timestamps_is_said_to_be_read_as_utc_until_a_zone_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = Emulator()
    with emulator.serve() as url:
        root = project(tmp_path / "p", url, monkeypatch, emulator)
        with duckdb.connect(str(root / "warehouse.duckdb")) as con:
            con.execute(
                "create table signups as select 1 as id, "
                "timestamp '2026-07-01 09:00:00' as created_at, now() as seen_at"
            )
        body = (
            "name: signups\nsource: warehouse\nmodel: {table: signups}\nkind: people\n"
            "primary_key: id\nidentify_by: {id: id}\nattributes: [created_at, seen_at]\n"
        )
        (root / "syncs" / "signups.yml").write_text(body)
        code, checks = connect(root)
        detail = str(checks["model", "signups"]["detail"])
        assert code == 0 and "the mapping compiles (people); column `created_at` is a " in detail
        assert "without time zone, read as UTC (set `timezone:`" in detail
        assert "seen_at" not in detail
        (root / "syncs" / "signups.yml").write_text(body + "timezone: America/New_York\n")
        code, checks = connect(root)
    assert checks["model", "signups"]["detail"].endswith("the mapping compiles (people)")
    assert code == 0
