"""App API read-back subset under ``/v1`` (Bearer auth; reference section 6).

Routes:

- ``GET /v1/customers/{id}/attributes?id_type=id|email|phone|cio_id`` → ``{"customer": {...}}``
  with every attribute value as a string; 404 when unknown.
- ``GET /v1/customers?email=`` → ``{"results": [{"email", "id", "cio_id"}]}``
- ``POST /v1/customers/attributes?id_type=`` ``{"ids": [1..100]}`` →
  ``{"customers": [{"customer": {...}}, ...]}``: each item is the single lookup's answer, wrapper
  included, as the official App API spec (getPeopleById) has it; unknown ids left out
- ``POST /v1/customers?start=&limit=`` ``{"filter": ...}`` (section 6.3 grammar: ``and``/``or``/
  ``not``/``segment``/``attribute`` with ``eq``/``exists``) → ``{"identifiers", "ids", "next"}``
- ``GET /v1/customers/{id}/activities?type=&name=&limit=&start=`` (newest first, 10 a page
  unless ``limit`` says, at most 100; ``next``) · ``/relationships`` · ``/segments``
- ``GET /v1/objects/{type_id}/{object_id}/attributes?id_type=object_id|cio_object_id`` ·
  ``/relationships``; ``GET /v1/object_types``; ``GET /v1/workspaces``
- ``GET /v1/segments/{id}/customer_count`` · ``/membership?start=&limit=`` (manual segments)

Errors are ``{"errors": [{"detail": "...", "status": "<code>"}]}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from lockgate.emulator import limits as L
from lockgate.emulator.runtime import Handler, Runtime, json_response
from lockgate.emulator.store import _P


def _err(status: int, detail: str) -> Response:
    return json_response(status, {"errors": [{"detail": detail, "status": str(status)}]})


def stringify(value: Any) -> str:
    """How the App API returns attribute values: always strings."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return L.dumps(value).decode()


def _lookup(rt: Runtime, request: Request, value: str) -> _P | None | Response:
    id_type = request.query_params.get("id_type", "id")
    if id_type not in ("id", "email", "phone", "cio_id"):
        return _err(400, f"id_type `{id_type}` must be id, email, phone or cio_id")
    # official App API spec: "You can use email and phone only if they're enabled as
    # identifiers in your workspace settings; otherwise the request returns 400"
    if (id_type == "email" and rt.config.workspace_mode == "id") or (
        id_type == "phone" and not rt.config.phone_identifiers
    ):
        return _err(400, f"id_type `{id_type}` is not an identifier enabled in this workspace")
    if id_type == "cio_id":
        mode = rt.config.app_cio_id_prefix
        prefixed = value.startswith("cio_")
        if (mode == "prefixed" and not prefixed) or (mode == "bare" and prefixed):
            return None
        value = value[4:] if prefixed else value
    return rt.store.resolve((id_type, value))


def _identifiers(p: _P) -> dict[str, Any]:
    return {"id": p.id, "email": p.email, "cio_id": p.cio_id}


def customer_json(p: _P) -> dict[str, Any]:
    attrs = {k: stringify(v) for k, v in p.attrs.items()}
    attrs.setdefault("created_at", str(p.created_at))
    attrs["cio_id"] = p.cio_id
    for kind in ("id", "email", "phone"):
        if getattr(p, kind) is not None:
            attrs[kind] = getattr(p, kind)
    return {
        "id": p.id,
        "identifiers": _identifiers(p),
        "attributes": attrs,
        "timestamps": {k: p.created_at for k in attrs},
        "unsubscribed": p.unsubscribed,
        "devices": [
            {"id": d.id, "platform": d.platform, "last_used": d.last_used, **d.attributes}
            for d in p.devices.values()
        ],
    }


def _person_route(rt: Runtime, request: Request) -> _P | Response:
    with rt.store.lock:
        found = _lookup(rt, request, request.path_params["customer_id"])
    if found is None:
        return _err(404, "customer not found")
    return found


def get_attributes(rt: Runtime, request: Request, body: bytes) -> Response:
    with rt.store.lock:
        p = _person_route(rt, request)
        if isinstance(p, Response):
            return p
        return json_response(200, {"customer": customer_json(p)})


def by_email(rt: Runtime, request: Request, body: bytes) -> Response:
    email = request.query_params.get("email", "")
    if not email:
        return _err(400, "the `email` query parameter is required")
    with rt.store.lock:
        found = [
            {"email": p.email, "id": p.id, "cio_id": p.cio_id}
            for p in rt.store.people.values()
            if p.email is not None and p.email.lower() == email.lower()
        ]
    return json_response(200, {"results": found})


def _json(body: bytes) -> dict[str, Any] | Response:
    try:
        doc = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        return _err(400, "body is not valid JSON")
    return doc if isinstance(doc, dict) else _err(400, "body must be a JSON object")


def bulk_attributes(rt: Runtime, request: Request, body: bytes) -> Response:
    doc = _json(body)
    if isinstance(doc, Response):
        return doc
    ids = doc.get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= L.APP_LOOKUP_IDS_MAX:
        return _err(400, "`ids` must be an array of 1 to 100 identifiers")
    out = []
    with rt.store.lock:
        for value in ids:
            p = _lookup(rt, request, str(value))
            if isinstance(p, Response):
                return p
            if p is not None:  # wrapped, as the single lookup answers (official spec)
                out.append({"customer": customer_json(p)})
    return json_response(200, {"customers": out})


def _match(rt: Runtime, p: _P, node: Any, seen: dict[str, Any] | None = None) -> bool:
    """Whether person ``p`` matches filter ``node``; ``seen`` keeps the person's attributes,
    as the App API returns them, for the other conditions (an ``or`` of many ``eq``)."""
    seen = {} if seen is None else seen
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError("a filter holds exactly one of and, or, not, segment, attribute")
    ((key, value),) = node.items()
    if key == "and" and isinstance(value, list):
        return all(_match(rt, p, n, seen) for n in value)
    if key == "or" and isinstance(value, list):
        return any(_match(rt, p, n, seen) for n in value)
    if key == "not":
        return not _match(rt, p, value, seen)
    if key == "segment" and isinstance(value, dict):
        return value.get("id") in p.segments
    if key == "attribute" and isinstance(value, dict):
        field, op = value.get("field"), value.get("operator")
        if "attributes" not in seen:
            seen["attributes"] = customer_json(p)["attributes"]
        current = seen["attributes"].get(field) if isinstance(field, str) else None
        if op == "exists":
            return current is not None
        if op == "eq":
            if not isinstance(value.get("value"), str):
                raise ValueError("`value` (a string) is required for operator eq")
            return bool(current == value["value"])
        raise ValueError(f"operator `{op}` is not supported (eq, exists)")
    raise ValueError(f"unknown filter `{key}`")


def _page(request: Request) -> tuple[int, int] | Response:
    try:
        start = int(request.query_params.get("start") or 0)
        limit = int(request.query_params.get("limit") or L.APP_SEARCH_LIMIT_DEFAULT)
    except ValueError:
        return _err(400, "`start` and `limit` must be integers")
    if not 1 <= limit <= L.APP_SEARCH_LIMIT_MAX:
        return _err(400, "`limit` must be between 1 and 1000")
    return start, limit


def search(rt: Runtime, request: Request, body: bytes) -> Response:
    doc = _json(body)
    if isinstance(doc, Response):
        return doc
    page = _page(request)
    if isinstance(page, Response):
        return page
    start, limit = page
    with rt.store.lock:
        try:
            hits = [p for p in rt.store.people.values() if _match(rt, p, doc.get("filter"))]
        except ValueError as exc:
            return _err(400, str(exc))
        chunk = hits[start : start + limit]
        nxt = str(start + limit) if start + limit < len(hits) else ""
        return json_response(
            200,
            {
                "identifiers": [_identifiers(p) for p in chunk],
                "ids": [p.id or "" for p in chunk],
                "next": nxt,
            },
        )


ACTIVITIES_LIMIT = 10
"""``limit`` when a request gives none (the official App API spec's default)."""
ACTIVITIES_MAX = 100
"""The most activities one page returns (the spec's ``maximum: 100``)."""


def activities(rt: Runtime, request: Request, body: bytes) -> Response:
    """A person's activities, newest first, one page at a time: ``type`` and ``name`` filter
    (``name`` is the event's name for ``event`` activities), ``limit`` (default 10, at most
    100) sizes a page, and ``next``, given back as ``start``, turns it ("" on the last)."""
    q = request.query_params
    try:
        limit = int(q.get("limit") or ACTIVITIES_LIMIT)
        offset = int(q.get("start") or 0)
    except ValueError:
        return _err(400, "`limit` must be an integer and `start` a `next` value given back")
    if limit < 1 or offset < 0:
        return _err(400, "`limit` must be at least 1")
    limit = min(limit, ACTIVITIES_MAX)
    kind, name = q.get("type"), q.get("name")
    with rt.store.lock:
        p = _person_route(rt, request)
        if isinstance(p, Response):
            return p
        rows = [
            {
                "id": e.id or f"{p.cio_id}-{i}",
                "type": e.type,
                "name": e.name,
                "timestamp": e.timestamp,
                "data": e.data,
                "customer_id": p.id,
                "customer_identifiers": _identifiers(p),
            }
            for i, e in enumerate(rt.store.events)
            if e.person == p.cio_id
            and (kind is None or e.type == kind)
            and (name is None or e.name == name)
        ]
    rows.reverse()  # newest first, as the workspace's activity log lists them
    page = rows[offset : offset + limit]
    more = offset + limit < len(rows)
    return json_response(200, {"activities": page, "next": str(offset + limit) if more else ""})


def person_relationships(rt: Runtime, request: Request, body: bytes) -> Response:
    with rt.store.lock:
        p = _person_route(rt, request)
        if isinstance(p, Response):
            return p
        rows = [
            {
                "identifiers": {"object_type_id": k[2], "object_id": k[3]},
                "relationship_attributes": v,
            }
            for k, v in rt.store.rels.items()
            if k[0] == "p" and k[1] == p.cio_id
        ]
    return json_response(200, {"cio_relationships": rows, "next": ""})


def person_segments(rt: Runtime, request: Request, body: bytes) -> Response:
    with rt.store.lock:
        p = _person_route(rt, request)
        if isinstance(p, Response):
            return p
        segs = [{"id": s, "type": "manual"} for s in sorted(p.segments)]
    return json_response(200, {"segments": segs})


def _object_key(rt: Runtime, request: Request) -> tuple[str, str] | Response:
    type_id, object_id = request.path_params["object_type_id"], request.path_params["object_id"]
    if request.query_params.get("id_type", "object_id") == "cio_object_id":
        key = rt.store.objects_by_cio.get(object_id)
    else:
        key = (str(type_id), object_id) if (str(type_id), object_id) in rt.store.objects else None
    return key if key is not None else _err(404, "object not found")


def object_attributes(rt: Runtime, request: Request, body: bytes) -> Response:
    with rt.store.lock:
        key = _object_key(rt, request)
        if isinstance(key, Response):
            return key
        o = rt.store.objects[key]
    return json_response(
        200,
        {
            "object": {
                "identifiers": {
                    "object_type_id": o.object_type_id,
                    "object_id": o.object_id,
                    "cio_object_id": o.cio_object_id,
                },
                "attributes": {k: stringify(v) for k, v in o.attributes.items()},
            }
        },
    )


def object_relationships(rt: Runtime, request: Request, body: bytes) -> Response:
    store = rt.store
    with store.lock:
        key = _object_key(rt, request)
        if isinstance(key, Response):
            return key
        rows = []
        for k, v in store.rels.items():
            if k[2:] != key:
                continue
            p = store.resolve(("cio_id", k[1])) if k[0] == "p" else None
            ident = _identifiers(p) if p else {"anonymous_id": k[1]}
            rows.append({"identifiers": ident, "relationship_attributes": v})
    return json_response(200, {"cio_relationships": rows, "next": ""})


def object_types(rt: Runtime, request: Request, body: bytes) -> Response:
    types = [
        {"id": int(k), "name": name, "singular_name": name.rstrip("s")}
        for k, name in sorted(rt.config.object_types.items(), key=lambda kv: int(kv[0]))
    ]
    return json_response(200, {"types": types})


def workspaces(rt: Runtime, request: Request, body: bytes) -> Response:
    with rt.store.lock:
        counts = {
            "people": len(rt.store.people),
            "objects": len(rt.store.objects),
            "object_types": len(rt.config.object_types),
            "messages_sent": 0,
        }
    ws = {"id": rt.config.environment_id, "name": "lockgate-emulator", **counts}
    return json_response(200, {"workspaces": [ws]})


def segment_count(rt: Runtime, request: Request, body: bytes) -> Response:
    segment_id = int(request.path_params["segment_id"])
    members = rt.store.segment_members(segment_id)
    return json_response(200, {"segment_id": segment_id, "count": len(members)})


def segment_membership(rt: Runtime, request: Request, body: bytes) -> Response:
    page = _page(request)
    if isinstance(page, Response):
        return page
    start, limit = page
    store = rt.store
    with store.lock:
        segment_id = int(request.path_params["segment_id"])
        members = [p for p in store.people.values() if segment_id in p.segments]
        chunk = members[start : start + limit]
        nxt = str(start + limit) if start + limit < len(members) else ""
        return json_response(
            200,
            {
                "identifiers": [_identifiers(p) for p in chunk],
                "ids": [p.id or "" for p in chunk],
                "next": nxt,
            },
        )


CUSTOMER = "/v1/customers/{customer_id}"
OBJECT = "/v1/objects/{object_type_id:int}/{object_id}"
ROUTES: list[tuple[str, Handler, str]] = [
    ("/v1/customers", by_email, "GET"),
    ("/v1/customers", search, "POST"),
    ("/v1/customers/attributes", bulk_attributes, "POST"),
    (CUSTOMER + "/attributes", get_attributes, "GET"),
    (CUSTOMER + "/activities", activities, "GET"),
    (CUSTOMER + "/relationships", person_relationships, "GET"),
    (CUSTOMER + "/segments", person_segments, "GET"),
    (OBJECT + "/attributes", object_attributes, "GET"),
    (OBJECT + "/relationships", object_relationships, "GET"),
    ("/v1/object_types", object_types, "GET"),
    ("/v1/workspaces", workspaces, "GET"),
    ("/v1/segments/{segment_id:int}/customer_count", segment_count, "GET"),
    ("/v1/segments/{segment_id:int}/membership", segment_membership, "GET"),
]
