"""Events/s the webhook receiver accepts durably, against a bare endpoint that discards them.

Two uvicorn servers run as separate processes on loopback, one at a time, with the same
settings: a bare Starlette endpoint that reads the body and answers 200 (the ceiling of any
HTTP receiver on this machine), and `lockgate webhooks serve --no-load` (signature check,
envelope check, SQLite WAL spool with ``synchronous=FULL`` and group commit; each 200 is sent
only after the fsync that covers its event). httpx async clients in ``--clients`` separate
processes post pre-signed events on ``--connections`` keep-alive connections in total. Rounds
alternate (bare, lockgate, bare, lockgate, ...) and the best round of each counts. The ratio
lockgate / bare is the figure (target: at least 0.5). Each server's CPU time per event is
printed too; it is steadier than wall-clock rates on a shared machine. After the run, the spool
must hold every acknowledged event, and the load of all of them into DuckDB is timed.

    .venv/bin/python bench/webhooks.py                       # 10,000 events x 2 rounds each
    .venv/bin/python bench/webhooks.py --events 2000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

KEY = b"bench-signing-key"
PATH = "/webhooks/customerio"


def bare_app():  # type: ignore[no-untyped-def]
    """A Starlette app that accepts and discards: read the body, answer 200."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def accept(request: Request) -> Response:
        await request.body()
        return Response(b'{"ok":true}', media_type="application/json")

    return Starlette(routes=[Route(PATH, accept, methods=["POST"])])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def start_bare(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--serve-bare", str(port)]
    proc = subprocess.Popen(cmd)
    wait_up(port, proc)
    return proc


def start_lockgate(root: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CUSTOMERIO_WEBHOOK_SIGNING_KEY": KEY.decode()}
    cmd = [sys.executable, "-m", "lockgate", "webhooks", "serve", "--project", str(root)]
    cmd += ["--port", str(port), "--no-load"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    wait_up(port, proc)
    return proc


def build_requests(n: int, tag: str) -> list[tuple[bytes, dict[str, str]]]:
    from lockgate.emulator.webhook_sender import Recipient, make_event, sign

    person = Recipient("42", "test@example.com", "d9c106000001")
    ts = int(time.time())
    out = []
    for i in range(n):
        event = make_event("email", "opened", person=person, event_id=f"{tag}-{i:08d}")
        body = orjson.dumps(event)
        headers = {
            "content-type": "application/json",
            "x-cio-timestamp": str(ts),
            "x-cio-signature": sign(KEY, ts, body),
        }
        out.append((body, headers))
    return out


async def blast(url: str, requests: list[tuple[bytes, dict[str, str]]], connections: int):
    """Post every request; return (seconds, acknowledged, non-2xx)."""
    queue = list(reversed(requests))
    acked = 0
    failed = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal acked, failed
        while queue:
            body, headers = queue.pop()
            for _attempt in range(5):  # a keep-alive connection closed under us: send again
                try:
                    response = await client.post(url, content=body, headers=headers)
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            else:
                failed += 1
                continue
            if response.status_code == 200:
                acked += 1
            else:
                failed += 1

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        # warm up: open every connection
        await asyncio.gather(*(client.get(url.replace(PATH, "/")) for _ in range(connections)))
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(connections)))
        elapsed = time.perf_counter() - start
    return elapsed, acked, failed


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_clients(url: str, events: int, connections: int, clients: int, tag: str):
    """Run ``clients`` client processes at once; return (seconds, acknowledged, refused)."""
    per = events // clients
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                url,
                "--events",
                str(per),
                "--connections",
                str(max(1, connections // clients)),
                "--tag",
                f"{tag}c{i}",
            ],
            stdout=subprocess.PIPE,
        )
        for i in range(clients)
    ]
    results = [orjson.loads(proc.communicate()[0]) for proc in procs]
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    return end - start, sum(r["acked"] for r in results), sum(r["failed"] for r in results)


def client_main(url: str, events: int, connections: int, tag: str) -> None:
    requests = build_requests(events, tag)
    start_at = time.time()
    elapsed, acked, failed = asyncio.run(blast(url, requests, connections))
    del start_at
    end = time.time()
    print(
        orjson.dumps(
            {"start": end - elapsed, "end": end, "acked": acked, "failed": failed}
        ).decode()
    )


async def spool_rate(folder: Path, max_group: int, events: int, writers: int) -> float:
    """Events/s through the spool alone, ``writers`` appends in flight at once."""
    from lockgate.webhooks.spool import Spool

    spool = Spool(folder, max_group=max_group)
    body = orjson.dumps({"event_id": "x", "object_type": "email", "metric": "opened"})
    queue = list(range(events))

    async def writer() -> None:
        while queue:
            i = queue.pop()
            await spool.append(f"{max_group}-{i}", body)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        return events / (time.perf_counter() - start)
    finally:
        spool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per server")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--no-load", action="store_true", help="skip timing the load")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="x", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.events, args.connections, args.tag)
        return
    if args.serve_bare:
        import uvicorn

        uvicorn.run(
            bare_app(),
            host="127.0.0.1",
            port=args.serve_bare,
            log_level="warning",
            access_log=False,
        )
        return

    root = Path(tempfile.mkdtemp(prefix="lockgate-bench-webhooks-"))
    (root / "lockgate.yml").write_text(
        "name: bench\nsources:\n  warehouse: {type: duckdb, path: warehouse.duckdb}\n"
    )
    best = {"bare": 0.0, "lockgate": 0.0}
    cpu = {"bare": float("inf"), "lockgate": float("inf")}
    total_acked = 0
    print(
        f"{args.events} events x {args.rounds} rounds, {args.connections} connections "
        f"from {args.clients} client processes"
    )
    for round_no in range(args.rounds):
        for name in ("bare", "lockgate"):
            port = free_port()
            proc = start_bare(port) if name == "bare" else start_lockgate(root, port)
            try:
                url = f"http://127.0.0.1:{port}{PATH}"
                cpu_before = cpu_seconds(proc.pid)
                elapsed, acked, failed = run_clients(
                    url, args.events, args.connections, args.clients, f"r{round_no}"
                )
                server_cpu = cpu_seconds(proc.pid) - cpu_before
            finally:
                stop(proc)
            rate = acked / elapsed
            best[name] = max(best[name], rate)
            per_event = server_cpu / max(acked, 1) * 1e6
            cpu[name] = min(cpu[name], per_event)
            if name == "lockgate":
                total_acked += acked
            print(
                f"  round {round_no + 1} {name:9s} {rate:8.0f} events/s, server CPU "
                f"{per_event:6.0f} us/event ({acked} acknowledged, {failed} refused, "
                f"{elapsed:.2f} s)"
            )
    with sqlite3.connect(root / ".lockgate/webhooks/spool.sqlite3") as con:
        stored = con.execute("select count(*) from events").fetchone()[0]
    ratio = best["lockgate"] / best["bare"]
    print(f"bare endpoint (ceiling): {best['bare']:.0f} events/s")
    print(f"lockgate durable accept: {best['lockgate']:.0f} events/s")
    print(f"ratio: {ratio:.2f} (target >= 0.50)")
    print(
        f"server CPU per event: bare {cpu['bare']:.0f} us, lockgate {cpu['lockgate']:.0f} us "
        f"(CPU-bound ceiling ratio {cpu['bare'] / cpu['lockgate']:.2f})"
    )
    print(f"spool holds {stored} of {total_acked} acknowledged events")
    print(
        f"machine: {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    if stored != total_acked:
        raise SystemExit("FAIL: an acknowledged event is missing from the spool")
    spool_events = max(200, args.events // 10)
    group = asyncio.run(spool_rate(root / "spool-group", 2000, spool_events, args.connections))
    single = asyncio.run(spool_rate(root / "spool-single", 1, spool_events, args.connections))
    print(
        f"spool alone, {args.connections} appends in flight: group commit {group:.0f} events/s, "
        f"one fsync per event {single:.0f} events/s ({group / single:.1f}x)"
    )
    if not args.no_load:
        from lockgate.project.loader import load_project
        from lockgate.webhooks.load import load_pending

        started = time.perf_counter()
        result = load_pending(load_project(root))
        took = time.perf_counter() - started
        print(
            f"loaded {result.loaded} events into DuckDB with dlt in {took:.1f} s "
            f"({result.loaded / took:.0f} events/s, {result.batches} batches)"
        )


if __name__ == "__main__":
    main()
