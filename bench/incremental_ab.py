"""A/B of the incremental people sync: two source trees, same model, interleaved rounds.

Measures what ``bench/sync.py`` calls the incremental run (1% of a 1,000,000-person x 20-column
DuckDB model changed, then ``lockgate sync people --json``) for two versions of Lockgate's
sources, side by side on the same machine, against the free sink of ``bench/sync_sink.py`` (the
emulator's cost is out of the figures). Each side has its own copy of the warehouse and its own
project and state, brought up to date by its own full sync first. Then, for each round, each
side in turn (the order alternates round by round, so load that comes and goes on a shared
machine falls on both): the same 1% of its warehouse changes (``bench/sync.py``'s
``change_one_percent``: ``logins + 1``, ``last_seen_at + 1 hour`` where ``id % 100 = 7``) and
the sync runs as a process, through ``bench/sync.py``'s ``PHASES_DRIVER`` (the engine's own step
spans and the ``run_sync`` call). Each side's report must say the same (10,000 changed, 10,000
delivered) or the bench stops. Then ``lockgate plan --help`` (start-up and exit alone),
interleaved the same way. Both trees are bytecode-compiled first (``python -m compileall``).

The figures are medians over the rounds: whole-process wall time and CPU time (user + system,
all threads: steadier than wall time when other jobs share the machine), ``run_sync``, each
step, the time in ``run_sync`` outside the steps, and the sync's peak RSS; the load average is
printed at the start and end.

Usage (the "before" side is usually ``main``'s sources)::

    git archive main src | tar -x -C /tmp/before
    .venv/bin/python bench/incremental_ab.py --before /tmp/before/src --rounds 7
    .venv/bin/python bench/incremental_ab.py --before /tmp/before/src \\
        --warehouse /tmp/lgbench/warehouse.duckdb          # copy a built model, not build one

``--after`` defaults to this checkout's ``src``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sync as bench  # bench/sync.py: the model, the project, the measured runner
import sync_sink  # bench/sync_sink.py: the free sink

STEPS = ("extract", "map", "diff", "guard", "deliver", "commit")


def lockgate(src: Path, args: list[str], project: Path | None) -> tuple[bench.Proc, Any, dict]:
    """``lockgate ARGS`` with ``src`` first on the path, through the phases driver."""
    env = {**bench.track_env(), "PYTHONPATH": str(src)}
    argv = [sys.executable, "-c", bench.PHASES_DRIVER, *args]
    if project is not None:
        argv += ["--json", "--project", str(project)]
    proc = bench.run_measured(argv, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"`lockgate {' '.join(args)}` ({src}) failed:\n{proc.stderr[-3000:]}")
    phases: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("LOCKGATE_PHASES "):
            phases = json.loads(line.removeprefix("LOCKGATE_PHASES "))
    doc = json.loads(proc.stdout) if project is not None else None
    return proc, doc, phases


def summary(doc: Any) -> tuple[Any, ...]:
    """What must be alike on both sides: the report's counts."""
    run = doc[0]
    # counts of 0 left out: a count one tree has and the other does not (a new one) is 0
    changes = {k: v for k, v in run["changes"].items() if v}
    return (run["status"], json.dumps(changes, sort_keys=True), run["delivered"])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ab_start(
    doc: str, script: str, prefix: str, warehouse_help: str
) -> tuple[argparse.Namespace, Path, dict[str, Path]]:
    """The arguments, work folder and the two sides' src folders (compiled) of an A/B bench
    (this one, bench/full_ab.py), with its header printed."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the A side's src folder")
    parser.add_argument("--after", type=Path, default=bench.ROOT / "src")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--warehouse", type=Path, help=warehouse_help)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    bench.console.print(
        f"# {script}  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  rounds={args.rounds}"
    )
    bench.console.print(
        f"# {platform.platform()}  python {platform.python_version()}  cores={os.cpu_count()}  "
        f"load average at start {'/'.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for src in sides.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True)
    return args, work, sides


def main() -> None:
    args, work, sides = ab_start(
        __doc__,
        "bench/incremental_ab.py",
        "lockgate-bench-ab-",
        "a built model to copy (not written)",
    )
    console = bench.console
    source = work / "model.duckdb"
    if args.warehouse is not None:
        shutil.copyfile(args.warehouse, source)
    elif not source.exists():
        bench.build_warehouse(source, args.rows)
    runs: dict[str, list[tuple[bench.Proc, dict[str, float]]]] = {s: [] for s in sides}
    helps: dict[str, list[float]] = {s: [] for s in sides}
    with sync_sink.sink() as url:
        projects = {}
        for side, src in sides.items():
            warehouse = work / f"{side}.duckdb"
            shutil.copyfile(source, warehouse)
            projects[side] = bench.write_project(work / side, warehouse, url)
            full, doc, _ = lockgate(src, ["sync", "people"], projects[side])
            console.print(f"{side}: full sync {full.seconds:.1f} s, {summary(doc)}")
        for n in range(args.rounds):
            order = list(sides) if n % 2 == 0 else list(reversed(sides))
            seen = {}
            for side in order:
                changed = bench.change_one_percent(work / f"{side}.duckdb")
                proc, doc, phases = lockgate(sides[side], ["sync", "people"], projects[side])
                seen[side] = summary(doc)
                if doc[0]["delivered"] != changed:
                    raise SystemExit(f"{side}: {changed} rows changed, report {seen[side]}")
                runs[side].append((proc, phases))
            if seen["before"] != seen["after"]:
                raise SystemExit(f"the sides disagree: {seen}")
            for side in order:
                proc, _, _ = lockgate(sides[side], ["plan", "--help"], None)
                helps[side].append(proc.seconds)
            console.print(
                f"round {n + 1}: "
                + ", ".join(
                    f"{s} {runs[s][-1][0].seconds:.2f} s (run_sync "
                    f"{runs[s][-1][1].get('run_sync', 0):.2f}, diff "
                    f"{runs[s][-1][1].get('diff', 0):.2f})"
                    for s in order
                )
            )
    console.print(f"# load average at end {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = [
        "whole process",
        "whole process, CPU",
        "run_sync",
        *STEPS,
        "in run_sync, outside the steps",
        "plan --help",
        "peak RSS, MiB",
    ]
    table: dict[str, dict[str, float]] = {}
    for side in sides:
        procs = runs[side]
        table[side] = {
            "whole process": median([p.seconds for p, _ in procs]),
            # user + system time of the process and its threads: steadier than wall time on a
            # machine other jobs share (a job that takes a core slows the wall clock only)
            "whole process, CPU": median([p.cpu for p, _ in procs]),
            "run_sync": median([ph.get("run_sync", 0.0) for _, ph in procs]),
            **{s: median([ph.get(s, 0.0) for _, ph in procs]) for s in STEPS},
            "in run_sync, outside the steps": median(
                [ph.get("run_sync", 0.0) - sum(ph.get(s, 0.0) for s in STEPS) for _, ph in procs]
            ),
            "plan --help": median(helps[side]),
            "peak RSS, MiB": median([p.peak_rss / 2**20 for p, _ in procs]),
        }
    console.print(f"\nmedians of {args.rounds} rounds (seconds)\n")
    console.print("| | before | after | after - before |")
    console.print("| --- | ---: | ---: | ---: |")
    for row in rows:
        b, a = table["before"][row], table["after"][row]
        console.print(f"| {row} | {b:.3f} | {a:.3f} | {a - b:+.3f} |")
    # each round's two runs ran back to back: the median of their differences cancels load
    # that changed between rounds better than the difference of the medians
    pairs = list(zip(runs["before"], runs["after"], strict=True))
    paired = {
        "whole process": [a.seconds - b.seconds for (b, _), (a, _) in pairs],
        "whole process, CPU": [a.cpu - b.cpu for (b, _), (a, _) in pairs],
        **{
            span: [a.get(span, 0.0) - b.get(span, 0.0) for (_, b), (_, a) in pairs]
            for span in ("run_sync", "extract", "diff")
        },
        "plan --help": [a - b for b, a in zip(helps["before"], helps["after"], strict=True)],
    }
    console.print(
        "\nmedian of the rounds' paired differences (after - before, s): "
        + ", ".join(f"{k} {median(v):+.3f}" for k, v in paired.items())
    )


if __name__ == "__main__":
    main()
