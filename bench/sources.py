"""Postgres read paths: ADBC (the `postgres` source) against psycopg (the `redshift: true` path).

Both read the same table through `Source.read` into nothing but a row count, so the figures are
what a sync pays before DuckDB sees the batches. Prints rows/s, peak RSS growth and the ratio.

    .venv/bin/python bench/sources.py postgresql://postgres@127.0.0.1:5432/postgres --rows 1000000
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


def measure(source: PostgresSource) -> tuple[int, float, int]:
    gc.collect()
    before = rss()
    peak = before
    started = time.perf_counter()
    count = 0
    for batch in source.read(f"select * from {TABLE}"):
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
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f"drop table {TABLE}")


if __name__ == "__main__":
    main()
