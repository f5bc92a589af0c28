"""`run_log:`: every run, and the rows it rejected, written to warehouse tables once, even
when the warehouse refused a write for a while."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from lockgate.cli import cli
from lockgate.errors import ConfigError, LockgateError
from lockgate.project.loader import load_project

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {email: email}
attributes:
  plan: plan
"""

ORDERS = """
name: orders
source: warehouse
model: {table: orders}
kind: events
identify_by: {email: email}
event: {name: {value: Order Placed}, id: order_id}
backfill: {older: send}
"""

DATA = """
create or replace table users as
select i as user_id,
       case when i in (3, 7) then 'not-an-email-' || i else 'u' || i || '@example.com' end as email,
       case when i % 2 = 0 then 'pro' else 'free' end as plan
from range(1, 21) t(i);
create or replace table orders as
select 'o' || i as order_id, 'u' || (1 + i % 20) || '@example.com' as email from range(30) t(i);
"""


def with_run_log(factory: ProjectFactory, run_log: str) -> Any:
    project = factory.write({"profile": PROFILE, "orders": ORDERS})
    with (project.root / "lockgate.yml").open("a") as f:
        f.write(run_log)
    return load_project(project.root)


def writing_to(factory: ProjectFactory, source: str, run_log: str) -> Any:
    """The profile sync's project with one more source declared first (``source``: its
    `name: {...}` line) and ``run_log`` appended to lockgate.yml; not loaded."""
    project = factory.write({"profile": PROFILE})
    yml = project.root / "lockgate.yml"
    text = yml.read_text().replace("sources:\n", f"sources:\n  {source}\n")
    yml.write_text(text + run_log)
    return project


def lockgate(project: Any, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--project", str(project.root)])


def warehouse(project: Any, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(project.root / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_each_run_and_its_rejected_rows_land_in_the_warehouse_once(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(DATA)
    project = with_run_log(project_factory, "run_log: {}\n")
    first = lockgate(project, "sync", "--all")
    assert first.exit_code == 0, first.output
    assert "run log: 2 run(s) written to" in first.output, first.output[-3000:]
    project_factory.sql("update users set plan = 'team' where user_id = 5")
    path = project.root / "syncs" / "profile.yml"  # 1 changed of the 1 allowed: near the limit
    path.write_text(path.read_text() + "guardrails: {max_changed: 10%, warn_at: 50%}\n")
    assert lockgate(project, "sync", "profile").exit_code == 0

    runs = warehouse(
        project,
        "select sync, kind, mode, status, model_rows, new, changed, unchanged, to_send, "
        "rejected_by_mapping, delivered, rejected_by_api, guardrails_breached, guardrails_near, "
        "error, "
        "report->>'$.run_id' = run_id, named_records_only, finished_at >= started_at "
        "from lockgate.sync_runs order by started_at, sync",
    )
    profile_runs = [r for r in runs if r[0] == "profile"]
    assert profile_runs == [
        ("profile", "people", "upsert", "success", 20, 18, 0, 0, 18, 2, 18, 0, None, None, None)
        + (True, False, True),
        ("profile", "people", "upsert", "success", 20, 0, 1, 17, 1, 2, 1, 0, None, "max_changed")
        + (None, True, False, True),
    ]
    [orders] = [r for r in runs if r[0] == "orders"]
    assert orders[1:4] == ("events", "upsert", "success") and orders[10] == 30

    rejected = warehouse(
        project,
        "select r.stage, r.record_key, r.reason, r.sync from lockgate.sync_rejected_rows r "
        "join lockgate.sync_runs s using (run_id) order by s.started_at, r.record_key",
    )
    assert [(stage, key, sync) for stage, key, _, sync in rejected] == [
        ("mapping", "3", "profile"),
        ("mapping", "7", "profile"),
    ] * 2
    assert "not an email address" in rejected[0][2]

    # writing every run again (`--all`) leaves each once
    again = lockgate(project, "runs", "export", "--all", "--json")
    assert json.loads(again.output)["runs"] == 3
    assert warehouse(project, "select count(*) from lockgate.sync_runs") == [(3,)]
    assert warehouse(project, "select count(*) from lockgate.sync_rejected_rows") == [(4,)]
    nothing = lockgate(project, "runs", "export")
    assert "nothing to write" in nothing.output


def test_a_refused_write_waits_for_the_next_run_and_a_stopped_run_is_logged(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(DATA)
    project = with_run_log(project_factory, "run_log: {dataset: ops}\n")
    # a view where the runs table goes: the warehouse refuses the write
    project_factory.sql("create schema ops; create view ops.sync_runs as select 1 as x")
    first = lockgate(project, "sync", "profile")
    assert first.exit_code == 0, first.output  # the sync itself is done and committed
    assert "run log not written to the warehouse" in first.output
    # one transaction: the rejected rows were not written without their run
    assert warehouse(
        project,
        "select count(*) from duckdb_tables() where schema_name = 'ops'",
    ) == [(0,)]

    project_factory.sql("drop view ops.sync_runs")
    # a guardrail stops the second run: it is logged with the guardrail's name
    project_factory.sql("update users set plan = 'team'")
    path = project.root / "syncs" / "profile.yml"
    path.write_text(path.read_text() + "guardrails: {max_changed: 10%}\n")
    second = lockgate(project, "sync", "profile")
    assert second.exit_code != 0
    assert "run log: 2 run(s) written" in second.output

    runs = warehouse(
        project,
        "select status, guardrails_breached, error is not null, delivered "
        "from ops.sync_runs order by started_at",
    )
    assert runs == [("success", None, False, 18), ("failed", "max_changed", True, 0)]
    # the stopped run's rejected rows are kept with it too
    assert warehouse(project, "select count(*) from ops.sync_rejected_rows") == [(4,)]


def test_records_and_a_column_added_to_an_older_table(project_factory: ProjectFactory) -> None:
    project_factory.sql(DATA)
    project = with_run_log(project_factory, "run_log: {records: true}\n")
    # a runs table from an older Lockgate, with fewer columns: the write adds the others
    project_factory.sql(
        "create schema lockgate; create table lockgate.sync_runs (run_id varchar, sync varchar)"
    )
    assert lockgate(project, "sync", "profile").exit_code == 0
    assert warehouse(project, "select sync, status, new from lockgate.sync_runs") == [
        ("profile", "success", 18)
    ]
    records = warehouse(
        project,
        "select record_key, action, outcome, api_status, identifiers->>'$.email' "
        "from lockgate.sync_records order by record_key::int",
    )
    assert len(records) == 18
    assert records[0] == ("1", "identify", "delivered", 200, "u1@example.com")
    assert {r[0] for r in records}.isdisjoint({"3", "7"})


@pytest.mark.parametrize(
    ("run_log", "message"),
    [
        ("run_log: {warehouse: nowhere}\n", "names source `nowhere`, which is not declared"),
        ("run_log: {warehouse: scratch}\n", "in-memory DuckDB"),
        ("run_log: {dataset: ops-log}\n", "not a plain SQL name"),
    ],
)
def test_a_run_log_that_cannot_be_written_is_a_config_error(
    project_factory: ProjectFactory, run_log: str, message: str
) -> None:
    project = writing_to(project_factory, "scratch: {type: duckdb, path: ':memory:'}", run_log)
    with pytest.raises(ConfigError) as caught:
        load_project(project.root)
    assert message in str(caught.value)
    assert caught.value.line is not None


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("redshift", "report_type"), [(False, "jsonb"), (True, "character varying(65535)")]
)
def test_the_run_log_lands_in_postgres_and_through_the_redshift_path(
    project_factory: ProjectFactory, postgres_dsn: str, redshift: bool, report_type: str
) -> None:
    """Postgres: staged by COPY, JSON as jsonb. `redshift: true` writes with psycopg,
    client-side literals and multi-row INSERTs into VARCHAR(65535) columns (JSON as text), the
    SQL Redshift takes; run here against the test Postgres server, as the Redshift source path
    is (not against Redshift itself)."""
    import psycopg

    project_factory.sql(DATA)
    schema = "lg_rs_runlog" if redshift else "lg_runlog"
    source = f"pg: {{type: postgres, redshift: {str(redshift).lower()}, url: '{postgres_dsn}'}}"
    project = writing_to(
        project_factory, source, f"run_log: {{warehouse: pg, dataset: {schema}, records: true}}\n"
    )
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"drop schema if exists {schema} cascade")
    project = load_project(project.root)
    assert lockgate(project, "sync", "profile").exit_code == 0
    assert lockgate(project, "runs", "export", "--all").exit_code == 0
    with psycopg.connect(postgres_dsn) as conn:
        runs = conn.execute(
            "select status, new, rejected_by_mapping, report::json->>'sync', "
            f"format_type(a.atttypid, a.atttypmod) from {schema}.sync_runs, pg_attribute a "
            f"where a.attrelid = '{schema}.sync_runs'::regclass and a.attname = 'report'"
        ).fetchall()
        rejected = conn.execute(
            f"select stage, record_key from {schema}.sync_rejected_rows order by record_key"
        ).fetchall()
        records = conn.execute(
            "select count(*), count(*) filter (where identifiers::json->>'email' = "
            f"'u1@example.com') from {schema}.sync_records"
        ).fetchall()
    assert runs == [("success", 18, 2, "profile", report_type)]
    assert rejected == [("mapping", "3"), ("mapping", "7")]
    assert records == [(18, 1)]
    assert_a_lost_state_is_found(project)


def assert_a_lost_state_is_found(project: Any) -> None:
    """The state moved away: the profile sync's plan finds its committed run in the run log
    (the guardrail `state missing?` reads the warehouse's own spelling of the names)."""
    (project.root / ".lockgate").rename(project.root / "state-moved")
    planned = json.loads(lockgate(project, "plan", "profile", "--json").output)
    (guardrail,) = [g for g in planned["guardrails"] if g["name"] == "state missing?"]
    assert guardrail["breached"], guardrail
    assert guardrail["actual"].startswith("1 committed run in the run log"), guardrail
    # and a state behind it: the times the warehouse gives back compare with the state's
    shutil.rmtree(project.root / ".lockgate", ignore_errors=True)  # what the plan made
    (project.root / "state-moved").rename(project.root / ".lockgate")
    shutil.copytree(project.root / ".lockgate", project.root / "older")
    assert lockgate(project, "sync", "profile").exit_code == 0  # logged as it ends
    shutil.rmtree(project.root / ".lockgate")
    (project.root / "older").rename(project.root / ".lockgate")
    behind = guardrail_of(project, "profile")
    assert behind["breached"], behind
    assert behind["actual"].startswith("the run log's last committed run is later"), behind


def test_the_run_log_lands_in_snowflake(project_factory: ProjectFactory) -> None:
    """fakesnow behind the official connector: staged, moved in one transaction, VARIANT
    report, upper-case names that `lockgate.sync_runs` reads unquoted."""
    import fakesnow
    import snowflake.connector

    project_factory.sql(DATA)
    sf = "sf: {type: snowflake, account: lg, user: t, database: LG}"
    project = writing_to(project_factory, sf, "run_log: {warehouse: sf, records: true}\n")
    project = load_project(project.root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fakesnow's own DuckDB warnings, not Lockgate's
        with fakesnow.patch():
            result = lockgate(project, "sync", "profile")
            assert "run log: 1 run(s) written to source `sf`" in result.output, result.output
            assert lockgate(project, "runs", "export", "--all").exit_code == 0
            conn = snowflake.connector.connect(account="lg", user="t", database="LG")
            cursor = conn.cursor()
            cursor.execute(
                "select status, new, rejected_by_mapping, report:sync::varchar "
                "from lockgate.sync_runs"
            )
            runs = cursor.fetchall()
            cursor.execute(
                "select stage, record_key from lockgate.sync_rejected_rows order by record_key"
            )
            rejected = cursor.fetchall()
            cursor.execute(
                "select count(*), count_if(identifiers:email::varchar = 'u1@example.com') "
                "from lockgate.sync_records"
            )
            records = cursor.fetchall()
            conn.close()
            assert_a_lost_state_is_found(project)
    assert runs == [("success", 18, 2, "profile")]
    assert rejected == [("mapping", "3"), ("mapping", "7")]
    assert records == [(18, 1)]


def test_export_without_a_run_log_says_how_to_add_one(project_factory: ProjectFactory) -> None:
    project = project_factory.write({"profile": PROFILE})
    result = lockgate(project, "runs", "export")
    assert isinstance(result.exception, LockgateError)
    assert "no `run_log:` in lockgate.yml" in str(result.exception)
    assert "run_log: {}" in (result.exception.hint or "")


def assert_each_sync_stops(project: Any, saying: str) -> None:
    """Each sync of the project stops before sending, the guardrail `state missing?` saying
    ``saying`` and how to go on on purpose."""
    for name in ("profile", "orders"):
        stopped = lockgate(project, "sync", name)
        said = " ".join(str(stopped.exception).split())
        assert stopped.exit_code != 0 and saying in said, said
        assert f"`lockgate sync {name} --force` once" in said


def assert_the_state_back_sends_nothing(project: Any, kept: Path, emu: Any, sent: int) -> None:
    """The state folder ``kept`` put back where the project keeps its state: every sync runs,
    and the emulator has had no request beyond the ``sent`` before."""
    shutil.rmtree(project.root / ".lockgate")
    kept.rename(project.root / ".lockgate")
    again = json.loads(lockgate(project, "sync", "--all", "--json").output)
    assert [r["status"] for r in again] == ["success", "success"]
    assert len(emu.request_log()) == sent


def test_a_first_run_whose_committed_runs_the_run_log_holds_stops_until_the_state_is_back(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state folder lost (a container whose `.lockgate` was not kept): the run log still
    holds the sync's committed runs, so its next run, a first run to the state, stops before
    sending anything again; with the state back it goes on, sending nothing; `--force` runs
    it as a first run on purpose."""
    emu = project_factory.emulator
    project_factory.sql(DATA)
    project = with_run_log(project_factory, "run_log: {}\n")
    assert lockgate(project, "sync", "--all").exit_code == 0
    sent = len(emu.request_log())
    state = project.root / ".lockgate"
    state.rename(project.root / "kept-elsewhere")

    planned = json.loads(lockgate(project, "plan", "profile", "--json").output)
    (guardrail,) = [g for g in planned["guardrails"] if g["name"] == "state missing?"]
    assert guardrail["breached"] and guardrail["actual"].startswith(
        "1 committed run in the run log"
    )
    # a new state for another workspace (another site id) is no lost state: its runs are
    # not the ones logged
    with monkeypatch.context() as other:
        other.setenv("CUSTOMERIO_SITE_ID", "another-workspace")
        elsewhere = json.loads(lockgate(project, "plan", "profile", "--json").output)
    (guardrail,) = [g for g in elsewhere["guardrails"] if g["name"] == "state missing?"]
    assert not guardrail["breached"], guardrail
    assert_each_sync_stops(project, "has not seen the last of them")
    assert len(emu.request_log()) == sent  # nothing sent again

    # the state back where it was: the runs go on, nothing is sent again
    assert_the_state_back_sends_nothing(project, project.root / "kept-elsewhere", emu, sent)

    # started over on purpose: forced once, a first run, then runs as any other
    shutil.rmtree(state)
    forced = json.loads(lockgate(project, "sync", "profile", "--force", "--json").output)
    assert forced[0]["status"] == "success" and forced[0]["delivered"] == 18
    assert lockgate(project, "sync", "profile").exit_code == 0


def guardrail_of(project: Any, sync: str) -> dict[str, Any]:
    planned = json.loads(lockgate(project, "plan", sync, "--json").output)
    (guardrail,) = [g for g in planned["guardrails"] if g["name"] == "state missing?"]
    return dict(guardrail)


def test_a_state_restored_from_an_older_backup_stops_until_the_newest_is_back(
    project_factory: ProjectFactory,
) -> None:
    """A copy of the state taken after the first run, restored after a second run sent
    changes: the state is behind the run log (its snapshot and event ledger lack what the
    second run delivered), so the next run stops before sending anything again; with the
    newest state back the runs go on sending nothing; `--force` goes on from the older state
    once, and the runs after it go on as any other."""
    emu = project_factory.emulator
    project_factory.sql(DATA)
    project = with_run_log(project_factory, "run_log: {}\n")
    assert lockgate(project, "sync", "--all").exit_code == 0
    assert guardrail_of(project, "profile")["actual"] == "in this state"
    state = project.root / ".lockgate"
    shutil.copytree(state, project.root / "backup")
    project_factory.sql(
        "update users set plan = 'team' where user_id in (4, 5); "
        "insert into orders values ('o99', 'u1@example.com')"
    )
    assert lockgate(project, "sync", "--all").exit_code == 0
    sent = len(emu.request_log())
    state.rename(project.root / "newest")
    shutil.copytree(project.root / "backup", state)

    guardrail = guardrail_of(project, "profile")
    assert guardrail["breached"], guardrail
    assert guardrail["actual"].startswith("the run log's last committed run is later")
    assert_each_sync_stops(project, "the state is behind the runs")
    assert len(emu.request_log()) == sent  # nothing sent again

    # the newest state back: nothing is sent again
    assert_the_state_back_sends_nothing(project, project.root / "newest", emu, sent)

    # gone on from the older state on purpose: the two changed users are sent again once
    shutil.rmtree(state)
    shutil.copytree(project.root / "backup", state)
    forced = json.loads(lockgate(project, "sync", "profile", "--force", "--json").output)
    assert forced[0]["status"] == "success" and forced[0]["delivered"] == 2
    after = lockgate(project, "sync", "profile", "--json")
    assert after.exit_code == 0 and json.loads(after.stdout)[0]["delivered"] == 0


def test_a_run_forced_after_a_lost_state_whose_log_write_failed_is_not_stopped_again(
    project_factory: ProjectFactory,
) -> None:
    """The state lost and a run forced from scratch, whose write of the log the warehouse
    refused: the log's last run is not in the new state, but the state's own last run is the
    later one, so the runs after go on (the state is not behind)."""
    project_factory.sql(DATA)
    project = with_run_log(project_factory, "run_log: {}\n")
    assert lockgate(project, "sync", "profile").exit_code == 0
    shutil.rmtree(project.root / ".lockgate")
    # a view where the rejected rows go: the next write of the log is refused whole
    project_factory.sql(
        "drop table lockgate.sync_rejected_rows; "
        "create view lockgate.sync_rejected_rows as select 1 as x"
    )
    forced = lockgate(project, "sync", "profile", "--force")
    assert forced.exit_code == 0 and "run log not written to the warehouse" in forced.output
    assert warehouse(project, "select count(*) from lockgate.sync_runs") == [(1,)]

    guardrail = guardrail_of(project, "profile")
    assert not guardrail["breached"] and guardrail["actual"] == "this state's last run is later"
    project_factory.sql("update users set plan = 'team' where user_id = 4")
    ran = lockgate(project, "sync", "profile", "--json")
    assert ran.exit_code == 0 and json.loads(ran.stdout)[0]["delivered"] == 1


def test_a_run_log_that_cannot_be_read_is_said_and_stops_nothing(
    project_factory: ProjectFactory,
) -> None:
    """The run log's own warehouse damaged: the first run's check says it could not look, and
    the run goes on (the log is a record, not a gate)."""
    project_factory.sql(DATA)
    project = writing_to(
        project_factory,
        "logs: {type: duckdb, path: logs.duckdb}",
        "run_log: {warehouse: logs}\n",
    )
    (project.root / "logs.duckdb").write_bytes(b"not a database " * 1000)
    project = load_project(project.root)
    planned = json.loads(lockgate(project, "plan", "profile", "--json").output)
    (guardrail,) = [g for g in planned["guardrails"] if g["name"] == "state missing?"]
    assert not guardrail["breached"] and guardrail["actual"].startswith("not checked:")
    ran = lockgate(project, "sync", "profile", "--json")
    assert json.loads(ran.stdout)[0]["status"] == "success"
    assert json.loads(ran.stdout)[0]["delivered"] == 18
    assert "run log not written to the warehouse" in ran.stderr  # and said so
