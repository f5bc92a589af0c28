"""Diff: compare the mapped model with the last committed snapshot, inside DuckDB.

People: a row is *new* when its key is not in the snapshot, *changed* when the hash of its
payload differs, *unchanged* otherwise; snapshot keys missing from the model are *removed*
(acted on only in `mirror` mode). Events: an event is *new* unless its key is in the
ledger (already delivered) or appears earlier in the same model (duplicate), and old
events are *backfill*.

The result is a frozen :class:`ChangeSet` whose counts are derived from the tables, and
the temp table ``changes`` holding exactly the operations to send.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import duckdb
import orjson
import pyarrow as pa

from lockgate.destinations.customerio.settings import MAX_OP_BYTES
from lockgate.project.models import SyncConfig
from lockgate.sources.base import nan_flag, quote_ident
from lockgate.state.store import (
    PERSON_ADDRESS,
    StateStore,
    has_table,
    is_table,
    journal_history,
    registered,
    run_sql,
    table,
    transaction,
)
from lockgate.sync import rejects
from lockgate.sync.extract import InPlace
from lockgate.sync.mapping import (
    EVENT_ID_BYTES,
    IDENTIFIER_PRIORITY,
    NULL_ID_KEY,
    Compiled,
    email_match,
    hash_over_json,
    json_key,
    lit,
    not_an_email,
    oversize_event_reason,
    q,
    quoted,
)

RESYNC_HELD = "resync_held"
"""A `--full-resync` relationships diff's temp table of the snapshot rows it holds (an end
left its model) that were delivered before: the resync does not forget them."""

RESYNC_SKIPPED = "resync_skipped"
"""The ``action`` of an objects sync's ``unconfirmed__S`` mark on a delivered record whose row
a `--full-resync` rejected (`run._reset_snapshot`): the resync forgot what was delivered but
did not send it again, so Customer.io may not hold it (deleted by hand since). Like any
unconfirmed record it is sent again, whatever its row holds, once the row can be sent; until
then the relationships syncs hold the relationships of its object (:func:`present_ends`),
whose `add_relationships` would create it in Customer.io, empty."""

RESYNC_PREVIOUS = "resync_previous"
"""A `--full-resync` run's temp view (or table) of what was delivered before, while the
snapshot's name is an empty stand-in (`run._shadow_snapshot`): the records of a run of named
records (`--only`), else the whole snapshot."""


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
    nulls_only: int = 0
    """Of ``unchanged``: records whose row changed, but only to nulls the null policy does not
    send (`on_null: skip`): their payload would carry no attribute, so nothing is sent, and
    the run records their row as it records one delivered (:func:`_nothing_to_send`)."""
    removed: int = 0
    removed_sent: int = 0
    removed_gone: int = 0
    """Of ``removed``: objects of a `mirror` objects sync that Customer.io no longer holds
    (deleted there since, looked up through the App API before their clear): not cleared,
    which would create them again, empty, and forgotten (``run._clear_objects_still_there``)."""
    rekeyed: int = 0
    """Of ``removed``: records that left the model under their key while a row still in it
    reaches the same record (the same `id` or `cio_id`, or the email in another case or with
    white space around it, as Customer.io finds a person; or two rows carrying one email):
    nothing is undone for them, `max_removed` does not count them, and the run's commit
    forgets their old keys (:func:`forget_rekeyed`)."""
    duplicates_in_model: int = 0
    already_delivered: int = 0
    backfill_skipped: int = 0
    backfill_sent: int = 0
    history_skipped: int = 0
    """Events of an events sync without `event.timestamp` that its first run found in the
    model and recorded as history, sent never (`backfill: {first_run: skip}`): their keys go
    to the ledger when the run commits, so later runs count them as already delivered."""
    attributes_set: int = 0
    attributes_cleared: int = 0
    held: int = 0
    state_events: int = 0
    email_releases: int = 0
    """People whose email this run releases (an identify with `"email": ""`) before the rows
    taking it are sent (``email_clears``, see :func:`order_email_moves`): not records of the
    sync, not in ``to_send``."""
    email_held_sent: int = 0
    """Of ``rejected`` and of ``changed``: rows held back for their email (another person holds
    it, :func:`_hold_shared_emails`) of people already delivered, whose other changes this run
    sends without the email (:func:`_held_rest`); the email waits."""
    remapped: int = 0
    """Of ``changed``: records whose data is as last delivered, sent again only because the
    mapping changed since (an attribute added, a type changed): the `max_changed` guardrail
    does not count them."""
    unconfirmed: int = 0
    """Of ``changed``: records whose data is as last delivered, sent again because Customer.io
    did not confirm a later delivery of them (dead-lettered, or cut off by a second stop):
    it may hold what that delivery carried. Not counted by `max_changed` either. Of an events
    sync's ``new``: events whose answer never came, sent again with the id they were sent with."""
    rows_copied: int = -1
    """Rows of the model copied into the state database to be diffed and mapped: all of them,
    unless the model was read where it lives (a DuckDB model on a later run, see
    :class:`~lockgate.sync.extract.InPlace`); -1 when not counted."""
    shared_person: int = 0
    """Rows sent this run that reach a person another row of the model also reaches (sent
    this run, or unchanged since the last: one email or `id` on two primary keys, no identity
    graph): the last one sent wins."""
    rejected_samples: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    held_samples: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    shared_samples: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    rejected_reasons: tuple[rejects.ReasonGroup, ...] = field(default_factory=tuple)
    """Every rejected row, grouped by the kind of its reason (:func:`rejects.groups`)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.__dict__.items()
            if not k.endswith("_samples") and k != "rejected_reasons"
        }


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    rows = con.execute(sql).fetchall()
    return rows[0][0] if rows else None


#: the columns of ``mapped`` with no row to map, by the statement that maps (:func:`_map`)
_EMPTY_MAPPED: dict[str, str] = {}
_EMPTY_MAPPED_KEPT = 256

#: the temp table a diff of at most :data:`BUILT_ROWS` rows to map maps them into, once, for
#: ``mapped`` and the `payloads` view both (:func:`diff_records`); a larger diff builds each
#: payload as it is read, never storing them all (1M payloads are ~600 MB)
BUILT = "built"
BUILT_ROWS = 2_000


def _map(con: duckdb.DuckDBPyConnection, statement: str, *, empty: bool) -> None:
    """Run ``statement``, which creates the temp table ``mapped`` from the mapping's SELECT.
    With no row to map (``empty``: not with `on_change`, whose columns follow the model's
    types), a statement this process ran before is replaced by a table of the columns it
    made: the same text binds to the same columns, and binding the mapping's SELECT (~10 ms
    for a people sync) is most of the cost of a run or plan with nothing changed, which a
    session, the scheduler or a test suite repeats."""
    columns = _EMPTY_MAPPED.get(statement) if empty else None
    if columns is not None:
        run_sql(con, f"create or replace temp table mapped ({columns})")
        return
    run_sql(con, statement)
    if not empty:
        return
    rows = con.execute(
        "select column_name, data_type from duckdb_columns() "
        "where database_name = 'temp' and table_name = 'mapped' order by column_index"
    ).fetchall()
    if len(_EMPTY_MAPPED) >= _EMPTY_MAPPED_KEPT:
        _EMPTY_MAPPED.clear()
    _EMPTY_MAPPED[statement] = ", ".join(f"{quote_ident(name)} {kind}" for name, kind in rows)


def _rejected(
    con: duckdb.DuckDBPyConnection,
) -> tuple[int, tuple[tuple[str, str], ...], tuple[rejects.ReasonGroup, ...]]:
    """Keep the rejected rows of ``mapped`` in the temp table ``rejected_rows`` (see
    :mod:`lockgate.sync.rejects`); their count, the first 20 by key and their groups."""
    run_sql(
        con,
        "create or replace temp table rejected_rows as "
        "select k, reject as reason from mapped where reject is not null",
    )
    count = int(_one(con, "select count(*) from rejected_rows") or 0)
    if not count:
        return 0, (), ()
    samples = con.execute("select k, reason from rejected_rows order by k limit 20").fetchall()
    return (
        count,
        tuple((str(k), str(r)) for k, r in samples),
        rejects.groups(con, count),
    )


def _addressed(sync: SyncConfig, ident: str) -> str:
    """SQL for the identifiers a removal addresses a person by (`id`, else `cio_id`, else the
    email), from an ``ident`` (a row's identifiers JSON, which may carry others and
    `on_change` watch values); for objects and relationships the ident itself."""
    if sync.kind != "people":
        return ident
    return f"""case
        when json_extract_string({ident}, '$.id') is not null
            then '{{"id":' || to_json(json_extract_string({ident}, '$.id')) || '}}'
        when json_extract_string({ident}, '$.cio_id') is not null
            then '{{"cio_id":' || to_json(json_extract_string({ident}, '$.cio_id')) || '}}'
        else '{{"email":' || to_json(json_extract_string({ident}, '$.email')) || '}}'
        end"""


def _record_keys(sync: SyncConfig, ident: str) -> str:
    """SQL for a list of strings naming the record an ``ident`` goes to, one per identifier
    Customer.io could find it by: a person's `id`, `cio_id` and email (lowercased, as
    Customer.io matches emails); two rows sharing any of them reach the same person. For a
    relationship, its person and object with a person's email lowercased
    (:func:`_relationship_key`); for an object, the ident itself."""
    if sync.kind == "relationships":
        return f"[{_relationship_key(ident)}]"
    if sync.kind != "people":
        return f"[{ident}]"
    return _person_keys(ident)


def _relationship_key(ident: str) -> str:
    """SQL naming the relationship a relationships ``ident`` (``person``, ``object``) is
    sent to: its person's identifier, an email lowercased as Customer.io matches it, and its
    object. A relationship whose email changes case is the same relationship (its row key,
    the email as the model has it, changes): the old key must not be deleted after the new
    one is added, in one batch."""
    person = _relationship_person(f"json_extract({ident}, '$.person')")
    return f"{person} || ' ' || json_extract({ident}, '$.object')::varchar"


def _relationship_person(person: str) -> str:
    """SQL naming the person of a relationship from its identifiers (the JSON ``person``):
    an email lowercased as Customer.io matches it, else the identifiers as JSON text."""
    email = f"json_extract_string({person}, '$.email')"
    return (
        f"case when {email} is not null then 'email:' || lower({email}) else {person}::varchar end"
    )


def _removal_op(sync: SyncConfig) -> tuple[str, int]:
    """SQL (over a snapshot row ``s``) for the operation that undoes a record that left the
    model in `mirror` mode, and how many attributes it clears."""
    blanks = ",".join(json_key(name).strip("'") + '""' for name in sync.attributes)
    if sync.kind == "relationships":
        return (
            """'{"type":"person","action":"delete_relationships","identifiers":' ||
               json_extract(s.ident, '$.person')::varchar ||
               ',"cio_relationships":[{"identifiers":' ||
               json_extract(s.ident, '$.object')::varchar || '}]}'""",
            0,
        )
    if sync.kind == "objects":
        identifiers = """'{"object_type_id":' ||
            to_json(json_extract_string(s.ident, '$.object_type_id')) || ',"object_id":' ||
            to_json(json_extract_string(s.ident, '$.object_id')) || '}'"""
        if sync.delete_removed:
            return (
                f"""'{{"type":"object","action":"delete","identifiers":' || {identifiers}
                || '}}'""",
                0,
            )
        return (
            """'{"type":"object","action":"identify","identifiers":' || """
            + identifiers
            + """ ||
               ',"attributes":{"""
            + blanks.replace("'", "''")
            + "}}'",
            len(sync.attributes),
        )
    identifiers = _addressed(sync, "s.ident")
    if sync.delete_removed:
        return (
            f"""'{{"type":"person","action":"delete","identifiers":' || {identifiers} || '}}'""",
            0,
        )
    attributes = '{"_update":true' + ("," + blanks if blanks else "") + "}"
    return (
        f"""'{{"type":"person","action":"identify","identifiers":' || {identifiers} ||
            ',"attributes":{attributes.replace("'", "''")}}}'""",
        len(sync.attributes),
    )


def _person_pairs(idents: str) -> str:
    """SQL selecting ``(kind, value)`` for every identifier Customer.io finds a person by
    (`id`, email in lower case, `cio_id`) of the ``ident`` JSON of the rows of ``idents``."""
    return (
        "select unnest(['id', 'email', 'cio_id']) as kind, "
        "unnest([json_extract_string(ident, '$.id'), "
        "lower(json_extract_string(ident, '$.email')), "
        f"json_extract_string(ident, '$.cio_id')]) as value from {idents}"
    )


def _person_pair(person: str) -> tuple[str, str]:
    """SQL for the identifier a relationship names its person by (``person``, its
    identifiers JSON): its kind (`id`, `email`, ...) and its value, as :func:`_person_pairs`
    gives them."""
    key = f"json_keys({person})[1]"
    value = (
        f"case when {key} = 'email' then lower(json_extract_string({person}, '$.email'))"
        f" else json_extract_string({person}, '$.' || {key}) end"
    )
    return key, value


def _missing_ends(
    objects_snaps: list[str],
    people_snaps: list[str],
    object_id: str,
    person: str,
    unsure_objects: list[str] | None = None,
    unsure_people: list[str] | None = None,
    skipped_objects: list[str] | None = None,
) -> list[str]:
    """SQL reasons (null when fine) for a relationship whose object (``object_id``, SQL) or
    person (``person``, its identifiers JSON) Lockgate has not delivered, or has deleted, or
    may have deleted: ``unsure_objects`` and ``unsure_people`` are the records a sync's delete
    was sent to without an answer, ``skipped_objects`` those a full resync kept without
    sending them again (:func:`present_ends`, left out of the snapshots)."""
    conditions = []
    if objects_snaps:
        # a null in the list would make `not in` null for every object (no match is not
        # false then): never an end, it is left out
        known = " union all ".join(
            f"select json_extract_string(ident, '$.object_id') as o from {t} where o is not null"
            for t in objects_snaps
        )
        reason = (
            f"'object `' || {quoted(object_id)} || '` is not among the objects sent (not synced "
            "yet, or it left the objects sync''s model)'"
        )
        if unsure_objects:
            unsure = " union all ".join(
                f"select json_extract_string(ident, '$.object_id') as o from {t}"
                for t in unsure_objects
            )
            reason = (
                f"case when {object_id} in ({unsure}) then 'object `' || {quoted(object_id)} || "
                "'` may have been deleted, with its relationships: the objects sync''s delete "
                "of it was not confirmed; held until the object is delivered again' "
                f"else {reason} end"
            )
        if skipped_objects:
            skipped = " union all ".join(f"select sync, o from {t}" for t in skipped_objects)
            reason = (
                f"case when {object_id} in (select o from ({skipped})) then 'object `' || "
                f"{quoted(object_id)} || '` was not sent again by objects sync `' || "
                f"(select min(sync) from ({skipped}) where o = {object_id}) || "
                "'` (its row was rejected): Customer.io may not hold it (a full resync, or a "
                "delete by hand since); held until it is sent again' "
                f"else {reason} end"
            )
        conditions.append(f"case when {object_id} not in ({known}) then {reason} end")
    if people_snaps:
        known = " union all ".join(_person_pairs(t) for t in people_snaps)
        person_key, person_value = _person_pair(person)
        # people syncs that send nobody by this identifier (by email only, the relationships
        # by `id`) hold every relationship for good: the reason says so
        # uncorrelated: the few kinds sent, computed once (not a subquery per row)
        nobody = (
            f"{person_key} not in (select distinct kind from ({known}) where value is not null)"
        )
        reason = (
            f"'person ' || {person} || ' is not among the people sent (not synced yet, "
            f"or they left the people sync''s model' || case when {nobody} then "
            f"'; no people sync has sent anyone by `' || {person_key} || '` yet: relate "
            "them by an identifier the people syncs send, or add `' || "
            f"{person_key} || '` to a people sync''s `identify_by`' else '' end || ')'"
        )
        if unsure_people:
            unsure = " union all ".join(_person_pairs(t) for t in unsure_people)
            reason = (
                f"case when ({person_key}, {person_value}) in (select kind, value from "
                f"({unsure})) then 'person ' || {person} || ' may have been deleted, with "
                "their relationships: the people sync''s delete of them was not confirmed; "
                f"held until the person is delivered again' else {reason} end"
            )
        # a person known only by an anonymous id exists in Customer.io only once identified:
        # the relationship is held by Customer.io itself (`identify_anonymous`), not by us
        conditions.append(
            f"case when {person_key} <> 'anonymous_id' and "
            f"({person_key}, {person_value}) not in "
            f"(select kind, value from ({known}) where value is not null) "
            f"then {reason} end"
        )
    return conditions


class Ends(NamedTuple):
    """The records of the people (or objects) syncs that are the ends of a relationships
    sync's relationships (:func:`present_ends`), each a list of tables (or views)."""

    present: list[str]
    """What the syncs delivered, but for the records of the other two."""
    unsure: list[str]
    """The records whose delete is unconfirmed: they may be gone."""
    skipped: list[str]
    """``(sync, o)``: the objects (by `object_id`) an objects sync's full resync kept without
    sending them again (:data:`RESYNC_SKIPPED`): they may not be in Customer.io."""


def present_ends(con: duckdb.DuckDBPyConnection, syncs: list[str]) -> Ends:
    """For the people (or objects) syncs ``syncs``, whose records are the ends of a
    relationships sync's relationships: the tables to read those records from, the tables of
    the records whose delete is unconfirmed (sent, its answer lost), and those of the objects
    a full resync did not send again (its row rejected, :data:`RESYNC_SKIPPED`).

    Customer.io may have deleted a record of the second kind, and its relationships with it:
    it counts as gone (the relationships with it are held and forgotten,
    :func:`_live_relationships`), until its sync delivers it again. One of the third kind may
    have been deleted by hand, which the resync did not mend: the relationships with it wait
    for it (an `add_relationships` would create it, empty), but stay delivered. A sync
    without such records gives its snapshot as it is; the unconfirmed table is read further
    only when it has such a mark."""
    present, unsure, skipped = [], [], []
    marks = f"('delete', {lit(RESYNC_SKIPPED)})"
    for name in syncs:
        snap, unconfirmed = table("snap", name), table("unconfirmed", name)
        deletes, resynced = con.execute(
            f"select count(*) filter (where action = 'delete'), "
            f"count(*) filter (where action = {lit(RESYNC_SKIPPED)}) from {unconfirmed}"
        ).fetchall()[0]
        if not deletes and not resynced:
            present.append(snap)
            continue
        kept = table("present", name)
        run_sql(
            con,
            f"""
            create or replace temp view {kept} as
            select s.* from {snap} s
            anti join (select k from {unconfirmed} where action in {marks}) u on u.k = s.k
            """,
        )
        present.append(kept)
        if deletes:
            gone = table("unsure_deleted", name)
            run_sql(
                con,
                f"""
                create or replace temp view {gone} as
                select s.* from {snap} s
                semi join (select k from {unconfirmed} where action = 'delete') u on u.k = s.k
                """,
            )
            unsure.append(gone)
        if resynced:
            unsent = table("resync_skipped", name)
            run_sql(
                con,
                f"""
                create or replace temp view {unsent} as
                select {lit(name)} as sync, json_extract_string(s.ident, '$.object_id') as o
                from {snap} s
                semi join (select k from {unconfirmed} where action = {lit(RESYNC_SKIPPED)}) u
                    on u.k = s.k
                where o is not null
                """,
            )
            skipped.append(unsent)
    return Ends(present, unsure, skipped)


def forget_relationships_of(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    relationship_syncs: list[str],
    idents: list[str],
    *,
    confirmed: bool = False,
) -> None:
    """Take out of the state of the relationships syncs ``relationship_syncs`` the
    relationships of the people (``kind`` `people`) or objects (`objects`) ``idents`` (their
    identifiers JSON, as their snapshot holds them), deleted, or sent a delete whose answer
    never came.

    Customer.io deletes a person's (an object's) relationships with them, so these are (or
    may be) gone: no longer counted as delivered, they are sent again once the record is
    delivered again, even by a relationships sync that runs only after that (it would
    otherwise never see the record gone). Meanwhile its diff holds them (absent from the
    snapshot of the record's sync, or its delete unconfirmed: :func:`present_ends`). What a
    killed run of that sync delivered and left in its journal goes too
    (:func:`forget_delivered`).

    A delete Customer.io ``confirmed`` takes the syncs' unconfirmed relationships of the
    records along (``unconfirmed__S``, and the new ones a killed run wrote ahead,
    ``sending__S``): gone with them, they are not, their row gone, undone (a
    `delete_relationships` for nothing). One whose answer never came
    leaves them: the record may still be there."""
    if not relationship_syncs or kind not in ("people", "objects"):
        return
    with registered(con, "_deleted_ends", pa.table({"ident": pa.array(idents, pa.string())})):
        for name in relationship_syncs:
            unconfirmed = table("unconfirmed", name)
            if confirmed and _one(con, f"select count(*) from {unconfirmed}"):
                run_sql(
                    con,
                    f"delete from {unconfirmed} where k in "
                    f"({unconfirmed_relationships_of(kind, name, '_deleted_ends')})",
                )
            if confirmed:
                _forget_written_ahead(con, name, relationships_of(kind, "_deleted_ends"))
            forget_delivered(con, name, delivered_relationships_of(kind, name, "_deleted_ends"))


def forget_people_of(
    con: duckdb.DuckDBPyConnection, people_syncs: list[str], idents: list[str], kind: str = "people"
) -> dict[str, int]:
    """Take out of the state of other people syncs (``people_syncs``) the rows of the
    people ``idents`` (their identifiers JSON), whom a people sync's `delete` Customer.io
    confirmed deleted: those syncs no longer count them delivered, so their next run sends
    them again in full. Returns, by sync, how many rows each forgot (syncs that forgot none
    left out). With ``kind`` `objects`, the same for the objects of other objects syncs of
    the object type (matched by `object_id`): Customer.io deletes the whole object too.

    Their records those syncs sent whose answer never came (``unconfirmed__S``) are dropped
    too, and so are those new to the snapshot a killed run of theirs wrote ahead
    (``sending__S``, which its next run would mark unconfirmed): their row gone from the
    model, they would otherwise be undone (a clear or a delete of a person already deleted:
    a request for nothing, counted removed).

    A delete whose answer never came forgets nothing: its sync sends it again, and only once
    Customer.io confirms it are the people gone."""
    forgot: dict[str, int] = {}
    if not people_syncs or not idents:
        return forgot
    with registered(con, "_deleted_people", pa.table({"ident": pa.array(idents, pa.string())})):
        for name in people_syncs:
            if kind == "people":  # the emails they kept went with them
                run_sql(
                    con,
                    f"delete from {table('emails_kept', name)} "
                    f"where k in ({kept_emails_of(name, '_deleted_people')})",
                )
            unconfirmed = table("unconfirmed", name)
            if _one(con, f"select count(*) from {unconfirmed}"):
                run_sql(
                    con,
                    f"delete from {unconfirmed} "
                    f"where k in ({unconfirmed_records_of(kind, name, '_deleted_people')})",
                )
            _forget_written_ahead(con, name, _records_of(kind, "_deleted_people"))
            n = forget_delivered(con, name, delivered_records_of(kind, name, "_deleted_people"))
            if n:
                forgot[name] = n
    return forgot


def forget_known_people(
    con: duckdb.DuckDBPyConnection, people_syncs: Sequence[str], idents: list[str]
) -> None:
    """Take out of ``people_known__S`` of the people syncs ``people_syncs`` (the deleting
    sync's and the others of its destination) the people ``idents`` (their identifiers JSON),
    whom a `delete` Customer.io confirmed took away (:func:`known_people_of`). Before
    :func:`forget_people_of`: the snapshots still say which `id` holds an email deleted."""
    if not people_syncs or not idents:
        return
    with registered(con, "_deleted_known", pa.table({"ident": pa.array(idents, pa.string())})):
        gone = known_people_of(people_syncs, "_deleted_known")
        for name in people_syncs:
            run_sql(con, f"delete from {table('people_known', name)} where {gone}")


def known_people_of(people_syncs: Sequence[str], deleted: str) -> str:
    """SQL true for a row of ``people_known__S`` (its ``id``, ``cio_id``, ``email``) that is
    one of the people of ``deleted`` (a relation with their identifiers JSON as ``ident``): by
    the `id`, `cio_id` or email deleted, or held by a record of the people syncs
    ``people_syncs`` (their snapshots, and the people their ``emails_kept__S`` keep an email
    for) of the same person (:func:`people_of`: a person deleted by email is the one the
    records give that email, one deleted by `id` the one holding the email they give it)."""
    found = [f"select kind, value from ({_person_pairs(deleted)}) where value is not null"]
    for name in people_syncs:
        for records, of in (
            (table("snap", name), people_of(table("snap", name), deleted)),
            (table("emails_kept", name), kept_emails_of(name, deleted)),
        ):
            found.append(
                "select unnest(['id', 'cio_id', 'email']) as kind, "
                "unnest([json_extract_string(ident, '$.id'), "
                "json_extract_string(ident, '$.cio_id'), "
                "lower(json_extract_string(ident, '$.email'))]) as value "
                f"from {records} where k in ({of})"
            )
    held = " union all ".join(found)
    return (
        f"(('id', id) in ({held}) or ('cio_id', cio_id) in ({held}) "
        f"or ('email', email) in ({held}))"
    )


def forget_delivered(con: duckdb.DuckDBPyConnection, sync: str, keys: str) -> int:
    """Take the records ``keys`` (SQL selecting ``k``, distinct) out of what the state of
    ``sync`` counts delivered: its snapshot, and its journal. A run killed while sending
    leaves in the journal what Customer.io confirmed, which its next run folds into the
    snapshot: a record deleted meanwhile (by another sync) would count as delivered again,
    and never be sent. Returns how many records were forgotten."""
    snap, journal = table("snap", sync), table("journal", sync)
    run_sql(con, f"create or replace temp table _forgotten as {keys}")
    n = int(_one(con, "select count(*) from _forgotten") or 0)
    if n:
        # their delivery's history, which the journal holds until they leave it
        journal_history(con, sync, "k in (select k from _forgotten)")
        run_sql(
            con,
            f"delete from {snap} where k in (select k from _forgotten); "
            f"delete from {journal} where k in (select k from _forgotten)",
        )
    run_sql(con, "drop table _forgotten")
    return n


def delivered_records_of(kind: str, sync: str, deleted: str) -> str:
    """SQL selecting the keys ``k`` the people (``kind`` `people`) or objects (`objects`)
    sync ``sync`` counts delivered (its snapshot, and the journal a killed run left) whose
    person (:func:`people_of`) or object (its `object_id`: the syncs are of one object type)
    is one of the records of ``deleted``."""
    if kind == "objects":
        of = (
            "json_extract_string(ident, '$.object_id') in "
            f"(select json_extract_string(ident, '$.object_id') from {deleted})"
        )
        return (
            f"select k from {table('snap', sync)} where {of} "
            f"union select k from {table('journal', sync)} where {of}"
        )
    return (
        f"{people_of(table('snap', sync), deleted)} "
        f"union {people_of(table('journal', sync), deleted)}"
    )


def unconfirmed_records_of(kind: str, sync: str, deleted: str) -> str:
    """SQL selecting the keys ``k`` of the records the people (``kind`` `people`) or objects
    (`objects`) sync ``sync`` counts delivered (:func:`delivered_records_of`) or sent unconfirmed
    (``unconfirmed__S``, by the identifiers kept with a record new to the snapshot) whose
    person or object is one of the records of ``deleted``: whose unconfirmed marks go with
    them (:func:`forget_people_of`)."""
    unconfirmed = table("unconfirmed", sync)
    if kind == "objects":
        marked = (
            f"select k from {unconfirmed} where json_extract_string(ident, '$.object_id') in "
            f"(select json_extract_string(ident, '$.object_id') from {deleted})"
        )
    else:
        marked = people_of(unconfirmed, deleted)
    return f"{delivered_records_of(kind, sync, deleted)} union {marked}"


def kept_emails_of(sync: str, deleted: str) -> str:
    """SQL selecting the keys ``k`` of the people the people sync ``sync`` remembers keeping
    an email (``emails_kept__S``, :func:`keep_emails`) who are people of ``deleted``: by the
    `id` or `cio_id` it would release the email by, or by the email itself. Customer.io
    deleted them with their email: releasing it later (an `identify` by that `id`) would
    create them again, empty."""
    kept = table("emails_kept", sync)
    return (
        f"{people_of(kept, deleted)} union select k from {kept} where email in "
        f"(select value from ({_person_pairs(deleted)}) where kind = 'email' and value is not null)"
    )


def delivered_relationships_of(kind: str, sync: str, deleted: str) -> str:
    """SQL selecting the keys ``k`` the relationships sync ``sync`` counts delivered (its
    snapshot, and the journal a killed run left) whose person (``kind`` `people`) or object
    (`objects`) is one of the records of ``deleted`` (:func:`relationships_of`)."""
    of = relationships_of(kind, deleted)
    return (
        f"select k from {table('snap', sync)} where {of} "
        f"union select k from {table('journal', sync)} where {of}"
    )


def _records_of(kind: str, deleted: str) -> str:
    """SQL true for a people (``kind`` `people`) or objects (`objects`) record (its ``k`` and
    ``ident``) whose person or object is one of the records of ``deleted``."""
    if kind == "objects":
        return (
            "json_extract_string(ident, '$.object_id') in "
            f"(select json_extract_string(ident, '$.object_id') from {deleted})"
        )
    return f"k in ({people_of('_written_ahead', deleted)})"


def _forget_written_ahead(con: duckdb.DuckDBPyConnection, sync: str, of: str) -> None:
    """Drop from the write-ahead record a killed run of ``sync`` left (``sending__S``) the
    records new to its snapshot it names (their key and identifiers) that ``of`` (SQL over
    ``k, ident``) says were deleted: its next run would mark them unconfirmed
    (``StateStore.recover_sending``) and, their row gone, undo them. Nothing is read when no
    such record is there."""
    sending = table("sending", sync)
    if not _one(con, f"select count(*) from {sending} where k is not null"):
        return
    run_sql(
        con,
        f"create or replace temp table _written_ahead as "
        f"select distinct k, ident from {sending} where k is not null",
    )
    run_sql(
        con,
        f"delete from {sending} where k in (select k from _written_ahead where {of}); "
        "drop table _written_ahead",
    )


def unconfirmed_relationships_of(kind: str, sync: str, deleted: str) -> str:
    """SQL selecting the keys ``k`` of the relationships the relationships sync ``sync``
    counts delivered (:func:`delivered_relationships_of`) or sent unconfirmed
    (``unconfirmed__S``, by the identifiers kept with a relationship new to the snapshot) whose
    person (``kind`` `people`) or object (`objects`) is one of the records of ``deleted``."""
    return (
        f"{delivered_relationships_of(kind, sync, deleted)} union select k from "
        f"{table('unconfirmed', sync)} where {relationships_of(kind, deleted)}"
    )


def people_of(snap: str, deleted: str) -> str:
    """SQL selecting the keys ``k`` of the people snapshot ``snap`` (or journal) whose person
    shares an identifier Customer.io finds people by (`id`, email in lower case, `cio_id`)
    with one of the people of ``deleted`` (a relation with their identifiers JSON as
    ``ident``): the same person, as relationships are matched to people
    (:func:`relationships_of`)."""
    return (
        "select distinct k from (select k, unnest(['id', 'email', 'cio_id']) as kind, "
        "unnest([json_extract_string(ident, '$.id'), "
        "lower(json_extract_string(ident, '$.email')), "
        f"json_extract_string(ident, '$.cio_id')]) as value from {snap}) "
        f"where value is not null and (kind, value) in "
        f"(select kind, value from ({_person_pairs(deleted)}) where value is not null)"
    )


def relationships_of(kind: str, deleted: str) -> str:
    """SQL true for a relationships snapshot row (its ``ident``) whose person (``kind``
    `people`) or object (`objects`) is one of the records of ``deleted`` (a relation with
    their identifiers JSON as ``ident``)."""
    if kind == "objects":
        return (
            "json_extract_string(ident, '$.object.object_id') in "
            f"(select json_extract_string(ident, '$.object_id') from {deleted})"
        )
    key, value = _person_pair("json_extract(ident, '$.person')")
    return f"({key}, {value}) in (select kind, value from ({_person_pairs(deleted)}))"


def _live_relationships(
    con: duckdb.DuckDBPyConnection,
    snap: str,
    unsure_objects: list[str] | None = None,
    unsure_people: list[str] | None = None,
) -> str:
    """The relationships snapshot without the relationships whose object or person may be
    gone (its delete sent, the answer lost: Customer.io may have deleted its relationships
    with it), as a temp table's name; their keys are kept in the temp table ``ends_gone``
    (:func:`forget_gone_relationships`). Diffed against it, such a relationship still in the
    model is new again: held while its end may be missing, sent once it is back.

    The run that deletes a record (or loses the answer) takes its relationships out of the
    snapshot itself (:func:`forget_relationships_of`); this covers a state written before it
    did. An end merely absent from its sync's snapshot is not gone: an object or person a
    `mirror` sync cleared (without `delete_removed`) still exists in Customer.io with its
    relationships, which stay delivered, and one that leaves the model is deleted."""
    run_sql(con, "drop table if exists snap_live; drop table if exists ends_gone")
    gone = _ends_gone(unsure_objects, unsure_people)
    if gone is None:
        return snap
    # of the snapshot the diff reads: with `--only`, the named records alone
    run_sql(
        con,
        f"""
        create temp table ends_gone as
        select k from {snap} s where {gone};
        create temp table snap_live as
        select * from {snap} s anti join ends_gone g on g.k = s.k;
        """,
    )
    return "snap_live"


def _ends_gone(unsure_objects: list[str] | None, unsure_people: list[str] | None) -> str | None:
    """SQL true for a relationships snapshot row ``s`` whose object or person may be gone (a
    delete sent, its answer lost); None when no delete is unconfirmed."""
    conditions = []
    if unsure_objects:
        unsure = " union all ".join(
            f"select json_extract_string(ident, '$.object_id') as o from {t}"
            for t in unsure_objects
        )
        conditions.append(
            f"json_extract_string(s.ident, '$.object.object_id') in "
            f"(select o from ({unsure}) where o is not null)"
        )
    if unsure_people:
        unsure = " union all ".join(_person_pairs(t) for t in unsure_people)
        key, value = _person_pair("json_extract(s.ident, '$.person')")
        conditions.append(
            f"({key}, {value}) in (select kind, value from ({unsure}) where value is not null)"
        )
    if not conditions:
        return None
    return f"coalesce({' or '.join(conditions)}, false)"


def temp_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the connection has the temp table ``name`` (asked ~15 times a run)."""
    return is_table(con, f"temp.main.{quote_ident(name)}")


def forget_gone_relationships(
    con: duckdb.DuckDBPyConnection, sync: SyncConfig, *, full_resync: bool = False
) -> int:
    """After a relationships diff (in a run, not a plan): drop from the snapshot the
    relationships whose object or person may be gone (``ends_gone``, of the records the diff
    read: a run of named records drops none of the others), so that they count as not
    delivered; they are sent again once both ends exist. Returns how many were dropped. Also
    drops those that left the model while another relationships sync holds them
    (:func:`_held_by_siblings`): not deleted, and no longer this sync's, so the other's
    `mirror` run may delete them.

    Not after a `--full-resync` diff: that one read an empty stand-in for the snapshot, and
    the resync already forgot what it sends again."""
    if sync.kind != "relationships":
        return 0
    snap = table("snap", sync.name)
    if temp_table(con, "held_by_siblings"):
        run_sql(con, f"delete from {snap} where k in (select k from held_by_siblings)")
    if full_resync or not temp_table(con, "ends_gone"):
        return 0
    gone = con.execute(f"delete from {snap} where k in (select k from ends_gone)").fetchall()
    return int(gone[0][0])


def _shared_people(
    con: duckdb.DuckDBPyConnection, snap: str
) -> tuple[int, tuple[tuple[str, str], ...]]:
    """Rows of ``changes`` that reach one person with another row of the model, and per
    person (the first 20) the keys of all its rows.

    The other row is sent in this run too, or it is unchanged and still in the model: then the
    snapshot says which person it reaches (``addr``). Only the snapshot rows of the people
    sent now are looked at, so an incremental run pays for the rows it sends. Against an
    empty snapshot (a first run) only the rows sent count: when no two of them reach one person
    (one count), nothing more is built (a first run's 1M rows: 0.3-0.5 → 0.1 s of CPU)."""
    if not _one(con, f"select count(*) from (select 1 from {snap} limit 1)") and not _one(
        con,
        "select count(*) from (select addr from changes where addr is not null "
        "group by addr having count(*) > 1)",
    ):
        run_sql(
            con, "create or replace temp table shared (k varchar, addr varchar, is_sent boolean)"
        )
        return 0, ()
    run_sql(
        con,
        f"""
        create or replace temp table shared as
        with sent as (select k, addr from changes where addr is not null),
        kept as (
            select s.k, s.addr from {snap} s
            semi join (select distinct addr from sent) a on a.addr = s.addr
            semi join keyed m on m.k = s.k
            anti join changes c on c.k = s.k
        ),
        rows as (select k, addr, true as is_sent from sent
                 union all select k, addr, false from kept)
        select k, addr, is_sent from rows
        where addr in (select addr from rows group by addr having count(*) > 1)
        """,
    )
    count = int(_one(con, "select count(*) from shared where is_sent") or 0)
    samples = con.execute(
        "select addr, string_agg(k, ', ' order by k) from shared group by addr "
        "order by addr limit 20"
    ).fetchall()
    return count, tuple((str(a), str(ks)) for a, ks in samples)


def _takes_emails(sync: SyncConfig) -> bool:
    """Whether ``sync`` is a people sync whose rows take emails as people of their own: one
    identified by `email` and an `id` (or `cio_id`). Keyed through the identity graph too:
    the graph gives each email to one profile, and releases it from a profile it retires in
    the same run (``customerio.releases``), but a user retired in an earlier run is
    forgotten by the graph, while their person in Customer.io keeps the email: the sync's
    record of the row that left is what releases it (:func:`order_email_moves`)."""
    return (
        sync.kind == "people"
        and "email" in sync.identify_by
        and bool({"id", "user_id", "cio_id"} & set(sync.identify_by))
    )


def _lower_email(ident: str) -> str:
    """SQL: the email of a JSON ``ident`` trimmed and in lower case, as Customer.io matches it
    (:func:`~lockgate.sync.mapping.email_match`)."""
    return email_match(f"json_extract_string({ident}, '$.email')")


def _still_reached(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    previous: str,
    siblings: list[str] | None = None,
    people_snaps: list[str] | None = None,
) -> None:
    """Of the records of ``previous`` (the snapshot) that left the model under their key, the
    temp table ``gone`` (``k``, ``ident``), and ``kept``: the keys of those a row still in the
    model reaches (shares an `id`, `cio_id` or email with it, the email in any case and
    trimmed, as Customer.io finds a person), or another relationships sync holds. ``rekeyed``
    is ``kept`` without the latter: the same records under a new key (an email key whose case
    changed), or another row's (two rows carrying one email).

    A relationship that left is held while another relationships sync of the same object type
    still holds it (``siblings``, their snapshots; the person found by any of the identifiers
    a people sync delivered them with, ``people_snaps``): memberships from the app and
    contacts from the CRM may both relate a person to a company.

    The records still synced are those of the rows sent now (``changes``, before any removal
    is added to it), of the unchanged (or rejected) rows still in the model, as the
    snapshot last sent them, and of the rejected rows as they are now (``rejected_idents``,
    when there is one): a row with a bad value under a new key (an email whose case changed)
    is still in the model, and is sent once it is fixed.

    An email a row sent now takes (new to it) under another `id` does not reach a record that
    left with it and has an `id` (or `cio_id`): two people, the email changing hands (the one
    that left gives it up first, :func:`order_email_moves`). Nor does one a rejected row takes
    (held back while another row takes it too, say): when it is sent, it is another person
    than the one that left."""
    keys = _record_keys(sync, "ident")
    rejected = temp_table(con, "rejected_idents")
    # the rows still in the model: those sent now, and the rejected ones as they are now
    addr = "addr, " if _takes_emails(sync) else ""
    rows = (
        f"(select k, {addr}ident, removed from changes "
        f"union all select k, {addr}ident, false as removed from rejected_idents)"
        if rejected
        else "changes"
    )
    run_sql(
        con,
        f"""
        create or replace temp table gone as
        select s.k, s.ident from {previous} s anti join keyed m on m.k = s.k;
        create or replace temp table gone_keys as
        select k, unnest({keys}) as a from gone;
        """,
    )
    live = f"select unnest({keys}) as a from {rows}"
    if _takes_emails(sync):
        # an email a row of another `id` takes in this run from a record that left is not
        # the same person: it changes hands (released first, :func:`order_email_moves`);
        # a record that left known by its email alone is the person the row becomes
        run_sql(
            con,
            f"""
            create or replace temp table email_taken as
            select c.k, 'email:' || {_lower_email("c.ident")} as a
            from {rows} c left join {previous} s on s.k = c.k
            where not c.removed and not starts_with(c.addr, 'email:')
              and {_lower_email("c.ident")} is distinct from {_lower_email("s.ident")}
              and {_lower_email("c.ident")} is not null
            """,
        )
        live = f"""
            select a from (select k, unnest({keys}) as a from {rows}) c
            anti join email_taken t on t.k = c.k and t.a = c.a
            union
            select t.a from email_taken t
            join gone_keys g on g.a = t.a join gone o on o.k = g.k
            where json_extract_string(o.ident, '$.id') is null
              and json_extract_string(o.ident, '$.cio_id') is null
            """
    run_sql(
        con,
        f"""
        create or replace temp table live_keys as
        with shared as (
            select k, a from (select k, unnest({keys}) as a from {previous}) h
            semi join gone_keys g on g.a = h.a
        )
        {live}
        union
        select h.a from shared h semi join keyed m on m.k = h.k
        anti join changes c on c.k = h.k;
        drop table if exists email_taken;
        """,
    )
    held = sync.kind == "relationships" and bool(siblings)
    if held:
        _held_by_siblings(con, siblings or [], people_snaps or [])
    if sync.kind == "relationships":
        # a row sent now by another identifier of the person a leaving row named (its `id`
        # gone null, so sent by email; or the other way round) still holds the relationship:
        # the old key must not delete it (after its add, in one batch)
        _held_by_siblings(con, [], people_snaps or [], into="held_by_own_rows", holders=OWN_HOLDERS)
    # a row that leaves with another leaving row reaching the same person (one by `id`, one
    # by email) is kept when that one is: add the kept rows' keys until none is new
    while con.execute(
        """
        insert into live_keys
        select distinct g.a from gone_keys g
        semi join (select g.k from gone_keys g semi join live_keys l on l.a = g.a) x
            on x.k = g.k
        anti join live_keys l on l.a = g.a
        where g.a is not null
        """
    ).fetchall()[0][0]:
        pass
    # a relationship that leaves while a row of its object is rejected without a person it
    # can be sent to (its email no address, `a@x.com; b@x.com` where `a@x.com` was; or
    # every identifier null or blank) may be that row's: kept until the row is fixed (and
    # sent, or no longer reaching it) or leaves. So is one that leaves while a row of its
    # person is rejected without an object (its id null or blank)
    spoiled = ""
    if sync.kind == "relationships" and temp_table(con, REJECTED_UNADDRESSED):
        _kept_unaddressed(con, sync)
        spoiled = f" union select k from {KEPT_UNADDRESSED}"
    run_sql(
        con,
        f"""
        create or replace temp table kept as
        select distinct g.k from gone_keys g semi join live_keys l on l.a = g.a{spoiled};
        create or replace temp table rekeyed as
        select k from kept {"anti join held_by_siblings h on h.k = kept.k" if held else ""};
        """,
    )


REJECTED_UNADDRESSED = "rejected_unaddressed"
"""The temp table of the objects (``object_id``) of a relationships sync's rows rejected
without a person they can be sent to, with each row's hash (``h``), a row each
(:func:`_rejected_unaddressed`)."""

REJECTED_OBJECTLESS = "rejected_objectless"
"""The temp table of the people (``person``, :func:`_relationship_person`) of a
relationships sync's rows rejected without an object, with each row's hash (``h``), a row
each (:func:`_rejected_unaddressed`)."""

UNADDRESSED = "unaddressed"
"""The per-sync state table (``unaddressed__S(side, v, h)``) of a relationships sync's last
whole run that committed: its rows rejected with no person (``side`` `object`, ``v`` the
object id), or with no object (`person`, ``v`` the person, :func:`_relationship_person`),
each with its hash; and the relationships that left the model kept for such rows (`kept`,
``v`` the key). Written by :func:`record_unaddressed`, read by :func:`_kept_unaddressed`."""

KEPT_UNADDRESSED = "kept_unaddressed"
"""The temp table of the keys (``k``) of the relationships that left the model and are kept
for a row rejected with no person or no object (:func:`_still_reached`): still in
Customer.io, they stay delivered through a full resync's reset (``run._reset_snapshot``), to
be removed once the row is fixed or leaves."""


def _rejected_unaddressed(con: duckdb.DuckDBPyConnection) -> None:
    """Keep in :data:`REJECTED_UNADDRESSED` the objects of the relationships rows of
    ``mapped`` rejected with no person to send them to: every identifier null or blank (or
    none from the identity graph), or the email that addresses the row no address. Such a
    row may be the contact of a relationship delivered before, its person's identifier gone
    or spoiled in the warehouse, and its key (person and object) is not that relationship's:
    the relationships of its object that left the model are kept (:func:`_still_reached`)
    rather than deleted by a row that is still there, only rejected.

    And in :data:`REJECTED_OBJECTLESS` the people of the rows rejected with a person and no
    object (its id null, blank or no whole number): the same, the other way round, for the
    relationships of that person."""
    email = "json_extract_string(person, '$.email')"
    unaddressed = f"(person is null or ({email} is not null and {not_an_email(email)}))"
    run_sql(
        con,
        f"""
        create or replace temp table {REJECTED_UNADDRESSED} as
        select object_id, h from mapped
        where reject is not null and object_id is not null and {unaddressed};
        create or replace temp table {REJECTED_OBJECTLESS} as
        select {_relationship_person("json(person)")} as person, h from mapped
        where reject is not null and object_id is null and not {unaddressed};
        """,
    )


def _kept_unaddressed(con: duckdb.DuckDBPyConnection, sync: SyncConfig) -> None:
    """Fill :data:`KEPT_UNADDRESSED` with the relationships of ``gone`` that a row rejected
    with no person (of their object) or no object (of their person) may be the row of.

    Rows are told apart by what they hold (their hash): a rejected row that holds what a
    row of the same object (person) rejected so held in the last whole run (:data:`UNADDRESSED`)
    is that row, which was there beside the relationships still in the model then: it is none
    of theirs, and they are removed when they leave. Only a row rejected so that is new, or
    changed (its identifier gone null or spoiled just now), may be the row of a relationship
    that left: every relationship of its object (person) that left is kept. One kept so in
    the last run stays kept while its object (person) still has a row rejected so, changed
    or not. Without a record of the last run (a first run, a state from before it), every
    such row counts as new."""
    obj = "json_extract_string(g.ident, '$.object.object_id')"
    person = _relationship_person("json_extract(g.ident, '$.person')")
    last = table(UNADDRESSED, sync.name)
    recorded = has_table(con, last.strip('"'))
    was = (
        f"select side, v, h from {last}"
        if recorded
        else ("select null::varchar as side, null::varchar as v, null::ubigint as h where false")
    )
    run_sql(
        con,
        f"""
        create or replace temp table unaddressed_new as
        with now as (
            select 'object' as side, object_id as v, h from {REJECTED_UNADDRESSED}
            union all
            select 'person' as side, person as v, h from {REJECTED_OBJECTLESS}
        ),
        n as (select side, v, h, count(*) as n from now group by all),
        w as (select side, v, h, count(*) as n from ({was}) group by all)
        select distinct n.side, n.v from n left join w
            on w.side = n.side and w.v = n.v and w.h = n.h
        where n.n > coalesce(w.n, 0);
        create or replace temp table {KEPT_UNADDRESSED} as
        select g.k from gone g semi join unaddressed_new r
            on r.side = 'object' and r.v = {obj}
        union
        select g.k from gone g semi join unaddressed_new r
            on r.side = 'person' and r.v = {person}
        union
        select g.k from gone g semi join ({was}) l on l.side = 'kept' and l.v = g.k
        where {obj} in (select object_id from {REJECTED_UNADDRESSED})
           or {person} in (select person from {REJECTED_OBJECTLESS});
        drop table unaddressed_new;
        """,
    )


def record_unaddressed(store: StateStore, sync: SyncConfig) -> None:
    """After a whole run of a relationships sync: record in :data:`UNADDRESSED` its rows
    rejected with no person or no object, and the relationships kept for them
    (:func:`_kept_unaddressed` reads it in the next run)."""
    if sync.kind != "relationships" or not temp_table(store.con, REJECTED_UNADDRESSED):
        return
    last = table(UNADDRESSED, sync.name)
    kept = (
        f"union all select 'kept', k, null from {KEPT_UNADDRESSED}"
        if temp_table(store.con, KEPT_UNADDRESSED)
        else ""
    )
    with transaction(store.con, store.path):
        run_sql(
            store.con,
            f"""
            create table if not exists {last} (side varchar, v varchar, h ubigint);
            delete from {last};
            insert into {last}
            select 'object', object_id, h from {REJECTED_UNADDRESSED}
            union all select 'person', person, h from {REJECTED_OBJECTLESS}
            {kept};
            """,
        )


REJECTED_OBJECTS = "rejected_objects"
"""The per-sync state table (``rejected_objects__S(o)``) of an objects sync: the objects (by
`object_id`) it delivered whose row its last whole run rejected (its key repeated, a bad
value). Customer.io may no longer hold one (deleted there by hand: the sync does not know, and
sends nothing for it while its row is rejected, nor does `--full-resync`), and an
`add_relationships` naming it would create it, empty. So a relationships run checks the objects
of this table that its adds name (``run._hold_relationships_of_rejected_objects``). Written by
:func:`record_rejected_objects`; made by the first whole run of the sync that writes it."""


def record_rejected_objects(store: StateStore, sync: SyncConfig) -> None:
    """After a whole run of an objects sync: record in :data:`REJECTED_OBJECTS` the delivered
    objects whose row it rejected. Cheap: the rejected rows joined to the snapshot by key, and
    nothing written by a run that rejects none of a sync that never did."""
    if sync.kind != "objects" or not temp_table(store.con, "rejected_objects_rows"):
        return
    last = table(REJECTED_OBJECTS, sync.name)
    count = int(_one(store.con, "select count(*) from rejected_objects_rows") or 0)
    if not count and not has_table(store.con, last.strip('"')):
        return
    with transaction(store.con, store.path):
        run_sql(
            store.con,
            f"""
            create table if not exists {last} (o varchar);
            delete from {last};
            insert into {last} select distinct o from rejected_objects_rows;
            """,
        )


def rejected_objects_rows(con: duckdb.DuckDBPyConnection, sync: SyncConfig) -> None:
    """In an objects run, before its commit forgets nothing: the temp table
    ``rejected_objects_rows(o)`` of the delivered objects (by `object_id`) whose row the run
    rejected, for :func:`record_rejected_objects`."""
    if sync.kind != "objects" or not temp_table(con, "rejected_rows"):
        return
    run_sql(
        con,
        f"""
        create or replace temp table rejected_objects_rows as
        select distinct json_extract_string(s.ident, '$.object_id') as o
        from {table("snap", sync.name)} s semi join rejected_rows r on r.k = s.k
        where o is not null
        """,
    )


def _mirror_removals(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    previous: str,
    siblings: list[str] | None = None,
    people_snaps: list[str] | None = None,
) -> int:
    """Add to ``changes`` the operations undoing the records of ``previous`` (the snapshot)
    that left the model; returns how many.

    A row that left is undone only where no row still in the model goes to the same record
    (:func:`_still_reached`): after two accounts became one person (identity), two rows carry
    one email, or an email key changed case, the row that leaves must not clear (or delete)
    what the other row keeps sending there; nor is a relationship another relationships sync
    holds deleted.
    """
    op, cleared_each = _removal_op(sync)
    _still_reached(con, sync, previous, siblings, people_snaps)
    run_sql(
        con,
        f"""
        insert into changes (k, op, h, ident, is_new, removed, n_set, n_cleared)
        select s.k, {op} as op, null as h, s.ident, false as is_new, true as removed,
               0 as n_set, {cleared_each} as n_cleared
        from gone s anti join kept x on x.k = s.k
        """,
    )
    return int(_one(con, "select count(*) from changes where removed") or 0)


def forget_rekeyed(con: duckdb.DuckDBPyConnection, sync: SyncConfig) -> int:
    """After a run's commit: drop from the snapshot the records that left the model under
    their key while a row still in it reaches the same record (``rekeyed``, of the run's
    diff), where the snapshot now holds that record under another key with every identifier
    the old one had (an email key in another case: the same email). Nothing was undone for
    them; kept, they would be gone again in every later run, and in the shares' base.

    One whose identifiers no single other record carries is kept: it is what links them (a
    row by `id` and one by email, once both on one row) so that the run does not undo a
    person another row still reaches. One whose new key was not delivered is kept until it
    is, so the record is still undone (`mirror`) when its last row leaves.

    A record whose first delivery was unconfirmed (not in the snapshot: its unconfirmed mark
    with the identifiers it was sent to, :func:`unsure_new`) is forgotten the same way: its
    mark is dropped, else every later `mirror` run would find it gone (and kept) again. So is
    the mark of a snapshot record forgotten. Returns how many were forgotten."""
    if sync.kind == "events" or not temp_table(con, "rekeyed"):
        return 0
    if not _one(con, "select count(*) from rekeyed"):
        return 0
    snap, unconfirmed = table("snap", sync.name), table("unconfirmed", sync.name)
    keys = _record_keys(sync, "s.ident")
    run_sql(
        con,
        f"""
        create or replace temp table rekeyed_held as
        with old as (
            select k, a, count(*) over (partition by k) as n from (
                select s.k, unnest({keys}) as a from (
                    select k, ident from {snap} semi join rekeyed r on r.k = {snap}.k
                    union all
                    select u.k, max(u.ident) from {unconfirmed} u
                    semi join rekeyed r on r.k = u.k
                    anti join {snap} x on x.k = u.k
                    where u.ident is not null group by u.k
                ) s
            ) where a is not null
        ),
        others as (
            select s.k, unnest({keys}) as a from {snap} s anti join rekeyed r on r.k = s.k
        )
        select o.k from old o join others x on x.a = o.a
        group by o.k, x.k, o.n having count(distinct o.a) = o.n
        """,
    )
    if sync.kind == "relationships" and temp_table(con, "held_by_own_rows"):
        # a relationship sent under its new key (by another identifier of the person): once
        # that key is delivered, the old one is no longer this sync's to delete
        run_sql(
            con,
            f"""
            insert into rekeyed_held
            select h.k from held_by_own_rows h semi join rekeyed r on r.k = h.k
            semi join {snap} s on s.k = h.by;
            drop table held_by_own_rows
            """,
        )
    gone = int(_one(con, "select count(distinct k) from rekeyed_held") or 0)
    if gone:
        with transaction(con):
            run_sql(con, f"delete from {snap} where k in (select k from rekeyed_held)")
            run_sql(con, f"delete from {unconfirmed} where k in (select k from rekeyed_held)")
    run_sql(con, "drop table rekeyed; drop table rekeyed_held")
    return gone


def _person_keys(ident: str) -> str:
    """SQL: a list naming the person of a JSON ``ident`` (`id:`, `cio_id:`, `email:` keys, the
    email lowercased as Customer.io matches it); a null entry joins nothing. Not trimmed:
    read over whole snapshots, and the mapping trims every email it sends; the decisions on
    an email changing hands trim it (:func:`_lower_email`)."""
    return (
        f"['id:' || json_extract_string({ident}, '$.id'), "
        f"'cio_id:' || json_extract_string({ident}, '$.cio_id'), "
        f"'email:' || lower(json_extract_string({ident}, '$.email'))]"
    )


#: SQL: the records of a relationships diff that may hold a relationship leaving under another
#: key (:func:`_still_reached`): the rows sent now, with their keys.
OWN_HOLDERS = "select k, ident from changes"


def _held_by_siblings(
    con: duckdb.DuckDBPyConnection,
    siblings: list[str],
    people_snaps: list[str],
    into: str = "held_by_siblings",
    holders: str | None = None,
) -> None:
    """Add to ``live_keys`` the relationships of ``gone`` another relationships sync still
    holds: same object, and a person sharing an identifier with it, directly or through a
    people sync's record of that person (one sync relating them by `id`, one by email). The
    temp table ``into`` gets their keys (``k``) and the key of a record holding each (``by``).

    ``holders``, when given, is SQL selecting the `k` and `ident` of the records that hold,
    instead of the snapshots ``siblings``: this sync's own rows sent now (:data:`OWN_HOLDERS`)."""
    held = holders or " union all ".join(f"select k, ident from {t}" for t in siblings)
    people = " union all ".join(f"select ident from {t}" for t in people_snaps)
    # an equi-join on each identifier (not a list intersection, which joins every gone row
    # with every person)
    aliases = (
        f"""
        union
        select g.k, unnest(p.keys) as a
        from (select k, unnest(keys) as a from gone_people) g join (
            select unnest(keys) as a, keys
            from (select {_person_keys("ident")} as keys from ({people}))
        ) p on p.a = g.a
        """
        if people
        else ""
    )
    run_sql(
        con,
        f"""
        create or replace temp table gone_people as
        select k, ident, {_person_keys("json_extract(ident, '$.person')")} as keys,
               json_extract(ident, '$.object')::varchar as object
        from gone;
        create or replace temp table gone_aliases as
        select * from (
            select k, unnest(keys) as a from gone_people {aliases}
        ) where a is not null;
        create or replace temp table {into} as
        select distinct a.k, h.k as by from gone_aliases a join (
            select k, unnest({_person_keys("json_extract(ident, '$.person')")}) as a,
                   json_extract(ident, '$.object')::varchar as object
            from ({held})
        ) h on h.a = a.a
        join gone_people o on o.k = a.k and o.object = h.object;
        insert into live_keys
        select distinct {_relationship_key("ident")} from gone_people
        where k in (select k from {into});
        """,
    )


def _hold_relationships(
    con: duckdb.DuckDBPyConnection,
    objects_snaps: list[str],
    people_snaps: list[str],
    unsure_objects: list[str] | None = None,
    unsure_people: list[str] | None = None,
    skipped_objects: list[str] | None = None,
) -> tuple[int, tuple[tuple[str, str], ...]]:
    """Move relationships whose object or person Lockgate has not delivered yet (or may have
    deleted, or a full resync did not send again) out of ``changes`` into ``held``: they are
    not sent and not committed, so a later run sends them once both ends exist (instead of a
    silent failure in Customer.io's activity log, or an object created empty)."""
    conditions = _missing_ends(
        objects_snaps,
        people_snaps,
        "c.object_id",
        "c.person",
        unsure_objects,
        unsure_people,
        skipped_objects,
    )
    if not conditions:
        return 0, ()
    run_sql(
        con,
        f"""
        create or replace temp table held as
        select * from (
            select c.k, coalesce({", ".join(conditions)}) as reason from changes c
            where not c.removed
        ) where reason is not null;
        delete from changes where k in (select k from held);
        """,
    )
    count = int(_one(con, "select count(*) from held") or 0)
    samples = con.execute("select k, reason from held order by k limit 20").fetchall()
    return count, tuple((str(k), str(r)) for k, r in samples)


def _same_json(a: str, b: str) -> str:
    """SQL: the JSON texts ``a`` and ``b`` hold the same value. Numbers compare as numbers, so
    a rule's `to: 5` matches a double or decimal column's `5.0` (and `5.0` → `5` is no
    change); anything else compares as text (a JSON string keeps its quotes, so `"5"` is not
    the number 5). Two nulls are the same."""
    number = "try_cast({} as decimal(38, 10))"
    return f"coalesce({number.format(a)} = {number.format(b)}, {a} is not distinct from {b})"


def _no_value(watched: str) -> str:
    """SQL: the JSON text of a watched value, with `""` (an attribute erased) as `null`."""
    return f"(case when {watched} = '\"\"' then 'null' else {watched} end)"


def _related_people(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    relationship_snaps: list[str],
    people_snaps: list[str],
) -> None:
    """Fill ``oc_related(object_id, person)``: the people the relationships syncs of the
    type relate to each object of this run, each person once.

    Two relationships syncs may relate one person to one object by two identifiers (the app's
    memberships by `id`, the CRM's contacts by email, a people sync delivering both): one
    person in Customer.io, who must hear of the object's transition once. Rows are one person
    when they share an identifier, directly or through a people sync's record of that person
    (as :func:`_held_by_siblings` matches them); of those, the event goes by the `id` (else
    `cio_id`, else email; the least text among equals), the same choice every run, so a
    re-sent event keeps its key. A person no people sync links stays apart."""
    related = " union all ".join(f"select ident from {t}" for t in relationship_snaps)
    type_id = lit(str(sync.object_type_id))
    rank = " ".join(
        f"when starts_with(person, {lit('{' + orjson.dumps(t).decode() + ':')}) then {n}"
        for n, t in enumerate(IDENTIFIER_PRIORITY)
    )
    people = " union all ".join(f"select ident from {t}" for t in people_snaps)
    through_people = (
        f"""
        union
        select o.object_id, o.person, unnest(p.keys) as a
        from own o join (
            select unnest(keys) as a, keys
            from (select {_person_keys("ident")} as keys from ({people}))
        ) p on p.a = o.a
        """
        if people
        else ""
    )
    run_sql(
        con,
        f"""
        create or replace temp table oc_related as
        select distinct json_extract_string(ident, '$.object.object_id') as object_id,
               json_extract(ident, '$.person')::varchar as person
        from ({related})
        where json_extract_string(ident, '$.object.object_type_id') = {type_id}
          and json_extract_string(ident, '$.object.object_id') in (select k from mapped)
        """,
    )
    # only an object related more than once can reach one person twice: without one, the
    # people snapshots are not read
    if not _one(
        con,
        "select count(*) from (select 1 from oc_related group by object_id having count(*) > 1)",
    ):
        return
    run_sql(
        con,
        f"""
        create or replace temp table oc_second as
        with ranked as (
            select *, case {rank} else {len(IDENTIFIER_PRIORITY)} end as rk from oc_related
        ),
        own as (
            select * from (select object_id, person, unnest({_person_keys("person")}) as a
                           from oc_related)
            where a is not null
        ),
        aliases as (
            select * from (select object_id, person, a from own {through_people})
            where a is not null
        )
        select distinct x.object_id, x.person
        from aliases x join aliases y
          on y.object_id = x.object_id and y.a = x.a and y.person <> x.person
        join ranked rx on rx.object_id = x.object_id and rx.person = x.person
        join ranked ry on ry.object_id = y.object_id and ry.person = y.person
        where ry.rk < rx.rk or (ry.rk = rx.rk and ry.person < rx.person);
        delete from oc_related r using oc_second d
        where d.object_id = r.object_id and d.person = r.person;
        """,
    )


def _transitions(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    relationship_snaps: list[str],
    people_snaps: list[str],
    json_text: Iterable[str] = (),
    rezoned: Iterable[str] = (),
) -> str:
    """SQL of the `on_change` events the rows of ``mapped`` not rejected fire and the ledger
    does not hold: (k, pk, ident, rule, bad, head, props), ``bad`` the reject reason of a
    property the event cannot carry (``mapping._on_change_sql``'s ``__ocr_<i>``). Read by
    :func:`_reject_unsendable_events`, then by :func:`_state_change_events`: as rows are
    rejected between the two, the second reads fewer.

    A rule fires for a person already in the snapshot whose watched attribute changed (from
    the rule's `from`, to its `to`, when given) unless the rule's `unless` holds. The event key
    is the record key, the rule, the hash of the previous state and the run that committed
    that state (``_run`` in the snapshot's ident, stamped by :func:`_stamped`). Until the
    snapshot moves past the transition (its update not delivered, a crash) the same
    transition has the same key, so a re-run never fires it twice; a later, separate
    transition from the same state (open → inactive, back to open, inactive again) starts
    from a state committed anew, by another run, and fires again. The hash alone would give
    it the key of the first one, already in the ledger. (Snapshot rows from before ``_run``
    keep the key without it, so an event waiting to be re-sent keeps its key.)

    The dedupe id (a ULID) takes its time from the event's timestamp, which is when the
    transition was first sent: the run's ``now`` the first time, then the time kept in
    ``oc_sent`` (recorded before sending, see ``run._deliver_state_events``) until the event
    is in the ledger. An event Customer.io took without Lockgate hearing so (an answer lost,
    a dead letter, a stop or a crash) is sent again with the same id and timestamp, and
    Customer.io keeps one. (The run's own time each run would give a new id each run.)

    Customer.io events belong to people: an object's transition (an account's `plan` going
    `trial` → `churned`) is sent to every person related to the object, from the snapshots of
    the project's relationships syncs of that type, with the object's id among the properties;
    once to a person two of them relate (:func:`_related_people`, with ``people_snaps``,
    which fills ``oc_related`` here).

    A value and no value are compared as Customer.io holds them: `""` (which erases an
    attribute, and which an earlier Lockgate sent for a model's empty string) is no value, as
    a null is. ``json_text``: the watched attributes whose last committed run sent, and
    watched, the JSON's text (a JSON column staged as text by an earlier Lockgate) where this
    one sends the JSON value (``mapping.json_values``): the text is read as the value it
    holds, so the upgrade's run, which sends every record again, fires no transition.
    """
    json_text, rezoned = set(json_text), set(rezoned)
    snap, ledger = table("snap", sync.name), table("ledger", sync.name)
    run = "coalesce('#' || json_extract_string(s.ident, '$._run'), '')"
    selects = []
    if sync.kind == "objects" and relationship_snaps:
        _related_people(con, sync, relationship_snaps, people_snaps)
    for i, rule in enumerate(sync.on_change):
        path = "'$._watch." + orjson.dumps(rule.attribute).decode().replace("'", "''") + "'"
        old = f"json_extract(s.ident, {path})::varchar"
        new = f"json_extract(m.ident, {path})::varchar"
        if rule.attribute in json_text:
            text = f"json_extract_string(s.ident, {path})"
            old = (
                f"(case when json_type(s.ident, {path}) = 'VARCHAR' and json_valid({text}) "
                f"then json({text})::varchar else {old} end)"
            )
        conditions = [
            "m.reject is null",
            "s.h <> m.h",
            "json_extract(s.ident, '$._watch') is not null",
            f"not {_same_json(_no_value(old), _no_value(new))}",
            f"not m.__ocu_{i}",
        ]
        if rule.attribute in rezoned:
            # `timezone` changed since the last run (`mapping.Rezoned`): the value read in the
            # old zone (`__ocw_<i>`) tells whether the data moved; the new reading alone fires
            # nothing. A record a run of named records (`--only`) sent since then holds the
            # new zone's reading already: the same as the new one, it did not move either
            conditions.append(f"not {_same_json(_no_value(old), _no_value(f'm.__ocw_{i}'))}")
        # as the watched attribute is sent (its `type`): a `to: 2` of a string never matched
        before, after = sync.watched_constant(rule, "from"), sync.watched_constant(rule, "to")
        if before is not None:
            conditions.append(_same_json(old, lit(orjson.dumps(before).decode())))
        if after is not None:
            conditions.append(_same_json(new, lit(orjson.dumps(after).decode())))
        name = lit(orjson.dumps(rule.event).decode())
        if sync.kind == "objects":
            if not relationship_snaps:
                continue
            selects.append(
                f"""
                select m.k || '#{i}#' || s.h || {run} || '#' || r.person as k, m.k as pk,
                       m.ident, {i} as rule, m.__ocr_{i} as bad,
                       {lit(EVENT_HEAD)} || r.person || ',"name":' || {name} as head,
                       {_object_event_props(sync, i, "m")} as props
                from mapped m join {snap} s on s.k = m.k
                join oc_related r on r.object_id = m.k
                where {" and ".join(conditions)}
                """
            )
            continue
        selects.append(
            f"""
            select m.k || '#{i}#' || s.h || {run} as k, m.k as pk, m.ident,
                   {i} as rule, m.__ocr_{i} as bad,
                   {lit(EVENT_HEAD)} || json_extract(m.op, '$.identifiers')::varchar
                   || ',"name":' || {name} as head, m.__ocp_{i} as props
            from mapped m join {snap} s on s.k = m.k
            where {" and ".join(conditions)}
            """
        )
    if not selects:
        selects.append(
            "select null::varchar as k, null::varchar as pk, null::varchar as ident, "
            "null::integer as rule, null::varchar as bad, null::varchar as head, "
            "null::varchar as props where false"
        )
    return f"select e.* from ({' union all '.join(selects)}) e anti join {ledger} l on l.k = e.k"


#: how an `on_change` event's operation starts, before the identifiers of its person
EVENT_HEAD = '"type":"person","action":"event","identifiers":'
#: the bytes of an `on_change` event's operation as sent but for its identifiers, name,
#: timestamp and properties: its id and the JSON around them (:func:`_event_op`)
EVENT_FRAME_BYTES = EVENT_ID_BYTES + len(EVENT_HEAD + ',"name":,"timestamp":,"attributes":}')
#: the most digits (and sign) of an event's timestamp, a 64-bit count of unix seconds
TIMESTAMP_DIGITS = 20


def _object_event_props(sync: SyncConfig, i: int, row: str) -> str:
    """SQL: the properties of an objects sync's `on_change[i]` event, of the ``mapped`` row
    ``row``: the rule's, with the object's type and id."""
    type_id = lit(str(sync.object_type_id))
    return (
        f"json_merge_patch({row}.__ocp_{i}, json_object('object_type_id', {type_id}, "
        f"'object_id', {row}.k))::varchar"
    )


def _event_op(head: str, ts: str, props: str) -> str:
    """SQL: an `on_change` event's operation as delivery sends it, but for its id (which
    :data:`EVENT_ID_BYTES` measures), from the SQL of its ``head``, ``ts`` and ``props``."""
    return f"{head} || ',\"timestamp\":' || {ts} || ',\"attributes\":' || {props} || '}}'"


def _timed(sync: SyncConfig, transitions: str, now: int) -> str:
    """SQL: ``transitions`` (of :func:`_transitions`), each with its timestamp ``ts``: when it
    was first sent (kept in ``oc_sent``), else ``now``."""
    sent = table("oc_sent", sync.name)
    return (
        f"select e.*, coalesce(o.ts, {now})::bigint as ts "
        f"from ({transitions}) e left join {sent} o on o.k = e.k"
    )


def _reject_unsendable_events(
    con: duckdb.DuckDBPyConnection, sync: SyncConfig, transitions: str, now: int, related: bool
) -> None:
    """Reject the rows of ``mapped`` whose `on_change` event (of :func:`_transitions`) would
    carry a property it cannot (NaN or an infinity, a fraction as an integer, text that is no
    number), with the first such rule's reason, as an events sync rejects such a row; or
    whose event as sent (id, identifiers, name, timestamp, properties) is over Customer.io's
    32 KB per operation, which the delivery client refuses, with its size and its largest
    properties, as an events sync gives them. An objects sync's event is measured as sent to
    each person it goes to (``related``: the sync has relationships syncs, whose people are
    in ``oc_related``); the reason gives the largest.

    Sent without the property, the event would be lost for good: the row's update moves the
    snapshot past the transition; refused by the delivery client, it held its person back
    from every run's updates, with no reason on the row. Rejected, the row fires nothing and
    keeps its snapshot, so the transition fires, once, when the row is fixed. A row whose
    property no firing rule reads is sent as it is. Called before the email holds, which then
    know the row gives no email up (a row taking it waits). Only rows holding such a value, or
    properties large enough (a bound from the row: its identifiers, or an objects sync's
    largest related person's), pay for the transitions query here."""
    reached = 0
    if sync.kind == "objects" and related:
        reached = int(_one(con, "select coalesce(max(strlen(person)), 0) from oc_related") or 0)
    unsendable = []
    reasons = []
    for i, rule in enumerate(sync.on_change):
        unsendable.append(f"__ocr_{i} is not null")
        fixed = EVENT_FRAME_BYTES + len(orjson.dumps(rule.event)) + TIMESTAMP_DIGITS
        if sync.kind == "objects":
            if related:
                props = f"strlen({_object_event_props(sync, i, 'mapped')}) + {reached}"
                unsendable.append(f"(not is_new and {props} + {fixed} > {MAX_OP_BYTES})")
        else:
            # `ident` holds the identifiers the event is sent with, and more
            bound = f"strlen(__ocp_{i}) + strlen(ident) + {fixed}"
            unsendable.append(f"(not is_new and {bound} > {MAX_OP_BYTES})")
        names = list(rule.properties)
        fragments = [
            f"{json_key(n)} || json_extract(props, {lit(_json_pointer(n))})::varchar" for n in names
        ]
        reason = oversize_event_reason(
            f"event `{rule.event}` of `on_change[{i}]`",
            "size",
            "props",
            names,
            fragments,
            f"leave them out of `on_change[{i}].properties`",
        )
        reasons.append(f"when {i} then {reason}")
    checked = " or ".join(unsendable)
    if not _one(con, f"select count(*) from mapped where reject is null and ({checked})"):
        return
    op = _event_op("head", "ts", "props")
    run_sql(
        con,
        f"""
        update mapped set reject = b.bad
        from (select pk, first(bad order by rule, size desc) as bad from (
                select pk, rule, size, coalesce(bad, case when size > {MAX_OP_BYTES}
                                                     then case rule {" ".join(reasons)} end
                                                     end) as bad
                from (select *, {EVENT_ID_BYTES} + strlen({op}) as size
                      from ({_timed(sync, transitions, now)})))
              where bad is not null group by pk) b
        where mapped.k = b.pk
        """,
    )


def _json_pointer(name: str) -> str:
    """The JSON pointer of the key ``name`` of an object (RFC 6901: `~` and `/` escaped)."""
    return "/" + name.replace("~", "~0").replace("/", "~1")


def _state_change_events(
    con: duckdb.DuckDBPyConnection, sync: SyncConfig, now: int, transitions: str
) -> int:
    """Fill ``oc_changes`` with the `on_change` events this run fires (``transitions``, of
    :func:`_transitions`), each with its timestamp: when it was first sent (see there)."""
    run_sql(
        con,
        f"""
        create or replace temp table oc_changes as
        select k, {_event_op("head", "ts", "props")} as op,
               null::ubigint as h, ident, true as is_new, false as removed, ts,
               md5_number_lower(k) as lo, md5_number_upper(k) as hi, pk
        from ({_timed(sync, transitions, now)})
        """,
    )
    return int(_one(con, "select count(*) from oc_changes") or 0)


def _stamped(ident: str, run_id: str) -> str:
    """SQL: the JSON ``ident`` with the run's id added (``_run``). The rows of an `on_change`
    sync are mapped with it, so what the run delivers is committed with it and
    :func:`_transitions` keys a transition by the run that committed its previous
    state. Only `on_change` syncs (whose ident ends with its `_watch` object, so it is never
    `{}`) pay for it, in the select that maps the rows (an update of them after took 0.65 s
    at 1M changed rows, this 0.25 s)."""
    return (
        f"left({ident}, length({ident}) - 1) || ',\"_run\":' || "
        f"{lit(orjson.dumps(run_id).decode())} || '}}'"
    )


def _key_model(con: duckdb.DuckDBPyConnection, compiled: Compiled) -> None:
    """The temp table ``keyed``: each staged row's ``__rid``, key and hash (DuckDB computes only
    those two expressions of the mapping)."""
    run_sql(
        con,
        f"create or replace temp table keyed as select __rid, k, src_h from "
        f"({compiled.keyed_model()})",
    )


def _repeats(
    con: duckdb.DuckDBPyConnection, snap: str, snapshot_rows: int, total: int, differing: int
) -> bool:
    """Whether a key repeats among the rows of ``keyed`` (a null key repeats when two rows have
    one), told from what :func:`_todo` found: ``differing`` rows of ``keyed`` without a
    snapshot row of their key and hash (the temp table ``todo``, before anything else is added
    to it), and the snapshot rows no row matches (``unmatched``); ``total`` rows in all. The
    snapshot has one row per key, so a key repeats exactly when (a) two differing rows share
    it, (b) a differing row has the key of a snapshot row that a row matches, or (c) two rows
    match one snapshot row: more rows match than snapshot rows (``snapshot_rows``) are matched.
    Each is a look at the small tables, or at the snapshot for the differing rows of keys
    ``unmatched`` lacks (new keys, or repeats)."""
    matched = total - differing
    if matched > snapshot_rows - int(_one(con, "select count(*) from unmatched") or 0):  # (c)
        return True
    if not differing:
        return False
    if _one(con, "select count(*) from (select k from todo group by k having count(*) > 1)"):
        return True  # (a)
    # (b): a differing row whose key the snapshot has, but not among the rows none matches
    return bool(
        _one(
            con,
            f"""
            select count(*) from (
                select k from todo t anti join unmatched u on u.k = t.k
            ) t semi join {snap} s on s.k = t.k
            """,
        )
    )


def _todo_and_unmatched(con: duckdb.DuckDBPyConnection, snap: str) -> None:
    """The temp tables ``todo`` (the rows of ``keyed`` without a row of their key and hash in
    the snapshot ``snap``) and ``unmatched`` (the keys of the snapshot rows no row of ``keyed``
    matches), from one join."""
    run_sql(
        con,
        f"""
        create or replace temp table todo_gone as
        select m.__rid, m.k, m.src_h, s.k as gone_k, m.present
        from (select __rid, k, src_h, true as present from keyed) m
        full join (select k, h, true as present from {snap}) s on s.k = m.k and s.h = m.src_h
        where m.present is null or s.present is null;
        create or replace temp table todo as
        select __rid, k, src_h from todo_gone where present;
        create or replace temp table unmatched as
        select gone_k as k from todo_gone where present is null;
        drop table todo_gone;
        """,
    )


def _nan_flags_read(con: duckdb.DuckDBPyConnection, compiled: Compiled) -> list[str]:
    """The NaN flags (:data:`lockgate.sources.base.NAN_FLAG_PREFIX`) the staged model has for
    the columns the mapping reads."""
    flags = {nan_flag(c) for c in compiled.columns_used}
    return [str(r[0]) for r in con.execute("describe model").fetchall() if r[0] in flags]


def _todo(
    con: duckdb.DuckDBPyConnection, snap: str, unconfirmed: str, nan_flags: Sequence[str] = ()
) -> tuple[int, int, int, bool, int]:
    """Fill the temp table ``todo`` with the rows of ``keyed`` to map: every row whose (key,
    hash) is not in the snapshot, the rows whose last delivery Customer.io did not confirm
    (``unconfirmed``: dead-lettered, cut off, or in flight when a run was killed; maybe
    applied: sent again even when the row is back at the value the snapshot holds), plus the
    rows of repeated keys that are (all copies of a repeated key are rejected later). Returns
    (rows, rows differing from the snapshot or unconfirmed, rows to map, whether any key
    repeats, rows sent only for being unconfirmed). The unconfirmed keys are looked at only
    when there are any. A row whose ``nan_flags`` (see :func:`_nan_flags_read`) say a column
    the mapping reads held `NaN` is mapped too: read as null, it may hash as the null delivered
    before, and it must be rejected (:func:`lockgate.sync.mapping.nan_checks`), every run, not
    taken for unchanged."""
    # One join of the model's rows with the snapshot finds both what differs (the model's rows
    # without a snapshot row of their key and hash: `todo`) and the snapshot rows no model row
    # matches (`unmatched`), so whether a key repeats is told from those small tables and counts
    # instead of grouping every row of the model by its key (a second pass over the model,
    # 0.1-0.2 s at 1M rows). The snapshot has one row per key.
    snapshot_rows = int(_one(con, f"select count(*) from {snap}") or 0)
    if snapshot_rows:
        _todo_and_unmatched(con, snap)
    else:  # a first run or a full resync: every row differs (not copied a second time)
        run_sql(
            con,
            "create or replace temp table todo as select __rid, k, src_h from keyed; "
            "create or replace temp table unmatched (k varchar)",
        )
    differing = int(_one(con, "select count(*) from todo") or 0)
    total = int(_one(con, "select count(*) from keyed") or 0)
    repeated = _repeats(con, snap, snapshot_rows, total, differing)
    unsure = 0
    if _one(con, f"select count(*) from {unconfirmed}"):
        unsure = int(
            con.execute(
                f"""
                insert into todo
                select __rid, k, src_h from keyed m
                semi join {unconfirmed} u on u.k = m.k
                semi join {snap} s on s.k = m.k and s.h = m.src_h
                """
            ).fetchall()[0][0]
        )
        differing += unsure
    nan = 0
    if nan_flags and snapshot_rows:
        held_nan = " or ".join(q(flag) for flag in nan_flags)
        nan = int(
            con.execute(
                f"""
                insert into todo
                select __rid, k, src_h from keyed m
                semi join (select rowid as r from model where {held_nan}) n on n.r = m.__rid
                semi join {snap} s on s.k = m.k and s.h = m.src_h
                anti join todo t on t.__rid = m.__rid
                """
            ).fetchall()[0][0]
        )
        differing += nan
    if repeated:
        run_sql(
            con,
            f"""
            insert into todo
            select __rid, k, src_h from keyed m
            semi join (select k from keyed group by k having count(*) > 1) d on d.k = m.k
            semi join {snap} s on s.k = m.k and s.h = m.src_h
            {"anti join todo t on t.__rid = m.__rid" if unsure or nan else ""}
            """,
        )
    todo = int(_one(con, "select count(*) from todo") or 0)
    return total, differing, todo, repeated, unsure


def unsure_new(con: duckdb.DuckDBPyConnection, previous: str, unconfirmed: str) -> int:
    """The records whose first delivery was not confirmed (new to the snapshot, sent by a run
    that lost the answer or was killed: ``unconfirmed`` with the identifiers they were sent
    to, not in ``previous``, what was delivered) and whose row has left the model
    (``keyed``): the temp table ``unsure_new``, as
    snapshot rows (no hash: none was confirmed). Customer.io may have created them, so a
    `mirror` run undoes them like the snapshot's records that left. Returns how many; the
    unconfirmed table is read further only when it has such a record."""
    run_sql(
        con,
        "create or replace temp table unsure_new "
        "(k varchar, h ubigint, ident varchar, addr varchar)",
    )
    if not _one(con, f"select count(*) from {unconfirmed} where ident is not null"):
        return 0
    return int(
        con.execute(
            f"""
            insert into unsure_new
            select k, null, ident, {PERSON_ADDRESS} from (
                select u.k, u.ident
                from (select k, max(ident) as ident from {unconfirmed}
                      where ident is not null and action in ('identify', 'add_relationships')
                      group by k) u
                anti join {previous} s on s.k = u.k
                anti join keyed m on m.k = u.k
            )
            """
        ).fetchall()[0][0]
    )


def diff_records(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    compiled: Compiled,
    *,
    objects_snaps: list[str] | None = None,
    people_snaps: list[str] | None = None,
    relationship_snaps: list[str] | None = None,
    unsure_objects: list[str] | None = None,
    unsure_people: list[str] | None = None,
    skipped_objects: list[str] | None = None,
    now: int = 0,
    in_place: InPlace | None = None,
    payloads: bool = True,
    full_resync: bool = False,
    shared_check: bool = False,
    previous_hash: str | None = None,
    run_id: str = "",
    retyped: dict[str, str] | None = None,
    json_text: Iterable[str] | None = None,
    undo_unsure: bool = True,
    rezoned: Iterable[str] = (),
    email_holders: Sequence[tuple[str, str]] = (),
    released_first: Sequence[tuple[str, str]] = (),
    graph_clears: Sequence[tuple[str, str]] = (),
) -> ChangeSet:
    """Diff a people, objects or relationships sync against its snapshot.

    ``email_holders``: for a people sync identified by `id` and `email`, (name, SQL of the
    delivered records) of the destination's other people syncs, whose people keep the emails
    they were delivered with (:func:`_hold_shared_emails`), but for ``released_first``:
    `(email, id)` of the people the identity graph's operations release the email from
    before the rows are sent. ``graph_clears``: those of them whose clear the graph's
    operations send (or a sync of the command sent), which a row of this sync giving that
    email up does not send again (:func:`order_email_moves`).

    In `mirror` mode the records whose first delivery was not confirmed and whose row has left
    are undone too (:func:`unsure_new`), unless ``undo_unsure`` is false (a run of named
    records: the others are not in its model, and have not left it).

    For a relationships sync, ``objects_snaps`` and ``people_snaps`` hold the records of its
    ends, ``unsure_objects`` and ``unsure_people`` those whose delete is unconfirmed, and
    ``skipped_objects`` the objects a full resync did not send again (each left out of the
    others: :func:`present_ends`).

    ``run_id`` is the run's id, kept in the snapshot with the rows of an `on_change` sync
    (:func:`_stamped`).

    ``previous_hash`` is the SQL of the rows' hash under the mapping of the last committed run
    when it differs from this one's: the changed records that hash as the snapshot under it
    are counted as ``remapped``. ``retyped``: the columns whose type changed within its
    family since that run, each with its type then (the rows are hashed with their values as
    they were typed then, see :func:`_remapped`). ``json_text``: the attributes the last run
    sent as the JSON's text that this one sends as JSON values (see
    :func:`_transitions`). ``rezoned``: the watched attributes whose `timezone`
    changed since that run (``mapping.Rezoned``).

    With ``in_place``, the temp table ``keyed`` was built in the source (:meth:`InPlace.key`)
    and ``model`` is filled here with only the rows to map. The rows of ``changes`` mapped
    from the model carry no ``op`` (but those of an `on_change` sync): :func:`with_payloads`
    builds those a caller shows, and delivery builds them as it reads them
    (``deliver.with_payloads_sql``); building and storing every payload was most of a first
    plan's time, its largest table, and ~2 s of a first run's CPU. ``payloads`` is false for
    a plan (no email moves are ordered)."""
    snap = table("snap", sync.name)
    # what was delivered before: a full resync diffs against an empty snapshot (every row is
    # sent again), but the rows that left the model since are still undone in `mirror` mode
    previous = RESYNC_PREVIOUS if full_resync else snap

    if sync.kind == "relationships":
        snap = _live_relationships(con, snap, unsure_objects, unsure_people)
    # Stage 1, cheap: each row's key and the hash of the columns its payload is built from
    # (DuckDB computes only those two expressions of the mapping). Rows whose key and hash
    # match the snapshot are unchanged; only the others are mapped into payloads.
    if in_place is None:
        _key_model(con, compiled)
    unconfirmed = table("unconfirmed", sync.name)
    nan_flags = _nan_flags_read(con, compiled) if in_place is None else []
    total, differing, todo, repeated, unsure = _todo(con, snap, unconfirmed, nan_flags)
    if in_place is not None and not in_place.stage_todo(con, compiled, todo):
        # the model read differently the second time: copy it whole and diff that instead
        in_place.stage_all(con, lambda _: None)
        _key_model(con, compiled)
        total, differing, todo, repeated, unsure = _todo(con, snap, unconfirmed)
        in_place = None
    if in_place is None and todo < total:
        run_sql(
            con,
            """
            create or replace temp table model_todo as
            select * from model where rowid in (select __rid from todo);
            drop table model;
            alter table model_todo rename to model;
            """,
        )
    # the keys to map that the snapshot has: the snapshot is scanned against the (small)
    # todo table instead of the rows to map joined against a hash table of the whole snapshot;
    # with their `ident`, so a people run reads what was delivered to the rows it sends here
    # (:func:`_email_changed`) rather than in a second scan of the whole snapshot
    run_sql(
        con,
        "create or replace temp table known as "
        f"select k, ident from {snap} s semi join todo t on t.k = s.k",
    )
    # every row mapped here is new, changed or a repeated key (rejected below): the rows whose
    # key and hash match the snapshot were left out above
    # the payload of any staged row, by `__rid`: DuckDB pushes a filter on `__rid` down to the
    # staged rows, so a few payloads cost a few rows' work; with the columns delivery reads
    # with it (`deliver.with_payloads_sql`), as ``changes`` has them
    # The payloads are not stored in ``changes``, in a run either: ``changes`` keeps each
    # row's `__rid` and a null `op`, and delivery builds the payloads as it reads them (from
    # the `payloads` view, `deliver.with_payloads_sql`). Stored, 1M people's payloads (~600
    # MB) outgrew the state's memory limit and went to the spill file and back: ~2 s of CPU of
    # a first full sync. `on_change` rules read each row's identifiers from its payload, and
    # stamp them: kept.
    columns = "c.*" if sync.on_change else "c.* exclude (op), null::varchar as op"
    if sync.on_change and run_id:
        columns = f"c.* replace ({_stamped('c.ident', run_id)} as ident)"

    def mapped(rows: str) -> str:
        return f"""
        create or replace temp table mapped as
        select {columns}, c.src_h as h, n.k is null as is_new, false as removed
        from ({rows}) c left join known n on n.k = c.k
        """

    if 0 < todo <= BUILT_ROWS:
        # A few rows to map (most runs after the first): the mapping's SELECT runs once, into
        # ``built``, and ``mapped`` and the `payloads` view read that table. The SELECT takes
        # ~10-20 ms to bind, and the view binds it when made and again at each read (the
        # plan's samples, delivery): three binds of it were most of a small run's diff
        run_sql(con, f"create or replace temp table {BUILT} as {compiled.select}")
        run_sql(
            con,
            "create or replace temp view payloads as "
            f"select __rid, op, k, src_h as h, ident from {BUILT}",
        )
        run_sql(con, mapped(f"select * from {BUILT}"))
    else:
        # With no row to map, no row of ``changes`` reads a payload: an empty stand-in of the
        # same columns, which DuckDB binds in a fraction of the time the mapping's SELECT takes
        # (a run or plan with nothing changed, the most frequent of all)
        run_sql(
            con,
            "create or replace temp view payloads as "
            + (
                f"select __rid, op, k, src_h as h, ident from ({compiled.select})"
                if todo
                else "select null::bigint as __rid, null::varchar as op, null::varchar as k, "
                "null::ubigint as h, null::varchar as ident where false"
            ),
        )
        _map(
            con,
            mapped(compiled.select),
            empty=not todo and not sync.on_change,
        )
    # a key that appears more than once is ambiguous: every copy is rejected (`keyed` has the
    # same keys as every row mapped here, so without a repeat there it is skipped)
    if repeated:
        run_sql(
            con,
            f"""
            update mapped set reject = coalesce(reject, 'key `' || {quoted("d.k")} || '` appears '
                                                || d.n || ' times in the model')
            from (select k, count(*) as n from mapped group by k having count(*) > 1) d
            where mapped.k = d.k
            """,
        )
    # rows taking an email another person of the model holds, or takes in this run, wait; a
    # row held back keeps the email it was delivered with, which a row taking it waits for
    run_sql(con, f"create or replace temp table {EMAIL_WAITS} {EMAIL_WAITS_COLUMNS}")
    run_sql(con, f"create or replace temp table {EMAIL_HOLDS} (k varchar)")
    transitions = ""
    if sync.on_change:
        transitions = _transitions(
            con, sync, relationship_snaps or [], people_snaps or [], json_text or (), rezoned
        )
        _reject_unsendable_events(con, sync, transitions, now, bool(relationship_snaps))
    # with no row to map there is no row to hold back
    while todo and _hold_shared_emails(con, sync, email_holders, released_first, previous):
        pass
    state_events = _state_change_events(con, sync, now, transitions) if transitions else 0
    # a held row of a person already delivered still sends its other changes (not its email)
    partial = _held_rest(con, sync, compiled, full_resync, unconfirmed)
    rejected, samples, reasons = _rejected(con)
    valid = total - todo + int(_one(con, "select count(*) from mapped where reject is null") or 0)
    # the identifiers of the rejected rows: still in the model, they still reach their
    # person (:func:`_still_reached`)
    run_sql(
        con,
        "create or replace temp table rejected_idents as "
        f"select k, {'addr, ' if _takes_emails(sync) else ''}ident from mapped "
        "where reject is not null and ident is not null",
    )
    if sync.kind == "relationships":
        _rejected_unaddressed(con)
    # what is left of `mapped` is exactly what to send: keep it as `changes` (a rename, not a
    # copy of every payload, which took a second at 1M rows)
    run_sql(
        con,
        """
        delete from mapped where reject is not null;
        drop table if exists changes;
        alter table mapped rename to changes;
        """,
    )
    if partial:
        # sent as built above: the payload without the email, the identifiers it was
        # delivered with, the hash of the row as if it still had its old email
        run_sql(
            con,
            f"""
            insert into changes by name
            select r.* replace (p.op as op, p.ident as ident, p.h as h, null as reject,
                                p.n_set as n_set, p.n_echo as n_echo, false as is_new)
            from {HELD_REST_ROWS} r join {HELD_REST} p on p.k = r.k
            """,
        )
        run_sql(con, f"drop table {HELD_REST_ROWS}")
    # a relationship's after its hold: one whose end is not delivered (or may be gone) waits
    nulls_only = (
        0 if sync.kind == "relationships" else _nothing_to_send(con, sync, unconfirmed, snap)
    )
    shared, shared_samples = _shared_people(con, snap) if shared_check else (0, ())
    held = 0
    held_samples: tuple[tuple[str, str], ...] = ()
    if sync.kind == "relationships":
        held, held_samples = _hold_relationships(
            con,
            objects_snaps or [],
            people_snaps or [],
            unsure_objects,
            unsure_people,
            skipped_objects,
        )
        nulls_only = _nothing_to_send(con, sync, unconfirmed, snap)
        run_sql(con, f"drop table if exists {RESYNC_HELD}")
        if full_resync and held:
            # held for an end that left its model (cleared, not deleted), or for an object the
            # objects sync's resync did not send again (its row rejected): a relationship
            # delivered before stays delivered through the resync's reset
            # (:func:`run._reset_snapshot`), so that it is deleted if it leaves the model, but
            # as stale (``STALE_HASH``): sent again, whatever its row holds, once both ends
            # are. The resync cannot tell that Customer.io still holds it: the end may have
            # been deleted by hand (the case a full resync is run for), with its
            # relationships, and comes back without them when the objects (people) sync
            # sends it again. One whose end may be gone is forgotten, as in any run
            gone = _ends_gone(unsure_objects, unsure_people)
            stale = f"s.* replace ({STALE_HASH}::ubigint as h)"
            run_sql(
                con,
                f"""
                create temp table {RESYNC_HELD} as
                select {stale} from {previous} s semi join held h on h.k = s.k
                {f"where not {gone}" if gone else ""}
                """,
            )
    if repeated or full_resync:
        removed = int(
            _one(con, f"select count(*) from {previous} s anti join keyed m on m.k = s.k") or 0
        )
    else:
        # keys are distinct: the snapshot keys still in the model are those of the rows whose
        # (key, hash) matched plus the differing rows whose key is there (no second join of
        # the whole model against the whole snapshot)
        kept = total - differing + int(_one(con, "select count(*) from known") or 0)
        removed = int(_one(con, f"select count(*) from {snap}") or 0) - kept
    removed_sent = 0
    # tables of this sync's diff, not of the last sync's diffed on this connection
    run_sql(con, "create or replace temp table rekeyed (k varchar)")
    run_sql(con, f"create or replace temp table {KEPT_UNADDRESSED} (k varchar)")
    if sync.effective_mode == "mirror" and undo_unsure:
        unsure_gone = unsure_new(con, previous, unconfirmed)
        if unsure_gone:  # undone as the snapshot's records that left are
            previous = f"(select * from {previous} union all by name select * from unsure_new)"
            removed += unsure_gone
    if sync.effective_mode == "mirror" and removed:
        removed_sent = _mirror_removals(
            con, sync, previous, relationship_snaps or [], people_snaps or []
        )
    elif removed:  # nothing is sent for them, but `max_removed` counts those really gone
        _still_reached(con, sync, previous)
    rekeyed = int(_one(con, "select count(*) from rekeyed") or 0) if removed else 0
    row = con.execute(
        """
        select count(*) filter (where not removed), count(*) filter (where is_new),
               coalesce(sum(n_set), 0), coalesce(sum(n_cleared), 0)
        from changes
        """
    ).fetchall()[0]
    sent_rows, new, attrs, cleared = (int(x or 0) for x in row)
    email_releases = 0
    if sync.kind == "people":
        # the rows that take an email another row gives up go after it; nobody gives one up
        # when every row sent is new. A plan orders them too: it shows the emails released
        order_email_moves(
            con,
            sync,
            all_new=sent_rows == new and not full_resync,
            removed=bool(removed_sent),
            left=bool(removed),
            known=True,
            graph_clears=graph_clears,
        )
        if email_clears(con):
            email_releases = int(_one(con, "select count(*) from email_clears") or 0)
    remapped = 0
    if previous_hash and not full_resync and sent_rows > new:
        remapped = _remapped(con, snap, previous_hash, retyped or {})
    if unsure:  # of those added to `todo`, the ones still to send (not rejected since)
        unsure = int(
            _one(
                con,
                f"select count(*) from changes c semi join {unconfirmed} u on u.k = c.k "
                f"semi join {snap} s on s.k = c.k and s.h = c.h where not c.removed",
            )
            or 0
        )
    return ChangeSet(
        kind=sync.kind,
        rows=total,
        rows_copied=todo if in_place is not None else total,
        rejected=rejected,
        to_send=sent_rows + removed_sent,
        new=new,
        changed=sent_rows - new,
        unchanged=valid + partial - sent_rows - held,
        nulls_only=nulls_only,
        removed=removed,
        removed_sent=removed_sent,
        rekeyed=rekeyed,
        held=held,
        remapped=remapped,
        unconfirmed=unsure,
        state_events=state_events,
        email_releases=email_releases,
        email_held_sent=partial,
        shared_person=shared,
        shared_samples=shared_samples,
        attributes_set=attrs,
        attributes_cleared=cleared,
        rejected_samples=samples,
        rejected_reasons=reasons,
        held_samples=held_samples,
    )


#: the identifiers a people or objects record's ``ident`` may hold (not an `on_change` sync's
#: `_watch` and `_run`, which change while the record's identifiers do not)
_IDENT_KEYS = (*IDENTIFIER_PRIORITY, "object_type_id", "object_id")

NULLS_ONLY = "nulls_only"
"""The temp table of the rows :func:`_nothing_to_send` takes out of ``changes``."""

STALE_HASH = 0
"""The hash :func:`mark_stale` gives a snapshot record a run did not send its new constants
to: no row hashes to it, so the record is found changed (as it was, under the new mapping)
and :func:`_nothing_to_send` does not take it for one holding the constants."""


def mark_stale(store: StateStore, sync: SyncConfig) -> int:
    """At the commit of a run whose mapping has a constant the last recorded one did not send
    alike (``mapping.changed_constants``), before the journal is folded: give the records of
    the snapshot this run did not journal (rejected, held, left the model) the hash
    :data:`STALE_HASH`. Their last delivery did not carry the new constant, so a later row of
    theirs gone to nulls is sent (with it), not taken for one with nothing to send. Every row
    hashes anew under such a mapping, so no record unchanged since is among them. A record
    whose `on_change` event this run fired is left as it is: the event's key holds the
    snapshot's hash, and one not delivered is sent again under the same key
    (:func:`_transitions`). Returns how many."""
    snap, journal = table("snap", sync.name), table("journal", sync.name)
    fired = (
        " and k not in (select pk from oc_changes where pk is not null)"
        if sync.on_change and temp_table(store.con, "oc_changes")
        else ""
    )
    rows = run_sql(
        store.con,
        f"update {snap} set h = {STALE_HASH} where h <> {STALE_HASH} "
        f"and not exists (select 1 from {journal} j where j.k = {snap}.k){fired}",
    )
    return int(rows[0][0])


def _nothing_to_send(
    con: duckdb.DuckDBPyConnection, sync: SyncConfig, unconfirmed: str, snap: str
) -> int:
    """Move from ``changes`` to the temp table ``nulls_only`` the rows of a people, objects
    or relationships sync that have nothing to send: changed (their hash differs), but their
    payload carries no attribute value the record does not hold already (``n_set = n_echo``:
    every attribute null under `on_null: skip`, nothing cleared, no default; at most the
    email identifier repeated and constants as the last run sent them, `Fields.kept`), to the
    identifiers that were delivered to (a relationship: the same person and object). Such an
    identify (or `add_relationships`) changes nothing in Customer.io. The run records them as
    delivered (:func:`commit_nulls_only`), so they are not found changed again. Always sent: a
    new record (the identify creates it), one whose identifiers changed (an email taken or
    given up), one whose last delivery was not confirmed (a delete or a clear may have
    applied), one the run that changed a constant did not send to (:func:`mark_stale`: it
    may not hold the constants); a relationship held for an end (:func:`_hold_relationships`,
    which runs first) is not here. Returns how many."""
    run_sql(con, f"drop table if exists {NULLS_ONLY}")
    if sync.kind not in ("people", "objects", "relationships"):
        return 0
    if not _one(con, "select count(*) from (from changes limit 1)"):
        return 0  # a run with nothing changed: binding the statement below costs ~2 ms
    if sync.kind == "relationships":  # the person's identifiers and the object's, as JSON text
        same = "c.ident = n.ident"
    else:
        same = " and ".join(
            f"json_extract_string(c.ident, '$.{k}') is not distinct from "
            f"json_extract_string(n.ident, '$.{k}')"
            for k in _IDENT_KEYS
        )
    run_sql(
        con,
        f"""
        create temp table {NULLS_ONLY} as
        select c.* from changes c join known n on n.k = c.k
        anti join (select k from {unconfirmed}) u on u.k = c.k
        anti join (select k from {snap} where h = {STALE_HASH}) z on z.k = c.k
        where c.n_set = c.n_echo and not c.is_new and not c.removed and {same}
        """,
    )
    moved = int(_one(con, f"select count(*) from {NULLS_ONLY}") or 0)
    if moved:
        run_sql(con, f"delete from changes where k in (select k from {NULLS_ONLY})")
    return moved


def commit_nulls_only(store: StateStore, sync: str, run_id: str) -> int:
    """Journal the rows of ``nulls_only`` (:func:`_nothing_to_send`) as delivered by the run
    ``run_id``: its commit folds them into the snapshot with the delivered records. Returns
    how many."""
    if not temp_table(store.con, NULLS_ONLY):
        return 0
    rows = run_sql(
        store.con,
        f"insert into {table('journal', sync)} (run_id, k, h, ident, removed) "
        f"select ?, k, h, ident, false from {NULLS_ONLY}",
        [run_id],
    )
    run_sql(store.con, f"drop table {NULLS_ONLY}")  # not another sync's, on a session's store
    return int(rows[0][0])


#: the rows :func:`_hold_shared_emails` held back for a person of another people sync: the
#: row's key, the email (lower case, trimmed), that sync and the key of its record holding it
EMAIL_WAITS = "email_waits"
EMAIL_WAITS_COLUMNS = "(k varchar, email varchar, sync varchar, holder varchar)"


#: the keys :func:`_hold_shared_emails` held back in this diff (of this sync or for another)
EMAIL_HOLDS = "email_holds"
#: the rows :func:`_held_rest` sends without their email: (k, op, ident, h, n_set, n_echo)
HELD_REST = "held_rest"
#: those rows as the mapping made them (every column of ``mapped``), until ``changes`` exists
HELD_REST_ROWS = "held_rest_rows"

HELD_REST_NOTE = "; meanwhile its other changes are sent, without the email"


def _held_rest(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    compiled: Compiled,
    full_resync: bool,
    unconfirmed: str,
) -> int:
    """Of the rows :func:`_hold_shared_emails` held back (:data:`EMAIL_HOLDS`), those of a
    person already delivered (the snapshot's record addresses them by `id`, else `cio_id`, the
    row's other identifiers as delivered) whose other changes can go now: their payload
    without the email (not in the identifiers, not in the attributes), to the identifiers they
    were delivered with (nor any other attribute of the email column: those wait with it).
    Kept in :data:`HELD_REST` with the snapshot's ``ident`` (the old
    email: the row still takes its email, so the next run holds or sends it again) and, as
    ``h``, the row's hash with the email column as last delivered: the record as Customer.io
    then holds it, so a later run that finds the row as it is sends nothing until the email
    is free (the email read back in the column's type, :data:`STALE_HASH` if none is found).
    A row whose only change is its email sends nothing (its hash so is the snapshot's), unless
    its last delivery was not confirmed (``unconfirmed``: a rest sent by a killed run may have
    applied, and the row gone back since is sent again, as :func:`_todo` has it); nor
    does a new person (an identify without the email would create a person of no email, which
    the row's email later reaches only by an update of that person), an `on_change` sync's
    row (its events follow the whole row), nor one keyed by the identity graph. The rows stay
    rejected, their reason saying so (:data:`HELD_REST_NOTE`), and their mapped rows are
    copied to :data:`HELD_REST_ROWS`. Returns how many."""
    run_sql(con, f"drop table if exists {HELD_REST}; drop table if exists {HELD_REST_ROWS}")
    if (
        sync.kind != "people"
        or sync.on_change
        or sync.keyed_by_graph
        or not temp_table(con, EMAIL_HOLDS)
        or not _one(con, f"select count(*) from {EMAIL_HOLDS}")
    ):
        return 0
    delivered = _delivered(con, sync.name)
    email_column = sync.identify_by["email"]
    same = " and ".join(
        f"json_extract_string(m.ident, '$.{k}') is not distinct from "
        f"json_extract_string(s.ident, '$.{k}')"
        for k in _IDENT_KEYS
        if k != "email"
    )
    run_sql(
        con,
        f"""
        create or replace temp table {HELD_REST_ROWS} as
        select m.*, s.ident as was_ident, s.h as was_h,
               json_extract_string(s.ident, '$.email') as was_email,
               m.k in (select k from {unconfirmed}) as unsure
        from mapped m
        semi join (select distinct k from {EMAIL_HOLDS}) e on e.k = m.k
        join {delivered} s on s.k = m.k
        where {_addressed_by("s.ident")} is not null and m.addr = {_addressed_by("s.ident")}
          and {same} and m.__rid is not null
        """,
    )
    if not _one(con, f"select count(*) from {HELD_REST_ROWS}"):
        run_sql(con, f"drop table {HELD_REST_ROWS}")
        return 0
    # the row's hash as the mapping computes it, the email column holding the email last
    # delivered: the snapshot's email is the column's text (trimmed), read back in the
    # column's type (JSON, BLOB...) so that it hashes as a value of the column does. A run
    # that finds the row as it is computes the same hash (it depends on the row and that
    # email alone), and one whose other columns changed another; a text the type does not
    # take back hashes as a null email, alike in each run
    found = con.execute(
        "select column_type from (describe model) where column_name = ?", [email_column]
    ).fetchall()
    column_type = str(found[0][0]) if found else ""
    was_email = "r.was_email"
    if column_type.upper() == "JSON":
        # a JSON email is sent as the text it holds (a JSON string's value): back to that
        # string, as the column holds it
        was_email = "to_json(r.was_email)"
    elif column_type.upper() != "VARCHAR":
        try:
            con.execute(f"select try_cast(null::varchar as {column_type})").fetchall()
            was_email = f"try_cast(r.was_email as {column_type})"
        except duckdb.Error:  # a type DuckDB does not read back by its name
            was_email = "null"
    relation = (
        f"(select model.* replace ({was_email} as {q(email_column)}) from model "
        f"join (select __rid, was_email from {HELD_REST_ROWS}) r on r.__rid = model.rowid)"
    )
    hashes = (
        f"select k, src_h as h from ({compiled.keyed_select(relation)})"
        if found
        else f"select k, {STALE_HASH}::ubigint as h from {HELD_REST_ROWS}"
    )
    rows = con.execute(
        f"""
        select r.k, p.op, r.was_ident, coalesce(x.h, {STALE_HASH}), r.was_h, r.n_set, r.n_echo,
               r.unsure
        from {HELD_REST_ROWS} r
        join payloads p on p.__rid = r.__rid
        left join ({hashes}) x on x.k = r.k
        """
    ).fetchall()
    of_email = [
        name
        for name, spec in sync.attributes.items()
        if name != "email" and spec.value is None and (spec.column or name) == email_column
    ]
    rest: list[tuple[Any, ...]] = []
    for k, op, ident, h, was_h, n_set, n_echo, unsure in rows:
        if h == was_h and not full_resync and not unsure:
            continue  # only the email changed: nothing else to send
        try:
            payload = orjson.loads(op)
        except orjson.JSONDecodeError:  # a value orjson does not read back (held whole)
            continue
        payload.get("identifiers", {}).pop("email", None)
        attributes = payload.get("attributes", {})
        echoed = int(attributes.pop("email", None) is not None)
        # the other attributes of the email column wait with it: the hash holds them as the
        # email last delivered gives them, as Customer.io still does
        dropped = echoed + sum(attributes.pop(a, None) is not None for a in of_email)
        if not set(attributes) - {"_update"}:
            continue
        rest.append((k, orjson.dumps(payload).decode(), ident, h, n_set - dropped, n_echo - echoed))
    run_sql(
        con,
        f"create temp table {HELD_REST} "
        "(k varchar, op varchar, ident varchar, h ubigint, n_set integer, n_echo integer)",
    )
    if not rest:
        run_sql(con, f"drop table {HELD_REST_ROWS}")
        return 0
    con.executemany(f"insert into {HELD_REST} values (?, ?, ?, ?, ?, ?)", rest)
    run_sql(
        con,
        f"""
        update mapped set reject = mapped.reject || {lit(HELD_REST_NOTE)}
        from {HELD_REST} p where mapped.k = p.k;
        create or replace temp table {HELD_REST_ROWS} as
        select * exclude (was_ident, was_h, was_email, unsure) from {HELD_REST_ROWS}
        semi join {HELD_REST} p on p.k = {HELD_REST_ROWS}.k
        """,
    )
    return len(rest)


def waits_freed(
    con: duckdb.DuckDBPyConnection,
    waits: str,
    snapshot: Callable[[str], str],
    kept: Callable[[str], str],
) -> int:
    """Of the rows held back for a person of another sync (``waits``, a table like
    :data:`EMAIL_WAITS`), how many that sync no longer shows holding the email: neither its
    snapshot (``snapshot(name)``: SQL of it) gives the person that email, nor does it keep it
    for them after their row let go of it (``kept(name)``: SQL of its ``emails_kept__S``,
    while the snapshot shows them no other email, as :func:`_hold_shared_emails` reads it).
    It has moved them on, deleted or forgotten them since; a person whose email went null
    there in the meantime still holds it in Customer.io, and frees nothing."""
    syncs = [r[0] for r in con.execute(f"select distinct sync from {waits}").fetchall()]
    if not syncs:
        return 0
    freed = " union all ".join(
        f"""
        select w.k from {waits} w
        where w.sync = {lit(name)} and not exists (
            select 1 from ({snapshot(name)}) s
            where s.k = w.holder and {_lower_email("s.ident")} = w.email
        ) and not exists (
            select 1 from ({kept(name)}) e left join ({snapshot(name)}) s on s.k = e.k
            where e.k = w.holder and {email_match("e.email")} = w.email
              and json_extract_string(s.ident, '$.email') is null
        )
        """
        for name in syncs
    )
    return int(_one(con, f"select count(*) from ({freed})") or 0)


def _addressed_by(ident: str) -> str:
    """SQL: the person a JSON ``ident`` addresses by `id` (``id:…``), else by `cio_id`
    (``cio_id:…``); null for a record addressed by its email alone."""
    return (
        f"coalesce('id:' || json_extract_string({ident}, '$.id'), "
        f"'cio_id:' || json_extract_string({ident}, '$.cio_id'))"
    )


def _hold_shared_emails(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    others: Sequence[tuple[str, str]] = (),
    released_first: Sequence[tuple[str, str]] = (),
    previous: str | None = None,
) -> int:
    """Reject the rows of ``mapped`` that would give an email to a person while another person
    of the model keeps it or takes it in this run, or another people sync of the destination
    delivered it to another person (``others``); returns how many.

    Customer.io matches an email in any case (and trimmed): an identify of a new `id` whose
    email another person holds renames that person (the first row's person is given the
    second row's `id`), and one of an `id` it has is dropped silently. Either way the row
    would be recorded as delivered and not sent again while unchanged: a person lost, or
    stale. So, of the rows of a people sync identified by `email` and an `id` (or `cio_id`)
    that take an email they were not delivered with (new rows, changed emails: ``known``, or
    the whole snapshot when the diff's is hidden, says what they had; through the identity
    graph, also rows delivered with it to another person), one person gets it:
    the one a row still in the model (``keyed``) was delivered with it and does not give up
    in this run (:func:`_delivered`), else the person (``addr``) of the lowest key taking it.
    The rows of other persons are rejected naming the row that has it: rejected rows are
    mapped again by every run, so they are sent once the model is deduped. A rejected row
    gives nothing up: it holds the email it was delivered with, so the caller calls again
    until no row is rejected (a row taking the email of a row held back waits too). An email a row
    gives up in this run is not shared: its taker is sent after it
    (:func:`order_email_moves`). A row addressed by its email alone (no `id`, `cio_id`)
    reaches the person who holds it, as any row of one person does (:func:`_shared_people`).

    ``others``: (sync name, SQL of its delivered records) of the other people syncs of the
    destination. Their snapshot says which person Customer.io gives an email to, as far as
    Lockgate knows: a row taking an email one of them was delivered with by another person
    (`id`, else `cio_id`) waits too, naming that sync and key, until that sync gives the
    person another email (its rows are not this run's to release: the other sync's model may
    still give them that email). So does a row taking an email another sync keeps for a person
    whose row let go of it (its ``emails_kept__S``, :func:`keep_emails`) while that sync's
    snapshot shows the person no email: that sync releases it only for a row of its own, so
    the row waits until the person is given another email or deleted. A rejected row is
    mapped again by the next run, which sends it once the other sync has moved its person on
    (in a command of several syncs, a follow-up run after the others:
    ``run.Session.follow_up``); the rows held back so are kept in :data:`EMAIL_WAITS`. A
    person whom a snapshot (this sync's or another's) or a row of this run gives another
    email holds nothing back this way: which of them is current is not known. Nor does a
    person the identity graph's operations release the email from before the rows
    (``released_first``, `(email, id)`: a retired user's family email, which another sync
    delivered to them with a row of their profile then), nor one this sync delivered the
    email to whose row, sent in this run, has no email or another now, or whose row left the
    model (``previous``: the snapshot the diff compares with) while no row of this run
    reaches them: this run releases it from them first (:func:`order_email_moves`).

    A run without new rows or changed emails pays one join of its rows to map with
    ``known``; one with new rows reads the emails of the snapshot too (of a non-empty one), and of
    the other syncs' (a first run of 500k rows beside another sync of 500k: ~0.4 s more)."""
    if sync.kind != "people" or "email" not in sync.identify_by:
        return 0
    if not {"id", "user_id", "cio_id"} & set(sync.identify_by):
        return 0
    # the identity graph gives each email to one profile (its limits refuse the others,
    # `contested_email`), and the rows of profiles it merges share one on purpose: the merge
    # is sent before them. Only what other syncs delivered holds its rows back
    graph = sync.keyed_by_graph
    if graph and not others:
        return 0
    hidden = temp_table(con, f"snap__{sync.name}")  # `--only`, `--full-resync`
    delivered = _delivered(con, sync.name)

    # trimmed as the mapping trims (only a text that starts or ends with a character other
    # than printable ASCII pays for `trim`: a first run's 1M emails, 0.08 s each time)
    email_text = email_match
    email = _lower_email

    # the rows taking an email: new to the snapshot, or delivered with another email (a row
    # new to a hidden snapshot may have been delivered: the whole one says); the new rows
    # are not joined (a left join of a first run's 1M rows to `known` took 1.3 s more).
    # Through the graph, also a row delivered with the email to another person: the graph
    # gave a lead's row another profile's `id`, while another sync's person keeps the email
    row = "m.reject is null and not starts_with(m.addr, 'email:')"
    taken = "email is distinct from had"
    had_person = "null::varchar"
    if graph:
        taken += " or person is distinct from had_person"
        had_person = _addressed_by("s.ident")
    if hidden:
        takers = f"""
            select k, email, person from (
                select m.k, {email("m.ident")} as email, m.addr as person,
                       {email("s.ident")} as had, {had_person} as had_person
                from mapped m left join {delivered} s on s.k = m.k where {row}
            ) where email is not null and ({taken})
            """
    else:
        takers = f"""
            select * from (
                select m.k, {email("m.ident")} as email, m.addr as person
                from mapped m where {row} and m.is_new
            ) where email is not null
            union all
            select k, email, person from (
                select m.k, {email("m.ident")} as email, m.addr as person,
                       {email("s.ident")} as had, {had_person} as had_person
                from mapped m join known s on s.k = m.k where {row} and not m.is_new
            ) where email is not null and ({taken})
            """
    own = not graph and _one(con, f"select count(*) from (select 1 from {delivered} limit 1)")
    anyone = own or any(
        _one(con, f"select count(*) from (select 1 from {t} limit 1)")
        for name, snap in others
        for t in (snap, table("emails_kept", name))
    )
    # grouped by the email's hash, not its text (a first run's 1M rows: 1.4 → 0.9 s of CPU);
    # two emails whose hashes meet only send the run on to the exact look below. First only
    # counted (no two rows take one email: no two people do), which holds no person's text
    # per email (0.45 → 0.35 s at 1M); two rows of one email are looked at by their people
    if not anyone and (
        graph
        or not all(
            _one(
                con,
                f"select count(*) from (select hash(email) from ({takers}) group by 1 "
                f"having {two})",
            )
            for two in ("count(*) > 1", "min(person) <> max(person)")
        )
    ):
        return 0  # nobody holds an email yet, and no two people of this run take one
    run_sql(con, f"create or replace temp table email_takers as {takers}")
    if not _one(con, "select count(*) from email_takers"):
        return 0
    # the people delivered with those emails whose rows are still in the model and keep it
    holders = (
        "select null::varchar as k, null::varchar as email, null::varchar as person, "
        "null::varchar as sync, false as kept"
    )
    if own:
        holders = f"""
            select s.k, {email("s.ident")} as email,
                   {_addressed_by("s.ident")} as person,
                   null::varchar as sync, false as kept
            from {delivered} s
            semi join keyed m on m.k = s.k
            semi join (select distinct email from email_takers) t
                on t.email = {email("s.ident")}
            anti join (
                select k, {email("ident")} as email from mapped where reject is null
            ) c on c.k = s.k and c.email is distinct from {email("s.ident")}
            """
    # the people other syncs delivered those emails to: what Customer.io holds as far as
    # Lockgate knows (a person of both syncs, by the same `id`, is no other person)
    for name, snap in others:
        holders += f"""
        union all
        select s.k, {email("s.ident")} as email,
               {_addressed_by("s.ident")} as person,
               {lit(name)} as sync, false as kept
        from {snap} s
        semi join (select distinct email from email_takers) t
            on t.email = {email("s.ident")}
        """
        # and the people it keeps an email for after their row let go of it (its email went
        # null under `on_null: skip`, or the row left a `mirror` sync that clears): Customer.io
        # still gives them the email, as long as that sync shows them no other
        # (:func:`keep_emails`; its own rows taking it release it first)
        kept = table("emails_kept", name)
        if _one(con, f"select count(*) from (select 1 from {kept} limit 1)"):
            holders += f"""
            union all
            select h.k, {email_text("h.email")} as email,
                   {_addressed_by("h.ident")} as person,
                   {lit(name)} as sync, true as kept
            from {kept} h
            semi join (select distinct email from email_takers) t
                on t.email = {email_text("h.email")}
            left join {snap} s on s.k = h.k
            where json_extract_string(s.ident, '$.email') is null
            """
    column = sync.model_identifiers.get("email", sync.identify_by["email"])
    reason = (
        f"{lit(f'column `{column}`: `')} || {quoted('h.shown')} || "
        f"{lit('` is also the email of key `')} || {quoted('h.k_w')} || "
        + lit(
            "`, another person: Customer.io would merge them and lose one, so this row waits "
            f"until one person of sync `{sync.name}` has it; dedupe the email in the model, or "
            "add an `identity:` section"
        )
    )
    elsewhere = (
        f"{lit(f'column `{column}`: `')} || {quoted('h.shown')} || "
        f"{lit('` is the email of key `')} || {quoted('h.k_w')} || "
        f"{lit('` of people sync `')} || h.sync_w || "
        + lit(
            "`, another person, as Lockgate last delivered it: Customer.io would drop this "
            "row's update (or give that person this row's id), so the row waits until that "
            "sync gives its person another email, and the next run of this sync sends it; "
            "if both models mean to give it, dedupe the email between them"
        )
    )
    kept_elsewhere = (
        f"{lit(f'column `{column}`: `')} || {quoted('h.shown')} || "
        f"{lit('` is the email key `')} || {quoted('h.k_w')} || "
        f"{lit('` of people sync `')} || h.sync_w || "
        + lit(
            "` keeps in Customer.io after its row let go of it (the row's email went null, or "
            "the row left the model), another person: Customer.io would drop this row's update "
            "(or give that person this row's id), so the row waits until that sync gives its "
            "person another email or deletes them, and the next run of this sync sends it"
        )
    )
    run_sql(
        con,
        f"create or replace temp table email_holders as "
        f"select * from ({holders}) where person is not null",
    )
    if released_first and others:
        # people the graph's operations give the email up from, before this run's rows
        gone = " union all ".join(
            f"select {lit(e.lower())} as email, {lit('id:' + p)} as person"
            for e, p in released_first
        )
        run_sql(
            con,
            f"delete from email_holders h where h.sync is not null "
            f"and exists (select 1 from ({gone}) g "
            "where g.email = h.email and g.person = h.person)",
        )
    if others and _one(con, "select count(*) from email_holders where sync is not null"):
        # people this sync delivered the email to whose row, sent in this run, has no email
        # or another now: this run releases it from them before the rows taking it
        # (:func:`order_email_moves`), whatever the other syncs delivered to them (a lead's
        # row that left with the email of a user who comes back without it)
        run_sql(
            con,
            f"""
            delete from email_holders x
            where x.sync is not null and exists (
                select 1 from {delivered} s
                join mapped m on m.k = s.k
                where {email("s.ident")} = x.email and {_addressed_by("s.ident")} = x.person
                  and m.reject is null and {email("m.ident")} is distinct from x.email
            )
            """,
        )
    if (
        previous is not None
        and _takes_emails(sync)
        and _one(con, "select count(*) from email_holders where sync is not null")
    ):
        # and those whose row left the model, as long as no row of this run reaches them
        # (by their `id`, or by the email alone): the record that left gives the email up to
        # the row taking it (``email_left``), whatever another sync delivered to them (a
        # user's row that left after the lead's row of their email, and a new user with it)
        run_sql(
            con,
            f"""
            delete from email_holders x
            where x.sync is not null and exists (
                select 1 from {previous} s anti join keyed k on k.k = s.k
                where {email("s.ident")} = x.email and {_addressed_by("s.ident")} = x.person
            ) and not exists (
                select 1 from mapped m
                where m.reject is null and (
                    m.addr = x.person
                    or (starts_with(m.addr, 'email:') and {email("m.ident")} = x.email)
                )
            )
            """,
        )
    if others and _one(con, "select count(*) from email_holders where sync is not null"):
        # another sync's snapshot may be stale for a person several syncs send: one that a
        # snapshot (this sync's, another's) or a row of this run gives another email may not
        # hold it any more, and holding rows back for it could last for good; Customer.io
        # is left to say (the read-back, the new rows' check)
        person = _addressed_by("ident")
        idents = [f"select ident from {delivered}"] + [f"select ident from {t}" for _, t in others]
        seen = " union all ".join(
            f"select {person} as person, {email('ident')} as email from ({q})" for q in idents
        )
        run_sql(
            con,
            f"""
            delete from email_holders h
            where h.sync is not null and exists (
                select 1 from (
                    select * from ({seen})
                    semi join (select distinct person from email_holders where sync is not null)
                        p using (person)
                    union all
                    select addr, {email("ident")} from mapped where reject is null
                ) o
                where o.person = h.person and o.email is not null and o.email <> h.email
            )
            """,
        )
    rows = run_sql(
        con,
        f"""
        create or replace temp table email_winners as
        select email, person, min(k) as k, null::varchar as sync, false as kept
        from email_holders where sync is null group by email, person
        union all
        select email, person, min(k), min(sync), bool_and(kept) from email_holders h
        where sync is not null
          and not exists (
              select 1 from email_holders o
              where o.sync is null and o.email = h.email and o.person = h.person
          )
        group by email, person
        union all
        select email, arg_min(person, k), min(k), null, false from email_takers t
        anti join email_holders h on h.email = t.email
        group by email having min(person) <> max(person) and not {graph};
        create or replace temp table email_held as
        -- the row of this sync that has it, else the first of another sync
        select t.k, arg_min(w.k, (w.sync is not null, w.k)) as k_w,
               nullif(arg_min(coalesce(w.sync, ''), (w.sync is not null, w.k)), '') as sync_w,
               arg_min(w.kept, (w.sync is not null, w.k)) as kept_w,
               any_value(json_extract_string(m.ident, '$.email')) as shown,
               any_value(t.email) as email
        from email_takers t
        join email_winners w on w.email = t.email
        join mapped m on m.k = t.k
        where not exists (
            select 1 from email_winners x where x.email = t.email and x.person = t.person
        )
        group by t.k;
        insert into {EMAIL_WAITS}
        select k, email, sync_w, k_w from email_held where sync_w is not null;
        create temp table if not exists {EMAIL_HOLDS} (k varchar);
        insert into {EMAIL_HOLDS} select k from email_held;
        update mapped set reject = coalesce(
            mapped.reject,
            case when h.sync_w is null then {reason} when h.kept_w then {kept_elsewhere}
                 else {elsewhere} end
        )
        from email_held h
        where mapped.k = h.k
        """,
    )
    run_sql(
        con,
        "drop table email_takers; drop table email_holders; drop table email_winners; "
        "drop table email_held",
    )
    return int(rows[0][0]) if rows else 0


EMAIL_MOVE_TABLES = (
    "email_left",
    "email_changed",
    "email_kept",
    "email_released",
    "email_phases",
    "email_clears",
    "email_cleared_by_graph",
    "email_held",
)


def order_email_moves(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    *,
    all_new: bool = False,
    removed: bool = False,
    left: bool = False,
    known: bool = False,
    graph_clears: Sequence[tuple[str, str]] = (),
) -> int:
    """Order the sends of a people sync whose rows pass emails between them; returns how many
    rows wait for another (0 when none: the run sends ``changes`` as one batch).

    Customer.io refuses, silently (200, nothing applied, an *attribute update failure* in the
    workspace's activity), an identify whose email belongs to another person, and gives a new
    id sent with such an email to that person (its profile renamed, its attributes kept). When
    a row takes an email that, per what Lockgate last delivered (the whole snapshot,
    :func:`_delivered`), another row of this run gives up (a new user signing up with the
    address someone just changed from, two users swapping addresses), the giver is sent first:
    the temp table ``email_phases`` gives each waiting row its delivery phase (1, 2, ...; the
    other rows are phase 0) and the row it waits for (``giver``: a taker whose giver was not
    delivered is held back, see :func:`hold_takers`). A giver whose update does not free its
    email (its email is now null) and one giver of each cycle (a swap, a rotation) get their
    email cleared first instead (``email_clears``), and so does a person who kept an email an
    earlier run left with them (``emails_kept__S``, see :func:`keep_emails`: their row set it
    to null, or left a `mirror` sync that clears) when a row of this run takes it. The rows
    taking a cleared email are phase 0 in ``email_phases``: held back, with every row passing
    emails, when a clear fails.

    Only the rows sent this run whose identifiers changed are looked at (a plan change sends
    the same ident), and the new rows only when one of them gives an email up or a person
    keeps one: a run without email changes costs one join of its changed rows with the
    snapshot. A taker whose email is held by a person no row of this run releases still fails
    in Customer.io: the run reads such people back after delivery when it can, and looks up
    the holders of its new rows' emails before it sends them (:mod:`lockgate.sync.emailcheck`,
    which leaves alone the people released here: :func:`new_emails`).

    ``left``: the temp tables ``gone`` and ``kept`` are this diff's (:func:`_still_reached`).
    A record that left the model with an email a row sent now takes (under another `id`) gives
    it up too (``email_left``): its email is cleared first, whatever the mode (in `upsert`
    mode nothing else of the person changes, and :func:`forget_released_left` then forgets
    the record), or, deleted (`mirror` with `delete_removed`), the row waits for the delete.

    ``graph_clears``: `(email, id)` of the people whose email the identity graph's operations
    clear before the rows (``resolve.graph_clears``: a user whose email went null while the
    other user of their family email takes it). A giver among them is cleared once, by the
    graph: its clear is left out of ``email_clears`` and its key kept in the temp table
    ``email_cleared_by_graph`` (with the people the sync keeps that email for,
    :func:`_cleared_by_graph`), released as a delivered clear's is (``run._released``); the
    rows taking its email are phase 0, sent after the graph's operations.
    """
    run_sql(con, "; ".join(f"drop table if exists {name}" for name in EMAIL_MOVE_TABLES))
    if sync.kind != "people" or "email" not in sync.identify_by:
        return 0
    changed = _email_changed(con, sync, all_new=all_new, known=known)
    _email_kept(con, sync, changed=changed, removed=removed)
    previous = _delivered(con, sync.name)
    kept = table("emails_kept", sync.name)
    _cleared_by_graph(con, kept, graph_clears)
    # the givers: people Lockgate addressed by `id` (or `cio_id`) whose email changes; a person
    # known by its email alone keeps it (identifying a new email names a new person)
    parts = []
    if changed:
        parts.append(
            """
            select k, new_email, old_email, old_id, old_cio_id from email_changed
            where old_email is not null and new_email is distinct from old_email
              and coalesce(old_id, old_cio_id) is not null
            """
        )
    if _one(con, f"select count(*) from {kept}"):
        # and the people who kept an email their row no longer has, as long as the snapshot
        # shows them none (one shown is what Customer.io holds since) and no row of this run
        # gives it back to them
        parts.append(
            f"""
            select h.k, c.email as new_email, h.email as old_email,
                   json_extract_string(h.ident, '$.id') as old_id,
                   json_extract_string(h.ident, '$.cio_id') as old_cio_id
            from {kept} h
            left join (
                select k, case when not removed
                               then {_lower_email("ident")} end as email
                from changes
            ) c on c.k = h.k
            left join {previous} s on s.k = h.k
            where json_extract_string(s.ident, '$.email') is null
              and c.email is distinct from h.email
            """
        )
    deleted: set[str] = set()
    if left and _takes_emails(sync):
        email = _lower_email("g.ident")
        run_sql(
            con,
            f"""
            create temp table email_left as
            select g.k, null::varchar as new_email, {email} as old_email,
                   json_extract_string(g.ident, '$.id') as old_id,
                   json_extract_string(g.ident, '$.cio_id') as old_cio_id
            from gone g anti join kept x on x.k = g.k
            semi join (
                select {_lower_email("ident")} as email from changes where not removed
            ) t on t.email = {email}
            where coalesce(json_extract_string(g.ident, '$.id'),
                           json_extract_string(g.ident, '$.cio_id')) is not null
            """,
        )
        if _one(con, "select count(*) from email_left"):
            parts.append("select * from email_left")
            if sync.delete_removed and sync.effective_mode == "mirror":
                # the delete in ``changes`` frees the email: the row taking it goes after it
                deleted = {str(k) for (k,) in con.execute("select k from email_left").fetchall()}
    if not parts:
        return 0
    run_sql(con, "create temp table email_released as " + " union all ".join(parts))
    if not _one(con, "select count(*) from email_released"):
        return 0
    new_emails = (
        "union select k, new_email from email_changed where new_email is not null"
        if changed
        else ""
    )
    takers = con.execute(
        f"""
        select t.k, r.k from (
            select c.k, {_lower_email("c.ident")} as email
            from changes c anti join {previous} s on s.k = c.k
            where c.is_new and not c.removed
            {new_emails}
        ) t join email_released r on r.old_email = t.email and r.k <> t.k
        order by t.k, r.k
        """
    ).fetchall()
    if not takers:
        return 0
    givers = {
        k: (old_id, old_cio_id, new_email, old_email)
        for k, new_email, old_email, old_id, old_cio_id in con.execute(
            "select k, new_email, old_email, old_id, old_cio_id from email_released"
        ).fetchall()
    }
    waits_for: dict[str, str] = {}
    of_taker: dict[str, set[str]] = {}
    for taker, giver in takers:
        waits_for.setdefault(str(taker), str(giver))
        of_taker.setdefault(str(taker), set()).add(str(giver))
    clear = {k for k in set(waits_for.values()) if givers[k][2] is None and k not in deleted}
    # the state may say more than one person gives up one email (an update Customer.io
    # dropped committed unverified, two new rows of one email): a row waits for one giver, so
    # the email is cleared from each of them first, whichever Customer.io gave it to
    clear.update(g for gs in of_taker.values() if len(gs) > 1 for g in gs)
    phase = _email_phases(waits_for, clear)
    waiting = {k: n for k, n in phase.items() if n > 0}
    # phase 0 rows taking an email: theirs is cleared ahead of them (``email_clears``), and
    # they wait for that (``run._deliver_email_clears``)
    after_clears = sorted(k for k, n in phase.items() if n == 0 and k in waits_for)
    phases = pa.table(
        {
            "k": pa.array(list(waiting) + after_clears, pa.string()),
            "phase": pa.array(list(waiting.values()) + [0] * len(after_clears)),
            "giver": pa.array(
                [waits_for[k] for k in waiting] + [waits_for[k] for k in after_clears],
                pa.string(),
            ),
        }
    )
    # a clear the graph's operations send ahead of every row of the run: not sent twice
    by_graph = {(email.lower(), person) for email, person in graph_clears}
    graph_cleared = sorted(
        k for k in clear if givers[k][0] is not None and (givers[k][3], givers[k][0]) in by_graph
    )
    if graph_cleared:
        run_sql(
            con,
            "insert into email_cleared_by_graph select unnest(?) except "
            "select k from email_cleared_by_graph",
            [graph_cleared],
        )
    clears = _clear_ops(
        [(k, givers[k][0], givers[k][1]) for k in sorted(clear.difference(graph_cleared))]
    )
    with (
        registered(con, "_email_phases", phases),
        registered(con, "_email_clears", clears),
    ):
        run_sql(
            con,
            """
            create temp table email_phases as select k, phase::integer as phase, giver
            from _email_phases;
            create temp table email_clears as
            select k, op, null::ubigint as h, null::varchar as ident, false as removed
            from _email_clears;
            """,
        )
    return len(waiting)


def _cleared_by_graph(
    con: duckdb.DuckDBPyConnection, kept: str, graph_clears: Sequence[tuple[str, str]]
) -> None:
    """Build the temp table ``email_cleared_by_graph`` (``k``): the people this sync keeps an
    email for (``emails_kept__S``, and ``email_kept``: those this run starts keeping) whose
    email the identity graph's operations clear ahead of the rows (``graph_clears``, `(email,
    id)`): they hold it no more once the run has sent its rows, which forgets them
    (``run._released``). Kept, a row of another sync taking the email would wait for them for
    good (the graph clears a person once, in the run that moves the email)."""
    run_sql(con, "create temp table email_cleared_by_graph (k varchar)")
    if not graph_clears:
        return
    pairs = pa.table(
        {
            "email": pa.array([e.lower() for e, _ in graph_clears], pa.string()),
            "person": pa.array([p for _, p in graph_clears], pa.string()),
        }
    )
    with registered(con, "_graph_clears", pairs):
        run_sql(
            con,
            f"""
            insert into email_cleared_by_graph
            select distinct h.k from (
                select k, email, ident from {kept}
                union all select k, email, ident from email_kept
            ) h
            semi join _graph_clears g
                on g.email = {email_match("h.email")}
               and g.person = json_extract_string(h.ident, '$.id')
            """,
        )


def _email_changed(
    con: duckdb.DuckDBPyConnection, sync: SyncConfig, *, all_new: bool, known: bool = False
) -> bool:
    """Build the temp table ``email_changed``: the rows of ``changes`` whose identifiers differ
    from what was last delivered to them (:func:`_delivered`), with their emails before and
    after (lowercased, as Customer.io matches them; ``sent_email`` as sent) and their `id` and
    `cio_id` before and after. False, and no table, when the sync has no email identifier or
    every row is new (``all_new``: nothing was delivered to them to differ from).

    ``known``: the temp table ``known`` (built by :func:`diff_records` of this run, the
    snapshot unchanged since) holds the snapshot's rows of every key ``changes`` sends, with
    their ``ident``: read instead of the whole snapshot (a scan of 1M idents, 25-70 ms) when
    the snapshot is not hidden (`--only`, `--full-resync` read all of it)."""
    if sync.kind != "people" or "email" not in sync.identify_by:
        return False
    hidden = temp_table(con, f"snap__{sync.name}")  # `--only`, `--full-resync`: `_delivered`
    if all_new and not hidden:
        return False
    previous = "known" if known and not hidden else _delivered(con, sync.name)
    # the rows whose identifiers changed, joined first: a JSON read of the snapshot's idents
    # would otherwise be pushed below the join, onto every snapshot row
    run_sql(
        con,
        f"""
        create or replace temp table email_changed as
        with changed as materialized (
            select c.k, c.ident as new_ident, s.ident as old_ident
            from changes c join {previous} s on s.k = c.k
            where not c.removed and c.ident <> s.ident
        )
        select k, {_lower_email("new_ident")} as new_email,
               {_lower_email("old_ident")} as old_email,
               json_extract_string(old_ident, '$.id') as old_id,
               json_extract_string(old_ident, '$.cio_id') as old_cio_id,
               json_extract_string(new_ident, '$.email') as sent_email,
               json_extract_string(new_ident, '$.id') as new_id,
               json_extract_string(new_ident, '$.cio_id') as new_cio_id
        from changed
        """,
    )
    return True


def _email_kept(
    con: duckdb.DuckDBPyConnection, sync: SyncConfig, *, changed: bool, removed: bool
) -> None:
    """Build the temp table ``email_kept`` (``k, email, ident``): the people this run sends
    an update that leaves in Customer.io an email their row no longer has: a row whose email
    is now null and whose operation sends no `email` (`on_null: skip`), and a row that left a
    `mirror` sync undone by clearing its attributes (not deleted). ``ident``: the `id` (else
    `cio_id`) to release it by later (:func:`keep_emails`). Only the rows whose identifiers
    changed (``changed``: ``email_changed`` was built) and those that left (``removed``) are
    looked at."""
    parts = []
    address = """case when {i} is not null then '{{"id":' || to_json({i}) || '}}'
                      else '{{"cio_id":' || to_json({c}) || '}}' end"""
    if changed:
        parts.append(
            f"""
            select e.k, e.old_email as email,
                   {address.format(i="e.old_id", c="e.old_cio_id")} as ident
            from email_changed e join changes c on c.k = e.k
            left join ({_payloads_of("email_changed")}) p on p.__rid = c.__rid
            where e.old_email is not null and e.new_email is null
              and coalesce(e.old_id, e.old_cio_id) is not null
              and json_extract(coalesce(c.op, p.op), '$.attributes.email') is null
            """
        )
    if removed:
        kept_id = "json_extract_string(ident, '$.id')"
        kept_cio_id = "json_extract_string(ident, '$.cio_id')"
        parts.append(
            f"""
            select k, {_lower_email("ident")} as email,
                   {address.format(i=kept_id, c=kept_cio_id)} as ident
            from changes
            where removed and json_extract_string(op, '$.action') = 'identify'
              and json_extract_string(ident, '$.email') is not null
              and coalesce({kept_id}, {kept_cio_id}) is not null
            """
        )
    if not parts:
        parts.append("select null::varchar as k, null::varchar as email, null::varchar as ident")
        parts[0] += " where false"
    run_sql(con, "create temp table email_kept as " + " union all ".join(parts))


def keep_emails(store: StateStore, sync: SyncConfig) -> int:
    """Record in ``emails_kept__S`` the people whose email this run leaves in Customer.io
    though their row no longer has it (the temp table ``email_kept``, see
    :func:`_email_kept`), before it sends: a person keeps it whether that update lands or not.
    Returns how many."""
    con = store.con
    if not temp_table(con, "email_kept") or not _one(con, "select count(*) from email_kept"):
        return 0
    kept = table("emails_kept", sync.name)
    with transaction(con, store.path):
        run_sql(con, f"delete from {kept} where k in (select k from email_kept)")
        rows = run_sql(con, f"insert into {kept} select k, email, ident from email_kept")
    return int(rows[0][0])


def forget_kept_emails(
    store: StateStore, sync: SyncConfig, run_id: str, released: Iterable[str] = ()
) -> None:
    """After delivery: the people of ``emails_kept__S`` who hold no such email any more leave
    it: those whose email this run released (``released``: their keys), those it delivered an
    email to (what Customer.io holds now), and those it deleted (`delete_removed`). The table
    is looked at only when it has rows."""
    con = store.con
    kept = table("emails_kept", sync.name)
    if not _one(con, f"select count(*) from {kept}"):
        return
    # a row that left is journaled with the identifiers it was last sent: only a delete ends
    # what it kept
    gone = " or removed" if sync.delete_removed else ""
    with registered(con, "_released", pa.table({"k": pa.array(sorted(released), pa.string())})):
        run_sql(
            con,
            f"""
            delete from {kept} where k in (select k from _released)
               or k in (select k from {table("journal", sync.name)}
                        where run_id = ?
                          and (not removed and json_extract_string(ident, '$.email') is not null
                               {gone}))
            """,
            [run_id],
        )


def forget_released_left(store: StateStore, sync: SyncConfig, released: Iterable[str]) -> int:
    """After delivery, in `upsert` or `update` mode: forget the records that left the model
    whose email this run released for a row taking it (``email_left``, see
    :func:`order_email_moves`; ``released``: the keys whose clear was delivered). Kept, the
    snapshot would still say they hold the email, reach the taker's person through it, and
    be released again when the email moves on. (A `mirror` run forgets them with their
    clear or delete.) The plan of a command does the same to what it keeps for the later
    plans (``planned.record``). Returns how many."""
    con = store.con
    forgotten = released_left_of(con, sync, "_released_left")
    if forgotten is None:
        return 0
    keys = pa.table({"k": pa.array(sorted(released), pa.string())})
    with (
        registered(con, "_released_left", keys),
        transaction(con, store.path),
    ):
        rows = run_sql(con, f"delete from {table('snap', sync.name)} where k in ({forgotten})")
        run_sql(con, f"delete from {table('unconfirmed', sync.name)} where k in ({forgotten})")
    return int(rows[0][0]) if rows else 0


def forget_released_refused(
    store: StateStore, sync: SyncConfig, released: Iterable[str], refused: Iterable[str]
) -> int:
    """After delivery: the givers whose row this run refused before delivery (``refused``: a
    merge kept back, an email another person holds) and whose email it cleared for a row
    taking it (``released``: the keys whose clear was delivered, :func:`clear_refused_givers`)
    hold no email in Customer.io now: their snapshot record no longer gives one (its
    ``ident`` without `email`). Kept, the record would say the person still holds it, and
    every later run would find the row giving it up again and send the clear again. Returns
    how many records."""
    keys = sorted(set(released) & set(refused))
    if not keys:
        return 0
    snap = table("snap", sync.name)
    with transaction(store.con, store.path):
        rows = run_sql(
            store.con,
            f"update {snap} set ident = {without_email('ident')} "
            "where k in (select unnest(?::varchar[])) "
            "and json_extract_string(ident, '$.email') is not null",
            [keys],
        )
    return int(rows[0][0]) if rows else 0


def released_left_of(con: duckdb.DuckDBPyConnection, sync: SyncConfig, released: str) -> str | None:
    """SQL: the keys of the records that left the model whose email this run releases
    (``email_left``; ``released``: a table of the keys whose clear is delivered), which an
    `upsert` or `update` run then forgets (:func:`forget_released_left`); None when there is
    none to forget."""
    if sync.effective_mode == "mirror" or not temp_table(con, "email_left"):
        return None
    return f"select k from email_left semi join {released} r on r.k = email_left.k"


def forget_released_elsewhere(
    store: StateStore, sync: SyncConfig, released: Iterable[str], others: Sequence[str]
) -> int:
    """After delivery: the emails this run released (``released``: the keys whose clear was
    delivered, with their person and email in ``email_released``, see
    :func:`order_email_moves`) leave the records other people syncs (``others``: their
    names) delivered them with to that person: their snapshot's record of it no longer gives
    it an email (its ``ident`` without `email`; what else it sent stands), and their
    ``emails_kept__S`` no longer keeps it for them. Customer.io holds it no more. Kept, such
    a record, older than the release (a lead's row, gone, delivered to a user's person who
    left), would say the person still holds the email, and hold back for good a row taking
    it once the person who took it after the release moves on (:func:`_hold_shared_emails`
    trusts another sync's last delivery). A row of that sync taking it again is one taking
    an email. The plan of a command does the same to what it keeps for the later plans
    (``planned.record``). Returns how many records."""
    keys = sorted(released)
    if not keys or not others or not temp_table(store.con, "email_released"):
        return 0
    con = store.con
    forgotten = 0
    with transaction(con, store.path):
        if released_elsewhere(con, keys):
            for name in others:
                snap, kept = table("snap", name), table("emails_kept", name)
                rows = run_sql(
                    con,
                    f"update {snap} set ident = {without_email('ident')} "
                    f"where k in ({released_records_of(snap)})",
                )
                forgotten += int(rows[0][0]) if rows else 0
                run_sql(con, f"delete from {kept} where k in ({released_kept_of(kept)})")
        run_sql(con, f"drop table {RELEASED_ELSEWHERE}")
    return forgotten


RELEASED_ELSEWHERE = "email_released_elsewhere"
"""The temp table of the emails a people sync's run releases, as they leave the records other
people syncs delivered them with (:func:`released_elsewhere`)."""


def released_keys(con: duckdb.DuckDBPyConnection, failed: Collection[str] | None) -> set[str]:
    """The keys of the people whose email this run releases: those whose clear
    (``email_clears``, :func:`order_email_moves`) is delivered, all but ``failed`` (keys
    with their `#release-email`; None: none sent), and those the identity graph's operations
    clear ahead of the rows (``email_cleared_by_graph``: delivered, or the run would have
    stopped before its rows)."""
    out: set[str] = set()
    if temp_table(con, "email_cleared_by_graph"):
        rows = con.execute("select k from email_cleared_by_graph").fetchall()
        out.update(str(k) for (k,) in rows)
    if failed is None or not temp_table(con, "email_clears"):
        return out
    keys = con.execute("select k from email_clears").fetchall()
    return out | {k.removesuffix("#release-email") for (k,) in keys if k not in failed}


def released_elsewhere(con: duckdb.DuckDBPyConnection, released: Iterable[str]) -> int:
    """Build the temp table :data:`RELEASED_ELSEWHERE` (``email, person``): the emails of
    ``email_released`` (:func:`order_email_moves`) whose release this run delivers
    (``released``: their keys), each with the person (`id:…`, else `cio_id:…`) it leaves.
    Returns how many (an empty table without ``email_released``)."""
    run_sql(
        con,
        f"create or replace temp table {RELEASED_ELSEWHERE} (email varchar, person varchar)",
    )
    keys = sorted(released)
    if not keys or not temp_table(con, "email_released"):
        return 0
    with registered(con, "_released_elsewhere", pa.table({"k": pa.array(keys, pa.string())})):
        run_sql(
            con,
            f"""
            insert into {RELEASED_ELSEWHERE}
            select distinct r.old_email as email,
                   coalesce('id:' || r.old_id, 'cio_id:' || r.old_cio_id) as person
            from email_released r semi join _released_elsewhere x on x.k = r.k
            where r.old_email is not null and coalesce(r.old_id, r.old_cio_id) is not null
            """,
        )
    return int(_one(con, f"select count(*) from {RELEASED_ELSEWHERE}") or 0)


def released_records_of(records: str) -> str:
    """SQL: the keys of the records of ``records`` (another people sync's snapshot: a table,
    or a query in parentheses) that give a person of :data:`RELEASED_ELSEWHERE` the email
    released from them (:func:`without_email` is what they then give)."""
    return (
        f"select t.k from {records} t semi join {RELEASED_ELSEWHERE} g "
        f"on {_lower_email('t.ident')} = g.email and {_addressed_by('t.ident')} = g.person"
    )


def released_kept_of(kept: str) -> str:
    """SQL: the keys of the people of ``kept`` (another people sync's ``emails_kept__S``: a
    table, or a query in parentheses) kept an email :data:`RELEASED_ELSEWHERE` released
    from them."""
    return (
        f"select t.k from {kept} t semi join {RELEASED_ELSEWHERE} g "
        f"on {email_match('t.email')} = g.email and {_addressed_by('t.ident')} = g.person"
    )


def without_email(ident: str) -> str:
    """SQL: the JSON ``ident`` of a record without its `email` (released from its person:
    what else the record sent stands)."""
    return f"json_merge_patch({ident}, '{{\"email\":null}}')::varchar"


def email_moves(
    con: duckdb.DuckDBPyConnection, sync: SyncConfig, *, journal_of: str | None = None
) -> list[tuple[str, str, str, str]]:
    """The people of this run given an email they did not have, as (key, id type, id, email
    as sent), by key: the rows of ``email_changed`` (built by :func:`order_email_moves` in a
    run; built here in a plan) whose email is new and who are addressed by `id` or `cio_id`
    (an identify by a new email names a new person, which no other can hold the email of).
    Customer.io drops such an identify whole when another person holds the email.

    ``journal_of`` (a run id): only the records that run delivered (in the sync's journal,
    before it is folded into the snapshot)."""
    if not temp_table(con, "email_changed"):  # in a run, none to look at
        if journal_of is not None or not _email_changed(con, sync, all_new=False):
            return []
    delivered = ""
    params: list[Any] = []
    if journal_of is not None:
        delivered = (
            f"semi join {table('journal', sync.name)} j "
            "on j.k = e.k and j.run_id = ? and not j.removed"
        )
        params = [journal_of]
    rows = con.execute(
        f"""
        select e.k, case when e.new_id is not null then 'id' else 'cio_id' end,
               coalesce(e.new_id, e.new_cio_id), e.sent_email
        from email_changed e {delivered}
        where e.new_email is not null and e.new_email is distinct from e.old_email
          and coalesce(e.new_id, e.new_cio_id) is not null
        order by e.k
        """,
        params,
    ).fetchall()
    return [(str(k), str(t), str(i), str(m)) for k, t, i, m in rows]


#: a row of ``changes`` that names a new person by `id` with an email (``ident`` holds only
#: the identifiers that are not null; a JSON string value escapes its quotes, so neither
#: test matches inside a value, and `"cio_id":` is not `"id":`)
_WITH_ID_AND_EMAIL = (
    "not c.removed and contains(c.ident, '\"email\":') and contains(c.ident, '\"id\":')"
)


def new_emails(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    *,
    limit: int,
    released_first: Iterable[tuple[str, str]] = (),
    merged_first: Iterable[tuple[str, str]] = (),
    people_snaps: Iterable[str] = (),
) -> tuple[int, list[tuple[str, str, str, frozenset[str]]]]:
    """The rows of a people sync identified by `id` and `email` that this run sends with an
    `id` and an email to a person Lockgate never delivered that `id` to: rows new to the
    snapshot (:func:`_delivered`), and rows whose `id` is not the one last delivered (the
    identity graph gave a lead's row another profile's `id`, the model's `id` column
    changed). Customer.io gives that `id` to the person holding the email, if one does, or
    drops the update when the `id` is another person already
    (:mod:`lockgate.sync.emailcheck`). Returns how many, and the first ``limit`` of them by
    key as (key, id, email as sent, the `id`s and `cio_id`s of the people this run releases
    that email from first: ``email_released``, see :func:`order_email_moves`, and
    ``released_first``, `(email, id)` of the people the identity graph's operations release
    it from before the rows; `merged:ID` for ``merged_first``, `(email, id)` of the merges
    the graph's operations send before the rows of the person holding that email into the
    person of that `id`; and the `id` the row last delivered, when no other record of this
    snapshot or of ``people_snaps`` (the other people syncs of the destination) was
    delivered with it: that person is the row's own, the new `id` its rename). A run of no
    such row costs a count of ``changes``; the JSON of the rows is read only up to
    ``limit``."""
    if sync.kind != "people" or "email" not in sync.identify_by:
        return 0, []
    # what was delivered to the rows sent: ``known`` (built by this run's diff, the snapshot's
    # rows of the keys it sends) rather than a scan of the whole snapshot; but a run of named
    # records or a full resync hides that behind a temp table, where a row delivered before
    # looks new: the whole one then (:func:`_delivered`)
    hidden = temp_table(con, f"snap__{sync.name}")
    previous = "known" if not hidden and temp_table(con, "known") else _delivered(con, sync.name)
    delivered_id = "json_extract_string(s.ident, '$.id')"
    rows = (
        f"from changes c left join {previous} s on s.k = c.k where {_WITH_ID_AND_EMAIL} and "
        f"(s.k is null and c.is_new or s.k is not null "
        f"and {delivered_id} is distinct from json_extract_string(c.ident, '$.id'))"
    )
    total = int(_one(con, f"select count(*) {rows}") or 0)
    if not total or not limit:
        return total, []
    found = con.execute(
        f"""
        select c.k, json_extract_string(c.ident, '$.id'),
               json_extract_string(c.ident, '$.email'), {delivered_id}
        {rows} order by c.k limit {int(limit)}
        """
    ).fetchall()
    released: dict[str, set[str]] = {}
    for email, person in released_first:
        released.setdefault(email.lower(), set()).add(f"id:{person}")
    for email, person in merged_first:
        released.setdefault(email.lower(), set()).add(f"merged:{person}")
    if temp_table(con, "email_released"):
        for email, old_id, old_cio_id in con.execute(
            "select old_email, old_id, old_cio_id from email_released"
        ).fetchall():
            released.setdefault(str(email), set()).update(
                f"{kind}:{v}" for kind, v in (("id", old_id), ("cio_id", old_cio_id)) if v
            )
    own = _own_old_ids(con, sync, [(str(k), str(o)) for k, _, _, o in found if o], people_snaps)
    return total, [
        (
            str(k),
            str(i),
            str(e),
            frozenset(released.get(str(e).lower(), set()) | ({f"id:{o}"} if k in own else set())),
        )
        for k, i, e, o in found
    ]


def _own_old_ids(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    old: list[tuple[str, str]],
    people_snaps: Iterable[str],
) -> set[str]:
    """Of ``old`` (key, the `id` a row last delivered), the keys whose old `id` no other
    record was delivered with (another key of this snapshot, any record of ``people_snaps``):
    a person only that row reached, which its new `id` renames. A person another record
    reached too (a user's, whose lead row the identity graph gave another profile's `id`)
    is not the row's to rename."""
    if not old:
        return set()
    con.register("old_ids__", pa.table({"k": [k for k, _ in old], "id": [i for _, i in old]}))
    try:
        others = [
            f"select k, json_extract_string(ident, '$.id') as id, true as other from {t}"
            for t in people_snaps
        ]
        held = " union all ".join(
            [
                f"select k, json_extract_string(ident, '$.id') as id, false as other "
                f"from {_delivered(con, sync.name)}",
                *others,
            ]
        )
        return {
            str(k)
            for (k,) in con.execute(
                f"""
                select o.k from old_ids__ o
                where not exists (
                    select 1 from ({held}) h where h.id = o.id and (h.other or h.k <> o.k)
                )
                """
            ).fetchall()
        }
    finally:
        con.unregister("old_ids__")


def _delivered(con: duckdb.DuckDBPyConnection, sync: str) -> str:
    """The whole snapshot of ``sync``: what Lockgate last delivered to every record.
    A run of named records (`--only`) hides the others behind a temp table of the same name
    and a `--full-resync` run behind an empty one, but the rows it sends may still take an
    email from, or give one to, a record it does not name (two users swap addresses, `--only`
    one of them): whose email is whose is read from all the records. In a command of plans,
    the whole snapshot as the earlier syncs' runs leave it (the temp view ``plan_snap__S``,
    ``planned.shadow``)."""
    snap = table("snap", sync)
    if not temp_table(con, f"snap__{sync}"):
        return snap
    planned = con.execute(
        "select count(*) from duckdb_views() where temporary and view_name = ?",
        [f"plan_snap__{sync}"],
    ).fetchall()[0][0]
    if planned:
        return table("plan_snap", sync)
    database = con.execute("select current_database()").fetchall()[0][0]
    return f'"{database}".main.{snap}'


def _email_phases(waits_for: dict[str, str], clear: set[str]) -> dict[str, int]:
    """The delivery phase of each row that takes another's email (``waits_for``: taker ->
    giver): one after its giver's, 0 when the giver's email is cleared first (``clear``). A
    cycle is broken by clearing the email of the row where it closes (added to ``clear``)."""
    phase: dict[str, int] = {}
    for start in sorted(waits_for):
        chain: list[str] = []
        on_chain: set[str] = set()
        row = start
        while True:
            if row in phase:
                base = phase[row]
                break
            if row in on_chain:  # a cycle: `row`'s email is cleared, the row taking it waits
                clear.add(row)  # for nothing
                base = -1
                break
            giver = waits_for.get(row)
            if giver is None or giver in clear:
                phase[row] = base = 0
                break
            chain.append(row)
            on_chain.add(row)
            row = giver
        for row in reversed(chain):
            base += 1
            phase[row] = base
    return phase


def _clear_ops(givers: Iterable[tuple[str, str | None, str | None]]) -> pa.Table:
    """``email_clears`` rows (`k`, `op`) clearing the email of each giver, given as (key, its
    person's `id`, its `cio_id`): `KEY#release-email`, an identify of that person by `id`
    (else `cio_id`) with an empty email."""
    keys, ops = [], []
    for k, old_id, old_cio_id in givers:
        address = {"id": old_id} if old_id is not None else {"cio_id": old_cio_id}
        op = {"type": "person", "action": "identify", "identifiers": address}
        # `_update`: a person deleted in Customer.io since is not created again to give it up
        attributes = {"_update": True, "email": ""}
        keys.append(f"{k}#release-email")
        ops.append(orjson.dumps({**op, "attributes": attributes}).decode())
    return pa.table({"k": pa.array(keys, pa.string()), "op": pa.array(ops, pa.string())})


def clear_refused_givers(con: duckdb.DuckDBPyConnection, refused: Collection[str]) -> int:
    """After the run took ``refused`` out of ``changes`` before delivery (a merge kept back,
    an email the App API found held: ``run.new_refused``): of them, the givers whose email a
    row of this run waits for (:func:`order_email_moves`) have that email cleared first
    (``email_clears``), as a giver whose update does not free it has, and the rows waiting for
    them go with the first phase, after the clears. The row that gives the email up is not
    sent, so without the clear its person would keep the email the warehouse gives another
    person now (and their messages); the taker, held back for it each run. Returns how many
    clears it adds."""
    if not refused or not temp_table(con, "email_phases") or not temp_table(con, "email_clears"):
        return 0
    rows = con.execute(
        """
        select distinct r.k, r.old_id, r.old_cio_id from email_released r
        where r.k in (select unnest(?::varchar[]))
          and r.k in (select giver from email_phases where phase > 0)
          and r.k || '#release-email' not in (select k from email_clears)
          and coalesce(r.old_id, r.old_cio_id) is not null
        order by r.k
        """,
        [sorted(refused)],
    ).fetchall()
    if not rows:
        return 0
    with registered(con, "_refused_clears", _clear_ops(rows)):
        run_sql(
            con,
            "insert into email_clears select k, op, null::ubigint as h, null::varchar as ident, "
            "false as removed from _refused_clears",
        )
    run_sql(
        con,
        "update email_phases set phase = 0 where giver in (select unnest(?::varchar[]))",
        [[str(k) for k, _, _ in rows]],
    )
    return len(rows)


def email_clears(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether :func:`order_email_moves` left emails to clear before ``changes`` is sent."""
    return temp_table(con, "email_clears") and bool(_one(con, "select count(*) from email_clears"))


def delivery_phases(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The sources to deliver ``changes`` from, in order (see :func:`order_email_moves`)."""
    if not temp_table(con, "email_phases"):
        return ["changes"]
    last = int(_one(con, "select max(phase) from email_phases") or 0)
    if not last:
        return ["changes"]
    return [
        "(select * from changes anti join (select k from email_phases where phase > 0) using (k))"
    ] + [
        f"(select c.* from changes c semi join (select k from email_phases where phase = {n}) p"
        " on p.k = c.k)"
        for n in range(1, last + 1)
    ]


def hold_takers(
    con: duckdb.DuckDBPyConnection, phase: int, undelivered: set[str]
) -> list[tuple[str, str]]:
    """Before delivery phase ``phase`` (1, 2, ...): take out of ``changes`` the rows of that
    phase whose giver was not delivered (refused, dead-lettered: ``undelivered``) or was held
    back itself; returns them, each with its giver's key, in key order. Sent anyway,
    Customer.io would drop them (the email is still the giver's) and Lockgate would count them
    delivered; held, they are not committed, so the next run sends them. The held keys collect
    in the temp table ``email_held``."""
    run_sql(con, "create temp table if not exists email_held (k varchar)")
    with registered(
        con, "_undelivered", pa.table({"k": pa.array(sorted(undelivered), pa.string())})
    ):
        held = run_sql(
            con,
            f"""
            select k, giver from email_phases
            where phase = {int(phase)}
              and (giver in (select k from _undelivered) or giver in (select k from email_held))
            order by k
            """,
        )
    if held:
        run_sql(con, "insert into email_held select unnest(?::varchar[])", [[k for k, _ in held]])
        run_sql(con, "delete from changes where k in (select k from email_held)")
    return [(str(k), str(giver)) for k, giver in held]


diff_people = diff_records


def _remapped(
    con: duckdb.DuckDBPyConnection,
    snap: str,
    previous_hash: str,
    retyped: dict[str, str] | None = None,
) -> int:
    """How many changed records of ``changes`` hash, under the last run's mapping, as the
    snapshot holds them: their data did not change, the mapping did. They are kept in the temp
    table ``remapped(__rid)`` (the guardrails count their clears apart). 0 when the last
    mapping read a column the model no longer has (nothing to tell them apart by).

    ``retyped``: columns whose type changed within its family since the last run (`DECIMAL(8,2)`
    → `DECIMAL(8,4)`, `DATE` → `TIMESTAMP`), each with its type then. DuckDB's hash is of the
    typed value, so `1.50` hashes anew: such a column is hashed cast back to its old type, for
    the rows whose value the cast keeps (equal to the value as it is now; `1.5` cast to an old
    `INTEGER` is `2`, which is another value, so that row counts as changed)."""
    types = {str(r[0]): str(r[1]) for r in con.execute("describe model").fetchall()}
    previous_hash = hash_over_json(previous_hash, types)
    source = "select rowid as __rid, true as __lg_same, * from model"
    if retyped:
        casts = ", ".join(f"try_cast({q(c)} as {t}) as {q(c)}" for c, t in retyped.items())
        same = " and ".join(
            f"({q(c)} is null or try_cast({q(c)} as {t}) = {q(c)})" for c, t in retyped.items()
        )
        source = f"select rowid as __rid, ({same}) as __lg_same, * replace ({casts}) from model"
    try:
        run_sql(
            con,
            f"""
            create or replace temp table remapped as
            select c.__rid from changes c
            join (select __rid, __lg_same, {previous_hash} as old_h from ({source})) m
              on m.__rid = c.__rid
            semi join {snap} s on s.k = c.k and s.h = m.old_h
            where not c.is_new and not c.removed and m.__lg_same
            """,
        )
    except duckdb.BinderException:
        return 0
    except duckdb.Error:
        if not retyped:
            raise
        return 0  # a value its old type cannot be compared with: every row counts as changed
    return int(_one(con, "select count(*) from remapped") or 0)


def _repeated_events(con: duckdb.DuckDBPyConnection) -> int:
    """Keep in the temp table ``ev_repeats`` the ``__rid`` of each row of ``mapped`` that
    repeats the key of the row sent for it, and return how many there are (the duplicates).

    Of the copies of a key that can be sent (a rejected copy never holds back a good one), the
    earliest is sent; copies of one time go by their payload (the least as text), then by
    staging order. Only the repeated keys are looked at, and the payloads only of copies of a
    key that share its earliest time."""
    run_sql(
        con,
        """
        create or replace temp table ev_copies as
        select m.__rid, m.k, m.ts from mapped m
        semi join (select k from mapped group by k having count(*) > 1) r on r.k = m.k
        where m.reject is null;
        create or replace temp table ev_first as
        select c.__rid, c.k from ev_copies c
        semi join (select k, min(ts) as ts from ev_copies group by k) f
          on f.k = c.k and f.ts = c.ts;
        create or replace temp table ev_kept as
        select k, min(__rid) as __rid from ev_first group by k having count(*) = 1
        union all
        select m.k, arg_min(m.__rid, (m.op, m.__rid)) from mapped m
        semi join (select __rid from ev_first semi join (
            select k from ev_first group by k having count(*) > 1) t on t.k = ev_first.k) f
          on f.__rid = m.__rid
        group by m.k;
        create or replace temp table ev_repeats as
        select __rid from ev_copies anti join ev_kept using (__rid);
        drop table ev_copies; drop table ev_first; drop table ev_kept;
        """,
    )
    return int(_one(con, "select count(*) from ev_repeats") or 0)


@dataclass(frozen=True)
class StagedEvents:
    """An events model read in place (:meth:`InPlace.key_events`): the rows of keys the ledger
    lacks copied into ``model`` (:func:`stage_new_events`), the others counted."""

    old_rows: int
    """Rows of the model whose key the ledger has (already delivered)."""
    old_keys: int
    """Distinct keys among them."""
    new_rows: int
    """Rows of keys the ledger lacks: those copied into ``model``."""
    restage: Callable[[], None]
    """Copy the whole model into ``model`` instead, as a run that does not read it in place
    (and key it through the identity graph, when the sync uses one)."""


def stage_new_events(
    con: duckdb.DuckDBPyConnection,
    ledger: str,
    in_place: InPlace,
    restage: Callable[[], None] | None = None,
) -> StagedEvents:
    """Fill ``model`` with the rows of keys the ledger lacks, from the temp table ``ev_keyed``
    the source built (:meth:`InPlace.key_events`), every copy of each, in the model's own
    types; count the rows and distinct keys the ledger has. A row of a delivered key whose
    columns hash as one of them (a 64-bit collision) comes too: :func:`diff_events` keeps
    exactly the rows of new keys. ``restage`` (by default :meth:`InPlace.stage_all`) copies
    the whole model when the source did not give those rows back as keyed."""
    old_rows = int(_one(con, "select count(*) from ev_keyed where done") or 0)
    old_keys = int(
        _one(con, "select count(*) from (select k from ev_keyed where done group by k)") or 0
    )
    new_rows = int(_one(con, "select count(*) from ev_keyed where not done") or 0)
    hashes = con.sql("select distinct h from ev_keyed where not done").to_arrow_table()
    run_sql(con, "drop table ev_keyed")
    in_place.stage_rows(con, hashes, lambda _: None)
    return StagedEvents(
        old_rows, old_keys, new_rows, restage or (lambda: in_place.stage_all(con, lambda _: None))
    )


def _events_in_place(
    con: duckdb.DuckDBPyConnection, compiled: Compiled, ledger: str, staged: StagedEvents
) -> tuple[int, int] | None:
    """Keep in ``model`` (filled by :func:`stage_new_events`) exactly the rows of keys the
    ledger lacks, and return the rows and distinct keys of the model the ledger has; None,
    with ``model`` the whole model (``staged.restage``), when the source did not give those
    rows back as keyed (a model that reads differently on each read)."""
    run_sql(
        con,
        f"""
        create or replace temp table model_todo as
        select * from model where rowid in (
            select c.__rid from (select __rid, k from ({compiled.select})) c
            anti join {ledger} l on l.k = c.k);
        drop table model;
        alter table model_todo rename to model;
        """,
    )
    if _one(con, "select count(*) from model") == staged.new_rows:
        return staged.old_rows, staged.old_keys
    # the model read differently the second time (a column from `random()` or `now()`): copy
    # it whole and diff that, as a run that does not read it in place
    staged.restage()
    return None


def diff_events(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    compiled: Compiled,
    *,
    in_place: InPlace | None = None,
    staged: StagedEvents | None = None,
    first_run: bool = False,
) -> ChangeSet:
    """Fill ``changes`` with the events to send: each key not in the ledger, once.

    ``first_run`` (no whole run of the sync committed, :func:`untimed_first_run`) of a sync without
    `event.timestamp` and `backfill: {first_run: skip}`: the events that could be sent are
    history, not news; their keys go to the temp table ``history_keys`` (the run's commit
    adds them to the ledger, a plan leaves them) and nothing is sent for them. Those sent
    before without an answer (``event_ids``) are sent again as usual.

    An event sent whose answer never came (``event_ids__S``, see the state store) is sent with
    the dedupe id it was sent with, whatever its row holds now: Customer.io may hold it under
    that id, and a timestamp, name or person corrected since would make another id, which it
    would store a second time. A row of a key in the ledger is never rejected: whatever it
    holds now, its event is in Customer.io and is never sent again (already delivered).

    An events model only grows, and so does its ledger: the rows of keys in the ledger are
    counted from their keys alone (DuckDB computes only the key of the mapping for them) and
    left out of the model before it is mapped, so a run maps, checks and orders only the rows
    of keys the ledger does not have, however many events were delivered before.

    Those rows are mapped once, into the table that becomes ``changes``: repeated keys are
    found by a count (the copies of a key are compared only when it repeats, see
    :func:`_repeated_events`) and the rows not to send are deleted from it. Nothing is sorted
    or windowed over the payloads (a first run of 10M events outgrew the state's memory limit
    that way): the events go out in no set order, as delivery keeps several batches in flight
    anyway; each carries its own timestamp.

    With ``in_place``, the temp table ``ev_keyed`` was built in the source
    (:meth:`InPlace.key_events`): only the rows of keys the ledger lacks are copied into
    ``model`` (:func:`stage_new_events`), the delivered ones are counted from their keys.
    With ``staged``, the caller copied them already (a sync through the identity graph keys
    the copied rows before they are mapped)."""
    ledger = table("ledger", sync.name)
    ids = table("event_ids", sync.name)
    skip_backfill = sync.backfill.older == "skip"
    # rows (and distinct keys) of the model whose key the ledger has: already delivered
    old_rows = old_keys = 0
    if staged is None and in_place is not None:
        staged = stage_new_events(con, ledger, in_place)
    counted = _events_in_place(con, compiled, ledger, staged) if staged is not None else None
    if counted is not None:
        old_rows, old_keys = counted
    elif _one(con, f"select exists(select 1 from {ledger})"):
        run_sql(
            con,
            f"""
            create or replace temp table ev_keyed as
            select __rid, k, k in (select k from {ledger}) as done
            from (select __rid, k from ({compiled.select}))
            """,
        )
        # distinct keys by a `group by`, which spills under the state's memory limit (a
        # `count(distinct k)` does not: a fresh plan of 10M people ran out of memory so)
        old_rows = int(_one(con, "select count(*) from ev_keyed where done") or 0)
        old_keys = int(
            _one(con, "select count(*) from (select k from ev_keyed where done group by k)") or 0
        )
        if old_rows:
            run_sql(
                con,
                """
                create or replace temp table model_todo as
                select * from model where rowid in (select __rid from ev_keyed where not done);
                drop table model;
                alter table model_todo rename to model;
                """,
            )
        run_sql(con, "drop table ev_keyed")
    # every row left is of a key the ledger does not have: map each once, into the table that
    # becomes ``changes`` (no window and no sort over the payloads: at 10M rows either one
    # outgrew the state's memory limit; the rows not to send are deleted, a copy is not made)
    run_sql(
        con,
        f"""
        create or replace temp table mapped as
        select k, op, null::ubigint as h, ident, true as is_new, false as removed, ts, backfill,
               md5_number_lower(k || chr(31) || id_seed) as lo,
               md5_number_upper(k || chr(31) || id_seed) as hi, reject, __rid,
               sent_name, sent_ts
        from ({compiled.select})
        """,
    )
    new_rows = int(_one(con, "select count(*) from mapped") or 0)
    copied = new_rows if counted is not None else new_rows + old_rows
    distinct = _one(con, "select count(*) from (select k from mapped group by k)")  # spills
    dups = _repeated_events(con) if new_rows > int(distinct or 0) else 0
    rejected, samples, reasons = _rejected(con)
    drop = "__rid in (select __rid from ev_repeats)" if dups else "false"
    backfill = int(
        _one(con, f"select count(*) from mapped where reject is null and backfill and not {drop}")
        or 0
    )
    # the names of the rows that can be sent but are not (repeats, backfill skipped): the
    # contract records the names of every row that can be sent (`state.contract.record`)
    unsent = f"{drop} or backfill" if skip_backfill else drop
    history_run = (
        first_run
        and sync.event is not None
        and not sync.event.timestamp
        and sync.backfill.untimed_first_run == "skip"
    )
    run_sql(con, "drop table if exists history_rejected")
    if history_run:
        # a row rejected now is of the model's history too: recorded with the rest, its fix
        # later is not news (a row without an event id has no key to record)
        run_sql(
            con,
            f"""
            create temp table history_rejected as
            select distinct k from mapped
            where reject is not null and not starts_with(k, {lit(NULL_ID_KEY)})
            """,
        )
    run_sql(
        con,
        f"""
        create or replace temp table unsent_event_names as
        select distinct json_extract_string('{{' || op, '$.name') as n from mapped
        where reject is null and ({unsent});
        delete from mapped where reject is not null or {unsent};
        drop table if exists ev_repeats;
        alter table mapped drop column reject;
        alter table mapped drop column __rid;
        drop table if exists changes;
        alter table mapped rename to changes;
        """,
    )
    resent = 0
    if _one(con, f"select count(*) from {ids}"):  # only after an answer was lost
        resent = int(
            con.execute(
                f"""
                update changes set ts = coalesce(u.ts, changes.ts), lo = coalesce(u.lo, changes.lo),
                                   hi = coalesce(u.hi, changes.hi)
                from {ids} u where u.k = changes.k
                """
            ).fetchall()[0][0]
        )
    run_sql(con, "drop table if exists history_keys")
    history = 0
    if history_run:
        run_sql(
            con,
            f"""
            create temp table history_keys as
            select k from changes where k not in (select k from {ids});
            insert into unsent_event_names
            select distinct json_extract_string('{{' || op, '$.name') from changes
            where k in (select k from history_keys);
            delete from changes where k in (select k from history_keys);
            insert into history_keys
            select k from history_rejected
            where k not in (select k from {ids}) and k not in (select k from history_keys);
            drop table history_rejected;
            """,
        )
        history = int(_one(con, "select count(*) from history_keys") or 0)
    to_send = int(_one(con, "select count(*) from changes") or 0)
    return ChangeSet(
        kind="events",
        rows=new_rows + old_rows,
        rejected=rejected,
        to_send=to_send,
        new=to_send,
        # each key in the ledger counts once as delivered, its other rows as duplicates
        duplicates_in_model=dups + old_rows - old_keys,
        already_delivered=old_keys,
        backfill_skipped=backfill if skip_backfill else 0,
        backfill_sent=0 if skip_backfill else backfill,
        history_skipped=history,
        unconfirmed=resent,
        rows_copied=copied,
        rejected_samples=samples,
        rejected_reasons=reasons,
    )


def untimed_first_run(sync: SyncConfig, last: object) -> bool:
    """Whether this is the first run of an events sync without `event.timestamp`: no whole run
    of it committed yet (``last``, the contract of the last one, is None; a run of named
    records, `--only`, records none, so the whole run after it is still the first), or none
    since it started over (`--new-workspace`: ``Contract.started_over``; its ledger is
    forgotten). Such a sync sends every event as happening now, so on its first run it cannot
    tell the history the model holds from what just happened (`backfill.first_run`; the
    guardrail in ``guard``)."""
    return (
        sync.kind == "events"
        and sync.event is not None
        and not sync.event.timestamp
        and (last is None or bool(getattr(last, "started_over", False)))
    )


def _payloads_of(keys: str) -> str:
    """SQL of the payloads (``__rid, op``) of the rows of ``changes`` whose key is in the
    table ``keys`` and which carry none (``changes`` keeps no payload of a row mapped from the
    model, see :func:`diff_records`): built from the `payloads` view for those rows only."""
    return f"""
        select __rid, op from payloads where __rid in (
            select c.__rid from changes c semi join {keys} t on t.k = c.k where c.op is null
        )
    """


def with_payloads(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[str, str]]:
    """(key, op JSON) of the rows of ``sql`` (which selects ``k, __rid, op`` from ``changes``
    of a people, objects or relationships sync), building the payloads the diff left out."""
    rows = con.execute(sql).fetchall()
    missing = [int(rid) for _, rid, op in rows if op is None and rid is not None]
    built: dict[int, str] = {}
    if missing:
        found = con.execute(
            f"select __rid, op from payloads where __rid in ({', '.join(map(str, missing))})"
        ).fetchall()
        built = {int(rid): str(op) for rid, op in found}
    return [(str(k), str(op) if op is not None else built[int(rid)]) for k, rid, op in rows]


def sample_ops(con: duckdb.DuckDBPyConnection, limit: int = 3) -> list[tuple[str, str]]:
    """The (key, op JSON) pairs of the first few keys in the ``changes`` of a people, objects
    or relationships sync (the same rows each time for the same changes)."""
    return with_payloads(con, f"select k, __rid, op from changes order by k limit {int(limit)}")


__all__ = [
    "ChangeSet",
    "StagedEvents",
    "diff_events",
    "diff_people",
    "diff_records",
    "lit",
    "sample_ops",
    "stage_new_events",
    "untimed_first_run",
    "with_payloads",
]
