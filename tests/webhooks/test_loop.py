"""The whole loop: emulator engagement → signed webhooks → DuckDB → a sync back into Customer.io."""

from __future__ import annotations

import duckdb
import pytest

from lockgate.console import NullConsole
from lockgate.demo import scaffold, warehouse
from lockgate.emulator import Emulator
from lockgate.project.loader import load_project
from lockgate.sync.run import run_sync
from lockgate.webhooks.loop import run_engagement_loop


def test_engagement_comes_back_as_attributes(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "demo"
    root.mkdir()
    scaffold(root)
    warehouse.build(root / "warehouse.duckdb")
    emulator = Emulator()
    site_id, api_key = emulator.track_auth
    console = NullConsole()
    with emulator.serve() as base_url:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", site_id)
        monkeypatch.setenv("CUSTOMERIO_API_KEY", api_key)
        monkeypatch.setenv("CUSTOMERIO_TRACK_URL", base_url)
        run_sync(load_project(root), "customer_profile", console=console)
        result = run_engagement_loop(root, emulator, console=console, max_people=80)
        people = {p.id: p for p in emulator.people()}

    assert result.acknowledged == result.sent == result.loaded
    assert 0 < result.openers < result.people
    assert result.report.status == "success"
    assert result.report.delivered == result.openers
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        opened = dict(
            con.execute(
                "select identifier_id, epoch(max(timestamp))::bigint from customerio.email "
                "where metric = 'opened' group by 1"
            ).fetchall()
        )
    assert len(opened) == result.openers
    for person_id, person in people.items():
        if person_id in opened:
            assert person.attributes["last_email_opened_at"] == opened[person_id]
            assert person.attributes["email_opens"] == 1
        else:
            assert "last_email_opened_at" not in person.attributes
