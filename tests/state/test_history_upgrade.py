"""State written by an earlier Lockgate keeps its per-record history after an upgrade."""

from __future__ import annotations

from pathlib import Path

import duckdb

from lockgate.state.store import StateStore


def test_grouped_history_from_an_earlier_version_is_still_found_per_person(tmp_path: Path) -> None:
    state = tmp_path / ".lockgate"
    state.mkdir()
    con = duckdb.connect(str(state / "state.duckdb"))
    con.execute(
        """
        create table history (
            run_id varchar, sync varchar, keys varchar[], idents varchar[], action varchar,
            outcome varchar, status integer, reason varchar, sent_at timestamptz
        );
        insert into history values
            ('r1', 'people', ['u1', 'u2'], ['{"id":"u1"}', '{"id":"u2","email":"b@x.io"}'],
             'identify', 'delivered', 200, null, timestamptz '2026-11-01 10:00:00+00'),
            ('r2', 'people', ['u2'], ['{"id":"u2","email":"b@x.io"}'],
             'identify', 'rejected', 400, 'attribute too large',
             timestamptz '2026-11-02 10:00:00+00');
        """
    )
    con.close()

    with StateStore.open(state) as store:
        by_key = store.history("u2")
        by_email = store.history("b@x.io")
        assert store.history("u1")[0]["outcome"] == "delivered"

    assert [(r["run_id"], r["outcome"], r["reason"]) for r in by_key] == [
        ("r1", "delivered", None),
        ("r2", "rejected", "attribute too large"),
    ]
    assert by_email == by_key
    assert by_key[0]["ident"] == '{"id":"u2","email":"b@x.io"}'
