"""Peak memory of the identity graph: a first stitch and a re-stitch, each in a fresh process.

For each N, a project with a DuckDB warehouse holding N people's identity sources is made in a
temporary folder; then, each in its own Python process (so the peak is that step's alone):

1. first stitch: ``resolve_identities`` with no saved graph, then the graph is saved;
2. re-stitch: one row of each identity source changed (so the saved graph is not reused),
   ``resolve_identities`` from the saved graph, then the graph is saved again.

Reported per step: wall time of ``resolve_identities`` and peak RSS (``ru_maxrss``) of the
process when it returned, and of the whole process (``os.wait4``, the save included).

Shapes (``--shape``): ``pairs`` (default): one source ``app_users`` with a user id and a real
looking email per person (2 identifiers per person, the shape of ``bench/events_ab.py
--identity``); ``synthetic``: ``lockgate.identity.synthetic`` (users, emails, Stripe and CRM
ids, anonymous sessions, shared devices; ~5.5 edges per person).

Merges (``--merges N [N ...]``, pairs shape): for each N a project whose first N people are
two rows at the first stitch (the user id alone, the email alone: two profiles each); the next
run gives each of those rows its email, so N profiles are merged into N others (N = 0: one row
changed, as the re-stitch). That step is resolve, then the Customer.io plan of the sync
(``resolve.merge_operations``: ``plan_customerio`` when ``_may_merge``, with every person
existing in Customer.io so each merge is planned), then the save; the plan's seconds and
the peak RSS after it are reported too. ``--whole-plan``: ``plan_customerio`` of every profile
(the library's default) instead of the sync's.

Usage::

    python bench/identity_memory.py                        # 100k, 300k, 1M people
    python bench/identity_memory.py --people 100000 --shape synthetic
    python bench/identity_memory.py --src /tmp/before/src  # another version's sources
    python bench/identity_memory.py --people 1000000 --merges 0 1 10000
"""

# ruff: noqa: E501  (aligned report lines)
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

PAIRS = """\
identity:
  identifier_types:
    user_id: {priority: 1, limit: 1, customerio: id}
    email: {priority: 2, limit: 5, customerio: email}
  sources:
    - {name: app_users, table: app_users}
"""

SYNTHETIC = """\
identity:
  identifier_types:
    user_id: {priority: 1, limit: 1, customerio: id}
    email: {priority: 2, limit: 5, customerio: email}
    stripe_customer_id: {priority: 3, limit: 2}
    crm_contact_id: {priority: 4, limit: 1}
    anonymous_id: {priority: 9, limit: 25, bridge_known_profiles: false, customerio: anonymous_id}
  sources:
    - {name: app_users, table: app_users, observed_at: ts}
    - {name: stripe_customers, table: stripe_customers, observed_at: ts}
    - {name: crm_contacts, table: crm_contacts, trust: 2, observed_at: ts}
    - {name: identifies, table: identifies, trust: 3, mode: append_only, observed_at: ts}
  rules: {max_component_size: 200}
"""


def build(root: Path, people: int, shape: str, split: int = 0) -> None:
    """A project in ``root`` whose warehouse holds ``people`` people's identity sources."""
    import duckdb

    root.mkdir(parents=True, exist_ok=True)
    (root / "lockgate.yml").write_text(
        "name: idmem\nsources:\n  warehouse: {type: duckdb, path: w.duckdb}\n"
        + (PAIRS if shape == "pairs" else SYNTHETIC)
    )
    con = duckdb.connect(str(root / "w.duckdb"))
    try:
        if shape == "pairs":
            con.execute(
                "create table app_users as select i::varchar as user_id, "
                f"'user' || i || '@mail.test' as email from range(1, {people} + 1) t(i)"
            )
            if split:
                # the first `split` people as two profiles: the user id alone, the email alone
                con.execute(f"update app_users set email = null where user_id::int <= {split}")
                con.execute(
                    "insert into app_users select null, 'user' || i || '@mail.test' "
                    f"from range(1, {split} + 1) t(i)"
                )
        else:
            from lockgate.identity.synthetic import synthetic_sources

            for name, table in synthetic_sources(people, seed=7).items():
                con.register("t", table)
                con.execute(f"create table {name} as select * from t")
                con.unregister("t")
        con.execute("checkpoint")
    finally:
        con.close()


def change_one_row(root: Path) -> None:
    """One row of each identity source changed: the saved graph is not reused."""
    import duckdb

    con = duckdb.connect(str(root / "w.duckdb"))
    try:
        for (name,) in con.execute("select table_name from duckdb_tables()").fetchall():
            column = "email" if name != "identifies" else "anonymous_id"
            con.execute(
                f"update {name} set {column} = {column} || '.changed' "
                f"where rowid = (select min(rowid) from {name} where {column} is not null)"
            )
        con.execute("checkpoint")
    finally:
        con.close()


def merge_split(root: Path, split: int) -> None:
    """The split people's user id rows get their email: `split` profiles merge into others."""
    import duckdb

    con = duckdb.connect(str(root / "w.duckdb"))
    try:
        con.execute(
            "update app_users set email = 'user' || user_id || '@mail.test' "
            f"where user_id::int <= {split}"
        )
        con.execute("checkpoint")
    finally:
        con.close()


def plan(resolution: object, whole: bool = False) -> dict[str, float]:
    """The sync's Customer.io plan of this run (``merge_operations`` without a state store:
    every person exists in Customer.io, nothing delivered yet)."""
    import inspect

    from lockgate.identity import plan_customerio
    from lockgate.sync import resolve as step

    if not step._may_merge(resolution):  # type: ignore[arg-type]
        return {"plan_s": 0.0, "planned": 0, "merges": 0}
    options = {}
    if not whole and "merged_only" in inspect.signature(plan_customerio).parameters:
        options["merged_only"] = True
    t0 = time.perf_counter()
    out = plan_customerio(
        resolution.result,  # type: ignore[attr-defined]
        resolution.config,  # type: ignore[attr-defined]
        exists=lambda kind, value: True,
        limit_merges=False,
        **options,
    )
    merges = [op for op in out.ops if op.payload.get("action") == "merge"]
    survivors = {op.profile_id for op in merges}
    sent = merges + [
        op
        for op in out.ops
        if op.payload.get("action") == "identify" and op.profile_id in survivors
    ]
    return {"plan_s": time.perf_counter() - t0, "planned": len(sent), "merges": len(merges)}


def child(root: Path, run_id: str) -> None:
    """One step, in this fresh process: resolve, report, save."""
    from lockgate.project.loader import load_project
    from lockgate.sync.resolve import resolve_identities

    project = load_project(root)
    config = project.config.identity
    assert config is not None
    t0 = time.perf_counter()
    resolution = resolve_identities(project, config, run_id)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    planned = plan(resolution, run_id == "w2") if run_id[0] in "mw" else {}
    plan_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    resolution.save(project.state_dir)
    result = resolution.result
    print(
        json.dumps(
            {
                **planned,
                "plan_peak": plan_peak,
                "seconds": seconds,
                "peak": peak,
                "profiles": result.profiles.num_rows,
                "nodes": result.identifier_map.num_rows,
                "edges": result.edges.num_rows,
            }
        )
    )


def step(src: Path, root: Path, run_id: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(root), run_id],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"step {run_id} failed ({status}): {out}")
    doc: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    doc["process_peak"] = usage.ru_maxrss * 1024
    doc["process_s"] = time.perf_counter() - start
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, nargs="*", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--shape", choices=("pairs", "synthetic"), default="pairs")
    parser.add_argument(
        "--merges", type=int, nargs="*", help="profiles merged at the second run (pairs shape)"
    )
    parser.add_argument(
        "--whole-plan",
        action="store_true",
        help="with --merges: the whole plan (every profile), not the sync's",
    )
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="Lockgate sources to run")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "RUN_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return
    print(f"# bench/identity_memory.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} cpus; "
        f"shape {args.shape}; sources {args.src}"
    )
    if args.merges is not None:
        merges(args)
        return
    print(
        f"{'people':>10} {'step':<11} {'nodes':>10} {'edges':>10} {'resolve s':>9} "
        f"{'peak MiB':>9} {'process MiB':>11}"
    )
    for n in args.people:
        work = Path(tempfile.mkdtemp(prefix="lockgate-idmem-"))
        try:
            sys.path.insert(0, str(args.src))
            build(work, n, args.shape)
            for what, run_id in (("first", "r1"), ("re-stitch", "r2")):
                if what == "re-stitch":
                    change_one_row(work)
                d = step(args.src, work, run_id)
                print(
                    f"{n:>10,} {what:<11} {int(d['nodes']):>10,} {int(d['edges']):>10,} "
                    f"{d['seconds']:>9.2f} {d['peak'] / MiB:>9,.0f} {d['process_peak'] / MiB:>11,.0f}",
                    flush=True,
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)


def merges(args: argparse.Namespace) -> None:
    print(
        f"{'people':>10} {'merges':>7} {'resolve s':>9} {'resolve MiB':>11} {'plan s':>7} "
        f"{'ops':>6} {'plan MiB':>9} {'process MiB':>11}"
    )
    for n in args.people:
        for m in args.merges:
            work = Path(tempfile.mkdtemp(prefix="lockgate-idmerge-"))
            try:
                sys.path.insert(0, str(args.src))
                build(work, n, "pairs", split=m)
                step(args.src, work, "r1")
                if m:
                    merge_split(work, m)
                else:
                    change_one_row(work)
                d = step(args.src, work, "w2" if args.whole_plan else "m2")
                assert d["merges"] == 0 or d["merges"] == m, d
                print(
                    f"{n:>10,} {m:>7,} {d['seconds']:>9.2f} {d['peak'] / MiB:>11,.0f} "
                    f"{d['plan_s']:>7.2f} {int(d['planned']):>6,} {d['plan_peak'] / MiB:>9,.0f} "
                    f"{d['process_peak'] / MiB:>11,.0f}",
                    flush=True,
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
