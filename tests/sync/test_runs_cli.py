"""`lockgate runs --sync NAME` and `runs show --sync NAME`: a name no sync has is an error, a
sync taken out of the project keeps its runs listed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from lockgate.cli import cli, main

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: customer_profile
source: warehouse
model: {table: users}
kind: people
primary_key: id
identify_by: {id: id}
attributes: [plan]
"""


def lockgate(project: Any, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--project", str(project.root)])


def test_a_mistyped_sync_name_is_an_error_that_names_the_close_one(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    project_factory.sql("create table users as select '1' as id, 'pro' as plan")
    project = project_factory.write({"customer_profile": PROFILE})
    assert lockgate(project, "sync", "customer_profile").exit_code == 0

    for args in (["runs"], ["runs", "--json"], ["runs", "show"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main([*args, "--sync", "customer-profile", "--project", str(project.root)])
        assert exited.value.code == 1, args
        said = " ".join(capsys.readouterr().err.split())
        assert "no sync named `customer-profile`" in said, args
        assert "did you mean `customer_profile`? (syncs in this project: `customer_profile`)" in (
            said
        ), args
    listed = lockgate(project, "runs", "--sync", "customer_profile", "--json")
    assert [r["sync"] for r in json.loads(listed.output)] == ["customer_profile"]

    # the sync taken out of the project: its runs are still listed and shown
    project = project_factory.write({})
    listed = lockgate(project, "runs", "--sync", "customer_profile", "--json")
    assert listed.exit_code == 0
    assert [r["sync"] for r in json.loads(listed.output)] == ["customer_profile"]
    shown = lockgate(project, "runs", "show", "--sync", "customer_profile", "--json")
    assert shown.exit_code == 0 and json.loads(shown.output)["sync"] == "customer_profile"


def test_a_negative_limit_is_refused_as_the_option_it_is(project_factory: ProjectFactory) -> None:
    # `runs --limit -1` and `history --limit -1` reached DuckDB's `limit ?` ("unexpected
    # BinderException ... this is a bug in Lockgate"); `history --limit 0` said no call was
    # recorded for a person who had calls; `runs show --limit -1` quietly hid the last row
    project_factory.sql("create table users as select '1' as id, 'pro' as plan")
    project = project_factory.write({"customer_profile": PROFILE})
    assert lockgate(project, "sync", "customer_profile").exit_code == 0
    for args, least in (
        (["runs", "--limit", "-1"], "x>=0"),
        (["runs", "show", "--limit", "-1"], "x>=0"),
        (["history", "--person", "1", "--limit", "-1"], "x>=1"),
        (["history", "--person", "1", "--limit", "0"], "x>=1"),
    ):
        result = lockgate(project, *args)
        assert result.exit_code == 2, (args, result.output)
        said = " ".join(result.output.split())
        assert f"Invalid value for '--limit': {args[-1]} is not in the range {least}" in said, args
    shown = lockgate(project, "history", "--person", "1", "--limit", "1")
    assert shown.exit_code == 0 and "No call recorded" not in shown.output
