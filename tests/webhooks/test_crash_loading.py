"""Nothing acknowledged is lost or loaded twice when `lockgate webhooks serve` is killed while
its background loader is loading into the warehouse.

Each trial starts `serve` loading every 0.1 s, sends events on 16 connections and SIGKILLs it
once a seeded number of them is acknowledged (with loads running or just done: a kill may land
in dlt's extract, normalize or load step, or between the warehouse's commit and the spool's
mark). Every other trial kills the restarted server too, after a seeded delay. The sender
then does what Customer.io does: it sends every event not acknowledged again, and some
acknowledged ones too (an acknowledgement lost on the way). A last graceful stop loads the
rest. Every acknowledged event must then be in the warehouse exactly once. Seeded
(``LOCKGATE_CRASH_SEED``) and bounded in count (``LOCKGATE_CRASH_TRIALS``).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import duckdb
import httpx
import orjson
import pytest

from lockgate.emulator.webhook_sender import make_event, sign
from lockgate.webhooks.spool import Spool

from .conftest import KEY, free_port, write_project
from .test_crash import TABLES, blast, start_server

EVENTS = 500
TRIALS = int(os.environ.get("LOCKGATE_CRASH_TRIALS", "1"))
SEED = int(os.environ.get("LOCKGATE_CRASH_SEED", "20261205"))


def resend(url: str, events: list[dict]) -> set[str]:
    """Send ``events`` one by one, as Customer.io's retries do; the ids answered 200."""
    acked = set()
    with httpx.Client(timeout=30) as client:
        for event in events:
            body = orjson.dumps(event)
            ts = int(time.time())
            headers = {"x-cio-timestamp": str(ts), "x-cio-signature": sign(KEY, ts, body)}
            response = client.post(url, content=body, headers=headers)
            assert response.status_code == 200, response.text
            acked.add(event["event_id"])
    return acked


def loaded_ids(root: Path) -> Counter[str]:
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        return Counter(
            row[0]
            for table in TABLES
            for row in con.execute(f"select event_id from customerio.{table}").fetchall()
        )


@pytest.mark.slow
@pytest.mark.timeout(max(900, 120 * TRIALS))
def test_sigkill_while_loading_loses_nothing_and_loads_each_event_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    problems: list[str] = []
    for trial in range(TRIALS):
        root = tmp_path / f"trial{trial}"
        write_project(root)
        events = [make_event(TABLES[i % 3], "delivered") for i in range(EVENTS)]
        kill_after = rng.randint(EVENTS // 10, EVENTS * 9 // 10)
        again = rng.uniform(0.2, 3.0) if trial % 2 else None
        label = f"seed {SEED} trial {trial} (killed after {kill_after} acknowledged"
        port = free_port()
        url = f"http://127.0.0.1:{port}/webhooks/customerio"
        proc = start_server(root, port, "--load-interval", "0.1")
        acked: set[str] = set()
        try:
            asyncio.run(blast(url, events, acked, kill_after=kill_after, proc=proc))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

        if again is not None:  # the restarted server is killed too, while it loads
            label += f", its restart killed after {again:.2f}s"
            proc = start_server(root, port, "--load-interval", "0.1")
            rest = [e for e in events if e["event_id"] not in acked]
            try:
                time.sleep(again)
                acked |= resend(url, rest[: len(rest) // 2])
            finally:
                proc.kill()
                proc.wait(10)
        label += ")"

        # Customer.io sends what was not acknowledged again, and a few acknowledged ones
        proc = start_server(root, port, "--load-interval", "0.1")
        try:
            rest = [e for e in events if e["event_id"] not in acked]
            dupes = rng.sample([e for e in events if e["event_id"] in acked], 20)
            acked |= resend(url, rest + dupes)
        finally:
            proc.send_signal(signal.SIGTERM)  # a graceful stop loads what is left
            proc.wait(120)
        # (uvicorn ends by raising the SIGTERM it handled again)
        assert proc.returncode in (0, -signal.SIGTERM), (label, proc.stderr.read())

        loaded = loaded_ids(root)
        assert acked == {e["event_id"] for e in events}
        twice = sorted(e for e, n in loaded.items() if n > 1)
        lost = sorted(acked - set(loaded))
        if twice or lost:
            spool = Spool(root / ".lockgate" / "webhooks")
            try:
                stats, rejected = spool.stats(), spool.rejected()
            finally:
                spool.close()
            problems.append(
                f"{label}: loaded twice {twice[:3]} ({len(twice)}), lost {lost[:3]} "
                f"({len(lost)}); the spool: {stats}, reasons: "
                f"{sorted({r.reason[:300] for r in rejected})[:3]}"
            )
    assert problems == [], "\n".join(problems)
