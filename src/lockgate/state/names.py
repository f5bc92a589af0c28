"""The syncs a project's state holds, by name: list them, carry one over to a new name, forget one.

A sync's name is its identity in the state: its snapshot, ledger, journals and write-ahead
records are the tables ``<part>__<name>``, and its runs, history, rejected rows, contract and
workspace are rows whose ``sync`` column holds the name. A sync renamed in its file alone has
none of that under the new name, so its next run is a first run: every person sent again,
and every event of the last `backfill.max_age` sent again, with only Customer.io's dedupe on
the event `id` (no window published) between them and a second copy. :func:`rename` carries
the state over, in one transaction; :func:`forget` drops the state of a sync taken out of the
project; :func:`held` lists what the state holds, so the guardrail `sync renamed?`
(``sync.guard``) can stop the first run of a sync while the state holds a committed sync of
the same kind and keys that the project no longer has.

Example::

    store = StateStore.open(project.state_dir)
    try:
        carried = rename(store, "product_events", "app_events")
    finally:
        store.close()
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from lockgate.errors import StateError
from lockgate.sources.base import quote_ident
from lockgate.state.store import StateStore, has_table, transaction


@dataclass(frozen=True)
class HeldSync:
    """One sync the state holds something of."""

    name: str
    kind: str | None
    """`people`, `events`, `objects` or `relationships`, as its last committed run recorded
    it (its latest run's otherwise); None when neither says."""
    runs: int
    last_run: datetime | None
    committed: bool
    """Whether a run of it committed (it has a contract: its keys, columns and mapping)."""
    key_columns: tuple[str, ...]
    records: int
    """Records its snapshot holds (people, objects, relationships delivered)."""
    events: int
    """Keys its ledger holds: an events sync's events delivered (or recorded as history); a
    people sync's identity operations delivered (merges, anonymous ids)."""


#: the shared tables whose rows are runs' records (one per run, record sent, row rejected):
#: kept for a name whose runs delivered nothing when another sync's state is renamed to it
RUN_RECORDS = frozenset({"runs", "history", "rejected"})


def _tables(store: StateStore) -> dict[str, dict[str, str]]:
    """Each sync's own tables: name -> {part -> table}. A part never holds `__` (`snap`,
    `people_known`), so the first `__` splits a table's name (a sync's name may hold one)."""
    rows = store.exec_sql(
        "select table_name from duckdb_tables() "
        "where database_name = current_database() and schema_name = 'main' and not temporary"
    )
    found: dict[str, dict[str, str]] = {}
    for (name,) in rows:
        part, sep, sync = str(name).partition("__")
        if sep and sync:
            found.setdefault(sync, {})[part] = str(name)
    return found


def _by_sync(store: StateStore) -> list[str]:
    """The state's shared tables that have a row per sync, run or record (`runs`, `history`,
    `contract_syncs`...): every table with a column `sync`, so one added later is carried
    over too."""
    rows = store.exec_sql(
        "select distinct table_name from duckdb_columns() where database_name = "
        "current_database() and schema_name = 'main' and column_name = 'sync'"
    )
    return sorted(str(r[0]) for r in rows if "__" not in str(r[0]))


def _count(store: StateStore, table: str | None) -> int:
    if table is None:
        return 0
    return int(store.exec_sql(f"select count(*) from {quote_ident(table)}")[0][0])


def committed(store: StateStore) -> list[str]:
    """The syncs with a committed run (a contract), by name: one question."""
    if not has_table(store.con, "contract_syncs"):
        return []
    return [str(r[0]) for r in store.exec_sql("select sync from contract_syncs")]


def held(store: StateStore) -> list[HeldSync]:
    """Every sync the state holds something of (tables, runs or a contract), by name."""
    tables = _tables(store)
    shared = set(_by_sync(store))
    runs: dict[str, tuple[int, datetime | None, str | None]] = {}
    if "runs" in shared:
        for name, n, last, kind in store.exec_sql(
            "select sync, count(*), max(started_at), arg_max(kind, started_at) from runs "
            "group by sync"
        ):
            runs[str(name)] = (int(n), last, None if kind is None else str(kind))
    contracts: dict[str, tuple[str | None, list[str]]] = {}
    if "contract_syncs" in shared:
        mappings = (
            "(select sync, mapping->>'kind' as kind from contract_mappings)"
            if "contract_mappings" in shared
            else "(select null::varchar as sync, null::varchar as kind)"
        )
        for name, kind, keys in store.exec_sql(
            f"select c.sync, m.kind, c.key_columns from contract_syncs c "
            f"left join {mappings} m using (sync)"
        ):
            contracts[str(name)] = (kind, orjson.loads(keys))
    out = []
    for name in sorted(set(tables) | set(runs) | set(contracts)):
        parts = tables.get(name, {})
        n, last, run_kind = runs.get(name, (0, None, None))
        kind, keys = contracts.get(name, (None, []))
        records, events = _count(store, parts.get("snap")), _count(store, parts.get("ledger"))
        if not (n or name in contracts or records or events):
            continue  # empty tables a plan made: nothing of it is held
        out.append(
            HeldSync(
                name=name,
                kind=kind or run_kind,
                runs=n,
                last_run=last,
                committed=name in contracts,
                key_columns=tuple(keys),
                records=records,
                events=events,
            )
        )
    return out


@dataclass(frozen=True)
class Carried:
    """What :func:`rename` carried over: ``held``, what the state held of the old name."""

    old: str
    new: str
    held: HeldSync


def rename(store: StateStore, old: str, new: str) -> Carried:
    """Carry sync ``old``'s state over to ``new``, in one transaction: its tables renamed, its
    rows in the shared tables given the new name. Refused when the state holds nothing of
    ``old``, or when ``new`` has a state of its own (a committed run, anything delivered or
    being sent): merging two would lose one's. What runs of ``new`` that delivered nothing
    left (a plan's empty tables, a run the guardrail stopped) gives way."""
    if old == new:
        raise StateError(f"`{old}` is already the sync's name", hint="name the new one")
    everything = {h.name: h for h in held(store)}
    was = everything.get(old)
    if was is None:
        raise StateError(
            f"the state holds nothing of a sync named `{old}`",
            hint="`lockgate state list` shows the syncs the state holds",
        )
    tables = _tables(store)
    shared = _by_sync(store)
    taken = everything.get(new)
    if taken is not None and (
        taken.committed
        or taken.records
        or taken.events
        or any(_count(store, t) for t in tables.get(new, {}).values())
    ):
        raise StateError(
            f"sync `{new}` already has a state of its own ({summary(taken)}): carrying "
            f"`{old}`'s over would lose one of them",
            hint=f"if `{new}`'s own runs were a mistake, `lockgate state forget {new}` first "
            f"(what it delivered stays in Customer.io), then rename `{old}` to it",
        )
    with transaction(store.con, store.path):
        # what runs of `new` that delivered nothing left (a plan, a run the guardrail `sync
        # renamed?` stopped): its empty tables and their marks go, its runs and their
        # rejected rows stay, listed with `old`'s
        for name in tables.get(new, {}).values():
            store.exec_sql(f"drop table {quote_ident(name)}")
        for name in shared:
            if name not in RUN_RECORDS:
                store.exec_sql(f"delete from {quote_ident(name)} where sync = ?", [new])
        for part, name in tables.get(old, {}).items():
            store.exec_sql(
                f"alter table {quote_ident(name)} rename to {quote_ident(f'{part}__{new}')}"
            )
        for name in shared:
            store.exec_sql(f"update {quote_ident(name)} set sync = ? where sync = ?", [new, old])
    store.forget_cached(old, new)
    store.write_runs_log()
    return Carried(old, new, was)


def forget(store: StateStore, name: str) -> HeldSync:
    """Drop everything the state holds of sync ``name`` (its tables, runs, history, rejected
    rows, contract), in one transaction; what it delivered stays in Customer.io. Returns what
    was held."""
    was = {h.name: h for h in held(store)}.get(name)
    tables = _tables(store).get(name, {})
    if was is None and not tables:
        raise StateError(
            f"the state holds nothing of a sync named `{name}`",
            hint="`lockgate state list` shows the syncs the state holds",
        )
    shared = _by_sync(store)
    with transaction(store.con, store.path):
        for table in tables.values():
            store.exec_sql(f"drop table {quote_ident(table)}")
        for table in shared:
            store.exec_sql(f"delete from {quote_ident(table)} where sync = ?", [name])
    store.forget_cached(name)
    store.write_runs_log()
    return was or HeldSync(name, None, 0, None, False, (), 0, 0)


def summary(sync: HeldSync) -> str:
    """``3 runs, 1,000 records delivered`` (what a message says the state holds of it)."""
    parts = [f"{sync.runs:,} run{'' if sync.runs == 1 else 's'}"]
    if sync.records:
        parts.append(f"{sync.records:,} record{'' if sync.records == 1 else 's'} delivered")
    if sync.events and sync.kind == "events":  # a people sync's: merges, anonymous ids
        parts.append(f"{sync.events:,} event{'' if sync.events == 1 else 's'} delivered")
    return ", ".join(parts)
