"""A person deleted by one people sync while another sync's killed run left deliveries of
them unfolded.

A run SIGKILLed mid-delivery leaves what Customer.io confirmed in its journal, folded into
its snapshot by its next run. A `mirror` + `delete_removed` people sync that deletes a person
meanwhile makes the other people syncs (and the relationships syncs) forget them, so they
send them again: the journal must forget them too, or the next run folds the delivery back
in and the person (or relationship) counts as delivered, missing from Customer.io for good.

Each run of the sync that is killed sends one record a request, one request at a time,
answered 2 s after Customer.io applied it: the first answer is journaled, then the run is
killed with the second in flight.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.sync.helpers import ACCOUNTS_MIRROR_DELETING
from tests.sync.test_objects import COMPANIES, MEMBERSHIPS, rels, run_all, seed
from tests.sync.test_plan_all_matches_sync import PEOPLE as DELETING
from tests.sync.test_plan_all_matches_sync import colors, lockgate
from tests.sync.test_unconfirmed import killed_once_applied

from lockgate.console import NullConsole
from lockgate.emulator import FaultConfig
from lockgate.project.loader import Project, load_project
from lockgate.state.store import StateStore
from lockgate.sync.resolve import known_people
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

COLORS = colors("colors")


def one_at_a_time(project: Project) -> Project:
    """The project with one record a request, one request in flight."""
    config = project.root / "lockgate.yml"
    text = config.read_text()
    assert "    max_retries: 0\n" in text
    config.write_text(
        text.replace(
            "    max_retries: 0\n", "    max_retries: 0\n    concurrency: 1\n    batch_size: 1\n"
        )
    )
    return load_project(project.root)


def killed_after_one_answer(root: Path, sync: str, emu: Any, applied: Callable[[], int]) -> None:
    """`lockgate sync SYNC` in a process of its own, each request answered 2 s after it is
    applied; SIGKILLed once ``applied()`` counts two changes in the emulator (the first one
    answered and journaled, the second in flight)."""
    # the first answer's journal write lands 0.5 s after; the second is 1.5 s away
    killed_once_applied(root, sync, emu, lambda: applied() == 2, latency_ms=2000, settle=0.5)


def colored_as(emu: Any, prefix: str, *ids: str) -> Callable[[], int]:
    """How many of the people ``ids`` Customer.io holds with the color ``prefix`` + their id."""

    def count() -> int:
        return sum(
            1
            for i in ids
            if (p := emu.person(id=i)) is not None and p.attributes.get("color") == prefix + i
        )

    return count


def journaled(project: Project, sync: str) -> list[str]:
    """The keys the journal of ``sync`` holds (delivered, not folded)."""
    with StateStore.open(project.state_dir) as store:
        return [str(r[0]) for r in store.exec_sql(f'select k from "journal__{sync}"')]


def test_a_person_deleted_after_another_syncs_killed_run_delivered_them_is_sent_again(
    project_factory: ProjectFactory,
) -> None:
    """`colors` delivers new colors to users 2 and 3 and is killed: one delivery journaled,
    one in flight. `people` then deletes both. `colors`' next run must send both again in
    full: the journaled one was folded back in as delivered, and user stayed deleted."""
    project_factory.sql(
        "create table users as select i as user_id, 'U' || i as first_name from range(1, 5) t(i);"
        "create table colors as select i as user_id, 'hue' || i as color from range(1, 5) t(i)"
    )
    project = one_at_a_time(
        project_factory.write({"people": DELETING, "colors": COLORS}, retries=0)
    )
    emu = project_factory.emulator
    run_all(project)

    project_factory.sql("update colors set color = 'new' || user_id where user_id in (2, 3)")

    killed_after_one_answer(project.root, "colors", emu, colored_as(emu, "new", "2", "3"))
    assert len(journaled(project, "colors")) == 1

    project_factory.sql("delete from users where user_id in (2, 3)")
    deleted = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (deleted.status, deleted.changes.removed_sent) == ("success", 2)
    assert deleted.resent_by == (("colors", 2),)
    assert emu.person(id="2") is None and emu.person(id="3") is None

    again = run_sync(load_project(project.root), "colors", console=NullConsole())
    assert (again.status, again.changes.new, again.delivered) == ("success", 2, 2)
    for i in ("2", "3"):
        person = emu.person(id=i)
        assert person is not None and person.attributes == {"color": "new" + i}
    for name in ("people", "colors"):
        assert plan_sync(project, name, console=NullConsole()).changes.to_send == 0


def test_a_relationship_a_killed_run_delivered_is_sent_again_once_its_deleted_person_is_back(
    project_factory: ProjectFactory,
) -> None:
    """`memberships` delivers two memberships of Linus and is killed: one journaled, one in
    flight. `people` deletes Linus (Customer.io deletes his relationships with him), then
    he is back: both memberships must be sent again, the journaled one too."""
    seed(project_factory)
    project = one_at_a_time(
        project_factory.write(
            {
                "companies": COMPANIES,
                "people": DELETING,
                "memberships": MEMBERSHIPS,
            },
            retries=0,
        )
    )
    emu = project_factory.emulator
    run_all(project)
    moved = {("3", "1", "globex", "admin"), ("3", "1", "acme", "member")}

    project_factory.sql(
        "update members set role = 'admin' where user_id = 3;"
        "insert into members values (3, 'acme', 'member')"
    )
    killed_after_one_answer(project.root, "memberships", emu, lambda: len(moved & rels(emu)))
    assert len(journaled(project, "memberships")) == 1

    project_factory.sql("delete from users where user_id = 3")
    deleted = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (deleted.status, deleted.changes.removed_sent) == ("success", 1)
    assert not {r for r in rels(emu) if r[0] == "3"}

    project_factory.sql("insert into users values (3, 'Linus')")
    runs = run_all(load_project(project.root))
    assert [r.status for r in runs.values()] == ["success"] * 3
    assert {r for r in rels(emu) if r[0] == "3"} == moved
    for name in runs:
        assert plan_sync(project, name, console=NullConsole()).changes.to_send == 0


def sent_to(emu: Any, person: str, since: int) -> list[Any]:
    """The bodies of the requests since the ``since``-th that name the person ``person`` (by
    `id`, in a batch or alone)."""
    bodies = [r.body for r in emu.request_log()[since:] if r.method != "GET"]
    return [b for b in bodies if f'"id": "{person}"' in json.dumps(b) or f"/{person}" in str(b)]


@pytest.mark.parametrize(
    "mode", ["mode: mirror\n", "mode: mirror\ndelete_removed: true\n"], ids=["clear", "delete"]
)
def test_a_person_another_sync_deletes_is_not_undone_for_an_unconfirmed_update(
    project_factory: ProjectFactory, mode: str
) -> None:
    """`colors` sends user 3 a new color and the answer is lost: the update is unconfirmed.
    User 3 then leaves both models, and `people` deletes them: `colors` forgets them, its
    unconfirmed update too. Before, its next run undid that update (a clear, or a delete) on
    a person already deleted: a wasted request, reported as removed."""
    project_factory.sql(
        "create table users as select i as user_id, 'U' || i as first_name from range(1, 5) t(i);"
        "create table colors as select i as user_id, 'hue' || i as color from range(1, 5) t(i)"
    )
    project = project_factory.write({"people": DELETING, "colors": COLORS + mode}, retries=0)
    emu = project_factory.emulator
    run_all(project)

    project_factory.sql("update colors set color = 'new' where user_id = 3")
    emu.set_faults(FaultConfig(error_5xx=1.0, applied_then_failed=True))
    lost = run_sync(project, "colors", console=NullConsole())
    assert (lost.status, lost.dead_lettered) == ("partial", 1)
    emu.set_faults(FaultConfig())

    project_factory.sql("delete from users where user_id = 3; delete from colors where user_id = 3")
    # planned in one command, `colors` after `people`, as their runs would go
    planned = lockgate(project, "plan", "people", "colors", "--json")
    plans = {p["sync"]: p["changes"] for p in planned}
    assert plans["people"]["removed_sent"] == 1
    assert (plans["colors"]["to_send"], plans["colors"]["removed"]) == (0, 0)
    deleted = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (deleted.status, deleted.changes.removed_sent) == ("success", 1)
    assert deleted.resent_by == (("colors", 1),)
    assert emu.person(id="3") is None

    since = len(emu.request_log())
    plan = plan_sync(load_project(project.root), "colors", console=NullConsole())
    assert (plan.changes.to_send, plan.changes.removed) == (0, 0)
    again = run_sync(load_project(project.root), "colors", console=NullConsole())
    assert (again.status, again.changes.removed, again.delivered) == ("success", 0, 0)
    assert sent_to(emu, "3", since) == []
    assert emu.person(id="3") is None


def test_a_relationship_of_a_person_another_sync_deletes_is_not_undone_when_unconfirmed(
    project_factory: ProjectFactory,
) -> None:
    """`memberships` adds Linus to Acme and the answer is lost: the relationship is
    unconfirmed. Linus then leaves both models and `people` deletes him (Customer.io deletes
    his relationships with him). Before, the next `memberships` run undid the unconfirmed
    relationship of a person already deleted: a `delete_relationships` for nothing."""
    seed(project_factory)
    memberships = MEMBERSHIPS + "mode: mirror\n"
    project = project_factory.write(
        {"companies": COMPANIES, "people": DELETING, "memberships": memberships}, retries=0
    )
    emu = project_factory.emulator
    run_all(project)

    project_factory.sql("update members set company_id = 'acme' where user_id = 3")
    emu.set_faults(FaultConfig(error_5xx=1.0, applied_then_failed=True))
    run_sync(project, "memberships", console=NullConsole())
    emu.set_faults(FaultConfig())
    assert ("3", "1", "acme", "owner") in rels(emu)  # applied, never confirmed

    project_factory.sql(
        "delete from users where user_id = 3; delete from members where user_id = 3"
    )
    plans = {p["sync"]: p["changes"] for p in lockgate(project, "plan", "--all", "--json")}
    assert (plans["memberships"]["to_send"], plans["memberships"]["removed"]) == (0, 0)
    deleted = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (deleted.status, deleted.changes.removed_sent) == ("success", 1)
    assert emu.person(id="3") is None

    since = len(emu.request_log())
    again = run_sync(load_project(project.root), "memberships", console=NullConsole())
    assert (again.status, again.changes.removed, again.delivered) == ("success", 0, 0)
    assert [r.body for r in emu.request_log()[since:] if r.method != "GET"] == []


def test_a_person_deleted_after_another_syncs_killed_run_created_them_is_not_undone(
    project_factory: ProjectFactory,
) -> None:
    """`colors` sends users 3 and 4 for the first time and is killed: one delivery journaled,
    one in flight (written ahead, with the identifiers it went to). Both then leave both
    models and `people` deletes them. `colors`' next run has nothing to undo: before, it took
    the one in flight for a person it may have created, and deleted them again."""
    project_factory.sql(
        "create table users as select i as user_id, 'U' || i as first_name from range(1, 5) t(i);"
        "create table colors as select i as user_id, 'hue' || i as color from range(1, 3) t(i)"
    )
    colors = COLORS + "mode: mirror\ndelete_removed: true\n"
    project = one_at_a_time(
        project_factory.write({"people": DELETING, "colors": colors}, retries=0)
    )
    emu = project_factory.emulator
    run_all(project)

    project_factory.sql("insert into colors values (3, 'hue3'), (4, 'hue4')")

    killed_after_one_answer(project.root, "colors", emu, colored_as(emu, "hue", "3", "4"))
    assert len(journaled(project, "colors")) == 1

    project_factory.sql(
        "delete from users where user_id in (3, 4); delete from colors where user_id in (3, 4)"
    )
    deleted = run_sync(load_project(project.root), "people", console=NullConsole())
    assert (deleted.status, deleted.changes.removed_sent) == ("success", 2)
    assert emu.person(id="3") is None and emu.person(id="4") is None

    since = len(emu.request_log())
    again = run_sync(load_project(project.root), "colors", console=NullConsole())
    assert (again.status, again.changes.removed, again.delivered) == ("success", 0, 0)
    assert [r.body for r in emu.request_log()[since:] if r.method != "GET"] == []


def test_a_killed_runs_delivered_call_shows_in_the_history_before_and_after_the_next_run(
    project_factory: ProjectFactory,
) -> None:
    """A batch Customer.io accepted whole is journaled with its history row, which reaches
    the run history when the journal is folded: `lockgate history` shows the call of a run
    killed before its fold, and the same call once after the next run folds it."""
    project_factory.sql(
        "create table colors as select i as user_id, 'hue' || i as color from range(1, 4) t(i)"
    )
    project = one_at_a_time(project_factory.write({"colors": COLORS}, retries=0))
    emu = project_factory.emulator
    killed_after_one_answer(project.root, "colors", emu, colored_as(emu, "hue", "1", "2", "3"))
    [key] = journaled(project, "colors")

    def calls() -> list[tuple[str, str, int | None]]:
        return [
            (h["run_id"], h["outcome"], h["status"])
            for h in lockgate(project, "history", "--person", key, "--json")
        ]

    killed = calls()
    assert [(outcome, status) for _, outcome, status in killed] == [("delivered", 200)]

    again = run_sync(load_project(project.root), "colors", console=NullConsole())
    assert again.status == "success"
    assert journaled(project, "colors") == []
    # the killed run's call once, and the next run's (it sent the record in flight again,
    # and this one only if unconfirmed: not, it was heard)
    assert calls()[0] == killed[0]
    assert [c for c in calls() if c[0] == killed[0][0]] == killed


def test_a_person_a_killed_first_run_delivered_twice_is_forgotten_wholly_once_deleted(
    project_factory: ProjectFactory,
) -> None:
    """Three accounts of one person (`id` u1), sent one a request by a first run killed with
    the third in flight: the two answered deliveries each appended u1 to the people the sync
    made exist (``people_known__S``, appended unread by a run that began knowing no one, and
    kept once only at the end of its delivery, which the kill cut off). The next run reads
    them as one person, and once the accounts leave, the one confirmed delete of u1 takes
    every row of it out: u1 is no longer counted as a person that exists."""
    project_factory.sql(
        "create table accounts as select * from (values ('a1', 'u1', 'ada@example.com', 'p1'), "
        "('a2', 'u1', null, 'p2'), ('a3', 'u1', null, 'p3')) t(account_id, user_id, email, plan)"
    )
    accounts = project_factory.write({"accounts": ACCOUNTS_MIRROR_DELETING}, retries=0)
    project = one_at_a_time(accounts)
    emu = project_factory.emulator

    def batches() -> int:
        return sum(1 for r in emu.request_log() if r.path == "/api/v2/batch")

    def known() -> list[tuple[str, int]]:
        with StateStore.open(project.state_dir) as store:
            return store.exec_sql(
                'select id, count(*) from "people_known__accounts" group by id order by id'
            )

    # the third request applied: the first two answered and journaled, 2 s apart
    killed_once_applied(
        project.root, "accounts", emu, lambda: batches() == 3, latency_ms=2000, settle=0.5
    )
    assert len(journaled(project, "accounts")) == 2
    assert known() == [("u1", 2)]  # as the kill left it

    again = run_sync(load_project(project.root), "accounts", console=NullConsole())
    assert again.status == "success" and emu.person(id="u1") is not None
    with StateStore.open(project.state_dir) as store:
        assert ("id", "u1") in known_people(store, load_project(project.root))

    project_factory.sql("delete from accounts")  # empty: the `empty model` guardrail asks --force
    gone = run_sync(load_project(project.root), "accounts", console=NullConsole(), force=True)
    assert gone.status == "success" and emu.people() == []
    assert known() == []
    with StateStore.open(project.state_dir) as store:
        assert ("id", "u1") not in known_people(store, load_project(project.root))
