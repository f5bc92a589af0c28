"""The state file is attached to a DuckDB instance the process keeps between opens
(``state.store._Engines``): closing a store must still leave the file whole and free, as
closing an instance of its own did, and the next open must read the file as it is then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lockgate.errors import StateError
from lockgate.state.store import StateStore

OTHER_PROCESS = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print(con.execute("select v from notes order by v").fetchall())
con.execute("insert into notes values ('from the other process')")
con.close()
"""


def test_a_closed_state_is_free_for_another_process_and_read_afresh_after(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path)
    store.exec_sql("create table notes (v varchar); insert into notes values ('from this one')")
    store.close()

    # another process opens the file at once (DuckDB would refuse it while this process held
    # it), and finds what this one committed, checkpointed at close
    seen = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, str(tmp_path / "state.duckdb")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert seen.stdout.strip() == "[('from this one',)]"
    assert not (tmp_path / "state.duckdb.wal").exists()

    # the next open here reads what the other process wrote, not what the kept instance saw
    with StateStore.open(tmp_path) as again:
        rows = again.exec_sql("select v from notes order by v")
    assert rows == [("from the other process",), ("from this one",)]


def test_a_state_that_failed_to_open_opens_once_mended(tmp_path: Path) -> None:
    state = tmp_path / "state.duckdb"
    with StateStore.open(tmp_path) as store:
        store.exec_sql("create table notes (v varchar); insert into notes values ('kept')")
    good = state.read_bytes()
    state.write_bytes(b"\0" * len(good))  # damaged

    with pytest.raises(StateError, match="cannot open the state database"):
        StateStore.open(tmp_path)

    state.write_bytes(good)  # restored from a backup
    with StateStore.open(tmp_path) as store:
        assert store.exec_sql("select v from notes") == [("kept",)]


def test_a_damaged_state_under_a_lockgate_folder_is_named_damaged_not_in_use(
    tmp_path: Path,
) -> None:
    """DuckDB's message names the file: a folder called `lockgate` in its path is no sign of
    another process holding it (the read-only open said "in use by another process")."""
    folder = tmp_path / "lockgate" / ".lockgate"
    with StateStore.open(folder):
        pass
    (folder / "state.duckdb").write_bytes(b"not a database, " * 1000)

    with pytest.raises(StateError) as caught:
        StateStore.open_read_only(folder)
    assert "cannot open the state database" in caught.value.reason
    assert "in use" not in caught.value.reason


def test_a_second_handle_writes_to_the_state_in_utc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a machine outside UTC: a DuckDB connection starts in the machine's zone
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    with StateStore.open(tmp_path) as store:
        writer = store.writer()
        try:
            writer.exec_sql("create table notes (sent_at timestamptz)")
            writer.exec_sql("insert into notes values ('2026-12-07 10:00:00')")
            zone = writer.exec_sql("select current_setting('TimeZone')")[0][0]
        finally:
            writer.close()
        assert zone == "UTC"
        assert store.exec_sql("select sent_at::varchar from notes") == [("2026-12-07 10:00:00+00",)]
    with StateStore.open(tmp_path) as store:  # in the state's file, not in the instance
        assert store.exec_sql("select count(*) from notes") == [(1,)]


def spill_folder(store: StateStore) -> str:
    return str(store.exec_sql("select current_setting('temp_directory')")[0][0])


@pytest.mark.parametrize("spilled", [False, True], ids=["nothing spilled", "after a spill"])
def test_a_state_opened_after_another_spills_into_its_own_folder(
    tmp_path: Path, spilled: bool
) -> None:
    """A process opening one state after another (a test suite, a host of projects) takes
    over the instance the first left idle, with the spill folder moved to the second's (one
    DuckDB refuses to move is replaced by a new instance). Each state's queries spill into its
    own `tmp`, and each reads its own data, also after the first state's queries spilled."""
    first, second = tmp_path / "first", tmp_path / "second"
    with StateStore.open(first, memory_limit="16MB") as store:
        assert spill_folder(store) == str(first / "tmp")
        store.exec_sql("create table notes (v varchar); insert into notes values ('first')")
        if spilled:  # a sort far over the limit goes to disk
            store.exec_sql(
                "select b from (select md5(range::varchar) || repeat('x', 200) as b "
                "from range(300000)) order by b limit 1"
            )
    with StateStore.open(second, memory_limit="16MB") as store:
        assert spill_folder(store) == str(second / "tmp")
        assert not store.exec_sql(
            "select 1 from duckdb_tables() where database_name = 'state' and table_name = 'notes'"
        )
        store.exec_sql("create table notes (v varchar); insert into notes values ('second')")
    with StateStore.open(first) as store:
        assert spill_folder(store) == str(first / "tmp")
        assert store.exec_sql("select v from notes") == [("first",)]
