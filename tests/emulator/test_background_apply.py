"""Accepted Track v2 batches are applied in the background once batches stop arriving; a read
at any moment (before, during or after that) sees every accepted record exactly once."""

from __future__ import annotations

import time

import httpx
import orjson

from lockgate.emulator import Emulator


def batch(start: int, size: int, plan: str) -> bytes:
    ops = [
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"id": f"u{i}"},
            "attributes": {"plan": plan, "n": i},
        }
        for i in range(start, start + size)
    ]
    return orjson.dumps({"batch": ops})


def test_reads_during_background_apply_see_every_accepted_record() -> None:
    emu = Emulator()
    with emu.serve() as url, httpx.Client(base_url=url, auth=emu.track_auth) as http:
        # the same people twice, the second time with a new plan: order must hold in the queue
        for plan in ("free", "pro"):
            for k in range(30):
                answer = http.post("/api/v2/batch", content=batch(k * 500, 500, plan))
                assert answer.status_code == 200
        time.sleep(0.25)  # batches have stopped: the emulator starts applying on its own
        first = emu.people()  # a read in the middle of that applies the rest first
        time.sleep(0.5)
        again = emu.people()

    assert len(first) == 15_000 and len(again) == 15_000
    assert {p.attributes["plan"] for p in first} == {"pro"}
    assert sorted(p.attributes["n"] for p in again) == list(range(15_000))
    stats = emu.stats
    assert stats.records_ingested == 30_000
    # answering leaves out applying, so the emulator answers faster than it ingests end to end
    assert stats.accept_records_per_s >= stats.ingest_records_per_s > 0
