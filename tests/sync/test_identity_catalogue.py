"""Every case of the identity catalogue (shared/reference/identity.md §3.6), end to end.

tests/identity/test_catalogue.py asserts each case on the identity tables. Here the same cases
run through the real sync engine: a DuckDB warehouse holds the case's rows, a lockgate project
with the case's `identity:` section syncs people (and events) into the emulator over loopback
HTTP, in several steps when the case is about change over time. Each case then asserts what a
Customer.io user would see: the people (identifiers and key attributes), the merges (each
exactly once), where events landed, no duplicate person and no identifier conflict; and that
running every sync again sends nothing.
"""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.identity.helpers import SPEC_CONFIG
from tests.sync.helpers import sent_ops, warehouse_sql

from lockgate.cli.sync import change_rows
from lockgate.console import NullConsole
from lockgate.emulator import Emulator, EmulatorConfig
from lockgate.emulator.models import Person
from lockgate.project.loader import Project, load_project
from lockgate.sync.run import RunReport, plan_sync, run_sync

TABLES = """
create schema cio; create schema app; create schema stripe; create schema crm;
create schema mkt; create schema events;
create table cio.people (cio_id varchar, user_id varchar, email varchar);
create table app.users (user_id varchar, email varchar, plan varchar, ts timestamp);
create table stripe.customers (
  stripe_customer_id varchar, email varchar, user_id varchar, mrr double, ts timestamp);
create table crm.contacts (
  crm_contact_id varchar, email varchar, phone varchar, user_id varchar, owner varchar,
  ts timestamp);
create table mkt.leads (email varchar, lead_source varchar, coupon varchar);
create schema ops;
create table ops.blocklist (id_type varchar, id_value varchar);
create table ops.overrides (
  action varchar, type_a varchar, value_a varchar, type_b varchar, value_b varchar,
  reason varchar);
create table mkt.links (email varchar, other_email varchar);
create table events.identifies (
  anonymous_id varchar, user_id varchar, email varchar, ts timestamp);
create table events.track (
  event_id varchar, anonymous_id varchar, user_id varchar, name varchar, happened_at timestamp);
"""
"""Every identity source's table, empty; a case inserts its rows."""

SOURCE_TABLES = {
    "customerio_people": "cio.people",
    "app_users": "app.users",
    "stripe_customers": "stripe.customers",
    "crm_contacts": "crm.contacts",
    "newsletter": "mkt.leads",
    "identifies": "events.identifies",
}


def identity_section(**changes: Any) -> dict[str, Any]:
    """The §3.1-like config of tests/identity/helpers.py, reading this warehouse's tables."""
    data = copy.deepcopy(SPEC_CONFIG)
    for source in data["sources"]:
        source["table"] = SOURCE_TABLES[source["name"]]
    data["sources"].append(
        {
            "name": "links",
            "table": "mkt.links",
            "trust": 2,
            "mode": "append_only",
            "columns": {"email": "email", "other_email": "email"},
        }
    )
    # the emulator keeps `phone` for Customer.io's phone identifier, not as an attribute
    data["identifier_types"]["phone"]["customerio"] = "attribute:phone_number"
    for key, value in changes.items():
        data[key] = value
    return data


SYNCS = {
    "users": """
        name: users
        source: warehouse
        model: {table: app.users}
        kind: people
        primary_key: user_id
        identify_by: {user_id: user_id, email: email}
        attributes: {plan: plan}
    """,
    "leads": """
        name: leads
        source: warehouse
        model: {table: mkt.leads}
        kind: people
        primary_key: email
        identify_by: {email: email}
        attributes: {lead_source: lead_source}
    """,
    "billing": """
        name: billing
        source: warehouse
        model: {table: stripe.customers}
        kind: people
        primary_key: stripe_customer_id
        identify_by: {stripe_customer_id: stripe_customer_id}
        attributes: {mrr: {column: mrr, type: number}}
    """,
    "crm": """
        name: crm
        source: warehouse
        model: {table: crm.contacts}
        kind: people
        primary_key: crm_contact_id
        identify_by: {crm_contact_id: crm_contact_id}
        attributes: {crm_owner: owner}
    """,
    "activity": """
        name: activity
        source: warehouse
        model: {table: events.track}
        kind: events
        identify_by: {user_id: user_id, anonymous_id: anonymous_id}
        event: {name: name, timestamp: happened_at, id: event_id}
    """,
}

PROJECT = """\
name: catalogue
sources:
  warehouse: {{type: duckdb, path: w.duckdb}}
destinations:
  customerio: {{type: customerio, track_url: "{url}", rate_limit: 1000/s}}
"""


class World:
    """One case's warehouse and project, pointed at the shared emulator."""

    def __init__(self, root: Path, emu: Emulator, identity: dict[str, Any]) -> None:
        self.root = root
        self.emu = emu
        self.sql(TABLES)
        (root / "syncs").mkdir()
        for name, body in SYNCS.items():
            (root / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
        text = PROJECT.format(url=emu.base_url) + yaml.safe_dump({"identity": identity})
        (root / "lockgate.yml").write_text(text)
        self.project: Project = load_project(root)
        self.ran: list[str] = []

    def sql(self, statements: str) -> None:
        warehouse_sql(self.root / "w.duckdb", statements)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return warehouse_sql(self.root / "w.duckdb", sql, read_only=True)

    def sync(self, *names: str, force: bool = False) -> list[RunReport]:
        out = []
        for name in names:
            report = run_sync(self.project, name, console=NullConsole(), force=force)
            assert report.status == "success", (name, report.failures)
            out.append(report)
        self.ran += [n for n in names if n not in self.ran]
        return out

    # -- what Customer.io holds ----------------------------------------------------------------

    def people(self) -> dict[str, Person]:
        """People by `id`, else by email; fails on two people with the same key."""
        out: dict[str, Person] = {}
        for p in self.emu.people():
            key = p.id or p.email or p.cio_id
            assert key not in out, f"two people in Customer.io for `{key}`"
            out[key] = p
        return out

    def track(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        """Change Customer.io behind Lockgate's back (a duplicate, a deletion), Track API."""
        response = httpx.request(
            method, f"{self.emu.base_url}{path}", json=body, auth=self.emu.track_auth
        )
        response.raise_for_status()


Step = Callable[[World], None]


@dataclass(frozen=True)
class Case:
    """One catalogue case: its config, the steps (rows, syncs, assertions) in order."""

    number: str
    steps: tuple[Step, ...]
    identity: dict[str, Any] = field(default_factory=identity_section)
    syncs: tuple[str, ...] | None = None
    """Run again at the end, each must send nothing; default: every sync the case ran."""
    xfail: str | None = None
    """Why the case does not hold yet (a strict xfail)."""


CASES: list[Case] = []


def case(number: str, **kw: Any) -> Callable[[Step], Step]:
    """Register a one-function case (the function does every step)."""

    def register(fn: Step) -> Step:
        CASES.append(Case(number, (fn,), **kw))
        return fn

    return register


# -- the cases -----------------------------------------------------------------------------------


@case("01")
def happy_path_anon_trial_paid(w: World) -> None:
    w.sql(
        """
        insert into events.identifies values ('a1', null, null, '2025-01-01');
        insert into events.track values
          ('ev1', 'a1', null, 'Pricing Viewed', now() - interval 2 hour);
        """
    )
    w.sync("activity")
    assert w.emu.people() == [] and w.emu.events() == []  # nobody known yet
    w.sql(
        """
        insert into app.users values ('u1', 'e1@x.com', 'trial', '2025-01-02');
        insert into events.identifies values ('a1', 'u1', null, '2025-01-02');
        insert into events.track values
          ('ev2', null, 'u1', 'Trial Started', now() - interval 1 hour);
        """
    )
    w.sync("users", "activity")
    w.sql(
        """
        insert into stripe.customers values ('cus_1', 'e1@x.com', 'u1', 49, '2025-01-03');
        insert into crm.contacts values ('c1', 'e1@x.com', null, null, 'ana', '2025-01-04');
        update app.users set plan = 'paid';
        """
    )
    w.sync("users", "billing", "crm", "activity")
    [person] = w.people().values()
    assert (person.id, person.email, person.anonymous_ids) == ("u1", "e1@x.com", ("a1",))
    assert person.attributes["plan"] == "paid" and person.attributes["mrr"] == 49
    assert person.attributes["crm_owner"] == "ana"
    assert sorted(e.name for e in w.emu.events(person)) == ["Pricing Viewed", "Trial Started"]
    assert w.emu.merges() == []


@case("02")
def case_and_whitespace_variants(w: World) -> None:
    w.sql(
        """
        insert into mkt.leads values
          (' Jane@X.com ', 'webinar', null), ('jane@x.com', 'ebook', null),
          ('JANE@x.COM' || chr(160), 'ads', null);
        """
    )
    w.sync("leads")
    [person] = w.people().values()
    assert person.email == "jane@x.com" and person.id is None


@case("04")
def null_like_user_ids(w: World) -> None:
    junk = ["null", "None", "undefined", "", "0", "-1", "N/A", "0000"]
    values = ", ".join(f"('{v}', 'p{i}@x.com', 'free', '2025-01-01')" for i, v in enumerate(junk))
    w.sql(f"insert into app.users values {values}")
    w.sync("users")
    people = w.people()
    assert sorted(people) == [f"p{i}@x.com" for i in range(len(junk))]
    assert {p.id for p in people.values()} == {None}  # nobody is `null`, `0` or `-1`
    assert w.query("select sum(count) from lockgate.lg_blocked_values") == [(len(junk),)]


@case("05")
def blocked_test_email(w: World) -> None:
    w.sql(
        "insert into app.users select 'u' || i, 'test@example.com', 'free', '2025-01-01' "
        "from range(300) t(i)"
    )
    w.sync("users")
    people = w.people()
    assert len(people) == 300 and {p.email for p in people.values()} == {None}
    assert w.emu.merges() == []


@case("07")
def shared_family_email(w: World) -> None:
    w.sql(
        """
        insert into app.users values
          ('u1', 'fam@x.com', 'pro', '2025-01-01'), ('u2', 'fam@x.com', 'free', '2025-01-02');
        """
    )
    w.sync("users")
    people = w.people()
    assert sorted(people) == ["u1", "u2"]
    assert people["u1"].email == "fam@x.com" and people["u2"].email is None
    assert people["u2"].attributes.get("contested_email") == "fam@x.com"
    assert w.query("select rule from lockgate.lg_refused_merges") == [("limit:user_id 2>1",)]


@case("07b")
def family_email_then_own_email(w: World) -> None:
    """The refusal goes away: the person's `contested_email` is cleared, and stays cleared."""
    shared_family_email(w)
    w.sql("update app.users set email = 'u2@x.com', ts = '2025-01-03' where user_id = 'u2'")
    w.sync("users")
    people = w.people()
    assert (people["u1"].email, people["u2"].email) == ("fam@x.com", "u2@x.com")
    assert "contested_email" not in people["u2"].attributes
    assert people["u2"].attributes["plan"] == "free"
    w.sql("update app.users set plan = 'pro', ts = '2025-01-04' where user_id = 'u2'")
    w.sync("users")
    assert "contested_email" not in w.people()["u2"].attributes


@case("07c", identity=identity_section(rules={"overrides_table": "ops.overrides"}))
def family_email_then_forced_merge(w: World) -> None:
    """The contested person is merged into the holder: the attribute the merge carried over
    to the surviving person is cleared."""
    shared_family_email(w)
    w.sql(
        "insert into ops.overrides values "
        "('include', 'user_id', 'u1', 'user_id', 'u2', 'one household account')"
    )
    w.sync("users")
    [person] = w.emu.people()
    assert len(w.emu.merges()) == 1 and person.email == "fam@x.com"
    assert "contested_email" not in person.attributes


def shared_device(n_users: int, policy: str) -> Step:
    def run(w: World) -> None:
        w.sql(
            f"""
            insert into app.users
              select 'u' || i, null, 'free', '2025-01-01' from range({n_users}) t(i);
            insert into events.identifies
              select 'a_shared', 'u' || i, null, '2025-01-01'::timestamp + to_days(i::int)
              from range({n_users}) t(i);
            insert into events.track values
              ('ev1', 'a_shared', null, 'Kiosk Opened', now() - interval 1 hour);
            """
        )
        w.sync("users", "activity")
        people = w.people()
        assert len(people) == n_users
        owners = [p.id for p in people.values() if p.anonymous_ids]
        assert owners == (["u0"] if policy == "keep_first" else [])
        attached = [e.person for e in w.emu.events()]
        assert attached == ([people["u0"].cio_id] if policy == "keep_first" else [])
        assert len(w.query("select * from lockgate.lg_quarantine")) == 1

    return run


def device_policy(policy: str) -> dict[str, Any]:
    data = identity_section()
    data["identifier_types"]["anonymous_id"]["degree_cap"]["user_id"]["policy"] = policy
    return data


CASES.append(Case("08", (shared_device(50, "quarantine"),)))
CASES.append(Case("09", (shared_device(2, "quarantine"),)))
CASES.append(Case("09_keep_first", (shared_device(2, "keep_first"),), device_policy("keep_first")))


@case("10")
def device_bridging_a_lead_and_a_user(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u1', 'e1@x.com', 'pro', '2025-01-01');
        insert into mkt.leads values ('e9@x.com', 'newsletter', null);
        insert into events.identifies values
          ('d', 'u1', 'e1@x.com', '2025-01-01'), ('d', null, 'e9@x.com', '2025-01-02');
        """
    )
    w.sync("users", "leads")
    people = w.people()
    assert sorted(people) == ["e9@x.com", "u1"]
    assert people["u1"].anonymous_ids == ("d",) and people["e9@x.com"].anonymous_ids == ()
    assert w.emu.merges() == []
    assert w.query("select rule from lockgate.lg_refused_merges") == [("bridge_known_profiles",)]


@case("11")
def stripe_id_reassigned(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u1', null, 'pro', '2025-01-01'),
          ('u2', null, 'pro', '2025-01-01');
        insert into stripe.customers values ('cus_9', null, 'u1', 49, '2025-01-01');
        """
    )
    w.sync("users", "billing")
    assert w.people()["u1"].attributes["stripe_customer_id"] == "cus_9"
    w.sql("update stripe.customers set user_id = 'u2', ts = '2025-01-05'")
    w.sync("billing", "users")
    people = w.people()
    assert sorted(people) == ["u1", "u2"]
    assert people["u2"].attributes["stripe_customer_id"] == "cus_9"
    assert people["u2"].attributes["mrr"] == 49
    assert "stripe_customer_id" not in people["u1"].attributes
    assert w.emu.merges() == []


@case("13")
def email_change(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u1', 'e1@x.com', 'pro', '2025-01-01');
        insert into events.identifies values (null, 'u1', 'e1@x.com', '2025-01-01');
        """
    )
    w.sync("users")
    w.sql("update app.users set email = 'e2@x.com', ts = '2025-01-09'")
    w.sync("users")
    [person] = w.people().values()
    assert (person.id, person.email, person.attributes["plan"]) == ("u1", "e2@x.com", "pro")


@case("14")
def email_change_onto_an_existing_lead(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u1', 'e1@x.com', 'pro', '2025-01-01');
        insert into mkt.leads values ('e2@x.com', 'webinar', null);
        """
    )
    w.sync("users", "leads")
    lead = w.emu.person(email="e2@x.com")
    user = w.emu.person(id="u1")
    assert lead is not None and user is not None and len(w.emu.people()) == 2
    w.sql("update app.users set email = 'e2@x.com', ts = '2025-01-09'")
    w.sync("users", "leads")
    assert [(m.primary, m.secondary) for m in w.emu.merges()] == [(user.cio_id, lead.cio_id)]
    [person] = w.people().values()
    assert (person.cio_id, person.id, person.email) == (user.cio_id, "u1", "e2@x.com")
    assert person.attributes["lead_source"] == "webinar" and person.attributes["plan"] == "pro"


@case("15")
def email_churn_stays_one_person(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u1', 'e0@x.com', 'pro', '2025-01-01');
        insert into events.identifies
          select null, 'u1', 'e' || i || '@x.com', '2025-01-01'::timestamp + to_days(i::int)
          from range(5) t(i);
        """
    )
    w.sync("users")
    w.sql("update app.users set email = 'e5@x.com', ts = '2025-02-01'")
    w.sync("users")
    [person] = w.people().values()
    assert (person.id, person.email) == ("u1", "e5@x.com")


@case("16")
def chain_arriving_out_of_order(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u1', 'e1@x.com', 'pro', '2025-01-01');
        insert into events.identifies values (null, 'u1', 'e1@x.com', '2025-01-01');
        """
    )
    w.sync("users")
    w.sql(
        """
        insert into mkt.leads values ('e2@x.com', 'referral', null);
        insert into events.identifies values ('a5', null, 'e2@x.com', '2025-01-02');
        """
    )
    w.sync("leads")
    assert sorted(w.people()) == ["e2@x.com", "u1"]
    user, lead = w.emu.person(id="u1"), w.emu.person(email="e2@x.com")
    assert user is not None and lead is not None
    w.sql("insert into mkt.links values ('e1@x.com', 'e2@x.com')")
    w.sync("leads", "users")
    assert [(m.primary, m.secondary) for m in w.emu.merges()] == [(user.cio_id, lead.cio_id)]
    [person] = w.people().values()
    assert (person.id, person.email, person.anonymous_ids) == ("u1", "e1@x.com", ("a5",))
    assert person.attributes["lead_source"] == "referral"


def no_email_exemption() -> dict[str, Any]:
    data = identity_section()
    data["identifier_types"]["email"]["limit_exempt_sources"] = []
    return data


@case("18", identity=no_email_exemption())
def triangle_of_existing_people(w: World) -> None:
    w.sql(
        """
        insert into mkt.leads values ('a@x.com', 'ads', null), ('b@x.com', 'seo', null),
          ('c@x.com', 'webinar', null);
        """
    )
    w.sync("leads")
    before = {p.email: p.cio_id for p in w.emu.people()}
    assert len(before) == 3
    w.sql(
        """
        insert into mkt.links values ('a@x.com', 'b@x.com'), ('b@x.com', 'c@x.com'),
          ('c@x.com', 'a@x.com');
        """
    )
    w.sync("leads")
    merges = w.emu.merges()
    assert len(merges) == 2 and len({m.primary for m in merges}) == 1
    primary = merges[0].primary
    assert primary not in {m.secondary for m in merges}  # never into a deleted secondary
    [person] = w.emu.people()
    assert person.cio_id == primary and person.email in before


@case("19")
def limit_conflict_through_crm(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u1', 'e1@x.com', 'pro', '2025-01-01'),
          ('u2', 'e2@x.com', 'free', '2025-01-01');
        insert into crm.contacts values ('c7', 'e1@x.com', null, 'u2', 'bob', '2025-01-02');
        """
    )
    w.sync("users", "crm")
    people = w.people()
    assert sorted(people) == ["u1", "u2"]
    assert people["u2"].attributes["crm_owner"] == "bob"
    assert "crm_owner" not in people["u1"].attributes
    assert (people["u1"].email, people["u2"].email) == ("e1@x.com", "e2@x.com")
    assert w.emu.merges() == []
    [(rule, a, b)] = w.query("select rule, profile_a, profile_b from lockgate.lg_refused_merges")
    assert rule == "limit:user_id 2>1" and a != b


@case("21")
def idempotent_rerun(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u1', 'e1@x.com', 'pro', '2025-01-01');
        insert into events.identifies values ('a1', 'u1', null, '2025-01-01');
        insert into events.track values ('ev1', 'a1', null, 'Opened', now() - interval 1 hour);
        """
    )
    w.sync("users", "activity")  # the re-run of both, sending nothing, follows every case
    [person] = w.people().values()
    assert len(w.emu.events(person)) == 1 and person.anonymous_ids == ("a1",)


def two_people_for_u1(w: World) -> tuple[Person, Person]:
    """Customer.io holds two people for user `u1` (made outside Lockgate): one by its `id`,
    one by its email; the warehouse's export of people lists both, and its user row both."""
    w.track("PUT", "/api/v1/customers/u1", {"created_at": 1_700_000_000})
    w.track(
        "POST",
        "/api/v2/entity",
        {"type": "person", "action": "identify", "identifiers": {"email": "e1@x.com"}},
    )
    x, y = w.emu.person(id="u1"), w.emu.person(email="e1@x.com")
    assert x is not None and y is not None and x.cio_id != y.cio_id
    w.sql(
        f"""
        insert into cio.people values ('{x.cio_id}', 'u1', null), ('{y.cio_id}', null, 'e1@x.com');
        insert into app.users values ('u1', 'e1@x.com', 'pro', '2025-01-01');
        """
    )
    return x, y


@case("22")
def pre_existing_customerio_duplicates(w: World) -> None:
    x, y = two_people_for_u1(w)
    w.sync("users")
    assert [(m.primary, m.secondary) for m in w.emu.merges()] == [(x.cio_id, y.cio_id)]
    [person] = w.people().values()
    assert (person.cio_id, person.id, person.email) == (x.cio_id, "u1", "e1@x.com")
    assert person.attributes["plan"] == "pro"


@case("23")
def person_deleted_outside_lockgate(w: World) -> None:
    w.sql("insert into app.users values ('u1', 'e1@x.com', 'free', '2025-01-01')")
    w.sync("users")
    w.track(
        "POST",
        "/api/v2/entity",
        {"type": "person", "action": "delete", "identifiers": {"id": "u1"}},
    )
    assert w.emu.people() == []
    w.sql("update app.users set plan = 'pro'")
    w.sync("users")
    [person] = w.people().values()
    assert (person.id, person.email, person.attributes["plan"]) == ("u1", "e1@x.com", "pro")
    assert w.emu.merges() == []


@case("24")
def anonymous_only_profile(w: World) -> None:
    w.sql(
        """
        insert into events.identifies values ('a7', null, null, '2025-01-01');
        insert into events.track values
          ('ev1', 'a7', null, 'Pricing Viewed', now() - interval 1 hour);
        """
    )
    [report] = w.sync("activity")
    assert w.emu.people() == [] and w.emu.events() == []
    assert report.changes.rejected >= 1  # held: nobody to send it to yet
    assert w.query("select anchor_type, cio_person_id from lockgate.lg_profiles") == [
        ("anonymous_id", None)
    ]


@case("25")
def identified_40_days_after_anonymous_activity(w: World) -> None:
    w.sql(
        """
        insert into events.identifies values ('a8', null, null, now() - interval 40 day),
          ('a8', 'u8', null, now());
        insert into app.users values ('u8', 'e8@x.com', 'trial', now());
        insert into events.track values
          ('old', 'a8', null, 'Pricing Viewed', now() - interval 40 day),
          ('new', 'a8', null, 'Docs Read', now() - interval 1 hour);
        """
    )
    w.sync("users", "activity")
    [person] = w.people().values()
    assert (person.id, person.anonymous_ids) == ("u8", ("a8",))
    assert [e.name for e in w.emu.events(person)] == ["Docs Read"]  # the old one is backfill


def coupon_identity() -> dict[str, Any]:
    data = identity_section(
        blocked_values_table="ops.blocklist", customerio={"id_from": ["user_id"]}
    )
    data["identifier_types"]["email"]["limit"] = None
    data["identifier_types"]["coupon"] = {"priority": 6, "limit": None}
    return data


@case("26", identity=coupon_identity())
def newly_blocklisted_value_waits_for_review(w: World) -> None:
    w.sql(
        "insert into mkt.leads select 'p' || lpad(i::varchar, 2, '0') || '@x.com', 'promo', "
        "'SHARED1' from range(40) t(i)"
    )
    w.sync("leads")
    [merged] = w.emu.people()  # one coupon joined them all
    w.sql("insert into ops.blocklist values ('coupon', 'SHARED1')")
    requests = len(w.emu.request_log())
    w.sync("leads")
    assert len(w.emu.request_log()) == requests  # on_split: review, nothing sent
    assert w.emu.people() == [merged]
    assert w.query("select count(*), min(status) from lockgate.lg_split_log") == [
        (39, "needs_review")
    ]


def tombstone_identity() -> dict[str, Any]:
    return identity_section(blocked_values_table="ops.blocklist")


@case("27", identity=tombstone_identity())
def gdpr_delete(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u5', 'e5@x.com', 'pro', '2025-01-01');
        insert into events.identifies values ('a5', 'u5', null, '2025-01-01');
        """
    )
    w.sync("users")
    # the operator forgets the person: tombstones from the graph, the person suppressed
    from lockgate.identity import tombstone
    from lockgate.sync.resolve import identity_config, resolve_identities

    project = w.project
    resolution = resolve_identities(project, identity_config(project, project.sync("users")), "g")
    blocked, op = tombstone(resolution.result, "user_id", "u5")
    assert op is not None
    w.track("POST", "/api/v2/entity", op.payload)
    assert w.emu.people() == []
    rows = ", ".join(
        f"('{t}', '{v}')"
        for t, v in zip(
            blocked["id_type"].to_pylist(), blocked["id_value"].to_pylist(), strict=True
        )
    )
    w.sql(
        f"""
        insert into ops.blocklist values {rows};
        delete from app.users;
        insert into events.identifies values ('a5', 'u5', 'e5@x.com', '2025-02-01');
        insert into events.track values ('ev9', 'a5', 'u5', 'Came Back', now() - interval 1 hour);
        """
    )
    w.sync("users", "activity")
    assert w.emu.people() == []  # append-only events cannot recreate them
    assert w.emu.events() == []
    assert w.query("select count(*) from lockgate.lg_identifier_map") == [(0,)]


@case("29")
def same_value_different_types(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('123', null, 'pro', '2025-01-01');
        insert into crm.contacts values ('123', null, null, null, 'ana', '2025-01-01');
        """
    )
    w.sync("users", "crm")
    [person] = w.people().values()
    assert person.id == "123" and "crm_owner" not in person.attributes


@case("31")
def recycled_phone(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u1', null, 'pro', '2023-01-01'),
          ('u9', null, 'pro', '2025-01-01');
        insert into crm.contacts values ('c1', null, '+1 415 555 2671', 'u1', 'ana', '2023-01-01');
        """
    )
    w.sync("users", "crm")
    assert w.people()["u1"].attributes["phone_number"] == "+14155552671"
    w.sql(
        "insert into crm.contacts values ('c9', null, '(415) 555-2671', 'u9', 'bob', '2025-01-01')"
    )
    w.sync("crm", "users")
    people = w.people()
    assert people["u9"].attributes["phone_number"] == "+14155552671"
    assert "phone_number" not in people["u1"].attributes  # the old owner loses it
    assert w.emu.merges() == []


@case("34", identity=identity_section(rules={"overrides_table": "ops.overrides"}))
def manual_force_merge(w: World) -> None:
    w.sql(
        """
        insert into app.users values ('u1', 'old@x.com', 'free', '2024-01-01'),
          ('u2', 'new@x.com', 'pro', '2025-01-01');
        """
    )
    w.sync("users")
    one, two = w.emu.person(id="u1"), w.emu.person(id="u2")
    assert one is not None and two is not None
    w.sql(
        "insert into ops.overrides values "
        "('include', 'user_id', 'u1', 'user_id', 'u2', 'account re-created')"
    )
    # the plan shows the merge (and the identifiers re-applied) the run then sends first
    planned = plan_sync(w.project, "users", console=NullConsole())
    assert planned.identity_merges == 1 and len(planned.identity_ops) == 2
    assert ("identity merges, sent first", 1) in change_rows(planned)
    requests = len(w.emu.request_log())
    w.sync("users")
    sent = [op for r in w.emu.request_log()[requests:] for op in r.body["batch"]]
    assert sent[:2] == list(planned.identity_ops)
    # one person: the re-created account's (the most recent `id`) with its own plan, not the
    # old account's
    [person] = w.emu.people()
    assert (person.cio_id, person.id, person.email) == (two.cio_id, "u2", "new@x.com")
    assert person.attributes["plan"] == "pro"
    assert [(m.primary, m.secondary) for m in w.emu.merges()] == [(two.cio_id, one.cio_id)]
    assert w.query("select cause from lockgate.lg_merge_log") == [("forced",)]


@case("34-clear", identity=identity_section(rules={"overrides_table": "ops.overrides"}))
def merged_accounts_with_clearing_nulls(w: World) -> None:
    """Two accounts force-merged into one person whose `id` is the absorbed account's (the
    more recent): the merge goes into the person already holding that id, so identifying it
    afterwards reaches it instead of re-creating it. On a sync whose nulls clear, the other
    account's null (or contradicting value) never clears what the person's own row sets."""
    users = w.root / "syncs" / "users.yml"
    users.write_text(
        users.read_text().replace(
            "attributes: {plan: plan}", "attributes: {plan: plan}\non_null: clear"
        )
    )
    w.project = load_project(w.root)
    w.sql(
        """
        insert into app.users values ('u2', 'old@x.com', null, '2024-01-01'),
          ('u1', 'new@x.com', 'pro', '2025-01-01');
        """
    )
    w.sync("users")
    w.sql(
        "insert into ops.overrides values "
        "('include', 'user_id', 'u1', 'user_id', 'u2', 'account re-created')"
    )
    w.sync("users")
    [person] = w.emu.people()
    assert person.id == "u1" and person.attributes.get("plan") == "pro"
    w.sql("update app.users set plan = 'free' where user_id = 'u2'")  # contradicts the winner
    w.sync("users")
    [person] = w.emu.people()
    assert person.attributes.get("plan") == "pro"


@case("34-relationships", identity=identity_section(rules={"overrides_table": "ops.overrides"}))
def merged_accounts_share_a_company(w: World) -> None:
    """Two accounts of one company force-merged into one person: their two membership rows now
    name one relationship. It is kept (not rejected as a repeated key, not deleted), and it
    is removed only when neither account is a member any more."""
    w.sql(
        """
        create schema b2b;
        create table b2b.companies (company_id varchar, name varchar);
        create table b2b.members (user_id varchar, company_id varchar);
        insert into b2b.companies values ('acme', 'Acme');
        insert into app.users values ('u1', 'old@x.com', 'free', '2024-01-01'),
          ('u2', 'new@x.com', 'pro', '2025-01-01');
        insert into b2b.members values ('u1', 'acme'), ('u2', 'acme');
        """
    )
    (w.root / "syncs" / "companies.yml").write_text(
        "name: companies\nsource: warehouse\nmodel: {table: b2b.companies}\nkind: objects\n"
        'object_type_id: "1"\nprimary_key: company_id\nattributes: {name: name}\n'
    )
    (w.root / "syncs" / "members.yml").write_text(
        "name: members\nsource: warehouse\nmodel: {table: b2b.members}\n"
        'kind: relationships\nobject_type_id: "1"\nobject_id: company_id\n'
        "identify_by: {user_id: user_id}\n"
    )
    w.project = load_project(w.root)
    w.sync("companies", "users", "members")
    assert len(w.emu.relationships()) == 2
    w.sql(
        "insert into ops.overrides values "
        "('include', 'user_id', 'u1', 'user_id', 'u2', 'account re-created')"
    )
    reports = w.sync("users", "members")
    [person] = w.emu.people()
    assert [(r.person, r.object_id) for r in w.emu.relationships()] == [(person.cio_id, "acme")]
    assert reports[1].changes.rejected == 0, reports[1].changes.rejected_samples
    w.sql("delete from b2b.members where user_id = 'u1'")
    w.sync("members")
    assert [(r.person, r.object_id) for r in w.emu.relationships()] == [(person.cio_id, "acme")]
    w.sql("delete from b2b.members")
    w.sync("members", force=True)  # an empty model: the `empty model` guardrail asks for it
    assert w.emu.relationships() == []


def mirror_after_merge(delete_removed: bool) -> Step:
    """A mirror sync after two accounts became one person: one account's row leaves the model.
    The person is still synced by the other row, so nothing of it is cleared or deleted."""

    def run(w: World) -> None:
        extra = "mode: mirror\n" + ("delete_removed: true\n" if delete_removed else "")
        users = w.root / "syncs" / "users.yml"
        users.write_text(users.read_text() + extra)
        w.project = load_project(w.root)
        manual_force_merge(w)
        w.sql("delete from app.users where user_id = 'u1'")
        [report] = w.sync("users")
        assert (report.changes.removed, report.changes.removed_sent) == (1, 0)
        assert ("  of which kept: another row still syncs the person", 1) in change_rows(report)
        [person] = w.emu.people()
        assert (person.id, person.email) == ("u2", "new@x.com")
        assert person.attributes["plan"] == "pro"
        w.sql("delete from app.users where user_id = 'u2'")
        # the person's last row leaves: now it is undone (the model is empty: --force)
        [report] = w.sync("users", force=True)
        # the person, once: u1's record, with no identifier u2's has not, was forgotten
        # when it left (the person kept under u2's key)
        assert report.changes.removed_sent == 1
        if delete_removed:
            assert w.emu.people() == []
        else:
            [person] = w.emu.people()
            assert "plan" not in person.attributes

    return run


for _delete in (False, True):
    CASES.append(
        Case(
            "34-mirror" + ("-delete" if _delete else ""),
            (mirror_after_merge(_delete),),
            identity=identity_section(rules={"overrides_table": "ops.overrides"}),
        )
    )


def breaker_identity() -> dict[str, Any]:
    data = no_email_exemption()
    data["customerio"] = {"merge_policy": {"max_merges_per_run": 1}}
    return data


@case("36", identity=breaker_identity())
def merge_circuit_breaker(w: World) -> None:
    from lockgate.errors import LockgateError

    w.sql(
        """
        insert into mkt.leads values ('a@x.com', 'ads', null), ('b@x.com', 'seo', null),
          ('c@x.com', 'webinar', null);
        """
    )
    w.sync("leads")
    requests = len(w.emu.request_log())
    w.sql("insert into mkt.links values ('a@x.com', 'b@x.com'), ('a@x.com', 'c@x.com')")
    for _ in range(2):  # and again: still paused, nothing half-sent
        with pytest.raises(LockgateError, match="max_merges_per_run is 2, over the limit of 1"):
            w.sync("leads")
    assert len(w.emu.request_log()) == requests
    assert w.emu.merges() == [] and len(w.emu.people()) == 3
    # the plan shows the breaker among the guardrails instead of failing
    planned = plan_sync(w.project, "leads", console=NullConsole())
    [breaker] = [g for g in planned.guards if g.name == "max_merges_per_run"]
    assert breaker.breached and (breaker.limit, breaker.actual) == ("1", "2")
    # an operator who reviewed the merges lets this one run through
    run_sync(w.project, "leads", console=NullConsole(), force=True)
    assert len(w.emu.merges()) == 2 and len(w.emu.people()) == 1


@case("37")
def identify_then_merge_race(w: World) -> None:
    w.sql("insert into mkt.leads values ('old@x.com', 'webinar', null)")
    w.sync("leads")
    lead = w.emu.person(email="old@x.com")
    assert lead is not None
    w.sql("insert into app.users values ('u9', 'old@x.com', 'pro', '2025-01-03')")
    w.sync("users", "leads")
    assert w.emu.merges() == []
    [person] = w.people().values()
    assert (person.cio_id, person.id, person.email) == (lead.cio_id, "u9", "old@x.com")
    assert person.attributes["lead_source"] == "webinar" and person.attributes["plan"] == "pro"


# -- the test ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    emu = Emulator(EmulatorConfig(require_ulid_event_ids=True))
    with emu.serve(port=0):
        yield emu


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(
            c,
            id=f"case_{c.number}",
            marks=[pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else [],
        )
        for c in CASES
    ],
)
def test_catalogue_case_in_customerio(
    spec: Case, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.reset()
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    world = World(tmp_path, emulator, spec.identity)
    for step in spec.steps:
        step(world)
    w = world
    w.people()  # no two people with one `id` or email
    # never an identifier conflict (an identify whose email belongs to someone else)
    assert [a for a in w.emu.activity_log() if "fail" in a.kind or "not found" in a.kind] == []
    merges = [(m.primary, m.secondary) for m in w.emu.merges()]
    assert len(merges) == len(set(merges))  # each merge once
    # running every sync again sends nothing
    syncs = w.ran if spec.syncs is None else spec.syncs
    people, merges = w.emu.people(), w.emu.merges()
    before = len(w.emu.request_log())
    for report in w.sync(*syncs):
        assert report.changes.to_send == 0, report.sync
    assert len(w.emu.request_log()) == before
    assert (w.emu.people(), w.emu.merges()) == (people, merges)


def test_imported_duplicates_are_not_merged_with_merges_off(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 22 with `merge_policy.enabled: false`: the profile holds two imported Customer.io
    people, one with the user's `id`, the other with their email, and no merge is sent, on
    this run or a later one. The plan and the run name the merge kept back (the profile, both
    `cio_id`s). The row goes to the person of its `id` without the email (with it,
    Customer.io would drop the whole update, the email being the other person's): its
    `plan` lands, the email stays where it is. Once someone merges the two by hand and the
    next export shows one person, the row is sent again with its email, and nothing is left
    to send."""
    emulator.reset()
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    w = World(tmp_path, emulator, identity_section(customerio={"merge_policy": {"enabled": False}}))
    x, y = two_people_for_u1(w)
    planned = plan_sync(w.project, "users", console=NullConsole())
    [skipped] = planned.identity_merges_skipped
    assert (skipped["primary"], skipped["secondary"]) == (
        {"cio_id": x.cio_id},
        {"cio_id": y.cio_id},
    )
    assert planned.identity_ops == ()
    assert [s["payload"]["attributes"] for s in planned.samples] == [{"plan": "pro"}]
    sent: list[list[dict[str, Any]]] = []
    for _ in range(2):  # and again: the profile still holds both, nothing more is sent
        before = len(w.emu.request_log())
        [report] = w.sync("users")
        assert report.identity_merges_skipped == planned.identity_merges_skipped
        sent.append(sent_ops(w.emu, before))
    assert sent == [
        [
            {
                "type": "person",
                "action": "identify",
                "identifiers": {"id": "u1"},
                "attributes": {"plan": "pro"},
            }
        ],
        [],
    ]
    assert w.emu.merges() == []
    assert w.emu.activity_log() == []  # no update dropped
    people = {(p.cio_id, p.id, p.email): p.attributes for p in w.emu.people()}
    assert people == {
        (x.cio_id, "u1", None): {"created_at": 1_700_000_000, "plan": "pro"},
        (y.cio_id, None, "e1@x.com"): {},
    }
    # merged by hand, then exported again: one person, given the email by the row
    w.track(
        "POST",
        "/api/v1/merge_customers",
        {"primary": {"cio_id": x.cio_id}, "secondary": {"cio_id": y.cio_id}},
    )
    w.sql(f"delete from cio.people where cio_id = '{y.cio_id}'")
    [report] = w.sync("users")
    assert report.identity_merges_skipped == () and report.changes.to_send == 1
    [person] = w.emu.people()
    assert (person.cio_id, person.id, person.email) == (x.cio_id, "u1", "e1@x.com")
    assert person.attributes == {"created_at": 1_700_000_000, "plan": "pro"}
    [again] = w.sync("users")
    assert again.changes.to_send == 0 and again.identity_ops == ()
