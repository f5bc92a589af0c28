"""What `run_log:` costs a sync: the same 1M-people project (``bench/sync.py``'s model and
people sync) run without a run log (the baseline), with `run_log: {}` (runs and rejected rows)
and with `run_log: {records: true}` (also one row per record sent), against the free sink of
``bench/sync_sink.py`` so that only Lockgate's own work is timed.

Each project gets a fresh state: a full sync, then ``--repeats`` incremental runs with 1% of
the rows changed before each (the warehouse is shared, so every project sees the same changes:
the first project's incremental runs and the others' are of the same size). Then `lockgate
runs export --all` with records on, which writes the full sync's million record rows again.
Whole process wall time, as in ``bench/sync.py``; the ratio is to the baseline's median.

Usage::

    .venv/bin/python bench/run_log.py                      # 1M rows, ~3 min
    .venv/bin/python bench/run_log.py --rows 100000 --repeats 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sync as bench  # bench/sync.py: the model, the project, the runners
import sync_sink  # bench/sync_sink.py: the free sink

CONFIGS = {
    "no run log (baseline)": "",
    "run_log: {}": "run_log: {dataset: rl_runs}\n",
    "run_log: {records: true}": "run_log: {dataset: rl_records, records: true}\n",
}

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lockgate-bench-runlog-"))
    workdir.mkdir(parents=True, exist_ok=True)
    warehouse = workdir / "warehouse.duckdb"
    # write the bytecode first, as a wheel install does (this machine sets PYTHONDONTWRITEBYTECODE)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(bench.ROOT / "src" / "lockgate")])
    console.print(f"building {args.rows:,} people in {warehouse}")
    bench.build_warehouse(warehouse, args.rows)
    full: dict[str, float] = {}
    incremental: dict[str, list[float]] = {}
    export = 0.0
    with sync_sink.sink() as url:
        for label, run_log in CONFIGS.items():
            root = bench.write_project(workdir / f"project-{len(full)}", warehouse, url)
            with (root / "lockgate.yml").open("a") as f:
                f.write(run_log)
            proc, doc, _ = bench.lockgate("sync", root)
            full[label] = proc.seconds
            console.print(f"{label}: full sync {proc.seconds:.2f} s ({doc[0]['delivered']:,} sent)")
            incremental[label] = []
            for _ in range(args.repeats):
                bench.change_one_percent(warehouse)
                proc, doc, _ = bench.lockgate("sync", root)
                incremental[label].append(proc.seconds)
            console.print(f"  incremental: {', '.join(f'{s:.2f}' for s in incremental[label])} s")
            if "records" in run_log:
                proc = bench.run_measured(
                    [
                        str(Path(sys.executable).with_name("lockgate")),
                        "runs",
                        "export",
                        "--all",
                        "--project",
                        str(root),
                    ]
                )
                if proc.returncode != 0:
                    raise SystemExit(f"`runs export --all` failed:\n{proc.stderr[-2000:]}")
                export = proc.seconds
    base_full = full["no run log (baseline)"]
    base_inc = statistics.median(incremental["no run log (baseline)"])
    table = Table(
        title=f"`run_log:` cost, {args.rows:,} people x 20 columns, free sink "
        f"({platform.node()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)"
    )
    for column in ("", "full sync s", "ratio", "incremental s (median)", "ratio"):
        table.add_column(column, justify="right" if column else "left")
    for label in CONFIGS:
        inc = statistics.median(incremental[label])
        table.add_row(
            label,
            f"{full[label]:.2f}",
            f"{full[label] / base_full:.2f}x",
            f"{inc:.2f}",
            f"{inc / base_inc:.2f}x",
        )
    console.print(table)
    rows = args.rows + args.repeats * args.rows // bench.CHANGED_FRACTION
    console.print(
        f"`lockgate runs export --all` with records (every run again, ~{rows:,} record rows): "
        f"{export:.2f} s"
    )


if __name__ == "__main__":
    main()
