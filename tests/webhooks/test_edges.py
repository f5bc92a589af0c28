"""Edge cases of the webhook path: one odd event must never hold back or corrupt the others."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest

from lockgate.emulator.webhook_sender import make_event
from lockgate.project.loader import Project
from lockgate.webhooks.app import create_app
from lockgate.webhooks.load import load_pending
from lockgate.webhooks.spool import Spool

from .conftest import KEY, postgres_project, running, signed

URL = "/webhooks/customerio"


def spool_events(spool: Spool, events: list[dict[str, Any]]) -> None:
    spool.append_now([(e["event_id"], orjson.dumps(e)) for e in events])


def warehouse(project: Project) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(project.root / "warehouse.duckdb"), read_only=True)


def test_integer_beyond_64_bits_does_not_block_the_load(
    project: Project, spool: Spool, client: httpx.Client
) -> None:
    """An id past bigint's range was acknowledged, then failed every load of every event."""
    good = make_event("email", "clicked")
    huge_link = make_event("email", "clicked")
    huge_link["data"]["link_id"] = 2**63
    huge_extra = make_event("email", "opened")
    huge_extra["data"]["points"] = 2**64 - 1
    text_id = make_event("email", "sent")
    text_id["data"]["campaign_id"] = "99999999999999999999"
    events = [good, huge_link, huge_extra, text_id]
    for event in events:
        assert client.post(URL, **signed(event)).status_code == 200

    assert load_pending(project, spool=spool).loaded == len(events)
    assert spool.stats().unloaded == 0
    with warehouse(project) as con:
        rows = dict(con.execute("select event_id, raw from customerio.email").fetchall())
        assert set(rows) == {e["event_id"] for e in events}
        # the value is kept as text beside the typed column, and in full in `raw`
        assert con.execute(
            "select link_id, link_id__v_text from customerio.email where event_id = ?",
            [huge_link["event_id"]],
        ).fetchone() == (None, str(2**63))
        assert con.execute(
            "select campaign_id__v_text from customerio.email where event_id = ?",
            [text_id["event_id"]],
        ).fetchone() == ("99999999999999999999",)
        assert con.execute(
            "select points__v_text from customerio.email where event_id = ?",
            [huge_extra["event_id"]],
        ).fetchone() == (str(2**64 - 1),)
    assert orjson.loads(rows[huge_link["event_id"]])["data"]["link_id"] == 2**63


def test_integer_of_64_bits_or_more_keeps_its_exact_digits(
    project: Project, spool: Spool, client: httpx.Client
) -> None:
    """orjson reads 2**64 and beyond as a float: the digits were lost in the variant column,
    in an unknown key (a DOUBLE) and in `raw`."""
    link = 123456789012345678901234567890
    body = (
        b'{"event_id":"big1","object_type":"email","metric":"clicked","timestamp":%d,'
        b'"data":{"identifiers":{"id":%d},"link_id":%d,"points":%d,"tags":[%d]}}'
        % (int(time.time()), 2**70, link, 2**64, -(2**64))
    )
    assert client.post(URL, **signed(body)).status_code == 200
    assert spool.unloaded()[0].body == body  # the spool keeps the body byte for byte

    assert load_pending(project, spool=spool).loaded == 1
    with warehouse(project) as con:
        link_text, points_text, identifier, raw = con.execute(
            "select link_id__v_text, points__v_text, identifier_id, raw from customerio.email"
        ).fetchone()
    assert (link_text, points_text, identifier) == (str(link), str(2**64), str(2**70))
    # dlt's JSON has no integer beyond 64 bits: `raw` keeps the exact digits as strings
    data = orjson.loads(raw)["data"]
    assert data["link_id"] == str(link)
    assert data["points"] == str(2**64)
    assert data["tags"] == [str(-(2**64))]


def test_lone_surrogate_escape_is_accepted_and_loads_as_replacement_character(
    project: Project, spool: Spool, client: httpx.Client
) -> None:
    """A string cut in the middle of an emoji (`\\ud83d` without its low half) is valid JSON
    but was answered 400, and Customer.io holds every later event of the webhook after a 400."""
    body = (
        b'{"event_id":"sur1","object_type":"email","metric":"sent","timestamp":%d,'
        b'"data":{"identifiers":{"id":"u1"},"subject":"Big sale \\ud83d",'
        b'"content":"\\ud83d\\ude00 ok","note\\udc00":"x"}}' % int(time.time())
    )
    assert client.post(URL, **signed(body)).status_code == 200
    assert spool.unloaded()[0].body == body  # the spool keeps the body as received
    # not JSON (orjson and the JSON grammar refuse them): signed, so kept, loaded into `other`
    for bad in (b'{"event_id":"n1","timestamp":NaN}', b'{"subject":"\\ud83d"'):
        assert client.post(URL, **signed(bad)).json()["stored_as"] == "other"

    assert load_pending(project, spool=spool).tables == {"email": 1, "other": 2}
    with warehouse(project) as con:
        subject, content, raw = con.execute(
            "select subject, content, raw from customerio.email"
        ).fetchone()
    assert (subject, content) == ("Big sale \ufffd", "\U0001f600 ok")
    data = orjson.loads(raw)["data"]
    assert (data["subject"], data["note\ufffd"]) == ("Big sale \ufffd", "x")


def test_a_data_key_spelled_like_event_id_does_not_replace_the_merge_key(
    project: Project, spool: Spool
) -> None:
    """`eventId` in `data` became the `event_id` column: events sharing it merged into one row."""
    first = make_event("email", "opened")
    second = make_event("email", "opened")
    third = make_event("email", "opened")
    for event in (first, second):
        event["data"]["eventId"] = "evt-1"
    third["data"]["Timestamp"] = "yesterday"
    third["data"]["_dlt_id"] = "mine"
    spool_events(spool, [first, second, third])
    assert load_pending(project, spool=spool).loaded == 3
    with warehouse(project) as con:
        rows = con.execute(
            "select event_id, data_event_id, timestamp is not null from customerio.email"
        ).fetchall()
        assert sorted(rows) == sorted(
            [
                (first["event_id"], "evt-1", True),
                (second["event_id"], "evt-1", True),
                (third["event_id"], None, True),
            ]
        )
        assert con.execute(
            "select data_timestamp, data__dlt_id from customerio.email where event_id = ?",
            [third["event_id"]],
        ).fetchone() == ("yesterday", "mine")


@pytest.mark.postgres
def test_nul_character_does_not_block_postgres_loads(
    tmp_path: Path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres text and jsonb cannot hold U+0000: one such subject failed every later load."""
    import psycopg

    project = postgres_project(tmp_path / "pg", postgres_dsn, monkeypatch, "cio_nul")
    spool = Spool(project.root / ".lockgate/webhooks")
    good = make_event("email", "sent")
    bad = make_event("email", "sent")
    bad["data"]["subject"] = "Hi\x00there"
    bad["data"]["extra\x00key"] = {"nested": "a\x00b"}
    try:
        spool_events(spool, [good, bad])
        assert load_pending(project, spool=spool).loaded == 2
        assert spool.stats().unloaded == 0
    finally:
        spool.close()
    with psycopg.connect(postgres_dsn) as con:
        rows = dict(con.execute("select event_id, subject from cio_nul.email").fetchall())
        raw = con.execute(
            "select raw->'data'->>'subject' from cio_nul.email where event_id = %s",
            [bad["event_id"]],
        ).fetchone()
    assert rows == {good["event_id"]: good["data"]["subject"], bad["event_id"]: "Hi\ufffdthere"}
    assert raw == ("Hi\ufffdthere",)


@pytest.mark.postgres
def test_event_ids_that_differ_by_a_nul_character_load_as_two_rows_in_postgres(
    tmp_path: Path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two accepted events, `a\\u0000b` and `a\\ufffdb`: Postgres holds no U+0000, so the
    first's id loaded as the second's and the merge on `event_id` kept one row of the two
    (the load counted 2). An `event_id` with U+0000 is not an id Customer.io sends: the body is
    kept as one that is not an event, under the hash of its bytes, and loads into `other`."""
    import psycopg

    project = postgres_project(tmp_path / "pg", postgres_dsn, monkeypatch, "cio_nul_id")
    spool = Spool(project.root / ".lockgate/webhooks")
    with_nul = {**make_event("email", "sent"), "event_id": "a\x00b"}
    lookalike = {**make_event("email", "sent"), "event_id": "a\ufffdb"}
    try:
        with running(create_app(spool=spool, signing_key=KEY)) as url, httpx.Client() as client:
            answer = client.post(url + "/webhooks/customerio", **signed(with_nul)).json()
            assert answer["stored_as"] == "other"
            assert "U+0000" in answer["warning"]
            assert client.post(url + "/webhooks/customerio", **signed(lookalike)).json() == {
                "ok": True
            }
        assert load_pending(project, spool=spool).tables == {"other": 1, "email": 1}
    finally:
        spool.close()
    with psycopg.connect(postgres_dsn) as con:
        (email,) = con.execute("select event_id from cio_nul_id.email").fetchall()
        (other,) = con.execute("select event_id, raw->>'event_id' from cio_nul_id.other").fetchall()
    assert email == ("a\ufffdb",)
    assert other[0].startswith("sha256:") and other[1] == "a\ufffdb"


LOADER = """
import sys, time
import time
from pathlib import Path
from lockgate.project.loader import load_project
from lockgate.webhooks.load import load_pending

root = Path(sys.argv[1])
project = load_project(root)
while True:
    stopping = (root / "stop").exists()
    try:
        load_pending(project, batch_size=40, wait=60)
    except Exception as exc:
        print(type(exc).__name__, exc, file=sys.stderr)
    if stopping:
        break
"""


@pytest.mark.slow
def test_two_loaders_at_once_lose_nothing(project: Project, spool: Spool) -> None:
    """`serve`'s background loader and a `lockgate webhooks load` at the same time shared one
    dlt working folder: events were marked loaded without reaching the warehouse, and the
    folder was left broken so that every later load failed."""
    import subprocess
    import sys

    loaders = [
        subprocess.Popen(
            [sys.executable, "-c", LOADER, str(project.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    events = []
    try:
        for _ in range(60):
            batch = [make_event("email", "opened") for _ in range(10)]
            spool_events(spool, batch)
            events += batch
            time.sleep(0.05)
    finally:
        (project.root / "stop").touch()
        for loader in loaders:
            loader.communicate(timeout=120)
    load_pending(project, spool=spool)  # whatever is left
    assert spool.stats().unloaded == 0
    with warehouse(project) as con:
        loaded = [r[0] for r in con.execute("select event_id from customerio.email").fetchall()]
    assert len(loaded) == len(set(loaded))
    assert set(loaded) == {e["event_id"] for e in events}
