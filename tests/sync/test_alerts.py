"""`alerts:`: a failed, partial or recovered run is POSTed to the configured endpoints."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tests.sync.helpers import WIDE, wide_people

from lockgate.console import NullConsole
from lockgate.errors import ConfigError, ContractError, LockgateError
from lockgate.project.loader import load_project
from lockgate.sync.run import run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

OTHER = """
name: other
source: warehouse
model: {sql: "select id from people"}
kind: people
primary_key: id
identify_by: {id: id}
"""


class Receiver:
    """An alert endpoint on loopback: records each POST's path and JSON body."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[tuple[str, dict[str, Any]]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append((self.path, json.loads(body)))
                self.send_response(500 if self.path.startswith("/broken") else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


ALERTS = """
alerts:
  - url: ${HOOK_URL}
  - url: ${SLACK_URL}
    format: slack
    on: [failed]
    syncs: [wide]
"""


def with_alerts(factory: ProjectFactory, syncs: dict[str, str], alerts: str = ALERTS) -> Any:
    project = factory.write(syncs)
    with (project.root / "lockgate.yml").open("a") as f:
        f.write(alerts)
    return load_project(project.root)


def test_a_failed_partial_then_recovered_sync_is_told_once_each(
    project_factory: ProjectFactory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_URL", receiver.url + "/hook/T0KEN")
    monkeypatch.setenv("SLACK_URL", receiver.url + "/slack/T0KEN")
    wide_people(project_factory, 30)
    guarded = WIDE + "guardrails: {max_changed: 10%}\n"
    project = with_alerts(project_factory, {"wide": guarded, "other": OTHER})
    console = NullConsole()

    # a success with nothing before it: no alert
    assert run_sync(project, "wide", console=console).status == "success"
    assert receiver.received == []

    # a guardrail stops a run: both endpoints hear of it (Slack as one readable line)
    project_factory.sql("update people set a0 = 'w' || id")  # every person changed
    with pytest.raises(ContractError):
        run_sync(project, "wide", console=console)
    (hook, doc), (slack, message) = sorted(receiver.received)
    assert (hook, slack) == ("/hook/T0KEN", "/slack/T0KEN")
    assert (doc["source"], doc["sync"], doc["event"], doc["status"]) == (
        "lockgate",
        "wide",
        "failed",
        "failed",
    )
    assert "max_changed" in doc["error"] and doc["run_id"]
    assert list(message) == ["text"]
    assert message["text"].startswith("Lockgate `test`: sync `wide` failed: ")
    assert f"lockgate runs show {doc['run_id']}" in message["text"]
    # still failing: a streak alerts once
    receiver.received.clear()
    with pytest.raises(ContractError):
        run_sync(project, "wide", console=console)
    assert receiver.received == []

    # Customer.io refuses one record: `partial`, to the endpoint that wants it
    receiver.received.clear()
    wide_people(project_factory, 30, huge=(7,))
    project = with_alerts(project_factory, {"wide": WIDE, "other": OTHER})
    assert run_sync(project, "wide", console=console).status == "partial"
    [(path, doc)] = receiver.received
    assert path == "/hook/T0KEN" and doc["event"] == "partial"
    assert (doc["to_send"], doc["delivered"], doc["rejected_by_customerio"]) == (1, 0, 1)

    # a run of one named record alerts nobody, and does not end the streak
    receiver.received.clear()
    assert run_sync(project, "wide", console=console, only=("3",)).status == "success"
    assert receiver.received == []
    # fixed: `recovered` once, then nothing while it stays well
    wide_people(project_factory, 30)
    assert run_sync(project, "wide", console=console).status == "success"
    [(path, doc)] = receiver.received
    assert doc["event"] == "recovered" and doc["status"] == "success"
    receiver.received.clear()
    project_factory.sql("update people set a1 = 'z' || id")
    assert run_sync(project, "wide", console=console).status == "success"
    assert receiver.received == []

    # another sync's failure reaches only the alert without a `syncs:` list
    project_factory.sql("alter table people rename column id to pid")
    with pytest.raises(LockgateError, match='column "id" not found'):
        run_sync(project, "other", console=console)
    assert [(p, d["sync"]) for p, d in receiver.received] == [("/hook/T0KEN", "other")]


def test_an_alert_that_cannot_be_sent_warns_without_its_url_and_the_run_stands(
    project_factory: ProjectFactory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_URL", receiver.url + "/broken/T0KEN")
    monkeypatch.setenv("SLACK_URL", "http://127.0.0.1:9/slack/T0KEN")  # nothing listens there
    wide_people(project_factory, 30, huge=(7,))
    project = with_alerts(
        project_factory,
        {"wide": WIDE},
        ALERTS.replace("on: [failed]", "on: [partial]"),
    )
    console = NullConsole()
    report = run_sync(project, "wide", console=console)
    assert report.status == "partial" and report.delivered == 29
    warnings = [m for m in console.messages if "alert" in m]
    assert len(warnings) == 2
    assert "was answered 500" in warnings[0] and "127.0.0.1:" in warnings[0]
    assert "was not sent: ConnectError" in warnings[1]
    assert not any("T0KEN" in m for m in console.messages)  # the token stays secret


def test_an_alert_url_with_a_password_shows_only_its_host(
    project_factory: ProjectFactory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `user:password@` is part of the URL's netloc: only host and port may be printed
    port = receiver.url.rsplit(":", 1)[1]
    monkeypatch.setenv("HOOK_URL", f"http://alertuser:S3cretPw@127.0.0.1:{port}/broken/T0KEN")
    monkeypatch.setenv("SLACK_URL", "http://alertuser:S3cretPw@127.0.0.1:9/slack/T0KEN")
    wide_people(project_factory, 30, huge=(7,))
    project = with_alerts(
        project_factory, {"wide": WIDE}, ALERTS.replace("on: [failed]", "on: [partial]")
    )
    console = NullConsole()
    assert run_sync(project, "wide", console=console).status == "partial"
    warnings = sorted(m for m in console.messages if "alert" in m)
    assert warnings == [
        f"warning: wide: the `partial` alert to 127.0.0.1:{port} was answered 500",
        "warning: wide: the `partial` alert to 127.0.0.1:9 was not sent: ConnectError",
    ]
    assert not any("S3cretPw" in m or "alertuser" in m for m in console.messages)


def test_an_alert_url_is_a_secret_and_names_syncs_that_exist(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql("create table people as select 1 as id")
    with pytest.raises(ConfigError, match="environment reference") as literal:
        with_alerts(project_factory, {"other": OTHER}, "alerts:\n  - url: https://hooks/x\n")
    assert literal.value.location == "lockgate.yml:13"
    with pytest.raises(ConfigError, match="names sync `wide`"):
        with_alerts(project_factory, {"other": OTHER}, ALERTS)


def test_a_run_near_a_guardrail_limit_warns_once_per_streak(
    project_factory: ProjectFactory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_URL", receiver.url + "/hook/T0KEN")
    monkeypatch.setenv("SLACK_URL", receiver.url + "/slack/T0KEN")
    wide_people(project_factory, 30)
    guarded = WIDE + "guardrails: {max_changed: 10, warn_at: 50%}\n"
    alerts = ALERTS.replace("on: [failed]", "on: [warning]")
    project = with_alerts(project_factory, {"wide": guarded}, alerts)
    console = NullConsole()
    assert run_sync(project, "wide", console=console).status == "success"

    # 6 of the 10 allowed changed: the run goes on, both endpoints are told once
    project_factory.sql("update people set a0 = 'w' || id where id < 6")
    assert run_sync(project, "wide", console=console).delivered == 6
    (hook, doc), (slack, message) = sorted(receiver.received)
    assert (doc["event"], doc["status"], doc["near_limit"]) == (
        "warning",
        "success",
        ["max_changed"],
    )
    assert message["text"].startswith(
        "Lockgate `test`: sync `wide` is near a guardrail's limit: max_changed 6 against 10;"
    )
    # still near: no second alert; a run well within the limit, then near again: told again
    receiver.received.clear()
    project_factory.sql("update people set a0 = 'v' || id where id < 7")
    assert run_sync(project, "wide", console=console).delivered == 7
    assert receiver.received == []
    project_factory.sql("update people set a0 = 'u' || id where id < 1")
    assert run_sync(project, "wide", console=console).delivered == 1
    assert receiver.received == []
    project_factory.sql("update people set a0 = 't' || id where id < 5")
    assert run_sync(project, "wide", console=console).delivered == 5
    (hook, doc), (slack, _) = sorted(receiver.received)
    assert (hook, slack, doc["event"]) == ("/hook/T0KEN", "/slack/T0KEN", "warning")
