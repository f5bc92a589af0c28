"""What every destination takes and gives back: records in, one result per record out.

The sync engine hands a destination an iterable of :class:`Record` values and reads
lists of :class:`Result` values back, one list per finished HTTP batch, so it can
commit per batch. Every input record appears in exactly one result::

    async for results in destination.deliver(records):
        ledger.commit(r for r in results if r.outcome is Outcome.DELIVERED)

A destination raises a :class:`~lockgate.errors.DestinationError` subclass only for
failures that concern the whole run (bad credentials, wrong endpoint); a problem
with one record is that record's result, never an exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Record:
    """One operation to deliver, under the caller's key.

    ``key`` is the caller's handle for the record (a primary key or an event id) and
    must be unique within one ``deliver()`` call. ``op`` is one Track v2 batch
    operation: a dict, or the already-encoded JSON bytes of that dict::

        Record("42", {"type": "person", "action": "identify",
                      "identifiers": {"id": "42"}, "attributes": {"plan": "pro"}})
    """

    key: str
    op: dict[str, Any] | bytes


class Outcome(StrEnum):
    """How a record ended: exactly one of these, never nothing."""

    DELIVERED = "delivered"
    """The API accepted it (200, or 207 without an error for it)."""
    REJECTED = "rejected"
    """The API (or the client, before sending) refused it for good; ``reason`` says why."""
    DEAD_LETTER = "dead_letter"
    """Retries ran out on transient failures; ``reason`` is the last error."""


@dataclass(frozen=True, slots=True)
class Result:
    """The single final state of one record.

    ``status`` is the HTTP status that decided it (``None`` for connection errors or
    when the client refused the record before sending). ``attempts`` counts the HTTP
    requests that carried the record.
    """

    key: str
    outcome: Outcome
    status: int | None
    reason: str | None
    attempts: int


class Destination(Protocol):
    """A place records are delivered to. Customer.io is the first implementation."""

    def deliver(
        self, records: Iterable[Record] | AsyncIterable[Record]
    ) -> AsyncIterator[list[Result]]:
        """Deliver ``records``; yield each HTTP batch's results as soon as it is finished."""
        ...

    async def aclose(self) -> None:
        """Release connections. The destination may be used again afterwards."""
        ...
