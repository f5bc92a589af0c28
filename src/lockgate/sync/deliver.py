"""Deliver: stream the operations in ``changes`` to the destination and hand results to commit.

Records are read from DuckDB in Arrow batches (nothing loads the whole change set into
Python), given their final bytes, and passed to the destination, which batches, rate
limits and retries them and answers per record. Events get their dedupe ``id`` here: a
ULID derived from the event's timestamp and a hash of its key, name and identifiers, so the
same occurrence always carries the same id, across re-runs, crashes and even a lost state.

With the Customer.io client the hot path is columnar: operations come out of DuckDB already
followed by a comma, batch boundaries are found on the array of their lengths, each request
body is one slice of the Arrow buffer, and a batch accepted whole is committed as an Arrow
slice. No Python object is made per record unless an answer needs per-record handling (a
207, a split, a dead letter), which then takes the same path as any other destination. At a
million records this is the difference between ~10 s of Python per run and well under one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from lockgate import stopping
from lockgate.console import Advance, Console
from lockgate.destinations.base import Destination, Outcome, Record, Result
from lockgate.destinations.customerio.batching import (
    Batch,
    PackedBatch,
    body_of,
    oversize_reason,
    pack_ranges,
)
from lockgate.destinations.customerio.settings import MAX_OP_BYTES
from lockgate.sync.commit import Committer, Pending

ULID_ALPHABET = np.frombuffer(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", dtype=np.uint8)
READ_BATCH_ROWS = 20_000


def event_ulids(ts_seconds: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> list[bytes]:
    """Deterministic ULIDs: 48-bit millisecond timestamp + 80 bits of the md5 of the event's
    key, name and identifiers (``lo``, ``hi``: see ``diff.diff_events``)."""
    return [bytes(row) for row in _ulid_matrix(ts_seconds, lo, hi)]


def _ulid_array(ts_seconds: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> pa.Array:
    """The same ULIDs as one Arrow string array, built without a Python object per event."""
    matrix = _ulid_matrix(ts_seconds, lo, hi)
    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(26), len(matrix), [None, pa.py_buffer(matrix.tobytes())]
    )
    return fixed.cast(pa.binary()).cast(pa.string())


def _ulid_matrix(ts_seconds: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """One row of 26 Crockford base32 characters (as bytes) per event."""
    n = len(ts_seconds)
    ts = (np.clip(ts_seconds.astype(np.int64), 0, None).astype(np.uint64) * np.uint64(1000)) & (
        np.uint64((1 << 48) - 1)
    )
    lo = lo.astype(np.uint64)
    hi16 = hi.astype(np.uint64) & np.uint64(0xFFFF)
    out = np.empty((n, 26), dtype=np.uint8)
    five = np.uint64(31)
    for i in range(10):
        out[:, i] = ULID_ALPHABET[((ts >> np.uint64(45 - 5 * i)) & five).astype(np.intp)]
    for j in range(16):
        shift = 75 - 5 * j
        if shift >= 64:
            part = hi16 >> np.uint64(shift - 64)
        elif shift + 5 <= 64:
            part = lo >> np.uint64(shift)
        else:
            part = (lo >> np.uint64(shift)) | (hi16 << np.uint64(64 - shift))
        out[:, 10 + j] = ULID_ALPHABET[(part & five).astype(np.intp)]
    return out


#: an events run of at most this many events sends them in time order (a sort of their
#: payloads); a larger one (a first sync of a long history) sends them as they are staged, in
#: no set order
EVENTS_IN_TIME_ORDER = 1_000_000
#: ... and only while their payloads take at most this share of the state's memory limit: the
#: sort does not spill well (250,000 events of 1 KB ran out of memory under 256 MB; 120,000
#: did not)
EVENTS_IN_TIME_ORDER_SHARE = 0.25

_UNITS = {"bytes": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def _memory_limit(con: duckdb.DuckDBPyConnection) -> float | None:
    """The connection's memory limit in bytes (DuckDB gives it as text: ``244.1 MiB``)."""
    text = str(con.execute("select current_setting('memory_limit')").fetchall()[0][0])
    number, _, unit = text.strip().partition(" ")
    try:
        return float(number) * _UNITS[unit.lower()]
    except (ValueError, KeyError):
        return None


def _order(con: duckdb.DuckDBPyConnection, kind: str, source: str) -> str:
    """The ``order by`` an events run reads its events with: oldest first, so that a person's
    events reach Customer.io in the order they happened as far as batches in flight allow
    (`signed_up` before `trial_started`: a campaign triggered by one and filtered on the other
    sees both). Nothing for other kinds, past :data:`EVENTS_IN_TIME_ORDER` events, or past
    :data:`EVENTS_IN_TIME_ORDER_SHARE` of the memory limit in payloads."""
    if kind != "events":
        return ""
    count, size = con.execute(
        "select count(*), coalesce(sum(strlen(coalesce(op, '')) + strlen(coalesce(k, '')) "
        f"+ strlen(coalesce(ident, ''))), 0) from {source}"
    ).fetchall()[0]
    limit = _memory_limit(con)
    fits = limit is None or size <= limit * EVENTS_IN_TIME_ORDER_SHARE
    return " order by ts, k" if count <= EVENTS_IN_TIME_ORDER and fits else ""


def _sent(con: duckdb.DuckDBPyConnection, kind: str, source: str) -> str:
    """The columns an events sync's events are ledgered with (:data:`SENT`): the name and
    timestamp each is sent with, as the diff maps them (``changes``); nulls for the other
    events a sync ledgers (`on_change` events: their source has none)."""
    if kind != "events":
        return ""
    have = {d[0] for d in con.execute(f"select * from {source} limit 0").description}
    if set(SENT) <= have:
        return ", " + ", ".join(SENT)
    return ", null::varchar as sent_name, null::bigint as sent_ts"


#: the kinds whose ``changes`` keep no payload of a row mapped from the model (``__rid``)
BUILT_PAYLOADS = ("people", "objects", "relationships")


def with_payloads_sql(con: duckdb.DuckDBPyConnection, kind: str, source: str) -> str:
    """``source`` (``changes``, or a query of its rows) with every row's payload in ``op``:
    the diff keeps none of a row mapped from the model (``diff.diff_records``), only its
    ``__rid``; its payload, key, hash and identifiers are read from the `payloads` view the
    diff made over the model (the same SQL, so the same values). The rows that carry their
    own (removals, `on_change` rows, email releases) are read as they are. A semi join on
    ``__rid``: its hash table holds the row ids, not the payloads; each payload is built as
    it is read, once, and never stored."""
    if kind not in BUILT_PAYLOADS:
        return source
    have = {d[0] for d in con.execute(f"select * from {source} limit 0").description}
    if "__rid" not in have or "op" not in have:
        return source
    return f"""(
        select k, h, ident, removed, op from {source} where op is not null or __rid is null
        union all
        select p.k, p.h, p.ident, false as removed, p.op from payloads p
        semi join (select __rid from {source} where op is null and __rid is not null) s
            on s.__rid = p.__rid
    )"""


def _records(
    con: duckdb.DuckDBPyConnection, kind: str, pending: dict[str, Pending], source: str
) -> Generator[Record]:
    source = with_payloads_sql(con, kind, source)
    columns = "k, op, h, ident, removed" + (", ts, lo, hi" if kind == "events" else "")
    columns += _sent(con, kind, source)
    order = _order(con, kind, source)
    reader = con.sql(f"select {columns} from {source}{order}").to_arrow_reader(READ_BATCH_ROWS)
    with reader:  # closed even when delivery stops early: it holds the state connection
        for batch in reader:
            yield from _batch_records(batch, kind, pending)


def _batch_records(
    batch: pa.RecordBatch, kind: str, pending: dict[str, Pending]
) -> Iterator[Record]:
    keys = batch.column(0).to_pylist()
    ops = batch.column(1).to_pylist()
    hashes = batch.column(2).to_pylist()
    idents = batch.column(3).to_pylist()
    removed = batch.column(4).to_pylist()
    if kind == "events":
        ids = event_ulids(
            batch.column(5).to_numpy(zero_copy_only=False),
            batch.column(6).to_numpy(zero_copy_only=False),
            batch.column(7).to_numpy(zero_copy_only=False),
        )
        names = batch.column(8).to_pylist()
        stamps = batch.column(9).to_pylist()
        for key, op, ident, ulid, name, ts in zip(
            keys, ops, idents, ids, names, stamps, strict=True
        ):
            pending[key] = Pending(None, ident, False, "event", name, ts)
            yield Record(key, b'{"id":"' + ulid + b'",' + op.encode())
        return
    if kind == "relationships":
        actions = ("add_relationships", "delete_relationships", "delete_relationships")
    elif kind == "ops":
        actions = ("identity", "identity", "identity")
    else:
        actions = ("identify", "delete", "clear")
    for key, op, h, ident, gone in zip(keys, ops, hashes, idents, removed, strict=True):
        action = actions[0] if not gone else (actions[1] if '"delete' in op[:60] else actions[2])
        pending[key] = Pending(h, ident, gone, action)
        yield Record(key, op.encode())


async def _deliver(
    con: duckdb.DuckDBPyConnection,
    destination: Destination,
    kind: str,
    committer: Committer,
    advance: Advance,
    source: str,
) -> None:
    pending: dict[str, Pending] = {}
    records = _records(con, kind, pending, source)
    try:
        async for results in destination.deliver(records):
            committer.add(results, pending)
            advance(len(results))
    except BaseException:
        # stopped at once (a second signal, a run-wide error): the records handed over and
        # not answered may have reached Customer.io
        committer.unconfirmed(
            list(pending), [p.action for p in pending.values()], [p.ident for p in pending.values()]
        )
        raise
    finally:
        records.close()  # a run stopped early must not leave a result open on the connection
        committer.flush()
        await destination.aclose()


def action_sql(kind: str, *, removed: bool = True) -> str:
    """The history's `action` of each row, as `_batch_records` names it, in SQL. Without
    ``removed`` (no row of the source is removed) it does not read ``op``: a statement that
    names ``op`` scans every payload, most of the source's bytes (0.6 s of CPU at 1M rows)."""
    if kind == "events":
        return "'event'"
    if kind == "ops":
        return "'identity'"
    if kind == "relationships":
        return "case when removed then 'delete_relationships' else 'add_relationships' end"
    if not removed:
        return "'identify'"
    return (
        "case when not removed then 'identify' "
        "when contains(substr(op, 1, 60), '\"delete') then 'delete' else 'clear' end"
    )


NO_PAYLOAD = (
    "no payload could be built for this record, so it was not sent (a Lockgate bug: please "
    "report it with the sync's config); it is tried again next run"
)


class RetryNotice:
    """Says on the console that requests are being retried, so a run waiting on a workspace
    that does not answer (several minutes of backoff at worst) is not taken for stuck: the
    first time each distinct error is seen, then at most every ``every`` seconds."""

    def __init__(self, console: Console, sync: str, attempts: int, *, every: float = 10.0) -> None:
        self.console = console
        self.sync = sync
        self.attempts = attempts
        self.every = every
        self._seen: set[str] = set()
        self._last = -every

    def __call__(self, error: str, attempt: int, delay: float) -> None:
        now = time.monotonic()
        if error in self._seen and now - self._last < self.every:
            return
        self._seen.add(error)
        self._last = now
        if error.startswith("HTTP 429"):
            what = f"Customer.io asks to slow down ({error}): waiting {delay:.1f} s"
        else:
            what = (
                f"a request failed ({error}): retrying in {delay:.1f} s, attempt "
                f"{attempt + 1} of {self.attempts}; records whose every attempt fails are "
                "sent again by the next run"
            )
        self.console.warn(f"{self.sync}: {what}")


def notify_retries(destination: Destination, console: Console, sync: str) -> Destination:
    """``destination`` with a :class:`RetryNotice` when it can tell of its retries."""
    if hasattr(destination, "on_retry"):
        attempts = getattr(getattr(destination, "settings", None), "max_retries", 0) + 1
        destination.on_retry = RetryNotice(console, sync, attempts)
    return destination


META = ("k", "h", "ident", "removed", "action")
"""The columns the committer keeps of each delivered row..."""
SENT = ("sent_name", "sent_ts")
"""... and of an event, the name and timestamp it is sent with (kept in the ledger)."""


def _packed_batches(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    source: str,
    *,
    max_bytes: int,
    max_ops: int | None,
) -> Generator[PackedBatch | list[Result]]:
    """Request bodies cut straight from Arrow buffers; oversize operations come out as
    lists of REJECTED results (never sent), as the client's own packer gives them."""
    source = with_payloads_sql(con, kind, source)
    columns = f"k, h, ident, removed, {action_sql(kind)} as action, "
    if kind == "events":
        columns += "op, ts, lo, hi" + _sent(con, kind, source)
    else:
        columns += "op || ',' as op"
    order = _order(con, kind, source)
    reader = con.sql(f"select {columns} from {source}{order}").to_arrow_reader(READ_BATCH_ROWS)
    with reader:  # closed even when delivery stops early: it holds the state connection
        yield from _packed_from(reader, kind, max_bytes=max_bytes, max_ops=max_ops)


def _packed_from(
    reader: pa.RecordBatchReader, kind: str, *, max_bytes: int, max_ops: int | None
) -> Iterator[PackedBatch | list[Result]]:
    for batch in reader:
        if kind == "events":
            ids = _ulid_array(
                batch.column(6).to_numpy(zero_copy_only=False),
                batch.column(7).to_numpy(zero_copy_only=False),
                batch.column(8).to_numpy(zero_copy_only=False),
            )
            import pyarrow.compute as pc  # here: ~60 ms of import a people sync does not need

            ops = pc.binary_join_element_wise('{"id":"', ids, '",', batch.column(5), ",", "")
        else:
            ops = batch.column(5)
        if ops.type not in _OFFSET_WIDTH:
            ops = ops.cast(pa.large_string())  # pyarrow.compute: ~40-60 ms of import
        offsets, lengths = _offsets(ops)
        kept = list(META) + (list(SENT) if kind == "events" else [])
        meta = pa.RecordBatch.from_arrays([batch.column(c) for c in kept], names=kept)
        # `is_null` is pyarrow.compute's, whose import (~40-60 ms) an incremental run pays in
        # full: asked only when a value is missing
        missing = (
            ops.is_null().to_numpy(zero_copy_only=False)
            if ops.null_count
            else np.zeros(len(ops), dtype=bool)
        )
        refused = (lengths > MAX_OP_BYTES) | missing
        if refused.any():
            where = np.flatnonzero(refused)
            keys = meta.column(0).take(pa.array(where)).to_pylist()
            yield _Refused(
                [
                    Result(
                        key,
                        Outcome.REJECTED,
                        None,
                        NO_PAYLOAD
                        if missing[i]
                        else oversize_reason(int(lengths[i]), ops[int(i)].as_py()),
                        0,
                    )
                    for key, i in zip(keys, where, strict=True)
                ],
                _pending(meta.take(pa.array(where))),
            )
            keep = pa.array(~refused)
            meta, ops = meta.filter(keep), ops.filter(keep)
            offsets, lengths = _offsets(ops)
        data = memoryview(ops.buffers()[2]) if len(ops) else memoryview(b"")
        bounds = pack_ranges(lengths, max_bytes=max_bytes, max_ops=max_ops)
        for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            part = (meta.slice(start, end - start), ops.slice(start, end - start))
            yield PackedBatch(
                body_of(data[offsets[start] : offsets[end] - 1]),
                end - start,
                _unpacker(part[0], part[1]),
                part,
            )


#: the width of the offsets of the string arrays whose buffers are read as they are (DuckDB
#: gives `string`); another type is cast to `large_string` first
_OFFSET_WIDTH = {pa.string(): np.int32, pa.large_string(): np.int64}


def _offsets(ops: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Where each operation starts in a string or large_string array's data buffer (n + 1
    offsets), and each one's length without its trailing comma."""
    start, buffer = ops.offset, ops.buffers()[1]
    if buffer is None:  # an empty array may have none
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    offsets = np.frombuffer(buffer, dtype=_OFFSET_WIDTH[ops.type])[start : start + len(ops) + 1]
    offsets = offsets.astype(np.int64)
    return offsets, np.diff(offsets) - 1


class _Refused(list[Result]):
    """Results for records refused before sending, with their commit metadata."""

    def __init__(self, results: list[Result], pending: dict[str, Pending]) -> None:
        super().__init__(results)
        self.pending = pending


def _unpacker(meta: pa.RecordBatch, ops: pa.Array) -> Any:
    def unpack() -> Batch:
        encoded = ops.cast(pa.large_binary()).to_pylist()
        return Batch(meta.column(0).to_pylist(), [op[:-1] for op in encoded])

    return unpack


def _pending(meta: pa.RecordBatch) -> dict[str, Pending]:
    """Per-record commit metadata, made only for a batch whose answer needs it."""
    k, h, ident, removed, action = (meta.column(i).to_pylist() for i in range(5))
    n = meta.num_rows
    names = meta.column(5).to_pylist() if meta.num_columns > 5 else [None] * n
    stamps = meta.column(6).to_pylist() if meta.num_columns > 5 else [None] * n
    return {
        key: Pending(hh, i, bool(gone), a, name, ts)
        for key, hh, i, gone, a, name, ts in zip(
            k, h, ident, removed, action, names, stamps, strict=True
        )
    }


async def _deliver_packed(
    con: duckdb.DuckDBPyConnection,
    destination: Any,
    kind: str,
    committer: Committer,
    advance: Advance,
    source: str,
) -> None:
    settings = destination.settings
    batches = _packed_batches(
        con,
        kind,
        source,
        max_bytes=settings.max_batch_bytes,
        max_ops=settings.max_batch_ops,
    )

    # the batches handed to the client and not answered yet (one dict entry per batch)
    in_flight: dict[int, pa.RecordBatch] = {}

    async def jobs() -> AsyncIterator[PackedBatch | list[Result]]:
        for item in batches:
            if isinstance(item, PackedBatch):
                in_flight[id(item)] = item.tag[0]
            yield item

    try:
        async for item in destination.deliver_packed(jobs()):
            if isinstance(item, _Refused):  # refused before sending: oversize
                committer.add(item, item.pending)
                advance(len(item))
                continue
            packed, status, results = item
            meta = packed.tag[0]
            del in_flight[id(packed)]
            if results is None:
                committer.add_delivered(meta, status)
            else:
                committer.add(results, _pending(meta))
            advance(packed.size)
    except BaseException:
        # stopped at once (a second signal, a run-wide error): the requests in flight were
        # cut off, and Customer.io may have taken them
        for meta in in_flight.values():
            committer.unconfirmed(
                meta.column(0).to_pylist(), meta.column(4).to_pylist(), meta.column(2).to_pylist()
            )
        raise
    finally:
        batches.close()  # a run stopped early must not leave a result open on the connection
        committer.flush()
        await destination.aclose()


def deliver(
    con: duckdb.DuckDBPyConnection,
    destination: Destination,
    *,
    kind: str,
    committer: Committer,
    advance: Advance,
    source: str = "changes",
) -> None:
    """Send everything in ``source``; every record's outcome reaches the committer.

    On SIGTERM or Ctrl-C (:mod:`lockgate.stopping`) no new request is sent, the ones in flight
    are answered and committed, then the stop (:class:`~lockgate.stopping.Stopped`) is raised."""
    with stopping.delivering():
        if callable(getattr(destination, "deliver_packed", None)):
            asyncio.run(_deliver_packed(con, destination, kind, committer, advance, source))
        else:
            asyncio.run(_deliver(con, destination, kind, committer, advance, source))
