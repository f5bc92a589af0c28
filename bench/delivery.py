"""Delivery benchmark: Lockgate's Customer.io client against a raw ceiling and the official client.

Everything runs against the Lockgate emulator as shipped (``lockgate emulator``, its own process,
a TCP_NODELAY listener) over loopback HTTP, at 0 ms and at 50 ms of added server latency:

(a) raw ceiling: batch bodies prebuilt before the clock starts, POSTed to /api/v2/batch with plain
    httpx async (8 in flight, keep-alive), no Lockgate code;
(b) Lockgate: ``CustomerIOClient.deliver()`` on the same records given as dicts (it encodes,
    packs, paces, retries and produces one Result per record);
(c) baseline: the official ``customerio`` Python package (``make client-venvs``), one
    ``identify()`` per record, run for a bounded time and extrapolated. That client is
    https-only; we point its ``base_url`` at the emulator's plain-HTTP listener and mount its own
    retrying keep-alive adapter for ``http://`` (so TLS cost is not charged to it).

Then: rate-limit conformance (emulator limiting Track at 100 req/s, client at its default
100 req/s with small batches: achieved rate, share of 429s, nothing lost or duplicated), and
encoding + packing of the records into batch bodies with orjson, msgspec and stdlib json.

Usage::

    python bench/delivery.py                      # 1,000,000 records (minutes)
    python bench/delivery.py --records 50000 --baseline-seconds 5 --conformance-seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import orjson

from lockgate.destinations import Outcome, Record
from lockgate.destinations.customerio import CustomerIOClient, CustomerIOSettings
from lockgate.destinations.customerio.batching import Packer
from lockgate.emulator.config import DEFAULT_API_KEY, DEFAULT_SITE_ID

ROOT = Path(__file__).resolve().parent.parent
LOCKGATE = Path(sys.executable).with_name("lockgate")
BASELINE_PYTHON = ROOT / ".venv-customerio" / "bin" / "python"
AUTH = (DEFAULT_SITE_ID, DEFAULT_API_KEY)


def op(i: int) -> dict[str, Any]:
    return {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": f"user-{i}"},
        "attributes": {
            "email": f"user-{i}@example.com",
            "plan": "pro" if i % 3 else "free",
            "seats": i % 50,
            "active": True,
        },
    }


def records(n: int, start: int = 0) -> list[Record]:
    return [Record(f"user-{i}", op(i)) for i in range(start, start + n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def emulator(latency_ms: int, rate_limit: float = 0.0) -> Iterator[tuple[str, int]]:
    """``lockgate emulator`` in its own process; yields its base URL and process id."""
    port = free_port()
    args = [str(LOCKGATE), "emulator", "--port", str(port), "--latency-ms", str(latency_ms)]
    args += ["--rate-limit", str(rate_limit)]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/_emulator/stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    err = log.read()[-2000:]
                    raise RuntimeError(f"emulator did not start: {err!r}") from None
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (Linux ``/proc``), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def emu_stats(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{url}/_emulator/stats", timeout=60).json()
    return result


def emu_reset(url: str) -> None:
    httpx.post(f"{url}/_emulator/reset", timeout=60).raise_for_status()


# -- (a) raw ceiling ------------------------------------------------------------------------


def raw_bodies(n: int, max_bytes: int = 499_000) -> list[bytes]:
    """Batch bodies built with orjson alone (outside the timed part)."""
    bodies: list[bytes] = []
    ops: list[bytes] = []
    size = 12
    for i in range(n):
        data = orjson.dumps(op(i))
        if ops and size + len(data) + 1 > max_bytes:
            bodies.append(b'{"batch":[' + b",".join(ops) + b"]}")
            ops, size = [], 12
        ops.append(data)
        size += len(data) + 1
    if ops:
        bodies.append(b'{"batch":[' + b",".join(ops) + b"]}")
    return bodies


async def post_raw(url: str, bodies: list[bytes], concurrency: int = 8) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(
        base_url=url, auth=AUTH, limits=limits, timeout=120, headers=headers
    ) as client:
        queue = iter(bodies)

        async def worker() -> None:
            for body in queue:
                response = await client.post("/api/v2/batch", content=body)
                response.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


# -- (b) Lockgate -----------------------------------------------------------------------------


async def run_client(
    url: str, recs: list[Record], **overrides: Any
) -> tuple[float, Any, dict[Outcome, int]]:
    settings = CustomerIOSettings(site_id=AUTH[0], api_key=AUTH[1], track_url=url, **overrides)
    client = CustomerIOClient(settings)
    outcomes: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
    start = time.perf_counter()
    async for results in client.deliver(recs):
        for r in results:
            outcomes[r.outcome] += 1
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed, client.stats, outcomes


async def conformance_in_process(count: int, ops: int, limit: float) -> tuple[float, Any, Any]:
    from lockgate.emulator import Emulator, EmulatorConfig

    emu = Emulator(EmulatorConfig(track_rate_limit=limit))
    settings = CustomerIOSettings(
        site_id=AUTH[0],
        api_key=AUTH[1],
        track_url="http://emulator",
        max_batch_ops=ops,
        rate_limit=limit,
    )
    client = CustomerIOClient(settings, transport=emu.async_transport())
    start = time.perf_counter()
    async for _ in client.deliver(records(count)):
        pass
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed, client.stats, emu.stats


# -- (c) the official client ------------------------------------------------------------------

BASELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from customerio import CustomerIO
    url, site_id, api_key, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    cio = CustomerIO(site_id, api_key)
    cio.base_url = url + "/api/v1"              # https-only client: use the plain listener
    cio.http.mount("http://", cio.http.adapters["https://"])  # its retrying keep-alive adapter
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        cio.identify(f"base-{n}", email=f"base-{n}@example.com",
                     plan="pro" if n % 3 else "free", seats=n % 50, active=True)
        n += 1
    print(json.dumps({"records": n, "seconds": time.perf_counter() - start}))
    """
)


def run_baseline(url: str, seconds: float) -> tuple[int, float]:
    if not BASELINE_PYTHON.exists():
        raise SystemExit(f"`{BASELINE_PYTHON}` is missing: run `make client-venvs` first")
    out = subprocess.run(
        [str(BASELINE_PYTHON), "-c", BASELINE_SCRIPT, url, *AUTH, str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    doc = json.loads(out.stdout)
    return int(doc["records"]), float(doc["seconds"])


# -- encoding ---------------------------------------------------------------------------------


def pack_all(recs: list[Record], dumps: Callable[[Any], bytes]) -> tuple[float, int]:
    start = time.perf_counter()
    packer = Packer(max_bytes=499_000, dumps=dumps)
    total = 0
    it = iter(recs)
    while chunk := list(itertools.islice(it, 4096)):
        full, _ = packer.feed(chunk)
        for batch in full:
            total += len(batch.body())
    last = packer.flush()
    if last is not None:
        total += len(last.body())
    return time.perf_counter() - start, total


def stdlib_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# -- main -------------------------------------------------------------------------------------


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--latencies", default="0,50", help="added server latency, ms")
    parser.add_argument("--baseline-seconds", type=float, default=15.0)
    parser.add_argument("--conformance-seconds", type=float, default=20.0)
    parser.add_argument("--skip", default="", help="comma list of: throughput,conformance,encode")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    n = args.records
    print(
        f"# bench/delivery.py  records={n:,}  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(f"# {platform.platform()}  python {platform.python_version()}  cores={os.cpu_count()}")

    if "throughput" not in skip:
        recs = records(n)
        bodies = raw_bodies(n)
        print(f"\n## throughput: {n:,} identify records, {len(bodies)} batch bodies")
        for latency in (int(x) for x in args.latencies.split(",")):
            with emulator(latency) as (url, pid):
                cpu0 = cpu_seconds(pid)
                raw_s = asyncio.run(post_raw(url, bodies))
                raw_emu = emu_stats(url)  # applies what is still queued
                raw_cpu = cpu_seconds(pid) - cpu0
                emu_reset(url)
                cpu0 = cpu_seconds(pid)
                client_s, stats, outcomes = asyncio.run(run_client(url, recs))
                client_emu = emu_stats(url)
                client_cpu = cpu_seconds(pid) - cpu0
                emu_reset(url)
                base_n, base_s = run_baseline(url, args.baseline_seconds)
            raw_rps, client_rps, base_rps = n / raw_s, n / client_s, base_n / base_s
            print(f"\n### {latency} ms added latency")
            print(
                f"(a) raw ceiling     {raw_s:8.2f} s  {raw_rps:>12,.0f} records/s  "
                f"(emulator ingested {raw_emu['records_ingested']:,}; its own ingest rate "
                f"{raw_emu['ingest_records_per_s']:,.0f} records/s, answering "
                f"{raw_emu.get('accept_records_per_s', 0):,.0f} records/s; emulator process CPU "
                f"{raw_cpu / n * 1e6:.1f} us/record)"
            )
            print(
                f"(b) lockgate client {client_s:8.2f} s  {client_rps:>12,.0f} records/s  "
                f"(emulator ingested {client_emu['records_ingested']:,} at "
                f"{client_emu['ingest_records_per_s']:,.0f} records/s, answering "
                f"{client_emu.get('accept_records_per_s', 0):,.0f} records/s, CPU "
                f"{client_cpu / n * 1e6:.1f} us/record; {stats.requests} requests, "
                f"{stats.retries} retries; delivered {outcomes[Outcome.DELIVERED]:,}, "
                f"rejected {outcomes[Outcome.REJECTED]}, dead {outcomes[Outcome.DEAD_LETTER]})"
            )
            print(
                f"(c) official client {base_s:8.2f} s  {base_rps:>12,.1f} records/s  "
                f"({base_n:,} identify calls in {args.baseline_seconds:g} s, extrapolated: "
                f"{n:,} would take {n / base_rps / 3600:,.1f} h)"
            )
            print(f"    client / raw ceiling = {client_rps / raw_rps:.0%}   (target >= 60%)")
            target = 250 if latency == 0 else 4000
            print(
                f"    client / official    = {client_rps / base_rps:,.0f}x  "
                f"(target >= {target:,}x at {latency} ms)"
            )
        del recs, bodies

    if "conformance" not in skip:
        limit, ops = 100.0, 5
        count = int(limit * args.conformance_seconds * ops)
        print(
            f"\n## rate-limit conformance: emulator limits Track at {limit:g} req/s; "
            f"{count:,} records, {ops} per batch"
        )
        with emulator(0) as (url, _):
            bodies = raw_bodies(min(count, 2000), max_bytes=ops * 140)
            capacity = len(bodies) / asyncio.run(post_raw(url, bodies))
        print(f"emulator capacity for such requests, no limit, raw httpx: {capacity:.0f} req/s")
        with emulator(0, rate_limit=limit) as (url, _):
            seconds, stats, outcomes = asyncio.run(
                run_client(url, records(count), max_batch_ops=ops, rate_limit=limit)
            )
            s = emu_stats(url)
        sustained = stats.requests / seconds
        print(
            f"requests {stats.requests:,} in {seconds:.2f} s = {sustained:.1f} req/s "
            f"({sustained / limit:.1%} of the limit; target >= 95%)"
        )
        print(
            f"429s {stats.throttled} = {stats.throttled / stats.requests:.2%} of requests "
            f"(target <= 1%); emulator rate-limited {s['rate_limited']}"
        )
        print(
            f"records {count:,}: delivered {outcomes[Outcome.DELIVERED]:,}, emulator ingested "
            f"{s['records_ingested']:,} (lost {count - s['records_ingested']:,}, "
            f"duplicated {max(0, s['records_ingested'] - count):,})"
        )
        # The same against the emulator in-process (no sockets, no uvicorn): tells the client's
        # pacing apart from the emulator's loopback capacity on a busy machine.
        seconds, stats, s = asyncio.run(conformance_in_process(count, ops, limit))
        sustained = stats.requests / seconds
        print(
            f"in-process (httpx.ASGITransport): {sustained:.1f} req/s ({sustained / limit:.1%}), "
            f"429s {stats.throttled} ({stats.throttled / stats.requests:.2%}), ingested "
            f"{s.records_ingested:,} of {count:,}"
        )

    if "encode" not in skip:
        recs = records(n)
        print(f"\n## encoding + packing {n:,} records into batch bodies (best of 2)")
        encoders: dict[str, Callable[[Any], bytes]] = {
            "stdlib json": stdlib_dumps,
            "orjson": orjson.dumps,
            "msgspec": msgspec.json.Encoder().encode,
        }
        times: dict[str, float] = {}
        for name, dumps in encoders.items():
            times[name] = min(pack_all(recs, dumps)[0] for _ in range(2))
        for name, seconds in times.items():
            print(
                f"{name:12s} {seconds:7.2f} s  {rate(n, seconds):>14s}  "
                f"{seconds / times['stdlib json']:.2f} of json's time (target <= 0.25)"
            )


if __name__ == "__main__":
    main()
