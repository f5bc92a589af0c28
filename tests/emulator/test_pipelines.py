"""Pipelines: calls land in the same workspace; permissive vs strict; gzip; messageId dedupe."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import orjson
import pytest

from lockgate.emulator import Emulator


@pytest.fixture
def cdp(emu: Emulator) -> Iterator[httpx.Client]:
    with emu.client(auth=emu.pipelines_auth) as client:
        yield client


def test_identify_track_group_land_in_store(emu: Emulator, cdp: httpx.Client) -> None:
    r = cdp.post(
        "/v1/identify",
        json={
            "userId": "42",
            "traits": {"email": "a@x.co", "plan": "pro", "createdAt": "2024-01-02T03:04:05.000Z"},
        },
    )
    assert (r.status_code, r.json()) == (200, {})
    person = emu.person(id="42")
    assert person is not None and person.email == "a@x.co"
    assert person.attributes == {"plan": "pro", "created_at": 1704164645}
    cdp.post(
        "/v1/track",
        json={
            "userId": "42",
            "event": "paid",
            "properties": {"v": 1},
            "timestamp": "2024-01-02T03:04:05Z",
        },
    )
    (event,) = emu.events(person)
    assert (event.name, event.timestamp, event.data["v"]) == ("paid", 1704164645, 1)
    cdp.post(
        "/v1/group",
        json={
            "userId": "42",
            "groupId": "acme",
            "traits": {"name": "Acme", "relationshipAttributes": {"role": "admin"}},
        },
    )
    assert [(o.object_id, o.attributes) for o in emu.objects()] == [("acme", {"name": "Acme"})]
    assert emu.relationships()[0].attributes == {"role": "admin"}


def test_gzip_batch_and_message_id_dedupe(emu: Emulator, cdp: httpx.Client) -> None:
    call = {"type": "track", "userId": "1", "event": "x", "messageId": "m-1"}
    body = gzip.compress(orjson.dumps({"batch": [call, call], "sentAt": "2024-01-01T00:00:00Z"}))
    r = cdp.post("/v1/batch", content=body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200
    assert len(emu.events()) == 1 and emu.stats.duplicate_messages_dropped == 1


def test_permissive_drops_strict_rejects(emu: Emulator, cdp: httpx.Client) -> None:
    assert cdp.post("/v1/track", json={"event": "no user"}).status_code == 200
    assert emu.events() == [] and emu.activity_log()[-1].kind == "pipelines dropped"
    r = cdp.post("/v1/track", json={"event": "no user"}, headers={"X-Strict-Mode": "1"})
    assert r.status_code == 400 and "userId" in r.json()["message"]
    big = {"userId": "1", "traits": {f"k{i}": "v" * 900 for i in range(40)}}
    assert cdp.post("/v1/identify", json=big, headers={"X-Strict-Mode": "1"}).status_code == 400


def test_write_key_401_only_in_strict_mode(emu: Emulator) -> None:
    with emu.client(auth=("wrong", "")) as client:
        assert client.post("/v1/identify", json={"userId": "1"}).status_code == 200
        strict = client.post("/v1/identify", json={"userId": "1"}, headers={"X-Strict-Mode": "1"})
        assert strict.status_code == 401
    assert emu.people() == []


def test_semantic_events_and_alias(emu: Emulator, cdp: httpx.Client) -> None:
    cdp.post("/v1/track", json={"anonymousId": "anon", "event": "viewed"})
    cdp.post("/v1/identify", json={"userId": "1", "traits": {}})
    cdp.post("/v1/alias", json={"previousId": "anon", "userId": "1"})
    assert [e.name for e in emu.events(emu.person(id="1"))] == ["viewed"]
    cdp.post(
        "/v1/track",
        json={
            "userId": "1",
            "event": "Device Created or Updated",
            "context": {"device": {"token": "tok", "type": "android"}},
        },
    )
    assert emu.person(id="1").devices[0].platform == "android"  # type: ignore[union-attr]
    cdp.post("/v1/track", json={"userId": "1", "event": "User Deleted"})
    assert emu.people() == []
