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


def test_iso_dates_in_traits_become_unix_seconds_as_segment_reads_them(
    emu: Emulator, cdp: httpx.Client
) -> None:
    """Date-only and zone-less ISO strings are dates too (zone-less read as UTC); a string that
    only looks like a date stays a string."""
    traits = {
        "signup_date": "2024-01-02",
        "local_ts": "2024-01-02T03:04:05",
        "utc_ts": "2024-01-02T03:04:05.123+00:00",
        "not_a_date": "2024-13-45",
    }
    r = cdp.post("/v1/identify", json={"userId": "u1", "traits": traits})
    assert r.status_code == 200
    assert emu.person(id="u1").attributes == {  # type: ignore[union-attr]
        "signup_date": 1704153600,
        "local_ts": 1704164645,
        "utc_ts": 1704164645,
        "not_a_date": "2024-13-45",
    }


def test_a_numeric_timestamp_is_refused_strict_and_dropped_permissive(
    emu: Emulator, cdp: httpx.Client
) -> None:
    """Pipelines timestamps are ISO-8601 strings: milliseconds must not become an event time."""
    call = {"userId": "u1", "event": "paid", "timestamp": 1_700_000_000_000}
    r = cdp.post("/v1/track", json=call, headers={"X-Strict-Mode": "1"})
    assert r.status_code == 400
    assert r.json()["message"] == (
        'timestamp must be an ISO-8601 string like "2024-01-02T03:04:05Z", got `1700000000000`'
    )
    assert cdp.post("/v1/track", json=call).status_code == 200
    assert emu.events() == []
    assert emu.activity_log()[-1].kind == "pipelines dropped"


def test_ids_track_would_refuse_do_not_land(emu: Emulator, cdp: httpx.Client) -> None:
    """A userId becomes a person id and a groupId an object_id: both at most 150 bytes."""
    strict = {"X-Strict-Mode": "1"}
    r = cdp.post("/v1/identify", json={"userId": "u" * 151, "traits": {"a": 1}}, headers=strict)
    assert (r.status_code, r.json()["message"]) == (
        400,
        "userId is 151 bytes; a person id is at most 150",
    )
    group = {"userId": "u1", "groupId": "g" * 151, "traits": {"name": "Acme"}}
    r = cdp.post("/v1/group", json=group, headers=strict)
    assert r.status_code == 400 and "groupId is 151 bytes" in r.json()["message"]
    assert cdp.post("/v1/identify", json={"userId": "u" * 151}).status_code == 200
    assert emu.people() == [] and emu.objects() == []
    assert cdp.post("/v1/identify", json={"userId": "u" * 150}).status_code == 200
    assert [p.id for p in emu.people()] == ["u" * 150]
