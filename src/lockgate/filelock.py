"""An exclusive `flock` on a file descriptor, waited for a bounded time.

The project state (`state/store.py`) and the webhook loader (`webhooks/load.py`) each keep one
process at a time on their files this way; the lock goes with the descriptor (closing it, or
the process ending, releases it).
"""

from __future__ import annotations

import fcntl
import time


def flock_waiting(fd: int, wait: float, *, poll: float = 0.01, shared: bool = False) -> bool:
    """Take the exclusive lock on ``fd`` (a shared one with ``shared``: readers together, no
    writer), retrying for up to ``wait`` seconds; False if another process still holds it
    then."""
    deadline = time.monotonic() + wait
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)
