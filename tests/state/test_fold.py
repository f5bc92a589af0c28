"""Folding the commit journal into the snapshot: what was delivered last is what is remembered."""

from __future__ import annotations

from pathlib import Path

from lockgate.state.store import STATE_FORMAT, StateStore


def snapshot(store: StateStore) -> dict[str, int]:
    return dict(store.exec_sql('select k, h from "snap__people" order by k'))


def test_the_last_delivery_of_a_key_wins_and_removed_keys_leave_the_snapshot(
    tmp_path: Path,
) -> None:
    with StateStore.open(tmp_path) as store:
        store.ensure_sync_tables("people")
        store.append_journal("people", "r1", ["a", "b", "c"], [1, 2, 3], ["{}"] * 3, [False] * 3)
        assert store.fold_journal("people") == 3
        assert snapshot(store) == {"a": 1, "b": 2, "c": 3}

        # an interrupted run and its re-run both delivered `a`: the later payload is the truth
        store.append_journal("people", "r2", ["a", "b"], [10, None], ["{}", "{}"], [False, True])
        store.append_journal("people", "r3", ["a"], [11], ["{}"], [False])
        assert store.fold_journal("people") == 3
        assert snapshot(store) == {"a": 11, "c": 3}

        store.append_journal("people", "r4", ["d"], [4], ["{}"], [False])
        assert store.fold_journal("people") == 1
        assert snapshot(store) == {"a": 11, "c": 3, "d": 4}


def event_ids(store: StateStore) -> list[tuple[str, int, int, int, str]]:
    return store.exec_sql('select k, ts, lo, hi, run_id from "event_ids__activity" order by k')


def test_an_events_first_recorded_id_stays_until_its_key_is_delivered(tmp_path: Path) -> None:
    """The ids of events whose answer never came, as a run records them (its keys) or as a
    write-ahead record of what a killed run was sending gives them (every key not delivered)."""
    with StateStore.open(tmp_path) as store:
        store.ensure_sync_tables("activity")
        store.exec_sql(
            "create temp table sent as select * from (values ('a', 10, 1, 2), ('b', 20, 3, 4), "
            "('c', 30, 5, 6)) t(k, ts, lo, hi)"
        )
        store.keep_event_ids("activity", "r1", "sent", ["a"])
        assert event_ids(store) == [("a", 10, 1, 2, "r1")]

        # `a` sent again (a corrected row) and lost again: it keeps the id it was first sent with
        store.exec_sql("update sent set ts = 99 where k = 'a'")
        store.append_ledger("activity", ["b"])
        store.keep_event_ids("activity", "r2", "sent")
        assert event_ids(store) == [("a", 10, 1, 2, "r1"), ("c", 30, 5, 6, "r2")]

        store.append_ledger("activity", ["a"])
        store.keep_event_ids("activity", "r3", "sent", [])
        assert event_ids(store) == [("c", 30, 5, 6, "r2")]


def test_a_killed_events_runs_write_ahead_record_keeps_the_ids_of_its_undelivered_events(
    tmp_path: Path,
) -> None:
    """What a run killed outright wrote ahead: the next run keeps the ids of the events the
    ledger does not have (an id kept earlier stays), under the killed run's id, and drops the
    record; a record dropped by a run that ended leaves nothing to recover."""
    with StateStore.open(tmp_path) as store:
        store.ensure_sync_tables("activity")
        store.start_run("r1", "activity", "events")
        store.exec_sql(
            "create temp table changes as select * from (values ('a', 10, 1, 2), "
            "('b', 20, 3, 4), ('c', 30, 5, 6)) t(k, ts, lo, hi)"
        )
        store.keep_event_ids("activity", "r0", "changes", ["c"])
        assert store.record_sending_events("activity", "changes") == 3
        store.append_ledger("activity", ["b"])  # delivered and flushed before the kill

        store.start_run("r2", "activity", "events")
        assert store.recover_sending_events("activity", "r2") == 1
        assert event_ids(store) == [("a", 10, 1, 2, "r1"), ("c", 30, 5, 6, "r0")]
        assert store.exec_sql('select count(*) from "sending_events__activity"') == [(0,)]

        store.record_sending_events("activity", "changes")
        store.fold_journal("activity", sent=True)  # the end of a run that heard every answer
        assert store.recover_sending_events("activity", "r3") == 0


def delivered_batch(store: StateStore, run_id: str, keys: list[str], status: int = 200) -> None:
    """A whole batch Customer.io accepted, committed as the committer commits one."""
    from datetime import UTC, datetime

    import pyarrow as pa

    meta = pa.RecordBatch.from_arrays(
        [
            pa.array(keys, pa.string()),
            pa.array(range(1, len(keys) + 1), pa.uint64()),
            pa.array([f'{{"id":"{k}"}}' for k in keys], pa.string()),
            pa.array([False] * len(keys)),
            pa.array(["identify"] * len(keys), pa.string()),
        ],
        names=["k", "h", "ident", "removed", "action"],
    )
    store.append_delivered("people", run_id, [(meta, status, datetime.now(UTC))], ledger=False)


def calls(store: StateStore, person: str) -> list[tuple[str, str, str, int | None]]:
    return [
        (row["run_id"], row["action"], row["outcome"], row["status"])
        for row in store.history(person)
    ]


def test_a_delivered_batchs_history_is_kept_whichever_way_it_leaves_the_journal(
    tmp_path: Path,
) -> None:
    """The history of records delivered in whole batches waits in the journal (one append
    per record during delivery) and reaches `history` as they leave it: folded, forgotten for
    another sync's delete, refused by the email check, or forgotten by a full resync. At
    every point `lockgate history` shows each delivery once."""
    from lockgate.state import workspace
    from lockgate.sync.diff import forget_delivered

    with StateStore.open(tmp_path) as store:
        store.ensure_sync_tables("people")
        delivered_batch(store, "r1", ["a", "b", "c", "d"])
        # a run killed here: its journal holds the deliveries, which history shows
        assert calls(store, "a") == [("r1", "identify", "delivered", 200)]
        forget_delivered(store.con, "people", "select 'b' as k")
        store.refuse_delivered("people", "r1", [("c", "held by another person")])
        assert calls(store, "b") == [("r1", "identify", "delivered", 200)]
        assert calls(store, "c") == [
            ("r1", "identify", "delivered", 200),
            ("r1", "identify", "rejected", None),
        ]
        assert store.fold_journal("people") == 2
        assert snapshot(store) == {"a": 1, "d": 4}
        for key in ("a", "d", "b"):
            assert calls(store, key) == [("r1", "identify", "delivered", 200)], key

        delivered_batch(store, "r2", ["a"], status=207)
        store.reset_sync("people")
        delivered_batch(store, "r3", ["d"])
        workspace.start_over(store, "people")
        assert calls(store, "a") == [
            ("r1", "identify", "delivered", 200),
            ("r2", "identify", "delivered", 207),
        ]
        assert calls(store, "d") == [
            ("r1", "identify", "delivered", 200),
            ("r3", "identify", "delivered", 200),
        ]
        assert store.exec_sql('select count(*) from "journal__people"') == [(0,)]
        assert store.exec_sql("select count(*) from history") == [(7,)]


def test_a_format_4_journal_is_upgraded_and_its_records_history_not_written_twice(
    tmp_path: Path,
) -> None:
    """A run of a Lockgate of format 4 killed mid-delivery left its journal (five columns),
    with the history of what it delivered already written. Opened now, the journal gains the
    history columns, null for those records: the fold writes no second history row."""
    import duckdb

    with StateStore.open(tmp_path) as store:
        store.ensure_sync_tables("people")
    con = duckdb.connect(str(tmp_path / "state.duckdb"))
    con.execute('drop table "journal__people"; drop table "people_known__people"')
    con.execute(
        'create table "journal__people" '
        "(run_id varchar, k varchar, h ubigint, ident varchar, removed boolean)"
    )
    con.execute("""insert into "journal__people" values ('r1', 'a', 1, '{"id":"a"}', false)""")
    con.execute(
        "insert into history values ('r1', 'people', 'a', '{\"id\":\"a\"}', 'identify', "
        "'delivered', 200, null, now())"
    )
    con.execute("update state_format set format = 4")
    con.close()
    with StateStore.open(tmp_path) as store:
        assert calls(store, "a") == [("r1", "identify", "delivered", 200)]
        store.ensure_sync_tables("people")
        delivered_batch(store, "r2", ["b"])
        assert store.fold_journal("people") == 2
        assert snapshot(store) == {"a": 1, "b": 1}
        assert calls(store, "a") == [("r1", "identify", "delivered", 200)]
        assert calls(store, "b") == [("r2", "identify", "delivered", 200)]
        assert store.exec_sql("select max(format) from state_format") == [(STATE_FORMAT,)]
        # the person its journal delivered is known to exist (``people_known__S``, format 6)
        assert store.exec_sql('select id from "people_known__people"') == [("a",)]
