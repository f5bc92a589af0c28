"""`lockgate webhooks serve/load/status` end to end: background loading and clear errors."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import duckdb
import orjson
import pytest
from click.testing import CliRunner

from lockgate.cli import cli
from lockgate.emulator.webhook_sender import Recipient, send_events, simulate_engagement
from lockgate.errors import ConfigError
from lockgate.project.loader import Project
from lockgate.webhooks.app import create_app
from lockgate.webhooks.load import BackgroundLoader
from lockgate.webhooks.spool import Spool

from .conftest import KEY, running, write_project


def test_serve_loads_in_the_background(project: Project) -> None:
    spool = Spool(project.root / ".lockgate/webhooks")
    loader = BackgroundLoader(project, interval=0.2)
    app = create_app(spool=spool, signing_key=KEY, on_startup=loader.start, on_shutdown=loader.stop)
    people = [Recipient(str(i), f"p{i}@example.com", f"cio{i}") for i in range(3)]
    events = simulate_engagement(people=people, metrics=["sent", "opened"])
    try:
        with running(app) as url:
            report = send_events(url + "/webhooks/customerio", KEY, events)
            assert len(report.acknowledged) == len(events)
            deadline = time.monotonic() + 60
            while spool.stats().unloaded and time.monotonic() < deadline:
                time.sleep(0.1)
            assert spool.stats().unloaded == 0
    finally:
        spool.close()
    with duckdb.connect(str(project.root / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "select identifier_id, max(timestamp) from customerio.email "
            "where metric = 'opened' group by 1 order by 1"
        ).fetchall()
    assert [r[0] for r in rows] == ["0", "1", "2"]


def test_load_and_status_commands(project: Project) -> None:
    spool = Spool(project.root / ".lockgate/webhooks")
    events = simulate_engagement(people=[Recipient("7", "x@example.com", "c7")], metrics=["sent"])
    spool.append_now([(e["event_id"], orjson.dumps(e)) for e in events])
    spool.close()
    runner = CliRunner()
    args = ["--project", str(project.root), "--json"]
    status = runner.invoke(cli, ["webhooks", "status", *args])
    assert orjson.loads(status.output) == {"stored": 1, "unloaded": 1, "rejected": 0}
    loaded = runner.invoke(cli, ["webhooks", "load", *args])
    assert orjson.loads(loaded.output) == {
        "loaded": 1,
        "tables": {"email": 1},
        "rejected": [],
        "quarantined": 0,
        "pruned": 0,
    }
    again = runner.invoke(cli, ["webhooks", "load", *args])
    assert orjson.loads(again.output)["loaded"] == 0


def test_load_command_prunes_events_loaded_long_ago(project: Project) -> None:
    """With `serve --no-load` and `lockgate webhooks load`, nothing pruned the spool: every
    event stayed in it forever."""
    spool = Spool(project.root / ".lockgate/webhooks")
    people = [Recipient(str(i), f"p{i}@example.com", f"c{i}") for i in range(5)]
    old = simulate_engagement(people=people, metrics=["sent"])
    spool.append_now([(e["event_id"], orjson.dumps(e)) for e in old])
    spool.close()
    runner = CliRunner()
    args = ["--project", str(project.root), "--json"]
    assert orjson.loads(runner.invoke(cli, ["webhooks", "load", *args]).output)["loaded"] == 5
    # nine days pass (more than Customer.io's 7 days of retries); a new event arrives
    con = sqlite3.connect(project.root / ".lockgate/webhooks/spool.sqlite3")
    con.execute("update events set loaded_at = loaded_at - 9 * 86400")
    con.commit()
    con.close()
    spool = Spool(project.root / ".lockgate/webhooks")
    new = simulate_engagement(people=people[:1], metrics=["opened"])
    spool.append_now([(e["event_id"], orjson.dumps(e)) for e in new])
    spool.close()

    loaded = orjson.loads(runner.invoke(cli, ["webhooks", "load", *args]).output)
    assert (loaded["loaded"], loaded["pruned"]) == (1, 5)
    status = orjson.loads(runner.invoke(cli, ["webhooks", "status", *args]).output)
    assert status == {"stored": 1, "unloaded": 0, "rejected": 0}
    with duckdb.connect(str(project.root / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from customerio.email").fetchone() == (6,)


def test_a_damaged_spool_is_said_by_every_command_with_its_path(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool file that is no SQLite database (a bad copy or restore): `serve` does not start
    and `load` and `status` stop, each naming the file and the ways out, not as a bug; moved
    away, a new spool takes events again."""
    folder = project.root / ".lockgate/webhooks"
    Spool(folder).close()
    damaged = folder / "spool.sqlite3"
    damaged.write_bytes(b"not a spool " * 2000)
    monkeypatch.setenv("CUSTOMERIO_WEBHOOK_SIGNING_KEY", KEY.decode())
    args = ["--project", str(project.root)]
    for command in (["serve", "--port", "0"], ["load"], ["status"]):
        result = CliRunner().invoke(cli, ["webhooks", *command, *args])
        assert result.exit_code != 0, command
        error = result.exception
        assert error is not None and f"the webhook spool `{damaged}` is damaged" in str(error)
        assert "restore it from a backup" in str(error) and "bug" not in str(error), command
    damaged.rename(folder / "spool.damaged")
    for name in ("spool.sqlite3-wal", "spool.sqlite3-shm"):
        (folder / name).unlink(missing_ok=True)
    status = CliRunner().invoke(cli, ["webhooks", "status", *args, "--json"])
    assert orjson.loads(status.output) == {"stored": 0, "unloaded": 0, "rejected": 0}


def test_serve_without_signing_key_says_which_variable(project: Project) -> None:
    result = CliRunner().invoke(cli, ["webhooks", "serve", "--project", str(project.root)])
    assert isinstance(result.exception, ConfigError)
    assert "CUSTOMERIO_WEBHOOK_SIGNING_KEY" in result.exception.reason


def test_send_command_turns_emulator_people_into_webhooks(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockgate.emulator import Emulator

    emulator = Emulator()
    spool = Spool(project.root / ".lockgate/webhooks")
    app = create_app(spool=spool, signing_key=KEY)
    monkeypatch.setenv("CUSTOMERIO_WEBHOOK_SIGNING_KEY", KEY.decode())
    try:
        with (
            emulator.serve() as emulator_url,
            running(app) as url,
            emulator.client(auth=emulator.track_auth) as track,
        ):
            for i in range(3):
                response = track.put(f"/api/v1/customers/u{i}", json={"email": f"u{i}@x.com"})
                assert response.status_code == 200
            result = CliRunner().invoke(
                cli,
                [
                    "webhooks",
                    "send",
                    "--url",
                    url + "/webhooks/customerio",
                    "--emulator",
                    emulator_url,
                    "--metrics",
                    "sent,opened",
                    "--duplicate-every",
                    "2",
                    "--json",
                ],
            )
        assert result.exit_code == 0, result.output
        summary = orjson.loads(result.output)
        assert summary["events"] == summary["acknowledged"] == 6
        assert summary["duplicates"] == 3
        stored = [orjson.loads(r.body) for r in spool]
    finally:
        spool.close()
    assert sorted({e["data"]["identifiers"]["id"] for e in stored}) == ["u0", "u1", "u2"]
    assert len(stored) == 6


def test_spool_and_warehouse_paths_expand_variables_and_home_like_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`webhooks.spool` and a DuckDB source's `path` in `${VAR}` or `~/` form went into
    folders named `${VAR}` and `~` inside the project (lost with a container), unlike
    `state:`, which always expanded them."""
    volume, home = tmp_path / "volume", tmp_path / "home"
    volume.mkdir()
    home.mkdir()
    monkeypatch.setenv("LG_VOLUME", str(volume))
    monkeypatch.setenv("HOME", str(home))
    project = write_project(
        tmp_path / "proj",
        sources="  warehouse: {type: duckdb, path: '~/wh.duckdb', read_only: false}\n",
        webhooks="webhooks: {spool: '${LG_VOLUME}/hooks'}\n",
    )
    spool = Spool(volume / "hooks")
    events = simulate_engagement(people=[Recipient("7", "x@example.com", "c7")], metrics=["sent"])
    spool.append_now([(e["event_id"], orjson.dumps(e)) for e in events])
    spool.close()
    runner = CliRunner()
    args = ["--project", str(project.root), "--json"]
    status = runner.invoke(cli, ["webhooks", "status", *args])
    assert orjson.loads(status.output) == {"stored": 1, "unloaded": 1, "rejected": 0}
    loaded = runner.invoke(cli, ["webhooks", "load", *args])
    assert orjson.loads(loaded.output)["loaded"] == 1, loaded.output
    with duckdb.connect(str(home / "wh.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from customerio.email").fetchone() == (1,)
    assert not list(project.root.glob("[$~]*")), "no folder named after the reference"
    assert not (project.root / ".lockgate/webhooks").exists()


def test_spool_variable_not_set_is_an_error_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LG_VOLUME", raising=False)
    project = write_project(tmp_path / "proj", webhooks="webhooks:\n  spool: ${LG_VOLUME}/x\n")
    result = CliRunner().invoke(cli, ["webhooks", "status", "--project", str(project.root)])
    assert isinstance(result.exception, ConfigError)
    error = result.exception
    assert (error.file, error.line) == ("lockgate.yml", 5)
    assert error.reason == "`webhooks`: environment variable `LG_VOLUME` (for `spool`) is not set"
    assert not (project.root / "${LG_VOLUME}").exists()
    # validate checks the files and names the variable, as it does for `state:`
    validated = CliRunner().invoke(cli, ["validate", "--json", "--project", str(project.root)])
    assert "LG_VOLUME" in orjson.loads(validated.output)["missing_env"]


def test_a_shell_style_variable_in_spool_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"`spool` `\$HOME/x` has a `\$` that is not"):
        write_project(tmp_path / "proj", webhooks="webhooks: {spool: $HOME/x}\n")
