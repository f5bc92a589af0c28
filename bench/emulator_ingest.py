"""How fast the emulator ingests Track v2 batches, against a bare endpoint that discards them.

Both servers run uvicorn on loopback in this process; the same prebuilt ~490 KB batches of 1000
``person identify`` operations are posted to each over one keep-alive connection. The ratio
(emulator / bare) says how much of a delivery benchmark's time the emulator itself could be; the
emulator's own parse+validate+apply rate (``emu.stats.ingest_records_per_s``) is printed too,
then the same batches in-process (no sockets) split into parsing, validating and queueing (what a
client waits for), and applying to the store (deferred until the next read), in wall and in CPU
time (the steadier figure on a shared machine).

    .venv/bin/python bench/emulator_ingest.py            # 30 batches = 30,000 records
    .venv/bin/python bench/emulator_ingest.py --batches 5
"""

from __future__ import annotations

import argparse
import time

import httpx
import orjson

from lockgate.emulator import Emulator, EmulatorConfig
from lockgate.emulator.server import serve_in_thread

OPS_PER_BATCH = 1000


def build_batches(n: int) -> list[bytes]:
    out = []
    for b in range(n):
        ops = [
            {
                "type": "person",
                "action": "identify",
                "identifiers": {"id": f"user-{b}-{i}"},
                "attributes": {
                    "email": f"user-{b}-{i}@example.com",
                    "plan": "pro" if i % 3 else "free",
                    "score": i,
                    "city": "Trondheim",
                    "bio": "x" * 300,
                },
            }
            for i in range(OPS_PER_BATCH)
        ]
        out.append(orjson.dumps({"batch": ops}))
    return out


async def bare_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """Reads the whole body and answers 200 {} — the floor of any HTTP ingest."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


def post_all(base_url: str, bodies: list[bytes], auth: tuple[str, str]) -> float:
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=base_url, auth=auth, timeout=60) as client:
        client.post("/api/v2/batch", content=bodies[0], headers=headers)  # warm-up
        started = time.perf_counter()
        for body in bodies:
            r = client.post("/api/v2/batch", content=body, headers=headers)
            assert r.status_code == 200, r.text
        return time.perf_counter() - started


def clock() -> tuple[float, float]:
    """(wall, CPU of this process) seconds: on a shared machine the CPU time is the steadier."""
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    t1 = clock()
    return t1[0] - t0[0], t1[1] - t0[1]


def in_process(bodies: list[bytes]) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds to parse all bodies with orjson, to post them in-process (parse,
    validate, queue), and to apply them (the first read after the posts)."""
    t0 = clock()
    for body in bodies:
        orjson.loads(body)
    parse = since(t0)
    emu = Emulator(EmulatorConfig(track_rate_limit=None), request_log_max=10)
    headers = {"content-type": "application/json"}
    with emu.client(auth=emu.track_auth) as client:
        t0 = clock()
        for body in bodies:
            assert client.post("/api/v2/batch", content=body, headers=headers).status_code == 200
        post = since(t0)
        t0 = clock()
        ingested = emu.stats.records_ingested  # the first read applies the queue
        apply = since(t0)
    assert ingested == len(bodies) * OPS_PER_BATCH
    return {"parse": parse, "post": post, "apply": apply}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    bodies = build_batches(args.batches)
    records = args.batches * OPS_PER_BATCH
    emu = Emulator(EmulatorConfig(track_rate_limit=None), request_log_max=10)
    with serve_in_thread(bare_app) as (bare_url, _):
        bare_s = post_all(bare_url, bodies, emu.track_auth)
    with emu.serve() as url:
        emu_s = post_all(url, bodies, emu.track_auth)
    stats = emu.stats
    size = len(bodies[0]) / 1024
    print(f"batches: {args.batches} x {OPS_PER_BATCH} identify ops, {size:.0f} KiB each")
    print(f"bare endpoint (discard):  {records / bare_s:10,.0f} records/s")
    print(f"emulator over loopback:   {records / emu_s:10,.0f} records/s")
    print(f"emulator parse+apply:     {stats.ingest_records_per_s:10,.0f} records/s (own clock)")
    print(f"ratio emulator/bare:      {bare_s / emu_s:10.2f}  (1.0 = free)")
    assert len(emu.people()) == records
    phases = in_process(bodies)
    per_batch = 1000 / args.batches
    print("in-process, per 1000-op batch (wall / CPU):")
    labels = {
        "parse": "orjson.loads                   ",
        "post": "parse + validate + queue (POST)",
        "apply": "apply to the store (next read) ",
    }
    for key, label in labels.items():
        wall, cpu = phases[key]
        print(f"  {label} {wall * per_batch:6.1f} ms / {cpu * per_batch:6.1f} ms")
    wall = phases["post"][0] + phases["apply"][0]
    cpu = phases["post"][1] + phases["apply"][1]
    print(f"  total: {records / wall:,.0f} records/s wall, {records / cpu:,.0f} per CPU second")


if __name__ == "__main__":
    main()
