"""Faults and rate limits: 429 + Retry-After, seeded repeatability, never a partial apply."""

from __future__ import annotations

import httpx
import pytest

from lockgate.emulator import Emulator, EmulatorConfig, FaultConfig, FaultRates
from lockgate.errors import ConfigError


def _outcomes(emu: Emulator, n: int) -> list[str]:
    out = []
    with emu.client(auth=emu.track_auth) as client:
        for i in range(n):
            try:
                out.append(str(client.put(f"/api/v1/customers/{i}", json={}).status_code))
            except httpx.TransportError as exc:
                out.append(type(exc).__name__)
    return out


def test_rate_limit_answers_429_with_retry_after() -> None:
    emu = Emulator(EmulatorConfig(track_rate_limit=5))
    statuses = _outcomes(emu, 8)
    assert statuses[:5] == ["200"] * 5 and "429" in statuses[5:]
    with emu.client(auth=emu.track_auth) as client:
        r = client.put("/api/v1/customers/x", json={})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert emu.stats.responses_429 >= 1 and len(emu.people()) == 5


def test_seeded_faults_repeat() -> None:
    faults = FaultConfig(error_5xx=0.2, error_429=0.2, timeout=0.1, reset=0.1, seed=42)
    cfg = EmulatorConfig(faults=faults)
    first = _outcomes(Emulator(cfg), 40)
    second = _outcomes(Emulator(cfg), 40)
    assert first == second
    assert {"200", "503", "429", "ReadTimeout", "RemoteProtocolError"} <= set(first)


def test_faulted_requests_apply_nothing() -> None:
    emu = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=0.5, reset=0.3, seed=1)))
    outcomes = _outcomes(emu, 30)
    applied = sorted(int(p.id or -1) for p in emu.people())
    assert applied == [i for i, o in enumerate(outcomes) if o == "200"]


def test_applied_then_failed_applies_everything() -> None:
    emu = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=1.0, applied_then_failed=True)))
    assert _outcomes(emu, 3) == ["503"] * 3
    assert len(emu.people()) == 3


@pytest.mark.parametrize("surface", ["track_v2", "app", "/api/v2/batch"])
def test_per_surface_override(surface: str) -> None:
    faults = FaultConfig(overrides={surface: FaultRates(error_5xx=1.0)})
    emu = Emulator(EmulatorConfig(faults=faults))
    assert _outcomes(emu, 2) == ["200", "200"]  # v1 unaffected


def test_per_route_override_hits_only_that_route() -> None:
    faults = FaultConfig(
        overrides={"/api/v1/customers/{identifier}/events": FaultRates(error_5xx=1.0)}
    )
    emu = Emulator(EmulatorConfig(faults=faults))
    with emu.client(auth=emu.track_auth) as client:
        assert client.put("/api/v1/customers/1", json={}).status_code == 200
        assert client.post("/api/v1/customers/1/events", json={"name": "x"}).status_code == 503
    assert emu.events() == [] and emu.stats.faults_injected == {"5xx": 1}


def test_fault_fractions_are_checked() -> None:
    with pytest.raises(ConfigError, match="not fractions"):
        FaultConfig(error_5xx=0.7, reset=0.6)


def test_rejected_people_get_a_207_entry_like_a_real_error_and_nothing_applied() -> None:
    emu = Emulator(EmulatorConfig(faults=FaultConfig(reject_people=frozenset({"2", "b@x.io"}))))
    ops = [
        {"type": "person", "action": "identify", "identifiers": {"id": str(i)}, "attributes": {}}
        for i in range(4)
    ]
    ops.append(
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"email": "b@x.io"},
            "attributes": {},
        }
    )
    # a real per-item error in the same batch, to compare the shape with
    ops.append({"type": "person", "action": "identify", "identifiers": {}, "attributes": {}})
    with emu.client(auth=emu.track_auth) as client:
        r = client.post("/api/v2/batch", json={"batch": ops})
        one = client.post("/api/v2/entity", json=ops[2])
    assert r.status_code == 207
    errors = r.json()["errors"]
    assert [e["batch_index"] for e in errors] == [2, 4, 5]
    assert all(set(e) == {"batch_index", "reason", "field", "message"} for e in errors)
    assert errors[0]["field"] == "identifiers.id" and "reject_people" in errors[0]["message"]
    assert one.status_code == 400 and "reject_people" in one.json()["errors"][0]["message"]
    assert sorted(p.id or "" for p in emu.people()) == ["0", "1", "3"]


def test_reject_people_must_be_identifiers_not_one_text() -> None:
    with pytest.raises(ConfigError, match="not a set"):
        FaultConfig(reject_people="42")  # type: ignore[arg-type]


def test_injected_faults_answer_in_each_surface_s_error_shape() -> None:
    """A client parses one error shape per API: faults must not bring a second one."""
    emu = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=1.0)))
    with emu.client(headers=emu.app_headers) as app:
        r = app.get("/v1/workspaces")
    assert (r.status_code, r.json()) == (
        503,
        {"errors": [{"detail": "emulator fault: service unavailable", "status": "503"}]},
    )
    with emu.client(auth=emu.pipelines_auth) as cdp:
        r = cdp.post("/v1/identify", json={"userId": "1"}, headers={"X-Strict-Mode": "1"})
    assert r.json() == {"code": 503, "message": "emulator fault: service unavailable"}
    with emu.client(auth=emu.track_auth) as track:
        r = track.put("/api/v1/customers/1", json={})
    assert r.json() == {"meta": {"error": "emulator fault: service unavailable"}}
