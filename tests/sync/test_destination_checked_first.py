"""A sync's destination settings are resolved and checked (no network: every variable they
name is set, the region and URLs are well-formed) before its model is read: a variable not
set fails the run at once, whether or not it would have sent anything, with the error naming
the variable, the block and the line of lockgate.yml. `plan` needs no credentials, and says
what a run would need."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lockgate.cli import main

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: id
identify_by: {id: id}
attributes: [plan]
"""

EVENTS = """
name: activity
source: warehouse
model: {sql: "select * from events_not_built_yet"}
kind: events
identify_by: {id: user_id}
event: {name: event_name, timestamp: occurred_at, id: event_id}
"""

#: the error for the default `api_key` not set: at the destination's line of lockgate.yml
#: (tests/sync/conftest.py's PROJECT_YML: `customerio:` is line 7)
NOT_SET = (
    "lockgate.yml:7: destination `customerio`: environment variable `CUSTOMERIO_API_KEY` "
    "(for `api_key`) is not set"
)


def lockgate(capsys: pytest.CaptureFixture[str], project: Any, *args: str, code: int = 0) -> str:
    """Run the CLI on ``project``; it must exit with ``code``. Returns what it printed, each
    run of spaces as one (the console wraps lines)."""
    capsys.readouterr()
    try:
        main([*args, "--project", str(project.root)])
        exited = 0
    except SystemExit as exit_:
        exited = int(exit_.code or 0)
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert exited == code, text
    assert "Traceback" not in text
    return text


def json_of(capsys: pytest.CaptureFixture[str], project: Any, *args: str) -> Any:
    """What the command prints with `--json` (it must succeed)."""
    capsys.readouterr()
    main([*args, "--json", "--project", str(project.root)])
    return json.loads(capsys.readouterr().out)


def runs(capsys: pytest.CaptureFixture[str], project: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json_of(capsys, project, "runs")
    return found


def test_a_key_not_set_fails_the_sync_before_its_model_is_read(
    project_factory: ProjectFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model reads a table that is not there: a run that read it would fail on that; the
    one without a key fails on the key, so it never read the model."""
    project_factory.sql("create table users as select 1 as id")  # the warehouse, no events
    project = project_factory.write({"activity": EVENTS})
    monkeypatch.delenv("CUSTOMERIO_API_KEY")
    said = lockgate(capsys, project, "sync", "activity", code=1)
    assert NOT_SET in said and "step `destination` failed" in said
    assert "hint: export CUSTOMERIO_API_KEY=... before running" in said
    assert "events_not_built_yet" not in said
    [run] = runs(capsys, project)
    assert run["status"] == "failed" and "CUSTOMERIO_API_KEY" in run["error"]


def test_a_sync_without_its_key_fails_whether_or_not_it_has_anything_to_send(
    project_factory: ProjectFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project_factory.sql("create table users as select i as id, 'pro' as plan from range(3) t(i)")
    project = project_factory.write({"profile": PROFILE})
    api_key = project_factory.emulator.track_auth[1]
    monkeypatch.delenv("CUSTOMERIO_API_KEY")

    # with records to send: nothing sent, nothing recorded as delivered
    said = lockgate(capsys, project, "sync", "profile", code=1)
    assert NOT_SET in said
    assert project_factory.emulator.people() == []
    # nothing recorded as sent: all three are still new to the sync
    assert json_of(capsys, project, "plan", "profile")["changes"]["new"] == 3

    # the key set: the next run sends every record, once
    monkeypatch.setenv("CUSTOMERIO_API_KEY", api_key)
    lockgate(capsys, project, "sync", "profile")
    assert sorted(p.id for p in project_factory.emulator.people()) == ["0", "1", "2"]
    last = runs(capsys, project)[0]
    assert (last["status"], last["counts"]["delivered"]) == ("success", 3)

    # a quiet day (nothing changed) fails without the key as a busy one does
    monkeypatch.delenv("CUSTOMERIO_API_KEY")
    said = lockgate(capsys, project, "sync", "profile", code=1)
    assert NOT_SET in said
    assert [r["status"] for r in runs(capsys, project)] == ["failed", "success", "failed"]


def test_plan_needs_no_key_and_says_a_sync_would_need_it(
    project_factory: ProjectFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project_factory.sql("create table users as select 1 as id, 'pro' as plan")
    project = project_factory.write({"profile": PROFILE})
    monkeypatch.delenv("CUSTOMERIO_API_KEY")
    said = lockgate(capsys, project, "plan", "profile")
    assert "people new to this sync │ 1 │" in said
    assert f"warning: `lockgate sync profile` would fail until this is fixed: {NOT_SET}" in said
