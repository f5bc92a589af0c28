"""Events syncs: one row per occurrence becomes one Customer.io event, exactly once."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from tests.sync.helpers import ACTIVITY
from ulid import ULID

from lockgate.console import NullConsole
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

EVENTS = ACTIVITY + "  amount: {column: amount, type: number}\n"


def seed(factory: ProjectFactory) -> None:
    factory.sql(
        """
        create or replace table events as select * from (values
          ('e1', 1, 'Feature Used', now() - interval 1 hour, 'exports', 1.5),
          ('e2', 1, 'Report Exported', now() - interval 2 hour, 'reports', null),
          ('e3', 2, 'Feature Used', now() - interval 3 hour, 'alerts', 3),
          ('e3', 2, 'Feature Used', now() - interval 3 hour, 'alerts', 3),
          ('old', 2, 'Feature Used', now() - interval 10 day, 'alerts', 3),
          ('future', 2, 'Feature Used', now() + interval 2 day, 'alerts', 3),
          ('orphan', null, 'Feature Used', now() - interval 1 hour, 'alerts', 3)
        ) t(event_id, user_id, event_name, occurred_at, feature, amount);
        """
    )


def test_each_event_arrives_once_with_its_properties(project_factory: ProjectFactory) -> None:
    seed(project_factory)
    project = project_factory.write({"activity": EVENTS})
    report = run_sync(project, "activity", console=NullConsole())
    emu = project_factory.emulator

    assert report.delivered == 3
    assert report.changes.duplicates_in_model == 1
    assert report.changes.backfill_skipped == 1
    reasons = dict(report.changes.rejected_samples)
    # the time in words, against the clock that judged it
    assert re.fullmatch(
        r"column `occurred_at`: timestamp \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC is in the future "
        r"\(now \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; up to 5 minutes ahead is taken "
        r"for clock skew\)",
        reasons["future"],
    ), reasons["future"]
    assert "no identifier: `user_id` is null" in reasons["orphan"]

    events = emu.events()
    assert sorted(e.name for e in events) == ["Feature Used", "Feature Used", "Report Exported"]
    first = next(e for e in events if e.name == "Report Exported")
    assert first.data == {"feature": "reports"}  # a null property is left out
    assert abs(first.timestamp - (time.time() - 7200)) < 120
    assert all(str(ULID.from_str(e.id)) == e.id for e in events)  # valid ULIDs


def test_rerun_and_full_resync_never_send_an_event_twice(project_factory: ProjectFactory) -> None:
    seed(project_factory)
    project = project_factory.write({"activity": EVENTS})
    run_sync(project, "activity", console=NullConsole())
    again = run_sync(project, "activity", console=NullConsole(), full_resync=True)
    assert again.changes.to_send == 0
    assert again.changes.already_delivered == 3
    # the rows of delivered keys are counted without being mapped: a repeat of one is still a
    # duplicate, the rows never sent are rejected or held back as on the first run
    c = again.changes
    assert (c.rows, c.duplicates_in_model, c.rejected, c.backfill_skipped) == (7, 1, 2, 1)
    emu = project_factory.emulator
    assert len(emu.events()) == 3
    assert emu.stats.duplicate_events_dropped == 0  # not even offered twice

    project_factory.sql(
        "insert into events values ('e4', 3, 'Invite Sent', now() - interval 5 minute, 'team', 0)"
    )
    third = run_sync(project, "activity", console=NullConsole())
    assert third.delivered == 1
    assert len(emu.events()) == 4


def test_event_ids_are_stable_so_the_api_dedupes_even_without_state(
    project_factory: ProjectFactory,
) -> None:
    seed(project_factory)
    project = project_factory.write({"activity": EVENTS})
    run_sync(project, "activity", console=NullConsole())
    # lose the state entirely: the same occurrences carry the same ids, so nothing duplicates
    import shutil

    shutil.rmtree(project.state_dir)
    report = run_sync(project, "activity", console=NullConsole())
    assert report.delivered == 3
    emu = project_factory.emulator
    assert len(emu.events()) == 3
    assert emu.stats.duplicate_events_dropped == 3


@pytest.mark.parametrize(
    ("template", "sent_as"),
    [
        ("{name}_backfill", "Feature Used_backfill"),
        ("{name} (backfill of {name})", "Feature Used (backfill of Feature Used)"),
    ],
)
def test_backfill_can_be_renamed_instead_of_skipped(
    project_factory: ProjectFactory, template: str, sent_as: str
) -> None:
    seed(project_factory)
    renamed = EVENTS + f'backfill: {{max_age: 24h, older: {{rename: "{template}"}}}}\n'
    project = project_factory.write({"activity": renamed})
    report = run_sync(project, "activity", console=NullConsole())
    assert report.changes.backfill_sent == 1
    names = sorted(e.name for e in project_factory.emulator.events())
    assert names.count(sent_as) == 1


def test_hash_ids_and_constant_names(project_factory: ProjectFactory) -> None:
    seed(project_factory)
    hashed = EVENTS.replace("name: event_name", "name: {value: product_activity}").replace(
        "id: event_id", "id: {hash: [user_id, event_name, occurred_at]}"
    )
    project = project_factory.write({"activity": hashed})
    report = run_sync(project, "activity", console=NullConsole())
    # e3 is repeated row-for-row, so its hash repeats too: sent once
    assert report.delivered == 3 and report.changes.duplicates_in_model == 1
    assert {e.name for e in project_factory.emulator.events()} == {"product_activity"}


def test_plan_shows_exact_payloads_and_sends_nothing(project_factory: ProjectFactory) -> None:
    seed(project_factory)
    project = project_factory.write({"activity": EVENTS})
    plan = plan_sync(project, "activity", console=NullConsole(), samples=5)
    assert plan.status == "planned" and plan.changes.new == 3
    assert project_factory.emulator.events() == []
    payload = plan.samples[0]["payload"]
    assert payload["type"] == "person" and payload["action"] == "event"
    assert set(payload) == {
        "id",
        "type",
        "action",
        "identifiers",
        "name",
        "timestamp",
        "attributes",
    }
    # the plan's ids are the ids the run sends
    run_sync(project, "activity", console=NullConsole())
    sent = {e.id for e in project_factory.emulator.events()}
    assert {s["payload"]["id"] for s in plan.samples} == sent


def test_an_event_addressed_by_its_email_because_its_id_is_null_needs_an_at_sign(
    project_factory: ProjectFactory,
) -> None:
    """With `identify_by: {id, email}`, an event whose id is null goes to its email: one
    without `@` is rejected naming the column, not sent to a person it would create."""
    project_factory.sql(
        "create or replace table events as select * from (values "
        "('e1', null, 'not-an-email', now() - interval 1 hour), "
        "('e2', null, 'ok@x.com', now() - interval 1 hour)) t(event_id, user_id, email, ts)"
    )
    sync = """
name: viewed
source: warehouse
model: {table: events}
kind: events
identify_by: {id: user_id, email: email}
event: {name: {value: Viewed}, timestamp: ts, id: event_id}
"""
    project = project_factory.write({"viewed": sync})
    report = run_sync(project, "viewed", console=NullConsole())
    assert report.delivered == 1
    assert dict(report.changes.rejected_samples) == {
        "e1": "column `email`: `not-an-email` is not an email address (no `@`); fix it in the "
        "model or at the source"
    }
    emu = project_factory.emulator
    ok = emu.person(email="ok@x.com")
    assert ok is not None and [e.person for e in emu.events()] == [ok.cio_id]
    assert len(emu.people()) == 1  # nobody named `not-an-email`
