"""A state that does not describe what the workspace holds is refused before anything is sent.

- A state file cut short after it held runs (a bad restore) is refused, not set aside and
  replaced by an empty one (which would send everything again and lose the run history).
- A state written by a newer Lockgate (a newer state format) is refused by an older one.

Every test runs real syncs against the emulator (tests/sync/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
from click.testing import CliRunner
from tests.sync.helpers import PEOPLE

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.state.store import STATE_FORMAT
from lockgate.sync.run import run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)


def seed(factory: ProjectFactory, people: int = 3) -> None:
    factory.sql(
        "create or replace table people as select i::varchar as id, 'pro' || i as plan "
        f"from range({people}) t(i);"
        "create or replace table events as select 'e' || i as event_id, i::varchar as id, "
        "now() - interval 1 hour as at from range(2) t(i)"
    )


def lockgate(project: Any, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--project", str(project.root)])


def refused(root: Path, *args: str) -> dict[str, str]:
    """The errors of a command that fails (exit 1), by sync, from its `--json` document."""
    result = CliRunner().invoke(cli, [*args, "--json", "--project", str(root)])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    docs = doc if isinstance(doc, list) else [doc]
    return {d["sync"]: " ".join(d["error"].split()) for d in docs}


def test_a_state_file_cut_short_after_runs_is_refused(project_factory: ProjectFactory) -> None:
    """Set aside, an empty state would have every person sent again and the run history
    gone; `runs.json` says the file held runs."""
    seed(project_factory)
    project = project_factory.write({"people": PEOPLE})
    assert lockgate(project, "sync", "people").exit_code == 0
    state = project.root / ".lockgate" / "state.duckdb"
    with state.open("r+b") as f:  # a bad copy or restore
        f.truncate(8192)
    requests = len(project_factory.emulator.request_log())
    runs_log = (state.parent / "runs.json").read_bytes()

    said = refused(project.root, "sync", "people")["people"]
    assert f"the state database `{state}` is 8,192 bytes, too short to hold anything, but " in said
    assert "runs.json` lists 1 earlier run (the latest" in said
    assert "restore it from a backup; or, to start over, move it away" in said
    assert len(project_factory.emulator.request_log()) == requests
    assert state.stat().st_size == 8192 and not state.with_name("state.duckdb.unfinished").exists()
    assert (state.parent / "runs.json").read_bytes() == runs_log  # the run history is kept


def test_a_state_file_cut_off_while_created_is_set_aside_with_a_warning(
    project_factory: ProjectFactory,
) -> None:
    seed(project_factory)
    project = project_factory.write({"people": PEOPLE})
    state = project.root / ".lockgate" / "state.duckdb"
    state.parent.mkdir()
    state.write_bytes(b"\0" * 4096)  # a first run killed while DuckDB created the file
    console = NullConsole()
    assert run_sync(project, "people", console=console).delivered == 3
    aside = state.with_name("state.duckdb.unfinished")
    assert (
        "warning: the state file was cut off while it was being created (a run killed in its "
        f"first moments) and held nothing: set aside as `{aside}`, and a new state created; "
        "this run sends every record as a first run does"
    ) in console.messages


def test_a_state_of_a_newer_format_is_refused_before_anything_is_sent(
    project_factory: ProjectFactory,
) -> None:
    """A Lockgate rolled back after a newer one wrote the state: refused at once, where it
    could misread the state after sending."""
    seed(project_factory)
    project = project_factory.write({"people": PEOPLE})
    assert lockgate(project, "sync", "people").exit_code == 0
    con = duckdb.connect(str(project.root / ".lockgate" / "state.duckdb"))
    con.execute("update state_format set format = ?, written_by = '9.1.0'", [STATE_FORMAT + 1])
    con.close()
    project_factory.sql("update people set plan = 'B'")
    requests = len(project_factory.emulator.request_log())

    said = refused(project.root, "sync", "people")["people"]
    assert (
        f"is of state format {STATE_FORMAT + 1}, written by Lockgate 9.1.0; this Lockgate" in said
    )
    assert f"knows state formats up to {STATE_FORMAT}" in said
    assert "upgrade Lockgate to 9.1.0 or later" in said
    assert len(project_factory.emulator.request_log()) == requests
