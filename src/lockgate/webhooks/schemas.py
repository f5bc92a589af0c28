"""The reporting-webhook payload (reference §5.3/§5.4): envelope checks and table routing.

An event's envelope is a JSON object with a non-empty string ``event_id``, string
``object_type`` and ``metric``, an integer ``timestamp`` and an object ``data``; everything
else is stored as sent, so an ``(object_type, metric)`` pair the spec does not describe (e.g.
``email_deferred``) is kept rather than refused. The receiver never refuses a signed body for
its envelope either (:func:`spool_key`): one that is not an event is kept and loads into
``other``.

Example::

    event = parse_event(raw_body)       # HTTPError 400 with a reason when malformed
    doc = parse_json(raw_body)          # the body's JSON, every integer exact
    table_for(event.object_type, event.metric, event.data)   # -> "email"
"""

from __future__ import annotations

import hashlib
import json
import math
import re
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

MAX_BODY = 10_000_000
"""Largest body accepted (bytes). Sent events with *Body Content* on are the largest real
payloads: they carry the whole message, and Customer.io documents no maximum (an email with
inlined images passes 1 MB). A 413 is retried for 7 days while every later event waits, so
the cap only guards memory against bodies no message reaches."""


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


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
"""19 digits in a row: maybe an integer beyond 64 bits, which orjson would read as a float."""


def parse_json(body: bytes) -> Any:
    """The JSON in a webhook body, every integer exact and every string valid text.

    orjson is the fast path. Two kinds of valid JSON it gets wrong go to Python's json module
    instead: an integer beyond 64 bits (orjson reads ``2**64`` as ``1.8446744073709552e+19``,
    digits lost), so a body with a run of 19 digits anywhere; and a lone UTF-16 surrogate
    escape such as ``"\\ud83d"`` (orjson refuses the body; JavaScript's ``JSON.stringify``
    writes one for a string cut in the middle of an emoji). No UTF-8 text holds a lone
    surrogate, so it becomes U+FFFD here; the spool keeps the body as received. Raises
    :class:`orjson.JSONDecodeError` when the body is not JSON.
    """
    if not may_hold_big_int(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            if _SURROGATE_ESCAPE not in body.lower():
                raise
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_refuse, parse_float=_finite)
        return _without_lone_surrogates(doc) if _SURROGATE_ESCAPE in body.lower() else doc
    except (ValueError, RecursionError):
        # not JSON after all, or nested deeper than Python parses: orjson answers as always
        return orjson.loads(body)


_SURROGATE_ESCAPE = b"\\ud"
"""How every UTF-16 surrogate escape (``\\ud800`` to ``\\udfff``) starts, lowercased."""
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""Python's json joins a valid pair into one character: a surrogate left over is lone."""


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    return value


def may_hold_big_int(body: bytes) -> bool:
    """Whether ``body`` may hold an integer beyond 64 bits (a cheap scan of the bytes)."""
    # a translate and a substring search run in C, ten times faster than a regular expression
    return _LONG_NUMBER in body.translate(_DIGITS_AS_ZERO)


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # Python's json reads NaN and Infinity


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # `1e400`: orjson refuses it, so the fallback does too
        raise ValueError(f"number is infinity when parsed as double: {text}")
    return number


def parse_event(body: bytes) -> Event:
    """Parse and check one webhook body; raise :class:`HTTPError` 400 naming the problem."""
    try:
        doc = parse_json(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(
            f"body is not valid JSON: {exc}", "send one JSON object per request (§5.3)"
        ) from None
    if not isinstance(doc, dict):
        raise _bad(
            f"body is a JSON {_json_type(doc)}, not an object",
            "send one event object per request, not a list",
        )
    return check_event(doc)


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (`array`, not Python's `list`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def spool_key(body: bytes) -> tuple[str, str | None]:
    """The key a signed body is stored under, and why it is not a valid event (or None).

    A valid event is stored under its ``event_id``. A body that is not one is keyed by the
    SHA-256 of its bytes (``sha256:<hex>``), so Customer.io's retries of the same body are
    stored once, and never by the ``event_id`` it may carry: the spool stores a key once, so
    under that id it would make the valid event with the same id, arriving later, look like a
    retry and be dropped.
    """
    try:
        return parse_event(body).event_id, None
    except Exception as exc:  # HTTPError from the checks; anything else must not lose it either
        problem = exc.reason if isinstance(exc, HTTPError) else f"{type(exc).__name__}: {exc}"
    return "sha256:" + hashlib.sha256(body).hexdigest(), problem


def check_event(doc: dict[str, Any]) -> Event:
    """Check the envelope keys of a parsed event (see :func:`parse_event`)."""
    hint = 'an event looks like {"event_id", "object_type", "metric", "timestamp", "data"} (§5.3)'
    event_id = doc.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise _bad(_field_problem("event_id", event_id, "a non-empty string"), hint)
    if len(event_id) > 200:
        raise _bad("`event_id` is longer than 200 characters", hint)
    if "\x00" in event_id:
        # Postgres text holds no U+0000: it would load as U+FFFD, the id of another event
        raise _bad("`event_id` holds a NUL character (U+0000)", hint)
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
    # Python's json: orjson refuses an integer beyond 64 bits, which `parse_json` keeps
    shown = json.dumps(value, ensure_ascii=False, separators=(",", ":"))[:60]
    return f"`{name}` is `{shown}`; it must be {expected}"


def table_for(object_type: str, metric: str, data: dict[str, Any]) -> str:
    """The warehouse table an event is loaded into.

    Subscription changes go to ``customer`` whatever channel caused them: for those events
    ``object_type`` names the channel (§5.4), kept in the ``object_type`` column. No message
    event has the metric ``subscribed`` or ``cio_subscription_preferences_changed``; an
    ``unsubscribed`` is the customer event when it has an ``email_address`` (the spec requires
    one, null in id-only workspaces) or no ``delivery_id`` (which every message event has),
    so an email ``unsubscribed`` that carries a delivery stays in ``email``.
    """
    if metric in CUSTOMER_METRICS and (
        metric != "unsubscribed" or "email_address" in data or "delivery_id" not in data
    ):
        return "customer"
    if object_type in OBJECT_TYPES:
        return object_type
    return "other"


def is_known(object_type: str, metric: str) -> bool:
    """Whether the spec describes this pair; unknown pairs are stored all the same."""
    return metric in METRICS.get(object_type, ()) or metric in CUSTOMER_METRICS
