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

``--served N`` measures instead what a full sync costs the standalone emulator: ``lockgate
emulator --rate-limit 0`` runs in its own process, N records of the sync bench's shape (an ``id``
and 21 attributes: ``email``, 6 strings, 4 ints, 3 doubles, 3 booleans, 4 unix timestamps) are
posted in prebuilt 500-record batches (~300 KB) over one keep-alive connection, and the
emulator's CPU time (from /proc) is read before the posts, after them (accepting) and after a
read that applies the queue (applying); ``--repeat`` runs it again against a fresh process.

    .venv/bin/python bench/emulator_ingest.py --served 200000 --repeat 3
"""

from __future__ import annotations

import argparse
import time

import httpx
import orjson

# the same standalone emulator and CPU reading as the delivery bench (run from bench/)
from delivery import cpu_seconds, emulator
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


SERVED_OPS_PER_BATCH = 500
CITIES = ["Oslo", "Bergen", "Trondheim", "Paris", "Lyon", "Berlin", "Munich"]


def sync_shaped_bodies(records: int) -> list[bytes]:
    """Batches of ``person identify`` ops shaped like bench/sync.py's model rows."""
    bodies = []
    for start in range(0, records, SERVED_OPS_PER_BATCH):
        ops = []
        for i in range(start, min(records, start + SERVED_OPS_PER_BATCH)):
            attrs = {
                "email": f"user-{i}@example.com",
                "first_name": f"first-{i % 5003}",
                "last_name": f"last-{i % 7919}",
                "city": CITIES[i % 7],
                "country": ["NO", "FR", "DE", "US", "GB"][i % 5],
                "plan": ["free", "starter", "pro", "enterprise"][(i // 3) % 4],
                "company": f"company-{i % 100003}",
                "seats": i % 250,
                "logins": (i * 7919) % 100000,
                "age": 18 + i % 60,
                "projects": i % 37,
                "mrr": round((i * 104729 % 1000000) / 100.0, 2),
                "ltv": round((i * 1299709 % 10000000) / 100.0, 2),
                "score": (i * 15485863 % 1000) / 1000.0,
                "is_vip": i % 17 == 0,
                "marketing_opt_in": i % 3 != 0,
                "beta_tester": i % 11 == 0,
                "signed_up_at": 1577836800 + (i * 2654435761) % 150000000,
                "last_seen_at": 1735689600 + (i * 40503) % 30000000,
                "trial_ends_on": 1767225600 + (i % 365) * 86400,
                "birthday": -315619200 + (i * 48271 % 15000) * 86400,
            }
            ops.append(
                {
                    "type": "person",
                    "action": "identify",
                    "identifiers": {"id": str(i)},
                    "attributes": attrs,
                }
            )
        bodies.append(orjson.dumps({"batch": ops}))
    return bodies


def served_once(bodies: list[bytes], records: int) -> tuple[float, float, float]:
    """(accept CPU, apply CPU, wall of the posts) seconds of one fresh ``lockgate emulator``."""
    headers = {"content-type": "application/json"}
    auth = Emulator(EmulatorConfig()).track_auth
    with emulator(latency_ms=0) as (url, pid):
        with httpx.Client(base_url=url, auth=auth, timeout=120) as client:
            time.sleep(0.5)  # let start-up settle
            cpu0 = cpu_seconds(pid)
            started = time.perf_counter()
            for body in bodies:
                r = client.post("/api/v2/batch", content=body, headers=headers)
                assert r.status_code == 200, r.text
            wall = time.perf_counter() - started
            cpu1 = cpu_seconds(pid)
            stats = client.get("/_emulator/stats").json()  # a read: applies the queue
            cpu2 = cpu_seconds(pid)
    assert stats["records_ingested"] == records, stats["records_ingested"]
    return cpu1 - cpu0, cpu2 - cpu1, wall


def served(records: int, repeat: int) -> None:
    bodies = sync_shaped_bodies(records)
    size = sum(map(len, bodies)) / len(bodies) / 1024
    batches = f"{len(bodies)} batches of {SERVED_OPS_PER_BATCH}"
    print(f"{records:,} records in {batches} ({size:.0f} KiB each)")
    for _ in range(repeat):
        accept, apply, wall = served_once(bodies, records)
        print(
            f"  emulator CPU per record: accept {accept / records * 1e6:5.2f} us, "
            f"apply {apply / records * 1e6:5.2f} us, total {(accept + apply) / records * 1e6:5.2f}"
            f" us; posts {records / wall:,.0f} records/s wall"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30, help="1000-op batches to post")
    parser.add_argument(
        "--served",
        type=int,
        default=0,
        metavar="RECORDS",
        help="instead: CPU per record of `lockgate emulator` in its own process",
    )
    parser.add_argument("--repeat", type=int, default=1, help="--served runs, each fresh")
    args = parser.parse_args()
    if args.served:
        served(args.served, args.repeat)
        return
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
