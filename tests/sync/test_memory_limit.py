"""The sync engine runs in the state's fixed memory: its DuckDB operators spill to disk.

DuckDB holds a few operators in memory whatever its limit (a `count(distinct k)`, a sort or a
window carrying payloads), and at the shipped 256 MB limit only a 10M-row bench shows them.
Here the state runs under 16 MB on one thread (`LOCKGATE_STATE_MEMORY_LIMIT`,
`LOCKGATE_STATE_THREADS`), so a model of a few hundred thousand rows is as far past the limit
as 10M rows are past 256 MB, and such an operator fails the run with DuckDB's out-of-memory
error. Every path a large model takes runs here: a fresh plan, a first and an incremental
people sync with people leaving a mirror sync, a first events sync with repeated keys and an
incremental one. (A `count(distinct k)` back in the repeated-key check of a fresh plan, as it
was in 99790f6, fails the first test; a time-ordered read of 100,000 events' payloads, as the
delivery made before it bounded that read by the memory limit, fails the events test.)

One thread, because DuckDB shares the limit among its threads and sizes what it holds per
thread: the result must not depend on the machine's cores.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.sync.helpers import ACTIVITY

from lockgate.cli import main
from lockgate.console import NullConsole
from lockgate.errors import StateError
from lockgate.state.store import StateStore
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

LIMIT = "16MB"

PEOPLE = """
name: people
source: warehouse
model: {table: people}
kind: people
primary_key: id
identify_by: {id: id}
mode: mirror
attributes:
  plan: plan
"""

EVENTS = ACTIVITY


@pytest.fixture(autouse=True)
def small_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCKGATE_STATE_MEMORY_LIMIT", LIMIT)
    monkeypatch.setenv("LOCKGATE_STATE_THREADS", "1")


def people(factory: ProjectFactory, rows: int) -> None:
    factory.sql(
        "create or replace table people as "
        f"select i as id, 'plan-' || (i % 7) as plan from range({rows}) t(i)"
    )


def test_a_fresh_plan_of_600k_people_runs_in_16mb(project_factory: ProjectFactory) -> None:
    people(project_factory, 600_000)
    project = project_factory.write({"people": PEOPLE})

    plan = plan_sync(project, "people", console=NullConsole())

    assert (plan.changes.rows, plan.changes.to_send) == (600_000, 600_000)
    assert plan.changes.rejected == 0


def test_people_first_incremental_and_mirror_runs_in_16mb(project_factory: ProjectFactory) -> None:
    people(project_factory, 100_000)
    project = project_factory.write({"people": PEOPLE})
    emu = project_factory.emulator

    first = run_sync(project, "people", console=NullConsole())
    assert first.delivered == 100_000

    # 1,000 people change plan, 2,000 leave the model (mirror clears what was sent them)
    project_factory.sql(
        "update people set plan = 'changed' where id % 100 = 3; "
        "delete from people where id % 50 = 1"
    )
    plan = plan_sync(project, "people", console=NullConsole())
    assert (plan.changes.to_send, plan.changes.removed) == (3_000, 2_000)
    second = run_sync(project, "people", console=NullConsole(), force=True)
    assert second.delivered == 3_000

    changed, left, kept = emu.person(id="3"), emu.person(id="1"), emu.person(id="2")
    assert changed is not None and changed.attributes["plan"] == "changed"
    assert left is not None and "plan" not in left.attributes
    assert kept is not None and kept.attributes["plan"] == "plan-2"
    assert run_sync(project, "people", console=NullConsole()).changes.to_send == 0


def test_events_first_and_incremental_runs_in_16mb(project_factory: ProjectFactory) -> None:
    # 100,000 rows of 90,000 keys: every tenth key comes twice, the copies an hour apart
    project_factory.sql(
        """
        create or replace table events as
        select 'e' || (i * 9 // 10) as event_id, i % 1000 as user_id, 'Feature Used' as event_name,
               now() - interval 1 hour - to_seconds(i % 5000) as occurred_at,
               'feature-' || (i % 13) as feature
        from range(100000) t(i)
        """
    )
    project = project_factory.write({"activity": EVENTS})
    emu = project_factory.emulator

    first = run_sync(project, "activity", console=NullConsole())
    assert (first.delivered, first.changes.duplicates_in_model) == (90_000, 10_000)

    project_factory.sql(
        "insert into events select 'new' || i, i % 1000, 'Feature Used', "
        "now() - interval 1 hour, 'new' from range(1000) t(i)"
    )
    second = run_sync(project, "activity", console=NullConsole())
    assert (second.delivered, second.changes.already_delivered) == (1_000, 90_000)
    assert len(emu.events()) == 91_000


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("LOCKGATE_STATE_MEMORY_LIMIT", "lots", "is not a memory size"),
        ("LOCKGATE_STATE_MEMORY_LIMIT", "16MB'; drop table x; --", "is not a memory size"),
        ("LOCKGATE_STATE_THREADS", "0", "is not a number of threads"),
    ],
)
def test_a_setting_that_is_not_a_size_or_a_count_is_an_error_naming_it(
    project_factory: ProjectFactory,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    said: str,
) -> None:
    people(project_factory, 10)
    project = project_factory.write({"people": PEOPLE})
    monkeypatch.setenv(variable, value)

    with pytest.raises(StateError) as caught:
        plan_sync(project, "people", console=NullConsole())

    assert f"{variable}={value!r} {said}" in str(caught.value)
    assert project_factory.emulator.people() == []


def test_a_failure_recovering_a_killed_run_is_shown_as_it_is_and_the_next_run_recovers(
    project_factory: ProjectFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The state a run killed while sending 200,000 events leaves: its write-ahead record.
    The next run keeps their ids in one transaction, which runs out of 16 MB (DuckDB aborts
    the transaction): the error seen is that one, naming the setting to raise, not DuckDB's
    `Current transaction is aborted` from dropping the run's Arrow table after it; and the
    state is as it was, so a run with more memory recovers the killed run's events and sends
    them once."""
    project_factory.sql(
        "create or replace table events as select 'e' || i as event_id, i % 100 as user_id, "
        "'Feature Used' as event_name, now() - interval 1 hour as occurred_at, 'f' as feature "
        "from range(1000) t(i)"
    )
    project = project_factory.write({"activity": EVENTS})
    with StateStore.open(project.state_dir) as store:
        store.ensure_sync_tables("activity")
        store.exec_sql(
            'insert into "sending_events__activity" '
            "select 'e' || i, 0, hash(i), hash(-i) from range(200000) t(i)"
        )

    with pytest.raises(SystemExit) as exited:
        main(["sync", "activity", "--project", str(project.root)])
    said = capsys.readouterr().err
    assert exited.value.code == 1
    assert "Error: the state ran out of memory (16MB): Out of Memory Error" in said
    assert "hint: set LOCKGATE_STATE_MEMORY_LIMIT to a larger size" in said
    assert "transaction is aborted" not in said
    assert project_factory.emulator.events() == []

    monkeypatch.delenv("LOCKGATE_STATE_MEMORY_LIMIT")
    console = NullConsole()
    again = run_sync(project, "activity", console=console)
    assert (again.status, again.delivered) == ("success", 1000)
    assert any("left 200000 event(s) unconfirmed" in m for m in console.messages)
    assert len(project_factory.emulator.events()) == 1000
