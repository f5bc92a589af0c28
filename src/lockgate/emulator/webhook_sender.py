"""The sender side of Customer.io reporting webhooks, for local loops and tests.

Customer.io POSTs one signed JSON event per request (reference §5.1/§5.2): ``X-CIO-Timestamp``
plus ``X-CIO-Signature`` = hex HMAC-SHA256 of ``v0:{timestamp}:{body}``. It retries a failed
call with backoff and holds later events back until it succeeds, so order is kept and
duplicates (the same ``event_id``) happen. :class:`WebhookSender` does the same, and can send
duplicates on purpose. :func:`make_event` builds a payload for every ``(object_type, metric)``
and data variant of §5.3/§5.4 (campaign, API-triggered broadcast, newsletter, transactional);
:func:`simulate_engagement` turns emulator people into a plausible stream of engagement.

Example::

    events = simulate_engagement(emu, channel="email",
                                 metrics=["sent", "delivered", "opened", "clicked"])
    report = send_events("http://127.0.0.1:8787/webhooks/customerio", "key", events)
    report.acknowledged      # event ids answered 2xx, in order
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson
from ulid import ULID

VARIANTS = ("campaign", "broadcast", "newsletter", "transactional")
"""The four ``data`` variants of message events (§5.3)."""

SPEC_VARIANTS: dict[str, tuple[str, ...]] = {
    "email": VARIANTS,
    "push": VARIANTS,
    "in_app": VARIANTS[:3],
    "sms": VARIANTS[:3],
    "slack": VARIANTS[:3],
    "webhook": VARIANTS[:3],
    "whatsapp": VARIANTS[:3],
}
"""Variants the webhook spec describes per object type (it has no transactional variant for
in-app, SMS, Slack, webhook and WhatsApp events, §5.3)."""

_RECIPIENT = "recipient"
_SUBJECT = "subject"
_FAILURE = "failure_message"
_CLICK = ("href", "link_id")
_RECIPIENTS = "recipients"

REQUIRED: dict[str, dict[str, tuple[str, ...]]] = {
    "email": {
        "drafted": (_RECIPIENT, _SUBJECT),
        "attempted": (_FAILURE,),
        "sent": (_RECIPIENT, _SUBJECT),
        "delivered": (_RECIPIENT, _SUBJECT),
        "opened": (_RECIPIENT,),
        "clicked": (_RECIPIENT, _SUBJECT, *_CLICK),
        "converted": (_RECIPIENT, _SUBJECT),
        "unsubscribed": (_RECIPIENT, _SUBJECT),
        "bounced": (_RECIPIENT, _SUBJECT, _FAILURE),
        "dropped": (_RECIPIENT, _SUBJECT, _FAILURE),
        "spammed": (_RECIPIENT, _SUBJECT),
        "failed": (_RECIPIENT, _SUBJECT, _FAILURE),
        "undeliverable": (_RECIPIENT, _SUBJECT, _FAILURE),
    },
    "push": {
        "drafted": (),
        "attempted": (_FAILURE,),
        "sent": (_RECIPIENTS,),
        "delivered": (_RECIPIENTS,),
        "opened": (_RECIPIENTS,),
        "clicked": (_RECIPIENTS, *_CLICK),
        "converted": (_RECIPIENTS,),
        "bounced": (_RECIPIENTS,),
        "dropped": (_RECIPIENTS,),
        "failed": (_FAILURE,),
        "undeliverable": (_FAILURE,),
    },
    "in_app": {
        "drafted": (),
        "attempted": (_FAILURE,),
        "sent": (_RECIPIENT,),
        "opened": (),
        "clicked": (_RECIPIENT, *_CLICK),
        "converted": (_RECIPIENT,),
        "failed": (_FAILURE,),
        "undeliverable": (_FAILURE,),
    },
    "sms": {
        "drafted": (),
        "attempted": (_FAILURE,),
        "sent": (_RECIPIENT,),
        "delivered": (_RECIPIENT,),
        "clicked": (_RECIPIENT, *_CLICK),
        "converted": (_RECIPIENT,),
        "bounced": (_RECIPIENT, _FAILURE),
        "failed": (_FAILURE,),
        "undeliverable": (_FAILURE,),
        "replied": (_RECIPIENT, "inbound_event_id", "to"),
    },
    "slack": {
        "drafted": (),
        "attempted": (_FAILURE,),
        "sent": (_RECIPIENT,),
        "clicked": (_RECIPIENT, *_CLICK),
        "failed": (_FAILURE,),
        "undeliverable": (_FAILURE,),
    },
    "webhook": {
        "drafted": (),
        "attempted": (_FAILURE,),
        "sent": (_RECIPIENT,),
        "clicked": (_RECIPIENT, *_CLICK),
        "failed": (_FAILURE,),
        "undeliverable": (_FAILURE,),
    },
}
"""Required ``data`` keys beyond the variant's own, per object type and metric (§5.4)."""
REQUIRED["whatsapp"] = {
    **REQUIRED["sms"],
    "opened": (_RECIPIENT,),
    "dropped": (_RECIPIENT, _FAILURE),
}

CUSTOMER_METRICS = ("subscribed", "unsubscribed", "cio_subscription_preferences_changed")


class PersonLike(Protocol):
    """Anything with the three Customer.io identifiers (an emulator ``Person`` is one)."""

    @property
    def id(self) -> str | None: ...

    @property
    def email(self) -> str | None: ...

    @property
    def cio_id(self) -> str: ...


@dataclass(frozen=True)
class Recipient:
    """A person to generate events for, when no emulator person is at hand."""

    id: str | None
    email: str | None
    cio_id: str


def new_event_id() -> str:
    """A ULID, as Customer.io's ``event_id`` values are."""
    return str(ULID())


def _identifiers(person: PersonLike) -> dict[str, Any]:
    return {"id": person.id, "email": person.email, "cio_id": person.cio_id}


def _delivery_id(rng: random.Random) -> str:
    return base64.b64encode(rng.randbytes(18)).decode()


def _variant_data(variant: str, rng: random.Random, delivery_id: str) -> dict[str, Any]:
    if variant == "campaign":
        return {
            "campaign_id": rng.randint(1, 50),
            "action_id": rng.randint(1, 500),
            "journey_id": str(ULID()),
            "parent_action_id": rng.randint(1, 500),
            "trigger_event_id": str(ULID()),
            "delivery_id": delivery_id,
        }
    if variant == "broadcast":
        return {
            "trigger_id": rng.randint(1, 100),
            "broadcast_id": rng.randint(1, 50),
            "action_id": rng.randint(1, 500),
            "journey_id": str(ULID()),
            "delivery_id": delivery_id,
        }
    if variant == "newsletter":
        return {
            "newsletter_id": rng.randint(1, 50),
            "content_id": rng.randint(1, 5),
            "delivery_id": delivery_id,
        }
    if variant == "transactional":
        return {"transactional_message_id": rng.randint(1, 50), "delivery_id": delivery_id}
    raise ValueError(f"unknown variant `{variant}`; use one of {', '.join(VARIANTS)}")


def _extra(object_type: str, key: str, person: PersonLike, rng: random.Random) -> Any:
    if key == _RECIPIENT:
        if object_type == "email":
            return person.email or f"{person.id}@example.com"
        if object_type in ("sms", "whatsapp"):
            return f"+1555{rng.randint(1000000, 9999999)}"
        if object_type == "webhook":
            return "https://example.com/hook"
        return person.id or person.cio_id
    if key == _SUBJECT:
        return rng.choice(["Welcome aboard", "Your weekly digest", "We miss you"])
    if key == _FAILURE:
        return rng.choice(["mailbox full", "invalid token", "carrier rejected"])
    if key == "href":
        return "https://example.com/pricing"
    if key == "link_id":
        return rng.randint(1, 20)
    if key == _RECIPIENTS:
        device = {"device_id": f"dev-{rng.randint(1, 10**9)}", "device_platform": "ios"}
        return [device]
    if key == "inbound_event_id":
        return str(ULID())
    if key == "to":
        return "+15550001111"
    raise KeyError(key)


def make_event(
    object_type: str,
    metric: str,
    *,
    person: PersonLike | None = None,
    variant: str = "campaign",
    timestamp: int | None = None,
    event_id: str | None = None,
    delivery_id: str | None = None,
    with_content: bool = False,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """One reporting-webhook payload with every key the spec requires for its kind.

    ``object_type="customer"`` (or any ``metric`` in :data:`CUSTOMER_METRICS` with
    ``object_type`` naming the channel that caused it) builds a subscription event. A pair the
    spec does not describe (``email``/``deferred``) gets the variant's data only.
    """
    rng = rng or random.Random()
    person = person or Recipient("42", "test@example.com", "d9c106000001")
    delivery_id = delivery_id or _delivery_id(rng)
    data: dict[str, Any]
    if object_type == "customer" or (
        metric in CUSTOMER_METRICS and metric not in REQUIRED.get(object_type, {})
    ):
        data = {
            "customer_id": person.id or "",
            "email_address": person.email,
            "identifiers": _identifiers(person),
        }
        if metric == "cio_subscription_preferences_changed":
            data.update(
                _variant_data(
                    variant if variant != "transactional" else "campaign", rng, delivery_id
                )
            )
            data.pop("journey_id", None)
            data["content"] = '{"topics":{"topic_1":true}}'
    else:
        data = _variant_data(variant, rng, delivery_id)
        data["customer_id"] = person.id or ""
        data["identifiers"] = _identifiers(person)
        for key in REQUIRED.get(object_type, {}).get(metric, ()):
            data[key] = _extra(object_type, key, person, rng)
        if metric == "opened" and object_type == "email":
            data.update(proxied=False, prefetched=False, synthetic=False)
        if metric == "clicked" and object_type == "email":
            data["machine"] = False
        if object_type == "push" and metric in ("bounced", "dropped"):
            for device in data[_RECIPIENTS]:
                device[_FAILURE] = "invalid device token"
        if metric == "clicked" and object_type == "in_app":
            data["tracked_response"] = "accept"
        if metric == "sent" and with_content:
            data["content"] = "<p>Hello</p>" if object_type == "email" else '{"body":"Hello"}'
            if object_type == "email":
                data["headers"] = {"X-Campaign": ["spring"]}
    return {
        "event_id": event_id or new_event_id(),
        "object_type": object_type,
        "metric": metric,
        "timestamp": int(time.time()) if timestamp is None else timestamp,
        "data": data,
    }


def every_variant(*, seed: int = 7) -> list[dict[str, Any]]:
    """One payload for every ``(object_type, metric, variant)`` the spec describes (§5.3/§5.4)."""
    rng = random.Random(seed)
    events = []
    for object_type, metrics in REQUIRED.items():
        for metric in metrics:
            for variant in SPEC_VARIANTS[object_type]:
                events.append(
                    make_event(
                        object_type, metric, variant=variant, rng=rng, with_content=metric == "sent"
                    )
                )
    for metric in CUSTOMER_METRICS:
        for channel in ("customer", "email"):
            if metric == "unsubscribed" and channel == "email":
                continue  # email/unsubscribed is the message event above
            variants = ("campaign", "broadcast", "newsletter")
            for variant in variants if metric == "cio_subscription_preferences_changed" else ("-",):
                event = make_event("customer", metric, variant=variant, rng=rng)
                event["object_type"] = channel
                events.append(event)
    return events


def simulate_engagement(
    emu: Any = None,
    people: Sequence[PersonLike] | None = None,
    *,
    channel: str = "email",
    metrics: Sequence[str] = ("sent", "delivered", "opened", "clicked"),
    variant: str = "campaign",
    start: int | None = None,
    spacing: int = 60,
    seed: int = 1,
) -> list[dict[str, Any]]:
    """Engagement events for people, one delivery each, metrics in order.

    ``people`` defaults to ``emu.people()`` (an :class:`~lockgate.emulator.Emulator` or its
    inspector). Each person's events share one ``delivery_id`` and campaign; timestamps start
    at ``start`` (default: now minus the sequence length) and step by ``spacing`` seconds.
    """
    if people is None:
        if emu is None:
            raise ValueError("give the emulator or a list of people")
        people = emu.people()
    rng = random.Random(seed)
    base = int(time.time()) - spacing * len(metrics) if start is None else start
    events = []
    for person in people:
        delivery_id = _delivery_id(rng)
        template = _variant_data(variant, rng, delivery_id)
        for step, metric in enumerate(metrics):
            event = make_event(
                channel,
                metric,
                person=person,
                variant=variant,
                timestamp=base + step * spacing,
                delivery_id=delivery_id,
                rng=rng,
            )
            event["data"].update(template)
            events.append(event)
    return events


# ----------------------------------------------------------------------------- sending


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    """``X-CIO-Signature`` for a body (written here again: the emulator shares no code)."""
    message = b"v0:" + str(timestamp).encode() + b":" + body
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass
class SendReport:
    """What a :meth:`WebhookSender.send` call did."""

    acknowledged: list[str] = field(default_factory=list)
    """Event ids answered 2xx, in the order they were acknowledged."""
    attempts: int = 0
    retries: int = 0
    duplicates: int = 0
    held: list[str] = field(default_factory=list)
    """Event ids never acknowledged: the one that kept failing and every later one."""
    statuses: dict[int, int] = field(default_factory=dict)


class WebhookSender:
    """POSTs signed events one per request, like Customer.io.

    Retries a non-2xx answer, a timeout or a dropped connection with exponential backoff (up
    to ``max_attempts``), and holds every later event of its lane until the failed one
    succeeds. ``duplicate_every=n`` sends every n-th event twice (the same body and
    ``event_id``), as a retry after a lost answer would. ``lanes`` > 1 sends that many ordered
    streams at once (like several webhooks); events go to lanes round-robin.

    Example::

        async with WebhookSender(url, signing_key) as sender:
            report = await sender.send(events, duplicate_every=10)
    """

    def __init__(
        self,
        url: str,
        signing_key: bytes | str,
        *,
        timeout: float = 4.0,
        max_attempts: int = 8,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.key = signing_key.encode() if isinstance(signing_key, str) else signing_key
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    async def post(self, body: bytes, *, timestamp: int | None = None) -> httpx.Response:
        """One signed POST of a raw body (no retries)."""
        ts = int(time.time()) if timestamp is None else timestamp
        headers = {
            "content-type": "application/json",
            "x-cio-timestamp": str(ts),
            "x-cio-signature": sign(self.key, ts, body),
        }
        return await self.client.post(self.url, content=body, headers=headers)

    async def send(
        self,
        events: Iterable[dict[str, Any]],
        *,
        duplicate_every: int = 0,
        lanes: int = 1,
    ) -> SendReport:
        """Send events in order with retries; see the class docstring."""
        report = SendReport()
        queues: list[list[dict[str, Any]]] = [[] for _ in range(max(1, lanes))]
        for i, event in enumerate(events):
            queues[i % len(queues)].append(event)
        await asyncio.gather(*(self._lane(q, report, duplicate_every) for q in queues))
        return report

    async def _lane(
        self, events: list[dict[str, Any]], report: SendReport, duplicate_every: int
    ) -> None:
        for index, event in enumerate(events):
            body = orjson.dumps(event)
            if not await self._deliver(body, report):
                report.held.extend(e["event_id"] for e in events[index:])
                return
            report.acknowledged.append(event["event_id"])
            if duplicate_every and (index + 1) % duplicate_every == 0:
                report.duplicates += 1
                await self._deliver(body, report)

    async def _deliver(self, body: bytes, report: SendReport) -> bool:
        delay = self.backoff
        for attempt in range(self.max_attempts):
            if attempt:
                report.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            report.attempts += 1
            try:
                response = await self.post(body)
            except httpx.TransportError:
                continue
            report.statuses[response.status_code] = report.statuses.get(response.status_code, 0) + 1
            if 200 <= response.status_code < 300:
                return True
        return False


def send_events(
    url: str,
    signing_key: bytes | str,
    events: Iterable[dict[str, Any]],
    **options: Any,
) -> SendReport:
    """Blocking helper: send events with a fresh :class:`WebhookSender` and return the report.

    ``options`` go to :meth:`WebhookSender.send` (``duplicate_every``, ``lanes``) or the
    constructor (``timeout``, ``max_attempts``, ``backoff``, ``max_backoff``).
    """
    send_keys = {"duplicate_every", "lanes"}
    send_options = {k: v for k, v in options.items() if k in send_keys}
    init_options = {k: v for k, v in options.items() if k not in send_keys}

    async def run() -> SendReport:
        async with WebhookSender(url, signing_key, **init_options) as sender:
            return await sender.send(events, **send_options)

    return asyncio.run(run())
