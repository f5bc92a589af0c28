"""Encode Track v2 operations once and pack them into ``/api/v2/batch`` bodies.

Pure code, no I/O. Each operation is encoded to compact JSON bytes exactly once
(orjson by default); a body is ``{"batch":[`` + the operations joined by ``,`` +
``]}``, so splitting a rejected batch in halves never re-encodes anything. The
packing loop is the hot path of a sync (a million records is a million trips
through :meth:`Packer.feed`), hence the plain lists and local variables::

    packer = Packer(max_bytes=499_000)
    full, oversize = packer.feed(records)      # any number of calls
    last = packer.flush()
    for batch in full:
        body = batch.body()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from lockgate.destinations.base import Record
from lockgate.destinations.customerio.settings import MAX_OP_BYTES

_HEAD = b'{"batch":['
_TAIL = b"]}"
ENVELOPE_BYTES = len(_HEAD) + len(_TAIL)
"""Bytes a batch body adds around its operations (separators come on top)."""

Dumps = Callable[[Any], bytes]


@dataclass(slots=True)
class Batch:
    """Encoded operations and their records' keys, in the same order."""

    keys: list[str]
    ops: list[bytes]

    def __len__(self) -> int:
        return len(self.keys)

    def body(self) -> bytes:
        """The ``{"batch":[...]}`` request body."""
        return _HEAD + b",".join(self.ops) + _TAIL

    def halves(self) -> tuple[Batch, Batch]:
        """Split in two (the first half gets the smaller share when the size is odd)."""
        mid = len(self.keys) // 2
        return (
            Batch(self.keys[:mid], self.ops[:mid]),
            Batch(self.keys[mid:], self.ops[mid:]),
        )

    def without(self, drop: Iterable[int]) -> Batch:
        """The batch minus the operations at the given positions."""
        gone = set(drop)
        keep = [i for i in range(len(self.keys)) if i not in gone]
        return Batch([self.keys[i] for i in keep], [self.ops[i] for i in keep])


@dataclass(slots=True)
class PackedBatch:
    """A batch body the caller built itself, for :meth:`CustomerIOClient.deliver_packed`.

    ``body`` is the whole ``{"batch":[...]}`` request and ``size`` its number of operations.
    ``unpack`` gives the same operations as a :class:`Batch` (keys and encoded ops, in
    order); the client calls it only when an answer needs per-record handling. ``tag`` is
    the caller's own handle, given back untouched.
    """

    body: bytes
    size: int
    unpack: Callable[[], Batch]
    tag: Any = None


def body_of(data: memoryview | bytes) -> bytes:
    """A request body around ``data``: encoded operations already joined by commas."""
    return b"".join((_HEAD, data, _TAIL))  # one copy of ``data``, not two


def pack_ranges(lengths: np.ndarray, *, max_bytes: int, max_ops: int | None = None) -> np.ndarray:
    """Cut a run of operations of the given encoded lengths into batches, greedily and in
    order, exactly as :class:`Packer` does; returns the batch boundaries ``[0, ..., n]``.

    Every length must be at most the per-operation limit (the caller sets the larger ones
    aside first). Works on arrays, not per record: a million operations take milliseconds.
    """
    n = len(lengths)
    ends = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths.astype(np.int64) + 1, out=ends[1:])  # one separator per operation
    budget = max_bytes - ENVELOPE_BYTES + 1
    cap = max_ops or n or 1
    bounds = [0]
    start = 0
    while start < n:
        end = int(np.searchsorted(ends, ends[start] + budget, side="right")) - 1
        end = min(max(end, start + 1), start + cap, n)
        bounds.append(end)
        start = end
    return np.asarray(bounds, dtype=np.int64)


def body_size(ops: int, payload: int) -> int:
    """Size of a body holding ``ops`` operations totalling ``payload`` bytes."""
    return ENVELOPE_BYTES + payload + max(ops - 1, 0)


def oversize_reason(size: int, op: str | bytes | None = None) -> str:
    """The rejection reason for an operation too large for Track v2; given the operation's
    JSON ``op``, it says how many attributes it holds and names the largest, what to trim."""
    return (
        f"operation is {size:,} bytes once encoded; Customer.io's Track v2 batch API "
        f"accepts at most {MAX_OP_BYTES:,} bytes (32 KB) per operation, so it was not sent"
        + (_what_is_large(op) if op is not None else "")
    )


def _what_is_large(op: str | bytes, shown: int = 3) -> str:
    """``: its 40 attributes hold 36,120 bytes, the largest `notes` 912 bytes, ...``, for an
    operation's JSON ``op`` (a trailing `,` allowed); empty when it holds no attributes."""
    text = op.rstrip(b",") if isinstance(op, bytes) else op.rstrip(",")
    try:
        attributes = orjson.loads(text).get("attributes")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    if not isinstance(attributes, dict) or not attributes:
        return ""
    # each as it is written in the operation: `"name":value`
    sizes = sorted(
        (
            (len(orjson.dumps(name)) + 1 + len(orjson.dumps(value)), name)
            for name, value in attributes.items()
        ),
        key=lambda sized: (-sized[0], sized[1]),
    )
    largest = ", ".join(f"`{name}` {size:,} bytes" for size, name in sizes[:shown])
    total = sum(size for size, _ in sizes)
    return (
        f": its {len(sizes)} attributes hold {total:,} bytes, the largest {largest}; send fewer "
        "or shorter ones (another sync may send some of them)"
    )


class Packer:
    """Encodes records and fills batches up to ``max_bytes`` (and ``max_ops``), in order.

    :meth:`feed` returns the batches it filled and the ``(key, size)`` of operations
    over ``max_op_bytes``, which are never packed. ``dumps`` is the JSON encoder
    (``orjson.dumps``); ``bytes`` operations are taken as already encoded.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        max_ops: int | None = None,
        max_op_bytes: int = MAX_OP_BYTES,
        dumps: Dumps = orjson.dumps,
    ) -> None:
        if body_size(1, max_op_bytes) > max_bytes:
            raise ValueError("max_bytes must hold at least one maximal operation")
        self.max_bytes = max_bytes
        self.max_ops = max_ops or 1 << 62
        self.max_op_bytes = max_op_bytes
        self.dumps = dumps
        self._keys: list[str] = []
        self._ops: list[bytes] = []
        # Running body size, counting one separator per operation; the envelope
        # has one fewer separator than operations, hence the -1.
        self._size = ENVELOPE_BYTES - 1

    def feed(self, records: Iterable[Record]) -> tuple[list[Batch], list[tuple[str, int]]]:
        """Encode and pack ``records``; return the filled batches and the oversize ones."""
        full: list[Batch] = []
        oversize: list[tuple[str, int]] = []
        keys, ops, size = self._keys, self._ops, self._size
        max_bytes, max_ops, max_op, dumps = (
            self.max_bytes,
            self.max_ops,
            self.max_op_bytes,
            self.dumps,
        )
        empty = ENVELOPE_BYTES - 1
        for record in records:
            op = record.op
            data = op if op.__class__ is bytes else dumps(op)
            n = len(data)
            if n > max_op:
                oversize.append((record.key, n))
                continue
            n += 1
            if size + n > max_bytes or len(ops) >= max_ops:
                full.append(Batch(keys, ops))
                keys, ops, size = [], [], empty
            keys.append(record.key)
            ops.append(data)
            size += n
        self._keys, self._ops, self._size = keys, ops, size
        return full, oversize

    def flush(self) -> Batch | None:
        """Return the partly filled batch, if any, and start afresh."""
        if not self._keys:
            return None
        batch = Batch(self._keys, self._ops)
        self._keys, self._ops, self._size = [], [], ENVELOPE_BYTES - 1
        return batch


def pack(
    records: Iterable[Record],
    *,
    max_bytes: int,
    max_ops: int | None = None,
    dumps: Dumps = orjson.dumps,
) -> tuple[list[Batch], list[tuple[str, int]]]:
    """Pack every record at once: ``(batches, oversize)``. See :class:`Packer`."""
    packer = Packer(max_bytes=max_bytes, max_ops=max_ops, dumps=dumps)
    batches, oversize = packer.feed(records)
    last = packer.flush()
    if last is not None:
        batches.append(last)
    return batches, oversize
