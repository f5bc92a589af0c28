"""`lockgate plan/sync --only`: a run of the named records alone (one person first, to see them
in Customer.io), then the rest, each record and event sent exactly once."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.errors import NothingNamedError
from lockgate.state.store import StateStore
from lockgate.sync.run import Session, plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id, email: email}
attributes:
  plan: plan
  promo: {column: promo, on_null: clear}
guardrails: {max_changed: 10%, max_cleared: 2%, max_removed: 10%}
"""

ORDERS = """
name: orders
source: warehouse
model: {table: orders}
kind: events
identify_by: {id: user_id}
event: {name: {value: Order Placed}, id: order_id}
backfill: {older: send}
"""

DATA = """
create or replace table users as
select i as user_id, 'u' || i || '@example.com' as email,
       case when i % 2 = 0 then 'pro' else 'free' end as plan,
       case when i % 3 = 0 then null else 'P' || i end as promo
from range(1, 41) t(i);
create or replace table orders as
select 'o' || i as order_id, 1 + i % 40 as user_id from range(100) t(i);
"""


def invoke(project: Any, *args: str) -> Any:
    result = CliRunner().invoke(
        cli, [*args, "--project", str(project.root)], catch_exceptions=False, standalone_mode=False
    )
    return json.loads(result.output)


def identifies(emu: Any) -> int:
    """Identify operations the emulator received."""
    return sum(
        1
        for r in emu.request_log()
        if r.path == "/api/v2/batch" and isinstance(r.body, dict)
        for op in r.body.get("batch", [])
        if op.get("action") == "identify"
    )


def test_one_person_first_then_everyone_each_record_and_event_sent_once(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE, "orders": ORDERS})

    # the plan of one person: their payload, nothing else counted, nothing sent
    plan = invoke(project, "plan", "profile", "--only", "U7@example.com", "--json")
    assert plan["only"] == ["U7@example.com"]
    assert (plan["changes"]["rows"], plan["changes"]["new"]) == (1, 1)
    assert plan["samples"][0]["payload"]["identifiers"] == {"id": "7"}
    assert emu.people() == []

    # the plan of all syncs counts their events too, before the person was ever sent: the
    # email is found through the people sync's plan, as the sync finds it once they are sent
    plans = {p["sync"]: p for p in invoke(project, "plan", "--all", "--only", "u7@example.com",
                                          "--json")}  # fmt: skip
    assert plans["orders"]["changes"]["to_send"] == 3 and plans["profile"]["changes"]["new"] == 1
    assert emu.people() == [] and emu.events() == []

    # one person and their events (named by email: the events carry only the id)
    runs = invoke(project, "sync", "--all", "--only", "u7@example.com", "--json")
    assert {(r["sync"], r["delivered"]) for r in runs} == {("profile", 1), ("orders", 3)}
    (seven,) = emu.people()
    assert seven.id == "7" and identifies(emu) == 1
    assert len(emu.events(seven)) == len(emu.events()) == 3

    # then everyone: the share limits of the full run count against what was sent, and the
    # person and events already sent are not sent again
    runs = {r["sync"]: r for r in invoke(project, "sync", "--all", "--json")}
    assert runs["profile"]["status"] == "success" and runs["profile"]["delivered"] == 39
    assert runs["orders"]["delivered"] == 97
    assert runs["orders"]["changes"]["already_delivered"] == 3
    assert len(emu.people()) == 40 and identifies(emu) == 40
    assert len(emu.events()) == 100 and len({e.id for e in emu.events()}) == 100
    assert plan_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_full_resync_of_one_person_sends_them_again_and_keeps_the_others(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())
    before = identifies(emu)

    unchanged = run_sync(project, "profile", console=NullConsole(), only=("12",))
    assert unchanged.changes.unchanged == 1 and unchanged.changes.to_send == 0
    again = run_sync(project, "profile", console=NullConsole(), only=("12",), full_resync=True)
    assert again.delivered == 1 and identifies(emu) == before + 1
    # the other 39 are still known as delivered: nothing to send for anyone
    plan = plan_sync(project, "profile", console=NullConsole())
    assert (plan.changes.unchanged, plan.changes.to_send) == (40, 0)


def test_a_full_resync_of_one_person_in_mirror_mode_deletes_nobody_else(
    project_factory: ProjectFactory,
) -> None:
    """`--only 12 --full-resync` sends person 12 again: the other 39 are not in this run's
    model, but they have not left it, so a `mirror` + `delete_removed` run deletes none."""
    emu = project_factory.emulator
    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE + "mode: mirror\ndelete_removed: true\n"})
    run_sync(project, "profile", console=NullConsole())

    plan = plan_sync(project, "profile", console=NullConsole(), only=("12",), full_resync=True)
    assert (plan.changes.to_send, plan.changes.removed) == (1, 0)
    again = run_sync(project, "profile", console=NullConsole(), only=("12",), full_resync=True)
    assert again.delivered == 1 and again.changes.removed_sent == 0
    assert len(emu.people()) == 40
    assert plan_sync(project, "profile", console=NullConsole()).changes.to_send == 0

    # one that did leave the model is deleted by a full resync naming it, and only that one
    project_factory.sql("delete from users where user_id = 7")
    gone = run_sync(project, "profile", console=NullConsole(), only=("7",), full_resync=True)
    assert gone.changes.removed_sent == 1
    assert sorted(int(p.id) for p in emu.people()) == [i for i in range(1, 41) if i != 7]


def test_a_mirror_run_of_named_records_undoes_only_those_that_left(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE + "mode: mirror\n"})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("delete from users where user_id in (3, 4)")

    named = run_sync(project, "profile", console=NullConsole(), only=("u4@example.com",))
    assert (named.changes.removed, named.changes.removed_sent) == (1, 1)
    people = {p.id: p.attributes for p in emu.people()}
    assert "plan" not in people["4"] and people["3"]["plan"] == "free"
    rest = run_sync(project, "profile", console=NullConsole(), force=True)
    assert rest.changes.removed_sent == 1
    assert "plan" not in {p.id: p.attributes for p in emu.people()}["3"]


def test_a_run_of_named_records_leaves_the_mapping_change_to_the_whole_run(
    project_factory: ProjectFactory,
) -> None:
    """An attribute added, one person sent with it: the whole run after still sees the mapping
    change for the other 39 (it is recorded only by a run of every record), so `max_changed`
    does not take them for changed data."""
    project_factory.sql(DATA)
    run_sync(project_factory.write({"profile": PROFILE}), "profile", console=NullConsole())
    added = PROFILE.replace("  plan: plan\n", "  plan: plan\n  email_copy: email\n")
    project = project_factory.write({"profile": added})
    assert run_sync(project, "profile", console=NullConsole(), only=("5",)).delivered == 1
    rest = run_sync(project, "profile", console=NullConsole())
    assert rest.status == "success" and rest.delivered == 39
    assert rest.changes.remapped == 39
    mapping = {g.name: g.actual for g in rest.guards}["mapping"]
    assert mapping == "added attribute `email_copy`: 39 people sent again for it"


def test_naming_nothing_is_an_error_that_names_the_value(project_factory: ProjectFactory) -> None:
    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE})
    with pytest.raises(NothingNamedError, match="nothing matches `nobody@example.com`") as caught:
        run_sync(project, "profile", console=NullConsole(), only=("nobody@example.com",))
    assert "id, email or cio_id" in (caught.value.hint or "")
    assert project_factory.emulator.people() == []


TYPED = """
name: typed
source: warehouse
model: {table: typed}
kind: people
primary_key: key
identify_by: {id: key, email: email}
attributes:
  tier: tier
  big: {column: big, type: number}
  tags: {column: tags, type: json}
"""


def test_a_named_row_of_any_column_type_is_the_one_the_whole_run_would_send(
    project_factory: ProjectFactory,
) -> None:
    """A DuckDB source finds the named rows itself (copying a few rows, not the model): keys and
    hashes must come out as a whole run's do, through the types the copy changes (UUID, ENUM,
    HUGEINT, JSON) and values JSON escapes, or the whole run after would send them again."""
    emu = project_factory.emulator
    project_factory.sql(
        """
        create type tier as enum ('free', 'pro');
        create or replace table typed as
        select (case when i = 3 then 'a"b\\c' else uuid()::varchar end) as key,
               'T' || i || '@Example.com' as email,
               (case when i % 2 = 0 then 'pro' else 'free' end)::tier as tier,
               (1267650600228229401496703205376 + i)::hugeint as big,
               ('{"n": ' || i || '}')::json as tags
        from range(1, 31) t(i);
        """
    )
    project = project_factory.write({"typed": TYPED})
    quoted = run_sync(project, "typed", console=NullConsole(), only=('a"b\\c',))
    by_email = run_sync(project, "typed", console=NullConsole(), only=("t4@example.com",))
    assert (quoted.delivered, by_email.delivered) == (1, 1)
    people = {p.id: p.attributes for p in emu.people()}
    assert people['a"b\\c']["tags"] == {"n": 3} and people['a"b\\c']["tier"] == "free"

    rest = run_sync(project, "typed", console=NullConsole())
    assert (rest.changes.unchanged, rest.delivered) == (2, 28)
    assert identifies(emu) == 30 and len(emu.people()) == 30


MOVERS = """
create or replace table users as
select *, null as promo from (values (1, 'ann@example.com', 'pro'), (2, 'bob@example.com', 'free'))
    t(user_id, email, plan);
"""


def test_a_named_row_taking_an_email_another_row_gives_up_sends_the_giver_first(
    project_factory: ProjectFactory,
) -> None:
    """u1 moves to a new address and u2 takes u1's old one: `--only 2` names u2 alone, but
    Customer.io drops u2's update while u1 holds the email, so the run sends u1 too, first (as
    a whole run does), and the whole run after has nothing left to send."""
    emu = project_factory.emulator
    project_factory.sql(MOVERS)
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql(
        "update users set email = 'ann@new.example.com' where user_id = 1;"
        "update users set email = 'ann@example.com', plan = 'team' where user_id = 2;"
    )

    plan = plan_sync(project, "profile", console=NullConsole(), only=("2",), samples=10)
    named = run_sync(project, "profile", console=NullConsole(), only=("2",))
    assert named.status == "success" and named.delivered == plan.changes.to_send == 2
    people = {p.id: (p.email, p.attributes.get("plan")) for p in emu.people()}
    assert people == {"1": ("ann@new.example.com", "pro"), "2": ("ann@example.com", "team")}
    assert plan_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_an_email_a_named_run_leaves_a_person_is_released_for_the_next_row_taking_it(
    project_factory: ProjectFactory,
) -> None:
    """u1's email goes null and `--only 1` sends u1 (`on_null: skip`: Customer.io keeps the
    email); then new user u3 takes that address. The whole run after releases it from u1
    first (nothing else of u1's is sent again) and u3 is a person of its own, not u1's
    profile renamed."""
    emu = project_factory.emulator
    project_factory.sql(MOVERS)
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())
    u1 = emu.person(id="1")
    assert u1 is not None
    project_factory.sql("update users set email = null, plan = 'team' where user_id = 1")
    assert run_sync(project, "profile", console=NullConsole(), only=("1",)).delivered == 1
    assert (emu.person(id="1").email, emu.person(id="1").attributes["plan"]) == (
        "ann@example.com",
        "team",
    )

    project_factory.sql("insert into users values (3, 'Ann@example.com', 'free', null)")
    before = len(emu.request_log())
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 1)
    sent = [
        (op["identifiers"]["id"], op.get("attributes"))
        for r in emu.request_log()[before:]
        if r.path == "/api/v2/batch" and isinstance(r.body, dict)
        for op in r.body.get("batch", [])
    ]
    assert [k for k, _ in sent] == ["1", "3"] and sent[0][1] == {"_update": True, "email": ""}
    people = {p.id: (p.cio_id, p.email, p.attributes.get("plan")) for p in emu.people()}
    assert people["1"] == (u1.cio_id, None, "team")
    assert people["3"][1:] == ("Ann@example.com", "free") and people["3"][0] != u1.cio_id
    assert plan_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_plan_all_of_a_named_person_counts_the_events_the_run_then_sends(
    project_factory: ProjectFactory,
) -> None:
    """u4 leaves the model (`upsert`: Customer.io keeps them) and u1 takes u4's address. A
    state written before rows that leave released their email gives both the address:
    Customer.io dropped u1's update, which, with no App API key to read it back, was committed
    (set up below as that state and workspace were). Named, u1 is found by it, so u4 and u4's
    order too:
    `sync --all --only 1` names them from what the people sync sent, as `plan --all --only 1`
    does from what it would send, so the plan counts the event the run then sends."""
    project_factory.sql(
        "create table users as select * from (values (1, 'b@x.com', 'pro', null), "
        "(4, 'a@x.com', 'free', null)) t(user_id, email, plan, promo);"
        "create table orders as select 'o1' as order_id, 4 as user_id where false"
    )
    project = project_factory.write({"profile": PROFILE, "orders": ORDERS})
    run_sync(project, "profile", console=NullConsole(), force=True)
    with StateStore.open(project.state_dir) as store:
        (u4,) = store.con.execute("select * from snap__profile where k = '4'").fetchall()
    project_factory.sql(
        "delete from users where user_id = 4; update users set email = 'a@x.com' where user_id = 1"
    )
    assert run_sync(project, "profile", console=NullConsole(), force=True).delivered == 1
    # the state and workspace as before: u4 still delivered with the address, which it holds
    with StateStore.open(project.state_dir) as store:
        store.con.execute(f"insert into snap__profile values ({', '.join('?' * len(u4))})", u4)
    emu = project_factory.emulator
    batch = [
        {"type": "person", "action": "identify", "identifiers": {"id": i}, "attributes": a}
        for i, a in (("1", {"email": "b@x.com"}), ("4", {"email": "a@x.com"}))
    ]
    with emu.client(auth=emu.track_auth) as client:
        assert client.post("/api/v2/batch", json={"batch": batch}).status_code == 200
    project_factory.sql(
        "update users set email = 'A@x.com' where user_id = 1; insert into orders values ('o1', 4)"
    )
    with Session() as session:
        plans = [
            plan_sync(project, n, console=NullConsole(), only=("1",), session=session)
            for n in ("profile", "orders")
        ]
    with Session() as session:
        runs = [
            run_sync(project, n, console=NullConsole(), only=("1",), session=session)
            for n in ("profile", "orders")
        ]
    assert [p.changes.to_send for p in plans] == [r.changes.to_send for r in runs]
    assert runs[1].changes.to_send == 1
