"""Stateful property test of people syncs keyed through the identity graph with merges turned
off (`identity.customerio.merge_policy.enabled: false`, docs/identity.md, "Merges turned
off"): test_identity_properties.py's warehouse edits, syncs and faults, with its model of the
graph, and these invariants after each sync (with an App API key, and without one):

- (a) no merge reaches Customer.io: the merges the graph needs are kept back and listed in
  the run's report (`identity_merges_skipped`);
- (b) nothing is lost silently: each user of the warehouse is a Customer.io person, found by
  its `id`, with the user's last non-null `plan` sent, unless the run rejected the user's row
  with a reason; each lead, Stripe customer of a component that has always been whole (no
  limit broken, nothing ever left it) reached a person of the component (its `id` or one of
  its emails) with its `lead_source` (`mrr`), unless the run rejected its row with a reason;
- (c) no person holds two people's emails: a user's person does not hold the email another
  user's row gives (and its own row does not);
- (d) a second run sends nothing but the rows the first rejected (each run tries them
  again), and no identity operation;
- (e) after a run with faults, a run without them converges to (a)-(d).

The people deleted, merged or edited by hand of test_identity_properties.py's (g) are not
drawn here. `LOCKGATE_PROPERTY_EXAMPLES=10 LOCKGATE_PROPERTY_STEPS=12` (and
`--hypothesis-seed=N`) hunts further than CI's few derandomized examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test
from tests.sync.helpers import bind_machine, property_settings
from tests.sync.test_identity_properties import (
    IDENTITY,
    ORDER,
    IdentityMachine,
    Node,
    _mail,
    lead_sources,
    plans,
    project_in,
    sql,
    sync_all,
)

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.project.loader import Project, load_project
from lockgate.sync.run import RunReport, plan_sync, run_sync


class NoMergeMachine(IdentityMachine):
    identity = {**IDENTITY, "customerio": {"merge_policy": {"enabled": False}}}
    #: set by the test: whether the destination has an App API key (read-back of emails)
    app_api_key: bool = True

    # people edited in Customer.io by hand: test_identity_properties.py's (g), not hunted here
    deleted_by_hand = None  # type: ignore[assignment]
    merged_by_hand = None  # type: ignore[assignment]
    changed_by_hand = None  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        if not self.app_api_key:
            self.monkeypatch.delenv("CUSTOMERIO_APP_API_KEY")
        #: the last run without faults: each sync's rejected rows (key -> reason)
        self.rejected: dict[str, dict[str, str]] = {name: {} for name in ORDER}

    def _users_synced(self) -> list[str]:
        """The users whose person Customer.io has, by their `id`."""
        return sorted(u for u in self.users if self.emu.person(id=u) is not None)

    @precondition(lambda self: self._users_synced() and self._fresh_emails())
    @rule(data=st.data(), source=lead_sources)
    def user_returns_with_a_leads_email(self, data: st.DataObject, source: str) -> None:
        """A lead of an email no row has is synced (a person known by it alone); then it
        leaves the warehouse, then a user whose person is synced, each followed by a run; then
        the user comes back with the lead's email: the lead's person is to be merged into the
        user's, which merges off keep back (docs/identity.md, "Merges turned off", a returning
        user). Random edits seldom reach it."""
        uid = data.draw(st.sampled_from(self._users_synced()))
        lead = data.draw(st.sampled_from(self._fresh_emails()))
        # a `plan` its person does not have: an update dropped unseen shows
        plan = data.draw(plans.filter(lambda p: p is not None and p != self.plan_of.get(uid)))
        event("a user comes back with a lead's email")
        self.leads[lead] = source
        self._write()
        self._plan_and_sync(full_resync=False)
        del self.leads[lead]
        self._write()
        self._plan_and_sync(full_resync=False)
        del self.users[uid]
        self._write()
        self._plan_and_sync(full_resync=False)
        self.users[uid] = {"email": lead, "plan": plan}
        self._write()

    user_returns_again = user_returns_with_a_leads_email  # drawn as often as two edits

    #: what the reason of a row held back for a merge kept back says
    kept_back_says = "merge is kept back"

    def _check_merges(self, name: str, plan: RunReport, report: RunReport, before: int) -> None:
        """(a) a merge is kept back and said, never sent."""
        assert not [op for op in report.identity_ops if op.get("action") == "merge"], name
        assert len(report.identity_merges_skipped) == len(plan.identity_merges_skipped)
        if report.identity_merges_skipped:
            event("a merge kept back")

    def _check_merges_made(self) -> None:
        """(a) Customer.io made no merge."""
        assert self.emu.merges() == [], self.emu.merges()

    def _plan_and_sync(self, full_resync: bool) -> None:
        rejected: dict[str, dict[str, str]] = {name: {} for name in ORDER}
        for name in ORDER:
            plan = plan_sync(
                self.project, name, console=NullConsole(), samples=1000, full_resync=full_resync
            )
            before = len(self.emu.request_log())
            report = run_sync(
                self.project, name, console=NullConsole(), force=True, full_resync=full_resync
            )
            assert report.status in ("success", "partial"), (name, report.failures)
            self._check_merges(name, plan, report, before)
            for key, outcome, reason in report.failures:
                assert outcome == "rejected" and reason, (name, key, outcome, reason)
                rejected[name][key] = reason
                if "no identifier" not in reason:
                    event(f"a row of `{name}` rejected: {reason.split(':')[1][:40]}")
            assert report.rejected_by_api + report.dead_lettered == len(report.failures), name
            # the plan said which rows the run holds back for a merge kept back
            kept_back = [(k, r) for k, _, r in report.failures if self.kept_back_says in r]
            assert kept_back == [(k, r) for k, _, r in plan.failures], (name, plan.failures)
            if not report.failures:
                self._check_plan(name, plan, report, before)
        # (d) the rows rejected are tried again, nothing else is left to send
        for name in ORDER:
            again = plan_sync(self.project, name, console=NullConsole(), samples=1000)
            assert again.changes.to_send <= len(rejected[name]), (name, again.samples)
            assert not again.identity_ops, (name, again.identity_ops)
            assert not again.anonymous_ops, (name, again.anonymous_ops)
        plans = dict(self.plan_of)
        self._expect()
        for uid in rejected["users"]:  # its `plan` did not land: Customer.io keeps the last
            if uid in plans:
                self.plan_of[uid] = plans[uid]
            else:
                self.plan_of.pop(uid, None)
        self.rejected = rejected

    @invariant()
    def customerio_holds_the_model(self) -> None:
        if not self.synced:
            return
        people = self.emu.people()
        self._check_merges_made()
        by_id = {p.id: p for p in people if p.id}
        # (b) each user's row reached its person, or was rejected with a reason
        for uid in self.users:
            if uid in self.rejected["users"]:
                continue
            person = by_id.get(uid)
            assert person is not None, (uid, sorted(by_id))
            if uid in self.plan_of:
                assert person.attributes.get("plan") == self.plan_of[uid], (uid, person)
        # (c) no person holds another user's email
        for uid, person in by_id.items():
            if uid not in self.users or not person.email:
                continue
            mine = self.users[uid]["email"]
            for other, r in self.users.items():
                if other != uid and r["email"] and _mail(r["email"]) == _mail(person.email):
                    assert mine and _mail(mine) == _mail(person.email), (uid, other, person)
        # (b) the rows of a component that has always been whole reached one of its people
        for comp in self._components():
            if self._breaks_a_limit(comp) or comp & self.broken:
                continue
            if any(self.ever[n] != comp for n in comp):
                continue
            holders = self._holders(comp, people)
            mails = {v for t, v in comp if t == "email"}
            for email in self.leads:
                if _mail(email) not in mails or email in self.rejected["leads"]:
                    continue
                sources = {s for e, s in self.leads.items() if _mail(e) in mails}
                assert any(p.attributes.get("lead_source") in sources for p in holders), (
                    comp,
                    email,
                    holders,
                )
            for sid in (v for t, v in comp if t == "stripe_id"):
                if sid in self.rejected["billing"]:
                    continue
                mrr = self.stripe[sid]["mrr"]
                assert any(
                    p.attributes.get("stripe_id") == sid and p.attributes.get("mrr") == mrr
                    for p in holders
                ), (comp, sid, holders)

    @staticmethod
    def _holders(comp: set[Node], people: list[Any]) -> list[Any]:
        """The people holding an identifier of ``comp``: its user's `id`, one of its emails."""
        users = {v for t, v in comp if t == "user_id"}
        mails = {v for t, v in comp if t == "email"}
        return [p for p in people if p.id in users or _mail(p.email or "") in mails]


SETTINGS = property_settings(examples=2, steps=6)


@pytest.mark.parametrize("app_api_key", [True, False], ids=["app_api_key", "no_app_api_key"])
def test_people_keyed_through_the_identity_graph_with_merges_off_lose_nothing_silently(
    customerio_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    app_api_key: bool,
) -> None:
    run_machine(NoMergeMachine, customerio_emulator, tmp_path, monkeypatch, app_api_key)


def run_machine(
    machine: type[NoMergeMachine],
    emu: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    app_api_key: bool,
) -> None:
    """Run ``machine`` (this one, or one built on it) as a test against ``emu``, its
    destination with an App API key or without one."""
    bind_machine(machine, emu, tmp_path, monkeypatch)
    machine.app_api_key = app_api_key
    run_state_machine_as_test(machine, settings=SETTINGS)


def _user_and_lead_retired(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uid: str, lead: str
) -> tuple[Project, Any]:
    """Merges off, no App API key: the user ``uid`` (`e1@x.io`, plan `pro`) and the lead
    ``lead`` synced; then the lead leaves, then the user, each followed by a run of every
    sync (the user's person stays in Customer.io). Returns the project and the user's person
    as first synced. The user coming back with the lead's email has the lead's person to be
    merged into theirs, kept back."""
    monkeypatch.delenv("CUSTOMERIO_APP_API_KEY", raising=False)
    project = project_in(tmp_path, emu, monkeypatch, {"merge_policy": {"enabled": False}})
    sql(
        tmp_path,
        f"insert into app_users values ('{uid}', 'e1@x.io', 'pro');"
        f"insert into leads values ('{lead}', 'seo')",
    )
    sync_all(project)
    person = emu.person(id=uid)
    assert person is not None and person.email == "e1@x.io"
    sql(tmp_path, "delete from leads")
    sync_all(project)
    sql(tmp_path, "delete from app_users")
    sync_all(project)
    return project, person


def _a_user_back_with_a_leads_email_while_a_new_user_takes_theirs(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, list[Any]]:
    """:func:`_user_and_lead_retired` of `u2` and the lead `e4@x.io`, then `u2` comes back
    with `e4@x.io` (`u2`'s row is rejected) while the new user `u3` signs up with `E1@x.io`,
    the email `u2` gave up. Returns `u2`'s person as first synced and the reports of the
    last run of every sync."""
    project, u2 = _user_and_lead_retired(emu, tmp_path, monkeypatch, "u2", "e4@x.io")
    sql(
        tmp_path,
        "insert into app_users values ('u2', 'e4@x.io', 'free'), ('u3', 'E1@x.io', 'pro')",
    )
    reports = [run_sync(project, name, console=NullConsole()) for name in ORDER]
    return u2, reports


def test_a_user_whose_row_is_rejected_gives_up_the_email_a_new_user_takes(
    customerio_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warehouse gives `e1@x.io` to `u3` now, and `u2`'s row, which gives it up, is
    rejected (its merge with the lead's person is kept back). `u2`'s person must not keep it
    (messages to `u2` would reach `u3`'s inbox): the run clears it first, as for a giver whose
    email is now null, and `u3`'s person gets it. Only `u2`'s row is left, held back again.
    (Found by the merges-off identity machine without an App API key, 25x20: `u3` was left
    unsent, in no count, each run.)"""
    emu = customerio_emulator
    u2, reports = _a_user_back_with_a_leads_email_while_a_new_user_takes_theirs(
        emu, tmp_path, monkeypatch
    )
    users = reports[0]
    assert users.status == "partial"
    assert [key for key, _, _ in users.failures] == ["u2"] and users.rejected_by_api == 1
    kept = emu.person(cio_id=u2.cio_id)
    assert kept is not None and (kept.id, kept.email) == ("u2", None), kept
    u3 = emu.person(id="u3")
    assert u3 is not None and (u3.email, u3.attributes) == ("e1@x.io", {"plan": "pro"})
    plan = plan_sync(load_project(tmp_path), "users", console=NullConsole(), samples=10)
    # nothing else is left to send, and the plan says the run holds `u2`'s row back again
    assert plan.samples == () and [k for k, _, _ in plan.failures] == ["u2"]


def test_a_full_resync_that_holds_a_users_row_back_still_knows_the_email_its_person_holds(
    customerio_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merges off, no App API key: `u3` (`e1@x.io`) and the lead `e5@x.io` synced; the lead
    leaves, then `u3`, then `u3` comes back with `e5@x.io` and a `--full-resync` runs: `u3`'s
    row is held back (the lead's person is to be merged into `u3`'s, kept back), so its
    person still holds `e1@x.io`, and the resync must not forget that. A new user `u4` then
    signs up with `e1@x.io`: the run clears it from `u3`'s person first and `u4`'s person
    gets it. (Found by the merges-off identity machine without an App API key, 10x20: the
    resync forgot `u3`'s record with the snapshot, and `u3`'s person kept `e1@x.io`, which
    `u4`'s row gives, so messages to `u3` reached `u4`'s inbox.)"""
    emu = customerio_emulator
    project, u3 = _user_and_lead_retired(emu, tmp_path, monkeypatch, "u3", "e5@x.io")
    sql(tmp_path, "insert into app_users values ('u3', 'e5@x.io', 'team')")
    reports = [run_sync(project, name, console=NullConsole(), full_resync=True) for name in ORDER]
    assert [key for key, _, _ in reports[0].failures] == ["u3"]
    assert "merge is kept back" in reports[0].failures[0][2]
    assert emu.person(id="u3") == u3  # nothing of `u3`'s row was sent
    sql(tmp_path, "insert into app_users values ('u4', 'e1@x.io', 'free')")
    reports = [run_sync(project, name, console=NullConsole()) for name in ORDER]
    assert [key for key, _, _ in reports[0].failures] == ["u3"]
    kept = emu.person(cio_id=u3.cio_id)
    assert kept is not None and (kept.id, kept.email) == ("u3", None), kept
    u4 = emu.person(id="u4")
    assert u4 is not None and (u4.email, u4.attributes) == ("e1@x.io", {"plan": "free"}), u4


def test_a_clear_for_a_taker_held_back_too_is_sent_once(
    customerio_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merges off, no App API key: `u3`'s row is held back (it came back with a retired
    lead's email, their merge kept back) while its person still holds `e1@x.io`; a lead of
    `e1@x.io` reaches that person, leaves, and `u2` comes back with `e1@x.io`. The graph's
    holder of `e1@x.io` is `u3`'s person, not a lead's to merge into `u2` (no merge is kept
    back for it: with merges on, it would delete `u3`'s person): the run clears `e1@x.io`
    from `u3`'s person, once, and `u2`'s row lands with it; the next runs, with `u3`'s row
    still held back, send nothing. (Before, the snapshot kept saying `u3`'s person held it,
    and each run cleared it again; and `u2`'s row was held back for that merge.)"""
    emu = customerio_emulator
    monkeypatch.delenv("CUSTOMERIO_APP_API_KEY", raising=False)
    project = project_in(tmp_path, emu, monkeypatch, {"merge_policy": {"enabled": False}})
    steps = [
        "insert into app_users values ('u3', 'e1@x.io', 'pro'), ('u2', 'e6@x.io', 'team');"
        "insert into leads values ('e5@x.io', 'ads')",
        "delete from leads",
        "delete from app_users where user_id = 'u3'",
        "insert into app_users values ('u3', 'e5@x.io', 'team');"
        "insert into leads values ('e1@x.io', 'seo')",
        "delete from leads",
        "delete from app_users where user_id = 'u2'",
        "insert into app_users values ('u2', 'e1@x.io', 'free')",
    ]
    for statements in steps:
        sql(tmp_path, statements)
        reports = [run_sync(project, name, console=NullConsole()) for name in ORDER]
    assert sorted(key for key, _, _ in reports[0].failures) == ["u3"]
    u3, u2 = emu.person(id="u3"), emu.person(id="u2")
    assert u3 is not None and u3.email is None, u3
    assert u2 is not None and (u2.email, u2.attributes) == ("e1@x.io", {"plan": "free"}), u2
    assert emu.merges() == []
    for _ in range(2):
        before = len(emu.request_log())
        reports = [run_sync(project, name, console=NullConsole()) for name in ORDER]
        assert sorted(key for key, _, _ in reports[0].failures) == ["u3"]
        assert [r.body for r in emu.request_log()[before:]] == []


def test_the_plan_shows_a_row_held_back_for_a_merge_kept_back_as_the_run_rejects_it(
    customerio_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merges off, no App API key: `u3` comes back with a retired lead's email, whose person
    is to be merged into `u3`'s (kept back). `lockgate plan` says the row will not be sent,
    with the run's reason, and shows no payload for it; the run then rejects exactly that,
    and so does the next plan. (Before, the plan showed the row's identify as to be sent.)"""
    emu = customerio_emulator
    project, _ = _user_and_lead_retired(emu, tmp_path, monkeypatch, "u3", "e5@x.io")
    sql(tmp_path, "insert into app_users values ('u3', 'e5@x.io', 'team')")
    for _ in range(2):
        plan = plan_sync(project, "users", console=NullConsole(), samples=10)
        assert plan.samples == ()
        assert [(k, o) for k, o, _ in plan.failures] == [("u3", "rejected")]
        assert "merge is kept back" in plan.failures[0][2]
        report = run_sync(project, "users", console=NullConsole())
        assert report.failures == plan.failures
    assert emu.person(id="u3").email == "e1@x.io"  # type: ignore[union-attr]


def test_a_user_taking_the_old_email_of_a_readdressing_kept_back_is_held_back(
    customerio_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merges off, no App API key: a lead `e2@x.io` gives a second address `e4@x.io` (a
    link), then its own leaves: the readdressing would merge the old email's person into
    the new one's, kept back, so two people stay (`e2@x.io` and `e4@x.io`). Later a link
    joins `e2@x.io` to the profile again and the user `u2` signs up with it: the profile's
    person (`e4@x.io`'s) gets `u2`'s `id`, and `u2`'s row, giving it `e2@x.io`, which the
    other person still holds, would be dropped by Customer.io unseen. It is held back with
    the reason instead, in the plan as in the run. (Found by the merges-off identity
    machine, 15x20: `u2`'s `plan` was lost, the row counted delivered.)"""
    emu = customerio_emulator
    monkeypatch.delenv("CUSTOMERIO_APP_API_KEY", raising=False)
    project = project_in(tmp_path, emu, monkeypatch, {"merge_policy": {"enabled": False}})
    for statements in (
        "insert into leads values ('e2@x.io', 'webinar')",
        "insert into leads values ('e4@x.io', 'ads');"
        "insert into links values ('e2@x.io', 'e4@x.io')",
        "delete from leads where email = 'e2@x.io'; delete from links",
    ):
        sql(tmp_path, statements)
        sync_all(project)
    old, new = emu.person(email="e2@x.io"), emu.person(email="e4@x.io")
    assert old is not None and new is not None and old.cio_id != new.cio_id  # kept apart
    sql(
        tmp_path,
        "insert into links values ('e4@x.io', 'e2@x.io');"
        "insert into app_users values ('u2', 'e2@x.io', 'pro')",
    )
    plan = plan_sync(project, "users", console=NullConsole(), samples=10)
    report = run_sync(project, "users", console=NullConsole())
    assert [k for k, _, _ in report.failures] == ["u2"], report.failures
    assert "merge is kept back" in report.failures[0][2]
    assert plan.failures == report.failures and plan.samples == ()
    assert emu.person(email="e2@x.io") == old  # untouched: still the other person's
    assert "plan" not in (emu.person(email="e4@x.io") or new).attributes


@pytest.mark.parametrize("app_api_key", [True, False], ids=["app_api_key", "no_app_api_key"])
def test_a_user_taking_a_leads_email_another_user_absorbed_is_rejected_and_gives_up_their_own(
    customerio_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    app_api_key: bool,
) -> None:
    """Merges off: `u3` took the lead `e4@x.io`'s email (their merge kept back), then the
    lead and `u3` left. The graph remembers `e4@x.io` as `u3`'s; Customer.io still has the
    lead's person holding it. `u4`, a person already, now takes `e4@x.io`, and `u1` takes
    `u4`'s old `e6@x.io`: Customer.io would drop `u4`'s update whole, unseen without an App
    API key, since another person holds the email. `u4`'s row is rejected with a reason
    before it is sent, and its person gives `e6@x.io` up (it is `u1`'s now: `u4`'s messages
    would reach `u1`'s inbox). (Found by the merges-off identity machine, 10x20: `u4` was
    sent and dropped each run, counted delivered without an App API key.)"""
    emu = customerio_emulator
    if app_api_key:  # `project_in` sets no App API key
        monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    else:
        monkeypatch.delenv("CUSTOMERIO_APP_API_KEY", raising=False)
    project = project_in(tmp_path, emu, monkeypatch, {"merge_policy": {"enabled": False}})

    def run_all() -> list[Any]:
        return [run_sync(project, name, console=NullConsole()) for name in ORDER]

    sql(
        tmp_path,
        "insert into app_users values ('u1', 'e1@x.io', 'pro'), ('u3', 'e2@x.io', 'team'), "
        "('u4', 'e6@x.io', 'free'); insert into leads values ('e4@x.io', 'webinar')",
    )
    sync_all(project)
    lead = emu.person(email="e4@x.io")
    assert lead is not None and lead.id is None
    sql(tmp_path, "update app_users set email = 'e4@x.io' where user_id = 'u3'")
    users = run_all()[0]
    assert [k for k, _, _ in users.failures] == ["u3"]  # the merge with the lead kept back
    sql(tmp_path, "delete from leads; delete from app_users where user_id = 'u3'")
    run_all()
    sql(
        tmp_path,
        "update app_users set email = 'e4@x.io', plan = 'team' where user_id = 'u4';"
        "update app_users set email = 'e6@x.io', plan = 'team' where user_id = 'u1'",
    )
    users = run_all()[0]
    reasons = dict((k, r) for k, _, r in users.failures)
    assert "u4" in reasons and "e4@x.io" in reasons["u4"], (users.failures, emu.people())
    assert users.rejected_by_api == len(users.failures)
    u4 = emu.person(id="u4")
    assert u4 is not None and (u4.email, u4.attributes["plan"]) == (None, "free"), u4
    assert emu.person(email="e4@x.io") == lead  # untouched: still the lead's
    u1 = emu.person(id="u1")
    assert u1 is not None and (u1.email, u1.attributes["plan"]) == ("e6@x.io", "team"), u1
    assert list(reasons) == ["u4"]


@pytest.mark.parametrize("app_api_key", [True, False], ids=["app_api_key", "no_app_api_key"])
def test_a_returning_user_whose_update_customerio_would_drop_gives_up_the_email_another_user_takes(
    customerio_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    app_api_key: bool,
) -> None:
    """Merges off: `u4` (`e3@x.io`) leaves after the lead `e6@x.io` did, and comes back with
    `e6@x.io` (the lead's person to be merged into `u4`'s, kept back), while `u1` takes
    `e3@x.io`. Customer.io would drop `u4`'s update whole, the lead's person holding
    `e6@x.io`, and with it the change that frees `e3@x.io`: `u4`'s person would keep the email
    `u1` takes (`u4`'s messages reaching `u1`'s inbox) and `u1`'s update be dropped too, each
    run. `u4`'s row is rejected before it is sent (looked up with an App API key, as without
    one), its person gives `e3@x.io` up first, and `u1` lands in the same run. (Found by the
    merges-off identity machine with an App API key, 10x20, seed 1207: `u4` was sent, dropped
    and read back, and `u1` dropped with it.)"""
    emu = customerio_emulator
    if app_api_key:
        monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    else:
        monkeypatch.delenv("CUSTOMERIO_APP_API_KEY", raising=False)
    project = project_in(tmp_path, emu, monkeypatch, {"merge_policy": {"enabled": False}})
    sql(
        tmp_path,
        "insert into app_users values ('u4', 'e3@x.io', 'pro'), ('u1', 'e2@x.io', 'team');"
        "insert into leads values ('e6@x.io', 'seo')",
    )
    sync_all(project)
    lead = emu.person(email="e6@x.io")
    assert lead is not None and lead.id is None
    sql(tmp_path, "delete from leads")
    sync_all(project)
    sql(tmp_path, "delete from app_users where user_id = 'u4'")
    sync_all(project)
    sql(
        tmp_path,
        "insert into app_users values ('u4', 'e6@x.io', 'team');"
        "update app_users set email = 'e3@x.io', plan = 'free' where user_id = 'u1'",
    )
    users = run_sync(project, "users", console=NullConsole())
    reasons = dict((k, r) for k, _, r in users.failures)
    assert list(reasons) == ["u4"] and "e6@x.io" in reasons["u4"], (users.failures, emu.people())
    assert users.rejected_by_api == 1
    u4 = emu.person(id="u4")
    assert u4 is not None and (u4.email, u4.attributes["plan"]) == (None, "pro"), u4
    u1 = emu.person(id="u1")
    assert u1 is not None and (u1.email, u1.attributes["plan"]) == ("e3@x.io", "free"), u1
    assert emu.person(email="e6@x.io") == lead  # untouched: still the lead's
    # the next run tries `u4`'s row alone again, and sends nothing else
    again = run_sync(project, "users", console=NullConsole())
    assert [k for k, _, _ in again.failures] == ["u4"]
    plan = plan_sync(project, "users", console=NullConsole(), samples=10)
    assert [s["key"] for s in plan.samples] in ([], ["u4"]), plan.samples
