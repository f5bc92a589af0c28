"""A/B of an events sync's incremental and no-op runs: two versions of Lockgate on copies of one
state (e.g. the 10M ledger ``bench/events.py --keep`` leaves), against ``bench/sync_sink.py``'s
sink. Each round appends ``NEW`` events to each side's copy of the model, then runs
``lockgate sync events --json`` on each side (alternating which goes first), then a run with
nothing new; whole-process wall time, peak RSS and the engine's phases, as ``bench/events.py``.

Usage::

    git archive <commit> src | tar -x -C /tmp/before
    .venv/bin/python bench/events_ab.py /tmp/before/src /tmp/lockgate-bench-events/lockgate-big \\
        /tmp/lockgate-bench-events/events-big.duckdb --rounds 1 --new 10000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import events as ev  # bench/events.py
import sync_sink  # bench/sync_sink.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path, help="the other version's `src` folder")
    parser.add_argument("project", type=Path, help="a project folder with its state")
    parser.add_argument("warehouse", type=Path, help="its DuckDB model")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--new", type=int, default=10_000)
    args = parser.parse_args()
    sides = {"before": str(args.before), "after": str(ev.bench.ROOT / "src")}
    work = Path(tempfile.mkdtemp(prefix="lockgate-events-ab-"))
    with sync_sink.sink() as url:
        for side in sides:
            d = work / side
            shutil.copytree(args.project, d / "project")
            shutil.copyfile(args.warehouse, d / "wh.duckdb")
            yml = d / "project" / "lockgate.yml"
            text = re.sub(r"path: .*", f"path: {d / 'wh.duckdb'}", yml.read_text())
            yml.write_text(re.sub(r"track_url: .*", f"track_url: {url}", text))
        for i in range(args.rounds):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for what in ("incremental", "nothing new"):
                for side in order:
                    if what == "incremental":
                        ev.append_events(work / side / "wh.duckdb", args.new)
                    os.environ["PYTHONPATH"] = sides[side]
                    try:
                        p, _, phases = ev.lockgate("sync", work / side / "project")
                    except (Exception, SystemExit) as exc:
                        ev.console.print(f"{side} {what}: failed: {str(exc)[:300]}")
                        continue
                    steps = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
                    ev.console.print(
                        f"{side} {what}: {p.seconds:.2f} s, CPU {p.cpu:.1f} s, "
                        f"peak RSS {p.peak_rss / ev.MiB:,.0f} MiB; {steps}"
                    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
