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

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Stopped(KeyboardInterrupt):
    """A stop by a signal, raised where Ctrl-C would be so a run stops the same way; ``by``
    names it to the person, ``signum`` gives the exit code (128 + it)."""

    by = ""
    signum = 0


class Terminated(Stopped):
    """SIGTERM (at once outside delivery, after the requests in flight during it)."""

    by = "SIGTERM"
    signum = signal.SIGTERM


class Interrupted(Stopped):
    """Ctrl-C that waited for the requests in flight: what they delivered is committed."""

    by = "Ctrl-C"
    signum = signal.SIGINT


class CutShort(Stopped):
    """A second signal while the requests in flight were awaited: they were cut off, so what
    Customer.io took of them is sent again by the next run."""

    def __init__(self, first: type[Stopped]) -> None:
        super().__init__(first.by)
        self.by, self.signum = first.by, first.signum


_delivering = 0
_requested: type[Stopped] | None = None


def requested() -> bool:
    """True once a stop was asked for during the delivery under way."""
    return _requested is not None


def request(stop: type[Stopped] = Terminated) -> bool:
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
