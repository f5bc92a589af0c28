"""Answers the emulator never gives but a real Track API or a proxy might.

A tiny ASGI server stands in for those cases only; everything else is tested against the
emulator in ``test_customerio_client.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from lockgate.destinations import Outcome, Record
from lockgate.destinations.customerio import CustomerIOClient, CustomerIOSettings
from lockgate.errors import DestinationError

Answer = Callable[[list[dict[str, Any]]], tuple[int, dict[str, str], bytes]]


def server(answer: Answer, seen: list[list[dict[str, Any]]]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        ops = orjson.loads(body)["batch"]
        seen.append(ops)
        status, headers, content = answer(ops)
        raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})

    return app


def client_for(answer: Answer, seen: list[list[dict[str, Any]]]) -> CustomerIOClient:
    settings = CustomerIOSettings(site_id="s", api_key="k", track_url="http://t", backoff_base=0.0)
    return CustomerIOClient(settings, transport=httpx.ASGITransport(server(answer, seen)))


def people(n: int) -> list[Record]:
    return [
        Record(str(i), {"type": "person", "action": "identify", "identifiers": {"id": str(i)}})
        for i in range(n)
    ]


def test_a_redirect_to_the_other_region_stops_the_run_naming_the_region_setting() -> None:
    seen: list[list[dict[str, Any]]] = []
    moved = {"location": "https://track-eu.customer.io/api/v2/batch"}
    client = client_for(lambda ops: (307, moved, b""), seen)
    with pytest.raises(DestinationError, match="CUSTOMERIO_REGION") as info:
        client.deliver_all(people(3))
    assert "track-eu.customer.io" in str(info.value)


def test_an_unexpected_4xx_stops_the_run_instead_of_sending_records_one_by_one() -> None:
    seen: list[list[dict[str, Any]]] = []
    client = client_for(lambda ops: (409, {}, b'{"meta":{"error":"conflict"}}'), seen)
    with pytest.raises(DestinationError, match="conflict"):
        client.deliver_all(people(100))
    assert len(seen) == 1


def test_a_400_naming_batch_indexes_rejects_those_and_resends_the_rest_once() -> None:
    seen: list[list[dict[str, Any]]] = []

    def answer(ops: list[dict[str, Any]]) -> tuple[int, dict[str, str], bytes]:
        bad = [i for i, op in enumerate(ops) if op["identifiers"]["id"] in {"3", "7"}]
        if not bad:
            return 200, {}, b"{}"
        errors = [{"batch_index": i, "reason": "invalid", "field": "id"} for i in bad]
        return 400, {}, orjson.dumps({"errors": errors})

    results = {r.key: r for r in client_for(answer, seen).deliver_all(people(10))}
    assert {k for k, r in results.items() if r.outcome is Outcome.REJECTED} == {"3", "7"}
    assert results["3"].reason == "invalid: field `id`"
    assert sum(r.outcome is Outcome.DELIVERED for r in results.values()) == 8
    assert len(seen) == 2


def test_a_207_whose_errors_cannot_be_placed_is_isolated_by_splitting() -> None:
    seen: list[list[dict[str, Any]]] = []

    def answer(ops: list[dict[str, Any]]) -> tuple[int, dict[str, str], bytes]:
        if any(op["identifiers"]["id"] == "5" for op in ops):
            return 207, {}, b'{"errors":[{"reason":"invalid","message":"somewhere"}]}'
        return 200, {}, b"{}"

    results = {r.key: r for r in client_for(answer, seen).deliver_all(people(8))}
    assert results["5"].outcome is Outcome.REJECTED and results["5"].status == 207
    assert "somewhere" in (results["5"].reason or "")
    assert all(r.outcome is Outcome.DELIVERED for k, r in results.items() if k != "5")


def test_a_400_echoing_a_huge_payload_gives_bounded_reasons() -> None:
    """An answer quoting the value or the whole payload sent was kept whole in the reason
    (the report, `lockgate runs show`, the run log): now each error's text is cut, saying how
    long it was, and so is the whole answer."""
    seen: list[list[dict[str, Any]]] = []
    echo = "x" * 5000

    def answer(ops: list[dict[str, Any]]) -> tuple[int, dict[str, str], bytes]:
        ids = [op["identifiers"]["id"] for op in ops]
        if ids == ["1"]:  # alone: 50 errors naming no record, each echoing the value
            errors = [{"reason": "invalid", "message": f"bad `{echo}` #{n}"} for n in range(50)]
            return 400, {}, orjson.dumps({"errors": errors})
        if "1" in ids:  # an error echoing the whole payload: the batch is split
            return 400, {}, orjson.dumps({"meta": {"error": f"bad batch {orjson.dumps(ops)!r}"}})
        if "2" in ids:  # an error naming the record, echoing its value
            error = {"batch_index": ids.index("2"), "reason": "invalid", "field": "id"}
            return 400, {}, orjson.dumps({"errors": [{**error, "message": echo}]})
        return 200, {}, b"{}"

    results = {r.key: r for r in client_for(answer, seen).deliver_all(people(3))}
    assert results["0"].outcome is Outcome.DELIVERED
    one, two = results["1"], results["2"]
    assert one.outcome is two.outcome is Outcome.REJECTED
    assert one.reason is not None and two.reason is not None
    assert one.reason.startswith("HTTP 400: invalid: bad `xxx")
    assert len(one.reason) < 1100 and one.reason.endswith(" characters)")
    assert two.reason == f"invalid: field `id`: {'x' * 280}… (5000 characters)"


def test_a_503_with_retry_after_waits_that_long_before_sending_again() -> None:
    """A 503 saying `Retry-After: 45` (maintenance, overload) was retried on the client's own
    short backoff: every retry came too early and, with the retries spent, the records were
    dead-lettered. The wait it asks for is honoured as for a 429 (HTTP: Retry-After goes with
    503 as with 429), and the records are delivered."""
    seen: list[list[dict[str, Any]]] = []
    now = [1000.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    def answer(ops: list[dict[str, Any]]) -> tuple[int, dict[str, str], bytes]:
        if now[0] < 1000.0 + 45:  # down for 45 s, and says so
            return 503, {"retry-after": "45"}, b'{"meta":{"error":"maintenance"}}'
        return 200, {}, b"{}"

    settings = CustomerIOSettings(
        site_id="s", api_key="k", track_url="http://t", max_retries=3, retry_after_cap=120.0
    )
    client = CustomerIOClient(
        settings,
        transport=httpx.ASGITransport(server(answer, seen)),
        clock=lambda: now[0],
        sleep=sleep,
    )
    results = client.deliver_all(people(3))
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert len(seen) == 2
    assert [w for w in waits if w >= 1] == [45.0]  # (the others: the rate limit's pacing)
