"""The receiver's answers: signatures, malformed bodies kept, the shared error shape, durability."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from lockgate.emulator.webhook_sender import make_event
from lockgate.webhooks.app import create_app
from lockgate.webhooks.spool import Spool
from lockgate.webhooks.verify import sign

from .conftest import KEY, signed

URL = "/webhooks/customerio"


class Switch:
    """An ASGI app forwarding to the current test's receiver: one uvicorn for the module."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def switch() -> Iterator[tuple[Switch, str]]:
    from .conftest import running

    app = Switch()
    with running(app) as url:
        yield app, url


@pytest.fixture
def client(switch: tuple[Switch, str], spool: Spool) -> Iterator[httpx.Client]:
    """A client of a fresh receiver (its own spool) behind the module's server."""
    app, url = switch
    app.app = create_app(spool=spool, signing_key=KEY, replay_window=300)
    with httpx.Client(base_url=url, timeout=10) as c:
        yield c


def assert_error(response, status: int, words: str) -> None:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["status"] == status
    assert words in body["error"]["reason"]
    assert body["error"]["hint"]


def test_valid_signature_is_accepted_and_stored(client: httpx.Client, spool: Spool) -> None:
    event = make_event("email", "opened")
    response = client.post(URL, **signed(event))
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert [r.event_id for r in spool] == [event["event_id"]]


def test_wrong_signature_is_401(client: httpx.Client, spool: Spool) -> None:
    body = orjson.dumps(make_event("email", "opened"))
    ts = int(time.time())
    response = client.post(
        URL,
        content=body,
        headers={"x-cio-timestamp": str(ts), "x-cio-signature": sign(b"other-key", ts, body)},
    )
    assert_error(response, 401, "does not match")
    assert spool.stats().total == 0


def test_tampered_body_is_401(client: httpx.Client) -> None:
    kwargs = signed(make_event("email", "opened"))
    kwargs["content"] = kwargs["content"].replace(b"opened", b"clicked")
    assert_error(client.post(URL, **kwargs), 401, "does not match")


def test_stale_timestamp_is_401(client: httpx.Client) -> None:
    response = client.post(URL, **signed(make_event("email", "sent"), ts=int(time.time()) - 301))
    assert_error(response, 401, "replay window")


@pytest.mark.parametrize("missing", ["x-cio-signature", "x-cio-timestamp"])
def test_missing_header_is_401(client: httpx.Client, missing: str) -> None:
    kwargs = signed(make_event("email", "sent"))
    del kwargs["headers"][missing]
    assert_error(client.post(URL, **kwargs), 401, "missing")


def test_signing_key_never_in_error(client: httpx.Client) -> None:
    body = b"{}"
    response = client.post(
        URL, content=body, headers={"x-cio-timestamp": "1", "x-cio-signature": "0"}
    )
    assert KEY.decode() not in response.text


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "body is a JSON array, not an object"),
        # named as JSON names them: the answer said `a JSON NoneType`, `a JSON int`, ...
        (b"null", "body is a JSON null, not an object"),
        (b"42", "body is a JSON number, not an object"),
        (b"1.5", "body is a JSON number, not an object"),
        (b'"sent"', "body is a JSON string, not an object"),
        (b"true", "body is a JSON boolean, not an object"),
        (b'{"object_type": "email", "metric": "sent", "timestamp": 1, "data": {}}', "`event_id`"),
        (b'{"event_id": "e1", "metric": "sent", "timestamp": 1, "data": {}}', "`object_type`"),
        (b'{"event_id": "e1", "object_type": "email", "timestamp": 1, "data": {}}', "`metric`"),
        (
            b'{"event_id": "e1", "object_type": "email", "metric": "sent", "timestamp": "x", '
            b'"data": {}}',
            "`timestamp`",
        ),
        (b'{"event_id": "e1", "object_type": "email", "metric": "sent", "timestamp": 1}', "`data`"),
        (
            b'{"event_id": 18446744073709551616, "object_type": "email", "metric": "sent", '
            b'"timestamp": 1, "data": {}}',
            "`event_id` is `18446744073709551616`",
        ),
    ],
)
def test_signed_malformed_body_is_kept_with_the_reason(
    client: httpx.Client, spool: Spool, body: bytes, words: str
) -> None:
    """Customer.io signed it, so it is stored (a 400 would hold back every later event for up
    to 7 days, then lose this one) and the answer says what is wrong with it."""
    response = client.post(URL, **signed(body))
    assert response.status_code == 200
    assert response.json()["stored_as"] == "other"
    assert words in response.json()["warning"]
    assert [r.body for r in spool] == [body]


def test_unknown_metric_is_accepted(client: httpx.Client, spool: Spool) -> None:
    event = make_event("email", "deferred")
    assert client.post(URL, **signed(event)).status_code == 200
    assert spool.stats().total == 1


def test_retried_delivery_is_acknowledged_and_stored_once(
    client: httpx.Client, spool: Spool
) -> None:
    event = make_event("sms", "delivered")
    assert client.post(URL, **signed(event)).status_code == 200
    assert client.post(URL, **signed(event)).status_code == 200
    assert spool.stats().total == 1


def test_acknowledged_event_survives_reopening_the_spool(
    client: httpx.Client, spool: Spool
) -> None:
    event = make_event("push", "opened")
    assert client.post(URL, **signed(event)).status_code == 200
    reopened = Spool(spool.path.parent)
    try:
        assert [orjson.loads(r.body)["event_id"] for r in reopened] == [event["event_id"]]
    finally:
        reopened.close()


def test_health_reports_counts(client: httpx.Client) -> None:
    client.post(URL, **signed(make_event("email", "sent")))
    assert client.get("/webhooks/health").json() == {
        "ok": True,
        "stored": 1,
        "unloaded": 1,
        "rejected": 0,
    }


def test_mounted_in_a_larger_app(spool: Spool) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from .conftest import running

    receiver = create_app(spool=spool, signing_key=KEY)
    outer = Starlette(routes=[Mount("/hooks", app=receiver)])  # no lifespan reaches `receiver`
    event = make_event("email", "clicked")
    with running(outer) as url, httpx.Client(base_url=url) as outside:
        response = outside.post("/hooks" + URL, **signed(event))
    assert response.status_code == 200
    assert [r.event_id for r in spool] == [event["event_id"]]
