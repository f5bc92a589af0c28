"""One event the warehouse refuses must not hold back the others: it is set aside, with the
warehouse's reason, in the spool's quarantine; the rest load once; it can be retried later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from click.testing import CliRunner

from lockgate.cli import cli
from lockgate.emulator.webhook_sender import make_event
from lockgate.errors import LockgateError
from lockgate.project.loader import Project
from lockgate.webhooks.load import load_pending
from lockgate.webhooks.spool import Spool

from .conftest import postgres_project


def spool_events(spool: Spool, events: list[dict[str, Any]]) -> None:
    spool.append_now([(e["event_id"], orjson.dumps(e)) for e in events])


def loaded_ids(project: Project) -> list[str]:
    with duckdb.connect(str(project.root / "warehouse.duckdb"), read_only=True) as con:
        return [r[0] for r in con.execute("select event_id from customerio.email").fetchall()]


def refused_event() -> dict[str, Any]:
    """An event DuckDB cannot take once `points` is a bigint column: an integral float far
    beyond 64 bits in a key Lockgate does not know (dlt makes it an int; the int overflows)."""
    event = make_event("email", "opened")
    event["data"]["points"] = 1e300
    return event


def first_load(project: Project, spool: Spool) -> dict[str, Any]:
    first = make_event("email", "opened")
    first["data"]["points"] = 5  # dlt infers `points` as bigint
    spool_events(spool, [first])
    assert load_pending(project, spool=spool).loaded == 1
    return first


def test_one_bad_event_is_set_aside_and_the_others_load_once(
    project: Project, spool: Spool
) -> None:
    first = first_load(project, spool)
    before = [make_event("email", "opened") for _ in range(12)]
    bad = refused_event()
    after = [make_event("email", "clicked") for _ in range(9)]
    spool_events(spool, [*before, bad, *after])

    result = load_pending(project, spool=spool)
    assert result.loaded == len(before) + len(after)
    assert [(r.event_id, r.metric) for r in result.rejected] == [(bad["event_id"], "opened")]
    assert "too large" in result.rejected[0].reason
    assert spool.stats().unloaded == 0
    assert spool.stats().rejected == 1
    ids = loaded_ids(project)
    assert len(ids) == len(set(ids))
    assert set(ids) == {e["event_id"] for e in [first, *before, *after]}

    # the quarantine keeps the raw body and the reason
    (kept,) = spool.rejected()
    assert kept.event_id == bad["event_id"]
    assert orjson.loads(kept.body) == bad
    assert "too large" in kept.reason

    # later loads go on, and do not retry the bad event every time
    later = [make_event("email", "delivered") for _ in range(3)]
    spool_events(spool, later)
    again = load_pending(project, spool=spool)
    assert again.loaded == 3
    assert again.rejected == []
    assert spool.stats().rejected == 1
    assert load_pending(project, spool=spool).loaded == 0

    # a crash after loading but before marking: everything reloads, nothing twice
    spool._conn.execute("update events set loaded_at = null where rejected_at is null")
    load_pending(project, spool=spool)
    ids = loaded_ids(project)
    assert len(ids) == len(set(ids)) == 1 + len(before) + len(after) + len(later)
    assert bad["event_id"] not in ids


def test_several_bad_events_in_one_batch(project: Project, spool: Spool) -> None:
    first_load(project, spool)
    events = [make_event("email", "opened") for _ in range(30)]
    bad = {3, 4, 17, 29}
    for i in bad:
        events[i] = refused_event()
    spool_events(spool, events)
    result = load_pending(project, spool=spool, batch_size=16)
    assert result.loaded == len(events) - len(bad)
    assert {r.event_id for r in result.rejected} == {events[i]["event_id"] for i in bad}
    ids = loaded_ids(project)
    assert len(ids) == len(set(ids)) == 1 + len(events) - len(bad)


def test_cli_reports_rejects_and_retries_them(project: Project, spool: Spool) -> None:
    first_load(project, spool)
    good = make_event("email", "sent")
    bad = refused_event()
    spool_events(spool, [good, bad])
    runner = CliRunner()
    args = ["--project", str(project.root), "--json"]
    out = orjson.loads(runner.invoke(cli, ["webhooks", "load", *args]).stdout)
    assert out["loaded"] == 1
    assert [r["event_id"] for r in out["rejected"]] == [bad["event_id"]]
    assert "too large" in out["rejected"][0]["reason"]
    assert out["quarantined"] == 1

    status = orjson.loads(runner.invoke(cli, ["webhooks", "status", *args]).output)
    assert status == {"stored": 3, "unloaded": 0, "rejected": 1}
    listed = orjson.loads(runner.invoke(cli, ["webhooks", "rejects", *args]).output)
    assert [(r["event_id"], r["metric"]) for r in listed] == [(bad["event_id"], "opened")]
    assert orjson.loads(listed[0]["body"]) == bad
    human = runner.invoke(cli, ["webhooks", "load", "--project", str(project.root)])
    assert human.exit_code == 0, human.output
    assert "1 event" in human.output and "quarantine" in human.output

    # the cause is still there: the retry sets it aside again, once
    retried = runner.invoke(cli, ["webhooks", "load", "--retry-rejected", *args])
    assert retried.exit_code == 0, retried.output
    out = orjson.loads(retried.stdout)
    assert out["loaded"] == 0
    assert [r["event_id"] for r in out["rejected"]] == [bad["event_id"]]
    assert out["quarantined"] == 1


def test_a_refused_event_gives_one_warning_and_a_reason_without_sql(
    project: Project, spool: Spool
) -> None:
    """Each try of the split printed dlt's full traceback (hundreds of lines around the one
    warning), and the stored reason ended in an excerpt of dlt's SQL (`LINE 2: ...`)."""
    import subprocess
    import sys

    first = make_event("email", "sent")
    first["data"]["subject"] = "1"
    spool_events(spool, [first])
    load_pending(project, spool=spool)
    with duckdb.connect(str(project.root / "warehouse.duckdb")) as con:  # narrowed by hand
        con.execute("alter table customerio.email alter subject type integer")
    events = [make_event("email", "sent") for _ in range(20)]
    for i, event in enumerate(events):
        event["data"]["subject"] = "bad text" if i == 13 else str(i)
    bad = events[13]
    spool_events(spool, events)
    done = subprocess.run(
        [sys.executable, "-m", "lockgate", "webhooks", "load", "--project", str(project.root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "[ERROR]" not in done.stderr, done.stderr
    assert f"webhook event `{bad['event_id']}` set aside" in " ".join(done.stderr.split())
    (kept,) = spool.rejected()
    assert kept.reason == (
        "ConversionException: Conversion Error: Could not convert string 'bad text' to INT32 "
        "when casting from source column subject"
    )
    assert len(loaded_ids(project)) == 20


@pytest.mark.postgres
def test_a_warehouse_that_refuses_everything_quarantines_nothing(
    tmp_path: Path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault of the warehouse (not of one event) must not empty the queue into quarantine."""
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute("drop role if exists lg_reader")
        con.execute("create role lg_reader login")
    project = postgres_project(tmp_path / "pg", postgres_dsn, monkeypatch, "cio_denied")
    spool = Spool(project.root / ".lockgate/webhooks")
    try:
        spool_events(spool, [make_event("email", "sent")])
        assert load_pending(project, spool=spool).loaded == 1
        # the same warehouse as a role that may not write there: every event fails alike
        monkeypatch.setenv("WAREHOUSE_URL", postgres_dsn.replace("postgres@", "lg_reader@"))
        spool_events(spool, [make_event("email", "opened") for _ in range(5)])
        with pytest.raises(LockgateError, match="permission denied"):
            load_pending(project, spool=spool)
        assert spool.stats().unloaded == 5
        assert spool.stats().rejected == 0
    finally:
        spool.close()


@pytest.mark.postgres
def test_postgres_reject_is_retried_once_the_cause_is_fixed(
    tmp_path: Path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A column made narrower by hand refuses a long value; widen it and retry."""
    import psycopg

    project = postgres_project(tmp_path / "pg", postgres_dsn, monkeypatch, "cio_rejects")
    spool = Spool(project.root / ".lockgate/webhooks")
    try:
        first = make_event("email", "sent")
        spool_events(spool, [first])
        assert load_pending(project, spool=spool).loaded == 1
        with psycopg.connect(postgres_dsn, autocommit=True) as con:
            con.execute("alter table cio_rejects.email alter column subject type varchar(40)")
        good = [make_event("email", "sent") for _ in range(5)]
        for event in good:
            event["data"]["subject"] = "short"
        bad = make_event("email", "sent")
        bad["data"]["subject"] = "x" * 100
        spool_events(spool, [good[0], good[1], bad, *good[2:]])
        result = load_pending(project, spool=spool)
        assert result.loaded == 5
        assert [r.event_id for r in result.rejected] == [bad["event_id"]]
        assert "too long" in result.rejected[0].reason

        with psycopg.connect(postgres_dsn, autocommit=True) as con:
            con.execute("alter table cio_rejects.email alter column subject type text")
        assert spool.release_rejected() == 1
        result = load_pending(project, spool=spool)
        assert result.loaded == 1 and result.rejected == []
        assert spool.stats().rejected == 0
        assert load_pending(project, spool=spool).loaded == 0
    finally:
        spool.close()
    with psycopg.connect(postgres_dsn) as con:
        ids = [r[0] for r in con.execute("select event_id from cio_rejects.email").fetchall()]
        subject = con.execute(
            "select subject from cio_rejects.email where event_id = %s", [bad["event_id"]]
        ).fetchone()
    assert len(ids) == len(set(ids)) == 7
    assert subject == ("x" * 100,)


LOADER = """
import sys
from pathlib import Path
from lockgate.project.loader import load_project
from lockgate.webhooks.load import load_pending

load_pending(load_project(Path(sys.argv[1])), batch_size=64)
"""


def spool_state(spool: Spool) -> tuple[set[str], set[str], set[str]]:
    """Event ids marked loaded, rejected, and still pending."""
    rows = spool._reader.execute(
        "select event_id, loaded_at is not null, rejected_at is not null from events"
    ).fetchall()
    loaded = {e for e, done, _ in rows if done}
    rejected = {e for e, _, bad in rows if bad}
    return loaded, rejected, {e for e, done, bad in rows if not done and not bad}


@pytest.mark.slow
@pytest.mark.parametrize("kill_when", ["first_loaded", "first_rejected"])
def test_sigkill_while_isolating_loses_and_duplicates_nothing(
    project: Project, spool: Spool, kill_when: str
) -> None:
    """Killed in the middle of splitting a failed batch, then loaded again: every event ends
    loaded once or quarantined once, never both."""
    import signal
    import subprocess
    import sys
    import time

    first = first_load(project, spool)
    events = [make_event("email", "opened") for _ in range(60)]
    for i in (5, 6, 40):
        events[i] = refused_event()
    bad = {events[i]["event_id"] for i in (5, 6, 40)}
    spool_events(spool, events)
    proc = subprocess.Popen(
        [sys.executable, "-c", LOADER, str(project.root)], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            loaded, rejected, pending = spool_state(spool)
            if pending and (len(loaded) > 1 if kill_when == "first_loaded" else rejected):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the loader finished before it could be killed"
    loaded, rejected, pending = spool_state(spool)
    assert pending and not loaded & rejected
    assert rejected <= bad
    assert loaded.isdisjoint(bad)
    assert loaded <= set(loaded_ids(project))

    load_pending(project, spool=spool)
    loaded, rejected, pending = spool_state(spool)
    assert not pending
    assert rejected == bad
    ids = loaded_ids(project)
    assert len(ids) == len(set(ids)), "an event was loaded twice"
    assert set(ids) == loaded == {first["event_id"]} | {e["event_id"] for e in events} - bad


def test_a_spool_from_before_the_quarantine_opens_and_loads(project: Project) -> None:
    """A receiver upgraded in place keeps its queue: the spool gains the quarantine columns."""
    import sqlite3

    folder = project.root / ".lockgate/webhooks"
    folder.mkdir(parents=True)
    event = make_event("email", "sent")
    with sqlite3.connect(folder / "spool.sqlite3") as con:
        con.executescript(
            "create table events (seq integer primary key autoincrement, "
            "event_id text not null unique, received_at real not null, body blob not null, "
            "loaded_at real);"
            "create index events_unloaded on events (seq) where loaded_at is null;"
        )
        con.execute(
            "insert into events (event_id, received_at, body) values (?, 1.0, ?)",
            (event["event_id"], orjson.dumps(event)),
        )
    spool = Spool(folder)
    try:
        assert spool.stats().unloaded == 1 and spool.stats().rejected == 0
        assert load_pending(project, spool=spool).loaded == 1
    finally:
        spool.close()
    assert loaded_ids(project) == [event["event_id"]]
