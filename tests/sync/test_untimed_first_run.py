"""An events sync without `event.timestamp` sends every event stamped with the time of
sending, so `backfill.max_age` cannot hold old ones back. Its first run would send every
event the model holds (its whole history) as happening now, each triggering its campaigns:
that run stops unless `backfill.first_run` says `skip` (history, never sent) or `send`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from tests.sync.helpers import ACTIVITY

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.errors import ContractError, LockgateError
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

UNTIMED = ACTIVITY.replace("  timestamp: occurred_at\n", "")


def history(factory: ProjectFactory) -> None:
    """Three events a model without a time column has held for a long time."""
    factory.sql(
        """
        create or replace table events as select * from (values
          ('o1', 1, 'Order Shipped', 'a'), ('o2', 2, 'Order Shipped', 'b'),
          ('o3', 3, 'Order Shipped', 'c')
        ) t(event_id, user_id, event_name, feature)
        """
    )


def add_news(factory: ProjectFactory) -> None:
    factory.sql("insert into events values ('o4', 1, 'Order Shipped', 'd')")


def run(project: Any, **kwargs: Any) -> Any:
    return run_sync(project, "activity", console=NullConsole(), **kwargs)


def sent(factory: ProjectFactory) -> list[str]:
    return sorted(e.data["feature"] for e in factory.emulator.events())


def test_the_first_run_stops_before_sending_the_models_history_as_news(
    project_factory: ProjectFactory,
) -> None:
    history(project_factory)
    project = project_factory.write({"activity": UNTIMED})
    plan = plan_sync(project, "activity", console=NullConsole())
    [row] = [g for g in plan.guards if g.name == "first run without timestamps"]
    assert row.breached and row.actual == "3 events with no timestamp, `backfill.first_run` not set"

    with pytest.raises(ContractError) as stopped:
        run(project)
    message = str(stopped.value)
    assert "stopped before sending anything: first run without timestamps" in message
    assert "would send all 3 events the model holds as happening now" in message
    assert "o1: Order Shipped" in message  # sample rows
    assert "backfill: {first_run: skip}" in (stopped.value.hint or "")
    assert project_factory.emulator.events() == []
    # nothing was recorded: the next run is still a first run
    with pytest.raises(ContractError):
        run(project)
    assert project_factory.emulator.events() == []


def test_skip_records_the_history_and_sends_only_what_appears_later(
    project_factory: ProjectFactory,
) -> None:
    history(project_factory)
    skip = UNTIMED + "backfill: {first_run: skip}\n"
    project = project_factory.write({"activity": skip})
    plan = plan_sync(project, "activity", console=NullConsole())
    assert (plan.changes.to_send, plan.changes.history_skipped) == (0, 3)

    first = run(project)
    assert (first.status, first.delivered, first.changes.history_skipped) == ("success", 0, 3)
    assert sent(project_factory) == []

    add_news(project_factory)
    second = run(project)
    assert (second.delivered, second.changes.already_delivered) == (1, 3)
    assert sent(project_factory) == ["d"]
    [row] = [g for g in second.guards if g.name == "first run without timestamps"]
    assert not row.breached and row.actual.startswith("not a first run")
    assert run(project).changes.to_send == 0
    assert sent(project_factory) == ["d"]


def test_a_plan_of_skip_records_nothing(project_factory: ProjectFactory) -> None:
    history(project_factory)
    project = project_factory.write({"activity": UNTIMED + "backfill: {first_run: skip}\n"})
    plan_sync(project, "activity", console=NullConsole())
    # had the plan recorded the history, turning to `send` would send nothing
    project = project_factory.write({"activity": UNTIMED + "backfill: {first_run: send}\n"})
    assert run(project).delivered == 3


@pytest.mark.parametrize("how", ["config", "force"])
def test_send_or_force_sends_the_history_once(project_factory: ProjectFactory, how: str) -> None:
    history(project_factory)
    body = UNTIMED + ("backfill: {first_run: send}\n" if how == "config" else "")
    project = project_factory.write({"activity": body})
    assert run(project, force=how == "force").delivered == 3
    add_news(project_factory)
    # a later run is no first run: the new event goes, nothing stops it
    assert run(project).delivered == 1
    assert sent(project_factory) == ["a", "b", "c", "d"]


def test_a_first_run_of_an_empty_model_stops_nothing_and_later_events_are_news(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        "create or replace table events (event_id varchar, user_id int, event_name varchar, "
        "feature varchar)"
    )
    project = project_factory.write({"activity": UNTIMED})
    assert run(project).status == "success"
    add_news(project_factory)
    assert run(project).delivered == 1


def test_first_run_is_refused_on_a_sync_with_a_timestamp(project_factory: ProjectFactory) -> None:
    history(project_factory)
    with pytest.raises(LockgateError, match=r"`backfill.first_run` is for events syncs without"):
        project_factory.write({"activity": ACTIVITY + "backfill: {first_run: skip}\n"})


def lockgate(project: Any, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--project", str(project.root)])


def test_plan_exit_code_and_report(project_factory: ProjectFactory) -> None:
    history(project_factory)
    project = project_factory.write({"activity": UNTIMED})
    stopped = lockgate(project, "plan", "activity", "--detailed-exitcode")
    assert stopped.exit_code == 3, stopped.output
    assert "first run without timestamps" in stopped.output
    refused = lockgate(project, "sync", "activity")
    assert refused.exit_code == 1
    assert "backfill: {first_run: skip}" in refused.exception.hint

    project = project_factory.write({"activity": UNTIMED + "backfill: {first_run: skip}\n"})
    done = lockgate(project, "sync", "activity")
    assert done.exit_code == 0, done.output
    assert "history recorded, not sent (first run, no timestamps)" in done.output
    shown = lockgate(project, "runs", "show", "--json")
    assert json.loads(shown.output)["counts"]["changes"]["history_skipped"] == 3


def test_older_send_already_says_to_send_old_events(project_factory: ProjectFactory) -> None:
    history(project_factory)
    project = project_factory.write({"activity": UNTIMED + "backfill: {older: send}\n"})
    report = run(project)
    assert report.delivered == 3
    [row] = [g for g in report.guards if g.name == "first run without timestamps"]
    assert row.actual == "3 events sent as happening now (`older: send`)"


def test_first_run_skip_wins_over_older_send(project_factory: ProjectFactory) -> None:
    history(project_factory)
    both = UNTIMED + "backfill: {older: send, first_run: skip}\n"
    project = project_factory.write({"activity": both})
    assert run(project).changes.history_skipped == 3
    assert sent(project_factory) == []


def test_a_first_run_of_one_person_leaves_the_whole_first_run_to_come(
    project_factory: ProjectFactory,
) -> None:
    """`sync --only ME` then `sync`: the named person's history is recorded, and the whole
    run after it is still the first, so everyone else's history is recorded too, not sent."""
    history(project_factory)
    project = project_factory.write({"activity": UNTIMED + "backfill: {first_run: skip}\n"})
    named = run(project, only=("1",))
    assert (named.delivered, named.changes.history_skipped) == (0, 1)
    whole = run(project)
    assert (whole.delivered, whole.changes.history_skipped) == (0, 2)
    assert sent(project_factory) == []
    add_news(project_factory)
    assert run(project).delivered == 1
    assert sent(project_factory) == ["d"]


def test_forcing_one_persons_first_run_does_not_force_everyones(
    project_factory: ProjectFactory,
) -> None:
    history(project_factory)
    project = project_factory.write({"activity": UNTIMED})
    assert run(project, only=("1",), force=True).delivered == 1
    with pytest.raises(ContractError, match="would send all 2 events the model holds"):
        run(project)
    assert sent(project_factory) == ["a"]


def test_validate_warns_of_the_stop_before_the_first_run(project_factory: ProjectFactory) -> None:
    history(project_factory)
    project = project_factory.write({"activity": UNTIMED})
    checked = lockgate(project, "validate", "--json")
    assert checked.exit_code == 0, checked.output  # a warning, not an error
    findings = json.loads(checked.output)["contract"]
    [found] = [f for f in findings if f["check"] == "untimed first run"]
    assert found["level"] == "warning" and "backfill: {first_run: skip}" in found["message"]
    assert found["files"] == ["syncs/activity.yml"]
    # said, and done: once chosen (or once a run committed), there is nothing to warn of
    for body in (UNTIMED + "backfill: {first_run: skip}\n", UNTIMED + "backfill: {older: send}\n"):
        project = project_factory.write({"activity": body})
        checks = json.loads(lockgate(project, "validate", "--json").output)["contract"]
        assert not [f for f in checks if f["check"] == "untimed first run"]
    project = project_factory.write({"activity": UNTIMED})
    run(project, force=True)
    checks = json.loads(lockgate(project, "validate", "--json").output)["contract"]
    assert not [f for f in checks if f["check"] == "untimed first run"]


def test_a_rename_sends_the_history_under_the_backfill_name(
    project_factory: ProjectFactory,
) -> None:
    """`older: {rename: ...}` says how old events go: on an untimed sync's first run, the
    model's history goes under that name (no campaign triggered by the real name starts),
    and the events that appear later under their own."""
    history(project_factory)
    renamed = UNTIMED + 'backfill: {older: {rename: "{name} (backfill)"}}\n'
    project = project_factory.write({"activity": renamed})
    first = run(project)
    assert (first.delivered, first.changes.backfill_sent) == (3, 3)
    [row] = [g for g in first.guards if g.name == "first run without timestamps"]
    assert not row.breached
    add_news(project_factory)
    assert run(project).delivered == 1
    names = sorted((e.data["feature"], e.name) for e in project_factory.emulator.events())
    assert names == [
        ("a", "Order Shipped (backfill)"),
        ("b", "Order Shipped (backfill)"),
        ("c", "Order Shipped (backfill)"),
        ("d", "Order Shipped"),
    ]


def test_a_new_workspace_is_a_first_run_and_stays_one_until_a_run_commits(
    project_factory: ProjectFactory,
) -> None:
    """`--new-workspace` forgets the ledger: every event the model holds would reach the new
    workspace as happening now. It counts as a first run: stopped, and (the ledger already
    forgotten) the plain runs after it are stopped too, until one is let through."""
    history(project_factory)
    project = project_factory.write({"activity": UNTIMED})
    emu = project_factory.emulator
    assert run(project, force=True).delivered == 3
    add_news(project_factory)
    assert run(project).delivered == 1
    emu.reset()  # the new workspace, empty

    with pytest.raises(ContractError) as stopped:
        run(project, new_workspace=True)
    assert "first run without timestamps" in str(stopped.value)
    assert "would send all 4 events the model holds as happening now" in str(stopped.value)
    assert emu.events() == []
    plan = plan_sync(project, "activity", console=NullConsole())
    [row] = [g for g in plan.guards if g.name == "first run without timestamps"]
    assert row.breached
    checks = json.loads(lockgate(project, "validate", "--json").output)["contract"]
    assert [f for f in checks if f["check"] == "untimed first run"]
    with pytest.raises(ContractError):
        run(project)
    assert emu.events() == []

    assert run(project, force=True).delivered == 4  # sent once, then news again
    assert run(project).changes.to_send == 0
    project_factory.sql("insert into events values ('o5', 2, 'Order Shipped', 'e')")
    assert run(project).delivered == 1
    assert sent(project_factory) == ["a", "b", "c", "d", "e"]


def test_skip_records_the_models_events_as_history_in_a_new_workspace(
    project_factory: ProjectFactory,
) -> None:
    history(project_factory)
    project = project_factory.write({"activity": UNTIMED + "backfill: {first_run: skip}\n"})
    emu = project_factory.emulator
    assert run(project).delivered == 0
    add_news(project_factory)
    assert run(project).delivered == 1
    emu.reset()  # the new workspace, empty

    moved = run(project, new_workspace=True)
    assert (moved.status, moved.delivered, moved.changes.history_skipped) == ("success", 0, 4)
    assert emu.events() == []
    project_factory.sql("insert into events values ('o5', 2, 'Order Shipped', 'e')")
    after = run(project)
    assert (after.delivered, after.changes.already_delivered) == (1, 4)
    assert sent(project_factory) == ["e"]


def test_skip_records_a_rejected_row_as_history_so_its_fix_is_not_sent_as_news(
    project_factory: ProjectFactory,
) -> None:
    # a row of the model's history rejected on the first run (no person to send it to) is
    # history all the same: filling in its person later does not send it as happening now
    project_factory.sql(
        """
        create or replace table events as select * from (values
          ('o1', 1, 'Order Shipped', 'a'), ('o2', null, 'Order Shipped', 'b')
        ) t(event_id, user_id, event_name, feature)
        """
    )
    project = project_factory.write({"activity": UNTIMED + "backfill: {first_run: skip}\n"})
    first = run(project)
    assert (first.delivered, first.changes.rejected, first.changes.history_skipped) == (0, 1, 2)
    project_factory.sql("update events set user_id = 2 where event_id = 'o2'")
    add_news(project_factory)
    second = run(project)
    assert (second.delivered, second.changes.already_delivered) == (1, 2)
    assert sent(project_factory) == ["d"]


@pytest.mark.parametrize("then", ["send", "skip"])
def test_a_first_run_killed_while_sending_leaves_a_first_run_that_sends_each_event_once(
    project_factory: ProjectFactory, then: str
) -> None:
    # SIGKILL with an event applied and its answer not heard: nothing committed, so the next
    # run is a first run still. With `send` it sends the rest, the one in flight again with the
    # id it was sent with (stored once); turned to `skip`, it records the rest as history but
    # sends the one in flight again all the same (Customer.io may have it). Either way an
    # event that appears after that run is news
    from tests.sync.test_unconfirmed import killed_once_applied

    history(project_factory)
    project = project_factory.write({"activity": UNTIMED + "backfill: {first_run: send}\n"})
    emu = project_factory.emulator
    killed_once_applied(project.root, "activity", emu, lambda: bool(emu.events()))
    in_flight = [e.data["feature"] for e in emu.events()]
    assert len(in_flight) >= 1

    project = project_factory.write({"activity": UNTIMED + f"backfill: {{first_run: {then}}}\n"})
    again = run(project)
    assert again.status == "success" and again.changes.unconfirmed == len(in_flight)
    expected = ["a", "b", "c"] if then == "send" else sorted(in_flight)
    assert sent(project_factory) == expected  # each once
    add_news(project_factory)
    assert run(project).delivered == 1
    assert sent(project_factory) == sorted([*expected, "d"])
