"""Stateful property test, the sequel of test_sync_properties.py for what it does not try: a
people sync identified by `id` and `email` whose emails change case (or gain spaces around
them), move from one account to another, go null and are briefly shared by two rows; runs of
named records (`--only`) interleaved with whole runs; and `plan --all` / `sync --all` across
the syncs in one session.

The project has two syncs: `accounts` (people, `identify_by: {id: user_id, email: email}`,
an `upsert`, a `mirror` or a mirror with `delete_removed`, drawn for each example) and
`activity` (events keyed by `id`, test_sync_properties.py's). The invariants:

- (a) without faults, a plan (of one sync, of named records, or of `--all` in one session)
  counts and shows what the run then sends;
- (b) after a whole run, each account is one person in Customer.io, found by its `id`, with the
  last non-null `plan` and the email the model gives it (the last non-null one, in the case
  sent, trimmed, released when another row takes it), and no other person holds an account's
  email;
- (c) each event key arrived exactly once;
- (d) after a whole run with faults, a whole run without them converges to (b) and (c);
- (e) a row a run of named records delivered is not sent again by the next whole run when it
  has not changed since, and not lost either (b);
- (f) after a person is deleted in Customer.io by hand, a whole run with `--full-resync`
  converges to (b) and (c), and does not create a person whose row left the model again.

`LOCKGATE_PROPERTY_EXAMPLES=500` explores more than CI's few derandomized examples.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from tests.sync.conftest import ProjectFactory
from tests.sync.helpers import (
    ACCOUNTS,
    bind_machine,
    canonical,
    property_settings,
    sent_ops,
    sql_text,
)
from tests.sync.test_sync_properties import ACTIVITY, COUNTS

from lockgate.console import NullConsole
from lockgate.emulator import Emulator, FaultConfig
from lockgate.errors import LockgateError, NothingNamedError
from lockgate.sync.run import RunReport, Session, plan_sync, run_sync

TABLES = """
create or replace table accounts (user_id integer, email varchar, plan varchar);
create or replace table events (event_id varchar, user_id integer, event_name varchar,
                                occurred_at timestamptz);
"""

UNKNOWN = object()  # an email two rows sent at once: either may hold it
SYNCS = ("accounts", "activity")  # the order of `sync --all`: people, then events

uids = st.integers(1, 4)
plans = st.sampled_from([None, "free", "pro", "team"])
#: an email in another case, or with spaces around it (Customer.io trims it): the same person
spellings = st.sampled_from([str, str.upper, str.capitalize, lambda e: f" {e} "])
emails = st.one_of(
    st.none(),
    st.builds(lambda n, s: s(f"{n}@x.io"), st.sampled_from(["ann", "bob", "cy", "dee"]), spellings),
)


def _low(email: str | None) -> str | None:
    return None if email is None else email.strip().lower()


class IdentifyMachine(RuleBasedStateMachine):
    emulator: Emulator
    roots: Any
    monkeypatch: pytest.MonkeyPatch

    def __init__(self) -> None:
        super().__init__()
        self.emu = self.emulator
        self.emu.reset()
        self.factory = ProjectFactory(next(self.roots), self.emu, self.monkeypatch)
        self.monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", self.emu.config.app_api_key)
        self.now = int(time.time())
        self.accounts: dict[int, dict[str, Any]] = {}  # by user_id: one row each
        self.events: dict[str, int | None] = {}  # event key -> user_id
        # the reference model: by user_id, the plan and email Customer.io holds
        self.expected: dict[int, dict[str, Any]] = {}
        self.delivered: set[str] = set()  # event keys
        #: rows a run of named records delivered, as they were then (for (e))
        self.sent_named: dict[int, tuple[str | None, str | None]] = {}
        self.whole = False  # a whole run since the last edit: (b) holds
        #: accounts of an email two rows shared during a run of named records: which of them
        #: it sent (and so which one a whole run keeps sending) is not modelled; (b) skips
        #: them from then on. A whole run holds all but one back (`_held_back`)
        self.tainted: set[int] = set()
        #: emails (lower case) a tainted account may hold in Customer.io: one it shared, and
        #: the one it was delivered with, which it keeps while a whole run holds it back
        #: (not modelled for a tainted account). A row taking one is tainted too
        self.tainted_emails: set[str] = set()
        self.was_shared = False  # a whole run saw two rows share an email (for statistics)
        self.held: set[int] = set()  # accounts the last whole run held back (shared email)
        #: by `id`, the email a person deleted by hand held: Lockgate cannot see the delete,
        #: and its snapshot still says that row has the email (`_held_back`), until the row is
        #: sent again (a full resync re-creates the person with it)
        self.hand_deleted_email: dict[int, Any] = {}
        #: the keys of delivered events a delete of their person (`delete_removed`) took out
        #: of Customer.io with it (which Lockgate does not send again)
        self.dropped: list[str] = []

    @initialize(
        rows=st.lists(st.tuples(uids, emails, plans), min_size=1, max_size=4),
        mode=st.sampled_from(["upsert", "mirror", "delete"]),
    )
    def start(self, rows: list[tuple[int, str | None, str | None]], mode: str = "upsert") -> None:
        """The accounts sync is an `upsert`, a `mirror` (a person whose row left has their
        `plan` cleared and keeps their email until a row takes it), or a mirror that deletes
        them (`delete_removed`)."""
        self.mode = mode
        event(f"accounts sync: {mode}")
        accounts = (
            ACCOUNTS
            + {
                "upsert": "",
                "mirror": "mode: mirror\n",
                "delete": "mode: mirror\ndelete_removed: true\n",
            }[mode]
        )
        self.factory.sql(TABLES)
        self.project = self.factory.write({"accounts": accounts, "activity": ACTIVITY}, retries=0)
        for uid, email, plan in rows:
            self._set(uid, email, plan)
        self._write()

    # -- the warehouse ------------------------------------------------------------------

    def _set(self, uid: int, email: str | None, plan: str | None) -> None:
        self.accounts[uid] = {"email": email, "plan": plan}
        self.whole = False

    def _write(self) -> None:
        rows = ", ".join(
            f"({uid}, {sql_text(r['email'])}, {sql_text(r['plan'])})"
            for uid, r in self.accounts.items()
        )
        events = ", ".join(
            f"('{key}', {'null' if uid is None else uid}, 'signup', to_timestamp({self.now - 60}))"
            for key, uid in self.events.items()
        )
        self.factory.sql(
            "delete from accounts; delete from events"
            + (f"; insert into accounts values {rows}" if rows else "")
            + (f"; insert into events values {events}" if events else "")
        )

    def _shared(self) -> set[int]:
        """The accounts whose email another row of the model has too (in any case)."""
        by_email: dict[str, list[int]] = {}
        for uid, r in self.accounts.items():
            if r["email"] is not None:
                by_email.setdefault(_low(r["email"]), []).append(uid)
        return {u for us in by_email.values() if len(us) > 1 for u in us}

    def _with_email(self) -> list[int]:
        return sorted(u for u, r in self.accounts.items() if r["email"])

    @rule(uid=uids, email=emails, plan=plans)
    def set_account(self, uid: int, email: str | None, plan: str | None) -> None:
        """A new account, or one whose email or plan changed."""
        if email is not None and any(
            _low(r["email"]) == _low(email) for u, r in self.accounts.items() if u != uid
        ):
            return  # sharing an email is `share_email`'s, briefly
        self._set(uid, email, plan)
        self._write()

    @precondition(lambda self: any(r["email"] for r in self.accounts.values()))
    @rule(data=st.data(), spelling=spellings, giver_gets=emails, taker=uids)
    def move_email(self, data: st.DataObject, spelling: Any, giver_gets: Any, taker: int) -> None:
        """One account's email goes to another (perhaps in another case); the giver gets
        another email, or none."""
        giver = data.draw(st.sampled_from(self._with_email()))
        if taker == giver:
            return
        email = self.accounts[giver]["email"]
        others = {_low(r["email"]) for u, r in self.accounts.items() if u not in (giver, taker)}
        if giver_gets is not None and _low(giver_gets) in others | {_low(email)}:
            giver_gets = None
        self._set(giver, giver_gets, self.accounts[giver]["plan"])
        plan = self.accounts[taker]["plan"] if taker in self.accounts else "free"
        self._set(taker, spelling(email), plan)
        self._write()

    @precondition(lambda self: any(r["email"] for r in self.accounts.values()))
    @rule(data=st.data(), spelling=st.sampled_from([str.upper, str.lower, str.title]))
    def recase_email(self, data: st.DataObject, spelling: Any) -> None:
        uid = data.draw(st.sampled_from(self._with_email()))
        self._set(uid, spelling(self.accounts[uid]["email"]), self.accounts[uid]["plan"])
        self._write()

    @precondition(lambda self: any(r["email"] for r in self.accounts.values()))
    @rule(data=st.data(), uid=uids, spelling=spellings)
    def share_email(self, data: st.DataObject, uid: int, spelling: Any) -> None:
        """Two rows reach one person for a while (a bad join); `unshare` ends it."""
        other = data.draw(st.sampled_from(self._with_email()))
        if other != uid:
            plan = self.accounts.get(uid, {}).get("plan")
            self._set(uid, spelling(self.accounts[other]["email"]), plan)
            self._write()

    @precondition(lambda self: self._shared())
    @rule(data=st.data(), email=emails)
    def unshare(self, data: st.DataObject, email: str | None) -> None:
        uid = data.draw(st.sampled_from(sorted(self._shared())))
        if email is not None and any(
            _low(r["email"]) == _low(email) for r in self.accounts.values()
        ):
            email = None
        self._set(uid, email, self.accounts[uid]["plan"])
        self._write()

    @precondition(lambda self: self.accounts)
    @rule(data=st.data())
    def delete_account(self, data: st.DataObject) -> None:
        del self.accounts[data.draw(st.sampled_from(sorted(self.accounts)))]
        self.whole = False
        self._write()

    @precondition(lambda self: len(self.events) < 12)
    @rule(key=st.sampled_from([f"e{i}" for i in range(12)]), uid=st.one_of(st.none(), uids))
    def add_event(self, key: str, uid: int | None) -> None:
        if key not in self.events:
            self.events[key] = uid
            self.whole = False
            self._write()

    # -- runs ---------------------------------------------------------------------------

    def _check(self, name: str, plan: RunReport, report: RunReport, before: int) -> None:
        """(a) the plan's counts and payloads are the run's."""
        shared = {str(u) for u in self._shared() | self.tainted}
        if report.status == "partial":
            # a row sharing an email a person of Customer.io holds already is rejected by the
            # new-email check or the read-back (docs/sync.md, "New people's emails checked",
            # "Emails read back"), which no plan makes
            assert all(
                key in shared
                and why == "rejected"
                and ("is held in Customer.io by" in text or "Customer.io dropped the" in text)
                for key, why, text in report.failures
            ), report.failures
            event("a shared email's new row rejected")
            return
        assert report.status == "success", (name, report.failures)
        planned = {c: getattr(plan.changes, c) for c in COUNTS}
        assert planned == {c: getattr(report.changes, c) for c in COUNTS}, name
        # the email releases sent ahead of rows taking an email (`KEY#release-email`) are the
        # means of those rows' (docs/sync.md, "Emails that change hands in one run"), which a
        # plan neither counts nor shows
        sent = [
            op
            for op in sent_ops(self.emu, before)
            if op.get("attributes") != {"_update": True, "email": ""}
        ]
        assert canonical(sent) == canonical([s["payload"] for s in plan.samples]), name

    def _identified(self, before: int) -> set[str]:
        """The accounts whose rows the runs since request ``before`` sent. A person whose email
        is released for a row taking it (`KEY#release-email`: a row that went null keeps its
        email in Customer.io until then, docs/sync.md, "Emails a person keeps after their row
        lets go") is not their row sent: the release is the taker's means."""
        return {
            str(op["identifiers"].get("id"))
            for op in sent_ops(self.emu, before)
            if op.get("action") == "identify"
            and op.get("attributes") != {"_update": True, "email": ""}
        }

    @rule(every=st.booleans())
    def sync(self, every: bool, full_resync: bool = False) -> None:
        """A whole run of each sync, one by one or as `plan --all` then `sync --all`."""
        start = len(self.emu.request_log())
        held = self._held_events()
        kw = {"full_resync": True} if full_resync else {}
        if every:
            with Session() as session:
                plans = [self._plan(n, session=session, **kw) for n in SYNCS]
            with Session() as session:
                for name, plan in zip(SYNCS, plans, strict=True):
                    before = len(self.emu.request_log())
                    self._check(name, plan, self._run(name, session=session, **kw), before)
        else:
            for name in SYNCS:
                plan = self._plan(name, **kw)
                before = len(self.emu.request_log())
                self._check(name, plan, self._run(name, **kw), before)
        # (e) a row sent by a named run and unchanged since is not sent again
        again = self._identified(start)
        for uid, (email, plan) in self.sent_named.items():
            row = self.accounts.get(uid)
            if row is not None and (row["email"], row["plan"]) == (email, plan):
                assert str(uid) not in again, (uid, row)
        self.sent_named = {}
        self._note_dropped(held)
        self._expect_after_whole_run(start)

    @rule(
        seed=st.integers(0, 3),
        applied=st.booleans(),
        rate=st.sampled_from([0.3, 0.7, 1.0]),
        every=st.booleans(),
    )
    def sync_with_faults(self, seed: int, applied: bool, rate: float, every: bool) -> None:
        """(d) a whole run whose requests fail (some applied, their answer lost), then a whole
        run without faults: it converges to (b), each event once (c)."""
        self.emu.set_faults(
            FaultConfig(error_5xx=rate / 2, reset=rate / 2, seed=seed, applied_then_failed=applied)
        )
        held = self._held_events()
        try:
            for name in SYNCS:
                with contextlib.suppress(LockgateError):
                    self._run(name)
        finally:
            self.emu.set_faults(FaultConfig())
        event("a whole run with faults")
        self._note_dropped(held)
        self.sent_named = {}
        self.sync(every)

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), every=st.booleans())
    def deleted_by_hand(self, data: st.DataObject, every: bool) -> None:
        """(f) someone deletes a person in Customer.io by hand (their events go with them),
        then `sync --all --full-resync` sends every row again: the model's rows are people
        again, and a person whose row left the model is not created again."""
        uid = data.draw(st.sampled_from(sorted(self.expected)))
        event("a person deleted by hand" + ("" if uid in self.accounts else ", their row gone"))
        held = self._held_events()
        with self.emu.client(auth=self.emu.track_auth) as client:
            client.delete(f"/api/v1/customers/{uid}").raise_for_status()
        self._note_dropped(held)
        self.hand_deleted_email[uid] = self.expected.pop(uid)["email"]
        self.sent_named = {}  # a full resync sends them again
        self.sync(every, full_resync=True)
        if uid not in self.accounts:
            assert str(uid) not in {p.id for p in self.emu.people()}, uid

    deleted_by_hand_again = deleted_by_hand  # drawn as often as a run with faults

    @rule(data=st.data(), together=st.booleans())
    def sync_only(self, data: st.DataObject, together: bool) -> None:
        """A run of the records one value names: an account's id, or an email (in any case)."""
        values = [str(u) for u in sorted(self.accounts)] + [
            r["email"].strip().upper() for r in self.accounts.values() if r["email"]
        ]
        if not values:
            return
        only = (data.draw(st.sampled_from(values)),)
        self._taint(self._shared())
        start = len(self.emu.request_log())
        held = self._held_events()
        self.failed: set[str] = set()  # keys the runs did not deliver (rejected, held back)
        if together:  # `plan --all --only V`, then `sync --all --only V`
            with Session() as session:
                plans = {n: self._plan_named(n, only, session=session) for n in SYNCS}
            with Session() as session:
                for name in SYNCS:
                    self._run_named(name, only, plans[name], session=session)
        else:  # each sync planned, then run, in turn
            for name in SYNCS:
                self._run_named(name, only, self._plan_named(name, only))
        for uid in self._identified(start) - self.failed:
            if uid.isdigit() and int(uid) in self.accounts:
                row = self.accounts[int(uid)]
                self.sent_named[int(uid)] = (row["email"], row["plan"])
        self._note_dropped(held)
        self._expect_named(start)

    def _held_events(self) -> dict[str | None, Any]:
        return {e.id: e.data.get("key") for e in self.emu.events()}

    def _note_dropped(self, held: dict[str | None, Any]) -> None:
        """The events Customer.io held before the runs and lacks now went with their person."""
        now = {e.id for e in self.emu.events()}
        self.dropped += [key for id_, key in held.items() if id_ not in now]

    def _expect_named(self, start: int) -> None:
        """What the runs of named records since request ``start`` delivered, in the model: a
        row sent with an email takes it from whoever the model gave it, and a person whose
        email was released for it (`KEY#release-email`) holds none; a row that goes null
        before the next whole run leaves the person with what was delivered here."""
        shared = self._shared()
        for op in sent_ops(self.emu, start):
            uid = op.get("identifiers", {}).get("id")
            if uid is None or not uid.isdigit():
                continue
            if op.get("action") == "delete":  # a named record that left, undone
                if uid not in self.failed:
                    self.expected.pop(int(uid), None)
                continue
            if op.get("action") != "identify":
                continue
            attributes = op.get("attributes") or {}
            attrs = self.expected.setdefault(int(uid), {"plan": None, "email": None})
            if attributes == {"_update": True, "email": ""}:
                if f"{uid}#release-email" not in self.failed:
                    attrs["email"] = None
                continue
            if uid in self.failed:
                continue
            if attributes.get("plan") is not None:
                attrs["plan"] = attributes["plan"] or None  # `""`: cleared (`mirror`)
            email = op["identifiers"].get("email") or attributes.get("email")
            if not email:
                continue
            attrs["email"] = UNKNOWN if int(uid) in shared else email
            for other, held in self.expected.items():
                if other != int(uid) and held["email"] is not UNKNOWN:
                    if _low(held["email"]) == _low(email):
                        held["email"] = None

    def _plan_named(self, name: str, only: tuple[str, ...], **kw: Any) -> RunReport | None:
        try:
            return self._plan(name, only=only, **kw)
        except NothingNamedError:
            return None

    def _run_named(
        self, name: str, only: tuple[str, ...], plan: RunReport | None, **kw: Any
    ) -> None:
        before = len(self.emu.request_log())
        try:
            report = self._run(name, only=only, **kw)
        except NothingNamedError:
            assert plan is None, (name, only)
            return
        assert plan is not None, (name, only)
        self.failed |= {key for key, _, _ in report.failures}
        self._check(name, plan, report, before)

    def _plan(self, name: str, **kw: Any) -> RunReport:
        return plan_sync(self.project, name, console=NullConsole(), samples=1000, **kw)

    def _run(self, name: str, **kw: Any) -> RunReport:
        return run_sync(self.project, name, console=NullConsole(), force=True, **kw)

    def _taint(self, uids: set[int]) -> None:
        """Taint ``uids`` and the emails they may hold in Customer.io."""
        self.tainted |= uids
        for uid in uids:
            for email in (
                self.expected.get(uid, {}).get("email"),
                self.accounts.get(uid, {}).get("email"),
            ):
                if isinstance(email, str):
                    self.tainted_emails.add(_low(email))

    def _held_back(self) -> set[int]:
        """The accounts a whole run holds back for an email another person has (docs/sync.md,
        "Rows that leave the model, and rows that reach one person"): a row taking an email
        (new, or not the one delivered) that a delivered row keeps, or that rows of lower
        keys take too. A row held back keeps the email it was delivered with, so a row taking
        that one is held back too. Accounts of an email an account of a named run's tainted
        has, had been delivered with or may hold still are tainted as well: who holds it is
        not modelled (a tainted account the run holds back keeps the email it was delivered
        with, so a row taking that one is held back too). An email a person whose row
        left keeps is released for the row taking it (docs/sync.md, "Emails that change hands
        in one run"): no row holds it."""
        held: set[int] = set()
        while True:
            holders: dict[str, set[int]] = {}
            takers: dict[str, set[int]] = {}
            for uid, row in self.accounts.items():
                had = (
                    self.expected[uid]["email"]
                    if uid in self.expected
                    else self.hand_deleted_email.get(uid)
                )
                had = None if had is UNKNOWN else _low(had)
                now = _low(row["email"])
                if had is not None and (now == had or uid in held):
                    holders.setdefault(had, set()).add(uid)
                elif now is not None and now != had and uid not in held:
                    takers.setdefault(now, set()).add(uid)
            self._taint(self.tainted)
            more: set[int] = set()
            for email, us in takers.items():
                around = us | holders.get(email, set())
                if around & self.tainted or email in self.tainted_emails:
                    self._taint(around)
                    continue
                keep = holders.get(email) or {min(us, key=str)}
                more |= us - keep
            if not more - held:
                return held
            held |= more

    def _expect_after_whole_run(self, start: int) -> None:
        self.was_shared |= bool(self._shared())
        held = self._held_back()
        self.held = held
        # a row held back of a person already delivered sends its other changes, never its
        # email (docs/sync.md, "What a row held back for its email still sends")
        rest = {
            int(op["identifiers"]["id"])
            for op in sent_ops(self.emu, start)
            if op.get("action") == "identify"
            and str(op.get("identifiers", {}).get("id")).isdigit()
            and int(op["identifiers"]["id"]) in held
        }
        for uid in rest:
            op_sent = [
                op
                for op in sent_ops(self.emu, start)
                if op.get("identifiers", {}).get("id") == str(uid)
            ]
            assert all(
                "email" not in op["identifiers"] and "email" not in (op.get("attributes") or {})
                for op in op_sent
            ), op_sent
            # delivered before (a person deleted by hand is made again, without the email)
            assert uid in self.expected or uid in self.hand_deleted_email, (uid, op_sent)
            if uid not in self.expected:
                self.hand_deleted_email.pop(uid)
                sent = [(op.get("attributes") or {}).get("plan") for op in op_sent]
                self.expected[uid] = {"plan": next((p for p in sent if p), None), "email": None}
            if self.accounts[uid]["plan"] is not None:
                self.expected[uid]["plan"] = self.accounts[uid]["plan"]
            event("a held row's other changes sent")
        for uid, row in self.accounts.items():
            if uid in held:
                continue  # its email not sent: Customer.io holds the one it held
            self.hand_deleted_email.pop(uid, None)
            attrs = self.expected.setdefault(uid, {"plan": None, "email": None})
            if row["plan"] is not None:
                attrs["plan"] = row["plan"]
            if row["email"] is not None:
                attrs["email"] = row["email"].strip()  # sent trimmed
        taken = {
            _low(row["email"]): uid
            for uid, row in self.accounts.items()
            if row["email"] is not None and uid not in held
        }
        for uid, attrs in self.expected.items():
            email = None if attrs["email"] is UNKNOWN else _low(attrs["email"])
            if email in taken and taken[email] != uid:
                attrs["email"] = None  # released for the row that takes it
        for uid in set(self.hand_deleted_email) - set(self.accounts):
            del self.hand_deleted_email[uid]  # a row that left holds no email for the run
        for uid in set(self.expected) - set(self.accounts):  # rows that left: undone
            if self.mode == "delete":
                del self.expected[uid]
            elif self.mode == "mirror":
                self.expected[uid]["plan"] = None
        for key, uid in self.events.items():
            if uid is not None:
                self.delivered.add(key)
        self.whole = True

    # -- what Customer.io holds -----------------------------------------------------------

    @invariant()
    def customerio_holds_the_model(self) -> None:
        # (c) each event once
        keys = [e.data.get("key") for e in self.emu.events()] + self.dropped
        assert len(keys) == len(set(keys)), sorted(keys)
        if not self.whole:
            return
        assert set(keys) == self.delivered, (sorted(keys), sorted(self.delivered))
        event("(b) checked" + (" after a shared email" if self.was_shared else ""))
        # (b) each account one person, by id, with its plan and email; an account held back
        # for a shared email that was never delivered has no person yet
        held = {p.id: p for p in self.emu.people() if p.id is not None}
        for uid in set(self.accounts) - self.tainted:
            if uid in self.held and uid not in self.expected:
                continue
            person = held.get(str(uid))
            assert person is not None, (uid, sorted(held))
            want = self.expected[uid]
            assert person.attributes.get("plan") == want["plan"], (uid, person, want)
            if want["email"] is not UNKNOWN:
                assert person.email == want["email"], (uid, person, want)


SETTINGS = property_settings(examples=6, steps=10)


def test_identified_by_id_and_email_named_runs_and_all_runs_never_lose_or_resend(
    project_factory: ProjectFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bind_machine(IdentifyMachine, project_factory.emulator, tmp_path, monkeypatch)
    run_state_machine_as_test(IdentifyMachine, settings=SETTINGS)


class _Drawn:
    """A `data` argument whose every draw is ``value``, to drive the machine by hand."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def draw(self, strategy: Any) -> Any:
        return self.value


def test_the_email_release_for_a_row_a_named_run_sent_is_no_resend(
    project_factory: ProjectFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Account 2's email goes null and `--only 2` sends it (Customer.io keeps the email);
    account 4 then takes that email, and the whole run after clears it from person 2 first
    (`2#release-email`). That release is 4's means, not 2's row sent again: (e) holds."""
    bind_machine(IdentifyMachine, project_factory.emulator, tmp_path, monkeypatch)
    monkeypatch.setattr(sys.modules[__name__], "event", lambda *a: None)  # outside Hypothesis
    machine = IdentifyMachine()
    machine.start(rows=[(2, "ann@x.io", None)])
    machine.sync(every=False)
    machine.set_account(uid=2, email=None, plan=None)
    machine.sync_only(data=_Drawn("2"), together=False)
    assert machine.sent_named == {2: (None, None)}
    machine.set_account(uid=4, email="ann@x.io", plan="free")
    machine.sync(every=False)
    machine.customerio_holds_the_model()
    people = {p.id: (p.email, p.attributes.get("plan")) for p in project_factory.emulator.people()}
    assert people == {"2": (None, None), "4": ("ann@x.io", "free")}


def test_a_row_sharing_the_email_of_a_row_that_leaves_takes_it_once_that_row_left(
    project_factory: ProjectFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Account 3 takes account 1's email (held back: 1 keeps it), then account 1 leaves the
    model: person 1 keeps the email in Customer.io until the whole run after releases it for
    3, which lands in that run (before, 3 was rejected as long as person 1 held it)."""
    bind_machine(IdentifyMachine, project_factory.emulator, tmp_path, monkeypatch)
    monkeypatch.setattr(sys.modules[__name__], "event", lambda *a: None)  # outside Hypothesis
    machine = IdentifyMachine()
    machine.start(rows=[(1, "ann@x.io", None)])
    machine.sync(every=False)
    machine.share_email(data=_Drawn(1), uid=3, spelling=str)
    machine.sync(every=False)
    machine.delete_account(data=_Drawn(1))
    machine.sync(every=False)
    assert machine.held == set()
    machine.customerio_holds_the_model()
    people = {p.id: (p.email, p.attributes.get("plan")) for p in project_factory.emulator.people()}
    assert people == {"1": (None, None), "3": ("ann@x.io", None)}


def test_a_row_taking_the_email_a_held_row_of_a_named_runs_shared_email_keeps_waits(
    project_factory: ProjectFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Account 1 (delivered with cy@x.io) takes account 2's ann@x.io while `--only ANN@X.IO`
    runs: 1 and 2 are tainted (who holds ann is not modelled). Account 4 then takes cy: the
    whole run holds 1 back (2 keeps ann), so person 1 keeps cy and 4 waits for it ("is also
    the email of key `1`"). The model, which once expected 4 sent, taints 4 instead."""
    bind_machine(IdentifyMachine, project_factory.emulator, tmp_path, monkeypatch)
    monkeypatch.setattr(sys.modules[__name__], "event", lambda *a: None)  # outside Hypothesis
    machine = IdentifyMachine()
    machine.start(rows=[(1, "cy@x.io", None), (2, "ann@x.io", None)])
    machine.sync(every=False)
    machine.share_email(data=_Drawn(2), uid=1, spelling=str)
    machine.sync_only(data=_Drawn("ANN@X.IO"), together=False)
    machine.set_account(uid=4, email="CY@X.IO", plan="pro")
    machine.sync(every=False)
    machine.customerio_holds_the_model()
    assert 4 in machine.tainted
    people = {p.id: (p.email, p.attributes.get("plan")) for p in project_factory.emulator.people()}
    assert people == {"1": ("cy@x.io", None), "2": ("ann@x.io", None)}


def test_a_held_row_of_a_delivered_account_sends_its_new_plan_without_the_email(
    project_factory: ProjectFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Account 1 gets a new plan and takes account 2's email (a bad join): the whole run holds
    1 back (2 keeps ann), but 1 is delivered, so its new plan goes, without the email; the
    model expects that, and the next whole run sends nothing."""
    bind_machine(IdentifyMachine, project_factory.emulator, tmp_path, monkeypatch)
    monkeypatch.setattr(sys.modules[__name__], "event", lambda *a: None)  # outside Hypothesis
    machine = IdentifyMachine()
    machine.start(rows=[(1, "cy@x.io", "free"), (2, "ann@x.io", "free")])
    machine.sync(every=False)
    machine.set_account(uid=1, email="cy@x.io", plan="pro")
    machine.share_email(data=_Drawn(2), uid=1, spelling=str.upper)
    machine.sync(every=False)
    assert machine.held == {1}
    machine.customerio_holds_the_model()
    people = {p.id: (p.email, p.attributes.get("plan")) for p in project_factory.emulator.people()}
    assert people == {"1": ("cy@x.io", "pro"), "2": ("ann@x.io", "free")}
    start = len(project_factory.emulator.request_log())
    machine.sync(every=True)
    assert machine._identified(start) == set()


def test_a_person_deleted_by_hand_is_made_again_with_the_shared_email_its_row_holds(
    project_factory: ProjectFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accounts 1 and 4 share an email that person 4 holds (row 1 is held back). Person 4 is
    deleted by hand, then `sync --all --full-resync`: Lockgate cannot see the delete, and its
    snapshot says row 4 has the email, so row 4 is sent with it and person 4 is made again
    as it was; row 1 stays held back. (Seed 36 at 50x20: the machine, having forgotten who
    held the email, expected the lower key to take it.)"""
    bind_machine(IdentifyMachine, project_factory.emulator, tmp_path, monkeypatch)
    monkeypatch.setattr(sys.modules[__name__], "event", lambda *a: None)  # outside Hypothesis
    machine = IdentifyMachine()
    machine.start(rows=[(1, None, "free")], mode="upsert")
    machine.set_account(uid=4, email=" cy@x.io ", plan="free")
    machine.sync(every=True)
    machine.share_email(data=_Drawn(4), uid=1, spelling=str.capitalize)
    machine.sync(every=False)
    assert machine.held == {1}
    machine.customerio_holds_the_model()
    machine.deleted_by_hand(data=_Drawn(4), every=False)
    assert machine.held == {1}
    machine.customerio_holds_the_model()
    people = {p.id: (p.email, p.attributes.get("plan")) for p in project_factory.emulator.people()}
    assert people == {"1": (None, "free"), "4": ("cy@x.io", "free")}
