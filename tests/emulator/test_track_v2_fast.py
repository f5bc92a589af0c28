"""Track v2 batches take a fast path for plain identifies; it must answer and apply exactly like
the exact path. The exact path is what ``/api/v2/entity`` runs for one operation, so each batch
here is also sent one operation at a time to ``/entity`` on a second emulator, and both the
answers and the resulting workspaces must be identical."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import httpx
import pytest

from lockgate.emulator import Emulator, EmulatorConfig
from lockgate.emulator.models import Person

from .conftest import person_op


def ident(id_: Any, **attributes: Any) -> dict[str, Any]:
    return person_op("identify", {"id": id_}, attributes=attributes)


def by_email(email: str, **attributes: Any) -> dict[str, Any]:
    return person_op("identify", {"email": email}, attributes=attributes)


# Each round is one batch. Together they cover the boundaries of the fast path (lengths, types,
# special attribute names) and the store states where identify has rules (known ids and emails,
# conflicts, suppression), with well-formed and malformed operations mixed.
ROUNDS: list[list[Any]] = [
    [
        ident("1", email="One@x.com", plan="pro", score=3, ratio=0.5, active=True, gone=None),
        ident("2", email="two@x.com"),
        person_op("identify", {"id": "3"}),  # no attributes key
        ident("4"),
        by_email("Five@x.com", a=1),
        ident("6", id="6", plan="x"),  # `id` as an attribute
        ident("7", empty="", nothing=None, kept="k"),
        ident(
            "8",
            created_at=1_700_000_000,
            unsubscribed="TRUE",
            **{"cio_subscription_preferences.topics.topic_1": True},
        ),
        ident("9", _timestamp=1_700_000_000, plan="ts"),
        ident("10", _update=True, plan="never"),
        ident("11", anonymous_id="anon-11"),
        ident("12", nested={"a": [1, 2]}, tags=["a", "b"]),
        ident(42, plan="int id"),
        ident("e" * 37),
        ident("f" * 38),
        ident("g" * 150),
        ident("h" * 151),
        ident("é" * 75),
        ident("é" * 76),
        ident("😀" * 37),  # 148 bytes
        ident("😀" * 38),  # 152 bytes: over the limit
        ident(""),
        person_op("identify", {"id": "13", "email": "13@x.com"}),
        person_op("identify", {"phone": "+4799999999"}, attributes={"p": 1}),
        person_op("identify", {"cio_id": "e0000001"}, attributes={"via": "cio"}),
        person_op("identify", None, attributes={"a": 1}),
        5,
        ident("14", **{"n" * 37: 1, "o" * 38: 2}),
        ident("15", **{"p" * 151: 1}),
        ident("16", **{"ø" * 75: 1}),
        ident("17", **{"ø" * 76: 1}),
        ident("17a", **{"😀" * 37: 1}),
        ident("17b", **{"😀" * 38: 1}),
        ident("18", s250="s" * 250, s251="s" * 251, s1000="s" * 1000),
        ident("19", s1001="s" * 1001),
        ident("20", u251="é" * 251, u500="é" * 500),
        ident("21", u501="é" * 501),
        ident("21a", e250="😀" * 250),
        ident("21b", e251="😀" * 251),
        ident("22", **{f"a{i}": i for i in range(300)}),
        ident("23", **{f"a{i}": i for i in range(301)}),
        ident("24", email=5),
        ident("25", email=""),
        {**ident("26", plan="extra key"), "other": True},
        {**ident("27"), "timestamp": 1.5},
        {**ident("28"), "timestamp": 1_700_000_000},
        {
            **ident("29"),
            "cio_relationships": [{"identifiers": {"object_type_id": "1", "object_id": "acme"}}],
        },
        {"type": "person", "action": "identify", "identifiers": {"id": "30"}, "attributes": 7},
        {"type": "person", "action": "nope", "identifiers": {"id": "31"}, "attributes": {}},
        {"type": "object", "action": "identify", "identifiers": {"id": "32"}, "attributes": {}},
    ],
    [
        ident("1", email="one@X.com", plan="free"),  # same email, other case
        ident("40", email="forty@x.com"),
        ident("40", email="forty-new@x.com", plan="moved"),  # a free email by a known id
        by_email("forty-new@x.com", seen=True),
        ident("4", email="one@x.com"),  # someone else's email
        ident("2", email="new-two@x.com"),  # a new email by id
        ident("33", email="five@X.com"),  # a new id with a known email
        ident("5"),
        person_op("event", {"id": "1"}, name="paid"),
        ident("1", email="ONE@x.com", plan="again"),
        person_op("suppress", {"id": "2"}),
        ident("2", plan="suppressed"),
        ident("34", email="new-two@x.com"),
        person_op("unsuppress", {"id": "2"}),
        ident("2", plan="back"),
        person_op("delete", {"id": "7"}),
        ident("7", kept="again"),
        ident("35", **{"cio_subscription_preferences.topics.topic_2": False}),
        ident("36", phone="+4712345678", cio_id="x"),
    ],
    [ident(str(i), email=f"{i}@bulk.example", n=i) for i in range(100, 400)]
    + [ident(str(i), n=-i) for i in range(100, 400, 7)],
]


def _entity_answers(client: httpx.Client, ops: list[Any]) -> tuple[int, dict[str, Any]]:
    """What /batch should answer, built from /entity's answer to each operation alone."""
    errors = []
    for i, op in enumerate(ops):
        r = client.post("/api/v2/entity", json=op)
        if r.status_code != 200:
            assert r.status_code == 400, r.text
            errors.extend({"batch_index": i, **e} for e in r.json()["errors"])
    return (207, {"errors": errors}) if errors else (200, {})


def _identifiers(ops: list[Any]) -> set[tuple[str, str]]:
    """Every non-empty string ``id``/``email`` anywhere in the operations."""
    found: set[tuple[str, str]] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in ("id", "email") and isinstance(v, str) and v:
                    found.add((k, v))
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(ops)
    return found


def _lookups(emu: Emulator, idents: set[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
    """Whom each identifier finds now (catches a stale index that the snapshots do not show)."""
    out = {}
    for kind, value in sorted(idents):
        p = emu.person(**{kind: value})
        out[(kind, value)] = p.cio_id if p else None
    return out


def _workspace(emu: Emulator) -> dict[str, Any]:
    def person(p: Person) -> Any:
        # created_at/updated_at are the wall clock unless set through `created_at`
        stamped = p.created_at if p.attributes.get("created_at") == p.created_at else 0
        return replace(p, created_at=stamped, updated_at=0), list(p.attributes.items())

    return {
        "people": [person(p) for p in emu.people()],
        "events": [replace(e, timestamp=0, received_at=0) for e in emu.events()],
        "relationships": emu.relationships(),
        "activity": [(a.kind, a.message, a.source) for a in emu.activity_log()],
        "records_ingested": emu.stats.records_ingested,
    }


@pytest.mark.parametrize(
    "config",
    [
        EmulatorConfig(),
        EmulatorConfig(workspace_mode="id"),
        EmulatorConfig(workspace_mode="email", phone_identifiers=False),
        EmulatorConfig(null_removes_person_attributes=False, allow_email_change_via_id=False),
    ],
    ids=["id_email", "id", "email", "keep_nulls"],
)
def test_a_batch_answers_and_applies_like_each_op_sent_alone(config: EmulatorConfig) -> None:
    batched, alone = Emulator(config), Emulator(config)
    with (
        batched.client(auth=batched.track_auth) as bc,
        alone.client(auth=alone.track_auth) as ac,
    ):
        idents = _identifiers(ROUNDS)
        for ops in ROUNDS:
            r = bc.post("/api/v2/batch", json={"batch": ops})
            assert (r.status_code, r.json()) == _entity_answers(ac, ops)
            assert _workspace(batched) == _workspace(alone)
            assert _lookups(batched, idents) == _lookups(alone, idents)
    assert len(batched.people()) > 300


def test_an_op_over_32_kb_is_rejected_and_one_just_under_is_applied(emu: Emulator) -> None:
    attrs = {f"k{i:03d}": "x" * 290 for i in range(110)}  # ~33.7 KB as JSON
    over = ident("big", **attrs)
    under = ident("fits", **dict(list(attrs.items())[:100]))
    with emu.client(auth=emu.track_auth) as client:
        r = client.post("/api/v2/batch", json={"batch": [ident("a"), over, under]})
    assert r.status_code == 207
    assert r.json() == {
        "errors": [
            {
                "batch_index": 1,
                "reason": "limit",
                "field": "",
                "message": "operation is over 32 KB",
            }
        ]
    }
    assert sorted(str(p.id) for p in emu.people()) == ["a", "fits"]
    fits = emu.person(id="fits")
    assert fits is not None and len(fits.attributes) == 100


def test_every_accepted_record_is_visible_to_the_next_read(emu: Emulator) -> None:
    ops = [ident(f"u{i}", email=f"u{i}@x.com", n=i) for i in range(2500)]
    with emu.client(auth=emu.track_auth) as client:
        for start in range(0, 2500, 500):
            r = client.post("/api/v2/batch", json={"batch": ops[start : start + 500]})
            assert r.status_code == 200
            assert emu.stats.records_ingested == start + 500
    people = emu.people()
    assert len(people) == 2500
    last = emu.person(email="U2499@x.com")
    assert last is not None and last.attributes == {"n": 2499}


def _random_ops(rng: random.Random, count: int) -> list[Any]:
    """Seeded mixes of plain and unusual operations on a small pool of people."""
    ids = [f"p{i}" for i in range(12)] + ["x" * 37, "y" * 38, "é" * 40]
    emails = [f"{n}@x.com" for n in ("a", "B", "b", "c")] + ["A@x.com", ""]
    names = ["plan", "score", "n" * 37, "o" * 38, "ø" * 40, "created_at", "unsubscribed"]
    names += ["cio_subscription_preferences.topics.t1", "_update", "phone", "id", "email"]
    values: list[Any] = [None, "", "v", 0, 1, -5, 2.5, True, False, 1_700_000_000]
    values += ["s" * 251, "é" * 251, "😀" * 250, {"nested": 1}, [1]]
    ops: list[Any] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.06:
            action = rng.choice(["suppress", "unsuppress", "delete"])
            ops.append(person_op(action, {"id": rng.choice(ids)}))
            continue
        if roll < 0.1:
            ops.append(person_op("event", {"id": rng.choice(ids)}, name="e"))
            continue
        ident = {"email": rng.choice(emails)} if roll < 0.25 else {"id": rng.choice(ids)}
        attrs = {rng.choice(names): rng.choice(values) for _ in range(rng.randint(0, 4))}
        if rng.random() < 0.5:
            attrs["email"] = rng.choice(emails)
        ops.append(person_op("identify", ident, attributes=attrs))
    return ops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_seeded_random_batches_answer_and_apply_like_each_op_sent_alone(seed: int) -> None:
    rng = random.Random(seed)
    batched, alone = Emulator(), Emulator()
    with (
        batched.client(auth=batched.track_auth) as bc,
        alone.client(auth=alone.track_auth) as ac,
    ):
        for _ in range(3):
            ops = _random_ops(rng, 120)
            r = bc.post("/api/v2/batch", json={"batch": ops})
            assert (r.status_code, r.json()) == _entity_answers(ac, ops)
            assert _workspace(batched) == _workspace(alone)
            idents = _identifiers(ops)
            assert _lookups(batched, idents) == _lookups(alone, idents)


# Batches of nothing but identifies (what a sync sends), across the boundaries of the fast path
# and of the op size bound it computes: nulls and empty strings, special names, lengths, big
# integers, escapes.
EMOJI, CTRL = "😀", "\x01"
PLAIN_ROUNDS: list[list[Any]] = [
    [
        ident("1", email="One@x.com", plan="pro", score=3, ratio=0.5, active=True, off=False),
        ident("2", email="two@x.com", gone=None, empty=""),
        ident("2b", note='null and "" inside a string', n=-0.0),
    ],
    [
        ident("3", email="one@X.com"),  # another's email (other case)
        by_email("Five@x.com", a=1),
        ident("4", email=5),
        ident("4b", email=None),
        ident("5", **{"cio_subscription_preferences.topics.t": True}),
        ident("5b", **{"x.cio_subscription_preferences.y": 1}),
        ident("6", created_at=1_700_000_000, unsubscribed="true"),
        ident("7", note="cio_subscription_preferences. in a value"),
        ident("8", id="8", phone="+4799"),
    ],
    [
        ident("e" * 37, **{"n" * 37: "s" * 250, "u": "é" * 250}),
        ident("9", big=2**63 - 1, small=-(2**63)),
    ],
    [ident("10", big=2**63)],  # beyond int64 (orjson makes it a float)
    [ident("10b", small=-(2**63) - 1)],
    [ident("11", s="s" * 251)],
    [ident("12", **{f"k{i:02d}": CTRL * 250 for i in range(20)})],  # escaped: ~30 KB as JSON
    [ident("14", **{f"k{i:02d}": EMOJI * 250 for i in range(31)})],  # ~31 KB
    [ident("16", _update=True, plan="never")],
    [ident("17", _timestamp=1_700_000_000)],
    [ident("18", anonymous_id="a-18")],
    [ident("f" * 38)],
    [ident("")],
    [ident(19)],
    [by_email("")],
    [ident("20", **{f"a{i}": i for i in range(300)})],
    [ident("21", **{f"a{i}": i for i in range(301)})],
    [ident("22", **{"o" * 38: 1})],
    [person_op("identify", {"id": "23", "email": "23@x.com"}, attributes={})],
    [ident("24", nested={"a": 1})],
    [ident(str(i), email=f"{i}@bulk.example", n=i, f=i / 7) for i in range(500, 800)],
]


@pytest.mark.parametrize(
    "config",
    [EmulatorConfig(), EmulatorConfig(workspace_mode="id"), EmulatorConfig(workspace_mode="email")],
    ids=["id_email", "id", "email"],
)
def test_identify_only_batches_answer_and_apply_like_each_op_sent_alone(
    config: EmulatorConfig,
) -> None:
    batched, alone = Emulator(config), Emulator(config)
    with (
        batched.client(auth=batched.track_auth) as bc,
        alone.client(auth=alone.track_auth) as ac,
    ):
        idents = _identifiers(PLAIN_ROUNDS)
        for ops in PLAIN_ROUNDS:
            r = bc.post("/api/v2/batch", json={"batch": ops})
            assert (r.status_code, r.json()) == _entity_answers(ac, ops), ops[0]
            assert _workspace(batched) == _workspace(alone)
        assert _lookups(batched, idents) == _lookups(alone, idents)
    assert len(batched.people()) > 300


@pytest.mark.parametrize(
    ("char", "fits", "over"), [(CTRL, 20, 22), (EMOJI, 31, 33)], ids=["escaped", "4-byte"]
)
def test_identify_only_batch_rejects_just_the_op_over_32_kb(
    emu: Emulator, char: str, fits: int, over: int
) -> None:
    big = ident("big", **{f"k{i:02d}": char * 250 for i in range(over)})
    ok = ident("fits", **{f"k{i:02d}": char * 250 for i in range(fits)})
    with emu.client(auth=emu.track_auth) as client:
        r = client.post("/api/v2/batch", json={"batch": [ident("a"), big, ok]})
    assert (r.status_code, r.json()) == (
        207,
        {
            "errors": [
                {
                    "batch_index": 1,
                    "reason": "limit",
                    "field": "",
                    "message": "operation is over 32 KB",
                }
            ]
        },
    )
    assert sorted(str(p.id) for p in emu.people()) == ["a", "fits"]


# JSON texts that are easy to read differently: each is sent as a one-op batch and alone.
RAW_OPS = [
    b'{"type":"person","action":"identify","identifiers":{"id":"r1"},"attributes":{"a":%s}}' % v
    for v in (
        b"18446744073709551616", b"18446744073709551615", b"-9223372036854775809",
        b"9223372036854775807", b"1e400", b"1E2", b"-0.0", b"1e-400", b"NaN", b'"\\ud800"',
        b'"\\ud83d\\ude00"', b'"\\u0000"', b'"a\\/b"', b"0.30000000000000004",
    )
] + [
    b'{"type":"person","type":"object","action":"identify","identifiers":{"id":"r2"},'
    b'"attributes":{}}',
    b'{"type":"person","action":"identify","identifiers":{"id":"r3"},"attributes":{"a":1},'
    b'"attributes":{"b":2}}',
    b'{"type":"person","action":"identify","identifiers":{"id":"r4"},"attributes":{"a":1,"a":"x"}}',
    b'{"type":"person","action":"identify","identifiers":{"id":"r5","id":"r6"},"attributes":{}}',
]  # fmt: skip


@pytest.mark.parametrize("raw", RAW_OPS, ids=range(len(RAW_OPS)))
def test_json_edge_cases_in_an_identify_batch_read_like_the_op_alone(raw: bytes) -> None:
    batched, alone = Emulator(), Emulator()
    headers = {"content-type": "application/json"}
    with (
        batched.client(auth=batched.track_auth) as bc,
        alone.client(auth=alone.track_auth) as ac,
    ):
        r = bc.post("/api/v2/batch", content=b'{"batch":[' + raw + b"]}", headers=headers)
        e = ac.post("/api/v2/entity", content=raw, headers=headers)
        if e.status_code == 200:
            assert (r.status_code, r.json()) == (200, {})
        else:
            # the same refusal (a whole-body 400 names a position, which the wrapper shifts)
            assert r.status_code in (207, 400)
            assert [x["reason"] for x in r.json()["errors"]] == [
                x["reason"] for x in e.json()["errors"]
            ]
        assert _workspace(batched) == _workspace(alone)


def _random_identifies(rng: random.Random, count: int) -> list[Any]:
    """Identify ops that are mostly plain, so that many bodies are decoded whole."""
    ids = [f"p{i}" for i in range(12)] + ["x" * 37]
    emails = [f"{n}@x.com" for n in ("a", "B", "b", "c")] + ["A@x.com"]
    names = ["plan", "score", "n" * 37, "ø" * 37, "city", "unsubscribed", "email"]
    values: list[Any] = ["v", 0, 1, -5, 2.5, True, False, 1_700_000_000, "é" * 250, CTRL]
    rare: list[Any] = [None, "", "s" * 251, 2**64, "cio_subscription_preferences.x"]
    ops: list[Any] = []
    for _ in range(count):
        ident = {"email": rng.choice(emails)} if rng.random() < 0.15 else {"id": rng.choice(ids)}
        attrs = {rng.choice(names): rng.choice(values) for _ in range(rng.randint(0, 5))}
        if rng.random() < 0.02:
            attrs[rng.choice(names)] = rng.choice(rare)
        ops.append(person_op("identify", ident, attributes=attrs))
    return ops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_seeded_identify_only_batches_answer_and_apply_like_each_op_sent_alone(seed: int) -> None:
    rng = random.Random(seed)
    batched, alone = Emulator(), Emulator()
    with (
        batched.client(auth=batched.track_auth) as bc,
        alone.client(auth=alone.track_auth) as ac,
    ):
        for _ in range(6):
            ops = _random_identifies(rng, rng.choice([5, 40, 120]))
            r = bc.post("/api/v2/batch", json={"batch": ops})
            assert (r.status_code, r.json()) == _entity_answers(ac, ops)
            assert _workspace(batched) == _workspace(alone)
            idents = _identifiers(ops)
            assert _lookups(batched, idents) == _lookups(alone, idents)


def test_ever_changing_attribute_names_are_all_applied(emu: Emulator) -> None:
    """The fast path remembers what it found about each tuple of attribute names, up to a
    bound: more distinct tuples than that, and names seen before with other values, still
    give every person exactly their attributes."""
    with emu.client(auth=emu.track_auth) as client:
        for start in range(0, 5000, 500):
            ops = [ident(str(i), **{f"a{i}": i, "plan": "p"}) for i in range(start, start + 500)]
            assert client.post("/api/v2/batch", json={"batch": ops}).status_code == 200
        again = [ident("1", a1=None, plan=""), ident("2", a2="x" * 251, plan="q")]
        assert client.post("/api/v2/batch", json={"batch": again}).status_code == 200
    people = {p.id: p.attributes for p in emu.people()}
    assert len(people) == 5000
    assert people["4999"] == {"a4999": 4999, "plan": "p"}
    assert people["1"] == {} and people["2"] == {"a2": "x" * 251, "plan": "q"}
