"""The durable spool: every acknowledged webhook event is on disk before its 2xx.

Events go into a SQLite database in WAL mode with ``synchronous=FULL``: a commit returns
only after the write-ahead log is fsync'd, and SQLite's WAL frames carry checksums, so a torn
tail left by a crash is discarded on the next open rather than read as data. One fsync per
request would cap throughput at the disk's fsync rate, so writes use *group commit*: a single
writer thread takes every event queued while the previous commit was running, inserts them in
one transaction, commits (one fsync) and only then resolves each request's future, so each
handler answers 2xx only after the commit that covers its own event.

``event_id`` is the table's unique key (``INSERT OR IGNORE``): a retried delivery is
acknowledged again but stored once. Loading reads unloaded rows in arrival order and marks
them only after the warehouse committed them (see ``load.py``).

**Quarantine.** An event the warehouse refuses (the loader isolates it by splitting the failed
batch) is marked rejected with the warehouse's error, in place: its raw body stays here, it is
no longer handed to loads, and :meth:`Spool.release_rejected` puts it back in the queue once
the cause is fixed. A rejected event is never pruned.

Example::

    spool = Spool(Path(".lockgate/webhooks"))
    spool.start()                                 # the writer thread
    await spool.append(event_id, raw_body)        # returns once fsync'd
    for record in spool.unloaded(limit=1000): ...
    spool.mark_loaded([r.seq for r in records])
    spool.mark_rejected(seq, "value too long for type character varying(40)")
    spool.rejected(); spool.release_rejected()
    spool.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lockgate.errors import StateError

SPOOL_FILE = "spool.sqlite3"
MAX_GROUP = 2000
# bodies read into one load batch, past its first: bodies may be up to 10 MB (a `sent` event
# carrying its message), so 10,000 of them could otherwise need gigabytes
BATCH_BYTES = 64 * 1024 * 1024
"""Most events one commit covers; more wait for the next commit. ``max_group=1`` gives one
fsync per event (the benchmark's comparison)."""

_SCHEMA = """
create table if not exists events (
    seq integer primary key autoincrement,
    event_id text not null unique,
    received_at real not null,
    body blob not null,
    loaded_at real
);
"""

_QUARANTINE = """
alter table events add column rejected_at real;
alter table events add column reject_reason text;
"""

_INDEXES = """
drop index if exists events_unloaded;
create index if not exists events_pending on events (seq)
    where loaded_at is null and rejected_at is null;
create index if not exists events_rejected on events (seq) where rejected_at is not null;
"""
_PENDING = "loaded_at is null and rejected_at is null"


@dataclass(frozen=True)
class SpoolRecord:
    """One stored event: arrival order, id, arrival time and the raw body as received."""

    seq: int
    event_id: str
    received_at: float
    body: bytes


@dataclass(frozen=True)
class RejectedRecord:
    """An event in quarantine: the record, when it was set aside and the warehouse's error."""

    seq: int
    event_id: str
    received_at: float
    body: bytes
    rejected_at: float
    reason: str


@dataclass(frozen=True)
class SpoolStats:
    """Counts of stored events: all, waiting to load, and set aside in the quarantine."""

    total: int
    unloaded: int
    rejected: int = 0


_Pending = tuple[str, bytes, float, asyncio.Future[None]]
_Handoff = tuple[list[_Pending], asyncio.AbstractEventLoop]


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the durability settings every spool user needs. A file SQLite cannot
    use (damaged, not a database, a folder it may not write) is an error naming it."""
    try:
        return _connect(path)
    except sqlite3.OperationalError as exc:  # cannot open or write it; locked past 30 s
        raise StateError(
            f"cannot open the webhook spool `{path}`: {exc}",
            hint="check that the folder exists and may be written (permissions, free "
            "space), and that no other process has held the spool for 30 s",
        ) from exc
    except sqlite3.DatabaseError as exc:  # a file that is no SQLite database (damaged)
        raise StateError(
            f"the webhook spool `{path}` is damaged: {exc}",
            hint="restore it from a backup; or move it away (a new, empty spool is created): "
            "events it held that were not loaded yet stay only in the moved file, as "
            "Customer.io does not send an acknowledged event again",
        ) from exc


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("pragma journal_mode=wal")
    conn.execute("pragma synchronous=full")
    conn.execute("pragma busy_timeout=30000")
    conn.executescript(_SCHEMA)
    columns = {row[1] for row in conn.execute("pragma table_info(events)")}
    if "rejected_at" not in columns:  # a spool from before the quarantine existed
        conn.execute("begin immediate")
        try:
            columns = {row[1] for row in conn.execute("pragma table_info(events)")}
            if "rejected_at" not in columns:
                for statement in _QUARANTINE.strip().splitlines():
                    conn.execute(statement)
            conn.execute("commit")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("rollback")
            raise
    conn.executescript(_INDEXES)
    return conn


class Spool:
    """A crash-safe queue of raw webhook bodies, keyed by ``event_id``."""

    def __init__(self, folder: Path, *, max_group: int = MAX_GROUP) -> None:
        self.path = Path(folder) / SPOOL_FILE
        self.max_group = max_group
        self._queue: queue.SimpleQueue[_Handoff | None] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        self._writer: threading.Thread | None = None
        self._conn = connect(self.path)
        self._lock = threading.Lock()
        # reads use their own connection, so a health check never waits for a commit's fsync
        self._reader = connect(self.path)
        self._read_lock = threading.Lock()

    # ------------------------------------------------------------------ accepting

    def start(self) -> None:
        """Start the group-commit writer thread (idempotent)."""
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop, name="spool-writer", daemon=True
            )
            self._writer.start()

    def stop(self) -> None:
        """Finish queued writes and stop the writer thread."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None

    def close(self) -> None:
        """Stop the writer and close the database."""
        self.stop()
        with self._lock:
            self._conn.close()
        with self._read_lock:
            self._reader.close()

    async def append(self, event_id: str, body: bytes) -> None:
        """Store one event durably; returns after the fsync that covers it.

        A second event with the same ``event_id`` is not stored again. Raises
        :class:`sqlite3.Error` (or ``OSError``) when the disk refuses the write.
        """
        self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            # the first event of this loop iteration: hand the whole iteration's events to
            # the writer at once (one cross-thread wake-up per iteration, not per event)
            pending = self._pending[loop] = []
            loop.call_soon(self._hand_off, loop)
        pending.append((event_id, body, time.time(), future))
        await future

    def _hand_off(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(loop, None)
        if batch:
            self._queue.put((batch, loop))

    def append_now(self, records: Sequence[tuple[str, bytes]]) -> None:
        """Store events synchronously in one commit (tests and one-shot imports)."""
        now = time.time()
        with self._lock:
            self._insert([(eid, body, now) for eid, body in records])

    def _insert(self, rows: list[tuple[str, bytes, float]]) -> None:
        conn = self._conn
        conn.execute("begin immediate")
        try:
            conn.executemany(
                "insert or ignore into events (event_id, body, received_at) values (?, ?, ?)",
                rows,
            )
            conn.execute("commit")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("rollback")
            raise

    def _write_loop(self) -> None:
        stop = False
        carry: list[_Handoff] = []
        while not stop or carry:
            if carry:
                handoffs, carry = carry, []
            else:
                first = self._queue.get()
                if first is None:
                    return
                handoffs = [first]
            while not stop and sum(len(b) for b, _ in handoffs) < self.max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                handoffs.append(item)
            # split so that one commit covers at most `max_group` events
            group: list[_Handoff] = []
            size = 0
            for batch, loop in handoffs:
                room = self.max_group - size
                if room <= 0:
                    carry.append((batch, loop))
                    continue
                if len(batch) > room:
                    carry.append((batch[room:], loop))
                    batch = batch[:room]
                group.append((batch, loop))
                size += len(batch)
            self._commit_group(group)

    def _commit_group(self, group: list[_Handoff]) -> None:
        error: BaseException | None = None
        try:
            with self._lock:
                self._insert([(eid, body, at) for batch, _ in group for eid, body, at, _ in batch])
        except Exception as exc:  # reported to each waiting request as a 503
            error = exc
        for batch, loop in group:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, [f for *_, f in batch], error)

    # ------------------------------------------------------------------ loading

    def unloaded(self, limit: int = 5000, max_bytes: int = BATCH_BYTES) -> list[SpoolRecord]:
        """The oldest events not yet loaded nor rejected, in arrival order: at most ``limit``
        of them and, past the first, at most ``max_bytes`` of bodies (a batch of large bodies,
        such as `sent` events carrying the message, stays within memory)."""
        records: list[SpoolRecord] = []
        size = 0
        with self._read_lock:
            cursor = self._reader.execute(
                "select seq, event_id, received_at, body from events "
                f"where {_PENDING} order by seq limit ?",
                (limit,),
            )
            try:
                for s, e, r, b in cursor:
                    if records and size + len(b) > max_bytes:
                        break
                    records.append(SpoolRecord(int(s), str(e), float(r), bytes(b)))
                    size += len(b)
            finally:
                cursor.close()
        return records

    def mark_loaded(self, seqs: Sequence[int]) -> None:
        """Mark events loaded; call only after the warehouse committed them."""
        now = time.time()
        with self._lock:
            self._conn.execute("begin immediate")
            try:
                self._conn.executemany(
                    "update events set loaded_at = ? where seq = ?", [(now, s) for s in seqs]
                )
                self._conn.execute("commit")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("rollback")
                raise

    def last_loaded(self) -> SpoolRecord | None:
        """The event loaded most recently (the loader's probe of a healthy warehouse)."""
        with self._read_lock:
            row = self._reader.execute(
                "select seq, event_id, received_at, body from events "
                "where loaded_at is not null order by loaded_at desc, seq desc limit 1"
            ).fetchone()
        if row is None:
            return None
        s, e, r, b = row
        return SpoolRecord(int(s), str(e), float(r), bytes(b))

    def mark_rejected(self, seq: int, reason: str) -> None:
        """Set one event aside in the quarantine with the warehouse's error (one commit)."""
        with self._lock:
            self._conn.execute(
                "update events set rejected_at = ?, reject_reason = ? "
                "where seq = ? and loaded_at is null",
                (time.time(), reason, seq),
            )

    def rejected(self) -> list[RejectedRecord]:
        """The events in quarantine, in arrival order."""
        with self._read_lock:
            rows = self._reader.execute(
                "select seq, event_id, received_at, body, rejected_at, reject_reason "
                "from events where rejected_at is not null order by seq"
            ).fetchall()
        return [
            RejectedRecord(int(s), str(e), float(r), bytes(b), float(at), str(why or ""))
            for s, e, r, b, at, why in rows
        ]

    def release_rejected(self, event_ids: Sequence[str] | None = None) -> int:
        """Put quarantined events (all, or those of ``event_ids``) back in the loading queue,
        in their arrival order; return how many. Call it once the cause is fixed."""
        where = "rejected_at is not null"
        params: list[str] = []
        if event_ids is not None:
            if not event_ids:
                return 0
            where += f" and event_id in ({', '.join('?' for _ in event_ids)})"
            params = list(event_ids)
        with self._lock:
            cur = self._conn.execute(
                f"update events set rejected_at = null, reject_reason = null where {where}",
                params,
            )
        return cur.rowcount

    def prune(self, older_than: float) -> int:
        """Delete events loaded more than ``older_than`` seconds ago; return how many.

        Keep them at least as long as Customer.io retries (7 days) so a late retry of a loaded
        event is still recognised here (the warehouse merge would dedupe it anyway).
        """
        with self._lock:
            cur = self._conn.execute(
                "delete from events where loaded_at is not null and loaded_at < ?",
                (time.time() - older_than,),
            )
        return cur.rowcount

    def stats(self) -> SpoolStats:
        """How many events are stored, wait for loading, and are set aside as rejected."""
        with self._read_lock:
            total, unloaded, rejected = self._reader.execute(
                f"select count(*), count(*) filter (where {_PENDING}), "
                "count(*) filter (where rejected_at is not null) from events"
            ).fetchone()
        return SpoolStats(int(total), int(unloaded or 0), int(rejected or 0))

    def __iter__(self) -> Iterator[SpoolRecord]:
        with self._read_lock:
            rows = self._reader.execute(
                "select seq, event_id, received_at, body from events order by seq"
            ).fetchall()
        for s, e, r, b in rows:
            yield SpoolRecord(int(s), str(e), float(r), bytes(b))


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():  # the request was cancelled (client went away)
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
