"""The run log in the warehouse (`run_log:` in lockgate.yml).

Hightouch and Census write their sync logs into the customer's own warehouse, and data teams
expect it: the runs' outcomes and the rows they rejected are data, to query, chart and alert
on with the tools that already read the warehouse ("how many rows did `customer_profile`
reject each day this month, and why?"), and to join with the models they came from. With
`run_log:` set, every finished run is written to the warehouse after the command's syncs:

- ``sync_runs``: one row per run: ids, kind, mode, status, times, the counts (model rows, new,
  changed, unchanged, removed, to send, attributes set and cleared, events already delivered
  and backfill, delivered, rejected by the mapping and by Customer.io, dead-lettered),
  the names of the guardrails that stopped it, the error, and the whole report as JSON;
- ``sync_rejected_rows``: the rows each run rejected (stage `mapping` or `delivery`, key,
  reason), as many as the state keeps (the first 1,000 per run by key; the run's row has the
  total);
- ``sync_records`` (with ``records: true``): one row per record sent (key, identifiers, the
  call, the outcome, Customer.io's status and reason, when), what `lockgate history` reads.

**Nothing is lost and nothing is written twice.** The state remembers which runs are written
(``run_log_written``); a run is written once finished, together with every earlier run not
written yet. A run's rows replace any that run already has in the tables (written in one
transaction), so a crash between the warehouse's commit and the state's leaves it once. A
warehouse that is down or refuses the write does not fail the sync: it says so, and the next
run (or `lockgate runs export`) writes what is pending. Runs still going, and runs a crash cut
off before the next run of their sync marked them `crashed`, wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from lockgate.console import Console
from lockgate.errors import LockgateError
from lockgate.project.loader import Project, run_log_warehouse
from lockgate.sources.write import TableWrite, write_tables
from lockgate.state.store import StateStore

RUNS_PER_WRITE = 200
"""Runs written per transaction: a first export of a long history goes in steps, each kept."""

_COUNT = "try_cast(counts->>'$.{path}' as bigint) as {name}"
_CHANGE_COUNTS = (
    "new",
    "changed",
    "unchanged",
    "removed",
    "to_send",
    "attributes_set",
    "attributes_cleared",
    "duplicates_in_model",
    "already_delivered",
    "backfill_skipped",
    "backfill_sent",
)
_RUN_COUNTS = ("delivered", "rejected_by_api", "dead_lettered", "recovered_from_crash")

RUNS_SQL = f"""
select run_id, sync, kind, counts->>'$.mode' as mode, status, started_at, finished_at,
       round(epoch(finished_at) - epoch(started_at), 3) as seconds,
       coalesce(json_array_length(counts->'$.only'), 0) > 0 as named_records_only,
       try_cast(counts->>'$.changes.rows' as bigint) as model_rows,
       {", ".join(_COUNT.format(path="changes." + c, name=c) for c in _CHANGE_COUNTS)},
       try_cast(counts->>'$.changes.rejected' as bigint) as rejected_by_mapping,
       {", ".join(_COUNT.format(path=c, name=c) for c in _RUN_COUNTS)},
       try_cast(counts->>'$.identity_merges' as bigint) as identity_merges,
       nullif(array_to_string(list_transform(list_filter(
           coalesce(json_extract(counts, '$.guardrails[*]'), []::json[]),
           lambda g: (g->>'$.breached')::boolean), lambda g: g->>'$.name'), ', '), '')
           as guardrails_breached,
       nullif(array_to_string(list_transform(list_filter(
           coalesce(json_extract(counts, '$.guardrails[*]'), []::json[]),
           lambda g: coalesce((g->>'$.near')::boolean, false)), lambda g: g->>'$.name'), ', '), '')
           as guardrails_near,
       error, counts::varchar as report,
       (select w.workspace from workspaces w where w.sync = runs.sync) as workspace
from runs where run_id in (select unnest($ids::varchar[]))
order by started_at
"""

REJECTED_SQL = """
select run_id, sync,
       case stage when 'map' then 'mapping' when 'deliver' then 'delivery' else stage end as stage,
       k as record_key, reason, rejected_at
from rejected where run_id in (select unnest($ids::varchar[]))
order by run_id, stage, k
"""

#: ``{history}``: every history row (``StateStore.history_relation``: with those a killed
#: run's journal holds until its next run folds it)
RECORDS_SQL = """
select run_id, sync, k as record_key, ident as identifiers, action, outcome,
       status as api_status, reason, sent_at
from ({history}) where run_id in (select unnest($ids::varchar[]))
"""


@dataclass(frozen=True)
class Written:
    """What one :func:`write_run_log` wrote, and where."""

    runs: int
    where: str


def pending(store: StateStore, *, everything: bool = False) -> list[str]:
    """Finished runs not yet in the warehouse (every finished run with ``everything``), oldest
    first."""
    rows = store.con.execute(
        "select run_id from runs where status <> 'running' "
        + ("" if everything else "and run_id not in (select run_id from run_log_written) ")
        + "order by started_at"
    ).fetchall()
    return [r[0] for r in rows]


def _batches(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), RUNS_PER_WRITE):
        yield ids[start : start + RUNS_PER_WRITE]


def write_run_log(project: Project, store: StateStore, *, everything: bool = False) -> Written:
    """Write the pending runs (with ``everything``, every finished run the state has) to the
    warehouse; returns how many and where. Raises LockgateError when the warehouse cannot be
    written; what was written before stays marked written."""
    config = project.config.run_log
    if config is None:
        raise LockgateError(
            "this project has no `run_log:` in lockgate.yml",
            hint="add `run_log: {}` to write each run to the first DuckDB, Postgres, Redshift or "
            "Snowflake source "
            '(docs/sync.md, "The run log in the warehouse")',
        )
    source = run_log_warehouse(project)
    store.memo.pop("run_log", None)  # what a check read of the log is behind it from here
    con = store.con
    done = 0
    where = ""
    for ids in _batches(pending(store, everything=everything)):
        params = {"ids": ids}
        writes = [
            TableWrite(
                "sync_runs",
                con.sql(RUNS_SQL, params=params).to_arrow_table(),
                replacing=("run_id", ids),
                json=("report",),
            ),
            TableWrite(
                "sync_rejected_rows",
                con.sql(REJECTED_SQL, params=params).to_arrow_table(),
                replacing=("run_id", ids),
            ),
        ]
        if config.records:
            # read as it is written: a million-record run never sits in memory whole
            records = con.sql(
                RECORDS_SQL.format(history=store.history_relation()), params=params
            ).to_arrow_reader(100_000)
            writes.append(
                TableWrite(
                    "sync_records",
                    records,
                    replacing=("run_id", ids),
                    json=("identifiers",),
                )
            )
        where = write_tables(project, source, config.dataset, writes)
        con.execute(
            "insert or replace into run_log_written select unnest($ids::varchar[]), $at",
            {"ids": ids, "at": datetime.now(UTC)},
        ).fetchall()
        done += len(ids)
    return Written(done, where)


@dataclass(frozen=True)
class Logged:
    """The committed runs (`success`, `partial`) of one sync the warehouse's run log holds."""

    runs: int
    last_run_id: str | None
    last_finished: datetime | None


def committed_runs(project: Project, workspace: str) -> dict[str, Logged]:
    """By sync, the runs into ``workspace`` (its digest, ``state.workspace.of``) the
    warehouse's run log holds that committed, and the last of each, in one read: none before
    the log has its table, or rows of workspaces (those a run before the column was added
    wrote have none: not counted). What the guardrail `state missing?` (``sync.guard``) asks,
    once a command (:func:`committed_runs_of`). Raises LockgateError (a source's error) when
    the warehouse cannot be read."""
    from lockgate.sources import connect
    from lockgate.sources.base import quote_literal

    config = project.config.run_log
    assert config is not None
    name = run_log_warehouse(project)
    source = connect(project.config.sources[name], root=project.root, name=name)
    try:
        # unquoted names: the tables are written lower case, upper case in Snowflake (its own
        # folding), so they read the same everywhere
        logged = [
            t
            for t in source.tables()
            if t.schema.lower() == config.dataset.lower() and t.name.lower() == "sync_runs"
        ]
        if not logged or not any(
            c.name.lower() == "workspace"
            for c in source.columns(f"{logged[0].schema}.{logged[0].name}")
        ):
            return {}
        # window functions, not `qualify` or `distinct on`: every warehouse has them
        found = source.read(
            "select sync, run_id, finished_at, n from (select sync, run_id, finished_at, "
            "count(*) over (partition by sync) as n, row_number() over (partition by sync "
            f"order by finished_at desc, run_id desc) as r from {config.dataset}.sync_runs "
            f"where workspace = {quote_literal(workspace)} "
            "and status in ('success', 'partial')) t where r = 1"
        ).read_all()
    finally:
        source.close()
    return {
        str(row["sync"]): Logged(int(row["n"]), str(row["run_id"]), _utc(row["finished_at"]))
        for row in found.to_pylist()
    }


def _utc(at: datetime | None) -> datetime | None:
    """A time the log holds, in UTC (a warehouse may give it back without its zone)."""
    if at is None or at.tzinfo is not None:
        return at
    return at.replace(tzinfo=UTC)


def committed_runs_of(store: StateStore, project: Project, sync: str, workspace: str) -> Logged:
    """:func:`committed_runs` of ``sync``, read once per state handle and workspace (a
    command's syncs share the handle, ``sync.run.Session``): a `sync --all` of ten syncs asks
    the warehouse once, not ten times, and a log that cannot be read is tried once. A write of
    the log (:func:`write_run_log`) forgets what was read."""
    memo = store.memo.setdefault("run_log", {})
    read = memo.get(workspace)
    if read is None:
        try:
            read = committed_runs(project, workspace)
        except Exception as exc:  # a driver's own error too: said by each sync that asks
            read = exc
        memo[workspace] = read
    if isinstance(read, Exception):
        raise read
    logged: Logged = read.get(sync, Logged(0, None, None))
    return logged


def write_after_runs(project: Project, console: Console, store: StateStore) -> None:
    """:func:`write_run_log` at the end of a command that ran syncs: a failure is said and
    left for the next run, never the command's own outcome."""
    if project.config.run_log is None:
        return
    try:
        store.reset_connection()  # a failed run may have left a transaction open
        written = write_run_log(project, store)
    except Exception as exc:  # the runs are committed: the log waits, the command goes on
        what = str(exc) if isinstance(exc, LockgateError | duckdb.Error) else type(exc).__name__
        console.warn(
            f"run log not written to the warehouse: {what}; the next run writes it "
            "(or `lockgate runs export`)"
        )
        return
    if written.runs:
        console.info(f"run log: {written.runs} run(s) written to {written.where}")
