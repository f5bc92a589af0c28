"""`lockgate reconcile`: read back what Customer.io holds and report drift per attribute."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.sync.reconcile import is_loopback, reconcile, same
from lockgate.sync.reconcile_events import staged_model
from lockgate.sync.run import run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {sql: "select * from users"}
kind: people
primary_key: user_id
identify_by: {id: user_id, email: email}
attributes:
  plan: plan
  mrr: {column: mrr, type: number}
  vip: {column: vip, type: boolean}
  signed_up_at: {column: signed_up_at, type: timestamp}
  promo: {column: promo, on_null: clear}
  tags: {column: tags, type: json}
"""

USERS = """
create or replace table users as select * from (values
  (1, 'ada@example.com', 'pro', 99.5::decimal(8,2), 'true', timestamptz '2026-01-02 03:04:05+00',
   'SPRING', '{"a": [1, 2]}'),
  (2, 'grace@example.com', 'free', 0, 'false', timestamptz '2026-02-01 00:00:00+00', null, null),
  (3, 'linus@example.com', null, 10, '1', null, null, '[]')
) t(user_id, email, plan, mrr, vip, signed_up_at, promo, tags);
"""


@pytest.fixture
def synced(project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    emu = project_factory.emulator
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 3
    return project


def test_values_compare_by_type_not_by_text() -> None:
    assert same(1767323045, "1767323045")
    assert same(True, "true") and same(False, "false") and not same(True, "false")
    assert same(99.5, "99.5") and same(10, "10.0") and not same(99.5, "99.4")
    assert same({"a": [1, 2]}, '{"a":[1,2]}')
    assert same("", None)  # cleared and absent are the same
    assert not same("pro", None) and not same("10", "10.0")  # strings stay strings
    assert is_loopback("http://127.0.0.1:8765") and is_loopback("http://localhost:1")
    assert not is_loopback("https://api.customer.io")


def test_a_clean_sync_has_no_drift(synced: Any) -> None:
    report = reconcile(synced, "profile", console=NullConsole())
    assert not report.drifting
    assert (report.population, report.compared, report.sampled) == (3, 3, False)
    by_name = {a.attribute: a for a in report.attributes}
    assert by_name["plan"].matched == 2  # linus's null plan is skipped, so not compared
    assert by_name["signed_up_at"].matched == 2
    assert by_name["promo"].matched == 3  # two are cleared, and Customer.io has none
    assert {a.attribute for a in report.attributes} == {
        "plan", "mrr", "vip", "signed_up_at", "promo", "tags", "email",
    }  # fmt: skip


def test_a_value_changed_in_customerio_is_reported_as_drift(
    synced: Any, project_factory: ProjectFactory
) -> None:
    emu = project_factory.emulator
    with emu.client(auth=emu.track_auth) as client:
        assert client.put("/api/v1/customers/2", json={"plan": "enterprise"}).status_code == 200
        assert client.put("/api/v1/customers/1", json={"mrr": ""}).status_code == 200
        assert client.delete("/api/v1/customers/3").status_code == 200

    report = reconcile(synced, "profile", console=NullConsole())
    assert report.drifting
    by_name = {a.attribute: a for a in report.attributes}
    assert (by_name["plan"].matched, by_name["plan"].differing) == (1, 1)
    assert by_name["plan"].samples == (("2", "free", "enterprise"),)
    assert (by_name["mrr"].missing, by_name["mrr"].samples) == (1, (("1", 99.5, None),))
    assert not by_name["vip"].drifting
    assert (report.not_found, report.not_found_samples) == (1, ("3",))

    runner = CliRunner()
    args = ["reconcile", "profile", "--project", str(synced.root)]
    result = runner.invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 2
    doc = json.loads(result.output)
    plan = next(a for a in doc["attributes"] if a["attribute"] == "plan")
    assert plan["samples"] == [{"key": "2", "warehouse": "free", "customerio": "enterprise"}]
    result = runner.invoke(cli, [*args, "--sample", "2"], catch_exceptions=False)
    assert "a sample of 2 of 3 people" in result.output
    assert "matched" in result.output and "missing in Customer.io" in result.output


def test_numbers_compare_exactly_not_within_a_tolerance() -> None:
    assert not same(1780315200, "1780315201")  # a timestamp one second off
    assert not same(4000000001, "4000000002")
    assert not same(9007199254740993, "9007199254740992")  # past 2^53, one apart
    assert same(9007199254740993, "9007199254740993") and same(1780315200, "1780315200.0")
    assert same(5.0, "5") and same(5.0, "5.0") and same(1e20, "1e+20")
    assert not same(0.1 + 0.2, "0.3") and not same(5, "five")


def test_large_numbers_changed_in_customerio_are_drift(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = project_factory.emulator
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    project_factory.sql(
        "create or replace table users as select '1' as id,"
        " timestamptz '2026-06-01 12:00:00+00' as signed_up_at,"
        " 4000000001::bigint as account_number, 9007199254740993::bigint as balance_cents"
    )
    project = project_factory.write(
        {
            "profile": """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  signed_up_at: {column: signed_up_at, type: timestamp}
  account_number: {column: account_number, type: integer}
  balance_cents: {column: balance_cents, type: integer}
"""
        }
    )
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    assert not reconcile(project, "profile", console=NullConsole()).drifting
    changed = {
        "signed_up_at": 1780315201,
        "account_number": 4000000002,
        "balance_cents": 9007199254740992,
    }
    with emu.client(auth=emu.track_auth) as client:
        assert client.put("/api/v1/customers/1", json=changed).status_code == 200

    args = ["reconcile", "profile", "--project", str(project.root), "--json"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 2
    doc = json.loads(result.output)
    assert {a["attribute"]: a["differing"] for a in doc["attributes"]} == {
        "signed_up_at": 1,
        "account_number": 1,
        "balance_cents": 1,
    }
    balance = next(a for a in doc["attributes"] if a["attribute"] == "balance_cents")
    assert balance["samples"] == [
        {"key": "1", "warehouse": 9007199254740993, "customerio": "9007199254740992"}
    ]


def test_an_env_reference_in_track_url_is_read_for_the_app_api(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `track_url: ${VAR}` (docs/config.md) also points the App API there: reconcile, and the
    # App API check of `validate --connect`, read the variable, not the text `${VAR}`
    emu = project_factory.emulator
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    monkeypatch.setenv("LOCKGATE_TEST_CIO_URL", emu.base_url)
    monkeypatch.delenv("CUSTOMERIO_TRACK_URL", raising=False)
    monkeypatch.delenv("CUSTOMERIO_APP_URL", raising=False)
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE}, url="${LOCKGATE_TEST_CIO_URL}")
    assert run_sync(project, "profile", console=NullConsole()).delivered == 3
    report = reconcile(project, "profile", console=NullConsole())
    assert not report.drifting and report.compared == 3
    result = CliRunner().invoke(
        cli, ["validate", "--connect", "--json", "--project", str(project.root)]
    )
    assert result.exit_code == 0, result.output


def test_reconcile_spills_the_model_outside_the_state_folder(synced: Any) -> None:
    # a model larger than the memory limit spilled into `<state>/tmp`: on a read-only state
    # (a backup, a read-only mount; reconcile only reads the state) that failed the command
    sync = synced.sync("profile")
    before = sorted(p.relative_to(synced.state_dir) for p in synced.state_dir.rglob("*"))
    with staged_model(synced, sync, NullConsole()) as (con, _):
        spill = Path(con.execute("select current_setting('temp_directory')").fetchone()[0])
        assert spill.is_dir()
        assert not spill.resolve().is_relative_to(synced.state_dir.resolve())
        assert con.execute("select count(*) from model").fetchone() == (3,)
    assert not spill.exists()  # removed on leaving
    assert not reconcile(synced, "profile", console=NullConsole()).drifting
    after = sorted(p.relative_to(synced.state_dir) for p in synced.state_dir.rglob("*"))
    assert after == before
