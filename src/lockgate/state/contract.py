"""The data contract as of each sync's last committed run, kept in the state database.

Guardrails compare a run with what the last *committed* run saw: the model's column types,
the identifier columns and primary key, and (events) the event names sent. The record is
written only after a run's commit step (``record``), so a run that was refused, failed or
crashed never moves the contract.

Tables (created by :func:`ensure_tables` when a run records its contract; the readers,
:func:`last` and :func:`event_names`, create nothing, so they read a state opened to read only,
and a table not there yet reads as nothing recorded):

- ``contract_syncs(sync, run_id, identify_by, key_columns, recorded_at)``: one row per sync;
  ``identify_by`` and ``key_columns`` are JSON.
- ``contract_mappings(sync, mapping_hash, mapping)``: one row per sync; ``mapping`` (what of
  the sync file shapes payloads, ``mapping.shaping``) is JSON, ``mapping_hash`` the SQL of the
  rows' hash under it (``Compiled.src_h``), so a run can tell the records it sends only
  because the mapping changed from those whose data changed. A sync file since edited without
  changing any payload keeps both (``mapping.source_hash``: the hash stays valid with the
  mapping it was made from). A table of its own, not columns of ``contract_syncs``: an older
  Lockgate inserts into that one without naming columns.
- ``contract_columns(sync, column_name, column_type)``: the model's columns at that run.
- ``contract_event_names(sync, name, first_seen)``: every event name an events sync has sent.
- ``contract_started_over(sync, started_at)``: the syncs started over (`lockgate sync
  --new-workspace`, :func:`start_over`) whose run has not committed since: their next whole
  run is a first run (``Contract.started_over``), whether the one that started over was
  stopped or not.

Example::

    with StateStore.open(project.state_dir) as store:
        last = contract.last(store.con, "customer_profile")
        if last and last.columns["signed_up_at"] != "TIMESTAMP WITH TIME ZONE": ...
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson

from lockgate.project.models import SyncConfig
from lockgate.sources.base import is_nan_flag
from lockgate.state.store import has_table, run_sql, tables_present, transaction

SCHEMA = """
create table if not exists contract_syncs (
    sync varchar primary key, run_id varchar, identify_by json, key_columns json,
    recorded_at timestamptz
);
create table if not exists contract_mappings (
    sync varchar primary key, mapping_hash varchar, mapping json
);
create table if not exists contract_columns (
    sync varchar, column_name varchar, column_type varchar
);
create table if not exists contract_event_names (
    sync varchar, name varchar, first_seen timestamptz
);
create table if not exists contract_started_over (sync varchar primary key, started_at timestamptz);
"""
#: the tables :func:`last` reads (an older state may lack the later ones)
CONTRACT_TABLES = (
    "contract_syncs",
    "contract_mappings",
    "contract_columns",
    "contract_started_over",
)
ALL_TABLES = (*CONTRACT_TABLES, "contract_event_names")


@dataclass(frozen=True)
class Contract:
    """What a sync's last committed run saw."""

    sync: str
    run_id: str
    identify_by: dict[str, str]
    key_columns: list[str]
    columns: dict[str, str]
    recorded_at: datetime
    mapping_hash: str | None = None
    mapping: dict[str, Any] | None = None
    started_over: bool = False
    """The sync was started over since (`--new-workspace`): what it delivered is forgotten,
    and its next whole run is a first run (``diff.untimed_first_run``)."""


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the contract tables when missing (idempotent; asking first is a third of the
    five `create table if not exists`, in every run after the first)."""
    if len(tables_present(con, ALL_TABLES)) < len(ALL_TABLES):
        run_sql(con, SCHEMA)


def record(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    run_id: str,
    *,
    mapping_hash: str | None = None,
    mapping: dict[str, Any] | None = None,
    previous: Contract | None = None,
) -> None:
    """Record the contract of a run that has just committed.

    Reads the column types of the staged model (temp table ``model``) and, for an events
    sync, the event names of the rows that could be sent (temp tables ``changes`` and
    ``unsent_event_names``, see :func:`lockgate.sync.diff.diff_events`) on ``con``.

    ``previous``: the contract the run read (:func:`last`) when nothing has written it since;
    the parts of it the run leaves as they were are not written again (a run after the first
    mostly moves the run id on: one statement instead of seven). None writes every part.
    """
    ensure_tables(con)
    # the model's own columns: not the NaN flags a source added beside them
    columns = [c for c in con.execute("describe model").fetchall() if not is_nan_flag(str(c[0]))]
    identify_by = orjson.dumps(dict(sync.identify_by)).decode()
    key_columns = orjson.dumps(sync.key_columns).decode()
    mapping_json = None if mapping is None else orjson.dumps(mapping).decode()
    kept = previous if previous is not None and not previous.started_over else None
    same_keys = (
        kept is not None
        and orjson.dumps(kept.identify_by).decode() == identify_by
        and orjson.dumps(kept.key_columns).decode() == key_columns
    )
    same_mapping = (
        kept is not None
        and kept.mapping_hash == mapping_hash
        and (None if kept.mapping is None else orjson.dumps(kept.mapping).decode()) == mapping_json
    )
    same_columns = kept is not None and kept.columns == {str(n): str(t) for n, t, *_ in columns}
    with transaction(con):
        if same_keys:
            run_sql(
                con,
                "update contract_syncs set run_id = ?, recorded_at = ? where sync = ?",
                [run_id, datetime.now(UTC), sync.name],
            )
        else:
            run_sql(con, "delete from contract_syncs where sync = ?", [sync.name])
            run_sql(con, "delete from contract_started_over where sync = ?", [sync.name])
            run_sql(
                con,
                "insert into contract_syncs values (?, ?, ?, ?, ?)",
                [sync.name, run_id, identify_by, key_columns, datetime.now(UTC)],
            )
        if not same_mapping:
            run_sql(con, "delete from contract_mappings where sync = ?", [sync.name])
            run_sql(
                con,
                "insert into contract_mappings values (?, ?, ?)",
                [sync.name, mapping_hash, mapping_json],
            )
        if not same_columns:
            run_sql(con, "delete from contract_columns where sync = ?", [sync.name])
            if columns:  # one statement (`executemany` ran one per column)
                run_sql(
                    con,
                    "insert into contract_columns "
                    "select ?, unnest(?::varchar[]), unnest(?::varchar[])",
                    [sync.name, [str(c[0]) for c in columns], [str(c[1]) for c in columns]],
                )
        if sync.kind == "events":
            run_sql(
                con,
                """
                insert into contract_event_names
                select distinct ?, n, ? from (
                    select json_extract_string('{' || op, '$.name') as n from changes
                    union all
                    select n from unsent_event_names
                ) where n is not null
                  and n not in (select name from contract_event_names where sync = ?)
                """,
                [sync.name, datetime.now(UTC), sync.name],
            )


def last(con: duckdb.DuckDBPyConnection, sync: str) -> Contract | None:
    """The contract of the sync's last committed run, or ``None`` before the first one."""
    # asked up to three times a run: which tables there are in one question, then the
    # sync's row with its mapping and started-over mark in one, its columns in another
    present = tables_present(con, CONTRACT_TABLES)
    if "contract_syncs" not in present:
        return None
    mappings = (
        "(select sync, mapping_hash, mapping from contract_mappings)"
        if "contract_mappings" in present
        else "(select null::varchar as sync, null::varchar as mapping_hash, null::json as mapping)"
    )
    started_over = (
        "exists (select 1 from contract_started_over s where s.sync = c.sync)"
        if "contract_started_over" in present
        else "false"
    )
    rows = con.execute(
        "select run_id, identify_by, key_columns, recorded_at, m.mapping_hash, m.mapping, "
        f"{started_over} from contract_syncs c left join {mappings} m using (sync) "
        "where sync = ?",
        [sync],
    ).fetchall()
    if not rows:
        return None
    run_id, identify_by, key_columns, recorded_at, mapping_hash, mapping, over = rows[0]
    columns = (
        con.execute(
            "select column_name, column_type from contract_columns where sync = ?", [sync]
        ).fetchall()
        if "contract_columns" in present
        else []
    )
    return Contract(
        sync=sync,
        run_id=str(run_id),
        identify_by=orjson.loads(identify_by),
        key_columns=orjson.loads(key_columns),
        columns={str(n): str(t) for n, t in columns},
        recorded_at=recorded_at,
        mapping_hash=mapping_hash,
        mapping=None if mapping is None else orjson.loads(mapping),
        started_over=bool(over),
    )


def start_over(con: duckdb.DuckDBPyConnection, sync: str) -> None:
    """Record that ``sync`` starts over (in the transaction of ``workspace.start_over``, its
    tables made by :func:`ensure_tables` before it): its next whole run is a first run, until
    one commits (:func:`record`). A run stopped after starting over (a guardrail) leaves it."""
    run_sql(
        con,
        "insert into contract_started_over values (?, ?) "
        "on conflict do update set started_at = excluded.started_at",
        [sync, datetime.now(UTC)],
    )


def event_names(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Every event name sent so far, per sync."""
    out: dict[str, list[str]] = {}
    if not has_table(con, "contract_event_names"):
        return out
    for sync, name in con.execute(
        "select sync, name from contract_event_names order by sync, name"
    ).fetchall():
        out.setdefault(str(sync), []).append(str(name))
    return out
