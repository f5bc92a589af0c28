"""Every anonymous id of a profile reaches its Customer.io person (docs/identity.md, "What
happens in Customer.io"): Customer.io takes one `anonymous_id` per identify and attaches the
anonymous events of the last 30 days that bear it, so a user seen on two devices needs both
sent, each once, and never to two people."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.sync.helpers import canonical, sent_ops

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.project.loader import load_project
from lockgate.sync.run import plan_sync, run_sync

PROJECT = """\
name: devices
sources:
  warehouse: {{type: duckdb, path: w.duckdb}}
destinations:
  customerio: {{type: customerio, track_url: "{url}"}}
identity:
  identifier_types:
    user_id: {{priority: 1, limit: 1, customerio: id}}
    email: {{priority: 2, limit: 5, customerio: email}}
    anonymous_id: {{priority: 9, limit: 25, customerio: anonymous_id,
                   degree_cap: {{user_id: {{max: 1, policy: quarantine}}}}}}
  sources:
    - {{name: app_users, table: app_users}}
    - {{name: identifies, table: identifies, mode: append_only}}
"""

USERS = """
name: users
source: warehouse
model: {table: app_users}
kind: people
primary_key: user_id
identify_by: {user_id: user_id, email: email}
attributes: {plan: plan}
"""


def project_with(root: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch, rows: str) -> Any:
    """A project of one people sync keyed through the graph, with the identifies ``rows``
    (`anonymous_id`, `user_id`)."""
    site, key = emu.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    con = duckdb.connect(str(root / "w.duckdb"))
    con.execute(
        f"""
        create table app_users as select * from (values
          ('u1', 'ada@acme.io', 'pro'), ('u2', 'grace@acme.io', 'free')
        ) t(user_id, email, plan);
        create table identifies as select * from (values {rows}) t(anonymous_id, user_id);
        """
    ).fetchall()
    con.close()
    (root / "syncs").mkdir()
    (root / "lockgate.yml").write_text(PROJECT.format(url=emu.base_url))
    (root / "syncs" / "users.yml").write_text(textwrap.dedent(USERS))
    return load_project(root)


def browse(emu: Emulator, anonymous_id: str, name: str) -> None:
    """An anonymous event of the device ``anonymous_id`` (`POST /events`), an hour ago."""
    with emu.client(auth=emu.track_auth) as track:
        answer = track.post(
            "/api/v1/events",
            json={"name": name, "anonymous_id": anonymous_id, "timestamp": int(time.time()) - 3600},
        )
        assert answer.status_code == 200, answer.text


def add_identifies(root: Path, rows: str) -> None:
    con = duckdb.connect(str(root / "w.duckdb"))
    con.execute(f"insert into identifies values {rows}").fetchall()
    con.close()


def test_both_devices_events_land_on_the_person_once(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ada browsed anonymously on her laptop and on her phone, then signed in on both: after
    the sync, both devices' earlier events are hers (one identify carries one anonymous id;
    the other goes in an identify of its own, after her row). A shared device (seen with two
    users) links nobody and is attached to no one, nor is a junk value (`undefined`) or a
    visitor never identified. A re-run sends nothing; a third device seen later is attached
    by the next run, alone."""
    emu = customerio_emulator
    project = project_with(
        tmp_path,
        emu,
        monkeypatch,
        "('laptop-1', 'u1'), ('phone-1', 'u1'), ('kiosk', 'u1'), ('kiosk', 'u2'), "
        "('undefined', 'u1'), ('lurker-1', null)",
    )
    for device, page in (
        ("laptop-1", "pricing"),
        ("phone-1", "signup"),
        ("kiosk", "home"),
        ("undefined", "blog"),
        ("lurker-1", "careers"),
    ):
        browse(emu, device, page)

    plan = plan_sync(project, "users", console=NullConsole())
    since = len(emu.request_log())
    report = run_sync(project, "users", console=NullConsole())
    assert report.status == "success", report.failures

    ada = emu.person(id="u1")
    assert ada is not None and sorted(ada.anonymous_ids) == ["laptop-1", "phone-1"]
    assert sorted(e.name for e in emu.events(ada)) == ["pricing", "signup"]
    grace = emu.person(id="u2")
    assert grace is not None and grace.anonymous_ids == () and emu.events(grace) == []
    # the shared device's events stay anonymous, and so do the others'
    assert sorted(e.name for e in emu.events() if e.person is None) == ["blog", "careers", "home"]
    assert len(emu.people()) == 2
    # one extra identify, counted apart, as the plan said
    extra = [op for op in sent_ops(emu, since) if op["attributes"].keys() == {"anonymous_id"}]
    assert len(extra) == 1 and extra[0]["identifiers"] == {"id": "u1"}, extra
    assert report.identity_anonymous_ids == 1
    assert plan.identity_anonymous_ids == 1
    assert canonical(list(plan.anonymous_ops)) == canonical(extra)

    # nothing is sent twice
    since = len(emu.request_log())
    again = run_sync(project, "users", console=NullConsole())
    assert again.changes.to_send == 0 and again.identity_anonymous_ids == 0
    assert sent_ops(emu, since) == []

    # a third device of Ada's: attached by the next run (her row is unchanged), alone
    browse(emu, "tablet-1", "docs")
    add_identifies(tmp_path, "('tablet-1', 'u1')")
    since = len(emu.request_log())
    third = run_sync(project, "users", console=NullConsole())
    assert third.status == "success", third.failures
    ada = emu.person(id="u1")
    assert ada is not None and "tablet-1" in ada.anonymous_ids
    assert sorted(e.name for e in emu.events(ada)) == ["docs", "pricing", "signup"]
    assert all(
        set(op["attributes"]) == {"anonymous_id"} or op["identifiers"] == {"id": "u1"}
        for op in sent_ops(emu, since)
    )
    assert plan_sync(project, "users", console=NullConsole()).identity_anonymous_ids == 0


def test_an_anonymous_id_is_never_sent_to_a_second_person(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device attached to Ada (its events are hers in Customer.io) whose link to her leaves
    the graph (the identifies source is a snapshot, the row deleted) and is then seen with
    Grace only, her one anonymous id: it is not sent to Grace, neither in her own identify
    nor in one of its own, on this run or a later one; the events it attached stay Ada's."""
    emu = customerio_emulator
    project = project_with(tmp_path, emu, monkeypatch, "('laptop-1', 'u1'), ('tablet-1', 'u1')")
    (tmp_path / "lockgate.yml").write_text(
        (tmp_path / "lockgate.yml").read_text().replace(", mode: append_only", "")
    )
    project = load_project(tmp_path)
    browse(emu, "tablet-1", "pricing")
    assert run_sync(project, "users", console=NullConsole()).status == "success"
    ada = emu.person(id="u1")
    assert ada is not None and sorted(ada.anonymous_ids) == ["laptop-1", "tablet-1"]

    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        "delete from identifies where anonymous_id = 'tablet-1';"
        "insert into identifies values ('tablet-1', 'u2')"
    ).fetchall()
    con.close()
    since = len(emu.request_log())
    for _ in range(2):
        assert run_sync(project, "users", console=NullConsole()).status == "success"
        holders = [p.id for p in emu.people() if "tablet-1" in p.anonymous_ids]
        assert holders == ["u1"], holders
        assert [e.name for e in emu.events(emu.person(id="u1"))] == ["pricing"]
    assert not any(
        op["attributes"].get("anonymous_id") == "tablet-1" for op in sent_ops(emu, since)
    )
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    moved = con.execute(
        "select id_type, id_value from lockgate.lg_identifier_moves order by all"
    ).fetchall()
    con.close()
    assert moved == [("anonymous_id", "tablet-1")]
