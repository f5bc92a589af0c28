"""Track v1: documented error texts, identify rules, anonymous events, merges, devices."""

from __future__ import annotations

import time

import httpx
import pytest

from lockgate.emulator import Emulator, EmulatorConfig


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/v1/customers/1", {"id": 5}, "id attribute must be a string value"),
        ("/api/v1/customers/1", {"id": ""}, "id attribute cannot be an empty string"),
        ("/api/v1/customers/%20", {}, "id attribute must be present"),
        (
            "/api/v1/customers/1",
            {f"a{i}": 1 for i in range(301)},
            "cannot identify more than 300 attributes in one request",
        ),
        ("/api/v1/customers/1", {"n" * 151: 1}, "attribute name cannot be longer than 150 bytes"),
        (
            "/api/v1/customers/1",
            {"bio": "x" * 1001},
            "value for attribute 'bio' cannot be longer than 1000 bytes",
        ),
        ("/api/v1/customers/1/events", {"name": " "}, "event name must not be blank"),
        (
            "/api/v1/customers/1/events",
            {"name": "x" * 101},
            "event name cannot be longer than 100 bytes",
        ),
        ("/api/v1/customers/1/events", {"name": "x", "data": ""}, "event data must be a hash"),
        (
            "/api/v1/customers/1/events",
            {"name": "x", "data": {"b": "y" * 100_001}},
            "event data cannot be longer than 100000 bytes",
        ),
        ("/api/v1/events", {"name": ""}, "event name must not be blank"),
    ],
)
def test_documented_error_texts(
    emu: Emulator, track: httpx.Client, path: str, body: dict, message: str
) -> None:
    method = "PUT" if path.count("/") == 4 else "POST"
    r = track.request(method, path, json=body)
    assert r.status_code == 400
    assert r.json() == {"meta": {"error": message, "errors": [message]}}
    assert emu.people() == [] and emu.events() == []


def test_identify_by_path_id_and_email(emu: Emulator, track: httpx.Client) -> None:
    assert track.put("/api/v1/customers/42", json={"email": "Ann@x.co", "plan": "pro"}).json() == {}
    track.put("/api/v1/customers/ann%40x.co", json={"city": "Oslo"})
    (person,) = emu.people()
    assert (person.id, person.email) == ("42", "Ann@x.co")
    assert person.attributes == {"plan": "pro", "city": "Oslo"}
    track.put(f"/api/v1/customers/cio_{person.cio_id}", json={"id": "43"})
    assert emu.person(id="43") is not None and emu.person(id="42") is None


def test_id_is_case_sensitive(emu: Emulator, track: httpx.Client) -> None:
    track.put("/api/v1/customers/abc", json={})
    track.put("/api/v1/customers/ABC", json={})
    assert sorted(p.id or "" for p in emu.people()) == ["ABC", "abc"]


def test_ms_timestamp_rejected(track: httpx.Client) -> None:
    r = track.post("/api/v1/customers/1/events", json={"name": "x", "timestamp": 1_700_000_000_123})
    assert r.status_code == 400 and "milliseconds" in r.json()["meta"]["error"]


def test_anonymous_events_attach_on_identify(emu: Emulator, track: httpx.Client) -> None:
    now = int(time.time())
    track.post(
        "/api/v1/events", json={"name": "viewed", "anonymous_id": "anon-1", "timestamp": now}
    )
    old = now - 40 * 86400
    track.post("/api/v1/events", json={"name": "old", "anonymous_id": "anon-1", "timestamp": old})
    track.put("/api/v1/customers/7", json={"anonymous_id": "anon-1"})
    person = emu.person(id="7")
    assert [e.name for e in emu.events(person)] == ["viewed"]  # 30-day window


def test_delete_accepts_json_body_and_is_idempotent(emu: Emulator, track: httpx.Client) -> None:
    track.put("/api/v1/customers/1", json={})
    for _ in range(2):
        assert track.request("DELETE", "/api/v1/customers/1", json={}).status_code == 200
    assert emu.people() == []


def test_merge_customers(emu: Emulator, track: httpx.Client) -> None:
    track.put("/api/v1/customers/p", json={})
    track.put("/api/v1/customers/s", json={"email": "s@x.co"})
    r = track.post(
        "/api/v1/merge_customers",
        json={"primary": {"id": "p", "email": "p@x.co"}, "secondary": {"id": "s"}},
    )
    assert r.status_code == 400 and "exactly one" in r.json()["meta"]["error"]
    r = track.post(
        "/api/v1/merge_customers", json={"primary": {"id": "p"}, "secondary": {"email": "S@x.co"}}
    )
    assert r.status_code == 200
    assert [p.id for p in emu.people()] == ["p"]


def test_devices_suppress_region(emu: Emulator, track: httpx.Client) -> None:
    r = track.put(
        "/api/v1/customers/1/devices",
        json={"device": {"id": "tok", "platform": "android", "last_used": 1_700_000_000}},
    )
    assert r.status_code == 200
    assert emu.person(id="1").devices[0].platform == "android"  # type: ignore[union-attr]
    assert track.request("DELETE", "/api/v1/customers/1/devices/tok", json={}).status_code == 200
    assert track.post("/api/v1/customers/1/suppress", json={}).status_code == 200
    assert emu.people() == []
    assert track.get("/api/v1/accounts/region").json()["region"] == "us"


def test_v1_relationships_object_shape(emu: Emulator, track: httpx.Client) -> None:
    rel = {
        "action": "add_relationships",
        "relationships": [
            {
                "identifiers": {"object_type_id": "1", "object_id": "acme"},
                "relationship_attributes": {"role": "owner"},
            }
        ],
    }
    assert track.put("/api/v1/customers/1", json={"cio_relationships": rel}).status_code == 200
    (r,) = emu.relationships()
    assert (r.object_id, r.attributes) == ("acme", {"role": "owner"})
    assert track.put("/api/v1/customers/1", json={"cio_relationships": []}).status_code == 400


def test_subscription_preferences_unsubscribed_and_timestamp_order(
    emu: Emulator, track: httpx.Client, off_spec_ok: list[bool]
) -> None:
    # off spec on purpose: the spec types `unsubscribed` as boolean, the docs accept "true"
    track.put(
        "/api/v1/customers/1",
        json={
            "cio_subscription_preferences.topics.topic_3": True,
            "unsubscribed": "TRUE",
            "plan": "new",
            "_timestamp": 200,
        },
    )
    track.put("/api/v1/customers/1", json={"plan": "stale", "_timestamp": 100})
    person = emu.person(id="1")
    assert person is not None and person.unsubscribed is True
    assert person.attributes["cio_subscription_preferences"] == {"topics": {"topic_3": True}}
    assert person.attributes["plan"] == "new"  # the older update lost


def test_id_only_workspace_treats_email_shaped_path_as_id() -> None:
    emu = Emulator(EmulatorConfig(workspace_mode="id"))
    with emu.client(auth=emu.track_auth) as client:
        client.put("/api/v1/customers/a@x.co", json={"email": "a@x.co"})
    (person,) = emu.people()
    assert (person.id, person.email) == ("a@x.co", "a@x.co")
    assert emu.person(email="a@x.co") is None  # not an identifier in a classic workspace


def test_manual_segments_and_app_membership(emu: Emulator, track: httpx.Client) -> None:
    for i in range(3):
        track.put(f"/api/v1/customers/{i}", json={})
    assert (
        track.post("/api/v1/segments/7/add_customers", json={"ids": ["0", "1", "x"]}).json() == {}
    )
    track.post("/api/v1/segments/7/remove_customers", json={"ids": ["1"]})
    assert track.post("/api/v1/segments/7/add_customers", json={"ids": []}).status_code == 400
    with emu.client(headers=emu.app_headers) as app:
        assert app.get("/v1/segments/7/customer_count").json() == {"segment_id": 7, "count": 1}
        assert app.get("/v1/segments/7/membership").json()["ids"] == ["0"]
        found = app.post("/v1/customers", json={"filter": {"segment": {"id": 7}}}).json()
    assert found["ids"] == ["0"]


def test_negative_timestamp_is_refused_without_a_milliseconds_hint(track: httpx.Client) -> None:
    r = track.post("/api/v1/customers/1/events", json={"name": "x", "timestamp": -5})
    assert r.status_code == 400
    assert r.json()["meta"]["error"] == (
        "timestamp `-5` is before 1970: unix seconds are not negative"
    )
