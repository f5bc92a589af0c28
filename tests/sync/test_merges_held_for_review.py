"""People syncs keyed through the identity graph when a merge of two Customer.io people is
held for review: `identity.customerio.merge_policy.min_path_rank` (2 by default) keeps a merge
back when the evidence joining the two profiles is weaker, here an event-stream identify
(`trust: 3`) tying user `u1` to the address of a lead known by email alone
(docs/identity.md, "Merges held for review").

The two people stay in Customer.io, as with merges turned off. A row whose identify gives
`u1`'s person the email the lead's person holds is dropped by Customer.io whole and unseen
(200, "attribute update failure"): it is kept from being counted delivered the way rows of a
merge kept back by `enabled: false` are (rejected before delivery without an App API key,
read back with one), and the plan and the run's report list the merge as held for review.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.sync.helpers import sent_ops
from tests.sync.test_identity_properties import SYNCS as IDENTITY_SYNCS
from tests.sync.test_identity_properties import project_in, sql

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.project.loader import Project
from lockgate.sync.run import RunReport, plan_sync, run_sync

IDENTITY: dict[str, Any] = {
    "identifier_types": {
        "user_id": {"priority": 1, "limit": 1, "customerio": "id"},
        "email": {"priority": 2, "limit": 3, "customerio": "email"},
    },
    "sources": [
        {"name": "app_users", "table": "app_users", "trust": 1},
        {"name": "leads", "table": "leads", "trust": 2},
        # an event stream's identifies: rank 3, weaker than the default `min_path_rank` (2)
        {"name": "identifies", "table": "identifies", "trust": 3},
    ],
}

#: the identity machine's project and its `users` and `leads` syncs
SYNCS = {name: IDENTITY_SYNCS[name] for name in ("users", "leads")}
ORDER = ("users", "leads")

TABLES = """
create or replace table app_users (user_id varchar, email varchar, plan varchar);
create or replace table leads (email varchar, lead_source varchar);
create or replace table identifies (user_id varchar, email varchar);
"""

#: the merge the graph's weak link asks for, as the plan and the report list it
HELD = ({"id": "u1"}, {"email": "e2@x.io"}, "held_for_review")


def sync_all(project: Project) -> list[RunReport]:
    return [run_sync(project, name, console=NullConsole()) for name in ORDER]


def people(emu: Emulator) -> dict[tuple[str, str | None, str | None], dict[str, Any]]:
    return {(p.cio_id, p.id, p.email): p.attributes for p in emu.people()}


def dropped(emu: Emulator) -> list[str]:
    """The updates Customer.io accepted (200) and did not apply."""
    return [a.message for a in emu.activity_log() if a.kind == "attribute update failure"]


def a_user_and_a_lead_joined_by_an_identify(
    root: Path,
    emu: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    user_email: str | None,
    identity: dict[str, Any] = IDENTITY,
) -> tuple[Project, Any, Any]:
    """User `u1` (email ``user_email``, plan `free`) and lead `e2@x.io` (source `ads`), both
    synced (two people); then an identify ties `u1` to `e2@x.io` (one profile, the merge of
    the two people held for review) while both rows change. Returns the project and the two
    people as first synced."""
    project = project_in(root, emu, monkeypatch, tables=TABLES, syncs=SYNCS, identity=identity)
    mail = "null" if user_email is None else f"'{user_email}'"
    sql(
        root,
        f"insert into app_users values ('u1', {mail}, 'free');"
        "insert into leads values ('e2@x.io', 'ads')",
    )
    assert [r.status for r in sync_all(project)] == ["success", "success"]
    user, lead = emu.person(id="u1"), emu.person(email="e2@x.io")
    assert user is not None and lead is not None and user.cio_id != lead.cio_id
    sql(
        root,
        "insert into identifies values ('u1', 'e2@x.io');"
        "update app_users set plan = 'pro'; update leads set lead_source = 'seo'",
    )
    return project, user, lead


def held(report: Any) -> list[tuple[Any, Any, Any]]:
    return [(m["primary"], m["secondary"], m["outcome"]) for m in report.identity_merges_skipped]


def test_rows_giving_a_user_the_leads_email_on_weak_evidence_are_rejected_without_a_key(
    customerio_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user without an email and a lead, joined by an identify (weaker than
    `min_path_rank`): the profile's email is the lead's, so both syncs' rows identify `u1`'s
    person with `e2@x.io`, which the lead's person holds, and the merge that would make them
    one is held for review. Without an App API key nothing could see Customer.io drop those
    updates, so neither row is sent: each is rejected before delivery, naming the email, the
    person holding it, the held merge and what to do, and rejected again by the next run
    (rather than counted delivered and never sent again). The plan and the report list the
    merge held. Once someone merges the two people by hand and sets the key, the rows land.
    (They were sent, dropped unseen, and committed: `u1`'s `pro` and the lead's `seo` reached
    nobody, the report said nothing, and nothing was left to send.)"""
    emu = customerio_emulator
    monkeypatch.delenv("CUSTOMERIO_APP_API_KEY", raising=False)
    project, user, lead = a_user_and_a_lead_joined_by_an_identify(tmp_path, emu, monkeypatch, None)
    planned = plan_sync(project, "users", console=NullConsole())
    assert planned.identity_ops == ()
    assert held(planned) == [HELD]
    for again in (False, True):  # and again: rejected while the row gives `u1` that email
        before = len(emu.request_log())
        users, leads = sync_all(project)
        # the run that stitches the link lists the merge; the leads sync, run on its own
        # after it, starts from the graph it kept (one profile already), as a later run does
        assert (held(users), held(leads)) == ([] if again else [HELD], [])
        assert (users.status, leads.status) == ("partial", "partial")
        for report, key in ((users, "u1"), (leads, "e2@x.io")):
            [(failed, outcome, reason)] = report.failures
            assert (failed, outcome) == (key, "rejected")
            assert "`e2@x.io` is held in Customer.io by another person" in reason
            assert "held for review" in reason and "min_path_rank" in reason
            assert "by hand" in reason and "merge_policy.enabled" not in reason
        assert sent_ops(emu, before) == []
        assert emu.merges() == [] and dropped(emu) == []
        assert people(emu) == {
            (user.cio_id, "u1", None): {"plan": "free"},
            (lead.cio_id, None, "e2@x.io"): {"lead_source": "ads"},
        }
    # merged by hand in Customer.io, and read back with the App API key: the rows land
    with emu.client(auth=emu.track_auth) as client:
        body = {"primary": {"id": "u1"}, "secondary": {"email": "e2@x.io"}}
        client.post("/api/v1/merge_customers", json=body).raise_for_status()
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    assert [(r.status, r.failures) for r in sync_all(project)] == [("success", ())] * 2
    assert people(emu) == {
        (user.cio_id, "u1", "e2@x.io"): {"plan": "pro", "lead_source": "seo"},
    }
    assert dropped(emu) == []
    assert_nothing_left_to_send(project)


@pytest.mark.parametrize("app_api", ["answers", "fails"])
def test_rows_giving_a_user_the_leads_email_on_weak_evidence_are_read_back_with_a_key(
    customerio_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_api: str
) -> None:
    """As above with an App API key: the merge is listed as held for review, and no row whose
    update Customer.io drops is committed as delivered: the user's row is sent, read back and
    rejected (the lead's person holds the email); when the App API fails (a refused key),
    rejected as not read back, naming the held merge; the lead's row, which would take `u1`
    to another email's holder, is rejected before it is sent (its email is checked first),
    or, the check failing too, sent and rejected as not read back. Each is sent again by the
    next run. (With the App API failing, both were committed unverified: dropped unseen,
    never sent again.)"""
    emu = customerio_emulator
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    project, user, lead = a_user_and_a_lead_joined_by_an_identify(tmp_path, emu, monkeypatch, None)
    if app_api == "fails":
        monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", "not-the-key")
    users, leads = sync_all(project)
    assert (held(users), held(leads)) == ([HELD], [])
    assert (users.status, leads.status) == ("partial", "partial")
    [(key, outcome, reason)] = users.failures
    assert (key, outcome) == ("u1", "rejected")
    if app_api == "answers":
        assert "`e2@x.io` is held by another person" in reason
    else:
        assert "not read back" in reason and "held for review" in reason
    [(key, outcome, reason)] = leads.failures
    assert (key, outcome) == ("e2@x.io", "rejected") and "`e2@x.io`" in reason
    assert emu.merges() == []
    assert people(emu) == {
        (user.cio_id, "u1", None): {"plan": "free"},
        (lead.cio_id, None, "e2@x.io"): {"lead_source": "ads"},
    }
    # nothing was committed as delivered: the next run sends (or checks) both rows again
    for name in ORDER:
        assert plan_sync(project, name, console=NullConsole()).changes.to_send == 1, name


def test_a_row_of_another_sync_run_later_is_rejected_for_a_merge_kept_back_by_merges_off(
    customerio_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `merge_policy.enabled: false` and the identify trusted (rank 2), the same: the
    users sync's run lists the merge kept back and rejects its row; the leads sync, run on
    its own after it (from the graph that run kept, where the two are one profile already),
    rejects the lead's row too, which now gives `u1` the email the lead's person holds,
    naming merges off. (It was sent, dropped unseen and committed: the users run alone
    knew the merge.)"""
    emu = customerio_emulator
    monkeypatch.delenv("CUSTOMERIO_APP_API_KEY", raising=False)
    sources = [{**s, "trust": 2} if s["name"] == "identifies" else s for s in IDENTITY["sources"]]
    off = {**IDENTITY, "sources": sources, "customerio": {"merge_policy": {"enabled": False}}}
    project, user, lead = a_user_and_a_lead_joined_by_an_identify(
        tmp_path, emu, monkeypatch, None, off
    )
    users, leads = sync_all(project)
    assert (held(users), held(leads)) == ([(*HELD[:2], "skipped_disabled")], [])
    assert (users.status, leads.status) == ("partial", "partial")
    [(key, outcome, reason)] = leads.failures
    assert (key, outcome) == ("e2@x.io", "rejected")
    assert "`e2@x.io` is held in Customer.io by another person" in reason
    assert "merge_policy.enabled: false" in reason and "held for review" not in reason
    assert emu.merges() == [] and dropped(emu) == []
    assert people(emu) == {
        (user.cio_id, "u1", None): {"plan": "free"},
        (lead.cio_id, None, "e2@x.io"): {"lead_source": "ads"},
    }


def test_a_lead_joined_to_a_user_with_an_email_on_weak_evidence_loses_nothing(
    customerio_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same weak link, the user holding an email of their own: the profile's email is the
    user's, so both rows identify `u1`'s person with it and land there (the lead's `seo`
    too), the lead's person is left as it was, no update is dropped, and no row is held
    back; the report lists the merge held for review, and nothing is left to send."""
    emu = customerio_emulator
    monkeypatch.delenv("CUSTOMERIO_APP_API_KEY", raising=False)
    project, user, lead = a_user_and_a_lead_joined_by_an_identify(
        tmp_path, emu, monkeypatch, "e1@x.io"
    )
    users, leads = sync_all(project)
    assert [(r.status, r.failures) for r in (users, leads)] == [("success", ())] * 2
    assert (held(users), held(leads)) == ([HELD], [])
    assert emu.merges() == [] and dropped(emu) == []
    assert people(emu) == {
        (user.cio_id, "u1", "e1@x.io"): {"plan": "pro", "lead_source": "seo"},
        (lead.cio_id, None, "e2@x.io"): {"lead_source": "ads"},
    }
    assert_nothing_left_to_send(project)


def lockgate(project: Project, *args: str) -> Any:
    result = CliRunner().invoke(
        cli, [*args, "--project", str(project.root)], catch_exceptions=False, standalone_mode=False
    )
    return json.loads(result.stdout)  # warnings go to stderr


@pytest.mark.parametrize("command", ["sync", "plan"])
def test_a_merge_held_for_review_is_said_once_by_a_command_and_as_held(
    customerio_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """`plan --all` and `sync --all` list the merge held for review once, as held for review
    (`min_path_rank`), not as turned off; the plan's JSON lists it as the run's does, with the
    same counts."""
    emu = customerio_emulator
    monkeypatch.delenv("CUSTOMERIO_APP_API_KEY", raising=False)
    project, _, _ = a_user_and_a_lead_joined_by_an_identify(tmp_path, emu, monkeypatch, None)
    plans = lockgate(project, "plan", "--all", "--json")
    shown = CliRunner().invoke(cli, [command, "--all", "--project", str(project.root)])
    assert shown.exit_code in (0, 2), shown.output
    text = " ".join(shown.output.split())
    assert text.count("merge(s) held for review (min_path_rank), not sent") == 1, shown.output
    assert text.count("merges held for review (min_path_rank)") == 2, shown.output  # a count each
    assert "merges off" not in text and "merge_policy.enabled" not in text
    assert "email `e2@x.io`" in text and "id `u1`" in text
    if command == "plan":
        runs = lockgate(project, "sync", "--all", "--json")
        assert [p["identity_merges_skipped"] for p in plans] == [
            r["identity_merges_skipped"] for r in runs
        ]
        assert [p["identity_merges"] for p in plans] == [r["identity_merges"] for r in runs]
    assert emu.merges() == []


def assert_nothing_left_to_send(project: Project) -> None:
    for name in ORDER:
        again = plan_sync(project, name, console=NullConsole())
        assert again.changes.to_send == 0, name
        assert not again.identity_ops and not again.anonymous_ops, name
