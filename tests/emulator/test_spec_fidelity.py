"""Fidelity shown, not claimed: the official OpenAPI examples are accepted by the emulator, and
every request the emulator accepted in these tests is valid under the official spec."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from lockgate.emulator import Emulator

from . import spec

TRACK = "journeys-track.json"
PIPELINES = "pipelines.json"
pytestmark = pytest.mark.skipif(
    not spec.available(), reason=f"Customer.io OpenAPI files not found in {spec.SPECS}"
)
EXAMPLES = (
    [(TRACK, *e) for e in spec.request_examples(TRACK)]
    + [(PIPELINES, *e) for e in spec.request_examples(PIPELINES)]
    if spec.available()
    else []
)


def test_spec_has_examples_for_every_surface() -> None:
    paths = {path for _, path, _, _ in EXAMPLES}
    assert {"/api/v2/entity", "/api/v2/batch", "/api/v1/customers/{identifier}"} <= paths
    assert {"/identify", "/track", "/group"} <= paths


@pytest.mark.parametrize(
    ("name", "path", "method", "body"),
    EXAMPLES,
    ids=[f"{method.upper()} {path} #{i}" for i, (_, path, method, _) in enumerate(EXAMPLES)],
)
def test_official_example_is_accepted(
    emu: Emulator, name: str, path: str, method: str, body: dict[str, Any]
) -> None:
    assert spec.errors(name, path, method, body) == []  # valid after the listed workarounds
    url = path.replace("{identifier}", "spec-person").replace("{segment_id}", "7")
    if name == PIPELINES:
        url = "/v1" + url
        auth = emu.pipelines_auth
        headers = {"X-Strict-Mode": "1"}
    else:
        auth, headers = emu.track_auth, {}
    with emu.client(auth=auth, headers=headers) as client:
        r = client.request(method.upper(), url, json=body)
    assert (r.status_code, r.json()) == (200, {}), r.text
    assert not [a for a in emu.activity_log() if a.kind == "pipelines dropped"]


def test_example_batch_of_every_v2_operation_is_accepted(emu: Emulator) -> None:
    ops = [b for n, p, _, b in EXAMPLES if p == "/api/v2/entity"]
    with emu.client(auth=emu.track_auth) as client:
        r = client.post("/api/v2/batch", json={"batch": ops})
    assert (r.status_code, r.json()) == (200, {})
    assert spec.errors(TRACK, "/api/v2/batch", "post", {"batch": ops}) == []


def test_documented_error_body_shapes(emu: Emulator) -> None:
    with emu.client(auth=emu.track_auth) as client:
        v1 = client.post("/api/v1/customers/1/events", json={"name": ""}).json()
        v2 = client.post("/api/v2/batch", json={"batch": [{"type": "person"}]}).json()
    assert v1 == {
        "meta": {
            "error": "event name must not be blank",
            "errors": ["event name must not be blank"],
        }
    }
    assert set(v2["errors"][0]) == {"batch_index", "reason", "field", "message"}
    assert isinstance(httpx.Response(200).status_code, int)
