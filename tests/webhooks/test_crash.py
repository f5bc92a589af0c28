"""Nothing acknowledged is lost: SIGKILL `lockgate webhooks serve` under load, restart, load."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import orjson
import pytest

from lockgate.emulator.webhook_sender import make_event, send_events, sign
from lockgate.project.loader import load_project
from lockgate.webhooks.load import load_pending

from .conftest import KEY, free_port, write_project

TABLES = ("email", "sms", "push")


def start_server(root: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CUSTOMERIO_WEBHOOK_SIGNING_KEY": KEY.decode()}
    cmd = [sys.executable, "-m", "lockgate", "webhooks", "serve", "--project", str(root)]
    cmd += ["--port", str(port), *(options or ["--no-load"])]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/webhooks/health", timeout=1)
            return proc
        except httpx.TransportError:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve did not start")


async def blast(url: str, events: list[dict], acked: set[str], kill_after: int, proc) -> None:
    """Send events on 16 connections; SIGKILL the server once `kill_after` are acknowledged."""
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for event in events:
        queue.put_nowait(event)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            event = queue.get_nowait()
            body = orjson.dumps(event)
            ts = int(time.time())
            headers = {"x-cio-timestamp": str(ts), "x-cio-signature": sign(KEY, ts, body)}
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.TransportError:
                continue
            if response.status_code == 200:
                acked.add(event["event_id"])
                if len(acked) >= kill_after and proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)

    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(timeout=5, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(16)))


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_event(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write_project(root)
    events = [make_event(TABLES[i % 3], "delivered") for i in range(400)]
    port = free_port()
    proc = start_server(root, port)
    acked: set[str] = set()
    try:
        url = f"http://127.0.0.1:{port}/webhooks/customerio"
        asyncio.run(blast(url, events, acked, kill_after=150, proc=proc))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert 150 <= len(acked) < len(events)

    # restart: the server comes back on the same spool, and the sender resends the rest
    proc = start_server(root, port)
    try:
        rest = [e for e in events if e["event_id"] not in acked][:30]
        dupes = [e for e in events if e["event_id"] in acked][:10]
        with httpx.Client() as client:
            for event in rest + dupes:
                body = orjson.dumps(event)
                ts = int(time.time())
                headers = {"x-cio-timestamp": str(ts), "x-cio-signature": sign(KEY, ts, body)}
                response = client.post(url, content=body, headers=headers)
                assert response.status_code == 200
                acked.add(event["event_id"])
    finally:
        proc.terminate()
        proc.wait(10)

    load_pending(load_project(root))
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        loaded = [
            row[0]
            for table in TABLES
            for row in con.execute(f"select event_id from customerio.{table}").fetchall()
        ]
    assert len(loaded) == len(set(loaded)), "an event was loaded twice"
    assert acked <= set(loaded), f"{len(acked - set(loaded))} acknowledged events were lost"


def test_sigterm_loads_what_was_accepted(tmp_path: Path) -> None:
    """A graceful stop runs one last load, so nothing waits in the spool needlessly."""
    root = tmp_path / "proj"
    write_project(root)
    port = free_port()
    proc = start_server(root, port, "--load-interval", "3600")
    events = [make_event("email", "opened") for _ in range(20)]
    try:
        report = send_events(f"http://127.0.0.1:{port}/webhooks/customerio", KEY, events)
        assert len(report.acknowledged) == len(events)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        loaded = {row[0] for row in con.execute("select event_id from customerio.email").fetchall()}
    assert loaded == {e["event_id"] for e in events}
