"""`lockgate plan --detailed-exitcode`: a CI check on a model or mapping change can tell
"nothing to send" (0) from "would send" (2) from "a guardrail would stop the sync" (3)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from lockgate.cli import cli

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {plan: plan}
guardrails: {max_changed: 10%}
"""


def lockgate(project: Any, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--project", str(project.root)])


def test_the_exit_code_says_whether_a_sync_would_send_or_stop(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        "create table users as select i as user_id, 'free' as plan from range(1, 41) t(i)"
    )
    project = project_factory.write({"profile": PROFILE})
    first = lockgate(project, "plan", "profile", "--detailed-exitcode", "--json")
    assert first.exit_code == 2, first.output
    assert json.loads(first.output)["changes"]["to_send"] == 40  # --json output stays JSON
    assert lockgate(project, "plan", "profile").exit_code == 0  # without the flag: 0
    assert lockgate(project, "sync", "profile").exit_code == 0

    unchanged = lockgate(project, "plan", "--all", "--detailed-exitcode")
    assert unchanged.exit_code == 0, unchanged.output
    assert "nothing would be sent" in unchanged.output

    project_factory.sql("update users set plan = 'pro' where user_id <= 2")  # 5%: within
    assert lockgate(project, "plan", "profile", "--detailed-exitcode").exit_code == 2
    project_factory.sql("update users set plan = 'pro'")  # 100% changed: max_changed stops it
    stopped = lockgate(project, "plan", "profile", "--detailed-exitcode")
    assert stopped.exit_code == 3, stopped.output
    assert "a guardrail would stop: profile" in stopped.output
    # nothing was sent by any plan: the sync still has everyone to send
    assert len(project_factory.emulator.people()) == 40
    assert all(p.attributes["plan"] == "free" for p in project_factory.emulator.people())
