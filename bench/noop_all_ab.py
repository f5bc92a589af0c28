"""A/B of a no-op `lockgate sync --all` of the demo project: two source trees, interleaved.

The demo project (six syncs, five through the identity graph) is built with ``--users`` people
and synced once into the emulator; then each round runs `lockgate sync --all` with nothing to
send, once with each tree (``PYTHONPATH`` set to it), in alternating order. What a run costs
when nothing changed is its fixed work: start-up, opening the state, the questions each sync
asks it. The CPU (user + system of the process) is the figure: the wall time of a run this
short follows the machine's load more than the code.

    .venv/bin/python bench/noop_all_ab.py --before /tmp/old/src --rounds 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(src: Path, root: Path, env: dict[str, str]) -> tuple[float, float]:
    """(CPU, wall) seconds of one `lockgate sync --all` of ``root`` run from ``src``."""
    cpu, started = child_cpu(), time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "lockgate", "sync", "--all", "--json", "--project", str(root)],
        env={**env, "PYTHONPATH": str(src)},
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return child_cpu() - cpu, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the A side's src folder")
    parser.add_argument("--after", type=Path, default=HERE / "src", help="the B side's src")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    from tests.sync.crash_harness import env_for, make_project

    from lockgate.demo import warehouse
    from lockgate.emulator import Emulator, EmulatorConfig

    work = args.workdir or Path(tempfile.mkdtemp(prefix="lockgate-noop-ab-"))
    work.mkdir(parents=True, exist_ok=True)
    warehouse_file = work / "warehouse.duckdb"
    warehouse.build(warehouse_file, users=args.users)
    emu = Emulator(EmulatorConfig(require_ulid_event_ids=True))
    with emu.serve() as url:
        root = make_project(work / "project", warehouse_file, url)
        env = env_for(emu)
        timed(args.after, root, env)  # the first run sends everything
        sides = {"before": args.before.resolve(), "after": args.after.resolve()}
        runs: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
        for i in range(args.rounds):
            order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            for side in order:
                runs[side].append(timed(sides[side], root, env))
            shown = (f"{s} {runs[s][-1][0]:.2f} s CPU ({runs[s][-1][1]:.2f} wall)" for s in order)
            print(f"round {i + 1}: " + ", ".join(shown), flush=True)
    load = os.getloadavg()
    print(f"# {args.users} users, load average at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")
    cpu = {s: statistics.median(c for c, _ in runs[s]) for s in runs}
    wall = {s: statistics.median(w for _, w in runs[s]) for s in runs}
    print(f"\nmedians of {args.rounds} rounds, no-op `sync --all` (seconds)\n")
    print("| | before | after | after / before |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| CPU | {cpu['before']:.2f} | {cpu['after']:.2f} | {cpu['after'] / cpu['before']:.2f} |"
    )
    print(
        f"| wall | {wall['before']:.2f} | {wall['after']:.2f} | "
        f"{wall['after'] / wall['before']:.2f} |"
    )


if __name__ == "__main__":
    main()
