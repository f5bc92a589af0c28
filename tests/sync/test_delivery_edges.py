"""Delivery and commit at the edges: a run commits exactly what Customer.io accepted.

Every test runs a real sync against the emulator over loopback HTTP; faults come from the
emulator's own fault injection.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from tests.sync.helpers import PEOPLE

from lockgate.cli import cli
from lockgate.console import Advance, NullConsole
from lockgate.emulator import Emulator, EmulatorConfig, FaultConfig
from lockgate.errors import StepError
from lockgate.project.loader import Project, load_project
from lockgate.state.store import StateStore
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)


EVENTS = """
name: activity
source: warehouse
model: {table: events}
kind: events
identify_by: {id: user_id}
event:
  name: event_name
  timestamp: occurred_at
  id: event_id
properties:
  n: n
"""


def seed_people(factory: ProjectFactory, n: int, plan: str = "pro") -> None:
    factory.sql(
        f"create or replace table people as select i::varchar as id, '{plan}' || i as plan "
        f"from range({n}) t(i)"
    )


def seed_events(factory: ProjectFactory, n: int) -> None:
    factory.sql(
        "create or replace table events as select 'e' || i as event_id, (i % 7)::varchar as "
        "user_id, 'Used' as event_name, now() - interval 1 hour as occurred_at, i as n "
        f"from range({n}) t(i)"
    )


def small_batches(project: Project, *, batch_size: int, concurrency: int) -> Project:
    """The same project sending ``batch_size`` operations per request."""
    yml = project.root / "lockgate.yml"
    yml.write_text(
        yml.read_text() + f"    batch_size: {batch_size}\n    concurrency: {concurrency}\n"
    )
    return load_project(project.root)


class StopsDelivery(NullConsole):
    """A console whose delivery progress raises (as Ctrl-C would) after ``after`` records."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.seen = 0

    @contextlib.contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[Advance]:
        def advance(n: int) -> None:
            if label.startswith("deliver"):
                self.seen += n
                if self.seen >= self.after:
                    raise KeyboardInterrupt

        yield advance


def test_wrong_credentials_in_a_run_of_many_batches_name_the_credentials(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_people(project_factory, 200)
    project = small_batches(project_factory.write({"people": PEOPLE}), batch_size=10, concurrency=2)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "not-the-key")

    with pytest.raises(StepError) as caught:
        run_sync(project, "people", console=NullConsole())
    assert "refused the Track API credentials" in str(caught.value)
    assert "CUSTOMERIO_API_KEY" in str(caught.value)  # the hint
    with StateStore.open(project.state_dir) as store:
        [run] = store.runs()
    assert run.status == "failed" and "credentials" in (run.error or "")
    assert project_factory.emulator.people() == []


# Ctrl-C raised inside the event loop can land while httpcore's anyio is opening a connection:
# anyio's `try_connect` coroutine is then dropped unawaited (its warning, not Lockgate's)
INTERRUPTED_CONNECT = (
    "ignore:Exception ignored in. <coroutine object connect_tcp.<locals>.try_connect"
    ":pytest.PytestUnraisableExceptionWarning"
)


@pytest.mark.filterwarnings(INTERRUPTED_CONNECT)
def test_a_run_stopped_midway_commits_what_was_delivered_and_the_next_sends_the_rest(
    project_factory: ProjectFactory,
) -> None:
    seed_events(project_factory, 200)
    project = small_batches(
        project_factory.write({"activity": EVENTS}), batch_size=10, concurrency=4
    )
    emu = project_factory.emulator

    with pytest.raises(KeyboardInterrupt):
        run_sync(project, "activity", console=StopsDelivery(after=50))
    with StateStore.open(project.state_dir) as store:
        [run] = store.runs()
        ledgered = store.exec_sql('select count(*) from "ledger__activity"')[0][0]
    assert run.status == "failed"
    assert 50 <= ledgered <= len(emu.events()) < 200
    # the report says how long it ran (it said 0.0 s) and `lockgate runs` what it sent before
    # the stop, not the 200 it planned
    took = (run.finished_at - run.started_at).total_seconds()
    assert 0 < run.counts["seconds"] <= took + 1
    assert run.counts["delivered"] == ledgered
    code, out = lockgate(project, "runs")
    (line,) = [row for row in out.splitlines() if run.run_id in row]
    assert [c.strip() for c in line.split("│")[4:7]] == ["failed", f"{ledgered:,}", f"{ledgered:,}"]

    second = run_sync(project, "activity", console=NullConsole())
    assert second.status == "success"
    assert second.changes.already_delivered == ledgered and second.delivered == 200 - ledgered
    events = emu.events()
    assert len(events) == 200 and len({e.id for e in events}) == 200  # none stored twice
    assert run_sync(project, "activity", console=NullConsole()).changes.to_send == 0


def lockgate(project: Project, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*args, "--project", str(project.root)])
    return result.exit_code, result.output


def test_dead_letters_show_in_the_exit_code_runs_and_the_latest_history(
    project_factory: ProjectFactory,
) -> None:
    seed_people(project_factory, 5)
    project = project_factory.write({"people": PEOPLE})
    for plan in ("free", "team"):  # two runs delivered for every person
        assert lockgate(project, "sync", "people")[0] == 0
        seed_people(project_factory, 5, plan=plan)
    broken = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=1.0)))
    with broken.serve() as url:
        project = project_factory.write({"people": PEOPLE}, url=url, retries=1)
        result = CliRunner().invoke(
            cli, ["sync", "people", "--json", "--project", str(project.root)]
        )
    assert result.exit_code == 2
    # the wait for retries is said on stderr (JSON on stdout stays JSON)
    assert "people: a request failed (HTTP 503 from Customer.io" in result.stderr
    assert "retrying in" in result.stderr and "attempt 2 of 2" in result.stderr
    [report] = orjson.loads(result.stdout)
    assert report["status"] == "partial" and report["dead_lettered"] == 5
    code, out = lockgate(project, "runs", "--json")
    assert [(r["status"], r["counts"].get("dead_lettered")) for r in orjson.loads(out)] == [
        ("partial", 5),
        ("success", 0),
        ("success", 0),
    ]

    # the latest calls, not the first ones, when there are more than --limit
    code, out = lockgate(project, "history", "--person", "3", "--limit", "2", "--json")
    latest = orjson.loads(out)
    assert [h["outcome"] for h in latest] == ["delivered", "dead_letter"]
    assert "HTTP 503" in latest[-1]["reason"]


#: a workspace that refuses person `3` per record (a 207 item), as Customer.io does for a
#: record it refuses for a reason Lockgate cannot check in the warehouse row
REFUSES_3 = EmulatorConfig(faults=FaultConfig(reject_people=frozenset({"3"})))


def test_a_rejected_person_is_retried_each_run_and_committed_once_fixed(
    project_factory: ProjectFactory,
) -> None:
    seed_people(project_factory, 6)
    refusing = Emulator(REFUSES_3)
    with refusing.serve() as url:
        project = project_factory.write({"people": PEOPLE}, url=url)
        first = run_sync(project, "people", console=NullConsole())
        assert (first.status, first.delivered, first.rejected_by_api) == ("partial", 5, 1)
        [(key, outcome, reason)] = first.failures
        assert (key, outcome) == ("3", "rejected") and "id `3` is refused" in reason

        again = run_sync(project, "people", console=NullConsole())
        assert (again.changes.to_send, again.rejected_by_api) == (1, 1)  # only the rejected one
    assert sorted(p.id or "" for p in refusing.people()) == ["0", "1", "2", "4", "5"]

    project = project_factory.write({"people": PEOPLE})  # a workspace that takes person 3
    fixed = run_sync(project, "people", console=NullConsole())
    assert (fixed.status, fixed.changes.new, fixed.delivered) == ("success", 1, 1)
    assert run_sync(project, "people", console=NullConsole()).changes.to_send == 0
    person = project_factory.emulator.person(id="3")
    assert person is not None and person.attributes["plan"] == "pro3"
    with StateStore.open(project.state_dir) as store:
        assert [(h["outcome"], h["status"]) for h in store.history("3")] == [
            ("rejected", 207),
            ("rejected", 207),
            ("delivered", 200),
        ]


def test_an_attribute_taken_out_is_cleared_on_the_records_a_partial_run_left_to_send(
    project_factory: ProjectFactory,
) -> None:
    """`clear_removed_attributes`: the run that first sees `plan` taken out sends its clears,
    but Customer.io is down and every record is dead-lettered. The next run sends them again,
    still with the clears: the partial run did not record the new mapping as delivered."""
    seed_people(project_factory, 4)
    project_factory.sql("alter table people add column tier varchar default 'gold'")
    emu = project_factory.emulator
    both = PEOPLE + "  tier: tier\nclear_removed_attributes: true\n"
    run_sync(project_factory.write({"people": both}), "people", console=NullConsole())
    assert all(p.attributes.get("plan") for p in emu.people())

    without_plan = both.replace("  plan: plan\n", "")
    broken = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=1.0)))
    with broken.serve() as url:
        project = project_factory.write({"people": without_plan}, url=url, retries=0)
        down = run_sync(project, "people", console=NullConsole())
    assert (down.status, down.dead_lettered, down.changes.attributes_cleared) == ("partial", 4, 4)

    project = project_factory.write({"people": without_plan})
    again = run_sync(project, "people", console=NullConsole())
    assert (again.status, again.delivered, again.changes.attributes_cleared) == ("success", 4, 4)
    assert not any("plan" in p.attributes for p in emu.people())
    assert all(p.attributes["tier"] == "gold" for p in emu.people())
    assert plan_sync(project, "people", console=NullConsole()).changes.to_send == 0


WITH_JSON = PEOPLE + "  blob: {column: blob, type: json}\n"


def seed_blob(factory: ProjectFactory, *, big: int, plan: str = "p") -> None:
    """People 0..5; person `big` has a json attribute over Customer.io's 1,000-byte value limit."""
    factory.sql(
        f"create or replace table people as select i::varchar as id, '{plan}' || i as plan, "
        f"case when i = {big} then json_object('x', repeat('z', 1500))::varchar "
        "else json_object('x', 1)::varchar end as blob from range(6) t(i)"
    )


def test_an_oversized_json_value_is_rejected_before_sending_and_sent_once_fixed(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io would refuse the json value over 1,000 bytes after a round trip, in words
    that name no column: the mapping rejects its row instead, and the others are delivered."""
    seed_blob(project_factory, big=3)
    project = project_factory.write({"people": WITH_JSON})
    first = run_sync(project, "people", console=NullConsole())
    assert (first.status, first.delivered, first.rejected_by_api) == ("success", 5, 0)
    assert dict(first.changes.rejected_samples) == {
        "3": "column `blob` (field `blob`): value is 1508 bytes as sent, over the 1000-byte "
        "limit of Customer.io; trim it in the model or map its parts to separate attributes"
    }
    emu = project_factory.emulator
    assert sorted(p.id or "" for p in emu.people()) == ["0", "1", "2", "4", "5"]
    assert emu.stats.requests["POST /api/v2/batch"] == {"200": 1}  # nothing refused by the API

    seed_blob(project_factory, big=-1)  # the warehouse row is fixed
    fixed = run_sync(project, "people", console=NullConsole())
    assert (fixed.changes.rejected, fixed.changes.new, fixed.delivered) == (0, 1, 1)
    person = emu.person(id="3")
    assert person is not None and person.attributes["blob"] == {"x": 1}


def seed_big_event(factory: ProjectFactory, size: int) -> None:
    """Events 0..4 of person 1; event 0 carries a `blob` property of ``size`` bytes."""
    factory.sql(
        "create or replace table events as select 'e' || i as event_id, '1' as user_id, "
        "'Used' as event_name, now() - interval 1 hour as occurred_at, i as n, "
        f"case when i = 0 then repeat('x', {size}) end as blob from range(5) t(i)"
    )


def test_an_event_over_32_kb_is_rejected_by_the_mapping_naming_its_size(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io takes at most 32,768 bytes per operation: an event over it is a row the
    mapping rejects (its size and the limit in the reason; the run succeeds, exit 0), not a
    record "rejected by Customer.io" that made the run partial (exit 2) though it was never
    sent. One at the limit exactly is sent."""
    seed_big_event(project_factory, 40_000)
    events = EVENTS + "  blob: blob\n"
    project = project_factory.write({"activity": events})
    [(_, reason)] = plan_sync(project, "activity", console=NullConsole()).changes.rejected_samples
    over = int(reason.split(" bytes as sent")[0].removeprefix("event is "))
    at_limit = 40_000 - (over - 32_768)

    seed_big_event(project_factory, at_limit + 1)
    code, said = lockgate(project, "sync", "activity")
    assert code == 0, said
    with StateStore.open(project.state_dir) as store:
        [run] = store.runs()
        [(stage, key, reason)] = store.rejected(run.run_id, limit=None)
    assert run.status == "success" and run.counts["rejected_by_api"] == 0
    assert run.counts["changes"]["rejected"] == 1 and run.counts["delivered"] == 4
    assert (stage, key) == ("map", "e0")
    assert reason.startswith(
        "event is 32769 bytes as sent, over the 32768-byte limit of Customer.io per operation"
    )
    emu = project_factory.emulator
    assert sorted(e.data["n"] for e in emu.events()) == [1, 2, 3, 4]

    seed_big_event(project_factory, at_limit)  # trimmed to the limit: sent on the next run
    fixed = run_sync(project, "activity", console=NullConsole())
    assert (fixed.status, fixed.changes.rejected, fixed.delivered) == ("success", 0, 1)
    [big] = [e for e in emu.events() if e.data["n"] == 0]
    assert len(big.data["blob"]) == at_limit


def test_the_track_api_key_appears_in_no_report_error_or_history(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, api_key = project_factory.emulator.track_auth
    seed_people(project_factory, 6)
    with Emulator(REFUSES_3).serve() as url:  # one record rejected by the API
        project = project_factory.write({"people": PEOPLE}, url=url)
        said = [lockgate(project, "sync", "people")[1]]
    broken = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=1.0)))
    with broken.serve() as url:  # one run dead-letters everything
        seed_people(project_factory, 6, plan="q")
        project = project_factory.write({"people": PEOPLE}, url=url, retries=0)
        said.append(lockgate(project, "sync", "people", "--json")[1])
    monkeypatch.setenv("CUSTOMERIO_API_KEY", api_key + "-rotated")  # one run is refused
    project = project_factory.write({"people": PEOPLE})
    said.append(lockgate(project, "sync", "people")[1])
    said += [lockgate(project, "runs", "--json")[1]]
    said += [lockgate(project, "history", "--person", str(i), "--json")[1] for i in range(6)]
    said.append((project.state_dir / "runs.json").read_text())
    with StateStore.open(project.state_dir) as store:
        for name in ("runs", "history", "rejected"):
            said.append(repr(store.exec_sql(f"select * from {name}")))

    everything = "\n".join(said)
    assert "dead_letter" in everything and "id `3` is refused" in everything
    assert "credentials" in everything
    assert api_key not in everything


def test_a_password_in_the_track_url_appears_in_no_message_report_or_state(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `track_url` through a proxy may carry its user and password: no error, warning,
    report, `validate --connect` line, runs log or state table shows them (the URL is shown
    as `http://***@host:port/...`, enough to see which host and path answered)."""
    seed_people(project_factory, 6)
    secret = "PROXYPASS123"
    host = (project_factory.emulator.base_url or "").removeprefix("http://")
    said: list[str] = []
    for url in (  # a wrong path (404), then nothing listening (connection errors)
        f"http://proxyuser:{secret}@{host}/prefix",
        f"http://proxyuser:{secret}@127.0.0.1:1",
    ):
        project = project_factory.write({"people": PEOPLE}, url=url, retries=0)
        said.append(lockgate(project, "sync", "people")[1])
        said.append(lockgate(project, "sync", "people", "--json")[1])
        said.append(lockgate(project, "validate", "--connect")[1])
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "wrong")  # refused credentials, through the proxy
    project = project_factory.write({"people": PEOPLE}, url=f"http://proxyuser:{secret}@{host}")
    said.append(lockgate(project, "sync", "people")[1])
    said += [lockgate(project, "runs", "--json")[1], lockgate(project, "runs", "show")[1]]
    said.append((project.state_dir / "runs.json").read_text())
    with StateStore.open(project.state_dir) as store:
        for name in ("runs", "history", "rejected"):
            said.append(repr(store.exec_sql(f"select * from {name}")))

    everything = "\n".join(said)
    assert f"`http://***@{host}/prefix/api/v2/batch` answered HTTP 404" in everything
    assert "connection error" in everything
    assert f"refused the Track API credentials (HTTP 401) at `http://***@{host}`" in everything
    assert secret not in everything and "proxyuser" not in everything


EVENTS_SENT = 60  # 6 requests of 10


@pytest.mark.parametrize(
    ("signum", "exit_code", "said"),
    [(signal.SIGTERM, 143, "Stopped by SIGTERM"), (signal.SIGINT, 130, "Stopped by Ctrl-C")],
    ids=["sigterm", "ctrl-c"],
)
def test_a_stop_signal_lets_the_request_in_flight_finish_and_the_next_run_sends_the_rest(
    project_factory: ProjectFactory, signum: int, exit_code: int, said: str
) -> None:
    """A scheduler stops a job with SIGTERM, a person with Ctrl-C: `lockgate sync` sends no
    new request, waits for the answer to the one in flight, commits what was delivered,
    records the run as interrupted and exits 143 (130); the next run sends the rest, none
    twice (without handling, SIGTERM killed Python on the spot and the run stayed `running`;
    cutting the request in flight off, as both did, left what Customer.io took of it
    unrecorded, and the next run sent it again)."""
    seed_events(project_factory, EVENTS_SENT)
    # Customer.io takes each request at once and answers 0.4 s later: when the signal lands,
    # the request whose events were just seen has not been answered yet
    slow = Emulator(EmulatorConfig(faults=FaultConfig(answer_latency_ms=400)))
    with slow.serve() as url:
        project = small_batches(
            project_factory.write({"activity": EVENTS}, url=url), batch_size=10, concurrency=1
        )
        _stop_with_a_request_in_flight(project, slow, signum, exit_code, said)


def _signal_sync(
    project: Project, emu: Emulator, seen: int, *signums: int, args: tuple[str, ...] = ()
) -> tuple[int, str, str]:
    """Start `lockgate sync activity` (or `sync ARGS`); once the emulator holds ``seen``
    events, send each of ``signums`` (0.2 s apart). Returns the exit code, stdout and
    stderr."""
    victim = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "sync", *(args or ("activity",))]
        + ["--project", str(project.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(emu.events()) < seen and time.monotonic() < deadline and victim.poll() is None:
            time.sleep(0.05)
        assert victim.poll() is None and len(emu.events()) >= seen
        for i, signum in enumerate(signums):
            if i:
                time.sleep(0.2)
            victim.send_signal(signum)
        out, err = victim.communicate(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    return victim.returncode, out, err


def _stop_with_a_request_in_flight(
    project: Project, emu: Emulator, signum: int, exit_code: int, said: str
) -> None:
    code, _, err = _signal_sync(project, emu, 20, signum)
    assert code == exit_code, err
    assert said in err and "Traceback" not in err
    if signum == signal.SIGINT:  # the person at the terminal is told what the wait is for
        assert "Ctrl-C again stops at once" in err
    sent = len(emu.events())
    assert sent < EVENTS_SENT
    with StateStore.open(project.state_dir) as store:
        [run] = store.runs()
        ledgered = store.exec_sql('select count(*) from "ledger__activity"')[0][0]
    assert run.status == "failed" and run.error == "interrupted"
    # the request in flight was answered and recorded: everything Customer.io holds is ledgered
    # (it was not when the signal cut it off: 10 of 20), and nothing more was sent after it
    assert ledgered == sent == 20
    # `lockgate runs` says how far it got: what it had to send and what it delivered
    assert run.counts["changes"]["to_send"] == EVENTS_SENT and run.counts["delivered"] == ledgered

    rest = run_sync(load_project(project.root), "activity", console=NullConsole())
    assert rest.status == "success" and rest.delivered == EVENTS_SENT - ledgered
    events = emu.events()
    assert len(events) == EVENTS_SENT and len({e.id for e in events}) == EVENTS_SENT
    # and no event went out twice
    batches = [r.body for r in emu.request_log() if r.path.endswith("/batch")]
    assert sum(len(b["batch"]) for b in batches) == EVENTS_SENT


@pytest.mark.parametrize(
    ("signum", "exit_code"),
    [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
    ids=["sigterm", "ctrl-c"],
)
def test_sync_json_stopped_by_a_signal_still_prints_each_syncs_outcome(
    project_factory: ProjectFactory, signum: int, exit_code: int
) -> None:
    """A wrapper (Airflow, cron) parses `lockgate sync --json`'s stdout: stopped by SIGTERM or
    Ctrl-C, it still gets the list it gets otherwise, with the stopped run's report as
    recorded (failed, interrupted, what it had to send and what it delivered) and the sync
    never begun as `not started` (it printed nothing at all, exit 143 or 130 alone)."""
    seed_events(project_factory, EVENTS_SENT)
    # a second events sync: named syncs run by kind (events last), in the order typed within it
    later = EVENTS.replace("name: activity", "name: later")
    slow = Emulator(EmulatorConfig(faults=FaultConfig(answer_latency_ms=400)))
    with slow.serve() as url:
        project = small_batches(
            project_factory.write({"activity": EVENTS, "later": later}, url=url),
            batch_size=10,
            concurrency=1,
        )
        code, out, err = _signal_sync(
            project, slow, 20, signum, args=("activity", "later", "--json")
        )
    assert code == exit_code, err
    assert "Traceback" not in err
    with StateStore.open(project.state_dir) as store:
        [run] = store.runs()  # `later` never ran
        ledgered = store.exec_sql('select count(*) from "ledger__activity"')[0][0]
    stopped, never = orjson.loads(out)
    assert (stopped["sync"], stopped["status"], stopped["error"]) == (
        "activity",
        "failed",
        "interrupted",
    )
    assert stopped["run_id"] == run.run_id and run.error == "interrupted"
    assert stopped["changes"]["to_send"] == EVENTS_SENT
    assert stopped["delivered"] == ledgered == len(slow.events()) == 20
    assert never["sync"] == "later" and never["status"] == "failed"
    assert never["error"].startswith("not started")


def test_a_second_ctrl_c_stops_at_once_and_the_next_run_sends_each_event_once(
    project_factory: ProjectFactory,
) -> None:
    """Ctrl-C twice: the run stops without waiting for the answer in flight (exit 130,
    recorded interrupted). What that request carried is not recorded, so the next run sends it
    again; the events' ids keep Customer.io at one of each."""
    seed_events(project_factory, EVENTS_SENT)
    slow = Emulator(EmulatorConfig(faults=FaultConfig(answer_latency_ms=1000)))
    with slow.serve() as url:
        project = small_batches(
            project_factory.write({"activity": EVENTS}, url=url), batch_size=10, concurrency=1
        )
        code, _, err = _signal_sync(project, slow, 1, signal.SIGINT, signal.SIGINT)
        assert code == 130, err
        assert "Ctrl-C again stops at once" in err
        assert "Stopped at once by a second Ctrl-C: the requests in flight were cut off" in err
        assert "Traceback" not in err
        with StateStore.open(project.state_dir) as store:
            [run] = store.runs()
            ledgered = store.exec_sql('select count(*) from "ledger__activity"')[0][0]
        # the first request was cut off before its answer: nothing of it is recorded
        assert run.status == "failed" and run.error == "interrupted" and ledgered == 0

        yml = project.root / "lockgate.yml"  # every request at once: one 1 s wait, not six
        yml.write_text(yml.read_text().replace("concurrency: 1", "concurrency: 8"))
        rest = run_sync(load_project(project.root), "activity", console=NullConsole())
        assert rest.status == "success" and rest.delivered == EVENTS_SENT
        events = slow.events()
        assert len(events) == EVENTS_SENT and len({e.id for e in events}) == EVENTS_SENT


def test_a_sync_stops_when_customerio_is_down_and_the_next_run_sends_everyone_once(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io answering nothing but 503s: after `stop_after_failed_batches` batches in a
    row failed every retry, the run stops (exit 1, recorded failed with how far it got)
    instead of retrying and dead-lettering all 60 batches; the next run, against a healthy
    Customer.io, sends every person once."""
    seed_people(project_factory, 600)
    down = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=1.0)))
    with down.serve() as url:
        project = project_factory.write({"people": PEOPLE}, url=url, retries=1)
        yml = project.root / "lockgate.yml"
        yml.write_text(
            yml.read_text().replace("max_retries: 1", "max_retries: 1\n    batch_size: 10")
        )
        code, _ = lockgate(project, "sync", "people")
        posts = [r for r in down.request_log() if r.path == "/api/v2/batch"]
    assert code == 1
    # the first three failures stop it; at most the batches already in flight (8) were tried
    assert len(posts) <= 2 * (3 + 8)
    code, runs = lockgate(project, "runs", "--json")
    [failed] = orjson.loads(runs)
    error = failed["error"]
    assert failed["status"] == "failed"
    assert (
        "is down or unreachable: 3 batches in a row failed 2 attempts each (last: HTTP 503" in error
    )
    assert "records not delivered wait for the next run" in error
    assert failed["counts"]["delivered"] == 0 and failed["counts"]["changes"]["to_send"] == 600
    assert 0 < failed["counts"]["dead_lettered"] < 600  # only the batches that were tried

    project = project_factory.write({"people": PEOPLE})  # Customer.io is back
    assert lockgate(project, "sync", "people")[0] == 0
    people = project_factory.emulator.people()
    assert sorted(int(p.id) for p in people) == list(range(600))
    assert all(p.attributes == {"plan": f"pro{p.id}"} for p in people)
    assert run_sync(project, "people", console=NullConsole()).changes.to_send == 0


def test_a_run_customerio_being_down_stops_counts_every_record_it_sent(
    project_factory: ProjectFactory,
) -> None:
    """The batch whose failure trips `stop_after_failed_batches` was sent like the ones before
    it: its records are dead letters of the run, in `lockgate runs`' `sent` and the history
    (it was left out: 20 reported of the 30 put on the wire)."""
    seed_people(project_factory, 100)
    down = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=1.0)))
    with down.serve() as url:
        project = small_batches(
            project_factory.write({"people": PEOPLE}, url=url, retries=0),
            batch_size=10,
            concurrency=1,
        )
        assert lockgate(project, "sync", "people")[0] == 1
        posts = [r.body for r in down.request_log() if r.path == "/api/v2/batch"]
    sent = {op["identifiers"]["id"] for body in posts for op in body["batch"]}
    assert len(posts) == 3 and len(sent) == 30  # three batches in a row failed: it stopped
    [failed] = orjson.loads(lockgate(project, "runs", "--json")[1])
    assert failed["status"] == "failed"
    assert (failed["counts"]["delivered"], failed["counts"]["dead_lettered"]) == (0, 30)
    table = lockgate(project, "runs")[1]
    assert "│   30 │         0 │" in table  # sent, delivered
    with StateStore.open(project.state_dir) as store:
        tried = store.exec_sql("select distinct k from history where outcome = 'dead_letter'")
    assert {key for (key,) in tried} == sent


def test_a_workspace_in_another_region_is_found_before_any_record_is_sent(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An EU workspace with Lockgate left on `us`: Customer.io would redirect the records, but
    only after they passed through the US host. The run asks the workspace's region first
    (`GET /api/v1/accounts/region`, no personal data) and stops before the first batch; with
    CUSTOMERIO_REGION=eu it sends everyone, and asks once per process, not per run."""
    seed_people(project_factory, 30)
    # credentials of its own: the region check passed is remembered per process by URL, site
    # id and region, and an earlier test's US emulator may have had this port
    eu = Emulator(EmulatorConfig(region="eu", site_id="eu-site", api_key="eu-key"))
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "eu-site")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "eu-key")
    with eu.serve() as url:
        project = project_factory.write({"people": PEOPLE}, url=url)
        with pytest.raises(StepError) as caught:
            run_sync(project, "people", console=NullConsole())
        assert "the workspace is in the `eu` region" in str(caught.value)
        assert "CUSTOMERIO_REGION=eu" in str(caught.value)
        paths = [r.path for r in eu.request_log()]
        assert paths == ["/api/v1/accounts/region"] and eu.people() == []
        with StateStore.open(project.state_dir) as store:
            [run] = store.runs()
        assert run.status == "failed" and "`eu` region" in (run.error or "")

        monkeypatch.setenv("CUSTOMERIO_REGION", "eu")
        assert run_sync(project, "people", console=NullConsole()).delivered == 30
        seed_people(project_factory, 40)
        assert run_sync(project, "people", console=NullConsole()).delivered == 10
        paths = [r.path for r in eu.request_log()]
        assert paths.count("/api/v1/accounts/region") == 2  # the refused one, then once
        assert len(eu.people()) == 40
