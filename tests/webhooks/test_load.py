"""Loading spooled events into the warehouse: every variant, typed columns, dedupe, evolution."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from typing import Any

import duckdb
import orjson
import pytest

from lockgate.emulator.webhook_sender import every_variant, make_event
from lockgate.project.loader import Project
from lockgate.webhooks.load import load_pending
from lockgate.webhooks.schemas import table_for
from lockgate.webhooks.spool import Spool

from .conftest import postgres_project, write_project


def spool_events(spool: Spool, events: list[dict[str, Any]]) -> None:
    spool.append_now([(e["event_id"], orjson.dumps(e)) for e in events])


def warehouse(project: Project) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(project.root / "warehouse.duckdb"), read_only=True)


def column_types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "select column_name, data_type from information_schema.columns "
        "where table_schema = 'customerio' and table_name = ?",
        [table],
    ).fetchall()
    return dict(rows)


def test_generated_payloads_match_the_spec(
    spec_validator: Callable[[dict[str, Any]], None],
) -> None:
    events = every_variant()
    assert len(events) > 150
    for event in events:
        spec_validator(event)


def test_every_variant_loads_with_typed_columns(project: Project, spool: Spool) -> None:
    events = every_variant()
    # pairs the spec does not describe are stored too, never failing the load
    deferred = make_event("email", "deferred")
    alien = make_event("email", "sent")
    alien["object_type"] = "carrier_pigeon"
    spool_events(spool, [*events, deferred, alien])
    result = load_pending(project, spool=spool)
    assert result.loaded == len(events) + 2
    assert spool.stats().unloaded == 0
    expected = Counter(table_for(e["object_type"], e["metric"], e["data"]) for e in events)
    assert set(expected) == {
        "customer",
        "email",
        "push",
        "in_app",
        "sms",
        "slack",
        "webhook",
        "whatsapp",
    }
    expected["email"] += 1
    with warehouse(project) as con:
        assert con.execute(
            "select event_id from customerio.email where metric = 'deferred'"
        ).fetchall() == [(deferred["event_id"],)]
        assert con.execute("select object_type from customerio.other").fetchall() == [
            ("carrier_pigeon",)
        ]
        for table, count in expected.items():
            assert con.execute(f"select count(*) from customerio.{table}").fetchone() == (count,)
        email = column_types(con, "email")
        assert email["timestamp"] == "TIMESTAMP WITH TIME ZONE"
        assert email["campaign_id"] == "BIGINT"
        assert email["link_id"] == "BIGINT"
        assert email["proxied"] == "BOOLEAN"
        assert email["identifier_cio_id"] == "VARCHAR"
        assert email["delivery_id"] == "VARCHAR"
        assert email["raw"] == "JSON"
        assert column_types(con, "push")["recipients"] == "JSON"
        clicked = next(e for e in events if (e["object_type"], e["metric"]) == ("email", "clicked"))
        row = con.execute(
            "select timestamp, link_id, href, identifier_email, raw->>'$.event_id' "
            "from customerio.email where event_id = ?",
            [clicked["event_id"]],
        ).fetchone()
        assert row[0] == dt.datetime.fromtimestamp(clicked["timestamp"], dt.UTC)
        assert row[1:] == (
            clicked["data"]["link_id"],
            clicked["data"]["href"],
            clicked["data"]["identifiers"]["email"],
            clicked["event_id"],
        )


def test_duplicate_event_id_is_loaded_once(project: Project, spool: Spool) -> None:
    event = make_event("email", "opened")
    spool_events(spool, [event, event])
    load_pending(project, spool=spool)
    # a crash after loading but before marking: the same records load again
    spool._conn.execute("update events set loaded_at = null")
    load_pending(project, spool=spool)
    # a second receiver spool (e.g. the folder was lost) holding the same event
    other = Spool(project.root / "other-spool")
    try:
        spool_events(other, [event])
        load_pending(project, spool=other)
    finally:
        other.close()
    with warehouse(project) as con:
        assert con.execute("select count(*) from customerio.email").fetchone() == (1,)


def test_schema_evolves_without_breaking_old_columns(project: Project, spool: Spool) -> None:
    first = make_event("email", "opened")
    spool_events(spool, [first])
    load_pending(project, spool=spool)
    second = make_event("email", "opened")
    second["data"]["amp_open"] = True
    second["data"]["reading_seconds"] = 12
    # a value whose type clashes with an existing column goes to a variant column
    clash = make_event("email", "opened")
    clash["data"]["campaign_id"] = "not-a-number"
    spool_events(spool, [second, clash])
    assert load_pending(project, spool=spool).loaded == 2
    with warehouse(project) as con:
        types = column_types(con, "email")
        assert types["amp_open"] == "BOOLEAN"
        assert types["reading_seconds"] == "BIGINT"
        assert types["campaign_id"] == "BIGINT"
        assert con.execute(
            "select campaign_id__v_text from customerio.email where event_id = ?",
            [clash["event_id"]],
        ).fetchone() == ("not-a-number",)
        rows = con.execute("select event_id, recipient, amp_open from customerio.email").fetchall()
    assert sorted(rows) == sorted(
        [
            (first["event_id"], first["data"]["recipient"], None),
            (second["event_id"], second["data"]["recipient"], True),
            (clash["event_id"], clash["data"]["recipient"], None),
        ]
    )


def test_busy_duckdb_file_is_a_clear_transient_error(project: Project, spool: Spool) -> None:
    import subprocess
    import sys

    from lockgate.errors import TransientError

    spool_events(spool, [make_event("email", "sent")])
    load_pending(project, spool=spool)
    spool_events(spool, [make_event("email", "opened")])
    path = str(project.root / "warehouse.duckdb")
    script = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        with pytest.raises(TransientError, match="in use by another process") as info:
            load_pending(project, spool=spool, wait=0.5)
        assert "lockgate webhooks load" in (info.value.hint or "")
        assert spool.stats().unloaded == 1
    finally:
        holder.communicate(timeout=20)
    assert load_pending(project, spool=spool).loaded == 1


def test_a_damaged_duckdb_file_is_said_at_once_and_the_events_wait(
    project: Project, spool: Spool
) -> None:
    """A warehouse file DuckDB cannot open (here not a DuckDB database) is not "in use by
    another process", and no wait for it to be free changes it: the load says what is wrong
    with which file, sets no event aside, and loads them once the file is moved aside."""
    from lockgate.errors import TerminalError

    spool_events(spool, [make_event("email", "sent"), make_event("email", "opened")])
    damaged = project.root / "warehouse.duckdb"
    damaged.write_bytes(b"not a database " * 1000)
    with pytest.raises(TerminalError) as info:
        load_pending(project, spool=spool, wait=0.5)
    message = str(info.value)
    assert "in use" not in message
    assert str(damaged) in message and "not a valid DuckDB database file" in message
    assert "move it aside" in (info.value.hint or "")
    assert spool.stats().unloaded == 2 and spool.stats().rejected == 0
    damaged.rename(project.root / "warehouse.damaged")
    assert load_pending(project, spool=spool).loaded == 2


def test_a_duckdb_write_error_that_is_no_lock_is_not_called_one() -> None:
    """An I/O error of DuckDB's while dlt loads (a full disk) keeps the events in the spool,
    as a busy file does, and says the error rather than "in use by another process"."""
    from pathlib import Path

    from lockgate.errors import TransientError
    from lockgate.webhooks.load import _load_error

    path = Path("/data/warehouse.duckdb")
    for text, expected in [
        ('IO Error: Could not set lock on file "/data/warehouse.duckdb"', "in use by another"),
        ("IO Error: Could not write file: No space left on device", "No space left on device"),
    ]:
        try:
            try:
                raise duckdb.IOException(text)
            except duckdb.IOException as cause:
                raise RuntimeError("dlt: load job failed") from cause
        except RuntimeError as exc:
            error = _load_error(exc, path)
        assert isinstance(error, TransientError), text
        assert expected in str(error), (text, str(error))
    assert "in use" not in str(error)


@pytest.mark.postgres
def test_postgres_loading(tmp_path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    project = postgres_project(tmp_path / "pg", postgres_dsn, monkeypatch, "cio_events")
    spool = Spool(project.root / ".lockgate/webhooks")
    try:
        events = every_variant()
        spool_events(spool, [*events, events[0]])
        load_pending(project, spool=spool)
        evolved = make_event("email", "opened")
        evolved["data"]["amp_open"] = True
        spool_events(spool, [evolved])
        load_pending(project, spool=spool)
    finally:
        spool.close()
    with psycopg.connect(postgres_dsn) as con:
        total = 0
        for table in ("customer", "email", "push", "in_app", "sms", "slack", "webhook", "whatsapp"):
            total += con.execute(f"select count(*) from cio_events.{table}").fetchone()[0]
        assert total == len(events) + 1
        types = dict(
            con.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = 'cio_events' and table_name = 'email'"
            ).fetchall()
        )
    assert types["timestamp"] == "timestamp with time zone"
    assert types["campaign_id"] == "bigint"
    assert types["proxied"] == "boolean"
    assert types["raw"] == "jsonb"
    assert types["amp_open"] == "boolean"


def test_package_left_by_a_failed_load_does_not_swallow_new_events(
    project: Project, spool: Spool
) -> None:
    import dlt

    from lockgate.webhooks.load import PIPELINE_NAME, destination_for

    spool_events(spool, [make_event("email", "drafted")])
    load_pending(project, spool=spool)  # the destination now holds the pipeline's state
    # what a load killed between dlt's normalize and load steps leaves behind
    first = make_event("email", "sent")
    spool_events(spool, [first])
    destination, _ = destination_for(project)
    pipeline = dlt.pipeline(
        pipeline_name=PIPELINE_NAME,
        destination=destination,
        dataset_name="customerio",
        pipelines_dir=str(project.state_dir / "dlt"),
    )
    pipeline.extract(dlt.resource([{"event_id": first["event_id"]}], name="email"))
    pipeline.normalize()
    assert pipeline.has_pending_data

    second = make_event("email", "opened")
    spool_events(spool, [second])
    assert load_pending(project, spool=spool).loaded == 2
    with warehouse(project) as con:
        rows = con.execute(
            "select event_id, metric from customerio.email where metric <> 'drafted'"
        ).fetchall()
    assert sorted(rows) == sorted([(first["event_id"], "sent"), (second["event_id"], "opened")])


def test_timestamp_out_of_range_still_loads(project: Project, spool: Spool) -> None:
    event = make_event("email", "opened")
    event["timestamp"] = 1_613_063_089_000_000  # microseconds sent as seconds
    spool_events(spool, [event])
    assert load_pending(project, spool=spool).loaded == 1
    with warehouse(project) as con:
        row = con.execute(
            "select timestamp, raw->>'$.timestamp' from customerio.email where event_id = ?",
            [event["event_id"]],
        ).fetchone()
    assert row == (None, "1613063089000000")


def test_warehouse_choice_errors_name_the_fix(tmp_path) -> None:
    from lockgate.errors import ConfigError
    from lockgate.webhooks.load import destination_for, warehouse_name

    two = "  snow: {type: bigquery, project: p}\n  wh: {type: duckdb, path: w.duckdb}\n"
    assert warehouse_name(write_project(tmp_path / "a", sources=two)) == "wh"
    # a source that is not declared is an error of the file, before any load
    with pytest.raises(ConfigError, match="`nope`") as info:
        write_project(tmp_path / "b", sources=two, webhooks="webhooks: {warehouse: nope}\n")
    assert info.value.location == "lockgate.yml:5"
    assert "declared sources: `snow`, `wh`" in (info.value.hint or "")
    memory = write_project(tmp_path / "c", sources="  m: {type: duckdb, path: ':memory:'}\n")
    with pytest.raises(ConfigError, match="in-memory"):
        destination_for(memory)


def test_without_the_webhooks_extra_loading_names_the_install_and_keeps_the_spool(
    project: Project, spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from lockgate.errors import MissingDependencyError

    spool_events(spool, [make_event("email", "sent")])
    monkeypatch.setitem(sys.modules, "dlt", None)  # `import dlt` fails, as without the extra
    with pytest.raises(MissingDependencyError) as info:
        load_pending(project, spool=spool)
    assert info.value.hint == 'pip install "lockgate[webhooks]"'
    assert spool.stats().unloaded == 1
    monkeypatch.undo()
    assert load_pending(project, spool=spool).loaded == 1


def test_large_bodies_load_in_batches_bounded_by_bytes(project: Project, spool: Spool) -> None:
    # `sent` events carrying their message can be megabytes each: a batch takes bodies up to
    # its byte budget (always at least one), so 10,000 of them never sit in memory at once
    events = []
    for n in range(5):
        event = make_event("email", "sent")
        event["data"]["content"] = f"<p>{n}</p>" + "x" * 300_000
        events.append(event)
    spool_events(spool, events)
    result = load_pending(project, spool=spool, batch_bytes=700_000)
    assert result.batches == 3  # 2 + 2 + 1 bodies of ~300 KB
    assert result.loaded == 5 and spool.stats().unloaded == 0
    with warehouse(project) as con:
        ids = con.execute("select event_id from customerio.email").fetchall()
    assert sorted(i for (i,) in ids) == sorted(e["event_id"] for e in events)
