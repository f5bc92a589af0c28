"""Pipelines (CDP) API: ``POST /v1/{identify,track,page,screen,group,alias,batch}`` (section 4).

Calls land in the same store as Track: ``userId`` → person ``id``, ``traits.email`` → ``email``,
``anonymousId`` → anonymous events linked later; ISO-8601 timestamps (and ISO date strings in
traits) become unix seconds; a ``timestamp`` that is not a string, and a ``userId``/``groupId``
Track would refuse (over 150 bytes), make the call invalid. ``group`` → object identify plus a
relationship; the semantic events of section 4.5 (``User Deleted``, ``Device Created or
Updated``, ``Relationship Deleted``, ...) act on the store.
Bodies may be gzip-compressed (``Content-Encoding: gzip``).

**Permissive by default**: invalid or oversized calls answer ``200 {}`` and are dropped (and
logged in the activity log). With ``X-Strict-Mode: 1`` they answer 400 (401 for a bad write key)
with ``{"code": <status>, "message": "<text>"}``, the shape the Python client parses; a strict
batch with any invalid item applies nothing. ``messageId`` repeats are dropped
(``EmulatorConfig.pipelines_message_id_dedupe``).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from lockgate.emulator import limits as L
from lockgate.emulator.limits import ItemError
from lockgate.emulator.models import Device
from lockgate.emulator.runtime import Handler, Runtime, json_response, ok
from lockgate.emulator.store import Store

SOURCE = "pipelines"
CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
#: An ISO date in a trait, by the rule of Segment's ``isIsoDate`` (reference §4.4): a date, or a
#: date and time with optional seconds, fraction and zone.
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2})?(\.\d{1,6})?(Z|[+-]\d{2}:?\d{2})?)?$")
Apply = Callable[[Store], None]


def _parse_iso(value: str) -> int | None:
    """Unix seconds of an ISO-8601 string, None when it is not one; no zone means UTC (the
    servers that convert it run in UTC)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def iso_to_unix(value: Any, field: str) -> int | None:
    """A Pipelines timestamp (an ISO-8601 string, reference §0 and §4.2) → unix seconds.

    A number is refused, not taken as unix time: ``1700000000000`` is milliseconds that would be
    stored as a date in the year 55,000, and Customer.io documents only strings.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ItemError(
            "invalid",
            field,
            f'{field} must be an ISO-8601 string like "2024-01-02T03:04:05Z", '
            f"got `{json.dumps(value)}`",
        )
    unix = _parse_iso(value)
    if unix is None:
        raise ItemError("invalid", field, f"{field} `{value}` is not ISO-8601")
    return unix


def _convert_dates(traits: dict[str, Any]) -> dict[str, Any]:
    """ISO date strings in traits → unix seconds; a string that only looks like one (say
    ``2024-13-45``) stays a string, as Segment's ``isIsoDate`` also asks the date to parse."""
    out = {}
    for k, v in traits.items():
        if isinstance(v, str) and ISO_RE.match(v):
            unix = _parse_iso(v)
            out[k] = v if unix is None else unix
        else:
            out[k] = v
    return out


def _sid(value: Any, field: str) -> str | None:
    """A user or anonymous id as text (Segment's libraries stringify numbers)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ItemError("invalid", field, f"{field} must be a string")
    return value


def _person_id(value: Any, field: str, what: str = "a person id") -> str | None:
    """A ``userId`` (or ``previousId``) becomes a person ``id`` and a ``groupId`` an
    ``object_id``, which Track refuses over 150 bytes (reference §9): such a call cannot land in
    Journeys."""
    sid = _sid(value, field)
    if sid is not None and len(sid.encode()) > L.ID_MAX_BYTES:
        raise ItemError(
            "limit", field, f"{field} is {len(sid.encode())} bytes; {what} is at most 150"
        )
    return sid


def _obj(msg: dict[str, Any], key: str) -> dict[str, Any]:
    value = msg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ItemError("invalid", key, f"{key} must be an object")
    return value


def _device(msg: dict[str, Any]) -> dict[str, Any]:
    dev = _obj(msg, "context").get("device")
    if not isinstance(dev, dict) or not isinstance(dev.get("token"), str) or not dev["token"]:
        raise ItemError("required", "context.device.token", "context.device.token is required")
    return dev


def _semantic(rt: Runtime, msg: dict[str, Any], user: str | None, event: str) -> Apply | None:
    props = _obj(msg, "properties")
    ref = ("id", user) if user else None

    def need_user() -> tuple[str, str]:
        if ref is None:
            raise ItemError("required", "userId", f"`{event}` needs userId")
        return ref

    if event == "User Deleted":
        r = need_user()
        return lambda s: s.delete_person(r, SOURCE)
    if event in ("User Suppressed", "User Unsuppressed"):
        r = need_user()
        if event == "User Suppressed":
            return lambda s: s.suppress(r, SOURCE)
        return lambda s: s.unsuppress(r, SOURCE)
    if event == "Device Created or Updated":
        r, dev = need_user(), _device(msg)
        platform = str(dev["type"]) if dev.get("type") in ("ios", "android") else "ios"
        device = Device(dev["token"], platform, iso_to_unix(msg.get("timestamp"), "timestamp"), {})
        return lambda s: s.add_device(r, device, SOURCE)
    if event == "Device Deleted":
        r, token = need_user(), _device(msg)["token"]
        return lambda s: s.delete_device(r, token, SOURCE)
    if event in ("Relationship Deleted", "Object Deleted"):
        object_id = props.get("objectId")
        if not isinstance(object_id, str | int) or object_id == "":
            raise ItemError("required", "properties.objectId", "properties.objectId is required")
        key = (str(props.get("objectTypeId", 1)), str(object_id))
        if event == "Object Deleted":
            return lambda s: s.delete_object(key, SOURCE)
        r = need_user()

        def unrelate(s: Store) -> None:
            p = s.resolve(r)
            if p is not None:
                s.relate(("p", p.cio_id), key, None, add=False, source=SOURCE)

        return unrelate
    if event in ("Report Delivery Event", "Report Content Event"):
        return lambda s: s.log(event.lower(), L.dumps(props).decode()[:200], SOURCE)
    return None


def plan(rt: Runtime, msg: Any, kind: str | None = None) -> Apply:
    """Validate one Pipelines call completely; return the function that applies it."""
    if not isinstance(msg, dict):
        raise ItemError("invalid", "", "call must be a JSON object")
    kind = kind or msg.get("type")
    if kind not in CALL_TYPES:
        raise ItemError("invalid", "type", f"type must be one of {', '.join(CALL_TYPES)}")
    user, anon = (
        _person_id(msg.get("userId"), "userId"),
        _sid(msg.get("anonymousId"), "anonymousId"),
    )
    ts = iso_to_unix(msg.get("timestamp"), "timestamp")
    if kind == "alias":
        previous = _person_id(msg.get("previousId"), "previousId")
        if not previous or not user:
            raise ItemError("required", "previousId", "alias needs previousId and userId")
        return _alias(rt, previous, user)
    traits = _obj(msg, "traits")
    email = traits.get("email") if isinstance(traits.get("email"), str) else None
    if not user and not anon and not (kind == "identify" and email):
        raise ItemError("required", "userId", "userId or anonymousId is required")
    message_id = msg.get("messageId") if isinstance(msg.get("messageId"), str) else None
    if kind == "identify":
        attrs = _convert_dates(L.check_attributes(traits, "traits"))
        if "createdAt" in attrs:
            attrs["created_at"] = attrs.pop("createdAt")
        ref = ("id", user) if user else ("email", email) if email else None
        if ref is None:
            return lambda s: s.log(
                "anonymous identify", f"anonymousId `{anon}` kept no traits", SOURCE
            )
        r = ref
        return lambda s: (s.identify(r, attrs, anonymous_id=anon, source=SOURCE), None)[1]
    if kind == "group":
        return _group(rt, msg, user, anon, traits)
    props = L.check_event_data(_obj(msg, "properties"), "properties")
    if kind == "track":
        event = msg.get("event")
        if not isinstance(event, str) or not event.strip():
            raise ItemError("required", "event", "track needs `event`")
        semantic = _semantic(rt, msg, user, event)
        if semantic is not None:
            return semantic
        name = L.check_event_name(event, "event")
    else:
        raw = msg.get("name") or (props.get("url") if kind == "page" else None)
        name = L.check_event_name(raw, "name")
    ref = ("id", user) if user else None
    event_type = "event" if kind == "track" else kind

    def add(s: Store) -> None:
        s.add_event(
            ref,
            anonymous_id=None if user else anon,
            name=name,
            type=event_type,
            id=None,
            timestamp=ts,
            data={**props, **({"messageId": message_id} if message_id else {})},
            source=SOURCE,
        )

    return add


def _group(
    rt: Runtime, msg: dict[str, Any], user: str | None, anon: str | None, traits: dict[str, Any]
) -> Apply:
    group_id = _person_id(msg.get("groupId"), "groupId", "an object_id")
    if not group_id:
        raise ItemError("required", "groupId", "group needs groupId")
    type_id = str(traits.get("object_type_id") or traits.get("objectTypeId") or "1")
    mode = rt.config.group_object_attributes
    nested = traits.get("objectAttributes")
    if mode == "objectAttributes" or (mode == "both" and isinstance(nested, dict)):
        attrs = dict(nested) if isinstance(nested, dict) else {}
    else:
        skip = {"object_type_id", "objectTypeId", "relationshipAttributes", "objectAttributes"}
        attrs = {k: v for k, v in traits.items() if k not in skip}
    attrs = _convert_dates(L.check_attributes(attrs, "traits", total_max=L.OBJECT_ATTRS_MAX_TOTAL))
    rel = traits.get("relationshipAttributes")
    rel_attrs = L.check_attributes(rel if isinstance(rel, dict) else None, "relationshipAttributes")
    key = (type_id, group_id)

    def group(s: Store) -> None:
        if s.identify_object(key, attrs, SOURCE) is None:
            return
        if user:
            p = s.person_or_create(("id", user), SOURCE)
            if p is not None:
                s.relate(("p", p.cio_id), key, rel_attrs, add=True, source=SOURCE)
        elif anon:
            s.relate(("a", anon), key, rel_attrs, add=True, source=SOURCE)

    return group


def _alias(rt: Runtime, previous: str, user: str) -> Apply:
    def alias(s: Store) -> None:
        if rt.config.pipelines_alias == "ignore":
            s.log("alias ignored", f"`{previous}` → `{user}`", SOURCE)
        elif s.resolve(("id", previous)) is not None:
            s.merge(("id", user), ("id", previous), SOURCE)
        else:  # previousId was anonymous: attach its events to the user
            s.identify(("id", user), {}, anonymous_id=previous, source=SOURCE)

    return alias


def _body(request: Request, body: bytes) -> bytes:
    if request.headers.get("content-encoding", "").lower() == "gzip" or body[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            raise ItemError("invalid", "", "body is not valid gzip") from None
    return body


def _reject(rt: Runtime, strict: bool, status: int, message: str) -> Response:
    if strict:
        return json_response(status, {"code": status, "message": message})
    rt.store.log("pipelines dropped", message, SOURCE)
    return ok()


def _dedupe(rt: Runtime, msg: Any) -> bool:
    """True when this call's messageId was seen before (and dedupe is on)."""
    if not rt.config.pipelines_message_id_dedupe or not isinstance(msg, dict):
        return False
    mid = msg.get("messageId")
    if not isinstance(mid, str) or not mid:
        return False
    store = rt.store
    if mid in store.message_ids:
        store.counters["duplicate_messages_dropped"] += 1
        return True
    store.message_ids.add(mid)
    return False


def handler(kind: str | None) -> Handler:
    def handle(rt: Runtime, request: Request, body: bytes) -> Response:
        strict = request.headers.get("x-strict-mode") == "1"
        try:
            raw = _body(request, body)
            limit = L.PIPELINES_BATCH_MAX_BYTES if kind is None else L.PIPELINES_CALL_MAX_BYTES
            if len(raw) > limit:
                return _reject(
                    rt, strict, 400, f"request is {len(raw)} B, over the {limit} B limit"
                )
            doc = L.loads(raw)
        except ItemError as exc:
            return _reject(rt, strict, 400, exc.message)
        except orjson.JSONDecodeError:
            return _reject(rt, strict, 400, "body is not valid JSON")
        if kind is not None:
            msgs: list[Any] = [doc]
        elif isinstance(doc, dict) and isinstance(doc.get("batch"), list):
            msgs = doc["batch"]
        else:
            return _reject(rt, strict, 400, 'batch body must be {"batch": [call, ...]}')
        plans: list[tuple[Any, Apply]] = []
        errors: list[str] = []
        for i, msg in enumerate(msgs):
            try:
                if kind is None and len(L.dumps(msg)) > L.PIPELINES_CALL_MAX_BYTES:
                    raise ItemError("limit", "", "call is over 32 KB")
                plans.append((msg, plan(rt, msg, kind)))
            except ItemError as exc:
                errors.append(f"batch[{i}]: {exc.message}" if kind is None else exc.message)
        if errors and strict:
            return json_response(400, {"code": 400, "message": "; ".join(errors)})
        with rt.store.lock:
            for error in errors:
                rt.store.log("pipelines dropped", error, SOURCE)
            for msg, apply in plans:
                if not _dedupe(rt, msg):
                    apply(rt.store)
        return ok()

    return handle


ROUTES: list[tuple[str, Handler]] = [
    *[(f"/v1/{kind}", handler(kind)) for kind in CALL_TYPES],
    ("/v1/batch", handler(None)),
]
