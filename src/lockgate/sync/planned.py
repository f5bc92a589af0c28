"""What the earlier plans of one command would change in the state, for its later plans.

`lockgate sync --all` runs its syncs one after the other, each committing before the next
starts: a relationships sync sees the people an earlier people sync of the command created,
deleted or cleared, and the relationships a deleting sync forgot with them; an identity sync
finds the merges an earlier one sent. A plan commits nothing, so `lockgate plan --all` keeps
here what each plan's run would leave behind, and the later plans of the command read the
state through it (:func:`shadow`): they count what the sync then sends.

Nothing is written to the state. What a plan's run would commit is kept on the command's
connection, in temp tables that outlive the plan (``StateStore.reset_connection`` keeps them):

- ``plan_delta__S``: the run's ``changes`` (kept, not copied): the records it sends, and
  those a `mirror` run undoes (``removed``), which leave the snapshot;
- ``plan_drop__S(k)``: records that leave the snapshot of S without being sent: what a
  `--full-resync --only` run forgets first, the relationships a relationships run forgets
  (``diff.forget_gone_relationships``), and those an earlier people or objects sync of the
  command deletes the person or object of (``diff.forget_relationships_of``);
- ``plan_ledger__S(k)``: the identity operations the run sends (a merge is sent once, by the
  first sync of the command that needs the identity graph);
- ``plan_kept__S(k)``: the people of ``emails_kept__S`` an earlier people sync of the command
  deletes (``diff.forget_people_of``), or releases the kept email from
  (``diff.forget_released_elsewhere``): their emails are not released later.
- ``plan_strip__S(k)``: the records of the snapshot of S that give a person the email an
  earlier people sync of the command releases from them (``diff.forget_released_elsewhere``):
  they give it no more (their ``ident`` without `email`), until S's run sends them again.
- ``plan_keep__S(k, email, ident)``: the people whose email the run of S would leave them
  with in Customer.io though their row lets go of it (``diff.keep_emails``): a later people
  sync taking that email waits for them.
- ``plan_unknown__S(id, cio_id, email)``: the people of ``people_known__S`` an earlier people
  sync of the command deletes (``diff.forget_known_people``): no longer known to exist.
- ``plan_unmark__S(k)``: the records of ``unconfirmed__S`` whose people (objects) an earlier
  people (objects) sync of the command deletes (``diff.forget_people_of``,
  ``diff.forget_relationships_of``): neither sent again nor undone.
- ``plan_rejected__S(k)``: for a sync planned with `--full-resync`, the rows its run rejects:
  the records delivered before of those stay in the snapshot it forgets
  (``run._reset_snapshot``).
- ``plan_skipped__S(k)``: for an objects sync planned with `--full-resync`, those records:
  its run marks them not sent again (``diff.RESYNC_SKIPPED`` in ``unconfirmed__S``), and the
  relationships syncs hold the relationships of their objects.

A later plan then reads temp views of the same names as the state's tables (``snap__S``,
``unconfirmed__S``, ``ledger__S``, ``emails_kept__S``, ``people_known__S``) in front of them,
and its own snapshot, when an earlier sync changes it, as a temp table (and the whole of it,
which a plan of named records or a full resync cuts down, as the temp view ``plan_snap__S``,
``diff._delivered``).

A plan a guardrail stops is not counted: its run would send nothing (without `--force`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from lockgate.project.loader import Project
from lockgate.project.models import SyncConfig
from lockgate.state.store import PERSON_ADDRESS, StateStore, registered, run_sql, table
from lockgate.sync import diff as diff_step
from lockgate.sync.mapping import lit


def _name(kind: str, sync: str) -> str:
    return f"{kind}__{sync}"


@dataclass
class Planned:
    """The syncs planned so far in a command, and what their runs would leave behind."""

    delta: set[str] = field(default_factory=set)
    """Syncs with a ``plan_delta__S``."""
    drop: set[str] = field(default_factory=set)
    """Syncs with a ``plan_drop__S``."""
    reset: set[str] = field(default_factory=set)
    """Syncs planned with `--full-resync` (not `--only`): their run forgets the snapshot first."""
    ledger: set[str] = field(default_factory=set)
    """Syncs with a ``plan_ledger__S``."""
    unmark: set[str] = field(default_factory=set)
    """Syncs with a ``plan_unmark__S``."""
    skipped: set[str] = field(default_factory=set)
    """Objects syncs with a ``plan_skipped__S``."""
    keep: set[str] = field(default_factory=set)
    """People syncs with a ``plan_keep__S``: the people their run adds to ``emails_kept__S``."""
    kept: set[str] = field(default_factory=set)
    """People syncs with a ``plan_kept__S``: the people of their ``emails_kept__S`` that an
    earlier sync of the command deletes (``diff.kept_emails_of``) or releases the email of
    (``diff.released_kept_of``)."""
    unknown: set[str] = field(default_factory=set)
    """People syncs with a ``plan_unknown__S``: the people of their ``people_known__S`` that an
    earlier sync of the command deletes (``diff.known_people_of``)."""
    strip: set[str] = field(default_factory=set)
    """People syncs with a ``plan_strip__S``: the records of their snapshots an earlier sync
    of the command releases the email of (``diff.released_records_of``)."""
    deleting: list[str] = field(default_factory=list)
    """People and objects syncs whose runs delete records, the relationships of which are not
    yet in the ``plan_drop__R`` of the relationships syncs (worked out only for a plan that
    reads them: a relationships sync's, an `on_change` objects sync's)."""

    def tables(self) -> set[str]:
        """The temp tables to keep between the plans of the command."""
        return (
            {_name("plan_delta", s) for s in self.delta}
            | {_name("plan_drop", s) for s in self.drop}
            | {_name("plan_ledger", s) for s in self.ledger}
            | {_name("plan_kept", s) for s in self.kept}
            | {_name("plan_keep", s) for s in self.keep}
            | {_name("plan_strip", s) for s in self.strip}
            | {_name("plan_unknown", s) for s in self.unknown}
            | {_name("plan_unmark", s) for s in self.unmark}
            | {_name("plan_rejected", s) for s in self.reset}
            | {_name("plan_skipped", s) for s in self.skipped}
        )


def _dropping(con: duckdb.DuckDBPyConnection, planned: Planned, sync: str, select: str) -> None:
    """Add the keys ``select`` gives to ``plan_drop__<sync>``."""
    drop = table("plan_drop", sync)
    if sync not in planned.drop:
        run_sql(con, f"create or replace temp table {drop} (k varchar)")
        planned.drop.add(sync)
    run_sql(con, f"insert into {drop} {select}")


def _keeping_no_more(
    con: duckdb.DuckDBPyConnection, planned: Planned, sync: str, select: str
) -> None:
    """Add the keys ``select`` gives to ``plan_kept__<sync>``."""
    kept = table("plan_kept", sync)
    if sync not in planned.kept:
        run_sql(con, f"create or replace temp table {kept} (k varchar)")
        planned.kept.add(sync)
    run_sql(con, f"insert into {kept} {select}")


def _unmarking(con: duckdb.DuckDBPyConnection, planned: Planned, sync: str, select: str) -> None:
    """Add the keys ``select`` gives to ``plan_unmark__<sync>``."""
    marks = table("plan_unmark", sync)
    if sync not in planned.unmark:
        run_sql(con, f"create or replace temp table {marks} (k varchar)")
        planned.unmark.add(sync)
    run_sql(con, f"insert into {marks} {select}")


def _forgetting(
    con: duckdb.DuckDBPyConnection, planned: Planned, sync: str, delivered: str, unconfirmed: str
) -> None:
    """:func:`_dropping` the keys ``delivered`` selects and :func:`_unmarking` those
    ``unconfirmed`` selects, of ``sync``: what another sync's deletes make it forget."""
    _dropping(con, planned, sync, delivered)
    _unmarking(con, planned, sync, unconfirmed)


def record(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    planned: Planned,
    *,
    full_resync: bool,
    only: bool,
    identity_ops: pa.Table | None,
    email_syncs: Sequence[str] = (),
) -> None:
    """After the plan of ``sync`` (its temp tables still there): keep what its run would
    change in the state for the later plans of the command. ``email_syncs``: for a people
    sync, the other people syncs whose records its email releases leave
    (``run._email_syncs_beside``)."""
    con = store.con
    if identity_ops is not None and identity_ops.num_rows:
        with registered(con, "_planned_ops", identity_ops.select(["k"])):
            run_sql(
                con,
                f"create or replace temp table {table('plan_ledger', sync.name)} as "
                "select k from _planned_ops",
            )
        planned.ledger.add(sync.name)
    if sync.kind == "events":
        return
    delta = table("plan_delta", sync.name)
    if sync.name in planned.strip:  # the records it sends again give what they give now
        strip = table("plan_strip", sync.name)
        run_sql(con, f"delete from {strip} where k in (select k from changes)")
        if diff_step.temp_table(con, diff_step.NULLS_ONLY):
            run_sql(con, f"delete from {strip} where k in (select k from {diff_step.NULLS_ONLY})")
    if sync.name in planned.delta:  # a follow-up plan: its changes after the first plan's
        run_sql(
            con,
            f"delete from {delta} where k in (select k from changes); "
            f"insert into {delta} by name select * from changes",
        )
    else:
        run_sql(con, f"drop table if exists {delta}; alter table changes rename to {delta}")
    if diff_step.temp_table(con, diff_step.NULLS_ONLY):  # not sent, but committed
        run_sql(con, f"insert into {delta} select * from {diff_step.NULLS_ONLY}")
    planned.delta.add(sync.name)
    if diff_step.temp_table(con, "email_kept"):  # what ``diff.keep_emails`` would record
        run_sql(
            con,
            f"create or replace temp table {table('plan_keep', sync.name)} as "
            "select k, email, ident from email_kept",
        )
        planned.keep.add(sync.name)
        if sync.name in planned.kept:  # kept again by this run, after the earlier syncs
            run_sql(
                con,
                f"delete from {table('plan_kept', sync.name)} "
                "where k in (select k from email_kept)",
            )
    if sync.kind == "people":
        _forget_released(store, sync, planned, email_syncs)
    # a full resync forgets the snapshot, but for the records of the rows it rejects (not
    # sent, Customer.io keeps what it was sent before, ``run._reset_snapshot``); of an objects
    # sync, it marks them not sent again
    if full_resync and sync.kind == "objects":
        planned.skipped.add(sync.name)
        run_sql(
            con,
            f"create or replace temp table {table('plan_skipped', sync.name)} as "
            f"select distinct k from {diff_step.RESYNC_PREVIOUS} "
            "where k in (select k from rejected_rows)",
        )
    if full_resync and not only:
        planned.reset.add(sync.name)
        run_sql(
            con,
            f"create or replace temp table {table('plan_rejected', sync.name)} as "
            "select k from rejected_rows",
        )
    elif full_resync:
        _dropping(
            con,
            planned,
            sync.name,
            f"select k from {diff_step.RESYNC_PREVIOUS} "
            "where k not in (select k from rejected_rows)",
        )
    if sync.kind == "relationships":
        for gone in ("held_by_siblings", "ends_gone"):
            if gone == "ends_gone" and full_resync:
                continue
            if diff_step.temp_table(con, gone):
                _dropping(con, planned, sync.name, f"select k from {gone}")
    if sync.kind in ("people", "objects") and sync.delete_removed:
        planned.deleting.append(sync.name)
    if sync.kind in ("people", "objects") and sync.delete_removed:
        # the people (objects) it deletes leave the snapshots of the other people (objects)
        # syncs sending them, as in the run (``diff.forget_people_of``): a later plan of
        # those sends them again
        deleted = f"(select ident from {delta} where removed)"
        gone = con.execute(f"select count(*) from {deleted}").fetchall()[0][0]
        if gone and sync.kind == "people":  # no longer known to exist (``forget_known_people``)
            _unknowing(store, project, sync, planned, deleted)
        for other in people_syncs(project, sync) if gone else []:
            store.ensure_sync_tables(other.name)
            # their delivered and their unconfirmed records (``forget_people_of``)
            _forgetting(
                con,
                planned,
                other.name,
                diff_step.delivered_records_of(sync.kind, other.name, deleted),
                diff_step.unconfirmed_records_of(sync.kind, other.name, deleted),
            )
            if sync.kind == "people":  # and the emails they kept (``forget_people_of``)
                _keeping_no_more(
                    con, planned, other.name, diff_step.kept_emails_of(other.name, deleted)
                )


def _unknowing(
    store: StateStore, project: Project, sync: SyncConfig, planned: Planned, deleted: str
) -> None:
    """The people the run of the people ``sync`` deletes (``deleted``: their identifiers) leave
    the ``people_known__S`` of ``sync`` and of the other people syncs of its destination, as in
    the run (``run._known_of``, ``diff.forget_known_people``)."""
    con = store.con
    syncs = [sync.name] + [other.name for other in people_syncs(project, sync)]
    gone = diff_step.known_people_of(syncs, deleted)
    for name in syncs:
        store.ensure_sync_tables(name)
        unknown = table("plan_unknown", name)
        if name not in planned.unknown:
            run_sql(
                con,
                f"create or replace temp table {unknown} "
                "(id varchar, cio_id varchar, email varchar)",
            )
            planned.unknown.add(name)
        run_sql(
            con,
            f"insert into {unknown} select id, cio_id, email "
            f"from ({people_known(con, planned, name)}) "
            f"where {gone}",
        )


def _forget_released(
    store: StateStore, sync: SyncConfig, planned: Planned, others: Sequence[str]
) -> None:
    """The emails the run of the people ``sync`` releases (every clear delivered) leave what
    it keeps for their people (``diff.forget_kept_emails``), its records that left the model
    with them (``diff.forget_released_left``), and the records the other
    people syncs ``others`` delivered them with to that person, and what those keep for
    them, as in the run (``diff.forget_released_elsewhere``): their snapshots as the earlier
    syncs of the command leave them, with the same SQL."""
    con = store.con
    released = diff_step.released_keys(con, failed=())
    if not released:
        return
    keys = pa.table({"k": pa.array(sorted(released), pa.string())})
    with registered(con, "_planned_released", keys):
        _keeping_no_more(con, planned, sync.name, "select k from _planned_released")
        # the records that left whose email it releases (``diff.forget_released_left``)
        left = diff_step.released_left_of(con, sync, "_planned_released")
        if left is not None:
            _forgetting(con, planned, sync.name, left, left)
    if others and diff_step.released_elsewhere(con, released):
        for name in others:
            store.ensure_sync_tables(name)
            strip = table("plan_strip", name)
            if name not in planned.strip:
                run_sql(con, f"create or replace temp table {strip} (k varchar)")
                planned.strip.add(name)
            records = diff_step.released_records_of(f"({snapshot(con, planned, name)})")
            run_sql(con, f"insert into {strip} {records}")
            kept = diff_step.released_kept_of(f"({emails_kept(con, planned, name)})")
            _keeping_no_more(con, planned, name, kept)
    run_sql(con, f"drop table if exists {diff_step.RELEASED_ELSEWHERE}")


def people_syncs(project: Project, sync: SyncConfig) -> list[SyncConfig]:
    """The other people syncs of the destination of the people ``sync`` (the other objects
    syncs of its object type, for an objects ``sync``): those whose snapshots forget the
    people (objects) ``sync`` deletes (``diff.forget_people_of``), so they send them again.
    One rule for the plan (:func:`resent_by`, :func:`record`) and the run
    (``run._people_of``)."""
    if sync.kind not in ("people", "objects") or not sync.delete_removed:
        return []
    return [
        other
        for other in project
        if other.kind == sync.kind
        and other.name != sync.name
        and other.destination == sync.destination
        and other.object_type_id == sync.object_type_id
    ]


def resent_by(store: StateStore, project: Project, sync: SyncConfig) -> dict[str, int]:
    """For the plan of a people ``sync`` that deletes (its ``changes`` there): by other
    people sync, how many of its people (rows) are people this run deletes, which that sync
    then sends again (the run's ``CommitCounts.resent_by``)."""
    found: dict[str, int] = {}
    deleted = "(select ident from changes where removed)"
    for other in people_syncs(project, sync):
        store.ensure_sync_tables(other.name)
        n = store.con.execute(
            f"select count(*) from "
            f"({diff_step.delivered_records_of(sync.kind, other.name, deleted)})"
        ).fetchall()[0][0]
        if n:
            found[other.name] = int(n)
    return found


def relationship_syncs(project: Project, sync: SyncConfig) -> list[SyncConfig]:
    """The relationships syncs whose snapshots forget the relationships of the records the
    people (objects) ``sync`` deletes: those of its destination (of its object type). One rule
    for the plan (:func:`_forget_relationships`) and the run (``run._relationships_of``)."""
    return [
        other
        for other in project
        if other.kind == "relationships"
        and other.destination == sync.destination
        and (sync.kind == "people" or other.object_type_id == sync.object_type_id)
    ]


def _forget_relationships(
    store: StateStore, project: Project, sync: SyncConfig, planned: Planned
) -> None:
    """The relationships of the people (objects) ``sync``'s run deletes leave the snapshots
    of the relationships syncs of its destination (of its object type), as they do in the run
    (``run._relationships_of``). Those syncs run after it (relationships after people and
    objects): their snapshots are as the state has them."""
    con = store.con
    deleted = f"(select ident from {table('plan_delta', sync.name)} where removed)"
    if not con.execute(f"select count(*) from {deleted}").fetchall()[0][0]:
        return
    for other in relationship_syncs(project, sync):
        store.ensure_sync_tables(other.name)
        _forgetting(
            con,
            planned,
            other.name,
            diff_step.delivered_relationships_of(sync.kind, other.name, deleted),
            diff_step.unconfirmed_relationships_of(sync.kind, other.name, deleted),
        )


def _stored(con: duckdb.DuckDBPyConnection) -> Callable[[str, str], str]:
    """The name of a table of the state itself, past a temp view or table of that name."""
    database = con.execute("select current_database()").fetchall()[0][0]
    quoted = database.replace('"', '""')
    return lambda kind, name: f'"{quoted}".main.{table(kind, name)}'


def snapshot(con: duckdb.DuckDBPyConnection, planned: Planned, name: str) -> str:
    """SQL of the snapshot of sync ``name`` as the runs of the syncs planned so far would leave
    it (the state's, when none of them changes it: in a command of runs, ``planned`` is empty)."""
    joins, sent, columns, ident = "", "", "s.*", "ident"
    if name in planned.strip:  # their email released by an earlier sync
        released = f"(select k from {table('plan_strip', name)})"

        def stripped(record: str) -> str:
            return (
                f"case when {record}k in {released} "
                f"then {diff_step.without_email(f'{record}ident')} "
                f"else {record}ident end as ident"
            )

        columns, ident = f"s.k, s.h, {stripped('s.')}, s.addr", stripped("")
    if name in planned.drop:
        joins += f" anti join {table('plan_drop', name)} d on d.k = s.k"
    if name in planned.delta:
        delta = table("plan_delta", name)
        joins += f" anti join {delta} c on c.k = s.k"
        sent = (
            f" union all select k, h, {ident}, {PERSON_ADDRESS} as addr "
            f"from {delta} where not removed"
        )
    where = ""
    if name in planned.reset:  # but for the records of the rows it rejects
        where = f" where s.k in (select k from {table('plan_rejected', name)})"
    return f"select {columns} from {_stored(con)('snap', name)} s{joins}{where}{sent}"


def emails_kept(con: duckdb.DuckDBPyConnection, planned: Planned, name: str) -> str:
    """SQL of the ``emails_kept__S`` of sync ``name`` as the runs of the syncs planned so far
    would leave it (the state's, when none of them changes it)."""
    kept = f"select e.* from {_stored(con)('emails_kept', name)} e"
    if name in planned.keep:  # replaced by what its run records (``diff.keep_emails``)
        keep = table("plan_keep", name)
        kept += f" anti join {keep} n on n.k = e.k union all select * from {keep}"
    if name in planned.kept:
        kept = f"select e.* from ({kept}) e anti join {table('plan_kept', name)} d on d.k = e.k"
    return kept


def people_known(con: duckdb.DuckDBPyConnection, planned: Planned, name: str) -> str:
    """SQL of the ``people_known__S`` of sync ``name`` as the runs of the syncs planned so far
    would leave it (the people they identify are in their snapshots)."""
    known = f"select p.* from {_stored(con)('people_known', name)} p"
    if name in planned.unknown:
        known += (
            f" anti join {table('plan_unknown', name)} u "
            "on u.id is not distinct from p.id and u.cio_id is not distinct from p.cio_id "
            "and u.email is not distinct from p.email"
        )
    return known


def shadow(store: StateStore, project: Project, sync: SyncConfig, planned: Planned) -> None:
    """Before the plan of ``sync``: put in front of the state's tables what the runs of the
    syncs planned before it in the command would have committed (see the module's doc)."""
    con = store.con
    if sync.kind == "relationships" or (sync.kind == "objects" and sync.on_change):
        for name in planned.deleting:  # this plan reads relationships snapshots
            _forget_relationships(store, project, project.sync(name), planned)
        planned.deleting.clear()
    stored = _stored(con)
    for name in sorted(planned.delta | planned.drop | planned.strip):
        store.ensure_sync_tables(name)
        # its own snapshot is a table, which the plan may cut down (`--only`) or set aside
        # (`--full-resync`) as it does the state's; the whole of it, a view
        # (``diff._delivered``: whose email is whose)
        kind = "table" if name == sync.name else "view"
        run_sql(
            con,
            f"create or replace temp {kind} {table('snap', name)} as "
            f"{snapshot(con, planned, name)}",
        )
        if name == sync.name:
            run_sql(
                con,
                f"create or replace temp view {table('plan_snap', name)} as "
                f"{snapshot(con, planned, name)}",
            )
    for name in sorted(planned.delta | planned.unmark | planned.skipped):
        store.ensure_sync_tables(name)
        joins, marks = "", ""
        if name in planned.delta:
            joins += f" anti join {table('plan_delta', name)} c on c.k = u.k"
        if name in planned.unmark:
            joins += f" anti join {table('plan_unmark', name)} d on d.k = u.k"
        if name in planned.skipped:  # what its full resync marks (``run._reset_snapshot``)
            marks = (
                f" union all select k, null, {lit(diff_step.RESYNC_SKIPPED)}, null "
                f"from {table('plan_skipped', name)}"
            )
        run_sql(
            con,
            f"create or replace temp view {table('unconfirmed', name)} as "
            f"select u.* from {stored('unconfirmed', name)} u{joins}{marks}",
        )
    for name in sorted(planned.kept | planned.keep):
        store.ensure_sync_tables(name)
        run_sql(
            con,
            f"create or replace temp view {table('emails_kept', name)} as "
            f"{emails_kept(con, planned, name)}",
        )
    for name in sorted(planned.unknown):
        store.ensure_sync_tables(name)
        run_sql(
            con,
            f"create or replace temp view {table('people_known', name)} as "
            f"{people_known(con, planned, name)}",
        )
    for name in sorted(planned.ledger - {sync.name}):
        store.ensure_sync_tables(name)
        run_sql(
            con,
            f"create or replace temp view {table('ledger', name)} as "
            # every column of the stored ledger (format 4's `name` and `sent_ts` too): a
            # view short of them reads as a ledger to upgrade, and a view cannot be altered
            f"select k, delivered_at, name, sent_ts from {stored('ledger', name)} "
            f"union all select k, null::timestamptz, null::varchar, null::bigint "
            f"from {table('plan_ledger', name)}",
        )
