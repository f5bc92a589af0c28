"""The spool on its own: concurrent appends, small commit groups, reopening."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lockgate.webhooks.spool import Spool


@pytest.mark.parametrize("max_group", [1, 3, 2000])
def test_concurrent_appends_are_all_stored_once(tmp_path: Path, max_group: int) -> None:
    spool = Spool(tmp_path, max_group=max_group)

    async def run() -> None:
        # 25 distinct events, each sent twice at the same time (a retry racing the original)
        await asyncio.gather(
            *(spool.append(f"e{i % 25:02d}", b'{"n": %d}' % (i % 25)) for i in range(50))
        )

    try:
        asyncio.run(run())
    finally:
        spool.close()
    reopened = Spool(tmp_path)
    try:
        records = list(reopened)
        assert sorted(r.event_id for r in records) == [f"e{i:02d}" for i in range(25)]
        assert reopened.stats().unloaded == 25
        reopened.mark_loaded([r.seq for r in records[:10]])
        assert [r.event_id for r in reopened.unloaded()] == [r.event_id for r in records[10:]]
        assert reopened.prune(older_than=-1) == 10
    finally:
        reopened.close()
