"""A read-only DuckDB file is attached to an in-memory DuckDB kept for the process: it reads as a
DuckDB of its own would (catalog name, listings, settings), two sources may hold one file, two
files may share a name, and the file is free for a writer once the last source lets go."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from lockgate.errors import SourceError
from lockgate.sources import DuckDBSource
from lockgate.sources import duckdb as duckdb_source


def _warehouse(path: Path, *ids: int) -> Path:
    """A DuckDB file at ``path`` whose table `t` holds ``ids``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as conn:
        conn.execute("create or replace table t as select unnest($1::int[]) as id", [list(ids)])
    return path


def _ids(source: DuckDBSource, sql: str = "select id from t order by id") -> list[int]:
    return [row["id"] for row in source.read(sql).read_all().to_pylist()]


def _write_from_another_process(path: Path, value: int) -> subprocess.CompletedProcess[str]:
    """Insert ``value`` into `t` of ``path`` from a process of its own."""
    script = (
        f"import duckdb; duckdb.connect({str(path)!r}).execute('insert into t values ({value})')"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


def test_two_sources_of_one_file_read_it_at_once_and_each_close_leaves_the_other(
    tmp_path: Path,
) -> None:
    path = _warehouse(tmp_path / "warehouse.duckdb", 1, 2)
    run = DuckDBSource(path)
    identity = DuckDBSource(path)
    other_limit = DuckDBSource(path, memory_limit="128MB")

    assert _ids(run) == _ids(identity) == _ids(other_limit) == [1, 2]
    identity.close()
    assert _ids(run) == [1, 2]
    assert [t.name for t in run.tables()] == ["t"]
    run.close()
    assert _ids(other_limit) == [1, 2]
    other_limit.close()

    with duckdb.connect(str(path)) as writer:  # a writer in this process, once all closed
        writer.execute("insert into t values (3)")
    source = DuckDBSource(path)
    assert _ids(source) == [1, 2, 3]
    source.close()


def test_two_files_of_one_name_open_at_once_each_read_their_own_rows(tmp_path: Path) -> None:
    first = DuckDBSource(_warehouse(tmp_path / "a" / "warehouse.duckdb", 1))
    second = DuckDBSource(_warehouse(tmp_path / "b" / "warehouse.duckdb", 2))
    with duckdb.connect(str(tmp_path / "b" / "other.duckdb")) as conn:
        conn.execute("create table other_table as select 1 as x")
    third = DuckDBSource(tmp_path / "b" / "other.duckdb")

    assert _ids(first) == [1]
    assert _ids(second) == [2]
    assert _ids(first, "select id from warehouse.main.t") == [1]
    assert _ids(second, "select id from warehouse.main.t") == [2]
    # each lists its own file's tables, not another file's read at the same time
    assert [t.name for t in first.tables()] == [t.name for t in second.tables()] == ["t"]
    assert [t.name for t in third.tables()] == ["other_table"]
    assert first.schemas() == ["main"]
    for source in (first, second, third):
        source.close()


def test_a_model_naming_the_files_catalog_reads_as_on_a_duckdb_of_its_own(
    tmp_path: Path,
) -> None:
    path = _warehouse(tmp_path / "warehouse.duckdb", 1, 2)
    source = DuckDBSource(path)

    assert source.query("select current_database()") == [("warehouse",)]
    assert _ids(source, "select id from warehouse.main.t order by id") == [1, 2]
    assert _ids(source, "select id from main.t order by id") == [1, 2]
    assert source.schema_of("select * from warehouse.main.t").names == ["id"]
    assert [c.name for c in source.columns("main.t")] == ["id"]
    source.close()


def test_each_memory_limit_is_the_sources_own(tmp_path: Path) -> None:
    path = _warehouse(tmp_path / "warehouse.duckdb", 1)
    small = DuckDBSource(path)
    large = DuckDBSource(tmp_path / "warehouse.duckdb", memory_limit="1GB")

    limit = "select current_setting('memory_limit')"
    assert small.query(limit) == [("61.0 MiB",)]  # DuckDB's own spelling of 64MB
    assert large.query(limit) == [("953.6 MiB",)]
    small.close()
    large.close()


def test_an_open_source_keeps_the_file_from_writers_and_its_close_frees_it(
    tmp_path: Path,
) -> None:
    path = _warehouse(tmp_path / "warehouse.duckdb", 1)
    source = DuckDBSource(path)
    reader = DuckDBSource(path)
    reader.close()

    refused = _write_from_another_process(path, 2)
    assert refused.returncode != 0 and "lock" in refused.stderr
    source.close()

    written = _write_from_another_process(path, 2)
    assert written.returncode == 0, written.stderr
    source = DuckDBSource(path)
    assert _ids(source) == [1, 2]
    source.close()


def test_a_source_dropped_without_close_frees_the_file(tmp_path: Path) -> None:
    path = _warehouse(tmp_path / "warehouse.duckdb", 1)
    source = DuckDBSource(path)
    assert _ids(source) == [1]
    del source
    gc.collect()

    written = _write_from_another_process(path, 2)
    assert written.returncode == 0, written.stderr


def test_sources_opened_and_closed_in_threads_leave_the_file_free(tmp_path: Path) -> None:
    paths = [_warehouse(tmp_path / f"w{n}" / "warehouse.duckdb", n) for n in range(3)]
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for round_ in range(15):
                path = paths[(n + round_) % len(paths)]
                source = DuckDBSource(path)
                assert _ids(source) == [int(path.parent.name[1:])]
                source.close()
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    for n, path in enumerate(paths):
        with duckdb.connect(str(path)) as writer:
            writer.execute("insert into t values (10)")
            assert writer.execute("select count(*) from t").fetchone() == (2,), n


@pytest.mark.parametrize("name", ["warehouse.duckdb", "users.csv"])
def test_a_file_that_is_not_duckdb_is_named_in_the_error(tmp_path: Path, name: str) -> None:
    """Before, DuckDB took `users.csv` for an in-memory database it cannot open read-only."""
    path = tmp_path / name
    path.write_text("id,email\n1,a@example.com\n")

    with pytest.raises(SourceError) as caught:
        DuckDBSource(path, name="warehouse")
    assert "duckdb source `warehouse`: cannot open" in caught.value.reason
    assert str(path) in caught.value.reason
    assert "not a valid DuckDB database file" in caught.value.reason


def test_a_file_that_is_not_duckdb_in_a_lockgate_folder_fails_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error names the file: a folder called `lockgate` in its path is no lock to wait
    out (every such file waited the whole lock wait, 10 s, before its error)."""
    folder = tmp_path / "lockgate"
    folder.mkdir()
    path = folder / "users.csv"
    path.write_text("id,email\n1,a@example.com\n")
    waits: list[float] = []
    monkeypatch.setattr(duckdb_source, "LOCK_WAIT_SECONDS", 0.5)
    monkeypatch.setattr(
        duckdb_source, "time", SimpleNamespace(monotonic=time.monotonic, sleep=waits.append)
    )

    with pytest.raises(SourceError) as caught:
        DuckDBSource(path, name="warehouse")
    assert "not a valid DuckDB database file" in caught.value.reason
    assert "write lock" not in caught.value.hint
    assert waits == []


def test_a_file_a_writer_holds_past_the_wait_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _warehouse(tmp_path / "warehouse.duckdb", 1)
    script = (
        f"import duckdb, sys; conn = duckdb.connect({str(path)!r}); "
        "print('holding', flush=True); sys.stdin.readline()"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "holding\n"
        monkeypatch.setattr(duckdb_source, "LOCK_WAIT_SECONDS", 0.2)
        with pytest.raises(SourceError) as caught:
            DuckDBSource(path, name="warehouse")
    finally:
        writer.communicate("\n")
    assert "cannot open" in caught.value.reason and str(path) in caught.value.reason
    assert caught.value.hint is not None and "write lock" in caught.value.hint

    source = DuckDBSource(path)  # free again once the writer is gone
    assert _ids(source) == [1]
    source.close()


def test_a_model_reads_in_utc_on_a_machine_in_another_zone(tmp_path: Path) -> None:
    """`docs/sources.md`: the connection runs in UTC, so a `TIMESTAMPTZ` the model renders as
    text, or a wall-clock time it casts to one, reads the same as on a UTC server."""
    path = _warehouse(tmp_path / "warehouse.duckdb", 1)
    script = (
        "from lockgate.sources import DuckDBSource\n"
        f"for source in (DuckDBSource({str(path)!r}), DuckDBSource(':memory:')):\n"
        "    sql = \"select timestamp '2026-07-01 09:00:00'::timestamptz::varchar as at\"\n"
        "    print(source.read(sql).read_all().to_pylist()[0]['at'])\n"
        "    source.close()\n"
    )
    env = {**os.environ, "TZ": "America/New_York"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )

    assert done.stdout.splitlines() == ["2026-07-01 09:00:00+00", "2026-07-01 09:00:00+00"]


def test_a_read_that_spills_leaves_no_files_behind_when_the_process_ends(tmp_path: Path) -> None:
    """A sort past `memory_limit` spills under the temp folder (`TMPDIR`), and the folder goes
    when the process ends, also with the source left open."""
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute("create table t as select md5(range::varchar) as h from range(600000)")
    temp = tmp_path / "temp"
    temp.mkdir()
    script = (
        "import os\n"
        "from lockgate.sources import DuckDBSource\n"
        f"source = DuckDBSource({str(path)!r}, memory_limit='48MB')\n"
        "reader = source.read('select h from t order by h', batch_rows=1000)\n"
        "reader.read_next_batch()\n"
        f"print(sum(len(files) for _, _, files in os.walk({str(temp)!r})))\n"
    )
    env = {**os.environ, "TMPDIR": str(temp)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )

    assert int(done.stdout) > 0  # it spilled there
    assert list(temp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["temp", "warehouse.duckdb"]
