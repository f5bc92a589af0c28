"""Where the state lives (`state:` in lockgate.yml), and a state folder that cannot be written.

A deployment points `state:` at a persistent volume through an environment variable: the
state must go there (kept in the project folder, it is lost with the container and the next
run sends everything again). A state folder that refuses writes (read-only, full) is an error
naming the folder or file and how to fix it, never "a bug in Lockgate".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.sync.helpers import PEOPLE, read_only

from lockgate.cli import main

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)


def lockgate(project: Any, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI as a user does: exit code, stdout, stderr (whitespace folded)."""
    capsys.readouterr()
    try:
        main([*args, "--project", str(project.root)])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def with_state(project: Any, state: str) -> None:
    """Write ``state: <state>`` into the project's lockgate.yml, as its second line."""
    yml = project.root / "lockgate.yml"
    first, rest = yml.read_text().split("\n", 1)
    yml.write_text(f"{first}\nstate: {state}\n{rest}")


def seed(factory: ProjectFactory, n: int = 3) -> Any:
    factory.sql(
        "create or replace table people as select i::varchar as id, 'pro' as plan "
        f"from range({n}) t(i)"
    )
    return factory.write({"people": PEOPLE})


# ------------------------------------------------------------------ `state:` with ${VAR} and ~


def test_state_in_an_env_variable_goes_to_the_folder_it_names(
    project_factory: ProjectFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    volume = tmp_path_factory.mktemp("volume")
    monkeypatch.setenv("LG_STATE_VOLUME", str(volume))
    project = seed(project_factory)
    with_state(project, "${LG_STATE_VOLUME}/crm")

    code, _, err = lockgate(project, capsys, "sync", "people")
    assert code == 0, err
    assert (volume / "crm" / "state.duckdb").exists()
    assert not list(project.root.glob("$*")), "no folder named after the reference"
    assert len(project_factory.emulator.people()) == 3
    requests = len(project_factory.emulator.request_log())

    # the next run finds the state where it left it: nothing to send again
    code, out, err = lockgate(project, capsys, "sync", "people", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["delivered"] == 0
    assert len(project_factory.emulator.request_log()) == requests
    code, out, _ = lockgate(project, capsys, "runs", "--json")
    assert [r["status"] for r in json.loads(out)] == ["success", "success"]


def test_state_under_the_home_folder(
    project_factory: ProjectFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    project = seed(project_factory)
    with_state(project, "~/lockgate/crm")

    code, _, err = lockgate(project, capsys, "sync", "people")
    assert code == 0, err
    assert (home / "lockgate" / "crm" / "state.duckdb").exists()
    assert not (project.root / "~").exists()


def test_state_variable_not_set_is_an_error_at_its_line_and_nothing_is_sent(
    project_factory: ProjectFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LG_STATE_VOLUME", raising=False)
    project = seed(project_factory)
    with_state(project, "${LG_STATE_VOLUME}/crm")

    said = (
        "Error: lockgate.yml:2: environment variable `LG_STATE_VOLUME` (for `state`) is not set "
        "hint: export LG_STATE_VOLUME=... before running, or change `state` in lockgate.yml"
    )
    for command in (["sync", "people"], ["plan", "people"], ["runs"], ["history", "--person", "1"]):
        code, _, err = lockgate(project, capsys, *command)
        assert (code, err) == (1, said), command
    code, out, _ = lockgate(project, capsys, "sync", "people", "--json")
    assert code == 1
    assert "environment variable `LG_STATE_VOLUME`" in json.loads(out)[0]["error"]
    assert project_factory.emulator.people() == []
    assert sorted(p.name for p in project.root.iterdir()) == [
        "lockgate.yml",
        "syncs",
        "warehouse.duckdb",
    ]

    # validate checks the files, and says the variable is needed (as for any other one)
    code, _, err = lockgate(project, capsys, "validate")
    assert code == 0, err
    warned = "environment variable `LG_STATE_VOLUME` (for `state`) is not set; syncs will need it"
    assert warned in err


def test_a_shell_style_variable_in_state_is_an_error_at_its_line(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    project = seed(project_factory)
    with_state(project, "$HOME/lockgate")

    code, _, err = lockgate(project, capsys, "validate")
    assert code == 1
    assert (
        "Error: lockgate.yml:2: `state` `$HOME/lockgate` has a `$` that is not an `${VAR}` "
        "reference: write `${HOME}` for an environment variable (at `state`)"
    ) in err
    assert not Path(project.root / "$HOME").exists()


# ------------------------------------------------------------------ a state that cannot be written


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[None]:
    """A small tmpfs mounted on ``folder`` (root only; the test is skipped elsewhere)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` but ``leave`` bytes."""
    filler = folder / "filler"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with filler.open("wb") as out:
        out.truncate(0)
        out.write(b"\0" * max(free - leave, 0))
    return filler


BIG = """
name: big
source: warehouse
model: {table: big}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  note: note
"""


def test_a_full_disk_while_a_run_commits_fails_that_sync_naming_the_file_and_the_next_converges(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    project_factory.sql(
        "create table big as select i::varchar as id, repeat('n', 200) || i as note "
        "from range(3000) t(i); "
        "create table people as select i::varchar as id, 'pro' as plan from range(3) t(i)"
    )
    project = project_factory.write({"big": BIG, "people": PEOPLE})
    state = project.root / ".lockgate"
    with tmpfs(state, "16m"):
        code, _, err = lockgate(project, capsys, "sync", "--all")
        assert code == 0, err
        project_factory.sql("update big set note = note || '!'")
        filler = fill(state, 64 * 1024)

        code, out, err = lockgate(project, capsys, "sync", "--all", "--json")
        assert code == 1
        assert "unexpected" not in err and "bug" not in err
        docs = {d["sync"]: d for d in json.loads(out)}
        assert docs["big"]["status"] == "failed"
        assert (
            f"state `{state}/state.duckdb.wal` not written: no space left on device"
            in docs["big"]["error"]
        )
        assert "hint: free space on that disk" in docs["big"]["error"]
        assert "people" in docs  # the other sync went on (its outcome is the disk's to say)
        assert "the others go on" in err

        filler.unlink()
        code, out, err = lockgate(project, capsys, "sync", "--all", "--json")
        assert code == 0, err
        person = project_factory.emulator.person(id="2999")
        assert person is not None and person.attributes["note"].endswith("2999!")
        code, out, _ = lockgate(project, capsys, "plan", "--all", "--json")
        assert [d["changes"]["to_send"] for d in json.loads(out)] == [0, 0]
        code, out, _ = lockgate(project, capsys, "runs", "--json", "--sync", "big")
        assert [r["status"] for r in json.loads(out)] == ["success", "failed", "success"]


def test_a_read_only_state_folder_is_named_with_the_fix_and_runs_are_still_listed(
    project_factory: ProjectFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the long path on one line
    project = seed(project_factory)
    assert lockgate(project, capsys, "sync", "people")[0] == 0
    state = project.root / ".lockgate"
    requests = len(project_factory.emulator.request_log())
    with read_only(state) as why:
        said = f"state `{state}/state.lock` not written: {why}"
        fix = "hint: make the folder writable by the user running Lockgate"
        for command in (["sync", "people"], ["plan", "people"]):
            code, _, err = lockgate(project, capsys, *command)
            assert code == 1, command
            assert f"Error: {said} {fix}" in err, command
        code, out, _ = lockgate(project, capsys, "sync", "people", "--json")
        assert code == 1
        assert said in json.loads(out)[0]["error"]

        # the commands that only read open the state read-only: they read it as it is
        code, out, err = lockgate(project, capsys, "runs", "--json")
        assert code == 0, err
        assert [r["status"] for r in json.loads(out)] == ["success"]
        code, out, _ = lockgate(project, capsys, "runs")
        assert code == 0
        assert said not in out
        code, out, err = lockgate(project, capsys, "runs", "show", "--json")
        assert code == 0, err
        assert json.loads(out)["status"] == "success"
        code, out, err = lockgate(project, capsys, "history", "--person", "1", "--json")
        assert code == 0, err
        assert [(r["sync"], r["status"]) for r in json.loads(out)] == [("people", 200)]

        # validate reads the state too (its contract checks), with nothing to warn of
        code, out, err = lockgate(project, capsys, "validate", "--json")
        assert code == 0, err
        found = json.loads(out)
        assert (found["valid"], found["contract"]) == (True, [])
    assert len(project_factory.emulator.request_log()) == requests


def test_runs_json_that_cannot_be_written_leaves_no_run_listed_as_running(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full to make a write fail with ENOSPC")
    project = seed(project_factory)
    assert lockgate(project, capsys, "sync", "people")[0] == 0
    project_factory.sql("update people set plan = 'basic'")
    state = project.root / ".lockgate"
    # every write of runs.json goes through this file: the kernel's own "disk full"
    (state / "runs.json.tmp").symlink_to("/dev/full")

    code, out, err = lockgate(project, capsys, "sync", "people", "--json")
    assert code == 1
    said = f"state `{state}/runs.json` not written: no space left on device"
    assert f"Error: {said} hint: free space on that disk" in err
    assert said in json.loads(out)[0]["error"]
    assert {p.attributes["plan"] for p in project_factory.emulator.people()} == {"pro"}

    code, out, _ = lockgate(project, capsys, "runs", "--json")
    assert [r["status"] for r in json.loads(out)] == ["success"]
    code, out, err = lockgate(project, capsys, "sync", "people", "--json")
    assert code == 0, err
    assert {p.attributes["plan"] for p in project_factory.emulator.people()} == {"basic"}
    code, out, _ = lockgate(project, capsys, "runs", "--json")
    assert [r["status"] for r in json.loads(out)] == ["success", "success"]


def test_a_file_where_the_state_folder_should_be_is_named(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    project = seed(project_factory)
    with_state(project, "state")
    (project.root / "state").write_text("not a folder")

    code, out, err = lockgate(project, capsys, "sync", "people", "--json")
    assert code == 1
    assert (
        f"Error: cannot use the state folder `{project.root / 'state'}`: File exists "
        "hint: `state:` in lockgate.yml must name a folder Lockgate can create and write "
        "(not a file)"
    ) in err
    assert project_factory.emulator.people() == []


def test_reading_commands_share_the_state_and_name_a_sync_that_holds_it(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from lockgate.state.store import StateStore

    project = seed(project_factory)
    assert lockgate(project, capsys, "sync", "people")[0] == 0
    state = project.root / ".lockgate"
    # another reader (a `lockgate runs` in another terminal) does not stop this one
    with StateStore.open_read_only(state):
        code, out, err = lockgate(project, capsys, "history", "--person", "1", "--json")
        assert code == 0, err
        assert len(json.loads(out)) == 1
    # a sync holds it: DuckDB lets no other process read it, so say who and what to do
    with StateStore.open(state):
        code, _, err = lockgate(project, capsys, "history", "--person", "1")
        assert code == 1
        assert f"Error: the project state in `{state}` is in use by pid {os.getpid()}" in err
        assert "hint: wait for the running sync to finish" in err


def test_reading_commands_create_nothing_in_a_project_never_synced(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    project = seed(project_factory)
    code, out, err = lockgate(project, capsys, "runs", "--json")
    assert (code, json.loads(out)) == (0, []), err
    code, out, err = lockgate(project, capsys, "history", "--person", "1", "--json")
    assert (code, json.loads(out)) == (0, []), err
    assert not (project.root / ".lockgate").exists()
