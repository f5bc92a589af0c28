"""A reader of the state (`runs`, `history`, `validate`, reconcile) writes nothing in the state
folder, not even the files a query over the memory limit spills: a state on a read-only mount
reads as the docs say."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.state.store import THREADS_ENV, StateStore


def test_a_reader_spills_outside_the_state_folder_and_removes_what_it_spilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one thread: two sorting within 64 MB each hold blocks of their own, and DuckDB once
    # refused one ("failed to pin block") on a loaded machine; the spill is what is tested
    monkeypatch.setenv(THREADS_ENV, "1")
    state = tmp_path / "state"
    StateStore.open(state).close()  # a state as a sync leaves it
    before = sorted(p.relative_to(state) for p in state.rglob("*"))

    reader = StateStore.open_read_only(state, memory_limit="64MB")
    try:
        spill = Path(reader.exec_sql("select current_setting('temp_directory')")[0][0])
        assert state not in spill.parents
        # about 130 MB to sort, over 64 MB: DuckDB spills it
        rows = reader.exec_sql(
            "select count(*) from (select md5(r::varchar) || repeat('x', 100) as m "
            "from range(1000000) t(r) order by m)"
        )
        assert rows == [(1000000,)]
    finally:
        reader.close()

    assert sorted(p.relative_to(state) for p in state.rglob("*")) == before  # nothing new
    assert not spill.exists()  # the reader's own folder went with it
