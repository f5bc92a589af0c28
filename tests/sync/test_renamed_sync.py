"""A sync renamed in its file: the `sync renamed?` guardrail stops its first run before
anything is sent again, `lockgate state rename` carries the old state over (nothing is sent
twice, the runs and history go on under the new name), `lockgate state forget` drops the state
of a sync taken out of the project, and `lockgate state list` shows what the state holds."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from lockgate.cli import cli

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: {name}
source: warehouse
model: {{table: users}}
kind: people
primary_key: id
identify_by: {{id: id, email: email}}
attributes: [plan]
"""

EVENTS = """
name: {name}
source: warehouse
model: {{table: clicks}}
kind: events
identify_by: {{id: user_id}}
event: {{name: event, timestamp: at, id: click_id}}
properties: [page]
"""

USERS = """
create table users as select * from (values
  ('1', 'ada@x.io', 'pro'), ('2', 'bob@x.io', 'free'), ('3', 'cy@x.io', 'pro')) t(id, email, plan);
create table clicks as select
  'c' || i as click_id, ((i % 3) + 1)::varchar as user_id, 'Clicked' as event,
  now() - interval 1 hour as at, '/p' || i as page
from range(12) r(i);
"""


def lockgate(project: Any, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--project", str(project.root)])


def renamed(project_factory: ProjectFactory, profile: str, events: str) -> Any:
    return project_factory.write(
        {"profile": PROFILE.format(name=profile), "events": EVENTS.format(name=events)}
    )


def synced_once(project_factory: ProjectFactory) -> Any:
    """The users and clicks synced by `customer_profile` and `product_events`."""
    project_factory.sql(USERS)
    project = renamed(project_factory, "customer_profile", "product_events")
    assert lockgate(project, "sync", "--all").exit_code == 0
    return project


def test_a_renamed_sync_stops_its_first_run_and_goes_on_once_its_state_is_carried_over(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    synced_once(project_factory)
    assert len(emu.people()) == 3 and len(emu.events()) == 12
    requests = len(emu.request_log())

    # renamed in their files alone: each first run stops, naming the old sync and the command
    project = renamed(project_factory, "profiles", "app_events")
    for name, old in (("profiles", "customer_profile"), ("app_events", "product_events")):
        planned = lockgate(project, "plan", name, "--json")
        (guardrail,) = [g for g in json.loads(planned.output)["guardrails"]
                        if g["name"] == "sync renamed?"]  # fmt: skip
        assert guardrail["breached"] and f"`{old}`" in guardrail["actual"], guardrail
        stopped = lockgate(project, "sync", name)
        assert stopped.exit_code != 0
        said = " ".join(str(stopped.exception).split())
        assert f"lockgate state rename {old} {name}" in said, said
    assert len(emu.request_log()) == requests  # nothing was sent

    validated = json.loads(lockgate(project, "validate", "--json").output)
    (finding,) = [f for f in validated["contract"] if f["check"] == "sync not in the project"]
    assert "`customer_profile`, `product_events`" in finding["message"], finding
    assert "lockgate state rename OLD NEW" in finding["message"]

    listed = json.loads(lockgate(project, "state", "list", "--json").output)
    assert {h["sync"]: (h["in_project"], h["runs"], h["committed"]) for h in listed} == {
        "customer_profile": (False, 1, True),
        "product_events": (False, 1, True),
        "profiles": (True, 1, False),  # the runs the guardrail stopped
        "app_events": (True, 1, False),
    }
    shown = " ".join(lockgate(project, "state", "list").output.split())
    assert "not in the project: `customer_profile`, `product_events`" in shown, shown

    carried = lockgate(project, "state", "rename", "customer_profile", "profiles")
    assert carried.exit_code == 0, carried.output
    said = " ".join(carried.output.split())
    assert "the state of `customer_profile` is now `profiles`'s (1 run, 3 records delivered)" in (
        said
    )
    carried = lockgate(project, "state", "rename", "product_events", "app_events", "--json")
    assert json.loads(carried.output) == {
        "old": "product_events",
        "new": "app_events",
        "runs": 1,
        "records": 0,
        "events": 12,
    }
    assert lockgate(project, "sync", "--all").exit_code == 0
    assert len(emu.request_log()) == requests  # nothing sent again: no person, no event

    # a change goes out as a change; a new event once
    project_factory.sql(
        "update users set plan = 'free' where id = '3';"
        "insert into clicks values ('c99', '1', 'Clicked', now(), '/new')"
    )
    again = json.loads(lockgate(project, "sync", "--all", "--json").output)
    assert {r["sync"]: r["delivered"] for r in again} == {"profiles": 1, "app_events": 1}
    assert len(emu.events()) == 13 and emu.person(id="3").attributes["plan"] == "free"

    # the runs and the history go on under the new names
    runs = json.loads(lockgate(project, "runs", "--sync", "app_events", "--json").output)
    assert [r["status"] for r in runs] == ["success", "success", "failed", "success"]
    history = lockgate(project, "history", "--person", "3")
    assert "profiles" in history.output and "customer_profile" not in history.output


def test_a_rename_is_refused_when_it_would_lose_a_state(
    project_factory: ProjectFactory,
) -> None:
    synced_once(project_factory)
    project = renamed(project_factory, "profiles", "app_events")

    cases = [
        (("state", "rename", "nothing_here", "profiles"), "holds nothing of a sync named"),
        (("state", "rename", "customer_profile", "nope"), "no sync named `nope`"),
    ]
    for args, expected in cases:
        result = lockgate(project, *args)
        assert result.exit_code != 0 and expected in str(result.exception), (args, result)

    # `profiles` run as a new sync (forced past the guardrail): it has a state of its own now
    assert lockgate(project, "sync", "profiles", "--force").exit_code == 0
    taken = lockgate(project, "state", "rename", "customer_profile", "profiles")
    assert taken.exit_code != 0
    said = " ".join(str(taken.exception).split())
    assert "`profiles` already has a state of its own (1 run, 3 records delivered)" in said
    assert "lockgate state forget profiles" in said

    # the old sync still in the project is refused too: its next run would start over
    project = renamed(project_factory, "customer_profile", "app_events")
    kept = lockgate(project, "state", "rename", "customer_profile", "app_events")
    assert kept.exit_code != 0 and "`customer_profile` is still in the project" in str(
        kept.exception
    )


def test_a_sync_taken_out_is_forgotten_and_a_new_one_of_its_kind_then_runs(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    synced_once(project_factory)
    project = renamed(project_factory, "profiles", "product_events")
    refused = lockgate(project, "state", "forget", "product_events", "--yes")
    assert refused.exit_code != 0 and "still in the project" in str(refused.exception)
    forgot = lockgate(project, "state", "forget", "customer_profile", "--yes")
    assert forgot.exit_code == 0, forgot.output
    assert "forgot sync `customer_profile` (1 run, 3 records delivered)" in forgot.output
    listed = json.loads(lockgate(project, "state", "list", "--json").output)
    assert [h["sync"] for h in listed] == ["product_events"]
    # its runs are gone with it: the name is no sync's now
    runs = lockgate(project, "runs", "--sync", "customer_profile")
    assert "no sync named `customer_profile`" in str(runs.exception)

    # a new people sync of the same keys is no rename now: it runs as a first run
    before = len(emu.request_log())
    ran = json.loads(lockgate(project, "sync", "profiles", "--json").output)
    assert ran[0]["status"] == "success" and ran[0]["delivered"] == 3
    assert len(emu.request_log()) > before and len(emu.people()) == 3


def test_a_renamed_sync_with_nothing_to_send_now_is_stopped_too(
    project_factory: ProjectFactory,
) -> None:
    """Nothing to send on the renamed sync's first run (its model empty for now): the run
    would still commit a fresh state under the new name, and what the old one delivered would
    count as never sent; it stops as well, and says so."""
    project_factory.sql(USERS)
    project = renamed(project_factory, "customer_profile", "product_events")
    assert lockgate(project, "sync", "customer_profile").exit_code == 0
    project_factory.sql("delete from users")
    project = renamed(project_factory, "profiles", "product_events")
    stopped = lockgate(project, "sync", "profiles")
    said = " ".join(str(stopped.exception).split())
    assert stopped.exit_code != 0 and "nothing to send now" in said, said
    assert "lockgate state rename customer_profile profiles" in said
