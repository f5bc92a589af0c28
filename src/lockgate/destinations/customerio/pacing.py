"""Rate limiting and retry timing: a token bucket, full-jitter backoff, ``Retry-After``.

Pure where it can be: :class:`TokenBucket` takes the time as an argument and returns
how long to wait, so it is tested with plain numbers; :func:`backoff` takes the random
draw's source. Only :meth:`TokenBucket.acquire` sleeps, through the injected sleep::

    bucket = TokenBucket(rate=100.0, burst=1)
    wait = bucket.reserve(now=time.monotonic())   # 0.0 for the first request
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Awaitable, Callable


class TokenBucket:
    """Requests per second with a small burst, handing out future slots.

    ``reserve(now)`` takes one token and returns the seconds to wait before using
    it. Tokens may go negative: each caller is given the next free slot, so N
    concurrent callers are spaced ``1/rate`` apart instead of stampeding.
    ``defer(until)`` empties the bucket until a moment (after a 429's
    ``Retry-After``) so every worker backs off together.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self._stamp is None:
            self._stamp = now
        elif now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def reserve(self, now: float) -> float:
        """Take a token; return how many seconds to wait before sending (0 if none)."""
        self._refill(now)
        self._tokens -= 1.0
        if self._tokens >= 0:
            return max(0.0, (self._stamp or now) - now)
        return (self._stamp or now) - now + (-self._tokens) / self.rate

    def defer(self, now: float, until: float) -> None:
        """Hand out no token before ``until`` (e.g. ``now + Retry-After``)."""
        self._refill(now)
        if until > now:
            # Push the stamp forward with an empty bucket: refills start at `until`.
            self._tokens = min(self._tokens, 0.0)
            self._stamp = max(self._stamp or now, until)

    async def acquire(
        self, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        """Wait for a token using the given clock and sleep."""
        wait = self.reserve(clock())
        if wait > 0:
            await sleep(wait)


def backoff(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**(attempt-1))]``.

    ``attempt`` is the number of the retry about to happen, starting at 1.
    """
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, *, now: float, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped.

    ``now`` is the current Unix time (for the date form). Unreadable values give ``None``.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)
