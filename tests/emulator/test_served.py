"""The emulator over a real loopback socket: serve(), the inspector, the pytest fixture."""

from __future__ import annotations

import httpx
import pytest

from lockgate.emulator import Emulator, EmulatorConfig, EmulatorInspector, FaultConfig


def test_served_emulator_and_inspector_agree(customerio_emulator: Emulator) -> None:
    base = customerio_emulator.base_url
    assert base is not None and base.startswith("http://127.0.0.1:")
    auth = customerio_emulator.track_auth
    r = httpx.put(f"{base}/api/v1/customers/42", json={"plan": "pro"}, auth=auth)
    assert (r.status_code, r.json()) == (200, {})
    httpx.post(f"{base}/api/v1/customers/42/events", json={"name": "paid", "id": "e1"}, auth=auth)
    with EmulatorInspector(base) as remote:
        assert remote.people() == customerio_emulator.people()
        assert remote.person(id="42").attributes == {"plan": "pro"}  # type: ignore[union-attr]
        assert remote.person(id="nobody") is None
        assert remote.events() == customerio_emulator.events()
        assert remote.stats.records_ingested == 2
        assert [r.status for r in remote.request_log()] == [200, 200]
        remote.reset()
    assert customerio_emulator.people() == []


def test_dropped_connection_over_socket() -> None:
    emu = Emulator(EmulatorConfig(faults=FaultConfig(reset=1.0)))
    with emu.serve() as base:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.put(f"{base}/api/v1/customers/1", json={}, auth=emu.track_auth)
    assert emu.people() == []
    assert emu.stats.faults_injected == {"reset": 1}


def test_tls_listener() -> None:
    emu = Emulator()
    with emu.serve(tls=True) as base:
        assert base.startswith("https://")
        r = httpx.put(
            f"{base}/api/v1/customers/1", json={}, auth=emu.track_auth, verify=str(emu.ca_cert)
        )
        assert r.status_code == 200
