"""Sync benchmark (issue 3): a 1,000,000-person, 20-column DuckDB model into the emulator.

Everything that is timed runs as its own process, measured whole (Python start-up included):
wall time from ``time.perf_counter`` around the process, peak memory from ``os.wait4`` rusage
(``ru_maxrss``), both taken by a small intermediate process (``MEASURE``) so that the bench's
own memory never leaks into a child's peak. The emulator runs as a separate process with its
Track rate limit off (``lockgate emulator --rate-limit 0``, as shipped: its listener sets
TCP_NODELAY); Lockgate itself is configured at ``rate_limit: 1000/s``.

1. Lockgate full sync: ``lockgate sync people --json`` on a fresh state.
2. Lockgate incremental sync: 1% of the rows updated in the warehouse, then the same command.
   Its time is compared with the floor for detecting change: DuckDB alone scanning the model
   and hashing every row (``select sum(hash(...)) from people`` on a fresh connection).
3. Snapshot diff: Lockgate's diff (a DuckDB join of (key, hash) tables, as in
   ``lockgate.sync.diff``) against building two Python dicts key -> hash from the same data and
   diffing them.
4. Memory flatness: ``lockgate plan people --json`` (extract + map + diff, nothing sent) on a
   fresh state at N rows and at 10x N rows; peak RSS of each and their ratio.
5. Hand-written baseline: a script using the official ``customerio`` client (its own venv,
   ``.venv-baseline``: customerio + duckdb) reads the model from DuckDB and calls
   ``identify()`` once per row, for a bounded time; the rate is extrapolated to N rows.
6. drt (``drt-core``, its own venv ``.venv-drt``): ``drt run`` with a DuckDB profile and a
   ``rest_api`` destination in ``body_mode: batch`` POSTing Track v2 ``/api/v2/batch`` bodies
   rendered by a Jinja ``batch_template``. Bounded in time: when it runs past
   ``--drt-seconds`` it is stopped and its rate (records the emulator ingested / elapsed) is
   extrapolated to N rows.

``--latency-ms N`` (default 0) runs the emulator with N ms added to every API request
(``lockgate emulator --latency-ms N``), as a Customer.io workspace across the internet would
answer: Lockgate's full and incremental syncs, the official client, drt and the emulator
ceiling all run against it, and the report's headings say so. The targets stay the same and are
judged at that latency. The floor, the snapshot diff and the 10x plan do not depend on latency:
``--skip-floor``, ``--skip-diff`` and ``--skip-10m`` leave them out (the report says which).

``bench/sync_sink.py`` runs Lockgate, the official client and drt against a sink that costs
nothing instead of the emulator: each client's own throughput.

Usage::

    .venv/bin/python bench/sync.py                              # 1M rows (+10M plan), 8-20 min
    .venv/bin/python bench/sync.py --rows 100000 --skip-10m --baseline-seconds 5
    .venv/bin/python bench/sync.py --latency-ms 50 --skip-floor --skip-diff --skip-10m

Venvs (created on first use when missing): ``.venv-baseline`` (``pip install customerio duckdb``)
and ``.venv-drt`` (``pip install 'drt-core[duckdb]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
from rich.console import Console
from rich.table import Table

from lockgate.emulator.config import DEFAULT_API_KEY, DEFAULT_SITE_ID

ROOT = Path(__file__).resolve().parent.parent
LOCKGATE = Path(sys.executable).with_name("lockgate")
BASELINE_VENV = ROOT / ".venv-baseline"
DRT_VENV = ROOT / ".venv-drt"
AUTH = (DEFAULT_SITE_ID, DEFAULT_API_KEY)
CHANGED_FRACTION = 100  # 1 row in 100 changes before the incremental run

console = Console(highlight=False, width=150)

# -- the model --------------------------------------------------------------------------------

#: the 20 mapped columns besides `id` and `email`: name -> (SQL expression over `i`, Lockgate type)
COLUMNS: dict[str, tuple[str, str]] = {
    "first_name": ("'first-' || (i % 5003)::varchar", "string"),
    "last_name": ("'last-' || (i % 7919)::varchar", "string"),
    "city": ("['Oslo','Bergen','Trondheim','Paris','Lyon','Berlin','Munich'][1 + i % 7]", "string"),
    "country": ("['NO','FR','DE','US','GB'][1 + i % 5]", "string"),
    "plan": ("['free','starter','pro','enterprise'][1 + (i // 3) % 4]", "string"),
    "company": ("'company-' || (i % 100003)::varchar", "string"),
    "seats": ("(i % 250)::integer", "integer"),
    "logins": ("(hash(i, 1) % 100000)::bigint", "integer"),
    "age": ("(18 + i % 60)::integer", "integer"),
    "projects": ("(i % 37)::integer", "integer"),
    "mrr": ("round((hash(i, 2) % 1000000) / 100.0, 2)::double", "number"),
    "ltv": ("round((hash(i, 3) % 10000000) / 100.0, 2)::double", "number"),
    "score": ("((hash(i, 4) % 1000) / 1000.0)::double", "number"),
    "is_vip": ("i % 17 = 0", "boolean"),
    "marketing_opt_in": ("i % 3 <> 0", "boolean"),
    "beta_tester": ("i % 11 = 0", "boolean"),
    "signed_up_at": (
        "timestamp '2020-01-01' + to_seconds((hash(i, 5) % 150000000)::bigint)",
        "timestamp",
    ),
    "last_seen_at": (
        "timestamp '2025-01-01' + to_seconds((hash(i, 6) % 30000000)::bigint)",
        "timestamp",
    ),
    "trial_ends_on": ("date '2026-01-01' + (i % 365)::integer", "date"),
    "birthday": ("date '1960-01-01' + (hash(i, 7) % 15000)::integer", "date"),
}
assert len(COLUMNS) == 20


def build_warehouse(path: Path, rows: int) -> float:
    """Create ``people`` with ``rows`` rows in a fresh DuckDB file; returns seconds taken."""
    path.unlink(missing_ok=True)
    started = time.perf_counter()
    con = duckdb.connect(str(path))
    try:
        cols = ",\n".join(f"{expr} as {name}" for name, (expr, _) in COLUMNS.items())
        con.execute(
            f"""
            create table people as
            select i as id, 'user-' || i::varchar || '@example.com' as email,
                   {cols}
            from range({rows}) t(i)
            """
        )
        con.execute("checkpoint")
    finally:
        con.close()
    return time.perf_counter() - started


def change_one_percent(path: Path) -> int:
    """Touch 1% of the rows (two columns each); returns how many rows changed."""
    con = duckdb.connect(str(path))
    try:
        changed = con.execute(
            f"""
            update people set logins = logins + 1, last_seen_at = last_seen_at + interval 1 hour
            where id % {CHANGED_FRACTION} = 7
            """
        ).fetchall()[0][0]
        con.execute("checkpoint")
    finally:
        con.close()
    return int(changed)


HASH_COLUMNS = ", ".join(["id", "email", *COLUMNS])


def scan_and_hash(path: Path) -> float:
    """The floor for detecting change: DuckDB alone, fresh connection, scan + hash every row."""
    started = time.perf_counter()
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute(f"select sum(hash({HASH_COLUMNS})) from people").fetchall()
    finally:
        con.close()
    return time.perf_counter() - started


# -- processes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A finished process: wall seconds, peak RSS (bytes), exit status, output, CPU seconds."""

    seconds: float
    peak_rss: int
    returncode: int
    stdout: str
    stderr: str
    killed: bool = False
    cpu: float = 0.0


#: Runs argv[2:] and writes its own wall time and peak RSS to argv[1]. Measured processes start
#: through this small process because a child's ru_maxrss starts at its parent's peak RSS
#: (Linux records the old address space's high-water mark at exec, and subprocess uses vfork):
#: spawned straight from this bench, every child would report at least the bench's own peak.
MEASURE = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    started = time.perf_counter()
    child = subprocess.Popen(sys.argv[2:])
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child.pid, signal.SIGTERM))
    while True:
        try:
            _, status, usage = os.wait4(child.pid, 0)
            break
        except InterruptedError:
            continue
    seconds = time.perf_counter() - started
    child.returncode = code = os.waitstatus_to_exitcode(status)
    with open(sys.argv[1], "w") as fh:
        cpu = usage.ru_utime + usage.ru_stime
        json.dump({"seconds": seconds, "maxrss_kb": usage.ru_maxrss, "cpu": cpu}, fh)
    sys.exit(code if code >= 0 else 128 - code)
    """
)


def measured(args: list[str]) -> tuple[list[str], Path]:
    """``args`` wrapped by MEASURE, and the file it will write its figures to."""
    fd, name = tempfile.mkstemp(prefix="lockgate-bench-rusage-", suffix=".json")
    os.close(fd)
    return [sys.executable, "-c", MEASURE, name, *args], Path(name)


def read_measure(path: Path) -> tuple[float, int, float]:
    """(seconds, peak RSS bytes, CPU seconds: user + system) written by MEASURE."""
    doc = json.loads(path.read_text())
    path.unlink()
    return float(doc["seconds"]), int(doc["maxrss_kb"]) * 1024, float(doc["cpu"])


def run_measured(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Run a process to the end (or SIGTERM it after ``timeout``); whole-process figures."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    wrapped, figures = measured(args)
    started = time.perf_counter()
    proc = subprocess.Popen(wrapped, env=env, stdout=out, stderr=err, cwd=cwd)
    killed = False
    if timeout is None:
        _, status, _ = os.wait4(proc.pid, 0)
    else:
        deadline = started + timeout
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.kill(proc.pid, signal.SIGTERM)  # not send_signal: it polls (reaps)
                killed = True
                _, status, _ = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    seconds, peak, cpu = read_measure(figures)
    out.seek(0)
    err.seek(0)
    return Proc(
        seconds,
        peak,
        proc.returncode,
        out.read().decode(errors="replace"),
        err.read().decode(errors="replace"),
        killed,
        cpu,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def emulator(latency_ms: int = 0) -> Iterator[str]:
    """``lockgate emulator`` in its own process, Track rate limit off, ``latency_ms`` added to
    every API request (the ``/_emulator/`` inspection routes get none); yields its base URL."""
    port = free_port()
    log = tempfile.TemporaryFile()
    args = [str(LOCKGATE), "emulator", "--port", str(port), "--rate-limit", "0"]
    if latency_ms:
        args += ["--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    EMULATOR_PIDS[url] = proc.pid
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/_emulator/stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"emulator did not start: {log.read()[-2000:]!r}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


EMULATOR_PIDS: dict[str, int] = {}


def emulator_cpu(url: str) -> float:
    """CPU seconds (user + system) the emulator process has used so far."""
    fields = Path(f"/proc/{EMULATOR_PIDS[url]}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingested(url: str) -> int:
    return int(httpx.get(f"{url}/_emulator/stats", timeout=120).json()["records_ingested"])


def settle(url: str, person_id: int) -> float:
    """Wait until the emulator has applied every batch it accepted (any read applies its queue,
    as Customer.io processes accepted requests after answering them), so what is measured next
    does not share the machine with that work; checks one person landed. Returns seconds."""
    started = time.perf_counter()
    found = httpx.get(f"{url}/_emulator/people", params={"id": str(person_id)}, timeout=600)
    found.raise_for_status()
    assert found.json()["people"], f"person {person_id} is not in the emulator"
    return time.perf_counter() - started


def reset(url: str) -> None:
    httpx.post(f"{url}/_emulator/reset", timeout=120).raise_for_status()


def track_env() -> dict[str, str]:
    return {**os.environ, "CUSTOMERIO_SITE_ID": AUTH[0], "CUSTOMERIO_API_KEY": AUTH[1]}


def ensure_venv(venv: Path, *packages: str) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        console.print(f"creating {venv.name} ({' '.join(packages)})")
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True)
    return python


# -- Lockgate ---------------------------------------------------------------------------------

PROJECT_YML = """\
name: bench-sync
sources:
  warehouse:
    type: duckdb
    path: {warehouse}
destinations:
  customerio:
    type: customerio
    track_url: {url}
    rate_limit: 1000/s
"""


def write_project(root: Path, warehouse: Path, url: str) -> Path:
    """A fresh Lockgate project folder (no state) with one people sync of all 20 columns."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "syncs").mkdir(parents=True)
    (root / "lockgate.yml").write_text(PROJECT_YML.format(warehouse=warehouse, url=url))
    attributes = "\n".join(
        f"  {name}: {{column: {name}, type: {kind}}}" for name, (_, kind) in COLUMNS.items()
    )
    (root / "syncs" / "people.yml").write_text(
        textwrap.dedent(
            """\
            name: people
            source: warehouse
            model: {table: people}
            kind: people
            primary_key: id
            identify_by: {id: id, email: email}
            attributes:
            """
        )
        + attributes
        + "\n"
    )
    return root


#: Runs the `lockgate` CLI exactly as the console script does, and on exit writes to stderr how
#: long each step of the run took (extract, map, diff, deliver, commit: the engine's own
#: `_Step` spans) and the whole `run_sync`/`plan_sync` call. Instrumentation only: if the
#: engine's internals move, the phases are simply missing.
PHASES_DRIVER = textwrap.dedent(
    """
    import atexit, json, sys, time
    from contextlib import contextmanager
    import lockgate.sync.run as run
    phases = {}
    def note(name, started):
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started
    step = getattr(run, "_Step", None)
    if step is not None and hasattr(step, "__call__"):
        original = step.__call__
        @contextmanager
        def timed(self, name):
            started = time.perf_counter()
            try:
                with original(self, name):
                    yield
            finally:
                note(name, started)
        step.__call__ = timed
    for fn in ("run_sync", "plan_sync"):
        def wrap(f, label):
            def inner(*a, **k):
                started = time.perf_counter()
                try:
                    return f(*a, **k)
                finally:
                    note(label, started)
            return inner
        setattr(run, fn, wrap(getattr(run, fn), fn))
    def report():
        sys.stderr.write("LOCKGATE_PHASES " + json.dumps(phases) + "\\n")
        sys.stderr.flush()
    atexit.register(report)
    # the console script leaves with os._exit (no interpreter teardown), past atexit
    import os
    leave = os._exit
    def exit_after_report(code):
        atexit.unregister(report)
        report()
        leave(code)
    os._exit = exit_after_report
    sys.argv = ["lockgate", *sys.argv[1:]]
    import lockgate.cli
    entry = getattr(lockgate.cli, "entry", None)
    if entry is not None:  # as the `lockgate` console script runs
        entry()
    else:
        sys.exit(lockgate.cli.main())
    """
)


def lockgate(command: str, project: Path) -> tuple[Proc, Any, dict[str, float]]:
    """`lockgate COMMAND people --json` as a process; its report and its phase timings."""
    proc = run_measured(
        [
            sys.executable,
            "-c",
            PHASES_DRIVER,
            command,
            "people",
            "--json",
            "--project",
            str(project),
        ],
        env=track_env(),
    )
    if proc.returncode != 0:
        raise SystemExit(f"`lockgate {command}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    phases: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("LOCKGATE_PHASES "):
            phases = json.loads(line.removeprefix("LOCKGATE_PHASES "))
    # tolerate stray progress output before the report (seen: a progress bar line on stdout)
    lines = proc.stdout.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line[:1] in ("[", "{")), 0)
    if start:
        console.print(
            f"[yellow]note: `lockgate {command} --json` wrote {start} line(s) of "
            f"non-JSON to stdout first: {''.join(lines[:start]).strip()[:200]!r}"
        )
    try:
        doc = json.loads("".join(lines[start:]))
    except ValueError:
        raise SystemExit(
            f"`lockgate {command}` printed no JSON report:\n"
            f"{proc.stdout[:2000]}\n{proc.stderr[-2000:]}"
        ) from None
    return proc, doc, phases


def phase_text(proc: Proc, phases: dict[str, float]) -> str:
    """e.g. `extract 1.2, map 0.0, diff 3.4, deliver 50.1, commit 2.0; outside the run 4.1 s`."""
    if not phases:
        return ""
    inside = phases.get("run_sync", phases.get("plan_sync", 0.0))
    steps = ", ".join(
        f"{k} {v:.2f}" for k, v in phases.items() if k not in ("run_sync", "plan_sync")
    )
    return f"{steps}; in run {inside:.2f}, outside (start-up, exit) {proc.seconds - inside:.2f} s"


# -- drt --------------------------------------------------------------------------------------

DRT_BATCH = 500  # records per /api/v2/batch request (~300 KB with 22 fields: under 500 KB)
#: records per destination `load()` call; drt opens a new httpx.Client (and builds a TLS context,
#: ~50-130 ms here) per call, so a large value is drt's best configuration
DRT_LOAD_ROWS = 10_000


def drt_model_sql() -> str:
    """The model as drt reads it: timestamps and dates as unix seconds (what Lockgate sends)."""
    cols = []
    for name, (_, kind) in COLUMNS.items():
        if kind in ("timestamp", "date"):
            cols.append(f"epoch({name}::timestamp)::bigint as {name}")
        else:
            cols.append(name)
    return "select id::varchar as id, email, " + ", ".join(cols) + " from people"


DRT_BATCH_TEMPLATE = (
    '{"batch":[{% for row in rows %}{"type":"person","action":"identify",'
    '"identifiers":{"id":{{ row.id | tojson_safe }}},'
    '"attributes":{{ row | tojson_safe }}}{% if not loop.last %},{% endif %}'
    "{% endfor %}]}"
)


def write_drt_project(root: Path, warehouse: Path, url: str) -> tuple[Path, dict[str, str]]:
    """A drt project (drt_project.yml, syncs/people.yml) and a HOME holding .drt/profiles.yml."""
    import yaml

    shutil.rmtree(root, ignore_errors=True)
    (root / "syncs").mkdir(parents=True)
    (root / "home" / ".drt").mkdir(parents=True)
    (root / "home" / ".drt" / "profiles.yml").write_text(
        yaml.safe_dump({"bench": {"type": "duckdb", "database": str(warehouse)}})
    )
    (root / "drt_project.yml").write_text(
        yaml.safe_dump({"name": "bench_sync", "version": "0.1", "profile": "bench"})
    )
    sync = {
        "name": "people",
        "model": drt_model_sql(),
        "destination": {
            "type": "rest_api",
            "url": f"{url}/api/v2/batch",
            "method": "POST",
            "headers": {"Content-Type": "application/json"},
            "auth": {"type": "basic", "username_env": "CIO_SITE_ID", "password_env": "CIO_API_KEY"},
            "body_mode": "batch",
            "batch_template": DRT_BATCH_TEMPLATE,
            "max_records_per_request": DRT_BATCH,
        },
        "sync": {
            "mode": "full",
            "batch_size": DRT_LOAD_ROWS,
            "rate_limit": {"requests_per_second": 1000},
            "on_error": "fail",
        },
    }
    (root / "syncs" / "people.yml").write_text(yaml.safe_dump(sync, sort_keys=False))
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "CIO_SITE_ID": AUTH[0],
        "CIO_API_KEY": AUTH[1],
        "DRT_TELEMETRY": "0",
        "DO_NOT_TRACK": "1",
    }
    return root, env


# -- the hand-written baseline ----------------------------------------------------------------


def baseline_script(per_row: str) -> str:
    """The hand-written baseline's script: read the model (``argv``: warehouse, SQL, URL, site
    id, API key, seconds) with a DuckDB cursor and make one official-client call per row
    (``per_row``: Python lines over ``names`` and ``row``, calling ``cio``) until ``seconds``
    pass; prints the records done and the seconds taken as JSON."""
    head = textwrap.dedent(
        """
        import json, sys, time
        import duckdb
        from customerio import CustomerIO
        warehouse, sql, url, site_id, api_key, seconds = sys.argv[1:7]
        seconds = float(seconds)
        started = time.perf_counter()
        cio = CustomerIO(site_id, api_key)
        cio.base_url = url + "/api/v1"              # https-only client: use the plain listener
        cio.http.mount("http://", cio.http.adapters["https://"])  # its keep-alive adapter
        con = duckdb.connect(warehouse, read_only=True)
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        n = 0
        while time.perf_counter() - started < seconds:
            rows = cursor.fetchmany(1000)
            if not rows:
                break
            for row in rows:
        """
    )
    tail = textwrap.dedent(
        """
                n += 1
                if time.perf_counter() - started >= seconds:
                    break
        print(json.dumps({"records": n, "seconds": time.perf_counter() - started}))
        """
    )
    body = textwrap.indent(textwrap.dedent(per_row).strip("\n"), " " * 8)
    return head + body + tail


BASELINE_SCRIPT = baseline_script(
    """
    attrs = dict(zip(names, row))
    cio.identify(id=attrs.pop("id"), **attrs)
    """
)


def run_baseline(warehouse: Path, url: str, seconds: float) -> tuple[int, Proc]:
    python = ensure_venv(BASELINE_VENV, "customerio", "duckdb")
    proc = run_measured(
        [
            str(python),
            "-W",
            "ignore",
            "-c",
            BASELINE_SCRIPT,
            str(warehouse),
            drt_model_sql(),
            url,
            *AUTH,
            str(seconds),
        ]
    )
    if proc.returncode != 0:
        raise SystemExit(f"baseline failed:\n{proc.stderr[-3000:]}")
    return int(json.loads(proc.stdout)["records"]), proc


def run_drt(warehouse: Path, url: str, rows: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """``drt run`` to the end or for ``seconds``; the rest extrapolated at its recent rate."""
    python = ensure_venv(DRT_VENV, "drt-core[duckdb]")
    root, env = write_drt_project(workdir / "drt", warehouse, url)
    out = tempfile.TemporaryFile()
    wrapped, figures = measured([str(python.with_name("drt")), "run", "--select", "people"])
    started = time.perf_counter()
    proc = subprocess.Popen(
        wrapped,
        env=env,
        cwd=root,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    samples: list[tuple[float, int]] = []
    killed = False
    while True:
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        elapsed = time.perf_counter() - started
        samples.append((elapsed, ingested(url)))
        if elapsed > seconds:
            os.kill(proc.pid, signal.SIGTERM)  # not send_signal: it polls (reaps)
            killed = True
            _, status, _ = os.wait4(proc.pid, 0)
            break
        time.sleep(2.0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall, peak, _ = read_measure(figures)
    done = ingested(url)
    out.seek(0)
    log = out.read().decode(errors="replace")
    if not killed and (proc.returncode != 0 or done != rows):
        raise SystemExit(f"drt failed ({proc.returncode}, {done:,} ingested):\n{log[-3000:]}")
    if killed:
        # the recent rate: over the last half of the samples (start-up excluded)
        t0, n0 = samples[len(samples) // 2]
        rate = (done - n0) / (wall - t0)
        projected = wall + (rows - done) / rate
    else:
        projected = wall
    return {
        "seconds": wall,
        "projected": projected,
        "ingested": done,
        "killed": killed,
        "peak_rss": peak,
        "log": log,
    }


# -- the emulator's own ceiling ----------------------------------------------------------------


def ceiling_bodies(warehouse: Path, rows: int, max_bytes: int = 499_000) -> list[bytes]:
    """Track v2 batch bodies of the model's first ``rows`` rows (built before any clock)."""
    import orjson

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        cursor = con.execute(drt_model_sql() + f" limit {rows}")
        names = [d[0] for d in cursor.description]
        bodies: list[bytes] = []
        ops: list[bytes] = []
        size = 12
        while chunk := cursor.fetchmany(10_000):
            for row in chunk:
                attrs = dict(zip(names, row, strict=True))
                op = orjson.dumps(
                    {
                        "type": "person",
                        "action": "identify",
                        "identifiers": {"id": attrs.pop("id")},
                        "attributes": attrs,
                    }
                )
                if ops and size + len(op) + 1 > max_bytes:
                    bodies.append(b'{"batch":[' + b",".join(ops) + b"]}")
                    ops, size = [], 12
                ops.append(op)
                size += len(op) + 1
        if ops:
            bodies.append(b'{"batch":[' + b",".join(ops) + b"]}")
        return bodies
    finally:
        con.close()


def emulator_ceiling(url: str, bodies: list[bytes], concurrency: int = 8) -> float:
    """Seconds to POST prebuilt bodies with plain httpx (``concurrency`` in flight)."""
    import asyncio

    async def go() -> float:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=url,
            auth=AUTH,
            limits=limits,
            timeout=120,
            headers={"Content-Type": "application/json"},
        ) as client:
            queue = iter(bodies)

            async def worker() -> None:
                for body in queue:
                    (await client.post("/api/v2/batch", content=body)).raise_for_status()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started

    return asyncio.run(go())


# -- snapshot diff ----------------------------------------------------------------------------


def diff_bench(warehouse: Path, workdir: Path) -> dict[str, float]:
    """Lockgate's diff (DuckDB join of (key, hash) tables) vs two Python dicts, same data.

    The snapshot is every row's (key, hash), a table in a database file opened with the state
    store's settings (256 MB memory limit, spill folder); the model is a temp table of the same
    keys with 1% of the hashes different. Both inputs are materialised before any clock starts:
    DuckDB tables for the join, Arrow tables for the dicts.
    """
    state = workdir / "diff-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    con = duckdb.connect(str(state / "state.duckdb"))
    con.execute("set memory_limit='256MB'")
    con.execute(f"set temp_directory='{state / 'tmp'}'")
    con.execute("set preserve_insertion_order=false")
    con.execute(f"attach '{warehouse}' as wh (read_only)")
    con.execute(
        f"create table snap as select id::varchar as k, hash({HASH_COLUMNS}) as h from wh.people"
    )
    con.execute("checkpoint")
    con.execute(
        f"""create temp table mapped as select id::varchar as k,
            hash({HASH_COLUMNS}) + (id % {CHANGED_FRACTION} = 7)::ubigint as h from wh.people"""
    )
    con.execute("detach wh")
    snap_arrow = con.sql("select k, h from snap").to_arrow_table()
    mapped_arrow = con.sql("select k, h from mapped").to_arrow_table()

    def duck() -> tuple[float, int]:
        started = time.perf_counter()
        con.execute(
            """create or replace temp table changes as
               select m.k, m.h, s.k is null as is_new from mapped m left join snap s on s.k = m.k
               where s.k is null or s.h <> m.h"""
        )
        removed = con.execute("select count(*) from snap s anti join mapped m on m.k = s.k")
        removed.fetchall()
        n = con.execute("select count(*) from changes").fetchall()[0][0]
        return time.perf_counter() - started, int(n)

    def python() -> tuple[float, int]:
        started = time.perf_counter()
        old = dict(
            zip(snap_arrow.column(0).to_pylist(), snap_arrow.column(1).to_pylist(), strict=True)
        )
        new = dict(
            zip(mapped_arrow.column(0).to_pylist(), mapped_arrow.column(1).to_pylist(), strict=True)
        )
        changes = [k for k, h in new.items() if old.get(k) != h]
        removed = [k for k in old if k not in new]
        assert not removed
        return time.perf_counter() - started, len(changes)

    duck_s, duck_n = min(duck() for _ in range(3))
    py_s, py_n = min(python() for _ in range(3))
    assert duck_n == py_n, (duck_n, py_n)
    con.close()
    shutil.rmtree(state, ignore_errors=True)
    return {"duckdb": duck_s, "python": py_s, "changes": duck_n}


# -- main -------------------------------------------------------------------------------------

GiB = 1024**3
MiB = 1024**2


def startup_seconds() -> float:
    """Whole-process time of `lockgate plan --help`: Python start-up and the CLI's imports."""
    return min(run_measured([str(LOCKGATE), "plan", "--help"]).seconds for _ in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=20.0,
        help="how long the official client runs before its rate is extrapolated",
    )
    parser.add_argument(
        "--drt-seconds",
        type=float,
        default=300.0,
        help="drt is stopped after this long and its rate extrapolated",
    )
    parser.add_argument("--skip-drt", action="store_true")
    parser.add_argument(
        "--skip-10m", action="store_true", help="skip the memory check at 10x --rows"
    )
    parser.add_argument(
        "--skip-floor",
        action="store_true",
        help="skip the scan-and-hash floor (no verdict on the incremental target then)",
    )
    parser.add_argument("--skip-diff", action="store_true", help="skip the snapshot diff")
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        help="ms the emulator adds to every request, as a workspace over the internet would",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lockgate-bench-sync"
    )
    args = parser.parse_args()
    if args.latency_ms < 0:
        parser.error(f"--latency-ms {args.latency_ms}: give 0 or more milliseconds")
    n = args.rows
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    warehouse = work / "warehouse.duckdb"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    at = f"  latency_ms={args.latency_ms}" if args.latency_ms else ""
    console.print(f"# bench/sync.py  rows={n:,}{at}  {stamp}")
    console.print(
        f"# {platform.platform()}  python {platform.python_version()}  "
        f"cores={os.cpu_count()}  load average at start {os.getloadavg()[0]:.1f}"
    )
    # Lockgate's bytecode, as a wheel install writes it (an editable install under
    # PYTHONDONTWRITEBYTECODE would recompile every module at each start: ~0.2 s per process)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "lockgate")])
    built = build_warehouse(warehouse, n)
    size = warehouse.stat().st_size
    console.print(
        f"model: `people`, {n:,} rows x 22 columns (id, email + 20: 6 strings, 4 ints, "
        f"3 doubles, 3 booleans, 2 timestamps, 2 dates), {size / MiB:,.0f} MiB; "
        f"built in {built:.1f} s"
    )
    r: dict[str, Any] = {"startup": startup_seconds()}

    with emulator(args.latency_ms) as url:
        project = write_project(work / "lockgate", warehouse, url)
        console.print("lockgate full sync ...")
        cpu = emulator_cpu(url)
        r["full"], doc, r["full_phases"] = lockgate("sync", project)
        r["full_emu_cpu"] = emulator_cpu(url) - cpu
        r["full_delivered"], r["full_ingested"] = doc[0]["delivered"], ingested(url)
        say("full sync", r["full"], n)
        r["full_settle"] = settle(url, n - 1)
        console.print(f"  the emulator applied the rest of its queue in {r['full_settle']:.1f} s")
        assert r["full_delivered"] == n == r["full_ingested"], (
            r["full_delivered"],
            r["full_ingested"],
        )
        r["changed"] = change_one_percent(warehouse)
        console.print(f"changed {r['changed']:,} rows; lockgate incremental sync ...")
        cpu = emulator_cpu(url)
        r["incr"], doc, r["incr_phases"] = lockgate("sync", project)
        r["incr_emu_cpu"] = emulator_cpu(url) - cpu
        r["incr_delivered"] = doc[0]["delivered"]
        assert r["incr_delivered"] == r["changed"], (r["incr_delivered"], r["changed"])
        assert ingested(url) == n + r["changed"]
        say("incremental sync", r["incr"], n)
        if not args.skip_floor:
            r["floor_all"] = [scan_and_hash(warehouse) for _ in range(3)]
            r["floor"] = min(r["floor_all"])
            console.print(f"  floor (scan + hash): {r['floor']:.2f} s")
        console.print("incremental plan (nothing left to send) ...")
        r["noop"], doc, r["noop_phases"] = lockgate("plan", project)
        assert doc["changes"]["to_send"] == 0
        say("plan, nothing to send", r["noop"], n)

        reset(url)
        ceiling_rows = min(n, 200_000)
        console.print(f"emulator ceiling: {ceiling_rows:,} rows as prebuilt batches ...")
        bodies = ceiling_bodies(warehouse, ceiling_rows)
        cpu = emulator_cpu(url)
        r["ceiling_s"] = emulator_ceiling(url, bodies)
        r["ceiling_emu_cpu"] = emulator_cpu(url) - cpu
        r["ceiling_rows"], r["ceiling_batches"] = ceiling_rows, len(bodies)
        assert ingested(url) == ceiling_rows
        console.print(f"  ceiling: {ceiling_rows / r['ceiling_s']:,.0f} rows/s")
        del bodies
        reset(url)
        console.print(f"official client, {args.baseline_seconds:g} s ...")
        cpu = emulator_cpu(url)
        r["base_n"], r["base"] = run_baseline(warehouse, url, args.baseline_seconds)
        r["base_emu_cpu"] = emulator_cpu(url) - cpu
        r["base_s"] = float(json.loads(r["base"].stdout)["seconds"])
        console.print(f"  official client: {r['base_n'] / r['base_s']:,.1f} rows/s")

        if not args.skip_drt:
            reset(url)
            console.print(f"drt (at most {args.drt_seconds:g} s) ...")
            cpu = emulator_cpu(url)
            try:
                r["drt"] = run_drt(warehouse, url, n, args.drt_seconds, work)
            except (Exception, SystemExit) as exc:  # report what was measured anyway
                console.print(f"[red]drt failed: {exc}")
            else:
                r["drt_emu_cpu"] = emulator_cpu(url) - cpu
                console.print(
                    f"  drt: {n / r['drt']['projected']:,.0f} rows/s "
                    f"({r['drt']['ingested']:,} rows in {r['drt']['seconds']:.0f} s)"
                )

    if not args.skip_diff:
        console.print("snapshot diff vs Python dicts ...")
        r["diff"] = diff_bench(warehouse, work)
        d = r["diff"]
        console.print(f"  diff: duckdb {d['duckdb']:.3f} s, python {d['python']:.3f} s")
    console.print("lockgate plan (fresh state) for memory ...")
    plan_project = write_project(work / "lockgate-plan", warehouse, "http://127.0.0.1:9")
    r["plan"], _, r["plan_phases"] = lockgate("plan", plan_project)
    say("plan, fresh state", r["plan"], n)
    if not args.skip_10m:
        big = work / "warehouse-10x.duckdb"
        console.print(f"building {10 * n:,} rows ...")
        build_warehouse(big, 10 * n)
        plan_project = write_project(work / "lockgate-plan-10x", big, "http://127.0.0.1:9")
        console.print(f"lockgate plan at {10 * n:,} rows ...")
        try:
            r["plan10"], doc, r["plan10_phases"] = lockgate("plan", plan_project)
            assert doc["changes"]["to_send"] == 10 * n
            say(f"plan, fresh state, {10 * n:,}", r["plan10"], 10 * n)
        except (Exception, SystemExit) as exc:  # report what was measured anyway
            console.print(f"[red]plan at {10 * n:,} failed: {exc}")
        big.unlink()
        shutil.rmtree(plan_project, ignore_errors=True)
    report(n, r, args)
    saved = {
        k: (
            {f: getattr(v, f) for f in ("seconds", "peak_rss", "returncode")}
            if isinstance(v, Proc)
            else v
        )
        for k, v in r.items()
    }
    if "drt" in saved:
        saved["drt"] = {k: v for k, v in saved["drt"].items() if k != "log"}
    if says_skipped(args):
        saved["latency_ms"] = args.latency_ms
        saved["skipped"] = skipped(args)
    (work / "results.json").write_text(json.dumps(saved, indent=2, default=str))
    console.print(f"results: {work / 'results.json'}")


def say(label: str, proc: Proc, rows: int) -> None:
    console.print(
        f"  {label}: {proc.seconds:.1f} s, {rows / proc.seconds:,.0f} rows/s, "
        f"peak RSS {proc.peak_rss / MiB:,.0f} MiB"
    )


def at_latency(args: argparse.Namespace) -> str:
    """`` at N ms added latency per request`` for headings, or nothing at 0 (as before)."""
    return f" at {args.latency_ms} ms added latency per request" if args.latency_ms else ""


def skipped(args: argparse.Namespace) -> list[str]:
    """What this run left out, for the report."""
    flags = (
        ("skip_floor", "scan-and-hash floor (--skip-floor)"),
        ("skip_diff", "snapshot diff (--skip-diff)"),
        ("skip_10m", "plan at 10x rows (--skip-10m)"),
        ("skip_drt", "drt (--skip-drt)"),
    )
    return [label for flag, label in flags if getattr(args, flag)]


def says_skipped(args: argparse.Namespace) -> bool:
    """Whether the report and results.json say the latency and what was skipped: only when
    ``--latency-ms``, ``--skip-floor`` or ``--skip-diff`` is given, so that other runs print
    and save exactly what they did before those options existed."""
    return bool(args.latency_ms or args.skip_floor or args.skip_diff)


def verdict(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def report(n: int, r: dict[str, Any], args: argparse.Namespace) -> None:
    full: Proc = r["full"]
    incr: Proc = r["incr"]
    base_rate = r["base_n"] / r["base_s"]
    full_rate = n / full.seconds
    table = Table(
        title=f"sync: {n:,} people x 20 columns, DuckDB -> emulator{at_latency(args)} "
        "(whole processes)"
    )
    for col in ("run", "wall s", "rows/s", "peak RSS", "notes"):
        table.add_column(col, justify="left" if col in ("run", "notes") else "right")
    table.add_row(
        "lockgate sync (full)",
        f"{full.seconds:.1f}",
        f"{full_rate:,.0f}",
        f"{full.peak_rss / MiB:,.0f} MiB",
        f"{r['full_delivered']:,} delivered, emulator has {r['full_ingested']:,}; "
        f"Lockgate CPU {full.cpu:.1f} s, emulator CPU {r['full_emu_cpu']:.1f} s",
    )
    table.add_row(
        "lockgate sync (incremental, 1%)",
        f"{incr.seconds:.2f}",
        f"{n / incr.seconds:,.0f}",
        f"{incr.peak_rss / MiB:,.0f} MiB",
        f"{r['incr_delivered']:,} changed rows sent (rows/s = model rows scanned)",
    )
    table.add_row(
        "lockgate plan (nothing to send)",
        f"{r['noop'].seconds:.2f}",
        "",
        f"{r['noop'].peak_rss / MiB:,.0f} MiB",
        "extract + map + diff",
    )
    if "floor" in r:
        table.add_row(
            "floor: DuckDB scan + hash",
            f"{r['floor']:.2f}",
            f"{n / r['floor']:,.0f}",
            "",
            "min of " + ", ".join(f"{x:.2f}" for x in r["floor_all"]) + " s, fresh connection",
        )
    table.add_row("lockgate start-up (plan --help)", f"{r['startup']:.2f}", "", "", "")
    table.add_row(
        "official client (extrapolated)",
        f"{n / base_rate:,.0f}",
        f"{base_rate:,.1f}",
        f"{r['base'].peak_rss / MiB:,.0f} MiB",
        f"{r['base_n']:,} identify calls in {r['base_s']:.1f} s, extrapolated to {n:,}; "
        f"emulator CPU {r['base_emu_cpu']:.1f} s",
    )
    table.add_row(
        "emulator ceiling (raw httpx)",
        f"{r['ceiling_s']:.1f}",
        f"{r['ceiling_rows'] / r['ceiling_s']:,.0f}",
        "",
        f"{r['ceiling_rows']:,} rows in {r['ceiling_batches']} prebuilt batches, 8 in flight, "
        f"no Lockgate code; emulator CPU {r['ceiling_emu_cpu']:.1f} s",
    )
    drt = r.get("drt")
    if drt:
        drt_rate = n / drt["projected"]
        how = (
            f"stopped after {drt['seconds']:.0f} s at {drt['ingested']:,} rows, extrapolated"
            if drt["killed"]
            else f"{drt['ingested']:,} rows"
        )
        table.add_row(
            "drt run (rest_api batch)" + (" (extrapolated)" if drt["killed"] else ""),
            f"{drt['projected']:,.1f}",
            f"{drt_rate:,.0f}",
            f"{drt['peak_rss'] / MiB:,.0f} MiB",
            f"{how}; emulator CPU {r['drt_emu_cpu']:.1f} s",
        )
    d = r.get("diff")
    if d:
        table.add_row(
            "snapshot diff: DuckDB join",
            f"{d['duckdb']:.3f}",
            f"{n / d['duckdb']:,.0f}",
            "",
            f"{d['changes']:,} changes found (best of 3)",
        )
        table.add_row(
            "snapshot diff: Python dicts",
            f"{d['python']:.3f}",
            f"{n / d['python']:,.0f}",
            "",
            "build two dicts key->hash from Arrow + diff (best of 3)",
        )
    table.add_row(
        f"lockgate plan, fresh state, {n:,}",
        f"{r['plan'].seconds:.1f}",
        f"{n / r['plan'].seconds:,.0f}",
        f"{r['plan'].peak_rss / MiB:,.0f} MiB",
        "",
    )
    if "plan10" in r:
        p10 = r["plan10"]
        table.add_row(
            f"lockgate plan, fresh state, {10 * n:,}",
            f"{p10.seconds:.1f}",
            f"{10 * n / p10.seconds:,.0f}",
            f"{p10.peak_rss / MiB:,.0f} MiB",
            "",
        )
    console.print(table)

    phases = Table(title="where Lockgate's time goes (seconds; engine steps, whole process)")
    phases.add_column("run")
    phases.add_column("phases")
    for label, key in (
        ("full sync", "full"),
        ("incremental sync", "incr"),
        ("plan, nothing to send", "noop"),
        (f"plan, fresh state, {n:,}", "plan"),
        (f"plan, fresh state, {10 * n:,}", "plan10"),
    ):
        if key in r:
            phases.add_row(label, phase_text(r[key], r.get(f"{key}_phases", {})))
    console.print(phases)

    targets = Table(title=f"targets{at_latency(args)}")
    for col in ("target", "measured", "verdict"):
        targets.add_column(col)
    ratio = full_rate / base_rate
    # what no client can beat here: the emulator taking prebuilt bodies, no client work at all
    ceiling = r["ceiling_rows"] / r["ceiling_s"]
    targets.add_row(
        "full sync >= 250x the hand-written baseline", f"{ratio:,.0f}x", verdict(ratio >= 250)
    )
    targets.add_row(
        "  (the emulator's ceiling here allows at most)", f"{ceiling / base_rate:,.0f}x", ""
    )
    if drt:
        drt_rate = n / drt["projected"]
        ratio = full_rate / drt_rate
        targets.add_row("full sync >= 10x drt", f"{ratio:,.1f}x", verdict(ratio >= 10))
        targets.add_row(
            "  (the emulator's ceiling here allows at most)", f"{ceiling / drt_rate:,.1f}x", ""
        )
    if "floor" in r:
        ratio = incr.seconds / r["floor"]
        targets.add_row(
            "incremental <= 3x the scan-and-hash floor", f"{ratio:,.1f}x", verdict(ratio <= 3)
        )
        inside = r.get("incr_phases", {}).get("run_sync")
        if inside:
            ratio = inside / r["floor"]
            targets.add_row(
                "  (for reference: incremental inside run_sync, start-up excluded)",
                f"{ratio:,.1f}x",
                "",
            )
    else:
        targets.add_row(
            "incremental <= 3x the scan-and-hash floor", "not measured (--skip-floor)", ""
        )
    if d:
        ratio = d["python"] / d["duckdb"]
        targets.add_row(
            "snapshot diff >= 6x faster than Python dicts", f"{ratio:,.1f}x", verdict(ratio >= 6)
        )
    else:
        targets.add_row(
            "snapshot diff >= 6x faster than Python dicts", "not measured (--skip-diff)", ""
        )
    peak = max(full.peak_rss, incr.peak_rss, r["plan"].peak_rss)
    targets.add_row(
        "peak memory < 1 GiB (full, incremental, plan)",
        f"{peak / MiB:,.0f} MiB",
        verdict(peak < GiB),
    )
    if "plan10" in r:
        p10 = r["plan10"]
        ratio = p10.peak_rss / r["plan"].peak_rss
        targets.add_row(
            f"memory flat: plan at {10 * n:,} vs {n:,} (10x would fail)",
            f"{ratio:.2f}x ({p10.peak_rss / MiB:,.0f} MiB)",
            verdict(ratio < 2 and p10.peak_rss < GiB),
        )
    console.print(targets)
    if says_skipped(args):
        left_out = skipped(args)
        console.print("skipped: " + (", ".join(left_out) if left_out else "nothing"))
    console.print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
