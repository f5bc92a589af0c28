"""Per-record history is kept `history_days` days; ledgers and snapshots are kept for ever."""

from __future__ import annotations

from typing import Any

from lockgate.console import NullConsole
from lockgate.project.loader import load_project
from lockgate.state.store import StateStore
from lockgate.sync.run import run_sync

from .test_delivery_edges import EVENTS
from .test_delivery_edges import seed_events as events

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)


def history_keys(project: Any) -> list[str]:
    with StateStore.open(project.state_dir) as store:
        return sorted(r[0] for r in store.exec_sql("select k from history"))


def test_history_older_than_history_days_is_dropped_and_nothing_is_sent_again(
    project_factory: ProjectFactory,
) -> None:
    events(project_factory, 3)
    project = project_factory.write({"activity": EVENTS})
    (project.root / "lockgate.yml").write_text(
        (project.root / "lockgate.yml").read_text() + "history_days: 30\n"
    )
    project = load_project(project.root)
    assert run_sync(project, "activity", console=NullConsole()).delivered == 3
    keys = history_keys(project)
    assert len(keys) == 3
    with StateStore.open(project.state_dir) as store:  # one call, and a rejection, 40 days ago
        store.exec_sql(
            "update history set sent_at = sent_at - interval 40 days where k = ?", [keys[0]]
        )
        store.exec_sql(
            "insert into rejected values ('old', 'activity', 'x', 'map', 'bad', "
            "now() - interval 40 days)"
        )

    events(project_factory, 4)  # one new event
    report = run_sync(project, "activity", console=NullConsole())
    assert report.delivered == 1 and report.changes.already_delivered == 3
    assert len(project_factory.emulator.events()) == 4  # the old call's event not sent again
    after = history_keys(project)  # the 40-day-old call is gone, the others and the new stay
    assert keys[0] not in after and set(keys[1:]) < set(after) and len(after) == 3
    with StateStore.open(project.state_dir) as store:
        assert store.exec_sql("select count(*) from rejected where run_id = 'old'") == [(0,)]
        assert store.exec_sql('select count(*) from "ledger__activity"') == [(4,)]


def test_history_days_null_keeps_everything(project_factory: ProjectFactory) -> None:
    events(project_factory, 2)
    project = project_factory.write({"activity": EVENTS})
    (project.root / "lockgate.yml").write_text(
        (project.root / "lockgate.yml").read_text() + "history_days: null\n"
    )
    project = load_project(project.root)
    run_sync(project, "activity", console=NullConsole())
    with StateStore.open(project.state_dir) as store:
        store.exec_sql("update history set sent_at = sent_at - interval 4000 days")
    events(project_factory, 3)
    run_sync(project, "activity", console=NullConsole())
    assert len(history_keys(project)) == 3
