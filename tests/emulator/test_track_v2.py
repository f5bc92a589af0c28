"""Track v2 /entity and /batch: what lands in the workspace, and what comes back for bad ops."""

from __future__ import annotations

import httpx
import orjson

from lockgate.emulator import Emulator, EmulatorConfig

from .conftest import person_op


def test_identify_creates_profile_with_attributes(emu: Emulator, track: httpx.Client) -> None:
    r = track.post(
        "/api/v2/entity",
        json=person_op("identify", {"id": "42"}, attributes={"plan": "pro", "email": "A@x.com"}),
    )
    assert (r.status_code, r.json()) == (200, {})
    person = emu.person(email="a@X.com")
    assert person is not None and person.id == "42"
    assert person.attributes == {"plan": "pro"}


def test_bad_op_gets_207_with_its_index_while_others_apply(
    emu: Emulator, track: httpx.Client
) -> None:
    batch = [
        person_op("identify", {"id": "1"}, attributes={"a": 1}),
        person_op("identify", {"id": "2", "email": "two@x.com"}),
        person_op("event", {"id": "1"}, name="paid", timestamp=1_700_000_000_000),
        person_op("identify", {"id": "3"}, attributes={"a": 3}),
    ]
    r = track.post("/api/v2/batch", json={"batch": batch})
    assert r.status_code == 207
    errors = r.json()["errors"]
    assert [e["batch_index"] for e in errors] == [1, 2]
    assert set(errors[0]) == {"batch_index", "reason", "field", "message"}
    assert "milliseconds" in errors[1]["message"]
    assert sorted(p.id for p in emu.people()) == ["1", "3"]
    assert emu.events() == []


def test_duplicate_event_id_is_stored_once(emu: Emulator, track: httpx.Client) -> None:
    op = person_op("event", {"id": "42"}, name="signed_up", id="01HZX3J8Y2V6N5ZK4C1Q9RT7WB")
    assert track.post("/api/v2/batch", json={"batch": [op, op]}).status_code == 200
    assert track.post("/api/v2/entity", json=op).status_code == 200
    assert len(emu.events()) == 1
    assert emu.stats.duplicate_events_dropped == 2


def test_ulid_check_is_a_switch(track: httpx.Client) -> None:
    strict = Emulator(EmulatorConfig(require_ulid_event_ids=True))
    op = person_op("event", {"id": "42"}, name="x", id="not-a-ulid")
    assert track.post("/api/v2/entity", json=op).status_code == 200
    with strict.client(auth=strict.track_auth) as client:
        r = client.post("/api/v2/entity", json=op)
    assert r.status_code == 400 and "ULID" in r.json()["errors"][0]["message"]


def test_whole_body_problems_get_400(track: httpx.Client) -> None:
    assert track.post("/api/v2/batch", content=b"{nope").status_code == 400
    assert track.post("/api/v2/batch", json={"ops": []}).status_code == 400
    r = track.post("/api/v2/entity", json=person_op("identify", {"id": "1", "email": "a@b.co"}))
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "identifiers"


def test_byte_limits(emu: Emulator, track: httpx.Client) -> None:
    big = person_op("identify", {"id": "big"}, attributes={f"k{i}": "v" * 900 for i in range(40)})
    small = person_op("identify", {"id": "small"})
    r = track.post("/api/v2/batch", json={"batch": [big, small]})
    assert r.status_code == 207 and r.json()["errors"][0]["batch_index"] == 0
    assert [p.id for p in emu.people()] == ["small"]
    assert track.post("/api/v2/entity", json=big).status_code == 400
    huge = {"batch": [small] * 20_000}
    assert track.post("/api/v2/batch", json=huge).status_code == 400


def test_attribute_limits(track: httpx.Client) -> None:
    cases = {
        "attribute name cannot be longer than 150 bytes": {"n" * 151: 1},
        "value for attribute 'bio' cannot be longer than 1000 bytes": {"bio": "x" * 1001},
        "cannot identify more than 300 attributes in one request": {f"a{i}": i for i in range(301)},
    }
    for message, attrs in cases.items():
        r = track.post("/api/v2/entity", json=person_op("identify", {"id": "1"}, attributes=attrs))
        assert r.status_code == 400 and r.json()["errors"][0]["message"] == message


def test_update_only_never_creates(emu: Emulator, track: httpx.Client) -> None:
    op = person_op("identify", {"id": "nobody"}, attributes={"_update": True, "plan": "x"})
    assert track.post("/api/v2/entity", json=op).status_code == 200
    assert emu.people() == []
    assert emu.activity_log()[-1].kind == "attribute update failure"


def test_conflicting_identifiers_change_nothing(emu: Emulator, track: httpx.Client) -> None:
    track.post(
        "/api/v2/entity", json=person_op("identify", {"id": "1"}, attributes={"email": "a@x.co"})
    )
    track.post(
        "/api/v2/entity", json=person_op("identify", {"id": "2"}, attributes={"email": "b@x.co"})
    )
    r = track.post(
        "/api/v2/entity",
        json=person_op("identify", {"id": "1"}, attributes={"email": "b@x.co", "plan": "p"}),
    )
    assert r.status_code == 200
    assert emu.person(id="1").email == "a@x.co"  # type: ignore[union-attr]
    assert "plan" not in emu.person(id="1").attributes  # type: ignore[union-attr]
    assert emu.activity_log()[-1].kind == "attribute update failure"


def test_identify_by_email_then_id_gains_identifier(emu: Emulator, track: httpx.Client) -> None:
    track.post("/api/v2/entity", json=person_op("identify", {"email": "a@x.co"}))
    track.post(
        "/api/v2/entity", json=person_op("identify", {"id": "7"}, attributes={"email": "A@x.co"})
    )
    assert len(emu.people()) == 1
    assert emu.person(email="a@x.co").id == "7"  # type: ignore[union-attr]


def test_null_removes_attribute(emu: Emulator, track: httpx.Client) -> None:
    track.post(
        "/api/v2/entity", json=person_op("identify", {"id": "1"}, attributes={"a": 1, "b": 2})
    )
    track.post(
        "/api/v2/entity", json=person_op("identify", {"id": "1"}, attributes={"a": None, "b": ""})
    )
    assert emu.person(id="1").attributes == {}  # type: ignore[union-attr]


def test_merge(emu: Emulator, track: httpx.Client) -> None:
    ops = [
        person_op("identify", {"id": "p"}, attributes={"plan": "pro", "empty": ""}),
        person_op("identify", {"id": "s"}, attributes={"plan": "free", "city": "Oslo"}),
        person_op("event", {"id": "s"}, name="clicked"),
        person_op("merge", primary={"id": "p"}, secondary={"id": "s"}),
        person_op("merge", primary={"id": "ghost"}, secondary={"id": "p"}),
    ]
    assert track.post("/api/v2/batch", json={"batch": ops}).status_code == 200
    p = emu.person(id="p")
    assert p is not None and emu.person(id="s") is None
    assert p.attributes == {"plan": "pro", "city": "Oslo"}
    assert [e.name for e in emu.events(p)] == ["clicked"]
    assert len(emu.merges()) == 1
    assert emu.activity_log()[-1].kind == "merge primary not found"


def test_suppress_blocks_until_unsuppress(emu: Emulator, track: httpx.Client) -> None:
    track.post("/api/v2/entity", json=person_op("identify", {"id": "1"}))
    track.post("/api/v2/entity", json=person_op("suppress", {"id": "1"}))
    track.post("/api/v2/entity", json=person_op("identify", {"id": "1"}))
    assert emu.people() == []
    track.post("/api/v2/entity", json=person_op("unsuppress", {"id": "1"}))
    track.post("/api/v2/entity", json=person_op("identify", {"id": "1"}))
    assert [p.id for p in emu.people()] == ["1"]


def test_objects_and_relationship_shapes(emu: Emulator, track: httpx.Client) -> None:
    acme = {"object_type_id": "1", "object_id": "acme"}
    ops = [
        {
            "type": "object",
            "action": "identify",
            "identifiers": acme,
            "attributes": {"n": "Acme"},
            "cio_relationships": [
                {"identifiers": {"id": "1"}, "relationship_attributes": {"r": "admin"}}
            ],
        },
        person_op("add_relationships", {"id": "2"}, cio_relationships=[{"identifiers": acme}]),
        person_op("identify", {"id": "3"}, cio_relationships=[{"identifiers": acme}]),
        {
            "type": "object",
            "action": "identify",
            "identifiers": {"object_type_id": "9", "object_id": "x"},
        },
        {
            "type": "object",
            "action": "identify",
            "identifiers": {"object_type_id": 1, "object_id": "x"},
        },
    ]
    r = track.post("/api/v2/batch", json={"batch": ops})
    assert r.status_code == 207 and [e["batch_index"] for e in r.json()["errors"]] == [4]
    assert [(o.object_id, o.attributes) for o in emu.objects()] == [("acme", {"n": "Acme"})]
    rels = {
        (emu_person.id, r.attributes.get("r"))
        for r in emu.relationships()
        for emu_person in emu.people()
        if emu_person.cio_id == r.person
    }
    assert rels == {("1", "admin"), ("2", None), ("3", None)}
    assert any(a.kind == "unknown object type" for a in emu.activity_log())
    track.post("/api/v2/entity", json={"type": "object", "action": "delete", "identifiers": acme})
    assert emu.objects() == [] and emu.relationships() == []


def test_devices(emu: Emulator, track: httpx.Client) -> None:
    dev = {"token": "tok", "platform": "ios", "last_used": 1_700_000_000}
    track.post("/api/v2/entity", json=person_op("add_device", {"id": "1"}, device=dev))
    assert [d.id for d in emu.person(id="1").devices] == ["tok"]  # type: ignore[union-attr]
    track.post(
        "/api/v2/entity", json=person_op("delete_device", {"id": "1"}, device={"token": "tok"})
    )
    assert emu.person(id="1").devices == ()  # type: ignore[union-attr]


def test_devices_and_attribute_timestamps_stay_with_their_person(
    emu: Emulator, track: httpx.Client
) -> None:
    """People start out sharing one empty set of devices and of attribute timestamps: a change
    to one person's (a device added, merged in, a timestamped attribute) must not reach others."""
    dev = {"token": "tok", "platform": "ios"}
    track.post("/api/v2/entity", json=person_op("identify", {"id": "p"}))
    track.post("/api/v2/entity", json=person_op("add_device", {"id": "s"}, device=dev))
    track.post(
        "/api/v2/entity",
        json=person_op("identify", {"id": "t"}, attributes={"plan": "a", "_timestamp": 200}),
    )
    merge = person_op("merge", primary={"id": "p"}, secondary={"id": "s"})
    track.post("/api/v2/entity", json=merge)
    track.post("/api/v2/entity", json=person_op("identify", {"id": "new"}))
    for ident, plan in (("new", "b"), ("t", "stale")):
        op = person_op("identify", {"id": ident}, attributes={"plan": plan, "_timestamp": 100})
        track.post("/api/v2/entity", json=op)
    devices = {str(p.id): [d.id for d in p.devices] for p in emu.people()}
    assert devices == {"p": ["tok"], "t": [], "new": []}
    plans = {str(p.id): p.attributes.get("plan") for p in emu.people()}
    assert plans == {"p": None, "t": "a", "new": "b"}


def test_new_id_with_known_email_updates_that_person(emu: Emulator, track: httpx.Client) -> None:
    for new_id in ("1", "2"):
        op = person_op("identify", {"id": new_id}, attributes={"email": "test@x.co", "n": new_id})
        assert track.post("/api/v2/entity", json=op).status_code == 200
    (person,) = emu.people()
    assert (person.id, person.email, person.attributes) == ("2", "test@x.co", {"n": "2"})
    assert emu.person(id="1") is None


def test_an_empty_email_removes_it_and_frees_it_for_another_person(
    emu: Emulator, track: httpx.Client
) -> None:
    """Two people swapping emails: taking an email another person holds is an attribute
    update failure, so one side's email is removed (`""`, as any attribute) first."""
    for ident_, email in (("1", "a@x.com"), ("2", "b@x.com")):
        op = person_op("identify", {"id": ident_}, attributes={"email": email})
        assert track.post("/api/v2/entity", json=op).status_code == 200
    swap = [
        person_op("identify", {"id": "1"}, attributes={"email": ""}),
        person_op("identify", {"id": "2"}, attributes={"email": "a@x.com"}),
        person_op("identify", {"id": "1"}, attributes={"email": "B@x.com"}),
    ]
    assert track.post("/api/v2/batch", json={"batch": swap}).status_code == 200
    assert {p.id: p.email for p in emu.people()} == {"1": "B@x.com", "2": "a@x.com"}
    assert emu.activity_log() == []
    keep = Emulator(EmulatorConfig(null_removes_person_attributes=False))
    with keep.client(auth=keep.track_auth) as client:
        for attributes in ({"email": "a@x.com"}, {"email": ""}):
            client.post(
                "/api/v2/entity", json=person_op("identify", {"id": "1"}, attributes=attributes)
            )
    assert [p.email for p in keep.people()] == ["a@x.com"]


def test_anonymous_relationship_carries_over_on_identify(
    emu: Emulator, track: httpx.Client
) -> None:
    acme = {"object_type_id": "1", "object_id": "acme"}
    op = {
        "type": "object",
        "action": "identify_anonymous",
        "identifiers": acme,
        "cio_relationships": [
            {"identifiers": {"anonymous_id": "anon-9"}, "relationship_attributes": {"seen": 1}}
        ],
    }
    assert track.post("/api/v2/entity", json=op).status_code == 200
    assert emu.relationships()[0].anonymous_id == "anon-9"
    track.put("/api/v1/customers/9", json={"anonymous_id": "anon-9"})
    (rel,) = emu.relationships()
    assert rel.person == emu.person(id="9").cio_id and rel.attributes == {"seen": 1}  # type: ignore[union-attr]


def test_a_cio_id_finds_its_person_only_when_written_exactly(
    emu: Emulator, track: httpx.Client
) -> None:
    track.post("/api/v2/entity", json=person_op("identify", {"id": "1"}, attributes={"a": 1}))
    cio = emu.person(id="1").cio_id  # type: ignore[union-attr]
    for other in ("e00000001", "E0000001", "e-000001", "e 000001", "e0x00001", cio + " "):
        op = person_op("identify", {"cio_id": other}, attributes={"a": 2})
        assert track.post("/api/v2/entity", json=op).status_code == 200
        assert emu.person(cio_id=other) is None
    op = person_op("identify", {"cio_id": cio}, attributes={"a": 3})
    track.post("/api/v2/entity", json=op)
    assert [p.attributes for p in emu.people()] == [{"a": 3}]
    failures = [a for a in emu.activity_log() if a.kind == "attribute update failure"]
    assert len(failures) == 6


def test_a_number_as_person_identifier_is_refused_not_turned_into_text(
    emu: Emulator, track: httpx.Client
) -> None:
    """The spec types identifiers as strings and v1 refuses a body ``"id": 42``: a client that
    sends numbers must fail here as it would against Customer.io, not store person "42"."""
    op = {"type": "person", "action": "identify", "identifiers": {"id": 42}, "attributes": {}}
    r = track.post("/api/v2/entity", json=op)
    assert (r.status_code, r.json()) == (
        400,
        {
            "errors": [
                {
                    "reason": "invalid",
                    "field": "identifiers.id",
                    "message": "id must be a string, got `42`",
                }
            ]
        },
    )
    batch = [
        {"type": "person", "action": "event", "identifiers": {"cio_id": 5}, "name": "x"},
        person_op("identify", {"id": "42"}),
    ]
    r = track.post("/api/v2/batch", json={"batch": batch})
    assert r.status_code == 207
    assert r.json()["errors"] == [
        {
            "batch_index": 0,
            "reason": "invalid",
            "field": "identifiers.cio_id",
            "message": "cio_id must be a string, got `5`",
        }
    ]
    assert [p.id for p in emu.people()] == ["42"] and emu.events() == []


def test_created_at_in_v2_identify_must_be_unix_seconds_as_in_v1(
    emu: Emulator, track: httpx.Client
) -> None:
    """The fast path for plain identifies must not let a millisecond ``created_at`` through."""
    bad = [1_700_000_000_000, 1_700_000_000.5, "1700000000", "2024-01-02T00:00:00Z"]
    batch = [
        person_op("identify", {"id": f"u{i}"}, attributes={"created_at": v})
        for i, v in enumerate(bad)
    ]
    batch.append(person_op("identify", {"id": "ok"}, attributes={"created_at": 1_700_000_000}))
    r = track.post("/api/v2/batch", json={"batch": batch})
    assert r.status_code == 207
    errors = r.json()["errors"]
    assert [(e["batch_index"], e["field"]) for e in errors] == [
        (i, "attributes.created_at") for i in range(4)
    ]
    assert errors[0]["message"] == (
        "attributes.created_at `1700000000000` is not unix seconds (milliseconds? divide by 1000)"
    )
    assert [p.id for p in emu.people()] == ["ok"]
    assert emu.person(id="ok").created_at == 1_700_000_000  # type: ignore[union-attr]
    r = track.post("/api/v2/entity", json=batch[0])
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "attributes.created_at"


def test_batch_limit_is_500_000_bytes_not_500_kib(emu: Emulator, track: httpx.Client) -> None:
    """ "< 500 KB" read strictly: a client packing batches up to 500 KiB would fail for real."""

    headers = {"content-type": "application/json"}
    ops = [person_op("identify", {"id": f"u{i}"}, attributes={"v": "x" * 900}) for i in range(507)]
    over = orjson.dumps({"batch": ops})
    assert 500_000 < len(over) < 500 * 1024
    r = track.post("/api/v2/batch", content=over, headers=headers)
    assert r.status_code == 400
    assert r.json()["errors"][0]["message"] == (
        f"request body is {len(over):,} B; /batch takes < 500,000 B (500 KB)"
    )
    assert emu.people() == []
    under = orjson.dumps({"batch": ops[:500]})
    assert len(under) < 500_000
    assert track.post("/api/v2/batch", content=under, headers=headers).status_code == 200


def test_a_person_holds_at_most_300_attributes_across_calls(
    emu: Emulator, track: httpx.Client
) -> None:
    """Reference §9: 300 attributes per person, not only per call. The call is accepted (200,
    as Customer.io answers before it applies), the attributes past the cap are not added, and
    the failure is in the activity log; known attributes still update."""
    first = {f"a{i}": i for i in range(200)}
    second = {"a0": "changed", **{f"b{i}": i for i in range(200)}}
    for attrs in (first, second):
        r = track.post(
            "/api/v2/batch", json={"batch": [person_op("identify", {"id": "p"}, attributes=attrs)]}
        )
        assert (r.status_code, r.json()) == (200, {})
    person = emu.person(id="p")
    assert person is not None and len(person.attributes) == 300
    assert person.attributes["a0"] == "changed" and "b99" in person.attributes
    assert "b100" not in person.attributes
    (failure,) = emu.activity_log()
    assert failure.kind == "attribute update failure"
    assert failure.message == (
        f"{person.cio_id} has 300 attributes, the most a person can have; 100 new attribute(s) "
        "not added: b100, b101, b102, b103, b104, …"
    )
    # removing attributes makes room again
    removal = {f"a{i}": None for i in range(1, 11)} | {"c": 1}
    track.post("/api/v2/entity", json=person_op("identify", {"id": "p"}, attributes=removal))
    assert len(emu.person(id="p").attributes) == 291  # type: ignore[union-attr]


def test_an_object_holds_at_most_100_kb_and_300_attributes_across_calls(
    emu: Emulator, track: httpx.Client
) -> None:
    """Reference §3: <= 300 attributes and <= 100 KB of them per object or relationship."""
    acme = {"object_type_id": "1", "object_id": "acme"}
    for j in range(12):  # 30 attributes of ~900 B per call: each call is within its own limits
        op = {
            "type": "object",
            "action": "identify",
            "identifiers": acme,
            "attributes": {f"k{j}_{i}": "x" * 900 for i in range(30)},
        }
        assert track.post("/api/v2/entity", json=op).status_code == 200
    (obj,) = emu.objects()
    size = sum(len(k) + len(v) for k, v in obj.attributes.items())
    assert size <= 100 * 1024 and len(obj.attributes) == 113
    kinds = {a.kind for a in emu.activity_log()}
    assert kinds == {"attribute update failure"}
    assert (
        "object `1/acme` would pass 300 attributes or 102,400 bytes"
        in emu.activity_log()[0].message
    )
    small = {"type": "object", "action": "identify", "identifiers": acme}
    for j in range(2):
        small["attributes"] = {f"n{j}_{i}": 1 for i in range(150)}
        track.post("/api/v2/entity", json=small)
    assert len(emu.objects()[0].attributes) <= 300


def test_integers_past_64_bits_stay_exact_and_count_their_digits(
    emu: Emulator, track: httpx.Client
) -> None:
    """A big integer is valid JSON: stored exactly (not as a float losing digits), and held to
    the 1000-byte value limit by its digits, not refused as "not valid JSON"."""
    headers = {"content-type": "application/json"}
    body = (
        b'{"batch": [{"type": "person", "action": "identify", "identifiers": {"id": "big"},'
        b' "attributes": {"n": 123456789012345678901234, "m": -9223372036854775809}},'
        b' {"type": "person", "action": "identify", "identifiers": {"id": "huge"},'
        b' "attributes": {"n": 1' + b"0" * 1000 + b"}}]}"
    )
    r = track.post("/api/v2/batch", content=body, headers=headers)
    assert r.status_code == 207
    assert r.json()["errors"] == [
        {
            "batch_index": 1,
            "reason": "limit",
            "field": "attributes.n",
            "message": "value for attribute 'n' cannot be longer than 1000 bytes",
        }
    ]
    big = emu.person(id="big")
    assert big is not None and big.attributes == {
        "n": 123456789012345678901234,
        "m": -9223372036854775809,
    }
    with emu.client(headers=emu.app_headers) as app:
        found = app.get("/v1/customers/big/attributes").json()["customer"]["attributes"]
    assert found["n"] == "123456789012345678901234"


def test_an_id_only_workspace_refuses_email_identifiers_per_item() -> None:
    """Official Track spec (person_common, person_merge): `email` (and `phone`) are usable as
    identifiers only when enabled in the workspace settings. A classic (id-only) workspace
    took `{"email": …}` and created a person named by it, so a sync addressing people by
    email passed here where Customer.io does not take it."""
    emu = Emulator(EmulatorConfig(workspace_mode="id"))
    batch = [
        person_op("identify", {"email": "a@x.co"}, attributes={"plan": "pro"}),
        person_op("identify", {"id": "1"}, attributes={"email": "b@x.co"}),
        person_op("event", {"email": "b@x.co"}, name="paid"),
        person_op("merge", primary={"id": "1"}, secondary={"email": "a@x.co"}),
        {
            "type": "object",
            "action": "add_relationships",
            "identifiers": {"object_type_id": "1", "object_id": "acme"},
            "cio_relationships": [{"identifiers": {"email": "b@x.co"}}],
        },
    ]
    with emu.client(auth=emu.track_auth) as client:
        r = client.post("/api/v2/batch", json={"batch": batch})
        assert r.status_code == 207
        errors = r.json()["errors"]
        assert [(e["batch_index"], e["field"]) for e in errors] == [
            (0, "identifiers.email"),
            (2, "identifiers.email"),
            (3, "secondary.email"),
            (4, "cio_relationships[0].identifiers.email"),
        ]
        assert "not an identifier" in errors[0]["message"]
        single = client.post("/api/v2/entity", json=batch[0])
        assert single.status_code == 400
    (person,) = emu.people()
    assert (person.id, person.email) == ("1", "b@x.co")  # email kept as an attribute
    assert emu.events() == [] and emu.relationships() == []
    with emu.client(headers=emu.app_headers) as app:  # App API: "otherwise … returns 400"
        assert app.get("/v1/customers/b@x.co/attributes?id_type=email").status_code == 400
        r = app.post("/v1/customers/attributes?id_type=email", json={"ids": ["b@x.co"]})
        assert r.status_code == 400
