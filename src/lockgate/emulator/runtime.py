"""Per-emulator runtime: state, counters, request log, and the one request pipeline.

Every API route goes through :func:`dispatch`: latency → fault draw → rate limit → auth → handler
→ request log and counters. Handlers are plain functions ``(rt, request, body) -> Response`` that
validate and apply a whole request while holding the store's lock, so a request is applied
completely or not at all.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from lockgate.emulator import auth
from lockgate.emulator.config import EmulatorConfig
from lockgate.emulator.faults import DropConnection, FaultInjector
from lockgate.emulator.limits import dumps, loads
from lockgate.emulator.models import RequestRecord
from lockgate.emulator.store import Store

AuthKind = Literal["track", "pipelines", "app", "none"]
Handler = Callable[["Runtime", Request, bytes], Response]


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status, headers=headers, media_type="application/json")


OK_EMPTY = b"{}"
#: The request log keeps at most this many body bytes (oldest entries are dropped first).
REQUEST_LOG_MAX_BYTES = 64 * 1024 * 1024


def ok() -> Response:
    return Response(OK_EMPTY, 200, media_type="application/json")


@dataclass(frozen=True)
class Stats:
    """Counters since start or the last reset. ``requests`` maps ``"METHOD route"`` to
    ``{"status": count}``; ``ingest_records_per_s`` is Track v2 batch/entity records divided by
    the time spent parsing, validating and applying them (the emulator's own throughput);
    ``accept_records_per_s`` leaves out applying, which happens after the answer: the rate at
    which the emulator can answer a client."""

    requests: dict[str, dict[str, int]]
    records_ingested: int
    duplicate_events_dropped: int
    duplicate_messages_dropped: int
    responses_429: int
    rate_limited: int
    faults_injected: dict[str, int]
    v2_records: int
    v2_seconds: float
    ingest_records_per_s: float
    accept_records_per_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        return cls(**data)


@dataclass
class _Counters:
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    responses_429: int = 0
    rate_limited: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    v2_records: int = 0
    v2_seconds: float = 0.0


@dataclass(frozen=True)
class RouteSpec:
    name: str
    surface: str
    auth: AuthKind
    handler: Handler


class Runtime:
    """Everything one emulator instance owns; shared by its routes."""

    def __init__(self, config: EmulatorConfig, request_log_max: int = 10_000) -> None:
        self.config = config
        self.store = Store(config)
        self.injector = FaultInjector(config)
        self.lock = threading.Lock()
        self.counters = _Counters()
        self.requests: deque[tuple[str, str, str, int, bytes, float]] = deque()
        self.request_log_max = request_log_max
        self.request_log_bytes = 0

    def reset(self) -> None:
        self.store.reset()
        self.injector.reset()
        with self.lock:
            self.counters = _Counters()
            self.requests.clear()
            self.request_log_bytes = 0

    def add_v2_ingest(self, records: int, seconds: float) -> None:
        with self.lock:
            self.counters.v2_records += records
            self.counters.v2_seconds += seconds

    def stats(self) -> Stats:
        with self.lock:
            c = self.counters
            reqs = {k: dict(v) for k, v in c.requests.items()}
            faults = dict(c.faults)
        with self.store.lock:  # applies deferred v2 operations first
            s = dict(self.store.counters)
            apply_s = self.store.apply_seconds
        return Stats(
            requests=reqs,
            records_ingested=s["records_ingested"],
            duplicate_events_dropped=s["duplicate_events_dropped"],
            duplicate_messages_dropped=s["duplicate_messages_dropped"],
            responses_429=c.responses_429,
            rate_limited=c.rate_limited,
            faults_injected=faults,
            v2_records=c.v2_records,
            v2_seconds=c.v2_seconds + apply_s,
            ingest_records_per_s=(c.v2_records / (c.v2_seconds + apply_s)) if c.v2_seconds else 0.0,
            accept_records_per_s=(c.v2_records / c.v2_seconds) if c.v2_seconds else 0.0,
        )

    def request_log(self) -> list[RequestRecord]:
        with self.lock:
            rows = list(self.requests)
        return [
            RequestRecord(method=m, path=p, route=r, status=s, body=_decode(b), at=t)
            for m, p, r, s, b, t in rows
        ]

    def _record(self, method: str, path: str, route: str, status: int, body: bytes) -> None:
        with self.lock:
            key = f"{method} {route}"
            by_status = self.counters.requests.setdefault(key, {})
            by_status[str(status)] = by_status.get(str(status), 0) + 1
            if status == 429:
                self.counters.responses_429 += 1
            self.requests.append((method, path, route, status, body, time.time()))
            self.request_log_bytes += len(body)
            # bounded by count and by bytes, so a long benchmark cannot exhaust memory
            while self.requests and (
                len(self.requests) > self.request_log_max
                or self.request_log_bytes > REQUEST_LOG_MAX_BYTES
            ):
                self.request_log_bytes -= len(self.requests.popleft()[4])

    def _fault(self, kind: str) -> None:
        with self.lock:
            self.counters.faults[kind] = self.counters.faults.get(kind, 0) + 1


def _decode(body: bytes) -> Any:
    if not body:
        return None
    if body[:2] == b"\x1f\x8b":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            return None
    try:
        return loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")


def _unauthorized(rt: Runtime, spec: RouteSpec, request: Request) -> Response | None:
    cfg, headers = rt.config, request.headers
    if spec.auth == "track" and not auth.track_ok(cfg, headers):
        return json_response(401, {"meta": {"error": "Unauthorized"}})
    if spec.auth == "app" and not auth.app_ok(cfg, headers):
        return json_response(401, {"errors": [{"detail": "Unauthorized"}]})
    if spec.auth == "pipelines" and not auth.pipelines_ok(cfg, headers):
        if headers.get("x-strict-mode") == "1":
            return json_response(401, {"code": 401, "message": "invalid write key"})
        rt.store.log("pipelines unauthorized", "bad write key: request dropped", "pipelines")
        return ok()
    return None


def error_body(surface: str, status: int, message: str) -> dict[str, Any]:
    """An error in the shape the surface uses for its other errors, so a client's error parsing
    meets one shape per API: App ``{"errors": [{"detail", "status"}]}``, Pipelines
    ``{"code", "message"}`` (strict mode), Track ``{"meta": {"error"}}`` (v1, reference §1.10)."""
    if surface == "app":
        return {"errors": [{"detail": message, "status": str(status)}]}
    if surface == "pipelines":
        return {"code": status, "message": message}
    return {"meta": {"error": message}}


def _fault_response(rt: Runtime, spec: RouteSpec, fault: str) -> Response:
    rt._fault(fault)
    if fault == "5xx":
        return json_response(
            503, error_body(spec.surface, 503, "emulator fault: service unavailable")
        )
    if fault == "429":
        return json_response(
            429,
            error_body(spec.surface, 429, "emulator fault: too many requests"),
            {"Retry-After": str(rt.config.faults.retry_after_s)},
        )
    raise DropConnection(timeout=fault == "timeout")


async def dispatch(rt: Runtime, spec: RouteSpec, request: Request) -> Response:
    """Run one API request through the pipeline described in the module docstring."""
    latency = rt.injector.latency_s(spec.surface, spec.name)
    if latency:
        await asyncio.sleep(latency)
    fault = rt.injector.draw(spec.surface, spec.name)
    body = await request.body()
    method, path = request.method, request.url.path
    late = rt.config.faults.applied_then_failed
    if fault is not None and not late:
        response = _fault_response(rt, spec, fault)
    elif rt.injector.rate_limited(spec.surface):
        with rt.lock:
            rt.counters.rate_limited += 1
        message = (
            "Your request is over the 10-per-second limit"
            if spec.surface == "app"
            else "rate limit exceeded"
        )
        response = json_response(
            429,
            error_body(spec.surface, 429, message),
            {"Retry-After": str(rt.config.faults.retry_after_s)},
        )
    else:
        response = _unauthorized(rt, spec, request) or spec.handler(rt, request, body)
        if fault is not None:
            rt._record(method, path, spec.name, response.status_code, body)
            return _fault_response(rt, spec, fault)
    rt._record(method, path, spec.name, response.status_code, body)
    if rt.config.faults.answer_latency_ms:
        await asyncio.sleep(rt.config.faults.answer_latency_ms / 1000.0)
    return response
