"""A model that returns two columns of one name (`select u.*, a.*` of two tables that both have
`plan`) is refused before anything is sent, by `sync`, `plan` and `validate --connect` alike:
the error names the sync file, the column and the fix. Read by name, the first column used to
win silently (the user's `free` sent instead of the account's `enterprise`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.errors import ConfigError, StepError
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

WAREHOUSE = """
create table users as select 1 as id, 'ada@example.com' as email, 'free' as plan;
create table accounts as select 1 as user_id, 'enterprise' as plan;
"""

SYNC = """
name: profile
source: warehouse
model: {{sql: "{sql}"}}
kind: people
primary_key: id
identify_by: {{id: id}}
attributes: [plan]
"""

JOINED = "select u.*, a.* from users u join accounts a on a.user_id = u.id"


def refused(caught: pytest.ExceptionInfo[StepError], columns: str) -> None:
    """The run's error points at the model line of the sync file, names the column and says
    how to give one of them a name of its own."""
    cause = caught.value.cause
    assert isinstance(cause, ConfigError)
    assert cause.location == "syncs/profile.yml:4"
    assert f"sync `profile`: the model returns {columns}" in cause.reason
    assert "`a.plan as account_plan`" in str(cause.hint)


def test_two_columns_of_one_name_are_refused_by_sync_and_plan(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(WAREHOUSE)
    project = project_factory.write({"profile": SYNC.format(sql=JOINED)})
    with pytest.raises(StepError) as planned:
        plan_sync(project, "profile", console=NullConsole())
    refused(planned, "two columns named `plan`")
    with pytest.raises(StepError) as run:
        run_sync(project, "profile", console=NullConsole())
    refused(run, "two columns named `plan`")
    assert "step `extract` failed" in str(run.value)
    # nothing was sent
    assert not project_factory.emulator.people()
    assert not project_factory.emulator.request_log()


def test_names_that_differ_only_in_case_are_one_name(project_factory: ProjectFactory) -> None:
    project_factory.sql(WAREHOUSE)
    sql = "select id, email, 'pro' as Plan, plan from users"
    project = project_factory.write({"profile": SYNC.format(sql=sql)})
    with pytest.raises(StepError) as run:
        run_sync(project, "profile", console=NullConsole())
    refused(run, "columns `Plan` and `plan`, one name to Lockgate (it ignores case)")
    assert not project_factory.emulator.people()


def test_a_model_changed_after_a_run_is_refused_too(project_factory: ProjectFactory) -> None:
    """A re-run keys a DuckDB model where it lives, and `--only` finds its rows there: the
    nested model DuckDB reads there renames the second `plan` to `plan_1`, which must not hide
    the duplicate."""
    project_factory.sql(WAREHOUSE)
    project = project_factory.write({"profile": SYNC.format(sql="select * from users")})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    project_factory.sql("update users set plan = 'pro'")
    project = project_factory.write({"profile": SYNC.format(sql=JOINED)})
    with pytest.raises(StepError) as again:
        run_sync(project, "profile", console=NullConsole())
    refused(again, "two columns named `plan`")
    with pytest.raises(StepError) as only:
        run_sync(project, "profile", console=NullConsole(), only=("1",))
    refused(only, "two columns named `plan`")
    # the person still has what the first run sent
    assert {p.id: p.attributes for p in project_factory.emulator.people()} == {
        "1": {"plan": "free"}
    }


def test_validate_connect_fails_the_model_check(project_factory: ProjectFactory) -> None:
    project_factory.sql(WAREHOUSE)
    project = project_factory.write({"profile": SYNC.format(sql=JOINED)})
    result = CliRunner().invoke(
        cli, ["validate", "--connect", "--json", "--project", str(project.root)]
    )
    assert result.exit_code == 1
    checks = {(c["what"], c["name"]): c for c in json.loads(result.stdout)["connections"]}
    model = checks["model", "profile"]
    assert model["ok"] is False
    assert str(model["detail"]).startswith(
        "syncs/profile.yml:4: sync `profile`: the model returns two columns named `plan`"
    )
    assert "`a.plan as account_plan`" in str(model["hint"])


@pytest.mark.parametrize("column", ["__k", "__id_id", "__rid"])
def test_a_column_of_a_name_lockgate_gives_its_own_is_refused(
    project_factory: ProjectFactory, column: str
) -> None:
    # it took the place of Lockgate's: `__k` became every row's key (all three rejected as
    # one key), `__id_id` every row's person (three people sent as one), and `__rid` broke
    # `plan` ("unexpected ValueError ... this is a bug in Lockgate")
    project_factory.sql(
        f"create table users as select i as id, 'pro' as plan, 'x' as {column} "
        "from range(1, 4) t(i)"
    )
    project = project_factory.write({"profile": SYNC.format(sql="select * from users")})
    for step in (plan_sync, run_sync):
        with pytest.raises(StepError) as caught:
            step(project, "profile", console=NullConsole())
        cause = caught.value.cause
        assert isinstance(cause, ConfigError) and cause.location == "syncs/profile.yml:4"
        assert f"the model returns `{column}`: names starting with `__` are Lockgate's own" in (
            cause.reason
        )
        assert f"`{column} as {column.lstrip('_')}`" in str(cause.hint)
    assert project_factory.emulator.people() == []
    # renamed in the model, the three people go out
    project = project_factory.write(
        {"profile": SYNC.format(sql=f"select * rename ({column} as tag) from users")}
    )
    assert run_sync(project, "profile", console=NullConsole()).delivered == 3
    assert sorted(p.id for p in project_factory.emulator.people()) == ["1", "2", "3"]
