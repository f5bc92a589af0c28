"""Events sync at scale: time and memory as the model and its ledger of delivered ids grow.

An events model only grows (one row per occurrence, appended), and the sync's ledger of
delivered keys grows with it: a nightly run that sends 10,000 new events reads a model, and
checks a ledger, of every event ever sent. This bench measures whether such a run stays flat.

The model: a DuckDB table ``events`` of N rows: ``event_id`` (text, the event's key),
``user_id`` (one of N/5 people), ``event_name`` (one of 20 names), ``occurred_at``
(``timestamptz`` within the last 60 hours when built: inside the 72 h backfill window, so every
event is sent) and 10 properties of mixed types (4 strings, one often null; 2 integers;
2 doubles; a boolean; a timestamp). One events sync (``event: {name, timestamp, id}``, the 10
properties typed) at ``rate_limit: 1000/s``.

Every timed thing is its own process, wall time and peak RSS (``os.wait4``) taken by
``bench/sync.py``'s measuring process, the ``lockgate`` CLI under its phase driver (the engine's
step spans), as in ``bench/sync.py``:

1. Full sync of N events into the emulator (``lockgate emulator --rate-limit 0``), fresh state;
   then ``--new`` events appended (default 1% of N) and an incremental run; then a run with
   nothing new.
2. The same three against ``bench/sync_sink.py``'s sink (a process that answers 200 to
   everything): Lockgate alone.
3. The same three against the sink at 10N (``--big``; the ledger of 10N built by the full sync),
   with the same number of new events: what a 10x ledger costs a run that sends the same.
4. ``lockgate plan`` on a fresh state at N and 10N: peak memory of extract + map + diff.
5. Floor: DuckDB alone, fresh connection, ``select sum(hash(<all columns>)) from events``
   (best of 3) at N and 10N: the scan of the model no run can avoid.
6. Baseline: a script using the official ``customerio`` client (``.venv-baseline``, as
   ``bench/sync.py``) reads the model and calls ``track()`` once per row (name, properties,
   timestamp) against the emulator for ``--baseline-seconds``; its rate extrapolated to N.

Usage::

    .venv/bin/python bench/events.py                          # 1M (+10M), ~8-10 min
    .venv/bin/python bench/events.py --rows 100000 --big 1000000 --baseline-seconds 5
    .venv/bin/python bench/events.py --rows 100000 --skip-big --skip-emulator
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sync as bench  # bench/sync.py: processes, the emulator, the baseline venv
import sync_sink  # bench/sync_sink.py: the sink that costs nothing

console = bench.console
MiB = bench.MiB
SYNC = "events"
#: the window the model's timestamps fall in when built: inside the 72 h backfill window with
#: room for the bench's own duration
WINDOW_S = 60 * 3600

NAMES = [
    "Page Viewed", "Signed In", "Signed Out", "Feature Used", "Report Exported", "Search",
    "Item Added", "Item Removed", "Checkout Started", "Order Completed", "Invite Sent",
    "Invite Accepted", "Plan Upgraded", "Plan Downgraded", "File Uploaded", "Comment Posted",
    "Alert Created", "Dashboard Viewed", "Settings Changed", "Support Ticket Opened",
]  # fmt: skip
assert len(NAMES) == 20

#: the 10 properties: name -> (SQL expression over `i`, Lockgate type)
PROPERTIES: dict[str, tuple[str, str]] = {
    "page": ("'/app/' || ['home','reports','settings','billing','search'][1 + i % 5] "
             "|| '/' || (i % 997)::varchar", "string"),
    "browser": ("['chrome','firefox','safari','edge'][1 + (i // 7) % 4]", "string"),
    "plan": ("['free','starter','pro','enterprise'][1 + (i // 3) % 4]", "string"),
    "coupon": ("case when i % 9 = 0 then 'SAVE' || (i % 50)::varchar end", "string"),
    "quantity": ("(1 + i % 12)::integer", "integer"),
    "duration_ms": ("(hash(i, 11) % 600000)::bigint", "integer"),
    "amount": ("round((hash(i, 12) % 100000) / 100.0, 2)::double", "number"),
    "score": ("((hash(i, 13) % 1000) / 1000.0)::double", "number"),
    "is_mobile": ("i % 4 = 0", "boolean"),
    "session_started_at": (
        "now() - to_seconds((hash(i, 14) % 400000)::bigint)", "timestamp"
    ),
}  # fmt: skip
assert len(PROPERTIES) == 10

COLUMNS = ["event_id", "user_id", "event_name", "occurred_at", *PROPERTIES]


def select_rows(start: int, stop: int, window_s: int) -> str:
    """The model's rows ``start`` .. ``stop - 1``, timestamps within ``window_s`` before now."""
    names = "[" + ",".join(f"'{n}'" for n in NAMES) + "]"
    props = ",\n".join(f"{expr} as {name}" for name, (expr, _) in PROPERTIES.items())
    people = max(1, (stop if start == 0 else start) // 5)
    return f"""
        select 'evt-' || i::varchar as event_id,
               (hash(i, 10) % {people})::bigint as user_id,
               {names}[1 + (hash(i, 15) % 20)::integer] as event_name,
               now() - to_seconds((hash(i, 16) % {window_s})::bigint) as occurred_at,
               {props}
        from range({start}, {stop}) t(i)
    """


def build_warehouse(path: Path, rows: int) -> float:
    """``events`` with ``rows`` rows in a fresh DuckDB file; returns seconds taken."""
    path.unlink(missing_ok=True)
    started = time.perf_counter()
    con = duckdb.connect(str(path))
    try:
        con.execute(f"create table events as {select_rows(0, rows, WINDOW_S)}")
        con.execute("checkpoint")
    finally:
        con.close()
    return time.perf_counter() - started


def append_events(path: Path, new: int, window_s: int = 3600) -> int:
    """Append ``new`` events of the last ``window_s`` seconds (keys after the model's); returns
    the row count."""
    con = duckdb.connect(str(path))
    try:
        n = int(con.execute("select count(*) from events").fetchall()[0][0])
        con.execute(f"insert into events {select_rows(n, n + new, window_s)}")
        con.execute("checkpoint")
    finally:
        con.close()
    return n + new


def scan_and_hash(path: Path) -> float:
    """The floor: DuckDB alone, fresh connection, scan + hash every row of the model."""
    started = time.perf_counter()
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute(f"select sum(hash({', '.join(COLUMNS)})) from events").fetchall()
    finally:
        con.close()
    return time.perf_counter() - started


def write_project(root: Path, warehouse: Path, url: str) -> Path:
    """A fresh Lockgate project (no state) with the events sync."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "syncs").mkdir(parents=True)
    (root / "lockgate.yml").write_text(bench.PROJECT_YML.format(warehouse=warehouse, url=url))
    props = "\n".join(
        f"  {name}: {{column: {name}, type: {kind}}}" for name, (_, kind) in PROPERTIES.items()
    )
    (root / "syncs" / f"{SYNC}.yml").write_text(
        textwrap.dedent(
            f"""\
            name: {SYNC}
            source: warehouse
            model: {{table: events}}
            kind: events
            identify_by: {{id: user_id}}
            event: {{name: event_name, timestamp: occurred_at, id: event_id}}
            properties:
            """
        )
        + props
        + "\n"
    )
    return root


def lockgate(command: str, project: Path) -> tuple[bench.Proc, Any, dict[str, float]]:
    """``lockgate COMMAND events --json`` as a measured process (``bench/sync.py``'s driver)."""
    proc = bench.run_measured(
        [sys.executable, "-c", bench.PHASES_DRIVER, command, SYNC, "--json",
         "--project", str(project)],
        env=bench.track_env(),
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"`lockgate {command}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    phases: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("LOCKGATE_PHASES "):
            phases = json.loads(line.removeprefix("LOCKGATE_PHASES "))
    lines = proc.stdout.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line[:1] in ("[", "{")), 0)
    doc = json.loads("".join(lines[start:]))
    return proc, doc, phases


def state_size(project: Path) -> int:
    state = project / ".lockgate"
    return sum(f.stat().st_size for f in state.rglob("*") if f.is_file()) if state.exists() else 0


# -- the hand-written baseline ----------------------------------------------------------------

BASELINE_SCRIPT = bench.baseline_script(
    """
    data = {k: v for k, v in zip(names, row) if v is not None}
    cio.track(customer_id=str(data.pop("user_id")), name=data.pop("event_name"),
              timestamp=data.pop("occurred_at"), data=data)
    """
)


def baseline_sql() -> str:
    """The model as the baseline reads it: timestamps as unix seconds (what Lockgate sends)."""
    cols = ["event_id", "user_id", "event_name", "epoch(occurred_at)::bigint as occurred_at"]
    for name, (_, kind) in PROPERTIES.items():
        cols.append(f"epoch({name})::bigint as {name}" if kind == "timestamp" else name)
    return "select " + ", ".join(cols) + " from events"


def run_baseline(warehouse: Path, url: str, seconds: float) -> tuple[int, float, bench.Proc]:
    python = bench.ensure_venv(bench.BASELINE_VENV, "customerio", "duckdb")
    proc = bench.run_measured(
        [str(python), "-W", "ignore", "-c", BASELINE_SCRIPT, str(warehouse), baseline_sql(),
         url, *bench.AUTH, str(seconds)]
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"baseline failed:\n{proc.stderr[-3000:]}")
    doc = json.loads(proc.stdout)
    return int(doc["records"]), float(doc["seconds"]), proc


# -- runs -------------------------------------------------------------------------------------


def received(url: str) -> int:
    return int(httpx.get(f"{url}/_emulator/stats", timeout=600).json()["records_ingested"])


def three_runs(
    r: dict[str, Any],
    tag: str,
    warehouse: Path,
    project: Path,
    url: str,
    rows: int,
    new: int,
    chunk: int | None = None,
) -> None:
    """Full sync of ``rows`` events, ``new`` appended, incremental run, run with nothing new.
    With ``chunk``, the model (built with ``chunk`` rows) and its ledger grow by ``chunk`` rows
    a run up to ``rows``: the ledger as a sync's nightly runs leave it."""
    if chunk is not None and chunk < rows:
        done, step, r[f"{tag}_build"] = chunk, chunk, []
        console.print(f"[{tag}] the ledger built {chunk:,} events a run ...")
        while True:
            proc, doc, phases = lockgate("sync", project)
            assert doc[0]["delivered"] == step, doc[0]
            r[f"{tag}_build"].append((done, proc.seconds, proc.peak_rss, phases))
            say(f"run to {done:,}", proc, step)
            if done >= rows:
                break
            step = min(chunk, rows - done)
            done = append_events(warehouse, step, WINDOW_S)
        assert received(url) >= rows
    else:
        console.print(f"[{tag}] lockgate full sync of {rows:,} events ...")
        cpu = bench.emulator_cpu(url)
        before = received(url)
        r[f"{tag}_full"], doc, r[f"{tag}_full_phases"] = lockgate("sync", project)
        r[f"{tag}_full_dest_cpu"] = bench.emulator_cpu(url) - cpu
        assert doc[0]["delivered"] == rows, doc[0]
        assert received(url) - before == rows, (received(url) - before, rows)
        say("full sync", r[f"{tag}_full"], rows)
    r[f"{tag}_state_full"] = state_size(project)
    total = append_events(warehouse, new)
    console.print(f"[{tag}] appended {new:,} events ({total:,} in the model); incremental ...")
    before = received(url)
    r[f"{tag}_incr"], doc, r[f"{tag}_incr_phases"] = lockgate("sync", project)
    assert doc[0]["delivered"] == new, doc[0]
    assert doc[0]["changes"]["already_delivered"] == rows, doc[0]["changes"]
    assert received(url) - before == new
    say("incremental", r[f"{tag}_incr"], total)
    console.print(f"[{tag}] a run with nothing new ...")
    r[f"{tag}_noop"], doc, r[f"{tag}_noop_phases"] = lockgate("sync", project)
    assert doc[0]["delivered"] == 0, doc[0]
    say("nothing new", r[f"{tag}_noop"], total)
    r[f"{tag}_state"] = state_size(project)


def say(label: str, proc: bench.Proc, rows: int) -> None:
    console.print(
        f"  {label}: {proc.seconds:.2f} s, {rows / proc.seconds:,.0f} rows/s, CPU "
        f"{proc.cpu:.1f} s, peak RSS {proc.peak_rss / MiB:,.0f} MiB"
    )


def plan_fresh(r: dict[str, Any], key: str, warehouse: Path, work: Path, rows: int) -> None:
    project = write_project(work / f"lockgate-{key}", warehouse, "http://127.0.0.1:9")
    console.print(f"lockgate plan, fresh state, {rows:,} events ...")
    try:
        r[key], doc, r[f"{key}_phases"] = lockgate("plan", project)
        assert doc["changes"]["to_send"] == rows, doc["changes"]
        say("plan", r[key], rows)
    except (Exception, SystemExit) as exc:  # report what was measured anyway
        r[f"{key}_failed"] = str(exc).strip().splitlines()[1][:200]
        console.print(f"[red]plan at {rows:,} failed: {exc}")
    shutil.rmtree(project, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=None, help="the large ledger (default 10x)")
    parser.add_argument("--new", type=int, default=None, help="events appended (default 1%%)")
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--skip-big", action="store_true", help="no runs at --big")
    parser.add_argument(
        "--chunk",
        type=int,
        default=2_000_000,
        help="the --big ledger grows by this many events a run (--chunk = --big: one first sync)",
    )
    parser.add_argument("--skip-big-plan", action="store_true", help="no fresh plan at --big")
    parser.add_argument(
        "--keep", action="store_true", help="keep the --big model and project (for an A/B)"
    )
    parser.add_argument("--skip-emulator", action="store_true", help="sink only, no baseline")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lockgate-bench-events"))
    args = parser.parse_args()
    n = args.rows
    big = args.big or 10 * n
    new = args.new or max(1, n // 100)
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    console.print(f"# bench/events.py  rows={n:,}  big={big:,}  new={new:,}  {stamp}")
    console.print(
        f"# {platform.platform()}  python {platform.python_version()}  cores={os.cpu_count()}  "
        f"load average at start {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(bench.ROOT / "src")], check=True)
    r: dict[str, Any] = {"rows": n, "big": big, "new": new}
    wh = work / "events.duckdb"
    built = build_warehouse(wh, n)
    console.print(f"model: `events`, {n:,} rows x 14 columns, built in {built:.1f} s")
    r["floor_all"] = [scan_and_hash(wh) for _ in range(3)]
    r["floor"] = min(r["floor_all"])
    wh_sink = work / "events-sink.duckdb"
    shutil.copyfile(wh, wh_sink)
    plan_fresh(r, "plan", wh, work, n)
    if not args.skip_emulator:
        with bench.emulator() as url:
            project = write_project(work / "lockgate-emu", wh, url)
            three_runs(r, "emu", wh, project, url, n, new)
            bench.reset(url)
            console.print(f"official client track(), {args.baseline_seconds:g} s ...")
            cpu = bench.emulator_cpu(url)
            r["base_n"], r["base_s"], r["base"] = run_baseline(wh, url, args.baseline_seconds)
            r["base_emu_cpu"] = bench.emulator_cpu(url) - cpu
            console.print(f"  {r['base_n'] / r['base_s']:,.1f} events/s")
    with sync_sink.sink() as url:
        project = write_project(work / "lockgate-sink", wh_sink, url)
        three_runs(r, "sink", wh_sink, project, url, n, new)
        if not args.skip_big:
            wh_big = work / "events-big.duckdb"
            chunk = min(args.chunk, big)
            built = build_warehouse(wh_big, chunk)
            console.print(f"model of {chunk:,} rows built in {built:.1f} s, to grow to {big:,}")
            project = write_project(work / "lockgate-big", wh_big, url)
            three_runs(r, "big", wh_big, project, url, big, new, chunk)
            r["floor_big_all"] = [scan_and_hash(wh_big) for _ in range(3)]
            r["floor_big"] = min(r["floor_big_all"])
            if not args.skip_big_plan:
                plan_fresh(r, "plan_big", wh_big, work, big + new)
            if not args.keep:
                shutil.rmtree(project, ignore_errors=True)
                wh_big.unlink()
    report(r)
    saved = {
        k: {f: getattr(v, f) for f in ("seconds", "peak_rss", "cpu")}
        if isinstance(v, bench.Proc)
        else v
        for k, v in r.items()
    }
    (work / "results.json").write_text(json.dumps(saved, indent=2, default=str))
    console.print(f"results: {work / 'results.json'}")


def report(r: dict[str, Any]) -> None:
    n, big, new = r["rows"], r["big"], r["new"]
    table = Table(title=f"events sync: {n:,} events x 14 columns (whole processes)")
    for col in ("run", "wall s", "CPU s", "peak RSS", "notes"):
        table.add_column(col, justify="left" if col in ("run", "notes") else "right")

    def row(label: str, key: str, note: str = "") -> None:
        if key not in r:
            return
        p: bench.Proc = r[key]
        phases = r.get(f"{key}_phases", {})
        steps = ", ".join(
            f"{k} {v:.2f}" for k, v in phases.items() if k not in ("run_sync", "plan_sync")
        )
        table.add_row(
            label, f"{p.seconds:.2f}", f"{p.cpu:.1f}", f"{p.peak_rss / MiB:,.0f} MiB",
            "; ".join(x for x in (note, steps) if x),
        )  # fmt: skip

    for tag, where, rows in (("emu", "emulator", n), ("sink", "sink", n), ("big", "sink", big)):
        if f"{tag}_incr" not in r:
            continue
        if f"{tag}_full" in r:
            full: bench.Proc = r[f"{tag}_full"]
            cpu = r[f"{tag}_full_dest_cpu"]
            row(
                f"full sync {rows:,} -> {where}",
                f"{tag}_full",
                f"{rows / full.seconds:,.0f} events/s; {where} CPU {cpu:.1f} s",
            )
        for upto, seconds, peak, phases in r.get(f"{tag}_build", []):
            steps = ", ".join(
                f"{k} {v:.2f}" for k, v in phases.items() if k not in ("run_sync", "plan_sync")
            )
            table.add_row(
                f"  run to {upto:,} -> {where}", f"{seconds:.2f}", "", f"{peak / MiB:,.0f} MiB",
                steps,
            )  # fmt: skip
        row(f"  +{new:,} new, ledger {rows:,}", f"{tag}_incr")
        row(
            f"  nothing new, ledger {rows:,}",
            f"{tag}_noop",
            f"state {r[f'{tag}_state'] / MiB:,.0f} MiB",
        )
    row(f"plan, fresh state, {n:,}", "plan")
    row(f"plan, fresh state, {big + new:,}", "plan_big")
    if "plan_big_failed" in r:
        table.add_row(f"plan, fresh state, {big + new:,}", "failed", "", "", r["plan_big_failed"])
    table.add_row(
        f"floor: DuckDB scan + hash, {n:,}", f"{r['floor']:.2f}", "", "",
        "best of " + ", ".join(f"{x:.2f}" for x in r["floor_all"]),
    )  # fmt: skip
    if "floor_big" in r:
        table.add_row(
            f"floor: DuckDB scan + hash, {big:,}", f"{r['floor_big']:.2f}", "", "",
            "best of " + ", ".join(f"{x:.2f}" for x in r["floor_big_all"]),
        )  # fmt: skip
    if "base" in r:
        rate = r["base_n"] / r["base_s"]
        table.add_row(
            "official client track() (extrapolated)", f"{n / rate:,.0f}", "",
            f"{r['base'].peak_rss / MiB:,.0f} MiB",
            f"{r['base_n']:,} calls in {r['base_s']:.1f} s = {rate:,.1f}/s; "
            f"emulator CPU {r['base_emu_cpu']:.1f} s",
        )  # fmt: skip
    console.print(table)
    ratios = Table(title="ratios")
    ratios.add_column("what")
    ratios.add_column("ratio", justify="right")
    if "base" in r and "emu_full" in r:
        rate = r["base_n"] / r["base_s"]
        ratios.add_row(
            "full sync into the emulator vs the official client",
            f"{(n / rate) / r['emu_full'].seconds:,.0f}x",
        )
        ratios.add_row(
            "full sync into the sink vs the official client (against the emulator)",
            f"{(n / rate) / r['sink_full'].seconds:,.0f}x",
        )
    for tag in ("sink", "big"):
        if f"{tag}_incr" in r:
            floor = r["floor"] if tag == "sink" else r["floor_big"]
            ratios.add_row(
                f"incremental at {n if tag == 'sink' else big:,} vs its floor",
                f"{r[f'{tag}_incr'].seconds / floor:,.1f}x",
            )
    if "big_incr" in r:
        for what in ("incr", "noop"):
            a, b = r[f"sink_{what}"], r[f"big_{what}"]
            ratios.add_row(
                f"{what} at {big:,} vs {n:,}: time / peak RSS",
                f"{b.seconds / a.seconds:.2f}x / {b.peak_rss / a.peak_rss:.2f}x",
            )
        ratios.add_row("floor at big vs n", f"{r['floor_big'] / r['floor']:.2f}x")
    if "plan_big" in r:
        ratios.add_row(
            f"plan peak RSS at {big:,} vs {n:,}",
            f"{r['plan_big'].peak_rss / r['plan'].peak_rss:.2f}x",
        )
    console.print(ratios)
    console.print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
