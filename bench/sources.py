"""Postgres read paths: ADBC (the `postgres` source) against psycopg (the `redshift: true` path).

Both read the same table through `Source.read` into nothing but a row count, so the figures are
what a sync pays before DuckDB sees the batches. Prints rows/s, peak RSS growth and the ratio.

    .venv/bin/python bench/sources.py postgresql://postgres@127.0.0.1:5432/postgres --rows 1000000

With ``--hash``, also what keying a model in Postgres would cost instead of copying it: each row's
key plus a hash of every column, computed by the server and read through ADBC, against the
whole-row ADBC read (the question is whether an incremental sync should ask Postgres for
``(key, hash)`` and fetch only changed rows; see docs/sources.md, "Why rows are copied whole").
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import psycopg

from lockgate.sources.postgres import PostgresSource, RedshiftSource

TABLE = "lockgate_bench_sources"


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def create(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"drop table if exists {TABLE}")
        conn.execute(
            f"create table {TABLE} as select i as id, 'user' || i || '@Example.com' as email, "
            "(i % 2 = 0) as active, now() - (i || ' seconds')::interval as created_at, "
            "(i * 1.5)::numeric(12,2) as amount, jsonb_build_object('k', i) as props, "
            f"gen_random_uuid() as uid from generate_series(1, {rows}) as i"
        )


COLUMNS = "id, email, active, created_at, amount, props, uid"
#: ways for Postgres to hash a row (and send only the key with it)
HASHES = {
    "key only, no hash": "id",
    "md5, length-prefixed text": "id, md5("
    + " || chr(31) || ".join(
        f"coalesce(length({c}::text)::text || ':' || {c}::text, '-')" for c in COLUMNS.split(", ")
    )
    + ")",
    "md5(row(...)::text)": f"id, md5(row({COLUMNS})::text)",
    "hash_record_extended": f"id, hash_record_extended(row({COLUMNS}), 0)",
}


def measure(source: PostgresSource, select: str = "*") -> tuple[int, float, int]:
    gc.collect()
    before = rss()
    peak = before
    started = time.perf_counter()
    count = 0
    for batch in source.read(f"select {select} from {TABLE}"):
        count += batch.num_rows
        peak = max(peak, rss())
    elapsed = time.perf_counter() - started
    source.close()
    return count, elapsed, peak - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--hash", action="store_true", help="also time hashing rows in Postgres")
    args = parser.parse_args()
    create(args.dsn, args.rows)
    for run in range(1, args.repeat + 1):
        results = {}
        for name, cls in (("adbc", PostgresSource), ("psycopg", RedshiftSource)):
            count, elapsed, growth = measure(cls(args.dsn))
            assert count == args.rows, (name, count)
            results[name] = elapsed
            print(
                f"run {run} {name:8} {count:,} rows in {elapsed:6.2f} s "
                f"({count / elapsed:,.0f} rows/s), peak RSS growth {growth / 1e6:,.0f} MB"
            )
        print(f"run {run} psycopg / adbc time ratio: {results['psycopg'] / results['adbc']:.1f}x")
        for name, select in HASHES.items() if args.hash else ():
            count, elapsed, _ = measure(PostgresSource(args.dsn), select)
            assert count == args.rows, (name, count)
            print(
                f"run {run} (key, hash) {name:28} {elapsed:6.2f} s: "
                f"{elapsed / results['adbc']:.2f}x the whole-row ADBC read"
            )
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f"drop table {TABLE}")


if __name__ == "__main__":
    main()
