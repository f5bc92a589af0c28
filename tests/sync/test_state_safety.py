"""A state that does not describe what the workspace holds is refused before anything is sent.

- A sync's state is of one Customer.io workspace (its site id): a project copied with its
  `.lockgate` to another workspace, or two projects sharing one `state:` folder, would have
  the new workspace's records skipped (events even by `--full-resync`). The run and the plan
  refuse, `validate` warns, and `lockgate sync --new-workspace` starts the sync over there.
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
import pytest
from click.testing import CliRunner
from tests.sync.helpers import PEOPLE

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.emulator import Emulator, EmulatorConfig
from lockgate.errors import StateError
from lockgate.project.loader import load_project
from lockgate.state.store import STATE_FORMAT
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

EVENTS = """
name: activity
source: warehouse
model: {table: events}
kind: events
identify_by: {id: id}
event:
  name: {value: Visited}
  timestamp: at
  id: event_id
"""


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


@pytest.fixture
def workspace_b() -> Any:
    """A second Customer.io workspace: its own site id."""
    emu = Emulator(EmulatorConfig(site_id="site-b", require_ulid_event_ids=True))
    with emu.serve():
        yield emu


def point_at(factory: ProjectFactory, root: Path, emu: Emulator) -> None:
    """Point the project in ``root`` at ``emu``: its URL and its credentials."""
    yml = root / "lockgate.yml"
    text = yml.read_text().replace(factory.emulator.base_url, emu.base_url)
    site_id, api_key = emu.track_auth
    assert api_key == factory.emulator.track_auth[1]  # `api_key` comes from the environment
    yml.write_text(
        text.replace("    type: customerio\n", f"    type: customerio\n    site_id: {site_id}\n")
    )


def test_a_project_copied_to_another_workspace_is_refused_before_anything_is_sent(
    project_factory: ProjectFactory, workspace_b: Emulator
) -> None:
    seed(project_factory)
    project = project_factory.write({"people": PEOPLE, "activity": EVENTS})
    assert lockgate(project, "sync", "--all").exit_code == 0
    assert len(project_factory.emulator.people()) == 3

    # staging's project, `.lockgate` and all, pointed at production
    point_at(project_factory, project.root, workspace_b)
    state = project.root / ".lockgate" / "state.duckdb"
    for args in (["plan", "people"], ["sync", "--all"], ["sync", "--all", "--full-resync"]):
        errors = refused(project.root, *args)
        assert sorted(errors) == (["people"] if args[0] == "plan" else ["activity", "people"])
        for name, said in errors.items():
            assert (
                f"sync `{name}`: the state `{state}` is of another Customer.io workspace (another "
                "site id) than destination `customerio` points at now" in said
            ), args
            assert "give this project a state folder of its own (`state:` in lockgate.yml)" in said
            assert f"`lockgate sync {name} --new-workspace` forgets what the state says" in said
    assert workspace_b.request_log() == []  # not one request reached the other workspace

    validated = lockgate(project, "validate", "--json")
    assert validated.exit_code == 0  # a warning
    [finding] = [f for f in json.loads(validated.stdout)["contract"] if f["check"] == "workspace"]
    assert finding["level"] == "warning"
    assert "syncs `activity`, `people`: the state" in finding["message"]
    assert "`lockgate sync activity people --new-workspace`" in finding["message"]

    # started over in the new workspace: every person and event sent there, once
    assert lockgate(project, "sync", "--all", "--new-workspace").exit_code == 0
    assert sorted(p.id for p in workspace_b.people()) == ["0", "1", "2"]
    assert len(workspace_b.events()) == 2
    prod = load_project(project.root)
    again = run_sync(prod, "people", console=NullConsole())
    assert (again.status, again.changes.to_send) == ("success", 0)
    assert run_sync(prod, "activity", console=NullConsole()).changes.to_send == 0
    assert '"workspace"' not in lockgate(project, "validate", "--json").stdout


def test_two_projects_sharing_a_state_folder_each_with_its_workspace(
    project_factory: ProjectFactory, workspace_b: Emulator
) -> None:
    """The second project's sync of the same name is refused: without that it trusted the
    first project's snapshot and sent nothing to its own workspace."""
    seed(project_factory)
    first = project_factory.write({"people": PEOPLE})
    yml = first.root / "lockgate.yml"
    yml.write_text(yml.read_text().replace("name: test\n", "name: a\nstate: ../shared\n"))
    assert lockgate(first, "sync", "people").exit_code == 0

    second = first.root / "b"
    (second / "syncs").mkdir(parents=True)
    (second / "syncs" / "people.yml").write_text((first.root / "syncs" / "people.yml").read_text())
    (second / "lockgate.yml").write_text(
        yml.read_text().replace("path: warehouse.duckdb", "path: ../warehouse.duckdb")
    )
    point_at(project_factory, second, workspace_b)
    (second / "lockgate.yml").write_text(
        (second / "lockgate.yml").read_text().replace("state: ../shared", "state: ../../shared")
    )
    assert "is of another Customer.io workspace" in refused(second, "sync", "people")["people"]
    assert workspace_b.request_log() == []


def test_the_same_workspace_behind_another_url_keeps_its_state(
    project_factory: ProjectFactory,
) -> None:
    """A workspace is its site id: a proxy, or a region's other URL, is the same one."""
    seed(project_factory)
    project = project_factory.write({"people": PEOPLE})
    assert run_sync(project, "people", console=NullConsole()).delivered == 3
    proxied = project_factory.emulator.base_url.replace("127.0.0.1", "localhost")
    project = project_factory.write({"people": PEOPLE}, url=proxied)
    project_factory.sql("update people set plan = 'B' where id = '1'")
    report = run_sync(project, "people", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 1)
    assert project_factory.emulator.person(id="1").attributes["plan"] == "B"


def test_a_state_from_before_workspaces_were_recorded_adopts_the_workspace(
    project_factory: ProjectFactory, workspace_b: Emulator
) -> None:
    """No record (a state of an earlier Lockgate): nothing is sent again for the upgrade, and
    from then on the workspace is known."""
    seed(project_factory)
    project = project_factory.write({"people": PEOPLE})
    assert run_sync(project, "people", console=NullConsole()).delivered == 3
    con = duckdb.connect(str(project.root / ".lockgate" / "state.duckdb"))
    con.execute("drop table workspaces")
    con.close()

    report = run_sync(project, "people", console=NullConsole())
    assert (report.status, report.changes.to_send) == ("success", 0)
    point_at(project_factory, project.root, workspace_b)
    with pytest.raises(StateError, match="another Customer.io workspace"):
        plan_sync(load_project(project.root), "people", console=NullConsole())


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
