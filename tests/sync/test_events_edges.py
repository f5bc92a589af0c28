"""Events syncs at their edges: repeated ids, rows fixed after a rejection, failed deliveries,
the backfill boundary, lost state, hash ids and timestamp types. Each event reaches
Customer.io exactly once."""

from __future__ import annotations

import shutil
from typing import Any

from lockgate.console import NullConsole
from lockgate.emulator import Emulator, EmulatorConfig, FaultConfig
from lockgate.project.loader import load_project
from lockgate.sync.run import run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

NOW = 1_780_000_000  # a fixed "now" for the runs (2026-05-28), so ages are exact

EVENTS = """
name: activity
source: warehouse
model: {table: events}
kind: events
identify_by: {id: user_id}
event:
  name: event_name
  timestamp: occurred_at
  id: event_id
properties:
  feature: feature
"""


def table(factory: ProjectFactory, rows: str, columns: str) -> None:
    factory.sql(f"create or replace table events as select * from (values {rows}) t({columns})")


def run(project: Any, now: int = NOW, **kwargs: Any) -> Any:
    return run_sync(project, "activity", console=NullConsole(), now=now, **kwargs)


def held(factory: ProjectFactory) -> list[tuple[str, int, dict[str, Any]]]:
    return sorted((e.name, e.timestamp, e.data) for e in factory.emulator.events())


def ts(seconds_ago: int) -> str:
    return f"to_timestamp({NOW - seconds_ago})"


# ------------------------------------------------------------------ repeated event ids


def test_a_repeated_id_sends_its_earliest_copy_once_whatever_the_state(
    project_factory: ProjectFactory,
) -> None:
    table(
        project_factory,
        f"('e1', 1, 'Used', {ts(600)}, 'later'), ('e1', 1, 'Used', {ts(3600)}, 'first')",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS})
    report = run(project)
    assert report.delivered == 1 and report.changes.duplicates_in_model == 1
    assert held(project_factory) == [("Used", NOW - 3600, {"feature": "first"})]

    shutil.rmtree(project.state_dir)  # the same copy, so the same dedupe id
    run(project)
    assert held(project_factory) == [("Used", NOW - 3600, {"feature": "first"})]


def test_a_rejected_copy_of_a_repeated_id_does_not_hold_back_the_good_one(
    project_factory: ProjectFactory,
) -> None:
    table(
        project_factory,
        f"""('e1', null, 'Used', {ts(7200)}, 'no user'), ('e1', 1, 'Used', {ts(600)}, 'ok'),
            ('e2', 2, 'Used', null, 'no time'), ('e2', 2, 'Used', {ts(600)}, 'ok')""",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS})
    report = run(project)
    assert report.changes.rejected == 2
    assert report.delivered == 2
    assert held(project_factory) == [
        ("Used", NOW - 600, {"feature": "ok"}),
        ("Used", NOW - 600, {"feature": "ok"}),
    ]
    assert run(project).changes.to_send == 0


# ------------------------------------------------------------------ rejected, then fixed


def test_an_event_rejected_then_fixed_in_the_warehouse_is_sent_once(
    project_factory: ProjectFactory,
) -> None:
    table(
        project_factory,
        f"""('e1', null, 'Used', {ts(600)}, 'a'), ('e2', 1, 'Used', {ts(-3600)}, 'b'),
            ('e3', 1, 'Used', {ts(600)}, repeat('x', 1001)), ('e4', 1, 'Used', {ts(60)}, 'd')""",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS})
    first = run(project)
    assert first.delivered == 1 and first.changes.rejected == 3
    reasons = dict(first.changes.rejected_samples)
    assert "is in the future" in reasons["e2"] and "1000-byte" in reasons["e3"]

    project_factory.sql("update events set user_id = 1 where event_id = 'e1'")
    project_factory.sql("update events set feature = 'c' where event_id = 'e3'")
    second = run(project, now=NOW + 7200)  # e2's time has come
    assert second.delivered == 3 and second.changes.rejected == 0
    assert run(project, now=NOW + 7200).changes.to_send == 0
    assert sorted(e.data["feature"] for e in project_factory.emulator.events()) == [
        "a",
        "b",
        "c",
        "d",
    ]


# ------------------------------------------------------------------ failed deliveries


def test_events_whose_answers_were_lost_are_retried_and_held_once(
    project_factory: ProjectFactory,
) -> None:
    table(
        project_factory,
        ", ".join(f"('e{i}', {i}, 'Used', {ts(600 + i)}, 'f')" for i in range(20)),
        "event_id, user_id, event_name, occurred_at, feature",
    )
    # half the requests are applied by the API, then answered with a 503: Lockgate cannot
    # know they arrived, so it sends them again next run (with the same dedupe ids)
    lossy = Emulator(
        EmulatorConfig(
            require_ulid_event_ids=True,
            faults=FaultConfig(error_5xx=0.5, applied_then_failed=True, seed=3),
        )
    )
    with lossy.serve() as url:
        project_factory.write({"activity": EVENTS}, url=url, retries=0)
        with (project_factory.root / "lockgate.yml").open("a") as yml:
            yml.write("    batch_size: 2\n")  # ten requests, each applied or not
        project = load_project(project_factory.root)
        failed = 0
        for _ in range(30):
            report = run(project)
            failed += report.dead_lettered
            if report.changes.to_send == 0:
                break
        assert failed > 0  # faults were injected
        assert sorted(e.data["feature"] for e in lossy.events()) == ["f"] * 20
        assert len({e.id for e in lossy.events()}) == 20
        assert lossy.stats.duplicate_events_dropped > 0


# ------------------------------------------------------------------ lost state


def test_events_without_a_timestamp_keep_their_ids_when_the_state_is_lost(
    project_factory: ProjectFactory,
) -> None:
    table(
        project_factory,
        "('e1', 1, 'Used', 'a'), ('e2', 2, 'Used', 'b')",
        "event_id, user_id, event_name, feature",
    )
    untimed = EVENTS.replace("  timestamp: occurred_at\n", "")
    project = project_factory.write({"activity": untimed})
    assert run(project).delivered == 2
    # the state is lost (or a crash lost the last flush): the re-run, a minute later, sends
    # the same occurrences with the same dedupe ids, so Customer.io keeps one of each
    shutil.rmtree(project.state_dir)
    run(project, now=NOW + 60)
    emu = project_factory.emulator
    assert sorted(e.data["feature"] for e in emu.events()) == ["a", "b"]
    assert emu.stats.duplicate_events_dropped == 2
