"""Bodies shaped exactly as Customer.io's official documents show them, not as our reference
or the emulator's sender writes them: when both are built from one reading, a mistake in that
reading passes every other test (the App API bulk lookup was read without its wrapper so).

Sources: the official OpenAPI for reporting webhooks, https://docs.customer.io/files/
journeys-webhooks.json (copy: /work/shared/reference/specs/journeys-webhooks.json), and the
page rendered from it, https://docs.customer.io/api/webhooks/ ("Timeouts and failures":
after a 400 or 401 Customer.io waits an hour, retries with backoff for seven days and backlogs
every later call of the webhook until the failed one succeeds).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import duckdb
import httpx
import orjson
import pytest

from lockgate.project.loader import Project
from lockgate.project.models import WebhooksConfig
from lockgate.webhooks.load import load_pending
from lockgate.webhooks.spool import Spool
from lockgate.webhooks.verify import sign, signing_key, verify

from .conftest import signed

URL = "/webhooks/customerio"

# journeys-webhooks.json, webhooks.reportingWebhook.post.requestBody.content
# ["application/json"].examples: `customer_subscribed`, `email_sent`, `sms_sent`, verbatim
# (their three `event_id`s are the same in the spec; each gets its last letter changed here,
# else the three would be one event).
CUSTOMER_SUBSCRIBED: dict[str, Any] = {
    "metric": "subscribed",
    "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQA",
    "object_type": "customer",
    "timestamp": 1613063089,
    "data": {
        "customer_id": "0200000001",
        "email_address": "test@example.com",
        "identifiers": {"id": "42", "email": "test@example.com", "cio_id": "d9c106000001"},
    },
}
EMAIL_SENT: dict[str, Any] = {
    "metric": "sent",
    "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQB",
    "object_type": "email",
    "timestamp": 1613063089,
    "data": {
        "action_id": 42,
        "broadcast_id": 9,
        "customer_id": "0200000001",
        "delivery_id": "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
        "identifiers": {"id": "42", "email": "test@example.com", "cio_id": "d9c106000001"},
        "recipient": "test@example.com",
    },
}
SMS_SENT: dict[str, Any] = {
    "metric": "sent",
    "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQC",
    "object_type": "sms",
    "timestamp": 1613063089,
    "data": {
        "action_id": 42,
        "broadcast_id": 9,
        "customer_id": "0200000001",
        "delivery_id": "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
        "identifiers": {"id": "42", "email": "test@example.com", "cio_id": "d9c106000001"},
        "recipient": "+15551234567",
    },
}
# components.schemas.event_common_data.example is the `data` of a message event; note its
# `journey_id` is the integer 15 where the `journey_id` schema says a ULID string.
PUSH_OPENED: dict[str, Any] = {
    "metric": "opened",
    "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQD",
    "object_type": "push",
    "timestamp": 1613063089,
    "data": {
        "customer_id": "user-123",
        "delivery_id": "RPIyMTM6OjEyMzQ=",
        "action_id": 42,
        "campaign_id": 7,
        "journey_id": 15,
        "identifiers": {"id": "user-123"},
        "recipients": [{"device_id": "dev-1", "device_platform": "ios"}],
    },
}
# components.schemas.person_cio_subscription_preferences_changed: the channel is named
# `object_type_type` (and `object_type` is not among its keys); `content` is its example.
PREFERENCES_CHANGED: dict[str, Any] = {
    "metric": "cio_subscription_preferences_changed",
    "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQE",
    "object_type_type": "email",
    "timestamp": 1613063089,
    "data": {
        "customer_id": "42",
        "email_address": "test@example.com",
        "identifiers": {"id": "42", "email": "test@example.com", "cio_id": "d9c106000001"},
        "content": '{"topics":{"topic_1":true}}',
        "campaign_id": 5,
        "delivery_id": "ZAIAAVTJVG0QcCok0-0ZKj6yiQ==",
        "action_id": 96,
    },
}


def rows(project: Project, table: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(project.root / "warehouse.duckdb"), read_only=True) as con:
        cursor = con.execute(f"select * from customerio.{table} order by event_id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_the_official_examples_land_in_their_tables(
    project: Project, spool: Spool, client: httpx.Client
) -> None:
    """Each official example is acknowledged and loads into its channel's table with its ids
    typed (checked to pass before any change: the shapes Lockgate expects match the spec)."""
    events = [CUSTOMER_SUBSCRIBED, EMAIL_SENT, SMS_SENT, PUSH_OPENED, PREFERENCES_CHANGED]
    for event in events:
        assert client.post(URL, **signed(event)).status_code == 200
    result = load_pending(project, spool=spool)
    assert result.loaded == 5
    assert result.tables == {"customer": 2, "email": 1, "sms": 1, "push": 1}

    subscribed, changed = rows(project, "customer")
    assert (subscribed["metric"], subscribed["object_type"]) == ("subscribed", "customer")
    assert subscribed["identifier_id"] == "42"
    assert subscribed["identifier_cio_id"] == "d9c106000001"
    assert subscribed["email_address"] == "test@example.com"
    assert changed["object_type"] == "email"  # from `object_type_type`
    assert changed["content"] == '{"topics":{"topic_1":true}}'

    (email,) = rows(project, "email")
    assert (email["action_id"], email["broadcast_id"]) == (42, 9)
    assert email["delivery_id"] == "RPILAgUBcRhIBqSfeiIwdIYJKxTY"
    assert email["recipient"] == "test@example.com"
    assert email["timestamp"].timestamp() == 1613063089
    (sms,) = rows(project, "sms")
    assert sms["recipient"] == "+15551234567"
    (push,) = rows(project, "push")
    assert push["journey_id"] == "15"  # the example's integer, in the text column
    assert push["campaign_id"] == 7
    assert orjson.loads(push["raw"]) == PUSH_OPENED


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        orjson.dumps([EMAIL_SENT, SMS_SENT]),  # a batch: Customer.io sends one event a request
        orjson.dumps({**EMAIL_SENT, "timestamp": "1613063089"}),
        orjson.dumps({k: v for k, v in EMAIL_SENT.items() if k != "data"}),
        orjson.dumps({k: v for k, v in EMAIL_SENT.items() if k != "event_id"}),
        b'{"event_id":"n1","timestamp":NaN}',
    ],
    ids=["not-json", "list", "timestamp-string", "no-data", "no-event-id", "nan"],
)
def test_a_signed_body_that_is_not_an_event_is_kept_not_refused(
    project: Project, spool: Spool, client: httpx.Client, body: bytes
) -> None:
    """A body Customer.io signed but whose envelope is not the spec's was answered 400. After a
    400 Customer.io waits an hour and retries the same body for 7 days, holding back every later
    event of the webhook, then drops it: refusing it loses it and delays all the rest."""
    first = client.post(URL, **signed(body))
    assert first.status_code == 200
    assert first.json()["ok"] is True
    assert first.json()["stored_as"] == "other"
    assert first.json()["warning"]
    assert client.post(URL, **signed(body)).status_code == 200  # the retry: stored once
    later = {**EMAIL_SENT, "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQZ"}
    assert client.post(URL, **signed(later)).status_code == 200
    assert [r.body for r in spool] == [body, orjson.dumps(later)]

    assert load_pending(project, spool=spool).tables == {"other": 1, "email": 1}
    (other,) = rows(project, "other")
    if body.startswith((b"{n", b'{"event_id":"n1"')):  # not JSON: its text as received
        assert other["raw_text"] == body.decode()
    else:
        assert orjson.loads(other["raw"]) == orjson.loads(body)
    key = hashlib.sha256(body).hexdigest()
    assert other["event_id"] == f"sha256:{key}"


def test_an_unsigned_body_is_still_refused(client: httpx.Client, spool: Spool) -> None:
    body = orjson.dumps(EMAIL_SENT)
    ts = int(time.time())
    response = client.post(
        URL,
        content=body,
        headers={"x-cio-timestamp": str(ts), "x-cio-signature": sign(b"not-the-key", ts, body)},
    )
    assert response.status_code == 401
    assert spool.stats().total == 0


def test_a_subscription_change_without_email_address_is_filed_as_customer(
    project: Project, spool: Spool, client: httpx.Client
) -> None:
    """The official `customer_subscribed` example with the channel `email` and without
    `email_address` (the spec requires the key, but an id-only workspace has no address): it
    went to the `email` table, among message events, because only `email_address` told the
    two apart. No message event has the metric `subscribed`."""
    event = {**CUSTOMER_SUBSCRIBED, "object_type": "email"}
    event["data"] = {k: v for k, v in event["data"].items() if k != "email_address"}
    unsubscribed = {**event, "metric": "unsubscribed", "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQF"}
    message = {**EMAIL_SENT, "metric": "unsubscribed", "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQG"}
    for body in (event, unsubscribed, message):
        assert client.post(URL, **signed(body)).status_code == 200
    assert load_pending(project, spool=spool).tables == {"customer": 2, "email": 1}
    assert [r["metric"] for r in rows(project, "customer")] == ["subscribed", "unsubscribed"]


def test_the_signing_key_from_a_secret_file_with_a_newline_verifies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key kept in a secret file ends in a newline (`echo KEY > file`, a Kubernetes secret
    made from it): used as is, no genuine webhook verified."""
    monkeypatch.setenv("CUSTOMERIO_WEBHOOK_SIGNING_KEY", "c0ffee1234abcd\n")
    key = signing_key(WebhooksConfig())
    body = orjson.dumps(EMAIL_SENT)
    ts = int(time.time())
    assert verify(key, str(ts), sign(b"c0ffee1234abcd", ts, body), body) == ts


def test_a_sent_event_with_a_large_body_content_is_stored(
    spool: Spool, client: httpx.Client
) -> None:
    """`email_sent` with `content`, the email's body, as the spec describes it when the webhook's
    *Body Content* option is on (no maximum length given). An email whose images are inlined
    runs past 1 MB; it was answered 413, which Customer.io retries for 7 days while holding
    back every later event of the webhook, then drops."""
    image = "data:image/png;base64," + "A" * 1_500_000
    event = {**EMAIL_SENT, "data": {**EMAIL_SENT["data"], "content": f'<img src="{image}">'}}
    event["data"]["subject"] = "Spring catalogue"
    response = client.post(URL, **signed(event))
    assert response.status_code == 200
    assert [r.event_id for r in spool] == [EMAIL_SENT["event_id"]]


def test_a_body_that_is_not_an_event_does_not_take_the_event_id_of_a_later_event(
    project: Project, spool: Spool, client: httpx.Client
) -> None:
    """A signed body with an `event_id` but no `data` was stored under that `event_id`, so the
    valid event carrying the same id, arriving next, was answered 200 and silently dropped as a
    retry (`INSERT OR IGNORE`). A body that is not an event is keyed by its bytes only."""
    broken = orjson.dumps({k: v for k, v in EMAIL_SENT.items() if k != "data"})
    assert client.post(URL, **signed(broken)).json()["stored_as"] == "other"
    assert client.post(URL, **signed(EMAIL_SENT)).json() == {"ok": True}
    assert client.post(URL, **signed(broken)).status_code == 200  # a retry: stored once

    assert load_pending(project, spool=spool).tables == {"other": 1, "email": 1}
    (email,) = rows(project, "email")
    assert email["event_id"] == EMAIL_SENT["event_id"]
    (other,) = rows(project, "other")
    assert other["event_id"] == f"sha256:{hashlib.sha256(broken).hexdigest()}"
    assert orjson.loads(other["raw"])["event_id"] == EMAIL_SENT["event_id"]


def test_a_signed_body_that_is_not_utf8_is_kept_and_loads_as_its_text(
    project: Project, spool: Spool, client: httpx.Client
) -> None:
    body = orjson.dumps(EMAIL_SENT).replace(b"test@example.com", b"t\xe9st@example.com", 1)
    response = client.post(URL, **signed(body))
    assert response.json()["stored_as"] == "other"
    assert [r.body for r in spool] == [body]  # the bytes as received

    assert load_pending(project, spool=spool).tables == {"other": 1}
    (other,) = rows(project, "other")
    assert other["raw_text"] == body.decode("utf-8", "replace")


@pytest.mark.parametrize("body", [b"42", b"true", b'"sent"', b"1.5", b"null"])
def test_a_signed_json_scalar_loads_as_its_text(
    project: Project, spool: Spool, client: httpx.Client, body: bytes
) -> None:
    """A signed body that is a JSON number, string or boolean loaded into a variant column of
    its own (`raw__v_bigint`, `raw__v_bool`, ...), with `raw` and `raw_text` both null, so the
    body was not where the docs say; `null` went to `raw_text`. Each loads as its text in
    `raw_text`, as a body that is not JSON does, and adds no other column."""
    assert client.post(URL, **signed(body)).json()["stored_as"] == "other"
    assert load_pending(project, spool=spool).tables == {"other": 1}
    (other,) = rows(project, "other")
    assert other["raw_text"] == body.decode()
    assert not [name for name in other if name.startswith("raw__")]
