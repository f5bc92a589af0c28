"""Folding the commit journal into the snapshot: what was delivered last is what is remembered."""

from __future__ import annotations

from pathlib import Path

from lockgate.state.store import StateStore


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
