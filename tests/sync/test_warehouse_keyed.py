"""Postgres models keyed in the warehouse: an incremental run copies each row's key and a hash
computed by Postgres, then only the changed rows. What reaches Customer.io must be exactly what
a run that copies the whole model sends: every change once, nothing unchanged, removals undone."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.project.loader import Project, load_project
from lockgate.sync.extract import WarehouseKeyed
from lockgate.sync.run import run_sync

pytestmark = pytest.mark.postgres

PEOPLE = """
name: people
source: warehouse
model: {sql: "select * from lg_keyed.users"}
kind: people
mode: mirror
primary_key: [org, user_id]
identify_by: {id: person_id, email: email}
attributes:
  plan: plan
  first: first
  second: second
  mrr: {column: mrr, type: number}
  vip: {column: vip, type: boolean}
  seen_at: {column: seen_at, type: timestamp}
  prefs: {column: prefs, type: json}
"""

ACCOUNTS = """
name: accounts
source: warehouse
model: {sql: "select org, max(plan) as plan from lg_keyed.users group by org"}
kind: objects
object_type_id: "1"
primary_key: org
attributes: {plan: plan}
"""


@pytest.fixture
def pg(postgres_dsn: str) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists lg_keyed cascade")
        conn.execute("create schema lg_keyed")
        conn.execute(
            """
            create table lg_keyed.users as
            select 'org' || (i % 3) as org, i as user_id, 'p' || i as person_id,
                   'u' || i || '@example.com' as email,
                   case when i % 4 = 0 then null else 'plan' || (i % 5) end as plan,
                   'ab' as first, 'c' as second, (i * 1.5)::numeric(10, 2) as mrr,
                   i % 2 = 0 as vip,
                   timestamptz '2026-11-01 00:00:00+00' + i * interval '1 hour' as seen_at,
                   jsonb_build_object('n', i) as prefs, now() as read_at
            from generate_series(1, 60) i
            """
        )
        yield conn


@pytest.fixture
def project(
    tmp_path: Path,
    pg: Any,
    postgres_dsn: str,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> Project:
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(
        f"name: t\nsources:\n  warehouse: {{type: postgres, url: '{postgres_dsn}'}}\n"
        f"destinations:\n  customerio:\n    type: customerio\n"
        f"    track_url: {customerio_emulator.base_url}\n    rate_limit: 1000/s\n"
    )
    for name, body in {"people": PEOPLE, "accounts": ACCOUNTS}.items():
        (tmp_path / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
    return load_project(tmp_path)


def person(emu: Emulator, pid: str) -> dict[str, Any]:
    found = emu.person(id=pid)
    assert found is not None, pid
    return dict(found.attributes)


def test_only_changed_rows_go_out_and_every_change_arrives(
    project: Project, pg: Any, customerio_emulator: Emulator
) -> None:
    emu = customerio_emulator
    first = run_sync(project, "people", console=NullConsole())
    assert first.status == "success" and first.delivered == 60
    assert person(emu, "p7")["mrr"] == 10.5 and person(emu, "p7")["prefs"] == {"n": 7}

    # nothing changed (the unmapped `read_at` aside): nothing is sent
    pg.execute("update lg_keyed.users set read_at = now() + interval '1 day'")
    again = run_sync(project, "people", console=NullConsole())
    assert again.status == "success" and again.delivered == 0 and again.changes.unchanged == 60

    # a value, a null that gets a value, text moved between two columns (`ab`,`c` -> `a`,`bc`:
    # the same characters in a row), a JSON change and a row that leaves the model (mirror)
    pg.execute(
        """
        update lg_keyed.users set mrr = 999 where user_id = 7;
        update lg_keyed.users set plan = 'enterprise' where user_id = 8;
        update lg_keyed.users set first = 'a', second = 'bc' where user_id = 9;
        update lg_keyed.users set prefs = '{"n": 10, "beta": true}' where user_id = 10;
        delete from lg_keyed.users where user_id = 11;
        """
    )
    third = run_sync(project, "people", console=NullConsole())
    assert third.status == "success"
    assert (third.changes.changed, third.changes.new, third.changes.removed) == (4, 0, 1)
    assert person(emu, "p7")["mrr"] == 999
    assert person(emu, "p8")["plan"] == "enterprise"
    assert (person(emu, "p9")["first"], person(emu, "p9")["second"]) == ("a", "bc")
    assert person(emu, "p10")["prefs"] == {"n": 10, "beta": True}
    assert "plan" not in person(emu, "p11") and "mrr" not in person(emu, "p11")
    assert person(emu, "p12")["mrr"] == 18  # untouched rows keep what they had


def test_many_changes_copy_the_model_whole_and_send_the_same(
    project: Project, pg: Any, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_sync(project, "people", console=NullConsole())
    # past MAX_FETCH rows to fetch by hash, the run copies the whole model instead
    monkeypatch.setattr(WarehouseKeyed, "MAX_FETCH", 3)
    pg.execute("update lg_keyed.users set mrr = mrr + 1 where user_id <= 10")
    report = run_sync(project, "people", console=NullConsole())
    assert report.status == "success" and report.delivered == 10
    assert report.changes.unchanged == 50
    assert person(customerio_emulator, "p4")["mrr"] == 7
    assert run_sync(project, "people", console=NullConsole()).delivered == 0


def test_a_model_that_reads_differently_each_time_is_still_sent_whole(
    project: Project, pg: Any, customerio_emulator: Emulator, tmp_path: Path
) -> None:
    # `volatile` is mapped and changes on every read: the rows fetched by hash never match the
    # keyed ones, so the run falls back to one whole copy and sends every row it saw
    (tmp_path / "syncs" / "people.yml").write_text(
        textwrap.dedent(PEOPLE).replace(
            'select * from lg_keyed.users"',
            'select *, random() as volatile from lg_keyed.users"',
        )
        + "  volatile: {column: volatile, type: number}\n"
    )
    project = load_project(tmp_path)
    assert run_sync(project, "people", console=NullConsole()).delivered == 60
    second = run_sync(project, "people", console=NullConsole())
    assert second.status == "success" and second.delivered == 60 and second.changes.rejected == 0


def test_objects_keyed_in_the_warehouse(
    project: Project, pg: Any, customerio_emulator: Emulator
) -> None:
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 3
    pg.execute("update lg_keyed.users set plan = 'zzz' where org = 'org1' and user_id = 1")
    report = run_sync(project, "accounts", console=NullConsole())
    assert report.delivered == 1
    objects = {o.object_id: o.attributes for o in customerio_emulator.objects()}
    assert objects["org1"]["plan"] == "zzz" and objects["org2"]["plan"] == "plan4"
