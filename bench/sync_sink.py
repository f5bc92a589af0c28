"""The sync's clients against a sink that costs nothing: Lockgate's own throughput, apart from
the emulator's.

``bench/sync.py`` measures the issue's targets against the emulator, whose CPU per record shares
the machine's two cores with the client; the emulator's ceiling caps what any client can show
there. This bench swaps the emulator for a minimal HTTP/1.1 endpoint in its own process: it
reads each request body, counts the operations in it (occurrences of ``"action":``; a v1
identify is one) and answers ``200 {}`` at once, with no validation and no storage. What is left
is the client: Lockgate's full sync (``lockgate sync people --json`` on a fresh state, the same
model and project as ``bench/sync.py``), the hand-written baseline (the official ``customerio``
client, one call per row, bounded in time and extrapolated) and drt (its REST batch
destination; stopped after ``--drt-seconds`` and extrapolated). Each is its own process; wall
time, CPU and peak RSS as in ``bench/sync.py``.

Usage::

    .venv/bin/python bench/sync_sink.py                          # 1M rows, ~3 min
    .venv/bin/python bench/sync_sink.py --rows 100000 --baseline-seconds 5 --skip-drt
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sync as bench  # bench/sync.py: the model, the project, the runners

#: The sink: asyncio protocol, keep-alive, Content-Length bodies only (what every client here
#: sends). ``GET /_emulator/stats`` answers the operations counted so far and
#: ``POST /_emulator/reset`` zeroes the count, as the emulator's routes do, so
#: ``bench/sync.py``'s ``ingested()`` and ``reset()`` (drt's extrapolation) work unchanged.
SINK = textwrap.dedent(
    """
    import asyncio, json, sys
    ops = 0
    class Sink(asyncio.Protocol):
        def connection_made(self, transport):
            self.t, self.buf, self.need, self.stats = transport, bytearray(), None, False
        def data_received(self, data):
            global ops
            self.buf += data
            while True:
                if self.need is None:
                    end = self.buf.find(b"\\r\\n\\r\\n")
                    if end < 0:
                        return
                    head = bytes(self.buf[:end]).lower()
                    self.stats = head.startswith(b"get /_emulator/stats")
                    self.single = head.startswith(b"put /api/v1/customers/")
                    self.reset = head.startswith(b"post /_emulator/reset")
                    length = 0
                    for line in head.split(b"\\r\\n"):
                        if line.startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    self.need, self.start = end + 4 + length, end + 4
                if len(self.buf) < self.need:
                    return
                if self.reset:
                    ops = 0
                elif self.single:  # the official client's identify: one person per call
                    ops += 1
                else:
                    ops += self.buf.count(b'"action":', self.start, self.need)
                del self.buf[: self.need]
                self.need = None
                body = json.dumps({"records_ingested": ops}).encode() if self.stats else b"{}"
                self.t.write(
                    b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\n"
                    b"content-length: " + str(len(body)).encode() + b"\\r\\n\\r\\n" + body
                )
    async def main(port):
        server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()
    asyncio.run(main(int(sys.argv[1])))
    """
)


@contextlib.contextmanager
def sink() -> Iterator[str]:
    """The sink in its own process; yields its base URL."""
    port = bench.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SINK, str(port)], stdout=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    bench.EMULATOR_PIDS[url] = proc.pid  # bench.emulator_cpu() reads its CPU from /proc
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        bench.EMULATOR_PIDS.pop(url, None)


#: the driver's spans of the whole call, not of one engine step
RUN_SPANS = ("run_sync", "plan_sync")


def ops_received(url: str) -> int:
    return int(httpx.get(f"{url}/_emulator/stats", timeout=60).json()["records_ingested"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--drt-seconds", type=float, default=120.0)
    parser.add_argument("--skip-drt", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lockgate-bench-sink-"))
    work.mkdir(parents=True, exist_ok=True)
    n = args.rows
    console = bench.console
    console.print(
        f"# bench/sync_sink.py  rows={n:,}  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    console.print(
        f"# {platform.platform()}  python {platform.python_version()}  cores={os.cpu_count()}  "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(bench.ROOT / "src")], check=True)
    warehouse = work / "warehouse.duckdb"
    built = bench.build_warehouse(warehouse, n)
    console.print(f"model: `people`, {n:,} rows x 22 columns; built in {built:.1f} s")
    r: dict[str, Any] = {}
    with sink() as url:
        project = bench.write_project(work / "lockgate", warehouse, url)
        console.print("lockgate full sync ...")
        cpu = bench.emulator_cpu(url)
        full, doc, phases = bench.lockgate("sync", project)
        r["sink_cpu_full"] = bench.emulator_cpu(url) - cpu
        assert doc[0]["delivered"] == n and ops_received(url) == n, "not every record arrived"
        r["full"], r["phases"] = full, phases
        console.print(f"  {full.seconds:.1f} s, {n / full.seconds:,.0f} rows/s")
        console.print(f"official client, {args.baseline_seconds:g} s ...")
        before = ops_received(url)
        r["base_n"], r["base"] = bench.run_baseline(warehouse, url, args.baseline_seconds)
        assert ops_received(url) - before == r["base_n"]
        console.print(f"  {r['base_n'] / args.baseline_seconds:,.1f} rows/s")
        if not args.skip_drt:
            console.print(f"drt (up to {args.drt_seconds:g} s) ...")
            bench.reset(url)  # drt's progress is read from the count
            r["drt"] = bench.run_drt(warehouse, url, n, args.drt_seconds, work)
    report(r, n, args)


def report(r: dict[str, Any], n: int, args: argparse.Namespace) -> None:
    full: bench.Proc = r["full"]
    base_rate = r["base_n"] / args.baseline_seconds
    base_s = n / base_rate
    table = Table(title=f"clients against a sink that costs nothing: {n:,} people x 20 columns")
    for col in ("run", "wall s", "rows/s", "CPU s", "peak RSS", "notes"):
        table.add_column(col, justify="left" if col in ("run", "notes") else "right")
    table.add_row(
        "lockgate sync (full)",
        f"{full.seconds:.1f}",
        f"{n / full.seconds:,.0f}",
        f"{full.cpu:.1f}",
        f"{full.peak_rss / bench.MiB:,.0f} MiB",
        "phases: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items() if k not in RUN_SPANS)
        + f"; sink CPU {r['sink_cpu_full']:.1f} s",
    )
    table.add_row(
        "official client (extrapolated)",
        f"{base_s:,.0f}",
        f"{base_rate:,.1f}",
        f"{r['base'].cpu:.1f}",
        f"{r['base'].peak_rss / bench.MiB:,.0f} MiB",
        f"{r['base_n']:,} calls in {args.baseline_seconds:g} s, extrapolated to {n:,}",
    )
    ratios = [("full sync / official client", base_s / full.seconds, 250)]
    if "drt" in r:
        drt = r["drt"]
        how = (
            f"stopped after {drt['seconds']:.0f} s at {drt['ingested']:,} rows, extrapolated"
            if drt["killed"]
            else f"{drt['ingested']:,} rows"
        )
        table.add_row(
            "drt run (rest_api batch)",
            f"{drt['projected']:,.1f}",
            f"{n / drt['projected']:,.0f}",
            "",
            f"{drt['peak_rss'] / bench.MiB:,.0f} MiB",
            how,
        )
        ratios.append(("full sync / drt", drt["projected"] / full.seconds, 10))
    bench.console.print(table)
    for what, ratio, target in ratios:
        bench.console.print(
            f"{what}: {ratio:,.1f}x (the issue's target, against the emulator: {target}x)"
        )


if __name__ == "__main__":
    main()
