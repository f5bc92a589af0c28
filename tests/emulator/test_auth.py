"""Credentials: 401 on wrong keys; both base64 alphabets; Pipelines strict vs permissive."""

from __future__ import annotations

import base64

from lockgate.emulator import Emulator, EmulatorConfig


def test_wrong_track_key_is_401(emu: Emulator) -> None:
    with emu.client(auth=(emu.config.site_id, "wrong")) as client:
        r = client.put("/api/v1/customers/1", json={})
        assert r.status_code == 401
        assert client.post("/api/v2/entity", json={}).status_code == 401
    with emu.client() as client:
        assert client.put("/api/v1/customers/1", json={}).status_code == 401
    assert emu.people() == []


def test_url_safe_base64_is_accepted() -> None:
    # "?>?" encodes to "Pz4/" in standard base64 and "Pz4_" in the URL-safe alphabet
    emu = Emulator(EmulatorConfig(site_id="s", api_key="?>?"))
    token = base64.urlsafe_b64encode(b"s:?>?").decode()
    assert "_" in token
    with emu.client(headers={"Authorization": f"Basic {token}"}) as client:
        assert client.put("/api/v1/customers/1", json={}).status_code == 200


def test_inspection_api_needs_no_auth(emu: Emulator) -> None:
    with emu.client() as client:
        assert client.get("/_emulator/people").json() == {"people": []}
