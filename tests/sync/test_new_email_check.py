"""A people sync run looks up, before sending them, who holds the emails of its new rows (with
an App API key): Customer.io gives a new id sent with an email another person holds to that
person, renamed and written over, unseen; so such a row is rejected instead (docs/sync.md,
An email someone else holds)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from tests.sync.test_people import EMAILS, emails_of

from lockgate.cli import cli
from lockgate.cli.sync import change_rows
from lockgate.console import NullConsole
from lockgate.emulator import Emulator, RequestRecord
from lockgate.emulator.config import FaultConfig, FaultRates
from lockgate.project.loader import Project, load_project
from lockgate.state.store import StateStore
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PEOPLE = EMAILS  # identified by `id` and `email`, one attribute `plan`
people = emails_of  # id -> (email, plan) in the emulator


def app_api_calls(emu: Emulator) -> list[str]:
    return [f"{r.method} {r.path}" for r in app_api_requests(emu)]


def app_api_requests(emu: Emulator) -> list[RequestRecord]:
    return [r for r in emu.request_log() if r.path.startswith("/v1/")]


def identify(emu: Emulator, identifiers: dict[str, str], **attributes: Any) -> None:
    """A person created outside Lockgate (the customer's app, another tool)."""
    op = {"type": "person", "action": "identify", "identifiers": identifiers}
    with emu.client(auth=emu.track_auth) as client:
        answer = client.post("/api/v2/batch", json={"batch": [{**op, "attributes": attributes}]})
        assert answer.status_code == 200


def users(factory: ProjectFactory, *rows: tuple[str, str | None, str]) -> None:
    values = ", ".join(f"('{k}', {'null' if e is None else repr(e)}, '{p}')" for k, e, p in rows)
    factory.sql(
        f"create or replace table users as select * from (values {values}) t(user_id, email, plan)"
    )


def with_option(project: Project, line: str) -> Project:
    yml = project.root / "lockgate.yml"
    yml.write_text(yml.read_text() + f"    {line}\n")
    return load_project(project.root)


@pytest.fixture
def app_key(project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", project_factory.emulator.config.app_api_key)


def test_a_new_row_whose_email_another_id_holds_is_rejected_and_sent_once_released(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """`crm-7` (created by the app) holds a@x.com; the new row `u9` has it. Sent, `crm-7`
    would become `u9` with the row's plan. Checked first, `u9` is rejected, naming the
    holder and the fix; `crm-7` is untouched and the other new row lands. Once `crm-7` lets
    the address go, the next run sends `u9`."""
    emu = project_factory.emulator
    identify(emu, {"id": "crm-7"}, email="a@x.com", plan="gold")
    cio_id = emu.person(id="crm-7").cio_id  # type: ignore[union-attr]
    users(project_factory, ("u9", "A@x.com", "free"), ("u2", "b@x.com", "free"))
    project = project_factory.write({"profile": PEOPLE})

    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.rejected_by_api) == ("partial", 1, 1)
    assert (report.new_emails_checked, report.email_check) == (2, "")
    assert ("new people's emails checked", 2) in change_rows(report)
    reason = (
        "sync `profile`, row `u9`: email `A@x.com` is held in Customer.io by another person "
        f"(id `crm-7`, cio_id `{cio_id}`); not sent: Customer.io would give that person the "
        "new id `u9` and write the row over its profile (or, when another person has that "
        "id, drop the update whole). Release or merge that person in Customer.io, or give "
        "your app and the sync the same id for a person, then run the "
        "sync again: the row is checked again"
    )
    assert report.failures == (("u9", "rejected", reason),)
    assert people(emu) == {"crm-7": ("a@x.com", "gold"), "u2": ("b@x.com", "free")}
    assert emu.person(id="crm-7").cio_id == cio_id  # type: ignore[union-attr]
    with StateStore.open(project.state_dir) as store:
        assert store.rejected(report.run_id) == [("deliver", "u9", reason)]
        assert store.con.execute("select k from snap__profile").fetchall() == [("u2",)]
        outcomes = store.con.execute(
            "select outcome from history where k = 'u9' and run_id = ?", [report.run_id]
        ).fetchall()
        assert outcomes == [("rejected",)]

    again = run_sync(project, "profile", console=NullConsole())  # still held: checked again
    assert (again.status, again.changes.to_send, again.rejected_by_api) == ("partial", 1, 1)
    assert again.new_emails_checked == 1

    identify(emu, {"id": "crm-7"}, email="")  # the app lets the address go
    released = run_sync(project, "profile", console=NullConsole())
    assert (released.status, released.delivered, released.new_emails_checked) == ("success", 1, 1)
    assert people(emu) == {
        "crm-7": (None, "gold"),
        "u9": ("A@x.com", "free"),
        "u2": ("b@x.com", "free"),
    }
    assert emu.person(id="u9").cio_id != cio_id  # type: ignore[union-attr]
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_a_lead_known_by_email_alone_or_a_person_with_the_rows_id_is_not_in_the_way(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """A holder without an `id` is the person the row is meant to become (Customer.io attaches
    the id to it); a holder with the row's own `id` is the row's person already."""
    emu = project_factory.emulator
    identify(emu, {"email": "lead@x.com"}, plan="trial")
    lead = emu.person(email="lead@x.com").cio_id  # type: ignore[union-attr]
    identify(emu, {"id": "u3"}, email="c@x.com", plan="trial")
    users(project_factory, ("u1", "lead@x.com", "free"), ("u3", "c@x.com", "pro"))
    project = project_factory.write({"profile": PEOPLE})

    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.new_emails_checked) == ("success", 2, 2)
    assert people(emu) == {"u1": ("lead@x.com", "free"), "u3": ("c@x.com", "pro")}
    assert emu.person(id="u1").cio_id == lead  # type: ignore[union-attr]
    # both emails, one request; then u1's `id`, whose email a lead holds: nobody has it
    assert app_api_calls(emu) == ["POST /v1/customers", "POST /v1/customers/attributes"]


def test_a_new_row_whose_id_is_a_person_and_whose_email_a_lead_holds_is_refused_unsent(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """The app made `u1` before the first run, and a lead without an id holds u1's email: an
    identify by `u1` with that email names two people, and Customer.io drops it whole
    (email and plan), unseen; the row, new, is in no read-back, and would be counted
    delivered and never sent again. Looked up before delivery, u1 is rejected naming both
    people and the fix, neither is touched, and the row lands once the lead is merged into
    `u1`."""
    emu = project_factory.emulator
    identify(emu, {"id": "u1"}, plan="gold")
    identify(emu, {"email": "a@x.com"}, source="form")
    lead = emu.person(email="a@x.com").cio_id  # type: ignore[union-attr]
    app_person = emu.person(id="u1").cio_id  # type: ignore[union-attr]
    users(project_factory, ("u1", "a@x.com", "free"), ("u2", "b@x.com", "free"))
    project = project_factory.write({"profile": PEOPLE})

    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.rejected_by_api) == ("partial", 1, 1)
    assert report.new_emails_checked == 2
    reason = (
        "sync `profile`, row `u1`: email `a@x.com` is held in Customer.io by a person without "
        f"an id (cio_id `{lead}`), and `u1` is another person already (cio_id `{app_person}`); "
        "not sent: Customer.io would drop the update whole (the email and every attribute). "
        "Merge the two people in Customer.io (`u1` the primary), or release the email, then "
        "run the sync again: the row is checked again"
    )
    assert report.failures == (("u1", "rejected", reason),)
    assert people(emu) == {"u1": (None, "gold"), None: ("a@x.com", None), "u2": ("b@x.com", "free")}
    # the emails, then the one `id` whose email a lead holds
    assert app_api_calls(emu) == ["POST /v1/customers", "POST /v1/customers/attributes"]
    assert app_api_requests(emu)[-1].body == {"ids": ["u1"]}
    with StateStore.open(project.state_dir) as store:
        assert store.rejected(report.run_id) == [("deliver", "u1", reason)]
        assert store.con.execute("select k from snap__profile").fetchall() == [("u2",)]

    again = run_sync(project, "profile", console=NullConsole())  # still two people
    assert (again.status, again.delivered, again.rejected_by_api) == ("partial", 0, 1)

    with emu.client(auth=emu.track_auth) as client:
        merged = client.post(
            "/api/v1/merge_customers",
            json={"primary": {"id": "u1"}, "secondary": {"cio_id": lead}},
        )
        assert merged.status_code == 200, merged.text
    landed = run_sync(project, "profile", console=NullConsole())
    assert (landed.status, landed.delivered) == ("success", 1)
    assert people(emu) == {"u1": ("a@x.com", "free"), "u2": ("b@x.com", "free")}
    assert emu.person(id="u1").cio_id == app_person  # type: ignore[union-attr]
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_a_returning_row_whose_email_a_lead_took_meanwhile_is_refused_not_lost(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """u1 left the `mirror` model (its plan cleared, `u1` stays in Customer.io, its record
    leaves the snapshot) and comes back with an address a lead took meanwhile. The row is new
    again; Customer.io would drop its update whole, and it would be counted delivered and
    never sent again. It is rejected instead, and lands once the lead lets the address go."""
    emu = project_factory.emulator
    users(project_factory, ("u1", "a@x.com", "free"), ("u2", "b@x.com", "free"))
    project = project_factory.write({"profile": PEOPLE + "mode: mirror\n"})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 2
    users(project_factory, ("u2", "b@x.com", "free"))
    assert run_sync(project, "profile", console=NullConsole()).changes.removed_sent == 1
    identify(emu, {"email": "z@x.com"}, source="form")
    lead = emu.person(email="z@x.com").cio_id  # type: ignore[union-attr]
    users(project_factory, ("u1", "z@x.com", "pro"), ("u2", "b@x.com", "free"))

    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.rejected_by_api) == ("partial", 0, 1)
    ((key, outcome, reason),) = report.failures
    assert (key, outcome) == ("u1", "rejected")
    assert f"by a person without an id (cio_id `{lead}`), and `u1` is another person" in reason
    assert people(emu)["u1"] == ("a@x.com", None)
    assert run_sync(project, "profile", console=NullConsole()).rejected_by_api == 1

    identify(emu, {"cio_id": lead}, email="")  # the lead lets the address go
    released = run_sync(project, "profile", console=NullConsole())
    assert (released.status, released.delivered) == ("success", 1)
    assert people(emu)["u1"] == ("z@x.com", "pro")
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_new_rows_emails_and_the_ids_leads_would_get_are_looked_up_in_two_requests(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """50 new rows, 10 of whose emails leads hold, 3 of those rows' ids people the app made:
    one search looks up the 50 emails, one bulk read the 10 ids. The 7 leads whose row's id is
    new become the rows' people (the merge wanted); the 3 others are refused, untouched."""
    emu = project_factory.emulator
    for i in range(10):
        identify(emu, {"email": f"m{i}@x.com"}, lead=True)
    for i in range(3):
        identify(emu, {"id": f"u0{i}"}, plan="gold")
    project_factory.sql(
        "create table users as select 'u' || lpad(i::varchar, 2, '0') user_id, "
        "'m' || i || '@x.com' email, 'free' plan from range(50) t(i)"
    )
    project = project_factory.write({"profile": PEOPLE})

    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.rejected_by_api) == ("partial", 47, 3)
    assert sorted(k for k, _, _ in report.failures) == ["u00", "u01", "u02"]
    assert app_api_calls(emu) == ["POST /v1/customers", "POST /v1/customers/attributes"]
    assert app_api_requests(emu)[-1].body == {"ids": [f"u0{i}" for i in range(10)]}
    assert len(emu.people()) == 53  # the 47 rows', the app's 3, 3 leads
    found = {p.id: p for p in emu.people()}
    for i in range(3, 10):  # the lead became the row's person
        assert (found[f"u0{i}"].email, found[f"u0{i}"].attributes["lead"]) == (f"m{i}@x.com", True)
    assert people(emu)["u00"] == (None, "gold")
    assert emu.person(email="m0@x.com").id is None  # type: ignore[union-attr]


def test_an_email_the_run_releases_first_is_not_held_against_the_new_row(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """u1 changes address and the new user u9 signs up with the old one (u1 is sent first);
    later u2's email goes null (it keeps it in Customer.io) and the new user u8 takes it (u2's
    is cleared first, `u2#release-email`). Neither new row is held against the person giving
    the email up."""
    emu = project_factory.emulator
    users(project_factory, ("u1", "a@x.com", "free"), ("u2", "b@x.com", "free"))
    project = project_factory.write({"profile": PEOPLE})
    assert run_sync(project, "profile", console=NullConsole()).status == "success"

    users(
        project_factory,
        ("u1", "a2@x.com", "free"),
        ("u2", "b@x.com", "free"),
        ("u9", "a@x.com", "pro"),
    )
    moved = run_sync(project, "profile", console=NullConsole())
    assert (moved.status, moved.delivered, moved.new_emails_checked) == ("success", 2, 1)
    assert people(emu) == {
        "u1": ("a2@x.com", "free"),
        "u2": ("b@x.com", "free"),
        "u9": ("a@x.com", "pro"),
    }

    users(
        project_factory,
        ("u1", "a2@x.com", "free"),
        ("u2", None, "free"),
        ("u9", "a@x.com", "pro"),
    )
    assert run_sync(project, "profile", console=NullConsole()).status == "success"
    assert people(emu)["u2"] == ("b@x.com", "free")  # kept: nothing is sent for a null
    users(
        project_factory,
        ("u1", "a2@x.com", "free"),
        ("u2", None, "free"),
        ("u9", "a@x.com", "pro"),
        ("u8", "B@x.com", "pro"),
    )
    taken = run_sync(project, "profile", console=NullConsole())
    assert (taken.status, taken.delivered, taken.new_emails_checked) == ("success", 1, 1)
    assert people(emu)["u2"] == (None, "free") and people(emu)["u8"] == ("B@x.com", "pro")


def test_new_rows_past_check_new_emails_are_sent_unchecked_and_counted(
    project_factory: ProjectFactory, app_key: None
) -> None:
    emu = project_factory.emulator
    identify(emu, {"id": "crm-7"}, email="c@x.com", plan="gold")
    users(
        project_factory,
        ("u1", "a@x.com", "free"),
        ("u2", "b@x.com", "free"),
        ("u3", "c@x.com", "free"),
    )
    project = with_option(project_factory.write({"profile": PEOPLE}), "check_new_emails: 2")
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.new_emails_checked) == ("success", 3, 2)
    assert report.email_check == (
        "1 more new person was sent without checking who holds its email (the first 2 by key "
        "were checked: `check_new_emails` in destination `customerio`)"
    )
    (search,) = [r for r in emu.request_log() if r.path.startswith("/v1/")]
    assert search.body == {
        "filter": {
            "or": [
                {"attribute": {"field": "email", "operator": "eq", "value": v}}
                for v in ("a@x.com", "b@x.com")
            ]
        }
    }
    # unchecked, u3 took `crm-7` over, as Customer.io does
    assert "crm-7" not in people(emu) and people(emu)["u3"] == ("c@x.com", "free")


def test_check_new_emails_0_turns_the_check_off(
    project_factory: ProjectFactory, app_key: None
) -> None:
    users(project_factory, ("u1", "a@x.com", "free"))
    project = with_option(project_factory.write({"profile": PEOPLE}), "check_new_emails: 0")
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.new_emails_checked) == ("success", 0)
    assert app_api_calls(project_factory.emulator) == []
    assert report.email_check == (
        "1 new person's email was not checked: Customer.io gives a new id sent with an email "
        "another person holds to that person; `check_new_emails: 0` in destination "
        "`customerio` turns it off (docs/sync.md, An email someone else holds)"
    )


def test_without_an_app_api_key_one_line_says_what_was_not_checked(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    users(project_factory, ("u1", "a@x.com", "free"), ("u2", "b@x.com", "free"))
    project = project_factory.write({"profile": PEOPLE})
    line = (
        "2 new people's emails {} checked: Customer.io gives a new id sent with an email "
        "another person holds to that person; set `CUSTOMERIO_APP_API_KEY` (an App API key) "
        "to check them (docs/sync.md, An email someone else holds)"
    )
    assert plan_sync(project, "profile", console=NullConsole()).email_check == line.format(
        "will not be"
    )
    result = CliRunner().invoke(cli, ["sync", "profile", "--project", str(project.root)])
    assert result.exit_code == 0, result.output
    assert line.format("were not") in " ".join(result.output.split())
    assert app_api_calls(emu) == []
    assert people(emu) == {"u1": ("a@x.com", "free"), "u2": ("b@x.com", "free")}

    # a new row and an email change in one run: still one line
    users(
        project_factory,
        ("u1", "a2@x.com", "free"),
        ("u2", "b@x.com", "free"),
        ("u3", "c@x.com", "free"),
    )
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, app_api_calls(emu)) == ("success", 2, [])
    assert report.email_check == (
        "1 new person's email was not checked and 1 person given a new email was not read "
        "back: Customer.io gives a new id sent with an email another person holds to that "
        "person, and drops, unseen, an update whose email another person holds; set "
        "`CUSTOMERIO_APP_API_KEY` (an App API key) to check them (docs/sync.md, An email "
        "someone else holds)"
    )


def test_an_app_api_that_does_not_answer_leaves_the_new_rows_sent_unchecked(
    project_factory: ProjectFactory, app_key: None
) -> None:
    emu = project_factory.emulator
    emu.set_faults(FaultConfig(overrides={"app": FaultRates(error_5xx=1.0)}))
    users(project_factory, ("u1", "a@x.com", "free"))
    project = project_factory.write({"profile": PEOPLE}, retries=1)
    console = NullConsole()
    report = run_sync(project, "profile", console=console)
    assert (report.status, report.delivered, report.new_emails_checked) == ("success", 1, 0)
    assert report.email_check.startswith(
        "1 new person sent without checking who holds its email: the App API failed (App API "
        "POST /v1/customers answered HTTP 503"
    )
    assert any("new people's emails not checked" in m for m in console.messages)
    assert app_api_calls(emu) == ["POST /v1/customers"] * 2  # tried, retried once
    assert people(emu) == {"u1": ("a@x.com", "free")}


def test_an_app_api_failing_on_the_ids_leaves_the_email_refusals_standing(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """The emails are looked up, the `id` a lead's email would join is not (the App API
    fails on it): the row whose email another `id` holds is still refused, the lead's row is
    sent unchecked, and the report says so."""
    emu = project_factory.emulator
    emu.set_faults(FaultConfig(overrides={"/v1/customers/attributes": FaultRates(error_5xx=1.0)}))
    identify(emu, {"id": "crm-7"}, email="a@x.com", plan="gold")
    identify(emu, {"email": "lead@x.com"}, source="form")
    users(project_factory, ("u9", "a@x.com", "free"), ("u1", "lead@x.com", "free"))
    project = project_factory.write({"profile": PEOPLE}, retries=1)
    console = NullConsole()

    report = run_sync(project, "profile", console=console)
    assert (report.status, report.delivered, report.rejected_by_api) == ("partial", 1, 1)
    assert [k for k, _, _ in report.failures] == ["u9"]
    assert report.new_emails_checked == 1
    assert report.email_check.startswith(
        "1 new person was sent whose email a person without an id holds, without checking "
        "whether Customer.io has a person with its `id` already (it drops such an update "
        "whole): the App API failed (App API POST /v1/customers/attributes answered HTTP 503"
    )
    assert any("new people's ids not checked" in m for m in console.messages)
    assert people(emu) == {"crm-7": ("a@x.com", "gold"), "u1": ("lead@x.com", "free")}


def test_a_run_without_new_rows_makes_no_app_api_call(
    project_factory: ProjectFactory, app_key: None
) -> None:
    emu = project_factory.emulator
    users(project_factory, ("u1", "a@x.com", "free"))
    project = project_factory.write({"profile": PEOPLE})
    run_sync(project, "profile", console=NullConsole())
    users(project_factory, ("u1", "a@x.com", "pro"))
    assert plan_sync(project, "profile", console=NullConsole()).email_check == ""
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.delivered, report.new_emails_checked) == (1, 0)
    # a full resync sends every row again, none of them new to Customer.io
    resync = run_sync(project, "profile", console=NullConsole(), full_resync=True)
    assert (resync.delivered, resync.new_emails_checked) == (1, 0)
    assert app_api_calls(emu) == ["POST /v1/customers"]  # the first run's alone


def test_a_full_resync_does_not_check_a_row_delivered_before_nor_forget_it(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """u1 was delivered with a@x.com; since, outside Lockgate, u1 let the address go and
    `crm-7` took it. A `--full-resync` sends u1 again: it is not new (its record is in the
    snapshot the resync sets aside), so its email is not checked, nor is the row refused for
    it (it is no new `id` Customer.io would give to `crm-7`), and its record stays delivered:
    when u1 then leaves the `mirror` model, its attributes are cleared."""
    emu = project_factory.emulator
    users(project_factory, ("u1", "a@x.com", "free"), ("u2", "b@x.com", "free"))
    project = project_factory.write({"profile": PEOPLE + "mode: mirror\n"})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 2
    identify(emu, {"id": "u1"}, email="")
    identify(emu, {"id": "crm-7"}, email="a@x.com", plan="gold")
    calls = len(app_api_calls(emu))

    resync = run_sync(project, "profile", console=NullConsole(), full_resync=True)
    assert (resync.status, resync.delivered, resync.new_emails_checked) == ("success", 2, 0)
    assert resync.failures == ()
    assert len(app_api_calls(emu)) == calls  # nothing looked up
    with StateStore.open(project.state_dir) as store:
        snap = store.con.execute("select k from snap__profile order by k").fetchall()
        assert snap == [("u1",), ("u2",)]
    assert emu.person(id="crm-7").attributes["plan"] == "gold"  # type: ignore[union-attr]

    users(project_factory, ("u2", "b@x.com", "free"))  # u1 leaves the model
    gone = run_sync(project, "profile", console=NullConsole())
    assert (gone.status, gone.changes.removed_sent) == ("success", 1)
    assert people(emu)["u1"][1] is None  # cleared
    assert people(emu)["crm-7"] == ("a@x.com", "gold")


CONTACTS = """
name: contacts
source: warehouse
model: {table: contacts}
kind: people
primary_key: email
identify_by: {id: user_id, email: email}
attributes: {score: score}
"""


def contacts(factory: ProjectFactory, *rows: tuple[str, str, int]) -> None:
    values = ", ".join(f"('{e}', '{u}', {s})" for e, u, s in rows)
    factory.sql(
        f"create or replace table contacts as select * from (values {values}) t(email, user_id, "
        "score)"
    )


def test_a_row_given_a_new_id_renames_its_own_person_but_not_another_records(
    project_factory: ProjectFactory, app_key: None
) -> None:
    """A sync keyed by email sends each row with the `id` its model gives it. When that `id`
    changes, Customer.io gives the new one to the person holding the email. Its own person
    (c@x.com's, whose `id` no other record was delivered with) is renamed, as the row says.
    A person another record reached too (`u1`, a user of the `profile` sync whose email
    the contact shares) is not the row's to rename: the row is refused before it is sent,
    naming the holder, where before the check `u1` became `u7` with the contact's score."""
    emu = project_factory.emulator
    users(project_factory, ("u1", "a@x.com", "pro"))
    contacts(project_factory, ("a@x.com", "u1", 5), ("c@x.com", "u3", 1))
    project = project_factory.write({"profile": PEOPLE, "contacts": CONTACTS})
    for name in ("profile", "contacts"):
        assert run_sync(project, name, console=NullConsole()).status == "success"
    u1, u3 = emu.person(id="u1"), emu.person(id="u3")
    assert u1 is not None and u3 is not None

    contacts(project_factory, ("a@x.com", "u7", 6), ("c@x.com", "u8", 2))
    report = run_sync(project, "contacts", console=NullConsole())
    assert (report.status, report.delivered, report.rejected_by_api) == ("partial", 1, 1)
    assert report.new_emails_checked == 2
    ((key, outcome, reason),) = report.failures
    assert (key, outcome) == ("a@x.com", "rejected")
    assert f"(id `u1`, cio_id `{u1.cio_id}`)" in reason and "new id `u7`" in reason
    after_u1 = emu.person(cio_id=u1.cio_id)
    assert after_u1 is not None and (after_u1.id, after_u1.attributes.get("score")) == ("u1", 5)
    renamed = emu.person(cio_id=u3.cio_id)
    assert renamed is not None and (renamed.id, renamed.attributes["score"]) == ("u8", 2)
    assert emu.person(id="u7") is None
    # refused rows are checked again on every run, a full resync's too
    for full_resync in (False, True):
        again = run_sync(project, "contacts", console=NullConsole(), full_resync=full_resync)
        assert (again.status, again.rejected_by_api) == ("partial", 1)
        assert emu.person(id="u7") is None


def test_without_an_app_api_key_a_row_given_a_new_id_is_counted_unchecked_by_plan_and_sync(
    project_factory: ProjectFactory,
) -> None:
    """No row is new, one goes out with another `id`: `plan` and the run say alike that its
    email was not checked (Customer.io gives the new `id` to whoever holds the email)."""
    contacts(project_factory, ("a@x.com", "u1", 5), ("c@x.com", "u3", 1))
    project = project_factory.write({"contacts": CONTACTS})
    assert run_sync(project, "contacts", console=NullConsole()).status == "success"
    contacts(project_factory, ("a@x.com", "u1", 6), ("c@x.com", "u8", 1))
    line = (
        "1 new person's email {} checked: Customer.io gives a new id sent with an email "
        "another person holds to that person; set `CUSTOMERIO_APP_API_KEY` (an App API key) "
        "to check them (docs/sync.md, An email someone else holds)"
    )
    planned = plan_sync(project, "contacts", console=NullConsole())
    assert (planned.changes.new, planned.changes.changed) == (0, 2)
    assert planned.email_check == line.format("will not be")
    report = run_sync(project, "contacts", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 2)
    assert report.email_check == line.format("was not")
    assert app_api_calls(project_factory.emulator) == []
