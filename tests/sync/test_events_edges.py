"""Events syncs at their edges: repeated ids, rows fixed after a rejection, failed deliveries,
the backfill boundary, lost state, hash ids and timestamp types. Each event reaches
Customer.io exactly once."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.sync.helpers import ACTIVITY, UNMARK_TABLES
from tests.sync.test_in_place import in_place_for
from tests.sync.test_rejected_rows import invoke
from tests.sync.test_unconfirmed import killed_once_applied

from lockgate.cli.sync import change_rows
from lockgate.console import NullConsole
from lockgate.emulator import Emulator, EmulatorConfig, FaultConfig
from lockgate.errors import ContractError
from lockgate.project.loader import load_project
from lockgate.state.store import StateStore
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

NOW = 1_780_000_000  # a fixed "now" for the runs (2026-05-28), so ages are exact

EVENTS = ACTIVITY


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


def test_which_copy_of_a_repeated_id_is_sent_and_how_copies_are_counted(
    project_factory: ProjectFactory,
) -> None:
    """Of the copies of a key that can be sent, the earliest; copies of one time go by their
    payload (the least as text). The choice does not depend on the model's row order: the
    same copies, with the same ids, whichever way the rows come."""
    rows = [
        f"('e1', 1, 'Used', {ts(3600)}, 'zeta')",
        f"('e1', 1, 'Used', {ts(3600)}, 'alpha')",
        f"('e1', 1, 'Used', {ts(600)}, 'later')",
        f"('e2', null, 'Used', {ts(7200)}, 'no user')",
        f"('e2', 2, 'Used', {ts(600)}, 'same')",
        f"('e2', 2, 'Used', {ts(600)}, 'same')",
        f"('e3', 3, 'Used', {ts(9 * 86400)}, 'old')",
        f"('e3', 3, 'Used', {ts(9 * 86400)}, 'old')",
        f"('e4', 4, 'Used', {ts(60)}, 'once')",
    ]
    columns = "event_id, user_id, event_name, occurred_at, feature"
    table(project_factory, ", ".join(rows), columns)
    project = project_factory.write({"activity": EVENTS})
    report = run(project)
    c = report.changes
    # e1: 2 copies over the one sent; e2 and e3: 1 each (the rejected copy of e2 is rejected,
    # not a duplicate); e3 is older than the backfill window: counted once, not sent
    assert (c.rows, c.duplicates_in_model, c.rejected, c.backfill_skipped) == (9, 4, 1, 1)
    assert report.delivered == 3
    sent = [
        ("Used", NOW - 3600, {"feature": "alpha"}),
        ("Used", NOW - 600, {"feature": "same"}),
        ("Used", NOW - 60, {"feature": "once"}),
    ]
    assert held(project_factory) == sent
    ids = sorted(e.id for e in project_factory.emulator.events())

    # the rows the other way round, the state lost: the same copies, so the same ids
    table(project_factory, ", ".join(reversed(rows)), columns)
    shutil.rmtree(project.state_dir)
    again = run(project)
    assert (again.changes.duplicates_in_model, again.delivered) == (4, 3)
    assert held(project_factory) == sent
    assert sorted(e.id for e in project_factory.emulator.events()) == ids
    assert project_factory.emulator.stats.duplicate_events_dropped == 3


# ------------------------------------------------------------------ rejected, then fixed


def test_an_event_rejected_then_fixed_in_the_warehouse_is_sent_once(
    project_factory: ProjectFactory,
) -> None:
    table(
        project_factory,
        f"""('e1', null, 'Used', {ts(600)}, 'a'), ('e2', 1, 'Used', {ts(-3600)}, 'b'),
            ('e3', 1, 'Used', {ts(600)}, repeat('x', 100001)), ('e4', 1, 'Used', {ts(60)}, 'd'),
            ('e5', 1, 'Used', {ts(60)}, repeat('y', 5000))""",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS})
    first = run(project)
    # the 1,000-byte limit is for attribute values: a long event property goes out (e5), an
    # event over Customer.io's 32,768 bytes per operation does not (e3)
    assert first.delivered == 2 and first.changes.rejected == 3
    reasons = dict(first.changes.rejected_samples)
    assert "is in the future" in reasons["e2"]
    assert "over the 32768-byte limit of Customer.io per operation" in reasons["e3"]
    # and names the property to trim (its `"feature":"..."` bytes)
    assert "bytes of properties, the largest `feature` 100013 bytes); trim" in reasons["e3"]

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
        "y" * 5000,
    ]


def test_a_delivered_event_whose_row_goes_bad_is_already_delivered_not_rejected(
    project_factory: ProjectFactory,
) -> None:
    """Its event is in Customer.io and is never sent again: a bad value its row takes later is
    no rejection (it counted as one at every run, and against `max_rejected`)."""
    table(
        project_factory,
        f"('o1', 1, 'Used', {ts(600)}, '3')",
        "event_id, user_id, event_name, occurred_at, qty",
    )
    typed = EVENTS.replace("  feature: feature\n", "  qty: {column: qty, type: integer}\n")
    project = project_factory.write({"activity": typed + "guardrails: {max_rejected: 0}\n"})
    assert run(project).delivered == 1

    project_factory.sql(
        f"update events set qty = 'three'; insert into events values ('o2', 1, 'Used', "
        f"{ts(60)}, '4')"
    )
    report = run(project)
    assert (report.status, report.delivered) == ("success", 1)
    assert (report.changes.rejected, report.changes.already_delivered) == (0, 1)
    assert report.changes.rejected_samples == ()
    with StateStore.open(project.state_dir) as store:
        assert store.exec_sql("select count(*) from rejected")[0][0] == 0
    assert held(project_factory) == [
        ("Used", NOW - 600, {"qty": 3}),
        ("Used", NOW - 60, {"qty": 4}),
    ]

    # a row not delivered yet with a bad value is still rejected, and counted
    project_factory.sql(f"insert into events values ('o3', 1, 'Used', {ts(30)}, 'four')")
    with pytest.raises(ContractError, match="max_rejected"):
        run(project)
    report = run(project, force=True)
    assert (report.changes.rejected, report.changes.already_delivered) == (1, 2)
    assert report.changes.rejected_samples == (
        ("o3", "column `qty` (field `qty`): value `four` is not an integer"),
    )


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
            # half the batches fail: three in a row would stop the run (the breaker for a
            # workspace that is down), which this test is not about
            yml.write("    stop_after_failed_batches: 0\n")
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
    untimed = EVENTS.replace("  timestamp: occurred_at\n", "") + "backfill: {first_run: send}\n"
    project = project_factory.write({"activity": untimed})
    assert run(project).delivered == 2
    # the state is lost (or a crash lost the last flush): the re-run, a minute later, sends
    # the same occurrences with the same dedupe ids, so Customer.io keeps one of each
    shutil.rmtree(project.state_dir)
    run(project, now=NOW + 60)
    emu = project_factory.emulator
    assert sorted(e.data["feature"] for e in emu.events()) == ["a", "b"]
    assert emu.stats.duplicate_events_dropped == 2


# ------------------------------------------------------------------ backfill


def test_the_backfill_boundary_is_max_age_exactly(project_factory: ProjectFactory) -> None:
    table(
        project_factory,
        f"""('at', 1, 'Used', {ts(72 * 3600)}, 'at'), ('past', 1, 'Used', {ts(72 * 3600 + 1)},
            'past'), ('within', 1, 'Used', {ts(72 * 3600 - 1)}, 'within')""",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS})
    report = run(project)
    assert report.changes.backfill_skipped == 1
    assert sorted(e.data["feature"] for e in project_factory.emulator.events()) == [
        "at",
        "within",
    ]
    # a skipped event is not remembered as delivered: choosing `send` later sends it, once
    project = project_factory.write({"activity": EVENTS + "backfill: {older: send}\n"})
    assert run(project).delivered == 1
    assert run(project).changes.to_send == 0
    assert len(project_factory.emulator.events()) == 3


def test_an_event_that_ages_into_backfill_before_its_retry_is_renamed_not_duplicated(
    project_factory: ProjectFactory,
) -> None:
    table(
        project_factory,
        f"('e1', 1, 'Used', {ts(71 * 3600)}, 'f')",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    renamed = EVENTS + 'backfill: {older: {rename: "{name}_backfill"}}\n'
    lossy = Emulator(
        EmulatorConfig(
            require_ulid_event_ids=True,
            faults=FaultConfig(error_5xx=1.0, applied_then_failed=True),
        )
    )
    with lossy.serve() as url:
        first = run(project_factory.write({"activity": renamed}, url=url, retries=0))
    assert first.dead_lettered == 1 and [e.name for e in lossy.events()] == ["Used"]
    # two hours later the event is backfill: the retry is renamed but keeps its dedupe id, so
    # an API that had in fact stored it does not store it twice
    project = project_factory.write({"activity": renamed})
    second = run(project, now=NOW + 7200)
    assert second.delivered == 1 and second.changes.backfill_sent == 1
    retried = project_factory.emulator.events()
    assert [e.name for e in retried] == ["Used_backfill"]
    assert retried[0].id == lossy.events()[0].id


# ------------------------------------------------------------------ answers lost, rows corrected

#: applied in full, then answered 503: every answer is lost
ANSWERS_LOST = FaultConfig(error_5xx=1.0, applied_then_failed=True)


def stored(emu: Emulator) -> list[tuple[str | None, str, int, str]]:
    """(person id, name, timestamp, dedupe id) of every event Customer.io holds."""
    by_cio = {p.cio_id: p.id for p in emu.people()}
    return sorted((by_cio.get(e.person), e.name, e.timestamp, e.id) for e in emu.events())


def event_ids_kept(project: Any) -> list[str]:
    with StateStore.open(project.state_dir) as store:
        return [r[0] for r in store.exec_sql('select k from "event_ids__activity" order by k')]


@pytest.mark.parametrize(
    "correction",
    [
        "occurred_at = occurred_at - interval 1 hour",  # a time zone fixed upstream
        "event_name = 'Order Placed'",
        "user_id = 2",
    ],
)
def test_an_event_whose_answer_was_lost_is_stored_once_after_its_row_is_corrected(
    project_factory: ProjectFactory, correction: str
) -> None:
    """Its dedupe id is made of its timestamp, name and person: the re-send carries the id it
    was first sent with, whatever the row holds now, so Customer.io drops the copy (with an id
    made of the corrected row it stored the event twice)."""
    table(
        project_factory,
        f"('e0', 1, 'Used', {ts(7200)}, 'f')",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS}, retries=0)
    emu = project_factory.emulator
    assert run(project).delivered == 1
    with StateStore.open(project.state_dir) as store:  # as a state from before the table
        store.exec_sql(f'drop table "event_ids__activity"; {UNMARK_TABLES}')

    project_factory.sql(f"insert into events values ('order-1', 1, 'Used', {ts(600)}, 'g')")
    emu.set_faults(ANSWERS_LOST)
    lost = run(project)
    assert (lost.status, lost.dead_lettered) == ("partial", 1)
    first = stored(emu)
    assert len(first) == 2  # applied, though never confirmed
    assert event_ids_kept(project) == ["order-1"]

    project_factory.sql(f"update events set {correction} where event_id = 'order-1'")
    emu.set_faults(FaultConfig())
    plan = plan_sync(project, "activity", console=NullConsole(), now=NOW)
    assert (plan.changes.new, plan.changes.unconfirmed) == (1, 1)
    assert ("  of which unconfirmed last time (sent again, same id)", 1) in change_rows(plan)
    first_id = next(i for _, _, t, i in first if t == NOW - 600)
    assert plan.samples[0]["payload"]["id"] == first_id

    again = run(project)
    assert (again.status, again.delivered) == ("success", 1)
    assert stored(emu) == first  # Customer.io dropped the copy: the event is there once
    assert emu.stats.duplicate_events_dropped == 1
    assert event_ids_kept(project) == []  # confirmed: nothing kept for it
    assert run(project).changes.to_send == 0


def test_an_event_whose_answer_never_came_reaches_customerio_once_when_first_sent_again(
    project_factory: ProjectFactory,
) -> None:
    """Not applied after all (a 503 before Customer.io took it): the re-send, under the id it
    was first sent with, stores the event as its row holds it now."""
    table(
        project_factory,
        f"('order-1', 1, 'Used', {ts(600)}, 'g')",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS}, retries=0)
    emu = project_factory.emulator
    emu.set_faults(FaultConfig(error_5xx=1.0))
    assert run(project).dead_lettered == 1 and stored(emu) == []
    project_factory.sql("update events set occurred_at = occurred_at - interval 1 hour")
    emu.set_faults(FaultConfig())
    assert run(project).delivered == 1
    [(person, name, timestamp, _)] = stored(emu)
    assert (person, name, timestamp) == ("1", "Used", NOW - 600 - 3600)


def test_an_event_customerio_refused_is_sent_as_corrected_under_a_new_id(
    project_factory: ProjectFactory,
) -> None:
    """A per-record refusal applied nothing: no id is kept for it."""
    table(
        project_factory,
        f"('order-1', 1, 'Used', {ts(600)}, 'g')",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS})
    emu = project_factory.emulator
    emu.set_faults(FaultConfig(reject_people=frozenset({"1"})))
    refused = run(project)
    assert (refused.status, refused.rejected_by_api) == ("partial", 1)
    assert event_ids_kept(project) == []
    project_factory.sql("update events set user_id = 2")
    emu.set_faults(FaultConfig())
    assert run(project).delivered == 1
    [(person, _, _, _)] = stored(emu)
    assert person == "2"


def test_an_event_cut_off_by_a_second_sigterm_is_stored_once_after_its_row_is_corrected(
    project_factory: ProjectFactory,
) -> None:
    table(  # the run in a process of its own runs at the time of day
        project_factory,
        "('order-1', 1, 'Used', now() - interval 10 minute, 'g')",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS})
    emu = project_factory.emulator
    # Customer.io takes the request at once and answers 2 s later
    emu.set_faults(FaultConfig(answer_latency_ms=2000))
    victim = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "sync", "activity", "--project", str(project.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not emu.events() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = stored(emu)
        assert len(first) == 1
        victim.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        victim.send_signal(signal.SIGTERM)
        _, err = victim.communicate(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == 143, err
    assert "the requests in flight were cut off" in err
    assert event_ids_kept(project) == ["order-1"]

    project_factory.sql("update events set occurred_at = occurred_at - interval 1 hour")
    emu.set_faults(FaultConfig())
    again = run_sync(load_project(project.root), "activity", console=NullConsole())
    assert (again.changes.unconfirmed, again.delivered) == (1, 1)
    assert stored(emu) == first


def written_ahead(project: Any) -> list[str]:
    """The keys of the events sync's write-ahead record (what a killed run leaves behind)."""
    with StateStore.open(project.state_dir) as store:
        rows = store.exec_sql('select k from "sending_events__activity" order by k')
        return [r[0] for r in rows]


def test_an_event_in_flight_when_the_run_is_killed_is_stored_once_after_its_row_is_corrected(
    project_factory: ProjectFactory,
) -> None:
    """SIGKILL after Customer.io took the event, before its answer: the killed run could record
    nothing, but it wrote ahead the event with the id it sent it with; the next run sends it
    with that id although its timestamp was corrected meanwhile (a new id: stored twice)."""
    table(  # the run in a process of its own runs at the time of day
        project_factory,
        "('order-1', 1, 'Used', now() - interval 10 minute, 'g')",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS})
    emu = project_factory.emulator
    killed_once_applied(project.root, "activity", emu, lambda: bool(emu.events()))
    first = stored(emu)
    assert len(first) == 1
    assert written_ahead(project) == ["order-1"]

    project_factory.sql("update events set occurred_at = occurred_at - interval 1 hour")
    console = NullConsole()
    again = run_sync(load_project(project.root), "activity", console=console)
    assert (again.status, again.changes.unconfirmed, again.delivered) == ("success", 1, 1)
    assert stored(emu) == first  # Customer.io dropped the copy: the event is there once
    assert emu.stats.duplicate_events_dropped == 1
    assert (
        "warning: activity: a run killed while sending left 1 event(s) unconfirmed (Customer.io "
        "may have stored them): they are sent again with the id they were sent with, whatever "
        "their rows hold"
    ) in console.messages
    assert (written_ahead(project), event_ids_kept(project)) == ([], [])
    assert run_sync(project, "activity", console=NullConsole()).changes.to_send == 0


def test_events_runs_that_end_leave_nothing_written_ahead(
    project_factory: ProjectFactory,
) -> None:
    """A run that heard every answer, one whose answers were lost (their ids are kept, not the
    write-ahead record) and a run a guardrail stops: the next run takes none of them for a
    killed run's, and sends again only the event whose answer was lost."""
    table(
        project_factory,
        f"('e0', 1, 'Used', {ts(7200)}, 'f')",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    project = project_factory.write({"activity": EVENTS}, retries=0)
    emu = project_factory.emulator
    assert run(project).delivered == 1
    assert written_ahead(project) == []

    project_factory.sql(f"insert into events values ('order-1', 1, 'Used', {ts(600)}, 'g')")
    emu.set_faults(ANSWERS_LOST)
    assert run(project).status == "partial"
    emu.set_faults(FaultConfig())
    assert (written_ahead(project), event_ids_kept(project)) == ([], ["order-1"])

    guarded = project_factory.write({"activity": EVENTS + "guardrails: {max_events: 0}\n"})
    with pytest.raises(ContractError, match="max_events is 1, over the limit of 0"):
        run(guarded)
    assert written_ahead(project) == []

    console = NullConsole()
    again = run_sync(project, "activity", console=console, now=NOW)
    assert (again.status, again.changes.unconfirmed, again.delivered) == ("success", 1, 1)
    assert not [m for m in console.messages if "killed" in m]
    assert (written_ahead(project), event_ids_kept(project)) == ([], [])
    assert len(stored(emu)) == 2


# ------------------------------------------------------------------ hash ids


HASHED = EVENTS.replace("  id: event_id\n", "  id: {hash: [a, b]}\n")


def test_hash_ids_keep_apart_rows_whose_values_only_look_alike(
    project_factory: ProjectFactory,
) -> None:
    table(
        project_factory,
        f"""(1, 'Used', {ts(60)}, 'a|b', 'c', '1'), (1, 'Used', {ts(60)}, 'a', 'b|c', '2'),
            (1, 'Used', {ts(60)}, null, 'x', '3'), (1, 'Used', {ts(60)}, 'x', null, '4'),
            (1, 'Used', {ts(60)}, '', 'ab', '6'),
            (1, 'Used', {ts(60)}, 'ab', '', '7'), (1, 'Used', {ts(60)}, 'a', 'b', '8')""",
        "user_id, event_name, occurred_at, a, b, feature",
    )
    project = project_factory.write({"activity": HASHED})
    report = run(project)
    assert report.changes.duplicates_in_model == 0
    assert report.delivered == 7
    assert len({e.id for e in project_factory.emulator.events()}) == 7
    # (`'', ''` was a key of its own here, which every row of two blanks shared: such rows
    # are rejected now, see test_rows_whose_hash_columns_are_all_blank_are_rejected_not_merged)


def test_rows_whose_hash_columns_are_all_null_are_rejected_not_merged(
    project_factory: ProjectFactory,
) -> None:
    """Rows whose `event.id.hash` columns are all null name no occurrence: they are rejected
    naming the columns (as a null `event.id` column is), not merged into one key whose other
    copies are counted as repeats and never sent. A row with only some null stays keyed."""
    table(
        project_factory,
        f"""(1, 'Used', {ts(60)}, null, null, 'n1'), (2, 'Used', {ts(120)}, null, null, 'n2'),
            (3, 'Used', {ts(180)}, null, null, 'n3'), (4, 'Used', {ts(240)}, 'x', null, 'ok')""",
        "user_id, event_name, occurred_at, a, b, feature",
    )
    report = run(project_factory.write({"activity": HASHED}))
    assert (report.delivered, report.changes.rejected) == (1, 3)
    assert report.changes.duplicates_in_model == 0
    assert (
        sorted(reason for _, reason in report.changes.rejected_samples)
        == ["event id is null: every `event.id.hash` column (`a`, `b`) is null"] * 3
    )
    assert [e.data for e in project_factory.emulator.events()] == [{"feature": "ok"}]

    one = EVENTS.replace("  id: event_id\n", "  id: {hash: [a]}\n")
    table(
        project_factory,
        f"(5, 'Used', {ts(60)}, null::varchar, 'z', 'n5')",
        "user_id, event_name, occurred_at, a, b, feature",
    )
    # (a new `event.id` over a model with rows is refused unless forced: docs/guardrails.md)
    report = run(project_factory.write({"activity": one}), force=True)
    assert dict(report.changes.rejected_samples).popitem()[1] == (
        "event id is null: its `event.id.hash` column `a` is null"
    )
    table(
        project_factory,
        f"(6, 'Used', {ts(60)}, null::varchar, 'n6')",
        "user_id, event_name, occurred_at, event_id, feature",
    )
    report = run(project_factory.write({"activity": EVENTS}), force=True)
    assert dict(report.changes.rejected_samples).popitem()[1] == (
        "column `event_id`: event id is null, empty or blank"
    )


def test_rows_whose_event_id_is_blank_are_rejected_not_merged(
    project_factory: ProjectFactory,
) -> None:
    """An `event.id` of white space alone (a padded `char(n)` column, `coalesce(ref, ' ')`)
    names no occurrence, as an empty one does: such rows are rejected, not keyed as one event
    whose other rows are counted as repeats and never sent. White space around an id is kept
    (a key delivered as `' o1'` stays that key)."""
    table(
        project_factory,
        f"""(' ', 1, 'Used', {ts(60)}, 'a'), (' ', 2, 'Used', {ts(120)}, 'b'),
            (chr(9) || chr(12288), 3, 'Used', {ts(180)}, 'c'),
            (' o1', 4, 'Used', {ts(240)}, 'd')""",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    report = run(project_factory.write({"activity": EVENTS}))
    assert (report.delivered, report.changes.rejected) == (1, 3)
    assert report.changes.duplicates_in_model == 0
    assert {reason for _, reason in report.changes.rejected_samples} == {
        "column `event_id`: event id is null, empty or blank"
    }
    assert [e.data for e in project_factory.emulator.events()] == [{"feature": "d"}]


@pytest.mark.parametrize("odd", ["nan", "inf"])
def test_rows_whose_float_event_id_is_nan_or_infinite_are_rejected_not_merged(
    project_factory: ProjectFactory, odd: str
) -> None:
    """A float `event.id` (a bare Postgres `numeric` arrives as one) of NaN or an infinity
    names no occurrence: such rows were keyed `nan` as one event, and all but the first were
    counted as repeats and never sent. They are rejected, saying so; a whole float id is a
    key as it is."""
    table(
        project_factory,
        f"""('{odd}'::double, 1, 'Used', {ts(60)}, 'a'),
            ('{odd}'::double, 2, 'Used', {ts(120)}, 'b'), (7.0, 3, 'Used', {ts(180)}, 'c')""",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    report = run(project_factory.write({"activity": EVENTS}))
    assert (report.delivered, report.changes.rejected) == (1, 2)
    assert report.changes.duplicates_in_model == 0
    assert {reason for _, reason in report.changes.rejected_samples} == {
        f"column `event_id`: event id `{odd}` is not a finite number; cast the column to "
        "bigint or text in the model"
    }
    assert [e.data for e in project_factory.emulator.events()] == [{"feature": "c"}]


BLANKS = EVENTS.replace("  id: event_id\n", "  id: {hash: [a, b, n]}\n")

#: rows whose `event.id.hash` columns (`a`, `b` text, `n` an integer) are all blank, or blank
#: and null: no key, each rejected with its reason
BLANK_ROWS = f"""(1, 'Used', {ts(60)}, '', '', null::int, 'b1'),
    (11, 'Used', {ts(65)}, '', '', null, 'b11'),
    (2, 'Used', {ts(70)}, ' ', chr(9) || chr(12288), null, 'b2'),
    (3, 'Used', {ts(80)}, null, ' ', null, 'b3'),
    (4, 'Used', {ts(90)}, null, null, null, 'n4')"""

#: rows with a key: a blank among values that are not, and a 0 (a number is never blank)
KEYED_ROWS = f"""(5, 'Used', {ts(100)}, '', 'x', null::int, 'k5'),
    (6, 'Used', {ts(110)}, '', '', 0, 'k6'),
    (7, 'Used', {ts(120)}, ' o', '', null, 'k7')"""

BLANK = (
    "event id is blank: every `event.id.hash` column (`a`, `b`, `n`) is empty, white space "
    "alone or null, so such rows would all be one event; give each row a value that tells "
    "it apart (add a column to `event.id.hash`), or leave such rows out of the model"
)
ALL_NULL = "event id is null: every `event.id.hash` column (`a`, `b`, `n`) is null"


def nokey(user_id: int) -> str:
    """The key a rejected row without an event key is listed under: its person."""
    return f'(null id) {{"id":"{user_id}"}}'


def test_rows_whose_hash_columns_are_all_blank_are_rejected_not_merged(
    project_factory: ProjectFactory, tmp_path: Any
) -> None:
    """Rows whose `event.id.hash` columns are all empty or white space alone (or those and
    null) name no occurrence, as all-null ones do: each is rejected with its reason, not
    merged into one key whose other rows are counted as repeats and never sent. The good rows
    go out once, and a later run, which keys the model in place, does the same."""
    columns = "user_id, event_name, occurred_at, a, b, n, feature"
    table(project_factory, f"{BLANK_ROWS}, {KEYED_ROWS}", columns)
    project = project_factory.write({"activity": BLANKS})
    report = run(project)
    assert (report.delivered, report.changes.rejected) == (3, 5)
    assert report.changes.duplicates_in_model == 0
    assert sorted(report.changes.rejected_samples) == [
        (nokey(1), BLANK),
        (nokey(11), BLANK),
        (nokey(2), BLANK),
        (nokey(3), BLANK),
        (nokey(4), ALL_NULL),
    ]
    assert sorted(e.data["feature"] for e in project_factory.emulator.events()) == [
        "k5",
        "k6",
        "k7",
    ]

    # a second run keys the model in the warehouse (the ledger has events): the blank rows
    # are rejected again, each as it was, a new good row is sent, nothing is sent twice
    project_factory.sql(
        f"insert into events values (8, 'Used', {ts(50)}, '', chr(13) || chr(10), null, 'b8'),"
        f" (9, 'Used', {ts(55)}, 'y', '', null, 'k9')"
    )
    assert in_place_for(project, "activity") is not None
    again = run(project)
    assert (again.delivered, again.changes.already_delivered, again.changes.rejected) == (1, 3, 6)
    assert again.changes.duplicates_in_model == 0
    assert again.changes.rows_copied == 5 + 2  # in place: the rows of keys the ledger lacks
    invoke(project, "runs", "show", "--export-rejected", str(tmp_path / "run.csv"))
    with (tmp_path / "run.csv").open(newline="") as f:
        exported = sorted((r["key"], r["reason"]) for r in csv.DictReader(f))
    blank = [(nokey(i), BLANK) for i in (1, 2, 3, 8, 11)]
    assert exported == sorted([*blank, (nokey(4), ALL_NULL)])
    assert sorted(e.data["feature"] for e in project_factory.emulator.events()) == [
        "k5",
        "k6",
        "k7",
        "k9",
    ]
    assert project_factory.emulator.stats.duplicate_events_dropped == 0


def test_an_event_delivered_under_an_all_blank_key_is_not_sent_again(
    project_factory: ProjectFactory,
) -> None:
    """An events sync whose ledger holds an all-blank key (delivered by a Lockgate that took
    `'', ''` for a key): its row is rejected now, each run, as other rejected rows are; it is
    not sent again, and the ledger keeps the key."""
    table(
        project_factory,
        f"(1, 'Used', {ts(60)}, '', '', 'b1'), (2, 'Used', {ts(70)}, 'x', '', 'k2')",
        "user_id, event_name, occurred_at, a, b, feature",
    )
    project = project_factory.write({"activity": HASHED})
    # the key such a Lockgate gave `'', ''`: each value as its length, `:` and its text
    with StateStore.open(project.state_dir) as store:
        store.ensure_sync_tables("activity")
        old_key = str(store.exec_sql("select md5(concat_ws(chr(31), '0:', '0:'))")[0][0])
        store.append_ledger("activity", [old_key])
    for delivered in (1, 0):  # `k2`, then nothing: the blank row is rejected by each run
        report = run(project)
        assert (report.delivered, report.changes.rejected) == (delivered, 1)
        assert report.changes.already_delivered == 1 - delivered
        assert dict(report.changes.rejected_samples)[nokey(1)].startswith(
            "event id is blank: every `event.id.hash` column (`a`, `b`) is empty"
        )
    assert [e.data for e in project_factory.emulator.events()] == [{"feature": "k2"}]
    with StateStore.open(project.state_dir) as store:
        assert (old_key,) in store.exec_sql('select k from "ledger__activity"')


def test_a_null_in_a_hash_column_is_not_the_text_backslash_n(
    project_factory: ProjectFactory,
) -> None:
    table(
        project_factory,
        f"""(1, 'Used', {ts(60)}, null, 'x', '1'), (1, 'Used', {ts(60)}, '\\N', 'x', '2')""",
        "user_id, event_name, occurred_at, a, b, feature",
    )
    project = project_factory.write({"activity": HASHED})
    report = run(project)
    assert report.delivered == 2 and report.changes.duplicates_in_model == 0


# ------------------------------------------------------------------ timestamp types


def test_timestamps_of_every_type_are_sent_as_the_same_unix_seconds(
    project_factory: ProjectFactory,
) -> None:
    moment = NOW - 3600
    project_factory.sql(
        f"""
        create or replace table events as select * from (values
          ('naive', 1, 'Used', 'naive', to_timestamp({moment})::timestamp::varchar),
          ('date', 1, 'Used', 'date', '{moment}'),
          ('epoch', 1, 'Used', 'epoch', '{moment}'),
          ('iso', 1, 'Used', 'iso', '{moment}')
        ) t(event_id, user_id, event_name, feature, raw)
        """
    )
    kinds = {
        "naive": f"to_timestamp({moment})::timestamp",
        "epoch": f"{moment}::bigint",
    }
    for kind, expr in kinds.items():
        project_factory.sql(
            f"create or replace table ev_{kind} as select event_id, user_id, event_name, "
            f"feature, {expr} as occurred_at from events where event_id = '{kind}'"
        )
    project_factory.sql(
        f"""
        create or replace table ev_tzz as select 'tzz' as event_id, 1 as user_id,
               'Used' as event_name, 'tzz' as feature, to_timestamp({moment}) as occurred_at;
        create or replace table ev_iso as select 'iso' as event_id, 1 as user_id,
               'Used' as event_name, 'iso' as feature,
               strftime(to_timestamp({moment}) at time zone 'Asia/Kolkata',
                        '%Y-%m-%dT%H:%M:%S+05:30') as occurred_at;
        create or replace table ev_date as select 'date' as event_id, 1 as user_id,
               'Used' as event_name, 'date' as feature,
               to_timestamp({moment})::date as occurred_at;
        """
    )
    syncs = {}
    for kind in ("naive", "epoch", "tzz", "iso", "date"):
        syncs[kind] = EVENTS.replace("name: activity", f"name: {kind}").replace(
            "{table: events}", f"{{table: ev_{kind}}}"
        )
    project = project_factory.write(syncs)
    for kind in syncs:
        report = run_sync(project, kind, console=NullConsole(), now=NOW)
        assert report.delivered == 1, (kind, report.changes.rejected_samples)
    sent = {e.data["feature"]: e.timestamp for e in project_factory.emulator.events()}
    midnight = moment - moment % 86400
    assert sent == {
        "naive": moment,
        "epoch": moment,
        "tzz": moment,
        "iso": moment,
        "date": midnight,
    }


# ------------------------------------------------------------------ the machine's time zone


def test_an_event_before_1970_is_rejected_saying_so(project_factory: ProjectFactory) -> None:
    """A negative unix second is no timestamp Customer.io takes: the row is rejected by the
    mapping, naming the column and the date, and is not sent (to be refused) on every run."""
    project_factory.sql(
        f"""
        create or replace table events as select * from (values
          ('old', 1, 'Used', '1900-01-01 00:00:00'::timestamp, 'f'),
          ('ok', 1, 'Used', to_timestamp({NOW} - 60)::timestamp, 'f')
        ) t(event_id, user_id, event_name, occurred_at, feature)
        """
    )
    report = run(project_factory.write({"activity": EVENTS}))
    assert (report.delivered, report.changes.rejected) == (1, 1)
    assert dict(report.changes.rejected_samples) == {
        "old": "column `occurred_at`: timestamp 1900-01-01 00:00:00 UTC is before the unix "
        "epoch (Customer.io takes unix seconds, never negative)"
    }
    assert len(project_factory.emulator.events()) == 1
    assert report.status == "success"  # nothing sent was refused


def test_an_epoch_milliseconds_column_is_rejected_saying_it_looks_like_milliseconds(
    project_factory: ProjectFactory,
) -> None:
    """A number column is read as unix seconds; one of milliseconds (JavaScript, Kafka and
    many exports write them) is rejected naming the column, the value and the fix, not only
    as "in the future" (in the year 58000). Unix seconds of the same column go."""
    table(
        project_factory,
        f"('ms', 1, 'Used', {(NOW - 60) * 1000}::bigint, 'f'), "
        f"('s', 1, 'Used', {NOW - 60}::bigint, 'f'), ('soon', 1, 'Used', {NOW + 3600}, 'f')",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    report = run(project_factory.write({"activity": EVENTS}))
    assert (report.delivered, report.changes.rejected) == (1, 2)
    reasons = dict(report.changes.rejected_samples)
    assert reasons["ms"] == (
        f"column `occurred_at`: timestamp {(NOW - 60) * 1000} is not unix seconds (it would be "
        "past the year 5000): it looks like milliseconds; divide it in the model, e.g. "
        "`occurred_at // 1000 as occurred_at`"
    )
    assert "is in the future" in reasons["soon"]  # an hour ahead is not milliseconds
    assert held(project_factory) == [("Used", NOW - 60, {"feature": "f"})]


@pytest.fixture
def machine_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Switch the process's time zone (as a sync run on another machine would see it)."""

    def switch(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield switch
    monkeypatch.undo()
    time.tzset()


def test_hash_ids_over_a_timestamptz_column_do_not_depend_on_the_machines_time_zone(
    project_factory: ProjectFactory, machine_tz: Callable[[str], None]
) -> None:
    project_factory.sql(
        f"""
        create or replace table events as
        select i as user_id, 'Used' as event_name, to_timestamp({NOW} - 600 - i) as occurred_at,
               'f' as feature
        from range(3) t(i)
        """
    )
    hashed = EVENTS.replace("  id: event_id\n", "  id: {hash: [user_id, occurred_at]}\n")
    project = project_factory.write({"activity": hashed})
    machine_tz("UTC")
    assert run(project).delivered == 3
    machine_tz("America/New_York")  # the same project and state, run on a laptop
    again = run(project)
    assert again.changes.to_send == 0 and again.changes.already_delivered == 3
    assert len(project_factory.emulator.events()) == 3


def test_a_text_timestamp_without_an_offset_is_utc_on_any_machine(
    project_factory: ProjectFactory, machine_tz: Callable[[str], None]
) -> None:
    project_factory.sql(
        f"""
        create or replace table events as
        select 'e1' as event_id, 1 as user_id, 'Used' as event_name, 'f' as feature,
               strftime(to_timestamp({NOW} - 600), '%Y-%m-%d %H:%M:%S') as occurred_at
        """
    )
    project = project_factory.write({"activity": EVENTS})
    machine_tz("America/New_York")
    assert run(project).delivered == 1
    assert [e.timestamp for e in project_factory.emulator.events()] == [NOW - 600]


# ------------------------------------------------------------------ several syncs


def test_two_events_syncs_with_the_same_key_in_the_same_second_both_arrive(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        f"""
        create or replace table orders as
        select 1 as id, 7 as user_id, to_timestamp({NOW} - 60) as at;
        create or replace table signups as
        select 1 as id, 7 as user_id, to_timestamp({NOW} - 60) as at;
        """
    )
    sync = """
    name: {n}
    source: warehouse
    model: {{table: {n}}}
    kind: events
    identify_by: {{id: user_id}}
    event: {{name: {{value: {n}}}, timestamp: at, id: id}}
    """
    project = project_factory.write({n: sync.format(n=n) for n in ("orders", "signups")})
    for name in ("orders", "signups"):
        assert run_sync(project, name, console=NullConsole(), now=NOW).delivered == 1
    assert sorted(e.name for e in project_factory.emulator.events()) == ["orders", "signups"]


@pytest.mark.parametrize("timestamp", ["timestamp: at, ", ""], ids=["same second", "no timestamp"])
def test_two_events_syncs_sending_one_name_with_overlapping_keys_lose_no_event(
    project_factory: ProjectFactory, timestamp: str
) -> None:
    """Web and app orders, both `Order Completed`, both numbered from 1, in the same second
    (or without a timestamp column, where every id's time part is 0): each order is a
    different person's, so each must keep an id of its own, or Customer.io drops one of each
    pair as a repeat while Lockgate counts both delivered."""
    project_factory.sql(
        f"""
        create or replace table web_orders as
        select i as id, 'web_user_' || i as user_id, to_timestamp({NOW} - 60) as at,
               'web' as channel from range(1, 6) t(i);
        create or replace table app_orders as
        select i as id, 'app_user_' || i as user_id, to_timestamp({NOW} - 60) as at,
               'app' as channel from range(1, 6) t(i);
        """
    )
    # the sync without a timestamp sends its model's events on its first run, as they are
    backfill = "" if timestamp else "backfill: {{first_run: send}}"
    sync = f"""
    name: {{n}}
    source: warehouse
    model: {{{{table: {{n}}}}}}
    kind: events
    identify_by: {{{{id: user_id}}}}
    event: {{{{name: {{{{value: Order Completed}}}}, {timestamp}id: id}}}}
    properties: [channel]
    {backfill}
    """
    names = ("web_orders", "app_orders")
    project = project_factory.write({n: sync.format(n=n) for n in names})
    for name in names:
        assert run_sync(project, name, console=NullConsole(), now=NOW).delivered == 5
    emu = project_factory.emulator
    assert emu.stats.duplicate_events_dropped == 0
    assert sorted(e.data["channel"] for e in emu.events()) == ["app"] * 5 + ["web"] * 5


# ------------------------------------------------------------------ key columns changing type


@pytest.mark.parametrize(
    "id_spec", ["id: event_id", "id: {hash: [user_id, occurred_at]}"], ids=["column", "hash"]
)
def test_a_key_column_changing_type_within_its_family_sends_nothing_twice(
    project_factory: ProjectFactory, id_spec: str
) -> None:
    """A model refactor that turns `timestamp` into `timestamptz` or `timestamp_ns`, or an
    integer id into a `double` or a `decimal`, passes the type-drift guardrail (same family),
    so the keys must not change with it: every recent event would be sent again, and trigger
    its campaigns twice."""
    shapes = [
        ("event_id", "user_id", f"{ts(600)}::timestamp - interval (i) second"),
        ("event_id::double", "user_id::double", f"{ts(600)} - interval (i) second"),
        (
            "event_id::decimal(12,2)",
            "user_id::decimal(12,2)",
            f"({ts(600)}::timestamp - interval (i) second)::timestamp_ns",
        ),
    ]
    project = project_factory.write({"activity": EVENTS.replace("id: event_id", id_spec)})
    for n, (event_id, user_id, at) in enumerate(shapes):
        project_factory.sql(
            f"""
            create or replace table events as
            select {event_id} as event_id, {user_id} as user_id, 'Used' as event_name,
                   {at} as occurred_at, 'f' as feature
            from (select i, 100 + i as event_id, i as user_id from range(3) t(i))
            """
        )
        report = run(project)
        assert report.status == "success"
        expected = (3, 0) if n == 0 else (0, 3)  # (delivered, already delivered)
        assert (report.delivered, report.changes.already_delivered) == expected
    assert len(project_factory.emulator.events()) == 3


# ------------------------------------------------------------------ order of sending


def test_a_run_sends_its_events_oldest_first_whatever_the_models_row_order(
    project_factory: ProjectFactory,
) -> None:
    """A person's events reach Customer.io in the order they happened (a campaign triggered by
    `trial_started` and filtered on `signed_up` sees both), not in the model's row order."""
    ages = [(i * 7919) % 200 * 60 + 60 for i in range(60)]  # 60 distinct ages, shuffled
    rows = ", ".join(
        f"('e{i}', {1 + i % 3}, 'Used', {ts(age)}, 'f{i}')" for i, age in enumerate(ages)
    )
    table(project_factory, rows, "event_id, user_id, event_name, occurred_at, feature")
    project = project_factory.write({"activity": EVENTS})
    assert run(project).delivered == 60
    arrived = [e.timestamp for e in project_factory.emulator.events()]
    assert len(arrived) == 60
    assert arrived == sorted(arrived)


def test_an_event_name_over_100_bytes_of_utf8_is_rejected_saying_its_size(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io's limit is 100 bytes of UTF-8: a name of 60 `é` is 60 characters, and the
    reason said only "is over 100 bytes" of a name that looked short; it says its size now. A
    name of exactly 100 bytes is sent."""
    table(
        project_factory,
        f"('e1', 1, repeat('é', 60), {ts(600)}, 'x'), ('e2', 1, repeat('é', 50), {ts(600)}, 'x')",
        "event_id, user_id, event_name, occurred_at, feature",
    )
    report = run(project_factory.write({"activity": EVENTS}))
    assert dict(report.changes.rejected_samples) == {
        "e1": f"event name `{'é' * 60}` is 120 bytes, over the 100-byte limit of Customer.io "
        "(UTF-8)"
    }
    assert [e.name for e in project_factory.emulator.events()] == ["é" * 50]
