"""A people sync run reads back the people it gave a new email (with an App API key): an
identify whose email another person holds is dropped by Customer.io, unseen, so the row is
rejected and sent again instead of being counted delivered (docs/sync.md)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.errors import ConfigError
from lockgate.project.loader import load_project
from lockgate.state.store import StateStore
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

EMAILS = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id, email: email}
attributes: {plan: plan}
"""

USERS = (
    "create table users as select * from (values ('u1', 'a@x.com', 'free'), "
    "('u2', 'b@x.com', 'free'), ('u3', 'c@x.com', 'free')) t(user_id, email, plan)"
)


def emails_of(emu: Emulator) -> dict[str | None, tuple[str | None, Any]]:
    return {p.id: (p.email, p.attributes.get("plan")) for p in emu.people()}


def app_api_calls(emu: Emulator) -> list[str]:
    return [f"{r.method} {r.path}" for r in emu.request_log() if r.path.startswith("/v1/")]


@pytest.fixture
def app_key(project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", project_factory.emulator.config.app_api_key)


def test_an_email_another_person_holds_is_rejected_and_sent_again_once_released(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """u1 moves to an address a person created outside Lockgate holds: Customer.io drops the
    whole update (email and plan). Read back, u1 is rejected with who holds the email and
    how to fix it, not committed, and lands with the run after the holder lets it go."""
    project_factory.sql(USERS)
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    with emu.client(auth=emu.track_auth) as client:
        assert client.put("/api/v1/customers/ext-9", json={"email": "z@x.com"}).status_code == 200
    project_factory.sql(
        "update users set email = 'Z@x.com', plan = 'pro' where user_id = 'u1';"
        "update users set plan = 'pro' where user_id = 'u2'"
    )

    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.rejected_by_api) == ("partial", 1, 1)
    assert report.emails_read_back == 1 and report.email_check == ""
    ((key, outcome, reason),) = report.failures
    assert (key, outcome) == ("u1", "rejected")
    assert (
        reason
        == (
            "row `u1`: Customer.io dropped the update (the email and every attribute of it): email "
            "`Z@x.com` is held by another person (id `ext-9`, cio_id `"
            + emu.person(id="ext-9").cio_id  # type: ignore[union-attr]
            + "`); release the email in the workspace (or change it in the model), then run the "
            "sync again: the row is sent again"
        )
    )
    assert emails_of(emu) == {
        "u1": ("a@x.com", "free"),  # dropped whole
        "u2": ("b@x.com", "pro"),
        "u3": ("c@x.com", "free"),
        "ext-9": ("z@x.com", None),
    }
    with StateStore.open(project.state_dir) as store:
        assert store.rejected(report.run_id) == [("deliver", "u1", reason)]
        snap = dict(store.con.execute("select k, ident from snap__profile").fetchall())
        assert '"a@x.com"' in snap["u1"]  # what was last delivered, not what was dropped
        outcomes = store.con.execute(
            "select outcome from history where k = 'u1' and run_id = ? order by sent_at",
            [report.run_id],
        ).fetchall()
        assert [o for (o,) in outcomes] == ["delivered", "rejected"]

    # still held: rejected again, nothing committed
    again = run_sync(project, "profile", console=NullConsole())
    assert (again.status, again.changes.to_send, again.rejected_by_api) == ("partial", 1, 1)

    with emu.client(auth=emu.track_auth) as client:  # the holder lets the address go
        assert client.put("/api/v1/customers/ext-9", json={"email": ""}).status_code == 200
    released = run_sync(project, "profile", console=NullConsole())
    assert (released.status, released.delivered, released.emails_read_back) == ("success", 1, 1)
    assert emails_of(emu)["u1"] == ("Z@x.com", "pro")
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_an_ordinary_email_change_is_read_back_once_and_committed(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """One App API request reads back the people given a new email; a run without email
    changes, and a plan, make none."""
    project_factory.sql(USERS)
    project = project_factory.write({"profile": EMAILS})
    first = run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    # every person is new: nobody is read back, their emails are looked up (one request)
    assert (first.emails_read_back, first.new_emails_checked) == (0, 3)
    assert app_api_calls(emu) == ["POST /v1/customers"]

    project_factory.sql("update users set plan = 'pro' where user_id = 'u3'")
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    assert app_api_calls(emu)[1:] == []  # no email changed, no new row: no App API call

    project_factory.sql(
        "update users set email = 'a2@x.com' where user_id = 'u1';"
        "update users set email = 'b2@x.com' where user_id = 'u2'"
    )
    plan = plan_sync(project, "profile", console=NullConsole())
    assert (plan.changes.changed, plan.email_check, app_api_calls(emu)[1:]) == (2, "", [])
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.emails_read_back) == ("success", 2, 2)
    assert app_api_calls(emu)[1:] == ["POST /v1/customers/attributes"]
    assert emails_of(emu)["u1"] == ("a2@x.com", "free")
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_without_an_app_api_key_the_report_says_email_changes_were_not_verified(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    project_factory.sql("update users set email = 'a2@x.com' where user_id = 'u1'")
    line = (
        "1 person given a new email {} read back: Customer.io drops, unseen, an update whose "
        "email another person holds; set `CUSTOMERIO_APP_API_KEY` (an App API key) to read "
        "them back (docs/sync.md, Emails read back)"
    )
    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.email_check == line.format("will not be")
    runner = CliRunner()
    result = runner.invoke(cli, ["sync", "profile", "--project", str(project.root)])
    assert result.exit_code == 0, result.output
    assert line.format("was not") in " ".join(result.output.split())
    assert app_api_calls(emu) == []
    assert emails_of(emu)["u1"] == ("a2@x.com", "free")


def test_people_past_read_back_emails_are_committed_and_counted_in_the_report(
    project_factory: ProjectFactory, app_key: None
) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    yml = project.root / "lockgate.yml"
    yml.write_text(yml.read_text() + "    read_back_emails: 2\n")
    project = load_project(project.root)
    project_factory.sql("update users set email = upper(user_id) || '@y.com'")
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.emails_read_back) == ("success", 3, 2)
    assert report.email_check == (
        "1 more person was given a new email, committed without a read-back (the first 2 by "
        "key were read back: `read_back_emails` in destination `customerio`)"
    )
    # after the first run's look-up of its new people's emails
    (_, bulk) = [r for r in project_factory.emulator.request_log() if r.path.startswith("/v1/")]
    assert bulk.body == {"ids": ["u1", "u2"]}


def test_read_back_emails_must_be_a_count(project_factory: ProjectFactory) -> None:
    project = project_factory.write({"profile": EMAILS})
    yml = project.root / "lockgate.yml"
    yml.write_text(yml.read_text() + "    read_back_emails: -1\n")
    with pytest.raises(ConfigError) as caught:
        load_project(project.root)
    assert str(caught.value).startswith(
        "lockgate.yml:12: Input should be greater than or equal to 0 "
        "(at `destinations.customerio.read_back_emails`)"
    )


def test_an_app_api_that_refuses_the_key_leaves_the_changes_committed_unverified(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Track API accepted the updates; an App API that cannot be read does not undo them:
    the run warns, commits, and its report says they were not read back."""
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", "not-the-key")
    project_factory.sql(USERS)
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("update users set email = 'a2@x.com' where user_id = 'u1'")
    console = NullConsole()
    report = run_sync(project, "profile", console=console)
    assert (report.status, report.delivered, report.emails_read_back) == ("success", 1, 0)
    assert report.email_check == (
        "1 person was given a new email, not read back: the App API failed (Customer.io "
        "refused the App API key (HTTP 401); check CUSTOMERIO_APP_API_KEY (an App API key, "
        "not a Track key) and CUSTOMERIO_REGION); `lockgate reconcile profile` reads them back"
    )
    assert any("email changes not read back" in m for m in console.messages)
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0
