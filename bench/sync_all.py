"""`lockgate sync --all` with the identity graph resolved once (a `Session`) against once per
sync, on the demo project, in the same run.

The demo warehouse (``lockgate.demo.warehouse``) is built with ``--users`` people (3 events each,
Stripe customers, CRM contacts, companies, anonymous sessions) and its project synced once into
the emulator (in its own process, Track rate limit off). Then, with nothing left to send, the
no-op ``sync --all`` is timed in one process, alternating: every sync given one shared
``Session`` (as the CLI does) and every sync resolving the graph itself (the baseline, as the CLI
did before). Best of ``--repeat`` each; also the whole ``lockgate sync --all`` process once.

Usage::

    .venv/bin/python bench/sync_all.py                  # 20,000 users, ~2 min
    .venv/bin/python bench/sync_all.py --users 2000 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sync as bench  # bench/sync.py: the emulator process, the measured runner
from lockgate.console import NullConsole
from lockgate.demo import scaffold, warehouse
from lockgate.project.loader import load_project
from lockgate.sync.run import KIND_ORDER, Session, run_sync

console = bench.console


def make_project(root: Path, url: str, users: int) -> Path:
    scaffold(root)
    warehouse.build(root / "warehouse.duckdb", users=users)
    config = (root / "lockgate.yml").read_text()
    config = config.replace(
        "    rate_limit: 100/s\n", f"    rate_limit: 1000/s\n    track_url: {url}\n"
    )
    assert url in config
    (root / "lockgate.yml").write_text(config)
    return root


def sync_all(root: Path, session: Session | None) -> float:
    project = load_project(root)
    names = sorted(project.syncs, key=lambda n: KIND_ORDER[project.syncs[n].kind])
    started = time.perf_counter()
    for name in names:
        report = run_sync(project, name, console=NullConsole(), session=session)
        assert report.changes.to_send == 0, (name, report.changes.to_send)
    if session is not None:
        session.close()  # the shared state store checkpoints here: part of the time
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lockgate-bench-sync-all-"))
    console.print(
        f"[bold]bench/sync_all.py[/]: demo project, {args.users:,} users; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    with bench.emulator() as url:
        env = bench.track_env()
        os.environ.update({k: env[k] for k in ("CUSTOMERIO_SITE_ID", "CUSTOMERIO_API_KEY")})
        project = make_project(root / "project", url, args.users)
        started = time.perf_counter()
        first = subprocess.run(
            [str(bench.LOCKGATE), "sync", "--all", "--json", "--project", str(project)],
            env=env,
            capture_output=True,
        )
        assert first.returncode == 0, first.stderr[-2000:]
        console.print(f"first sync --all: {time.perf_counter() - started:.1f} s")
        shared, separate = [], []
        for _ in range(args.repeat):
            shared.append(sync_all(project, Session()))
            separate.append(sync_all(project, None))
        whole = bench.run_measured(
            [str(bench.LOCKGATE), "sync", "--all", "--json", "--project", str(project)], env=env
        )
        assert whole.returncode == 0, whole.stderr[-2000:]
    console.print(
        f"no-op sync --all, in one process, best of {args.repeat}: "
        f"one resolution per command {min(shared):.2f} s (all: "
        f"{', '.join(f'{s:.2f}' for s in shared)}), one per sync {min(separate):.2f} s (all: "
        f"{', '.join(f'{s:.2f}' for s in separate)}): "
        f"[bold]{min(separate) / min(shared):.2f}x[/]"
    )
    console.print(
        f"whole `lockgate sync --all` process, nothing to send: {whole.seconds:.2f} s, "
        f"{whole.peak_rss / 2**20:.0f} MiB peak"
    )


if __name__ == "__main__":
    main()
