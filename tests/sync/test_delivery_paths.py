"""What a sync sends and commits is the same whichever way a batch is answered.

A sync delivers through the client's columnar path: whole batches accepted at once are
committed as Arrow slices, and anything else (an operation too large to send, server errors,
retries) falls back to per-record results. The user-visible outcome must not depend on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner
from tests.sync.helpers import WIDE
from tests.sync.helpers import wide_people as people

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.emulator import Emulator, EmulatorConfig, FaultConfig
from lockgate.state.store import StateStore
from lockgate.sync.deliver import _ulid_array, event_ulids
from lockgate.sync.run import run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)


def test_an_operation_too_large_to_send_is_rejected_and_the_rest_committed(
    project_factory: ProjectFactory,
) -> None:
    people(project_factory, 300, huge=(17,))  # 40 x 900 bytes: over Track v2's 32 KB per op
    project = project_factory.write({"wide": WIDE})
    first = run_sync(project, "wide", console=NullConsole())

    assert first.delivered == 299 and first.rejected_by_api == 1
    assert first.failures[0][0] == "17" and "32 KB" in first.failures[0][2]
    emu = project_factory.emulator
    assert emu.person(id="17") is None and len(emu.people()) == 299
    with StateStore.open(project.state_dir) as store:
        history = store.history("17")
        assert [(h["outcome"], h["action"]) for h in history] == [("rejected", "identify")]
        assert store.history("18")[0]["outcome"] == "delivered"
    # `lockgate runs show` lists it as rejected in delivery, with the reason
    shown = CliRunner().invoke(
        cli, ["runs", "show", first.run_id, "--json", "--project", str(project.root)]
    )
    rejected = json.loads(shown.output)["rejected"]
    assert [(r["stage"], r["key"]) for r in rejected] == [("delivery", "17")]
    assert "32 KB" in rejected[0]["reason"]
    # and what makes it large, to trim in the model or the sync file
    assert (
        "its 40 attributes hold 36,310 bytes, the largest `a10` 908 bytes, `a11` 908 bytes, "
        "`a12` 908 bytes; send fewer or shorter ones"
    ) in rejected[0]["reason"]

    second = run_sync(project, "wide", console=NullConsole())
    assert second.changes.to_send == 1  # not committed: tried again, the others are done


def test_server_errors_and_retries_end_in_the_same_workspace_as_a_clean_run(
    project_factory: ProjectFactory,
) -> None:
    people(project_factory, 400)  # ~8 KB per operation: several batches of up to 500 KB
    clean = project_factory.write({"wide": WIDE})
    run_sync(clean, "wide", console=NullConsole())
    expected = {p.id: p.attributes for p in project_factory.emulator.people()}

    flaky = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=0.3, seed=5)))
    with flaky.serve() as url:
        project = project_factory.write({"wide": WIDE}, url=url, retries=30)
        (project.state_dir / "state.duckdb").unlink()
        report = run_sync(project, "wide", console=NullConsole())
    assert report.status == "success" and report.delivered == 400
    statuses = [r.status for r in flaky.request_log() if r.path == "/api/v2/batch"]
    assert 200 in statuses and any(s >= 500 for s in statuses)  # faults were injected
    assert {p.id: p.attributes for p in flaky.people()} == expected
    with StateStore.open(project.state_dir) as store:
        assert all(len(store.history(str(i))) == 1 for i in (0, 199, 399))


def test_event_ids_are_the_same_whichever_path_builds_them() -> None:
    rng = np.random.default_rng(1)
    ts = rng.integers(0, 2_000_000_000, 500)
    lo = rng.integers(0, 2**63, 500, dtype=np.uint64)
    hi = rng.integers(0, 2**63, 500, dtype=np.uint64)
    assert [s.encode() for s in _ulid_array(ts, lo, hi).to_pylist()] == event_ulids(ts, lo, hi)


def test_a_record_without_a_payload_is_refused_and_the_rest_delivered(tmp_path: Path) -> None:
    from lockgate.destinations.customerio import CustomerIOClient, CustomerIOSettings
    from lockgate.sync.commit import Committer
    from lockgate.sync.deliver import deliver

    emu = Emulator()
    site_id, api_key = emu.track_auth
    client = CustomerIOClient(
        CustomerIOSettings(site_id=site_id, api_key=api_key, track_url="http://emulator"),
        transport=emu.async_transport(),
    )
    with StateStore.open(tmp_path) as store:
        store.ensure_sync_tables("people")
        store.exec_sql(
            """
            create temp table changes as
            select i::varchar as k,
                   case when i = 2 then null else
                   '{"type":"person","action":"identify","identifiers":{"id":"' || i || '"}}'
                   end as op,
                   i::ubigint as h, '{"id":"' || i || '"}' as ident, false as removed
            from range(5) t(i)
            """
        )
        committer = Committer(store.writer(), sync="people", run_id="r1", kind="people")
        deliver(store.con, client, kind="people", committer=committer, advance=lambda n: None)
        counts = committer.counts
        store.fold_journal("people")
        remembered = {k for (k,) in store.exec_sql('select k from "snap__people"')}

    assert (counts.delivered, counts.rejected) == (4, 1)
    assert counts.failures[0][0] == "2" and "no payload" in counts.failures[0][2]
    assert sorted(p.id for p in emu.people()) == ["0", "1", "3", "4"]
    assert remembered == {"0", "1", "3", "4"}  # the refused one is tried again next run
