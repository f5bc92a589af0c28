"""The ``/_emulator/`` inspection API: the emulator's state as JSON, for out-of-process tests.

No auth, no faults, no rate limits, not in the request log. Routes (all ``GET`` unless noted):

- ``/_emulator/people`` → ``{"people": [Person...]}``; ``?id=`` / ``?email=`` / ``?cio_id=`` /
  ``?phone=`` → the one matching person (or none)
- ``/_emulator/events?person=<cio_id>`` → ``{"events": [Event...]}``
- ``/_emulator/objects`` · ``/_emulator/relationships`` · ``/_emulator/merges`` ·
  ``/_emulator/activity`` · ``/_emulator/requests`` → ``{"<name>": [...]}``
- ``/_emulator/stats`` → ``Stats``
- ``POST /_emulator/reset`` → ``{}`` (clears state, counters, fault RNG and rate limiters)

:class:`~lockgate.emulator.inspector.EmulatorInspector` wraps these in Python.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.emulator.runtime import Runtime, json_response, ok

IDENTIFIER_KINDS = ("id", "email", "cio_id", "phone")


def routes(rt: Runtime) -> list[Route]:
    store = rt.store

    async def people(request: Request) -> Response:
        query = [(k, v) for k, v in request.query_params.items() if k in IDENTIFIER_KINDS]
        if not query:
            return json_response(200, {"people": [p.to_json() for p in store.snapshot_people()]})
        with store.lock:
            found = store.resolve(query[0])
            rows = [found.freeze().to_json()] if found is not None else []
        return json_response(200, {"people": rows})

    async def events(request: Request) -> Response:
        person = request.query_params.get("person")
        with store.lock:
            rows = [e for e in store.events if person is None or e.person == person]
        return json_response(200, {"events": [e.to_json() for e in rows]})

    async def objects(request: Request) -> Response:
        with store.lock:
            rows = list(store.objects.values())
        return json_response(200, {"objects": [o.to_json() for o in rows]})

    async def relationships(request: Request) -> Response:
        rels = store.snapshot_relationships()
        return json_response(200, {"relationships": [r.to_json() for r in rels]})

    async def merges(request: Request) -> Response:
        with store.lock:
            rows = list(store.merges)
        return json_response(200, {"merges": [m.to_json() for m in rows]})

    async def activity(request: Request) -> Response:
        with store.lock:
            rows = list(store.activity)
        return json_response(200, {"activity": [a.to_json() for a in rows]})

    async def requests(request: Request) -> Response:
        return json_response(200, {"requests": [r.to_json() for r in rt.request_log()]})

    async def stats(request: Request) -> Response:
        return json_response(200, rt.stats().to_json())

    async def reset(request: Request) -> Response:
        rt.reset()
        return ok()

    return [
        Route("/_emulator/people", people),
        Route("/_emulator/events", events),
        Route("/_emulator/objects", objects),
        Route("/_emulator/relationships", relationships),
        Route("/_emulator/merges", merges),
        Route("/_emulator/activity", activity),
        Route("/_emulator/requests", requests),
        Route("/_emulator/stats", stats),
        Route("/_emulator/reset", reset, methods=["POST"]),
    ]
