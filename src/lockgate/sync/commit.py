"""Commit: advance the snapshot and ledger only for what the destination accepted.

Results arrive per HTTP batch. Delivered people go to the journal (folded into the
snapshot at the end of the run, or at the start of the next one after a crash);
delivered events go straight to the ledger. Every result, whatever its outcome, goes to
the per-record history: the records of a batch accepted whole, once, with their journal row
(written to the history as the journal is folded: ``StateStore.append_delivered``).
Rejected and dead-lettered records are not committed, so the next run tries them again.
Customer.io may have applied a dead-lettered record (a 5xx or a timeout after it took the
request), or one whose request was cut off: those keys are recorded as *unconfirmed*, and the
next run sends them whatever their rows hold then (a row back at its last delivered value
must not leave Customer.io with the value never confirmed);
such an event keeps the dedupe id it was sent with (a row corrected meanwhile would give it
another, and Customer.io would store it twice).
A rejected record was refused, so applied nothing: it needs no such mark. Buffers are flushed
at least every ``flush_seconds`` (or ``flush_records``), which bounds what a crash can make
a re-run send again (identify is idempotent; events carry their dedupe id).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from lockgate.destinations.base import Outcome, Result
from lockgate.errors import StateUnwritableError
from lockgate.state.store import StateStore, transaction

if TYPE_CHECKING:
    from collections.abc import Callable


#: the record bound of a flush: one of DuckDB's row groups. A transaction that appends a whole
#: row group to a table has DuckDB write it to the database file as it will stay (compressed),
#: and log only where it is; smaller appends go to the WAL row by row and are written again at
#: the checkpoint. A first sync of 1M people flushed every 100,000 records spent ~1.5 s more
#: CPU on its journal and history (BENCHMARKS.md, "Full sync CPU, A/B").
FLUSH_RECORDS = 122_880


class _Buffers(NamedTuple):
    """One flush's worth of buffered results (see :meth:`Committer._take`)."""

    journal: tuple[list[str], list[int | None], list[str | None], list[bool]]
    ledger: tuple[list[str], list[str | None], list[int | None]]
    history: dict[str, list[Any]]
    rejected: list[tuple[str, str]]
    delivered: list[tuple[pa.RecordBatch, int, datetime]]
    unconfirmed: tuple[list[str], list[str | None], list[str | None]]
    deleted: list[str]
    known: list[str]


class Pending(NamedTuple):
    """What the committer needs to know about a record in flight."""

    h: int | None
    ident: str | None
    removed: bool
    action: str
    name: str | None = None
    """An events sync's event: the name it is sent under (its backfill name if renamed)."""
    ts: int | None = None
    """... and the timestamp it is sent with (unix seconds), both kept in the ledger."""


@dataclass
class CommitCounts:
    delivered: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (key, outcome, reason)
    failed_keys: set[str] = field(default_factory=set)
    resent_by: dict[str, int] = field(default_factory=dict)
    """By other people sync: how many of its rows are people this run deleted, which it
    forgot, so it sends them again (``Committer.forget_people``)."""

    def reject(self, key: str, reason: str) -> None:
        """Count row ``key`` rejected (not sent, or its delivery taken back: the next run
        sends it again), its reason among the first :data:`FAILURES_KEPT` failures."""
        self.rejected += 1
        self.failed_keys.add(key)
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append((key, "rejected", reason))


#: how many failures (key, outcome, reason) a run's counts keep for its report
FAILURES_KEPT = 20


class Committer:
    """Buffers results and writes them to the state store.

    Writes at the flush bounds run on a thread of their own (one at a time, in order) so
    delivery goes on meanwhile; :meth:`flush` writes the rest and waits for all of it."""

    def __init__(
        self,
        store: StateStore,
        *,
        sync: str,
        run_id: str,
        kind: str,
        flush_seconds: float = 1.0,
        flush_records: int = FLUSH_RECORDS,
        unconfirmed_as: Callable[[str], str] | None = None,
        forget_relationships: Callable[[StateStore, list[str], bool], None] | None = None,
        forget_people: Callable[[StateStore, list[str]], dict[str, int]] | None = None,
        forget_known: Callable[[StateStore, list[str]], None] | None = None,
        forget_merged: Callable[[StateStore, list[str]], None] | None = None,
        ledger_once: bool = False,
    ) -> None:
        self.store = store
        # operations a run may deliver again (the anonymous ids a full resync sends again):
        # a key already in the ledger is not written to it twice
        self.ledger_once = ledger_once
        # an operation ahead of the records (an email cleared) whose answer never came marks
        # the record it was for (``unconfirmed_as(key)``): the next run sends that record
        self.unconfirmed_as = unconfirmed_as
        # a person or object deleted (or whose delete was not confirmed: it may be gone) has
        # had its relationships deleted by Customer.io with it: ``forget_relationships(store,
        # idents, confirmed)`` takes them out of the relationships snapshots, in the same
        # transaction as the delete's commit (or its mark), so they are sent again once the
        # record is back, whenever the relationships syncs run (a confirmed delete takes their
        # unconfirmed marks too). A record cleared, not deleted, keeps them.
        self.forget_relationships = forget_relationships
        # a person deleted (confirmed: a delete whose answer never came is sent again) is
        # gone for the other people syncs too: ``forget_people(store, idents)`` takes them out
        # of those syncs' snapshots, in the same transaction, so they send them again in full,
        # and says how many rows each forgot (``counts.resent_by``)
        self.forget_people = forget_people
        # a people sync's people delivered (identified, or cleared) are known to exist
        # (``people_known__S``) from the transaction that commits them; those whose delete
        # Customer.io confirmed are forgotten there (``forget_known(store, idents)``) by every
        # people sync of the destination, before the deleted records leave their snapshots
        # (whose emails tell which `id` a person deleted by email held)
        self.forget_known = forget_known
        # a people sync whose ``people_known__S`` held no one when the run began (a first
        # run): the people it delivers are appended without reading the table, and the
        # repeats among them taken out once its delivery ends (``StateStore.know_people``)
        self._known_unseen = kind == "people" and not store.knows_people(sync)
        self._known_appended = False
        # identity operations: ``forget_merged(store, keys)``, with the keys delivered, forgets
        # the people the merges among them absorbed, in the transaction that ledgers them
        self.forget_merged = forget_merged
        self.sync = sync
        self.run_id = run_id
        self.kind = kind
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self.counts = CommitCounts()
        # an events sync's keys sent whose answer never came: the run records the dedupe ids
        # they were sent with once delivery is over (``StateStore.keep_event_ids``)
        self.unsure_events: list[str] = []
        self._last_flush = time.monotonic()
        self._pool: ThreadPoolExecutor | None = None
        self._writing: Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._journal: tuple[list[str], list[int | None], list[str | None], list[bool]] = (
            [],
            [],
            [],
            [],
        )
        # (keys, names sent, timestamps sent) of the events delivered one by one
        self._ledger: tuple[list[str], list[str | None], list[int | None]] = ([], [], [])
        # history rows: one per (action, outcome, status, reason) group of a results list
        self._history: dict[str, list[Any]] = {
            name: []
            for name in (
                "run_id",
                "sync",
                "keys",
                "idents",
                "action",
                "outcome",
                "status",
                "reason",
                "sent_at",
            )
        }
        self._rejected: list[tuple[str, str]] = []
        # whole batches delivered in one answer, kept as Arrow (k, h, ident, removed, action)
        self._delivered: list[tuple[pa.RecordBatch, int, datetime]] = []
        # (keys, actions, idents) of the records sent whose answer never came
        self._unconfirmed: tuple[list[str], list[str | None], list[str | None]] = ([], [], [])
        # the identifiers of the records deleted, as delivered one by one (:meth:`add`)
        self._deleted: list[str] = []
        # of a people sync, those of the records identified or cleared, delivered one by one
        self._known: list[str] = []
        self._buffered = 0

    def add(self, results: list[Result], pending: dict[str, Pending]) -> None:
        now = datetime.now(UTC)
        groups: dict[tuple[str, str, int | None, str | None], tuple[list[str], list[str | None]]]
        groups = {}
        keys, hashes, idents, removed = self._journal
        for result in results:
            meta = pending.pop(result.key)
            group = groups.get((meta.action, result.outcome.value, result.status, result.reason))
            if group is None:
                group = groups[
                    (meta.action, result.outcome.value, result.status, result.reason)
                ] = ([], [])
            group[0].append(result.key)
            group[1].append(meta.ident)
            if result.outcome is Outcome.DELIVERED:
                if self.kind == "events":
                    self._ledger[0].append(result.key)
                    self._ledger[1].append(meta.name)
                    self._ledger[2].append(meta.ts)
                else:
                    keys.append(result.key)
                    hashes.append(meta.h)
                    idents.append(meta.ident)
                    removed.append(meta.removed)
                    if meta.action == "delete" and meta.ident:
                        self._deleted.append(meta.ident)
                    elif self.kind == "people" and meta.ident:
                        self._known.append(meta.ident)
        hist = self._history
        for (action, outcome, status, reason), (group_keys, group_idents) in groups.items():
            for name, value in (
                ("run_id", self.run_id),
                ("sync", self.sync),
                ("keys", group_keys),
                ("idents", group_idents),
                ("action", action),
                ("outcome", outcome),
                ("status", status),
                ("reason", reason),
                ("sent_at", now),
            ):
                hist[name].append(value)
            if outcome == Outcome.DELIVERED.value:
                self.counts.delivered += len(group_keys)
                continue
            text = f"{outcome}: {reason or 'no reason given'}"
            if outcome == Outcome.REJECTED.value:
                self.counts.rejected += len(group_keys)
            else:
                self.counts.dead_lettered += len(group_keys)
                self.unconfirmed(group_keys, [action] * len(group_keys), group_idents)
            self._rejected.extend((key, text) for key in group_keys)
            self.counts.failed_keys.update(group_keys)
            for key in group_keys[: max(0, FAILURES_KEPT - len(self.counts.failures))]:
                self.counts.failures.append((key, outcome, reason or "no reason given"))
        self._buffered_more(len(results))

    def add_delivered(self, meta: pa.RecordBatch, status: int) -> None:
        """A batch the destination accepted whole: columns ``k, h, ident, removed, action``
        (and ``sent_name, sent_ts`` for an events sync's events).

        The same commit as :meth:`add` with one DELIVERED result per row, without a Python
        object per row."""
        self._delivered.append((meta, status, datetime.now(UTC)))
        self.counts.delivered += meta.num_rows
        self._buffered_more(meta.num_rows)

    def unconfirmed(
        self, keys: list[str], actions: list[str | None], idents: list[str | None]
    ) -> None:
        """Keys sent whose answer never came, with what was sent to each (`identify`,
        `delete`, ...) and to whom: dead-lettered (:meth:`add`), or cut off in flight (the
        delivery says so as it stops at once; they are not counted, the run is stopping). Only
        records of a snapshot need the mark: an event not in the ledger is sent again anyway,
        with the id it was sent with (``unsure_events``), unless it was for a record
        (``unconfirmed_as``: an email cleared ahead of its record, which that record's next
        identify follows, so no delete)."""
        marked_keys, marked_actions, marked_idents = self._unconfirmed
        if self.unconfirmed_as is not None:
            marked_keys.extend(self.unconfirmed_as(k) for k in keys)
            marked_actions.extend("identify" for _ in keys)
            marked_idents.extend(None for _ in keys)
        elif self.kind != "events":
            marked_keys.extend(keys)
            marked_actions.extend(actions)
            marked_idents.extend(idents)
        else:
            self.unsure_events.extend(keys)

    def _buffered_more(self, n: int) -> None:
        """Count ``n`` more buffered records; write them at the record or time bound."""
        self._buffered += n
        if (
            self._buffered >= self.flush_records
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self._write_in_background()

    def _take(self) -> _Buffers:
        """What is buffered, handed over; the buffers start empty again."""
        taken = _Buffers(
            self._journal,
            self._ledger,
            self._history,
            self._rejected,
            self._delivered,
            self._unconfirmed,
            self._deleted,
            self._known,
        )
        self._reset()
        self._last_flush = time.monotonic()
        return taken

    def _write_in_background(self) -> None:
        """Write what is buffered on the committer's thread while delivery goes on (DuckDB
        runs without the GIL): the event loop no longer stalls ~0.1 s at every flush. One
        write at a time, in order; a failed write raises at the next flush."""
        self._wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockgate-commit")
        self._writing = self._pool.submit(self._write, self._take())

    def _wait(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def flush(self) -> None:
        """Write everything buffered and wait until it is committed; then, if this delivery
        appended people to a ``people_known__S`` unread, keep each of them there once."""
        try:
            self._wait()
            self._write(self._take())
            if self._known_unseen and self._known_appended:
                self.store.settle_known_people(self.sync)
                self._known_appended = False
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _write(self, taken: _Buffers) -> None:
        store = self.store
        try:
            self._commit(store, taken)
        except StateUnwritableError as exc:  # the disk full: the run fails, naming the file
            exc.hint = (
                f"{exc.hint}: it sends again what this run delivered and could not record "
                "(events keep their ids: none is stored twice)"
            )
            raise

    def _commit(self, store: StateStore, taken: _Buffers) -> None:
        keys, hashes, idents, removed = taken.journal
        with transaction(store.con, store.path):
            store.append_journal(self.sync, self.run_id, keys, hashes, idents, removed)
            store.append_ledger(self.sync, *taken.ledger, once=self.ledger_once)
            store.append_history(taken.history)
            store.append_rejected(self.run_id, self.sync, "deliver", taken.rejected)
            keys_unsure, actions, idents_unsure = taken.unconfirmed
            store.append_unconfirmed(self.sync, self.run_id, keys_unsure, actions, idents_unsure)
            confirmed: list[str] | None = None
            if (
                self.forget_relationships is not None
                or self.forget_people is not None
                or self.forget_known is not None
            ):
                confirmed = taken.deleted + _deleted_in(taken.delivered)
            if self.forget_known is not None and confirmed:
                self.forget_known(store, confirmed)
            if self.kind == "people":
                for known in _known_in(taken.known, taken.delivered):
                    store.know_people(self.sync, known, unseen=self._known_unseen)
                    self._known_appended = True
            if self.forget_merged is not None:
                merged = list(taken.ledger[0])
                for batch, _, _ in taken.delivered:
                    merged.extend(batch.column("k").to_pylist())
                if merged:
                    self.forget_merged(store, merged)
            if self.forget_relationships is not None and confirmed is not None:
                unsure = [
                    i for a, i in zip(actions, idents_unsure, strict=True) if a == "delete" and i
                ]
                if unsure:
                    self.forget_relationships(store, unsure, False)
                if confirmed:  # their unconfirmed relationships go too
                    self.forget_relationships(store, confirmed, True)
            forgot: dict[str, int] = {}
            if self.forget_people is not None and confirmed:
                forgot = self.forget_people(store, confirmed)
            store.append_delivered(
                self.sync, self.run_id, taken.delivered, ledger=self.kind == "events"
            )
        # counted once committed (a failed write forgot nothing)
        for name, n in forgot.items():
            self.counts.resent_by[name] = self.counts.resent_by.get(name, 0) + n


def _known_in(
    known: list[str], batches: list[tuple[pa.RecordBatch, int, datetime]]
) -> list[pa.Table]:
    """The identifiers (``ident``) of a people sync's records identified or cleared, with
    what was sent (``action``: a `delete` is left out by :meth:`StateStore.know_people`):
    ``known``, delivered one by one, and those of whole delivered batches."""
    tables = []
    if known:
        tables.append(
            pa.table(
                {"ident": pa.array(known, pa.string()), "action": pa.nulls(len(known), pa.string())}
            )
        )
    if batches:
        tables.append(pa.Table.from_batches([b.select(["ident", "action"]) for b, _, _ in batches]))
    return tables


def _deleted_in(batches: list[tuple[pa.RecordBatch, int, datetime]]) -> list[str]:
    """The identifiers of the records deleted in whole delivered batches (their ``action``
    `delete`), read only for a sync that deletes (``Committer.forget_relationships``)."""
    import pyarrow.compute as pc  # here: ~60 ms of import a sync that deletes nothing skips

    idents: list[str] = []
    for batch, _, _ in batches:
        deletes = pc.equal(batch.column("action"), "delete")
        if pc.any(deletes).as_py():
            found = batch.column("ident").filter(deletes).to_pylist()
            idents.extend(i for i in found if i)
    return idents
