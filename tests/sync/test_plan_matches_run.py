"""`lockgate plan` shows exactly what the next `lockgate sync` sends, and never changes state;
a guardrail that stops a run leaves the state as it was."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from click.testing import CliRunner
from tests.sync import test_objects

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.errors import ContractError
from lockgate.sync.run import Session, plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {sql: "select * from users"}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes:
  plan: plan
  signed_up_at: {column: signed_up_at, type: timestamp}
"""

USERS = """
create or replace table users as
select i as user_id, case when i % 2 = 0 then 'pro' else 'free' end as plan,
       timestamptz '2026-01-01 00:00:00+00' + to_days(i) as signed_up_at
from range(1, 11) t(i);
"""


def sent_ops(emu: Emulator, since: int = 0) -> list[dict[str, Any]]:
    """Every operation the emulator received in `/api/v2/batch` requests after ``since``."""
    ops: list[dict[str, Any]] = []
    for r in emu.request_log()[since:]:
        if r.path == "/api/v2/batch" and isinstance(r.body, dict):
            ops.extend(r.body.get("batch", []))
    return ops


def test_a_full_resync_plan_does_not_forget_what_was_delivered(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())

    plan = plan_sync(project, "profile", console=NullConsole(), full_resync=True)
    assert plan.changes.new == 10
    # the plan sent nothing and changed nothing: the next ordinary run has nothing to send
    before = len(emu.request_log())
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.changes.new, report.changes.unchanged) == (0, 10)
    assert sent_ops(emu, before) == []


@pytest.mark.parametrize("shared", [False, True], ids=["own-state", "one-command"])
def test_a_full_resync_refused_by_a_guardrail_keeps_the_snapshot(
    project_factory: ProjectFactory, shared: bool
) -> None:
    """Also when the runs are the syncs of one command (`one-command`): they share one open
    state store (a `Session`), on which the refused full resync leaves an empty stand-in for
    its snapshot; the next run must still diff against the real snapshot."""
    emu = project_factory.emulator
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())

    project_factory.sql("alter table users alter signed_up_at type varchar")
    before = len(emu.request_log())
    with Session() as session:
        given = session if shared else None
        with pytest.raises(ContractError, match="type drift"):
            run_sync(project, "profile", console=NullConsole(), full_resync=True, session=given)
        assert sent_ops(emu, before) == []

        # the model is fixed back: nothing changed since the last committed run, nothing is sent
        project_factory.sql("alter table users alter signed_up_at type timestamptz")
        report = run_sync(project, "profile", console=NullConsole(), session=given)
        assert (report.changes.new, report.changes.unchanged) == (0, 10)
        assert sent_ops(emu, before) == []
        project_factory.sql("update users set plan = 'team' where user_id = 3")
        changed = run_sync(project, "profile", console=NullConsole(), session=given)
        assert (changed.changes.changed, changed.delivered) == (1, 1)
    assert [op["identifiers"] for op in sent_ops(emu, before)] == [{"id": "3"}]
    # the session closed the store: another command can open the project's state
    assert run_sync(project, "profile", console=NullConsole()).changes.unchanged == 10


COMPANIES = """
name: companies
source: warehouse
model: {table: companies}
kind: objects
object_type_id: "1"
primary_key: company_id
mode: mirror
delete_removed: true
attributes: {name: name}
"""

# the people and memberships syncs of tests/sync/test_objects.py, memberships without a role
PEOPLE = test_objects.PEOPLE
MEMBERSHIPS = test_objects.MEMBERSHIPS.replace("relationship_attributes: {role: role}\n", "")
assert "role" not in MEMBERSHIPS

B2B = """
create or replace table companies as
select 'c' || i as company_id, 'Company ' || i as name from range(1, 11) t(i);
create or replace table users as select i as user_id, 'U' || i as first_name from range(1, 11) t(i);
create or replace table members as
select i as user_id, 'c' || i as company_id from range(1, 11) t(i);
"""


@pytest.mark.parametrize("sync", ["companies", "memberships"])
def test_max_removed_stops_a_mirror_of_objects_or_relationships(
    project_factory: ProjectFactory, sync: str
) -> None:
    emu = project_factory.emulator
    project_factory.sql(B2B)
    rails = "guardrails: {max_removed: 20%}\n"
    project = project_factory.write(
        {"companies": COMPANIES + rails, "people": PEOPLE, "memberships": MEMBERSHIPS + rails}
    )
    for name in ("companies", "people", "memberships"):
        run_sync(project, name, console=NullConsole())
    relationships = len(emu.relationships())

    # a broken join: most of the model is gone
    table = {"companies": "companies", "memberships": "members"}[sync]
    project_factory.sql(f"delete from {table} where company_id <> 'c1' and company_id <> 'c2'")
    plan = plan_sync(project, sync, console=NullConsole())
    (guard,) = [g for g in plan.guards if g.name == "max_removed"]
    noun = {"companies": "objects", "memberships": "relationships"}[sync]
    assert guard.breached and guard.actual == f"8 of 10 {noun} (80.0%)"
    before = len(emu.request_log())
    with pytest.raises(ContractError) as caught:
        run_sync(project, sync, console=NullConsole())
    assert sent_ops(emu, before) == []
    assert len(emu.objects()) == 10 and len(emu.relationships()) == relationships
    message = str(caught.value)
    assert f"sync `{sync}` stopped before sending anything: max_removed is 8 of 10" in message
    assert f"lockgate sync {sync} --force" in message

    forced = run_sync(project, sync, console=NullConsole(), force=True)
    assert forced.status == "success" and forced.changes.removed_sent == 8


CARTS = """
name: carts
source: warehouse
model: {table: carts}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {cart_status: cart_status}
on_change:
  - {attribute: cart_status, to: inactive, event: cart_abandoned}
guardrails: {max_events: 2}
"""


def test_max_events_stops_a_flood_of_state_change_events(project_factory: ProjectFactory) -> None:
    emu = project_factory.emulator
    project_factory.sql(
        "create or replace table carts as "
        "select i as user_id, 'open' as cart_status from range(1, 11) t(i)"
    )
    project = project_factory.write({"carts": CARTS})
    run_sync(project, "carts", console=NullConsole())

    # a bad deploy marks every cart inactive: ten journeys would be triggered at once
    project_factory.sql("update carts set cart_status = 'inactive'")
    plan = plan_sync(project, "carts", console=NullConsole())
    (guard,) = [g for g in plan.guards if g.name == "max_events"]
    assert guard.breached and guard.actual == "10"
    before = len(emu.request_log())
    with pytest.raises(ContractError) as caught:
        run_sync(project, "carts", console=NullConsole())
    assert sent_ops(emu, before) == []
    message = str(caught.value)
    assert "sync `carts` stopped before sending anything: max_events is 10" in message
    assert ": cart_abandoned" in message and "--force" in message

    forced = run_sync(project, "carts", console=NullConsole(), force=True)
    assert forced.status == "success"
    assert sum(1 for e in emu.events() if e.name == "cart_abandoned") == 10


EMAILS = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id, email: email}
attributes: {plan: plan}
"""

#: what the rows do to their emails after the first run, each step but the last synced: u1
#: gives its email up (null: the sync sends none, Customer.io keeps it) and new user u3 signs
#: up with it, in the same run or a later one; or u1 and u2 swap
EMAIL_MOVES = {
    "given-up": (
        "update users set email = null where user_id = 'u1';"
        "insert into users values ('u3', 'a@x.com', 'trial')",
    ),
    "kept": (
        "update users set email = null where user_id = 'u1'",
        "insert into users values ('u3', 'a@x.com', 'trial')",
    ),
    "swapped": (
        "update users set plan = 'pro', "
        "email = case user_id when 'u1' then 'b@x.com' else 'a@x.com' end",
    ),
}


def cli_output(project: Any, *args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--project", str(project.root)])
    assert result.exit_code == 0, result.output
    return result.output


def printed_payloads(output: str) -> dict[str, list[dict[str, Any]]]:
    """The JSON payloads a human `plan` prints, by the heading above each (`sample payload`,
    `email release`)."""
    found: dict[str, list[dict[str, Any]]] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line != "{":
            continue
        end = lines.index("}", i)
        heading = lines[i - 1].split(" (", 1)[0]
        found.setdefault(heading, []).append(json.loads("\n".join(lines[i : end + 1])))
    return found


@pytest.mark.parametrize(
    ("move", "extra"),
    [(move, ()) for move in EMAIL_MOVES] + [("swapped", ("--only", "u1"))],
    ids=[*EMAIL_MOVES, "swapped-only"],
)
def test_a_plan_shows_the_email_releases_its_run_sends_first(
    project_factory: ProjectFactory, move: str, extra: tuple[str, ...]
) -> None:
    """A row takes an email another person gives up: the run releases it from that person
    first (an identify with an empty email), else Customer.io would drop the taker's update
    (or give its id to the giver). The plan counts those releases and shows them as they are
    sent, in the human output and in `--json`; also for a run of named records (`--only u1`
    of a swap sends u2 too)."""
    emu = project_factory.emulator
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'free'), "
        "('u2', 'b@x.com', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"profile": EMAILS})
    for step in EMAIL_MOVES[move]:
        run_sync(project, "profile", console=NullConsole())
        project_factory.sql(step)

    planned = json.loads(
        cli_output(project, "plan", "profile", "--json", "--samples", "10", *extra)
    )
    shown = cli_output(project, "plan", "profile", "--samples", "10", *extra)
    before = len(emu.request_log())
    [ran] = json.loads(cli_output(project, "sync", "profile", "--json", *extra))
    assert ran["status"] == "success"
    sent = sent_ops(emu, before)
    releases = [op for op in sent if op["attributes"].get("email") == ""]
    assert releases == [
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"id": "u1"},
            "attributes": {"_update": True, "email": ""},
        }
    ]
    records = [op for op in sent if op not in releases]

    assert planned["changes"]["email_releases"] == len(releases)
    # the plan's note on the emails nobody checks counts the people its run's note does
    tense = re.compile(r"will not be|were not|was not")
    assert tense.sub("not", planned["email_check"]) == tense.sub("not", ran["email_check"])
    assert planned["email_check"]
    assert ran["changes"]["email_releases"] == len(releases)
    assert [s["payload"] for s in planned["email_release_samples"]] == releases
    assert [s["payload"] for s in planned["samples"]] == sorted(
        records, key=lambda op: op["identifiers"]["id"]
    )

    assert re.search(rf"email releases, sent first\s*│\s*{len(releases)}\s*│", shown), shown
    printed = printed_payloads(shown)
    assert printed["email release"] == releases
    assert printed["sample payload"] == [s["payload"] for s in planned["samples"]]
