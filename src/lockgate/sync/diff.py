"""Diff: compare the mapped model with the last committed snapshot, inside DuckDB.

People: a row is *new* when its key is not in the snapshot, *changed* when the hash of its
payload differs, *unchanged* otherwise; snapshot keys missing from the model are *removed*
(acted on only in `mirror` mode). Events: an event is *new* unless its key is in the
ledger (already delivered) or appears earlier in the same model (duplicate), and old
events are *backfill*.

The result is a frozen :class:`ChangeSet` whose counts are derived from the tables, and
the temp table ``changes`` holding exactly the operations to send, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from lockgate.project.models import SyncConfig
from lockgate.state.store import run_sql, table
from lockgate.sync.mapping import Compiled, json_key, lit


@dataclass(frozen=True)
class ChangeSet:
    """What a run would send, counted. ``to_send`` rows are in the temp table ``changes``."""

    kind: str
    rows: int
    rejected: int
    to_send: int
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    removed_sent: int = 0
    duplicates_in_model: int = 0
    already_delivered: int = 0
    backfill_skipped: int = 0
    backfill_sent: int = 0
    attributes_set: int = 0
    attributes_cleared: int = 0
    rejected_samples: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "rejected_samples"}


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    rows = con.execute(sql).fetchall()
    return rows[0][0] if rows else None


def _rejected(con: duckdb.DuckDBPyConnection) -> tuple[int, tuple[tuple[str, str], ...]]:
    count = int(_one(con, "select count(*) from mapped where reject is not null") or 0)
    samples = con.execute(
        "select k, reject from mapped where reject is not null order by k limit 20"
    ).fetchall()
    return count, tuple((str(k), str(r)) for k, r in samples)


def diff_people(con: duckdb.DuckDBPyConnection, sync: SyncConfig, compiled: Compiled) -> ChangeSet:
    snap = table("snap", sync.name)
    run_sql(
        con,
        f"create or replace temp table mapped as select *, hash(op) as h from ({compiled.select})",
    )
    # a key that appears more than once is ambiguous: every copy is rejected
    run_sql(
        con,
        """
        update mapped set reject = coalesce(reject, 'primary key `' || d.k || '` appears '
                                            || d.n || ' times in the model')
        from (select k, count(*) as n from mapped group by k having count(*) > 1) d
        where mapped.k = d.k
        """,
    )
    run_sql(
        con,
        f"""
        create or replace temp table changes as
        select m.k, m.op, m.h, m.ident, s.k is null as is_new, false as removed,
               m.n_set, m.n_cleared
        from mapped m left join {snap} s on s.k = m.k
        where m.reject is null and (s.k is null or s.h <> m.h)
        """,
    )
    removed = int(_one(con, f"select count(*) from {snap} s anti join mapped m on m.k = s.k") or 0)
    removed_sent = 0
    if sync.mode == "mirror" and removed:
        removed_sent = removed
        if sync.delete_removed:
            body = '\'"action":"delete","identifiers":\' || identifiers || \'}\''
        else:
            blanks = ",".join(json_key(name).strip("'") + '""' for name in sync.attributes)
            body = (
                '\'"action":"identify","identifiers":\' || identifiers || '
                f'\',"attributes":{{"_update":true{"," + blanks if blanks else ""}}}}}\''
            )
        run_sql(
            con,
            f"""
            insert into changes
            select k, '{{"type":"person",' || {body} as op, null as h, ident,
                   false as is_new, true as removed, 0 as n_set,
                   {0 if sync.delete_removed else len(sync.attributes)} as n_cleared
            from (
                select s.k, s.ident, case
                    when json_extract_string(s.ident, '$.id') is not null
                        then '{{"id":' || to_json(json_extract_string(s.ident, '$.id')) || '}}'
                    when json_extract_string(s.ident, '$.cio_id') is not null
                        then '{{"cio_id":'
                             || to_json(json_extract_string(s.ident, '$.cio_id')) || '}}'
                    else '{{"email":' || to_json(json_extract_string(s.ident, '$.email')) || '}}'
                    end as identifiers
                from {snap} s anti join mapped m on m.k = s.k
            )
            """,
        )
    rejected, samples = _rejected(con)
    row = con.execute(
        """
        select count(*) filter (where not removed), count(*) filter (where is_new),
               coalesce(sum(n_set), 0), coalesce(sum(n_cleared), 0)
        from changes
        """
    ).fetchall()[0]
    sent_rows, new, attrs, cleared = (int(x or 0) for x in row)
    valid = int(_one(con, "select count(*) from mapped where reject is null") or 0)
    total = int(_one(con, "select count(*) from mapped") or 0)
    return ChangeSet(
        kind="people",
        rows=total,
        rejected=rejected,
        to_send=sent_rows + removed_sent,
        new=new,
        changed=sent_rows - new,
        unchanged=valid - sent_rows,
        removed=removed,
        removed_sent=removed_sent,
        attributes_set=attrs,
        attributes_cleared=cleared,
        rejected_samples=samples,
    )


def diff_events(con: duckdb.DuckDBPyConnection, sync: SyncConfig, compiled: Compiled) -> ChangeSet:
    ledger = table("ledger", sync.name)
    skip_backfill = sync.backfill.older == "skip"
    run_sql(
        con,
        f"""
        create or replace temp table mapped as
        select *, row_number() over (partition by k order by ts, op) as rn
        from ({compiled.select})
        """,
    )
    run_sql(
        con,
        f"""
        create or replace temp table changes as
        select m.k, m.op, null::ubigint as h, m.ident, true as is_new, false as removed,
               m.ts, m.backfill, md5_number_lower(m.k) as lo, md5_number_upper(m.k) as hi
        from mapped m anti join {ledger} l on l.k = m.k
        where m.reject is null and m.rn = 1 {"and not m.backfill" if skip_backfill else ""}
        order by m.ts, m.k
        """,
    )
    rejected, samples = _rejected(con)
    row = con.execute(
        f"""
        select count(*),
               count(*) filter (where reject is null and rn > 1),
               count(*) filter (where reject is null and rn = 1
                                and k in (select k from {ledger})),
               count(*) filter (where reject is null and rn = 1 and backfill
                                and k not in (select k from {ledger}))
        from mapped
        """
    ).fetchall()[0]
    total, dups, delivered, backfill = (int(x or 0) for x in row)
    to_send = int(_one(con, "select count(*) from changes") or 0)
    return ChangeSet(
        kind="events",
        rows=total,
        rejected=rejected,
        to_send=to_send,
        new=to_send,
        duplicates_in_model=dups,
        already_delivered=delivered,
        backfill_skipped=backfill if skip_backfill else 0,
        backfill_sent=0 if skip_backfill else backfill,
        rejected_samples=samples,
    )


def sample_ops(con: duckdb.DuckDBPyConnection, limit: int = 3) -> list[tuple[str, str]]:
    """The first few (key, op JSON) pairs of ``changes``; event ids filled in by the caller."""
    rows = con.execute(f"select k, op from changes limit {int(limit)}").fetchall()
    return [(str(k), str(op)) for k, op in rows]


__all__ = ["ChangeSet", "diff_events", "diff_people", "lit", "sample_ops"]
