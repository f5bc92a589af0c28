"""Reading a model streams: memory stays flat while the table is far larger than a batch."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from lockgate.project.models import DuckDBSourceConfig
from lockgate.sources import connect

ROWS = 2_000_000


def _rss() -> int:
    """This process's resident memory in bytes, now (not the peak so far)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_reading_a_2m_row_table_batch_by_batch_keeps_memory_flat(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        # ~190 bytes a row in Arrow, but it compresses well on disk and in DuckDB's buffers.
        conn.execute(
            "create table events as select range as id, "
            "'user_' || (range % 5000) || '@example.com' || repeat('x', 150) as email, "
            "range % 3 = 0 as active, timestamp '2024-01-01' + to_seconds(range) as at "
            f"from range({ROWS})"
        )
    source = connect(DuckDBSourceConfig(path="warehouse.duckdb"), root=tmp_path)

    before = _rss()
    peak, rows, arrow_bytes = before, 0, 0
    for batch in source.read("select * from events", batch_rows=100_000):
        rows += batch.num_rows
        arrow_bytes += batch.nbytes
        peak = max(peak, _rss())
    source.close()

    assert rows == ROWS
    assert arrow_bytes > 300_000_000  # the whole result would need this much at once
    assert peak - before < arrow_bytes // 2  # measured ~110 MB of growth for ~380 MB read
