"""A run still `running` when its sync starts again was cut off (a SIGKILL, a dead machine):
the starting run marks it `crashed`, never itself."""

from __future__ import annotations

from pathlib import Path

from lockgate.state.store import StateStore


def test_the_run_that_starts_marks_earlier_running_runs_crashed_not_itself(
    tmp_path: Path,
) -> None:
    with StateStore.open(tmp_path / ".lockgate") as store:
        store.start_run("r1", "profile", "people")  # killed: never finished
        store.start_run("r2", "other", "people")  # another sync's run is not looked at
        store.start_run("r3", "profile", "people")
        assert store.mark_crashed_runs("profile", "r3") == 1
        status = {r.run_id: r.status for r in store.runs()}
    assert status == {"r1": "crashed", "r2": "running", "r3": "running"}
