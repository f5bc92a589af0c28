"""Records whose delivery Customer.io did not confirm: sent again whatever their rows hold.

Customer.io can apply a request whose answer Lockgate never hears (a 503 or a timeout after
the request was applied, a second stop cutting it off). The snapshot keeps what was last
confirmed, so a row that went back to that value before the next run looked unchanged and
Customer.io kept the value never confirmed. `on_change` events re-sent after such a loss
carry the id and timestamp they were first sent with, so Customer.io stores each once.

A run killed outright (SIGKILL, the machine dying) cannot mark what it had in flight: what it
was about to send is written ahead, and the next run marks what its journal does not confirm.

Every test runs real syncs against the emulator, whose faults change between runs
(``Emulator.set_faults``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.sync.helpers import PEOPLE, UNMARK_TABLES
from tests.sync.test_objects import COMPANIES, MEMBERSHIPS, rels, run_all, seed
from tests.sync.test_objects import PEOPLE as USERS

from lockgate.cli.sync import change_rows
from lockgate.console import NullConsole
from lockgate.emulator import FaultConfig
from lockgate.errors import ContractError
from lockgate.project.loader import Project, load_project
from lockgate.state.store import STATE_FORMAT, StateStore
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)


#: applied in full, then answered 503: every answer is lost
ANSWERS_LOST = FaultConfig(error_5xx=1.0, applied_then_failed=True)


def run_answers_lost(project: Project, sync: str, emu: Any) -> None:
    """A run of ``sync`` against a Customer.io that applies every request and loses its
    answer (a 5xx): each change made, none confirmed."""
    emu.set_faults(ANSWERS_LOST)
    run_sync(project, sync, console=NullConsole())
    emu.set_faults(FaultConfig())


def seed_people(factory: ProjectFactory, n: int) -> None:
    factory.sql(
        "create or replace table people as select i::varchar as id, 'pro' || i as plan "
        f"from range({n}) t(i)"
    )


def plan_of(factory: ProjectFactory, person: str) -> Any:
    found = factory.emulator.person(id=person)
    return found.attributes.get("plan") if found is not None else None


def test_a_dead_lettered_update_is_sent_again_when_its_row_goes_back(
    project_factory: ProjectFactory,
) -> None:
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE}, retries=0)
    emu = project_factory.emulator
    assert run_sync(project, "people", console=NullConsole()).delivered == 5

    project_factory.sql("update people set plan = 'B' where id = '3'")
    emu.set_faults(ANSWERS_LOST)
    lost = run_sync(project, "people", console=NullConsole())
    assert (lost.status, lost.dead_lettered) == ("partial", 1)
    assert plan_of(project_factory, "3") == "B"  # applied, though never confirmed

    # the row is back at the value last confirmed before the next run
    project_factory.sql("update people set plan = 'pro3' where id = '3'")
    emu.set_faults(FaultConfig())
    plan = plan_sync(project, "people", console=NullConsole())
    assert (plan.changes.changed, plan.changes.unconfirmed) == (1, 1)
    assert ("  of which unconfirmed last time (sent again)", 1) in change_rows(plan)
    again = run_sync(project, "people", console=NullConsole())
    assert (again.status, again.delivered) == ("success", 1)
    assert plan_of(project_factory, "3") == "pro3"
    # confirmed now: nothing more to send
    assert run_sync(project, "people", console=NullConsole()).changes.to_send == 0


def test_a_record_customerio_refused_is_not_sent_again_once_its_row_goes_back(
    project_factory: ProjectFactory,
) -> None:
    """A per-record refusal applied nothing: the snapshot's value is what Customer.io holds."""
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE})
    emu = project_factory.emulator
    run_sync(project, "people", console=NullConsole())

    project_factory.sql("update people set plan = 'B' where id = '3'")
    emu.set_faults(FaultConfig(reject_people=frozenset({"3"})))
    refused = run_sync(project, "people", console=NullConsole())
    assert (refused.status, refused.rejected_by_api) == ("partial", 1)
    project_factory.sql("update people set plan = 'pro3' where id = '3'")
    emu.set_faults(FaultConfig())
    assert run_sync(project, "people", console=NullConsole()).changes.to_send == 0
    assert plan_of(project_factory, "3") == "pro3"


def test_a_mirror_clear_whose_answer_was_lost_is_undone_when_the_row_comes_back(
    project_factory: ProjectFactory,
) -> None:
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE + "mode: mirror\n"}, retries=0)
    emu = project_factory.emulator
    run_sync(project, "people", console=NullConsole())

    project_factory.sql("delete from people where id = '3'")
    emu.set_faults(ANSWERS_LOST)
    lost = run_sync(project, "people", console=NullConsole())
    assert (lost.changes.removed_sent, lost.dead_lettered) == (1, 1)
    assert plan_of(project_factory, "3") is None  # cleared in Customer.io

    seed_people(project_factory, 5)  # person 3 is back, as last confirmed
    emu.set_faults(FaultConfig())
    back = run_sync(project, "people", console=NullConsole())
    assert (back.changes.changed, back.changes.unconfirmed, back.delivered) == (1, 1, 1)
    assert plan_of(project_factory, "3") == "pro3"
    assert run_sync(project, "people", console=NullConsole()).changes.to_send == 0


def test_an_update_cut_off_by_a_second_sigterm_is_sent_again_when_its_row_goes_back(
    project_factory: ProjectFactory,
) -> None:
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE})
    emu = project_factory.emulator
    run_sync(project, "people", console=NullConsole())

    project_factory.sql("update people set plan = 'B' where id = '3'")
    # Customer.io takes the request at once and answers 2 s later
    emu.set_faults(FaultConfig(answer_latency_ms=2000))
    victim = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "sync", "people", "--project", str(project.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while plan_of(project_factory, "3") != "B" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert plan_of(project_factory, "3") == "B"
        victim.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        victim.send_signal(signal.SIGTERM)
        _, err = victim.communicate(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == 143, err
    assert "the requests in flight were cut off" in err
    # the stop marked what it cut off itself: nothing is left for the next run to take as a kill's
    assert sending_keys(project, "people") == 0

    project_factory.sql("update people set plan = 'pro3' where id = '3'")
    emu.set_faults(FaultConfig())
    again = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (again.changes.unconfirmed, again.delivered) == (1, 1)
    assert plan_of(project_factory, "3") == "pro3"


def killed_once_applied(
    root: Path,
    sync: str,
    emu: Any,
    applied: Callable[[], bool],
    *,
    latency_ms: int = 3000,
    settle: float = 0.0,
) -> None:
    """`lockgate sync SYNC` in a process of its own, against a Customer.io that applies each
    request at once and answers it ``latency_ms`` later; SIGKILLed ``settle`` seconds after
    ``applied()`` sees the change in the emulator: the run dies with the request applied and
    its answer not heard."""
    emu.set_faults(FaultConfig(answer_latency_ms=latency_ms))
    victim = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "sync", sync, "--project", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not applied() and time.monotonic() < deadline and victim.poll() is None:
            time.sleep(0.05)
        assert applied(), "the change never reached the emulator"
        time.sleep(settle)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    emu.set_faults(FaultConfig())


def test_an_update_in_flight_when_the_run_is_killed_is_sent_again_when_its_row_goes_back(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io applied `plan = B`, the run was SIGKILLed before it heard so; the row went
    back to the value last confirmed: the next run sends it, Customer.io ends with the row's."""
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE})
    emu = project_factory.emulator
    run_sync(project, "people", console=NullConsole())

    project_factory.sql("update people set plan = 'B' where id = '3'")
    killed_once_applied(project.root, "people", emu, lambda: plan_of(project_factory, "3") == "B")

    project_factory.sql("update people set plan = 'pro3' where id = '3'")
    console = NullConsole()
    again = run_sync(load_project(project.root), "people", console=console)
    assert (again.status, again.changes.unconfirmed, again.delivered) == ("success", 1, 1)
    assert plan_of(project_factory, "3") == "pro3"
    assert (
        "warning: people: a run killed while sending left 1 record(s) unconfirmed (Customer.io "
        "may have applied them): they are sent again whatever their rows hold"
    ) in console.messages
    # confirmed now, the others never changed: nothing more to send
    assert run_sync(project, "people", console=NullConsole()).changes.to_send == 0


def test_a_mirror_clear_in_flight_when_the_run_is_killed_is_undone_when_the_row_comes_back(
    project_factory: ProjectFactory,
) -> None:
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE + "mode: mirror\n"})
    emu = project_factory.emulator
    run_sync(project, "people", console=NullConsole())

    project_factory.sql("delete from people where id = '3'")
    killed_once_applied(project.root, "people", emu, lambda: plan_of(project_factory, "3") is None)

    seed_people(project_factory, 5)  # person 3 is back, as last confirmed
    again = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (again.changes.unconfirmed, again.delivered) == (1, 1)
    assert plan_of(project_factory, "3") == "pro3"


def test_a_relationship_deleted_in_flight_when_the_run_is_killed_is_added_back_with_its_row(
    project_factory: ProjectFactory,
) -> None:
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": USERS, "memberships": MEMBERSHIPS}
    )
    emu = project_factory.emulator
    run_all(project)
    linus = ("3", "1", "globex", "owner")

    project_factory.sql("delete from members where user_id = 3")
    killed_once_applied(project.root, "memberships", emu, lambda: linus not in rels(emu))

    project_factory.sql("insert into members values (3, 'globex', 'owner')")
    again = run_sync(load_project(project.root), "memberships", console=NullConsole())
    assert (again.changes.unconfirmed, again.delivered) == (1, 1)
    assert linus in rels(emu)


def test_a_person_delete_in_flight_when_the_run_is_killed_lets_their_relationships_come_back(
    project_factory: ProjectFactory,
) -> None:
    """A `mirror` + `delete_removed` people sync deleted Linus; Customer.io deleted him with
    his relationships, and the run was SIGKILLed before it heard so. The next run took the
    delete it had in flight for an identify (the write-ahead record kept no action): Linus
    came back with his row, but his membership stayed in the relationships snapshot as
    delivered and was never sent again. The delete is now recovered as a delete: his
    relationships are forgotten, and sent again once he is back."""
    seed(project_factory)
    deleting = USERS + "mode: mirror\ndelete_removed: true\n"
    project = project_factory.write(
        {"companies": COMPANIES, "people": deleting, "memberships": MEMBERSHIPS}
    )
    emu = project_factory.emulator
    run_all(project)
    linus = ("3", "1", "globex", "owner")
    assert linus in rels(emu)

    project_factory.sql("delete from users where user_id = 3")
    killed_once_applied(project.root, "people", emu, lambda: emu.person(id="3") is None)
    assert linus not in rels(emu)  # Customer.io took his relationships with him
    with StateStore.open(project.state_dir) as store:  # written ahead with what was sent
        assert store.exec_sql('select action from "sending__people"') == [("delete",)]

    project_factory.sql("insert into users values (3, 'Linus')")  # back, as last confirmed
    again = run_all(load_project(project.root))
    assert again["people"].changes.unconfirmed == 1
    assert again["memberships"].delivered == 1
    assert linus in rels(emu)
    assert emu.person(id="3") is not None


def test_a_write_ahead_record_of_the_format_before_actions_is_still_recovered(
    project_factory: ProjectFactory,
) -> None:
    """A state of format 1 has `sending__S(kh)` alone: opened by this Lockgate it gains
    `action` (the records left there recovered with none, as before), and `k` and `ident`
    (format 3), and the state is recorded as of this format, which a Lockgate of format 1
    then refuses rather than failing on its insert."""
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE})
    run_sync(project, "people", console=NullConsole())
    with StateStore.open(project.state_dir) as store:  # as a format-1 run killed while sending
        store.exec_sql(
            'drop table "sending__people"; create table "sending__people" (kh ubigint); '
            "insert into \"sending__people\" select hash('3'); "
            "update state_format set format = 1"
        )
    # the commands that only read read it as it is (they upgrade nothing)
    from click.testing import CliRunner

    from lockgate.cli import cli

    listed = CliRunner().invoke(cli, ["runs", "--json", "--project", str(project.root)])
    assert listed.exit_code == 0, listed.output
    assert [r["status"] for r in json.loads(listed.output)] == ["success"]

    again = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (again.changes.unconfirmed, again.delivered) == (1, 1)
    with StateStore.open(project.state_dir) as store:
        columns = store.exec_sql('describe "sending__people"')
        assert [c[0] for c in columns] == ["kh", "action", "k", "ident"]
        assert store.exec_sql("select format from state_format") == [(STATE_FORMAT,)]


def test_a_relationship_added_in_flight_when_the_run_is_killed_is_removed_once_its_row_leaves(
    project_factory: ProjectFactory,
) -> None:
    """Linus moves from Globex to Acme; Customer.io applied the new membership, the run was
    SIGKILLed before it heard so; the move is undone. The Acme membership left the model
    before it was ever confirmed: the next run must still remove it (relationships are
    mirrored), as an uninterrupted pair of runs would have."""
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": USERS, "memberships": MEMBERSHIPS}
    )
    emu = project_factory.emulator
    run_all(project)
    moved = ("3", "1", "acme", "owner")

    project_factory.sql("update members set company_id = 'acme' where user_id = 3")
    killed_once_applied(project.root, "memberships", emu, lambda: moved in rels(emu))

    project_factory.sql("update members set company_id = 'globex' where user_id = 3")
    run_sync(load_project(project.root), "memberships", console=NullConsole())
    assert ("3", "1", "globex", "owner") in rels(emu)
    assert moved not in rels(emu)


def test_a_relationship_added_whose_answer_was_lost_is_removed_once_its_row_leaves(
    project_factory: ProjectFactory,
) -> None:
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": USERS, "memberships": MEMBERSHIPS}, retries=0
    )
    emu = project_factory.emulator
    run_all(project)
    moved = ("3", "1", "acme", "owner")

    project_factory.sql("update members set company_id = 'acme' where user_id = 3")
    run_answers_lost(project, "memberships", emu)
    assert moved in rels(emu)  # applied, never confirmed

    project_factory.sql("update members set company_id = 'globex' where user_id = 3")
    run_sync(load_project(project.root), "memberships", console=NullConsole())
    assert ("3", "1", "globex", "owner") in rels(emu)
    assert moved not in rels(emu)


def created_unconfirmed(factory: ProjectFactory, rows: int) -> tuple[Project, Any]:
    """A `mirror` sync with `delete_removed: true` run over 5 people, then over ``rows`` with
    every answer lost: people 5 to ``rows - 1`` created in Customer.io, never confirmed."""
    seed_people(factory, 5)
    project = factory.write({"people": PEOPLE + "mode: mirror\ndelete_removed: true\n"}, retries=0)
    emu = factory.emulator
    run_sync(project, "people", console=NullConsole())
    seed_people(factory, rows)
    run_answers_lost(project, "people", emu)
    return project, emu


def test_a_person_created_whose_answer_was_lost_is_deleted_once_their_row_leaves(
    project_factory: ProjectFactory,
) -> None:
    """`mode: mirror` with `delete_removed: true`: person 5 was created in Customer.io but
    the run never heard so, and their row left before the next run, which must delete them."""
    project, emu = created_unconfirmed(project_factory, 6)
    assert emu.person(id="5") is not None  # created, never confirmed

    seed_people(project_factory, 5)  # person 5's row leaves
    run_sync(load_project(project.root), "people", console=NullConsole())
    assert emu.person(id="5") is None


def test_a_person_created_whose_answer_was_lost_under_format_2_is_deleted_once_upgraded(
    project_factory: ProjectFactory,
) -> None:
    """A state of format 2 kept the unconfirmed record's key without the identifiers it was
    sent to: opened by this Lockgate, they are read from the run's history, so the next
    `mirror` run still deletes the person created (maybe) whose row has left; a row still in
    the model is sent again as before."""
    project, emu = created_unconfirmed(project_factory, 7)
    assert emu.person(id="5") is not None and emu.person(id="6") is not None
    with StateStore.open(project.state_dir) as store:  # as format 2 left it
        store.exec_sql(
            'alter table "unconfirmed__people" drop column ident; '
            "update state_format set format = 2"
        )

    seed_people(project_factory, 6)  # person 6's row leaves (ids 0..5 stay)
    again = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (again.status, again.delivered) == ("success", 2)  # 5 sent again, 6 deleted
    assert emu.person(id="6") is None
    assert emu.person(id="5") is not None
    assert run_sync(project, "people", console=NullConsole()).changes.to_send == 0


def sending_keys(project: Project, sync: str) -> int:
    """How many records the write-ahead record of ``sync`` holds."""
    with StateStore.open(project.state_dir) as store:
        return int(store.exec_sql(f'select count(*) from "sending__{sync}"')[0][0])


def test_runs_that_end_leave_nothing_written_ahead(project_factory: ProjectFactory) -> None:
    """A run that heard every answer, one with a record Customer.io refused, and a plan leave
    no write-ahead record: the next run sends only what changed (a refused record's row back
    at its value is not sent: Customer.io applied nothing of it)."""
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE})
    emu = project_factory.emulator
    run_sync(project, "people", console=NullConsole())
    project_factory.sql("update people set plan = 'B' where id in ('2', '3')")
    emu.set_faults(FaultConfig(reject_people=frozenset({"3"})))
    assert run_sync(project, "people", console=NullConsole()).status == "partial"
    emu.set_faults(FaultConfig())
    assert sending_keys(project, "people") == 0

    project_factory.sql("update people set plan = 'pro3' where id = '3'")
    project_factory.sql("update people set plan = 'C' where id = '4'")
    assert plan_sync(project, "people", console=NullConsole()).changes.to_send == 1
    assert sending_keys(project, "people") == 0
    again = run_sync(project, "people", console=NullConsole())
    assert (again.changes.to_send, again.changes.unconfirmed) == (1, 0)
    assert sending_keys(project, "people") == 0
    assert run_sync(project, "people", console=NullConsole()).changes.to_send == 0
    assert [plan_of(project_factory, p) for p in "01234"] == ["pro0", "pro1", "B", "pro3", "C"]


def test_a_run_a_guardrail_stops_and_a_run_of_named_records_leave_nothing_written_ahead(
    project_factory: ProjectFactory,
) -> None:
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE + "guardrails: {max_changed: 1}\n"})
    run_sync(project, "people", console=NullConsole())
    project_factory.sql("update people set plan = 'B' where id in ('1', '2')")
    with pytest.raises(ContractError, match="max_changed is 2, over the limit of 1"):
        run_sync(project, "people", console=NullConsole())
    assert sending_keys(project, "people") == 0

    named = run_sync(project, "people", console=NullConsole(), only=("1",))
    assert (named.status, named.delivered) == ("success", 1)
    assert sending_keys(project, "people") == 0
    assert [plan_of(project_factory, p) for p in "012"] == ["pro0", "B", "pro2"]


PLANS = """
name: plans
source: warehouse
model: {table: people}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  plan: plan
on_change:
  - attribute: plan
    to: churned
    event: plan_churned
"""


def churned(emu: Any) -> list[tuple[str | None, str | None, int]]:
    by_cio = {p.cio_id: p.id for p in emu.people()}
    return sorted(
        (by_cio.get(e.person), e.id, e.timestamp) for e in emu.events() if e.name == "plan_churned"
    )


def test_a_state_change_event_whose_answer_was_lost_is_stored_once(
    project_factory: ProjectFactory,
) -> None:
    """The re-sent transition carries the id and timestamp it was first sent with (they came
    from each run's own time: a second run re-sent it under a new id, stored twice)."""
    seed_people(project_factory, 4)
    project = project_factory.write({"plans": PLANS}, retries=0)
    emu = project_factory.emulator
    first = 1_800_000_000
    run_sync(project, "plans", console=NullConsole(), now=first)

    project_factory.sql("update people set plan = 'churned' where id in ('1', '2')")
    emu.set_faults(ANSWERS_LOST)
    lost = run_sync(project, "plans", console=NullConsole(), now=first + 60)
    assert (lost.changes.state_events, lost.dead_lettered) == (2, 2)
    sent = churned(emu)
    assert [(p, ts) for p, _, ts in sent] == [("1", first + 60), ("2", first + 60)]

    emu.set_faults(FaultConfig())
    again = run_sync(project, "plans", console=NullConsole(), now=first + 120)
    assert again.status == "success" and again.changes.state_events == 2
    assert churned(emu) == sent  # the same two events: Customer.io dropped the copies
    person = emu.person(id="1")
    assert person is not None and person.attributes["plan"] == "churned"
    assert run_sync(project, "plans", console=NullConsole(), now=first + 180).changes.to_send == 0
    with StateStore.open(project.state_dir) as store:  # delivered: nothing kept for them
        assert store.exec_sql('select count(*) from "oc_sent__plans"')[0][0] == 0


def test_a_state_change_event_sent_before_a_crash_is_stored_once(
    project_factory: ProjectFactory,
) -> None:
    """SIGKILL after Customer.io took the event, before its answer: the next run sends it
    with the same id."""
    seed_people(project_factory, 4)
    project = project_factory.write({"plans": PLANS})
    emu = project_factory.emulator
    run_sync(project, "plans", console=NullConsole(), now=1_800_000_000)

    project_factory.sql("update people set plan = 'churned' where id = '1'")
    emu.set_faults(FaultConfig(answer_latency_ms=2000))
    victim = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "sync", "plans", "--project", str(project.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not churned(emu) and time.monotonic() < deadline:
            time.sleep(0.05)
        sent = churned(emu)
        assert len(sent) == 1
    finally:
        victim.kill()
        victim.wait(timeout=30)

    emu.set_faults(FaultConfig())
    # a later second: the id must not come from this run's time
    time.sleep(1.1)
    again = run_sync(load_project(project.root), "plans", console=NullConsole())
    assert again.status == "success" and again.changes.state_events == 1
    assert churned(emu) == sent


def test_an_object_created_whose_answer_was_lost_is_cleared_once_its_row_leaves(
    project_factory: ProjectFactory,
) -> None:
    """`mode: mirror` (clearing): the Initech object was created in Customer.io but the run
    never heard so, and its row left before the next run: plan and run clear it, as they
    would an object delivered before."""
    seed(project_factory)
    project = project_factory.write({"companies": COMPANIES + "mode: mirror\n"}, retries=0)
    emu = project_factory.emulator
    run_sync(project, "companies", console=NullConsole())

    project_factory.sql("insert into companies values ('initech', 'Initech', 'pro', 9)")
    run_answers_lost(project, "companies", emu)

    def initech() -> dict[str, Any]:
        return next(o.attributes for o in emu.objects() if o.object_id == "initech")

    assert initech().get("name") == "Initech"  # created, never confirmed

    project_factory.sql("delete from companies where company_id = 'initech'")
    plan = plan_sync(load_project(project.root), "companies", console=NullConsole())
    assert (plan.changes.removed, plan.changes.removed_sent, plan.changes.to_send) == (1, 1, 1)
    again = run_sync(load_project(project.root), "companies", console=NullConsole())
    assert (again.status, again.delivered) == ("success", 1)
    assert not any(initech().get(name) for name in ("name", "plan", "seats"))
    assert run_sync(project, "companies", console=NullConsole()).changes.to_send == 0


BY_EMAIL = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: email
identify_by: {email: email}
attributes: {plan: plan}
mode: mirror
"""

#: keyed by the account, identified by the user's `id`: an account key can change while
#: the person stays the same
BY_ACCOUNT = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: account
identify_by: {id: user_id}
attributes: {plan: plan}
mode: mirror
"""


@pytest.mark.parametrize(
    ("body", "rekey", "find"),
    [
        (BY_EMAIL, "update users set email = upper(email) where user_id = '5'", "email"),
        (BY_ACCOUNT, "update users set account = 'acct-new' where user_id = '5'", "id"),
        (
            BY_EMAIL + "delete_removed: true\n",
            "update users set email = upper(email) where user_id = '5'",
            "email",
        ),
    ],
    ids=["email-recased", "account-rekeyed", "email-recased-deleting"],
)
def test_a_person_created_whose_answer_was_lost_and_rekeyed_stops_counting_as_removed(
    project_factory: ProjectFactory, body: str, rekey: str, find: str
) -> None:
    """Person 5 was created in Customer.io but the run never heard so (an unconfirmed mark
    with the identifiers they were sent to); then their row's key changed (the email's case,
    or the account of the same `id`). The mirror run keeps them (the new key reaches the same
    person, nothing is undone) and sends the new key; once it is confirmed, the old key's
    mark is dropped: later runs and plans show nothing removed for them."""
    project_factory.sql(
        "create table users as select i::varchar as user_id, 'acct-' || i as account, "
        "'u' || i || '@example.com' as email, 'pro' || i as plan from range(5) t(i)"
    )
    project = project_factory.write({"profile": body}, retries=0)
    emu = project_factory.emulator
    run_sync(project, "profile", console=NullConsole())

    project_factory.sql("insert into users values ('5', 'acct-5', 'u5@example.com', 'pro5')")
    run_answers_lost(project, "profile", emu)

    def person5() -> Any:
        return emu.person(**{find: "u5@example.com" if find == "email" else "5"})

    assert person5() is not None  # created, never confirmed

    project_factory.sql(rekey)
    rekeyed = run_sync(load_project(project.root), "profile", console=NullConsole())
    assert rekeyed.status == "success"
    assert (rekeyed.changes.removed, rekeyed.changes.rekeyed) == (1, 1)
    assert rekeyed.changes.removed_sent == 0  # kept: the new key reaches them
    for _ in range(2):
        plan = plan_sync(load_project(project.root), "profile", console=NullConsole())
        assert (plan.changes.to_send, plan.changes.removed, plan.changes.rekeyed) == (0, 0, 0)
        again = run_sync(load_project(project.root), "profile", console=NullConsole())
        assert (again.changes.to_send, again.changes.removed, again.changes.rekeyed) == (0, 0, 0)
    assert person5() is not None and person5().attributes.get("plan") == "pro5"
    assert len(emu.people()) == 6


def test_a_write_ahead_table_upgraded_half_way_is_upgraded_whole(
    project_factory: ProjectFactory,
) -> None:
    """Format 3 adds `k` and `ident` to `sending__S`, each its own statement: a Lockgate
    killed between the two left `k` without `ident`. The next open adds the one missing;
    before, it took `k` for the sign of a finished upgrade, and every later run of the sync
    failed writing ahead (no column `ident`)."""
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE})
    run_sync(project, "people", console=NullConsole())
    with StateStore.open(project.state_dir) as store:  # as a kill between the two left it
        store.exec_sql(f'alter table "sending__people" drop column ident; {UNMARK_TABLES}')
    project_factory.sql("update people set plan = 'B' where id = '3'")
    again = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (again.status, again.delivered) == ("success", 1)
    assert plan_of(project_factory, "3") == "B"
    with StateStore.open(project.state_dir) as store:
        columns = store.exec_sql('describe "sending__people"')
        assert [c[0] for c in columns] == ["kh", "action", "k", "ident"]


def test_a_format_2_state_whose_history_was_trimmed_leaves_the_unconfirmed_record_alone(
    project_factory: ProjectFactory,
) -> None:
    """The identifiers of a format-2 unconfirmed record come from the history of the run that
    sent it: `history_days` may have dropped it. Then the record has none, and the upgrade
    guesses nothing: a row still in the model is sent again as before, one that left is not
    undone (nobody is deleted by identifiers of another run), and the runs go on."""
    project, emu = created_unconfirmed(project_factory, 7)
    with StateStore.open(project.state_dir) as store:  # format 2, its history trimmed
        store.exec_sql(
            'alter table "unconfirmed__people" drop column ident; '
            "update state_format set format = 2; "
            "delete from history where k in ('5', '6')"
        )
    # the commands that only read it read it as it is, and leave it of format 2
    from click.testing import CliRunner

    from lockgate.cli import cli

    for command in (["runs", "--json"], ["validate"]):
        said = CliRunner().invoke(cli, [*command, "--project", str(project.root)])
        assert said.exit_code == 0, said.output
    con = duckdb.connect(str(project.state_dir / "state.duckdb"), read_only=True)
    assert con.execute("select format from state_format").fetchall() == [(2,)]
    con.close()

    seed_people(project_factory, 6)  # person 6's row leaves
    plan = plan_sync(load_project(project.root), "people", console=NullConsole())
    assert (plan.changes.new, plan.changes.removed) == (1, 0)
    again = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (again.status, again.delivered, again.changes.removed) == ("success", 1, 0)
    assert emu.person(id="5") is not None
    assert emu.person(id="6") is not None  # left as format 2 left it: not undone
    with StateStore.open(project.state_dir) as store:
        assert store.exec_sql("select format from state_format") == [(STATE_FORMAT,)]
    assert run_sync(project, "people", console=NullConsole()).changes.to_send == 0
