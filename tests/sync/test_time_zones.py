"""Timestamps without a time zone (DuckDB `TIMESTAMP`, Postgres `timestamp`...) hold wall-clock
times: read as UTC unless the sync or its source names the `timezone` they are local to, daylight
saving time included. Events local to a zone east of UTC are no longer "in the future", nor old
ones west of it "new"; `lockgate plan` says which columns are read as UTC."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.sync.helpers import EVENTS_ONLY, USERS_PROFILE
from tests.sync.test_rejected_rows import invoke

from lockgate.console import NullConsole
from lockgate.errors import ConfigError
from lockgate.project.loader import load_project
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

NOW = 1_780_000_000  # 2026-05-28 20:26:40 UTC: daylight saving time in New York and LA

PROFILE = (
    USERS_PROFILE
    + """\
  summer: summer
  winter: winter
  gap: gap
  twice: twice
  nanos: nanos
  aware: aware
  day: day
  as_text: {column: summer, type: string}
"""
)

ACTIVITY = EVENTS_ONLY


def unix(text: str) -> int:
    """The unix seconds of an ISO 8601 time with its offset."""
    return int(datetime.fromisoformat(text).timestamp())


def users(factory: ProjectFactory) -> None:
    factory.sql(
        """create or replace table users as select 1 as user_id,
        timestamp '2026-07-01 09:00:00' as summer,
        timestamp '2026-01-15 09:00:00' as winter,
        -- 02:30 does not happen in New York that night (02:00 EST -> 03:00 EDT)
        timestamp '2026-03-08 02:30:00' as gap,
        -- 01:30 happens twice that night (EDT, then EST)
        timestamp '2026-11-01 01:30:00' as twice,
        timestamp_ns '2026-07-01 09:00:00.123456789' as nanos,
        timestamptz '2026-07-01 09:00:00+00' as aware,
        date '2026-07-01' as day"""
    )


def in_source_zone(project: Any, zone: str) -> Any:
    """The project again with `timezone: <zone>` on its `warehouse` source."""
    yml = project.root / "lockgate.yml"
    text = yml.read_text()
    yml.write_text(
        text.replace("path: warehouse.duckdb\n", f"path: warehouse.duckdb\n    timezone: {zone}\n")
    )
    return load_project(project.root)


def zoned_quietly(project_factory: ProjectFactory, project: Any, attribute: str) -> Any:
    """Run the `renewals` sync in UTC, then with its source in New York: the value of
    ``attribute`` (09:00 local) moves to 13:00 UTC and is sent once, and the `on_change`
    rule watching it fires nothing. Returns the project in its new zone."""
    run_sync(project, "renewals", console=NullConsole())
    project = in_source_zone(project, "America/New_York")
    report = run_sync(project, "renewals", console=NullConsole())
    assert report.changes.changed == 1 and report.changes.state_events == 0
    assert project_factory.emulator.events() == []
    sent = project_factory.emulator.person(id="1").attributes
    assert sent[attribute] == unix("2026-07-01T13:00:00+00:00")
    return project


def test_naive_timestamps_are_read_in_the_sync_time_zone_daylight_saving_included(
    project_factory: ProjectFactory,
) -> None:
    users(project_factory)
    project = project_factory.write({"profile": PROFILE + "timezone: America/New_York\n"})
    run_sync(project, "profile", console=NullConsole())
    sent = project_factory.emulator.person(id="1").attributes
    assert sent["summer"] == unix("2026-07-01T13:00:00+00:00")  # EDT, -04:00
    assert sent["winter"] == unix("2026-01-15T14:00:00+00:00")  # EST, -05:00
    # a time the clocks skip is read with the offset in force before the change (02:30 EST,
    # which is 03:30 EDT); one they pass twice is the first, before they go back (01:30 EDT)
    assert sent["gap"] == unix("2026-03-08T07:30:00+00:00")
    assert sent["twice"] == unix("2026-11-01T05:30:00+00:00")
    assert sent["nanos"] == unix("2026-07-01T13:00:00+00:00")
    # an instant and a calendar day are what they are, whatever the zone; text keeps its text
    assert sent["aware"] == unix("2026-07-01T09:00:00+00:00")
    assert sent["day"] == unix("2026-07-01T00:00:00+00:00")
    assert sent["as_text"] == "2026-07-01 09:00:00"


#: the night New York falls back: 01:00-02:00 happens twice, first in EDT (05:00-06:00 UTC),
#: then in EST (06:00-07:00 UTC); and the night it springs forward, when 02:00-03:00 does not
FALL_BACK = 1_793_511_000  # 2026-11-01 05:30:00 UTC: 01:30 EDT, the first 01:30
SPRING_GAP = 1_772_955_000  # 2026-03-08 07:30:00 UTC: 03:30 EDT, what 02:30 is read as

EDGES = (
    USERS_PROFILE
    + """\
  twice: twice
  twice_ns: twice_ns
  twice_text: {column: twice_text, type: timestamp}
  twice_value: {value: '2026-11-01 01:30:00', type: timestamp}
  twice_default: {column: missing, type: timestamp, on_null: default, default: 2026-11-01 01:30:00}
  gap: gap
  gap_text: {column: gap_text, type: timestamp}
  gap_value: {value: '2026-03-08 02:30:00', type: timestamp}
"""
)


def test_the_repeated_and_skipped_hours_are_read_alike_by_every_path(
    project_factory: ProjectFactory,
) -> None:
    # a naive column (any precision), text without an offset, a constant and a default: one
    # reading of each local time, whatever carries it
    project_factory.sql(
        "create or replace table users as select 1 as user_id, "
        "timestamp '2026-11-01 01:30:00' as twice, "
        "timestamp_ns '2026-11-01 01:30:00.5' as twice_ns, "
        "'2026-11-01 01:30:00' as twice_text, null::timestamp as missing, "
        "timestamp '2026-03-08 02:30:00' as gap, '2026-03-08 02:30:00' as gap_text"
    )
    project = project_factory.write({"profile": EDGES + "timezone: America/New_York\n"})
    run_sync(project, "profile", console=NullConsole())
    sent = project_factory.emulator.person(id="1").attributes
    twice = ("twice", "twice_ns", "twice_text", "twice_value", "twice_default")
    assert {k: sent[k] for k in twice} == dict.fromkeys(twice, FALL_BACK)
    gap = ("gap", "gap_text", "gap_value")
    assert {k: sent[k] for k in gap} == dict.fromkeys(gap, SPRING_GAP)


@pytest.mark.parametrize(
    ("zone", "wall", "first", "written"),
    [
        ("America/New_York", "2026-11-01 01:30:00", FALL_BACK, "timestamp"),
        ("America/New_York", "2026-11-01 01:30:00", FALL_BACK, "text"),
        # Lord Howe Island goes back half an hour (02:00 +11:00 -> 01:30 +10:30)
        ("Australia/Lord_Howe", "2026-04-05 01:45:00", unix("2026-04-04T14:45:00+00:00"), "text"),
    ],
)
def test_an_event_in_the_repeated_hour_is_not_in_the_future_and_is_sent_once(
    project_factory: ProjectFactory, zone: str, wall: str, first: int, written: str
) -> None:
    # logged the first time round (01:30 EDT in New York), and read five minutes later: it
    # happened 5 minutes ago, not 55 minutes ahead (01:30 EST, the second time round)
    at = f"timestamp '{wall}'"
    project_factory.sql(
        "create or replace table events as select 'e1' as event_id, 1 as user_id, "
        f"'Ordered' as event_name, {at if written == 'timestamp' else f'{at}::varchar'} "
        "as occurred_at"
    )
    project = project_factory.write({"activity": ACTIVITY + f"timezone: {zone}\n"})
    report = run_sync(project, "activity", console=NullConsole(), now=first + 300)
    assert (report.changes.rejected, report.delivered) == (0, 1), report.changes.rejected_samples
    # the second time round: the same event, read the same, is not sent again
    report = run_sync(project, "activity", console=NullConsole(), now=first + 3900)
    assert (report.delivered, report.changes.already_delivered) == (0, 1)
    assert [e.timestamp for e in project_factory.emulator.events()] == [first]


def test_without_a_time_zone_naive_timestamps_stay_utc_and_plan_says_so(
    project_factory: ProjectFactory,
) -> None:
    users(project_factory)
    project = project_factory.write({"profile": PROFILE})
    out = invoke(project, "plan", "profile")
    said = [line for line in out.splitlines() if "without time zone" in line]
    # one line for the sync; `as_text` (sent as text) and `aware`, `day` are not named
    assert len(said) == 1, out
    assert "`summer`, `winter`, `gap`, `twice`, `nanos`" in said[0]
    assert "read as UTC" in said[0] and "set `timezone:`" in said[0]
    # `--json` says it too, for a CI check: the columns, the zone they are read in, the line
    planned = json.loads(invoke(project, "plan", "profile", "--json"))
    naive = ["summer", "winter", "gap", "twice", "nanos"]
    note = said[0].removeprefix("profile: ")
    assert planned["naive_timestamps"] == {"columns": naive, "read_as": "UTC", "note": note}
    run_sync(project, "profile", console=NullConsole())
    sent = project_factory.emulator.person(id="1").attributes
    assert sent["summer"] == unix("2026-07-01T09:00:00+00:00")
    assert sent["winter"] == unix("2026-01-15T09:00:00+00:00")

    # set on the source: the plan says nothing, and the next run sends the record again
    # with the values it now reads (the data did not change; the mapping did)
    project = in_source_zone(project, "America/New_York")
    assert "without time zone" not in invoke(project, "plan", "profile")
    planned = json.loads(invoke(project, "plan", "profile", "--json"))
    assert planned["naive_timestamps"] == {
        "columns": naive,
        "read_as": "America/New_York",
        "note": None,
    }
    report = run_sync(project, "profile", console=NullConsole())
    assert report.changes.changed == 1 and report.changes.remapped == 1
    sent = project_factory.emulator.person(id="1").attributes
    assert sent["summer"] == unix("2026-07-01T13:00:00+00:00")
    assert sent["winter"] == unix("2026-01-15T14:00:00+00:00")
    assert run_sync(project, "profile", console=NullConsole()).changes.changed == 0


def test_a_source_time_zone_resends_nothing_of_a_sync_without_naive_timestamps(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        "create or replace table users as select 1 as user_id, 'pro' as plan, "
        "timestamptz '2026-07-01 09:00:00+00' as seen"
    )
    body = PROFILE.split("attributes:")[0] + "attributes:\n  plan: plan\n  seen: seen\n"
    project = project_factory.write({"profile": body})
    assert run_sync(project, "profile", console=NullConsole()).changes.new == 1
    project = in_source_zone(project, "Asia/Tokyo")
    assert run_sync(project, "profile", console=NullConsole()).changes.changed == 0


def local(zone_hours: int, seconds_ago: int) -> str:
    """SQL for the naive wall-clock time, in a zone ``zone_hours`` east of UTC (without daylight
    saving time, or in it on ``NOW``), of ``seconds_ago`` before ``NOW``."""
    return f"(to_timestamp({NOW - seconds_ago + zone_hours * 3600}) at time zone 'UTC')"


def test_events_in_local_time_east_of_utc_are_no_longer_in_the_future(
    project_factory: ProjectFactory,
) -> None:
    # Tokyo is 9 hours ahead: an hour ago there reads, as UTC, as 8 hours from now
    project_factory.sql(
        f"create or replace table events as select 'e1' as event_id, 1 as user_id, "
        f"'Ordered' as event_name, {local(9, 3600)} as occurred_at"
    )
    project = project_factory.write({"activity": ACTIVITY})
    report = run_sync(project, "activity", console=NullConsole(), now=NOW)
    assert report.delivered == 0 and report.changes.rejected == 1
    (reason,) = {why for _, why in report.changes.rejected_samples}
    assert "is in the future" in reason
    assert "`occurred_at` has no time zone and is read as UTC: set `timezone:`" in reason

    project = in_source_zone(project, "Asia/Tokyo")  # the source's zone, for every sync
    report = run_sync(project, "activity", console=NullConsole(), now=NOW)
    assert report.delivered == 1
    assert [(e.name, e.timestamp) for e in project_factory.emulator.events()] == [
        ("Ordered", NOW - 3600)
    ]


def test_the_backfill_window_is_measured_in_the_events_own_zone(
    project_factory: ProjectFactory,
) -> None:
    # Los Angeles is 7 hours behind in May: 70 hours ago there reads, as UTC, as 77 hours ago,
    # past the 72-hour backfill window (skipped); read in its zone it is new, and sent
    project_factory.sql(
        f"create or replace table events as select * from (values "
        f"('e1', 1, 'Visited', {local(-7, 70 * 3600)}), "
        f"('e2', 1, 'Visited', {local(-7, 80 * 3600)})) "
        "t(event_id, user_id, event_name, occurred_at)"
    )
    project = project_factory.write({"activity": ACTIVITY})
    plan = plan_sync(project, "activity", console=NullConsole(), now=NOW)
    assert plan.changes.backfill_skipped == 2

    project = project_factory.write({"activity": ACTIVITY + "timezone: America/Los_Angeles\n"})
    report = run_sync(project, "activity", console=NullConsole(), now=NOW)
    assert report.changes.backfill_skipped == 1 and report.delivered == 1
    assert [(e.name, e.timestamp) for e in project_factory.emulator.events()] == [
        ("Visited", NOW - 70 * 3600)
    ]


@pytest.mark.parametrize(
    ("where", "zone", "said"),
    [
        ("sync", "America/NewYork", "did you mean `America/New_York`?"),
        ("source", "+02:00", "use an IANA name such as `America/New_York`"),
    ],
)
def test_an_unknown_time_zone_is_refused_at_load_naming_its_line(
    project_factory: ProjectFactory, where: str, zone: str, said: str
) -> None:
    users(project_factory)
    if where == "sync":
        with pytest.raises(ConfigError) as caught:
            project_factory.write({"profile": PROFILE + f"timezone: '{zone}'\n"})
        assert caught.value.file == str(Path("syncs/profile.yml"))
        assert caught.value.line == PROFILE.count("\n") + 1  # the line after the last
    else:
        project = project_factory.write({"profile": PROFILE})
        with pytest.raises(ConfigError) as caught:
            in_source_zone(project, f"'{zone}'")
        assert caught.value.file == "lockgate.yml" and caught.value.line == 6
    assert f"`{zone}` is not a time zone name" in caught.value.reason
    assert said in (caught.value.hint or "")


def test_a_time_zone_name_in_another_case_is_taken_as_spelt_by_the_zone_database(
    project_factory: ProjectFactory,
) -> None:
    users(project_factory)
    project = project_factory.write({"profile": PROFILE + "timezone: america/new_york\n"})
    assert project.sync("profile").timezone == "America/New_York"
    # the source's zone is every sync's, unless a sync names its own
    project = in_source_zone(project, "Asia/Tokyo")
    assert project.sync("profile").timezone == "America/New_York"


@pytest.mark.postgres
def test_a_postgres_timestamp_column_is_read_in_the_source_time_zone(
    tmp_path: Path, customerio_emulator: Any, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> None:
    import psycopg

    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("drop table if exists tz_users")
        conn.execute(
            "create table tz_users as select 1 as user_id, "
            "timestamp '2026-07-01 09:00:00' as summer, timestamp '2026-01-15 09:00:00' as winter, "
            # 02:30 happens twice in Berlin that night (CEST, then CET)
            "timestamp '2026-10-25 02:30:00' as twice"
        )
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(
        "name: pg\nsources:\n"
        f"  warehouse: {{type: postgres, url: '{postgres_dsn}', timezone: Europe/Berlin}}\n"
        "destinations:\n"
        f'  customerio: {{type: customerio, track_url: "{customerio_emulator.base_url}"}}\n'
    )
    (tmp_path / "syncs" / "profile.yml").write_text(
        "name: profile\nsource: warehouse\nmodel: {table: tz_users}\nkind: people\n"
        "primary_key: user_id\nidentify_by: {id: user_id}\nattributes: [summer, winter, twice]\n"
    )
    run_sync(load_project(tmp_path), "profile", console=NullConsole())
    sent = customerio_emulator.person(id="1").attributes
    assert sent["summer"] == unix("2026-07-01T07:00:00+00:00")  # CEST, +02:00
    assert sent["winter"] == unix("2026-01-15T08:00:00+00:00")  # CET, +01:00
    assert datetime.fromtimestamp(sent["winter"], UTC).hour == 8
    # the first 02:30, in CEST, as DuckDB's columns are read (Postgres itself, casting to
    # `timestamptz`, would pick the second)
    assert sent["twice"] == unix("2026-10-25T00:30:00+00:00")


RENEWALS = """
name: renewals
source: warehouse
model: {table: subs}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {renews_at: renews_at}
on_change:
  - attribute: renews_at
    event: renewal_moved
"""


def test_setting_the_time_zone_fires_no_on_change_event_unless_the_data_moved(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        "create or replace table subs as select * from (values "
        "(1, timestamp '2026-07-01 09:00:00'), (2, timestamp '2026-08-01 09:00:00')) "
        "t(user_id, renews_at)"
    )
    project = project_factory.write({"renewals": RENEWALS})
    run_sync(project, "renewals", console=NullConsole())
    # the zone set, and person 2's renewal really moved: every value is sent again, read in
    # New York, but only the move in the data is a transition
    project_factory.sql(
        "update subs set renews_at = timestamp '2026-09-01 09:00:00' where user_id = 2"
    )
    project = in_source_zone(project, "America/New_York")
    plan = plan_sync(project, "renewals", console=NullConsole())
    (line,) = [g.actual for g in plan.guards if g.name == "mapping"]
    assert "`timezone` was UTC, now America/New_York: 1 people sent again for it" in line
    report = run_sync(project, "renewals", console=NullConsole())
    assert report.changes.changed == 2 and report.changes.remapped == 1
    assert report.changes.state_events == 1
    events = project_factory.emulator.events()
    assert [(e.name, e.data) for e in events] == [("renewal_moved", {})]
    people = {p.id: p.attributes["renews_at"] for p in project_factory.emulator.people()}
    assert people == {
        "1": unix("2026-07-01T13:00:00+00:00"),
        "2": unix("2026-09-01T13:00:00+00:00"),
    }
    # and from then on, in the zone as read now
    project_factory.sql(
        "update subs set renews_at = timestamp '2026-07-02 09:00:00' where user_id = 1"
    )
    assert run_sync(project, "renewals", console=NullConsole()).changes.state_events == 1


@pytest.mark.parametrize("utc", ["UTC", "Etc/UTC", "GMT", "Etc/GMT", "Zulu", "Universal"])
def test_saying_utc_silences_the_note_and_resends_nothing(
    project_factory: ProjectFactory, utc: str
) -> None:
    # each of the zone database's names of UTC reads naive timestamps as unset does: none
    # re-sends every record for a mapping change that changes no value
    users(project_factory)
    project = project_factory.write({"profile": PROFILE})
    assert run_sync(project, "profile", console=NullConsole()).changes.new == 1
    project = project_factory.write({"profile": PROFILE + f"timezone: {utc}\n"})
    assert "without time zone" not in invoke(project, "plan", "profile")
    assert run_sync(project, "profile", console=NullConsole()).changes.changed == 0
    sent = project_factory.emulator.person(id="1").attributes
    assert sent["summer"] == unix("2026-07-01T09:00:00+00:00")


TEXTS = (
    USERS_PROFILE
    + """\
  local: {column: local, type: timestamp}
  utc: {column: utc, type: timestamp}
  offset: {column: offset, type: timestamp}
  named: {column: named, type: timestamp}
  day: {column: day, type: date}
  as_text: local
"""
)


def test_text_without_an_offset_is_a_local_time_in_the_zone_text_with_one_is_that_instant(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        "create or replace table users as select 1 as user_id, "
        "'2026-07-01 09:00:00' as local, '2026-07-01T09:00:00Z' as utc, "
        "'2026-07-01T09:00:00+02:00' as offset, "
        "'2026-07-01 09:00:00 America/New_York' as named, '2026-07-01' as day"
    )
    project = project_factory.write({"profile": TEXTS})
    run_sync(project, "profile", console=NullConsole())
    sent = project_factory.emulator.person(id="1").attributes
    # no zone: text without an offset is UTC, as it always was
    assert sent["local"] == unix("2026-07-01T09:00:00+00:00")
    assert sent["utc"] == unix("2026-07-01T09:00:00+00:00")

    # the source's zone: the text without an offset is 09:00 in Tokyo; the others keep their
    # instants, a calendar day its midnight UTC, and text sent as text its text. Each record is
    # sent once again for the new reading (the data did not change; the mapping did)
    project = in_source_zone(project, "Asia/Tokyo")
    report = run_sync(project, "profile", console=NullConsole())
    assert report.changes.changed == 1 and report.changes.remapped == 1
    sent = project_factory.emulator.person(id="1").attributes
    assert sent["local"] == unix("2026-07-01T00:00:00+00:00")
    assert sent["utc"] == unix("2026-07-01T09:00:00+00:00")
    assert sent["offset"] == unix("2026-07-01T07:00:00+00:00")
    assert sent["named"] == unix("2026-07-01T13:00:00+00:00")
    assert sent["day"] == unix("2026-07-01T00:00:00+00:00")
    assert sent["as_text"] == "2026-07-01 09:00:00"
    assert run_sync(project, "profile", console=NullConsole()).changes.changed == 0


def test_text_event_timestamps_without_an_offset_are_read_in_the_zone(
    project_factory: ProjectFactory,
) -> None:
    # an hour ago in Tokyo, written as text without an offset: read as UTC it is in the future
    project_factory.sql(
        "create or replace table events as select 'e1' as event_id, 1 as user_id, "
        f"'Ordered' as event_name, strftime({local(9, 3600)}, '%Y-%m-%d %H:%M:%S') "
        "as occurred_at"
    )
    project = project_factory.write({"activity": ACTIVITY + "timezone: Asia/Tokyo\n"})
    report = run_sync(project, "activity", console=NullConsole(), now=NOW)
    assert report.delivered == 1, report.changes.rejected_samples
    assert [e.timestamp for e in project_factory.emulator.events()] == [NOW - 3600]


CONSTANTS = (
    USERS_PROFILE
    + """\
  quoted: {value: '2026-07-01 09:00:00', type: timestamp}
  unquoted: {value: 2026-07-01 09:00:00, type: timestamp}
  utc: {value: '2026-07-01T09:00:00Z', type: timestamp}
  offset: {value: '2026-07-01T09:00:00+02:00', type: timestamp}
  seen: {column: seen, type: timestamp, on_null: default, default: '2026-07-01 09:00:00'}
"""
)


def test_constant_times_without_an_offset_are_local_times_in_the_zone(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql("create or replace table users as select 1 as user_id, null as seen")
    project = project_factory.write({"profile": CONSTANTS})
    run_sync(project, "profile", console=NullConsole())
    sent = project_factory.emulator.person(id="1").attributes
    nine_utc = unix("2026-07-01T09:00:00+00:00")
    assert [sent[k] for k in ("quoted", "unquoted", "utc", "seen")] == [nine_utc] * 4

    # the source's zone: the constants without an offset are 09:00 in Tokyo, and the record is
    # sent once again with them
    project = in_source_zone(project, "Asia/Tokyo")
    report = run_sync(project, "profile", console=NullConsole())
    assert report.changes.changed == 1 and report.changes.remapped == 1
    sent = project_factory.emulator.person(id="1").attributes
    midnight_utc = unix("2026-07-01T00:00:00+00:00")
    assert [sent[k] for k in ("quoted", "unquoted", "seen")] == [midnight_utc] * 3
    assert sent["utc"] == nine_utc
    assert sent["offset"] == unix("2026-07-01T07:00:00+00:00")
    assert run_sync(project, "profile", console=NullConsole()).changes.changed == 0

    # the sync's own zone, over the source's
    project = project_factory.write({"profile": CONSTANTS + "timezone: America/New_York\n"})
    assert project.sync("profile").attributes["quoted"].value == unix("2026-07-01T13:00:00+00:00")


def test_setting_the_zone_fires_no_on_change_event_for_text_read_as_a_timestamp(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        "create or replace table subs as select 1 as user_id, '2026-07-01 09:00:00' as renews_at"
    )
    body = RENEWALS.replace("{renews_at: renews_at}", "{renews_at: {type: timestamp}}")
    zoned_quietly(project_factory, project_factory.write({"renewals": body}), "renews_at")


def test_setting_the_zone_fires_no_on_change_event_for_a_watched_constant_time(
    project_factory: ProjectFactory,
) -> None:
    # a `timestamp` constant without an offset is a local time in the zone: setting the zone
    # moves the value sent, not the data, so the rule watching it fires nothing
    project_factory.sql("create or replace table subs as select 1 as user_id")
    body = """
name: renewals
source: warehouse
model: {table: subs}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes:
  launch: {value: "2026-07-01 09:00:00", type: timestamp}
on_change:
  - attribute: launch
    event: launch_moved
"""
    project = zoned_quietly(project_factory, project_factory.write({"renewals": body}), "launch")
    # the constant itself edited (and the zone changed again): that is a transition
    project = project_factory.write(
        {"renewals": body.replace("07-01 09:00", "08-01 09:00") + "timezone: Europe/Paris\n"}
    )
    assert run_sync(project, "renewals", console=NullConsole()).changes.state_events == 1
    assert [e.name for e in project_factory.emulator.events()] == ["launch_moved"]


def test_setting_the_zone_keeps_event_keys_and_resends_no_delivered_event(
    project_factory: ProjectFactory,
) -> None:
    # the event key hashes a naive timestamp and a text one without an offset: both are keyed
    # as written (read as UTC), so setting the zone re-sends no delivered event
    project_factory.sql(
        "create or replace table events as select 1 as user_id, 'Ordered' as event_name, "
        f"(to_timestamp({NOW - 7200}) at time zone 'UTC') as occurred_at, "
        "'2026-05-01 09:00:00' as seen_text"
    )
    body = ACTIVITY.replace(
        "  id: event_id\n", "  id: {hash: [user_id, occurred_at, seen_text]}\n"
    ) + (
        "properties:\n  seen: {column: seen_text, type: timestamp}\n"
        '  at: {value: "2026-05-01 09:00:00", type: timestamp}\n'
    )
    project = project_factory.write({"activity": body})
    assert run_sync(project, "activity", console=NullConsole(), now=NOW).delivered == 1
    project = in_source_zone(project, "America/New_York")
    assert plan_sync(project, "activity", console=NullConsole(), now=NOW).changes.to_send == 0
    report = run_sync(project, "activity", console=NullConsole(), now=NOW)
    assert (report.delivered, report.changes.already_delivered) == (0, 1)
    assert len(project_factory.emulator.events()) == 1


def test_a_record_sent_by_name_after_the_zone_changed_fires_no_on_change_event_later(
    project_factory: ProjectFactory,
) -> None:
    # `--only` sends one person read in the new zone (the sync's zone change not yet recorded);
    # then another attribute of theirs changes: the whole run's transition check sees the
    # watched value unmoved in the new zone, and fires nothing
    project_factory.sql(
        "create or replace table subs as select * from (values "
        "(1, timestamp '2026-07-01 09:00:00', 'a'), (2, timestamp '2026-08-01 09:00:00', 'a')) "
        "t(user_id, renews_at, plan)"
    )
    body = RENEWALS.replace("{renews_at: renews_at}", "{renews_at: renews_at, plan: plan}")
    project = project_factory.write({"renewals": body})
    run_sync(project, "renewals", console=NullConsole())
    project = in_source_zone(project, "America/New_York")
    run_sync(project, "renewals", console=NullConsole(), only=("1",))
    project_factory.sql("update subs set plan = 'b' where user_id = 1")
    report = run_sync(project, "renewals", console=NullConsole())
    assert (report.changes.changed, report.changes.state_events) == (2, 0)
    assert project_factory.emulator.events() == []
    # a real move of the watched value fires, as ever
    project_factory.sql("update subs set renews_at = renews_at + interval 1 day")
    assert run_sync(project, "renewals", console=NullConsole()).changes.state_events == 2
