"""Build the emulator's ASGI app: every surface on one port, routed by path prefix.

Routing (all surfaces share one host and port):

- ``/api/v1/...`` → Track v1 (Basic ``site_id:api_key``)
- ``/api/v2/entity``, ``/api/v2/batch`` → Track v2 (same Basic auth)
- ``POST /v1/identify|track|page|screen|group|alias|batch`` → Pipelines (Basic write key)
- any other ``/v1/...`` (``/v1/customers``, ``/v1/objects``, ``/v1/object_types``,
  ``/v1/workspaces``, ``/v1/segments``) → App API (Bearer). The Pipelines paths are seven fixed
  ``POST`` paths that the App API does not use, so the two never collide.
- ``/_emulator/...`` → the inspection API (:mod:`lockgate.emulator.inspect`)

The app is a bare Starlette ``Router`` inside :class:`EmulatorASGI` (no Starlette error
middleware), so a ``reset``/``timeout`` fault can close the socket without a response.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import Receive, Scope, Send

from lockgate.emulator import app_api, pipelines, track_v1, track_v2
from lockgate.emulator import inspect as inspect_api
from lockgate.emulator.faults import DropConnection
from lockgate.emulator.runtime import AuthKind, Handler, RouteSpec, Runtime, dispatch, json_response

V1 = "/api/v1"
CUSTOMER = V1 + "/customers/{identifier}"


def _api_routes(rt: Runtime) -> list[BaseRoute]:
    def api(path: str, handler: Handler, methods: list[str], surface: str, auth: AuthKind) -> Route:
        spec = RouteSpec(path, surface, auth, handler)

        async def endpoint(request: Request) -> Response:
            return await dispatch(rt, spec, request)

        return Route(path, endpoint, methods=methods, name=f"{methods[0]} {path}")

    def t1(path: str, handler: Handler, method: str) -> Route:
        return api(path, handler, [method], "track_v1", "track")

    routes: list[BaseRoute] = [
        t1(V1 + "/accounts/region", track_v1.region, "GET"),
        t1(CUSTOMER, track_v1.identify, "PUT"),
        t1(CUSTOMER, track_v1.delete, "DELETE"),
        t1(CUSTOMER + "/events", track_v1.track, "POST"),
        t1(CUSTOMER + "/suppress", track_v1.suppress, "POST"),
        t1(CUSTOMER + "/unsuppress", track_v1.suppress, "POST"),
        t1(CUSTOMER + "/devices", track_v1.add_device, "PUT"),
        t1(CUSTOMER + "/devices/{device_id}", track_v1.delete_device, "DELETE"),
        t1(V1 + "/events", track_v1.track_anonymous, "POST"),
        t1(V1 + "/merge_customers", track_v1.merge, "POST"),
        t1(V1 + "/segments/{segment_id}/add_customers", track_v1.segment_members, "POST"),
        t1(V1 + "/segments/{segment_id}/remove_customers", track_v1.segment_members, "POST"),
        api("/api/v2/entity", track_v2.entity, ["POST"], "track_v2", "track"),
        api("/api/v2/batch", track_v2.batch, ["POST"], "track_v2", "track"),
    ]
    for path, handler in pipelines.ROUTES:
        routes.append(api(path, handler, ["POST"], "pipelines", "pipelines"))
    for path, handler, method in app_api.ROUTES:
        routes.append(api(path, handler, [method], "app", "app"))
    return routes


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope.get("path", "")
    response = json_response(404, {"errors": [{"detail": f"no emulator route for `{path}`"}]})
    await response(scope, receive, send)


class EmulatorASGI:
    """The outermost ASGI callable: routes, and turns :class:`DropConnection` into a dropped
    connection (see :mod:`lockgate.emulator.faults`)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.router = Router(routes=[*inspect_api.routes(rt), *_api_routes(rt)], default=_not_found)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.router(scope, receive, send)
        except DropConnection as exc:
            transport: Any = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is None:  # in-process (httpx.ASGITransport): what a client would see
                if exc.timeout:
                    raise httpx.ReadTimeout("emulator fault: timed out") from None
                raise httpx.RemoteProtocolError("emulator fault: connection dropped") from None
            if exc.timeout:
                await asyncio.sleep(self.rt.config.faults.timeout_s)
            transport.abort()
            await asyncio.sleep(0)  # let uvicorn see the disconnect before the app returns


def build_app(rt: Runtime) -> EmulatorASGI:
    return EmulatorASGI(rt)
