"""`lockgate plan --all` counts exactly what the following `lockgate sync --all` sends, when
an earlier sync of the command changes what a later one sees: people or objects a `mirror`
sync deletes (with their relationships) or a first sync creates, relationships another
relationships sync takes over, identity merges sent once by the first sync that needs them.
Each case plans twice (a plan changes nothing), then syncs, and compares the plans' counts
and sample payloads with the run's reports and what the emulator received."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from click.testing import CliRunner
from tests.sync import test_identity_sync
from tests.sync.helpers import PLAN_SYNC, plans_by_id

from lockgate.cli import cli
from lockgate.emulator import Emulator, FaultConfig
from lockgate.sync import diff

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

COMPANIES = """
name: companies
source: warehouse
model: {table: companies}
kind: objects
object_type_id: "1"
primary_key: company_id
mode: mirror
delete_removed: true
attributes: {name: name, plan: plan}
on_change:
  - {attribute: plan, to: churned, event: account_churned}
"""

PEOPLE = """
name: people
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id}
mode: mirror
delete_removed: true
attributes: [first_name]
guardrails: {max_removed: off, max_changed: off}
"""

MEMBERSHIPS = """
name: memberships
source: warehouse
model: {table: members}
kind: relationships
object_type_id: "1"
object_id: company_id
identify_by: {id: user_id}
mode: mirror
relationship_attributes: {role: role}
guardrails: {max_removed: off}
"""

DATA = """
create or replace table companies as
select 'c' || i as company_id, 'Company ' || i as name, 'pro' as plan from range(1, 4) t(i);
create or replace table users as select i as user_id, 'U' || i as first_name from range(1, 7) t(i);
create or replace table members as
select i as user_id, 'c' || (1 + i % 3) as company_id, 'member' as role from range(1, 7) t(i);
"""

#: the counts of a plan that its run's report must show the same
COUNTS = (
    "to_send",
    "new",
    "changed",
    "unchanged",
    "nulls_only",
    "removed_sent",
    "held",
    "state_events",
    "email_releases",
)


def lockgate(project: Any, *args: str) -> Any:
    result = CliRunner().invoke(
        cli, [*args, "--project", str(project.root)], catch_exceptions=False, standalone_mode=False
    )
    return json.loads(result.stdout)  # warnings go to stderr


def batch_ops(emu: Any, since: int) -> list[dict[str, Any]]:
    """The Track v2 operations the emulator received after request ``since``."""
    return [
        op
        for r in emu.request_log()[since:]
        if r.path == "/api/v2/batch" and isinstance(r.body, dict)
        for op in r.body.get("batch", [])
    ]


def canonical(ops: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(op, sort_keys=True) for op in ops)


def plan_then_sync(factory: Any, *extra: str) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """Plan every sync twice (the plans agree: a plan changes nothing), then sync them; the
    plans and runs by sync, and the operations the run sent."""
    emu, project = factory.emulator, factory.project
    first = lockgate(project, "plan", "--all", "--json", "--samples", "100", *extra)
    again = lockgate(project, "plan", "--all", "--json", "--samples", "100", *extra)
    assert [p["changes"] for p in again] == [p["changes"] for p in first]
    before = len(emu.request_log())
    runs = lockgate(project, "sync", "--all", "--json", *extra)
    return by_sync(first), by_sync(runs), batch_ops(emu, before)


def by_sync(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The reports of a command by sync; a follow-up run (or its plan) as `SYNC (follow-up)`."""
    return {r["sync"] + (" (follow-up)" if r.get("follow_up_of") else ""): r for r in reports}


def is_event(op: dict[str, Any]) -> bool:
    return op.get("type") == "person" and op.get("action") == "event"


def assert_plans_match(
    plans: dict[str, Any], runs: dict[str, Any], sent: list[dict[str, Any]]
) -> None:
    """Each plan's counts are its run's, and the operations sent are those the plans showed
    (state-change events aside: they carry the time of the run that fires them)."""
    assert list(plans) == list(runs)
    for name, plan in plans.items():
        run = runs[name]
        assert run["status"] == "success", run
        planned = {c: plan["changes"][c] for c in COUNTS}
        assert planned == {c: run["changes"][c] for c in COUNTS}, name
        assert run["delivered"] == plan["changes"]["to_send"] + plan["changes"]["state_events"]
    shown = [
        s["payload"] for p in plans.values() for s in [*p["email_release_samples"], *p["samples"]]
    ]
    assert canonical([op for op in sent if not is_event(op)]) == canonical(shown)


@pytest.fixture
def b2b(project_factory: ProjectFactory) -> ProjectFactory:
    """Three companies, six people, a membership each, all synced once."""
    project_factory.sql(DATA)
    project_factory.project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}, retries=0
    )
    lockgate(project_factory.project, "sync", "--all", "--json")
    return project_factory


def test_a_person_a_mirror_sync_deletes_first_holds_their_relationship(
    b2b: ProjectFactory,
) -> None:
    """The case of the QA report: the people sync deletes users 3 and 4, and the memberships
    sync then holds theirs (Customer.io deleted them with the people, who are gone); planned
    alone against the state, the memberships plan counted the changed one of user 4 as sent."""
    b2b.sql(
        "delete from users where user_id in (3, 4); "
        "update members set role = 'admin' where user_id in (4, 5)"
    )
    plans, runs, sent = plan_then_sync(b2b)
    assert plans["people"]["changes"]["removed_sent"] == 2
    memberships = plans["memberships"]["changes"]
    assert (memberships["to_send"], memberships["held"]) == (1, 2)
    assert_plans_match(plans, runs, sent)
    assert {op["identifiers"]["id"] for op in sent if op["type"] == "person"} == {"3", "4", "5"}


def test_a_relationship_gone_to_nulls_is_recorded_unless_its_person_is_deleted_first(
    b2b: ProjectFactory,
) -> None:
    """Memberships whose role went null (`on_null: skip`) have nothing to send: `plan --all`
    counts the one of user 5 as changed only to nulls, as `sync --all` records it, and no
    `add_relationships` goes out. User 3's person is deleted first by the people sync, which
    takes the membership with it in Customer.io: it is held, not recorded as delivered."""
    b2b.sql(
        "delete from users where user_id = 3; "
        "update members set role = null where user_id in (3, 5)"
    )
    plans, runs, sent = plan_then_sync(b2b)
    memberships = plans["memberships"]["changes"]
    assert (memberships["nulls_only"], memberships["held"], memberships["to_send"]) == (1, 1, 0)
    assert_plans_match(plans, runs, sent)
    assert [op for op in sent if op.get("action") == "add_relationships"] == []


@pytest.mark.parametrize(
    "extra",
    [("--full-resync",), ("--only", "4")],
    ids=["full-resync", "only"],
)
def test_a_person_deleted_first_holds_their_relationship_in_a_resync_or_named_run(
    b2b: ProjectFactory, extra: tuple[str, ...]
) -> None:
    """The same with every record sent again (`--full-resync`: the people sync's snapshot
    forgotten first), and for the named person alone (`--only`)."""
    b2b.sql("delete from users where user_id in (3, 4)")
    plans, runs, sent = plan_then_sync(b2b, *extra)
    memberships = plans["memberships"]["changes"]
    assert memberships["held"] == (2 if extra[0] == "--full-resync" else 1)
    assert_plans_match(plans, runs, sent)


def test_a_company_repeated_in_a_resync_has_its_relationships_held(
    b2b: ProjectFactory,
) -> None:
    """Company c1's id repeats while every record is sent again: its rows are rejected, so
    the resync does not send c1 again, and Customer.io may not hold it (deleted by hand), in
    which case an `add_relationships` would create it empty. The memberships to it are held
    (its two delivered ones stay in Customer.io, the new one waits); the memberships plan
    counts them as the run holds them (it counted the companies snapshot forgotten whole, c1
    with it, before the resync kept c1's record)."""
    b2b.sql(
        "insert into companies values ('c1', 'Company 1', 'free'); "
        "insert into members values (1, 'c1', 'owner')"
    )
    plans, runs, sent = plan_then_sync(b2b, "--full-resync")
    assert plans["companies"]["changes"]["rejected"] == 2
    memberships = plans["memberships"]["changes"]
    assert memberships["held"] == 3 and memberships["to_send"] >= 1
    assert_plans_match(plans, runs, sent)
    related = {
        rel["identifiers"]["object_id"]
        for op in sent
        if op.get("action") == "add_relationships"
        for rel in op.get("cio_relationships", [])
    }
    assert related == {"c2", "c3"}


def test_a_person_and_object_created_first_are_not_waited_for(b2b: ProjectFactory) -> None:
    """The other way round: a relationship to a person and to a company that the people and
    objects syncs create in the same command is sent, not held (planned alone, it was held:
    neither had been sent yet)."""
    b2b.sql(
        "insert into users values (7, 'U7'); "
        "insert into companies values ('c4', 'Company 4', 'pro'); "
        "insert into members values (7, 'c1', 'owner'), (2, 'c4', 'owner')"
    )
    plans, runs, sent = plan_then_sync(b2b)
    memberships = plans["memberships"]["changes"]
    assert (memberships["new"], memberships["held"]) == (2, 0)
    assert_plans_match(plans, runs, sent)
    assert len([op for op in sent if op.get("action") == "add_relationships"]) == 2


def test_an_object_deleted_first_holds_its_relationships_and_fires_its_events(
    b2b: ProjectFactory,
) -> None:
    """A company the objects sync deletes: the memberships sync holds the membership that
    changed to it; a company whose plan turns `churned` tells its people once (its objects
    sync planned with the others)."""
    b2b.sql(
        "delete from companies where company_id = 'c3'; "
        "update companies set plan = 'churned' where company_id = 'c1'; "
        "update members set role = 'admin' where company_id = 'c3' and user_id = 2"
    )
    plans, runs, sent = plan_then_sync(b2b)
    assert plans["companies"]["changes"]["state_events"] == 2  # users 3 and 6 are in c1
    memberships = plans["memberships"]["changes"]
    assert (memberships["to_send"], memberships["held"]) == (0, 2)
    assert_plans_match(plans, runs, sent)
    churned = [op for op in sent if is_event(op) and op["name"] == "account_churned"]
    assert sorted(op["identifiers"]["id"] for op in churned) == ["3", "6"]


def test_a_person_whose_delete_was_unconfirmed_and_is_sent_again_first_is_not_waited_for(
    b2b: ProjectFactory,
) -> None:
    """A person whose delete Customer.io never confirmed (they may be gone, with their
    relationships): once their row is back, the people sync sends them again, and the
    memberships sync then sends their membership; planned alone, it was held ("may have been
    deleted")."""
    b2b.sql("delete from users where user_id = 3")
    b2b.emulator.set_faults(FaultConfig(error_5xx=1.0, applied_then_failed=True))
    lost = lockgate(b2b.project, "sync", "people", "--json")[0]
    assert (lost["changes"]["removed_sent"], lost["dead_lettered"]) == (1, 1)
    b2b.emulator.set_faults(FaultConfig())
    b2b.sql("insert into users values (3, 'U3')")
    plans, runs, sent = plan_then_sync(b2b)
    assert plans["people"]["changes"]["unconfirmed"] == 1
    memberships = plans["memberships"]["changes"]
    assert (memberships["new"], memberships["held"]) == (1, 0)
    assert_plans_match(plans, runs, sent)


CONTACTS = """
name: zz_contacts
source: warehouse
model: {table: contacts}
kind: relationships
object_type_id: "1"
object_id: company_id
identify_by: {id: user_id}
mode: mirror
relationship_attributes: {role: role}
guardrails: {max_removed: off}
"""


def test_a_relationship_another_relationships_sync_takes_over_first_is_not_deleted(
    project_factory: ProjectFactory,
) -> None:
    """Two relationships syncs of one object type (the app's memberships, the CRM's
    contacts): when the memberships sync starts sending one the contacts sync lets go, the
    contacts sync (run after it) does not delete it; planned alone, it counted the delete."""
    project_factory.sql(
        DATA + "create or replace table contacts as select 1 as user_id, 'c3' as company_id, "
        "'champion' as role;"
    )
    project_factory.project = project_factory.write(
        {"people": PEOPLE, "memberships": MEMBERSHIPS, "zz_contacts": CONTACTS}
    )
    lockgate(project_factory.project, "sync", "--all", "--json")
    project_factory.sql("delete from contacts; insert into members values (1, 'c3', 'member')")
    plans, runs, sent = plan_then_sync(project_factory)
    assert plans["memberships"]["changes"]["new"] == 1
    assert plans["zz_contacts"]["changes"]["removed_sent"] == 0
    assert_plans_match(plans, runs, sent)
    assert not [op for op in sent if op.get("action") == "delete_relationships"]


def ada_joins_u1(tmp_path: Path) -> None:
    """A Stripe customer and a user row give `u1` Ada's work email: the graph joins the
    Stripe profile and `u1`'s, which were two Customer.io people (a merge)."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("insert into stripe_customers values ('cus_C', 'ada.work@acme.io')").fetchall()
    con.execute("insert into app_users values ('u1', 'ada.work@acme.io', 'pro')").fetchall()
    con.close()


def test_a_merge_is_planned_once_by_the_first_sync_that_sends_it(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Syncs keyed through the identity graph: the first of the command sends the merge the
    graph found, the others find it sent; each plan counted it (each sync's ledger lacked it)."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    project = test_identity_sync.setup(tmp_path, customerio_emulator.base_url or "")
    lockgate(project, "sync", "--all", "--json")
    ada_joins_u1(tmp_path)

    plans = lockgate(project, "plan", "--all", "--json")
    again = lockgate(project, "plan", "--all", "--json")
    assert [p["identity_merges"] for p in again] == [p["identity_merges"] for p in plans]
    runs = lockgate(project, "sync", "--all", "--json")
    assert [p["sync"] for p in plans] == [r["sync"] for r in runs]
    merges = [(p["identity_merges"], p["identity_reapplied"]) for p in plans]
    assert merges == [(r["identity_merges"], r["identity_reapplied"]) for r in runs]
    assert sorted(merges) == [(0, 0), (0, 0), (1, 1)]
    assert [p["changes"] for p in plans] == [r["changes"] for r in runs]
    assert len(customerio_emulator.merges()) == 1


def test_merges_turned_off_are_listed_alike_by_the_plan_and_the_run_and_none_is_sent(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, with `merge_policy.enabled: false`: each plan lists the merge kept back (the
    profile, both people) as its run's report then does, with the same counts, and no merge
    reaches Customer.io."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    project = test_identity_sync.setup(tmp_path, customerio_emulator.base_url or "")
    config = tmp_path / "lockgate.yml"
    data = yaml.safe_load(config.read_text())
    data["identity"]["customerio"] = {"merge_policy": {"enabled": False}}
    config.write_text(yaml.safe_dump(data))
    lockgate(project, "sync", "--all", "--json")
    ada_joins_u1(tmp_path)

    plans = lockgate(project, "plan", "--all", "--json")
    before = len(customerio_emulator.request_log())
    runs = lockgate(project, "sync", "--all", "--json")
    assert [p["sync"] for p in plans] == [r["sync"] for r in runs]
    skipped = [p["identity_merges_skipped"] for p in plans]
    assert skipped == [r["identity_merges_skipped"] for r in runs]
    assert [(m["primary"], m["secondary"]) for m in skipped[0]] == [
        ({"id": "u1"}, {"email": "ada.work@acme.io"})
    ]
    assert skipped == [skipped[0]] * len(plans)  # each sync would have sent it
    assert [p["identity_merges"] for p in plans] == [r["identity_merges"] for r in runs]
    assert [p["changes"] for p in plans] == [r["changes"] for r in runs]
    assert customerio_emulator.merges() == []
    assert [op for op in batch_ops(customerio_emulator, before) if op["action"] == "merge"] == []


def colors(name: str) -> str:
    """A second people sync, not `mirror`, sending each user's `color`."""
    return f"""
name: {name}
source: warehouse
model: {{table: colors}}
kind: people
primary_key: user_id
identify_by: {{id: user_id}}
attributes: [color]
"""


@pytest.mark.parametrize("other", ["colors", "zz_colors"], ids=["runs-before", "runs-after"])
def test_a_person_a_mirror_sync_deletes_is_sent_again_by_another_people_sync(
    b2b: ProjectFactory, other: str
) -> None:
    """The people sync deletes user 3, whom another people sync still sends: that sync
    forgets them and sends them again in full (the warehouse is the truth), in the same
    command when it runs after the people sync, else at its next run; the plan and the run
    name it. Before, its snapshot still said them delivered: Customer.io lost the person
    for good."""
    b2b.sql("create table colors as select i as user_id, 'hue' || i as color from range(1, 7) t(i)")
    syncs = {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    b2b.project = b2b.write({**syncs, other: colors(other)}, retries=0)
    lockgate(b2b.project, "sync", "--all", "--json")
    emu = b2b.emulator
    three = emu.person(id="3")
    assert three is not None and three.attributes == {"first_name": "U3", "color": "hue3"}
    b2b.sql("delete from users where user_id = 3")
    plans, runs, sent = plan_then_sync(b2b)
    resent = [{"sync": other, "people": 1}]
    assert plans["people"]["resent_by"] == resent == runs["people"]["resent_by"]
    assert_plans_match(plans, runs, sent)
    if other == "colors":  # it ran before the delete: it sends them at its next run
        assert emu.person(id="3") is None
        again = lockgate(b2b.project, "plan", other, "--json")["changes"]
        assert (again["new"], again["to_send"]) == (1, 1)
        plans, runs, sent = plan_then_sync(b2b)
        assert_plans_match(plans, runs, sent)
    else:
        assert plans[other]["changes"]["new"] == 1
    three = emu.person(id="3")
    assert three is not None and three.attributes == {"color": "hue3"}
    # their membership, forgotten with them, comes back with them
    assert runs["memberships"]["changes"]["new"] == 1
    again = lockgate(b2b.project, "sync", "--all", "--json")
    assert [r["changes"]["to_send"] for r in again] == [0, 0, 0, 0]


def test_a_person_whose_delete_is_unconfirmed_stays_in_the_other_people_sync(
    b2b: ProjectFactory,
) -> None:
    """A delete whose answer never came forgets nothing in the other people sync: the
    people sync sends the delete again, and the other sync forgets the person once it is
    confirmed."""
    b2b.sql("create table colors as select i as user_id, 'hue' || i as color from range(1, 7) t(i)")
    syncs = {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    b2b.project = b2b.write({**syncs, "zz_colors": colors("zz_colors")}, retries=0)
    lockgate(b2b.project, "sync", "--all", "--json")
    b2b.sql("delete from users where user_id = 3")
    b2b.emulator.set_faults(FaultConfig(error_5xx=1.0, applied_then_failed=True))
    lost = lockgate(b2b.project, "sync", "people", "--json")[0]
    assert (lost["dead_lettered"], lost["resent_by"]) == (1, [])
    b2b.emulator.set_faults(FaultConfig())
    plans, runs, sent = plan_then_sync(b2b)
    assert runs["people"]["resent_by"] == [{"sync": "zz_colors", "people": 1}]
    assert_plans_match(plans, runs, sent)
    three = b2b.emulator.person(id="3")
    assert three is not None and three.attributes == {"color": "hue3"}


def tiers(name: str) -> str:
    """A second objects sync of the companies' object type, not `mirror`, sending `tier`."""
    return f"""
name: {name}
source: warehouse
model: {{table: tiers}}
kind: objects
object_type_id: "1"
primary_key: company_id
attributes: [tier]
"""


@pytest.mark.parametrize("other", ["accounts", "zz_tiers"], ids=["runs-before", "runs-after"])
def test_an_object_a_mirror_sync_deletes_is_sent_again_by_another_objects_sync(
    b2b: ProjectFactory, other: str
) -> None:
    """As for people: the companies sync deletes company c3, which Customer.io deletes whole;
    another objects sync of the object type still sends it, so it forgets it and sends it
    again in full, and the plan and the run name it. Before, that sync's snapshot still said
    c3 delivered: Customer.io lacked the company for good, and nothing said so."""
    b2b.sql(
        "create table tiers as "
        "select 'c' || i as company_id, 't' || i as tier from range(1, 4) t(i)"
    )
    syncs = {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    b2b.project = b2b.write({**syncs, other: tiers(other)}, retries=0)
    lockgate(b2b.project, "sync", "--all", "--json")
    emu = b2b.emulator

    def c3() -> Any:
        return {o.object_id: o.attributes for o in emu.objects()}.get("c3")

    assert c3() == {"name": "Company 3", "plan": "pro", "tier": "t3"}
    b2b.sql("delete from companies where company_id = 'c3'")
    plans, runs, sent = plan_then_sync(b2b)
    resent = [{"sync": other, "objects": 1}]
    assert plans["companies"]["resent_by"] == resent == runs["companies"]["resent_by"]
    assert_plans_match(plans, runs, sent)
    if other == "accounts":  # it ran before the delete: it sends it at its next run
        assert c3() is None
        again = lockgate(b2b.project, "plan", other, "--json")["changes"]
        assert (again["new"], again["to_send"]) == (1, 1)
        plans, runs, sent = plan_then_sync(b2b)
        assert_plans_match(plans, runs, sent)
    else:
        assert plans[other]["changes"]["new"] == 1
    assert c3() == {"tier": "t3"}
    again = lockgate(b2b.project, "sync", "--all", "--json")
    assert [r["changes"]["to_send"] for r in again] == [0, 0, 0, 0]


USERS_BY_ID = """
name: users
source: warehouse
model: {table: accounts}
kind: people
primary_key: user_id
identify_by: {id: user_id}
mode: mirror
delete_removed: true
attributes: [email, first_name]
guardrails: {max_removed: off}
"""

LEADS = """
name: leads
source: warehouse
model: {table: leads}
kind: people
primary_key: email
identify_by: {email: email}
attributes: [score]
"""


def invoke(project: Any, *args: str) -> Any:
    """The CLI's result (its ``stdout`` and ``stderr`` apart): warnings go to stderr."""
    result = CliRunner().invoke(cli, [*args, "--project", str(project.root)])
    assert result.exit_code == 0, result.output
    return result


def test_a_person_deleted_by_id_whom_another_sync_sends_by_email_is_warned_of(
    project_factory: ProjectFactory,
) -> None:
    """`users` deletes people by `id` and sends their email as an attribute; `leads` sends
    them by email. Customer.io deletes the whole person, the lead's score with them, but
    `leads` cannot tell the person deleted (no identifier in common), keeps them delivered
    and never sends them again. `validate`, `plan` and `sync` warn of it, naming the fix (the
    email in `users`'s `identify_by`), which makes `leads` send them again."""
    f = project_factory
    f.sql(
        "create table accounts as select i as user_id, 'u' || i || '@x.com' as email, "
        "'U' || i as first_name from range(1, 4) t(i); "
        "create table leads as select 'u' || i || '@x.com' as email, i * 10 as score "
        "from range(1, 4) t(i)"
    )
    f.project = f.write({"users": USERS_BY_ID, "leads": LEADS}, retries=0)
    first = invoke(f.project, "sync", "--all", "--json")
    assert "never sends them again" in " ".join(first.stderr.split())
    emu = f.emulator
    three = emu.person(email="u3@x.com")
    assert three is not None and three.attributes == {"score": 30, "first_name": "U3"}

    said = CliRunner().invoke(cli, ["validate", "--json", "--project", str(f.project.root)])
    (finding,) = [c for c in json.loads(said.output)["contract"] if c["check"] == "deletes"]
    assert finding["level"] == "warning"
    assert "people sync `users` (syncs/users.yml) deletes people by `id`" in finding["message"]
    assert "people sync `leads` (syncs/leads.yml) sends people by email" in finding["message"]
    assert "move the email into `users`'s `identify_by`" in finding["message"]
    planned = invoke(f.project, "plan", "users")
    assert "never sends them again" in " ".join(planned.output.split())
    assert "never sends" not in invoke(f.project, "plan", "leads").output  # its own plan

    # the fix: the email among the identifiers; the person deleted is sent again by `leads`
    fixed = USERS_BY_ID.replace("{id: user_id}", "{id: user_id, email: email}")
    fixed = fixed.replace("[email, first_name]", "[first_name]")
    f.project = f.write({"users": fixed, "leads": LEADS})
    said = CliRunner().invoke(cli, ["validate", "--json", "--project", str(f.project.root)])
    assert [c for c in json.loads(said.output)["contract"] if c["check"] == "deletes"] == []
    invoke(f.project, "sync", "--all", "--force")  # the identifiers changed
    f.sql("delete from accounts where user_id = 3")
    runs = {r["sync"]: r for r in json.loads(invoke(f.project, "sync", "--all", "--json").stdout)}
    assert runs["users"]["resent_by"] == [{"sync": "leads", "people": 1}]
    invoke(f.project, "sync", "--all")
    three = emu.person(email="u3@x.com")
    assert three is not None and three.attributes == {"score": 30}


def test_no_deletes_warning_when_the_other_sync_also_sends_people_by_id(
    project_factory: ProjectFactory,
) -> None:
    """`profiles` sends people by `id` and email: it tells a person `users` deleted by `id`
    among its own and sends them again, so `validate` and `plan` do not warn that it never
    will (they did, saying the two syncs shared no identifier)."""
    f = project_factory
    f.sql(
        "create table accounts as select i as user_id, 'u' || i || '@x.com' as email, "
        "'U' || i as first_name from range(1, 4) t(i); "
        "create table profiles as select i as user_id, 'u' || i || '@x.com' as email, "
        "i * 10 as score from range(1, 4) t(i)"
    )
    profiles = LEADS.replace("name: leads", "name: profiles")
    profiles = profiles.replace("{table: leads}", "{table: profiles}")
    profiles = profiles.replace("primary_key: email", "primary_key: user_id")
    profiles = profiles.replace("{email: email}", "{id: user_id, email: email}")
    f.project = f.write({"users": USERS_BY_ID, "profiles": profiles}, retries=0)
    said = CliRunner().invoke(cli, ["validate", "--json", "--project", str(f.project.root)])
    assert [c for c in json.loads(said.output)["contract"] if c["check"] == "deletes"] == []
    first = invoke(f.project, "sync", "--all")
    assert "never sends them again" not in " ".join(first.stderr.split())
    f.sql("delete from accounts where user_id = 3")
    runs = {r["sync"]: r for r in json.loads(invoke(f.project, "sync", "--all", "--json").stdout)}
    assert runs["users"]["resent_by"] == [{"sync": "profiles", "people": 1}]
    invoke(f.project, "sync", "--all")
    three = f.emulator.person(id="3")
    assert three is not None and three.attributes == {"score": 30}


def contacts(name: str) -> str:
    """A people sync by `id` and email, `mirror` (clearing: a person whose row leaves keeps
    their email in Customer.io, and the sync remembers it, to release it when a row takes
    it)."""
    return f"""
name: {name}
source: warehouse
model: {{table: contacts}}
kind: people
primary_key: user_id
identify_by: {{id: user_id, email: email}}
mode: mirror
attributes: [score]
guardrails: {{max_removed: off, max_cleared: off}}
"""


@pytest.mark.parametrize("deleting", ["users", "accounts"], ids=["runs-after", "runs-before"])
def test_a_person_another_sync_deletes_is_not_created_again_to_release_their_email(
    project_factory: ProjectFactory, deleting: str
) -> None:
    """`contacts` clears person 3 as their row leaves, and remembers the email they keep; the
    people sync `users` deletes person 3, email and all. When a new contact takes that email,
    `contacts` used to release it from person 3 first (`identify` by `id` 3 with an empty
    email), which created person 3 again, empty: someone meant to be erased. The email they
    kept goes with them. Run in either order, the plans count what the runs send."""
    f = project_factory
    f.sql(
        "create table users as select i as user_id, 'U' || i as first_name from range(1, 4) t(i); "
        "create table contacts as select i as user_id, 'c' || i || '@x.com' as email, "
        "i as score from range(1, 4) t(i)"
    )
    users = USERS_BY_ID.replace("name: users", f"name: {deleting}").replace(
        "table: accounts", "table: users"
    )
    f.project = f.write(
        {
            deleting: users.replace("[email, first_name]", "[first_name]"),
            "contacts": contacts("contacts"),
        },
        retries=0,
    )
    invoke(f.project, "sync", "--all")
    emu = f.emulator
    if deleting == "users":  # contacts runs first: it clears person 3 (email kept), then
        f.sql("delete from contacts where user_id = 3")  # users deletes them
    else:  # person 3's email goes null in contacts (kept), then accounts deletes them
        f.sql("update contacts set email = null where user_id = 3")
        invoke(f.project, "sync", "contacts")
    f.sql("delete from users where user_id = 3")
    plans, runs, sent = plan_then_sync(f)
    assert_plans_match(plans, runs, sent)
    assert emu.person(id="3") is None or deleting == "accounts"  # sent again: still a contact

    f.sql("insert into contacts values (4, 'c3@x.com', 4)")  # a new contact takes the email
    plans, runs, sent = plan_then_sync(f)
    assert_plans_match(plans, runs, sent)
    assert [op for op in sent if op.get("identifiers") == {"id": "3"}] == []
    if deleting == "users":
        assert emu.person(id="3") is None
    four = emu.person(id="4")
    assert four is not None and four.email == "c3@x.com"


@pytest.fixture
def one_person_two_syncs(project_factory: ProjectFactory) -> ProjectFactory:
    """u1 with e1, sent by `app` and by `crm` (`app` runs first in `--all`), synced once."""
    f = project_factory
    for name, plan in (("app", "free"), ("crm", "gold")):
        f.sql(
            f"create table {name} as select 'u1' as user_id, 'e1@x.io' as email, '{plan}' as plan"
        )
    f.project = f.write(
        {"app": PLAN_SYNC.format(name="app"), "crm": PLAN_SYNC.format(name="crm")}, retries=0
    )
    lockgate(f.project, "sync", "--all", "--json")
    return f


def failures(emu: Emulator) -> list[str]:
    """What Customer.io dropped: updates that gave a person another person's email."""
    return [a.message for a in emu.activity_log() if a.kind == "attribute update failure"]


def released_from(sent: list[dict[str, Any]], person: str) -> list[dict[str, Any]]:
    """The email releases sent to ``person``: an `identify` by its `id` with an empty email."""
    return [
        op
        for op in sent
        if op.get("identifiers") == {"id": person} and op.get("attributes", {}).get("email") == ""
    ]


def test_an_email_the_first_sync_releases_is_not_released_again_by_the_second(
    one_person_two_syncs: ProjectFactory,
) -> None:
    """Both models move e1 from u1 (now without an email) to a new user u2. `app` releases
    it from u1 and gives it to u2; its release leaves `crm`'s record of u1 without e1, so
    `crm` releases nothing and sends u2 its plan. `plan --all` planned a second release by
    `crm` (from its record of u1 with e1), which the run does not send."""
    f, emu = one_person_two_syncs, one_person_two_syncs.emulator
    for name, plan in (("app", "pro"), ("crm", "lead")):
        f.sql(
            f"update {name} set email = null; insert into {name} values ('u2', 'e1@x.io', '{plan}')"
        )
    plans, runs, sent = plan_then_sync(f)
    assert [p["changes"]["email_releases"] for p in plans.values()] == [1, 0]
    assert_plans_match(plans, runs, sent)
    assert len(released_from(sent, "u1")) == 1
    assert plans_by_id(emu) == {
        "u1": (None, {"app_plan": "free", "crm_plan": "gold"}),
        "u2": ("e1@x.io", {"app_plan": "pro", "crm_plan": "lead"}),
    }
    assert [p["changes"]["to_send"] for p in lockgate(f.project, "plan", "--all", "--json")] == [
        0,
        0,
    ]


@pytest.mark.parametrize("taker", [None, "u3"], ids=["alone", "with-a-new-row"])
@pytest.mark.parametrize("gives_up", ["email-null", "row-leaves"])
def test_an_email_the_first_sync_releases_waits_in_the_second(
    one_person_two_syncs: ProjectFactory, taker: str | None, gives_up: str
) -> None:
    """`app` moves e1 from u1 (now without an email, or whose row left) to a new user u2;
    `crm`'s model still gives u1 e1, with a new plan, and may give e1 to a new row u3 too.
    `app`'s release leaves `crm`'s record of u1 without e1 (and `app` forgets its record of u1
    that left, and the email it kept for u1): `crm` sends u1's new plan and holds back the
    email, which u2 now has, and holds u3 back for u2. `plan --all` read `crm`'s record from
    before the release, and `app`'s: it planned u1's update with e1 (which Customer.io
    drops: u2 has e1), and held u3 back for u1."""
    f, emu = one_person_two_syncs, one_person_two_syncs.emulator
    give_up = "update app set email = null" if gives_up == "email-null" else "delete from app"
    f.sql(
        f"{give_up}; insert into app values ('u2', 'e1@x.io', 'pro'); "
        "update crm set plan = 'platinum'"
    )
    if taker:
        f.sql(f"insert into crm values ('{taker}', 'e1@x.io', 'lead')")
    plans, runs, sent = plan_then_sync(f)
    crm = plans["crm"]
    assert sorted(r["key"] for r in crm["rejected_rows"]) == ["u1", *([taker] if taker else [])]
    assert all("key `u2` of people sync `app`" in r["reason"] for r in crm["rejected_rows"])
    assert (crm["changes"]["to_send"], crm["changes"]["email_held_sent"]) == (1, 1)
    assert_plans_match(plans, runs, sent)
    assert runs["crm"]["rejected_rows"] == crm["rejected_rows"]
    assert plans_by_id(emu) == {
        "u1": (None, {"app_plan": "free", "crm_plan": "platinum"}),
        "u2": ("e1@x.io", {"app_plan": "pro"}),
    }
    assert failures(emu) == []


@pytest.mark.parametrize(
    "built_rows", [0, diff.BUILT_ROWS], ids=["payloads built as read", "rows mapped into a table"]
)
def test_plans_and_runs_agree_whether_the_diff_maps_its_rows_once_or_builds_each_as_read(
    b2b: ProjectFactory, monkeypatch: pytest.MonkeyPatch, built_rows: int
) -> None:
    """A diff of a few rows maps them once into a table its payloads are read from; a larger
    one builds each payload as it is read (``diff.BUILT_ROWS``): either way the plan shows
    what the run sends."""
    monkeypatch.setattr(diff, "BUILT_ROWS", built_rows)
    b2b.sql(
        """
        update users set first_name = 'New ' || user_id where user_id <= 3;
        insert into users values (7, 'U7');
        delete from users where user_id = 6;
        delete from members where user_id = 6;
        update companies set plan = 'churned' where company_id = 'c1';
        update members set role = 'owner' where user_id = 2;
        """
    )
    plans, runs, sent = plan_then_sync(b2b)
    assert_plans_match(plans, runs, sent)
    named = {
        str(op["identifiers"].get("id")): op["attributes"].get("first_name")
        for op in sent
        if op.get("type") == "person" and op.get("action") == "identify"
    }
    assert named == {"1": "New 1", "2": "New 2", "3": "New 3", "7": "U7"}
    assert [op["identifiers"] for op in sent if op.get("action") == "delete"] == [{"id": "6"}]
    # the company's members as delivered before this command (6 is deleted after it)
    churned = sorted(op["identifiers"]["id"] for op in sent if is_event(op))
    assert churned == ["3", "6"] and {op["name"] for op in sent if is_event(op)} == {
        "account_churned"
    }
