"""A/B of an events sync's incremental and no-op runs: two versions of Lockgate on copies of one
state (e.g. the 10M ledger ``bench/events.py --keep`` leaves), against ``bench/sync_sink.py``'s
sink. Each round appends ``NEW`` events to each side's copy of the model, then runs
``lockgate sync events --json`` on each side (alternating which goes first), then a run with
nothing new; whole-process wall time, peak RSS and the engine's phases, as ``bench/events.py``.

With ``--full-rounds K``, first K rounds of full syncs of the whole model, each side into a
fresh project of its own (alternating which goes first), with the size of the state and of
the sync's ledger alone on disk (copied into a file of its own): what delivering every event
costs each version, and what its ledger keeps.

With ``--build N``, the model of N events and its state (one full sync to the sink) are made
here first (``project`` and ``warehouse`` name where). With ``--identity``, the project gets an
``identity:`` section (identity source ``app_users``: one row per person of the model, its
``user_id`` and an email) and the events sync identifies rows by the declared type
``user_id``, so every run resolves the events through the identity graph. The emails are at
``--email-domain`` (``acme.io``: each person's ``user_id`` and email are linked, so the graph
is stitched from 300k links for 1.5M events). The BENCHMARKS.md entries of 2026-12-04 up to
21:28 UTC ran with emails at ``example.com``, which the default blocklist drops (a graph of
ids and no links): ``--email-domain example.com`` reproduces them.

Usage::

    git archive <commit> src | tar -x -C /tmp/before
    .venv/bin/python bench/events_ab.py /tmp/before/src /tmp/lockgate-bench-events/lockgate-big \\
        /tmp/lockgate-bench-events/events-big.duckdb --rounds 1 --new 10000
    .venv/bin/python bench/events_ab.py /tmp/before/src /tmp/ab/project /tmp/ab/wh.duckdb \\
        --build 1500000 --identity --rounds 3 --new 15000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

import events as ev  # bench/events.py
import sync_sink  # bench/sync_sink.py

#: ``--identity``: the identity section (the sink's project has none)
IDENTITY = """\
identity:
  identifier_types:
    user_id: {priority: 1, limit: 1, customerio: id}
    email: {priority: 2, limit: 5, customerio: email}
  sources:
    - {name: app_users, table: app_users}
"""


def through_graph(project: Path, warehouse: Path, domain: str = "acme.io") -> None:
    """``--identity``: an identity section, its source ``app_users`` (every person of the
    model: ``user_id``, an email at ``domain``), and the events sync identified by the
    declared type."""
    con = duckdb.connect(str(warehouse))
    try:
        con.execute(
            "create or replace table app_users as select distinct user_id, "
            "'user' || user_id || '@' || $domain as email from events",
            {"domain": domain},
        )
        con.execute("checkpoint")
    finally:
        con.close()
    yml = project / "lockgate.yml"
    if "identity:" not in yml.read_text():
        yml.write_text(yml.read_text() + IDENTITY)
    sync = project / "syncs" / f"{ev.SYNC}.yml"
    sync.write_text(
        sync.read_text().replace("identify_by: {id: user_id}", "identify_by: {user_id: user_id}")
    )


def build(project: Path, warehouse: Path, rows: int, url: str, identity: bool, domain: str) -> None:
    """``--build``: a model of ``rows`` events and its state, one full sync to the sink."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    seconds = ev.build_warehouse(warehouse, rows)
    ev.console.print(f"model of {rows:,} events built in {seconds:.1f} s")
    ev.write_project(project, warehouse, url)
    if identity:
        through_graph(project, warehouse, domain)
    os.environ["PYTHONPATH"] = str(ev.bench.ROOT / "src")
    p, doc, _ = ev.lockgate("sync", project)
    # through the graph, a person whose `user_id` it takes for junk (`0`) is no one: rejected
    assert doc[0]["delivered"] + doc[0]["changes"]["rejected"] == rows, doc[0]
    ev.console.print(f"full sync: {p.seconds:.1f} s, peak RSS {p.peak_rss / ev.MiB:,.0f} MiB")


def ledger_bytes(state: Path, out: Path) -> tuple[int, int]:
    """The bytes the sync's ledger takes on disk alone (copied into a file of its own, less
    an empty database's), and its rows."""
    sizes = []
    for copy in (False, True):
        path = out / f"ledger-{copy}.duckdb"
        path.unlink(missing_ok=True)
        con = duckdb.connect(str(path))
        try:
            if copy:
                con.execute(f"attach '{state}' as s (read_only)")
                con.execute(f'create table ledger as select * from s."ledger__{ev.SYNC}"')
                con.execute("detach s")
            else:
                con.execute("create table ledger (k varchar)")
            con.execute("checkpoint")
            rows = con.execute("select count(*) from ledger").fetchall()[0][0]
        finally:
            con.close()
        sizes.append(path.stat().st_size)
        path.unlink()
    return sizes[1] - sizes[0], int(rows)


def full_rounds(sides: dict[str, str], warehouse: Path, work: Path, rounds: int, url: str) -> None:
    """``--full-rounds``: full syncs of the whole model, each side into a fresh project."""
    for i in range(rounds):
        order = list(sides) if i % 2 == 0 else list(sides)[::-1]
        for side in order:
            project = work / f"full-{side}"
            ev.write_project(project, warehouse, url)
            os.environ["PYTHONPATH"] = sides[side]
            p, doc, phases = ev.lockgate("sync", project)
            state = project / ".lockgate" / "state.duckdb"
            size, rows = ledger_bytes(state, work)
            steps = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
            ev.console.print(
                f"{side} full sync: {p.seconds:.2f} s, CPU {p.cpu:.1f} s, peak RSS "
                f"{p.peak_rss / ev.MiB:,.0f} MiB; sent {doc[0]['delivered']:,}; state "
                f"{state.stat().st_size / ev.MiB:.1f} MiB, ledger of {rows:,} events "
                f"{size / ev.MiB:.2f} MiB ({size / max(rows, 1):.1f} B each); {steps}"
            )
            shutil.rmtree(project, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path, help="the other version's `src` folder")
    parser.add_argument("project", type=Path, help="a project folder with its state")
    parser.add_argument("warehouse", type=Path, help="its DuckDB model")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--build", type=int, default=0, help="make the model and state first")
    parser.add_argument(
        "--full-rounds", type=int, default=0, help="rounds of full syncs of the whole model first"
    )
    parser.add_argument("--identity", action="store_true", help="through the identity graph")
    parser.add_argument(
        "--email-domain",
        default="acme.io",
        help="domain of the identity source's emails (default acme.io, linked in the graph); "
        "`example.com`, which the default blocklist drops (no links), reproduces the "
        "BENCHMARKS.md identity entries of 2026-12-04 up to 21:28 UTC",
    )
    args = parser.parse_args()
    sides = {"before": str(args.before), "after": str(ev.bench.ROOT / "src")}
    work = Path(tempfile.mkdtemp(prefix="lockgate-events-ab-"))
    with sync_sink.sink() as url:
        if args.build:
            build(args.project, args.warehouse, args.build, url, args.identity, args.email_domain)
        if args.full_rounds:
            full_rounds(sides, args.warehouse, work, args.full_rounds, url)
        for side in sides:
            d = work / side
            shutil.copytree(args.project, d / "project")
            shutil.copyfile(args.warehouse, d / "wh.duckdb")
            yml = d / "project" / "lockgate.yml"
            text = re.sub(r"path: .*", f"path: {d / 'wh.duckdb'}", yml.read_text())
            yml.write_text(re.sub(r"track_url: .*", f"track_url: {url}", text))
            if args.identity:
                through_graph(d / "project", d / "wh.duckdb", args.email_domain)
        for i in range(args.rounds):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for what in ("incremental", "nothing new"):
                for side in order:
                    if what == "incremental":
                        ev.append_events(work / side / "wh.duckdb", args.new)
                    os.environ["PYTHONPATH"] = sides[side]
                    try:
                        p, doc, phases = ev.lockgate("sync", work / side / "project")
                    except (Exception, SystemExit) as exc:
                        ev.console.print(f"{side} {what}: failed: {str(exc)[:300]}")
                        continue
                    steps = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
                    ev.console.print(
                        f"{side} {what}: {p.seconds:.2f} s, CPU {p.cpu:.1f} s, "
                        f"peak RSS {p.peak_rss / ev.MiB:,.0f} MiB; sent {doc[0]['delivered']:,}, "
                        f"rows copied {doc[0]['changes'].get('rows_copied', -1):,}; {steps}"
                    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
