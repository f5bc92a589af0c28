"""A state file whose creation a SIGKILL cut off (shorter than DuckDB's headers) is set aside
and created again; a damaged file of full size stays an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.errors import StateError
from lockgate.state.store import StateStore


@pytest.mark.parametrize("size", [0, 4096])
def test_a_state_file_cut_off_while_created_is_created_again(tmp_path: Path, size: int) -> None:
    state = tmp_path / ".lockgate"
    state.mkdir()
    (state / "state.duckdb").write_bytes(b"\0" * size)
    with StateStore.open(state) as store:
        store.start_run("r1", "profile", "people")
        assert [r.run_id for r in store.runs()] == ["r1"]
    assert (state / "state.duckdb.unfinished").stat().st_size == size
    with StateStore.open(state) as store:  # and it is kept from then on
        assert [r.run_id for r in store.runs()] == ["r1"]


def test_a_damaged_state_file_of_full_size_stays_an_error(tmp_path: Path) -> None:
    state = tmp_path / ".lockgate"
    state.mkdir()
    (state / "state.duckdb").write_bytes(b"x" * 3 * 4096)
    with pytest.raises(StateError, match="move it away"):
        StateStore.open(state)
    assert (state / "state.duckdb").stat().st_size == 3 * 4096  # not touched
    assert not (state / "state.duckdb.unfinished").exists()
