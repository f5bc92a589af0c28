"""A/B of the first full people sync: two source trees, same model, alternating rounds.

Measures ``lockgate sync people --json`` on a fresh state (``bench/sync.py``'s model and
project: 1,000,000 people x 20 columns in DuckDB) for two versions of Lockgate's sources, side
by side, against the free sink of ``bench/sync_sink.py`` (the emulator's cost is out of the
figures). Each round runs each side once, in an order that alternates round by round, so load
that comes and goes on a shared machine falls on both; each run starts from a fresh project
folder (no state). Both trees are bytecode-compiled first.

The figure to read is the process's CPU time (user + system, all threads: steadier than wall
time when other jobs share the machine); wall time and peak RSS are printed too, medians and
the median of the rounds' paired differences. After each round the two runs' state databases
are compared table by table (``except all`` both ways; run ids and times left out): the
bench stops if they differ.

Usage (the "before" side is usually ``main``'s sources)::

    git archive main src | tar -x -C /tmp/before
    .venv/bin/python bench/full_ab.py --before /tmp/before/src --rounds 5

``--after`` defaults to this checkout's ``src``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sync as bench  # bench/sync.py: the model, the project, the measured runner
import sync_sink  # bench/sync_sink.py: the free sink
from incremental_ab import ab_start, lockgate, summary

#: columns that differ from run to run whatever the tree: ids and times
VOLATILE = {
    "run_id",
    "sent_at",
    "delivered_at",
    "started_at",
    "finished_at",
    "recorded_at",
    "written_at",
    "rejected_at",
    "counts",
    "written_by",
    # the state format: a change of it is what a tree's version of the state is meant to say
    "format",
}


def state_file(project: Path) -> Path:
    found = [p for p in project.rglob("*.duckdb") if p.name != "warehouse.duckdb"]
    if len(found) != 1:
        raise SystemExit(f"expected one state database under {project}, found {found}")
    return found[0]


def compare_states(a: Path, b: Path) -> list[str]:
    """The tables whose rows differ between the two state databases (volatile columns out)."""
    con = duckdb.connect()
    # a connection option: DuckDB 2 refuses it in `connect`'s config (a global option there)
    con.execute("set enable_progress_bar = false")
    con.execute(f"attach '{a}' as a (read_only)")
    con.execute(f"attach '{b}' as b (read_only)")

    def tables(db: str) -> dict[str, list[str]]:
        rows = con.execute(
            "select table_name, list(column_name order by ordinal_position) "
            "from information_schema.columns where table_catalog = ? group by table_name",
            [db],
        ).fetchall()
        return {name: cols for name, cols in rows}

    ta, tb = tables("a"), tables("b")
    # a table only the after side has is a newer state format's (printed, not a difference)
    for t in sorted(set(tb) - set(ta)):
        bench.console.print(f"[dim]{t}: only after (a newer state format's table)[/dim]")
    differ = [f"{t}: only before" for t in sorted(set(ta) - set(tb))]
    for name in sorted(set(ta) & set(tb)):
        cols = [c for c in ta[name] if c not in VOLATILE and c in tb[name]]
        if name in ("upgraded", "state_format"):  # names the state format and Lockgate's version
            cols = [c for c in cols if c not in ("step", "format", "written_by")]
        if not cols:
            continue
        names = ", ".join(f'"{c}"' for c in cols)
        q = f'select {names} from a."{name}" except all select {names} from b."{name}"'
        r = f'select {names} from b."{name}" except all select {names} from a."{name}"'
        extra_a = con.execute(f"select count(*) from ({q})").fetchall()[0][0]
        extra_b = con.execute(f"select count(*) from ({r})").fetchall()[0][0]
        if extra_a or extra_b:
            differ.append(f"{name}: {extra_a} rows only before, {extra_b} only after")
    con.close()
    return differ


def main() -> None:
    args, work, sides = ab_start(
        __doc__,
        "bench/full_ab.py",
        "lockgate-bench-full-ab-",
        "a built model to read (not written)",
    )
    console = bench.console
    warehouse = args.warehouse
    if warehouse is None:
        warehouse = work / "model.duckdb"
        if not warehouse.exists():
            bench.build_warehouse(warehouse, args.rows)
    runs: dict[str, list[bench.Proc]] = {s: [] for s in sides}
    with sync_sink.sink() as url:
        for n in range(args.rounds):
            order = list(sides) if n % 2 == 0 else list(reversed(sides))
            seen, loads = {}, {}
            for side in order:
                project = bench.write_project(work / side, warehouse, url)
                loads[side] = os.getloadavg()[0]
                proc, doc, _ = lockgate(sides[side], ["sync", "people"], project)
                seen[side] = summary(doc)
                runs[side].append(proc)
            if seen["before"] != seen["after"]:
                raise SystemExit(f"the sides disagree: {seen}")
            differ = compare_states(state_file(work / "before"), state_file(work / "after"))
            if differ:
                raise SystemExit(f"round {n + 1}: the states differ: {differ}")
            console.print(
                f"round {n + 1} ({' first, '.join(order)} second; state equal): "
                + ", ".join(
                    f"{s} {runs[s][-1].seconds:.1f} s wall, {runs[s][-1].cpu:.2f} s CPU, "
                    f"{runs[s][-1].peak_rss / 2**20:.0f} MiB (load {loads[s]:.1f})"
                    for s in order
                )
            )
    console.print(f"# load average at end {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    console.print(f"\nmedians of {args.rounds} rounds\n")
    console.print("| | before | after | after - before |")
    console.print("| --- | ---: | ---: | ---: |")
    for label, get in (
        ("CPU s", lambda p: p.cpu),
        ("wall s", lambda p: p.seconds),
        ("peak RSS MiB", lambda p: p.peak_rss / 2**20),
    ):
        b = statistics.median(get(p) for p in runs["before"])
        a = statistics.median(get(p) for p in runs["after"])
        console.print(f"| {label} | {b:.2f} | {a:.2f} | {a - b:+.2f} |")
    pairs = list(zip(runs["before"], runs["after"], strict=True))
    console.print(
        "\nmedian of the rounds' paired differences (after - before): CPU "
        f"{statistics.median(a.cpu - b.cpu for b, a in pairs):+.2f} s, wall "
        f"{statistics.median(a.seconds - b.seconds for b, a in pairs):+.2f} s"
    )
    shutil.rmtree(work / "before", ignore_errors=True)
    shutil.rmtree(work / "after", ignore_errors=True)


if __name__ == "__main__":
    main()
