"""App API read-back: what a reconciliation job sees after Track writes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from lockgate.emulator import Emulator, EmulatorConfig

from .conftest import person_op


@pytest.fixture
def app(emu: Emulator) -> Iterator[httpx.Client]:
    with emu.client(headers=emu.app_headers) as client:
        yield client


def _seed(track: httpx.Client) -> None:
    acme = {"object_type_id": "1", "object_id": "acme"}
    ops = [
        person_op(
            "identify",
            {"id": "1"},
            attributes={"email": "a@x.co", "plan": "pro", "n": 3, "vip": True, "tags": ["a"]},
        ),
        person_op("identify", {"id": "2"}, attributes={"email": "b@x.co", "plan": "free"}),
        person_op("identify", {"id": "3"}, attributes={"plan": "pro"}),
        person_op("event", {"id": "1"}, name="paid", id="e1"),
        person_op("add_relationships", {"id": "1"}, cio_relationships=[{"identifiers": acme}]),
        {"type": "object", "action": "identify", "identifiers": acme, "attributes": {"seats": 10}},
    ]
    assert track.post("/api/v2/batch", json={"batch": ops}).status_code == 200


def test_attributes_are_strings(track: httpx.Client, app: httpx.Client) -> None:
    _seed(track)
    r = app.get("/v1/customers/1/attributes")
    customer = r.json()["customer"]
    assert customer["identifiers"]["email"] == "a@x.co"
    attrs = customer["attributes"]
    assert (attrs["plan"], attrs["n"], attrs["vip"], attrs["tags"]) == ("pro", "3", "true", '["a"]')
    cio = customer["identifiers"]["cio_id"]
    assert app.get(f"/v1/customers/cio_{cio}/attributes?id_type=cio_id").status_code == 200
    assert app.get("/v1/customers/a@x.co/attributes?id_type=email").status_code == 200
    assert app.get("/v1/customers/404/attributes").status_code == 404


def test_lookup_by_email_and_bulk(track: httpx.Client, app: httpx.Client) -> None:
    _seed(track)
    assert [
        r["id"] for r in app.get("/v1/customers", params={"email": "A@x.co"}).json()["results"]
    ] == ["1"]
    r = app.post("/v1/customers/attributes", json={"ids": ["1", "nobody", "3"]})
    assert [c["customer"]["id"] for c in r.json()["customers"]] == ["1", "3"]
    assert (
        app.post("/v1/customers/attributes", json={"ids": [str(i) for i in range(101)]}).status_code
        == 400
    )


def test_bulk_lookup_wraps_each_person_as_the_official_spec_does(
    track: httpx.Client, app: httpx.Client
) -> None:
    """`POST /v1/customers/attributes` answers `{"customers": [{"customer": {...}}]}`: each
    item is the single lookup's answer, wrapper included (official App API spec,
    operation getPeopleById, and its example). The emulator sent the bare objects, so a
    client reading `customers[].identifiers` passed here and found nobody in Customer.io."""
    _seed(track)
    single = app.get("/v1/customers/1/attributes").json()
    bulk = app.post("/v1/customers/attributes", json={"ids": ["1"]}).json()
    assert bulk == {"customers": [single]}
    assert set(bulk["customers"][0]) == {"customer"}


def test_search_with_filter_and_pagination(track: httpx.Client, app: httpx.Client) -> None:
    _seed(track)
    pro = {
        "filter": {
            "and": [
                {"attribute": {"field": "plan", "operator": "eq", "value": "pro"}},
                {"not": {"attribute": {"field": "email", "operator": "exists"}}},
            ]
        }
    }
    assert app.post("/v1/customers", json=pro).json()["ids"] == ["3"]
    everyone = {"filter": {"attribute": {"field": "plan", "operator": "exists"}}}
    first = app.post("/v1/customers?limit=2", json=everyone).json()
    second = app.post(f"/v1/customers?limit=2&start={first['next']}", json=everyone).json()
    assert first["ids"] + second["ids"] == ["1", "2", "3"] and second["next"] == ""
    bad = {"filter": {"attribute": {"field": "plan", "operator": "gt", "value": "1"}}}
    assert app.post("/v1/customers", json=bad).status_code == 400


def test_search_by_emails_names_each_holder_leads_included(
    track: httpx.Client, app: httpx.Client
) -> None:
    """An `or` of `email eq` conditions finds the holders of many emails in one request; a
    lead known by email alone has a null `id` (an empty string in `ids`)."""
    _seed(track)
    lead = person_op("identify", {"email": "lead@x.co"}, attributes={"plan": "trial"})
    assert track.post("/api/v2/batch", json={"batch": [lead]}).status_code == 200
    emails = ["a@x.co", "lead@x.co", "nobody@x.co"]
    body = {
        "filter": {
            "or": [{"attribute": {"field": "email", "operator": "eq", "value": e}} for e in emails]
        }
    }
    found = app.post("/v1/customers", json=body).json()
    assert [(w["id"], w["email"]) for w in found["identifiers"]] == [
        ("1", "a@x.co"),
        (None, "lead@x.co"),
    ]
    assert all(w["cio_id"] for w in found["identifiers"])
    assert (found["ids"], found["next"]) == (["1", ""], "")
    no_value = {"filter": {"or": [{"attribute": {"field": "email", "operator": "eq"}}]}}
    answer = app.post("/v1/customers", json=no_value)
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["detail"] == (
        "`value` (a string) is required for operator eq"
    )
    assert app.post("/v1/customers?limit=1001", json=body).status_code == 400


def test_activities_relationships_objects(track: httpx.Client, app: httpx.Client) -> None:
    _seed(track)
    assert [a["name"] for a in app.get("/v1/customers/1/activities").json()["activities"]] == [
        "paid"
    ]
    rels = app.get("/v1/customers/1/relationships").json()["cio_relationships"]
    assert rels[0]["identifiers"] == {"object_type_id": "1", "object_id": "acme"}
    obj = app.get("/v1/objects/1/acme/attributes").json()["object"]
    assert obj["attributes"] == {"seats": "10"}
    people = app.get("/v1/objects/1/acme/relationships").json()["cio_relationships"]
    assert [p["identifiers"]["id"] for p in people] == ["1"]
    assert app.get("/v1/object_types").json()["types"][0]["name"] == "Companies"
    assert app.get("/v1/workspaces").json()["workspaces"][0]["people"] == 3


def test_app_api_needs_bearer(emu: Emulator) -> None:
    with emu.client(headers={"Authorization": "Bearer nope"}) as client:
        assert client.get("/v1/customers/1/attributes").status_code == 401


def test_app_rate_limit_is_ten_per_second() -> None:
    emu = Emulator(EmulatorConfig())
    with emu.client(headers=emu.app_headers) as app:
        answers = [app.get("/v1/workspaces") for _ in range(12)]
    statuses = [r.status_code for r in answers]
    assert statuses[:10] == [200] * 10 and 429 in statuses[10:]
    # the App API's error shape, as its 401 and 404 answers: one shape for a client to read
    limited = answers[statuses.index(429)]
    assert limited.json() == {
        "errors": [{"detail": "Your request is over the 10-per-second limit", "status": "429"}]
    }
    assert limited.headers["Retry-After"] == "1"


def test_activities_filter_by_type_and_name_and_page(
    track: httpx.Client, app: httpx.Client
) -> None:
    # the official App API spec (getPersonActivities): `type`, `name` filter; `limit` is 10
    # unless given, at most 100; `next` is the `start` of the next page, "" after the last
    ops = [person_op("identify", {"id": "1"}, attributes={"plan": "pro"})]
    ops += [person_op("event", {"id": "1"}, name=f"e{i % 2}", id=f"x{i}") for i in range(13)]
    assert track.post("/api/v2/batch", json={"batch": ops}).status_code == 200
    everything = app.get("/v1/customers/1/activities").json()
    assert len(everything["activities"]) == 10 and everything["next"]
    assert everything["activities"][0]["id"] == "x12"  # newest first
    rest = app.get("/v1/customers/1/activities", params={"start": everything["next"]}).json()
    assert [a["id"] for a in rest["activities"]] == ["x2", "x1", "x0"] and rest["next"] == ""
    odd = app.get("/v1/customers/1/activities", params={"type": "event", "name": "e1"}).json()
    assert {a["name"] for a in odd["activities"]} == {"e1"} and len(odd["activities"]) == 6
    assert app.get("/v1/customers/1/activities", params={"type": "page"}).json() == {
        "activities": [],
        "next": "",
    }
    big = app.get("/v1/customers/1/activities", params={"limit": 1000}).json()
    assert len(big["activities"]) == 13 and big["next"] == ""
    assert app.get("/v1/customers/1/activities", params={"limit": "x"}).status_code == 400
