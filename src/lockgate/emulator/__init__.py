"""A local Customer.io for tests, the demo and CI (what LocalStack is for AWS).

Track v1 (``/api/v1``), Track v2 (``/api/v2``), Pipelines (``/v1/identify`` ...) and an App API
read-back subset (``/v1/customers`` ...) on one ASGI app, with seeded fault injection and rate
limits. It shares no code with Lockgate's own Customer.io client on purpose. Full guide:
``docs/emulator.md``.

Public API::

    Emulator(config: EmulatorConfig | None = None, *, request_log_max: int = 10_000)
      .app                       ASGI app (httpx.ASGITransport(app=emu.app))
      .serve(port=0, host="127.0.0.1", tls=False) -> context manager yielding base_url
      .base_url / .ca_cert       set while serving
      .track_auth / .pipelines_auth / .app_headers   credentials for the three surfaces
      .client(**kw) -> httpx.Client   sync in-process client (no sockets)
      .transport() / .async_transport()   in-process httpx transports (sync / async)
      .people() -> list[Person]
      .person(id=|email=|cio_id=|phone=) -> Person | None
      .events(person: Person | str | None = None) -> list[Event]
      .objects() -> list[Object]          .relationships() -> list[Relationship]
      .merges() -> list[Merge]            .activity_log() -> list[Activity]
      .request_log() -> list[RequestRecord]
      .stats -> Stats                     .reset()
    EmulatorConfig(...)  FaultConfig(...)  FaultRates(...)   frozen settings (config.py)
    EmulatorInspector(base_url)  the same accessors over the /_emulator/ HTTP API

Example::

    emu = Emulator()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emu.app),
                                 base_url="http://emulator", auth=emu.track_auth) as client:
        await client.post("/api/v2/entity", json={"type": "person", "action": "identify",
                          "identifiers": {"id": "42"}, "attributes": {"plan": "pro"}})
    assert emu.person(id="42").attributes == {"plan": "pro"}
"""

from __future__ import annotations

from lockgate.emulator.config import EmulatorConfig, FaultConfig, FaultRates
from lockgate.emulator.emulator import Emulator
from lockgate.emulator.inspector import EmulatorInspector
from lockgate.emulator.models import (
    Activity,
    Device,
    Event,
    Merge,
    Object,
    Person,
    Relationship,
    RequestRecord,
)
from lockgate.emulator.runtime import Stats

__all__ = [
    "Activity",
    "Device",
    "Emulator",
    "EmulatorConfig",
    "EmulatorInspector",
    "Event",
    "FaultConfig",
    "FaultRates",
    "Merge",
    "Object",
    "Person",
    "Relationship",
    "RequestRecord",
    "Stats",
]
