"""Deliver: stream the operations in ``changes`` to the destination and hand results to commit.

Records are read from DuckDB in Arrow batches (nothing loads the whole change set into
Python), given their final bytes, and passed to the destination, which batches, rate
limits and retries them and answers per record. Events get their dedupe ``id`` here: a
ULID derived from the event's timestamp and a hash of its key, so the same occurrence
always carries the same id, across re-runs, crashes and even a lost state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa

from lockgate.console import Advance
from lockgate.destinations.base import Destination, Record
from lockgate.sync.commit import Committer, Pending

ULID_ALPHABET = np.frombuffer(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", dtype=np.uint8)
READ_BATCH_ROWS = 20_000


def event_ulids(ts_seconds: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> list[bytes]:
    """Deterministic ULIDs: 48-bit millisecond timestamp + 80 bits of the key's md5."""
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
    return [bytes(row) for row in out]


def _records(
    con: duckdb.DuckDBPyConnection, kind: str, pending: dict[str, Pending], source: str
) -> Iterator[Record]:
    columns = "k, op, h, ident, removed" + (", ts, lo, hi" if kind == "events" else "")
    reader = con.sql(f"select {columns} from {source}").to_arrow_reader(READ_BATCH_ROWS)
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
        for key, op, ident, ulid in zip(keys, ops, idents, ids, strict=True):
            pending[key] = Pending(None, ident, False, "event")
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
    try:
        async for results in destination.deliver(_records(con, kind, pending, source)):
            committer.add(results, pending)
            advance(len(results))
    finally:
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
    """Send everything in ``source``; every record's outcome reaches the committer."""
    asyncio.run(_deliver(con, destination, kind, committer, advance, source))
