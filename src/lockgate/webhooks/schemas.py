"""The reporting-webhook payload (reference §5.3/§5.4): envelope checks and table routing.

The receiver checks only the envelope before acknowledging: a JSON object with a non-empty
string ``event_id``, string ``object_type`` and ``metric``, an integer ``timestamp`` and an
object ``data``. Everything else is stored as sent, so an ``(object_type, metric)`` pair the
spec does not describe (e.g. ``email_deferred``) is kept rather than refused.

Example::

    event = parse_event(raw_body)       # HTTPError 400 with a reason when malformed
    table_for(event.object_type, event.metric, event.data)   # -> "email"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from lockgate.webhooks.errors import HTTPError

OBJECT_TYPES = ("customer", "email", "push", "in_app", "sms", "slack", "webhook", "whatsapp")
"""One warehouse table per object type; unknown object types go to the ``other`` table."""

CUSTOMER_METRICS = frozenset({"subscribed", "unsubscribed", "cio_subscription_preferences_changed"})

METRICS: dict[str, tuple[str, ...]] = {
    "customer": ("subscribed", "unsubscribed", "cio_subscription_preferences_changed"),
    "email": (
        "drafted",
        "attempted",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "unsubscribed",
        "bounced",
        "dropped",
        "spammed",
        "failed",
        "undeliverable",
    ),
    "push": (
        "drafted",
        "attempted",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "bounced",
        "dropped",
        "failed",
        "undeliverable",
    ),
    "in_app": (
        "drafted",
        "attempted",
        "sent",
        "opened",
        "clicked",
        "converted",
        "failed",
        "undeliverable",
    ),
    "sms": (
        "drafted",
        "attempted",
        "sent",
        "delivered",
        "clicked",
        "converted",
        "bounced",
        "failed",
        "undeliverable",
        "replied",
    ),
    "whatsapp": (
        "drafted",
        "attempted",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "bounced",
        "dropped",
        "failed",
        "undeliverable",
        "replied",
    ),
    "slack": ("drafted", "attempted", "sent", "clicked", "failed", "undeliverable"),
    "webhook": ("drafted", "attempted", "sent", "clicked", "failed", "undeliverable"),
}
"""Every ``(object_type, metric)`` pair the webhook spec gives a payload schema for (§5.4)."""

MAX_BODY = 1_000_000
"""Largest body accepted (bytes); sent events with content are the largest real payloads."""


@dataclass(frozen=True)
class Event:
    """One reporting-webhook event, checked at the envelope level."""

    event_id: str
    object_type: str
    metric: str
    timestamp: int
    data: dict[str, Any]


def _bad(reason: str, hint: str) -> HTTPError:
    return HTTPError(400, reason, hint=hint)


def parse_event(body: bytes) -> Event:
    """Parse and check one webhook body; raise :class:`HTTPError` 400 naming the problem."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(
            f"body is not valid JSON: {exc}", "send one JSON object per request (§5.3)"
        ) from None
    if not isinstance(doc, dict):
        raise _bad(
            f"body is a JSON {type(doc).__name__}, not an object",
            "send one event object per request, not a list",
        )
    return check_event(doc)


def check_event(doc: dict[str, Any]) -> Event:
    """Check the envelope keys of a parsed event (see :func:`parse_event`)."""
    hint = 'an event looks like {"event_id", "object_type", "metric", "timestamp", "data"} (§5.3)'
    event_id = doc.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise _bad(_field_problem("event_id", event_id, "a non-empty string"), hint)
    if len(event_id) > 200:
        raise _bad("`event_id` is longer than 200 characters", hint)
    object_type = doc.get("object_type")
    if object_type is None and doc.get("metric") == "cio_subscription_preferences_changed":
        # the spec names this key `object_type_type` for preference changes (spec bug)
        object_type = doc.get("object_type_type", "customer")
    if not isinstance(object_type, str) or not object_type:
        raise _bad(_field_problem("object_type", object_type, "a non-empty string"), hint)
    metric = doc.get("metric")
    if not isinstance(metric, str) or not metric:
        raise _bad(_field_problem("metric", metric, "a non-empty string"), hint)
    timestamp = doc.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise _bad(_field_problem("timestamp", timestamp, "an integer (unix seconds)"), hint)
    data = doc.get("data")
    if not isinstance(data, dict):
        raise _bad(_field_problem("data", data, "an object"), hint)
    return Event(event_id, object_type, metric, timestamp, data)


def _field_problem(name: str, value: Any, expected: str) -> str:
    if value is None:
        return f"missing `{name}`; it must be {expected}"
    shown = orjson.dumps(value).decode()[:60]
    return f"`{name}` is `{shown}`; it must be {expected}"


def table_for(object_type: str, metric: str, data: dict[str, Any]) -> str:
    """The warehouse table an event is loaded into.

    Subscription changes go to ``customer`` whatever channel caused them: for those events
    ``object_type`` names the channel (§5.4), kept in the ``object_type`` column. An email
    ``unsubscribed`` that carries a delivery but no ``email_address`` stays in ``email``.
    """
    if metric in CUSTOMER_METRICS and "email_address" in data:
        return "customer"
    if object_type in OBJECT_TYPES:
        return object_type
    return "other"


def is_known(object_type: str, metric: str) -> bool:
    """Whether the spec describes this pair; unknown pairs are stored all the same."""
    return metric in METRICS.get(object_type, ()) or metric in CUSTOMER_METRICS
