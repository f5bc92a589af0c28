"""Token bucket, full-jitter backoff and Retry-After parsing (pure functions)."""

from __future__ import annotations

import email.utils
import random

import pytest

from lockgate.destinations.customerio.pacing import TokenBucket, backoff, parse_retry_after


def test_bucket_spaces_concurrent_callers_one_slot_apart() -> None:
    bucket = TokenBucket(rate=100.0, burst=1)
    waits = [bucket.reserve(now=10.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])


def test_bucket_sustains_its_rate_over_a_long_run() -> None:
    bucket = TokenBucket(rate=100.0, burst=1)
    now, sent = 0.0, 0
    while now < 10.0:
        now += bucket.reserve(now)
        sent += 1
    assert sent == pytest.approx(1000, abs=2)


def test_bucket_burst_lets_a_few_through_after_idle() -> None:
    bucket = TokenBucket(rate=10.0, burst=3)
    assert [bucket.reserve(now=0.0) for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])
    # After a long idle period the bank is full again, but never more than `burst`.
    assert [bucket.reserve(now=100.0) for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])


def test_defer_holds_every_caller_until_retry_after() -> None:
    bucket = TokenBucket(rate=100.0, burst=5)
    bucket.reserve(now=0.0)
    bucket.defer(now=0.0, until=2.0)
    assert bucket.reserve(now=0.5) >= 1.5
    assert bucket.reserve(now=0.5) > bucket.reserve(now=0.5) - 0.011


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0)]:
        draws = [backoff(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling  # spread over the whole range, not a fixed step
        assert min(draws) < 0.2 * ceiling


def test_retry_after_in_seconds_and_as_http_date() -> None:
    assert parse_retry_after("3", now=0.0, cap=60.0) == 3.0
    assert parse_retry_after(" 1.5 ", now=0.0, cap=60.0) == 1.5
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after(date, now=now, cap=60.0) == pytest.approx(7.0, abs=1.0)


def test_retry_after_is_capped_and_never_negative() -> None:
    assert parse_retry_after("86400", now=0.0, cap=120.0) == 120.0
    past = email.utils.formatdate(1_000.0, usegmt=True)
    assert parse_retry_after(past, now=2_000.0, cap=120.0) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan"])
def test_unreadable_retry_after_gives_none(value: str | None) -> None:
    assert parse_retry_after(value, now=0.0, cap=60.0) is None
