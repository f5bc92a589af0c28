"""Track API v1 under ``/api/v1`` (reference section 1).

Success is ``200 {}``. Invalid requests get 400 with the documented texts of reference section 1.10
in ``{"meta": {"error": "<text>", "errors": ["<text>"]}}`` (``EmulatorConfig.v1_error_shape``
chooses one or both keys). The path identifier is resolved by shape: ``cio_`` prefix → cio_id,
email-shaped (when the workspace has email identifiers) → email, otherwise → id.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from lockgate.emulator import limits as L
from lockgate.emulator.limits import ItemError
from lockgate.emulator.models import Device
from lockgate.emulator.runtime import Runtime, json_response, ok
from lockgate.emulator.track_v2 import emails_enabled, object_ref, person_ref, relate_person

SOURCE = "track_v1"
EVENT_TYPES = ("event", "page", "screen")


def error(rt: Runtime, message: str, status: int = 400) -> Response:
    shape = rt.config.v1_error_shape
    meta: dict[str, Any] = {}
    if shape in ("both", "error"):
        meta["error"] = message
    if shape in ("both", "errors"):
        meta["errors"] = [message]
    return json_response(status, {"meta": meta})


def path_ref(rt: Runtime, identifier: str) -> tuple[str, str]:
    """Resolve a path identifier by its shape (reference section 1.1)."""
    if identifier.startswith("cio_"):
        return "cio_id", identifier[4:]
    mode = rt.config.workspace_mode
    if mode == "email" or (mode == "id_email" and L.EMAIL_RE.match(identifier)):
        return "email", identifier
    return "id", identifier


def _json_object(body: bytes, *, required: bool = True) -> dict[str, Any]:
    if not body.strip():
        if required:
            raise ItemError("invalid", "", "request body must be a JSON object")
        return {}
    try:
        doc = L.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ItemError("invalid", "", f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ItemError("invalid", "", "request body must be a JSON object")
    return doc


def _ident(rt: Runtime, request: Request) -> tuple[str, str]:
    identifier = request.path_params["identifier"]
    if not identifier.strip():
        raise ItemError("required", "identifier", "id attribute must be present")
    if len(identifier.encode()) > L.ID_MAX_BYTES and not identifier.startswith("cio_"):
        raise ItemError("limit", "identifier", "id cannot be longer than 150 bytes")
    return path_ref(rt, identifier)


def _v1_relationships(value: Any) -> tuple[bool, list[tuple[tuple[str, str], dict[str, Any]]]]:
    if not isinstance(value, dict):
        raise ItemError(
            "invalid",
            "cio_relationships",
            'cio_relationships must be {"action": ..., "relationships": [...]} in v1',
        )
    action = value.get("action")
    if action not in ("add_relationships", "delete_relationships"):
        raise ItemError(
            "invalid",
            "cio_relationships.action",
            "cio_relationships.action must be add_relationships or delete_relationships",
        )
    rels = value.get("relationships")
    if not isinstance(rels, list):
        raise ItemError("invalid", "cio_relationships.relationships", "must be an array")
    items = []
    for i, item in enumerate(rels):
        f = f"cio_relationships.relationships[{i}]"
        if not isinstance(item, dict):
            raise ItemError("invalid", f, "relationship must be an object")
        attrs = L.check_attributes(
            item.get("relationship_attributes"),
            f"{f}.relationship_attributes",
            total_max=L.OBJECT_ATTRS_MAX_TOTAL,
        )
        items.append((object_ref(item.get("identifiers"), f"{f}.identifiers"), attrs))
    return action == "add_relationships", items


def identify(rt: Runtime, request: Request, body: bytes) -> Response:
    try:
        ref = _ident(rt, request)
        attrs = _json_object(body)
        if "id" in attrs:
            if not isinstance(attrs["id"], str):
                raise ItemError("invalid", "id", "id attribute must be a string value")
            if attrs["id"] == "":
                raise ItemError("invalid", "id", "id attribute cannot be an empty string")
            L.check_identifier_value("id", attrs["id"], "id")
        rels = attrs.get("cio_relationships")
        plain = {k: v for k, v in attrs.items() if k != "cio_relationships"}
        L.check_attributes(plain, "attributes")
        for name in ("_timestamp", "created_at"):
            L.check_timestamp(attrs.get(name), name)
        add, items = _v1_relationships(rels) if rels is not None else (True, [])
    except ItemError as exc:
        return error(rt, exc.message)
    anonymous_id = attrs.get("anonymous_id") if isinstance(attrs.get("anonymous_id"), str) else None
    store = rt.store
    with store.lock:
        p = store.identify(
            ref,
            attrs,
            update_only=attrs.get("_update") is True,
            anonymous_id=anonymous_id,
            source=SOURCE,
        )
        if p is not None and items:
            relate_person(store, ("cio_id", p.cio_id), items, add=add, source=SOURCE)
    return ok()


def delete(rt: Runtime, request: Request, body: bytes) -> Response:
    try:
        ref = _ident(rt, request)
    except ItemError as exc:
        return error(rt, exc.message)
    rt.store.delete_person(ref, SOURCE)
    return ok()


def _event_fields(rt: Runtime, doc: dict[str, Any]) -> dict[str, Any]:
    name = L.check_event_name(doc.get("name"))
    kind = doc.get("type", "event")
    if kind not in EVENT_TYPES:
        raise ItemError("invalid", "type", "event type must be one of event, page, screen")
    data = L.check_event_data(doc.get("data"), "data")
    ts = L.check_timestamp(doc.get("timestamp"))
    event_id = L.check_event_id(doc.get("id"), rt.config.require_ulid_event_ids)
    return {"name": name, "type": kind, "data": data, "timestamp": ts, "id": event_id}


def track(rt: Runtime, request: Request, body: bytes) -> Response:
    try:
        ref = _ident(rt, request)
        fields = _event_fields(rt, _json_object(body))
    except ItemError as exc:
        return error(rt, exc.message)
    rt.store.add_event(ref, anonymous_id=None, source=SOURCE, **fields)
    return ok()


def track_anonymous(rt: Runtime, request: Request, body: bytes) -> Response:
    try:
        doc = _json_object(body)
        fields = _event_fields(rt, doc)
        anon = doc.get("anonymous_id")
        if anon is not None and (not isinstance(anon, str) or not anon):
            raise ItemError("invalid", "anonymous_id", "anonymous_id must be a non-empty string")
    except ItemError as exc:
        return error(rt, exc.message)
    rt.store.add_event(None, anonymous_id=anon, source=SOURCE, **fields)
    return ok()


def merge(rt: Runtime, request: Request, body: bytes) -> Response:
    try:
        doc = _json_object(body)
        email = emails_enabled(rt.config)  # spec: "If email identifiers are disabled …"
        primary = person_ref(doc.get("primary"), "primary", phone=False, email=email)
        secondary = person_ref(doc.get("secondary"), "secondary", phone=False, email=email)
    except ItemError as exc:
        return error(rt, exc.message)
    rt.store.merge(primary, secondary, SOURCE)
    return ok()


def suppress(rt: Runtime, request: Request, body: bytes) -> Response:
    try:
        ref = _ident(rt, request)
    except ItemError as exc:
        return error(rt, exc.message)
    if request.url.path.endswith("/unsuppress"):
        rt.store.unsuppress(ref, SOURCE)
    else:
        rt.store.suppress(ref, SOURCE)
    return ok()


def add_device(rt: Runtime, request: Request, body: bytes) -> Response:
    try:
        ref = _ident(rt, request)
        dev = _json_object(body).get("device")
        if not isinstance(dev, dict):
            raise ItemError("required", "device", "device must be an object")
        if not isinstance(dev.get("id"), str) or not dev["id"]:
            raise ItemError("required", "device.id", "device id must be present")
        if dev.get("platform") not in ("ios", "android"):
            raise ItemError("invalid", "device.platform", "device platform must be ios or android")
        last_used = L.check_timestamp(dev.get("last_used"), "device.last_used")
        extra = {k: v for k, v in dev.items() if k not in ("id", "platform", "last_used")}
        attrs = dict(L.check_attributes(extra.pop("attributes", None), "device.attributes"))
        attrs.update(extra)
    except ItemError as exc:
        return error(rt, exc.message)
    rt.store.add_device(ref, Device(dev["id"], dev["platform"], last_used, attrs), SOURCE)
    return ok()


def delete_device(rt: Runtime, request: Request, body: bytes) -> Response:
    try:
        ref = _ident(rt, request)
    except ItemError as exc:
        return error(rt, exc.message)
    rt.store.delete_device(ref, request.path_params["device_id"], SOURCE)
    return ok()


def region(rt: Runtime, request: Request, body: bytes) -> Response:
    eu = rt.config.region == "eu"
    return json_response(
        200,
        {
            "url": "https://track-eu.customer.io" if eu else "https://track.customer.io",
            "region": rt.config.region,
            "environment_id": rt.config.environment_id,
        },
    )


def segment_members(rt: Runtime, request: Request, body: bytes) -> Response:
    """Manual segments: add/remove 1-1000 ids; values not matching ``id_type`` are ignored."""
    try:
        segment_id = int(request.path_params["segment_id"])
        id_type = request.query_params.get("id_type", "id")
        if id_type not in ("id", "email", "cio_id"):
            raise ItemError("invalid", "id_type", "id_type must be id, email or cio_id")
        ids = _json_object(body).get("ids")
        if not isinstance(ids, list) or not L.SEGMENT_IDS_MIN <= len(ids) <= L.SEGMENT_IDS_MAX:
            raise ItemError("invalid", "ids", "ids must be an array of 1 to 1000 identifiers")
    except (ItemError, ValueError) as exc:
        return error(
            rt, exc.message if isinstance(exc, ItemError) else "segment id must be an integer"
        )
    refs = [(id_type, str(v)) for v in ids if isinstance(v, str | int) and not isinstance(v, bool)]
    add = request.url.path.endswith("/add_customers")
    rt.store.segment_update(segment_id, refs, add=add)
    return ok()
