"""Property test: random sequences of webhook deliveries to a real receiver, with loads (and
receiver restarts) in between, checked against a simple model of what must be stored.

Deliveries: the official examples (several object types) under a few event ids and
timestamps (so an id comes back with another body, and timestamps arrive out of order), exact
retries of earlier deliveries, signed bodies that are valid JSON but not events, signed bodies
that are not JSON, bad or missing signatures and stale timestamps, and bodies at and just over
the 10 MB cap. The invariants (docs/webhooks.md):

- (a) a signed body within the cap is answered 200, ``stored_as: other`` with a warning when
  it is not an event; every other delivery gets its documented status and reason (401, 413),
  and nothing of it is stored;
- (b) each accepted delivery is stored once under its key (its ``event_id``, or
  ``sha256:<hex>`` of the body when it is not an event): the first body stored under a key is
  the one kept, a later one with that key is a retry;
- (c) after a load, every stored key is in the warehouse exactly once, in its table, with the
  body that was stored; refused deliveries are not; a second load changes nothing;
- (d) `lockgate webhooks status` and `lockgate webhooks rejects` agree with the spool and the
  tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from lockgate.cli import cli
from lockgate.project.loader import Project
from lockgate.webhooks.app import create_app
from lockgate.webhooks.load import load_pending
from lockgate.webhooks.schemas import MAX_BODY
from lockgate.webhooks.spool import Spool
from lockgate.webhooks.verify import sign

from .conftest import KEY, running, write_project
from .test_official import (
    CUSTOMER_SUBSCRIBED,
    EMAIL_SENT,
    PREFERENCES_CHANGED,
    PUSH_OPENED,
    SMS_SENT,
)

URL = "/webhooks/customerio"
MB = 1 << 20
NOW = 1_765_000_000  # envelope timestamps around here; the signature's is the clock's

# the official examples and the table each one loads into
EXAMPLES: list[tuple[dict[str, Any], str]] = [
    (EMAIL_SENT, "email"),
    (SMS_SENT, "sms"),
    (PUSH_OPENED, "push"),
    (CUSTOMER_SUBSCRIBED, "customer"),
    (PREFERENCES_CHANGED, "customer"),
]
# ids that differ only in case are different events; an id holding U+0000 is not one
EVENT_IDS = [
    "01E4C4CT6YDC7Y5M7FE1GWWPQA",
    "01E4C4CT6YDC7Y5M7FE1GWWPQB",
    "evt-3",
    "EVT-3",
    "evt\x00",
    "evt\ufffd",
]

NOT_EVENTS: list[bytes] = [
    orjson.dumps([EMAIL_SENT, SMS_SENT]),
    orjson.dumps({**EMAIL_SENT, "timestamp": "1613063089"}),
    orjson.dumps({k: v for k, v in EMAIL_SENT.items() if k != "data"}),
    orjson.dumps({k: v for k, v in SMS_SENT.items() if k != "event_id"}),
    orjson.dumps({**EMAIL_SENT, "event_id": ""}),
    orjson.dumps({**PUSH_OPENED, "data": [1, 2]}),
    b"{}",
    b"null",
    b"42",
    b'"sent"',
    b"true",
]
NOT_JSON: list[bytes] = [
    b"",
    b"{not json",
    orjson.dumps(EMAIL_SENT)[:-1],
    b'{"event_id":"n1","timestamp":NaN}',
    b"\xff\xfe{}",
]


def event_body(example: int, event_id: str, timestamp: int, extra: tuple[str, Any] | None) -> bytes:
    event, _ = EXAMPLES[example]
    data = {**event["data"], extra[0]: extra[1]} if extra else event["data"]
    doc = {**event, "event_id": event_id, "timestamp": timestamp, "data": data}
    return json.dumps(doc, separators=(",", ":")).encode()  # orjson writes no int beyond 64 bits


def padded_event(size: int) -> bytes:
    """A valid `email_sent` with Body Content, exactly ``size`` bytes long."""
    base = {**EMAIL_SENT, "event_id": "evt-big", "data": {**EMAIL_SENT["data"], "content": ""}}
    empty = len(orjson.dumps(base))
    base["data"]["content"] = "x" * (size - empty)
    body = orjson.dumps(base)
    assert len(body) == size
    return body


# ---------------------------------------------------------------------------- strategies

valid = st.tuples(
    st.just("valid"),
    st.integers(0, len(EXAMPLES) - 1),
    st.sampled_from(EVENT_IDS),
    st.one_of(
        st.integers(NOW - 10**6, NOW + 10**6),
        # out of the datetime range: milliseconds, 64-bit limits, beyond 64 bits
        st.sampled_from([0, -1, NOW * 1000, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
    ),
    # an extra `data` key: new columns, type clashes, names of envelope or dlt columns
    st.one_of(
        st.just(None),
        st.tuples(
            st.sampled_from(["note", "eventId", "Timestamp", "_dlt_id", "raw_text", "campaign_id"]),
            st.sampled_from(["a", "b", 5, 1.5, True, None, {"x": 1}, [1, "y"], 2**63, 2**64]),
        ),
    ),
)
retry = st.tuples(st.just("retry"), st.integers(0, 10**6))
not_event = st.tuples(st.just("not_event"), st.sampled_from(NOT_EVENTS))
not_json = st.tuples(st.just("not_json"), st.sampled_from(NOT_JSON))
unsigned = st.tuples(
    st.just("unsigned"),
    st.sampled_from(["wrong_key", "no_signature", "no_timestamp", "stale", "future", "not_int"]),
    st.integers(0, len(EXAMPLES) - 1),
    st.sampled_from(EVENT_IDS),
)
deliveries = st.one_of(valid, valid, retry, retry, not_event, not_json, unsigned)
op = st.one_of(
    deliveries,
    deliveries,
    deliveries,
    st.tuples(st.just("load")),
    st.tuples(st.just("restart")),
)
# whether the sequence also sends a body of exactly the cap and one a byte over it (rare)
# (0: no; 1: with a Content-Length; 2: chunked)
ops = st.tuples(st.lists(op, min_size=1, max_size=25), st.sampled_from([0] * 8 + [1, 2]))


# ---------------------------------------------------------------------------- the harness


class Receiver:
    """A receiver on a loopback port over the project's spool, restartable."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._stack: contextlib.ExitStack | None = None
        self.client: httpx.Client | None = None
        self.start()

    def start(self) -> None:
        stack = contextlib.ExitStack()
        spool = Spool(self.project.spool_dir)
        stack.callback(spool.close)
        url = stack.enter_context(running(create_app(spool=spool, signing_key=KEY)))
        self.client = stack.enter_context(httpx.Client(base_url=url, timeout=30))
        self._stack = stack

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        assert self.client is not None
        return self.client.post(URL, content=body, headers=headers)


def signed_headers(body: bytes, *, key: bytes = KEY, ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    return {"x-cio-timestamp": str(ts), "x-cio-signature": sign(key, ts, body)}


def warehouse_rows(project: Project) -> dict[str, list[tuple[str, Any, Any]]]:
    """Every table of the webhook dataset: (event_id, raw, raw_text) per row."""
    path = project.root / "warehouse.duckdb"
    if not path.exists():
        return {}
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [
            t
            for (t,) in con.execute(
                "select table_name from information_schema.tables "
                "where table_schema = 'customerio' and table_name not like '_dlt%'"
            ).fetchall()
        ]
        out: dict[str, list[tuple[str, Any, Any]]] = {}
        for table in tables:
            columns = {
                c
                for (c,) in con.execute(
                    "select column_name from information_schema.columns "
                    "where table_schema = 'customerio' and table_name = ?",
                    [table],
                ).fetchall()
            }
            raw = "raw" if "raw" in columns else "null"
            raw_text = "raw_text" if "raw_text" in columns else "null"
            out[table] = con.execute(
                f"select event_id, {raw}, {raw_text} from customerio.{table} order by event_id"
            ).fetchall()
    return out


def cli_json(project: Project, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["webhooks", *args, "--project", str(project.root), "--json"])
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


class Model:
    """What the spool and the warehouse must hold: key -> (table, first body stored)."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[str, bytes]] = {}
        self.loaded: set[str] = set()
        self.sent: list[tuple[bytes, str, str]] = []  # accepted deliveries: body, key, table

    def accept(self, body: bytes, key: str, table: str) -> None:
        self.sent.append((body, key, table))
        self.stored.setdefault(key, (table, body))


def expect_stored(response: httpx.Response, *, event: bool) -> None:
    assert response.status_code == 200, response.text
    answer = response.json()
    if event:
        assert answer == {"ok": True}
    else:
        assert answer["ok"] is True and answer["stored_as"] == "other"
        assert isinstance(answer["warning"], str) and answer["warning"]


def expect_refused(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status
    assert reason in error["reason"], error
    assert error["hint"]


def deliver(receiver: Receiver, model: Model, step: tuple[Any, ...]) -> None:
    kind = step[0]
    if kind == "valid":
        _, example, event_id, timestamp, note = step
        body = event_body(example, event_id, timestamp, note)
        is_event = "\x00" not in event_id
        expect_stored(receiver.post(body, signed_headers(body)), event=is_event)
        if is_event:
            model.accept(body, event_id, EXAMPLES[example][1])
        else:
            model.accept(body, "sha256:" + hashlib.sha256(body).hexdigest(), "other")
    elif kind == "retry":
        if not model.sent:
            return
        body, key, table = model.sent[step[1] % len(model.sent)]
        response = receiver.post(body, signed_headers(body))  # signed anew, as each retry is
        expect_stored(response, event=not key.startswith("sha256:"))
        model.accept(body, key, table)
    elif kind in ("not_event", "not_json"):
        body = step[1]
        expect_stored(receiver.post(body, signed_headers(body)), event=False)
        model.accept(body, "sha256:" + hashlib.sha256(body).hexdigest(), "other")
    elif kind == "unsigned":
        _, how, example, event_id = step
        body = event_body(example, event_id, NOW, ("note", "unsigned"))
        now = int(time.time())
        headers = signed_headers(body)
        if how == "wrong_key":
            headers = signed_headers(body, key=b"not-the-key")
            reason = "does not match"
        elif how == "no_signature":
            del headers["x-cio-signature"]
            reason = "missing `X-CIO-Signature`"
        elif how == "no_timestamp":
            del headers["x-cio-timestamp"]
            reason = "missing `X-CIO-Timestamp`"
        elif how == "stale":
            headers = signed_headers(body, ts=now - 3600)
            reason = "s old"
        elif how == "future":
            headers = signed_headers(body, ts=now + 3600)
            reason = "in the future"
        else:
            headers = {**headers, "x-cio-timestamp": "soon"}
            reason = "is not an integer"
        expect_refused(receiver.post(body, headers), 401, reason)
    elif kind == "oversized":
        _, size, chunked = step
        body = padded_event(size)
        if chunked:  # no Content-Length: the cap is enforced while reading
            pieces = [body[i : i + MB] for i in range(0, len(body), MB)]
            assert receiver.client is not None
            response = receiver.client.post(URL, content=iter(pieces), headers=signed_headers(body))
        else:
            response = receiver.post(body, signed_headers(body))
        if len(body) > MAX_BODY:
            expect_refused(response, 413, f"larger than {MAX_BODY} bytes")
        else:
            expect_stored(response, event=True)
            model.accept(body, "evt-big", "email")
    else:
        raise AssertionError(step)


def check_spool(project: Project, model: Model) -> None:
    spool = Spool(project.spool_dir)
    try:
        stored = {r.event_id: r.body for r in spool}
    finally:
        spool.close()
    assert stored == {key: body for key, (_, body) in model.stored.items()}
    status = cli_json(project, "status")
    assert status == {
        "stored": len(model.stored),
        "unloaded": len(set(model.stored) - model.loaded),
        "rejected": 0,
    }
    assert cli_json(project, "rejects") == []


def as_loaded(value: Any) -> Any:
    """A JSON value as the warehouse's `raw` holds it: an integer no 64-bit JSON number holds
    as a string of its digits (docs/webhooks.md)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {k: as_loaded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_loaded(v) for v in value]
    return value


def check_warehouse(project: Project, model: Model) -> None:
    tables = warehouse_rows(project)
    found: dict[str, list[str]] = {}
    for table, rows in tables.items():
        for event_id, raw, raw_text in rows:
            found.setdefault(event_id, []).append(table)
            assert event_id in model.loaded, (table, event_id)
            expected_table, body = model.stored[event_id]
            if raw is not None:
                assert orjson.loads(raw) == as_loaded(json.loads(body)), event_id
            else:
                assert raw_text == body.decode("utf-8", "replace"), event_id
    # each loaded key exactly once, in its table
    assert {k: v for k, v in found.items()} == {k: [model.stored[k][0]] for k in model.loaded}


def run_sequence(steps: list[tuple[Any, ...]], big: int, root: Path) -> None:
    project = write_project(root / "proj")
    model = Model()
    receiver = Receiver(project)
    try:
        if big:
            over, at = ("oversized", MAX_BODY + 1, big == 2), ("oversized", MAX_BODY, big == 2)
            steps = [*steps[:10], over, at, *steps[10:]]
        for step in [*steps, ("load",)]:
            if step[0] == "load":
                result = load_pending(project)
                assert result.rejected == []
                assert result.loaded == len(set(model.stored) - model.loaded)
                model.loaded = set(model.stored)
                check_warehouse(project, model)
                before = warehouse_rows(project)
                assert load_pending(project).loaded == 0  # loading twice changes nothing
                assert warehouse_rows(project) == before
                check_spool(project, model)
            elif step[0] == "restart":
                receiver.stop()
                receiver.start()
            else:
                deliver(receiver, model, step)
        check_spool(project, model)
    finally:
        receiver.stop()


# CI: derandomized and small (about 15 s on 2 cores); explore with
# LOCKGATE_HYPOTHESIS_EXAMPLES=200 (random seeds) before changing the receiver or the loader
EXPLORE = int(os.environ.get("LOCKGATE_HYPOTHESIS_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=EXPLORE or 8,
    deadline=None,
    derandomize=not EXPLORE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # exploring: report the first failure unshrunk (a shrink replays whole sequences: minutes)
    phases=[Phase.explicit, Phase.reuse, Phase.generate] if EXPLORE else list(Phase),
)


@SETTINGS
@given(ops)
# the cap, read in chunks (no Content-Length), with a retry and a load around it
@example(([("valid", 0, "evt-3", NOW, None), ("load",), ("retry", 0)], 2))
def test_every_accepted_delivery_is_stored_and_loaded_once(case: Any) -> None:
    steps, big = case
    root = Path(tempfile.mkdtemp(prefix="hookprops-"))
    try:
        run_sequence(steps, big, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
