"""Fixtures for the emulator's own tests: an in-process emulator and clients per surface."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from lockgate.emulator import Emulator

from . import spec


@pytest.fixture
def off_spec_ok() -> list[bool]:
    """Request this fixture in a test that sends payloads the emulator accepts on purpose
    although the official spec does not (see docs/emulator.md, "Known differences")."""
    return [True]


@pytest.fixture
def emu(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    """An in-process emulator. At teardown, every request it accepted (200) on Track v1/v2, and on
    Pipelines when nothing was dropped, is validated against the official OpenAPI spec."""
    emulator = Emulator()
    yield emulator
    if "off_spec_ok" in request.fixturenames or not spec.available():
        return
    dropped = any(a.kind.startswith("pipelines") for a in emulator.activity_log())
    problems = []
    for record in emulator.request_log():
        target = spec_target(record.route, record.method)
        if record.status != 200 or target is None or (target[0] == PIPELINES and dropped):
            continue
        body = record.body
        if target[0] == PIPELINES and target[1] != "/batch" and isinstance(body, dict):
            body = {"type": target[1][1:], **body}  # workaround: type-required
        for message in spec.errors(*target, body):
            problems.append(f"{record.method} {record.path}: {message}")
    assert problems == [], "accepted requests that the official spec rejects"


TRACK, PIPELINES = "journeys-track.json", "pipelines.json"


def spec_target(route: str, method: str) -> tuple[str, str, str] | None:
    """The (spec file, spec path, method) that documents this emulator route's request body."""
    method = method.lower()
    if route.startswith("/api/"):
        doc, _ = spec.load(TRACK)
        op = doc["paths"].get(route, {}).get(method)
        return (TRACK, route, method) if op and "requestBody" in op else None
    if route.startswith("/v1/") and route.count("/") == 2:
        path = route[3:]
        doc, _ = spec.load(PIPELINES)
        return (PIPELINES, path, method) if path in doc["paths"] else None
    return None


@pytest.fixture
def track(emu: Emulator) -> Iterator[httpx.Client]:
    """Track v1/v2 client, in-process, with the right Basic credentials."""
    with emu.client(auth=emu.track_auth) as client:
        yield client


def person_op(action: str, ident: dict[str, str] | None = None, **fields: object) -> dict:
    op: dict[str, object] = {"type": "person", "action": action, **fields}
    if ident is not None:
        op["identifiers"] = ident
    return op
