"""Embedded state: snapshots, event ledgers, the commit journal, run history, per-record history.

Everything lives in one DuckDB file, `<project>/.lockgate/state.duckdb`, guarded by an
exclusive lock file so two syncs of one project never interleave (the OS drops the
lock when a process dies, so a crash never leaves it stuck).

Tables (one set of per-sync tables, named `<table>__<sync>`):

- ``snap__S(k, h, ident, addr)``: the committed state of sync S: record key, hash of the
  payload last delivered (0 for a record a run that changed a constant did not send to,
  ``diff.mark_stale``), the identifiers it was delivered to, and the person those reach
  (:data:`PERSON_ADDRESS`: what tells a row sent now that an unchanged row reaches its person).
- ``ledger__S(k, delivered_at, name, sent_ts)``: event keys delivered by an events sync
  (append-only), with the name each event was sent under (its backfill name if it went out
  renamed) and the timestamp it was sent with (unix seconds; for a sync without
  `event.timestamp`, the time of the run that sent it): what `lockgate reconcile` looks for in
  Customer.io, whatever the model holds since. Null for the rows delivered before format 4,
  for the keys recorded without being sent (a first run's history) and for the other
  operations a sync ledgers (`on_change` events, identity merges, email clears).
- ``journal__S(run_id, k, h, ident, removed, action, status, sent_at)``: what a run has
  delivered but not folded into the snapshot yet. Flushed during delivery, folded at the end
  of the run or at the start of the next one after a crash. This is what makes a crash safe:
  what was delivered is recorded before the run moves on, and what was not is simply sent
  again. A record another sync's delete takes from the snapshot leaves the journal too
  (``diff.forget_delivered``): folded back, it would count as delivered. The records
  delivered in whole batches carry their history row here (``action``, the answer's
  ``status`` and ``sent_at``; null for the others, whose history is written as they are
  answered): it is written to ``history`` when they leave the journal (:func:`journal_history`,
  in the same transaction), so a run appends each of them once during delivery, not twice,
  and its history goes to ``history`` in one insert (format 5; `lockgate history` reads the
  rows a killed run left in the journal too).
- ``unconfirmed__S(k, run_id, action, ident)``: records sent whose answer never came (dead-lettered
  after retries, or cut off by a second SIGTERM/Ctrl-C): Customer.io may have applied them. The
  snapshot keeps what was last *confirmed* (an `on_change` event's key is made of it), and the
  next diff sends these keys again whatever their rows hold (``diff._todo``); a later
  confirmed delivery of the key takes it out (:meth:`StateStore.fold_journal`). ``action`` is
  what was sent (`identify`, `delete`, ...): a person or object whose `delete` is unconfirmed
  may be gone with its relationships, so the relationships syncs hold theirs until it is
  delivered again (``run._related_snapshots``). An objects sync's `resync_skipped` marks a
  delivered object a `--full-resync` did not send again, its row rejected
  (``diff.RESYNC_SKIPPED``): Customer.io may not hold it, so it is sent once its row can be,
  and the relationships syncs hold the relationships of that object until then.
  ``ident``: the identifiers it was sent to. A record new to the snapshot (its first
  delivery unconfirmed) may exist in Customer.io all the same: if its row leaves, a `mirror`
  run undoes it by these (``diff.unsure_new``); one whose row reaches it under a new key is
  kept, and its mark dropped once the new key is delivered (``diff.forget_rekeyed``).
- ``sending__S(kh, action, k, ident)``: the write-ahead record of what a run is about to send
  (the hash of each record's key, the action sent: `identify`, `delete`, ...; and, for the
  records new to the snapshot, the key and identifiers, which a record of it must keep to be
  undone if its row leaves before it is confirmed; a few bytes a record otherwise:
  0.1-0.2 s at 1M, ~0.4 s at 1M new), written in one insert committed before its
  first request and dropped once the run has recorded every answer (:meth:`StateStore.fold_journal`
  at its end, or when it stops or fails). A run killed outright (SIGKILL, the machine dying)
  leaves it behind with requests in flight whose answers it could not mark unconfirmed: the
  next run marks the snapshot's records it names that the journal does not confirm
  (:meth:`StateStore.recover_sending`).
- ``emails_kept__S(k, email, ident)``: people whose email Customer.io still holds though
  their row no longer has it (set to null under `on_null: skip`, or the row left a `mirror`
  sync that clears rather than deletes): the email (lowercased) and the identifiers to reach
  the person by. The snapshot, which says what the row was last sent, no longer shows it; a
  row of a later run that takes the email has it released first (``diff.order_email_moves``),
  else Customer.io would give that row's new id to this person's profile. The identity graph's
  operations count them as people that exist (``resolve.known_people``: a `mirror` sync's
  cleared person stays in Customer.io). Recorded before the run sends (it holds whether that
  update lands or not), forgotten once the email is released or replaced, or the person
  deleted.
- ``people_known__S(id, cio_id, email)``: every person a people sync has made exist in
  Customer.io (an `identify`, or a `mirror` clear, delivered to its `id` or `cio_id`, or to
  its email for a person known by email alone: ``email``, lowercased, set only for those),
  whatever its row and its email became since: written in the transaction that commits the
  delivery (``commit.Committer``), and forgotten only once Customer.io confirms the person
  gone: a `delete` of it (`delete_removed`) by any people sync of its destination, or an
  identity merge that absorbed it (``resolve.merged_away``). The snapshot forgets a row that
  left a `mirror` sync, and one whose email a later row took (``diff.forget_released_left``),
  and no longer shows the person a row reached before the identity graph keyed it to another
  (a Stripe customer whose email became a user's); the person stays in Customer.io, and the
  identity graph's operations count it as one that exists (``resolve.known_people``: a user
  who comes back with a lead's email has the lead merged into them, and a person known by
  email alone whose email joins a user's profile is merged into the user's). A set: a run that
  began with it empty appends what it delivers unread, and keeps each person once as its
  delivery ends (:meth:`StateStore.know_people`); a run killed before then leaves a person
  twice, read as one (every reader asks whether a person is in it, and a person forgotten
  leaves with all their rows). Format 6, with ``email`` from format 7; an older state's is
  filled from what it knows of its people (its snapshot and ``emails_kept__S``) as it is
  upgraded.
- ``sending_events__S(k, ts, lo, hi)``: the same write-ahead record for an events sync, with
  the dedupe id each event is about to be sent with (the columns of ``event_ids__S`` below):
  the next run moves the events of a killed run's record that the ledger does not have into
  ``event_ids__S``, so they are sent again with the id Customer.io may hold them under
  whatever their rows hold then (:meth:`StateStore.recover_sending_events`).
- ``oc_sent__S(k, ts)``: `on_change` events sent and not yet in the ledger, with the time
  they were first sent: a re-send carries that time, so the same dedupe id.
- ``event_ids__S(k, ts, lo, hi, run_id)``: events of an events sync sent whose answer never
  came (dead-lettered after retries, or cut off by a second stop), with the dedupe id they
  were sent with, as the three numbers it is made of (``deliver.event_ulids``: the columns
  ``ts, lo, hi`` of the run's ``changes``). Customer.io may hold the event under that id, so
  the next run sends the key with it whatever its row holds then (a corrected timestamp, name
  or person would make a new id: stored twice); the first id recorded for a key stays until
  the key is in the ledger (:meth:`StateStore.keep_event_ids`).
- ``unaddressed__S(side, v, h)``: for a relationships sync, its rows rejected with no person
  (``side`` `object`, ``v`` the object id) or no object (`person`, the person) in its last
  whole run that committed, with each row's hash, and the relationships that run kept for
  them (`kept`, ``v`` the key): a row rejected so that holds what it held then is none of
  the relationships that leave after (``diff._kept_unaddressed``). Made by the first run
  that writes it (a state without it counts every such row as new).
- ``rejected_objects__S(o)``: for an objects sync, the delivered objects (by `object_id`) whose
  row its last whole run rejected: a relationships run checks those its adds name before
  sending (``diff.REJECTED_OBJECTS``). Made by the first run that writes it.
- ``runs``, ``history`` (what was sent and the answer: one row per record sent, with its key
  and identifiers; the committer hands it over grouped, one row per group of records that
  got the same answer, and the insert unnests the groups; grouped rows with list columns
  made DuckDB rewrite the whole history at every checkpoint, 1 s per run at 1M records),
  ``rejected`` (rows refused by Lockgate or the API, with the reason).
- ``run_log_written(run_id, written_at)``: the finished runs already written to the warehouse's
  run log (`run_log:`; sync/runlog.py).
- ``state_format(format, written_by, recorded_at)``: the format of the state
  (:data:`STATE_FORMAT`) and the Lockgate that brought it there; a newer one is refused.
- ``upgraded(sync, step, recorded_at)``: the upgrades of a sync's tables done whole that are
  not seen in their columns (``snap_addr``: the snapshot's ``addr`` derived,
  :meth:`StateStore._add_snap_addr`).
- ``workspaces(sync, workspace, recorded_at)``: the Customer.io workspace each sync's state is
  of (:mod:`lockgate.state.workspace`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from lockgate import __version__
from lockgate.errors import StateError, StateUnwritableError
from lockgate.filelock import flock_waiting
from lockgate.sources.base import lock_held, quote_ident, quote_literal

SCHEMA = """
create table if not exists runs (
    run_id varchar primary key, sync varchar, kind varchar, started_at timestamptz,
    finished_at timestamptz, status varchar, counts json, error varchar
);
create table if not exists history (
    run_id varchar, sync varchar, k varchar, ident varchar, action varchar,
    outcome varchar, status integer, reason varchar, sent_at timestamptz
);
create table if not exists rejected (
    run_id varchar, sync varchar, k varchar, stage varchar, reason varchar, rejected_at timestamptz
);
create table if not exists run_log_written (run_id varchar primary key, written_at timestamptz);
create table if not exists upgraded (sync varchar, step varchar, recorded_at timestamptz);
"""

HISTORY_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("sync", pa.string()),
        ("keys", pa.list_(pa.string())),
        ("idents", pa.list_(pa.string())),
        ("action", pa.string()),
        ("outcome", pa.string()),
        ("status", pa.int32()),
        ("reason", pa.string()),
        ("sent_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True, slots=True)
class RunRow:
    """One line of `lockgate runs`."""

    run_id: str
    sync: str
    kind: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    counts: dict[str, Any]
    error: str | None


#: the OS errors of a write the state's disk or folder refuses: what to do about each
_FULL = "free space on that disk (or point `state:` in lockgate.yml at a folder on a bigger one)"
_NOT_YOURS = (
    "make the folder writable by the user running Lockgate (or point `state:` in lockgate.yml "
    "at a writable folder)"
)
_REFUSED = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
    errno.EROFS: _NOT_YOURS,
    errno.EACCES: _NOT_YOURS,
    errno.EPERM: _NOT_YOURS,
}
#: the file a DuckDB I/O error names (`Could not write file "/x/state.duckdb.wal": ...`)
_DUCKDB_FILE = re.compile(r'file "([^"]+)"')


def write_refused(
    exc: BaseException, where: Path | None = None, *, inside: Path | None = None
) -> StateUnwritableError | None:
    """The error to show for ``exc`` when it is the state's disk or folder refusing a write
    (full, read-only, not permitted), naming the file (the one the error names, else
    ``where``) and the fix; None for any other error, and for one naming a file outside the
    folder ``inside`` (a step's error may be a warehouse's). DuckDB reports the OS error in
    its message only (its exception types say nothing of the cause), so that is where it is
    found."""
    if isinstance(exc, OSError):
        code = exc.errno
        named = exc.filename
    elif isinstance(exc, duckdb.Error):
        text = str(exc)
        code = next((c for c in _REFUSED if os.strerror(c) in text), None)
        found = _DUCKDB_FILE.search(text)
        named = found.group(1) if found else None
    else:
        return None
    if code not in _REFUSED:
        return None
    if inside is not None and named and not Path(named).resolve().is_relative_to(inside):
        return None
    path = named or where
    what = f"state `{path}`" if path else "the state"
    return StateUnwritableError(
        f"{what} not written: {os.strerror(code).lower()}", hint=f"{_REFUSED[code]}, then run again"
    )


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection, where: Path | None = None) -> Iterator[None]:
    """One transaction on the state: committed when the block ends, rolled back when it
    raises. A commit whose write the disk refuses (full, read-only) has already ended the
    transaction inside DuckDB, so the rollback finds none: its own error is not raised over
    the cause, and the cause becomes an error naming the file and the fix
    (:func:`write_refused`), as a :class:`~lockgate.errors.StateError` the other syncs of the
    command go on after."""
    run_sql(con, "begin")
    try:
        yield
        run_sql(con, "commit")
    except BaseException as exc:
        with contextlib.suppress(duckdb.Error):
            run_sql(con, "rollback")
        refused = write_refused(exc, where)
        if refused is not None:
            raise refused from exc
        raise


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection, name: str, data: Any) -> Iterator[None]:
    """``data`` (an Arrow table or batch reader) readable by the name ``name`` on ``con`` for
    the block, and unregistered after it. When the block raises, its error is the one that goes
    on: a statement that failed inside a transaction (out of memory, a disk error) has aborted
    it, and DuckDB then refuses the unregister (`Current transaction is aborted`) until the
    rollback of whoever began the transaction, which drops a name registered inside it anyway
    (one registered before it stays until registered again or the connection resets): so the
    unregister's own error is dropped then, and no rollback is made here, where the transaction
    is not ours to end."""
    con.register(name, data)
    try:
        yield
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.unregister(name)
        raise
    con.unregister(name)


def _flatten_grouped_history(con: duckdb.DuckDBPyConnection) -> None:
    """State written before history became one row per record kept one row per group with
    ``keys``/``idents`` lists: unnest it once, in one transaction."""
    columns = {r[0] for r in con.execute("describe history").fetchall()}
    if "keys" not in columns:
        return
    with transaction(con):
        run_sql(
            con,
            """
            create table history_flat as
            select run_id, sync, unnest(keys) as k, unnest(idents) as ident, action, outcome,
                   status, reason, sent_at
            from history;
            drop table history;
            alter table history_flat rename to history;
            """,
        )


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[Any]:
    """Run a statement and consume its result (DuckDB refuses other work until then)."""
    return con.execute(sql, params).fetchall()


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the state database has the table ``name`` (a temp table of that name is not
    it). What a reader asks before reading a table a write creates: on a state opened to read
    only nothing can be created, and no table means nothing recorded yet."""
    return is_table(con, f"{CATALOG}.main.{quote_ident(name)}")


def tables_present(con: duckdb.DuckDBPyConnection, names: Collection[str]) -> set[str]:
    """Those of ``names`` the state database has as tables (not temp tables)."""
    return {name for name in names if has_table(con, name)}


def is_table(con: duckdb.DuckDBPyConnection, qualified: str) -> bool:
    """Whether ``qualified`` (`catalog.schema.name`, quoted as needed) names a table on
    ``con``: a lookup in DuckDB's catalog, ~0.1 ms, where a query of `duckdb_tables()` takes
    ~0.6 ms, and runs ~15 times a run. Every connection to the state has it as the catalog
    :data:`CATALOG` (a view of the name is not a table)."""
    try:
        return bool(con.table(qualified).type == "TABLE_RELATION")
    except duckdb.CatalogException:
        return False


#: SQL for the person a snapshot row's ``ident`` reaches as Customer.io finds it: its `id`,
#: else its `cio_id`, else its email in lower case; the same text as a people sync's ``addr``
#: (``mapping._person_address``). Null for records that are not people.
PERSON_ADDRESS = (
    "case when json_valid(ident) then coalesce('id:' || (ident->>'id'), "
    "'cio_id:' || (ident->>'cio_id'), 'email:' || lower(ident->>'email')) end"
)

EMAILS_OF_MERGES_KEPT_BACK = "emails_of_merges_kept_back"
"""The rows whose email is held by a person the identity graph found to be the row's own,
whose merge `merge_policy.enabled: false` kept back: (sync, key, `id`, email lowercased, the
holder as the merge named it). Made by the first run that needs it. A run without read-back
does not send such a row, and each run of the sync rejects it again while it gives that `id`
that email; a run with read-back sends it and must read it back to commit it (Customer.io
drops the update while the holder is not merged by hand): one that could not keeps the
record, and rejects the row, so the next run sends it again and knows it again. A sync
started over (`--new-workspace`) forgets its rows (``workspace.start_over``)."""

SENT_AT = pa.timestamp("us", tz="UTC")
"""The type of the history's `sent_at`: when Customer.io answered a record's request."""

RUNS_LOG = "runs.json"
RUNS_LOG_SIZE = 200
"""`runs.json` keeps this many of the latest runs."""
_RUNS_LOG_TIME = "%Y-%m-%dT%H:%M:%S.%f+00:00"
"""How `runs.json` spells a time (UTC), DuckDB's `strftime` and Python's alike."""


def read_runs_log(state_dir: Path, *, sync: str | None = None, limit: int = 20) -> list[RunRow]:
    """The runs as of the last start or finish of a run, from `runs.json` (no lock needed)."""
    try:
        doc = orjson.loads((state_dir / RUNS_LOG).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []
    rows = [
        RunRow(
            d["run_id"],
            d["sync"],
            d["kind"],
            datetime.fromisoformat(d["started_at"]),
            datetime.fromisoformat(d["finished_at"]) if d["finished_at"] else None,
            d["status"],
            d["counts"],
            d["error"],
        )
        for d in doc
        if sync is None or d["sync"] == sync
    ]
    return rows[:limit]


#: How long opening the state waits for its lock. A process that forks while it holds the lock
#: open (any `subprocess` call from another thread) keeps it held in the child until the child
#: execs, a few milliseconds; a run in progress holds it for its whole length.
LOCK_WAIT_SECONDS = 0.5


#: bytes DuckDB writes when it creates a database file (its three header blocks), before any
#: data: a shorter file is one whose creation was cut off
CREATED_BYTES = 3 * 4096


def _set_aside_unfinished(path: Path) -> Path | None:
    """A process killed while DuckDB was creating the state file (the first run's first
    moments) leaves it shorter than DuckDB's headers, and DuckDB then refuses it as "not a
    valid DuckDB database file" on every later run. Such a file never held a committed byte
    (data follows the headers, and nothing is written before they are): move it aside, as
    ``state.duckdb.unfinished``, so the state is created again; returns where it went (the
    caller warns). A file with a WAL beside it, or of full header size, is left alone (a
    damaged one stays an error to look at).

    A short file beside a `runs.json` that lists runs is no such file: a run is recorded
    only once the state exists, so it held them, and was cut short since (a bad copy or
    restore, a full disk, filesystem damage). Set aside, every record and event would be
    sent again as on a first run, and the run history lost: that is an error naming the file."""
    wal = path.with_name(path.name + ".wal")
    if not path.exists() or wal.exists():
        return None
    size = path.stat().st_size
    if size >= CREATED_BYTES:
        return None
    earlier = read_runs_log(path.parent, limit=RUNS_LOG_SIZE)
    if earlier:
        last = max(earlier, key=lambda r: r.started_at)
        raise StateError(
            f"the state database `{path}` is {size:,} bytes, too short to hold anything, but "
            f"`{path.with_name(RUNS_LOG)}` lists {len(earlier)} earlier "
            f"run{'s' if len(earlier) != 1 else ''} (the latest {last.run_id} of sync "
            f"`{last.sync}`): the file was cut short (a bad copy or restore, a full disk?)",
            hint="restore it from a backup; or, to start over, move it away (the next runs "
            "then send every record and event again, as first runs do)",
        )
    aside = path.with_name(path.name + ".unfinished")
    os.replace(path, aside)
    return aside


#: The format of the state, recorded in it (table ``state_format``). Raise it with a change that
#: makes the state unsafe for the Lockgate before it (a table it fills without naming columns
#: gains one, a table's meaning changes): that Lockgate then refuses the state as it opens it,
#: naming the version that wrote it, where it would otherwise fail part-way through a run,
#: after sending, or misread what was delivered. (Lockgates from before the format was
#: recorded do not read it.)
STATE_FORMAT = 7
# 2: ``sending__S`` gains ``action`` (a Lockgate of format 1 inserts into it unnamed)
# 3: ``unconfirmed__S`` gains ``ident`` (a Lockgate of format 2 inserts into it unnamed), and
#    ``sending__S`` ``k`` and ``ident`` (of the records new to the snapshot)
# 4: ``ledger__S`` gains ``name`` and ``sent_ts`` (a Lockgate of format 3 inserts into it
#    unnamed); the rows from before have them null
# 5: ``journal__S`` gains ``action``, ``status`` and ``sent_at``, and holds the history of the
#    records delivered in whole batches until they are folded (a Lockgate of format 4 inserts
#    into it unnamed, and would fold them without writing their history)
# 6: ``people_known__S``, the people each people sync made exist until Customer.io confirms
#    them gone (a Lockgate of format 5 would deliver and delete people without keeping it)
# 7: ``people_known__S`` gains ``email``, the people known by email alone (a Lockgate of
#    format 6 inserts into it unnamed, and would forget them with their records)
#: The oldest format whose run list, history and rejected rows the commands that only read
#: (`lockgate runs`, `history`) read as they are, without upgrading it
READ_FORMAT = 1


def _check_format(con: duckdb.DuckDBPyConnection, path: Path, *, read_only: bool = False) -> None:
    """Refuse a state of a newer format than this Lockgate knows (:data:`STATE_FORMAT`)."""
    if not read_only:
        run_sql(
            con,
            "create table if not exists state_format "
            "(format integer, written_by varchar, recorded_at timestamptz)",
        )
    rows = run_sql(con, "select format, written_by from state_format order by format desc limit 1")
    if rows and rows[0][0] > STATE_FORMAT:
        found, written_by = rows[0]
        raise StateError(
            f"the state `{path}` is of state format {found}, written by Lockgate {written_by}; "
            f"this Lockgate ({__version__}) knows state formats up to {STATE_FORMAT}, and "
            "could misread it (send records again, or skip some)",
            hint=f"upgrade Lockgate to {written_by} or later (`pip install -U lockgate`) to use "
            "this state; to go back to this version, restore a state it wrote (a backup)",
        )


def _record_format(con: duckdb.DuckDBPyConnection) -> None:
    """Record :data:`STATE_FORMAT` once the state's schema is up to it."""
    rows = run_sql(con, "select max(format) from state_format")
    if rows[0][0] is None or rows[0][0] < STATE_FORMAT:
        run_sql(con, "delete from state_format")
        run_sql(
            con,
            "insert into state_format values (?, ?, ?)",
            [STATE_FORMAT, __version__, datetime.now(UTC)],
        )


#: the name the state database has on its connection (as `duckdb.connect` of `state.duckdb`
#: names it, and as it is attached to a kept instance: :class:`_Engines`)
CATALOG = "state"


class _Engines:
    """In-memory DuckDB instances kept for the process: each open of a state attaches its file
    to one (``attach ... as state``, which the store's connection `USE`s) and its close detaches
    it again.

    Starting a DuckDB instance costs ~15 ms of CPU (it fills its catalog with every built-in
    function) and closing one ~4 ms (it empties it again); attaching a file to one already
    started costs ~1 ms. Every run without a session of its own (`lockgate sync A`, each round
    of `lockgate schedule`, each plan) opened the state's file as an instance of its own, and
    paid that each time. Detaching checkpoints and closes the file as closing its own instance
    did: the file is free for another process (or a read-only open here) at once, and a crash
    leaves the WAL to replay as before. One instance per state file at a time, as its
    settings (memory limit, threads, spill folder) are instance-wide; the last :attr:`KEEP`
    left idle are kept, older ones closed, and a state with none of its own takes over the
    one idle longest, its spill folder moved (:meth:`_taken_over`). Opens of the state come
    from several threads (the scheduler, the crash harness): one lock guards the idle ones."""

    KEEP = 2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: the instance-wide settings each instance has (by `id`), as :func:`_configure` set
        #: them
        self.settings: dict[int, str] = {}
        self._idle: collections.OrderedDict[str, duckdb.DuckDBPyConnection] = (
            collections.OrderedDict()
        )

    def attach(
        self, path: Path
    ) -> tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection, bool]:
        """An instance with ``path`` attached as :data:`CATALOG`, a new connection to it that
        `USE`s it, and whether the instance is new. Raises DuckDB's error for a file it cannot
        open (the instance closed: one DuckDB invalidated would refuse every later attach)."""
        with self._lock:
            engine = self._idle.pop(str(path.absolute()), None)
            if engine is None and self._idle:  # the one idle longest, another state's
                engine = self._idle.popitem(last=False)[1]
                engine = self._taken_over(engine, path)
        fresh = engine is None
        if engine is None:
            engine = duckdb.connect(":memory:")
            self.settings.pop(id(engine), None)  # the `id` of one closed before
        try:
            engine.execute(f"attach {quote_literal(str(path))} as {CATALOG}")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                engine.close()
            raise
        con = engine.cursor()
        try:
            con.execute(f"use {CATALOG}")
        except BaseException:
            con.close()
            self.detach(path, engine)
            raise
        return engine, con, fresh

    @staticmethod
    def _taken_over(
        engine: duckdb.DuckDBPyConnection, path: Path
    ) -> duckdb.DuckDBPyConnection | None:
        """``engine``, idle since another state was detached from it, with its spill folder
        moved to ``path``'s (its instance-wide settings are set again at open when they
        differ, :func:`_configure`): starting an instance is ~25 ms of CPU, a process that
        opens many states (a test suite, a host of projects) paid it at each. None when DuckDB
        refuses the move (the folder has been spilled into: it is in use for good), the
        instance closed then."""
        try:
            engine.execute(f"set temp_directory={quote_literal(str(path.parent / 'tmp'))}")
        except duckdb.Error:
            with contextlib.suppress(duckdb.Error):
                engine.close()
            return None
        return engine

    def detach(self, path: Path, engine: duckdb.DuckDBPyConnection) -> None:
        """Detach the state from ``engine`` (its connections closed first) and keep the
        instance for the next open; an instance that cannot (one DuckDB invalidated after a
        fatal error) is closed instead."""
        try:
            engine.execute(f"detach {CATALOG}")
        except duckdb.Error:
            with contextlib.suppress(duckdb.Error):
                engine.close()
            return
        self._keep(path, engine)

    def _keep(self, path: Path, engine: duckdb.DuckDBPyConnection) -> None:
        with self._lock:
            self._idle[str(path.absolute())] = engine
            closing = []
            while len(self._idle) > self.KEEP:
                closing.append(self._idle.popitem(last=False)[1])
        for old in closing:
            with contextlib.suppress(duckdb.Error):
                old.close()


_ENGINES = _Engines()


def _open_database(
    path: Path, memory_limit: str | None
) -> tuple[duckdb.DuckDBPyConnection, bool, duckdb.DuckDBPyConnection]:
    """The state database, with the settings every run relies on, its schema up to date;
    whether it recorded the current format already (not upgraded, nor new, by this open); and
    the kept instance it is attached to (:class:`_Engines`), to detach it from at close."""
    try:
        engine, con, fresh = _ENGINES.attach(path)
    except duckdb.Error as exc:
        refused = write_refused(exc, path)  # not a damaged file: a full or read-only disk
        if refused is not None:
            raise refused from exc
        raise StateError(
            f"cannot open the state database `{path}`: {exc}",
            hint="if the file is damaged, move it away; the next run is then a full resync",
        ) from exc
    try:
        _configure(con, path, memory_limit, fresh=fresh, engine=engine)
        current = _recorded_format(con, path) == STATE_FORMAT
        if not current:
            _check_format(con, path)
            run_sql(con, SCHEMA)
            _flatten_grouped_history(con)
            _record_format(con)
    except BaseException:
        con.close()
        _ENGINES.detach(path, engine)
        raise
    return con, current, engine


def _recorded_format(con: duckdb.DuckDBPyConnection, path: Path) -> int | None:
    """The state format the state records (None: none yet, a new state), refusing one newer
    than :data:`STATE_FORMAT`. A state that records the current format was brought up to it
    (:data:`SCHEMA` made, history flattened) by the open that recorded it: the next opens
    skip that work, the half of an open's statements."""
    try:
        rows = run_sql(con, "select max(format) from state_format")
    except duckdb.CatalogException:
        return None
    found = rows[0][0]
    if found is not None and found > STATE_FORMAT:
        _check_format(con, path, read_only=True)  # the error naming the version that wrote it
    return None if found is None else int(found)


#: DuckDB's memory limit on the state's connection; past it, joins, sorts and group-bys
#: spill to ``tmp/`` in the state folder
MEMORY_LIMIT = "256MB"
#: the environment variable that sets another limit (tests run the engine under a tiny one,
#: so that an operator that cannot spill runs out of memory on a small model)
MEMORY_LIMIT_ENV = "LOCKGATE_STATE_MEMORY_LIMIT"
#: the environment variable that sets how many threads DuckDB runs the state's queries on
#: (one per core by default); the memory limit is shared among them
THREADS_ENV = "LOCKGATE_STATE_THREADS"


def _memory_limit(given: str | None) -> str:
    """The state's memory limit: ``given``, else :data:`MEMORY_LIMIT_ENV`'s, else 256MB."""
    if given:
        return given
    value = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not value:
        return MEMORY_LIMIT
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", value, re.IGNORECASE):
        raise StateError(
            f"{MEMORY_LIMIT_ENV}={value!r} is not a memory size",
            hint=f"give a size such as 256MB or 1GB, or unset {MEMORY_LIMIT_ENV} for the "
            f"default ({MEMORY_LIMIT})",
        )
    return value


def _threads() -> int | None:
    """The threads :data:`THREADS_ENV` asks for, if it is set."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise StateError(
            f"{THREADS_ENV}={value!r} is not a number of threads",
            hint=f"give a whole number of at least 1, or unset {THREADS_ENV} for one thread "
            "per core",
        )
    return int(value)


def _configure(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    memory_limit: str | None,
    tmp: Path | None = None,
    *,
    fresh: bool = True,
    engine: duckdb.DuckDBPyConnection | None = None,
) -> None:
    """The settings every use of the state relies on, in one call. ``tmp`` is where queries
    over the memory limit spill: the state folder's `tmp` unless given (a reader's own
    folder); set on a ``fresh`` instance only, as DuckDB refuses to set it again once used (a
    kept one, :class:`_Engines`, is the same state's, its spill folder set when it started).
    Set once the database is open, not given to `duckdb.connect`: DuckDB refuses a second
    connection to a file with other settings than the first. On a kept instance (``engine``,
    not ``fresh``) that has the instance-wide ones already, only the connection's own are set
    (~2 ms less of each open)."""
    threads = _threads()
    instance = [
        f"set memory_limit='{_memory_limit(memory_limit)}'",
        # a kept instance goes back to one thread per core when the variable is gone since
        f"set threads={threads}" if threads is not None else "reset threads",
        "set preserve_insertion_order=false",
        # checkpoint at close rather than during a run: commits stay cheap, and the WAL is
        # replayed after a crash
        "set checkpoint_threshold='4GB'",
    ]
    connection = [
        "set enable_progress_bar=false",  # progress is drawn by the console
        # mapping runs here: a text timestamp without an offset is UTC, and a TIMESTAMPTZ's
        # text is its UTC text, on any machine (not in the zone of the one running the sync)
        "set TimeZone='UTC'",
    ]
    wanted = "; ".join(instance)
    if engine is not None and not fresh and _ENGINES.settings.get(id(engine)) == wanted:
        run_sql(con, "; ".join(connection))
        return
    spill = [f"set temp_directory='{tmp or path.parent / 'tmp'}'"] if fresh else []
    run_sql(con, "; ".join([*instance, *spill, *connection]))
    if engine is not None:
        _ENGINES.settings[id(engine)] = wanted


def _open_database_read_only(
    path: Path, memory_limit: str | None, tmp: Path
) -> duckdb.DuckDBPyConnection:
    """The state database opened to read only: nothing created, upgraded or written, so a
    state on a read-only disk (a backup, a read-only mount) reads as well; a query over the
    memory limit spills into ``tmp``, outside the state folder. No state file yet reads as an
    empty state (an in-memory one)."""
    if not path.exists():
        con = duckdb.connect(":memory:")
        run_sql(con, f"attach ':memory:' as {CATALOG}; use {CATALOG}")
        _configure(con, path, memory_limit, tmp)
        run_sql(con, SCHEMA)
        return con
    # its catalog is named after the file: `state`, as :data:`CATALOG` names it
    assert path.stem == CATALOG, path
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        if lock_held(exc):  # a process writing it, from before `state.lock`
            raise _in_use(path.parent, "another process") from exc
        raise StateError(
            f"cannot open the state database `{path}` to read it: {exc}",
            hint="if the file is damaged, move it away; the next run is then a full resync",
        ) from exc
    try:
        _configure(con, path, memory_limit, tmp)
        tables = run_sql(con, "select 1 from duckdb_tables() where table_name = 'state_format'")
        rows = run_sql(con, "select max(format) from state_format") if tables else [(None,)]
        found = rows[0][0]
        if found is None or found < READ_FORMAT:
            raise StateError(
                f"the state `{path}` is of an older state format ({found or 0}; this Lockgate "
                f"reads {READ_FORMAT} and later), and this command only reads it, so it does not "
                "upgrade it",
                hint="run `lockgate sync` or `lockgate plan` once where the state can be "
                "written: that upgrades it",
            )
        _check_format(con, path, read_only=True)
    except BaseException:
        con.close()
        raise
    return con


def _in_use(state_dir: Path, holder: str) -> StateError:
    return StateError(
        f"the project state in `{state_dir}` is in use by {holder}",
        hint="wait for the running sync to finish; a crashed process releases it by itself",
    )


#: the tables each sync has (``<name>__<sync>``, :meth:`StateStore.ensure_sync_tables`)
SYNC_TABLES = (
    "snap",
    "ledger",
    "journal",
    "unconfirmed",
    "oc_sent",
    "emails_kept",
    "sending",
    "sending_events",
    "event_ids",
)

#: the mark (in ``upgraded``) of a sync whose tables :meth:`StateStore.ensure_sync_tables`
#: made, or brought up to this state format, whole: the runs after it ask one question
#: instead of a score (their creation, each upgrade's columns). Written once every step is
#: done, so a Lockgate killed half-way leaves no mark and the next run finishes the work; a
#: state of an older format is upgraded whatever marks it holds.
TABLES_STEP = f"tables@{STATE_FORMAT}"


def known_of(idents: str) -> str:
    """SQL: ``(id, cio_id, email)`` of the people the ``ident`` JSON of the rows of ``idents``
    (a table, or a query in parentheses) reaches (what ``people_known__S`` holds): by `id` or
    `cio_id`, ``email`` null; or, reached by email alone, by that email (lowercased, as
    Customer.io matches it). A record that is no person's (an object's, a relationship's),
    none."""
    return (
        "select id, cio_id, case when id is null and cio_id is null then lower(email) end "
        "as email from (select case when json_valid(ident) then ident->>'id' end as id, "
        "case when json_valid(ident) then ident->>'cio_id' end as cio_id, "
        "case when json_valid(ident) then ident->>'email' end as email "
        f"from {idents}) where coalesce(id, cio_id, email) is not null"
    )


def table(name: str, sync: str) -> str:
    """The quoted per-sync table name, e.g. ``"snap__customer_profile"``."""
    return f'"{name}__{sync}"'


class StateStore:
    """The state of one project. Use as a context manager; holds the project lock while open.

    Example::

        with StateStore.open(project.state_dir) as state:
            runs = state.runs(limit=10)
    """

    def __init__(
        self,
        path: Path,
        con: duckdb.DuckDBPyConnection,
        lock_fd: int | None,
        *,
        current: bool = False,
    ) -> None:
        self.path = path
        #: whether the state recorded the current format when opened: then a sync whose
        #: tables are marked made at this format (:data:`TABLES_STEP`) needs nothing more
        self._current = current
        self.con = con
        self._lock_fd = lock_fd
        #: a reader's own spill folder, removed at close (a read-only state's folder takes none)
        self._tmp_dir: Path | None = None
        self.set_aside: Path | None = None
        """Where opening moved a state file cut off while it was created (see
        :func:`_set_aside_unfinished`): the first run to open the store warns of it."""
        self._ensured: set[str] = set()
        """The syncs whose tables :meth:`ensure_sync_tables` made sure of and committed."""
        self._asked_upgraded = False
        """Whether ``_ensured`` has every sync the table `upgraded` marks done."""
        self._engine: duckdb.DuckDBPyConnection | None = None
        """The kept instance the state is attached to (:class:`_Engines`), for a store opened
        to write: detached at close."""
        self.workspaces: dict[str, str] | None = None
        """The workspace recorded for each sync, as read once (``state.workspace``, which
        forgets it when it writes the table); None until read."""
        self.memo: dict[str, Any] = {}
        """What a command reads once outside the state and its syncs share while the handle
        lives (``sync.runlog.committed_runs_of``: the warehouse's run log)."""

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        memory_limit: str | None = None,
        wait: float = LOCK_WAIT_SECONDS,
        waiting: Callable[[str], None] | None = None,
    ) -> StateStore:
        """Open the project's state, taking its lock; ``wait`` seconds at most for a process
        that holds it (``waiting`` is told who, once, when it does)."""
        lock_path = state_dir / "state.lock"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_refused(exc, lock_path) or StateError(
                f"cannot use the state folder `{state_dir}`: {exc.strerror}",
                hint="`state:` in lockgate.yml must name a folder Lockgate can create and write "
                "(not a file)",
            ) from exc
        try:
            if wait > LOCK_WAIT_SECONDS and not flock_waiting(fd, LOCK_WAIT_SECONDS):
                if waiting is not None:
                    waiting(lock_path.read_text().strip() or "another process")
                taken = flock_waiting(fd, wait - LOCK_WAIT_SECONDS, poll=0.5)
            else:
                taken = flock_waiting(fd, wait)
        except BaseException:  # stopped while it waited (SIGTERM, Ctrl-C): the lock file's
            os.close(fd)  # descriptor is not left open in the process
            raise
        if not taken:
            os.close(fd)
            raise _in_use(state_dir, lock_path.read_text().strip() or "another process") from None
        try:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()}".encode())
            except OSError as exc:  # a full disk: no block for the few bytes
                refused = write_refused(exc, lock_path)
                if refused is None:
                    raise
                raise refused from exc
            path = state_dir / "state.duckdb"
            aside = _set_aside_unfinished(path)
            con, current, engine = _open_database(path, memory_limit)
            store = cls(path, con, fd, current=current)
            store._engine = engine
            store.set_aside = aside
            return store
        except BaseException:
            os.close(fd)  # whatever failed, the lock is not left held by this process
            raise

    @classmethod
    def open_read_only(
        cls, state_dir: Path, *, memory_limit: str | None = None, wait: float = LOCK_WAIT_SECONDS
    ) -> StateStore:
        """Open the project's state to read it only (`lockgate runs`, `history`): nothing in
        the folder is created or written, so a read-only copy or mount of the state reads as
        well as the live one. Readers share the project lock: they read together, and a sync
        waits for them (as they wait ``wait`` seconds at most for a sync, then fail saying
        who holds it: DuckDB lets no other process read a database one is writing)."""
        lock_path = state_dir / "state.lock"
        try:
            fd: int | None = os.open(lock_path, os.O_RDONLY)
        except FileNotFoundError:  # no state yet, or a copy without its lock file
            fd = None
        except OSError as exc:
            raise StateError(
                f"cannot read the state folder `{state_dir}`: {exc.strerror}",
                hint="`state:` in lockgate.yml must name a folder this user can read",
            ) from exc
        if fd is not None and not flock_waiting(fd, wait, shared=True):
            os.close(fd)
            raise _in_use(state_dir, lock_path.read_text().strip() or "another process")
        tmp = Path(tempfile.mkdtemp(prefix="lockgate-state-read-"))
        try:
            store = cls(
                state_dir / "state.duckdb",
                _open_database_read_only(state_dir / "state.duckdb", memory_limit, tmp),
                fd,
            )
        except BaseException:
            if fd is not None:
                os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        store._tmp_dir = tmp
        return store

    def exec_sql(self, sql: str, params: list[Any] | None = None) -> list[Any]:
        """Run a statement on the state; a write its disk or folder refuses is an error
        naming the file and the fix (:func:`write_refused`)."""
        try:
            return run_sql(self.con, sql, params)
        except duckdb.Error as exc:
            refused = write_refused(exc, self.path)
            if refused is not None:
                raise refused from exc
            raise

    def writer(self) -> StateStore:
        """A second handle on the same database (for writing while a result is streamed): a
        connection of its own, on the state database, in UTC as the store's."""
        con = self.con.cursor()
        try:
            run_sql(con, f"use {CATALOG}; set TimeZone='UTC'")
        except BaseException:
            con.close()
            raise
        return StateStore(self.path, con, None)

    def reset_connection(self, keep: Collection[str] = ()) -> None:
        """Drop what a run leaves on the connection for the next run on it: its temp tables
        and views (a `--full-resync` run's empty stand-in for a snapshot among them), and a
        transaction a failure left open. The temp tables named in ``keep`` stay (what the
        plans of a command keep for the later ones, ``sync.planned``)."""
        with contextlib.suppress(duckdb.Error):
            run_sql(self.con, "rollback")
        temps = self.con.execute(
            "select 'table', table_name from duckdb_tables() where temporary "
            "union all select 'view', view_name from duckdb_views() "
            "where temporary and not internal"
        ).fetchall()
        drops = [
            f"drop {kind} if exists temp.main.{quote_ident(name)}"
            for kind, name in temps
            if not (kind == "table" and name in keep)
        ]
        if drops:  # in one call: ~14 a run, each a round trip of its own otherwise
            run_sql(self.con, "; ".join(drops))

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.con.close()
        if self._engine is not None:  # detached (checkpointed) before the lock is let go
            _ENGINES.detach(self.path, self._engine)
            self._engine = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ per-sync tables

    def ensure_sync_tables(self, sync: str) -> None:
        """Create the sync's tables, or bring those of an older state format up to date.
        Once per sync and handle: a run asks for every sync's tables many times (the identity
        graph's steps look at each people sync), ~5 ms of statements each time; and once
        marked done at this format (:data:`TABLES_STEP`), one question per handle after,
        which answers for every sync (a run of a project of several syncs asks for each)."""
        if sync in self._ensured:
            return
        if self._current and not self._asked_upgraded:
            self._asked_upgraded = True
            self._ensured.update(
                str(r[0])
                for r in self.exec_sql("select sync from upgraded where step = ?", [TABLES_STEP])
            )
            if sync in self._ensured:
                return
        self._create_sync_tables(sync)
        if not self._in_transaction():  # else a rollback may take the tables back
            self.exec_sql(
                "insert into upgraded select ?, ?, ? where not exists "
                "(select 1 from upgraded where sync = ? and step = ?)",
                [sync, TABLES_STEP, datetime.now(UTC), sync, TABLES_STEP],
            )
            self._ensured.add(sync)

    def _in_transaction(self) -> bool:
        """Whether a transaction is open on the connection (DuckDB refuses a second `begin`)."""
        try:
            run_sql(self.con, "begin")
        except duckdb.TransactionException:
            return True
        run_sql(self.con, "commit")
        return False

    def _create_sync_tables(self, sync: str) -> None:
        snap = table("snap", sync)
        # a sync none of whose tables exist yet (its first run) gets them whole, at this
        # format: none of the upgrades below has anything to do (~10 statements spared)
        new = not tables_present(self.con, [f"{name}__{sync}" for name in SYNC_TABLES])
        self.exec_sql(
            f"create table if not exists {snap} "
            "(k varchar, h ubigint, ident varchar, addr varchar);"
            f"create table if not exists {table('ledger', sync)} "
            "(k varchar, delivered_at timestamptz, name varchar, sent_ts bigint);"
            f"create table if not exists {table('journal', sync)} "
            "(run_id varchar, k varchar, h ubigint, ident varchar, removed boolean, "
            "action varchar, status integer, sent_at timestamptz);"
            f"create table if not exists {table('unconfirmed', sync)} "
            "(k varchar, run_id varchar, action varchar, ident varchar);"
            f"create table if not exists {table('oc_sent', sync)} (k varchar, ts bigint);"
            f"create table if not exists {table('emails_kept', sync)} "
            "(k varchar, email varchar, ident varchar);"
            f"create table if not exists {table('sending', sync)} "
            "(kh ubigint, action varchar, k varchar, ident varchar);"
            f"create table if not exists {table('sending_events', sync)} "
            "(k varchar, ts bigint, lo ubigint, hi ubigint);"
            # a state from before it gets it here, empty: its events went out with ids made of
            # their rows, which is what they still get when it holds nothing
            f"create table if not exists {table('event_ids', sync)} "
            "(k varchar, ts bigint, lo ubigint, hi ubigint, run_id varchar);"
        )
        if new:  # its snapshot has `addr` from the start: recorded as `_add_snap_addr` does
            self.exec_sql(
                "insert into upgraded values (?, 'snap_addr', ?)", [sync, datetime.now(UTC)]
            )
            # a first run knows no person yet: `_add_people_known` fills it only for a state
            # from before format 6
            self.exec_sql(
                f"create table if not exists {table('people_known', sync)} "
                "(id varchar, cio_id varchar, email varchar)"
            )
            return
        self._add_snap_addr(sync)
        self._add_unconfirmed_action(sync)
        self._add_ledger_sent(sync)
        self._add_journal_history(sync)
        self._add_people_known(sync)  # reads the journal's `action` (format 5)
        self._add_people_known_email(sync)
        sending = table("sending", sync)
        columns = {r[0] for r in self.con.execute(f"describe {sending}").fetchall()}
        if "action" not in columns:
            # a write-ahead record of the state format before 2: its records' action unknown
            self.exec_sql(f"alter table {sending} add column action varchar")
        # before format 3: no record new to the snapshot is named (none is undone). Each
        # column on its own: a Lockgate killed between the two statements left `k` alone
        for column in ("k", "ident"):
            if column not in columns:
                self.exec_sql(f"alter table {sending} add column if not exists {column} varchar")

    def _add_people_known(self, sync: str) -> None:
        """Create ``people_known__S``, filled, for a state from before format 6, with the
        people it knows the sync made exist: those its snapshot and the journal of a killed
        run say were delivered (a record that left, its clear: not its delete) and those
        ``emails_kept__S`` keeps an email for (a `mirror` row cleared). One transaction: a
        Lockgate killed here leaves no table, and the next one fills it. The people whose
        row left a `mirror` sync before, or whose email was released since, are forgotten
        by such a state already: nothing tells them from people never delivered."""
        known = table("people_known", sync)
        if has_table(self.con, f"people_known__{sync}"):
            return
        with transaction(self.con, self.path):
            self.exec_sql(f"create table {known} (id varchar, cio_id varchar, email varchar)")
            self.exec_sql(
                f"insert into {known} select distinct id, cio_id, email "
                f"from ({known_of(self._delivered_idents(sync))})"
            )

    def _delivered_idents(self, sync: str) -> str:
        """SQL selecting the ``ident`` of every person the state knows the people sync
        ``sync`` delivered: its snapshot, the journal of a killed run (a record that left,
        its clear: not its delete) and ``emails_kept__S`` (a `mirror` row cleared)."""
        return f"""(
            select ident from {table("snap", sync)}
            union all select ident from {table("journal", sync)}
            where not removed or action = 'clear'
            union all select ident from {table("emails_kept", sync)}
        )"""

    def _add_people_known_email(self, sync: str) -> None:
        """Give ``people_known__S`` of a state of format 6 its ``email`` column, filled with
        the people known by email alone that the sync's snapshot, journal and kept emails say
        it delivered. One transaction: a Lockgate killed here leaves the table as it was,
        and the next one does it again. Those a record no longer shows (its row left a
        `mirror` sync, or the graph keyed it to another person) are forgotten by such a
        state already."""
        known = table("people_known", sync)
        columns = {r[0] for r in self.con.execute(f"describe {known}").fetchall()}
        if "email" in columns:
            return
        with transaction(self.con, self.path):
            self.exec_sql(f"alter table {known} add column email varchar")
            self.exec_sql(
                f"insert into {known} select distinct id, cio_id, email "
                f"from ({known_of(self._delivered_idents(sync))}) where email is not null"
            )

    def knows_people(self, sync: str) -> bool:
        """Whether ``people_known__S`` of the people sync ``sync`` holds anyone."""
        known = table("people_known", sync)
        return bool(self.exec_sql(f"select exists (select 1 from {known})")[0][0])

    def know_people(self, sync: str, delivered: pa.Table, *, unseen: bool = False) -> None:
        """Record in ``people_known__S`` the people reached by the records ``delivered``
        (:func:`known_of`; ``ident``: their identifiers JSON; ``action``: a `delete` is left
        out), in the caller's transaction: what commits their delivery.

        Those already known are left out (an anti join against the table), unless ``unseen``:
        the table held no one when the run began (:meth:`knows_people`), so none of them can
        be known from before it, and they are appended as they come, without reading the
        table (at a first sync of 1M people, ~100 flushes each reading all the table held
        so far cost ~1.5 s of CPU). A person the run delivers twice is then in the table
        twice, until :meth:`settle_known_people` at the end of its delivery: every reader
        takes the table as a set (membership, deletes of every row of a person)."""
        if not delivered.num_rows:
            return
        known = table("people_known", sync)
        with registered(self.con, "_known_delivered", delivered):
            sent = "(select ident from _known_delivered where action is distinct from 'delete')"
            if unseen:
                self.exec_sql(f"insert into {known} {known_of(sent)}")
                return
            self.exec_sql(
                f"""
                insert into {known}
                select distinct n.id, n.cio_id, n.email from ({known_of(sent)}) n
                anti join {known} p  -- equalities, not `is not distinct from`: a hash join
                    on coalesce(p.id, '') = coalesce(n.id, '')
                    and coalesce(p.cio_id, '') = coalesce(n.cio_id, '')
                    and coalesce(p.email, '') = coalesce(n.email, '')
                """
            )

    def settle_known_people(self, sync: str) -> int:
        """Keep each person of ``people_known__S`` once, after a delivery that appended to
        it without reading it (:meth:`know_people` ``unseen``): one check of the table
        (~0.1 s at 1M), and a rewrite only if a person is in it twice (the run delivered
        them twice: an answer retried, two rows of one person). One transaction: a Lockgate
        killed before or during it leaves the repeats, which read as one person. Returns
        how many rows went."""
        known = table("people_known", sync)
        # rows of equal hashes: none, and no row repeats another; some, and the rewrite
        # keeps one of each (a mere collision costs a rewrite that changes nothing)
        distinct = f"select count(*) - count(distinct hash(id, cio_id, email)) from {known}"
        if not self.exec_sql(distinct)[0][0]:
            return 0
        with transaction(self.con, self.path):
            before = self.exec_sql(f"select count(*) from {known}")[0][0]
            self.exec_sql(
                f"create or replace temp table _known_once as select distinct * from {known}"
            )
            self.exec_sql(f"delete from {known}")
            self.exec_sql(f"insert into {known} select id, cio_id, email from _known_once")
            after = self.exec_sql("select count(*) from _known_once")[0][0]
            self.exec_sql("drop table _known_once")
        return int(before - after)

    def _add_ledger_sent(self, sync: str) -> None:
        """A ledger from before format 4: add ``name`` and ``sent_ts``, null for the events
        it holds (`lockgate reconcile` reads theirs from the model, as before). Two column
        additions, each done only if missing and both in one transaction: a Lockgate killed
        here leaves the ledger as it was, or upgraded; the next one finishes it."""
        ledger = table("ledger", sync)
        columns = {r[0] for r in self.con.execute(f"describe {ledger}").fetchall()}
        if {"name", "sent_ts"} <= columns:
            return
        with transaction(self.con, self.path):
            self.exec_sql(f"alter table {ledger} add column if not exists name varchar")
            self.exec_sql(f"alter table {ledger} add column if not exists sent_ts bigint")

    def _add_journal_history(self, sync: str) -> None:
        """A journal from before format 5: add ``action``, ``status`` and ``sent_at``, null for
        the records it holds (their history was written as they were answered). In one
        transaction, each column only if missing: a Lockgate killed here leaves the journal
        as it was, or upgraded."""
        journal = table("journal", sync)
        columns = {r[0] for r in self.con.execute(f"describe {journal}").fetchall()}
        if {"action", "status", "sent_at"} <= columns:
            return
        with transaction(self.con, self.path):
            self.exec_sql(f"alter table {journal} add column if not exists action varchar")
            self.exec_sql(f"alter table {journal} add column if not exists status integer")
            self.exec_sql(f"alter table {journal} add column if not exists sent_at timestamptz")

    def _add_snap_addr(self, sync: str) -> None:
        """A snapshot from before ``addr``: add it and derive it from ``ident``, once, in one
        transaction, and record that in ``upgraded``. A Lockgate before that record added the
        column and filled it in two statements, each committed on its own: one killed between
        them left the column empty, and the shared-person counts (``diff._shared_people``) blind
        to the people of the rows it held. Here a snapshot not recorded as upgraded has its
        empty ``addr`` derived (what the fold writes for every row anyway: the same text), so
        that is mended too; once recorded, nothing more is read."""
        snap = table("snap", sync)
        columns = {r[0] for r in self.con.execute(f"describe {snap}").fetchall()}
        done = self.exec_sql("select 1 from upgraded where sync = ? and step = 'snap_addr'", [sync])
        if done and "addr" in columns:
            return
        with transaction(self.con, self.path):
            self.exec_sql(f"alter table {snap} add column if not exists addr varchar")
            self.exec_sql(
                f"update {snap} set addr = {PERSON_ADDRESS} "
                f"where addr is null and {PERSON_ADDRESS} is not null"
            )
            if not done:
                self.exec_sql(
                    "insert into upgraded values (?, 'snap_addr', ?)", [sync, datetime.now(UTC)]
                )

    def _add_unconfirmed_action(self, sync: str) -> None:
        """An ``unconfirmed`` table from before ``action``: add it, once, and fill it from the
        history of the run that sent each record (a dead letter's row there says `delete` or
        `identify`). A record cut off in flight has no history row: its action stays unknown,
        and it counts as no delete."""
        unconfirmed = table("unconfirmed", sync)
        columns = {r[0] for r in self.con.execute(f"describe {unconfirmed}").fetchall()}
        if "action" in columns:
            self._add_unconfirmed_ident(sync, columns)
            return
        self.exec_sql("begin")
        try:
            self.exec_sql(f"alter table {unconfirmed} add column if not exists action varchar")
            self.exec_sql(
                f"""
                update {unconfirmed} u set action = h.action
                from (select run_id, k, max(action) as action from history
                      where sync = ? group by run_id, k) h
                where h.run_id = u.run_id and h.k = u.k
                """,
                [sync],
            )
            self.exec_sql("commit")
        except duckdb.Error:
            self.exec_sql("rollback")
            raise
        self._add_unconfirmed_ident(sync, columns | {"action"})

    def _add_unconfirmed_ident(self, sync: str, columns: set[str]) -> None:
        """An ``unconfirmed`` table from before ``ident`` (format 3): add it, once, and fill
        it from the history of the run that sent each record, for the records the snapshot
        does not have (new ones, whose row may leave before they are confirmed: a `mirror`
        run undoes them by these identifiers)."""
        if "ident" in columns:
            return
        unconfirmed = table("unconfirmed", sync)
        with transaction(self.con, self.path):
            self.exec_sql(f"alter table {unconfirmed} add column if not exists ident varchar")
            self.exec_sql(
                f"""
                update {unconfirmed} u set ident = h.ident
                from (select run_id, k, max(ident) as ident from history
                      where sync = ? and action in ('identify', 'add_relationships')
                      group by run_id, k) h
                where h.run_id = u.run_id and h.k = u.k
                  and u.action in ('identify', 'add_relationships')
                  and not exists (select 1 from {table("snap", sync)} s where s.k = u.k)
                """,
                [sync],
            )

    def has_snapshot(self, sync: str) -> bool:
        rows = self.con.execute(f"select count(*) from {table('snap', sync)}").fetchall()
        return bool(rows[0][0])

    def record_sending(
        self, sync: str, source: str, action: str = "null", new: str = "false"
    ) -> int:
        """Write ahead the records a run is about to send: the keys (``k``) of ``source``, a
        table or a query, and what is sent for each (``action``, SQL over its rows: `identify`,
        `delete`, ...), in one insert committed before the first request (see ``sending__S``
        above). The records new to the snapshot (``new``, SQL over its rows) are written with
        their key and identifiers: a `mirror` run undoes one whose row leaves before it is
        confirmed. Returns how many."""
        rows = self.exec_sql(
            f"insert into {table('sending', sync)} (kh, action, k, ident) "
            f"select hash(k), {action}, case when {new} then k end, "
            f"case when {new} then ident end from {source}"
        )
        return int(rows[0][0])

    def record_sending_events(self, sync: str, source: str) -> int:
        """Write ahead the events an events sync's run is about to send, with the ids it sends
        them with: the columns ``k, ts, lo, hi`` of ``source`` (the run's ``changes``, keys
        not in the ledger), in one insert committed before the first request (see
        ``sending_events__S`` above). Returns how many."""
        rows = self.exec_sql(
            f"insert into {table('sending_events', sync)} select k, ts, lo, hi from {source}"
        )
        return int(rows[0][0])

    def forget_sending(self, sync: str) -> None:
        """Drop the write-ahead record of a run that recorded every answer it got (the
        delivered ones in the journal or the ledger, those it never heard in ``unconfirmed``
        or ``event_ids``)."""
        self.exec_sql(
            f"delete from {table('sending', sync)}; delete from {table('sending_events', sync)}"
        )

    def recover_sending(
        self,
        sync: str,
        run_id: str,
        forget_relationships: Callable[[StateStore, list[str], bool], None] | None = None,
    ) -> int:
        """At the start of a run (before :meth:`fold_journal`): a write-ahead record left
        behind is that of a run killed with requests in flight. The snapshot's records it
        names that the journal does not have delivered may have been applied by Customer.io
        without the run hearing so: they become unconfirmed, with the action that was sent
        (a `delete` may have taken the record's relationships with it: they are held by the
        relationships syncs, and ``forget_relationships`` takes them out of their snapshots,
        as for a delete whose answer was lost), and the next diff sends them whatever their
        rows hold. A record new to the snapshot (written ahead with its key and identifiers)
        is marked with its identifiers: a row of it is sent anyway, and if its row has left, a
        `mirror` run undoes it (``diff.unsure_new``). Returns how many were marked; one
        count when there is nothing to recover. ``run_id``: the run (or plan) starting."""
        sending = table("sending", sync)
        if not self.exec_sql(f"select count(*) from {sending}")[0][0]:
            return 0
        snap, journal = table("snap", sync), table("journal", sync)
        unconfirmed = table("unconfirmed", sync)
        # the run that left it: the last one of the sync before the one starting now
        last = self._last_run(sync, run_id)
        with transaction(self.con, self.path):
            marked = self.exec_sql(
                f"""
                insert into {unconfirmed} (k, run_id, action)
                select s.k, ?, w.action from {snap} s
                join (select kh, max(action) as action from {sending} group by kh) w
                    on w.kh = hash(s.k)
                anti join {journal} j on j.k = s.k
                """,
                [last],
            )[0][0]
            # the records new to the snapshot, with the identifiers they were sent to: one
            # whose row has left is undone by a `mirror` run (``diff.unsure_new``)
            marked += self.exec_sql(
                f"""
                insert into {unconfirmed} (k, run_id, action, ident)
                select w.k, ?, max(w.action), max(w.ident) from {sending} w
                anti join {snap} s on s.k = w.k
                anti join {journal} j on j.k = w.k
                where w.k is not null
                group by w.k
                """,
                [last],
            )[0][0]
            if marked and forget_relationships is not None:
                deleted = self.exec_sql(
                    f"select s.ident from {snap} s semi join (select k from {unconfirmed} "
                    "where run_id = ? and action = 'delete') u on u.k = s.k "
                    "where s.ident is not null",
                    [last],
                )
                if deleted:
                    forget_relationships(self, [str(r[0]) for r in deleted], False)
            self.exec_sql(f"delete from {sending}")
        return int(marked)

    def recover_sending_events(self, sync: str, run_id: str) -> int:
        """At the start of a run of an events sync: a write-ahead record left behind
        (``sending_events__S``) is that of a run killed with requests in flight. Its events
        that the ledger does not have may be in Customer.io without the run having heard so:
        their ids go to ``event_ids__S`` (:meth:`keep_event_ids`), so the diff sends them with
        the id they were sent with, whatever their rows hold now (a row corrected since would
        give another id, and Customer.io would store the event twice). Returns how many were
        kept; one count when there is nothing to recover. ``run_id``: the run (or plan)
        starting."""
        sending = table("sending_events", sync)
        if not self.exec_sql(f"select count(*) from {sending}")[0][0]:
            return 0
        killed = self._last_run(sync, run_id)
        with transaction(self.con, self.path):
            kept = self.keep_event_ids(sync, killed, sending)
            self.exec_sql(f"delete from {sending}")
        return kept

    def _last_run(self, sync: str, run_id: str) -> str | None:
        """The run of ``sync`` before ``run_id``: the one that left a write-ahead record."""
        last = self.exec_sql(
            "select run_id from runs where sync = ? and run_id <> ? "
            "order by started_at desc limit 1",
            [sync, run_id],
        )
        return str(last[0][0]) if last else None

    def fold_journal(self, sync: str, *, sent: bool = False) -> int:
        """Fold delivered-but-unfolded records into the snapshot. Returns how many. A key
        delivered is confirmed: it leaves ``unconfirmed`` (looked at only when that has rows,
        so a run without faults pays one count). With ``sent`` (the end of a run that recorded
        every answer), the run's write-ahead record is dropped in the same transaction: a
        crash between the two would have the next run take the whole run for unconfirmed."""
        snap, journal = table("snap", sync), table("journal", sync)
        unconfirmed = table("unconfirmed", sync)
        rows = self.con.execute(f"select count(*) from {journal}").fetchall()
        pending = int(rows[0][0])
        if not pending:
            if sent:
                self.forget_sending(sync)
            return 0
        with transaction(self.con, self.path):
            journal_history(self.con, sync)
            # the latest entry per key wins (a key can be delivered twice within a run's
            # retries); the usual journal has each key once, and a hash check (0.1 s at 1M)
            # spares it the sort that picking the latest takes (0.4-1 s)
            repeated = self.exec_sql(
                f"select count(*) from (select k from {journal} group by k having count(*) > 1)"
            )[0][0]
            latest = journal
            if repeated:
                self.exec_sql(
                    f"""
                    create or replace temp table _latest as
                    select k, h, ident, removed from {journal}
                    qualify row_number() over (partition by k order by rowid desc) = 1
                    """
                )
                latest = "_latest"
            if self.exec_sql(f"select count(*) from {unconfirmed}")[0][0]:
                self.exec_sql(f"delete from {unconfirmed} where k in (select k from {latest})")
            self.exec_sql(
                f"""
                delete from {snap} where k in (select k from {latest});
                insert into {snap}
                select k, h, ident, {PERSON_ADDRESS} from {latest} where not removed;
                delete from {journal};
                drop table if exists _latest;
                """
            )
            if sent:
                self.forget_sending(sync)
        return pending

    def append_journal(
        self,
        sync: str,
        run_id: str,
        keys: Sequence[str],
        hashes: Sequence[int | None],
        idents: Sequence[str | None],
        removed: Sequence[bool],
    ) -> None:
        if not keys:
            return
        batch = pa.table(
            {
                "run_id": pa.array([run_id] * len(keys), pa.string()),
                "k": pa.array(keys, pa.string()),
                "h": pa.array(hashes, pa.uint64()),
                "ident": pa.array(idents, pa.string()),
                "removed": pa.array(removed, pa.bool_()),
            }
        )
        with registered(self.con, "_journal_batch", batch):
            self.exec_sql(
                f"insert into {table('journal', sync)} (run_id, k, h, ident, removed) "
                "select * from _journal_batch"
            )

    def append_unconfirmed(
        self,
        sync: str,
        run_id: str,
        keys: Sequence[str],
        actions: Sequence[str | None],
        idents: Sequence[str | None] | None = None,
    ) -> None:
        """Record keys sent without a confirmed answer, with what was sent to each and to
        whom (see ``unconfirmed__S`` above)."""
        if not keys:
            return
        batch = pa.table(
            {
                "k": pa.array(keys, pa.string()),
                "run_id": pa.array([run_id] * len(keys), pa.string()),
                "action": pa.array(actions, pa.string()),
                "ident": pa.array(idents or [None] * len(keys), pa.string()),
            }
        )
        with registered(self.con, "_unconfirmed_batch", batch):
            self.exec_sql(
                f"insert into {table('unconfirmed', sync)} select * from _unconfirmed_batch"
            )

    def keep_event_ids(
        self, sync: str, run_id: str | None, sent: str, keys: Sequence[str] | None = None
    ) -> int:
        """Record the dedupe ids of an events sync's events sent without a confirmed answer
        (see ``event_ids__S`` above), from ``sent``: a relation of the events as sent, with
        columns ``k, ts, lo, hi``. ``keys``: those whose answer never came, of the run's
        ``changes``; None: every event of ``sent`` not in the ledger, for a write-ahead record
        of the events a run was about to send, read after the run was killed. A key recorded
        already keeps its first id, and the keys delivered since (in the ledger) leave: the
        table is looked at only when it has rows, so a run without lost answers pays one
        count. Returns how many ids were recorded."""
        ids, ledger = table("event_ids", sync), table("ledger", sync)
        if self.exec_sql(f"select count(*) from {ids}")[0][0]:
            self.exec_sql(f"delete from {ids} where k in (select k from {ledger})")
        if keys is not None and not keys:
            return 0
        chosen = "" if keys is None else "semi join _unsure_events u on u.k = s.k"
        with registered(
            self.con, "_unsure_events", pa.table({"k": pa.array(keys or [], pa.string())})
        ):
            rows = self.exec_sql(
                f"""
                insert into {ids}
                select distinct on (s.k) s.k, s.ts, s.lo, s.hi, ?
                from {sent} s {chosen}
                anti join {ledger} l on l.k = s.k
                anti join {ids} i on i.k = s.k
                """,
                [run_id],
            )
        return int(rows[0][0])

    def append_ledger(
        self,
        sync: str,
        keys: Sequence[str],
        names: Sequence[str | None] | None = None,
        timestamps: Sequence[int | None] | None = None,
        *,
        once: bool = False,
    ) -> None:
        """Ledger ``keys`` delivered now, with the name and timestamp each event was sent
        with (None: not known, or not an event of an events sync); with ``once``, those the
        ledger does not hold yet (a key delivered again keeps its first delivery)."""
        if not keys:
            return
        now = datetime.now(UTC)
        batch = pa.table(
            {
                "k": pa.array(keys, pa.string()),
                "delivered_at": pa.array([now] * len(keys), pa.timestamp("us", tz="UTC")),
                "name": pa.array(names or [None] * len(keys), pa.string()),
                "sent_ts": pa.array(timestamps or [None] * len(keys), pa.int64()),
            }
        )
        with registered(self.con, "_ledger_batch", batch):
            self.exec_sql(
                f"insert into {table('ledger', sync)} (k, delivered_at, name, sent_ts) "
                "select k, delivered_at, name, sent_ts from _ledger_batch"
                + (f" anti join {table('ledger', sync)} l using (k)" if once else "")
            )

    def append_delivered(
        self,
        sync: str,
        run_id: str,
        batches: Sequence[tuple[pa.RecordBatch, int, datetime]],
        *,
        ledger: bool,
    ) -> None:
        """Commit whole delivered batches (``k, h, ident, removed, action`` columns, and for
        an events sync's events ``sent_name, sent_ts``; with the answer's status and time): to
        the ledger (events) and the history, or to the journal, which keeps their history
        until they are folded (``journal__S`` above)."""
        if not batches:
            return
        delivered = pa.Table.from_batches([b for b, _, _ in batches])
        delivered = delivered.append_column(
            "status",
            pa.chunked_array(
                [pa.repeat(pa.scalar(s, pa.int32()), b.num_rows) for b, s, _ in batches],
                pa.int32(),
            ),
        )
        delivered = delivered.append_column(
            "sent_at",
            pa.chunked_array(
                [pa.repeat(pa.scalar(t, SENT_AT), b.num_rows) for b, _, t in batches], SENT_AT
            ),
        )
        with registered(self.con, "_delivered", delivered):
            if ledger:
                sent = (
                    "sent_name, sent_ts" if "sent_name" in delivered.column_names else "null, null"
                )
                self.exec_sql(
                    f"insert into {table('ledger', sync)} (k, delivered_at, name, sent_ts) "
                    f"select k, sent_at, {sent} from _delivered"
                )
            else:
                # their history rows go with them, written to ``history`` when they leave the
                # journal (:func:`journal_history`): one append of each record here, not two
                self.exec_sql(
                    f"insert into {table('journal', sync)} "
                    "(run_id, k, h, ident, removed, action, status, sent_at) "
                    "select ?, k, h, ident, removed, action, status, sent_at from _delivered",
                    [run_id],
                )
                return
            self.exec_sql(
                "insert into history select ?, ?, k, ident, action, 'delivered', status, null, "
                "sent_at from _delivered",
                [run_id, sync],
            )

    def append_history(self, rows: dict[str, list[Any]]) -> None:
        if not rows["keys"]:
            return
        batch = pa.table(rows, schema=HISTORY_SCHEMA)
        with registered(self.con, "_history_batch", batch):
            self.exec_sql(
                "insert into history select run_id, sync, unnest(keys), unnest(idents), "
                "action, outcome, status, reason, sent_at from _history_batch"
            )

    def append_rejected(
        self, run_id: str, sync: str, stage: str, items: Sequence[tuple[str, str]]
    ) -> None:
        if not items:
            return
        now = datetime.now(UTC)
        batch = pa.table(
            {
                "run_id": pa.array([run_id] * len(items), pa.string()),
                "sync": pa.array([sync] * len(items), pa.string()),
                "k": pa.array([k for k, _ in items], pa.string()),
                "stage": pa.array([stage] * len(items), pa.string()),
                "reason": pa.array([r for _, r in items], pa.string()),
                "rejected_at": pa.array([now] * len(items), pa.timestamp("us", tz="UTC")),
            }
        )
        with registered(self.con, "_rejected_batch", batch):
            self.exec_sql("insert into rejected select * from _rejected_batch")

    def keep_rejected_rows(self, run_id: str, sync: str, limit: int) -> None:
        """Record the first ``limit`` rows (by key) of the temp table ``rejected_rows`` (the
        rows a run's mapping rejected, :mod:`lockgate.sync.rejects`) as its stage `map`."""
        self.exec_sql(
            "insert into rejected select ?, ?, k, 'map', reason, ? "
            "from (select k, reason from rejected_rows order by k limit ?)",
            [run_id, sync, datetime.now(UTC), limit],
        )

    def _record_refused(
        self, sync: str, run_id: str, refused: Sequence[tuple[str, str]], idents: dict[str, str]
    ) -> None:
        """History rows (outcome `rejected`) and rejected rows (stage `deliver`) for records a
        run refused after mapping them (``refused``: key, reason; ``idents``: key ->
        identifiers). The caller holds the transaction."""
        keys = [k for k, _ in refused]
        now = datetime.now(UTC)
        self.append_history(
            {
                "run_id": [run_id] * len(refused),
                "sync": [sync] * len(refused),
                "keys": [[k] for k in keys],
                "idents": [[idents.get(k)] for k in keys],
                "action": ["identify"] * len(refused),
                "outcome": ["rejected"] * len(refused),
                "status": [None] * len(refused),
                "reason": [r for _, r in refused],
                "sent_at": [now] * len(refused),
            }
        )
        self.append_rejected(run_id, sync, "deliver", refused)

    def refuse_delivered(self, sync: str, run_id: str, refused: Sequence[tuple[str, str]]) -> None:
        """Take records the run delivered back out of its journal, as rejected with their
        reason (``refused``: key, reason), before the journal is folded: Customer.io accepted
        them but, read back, does not hold them (an email another person holds,
        :mod:`lockgate.sync.emailcheck`). The snapshot keeps what was last delivered, so the
        next run sends them again; they are marked unconfirmed too (Customer.io may yet apply
        an update it had not applied when read), so it sends them whatever their rows hold."""
        if not refused:
            return
        keys = [k for k, _ in refused]
        journal = table("journal", sync)
        idents = dict(
            self.con.execute(
                f"select k, ident from {journal} where run_id = ? and k in (select unnest(?))",
                [run_id, keys],
            ).fetchall()
        )
        with transaction(self.con, self.path):
            where = "run_id = ? and k in (select unnest(?))"
            journal_history(self.con, sync, where, [run_id, keys])
            self.exec_sql(f"delete from {journal} where {where}", [run_id, keys])
            self._record_refused(sync, run_id, refused, idents)
            self.append_unconfirmed(
                sync, run_id, keys, ["identify"] * len(keys), [idents.get(k) for k in keys]
            )

    def refuse_unsent(
        self, sync: str, run_id: str, refused: Sequence[tuple[str, str]], idents: dict[str, str]
    ) -> None:
        """Record records the run does not send, found unfit before delivery (a new person
        whose email another person holds, :mod:`lockgate.sync.emailcheck`), as rejected with
        their reason (``refused``: key, reason; ``idents``: key -> identifiers), as Customer.io's
        own rejections are: nothing was sent, so nothing is marked unconfirmed, and the next
        run, whose snapshot does not have them, looks at them again."""
        if not refused:
            return
        with transaction(self.con, self.path):
            self._record_refused(sync, run_id, refused, idents)

    def reset_sync(self, sync: str, *, in_transaction: bool = False) -> None:
        """Forget what was delivered (for `--full-resync` of people; ledgers are kept). With
        ``in_transaction``, inside the caller's transaction (which writes the records
        forgotten ahead, ``sync.run._reset_snapshot``) rather than in one of its own."""
        if in_transaction:
            journal_history(self.con, sync)
            self.exec_sql(
                f"delete from {table('snap', sync)}; delete from {table('journal', sync)}"
            )
            return
        with transaction(self.con, self.path):
            self.reset_sync(sync, in_transaction=True)

    # ------------------------------------------------------------------ runs

    def start_run(self, run_id: str, sync: str, kind: str, *, at: datetime | None = None) -> None:
        """Record a run as `running`, started ``at`` (now by default; the time in its id).
        When `runs.json` cannot be written (a full disk), the run is taken out again before
        the error is raised: it never started, and is not left listed as `running`."""
        self.exec_sql(
            "insert into runs values (?, ?, ?, ?, null, 'running', '{}', null)",
            [run_id, sync, kind, at or datetime.now(UTC)],
        )
        try:
            self.write_runs_log()
        except StateError:
            with contextlib.suppress(duckdb.Error, StateError):
                self.exec_sql("delete from runs where run_id = ?", [run_id])
            raise

    def finish_run(
        self, run_id: str, status: str, counts: dict[str, Any], error: str | None = None
    ) -> None:
        finished = datetime.now(UTC)
        self.exec_sql(
            "update runs set finished_at = ?, status = ?, counts = ?, error = ? where run_id = ?",
            [finished, status, orjson.dumps(counts).decode(), error, run_id],
        )
        # the log as the last change to `runs` left it (each rewrites it, under the state's
        # lock), with this run's entry finished: building it again in DuckDB took ~3 ms
        try:
            doc = orjson.loads(self.path.with_name(RUNS_LOG).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            doc = None
        listed = doc if isinstance(doc, list) else []
        entry = next((d for d in listed if isinstance(d, dict) and d.get("run_id") == run_id), None)
        if entry is None:
            self.write_runs_log()
            return
        entry.update(
            finished_at=finished.strftime(_RUNS_LOG_TIME),
            status=status,
            counts=counts,
            error=error,
        )
        self._save_runs_log(orjson.dumps(doc))

    def prune_history(self, days: int) -> int:
        """Drop the per-record history and the rejected rows older than ``days`` days; returns
        the history rows dropped. Runs (one row each) stay. Snapshots, ledgers and journals
        are never pruned: they are what keeps sends exact.
        History is appended in time order, so DuckDB's row-group min/max on the time skips
        the rest: a run that drops nothing pays almost nothing."""
        cutoff = datetime.now(UTC) - timedelta(days=days)
        with transaction(self.con, self.path):
            dropped = self.exec_sql("delete from history where sent_at < ?", [cutoff])[0][0]
            self.exec_sql("delete from rejected where rejected_at < ?", [cutoff])
        return int(dropped or 0)

    def forget_cached(self, *syncs: str) -> None:
        """Forget what this handle read once about ``syncs`` (their tables made, their
        workspace): their state was renamed or dropped (``state.names``)."""
        self._ensured.difference_update(syncs)
        self.workspaces = None

    def write_runs_log(self) -> None:
        """Copy the latest runs to `runs.json` beside the database (atomically), so
        `lockgate runs` can list them while a sync holds the state."""
        # the document built by DuckDB, as text: 200 rows read into Python (their times as
        # zoned datetimes) and dumped again cost ~4 ms; a run's start builds it, its finish
        # updates its own entry (:meth:`finish_run`)
        when = f"strftime(timezone('UTC', {{}}), '{_RUNS_LOG_TIME}')"
        doc = run_sql(
            self.con,
            f"""
            select coalesce(to_json(list(json_object(
                'run_id', run_id, 'sync', sync, 'kind', kind,
                'started_at', {when.format("started_at")},
                'finished_at', {when.format("finished_at")},
                'status', status, 'counts', coalesce(counts, '{{}}')::json, 'error', error
            ) order by started_at desc))::varchar, '[]')
            from (select * from runs order by started_at desc limit {RUNS_LOG_SIZE})
            """,
        )[0][0]
        self._save_runs_log(str(doc).encode())

    def _save_runs_log(self, doc: bytes) -> None:
        """Write `runs.json` (atomically: a reader sees the last one or this one)."""
        target = self.path.with_name(RUNS_LOG)
        tmp = target.with_suffix(".json.tmp")
        try:
            tmp.write_bytes(doc)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)  # a part written before the disk filled up
            raise write_refused(exc, target) or StateError(
                f"cannot write `{target}`: {exc.strerror}",
                hint="`lockgate runs` lists the runs from it while a sync holds the state; "
                "check the folder",
            ) from exc

    def mark_crashed_runs(self, sync: str, current: str = "") -> int:
        """Runs of this sync still `running` were cut off (the lock proves none is alive),
        except ``current``, the run that holds the lock now."""
        row = self.con.execute(
            "update runs set status = 'crashed' "
            "where sync = ? and status = 'running' and run_id <> ? returning 1",
            [sync, current],
        ).fetchall()
        return len(row)

    def previous_status(self, sync: str, run_id: str) -> str | None:
        """The status of the sync's last finished run before ``run_id`` (None before any), leaving
        out runs stopped on purpose (`interrupted`) and runs of named records (`--only`): they
        say nothing of whether the sync works. A success with a guardrail near its limit
        (`warn_at`) is `warning`."""
        rows = self.con.execute(
            "select case when status = 'success' and list_contains(coalesce(json_extract("
            "counts, '$.guardrails[*].near'), []::json[])::varchar[], 'true') then 'warning' "
            "else status end "
            "from runs where sync = ? and run_id <> ? and status <> 'running' "
            "and coalesce(error, '') <> 'interrupted' "
            "and coalesce(json_array_length(counts->'$.only'), 0) = 0 "
            "order by started_at desc limit 1",
            [sync, run_id],
        ).fetchall()
        return str(rows[0][0]) if rows else None

    def forget_run(self, run_id: str) -> None:
        """Drop a run that did nothing worth listing (one whose `--only` named no record)."""
        self.exec_sql("delete from runs where run_id = ?", [run_id])
        self.write_runs_log()

    def runs(self, *, sync: str | None = None, limit: int = 20) -> list[RunRow]:
        query = "select * from runs"
        params: list[Any] = []
        if sync:
            query += " where sync = ?"
            params.append(sync)
        query += " order by started_at desc limit ?"
        params.append(limit)
        rows = self.con.execute(query, params).fetchall()
        return [
            RunRow(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6] or "{}"), r[7])
            for r in rows
        ]

    def history(
        self, person: str, *, limit: int = 200, also: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Every call made for one person: matched by one of its identifiers (`id`, `cio_id`,
        `anonymous_id`, or the email in any case) in a people, events or relationships call,
        or by a people sync's record key. A person named by one identifier is found by the
        others their calls carried too (named by email, the relationships and events sent
        with their `id` alone), and by ``also``: identifiers the caller knows name the same
        person (those the identity graph gives an anonymous id, which its calls carry only as
        an attribute). Objects, and values that only appear elsewhere in a call (an object
        id, `object_type_id`), are not the person. The latest ``limit`` calls, oldest first."""
        rows = self._history([person], limit=None)
        others = sorted(
            ({v for row in rows for v in _identifiers(row["ident"])} | set(also)) - {person}
        )
        if not others:
            return rows[max(len(rows) - limit, 0) :]
        return self._history([person, *others], limit=limit)

    def _history(self, names: list[str], *, limit: int | None) -> list[dict[str, Any]]:
        # a cheap substring test first, then the exact match on the identifiers' own fields
        needles = [orjson.dumps(n).decode()[1:-1].lower() for n in names]
        cursor = self.con.execute(
            f"""
            with h as (
                select *, coalesce(json_extract(ident, '$.person'), ident::json) as who
                from ({self.history_relation()})
                where list_contains($1, k)
                   or list_bool_or(list_transform($2, lambda s: contains(lower(ident), s)))
            )
            select * from (
                select sent_at, run_id, sync, k, ident, action, outcome, status, reason
                from h
                where json_extract(ident, '$.object_type_id') is null
                  and (list_contains($1, json_extract_string(who, '$.id'))
                       or list_contains($1, json_extract_string(who, '$.cio_id'))
                       or list_contains($1, json_extract_string(who, '$.anonymous_id'))
                       or list_contains($3, lower(json_extract_string(who, '$.email')))
                       or (list_contains($1, k) and action <> 'event'
                           and json_extract(ident, '$.person') is null))
                order by sent_at desc, run_id desc {"" if limit is None else f"limit {limit:d}"}
            )
            order by sent_at, run_id
            """,
            [names, needles, [n.lower() for n in names]],
        )
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def history_relation(self) -> str:
        """SQL of every history row: ``history``, and those the journals hold for the records
        a run killed before its fold delivered (:func:`journal_history`)."""
        parts = [
            "select run_id, sync, k, ident, action, outcome, status, reason, sent_at from history"
        ]
        found = self.con.execute(
            "select table_name from duckdb_columns() where not internal "
            "and table_name like 'journal\\_\\_%' escape '\\' and column_name = 'sent_at' "
            "and database_name = current_database() and schema_name = 'main' "
            "order by table_name"
        ).fetchall()
        for (name,) in found:
            sync = name.removeprefix("journal__")
            parts.append(
                _JOURNAL_HISTORY.format(
                    sync="'" + sync.replace("'", "''") + "'", journal=table("journal", sync)
                )
            )
        return " union all ".join(parts)

    def rejected(self, run_id: str, limit: int | None = 1000) -> list[tuple[str, str, str]]:
        """A run's recorded rejected rows as (stage, key, reason): the mapping's first (by
        key), then Customer.io's; all of them without ``limit``."""
        rows = self.con.execute(
            "select stage, k, reason from rejected where run_id = ? "
            "order by stage = 'deliver', k limit ?",
            [run_id, limit],
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def find_runs(self, run_id: str) -> list[RunRow]:
        """The runs ``run_id`` names (:func:`named_runs`)."""
        rows = self.con.execute(
            "select * from runs where run_id = ? or starts_with(run_id, ?) "
            "or ends_with(run_id, ?) order by started_at desc",
            [run_id, run_id, run_id],
        ).fetchall()
        found = [
            RunRow(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6] or "{}"), r[7])
            for r in rows
        ]
        return named_runs(found, run_id)


_JOURNAL_HISTORY = (
    "select run_id, {sync} as sync, k, ident, action, 'delivered' as outcome, status, "
    "null::varchar as reason, sent_at from {journal} where sent_at is not null"
)


def journal_history(
    con: duckdb.DuckDBPyConnection, sync: str, where: str = "", params: list[Any] | None = None
) -> int:
    """Write to ``history`` the history rows the journal of ``sync`` holds (the records
    delivered in whole batches: ``journal__S`` above), of its rows ``where`` (SQL; all of them
    without), before they leave it: folded, forgotten, refused or reset, in the caller's
    transaction. A journal from before format 5, not upgraded yet, holds none. Returns how
    many rows were written."""
    journal = table("journal", sync)
    columns = {r[0] for r in con.execute(f"describe {journal}").fetchall()}
    if "sent_at" not in columns:
        return 0
    select = _JOURNAL_HISTORY.format(sync="?", journal=journal)
    rows = run_sql(
        con,
        f"insert into history {select}{f' and ({where})' if where else ''}",
        [sync, *(params or [])],
    )
    return int(rows[0][0])


def _identifiers(ident: str | None) -> list[str]:
    """The `id`, `cio_id` and email a call's identifiers (``ident``) name its person by (an
    anonymous id is left out: a shared device does not make two people one)."""
    try:
        value = orjson.loads(ident or "null")
    except orjson.JSONDecodeError:
        return []
    who = value.get("person", value) if isinstance(value, dict) else None
    if not isinstance(who, dict):
        return []
    return [str(who[f]) for f in ("id", "cio_id", "email") if who.get(f) is not None]


def named_runs(rows: list[RunRow], run_id: str) -> list[RunRow]:
    """The run of ``rows`` with this id; else those whose id starts or ends with it (up to 5,
    in the order given): a unique prefix, or the random part after the time, names a run."""
    exact = [r for r in rows if r.run_id == run_id]
    if exact:
        return exact[:1]
    return [r for r in rows if r.run_id.startswith(run_id) or r.run_id.endswith(run_id)][:5]


@contextlib.contextmanager
def open_state(state_dir: Path) -> Iterator[StateStore]:
    store = StateStore.open(state_dir)
    try:
        yield store
    finally:
        store.close()
