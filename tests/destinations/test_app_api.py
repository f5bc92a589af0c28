"""App API read-back against the emulator: what the engine reconciles with."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from lockgate.destinations import Record
from lockgate.destinations.customerio import AppAPIClient, CustomerIOClient, CustomerIOSettings
from lockgate.emulator import Emulator, EmulatorConfig
from lockgate.errors import ConfigError, DestinationAuthError


def settings_for(emu: Emulator, **overrides: Any) -> CustomerIOSettings:
    site_id, api_key = emu.track_auth
    values: dict[str, Any] = {
        "site_id": site_id,
        "api_key": api_key,
        "track_url": "http://emulator",
        "app_url": "http://emulator",
        "app_api_key": emu.config.app_api_key,
        "app_rate_limit": 1000.0,
        "backoff_base": 0.01,
    }
    values.update(overrides)
    return CustomerIOSettings(**values)


def seeded(n: int, config: EmulatorConfig | None = None) -> Emulator:
    emu = Emulator(config)
    records = [
        Record(
            f"u{i}",
            {
                "type": "person",
                "action": "identify",
                "identifiers": {"id": f"u{i}"},
                "attributes": {"email": f"u{i}@example.com", "plan": "pro" if i % 3 else "free"},
            },
        )
        for i in range(n)
    ]
    records.append(
        Record(
            "acme",
            {
                "type": "object",
                "action": "identify",
                "identifiers": {"object_type_id": "1", "object_id": "acme"},
                "attributes": {"name": "Acme"},
                "cio_relationships": [
                    {"identifiers": {"id": "u1"}, "relationship_attributes": {"role": "admin"}}
                ],
            },
        )
    )
    CustomerIOClient(settings_for(emu), transport=emu.async_transport()).deliver_all(records)
    return emu


def run(emu: Emulator, settings: CustomerIOSettings, body: Any) -> Any:
    async def go() -> Any:
        async with AppAPIClient(settings, transport=emu.async_transport()) as app:
            return await body(app)

    return asyncio.run(go())


def test_reads_back_what_was_delivered_with_values_as_strings() -> None:
    emu = seeded(5)

    async def body(app: AppAPIClient) -> Any:
        return (
            await app.get_person_attributes("u2"),
            await app.get_person_attributes("nobody"),
            await app.find_people_by_email("u4@example.com"),
            await app.get_object_attributes(1, "acme"),
            await app.get_object_attributes(1, "nope"),
            await app.get_person_relationships("u1"),
        )

    person, missing, by_email, company, no_company, relations = run(emu, settings_for(emu), body)
    assert person["identifiers"]["id"] == "u2"
    assert person["attributes"]["plan"] == "pro"
    assert missing is None and no_company is None
    assert [p["id"] for p in by_email] == ["u4"]
    assert company["attributes"] == {"name": "Acme"}
    assert relations[0]["identifiers"]["object_id"] == "acme"


def test_bulk_lookup_goes_in_chunks_of_100_and_leaves_unknown_ids_out() -> None:
    emu = seeded(230)
    wanted = [f"u{i}" for i in range(230)] + ["ghost"]

    async def body(app: AppAPIClient) -> Any:
        people = await app.get_people_attributes(wanted)
        return people, app.requests

    people, requests = run(emu, settings_for(emu), body)
    assert sorted(p["identifiers"]["id"] for p in people) == sorted(wanted[:-1])
    assert requests == 3


def test_search_follows_pages_to_the_end() -> None:
    emu = seeded(30)
    pro = {"attribute": {"field": "plan", "operator": "eq", "value": "pro"}}

    async def body(app: AppAPIClient) -> Any:
        found = [who async for who in app.search_people(pro, page_size=7)]
        return found, app.requests

    found, requests = run(emu, settings_for(emu), body)
    assert sorted(w["id"] for w in found) == sorted(f"u{i}" for i in range(30) if i % 3)
    assert requests >= 3


def test_429_above_the_app_limit_is_retried_after_retry_after() -> None:
    emu = seeded(3, EmulatorConfig(app_rate_limit=3.0))

    async def body(app: AppAPIClient) -> Any:
        people = [await app.get_person_attributes(f"u{i % 3}") for i in range(8)]
        return people, app.throttled

    people, throttled = run(emu, settings_for(emu), body)
    assert all(p is not None for p in people)
    assert throttled >= 1


def test_a_wrong_app_key_is_a_terminal_error_with_a_hint() -> None:
    emu = seeded(1)

    async def body(app: AppAPIClient) -> Any:
        return await app.get_person_attributes("u0")

    with pytest.raises(DestinationAuthError, match="CUSTOMERIO_APP_API_KEY"):
        run(emu, settings_for(emu, app_api_key="wrong"), body)
    with pytest.raises(ConfigError, match="CUSTOMERIO_APP_API_KEY"):
        AppAPIClient(settings_for(emu, app_api_key=""))


def test_a_503_with_retry_after_is_waited_out_before_reading_again() -> None:
    """An App API answering 503 `Retry-After: 30` (the emulator never does; a tiny ASGI app
    stands in) was retried on the short backoff until the retries ran out, failing the
    read-back; its wait is honoured, as a 429's is."""
    now = [500.0]
    waits: list[float] = []
    calls: list[str] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        if now[0] < 530.0:
            status, headers, body = 503, [(b"retry-after", b"30")], b'{"errors":[]}'
        else:
            status, headers, body = 200, [], b'{"customer":{"id":"u0","attributes":{}}}'
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    settings = CustomerIOSettings(
        site_id="s",
        api_key="k",
        app_url="http://app",
        app_api_key="key",
        app_rate_limit=1000.0,
        max_retries=3,
    )

    async def go() -> Any:
        async with AppAPIClient(
            settings, transport=httpx.ASGITransport(app), clock=lambda: now[0], sleep=sleep
        ) as client:
            return await client.get_person_attributes("u0")

    assert asyncio.run(go()) == {"id": "u0", "attributes": {}}
    assert len(calls) == 2 and [w for w in waits if w >= 1] == [30.0]
