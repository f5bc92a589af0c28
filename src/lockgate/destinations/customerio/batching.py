"""Encode Track v2 operations once and pack them into ``/api/v2/batch`` bodies.

Pure functions, no I/O. Each operation is encoded to JSON bytes exactly once
(orjson); a body is the bytes ``{"batch":[`` + ops joined by ``,`` + ``]}``, so
splitting a rejected batch in halves never re-encodes anything::

    items, oversize = [], []
    for record in records:
        item = encode(record)
        (oversize if item.size > MAX_OP_BYTES else items).append(item)
    for batch in pack(items, max_bytes=499_000):
        body = batch_body(batch)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import orjson

from lockgate.destinations.base import Record
from lockgate.destinations.customerio.settings import MAX_OP_BYTES

_HEAD = b'{"batch":['
_TAIL = b"]}"
ENVELOPE_BYTES = len(_HEAD) + len(_TAIL)
"""Bytes a batch body adds around its operations (separators come on top)."""


@dataclass(frozen=True, slots=True)
class Item:
    """One record's operation, encoded: what a batch is made of."""

    key: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


def encode(record: Record) -> Item:
    """Encode ``record.op`` to compact JSON bytes (bytes are taken as already encoded)."""
    op = record.op
    data = op if isinstance(op, bytes) else orjson.dumps(op)
    return Item(record.key, data)


def oversize_reason(size: int) -> str:
    """The rejection reason for an operation too large for Track v2."""
    return (
        f"operation is {size:,} bytes once encoded; Customer.io's Track v2 batch API "
        f"accepts at most {MAX_OP_BYTES:,} bytes (32 KB) per operation, so it was not sent"
    )


def body_size(ops: int, payload: int) -> int:
    """Size of a body holding ``ops`` operations totalling ``payload`` bytes."""
    return ENVELOPE_BYTES + payload + max(ops - 1, 0)


class Packer:
    """Fills one batch at a time; :meth:`add` hands back the previous batch when full.

    Every item must already fit on its own (``body_size(1, item.size) <= max_bytes``);
    callers reject larger ones before packing.
    """

    def __init__(self, *, max_bytes: int, max_ops: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_ops = max_ops
        self._batch: list[Item] = []
        self._payload = 0

    def add(self, item: Item) -> list[Item] | None:
        """Add ``item``; return the finished batch if ``item`` had to start a new one."""
        full: list[Item] | None = None
        batch = self._batch
        if batch and (
            body_size(len(batch) + 1, self._payload + item.size) > self.max_bytes
            or (self.max_ops is not None and len(batch) >= self.max_ops)
        ):
            full = batch
            self._batch = batch = []
            self._payload = 0
        batch.append(item)
        self._payload += item.size
        return full

    def flush(self) -> list[Item] | None:
        """Return the partly filled batch, if any, and start afresh."""
        batch, self._batch, self._payload = self._batch, [], 0
        return batch or None


def pack(
    items: Iterable[Item], *, max_bytes: int, max_ops: int | None = None
) -> Iterator[list[Item]]:
    """Group ``items`` in order into batches whose body stays within ``max_bytes``."""
    packer = Packer(max_bytes=max_bytes, max_ops=max_ops)
    for item in items:
        full = packer.add(item)
        if full is not None:
            yield full
    last = packer.flush()
    if last is not None:
        yield last


def batch_body(items: Sequence[Item]) -> bytes:
    """The ``{"batch":[...]}`` request body for ``items``."""
    return _HEAD + b",".join(item.data for item in items) + _TAIL


def halves(items: Sequence[Item]) -> tuple[list[Item], list[Item]]:
    """Split a batch in two halves (the first half gets the smaller share)."""
    mid = len(items) // 2
    return list(items[:mid]), list(items[mid:])
