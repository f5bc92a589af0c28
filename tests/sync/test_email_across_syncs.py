"""An email that changes hands between two people syncs of one destination (docs/sync.md, An
email another sync gave).

`a_sync` runs first in `lockgate sync --all` (by name, among the people syncs), `b_sync`
after it. Person u1 (sent by `b_sync`) has e1@x.io; the warehouse then gives u1 e5@x.io and
gives e1@x.io to u2 (sent by `a_sync`). Sent by `a_sync` while u1 still holds e1 in
Customer.io, u2's update was dropped (an existing u2: email and attributes, 200 and an
*attribute update failure*) or made u1 into u2 (a new u2), and committed as delivered: never
sent again while unchanged. Now `a_sync` holds u2 back, naming `b_sync` and u1, and sends it
on its next run, once `b_sync` has moved u1 on; `plan` says the same."""

from __future__ import annotations

from typing import Any

import pytest
from tests.sync.test_plan_all_matches_sync import assert_plans_match, lockgate, plan_then_sync

from lockgate.emulator import Emulator
from lockgate.project.loader import load_project

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

SYNC = """
name: {name}
source: warehouse
model: {{table: {name}}}
kind: people
primary_key: user_id
identify_by: {{id: user_id, email: email}}
attributes: {{{name}_plan: plan}}
"""


def people(emu: Emulator) -> dict[str | None, tuple[str | None, dict[str, Any]]]:
    """id -> (email, the plans each sync set)."""
    return {
        p.id: (p.email, {k: v for k, v in p.attributes.items() if k.endswith("_plan")})
        for p in emu.people()
    }


def failures(emu: Emulator) -> list[str]:
    return [a.message for a in emu.activity_log() if a.kind == "attribute update failure"]


def rows(factory: ProjectFactory, name: str, *values: tuple[str, str, str]) -> None:
    body = ", ".join(f"('{k}', '{e}', '{p}')" for k, e, p in values)
    factory.sql(
        f"create or replace table {name} as select * from (values {body}) t(user_id, email, plan)"
    )


def project(factory: ProjectFactory, *names: str) -> Any:
    factory.project = factory.write({n: SYNC.format(name=n) for n in names})
    return factory.project


@pytest.mark.parametrize("taker", ["changed", "new"])
def test_an_email_a_later_sync_moves_off_its_person_is_taken_by_the_next_run(
    project_factory: ProjectFactory, taker: str
) -> None:
    f, emu = project_factory, project_factory.emulator
    first = [("u2", "e0@x.io", "free")] if taker == "changed" else []
    rows(f, "a_sync", *first, ("u3", "e3@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    if taker == "changed":
        f.sql("update a_sync set email = 'E1@x.io', plan = 'pro' where user_id = 'u2'")
    else:
        f.sql("insert into a_sync values ('u2', 'E1@x.io', 'pro')")
    f.sql("update b_sync set email = 'e5@x.io', plan = 'team'")

    plans, runs, sent = plan_then_sync(f)
    a, b = plans["a_sync"]["changes"], plans["b_sync"]["changes"]
    assert (a["to_send"], a["rejected"], b["to_send"]) == (0, 1, 1)
    assert_plans_match(plans, runs, sent)
    assert runs["a_sync"]["changes"]["rejected"] == 1
    ((key, reason),) = [(r["key"], r["reason"]) for r in runs["a_sync"]["rejected_rows"]]
    assert key == "u2"
    assert "key `u1` of people sync `b_sync`" in reason, reason
    assert "E1@x.io" in reason, reason
    # nothing dropped, nobody renamed: u2 as it was, u1 moved on
    want_u2 = {"u2": ("e0@x.io", {"a_sync_plan": "free"})} if taker == "changed" else {}
    assert people(emu) == {
        **want_u2,
        "u1": ("e5@x.io", {"b_sync_plan": "team"}),
        "u3": ("e3@x.io", {"a_sync_plan": "free"}),
    }
    assert failures(emu) == []

    # the next command sends u2, as its plan says; then nothing is left to send
    plans, runs, sent = plan_then_sync(f)
    assert (plans["a_sync"]["changes"]["to_send"], plans["a_sync"]["changes"]["rejected"]) == (
        1,
        0,
    )
    assert_plans_match(plans, runs, sent)
    assert people(emu) == {
        "u2": ("E1@x.io", {"a_sync_plan": "pro"}),
        "u1": ("e5@x.io", {"b_sync_plan": "team"}),
        "u3": ("e3@x.io", {"a_sync_plan": "free"}),
    }
    assert failures(emu) == []
    again = lockgate(proj, "sync", "--all", "--json")
    assert [r["changes"]["to_send"] for r in again] == [0, 0]


def test_an_email_an_earlier_sync_moves_off_its_person_is_taken_in_the_same_command(
    project_factory: ProjectFactory,
) -> None:
    """The giver first: `a_sync` moves u1 to e5 and commits before `b_sync` runs, so u2 takes
    e1 in the same command, and its plan (which sees what `a_sync`'s plan would commit) says
    so."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u1", "e1@x.io", "gold"))
    rows(f, "b_sync", ("u2", "e0@x.io", "free"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("update a_sync set email = 'e5@x.io'; update b_sync set email = 'e1@x.io'")
    plans, runs, sent = plan_then_sync(f)
    assert [p["changes"]["rejected"] for p in plans.values()] == [0, 0]
    assert_plans_match(plans, runs, sent)
    assert people(emu) == {
        "u1": ("e5@x.io", {"a_sync_plan": "gold"}),
        "u2": ("e1@x.io", {"b_sync_plan": "free"}),
    }
    assert failures(emu) == []


def test_a_sync_run_alone_holds_the_row_until_the_other_sync_runs(
    project_factory: ProjectFactory,
) -> None:
    """`lockgate sync a_sync` alone, `b_sync` not run: u2 waits (its plan says so too, and
    that of `--only u2`), u1 keeps e1 and its attributes; once `b_sync` has run, `a_sync`
    sends u2."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u2", "e0@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("update a_sync set email = 'e1@x.io', plan = 'pro'; update b_sync set email = 'e5@x.io'")
    plan = lockgate(proj, "plan", "a_sync", "--json")
    named = lockgate(proj, "plan", "a_sync", "--only", "u2", "--json")
    assert (named["changes"]["to_send"], named["changes"]["rejected"]) == (0, 1)
    (alone,) = lockgate(proj, "sync", "a_sync", "--json")
    assert (plan["changes"]["to_send"], plan["changes"]["rejected"]) == (0, 1)
    assert (alone["delivered"], alone["changes"]["rejected"]) == (0, 1)
    assert "key `u1` of people sync `b_sync`" in alone["rejected_rows"][0]["reason"]
    assert people(emu) == {
        "u2": ("e0@x.io", {"a_sync_plan": "free"}),
        "u1": ("e1@x.io", {"b_sync_plan": "gold"}),
    }
    assert lockgate(proj, "sync", "b_sync", "--json")[0]["delivered"] == 1
    assert lockgate(proj, "sync", "a_sync", "--json")[0]["delivered"] == 1
    assert people(emu) == {
        "u2": ("e1@x.io", {"a_sync_plan": "pro"}),
        "u1": ("e5@x.io", {"b_sync_plan": "gold"}),
    }
    assert failures(emu) == []


def test_a_person_another_snapshot_moved_on_holds_nothing_back(
    project_factory: ProjectFactory,
) -> None:
    """u1 is sent by `a_sync` and `b_sync`; `a_sync` moves them to e9, `b_sync`'s model still
    says e1 (unchanged there, so not sent again): which snapshot is current is not known, so
    a new row of `c_sync` taking e1 is sent (Customer.io has u1 at e9: it lands)."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u1", "e1@x.io", "gold"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    rows(f, "c_sync", ("u4", "e4@x.io", "free"))
    proj = project(f, "a_sync", "b_sync", "c_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("update a_sync set email = 'e9@x.io'; insert into c_sync values ('u3', 'e1@x.io', 'pro')")
    plans, runs, sent = plan_then_sync(f)
    assert plans["c_sync"]["changes"]["rejected"] == 0
    assert_plans_match(plans, runs, sent)
    assert people(emu)["u3"] == ("e1@x.io", {"c_sync_plan": "pro"})
    assert people(emu)["u1"][0] == "e9@x.io"


GRAPH_PROJECT = """\
name: ident
sources:
  warehouse: {{type: duckdb, path: warehouse.duckdb}}
destinations:
  customerio: {{type: customerio, track_url: "{url}"}}
identity:
  identifier_types:
    user_id: {{priority: 1, limit: 1, customerio: id}}
    email: {{priority: 2, limit: 5, customerio: email}}
  sources:
    - {{name: app, table: a_sync}}
    - {{name: crm, table: b_sync}}
"""

GRAPH_SYNC = SYNC.replace("{{id: user_id", "{{user_id: user_id")


def test_the_same_through_the_identity_graph(project_factory: ProjectFactory) -> None:
    """Both syncs keyed by the identity graph (u1 a profile of `b_sync`'s rows, u2 of
    `a_sync`'s): the graph gives e1 to u2 and e5 to u1, but u1 is `b_sync`'s to move, so
    `a_sync` holds u2 back until it has, as without the graph."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u2", "e0@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    project(f, "a_sync", "b_sync")
    for name in ("a_sync", "b_sync"):
        (f.root / "syncs" / f"{name}.yml").write_text(GRAPH_SYNC.format(name=name))
    (f.root / "lockgate.yml").write_text(GRAPH_PROJECT.format(url=emu.base_url))
    proj = f.project = load_project(f.root)
    lockgate(proj, "sync", "--all", "--json")
    f.sql("update a_sync set email = 'e1@x.io', plan = 'pro'; update b_sync set email = 'e5@x.io'")
    plans, runs, sent = plan_then_sync(f)
    assert [p["changes"]["rejected"] for p in plans.values()] == [1, 0]
    assert_plans_match(plans, runs, sent)
    assert "key `u1` of people sync `b_sync`" in runs["a_sync"]["rejected_rows"][0]["reason"]
    assert people(emu)["u2"] == ("e0@x.io", {"a_sync_plan": "free"})
    plans, runs, sent = plan_then_sync(f)
    assert_plans_match(plans, runs, sent)
    assert people(emu) == {
        "u2": ("e1@x.io", {"a_sync_plan": "pro"}),
        "u1": ("e5@x.io", {"b_sync_plan": "gold"}),
    }
    assert failures(emu) == []


@pytest.mark.parametrize(
    ("let_go", "taker"), [("null", "new"), ("left", "changed")], ids=["null-new", "left-changed"]
)
def test_an_email_another_sync_keeps_after_its_row_let_go_holds_the_row_back(
    project_factory: ProjectFactory, let_go: str, taker: str
) -> None:
    """`b_sync`'s row u1 lets go of e1 (its email goes null under `on_null: skip`, or it leaves
    `b_sync`, a `mirror` sync without `delete_removed`): Customer.io still gives e1 to u1, and
    `b_sync` keeps it in its `emails_kept`. A row of `a_sync` taking e1 would make u1 into u2
    (a new u2) or be dropped (u2 a person already). Before, `a_sync` knew only what `b_sync`
    delivered, and sent it. Now it holds u2 back naming `b_sync` and u1, as its plan does; once
    `b_sync` gives u1 another email, u2 is sent."""
    f, emu = project_factory, project_factory.emulator
    first = [("u2", "e0@x.io", "free")] if taker == "changed" else []
    rows(f, "a_sync", *first, ("u3", "e3@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"), ("u4", "e4@x.io", "gold"))
    mirror = SYNC.format(name="b_sync") + "mode: mirror\n"
    proj = f.project = f.write({"a_sync": SYNC.format(name="a_sync"), "b_sync": mirror})
    lockgate(proj, "sync", "--all", "--json")
    u1 = emu.person(id="u1").cio_id  # type: ignore[union-attr]
    if let_go == "null":
        f.sql("update b_sync set email = null")
    else:
        f.sql("delete from b_sync where user_id = 'u1'")
    (gone,) = lockgate(proj, "sync", "b_sync", "--json", "--force")
    assert gone["status"] == "success"
    kept_u1 = {"b_sync_plan": "gold"} if let_go == "null" else {}
    assert people(emu)["u1"] == ("e1@x.io", kept_u1)
    if taker == "changed":
        f.sql("update a_sync set email = 'E1@x.io', plan = 'pro' where user_id = 'u2'")
    else:
        f.sql("insert into a_sync values ('u2', 'E1@x.io', 'pro')")

    plan = lockgate(proj, "plan", "a_sync", "--json")
    (run,) = lockgate(proj, "sync", "a_sync", "--json")
    assert (plan["changes"]["to_send"], plan["changes"]["rejected"]) == (0, 1)
    assert (run["delivered"], run["changes"]["rejected"]) == (0, 1)
    ((key, reason),) = [(r["key"], r["reason"]) for r in run["rejected_rows"]]
    assert key == "u2"
    assert "`E1@x.io` is the email key `u1` of people sync `b_sync` keeps" in reason, reason
    # nobody renamed, nothing dropped: u1 keeps its profile and e1, u2 as it was
    assert emu.person(id="u1").cio_id == u1  # type: ignore[union-attr]
    want_u2 = {"u2": ("e0@x.io", {"a_sync_plan": "free"})} if taker == "changed" else {}
    assert people(emu) == {
        **want_u2,
        "u1": ("e1@x.io", kept_u1),
        "u3": ("e3@x.io", {"a_sync_plan": "free"}),
        "u4": ("e4@x.io", {"b_sync_plan": "gold"}),
    }
    assert failures(emu) == []

    # `b_sync` gives u1 another email (u1's row back, for the one that left): `sync --all`
    # runs it after `a_sync`, so u2 waits for the next command, which sends it
    if let_go == "null":
        f.sql("update b_sync set email = 'e5@x.io'")
    else:
        f.sql("insert into b_sync values ('u1', 'e5@x.io', 'gold')")
    plans, runs, sent = plan_then_sync(f)
    assert_plans_match(plans, runs, sent)
    assert (runs["a_sync"]["changes"]["rejected"], runs["b_sync"]["delivered"]) == (1, 1)
    plans, runs, sent = plan_then_sync(f)
    assert_plans_match(plans, runs, sent)
    assert (runs["a_sync"]["delivered"], runs["a_sync"]["changes"]["rejected"]) == (1, 0)
    assert people(emu) == {
        "u2": ("E1@x.io", {"a_sync_plan": "pro"}),
        "u1": ("e5@x.io", {"b_sync_plan": "gold"}),
        "u3": ("e3@x.io", {"a_sync_plan": "free"}),
        "u4": ("e4@x.io", {"b_sync_plan": "gold"}),
    }
    assert emu.person(id="u1").cio_id == u1  # type: ignore[union-attr]
    assert failures(emu) == []


def test_an_email_an_earlier_sync_starts_keeping_holds_the_row_back_in_the_same_command(
    project_factory: ProjectFactory,
) -> None:
    """`a_sync` runs first in `sync --all`: u1's email goes null there, so `a_sync` starts
    keeping e1 for u1 in the command that brings `b_sync`'s u2 with e1. `b_sync` holds u2
    back, and `plan --all` says so (it sees what `a_sync`'s run would keep)."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u1", "e1@x.io", "gold"))
    rows(f, "b_sync", ("u3", "e3@x.io", "free"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("update a_sync set email = null; insert into b_sync values ('u2', 'e1@x.io', 'pro')")
    plans, runs, sent = plan_then_sync(f)
    assert [p["changes"]["rejected"] for p in plans.values()] == [0, 1]
    assert_plans_match(plans, runs, sent)
    assert "key `u1` of people sync `a_sync` keeps" in runs["b_sync"]["rejected_rows"][0]["reason"]
    assert people(emu) == {
        "u1": ("e1@x.io", {"a_sync_plan": "gold"}),
        "u3": ("e3@x.io", {"b_sync_plan": "free"}),
    }
