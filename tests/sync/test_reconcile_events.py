"""`lockgate reconcile` of an events sync: every delivered event found once in Customer.io."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.sync.helpers import ACTIVITY, UNMARK_TABLES
from tests.sync.test_identity_sync import app_project, sync_all

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.state.store import STATE_FORMAT, StateStore
from lockgate.sync.reconcile import reconcile
from lockgate.sync.reconcile_events import (
    NOT_IN_HISTORY,
    NOT_IN_MODEL,
    EventsReconcileReport,
    _Event,
    _match,
)
from lockgate.sync.run import run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

EVENTS = """
create or replace table events as select * from (values
  ('e1', '1', 'Feature Used', now() - interval 1 hour, 'exports'),
  ('e2', '1', 'Report Exported', now() - interval 2 hour, 'reports'),
  ('e3', '2', 'Feature Used', now() - interval 3 hour, 'alerts'),
  ('e4', '2', 'Feature Used', now() - interval 4 hour, 'alerts')
) t(event_id, user_id, event_name, occurred_at, feature);
"""


@pytest.fixture
def synced(project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", project_factory.emulator.config.app_api_key)
    project_factory.sql(EVENTS)
    project = project_factory.write({"activity": ACTIVITY})
    assert run_sync(project, "activity", console=NullConsole()).delivered == 4
    return project


def _events(project: Any) -> EventsReconcileReport:
    report = reconcile(project, "activity", console=NullConsole())
    assert isinstance(report, EventsReconcileReport)
    return report


def _cli(project: Any, *extra: str) -> Any:
    args = ["reconcile", "activity", "--project", str(project.root), *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_a_clean_events_sync_has_every_event_once(synced: Any) -> None:
    report = _events(synced)
    assert not report.drifting
    assert (report.delivered, report.people, report.compared, report.sampled) == (4, 2, 2, False)
    by_name = {n.name: (n.found, n.missing, n.duplicated, n.not_checked) for n in report.names}
    assert by_name == {"Feature Used": (3, 0, 0, 0), "Report Exported": (1, 0, 0, 0)}
    assert report.not_checked == {}
    result = _cli(synced)
    assert result.exit_code == 0, result.output
    assert "every event found once" in result.output
    result = _cli(synced, "--sample", "1", "--json")
    doc = json.loads(result.output)
    assert (doc["people"], doc["compared"], doc["sampled"], doc["missing"]) == (2, 1, True, 0)
    assert doc["found"] in (2, 3)  # person 1's two events, or person 2's


def test_events_whose_history_was_dropped_are_not_checked(synced: Any) -> None:
    # `history_days` drops the per-record history, which names each event's person: those
    # events are "not checked", not missing
    with StateStore.open(synced.state_dir) as store:
        store.exec_sql("delete from history where k = 'e2'")
    report = _events(synced)
    assert not report.drifting and report.delivered == 4
    assert report.not_checked == {NOT_IN_HISTORY: 1}
    assert [(n.name, n.found) for n in report.names] == [("Feature Used", 3)]


def test_an_event_lost_in_customerio_is_missing(
    synced: Any, project_factory: ProjectFactory
) -> None:
    emu = project_factory.emulator
    lost = next(e for e in emu.events() if e.name == "Report Exported")
    assert lost.id is not None and emu.delete_event(lost.id)

    report = _events(synced)
    assert report.drifting
    exported = next(n for n in report.names if n.name == "Report Exported")
    assert (exported.found, exported.missing) == (0, 1)
    assert [(v, k, p) for v, k, p, _ in exported.samples] == [("missing", "e2", "1")]
    assert not next(n for n in report.names if n.name == "Feature Used").drifting

    result = _cli(synced, "--json")
    assert result.exit_code == 2
    doc = json.loads(result.output)
    assert (doc["kind"], doc["missing"], doc["duplicated"], doc["found"]) == ("events", 1, 0, 3)
    sample = next(e for e in doc["events"] if e["name"] == "Report Exported")["samples"][0]
    assert (sample["verdict"], sample["key"], sample["person"]) == ("missing", "e2", "1")
    result = _cli(synced)
    assert result.exit_code == 2
    assert "missing" in result.output and "Report Exported" in result.output


def test_an_event_stored_twice_is_duplicated(synced: Any, project_factory: ProjectFactory) -> None:
    emu = project_factory.emulator
    twice = next(
        e for e in emu.events() if e.name == "Feature Used" and e.data["feature"] == "alerts"
    )
    # the same event sent again under another dedupe id: Customer.io stores it a second time
    again = {
        "type": "person",
        "action": "event",
        "identifiers": {"id": "2"},
        "name": twice.name,
        "timestamp": twice.timestamp,
        "id": "01JZZZZZZZZZZZZZZZZZZZZZZZ",
        "attributes": twice.data,
    }
    with emu.client(auth=emu.track_auth) as client:
        assert client.post("/api/v2/batch", json={"batch": [again]}).status_code == 200

    report = _events(synced)
    assert report.drifting
    used = next(n for n in report.names if n.name == "Feature Used")
    assert (used.found, used.missing, used.duplicated) == (3, 0, 1)
    ((verdict, key, person, ts),) = used.samples
    assert (verdict, person, ts) == ("duplicated", "2", twice.timestamp)
    assert key in ("e3", "e4")
    result = _cli(synced, "--json")
    assert result.exit_code == 2 and json.loads(result.output)["duplicated"] == 1


def test_events_past_what_customerio_keeps_are_not_checked(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # backfill up to 90 days sends an event of 40 days ago: one that
    # Customer.io no longer lists is "not checked", never "missing"
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", project_factory.emulator.config.app_api_key)
    project_factory.sql(EVENTS.replace("interval 4 hour", "interval 40 day"))
    sync = ACTIVITY + "backfill: {max_age: 90d}\n"
    project = project_factory.write({"activity": sync})
    assert run_sync(project, "activity", console=NullConsole()).delivered == 4
    emu = project_factory.emulator
    old = min(emu.events(), key=lambda e: e.timestamp)  # e4, 40 days ago
    assert old.id is not None and emu.delete_event(old.id)
    report = _events(project)
    assert not report.drifting
    used = next(n for n in report.names if n.name == "Feature Used")
    assert (used.found, used.missing, used.not_checked) == (2, 0, 1)
    assert sum(report.not_checked.values()) == 1


def test_an_identity_graph_events_sync_reads_back_the_person_the_graph_resolved(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the model names people by `user_id`, a graph identifier: the events reach the person
    # the graph resolved (id u1), whom the history recorded and reconcile reads back
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", customerio_emulator.config.app_api_key)
    project = app_project(tmp_path, customerio_emulator, monkeypatch)
    sync_all(project)
    report = _events(project)
    assert not report.drifting
    assert [(n.name, n.found) for n in report.names] == [("login", 1)]
    (login,) = customerio_emulator.events()
    assert login.id is not None and customerio_emulator.delete_event(login.id)
    report = _events(project)
    assert [(n.name, n.missing, n.samples[0][1:3]) for n in report.names] == [
        ("login", 1, ("e1", "u1"))
    ]


def test_events_are_matched_by_name_and_time_when_activity_ids_are_customerios_own() -> None:
    # the App API spec does not say an `event` activity's `id` is the dedupe id it was sent
    # with: when it is not, the name (or the backfill name) and timestamp find it
    def event(key: str, name: str, ts: int | None) -> _Event:
        names = frozenset({name, f"{name} (backfill)"})
        return _Event(key, name, names, ts, dedupe_id=f"id-{key}", delivered_at=0.0)

    a, b, c = event("a", "paid", 100), event("b", "paid", 100), event("c", "viewed", 200)
    held = [
        {"id": "x1", "name": "paid", "timestamp": 100},
        {"id": "x2", "name": "paid (backfill)", "timestamp": 100},
        {"id": "x3", "name": "paid", "timestamp": 100},  # one copy too many
        {"id": "x4", "name": "viewed", "timestamp": 201},  # another second: not c
    ]
    matched, unmatched, duplicates = _match([a, b, c], held)
    assert [e.key for e in matched] == ["a", "b"] and unmatched == [c]
    assert [e.key for e in duplicates] == ["a"]
    # without a timestamp column, an event of the name is enough, and none is a copy
    matched, unmatched, duplicates = _match([event("d", "viewed", None)], held)
    assert ([e.key for e in matched], unmatched, duplicates) == (["d"], [], [])


def _ledger(project: Any) -> dict[str, tuple[Any, Any]]:
    """The ledger's (name, timestamp) sent of each key."""
    with StateStore.open_read_only(project.state_dir) as store:
        rows = store.exec_sql('select k, name, sent_ts from "ledger__activity"')
    return {str(k): (name, ts) for k, name, ts in rows}


def test_an_event_whose_row_left_the_model_is_still_checked(
    synced: Any, project_factory: ProjectFactory
) -> None:
    # the ledger keeps the name and time each event went out with: an event whose row has left
    # the model is looked for all the same (found), and lost in Customer.io, missing
    project_factory.sql("delete from events where event_id in ('e2', 'e3')")
    report = _events(synced)
    assert not report.drifting and report.not_checked == {}
    by_name = {n.name: (n.found, n.missing, n.not_checked) for n in report.names}
    assert by_name == {"Feature Used": (3, 0, 0), "Report Exported": (1, 0, 0)}
    held = {e.name: e.timestamp for e in project_factory.emulator.events()}
    assert _ledger(synced)["e2"] == ("Report Exported", held["Report Exported"])
    emu = project_factory.emulator
    lost = next(e for e in emu.events() if e.name == "Report Exported")
    assert lost.id is not None and emu.delete_event(lost.id)
    exported = next(n for n in _events(synced).names if n.name == "Report Exported")
    assert [(v, k, p) for v, k, p, _ in exported.samples] == [("missing", "e2", "1")]


def test_an_event_whose_row_changed_after_delivery_is_found_as_sent(
    synced: Any, project_factory: ProjectFactory
) -> None:
    # the row of a delivered event edited since (its name and time; its key, `event_id`, the
    # same): Customer.io holds the event as it was sent, which is what reconcile looks for
    project_factory.sql(
        "update events set event_name = 'Report Shared', "
        "occurred_at = occurred_at - interval 5 hour where event_id = 'e2'"
    )
    assert run_sync(synced, "activity", console=NullConsole()).delivered == 0  # already sent
    report = _events(synced)
    assert not report.drifting and report.not_checked == {}
    by_name = {n.name: (n.found, n.missing) for n in report.names}
    assert by_name == {"Feature Used": (3, 0), "Report Exported": (1, 0)}


def test_an_event_without_a_timestamp_column_is_found_by_the_time_it_went_out_with(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # without `event.timestamp` an event goes out with its run's time, which the ledger keeps:
    # its row gone, the event is found by name and that time
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", project_factory.emulator.config.app_api_key)
    project_factory.sql(EVENTS)
    untimed = ACTIVITY.replace("  timestamp: occurred_at\n", "") + ("backfill: {first_run: send}\n")
    project = project_factory.write({"activity": untimed})
    assert run_sync(project, "activity", console=NullConsole()).delivered == 4
    project_factory.sql("delete from events")
    report = _events(project)
    assert not report.drifting and report.not_checked == {}
    found = [(n.name, n.found) for n in report.names]
    assert found == [("Feature Used", 3), ("Report Exported", 1)]
    held = {e.data["feature"]: e.timestamp for e in project_factory.emulator.events()}
    assert _ledger(project)["e1"] == ("Feature Used", held["exports"])


def _as_format_3(project: Any) -> None:
    """The state as a Lockgate of state format 3 leaves it: a ledger of keys and times."""
    with StateStore.open(project.state_dir) as store:
        store.exec_sql(
            'alter table "ledger__activity" drop column if exists name; '
            'alter table "ledger__activity" drop column if exists sent_ts; '
            f"update state_format set format = 3; {UNMARK_TABLES}"
        )


def test_a_ledger_of_format_3_is_upgraded_and_reconciles_as_before(
    synced: Any, project_factory: ProjectFactory
) -> None:
    _as_format_3(synced)
    project_factory.sql("delete from events where event_id = 'e2'")
    # read as it is (reconcile upgrades nothing): its events' names and times from the model
    report = _events(synced)
    assert report.not_checked == {NOT_IN_MODEL: 1} and not report.drifting
    assert [(n.name, n.found) for n in report.names] == [("Feature Used", 3)]
    with StateStore.open_read_only(synced.state_dir) as store:
        assert store.exec_sql("select format from state_format") == [(3,)]

    # an upgrade cut off half-way (one column added) is finished by the next run; the events
    # delivered from then on are ledgered with their name and time
    with StateStore.open(synced.state_dir) as store:
        store.exec_sql('alter table "ledger__activity" add column if not exists name varchar')
    project_factory.sql(
        "insert into events values ('e5', '2', 'Report Exported', now() - interval 1 hour, 'x')"
    )
    assert run_sync(synced, "activity", console=NullConsole()).delivered == 1
    with StateStore.open_read_only(synced.state_dir) as store:
        assert store.exec_sql("select format from state_format") == [(STATE_FORMAT,)]
    ledger = _ledger(synced)
    assert ledger["e1"] == (None, None) and ledger["e5"][0] == "Report Exported"
    project_factory.sql("delete from events where event_id = 'e5'")
    report = _events(synced)  # e2 as before; e5 by what the ledger says
    assert report.not_checked == {NOT_IN_MODEL: 1} and not report.drifting
    assert [(n.name, n.found) for n in report.names] == [
        ("Feature Used", 3),
        ("Report Exported", 1),
    ]
