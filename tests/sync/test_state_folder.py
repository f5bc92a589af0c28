"""Where the state lives (`state:` in lockgate.yml), and a state folder that cannot be written.

A deployment points `state:` at a persistent volume through an environment variable: the
state must go there (kept in the project folder, it is lost with the container and the next
run sends everything again). A state folder that refuses writes (read-only, full) is an error
naming the folder or file and how to fix it, never "a bug in Lockgate".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.sync.helpers import PEOPLE

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
