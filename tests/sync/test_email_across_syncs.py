"""An email that changes hands between two people syncs of one destination (docs/sync.md, Emails
that change hands between syncs).

`a_sync` runs first in `lockgate sync --all` (by name, among the people syncs), `b_sync`
after it. Person u1 (sent by `b_sync`) has e1@x.io; the warehouse then gives u1 e5@x.io and
gives e1@x.io to u2 (sent by `a_sync`). Sent by `a_sync` while u1 still holds e1 in
Customer.io, u2's update was dropped (an existing u2: email and attributes, 200 and an
*attribute update failure*) or made u1 into u2 (a new u2), and committed as delivered: never
sent again while unchanged. Now `a_sync` holds u2 back, naming `b_sync` and u1, and sends it
once `b_sync` has moved u1 on: in `sync --all`, by a follow-up run of `a_sync` after the
others; `plan` says the same."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from tests.sync.helpers import PLAN_SYNC, plans_by_id
from tests.sync.test_deleted_after_a_kill import (
    journaled,
    killed_after_one_answer,
    one_at_a_time,
)
from tests.sync.test_objects import COMPANIES, MEMBERSHIPS
from tests.sync.test_plan_all_matches_sync import (
    assert_plans_match,
    by_sync,
    invoke,
    lockgate,
    plan_then_sync,
)

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.emulator import Emulator, FaultConfig
from lockgate.project.loader import load_project
from lockgate.sync.run import run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)


def failures(emu: Emulator) -> list[str]:
    return [a.message for a in emu.activity_log() if a.kind == "attribute update failure"]


def rows(factory: ProjectFactory, name: str, *values: tuple[str, str, str]) -> None:
    body = ", ".join(f"('{k}', '{e}', '{p}')" for k, e, p in values)
    factory.sql(
        f"create or replace table {name} as select * from (values {body}) t(user_id, email, plan)"
    )


def project(factory: ProjectFactory, *names: str) -> Any:
    factory.project = factory.write({n: PLAN_SYNC.format(name=n) for n in names})
    return factory.project


@pytest.mark.parametrize("taker", ["changed", "new"])
def test_an_email_a_later_sync_moves_off_its_person_is_taken_by_a_follow_up_run(
    project_factory: ProjectFactory, taker: str
) -> None:
    """`a_sync` runs first and holds u2 back (u1 of `b_sync` has e1); `b_sync` then moves u1
    to e5, and the same command runs `a_sync` once more (a follow-up), which sends u2: one
    `sync --all` completes the handover, as its plan says."""
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
    assert list(plans) == ["a_sync", "b_sync", "a_sync (follow-up)"]
    a, b = plans["a_sync"]["changes"], plans["b_sync"]["changes"]
    # a u2 already delivered gets its new plan at once, without the email (which waits)
    partial = 1 if taker == "changed" else 0
    assert (a["to_send"], a["rejected"], b["to_send"]) == (partial, 1, 1)
    assert a["email_held_sent"] == partial
    follow = plans["a_sync (follow-up)"]["changes"]
    assert (follow["to_send"], follow["rejected"]) == (1, 0)
    assert_plans_match(plans, runs, sent)
    assert runs["a_sync"]["changes"]["rejected"] == 1
    ((key, reason),) = [(r["key"], r["reason"]) for r in runs["a_sync"]["rejected_rows"]]
    assert key == "u2"
    assert "key `u1` of people sync `b_sync`" in reason, reason
    assert "E1@x.io" in reason, reason
    assert runs["a_sync (follow-up)"]["follow_up_of"] == runs["a_sync"]["run_id"]
    assert runs["a_sync"]["follow_up_of"] is None
    # nothing dropped, nobody renamed: u2 took e1 once u1 had moved on, in the one command
    assert plans_by_id(emu) == {
        "u2": ("E1@x.io", {"a_sync_plan": "pro"}),
        "u1": ("e5@x.io", {"b_sync_plan": "team"}),
        "u3": ("e3@x.io", {"a_sync_plan": "free"}),
    }
    assert failures(emu) == []
    # `lockgate runs` lists the follow-up as a run of its own, labelled
    listed = lockgate(proj, "runs", "--json")
    assert listed[0]["sync"] == "a_sync"
    assert listed[0]["counts"]["follow_up_of"] == runs["a_sync"]["run_id"]
    assert "success (follow-up)" in invoke(proj, "runs").stdout

    # the next command has nothing left to send, and no follow-up
    again = lockgate(proj, "sync", "--all", "--json")
    assert [(r["sync"], r["changes"]["to_send"]) for r in again] == [("a_sync", 0), ("b_sync", 0)]


def test_a_follow_up_of_a_full_resync_sends_only_what_was_held_back(
    project_factory: ProjectFactory, tmp_path: Any
) -> None:
    """`sync --all --full-resync`: the first run of `a_sync` sends every row again but u2;
    its follow-up is no resync: it sends u2 alone, as the plans say, and the rows the plans
    export as rejected are those the command leaves rejected (none)."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u2", "e0@x.io", "free"), ("u3", "e3@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("update a_sync set email = 'e1@x.io' where user_id = 'u2'")
    f.sql("update b_sync set email = 'e5@x.io'")
    export = tmp_path / "rejected.csv"
    invoke(proj, "plan", "--all", "--full-resync", "--export-rejected", str(export))
    assert export.read_text().splitlines() == ['"sync","key","reason"']
    plans, runs, sent = plan_then_sync(f, "--full-resync")
    # the resync sends u2 again too, without the email it waits for
    assert [(n, p["changes"]["to_send"]) for n, p in plans.items()] == [
        ("a_sync", 2),
        ("b_sync", 1),
        ("a_sync (follow-up)", 1),
    ]
    assert_plans_match(plans, runs, sent)
    ids = [op["identifiers"] for op in sent]
    assert sorted(ids[:2], key=str) == [{"id": "u2"}, {"id": "u3"}]
    assert ids[2:] == [{"id": "u1"}, {"id": "u2"}]
    assert plans_by_id(emu) == {
        "u2": ("e1@x.io", {"a_sync_plan": "free"}),
        "u1": ("e5@x.io", {"b_sync_plan": "gold"}),
        "u3": ("e3@x.io", {"a_sync_plan": "free"}),
    }


@pytest.mark.parametrize("refused", ["u1", "u2"])
def test_what_customerio_refuses_in_a_handover_sets_the_exit_code(
    project_factory: ProjectFactory, refused: str
) -> None:
    """Customer.io refuses u1's new email (`b_sync`'s run is partial): e1 is not freed, as
    `b_sync`'s state says, so `a_sync` runs no follow-up and u2 waits. Or it refuses u2: the
    follow-up runs and is partial. Either way `sync --all` exits 2, with every report in its
    `--json`."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u2", "e0@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("update a_sync set email = 'e1@x.io'; update b_sync set email = 'e5@x.io'")
    emu.set_faults(FaultConfig(reject_people=frozenset({refused})))
    result = CliRunner().invoke(cli, ["sync", "--all", "--json", "--project", str(proj.root)])
    assert result.exit_code == 2, result.output
    reports = by_sync(json.loads(result.stdout))
    statuses = {n: r["status"] for n, r in reports.items()}
    if refused == "u1":
        assert statuses == {"a_sync": "success", "b_sync": "partial"}
        assert plans_by_id(emu) == {
            "u2": ("e0@x.io", {"a_sync_plan": "free"}),
            "u1": ("e1@x.io", {"b_sync_plan": "gold"}),
        }
    else:
        assert statuses == {
            "a_sync": "success",
            "b_sync": "success",
            "a_sync (follow-up)": "partial",
        }
        assert reports["a_sync (follow-up)"]["rejected_by_api"] == 1
        assert plans_by_id(emu)["u1"] == ("e5@x.io", {"b_sync_plan": "gold"})
    assert failures(emu) == []


def test_a_chain_of_handovers_completes_in_one_command(project_factory: ProjectFactory) -> None:
    """u3 (`a_sync`) takes e2 from u2 (`b_sync`), who takes e1 from u1 (`c_sync`), who moves
    to e9. In the order a, b, c, only `c_sync` sends at first; the follow-ups then run the
    giver first: `b_sync`, then `a_sync`, each once."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u3", "e3@x.io", "free"))
    rows(f, "b_sync", ("u2", "e2@x.io", "free"))
    rows(f, "c_sync", ("u1", "e1@x.io", "gold"))
    proj = project(f, "a_sync", "b_sync", "c_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql(
        "update a_sync set email = 'e2@x.io'; update b_sync set email = 'e1@x.io'; "
        "update c_sync set email = 'e9@x.io'"
    )
    plans, runs, sent = plan_then_sync(f)
    assert list(plans) == [
        "a_sync",
        "b_sync",
        "c_sync",
        "b_sync (follow-up)",
        "a_sync (follow-up)",
    ]
    assert [p["changes"]["rejected"] for p in plans.values()] == [1, 1, 0, 0, 0]
    assert_plans_match(plans, runs, sent)
    assert plans_by_id(emu) == {
        "u3": ("e2@x.io", {"a_sync_plan": "free"}),
        "u2": ("e1@x.io", {"b_sync_plan": "free"}),
        "u1": ("e9@x.io", {"c_sync_plan": "gold"}),
    }
    assert failures(emu) == []


def test_an_email_the_other_sync_keeps_runs_no_follow_up(project_factory: ProjectFactory) -> None:
    """`b_sync` sends u1 again (a new plan) but keeps e1: u2 of `a_sync` waits, and no
    follow-up runs for it (it would hold u2 again)."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u2", "e0@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("update a_sync set email = 'e1@x.io'; update b_sync set plan = 'team'")
    plans, runs, sent = plan_then_sync(f)
    assert list(runs) == ["a_sync", "b_sync"]
    assert_plans_match(plans, runs, sent)
    assert runs["a_sync"]["changes"]["rejected"] == 1
    assert plans_by_id(emu) == {
        "u2": ("e0@x.io", {"a_sync_plan": "free"}),
        "u1": ("e1@x.io", {"b_sync_plan": "team"}),
    }


def test_a_swap_between_two_syncs_ends_and_loses_nobody(project_factory: ProjectFactory) -> None:
    """u2 (`a_sync`) takes e1 from u1 (`b_sync`) while u1 takes e2 from u2: each waits on the
    other, neither sync frees an email, so no follow-up runs; the command ends, and both
    people keep what they had (nobody dropped or renamed)."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u2", "e2@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("update a_sync set email = 'e1@x.io'; update b_sync set email = 'e2@x.io'")
    plans, runs, sent = plan_then_sync(f)
    assert list(runs) == ["a_sync", "b_sync"]
    assert_plans_match(plans, runs, sent)
    assert [r["changes"]["rejected"] for r in runs.values()] == [1, 1]
    # only the emails changed: nothing else to send while they wait
    assert [(r["delivered"], r["changes"]["email_held_sent"]) for r in runs.values()] == [
        (0, 0),
        (0, 0),
    ]
    assert plans_by_id(emu) == {
        "u2": ("e2@x.io", {"a_sync_plan": "free"}),
        "u1": ("e1@x.io", {"b_sync_plan": "gold"}),
    }
    assert failures(emu) == []


def test_a_swap_between_two_syncs_sends_the_other_changes_while_the_emails_wait(
    project_factory: ProjectFactory,
) -> None:
    """The swap with new plans too: each row is held back for its email, but its person is
    delivered already, so its new plan goes now (identified by `id` alone, without the email)
    while both emails wait; the next command sends nothing again, and once a model gives its
    row a third email the swap completes."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u2", "e2@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql(
        "update a_sync set email = 'e1@x.io', plan = 'pro'; "
        "update b_sync set email = 'e2@x.io', plan = 'team'"
    )
    shown = invoke(proj, "plan", "--all").stdout
    assert "of which held back for email, other changes sent" in shown
    plans, runs, sent = plan_then_sync(f)
    assert list(runs) == ["a_sync", "b_sync"]
    assert_plans_match(plans, runs, sent)
    counts = [(r["changes"]["rejected"], r["changes"]["email_held_sent"]) for r in runs.values()]
    assert counts == [(1, 1), (1, 1)]
    assert [r["delivered"] for r in runs.values()] == [1, 1]
    assert [op["identifiers"] for op in sent] == [{"id": "u2"}, {"id": "u1"}]
    assert all("email" not in op["attributes"] for op in sent)
    assert plans_by_id(emu) == {
        "u2": ("e2@x.io", {"a_sync_plan": "pro"}),
        "u1": ("e1@x.io", {"b_sync_plan": "team"}),
    }
    assert failures(emu) == []
    # the emails still wait, and nothing else is sent again
    again = lockgate(proj, "sync", "--all", "--json")
    assert [(r["delivered"], r["changes"]["rejected"]) for r in again] == [(0, 1), (0, 1)]
    # `b_sync` gives u1 a third email: `a_sync`, run first, still holds u2 for e1, which
    # `b_sync` then frees, so `a_sync` follows up and sends u2 with e1
    f.sql("update b_sync set email = 'e9@x.io'")
    done = {
        r["sync"] + (" (follow-up)" if r["follow_up_of"] else ""): r
        for r in lockgate(proj, "sync", "--all", "--json")
    }
    assert list(done) == ["a_sync", "b_sync", "a_sync (follow-up)"]
    assert plans_by_id(emu) == {
        "u2": ("e1@x.io", {"a_sync_plan": "pro"}),
        "u1": ("e9@x.io", {"b_sync_plan": "team"}),
    }
    assert failures(emu) == []
    assert [r["changes"]["to_send"] for r in lockgate(proj, "sync", "--all", "--json")] == [0, 0]


def test_a_run_killed_after_sending_a_held_rows_other_changes_is_completed_by_the_next(
    project_factory: ProjectFactory,
) -> None:
    """`a_sync` holds u2 back for e1 (u1 of `b_sync` has it) and sends its new plan without
    the email, and u3's: SIGKILLed with one answer journaled and the other in flight. The next
    run completes it (u2 still at e2 with the new plan, nobody made or renamed), the one
    after sends nothing, and once `b_sync` frees e1 u2 takes it."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u2", "e2@x.io", "free"), ("u3", "e3@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    syncs = {n: PLAN_SYNC.format(name=n) for n in ("a_sync", "b_sync")}
    proj = f.project = one_at_a_time(f.write(syncs, retries=0))
    lockgate(proj, "sync", "--all", "--json")
    f.sql(
        "update a_sync set plan = 'pro'; update a_sync set email = 'e1@x.io' where user_id = 'u2'"
    )

    def pro() -> int:
        return sum(
            1
            for i in ("u2", "u3")
            if (p := emu.person(id=i)) is not None and p.attributes.get("a_sync_plan") == "pro"
        )

    killed_after_one_answer(proj.root, "a_sync", emu, pro)
    assert len(journaled(proj, "a_sync")) == 1
    # (a run of its own: the command warns of the unconfirmed record on stderr)
    again = run_sync(load_project(proj.root), "a_sync", console=NullConsole())
    assert (again.status, again.changes.rejected) == ("success", 1)
    want = {
        "u2": ("e2@x.io", {"a_sync_plan": "pro"}),
        "u3": ("e3@x.io", {"a_sync_plan": "pro"}),
        "u1": ("e1@x.io", {"b_sync_plan": "gold"}),
    }
    assert plans_by_id(emu) == want
    assert failures(emu) == []
    (still,) = lockgate(proj, "sync", "a_sync", "--json")
    assert (still["delivered"], still["changes"]["rejected"]) == (0, 1)
    f.sql("update b_sync set email = 'e5@x.io'")
    lockgate(proj, "sync", "--all", "--json")
    assert plans_by_id(emu) == {
        **want,
        "u2": ("e1@x.io", {"a_sync_plan": "pro"}),
        "u1": ("e5@x.io", {"b_sync_plan": "gold"}),
    }
    assert failures(emu) == []


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
    assert plans_by_id(emu) == {
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
    assert (named["changes"]["to_send"], named["changes"]["rejected"]) == (1, 1)
    (alone,) = lockgate(proj, "sync", "a_sync", "--json")
    # u2's new plan goes now, without the email it waits for
    assert (plan["changes"]["to_send"], plan["changes"]["rejected"]) == (1, 1)
    assert (alone["delivered"], alone["changes"]["rejected"]) == (1, 1)
    assert "key `u1` of people sync `b_sync`" in alone["rejected_rows"][0]["reason"]
    assert "other changes are sent" in alone["rejected_rows"][0]["reason"]
    assert plans_by_id(emu) == {
        "u2": ("e0@x.io", {"a_sync_plan": "pro"}),
        "u1": ("e1@x.io", {"b_sync_plan": "gold"}),
    }
    assert lockgate(proj, "sync", "b_sync", "--json")[0]["delivered"] == 1
    assert lockgate(proj, "sync", "a_sync", "--json")[0]["delivered"] == 1
    assert plans_by_id(emu) == {
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
    assert plans_by_id(emu)["u3"] == ("e1@x.io", {"c_sync_plan": "pro"})
    assert plans_by_id(emu)["u1"][0] == "e9@x.io"


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

GRAPH_SYNC = PLAN_SYNC.replace("{{id: user_id", "{{user_id: user_id")


def test_the_same_through_the_identity_graph(project_factory: ProjectFactory) -> None:
    """Both syncs keyed by the identity graph (u1 a profile of `b_sync`'s rows, u2 of
    `a_sync`'s): the graph gives e1 to u2 and e5 to u1, but u1 is `b_sync`'s to move, so
    `a_sync` holds u2 back until it has, and its follow-up run sends u2, as without the
    graph."""
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
    assert [p["changes"]["rejected"] for p in plans.values()] == [1, 0, 0]
    assert plans["a_sync (follow-up)"]["changes"]["to_send"] == 1
    assert_plans_match(plans, runs, sent)
    assert "key `u1` of people sync `b_sync`" in runs["a_sync"]["rejected_rows"][0]["reason"]
    assert plans_by_id(emu) == {
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
    mirror = PLAN_SYNC.format(name="b_sync") + "mode: mirror\n"
    proj = f.project = f.write({"a_sync": PLAN_SYNC.format(name="a_sync"), "b_sync": mirror})
    lockgate(proj, "sync", "--all", "--json")
    u1 = emu.person(id="u1").cio_id  # type: ignore[union-attr]
    if let_go == "null":
        f.sql("update b_sync set email = null")
    else:
        f.sql("delete from b_sync where user_id = 'u1'")
    (gone,) = lockgate(proj, "sync", "b_sync", "--json", "--force")
    assert gone["status"] == "success"
    kept_u1 = {"b_sync_plan": "gold"} if let_go == "null" else {}
    assert plans_by_id(emu)["u1"] == ("e1@x.io", kept_u1)
    if taker == "changed":
        f.sql("update a_sync set email = 'E1@x.io', plan = 'pro' where user_id = 'u2'")
    else:
        f.sql("insert into a_sync values ('u2', 'E1@x.io', 'pro')")

    plan = lockgate(proj, "plan", "a_sync", "--json")
    (run,) = lockgate(proj, "sync", "a_sync", "--json")
    # a u2 already delivered gets its new plan now, without the email
    partial = 1 if taker == "changed" else 0
    assert (plan["changes"]["to_send"], plan["changes"]["rejected"]) == (partial, 1)
    assert (run["delivered"], run["changes"]["rejected"]) == (partial, 1)
    ((key, reason),) = [(r["key"], r["reason"]) for r in run["rejected_rows"]]
    assert key == "u2"
    assert "`E1@x.io` is the email key `u1` of people sync `b_sync` keeps" in reason, reason
    # nobody renamed, nothing dropped: u1 keeps its profile and e1, u2 its email
    assert emu.person(id="u1").cio_id == u1  # type: ignore[union-attr]
    want_u2 = {"u2": ("e0@x.io", {"a_sync_plan": "pro"})} if taker == "changed" else {}
    assert plans_by_id(emu) == {
        **want_u2,
        "u1": ("e1@x.io", kept_u1),
        "u3": ("e3@x.io", {"a_sync_plan": "free"}),
        "u4": ("e4@x.io", {"b_sync_plan": "gold"}),
    }
    assert failures(emu) == []

    # `b_sync` gives u1 another email (u1's row back, for the one that left): `sync --all`
    # runs it after `a_sync`, which holds u2 back, then follows up and sends u2
    if let_go == "null":
        f.sql("update b_sync set email = 'e5@x.io'")
    else:
        f.sql("insert into b_sync values ('u1', 'e5@x.io', 'gold')")
    plans, runs, sent = plan_then_sync(f)
    assert list(plans) == ["a_sync", "b_sync", "a_sync (follow-up)"]
    assert_plans_match(plans, runs, sent)
    assert (runs["a_sync"]["changes"]["rejected"], runs["b_sync"]["delivered"]) == (1, 1)
    follow_up = runs["a_sync (follow-up)"]
    assert (follow_up["delivered"], follow_up["changes"]["rejected"]) == (1, 0)
    assert plans_by_id(emu) == {
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
    assert plans_by_id(emu) == {
        "u1": ("e1@x.io", {"a_sync_plan": "gold"}),
        "u3": ("e3@x.io", {"b_sync_plan": "free"}),
    }


def test_an_email_whose_holder_starts_keeping_it_runs_no_follow_up(
    project_factory: ProjectFactory,
) -> None:
    """u2 of `a_sync` takes e1 while `b_sync`, which runs after it, lets u1's email go null:
    `a_sync` holds u2 back for u1, and after `b_sync` u1 keeps e1 in Customer.io (nothing is
    sent for a null under `on_null: skip`), so nothing is freed: no follow-up runs (it would
    only hold u2 again), and the next command holds u2 back for the email `b_sync` keeps."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u2", "e0@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("update a_sync set email = 'e1@x.io'; update b_sync set email = null")
    plans, runs, sent = plan_then_sync(f)
    assert list(plans) == list(runs) == ["a_sync", "b_sync"]
    assert_plans_match(plans, runs, sent)
    assert runs["a_sync"]["changes"]["rejected"] == 1
    plans, runs, sent = plan_then_sync(f)
    assert list(runs) == ["a_sync", "b_sync"]
    ((reason,),) = [[r["reason"] for r in runs["a_sync"]["rejected_rows"]]]
    assert "key `u1` of people sync `b_sync` keeps" in reason, reason
    assert plans_by_id(emu) == {
        "u2": ("e0@x.io", {"a_sync_plan": "free"}),
        "u1": ("e1@x.io", {"b_sync_plan": "gold"}),
    }
    assert failures(emu) == []


def test_a_relationship_of_a_person_a_follow_up_creates_goes_out_in_the_same_command(
    project_factory: ProjectFactory,
) -> None:
    """New u2 of `a_sync` takes e1, which `b_sync` (run after it) moves u1 off, and joins Acme:
    the follow-up creates u2 before the relationships sync runs, so one `sync --all` sends
    u2 and the membership, as its plan says."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u3", "e3@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    f.sql(
        "create table companies as select 'acme' as company_id, 'Acme' as name, 'pro' as plan, "
        "25 as seats; "
        "create table members as select 'u3' as user_id, 'acme' as company_id, 'admin' as role"
    )
    f.project = f.write(
        {
            "a_sync": PLAN_SYNC.format(name="a_sync"),
            "b_sync": PLAN_SYNC.format(name="b_sync"),
            "companies": COMPANIES,
            "memberships": MEMBERSHIPS,
        }
    )
    lockgate(f.project, "sync", "--all", "--json")
    f.sql(
        "insert into a_sync values ('u2', 'E1@x.io', 'pro'); "
        "update b_sync set email = 'e5@x.io'; "
        "insert into members values ('u2', 'acme', 'member')"
    )
    plans, runs, sent = plan_then_sync(f)
    assert list(runs) == ["companies", "a_sync", "b_sync", "a_sync (follow-up)", "memberships"]
    assert_plans_match(plans, runs, sent)
    assert runs["memberships"]["delivered"] == 1
    by_cio = {p.cio_id: p.id for p in emu.people()}
    assert sorted((by_cio[r.person], r.attributes.get("role")) for r in emu.relationships()) == [
        ("u2", "member"),
        ("u3", "admin"),
    ]
    assert plans_by_id(emu)["u2"] == ("E1@x.io", {"a_sync_plan": "pro"})


def test_an_email_released_twice_is_taken_without_the_other_syncs_older_record(
    project_factory: ProjectFactory,
) -> None:
    """u1 is a person of both syncs with e1. `b_sync`'s row leaves (its record stays: `upsert`
    sends nothing for it), then `a_sync`'s; a new u2 of `a_sync` takes e1, released from u1
    first. Then u2 moves to e5 and a new u3 takes e1: one `sync --all` gives it to u3, as its
    plan says. `b_sync`'s record says u1 has e1 as it last delivered it, but that is older
    than the release `a_sync` delivered since, and holds nothing back."""
    f, emu = project_factory, project_factory.emulator
    rows(f, "a_sync", ("u1", "e1@x.io", "free"))
    rows(f, "b_sync", ("u1", "e1@x.io", "gold"))
    proj = project(f, "a_sync", "b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("delete from b_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("delete from a_sync")
    lockgate(proj, "sync", "--all", "--json")
    f.sql("insert into a_sync values ('u2', 'e1@x.io', 'pro')")
    lockgate(proj, "sync", "--all", "--json")
    assert plans_by_id(emu) == {
        "u1": (None, {"a_sync_plan": "free", "b_sync_plan": "gold"}),
        "u2": ("e1@x.io", {"a_sync_plan": "pro"}),
    }
    f.sql(
        "update a_sync set email = 'e5@x.io'; insert into a_sync values ('u3', 'e1@x.io', 'team')"
    )
    plans, runs, sent = plan_then_sync(f)
    assert list(runs) == ["a_sync", "b_sync"]
    assert_plans_match(plans, runs, sent)
    assert runs["a_sync"]["changes"]["rejected"] == 0, runs["a_sync"]["rejected_rows"]
    assert plans_by_id(emu) == {
        "u1": (None, {"a_sync_plan": "free", "b_sync_plan": "gold"}),
        "u2": ("e5@x.io", {"a_sync_plan": "pro"}),
        "u3": ("e1@x.io", {"a_sync_plan": "team"}),
    }
    assert failures(emu) == []
