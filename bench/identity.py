"""Identity benchmark: embedded stitching with limits against scipy's components floor.

On the same synthetic graph (users with emails, anonymous sessions, Stripe and CRM ids, shared
devices and family emails; `lockgate.identity.synthetic`), in one run:

(a) floor: scipy `connected_components` on the distinct edges as int64 arrays, no limits, no
    strings (the int arrays are built before the clock starts; CSR build + components timed);
(b) embedded: `lockgate.identity.resolve()` from the raw string source tables, with limits:
    normalisation, dictionary encoding, star edges, dedup, degree caps, hybrid stitching,
    profile ids and every analyst table;
(c) warehouse-native SQL (`WarehouseStitcher`) on DuckDB, and on Postgres (a throwaway
    server started by this script when `initdb` is on the machine), with the source tables
    already loaded;
(d) optionally, plain ordered union-find over every edge (`--union-find`), the definition the
    hybrid matches, and a check that both give the same partition.

Usage::

    python bench/identity.py                       # 1M and 5M edges (minutes)
    python bench/identity.py --edges 200000 --postgres-max 200000
"""

# ruff: noqa: E501  (aligned report lines)
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lockgate.identity import resolve
from lockgate.identity.synthetic import synthetic_config, synthetic_sources
from lockgate.identity.warehouse import DuckDBRunner, PostgresRunner, WarehouseStitcher

EDGES_PER_PERSON = 5.45


def floor(result_edges: pa.Table) -> tuple[float, float, int]:
    """scipy components on the distinct edges: on ready ints, and from the endpoint strings.

    Returns (components only, strings->ints + components, component count).
    """
    a = pc.binary_join_element_wise(result_edges["type_a"], result_edges["value_a"], "\x1f")
    b = pc.binary_join_element_wise(result_edges["type_b"], result_edges["value_b"], "\x1f")
    joined = pa.chunked_array([a, b]).combine_chunks()
    t_str = time.perf_counter()
    both = joined.dictionary_encode()
    idx = both.indices.to_numpy()
    n = len(both.dictionary)
    ea, eb = idx[: len(a)].astype(np.int64), idx[len(a) :].astype(np.int64)
    t0 = time.perf_counter()
    ones = np.ones(ea.shape[0], dtype=np.int8)
    matrix = coo_matrix((ones, (ea, eb)), shape=(n, n)).tocsr()
    count, _ = connected_components(matrix, directed=True, connection="weak")
    end = time.perf_counter()
    return end - t0, end - t_str, int(count)


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    """A throwaway Postgres server on loopback (like tests/conftest.py), or None."""
    initdb = shutil.which("initdb") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)),
        None,
    )
    if initdb is None:
        yield None
        return
    bindir = Path(initdb).parent
    root = Path(tempfile.mkdtemp(prefix="lockgate-bench-pg-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_root = os.geteuid() == 0

    def run(args: list[str]) -> None:
        if as_root:
            args = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(args)]
        subprocess.run(args, check=True, capture_output=True)

    if as_root:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    opts = f"'-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c work_mem=256MB'"
    pg_ctl = str(bindir / "pg_ctl")
    run([pg_ctl, "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w", "start"])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            run([pg_ctl, "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def load_duckdb(sources: dict[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET threads = 2")
    for name, table in sources.items():
        con.register(f"{name}_arrow", table)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
        con.unregister(f"{name}_arrow")
    return con


def load_postgres(dsn: str, sources: dict[str, pa.Table]) -> object:
    import psycopg

    con = psycopg.connect(dsn, autocommit=True)
    for name, table in sources.items():
        con.execute(f"DROP TABLE IF EXISTS {name}")
        cols = ", ".join(
            f"{c} TIMESTAMPTZ" if c == "ts" else f"{c} TEXT" for c in table.column_names
        )
        con.execute(f"CREATE TABLE {name} ({cols})")
        with con.cursor().copy(f"COPY {name} ({', '.join(table.column_names)}) FROM STDIN") as cp:
            for batch in table.to_batches(100_000):
                for row in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                    cp.write_row(row)
        con.execute(f"ANALYZE {name}")
    return con


def bench(edges: int, dsn: str | None, postgres_max: int, union_find: bool, sql: bool) -> None:
    people = int(edges / EDGES_PER_PERSON)
    sources = synthetic_sources(people, seed=7)
    config = synthetic_config()
    print(f"\n## {edges:,} target edges ({people:,} people)")
    t0 = time.perf_counter()
    result = resolve(config, sources, run_id="bench")
    embedded = time.perf_counter() - t0
    s = result.stats
    print(
        f"graph: {int(s['nodes']):,} nodes, {int(s['edges']):,} distinct edges, "
        f"{result.profiles.num_rows:,} profiles, {result.refused.num_rows:,} refused, "
        f"{int(s['replayed_edges']):,} edges replayed exactly"
    )
    floor_s, floor_str_s, count = floor(result.edges)
    print(
        f"(a) floor: scipy components on int edges, no limits: {floor_s:6.2f} s ({count:,} comps)"
    )
    print(f"    same, strings->ints (dictionary_encode) first:   {floor_str_s:6.2f} s")
    print(
        f"(b) embedded resolve() with limits:                 {embedded:6.2f} s  "
        f"= {embedded / floor_s:4.1f}x floor, {embedded / floor_str_s:4.1f}x strings floor"
    )
    print(
        "    of which: normalise {normalize_s:.2f}, encode+star {encode_s:.2f}, "
        "dedup {dedup_s:.2f}, caps+stitch {stitch_s:.2f}, profile ids {profiles_s:.2f}, tables {tables_s:.2f}".format(
            **s
        )
    )
    stitch_core = s["encode_s"] + s["dedup_s"] + s["stitch_s"]
    print(
        f"    strings->ints + edges + stitching with limits:  {stitch_core:6.2f} s  "
        f"= {stitch_core / floor_s:4.1f}x floor, {stitch_core / floor_str_s:4.1f}x strings floor"
    )
    if not sql:
        return
    con = load_duckdb(sources)
    ws = WarehouseStitcher(
        config, DuckDBRunner(con), columns={k: v.column_names for k, v in sources.items()}
    )
    st = ws.run()
    print(
        f"(c) DuckDB warehouse-native SQL:                    {st['total_s']:6.2f} s  "
        f"= {st['total_s'] / floor_s:4.1f}x floor  ({int(st['passes'])} passes; build "
        f"{st['build_s']:.1f}, label {st['label_s']:.1f}, exact residual {st['residual_s']:.1f})"
    )
    con.close()
    if dsn and edges <= postgres_max:
        pg = load_postgres(dsn, sources)
        ws = WarehouseStitcher(
            config, PostgresRunner(pg), columns={k: v.column_names for k, v in sources.items()}
        )
        st = ws.run()
        print(
            f"    Postgres warehouse-native SQL:                  {st['total_s']:6.2f} s  "
            f"= {st['total_s'] / floor_s:4.1f}x floor  ({int(st['passes'])} passes; build "
            f"{st['build_s']:.1f}, label {st['label_s']:.1f}, exact residual {st['residual_s']:.1f})"
        )
        pg.close()  # type: ignore[attr-defined]
    elif dsn:
        print(f"    Postgres: skipped above --postgres-max {postgres_max:,}")
    if union_find:
        t0 = time.perf_counter()
        plain = resolve(config, sources, run_id="bench", algorithm="union_find")
        uf = time.perf_counter() - t0
        same = plain.identifier_map["profile_id"].equals(result.identifier_map["profile_id"])
        print(
            f"(d) plain ordered union-find, every edge:           {uf:6.2f} s  (same partition: {same})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edges", type=int, nargs="*", default=[1_000_000, 5_000_000])
    parser.add_argument("--postgres-max", type=int, default=5_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--union-find", action="store_true")
    parser.add_argument("--no-sql", action="store_true", help="Only the floor and embedded.")
    args = parser.parse_args()
    print(f"# bench/identity.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} cpus, duckdb {duckdb.__version__}"
    )
    with contextlib.nullcontext(None) if args.no_postgres else postgres() as dsn:
        for n in args.edges:
            bench(n, dsn, args.postgres_max, args.union_find, not args.no_sql)


if __name__ == "__main__":
    main()
