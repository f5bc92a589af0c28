"""The emulator's webhook sender: signatures the receiver accepts, retries, order, duplicates."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.emulator.webhook_sender import (
    Recipient,
    WebhookSender,
    make_event,
    send_events,
    simulate_engagement,
)
from lockgate.webhooks.spool import Spool

from .conftest import KEY, running

URL_PATH = "/webhooks/customerio"


def test_sender_is_accepted_by_the_receiver_with_duplicates(base_url: str, spool: Spool) -> None:
    people = [Recipient(str(i), f"p{i}@example.com", f"cio{i}") for i in range(5)]
    events = simulate_engagement(people=people, metrics=["sent", "delivered", "opened"])
    report = send_events(base_url + URL_PATH, KEY, events, duplicate_every=4, lanes=2)
    assert sorted(report.acknowledged) == sorted(e["event_id"] for e in events)
    assert report.duplicates == 3
    assert report.statuses == {200: len(events) + 3}
    assert spool.stats().total == len(events)


def test_simulated_engagement_is_per_person_and_in_order() -> None:
    people = [Recipient("1", "a@example.com", "c1"), Recipient("2", None, "c2")]
    events = simulate_engagement(people=people, metrics=["sent", "opened"], start=1_700_000_000)
    assert [(e["data"]["identifiers"]["id"], e["metric"]) for e in events] == [
        ("1", "sent"),
        ("1", "opened"),
        ("2", "sent"),
        ("2", "opened"),
    ]
    assert events[0]["data"]["delivery_id"] == events[1]["data"]["delivery_id"]
    assert events[0]["timestamp"] < events[1]["timestamp"]


class Flaky:
    """A stand-in for a receiver that fails given events a few times, recording arrivals."""

    def __init__(self, failures: dict[str, int], status: int = 503) -> None:
        self.failures = dict(failures)
        self.status = status
        self.arrivals: list[str] = []

    async def endpoint(self, request: Request) -> Response:
        event = orjson.loads(await request.body())
        self.arrivals.append(event["event_id"])
        if self.failures.get(event["event_id"], 0) > 0:
            self.failures[event["event_id"]] -= 1
            return Response(status_code=self.status)
        return Response(b'{"ok":true}')


def _send(app: Any, events: list[dict[str, Any]], **options: Any):
    async def run():
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        async with client, WebhookSender("http://r" + URL_PATH, KEY, client=client, **options) as s:
            return await s.send(events)

    return asyncio.run(run())


def test_failed_event_is_retried_and_later_events_wait() -> None:
    events = [make_event("email", "sent") for _ in range(4)]
    ids = [e["event_id"] for e in events]
    receiver = Flaky({ids[1]: 3})
    app = Starlette(routes=[Route(URL_PATH, receiver.endpoint, methods=["POST"])])
    report = _send(app, events, backoff=0.001)
    assert report.acknowledged == ids
    assert receiver.arrivals == [ids[0], ids[1], ids[1], ids[1], ids[1], ids[2], ids[3]]
    assert report.retries == 3


def test_event_that_never_succeeds_holds_the_rest() -> None:
    events = [make_event("sms", "sent") for _ in range(3)]
    ids = [e["event_id"] for e in events]
    receiver = Flaky({ids[1]: 100}, status=401)
    app = Starlette(routes=[Route(URL_PATH, receiver.endpoint, methods=["POST"])])
    report = _send(app, events, backoff=0.001, max_attempts=3)
    assert report.acknowledged == ids[:1]
    assert report.held == ids[1:]
    assert ids[2] not in receiver.arrivals


def test_timeouts_are_retried() -> None:
    events = [make_event("push", "opened")]
    calls = {"n": 0}

    async def slow_then_fast(request: Request) -> Response:
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.sleep(1.0)
        return Response(b"{}")

    app = Starlette(routes=[Route(URL_PATH, slow_then_fast, methods=["POST"])])
    with running(app) as url:
        report = send_events(url + URL_PATH, KEY, events, timeout=0.2, backoff=0.001)
    assert report.acknowledged == [events[0]["event_id"]]
    assert report.retries >= 1
