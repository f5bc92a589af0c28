"""Seeded fault injection and token-bucket rate limiting, per API surface.

A request first waits ``latency_ms``, then is checked against its surface's rate limiter (429 with
``Retry-After`` when the bucket is empty), then draws from one ``random.Random(seed)``: one
``random()`` call per surface-request, so the same seed and the same request order give the same
faults. Faults never apply a request partially: by default the faulted request is not handled at
all; with ``FaultConfig.applied_then_failed`` it is handled completely and then fails.

A ``reset`` or ``timeout`` fault raises :class:`DropConnection`; the outermost ASGI wrapper
(``app.py``) turns it into a closed socket under uvicorn, or into the ``httpx`` transport error a
real dropped connection would give (``httpx.RemoteProtocolError`` / ``httpx.ReadTimeout``) under
``httpx.ASGITransport``.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Literal

from lockgate.emulator.config import EmulatorConfig

Fault = Literal["5xx", "429", "timeout", "reset"]


class DropConnection(Exception):
    """Close the connection without a response (``timeout`` is true when it was held first)."""

    def __init__(self, timeout: bool) -> None:
        super().__init__("emulator fault: connection dropped")
        self.timeout = timeout


class TokenBucket:
    """``rate`` tokens per second, at most one second's worth banked."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return True
            return False


class FaultInjector:
    """Draws faults and applies rate limits for the emulator. See the module docstring."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        cfg = self.config
        self.rng = random.Random(cfg.faults.seed)
        self.lock = threading.Lock()
        limits = {
            "track_v1": cfg.track_rate_limit,
            "track_v2": cfg.track_rate_limit,
            "pipelines": cfg.pipelines_rate_limit,
            "app": cfg.app_rate_limit,
        }
        track = TokenBucket(cfg.track_rate_limit) if cfg.track_rate_limit else None
        self.buckets: dict[str, TokenBucket | None] = {
            "track_v1": track,  # v1 and v2 share the Track API's one limit
            "track_v2": track,
            "pipelines": TokenBucket(limits["pipelines"]) if limits["pipelines"] else None,
            "app": TokenBucket(limits["app"]) if limits["app"] else None,
        }

    def latency_s(self, surface: str, route: str | None = None) -> float:
        return self.config.faults.rates_for(surface, route).latency_ms / 1000.0

    def rate_limited(self, surface: str) -> bool:
        bucket = self.buckets.get(surface)
        return bucket is not None and not bucket.take()

    def draw(self, surface: str, route: str | None = None) -> Fault | None:
        """The fault for this request, or None. Consumes one draw only when faults are on."""
        rates = self.config.faults.rates_for(surface, route)
        if not rates.any():
            return None
        with self.lock:
            x = self.rng.random()
        for name, p in (
            ("5xx", rates.error_5xx),
            ("429", rates.error_429),
            ("timeout", rates.timeout),
            ("reset", rates.reset),
        ):
            if x < p:
                return name  # type: ignore[return-value]
            x -= p
        return None
