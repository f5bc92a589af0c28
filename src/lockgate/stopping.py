"""Stopping a run on SIGTERM or Ctrl-C without cutting the requests in flight.

A scheduler (cron's kill, systemd, Kubernetes, Airflow) stops a job with SIGTERM, then SIGKILL
after a grace period; a person at the terminal presses Ctrl-C. Outside delivery, either stops
a run at once (:class:`Terminated`, :class:`KeyboardInterrupt`). During delivery it asks the
delivery to stop (:func:`request`): no new request is sent, the ones in flight get their
answers, those are committed, and then the run stops with :class:`Terminated` or
:class:`Interrupted`. Cutting a request off instead left records Customer.io had taken out of
the snapshot and ledger, so the next run sent them again. A second signal stops at once.

Example::

    with stopping.delivering():
        asyncio.run(deliver_everything())  # stops taking new work once `requested()`
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so a run stops the same way."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C that waited for the requests in flight: what they delivered is committed."""


class CutShort(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM while the requests in flight were awaited: they were cut
    off, so what Customer.io took of them is sent again by the next run."""

    def __init__(self, by: str) -> None:
        super().__init__(by)
        self.by = by


_delivering = 0
_requested: type[KeyboardInterrupt] | None = None


def requested() -> bool:
    """True once a stop was asked for during the delivery under way."""
    return _requested is not None


def request(stop: type[KeyboardInterrupt] = Terminated) -> bool:
    """Ask the delivery under way to stop after its requests in flight, then raise ``stop``.
    False when there is none, or a stop was already asked for: the caller then stops at once."""
    global _requested
    if _delivering and _requested is None:
        _requested = stop
        return True
    return False


@contextmanager
def delivering() -> Iterator[None]:
    """A delivery is under way; when it ends after a stop was asked for, raise the stop's
    exception (what it delivered is committed by then)."""
    global _delivering, _requested
    _delivering += 1
    stop = None
    try:
        yield
    finally:
        _delivering -= 1
        if not _delivering:  # also when the delivery ended by an error or a second signal
            stop, _requested = _requested, None
    if stop is not None:
        raise stop
