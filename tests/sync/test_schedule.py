"""`lockgate schedule`: each sync with a `schedule:` runs when it is due, until stopped."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lockgate.cli import cli
from lockgate.emulator import Emulator, EmulatorConfig, FaultConfig
from lockgate.errors import LockgateError

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

EVERY_2S = '"* * * * * */2"'  # cron with seconds: a sixth field

PROFILE = f"""
name: profile
source: warehouse
model: {{table: users}}
kind: people
primary_key: user_id
identify_by: {{id: user_id}}
attributes: [plan]
schedule: {EVERY_2S}
"""

ORDERS = f"""
name: orders
source: warehouse
model: {{table: orders}}
kind: events
identify_by: {{id: user_id}}
event: {{name: {{value: Order Placed}}, id: order_id}}
backfill: {{older: send}}
schedule: {EVERY_2S}
"""

LEADS = """
name: leads
source: warehouse
model: {sql: "select user_id + 100 as user_id, plan from users"}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: [plan]
"""

DATA = """
create or replace table users as
select i as user_id, 'pro' as plan from range(1, 21) t(i);
create or replace table orders as select 'o' || i as order_id, 1 + i % 20 as user_id
from range(50) t(i);
"""


def schedule(project: Any, *args: str) -> Any:
    return CliRunner().invoke(
        cli, ["schedule", "--project", str(project.root), *args], catch_exceptions=False
    )


def test_the_scheduled_syncs_run_when_due_in_order_and_the_others_do_not(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE, "orders": ORDERS, "leads": LEADS})

    beat = project.root / "heartbeat.json"
    result = schedule(project, "--cycles", "2", "--json", "--heartbeat", str(beat))
    assert result.exit_code == 0, result.output
    # a log collector reads stdout as JSON lines: every line is one, no table before them
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    # the liveness file, as the last round left it: waiting again, the next run ahead of it
    last = json.loads(beat.read_text())
    assert (last["state"], last["pid"]) == ("waiting", os.getpid())
    assert datetime.fromisoformat(last["next_run"]) > datetime.fromisoformat(last["at"])
    # two rounds; in each, people before their events (as `sync --all` orders them)
    assert [r["sync"] for r in runs] == ["profile", "orders", "profile", "orders"]
    assert [(r["status"], r["delivered"]) for r in runs] == [
        ("success", 20),
        ("success", 50),
        ("success", 0),
        ("success", 0),
    ]
    due = [datetime.fromisoformat(r["scheduled_at"]) for r in runs]
    assert due[0] == due[1] < due[2] == due[3]
    assert all(d.second % 2 == 0 and d.microsecond == 0 for d in due)
    assert len(emu.people()) == 20 and len(emu.events()) == 50  # nothing of `leads`

    listed = schedule(project, "--list")
    assert listed.exit_code == 0
    assert "profile" in listed.stdout and "leads" not in listed.stdout
    listed = schedule(project, "--list", "--json")
    assert listed.exit_code == 0
    entries = json.loads(listed.stdout)["syncs"]  # one document, nothing but it
    assert sorted((e["sync"], e["schedule"]) for e in entries) == [
        ("orders", "* * * * * */2"),
        ("profile", "* * * * * */2"),
    ]
    next_runs = {datetime.fromisoformat(e["next_run"]) for e in entries}
    assert {str(n.tzinfo) for n in next_runs} == {"UTC"} and len(next_runs) == 1


class TestARunLongerThanItsInterval:
    @pytest.fixture
    def customerio_emulator_config(self) -> EmulatorConfig:
        # each request answered after 1.2 s: a run takes longer than its 1-second interval
        return EmulatorConfig(faults=FaultConfig(latency_ms=1200))

    def test_skips_the_slots_it_overran(self, project_factory: ProjectFactory) -> None:
        project_factory.sql(DATA)
        every_second = PROFILE.replace(EVERY_2S, '"* * * * * *"')
        project = project_factory.write({"profile": every_second})

        result = schedule(project, "--cycles", "2", "--json")
        assert result.exit_code == 0, result.output
        runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert [r["delivered"] for r in runs] == [20, 0]
        # the first run took over two seconds: the next one is due at the first slot after
        # it ended, not at each slot it overran, one after another
        said = " ".join(result.stderr.split())
        assert "profile: skipped" in said and "due while this one ran" in said
        first, second = (datetime.fromisoformat(r["scheduled_at"]) for r in runs)
        assert (second - first).total_seconds() >= 2


def test_a_round_waits_for_a_sync_run_by_hand_that_holds_the_state(
    project_factory: ProjectFactory,
) -> None:
    """A `lockgate sync` by hand holds the project state when a round is due: the round waits
    for it (and says who holds it) instead of failing its syncs until their next slot."""
    from lockgate.state.store import StateStore

    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE})
    held = StateStore.open(project.state_dir)  # as a run by hand holds it
    released: list[datetime] = []

    def release_it() -> None:
        released.append(datetime.now(UTC))
        held.close()

    release = threading.Timer(3.0, release_it)
    release.start()
    try:
        result = schedule(project, "--cycles", "1", "--json")
    finally:
        release.cancel()
        held.close()
    assert result.exit_code == 0, result.output
    [run] = [json.loads(line) for line in result.stdout.splitlines()]
    assert (run["status"], run["delivered"]) == ("success", 20)
    said = " ".join(result.stderr.split())
    assert f"in use by pid {os.getpid()}: waiting for it" in said
    # the run started when it got the state: its id, `started_at` and seconds agree, and
    # none of them counts the wait
    listed = CliRunner().invoke(cli, ["runs", "--json", "--project", str(project.root)])
    [row] = json.loads(listed.stdout)
    started = datetime.fromisoformat(row["started_at"])
    finished = datetime.fromisoformat(row["finished_at"])
    assert started >= released[0]
    assert row["run_id"] == run["run_id"] and run["run_id"].startswith(
        started.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    )
    assert abs((finished - started).total_seconds() - run["seconds"]) < 0.5


def test_a_project_without_schedules_says_how_to_add_one(project_factory: ProjectFactory) -> None:
    project_factory.sql(DATA)
    project = project_factory.write({"leads": LEADS})
    with pytest.raises(LockgateError, match="no sync of this project has a `schedule:`") as e:
        CliRunner().invoke(
            cli,
            ["schedule", "--project", str(project.root)],
            catch_exceptions=False,
            standalone_mode=False,
        )
    assert "*/15 * * * *" in (e.value.hint or "")


def test_sigterm_between_runs_stops_the_scheduler_at_once_and_cleanly(
    project_factory: ProjectFactory, tmp_path: Path
) -> None:
    project_factory.sql(DATA)
    yearly = PROFILE.replace(EVERY_2S, '"0 0 1 1 *"')  # never due while the test runs
    project = project_factory.write({"profile": yearly})
    env = {**os.environ, "CUSTOMERIO_TRACK_URL": project_factory.emulator.base_url or ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "schedule", "--project", str(project.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        # wait (at most 30 s) until it shows its timetable, then stop it while it sleeps
        with selectors.DefaultSelector() as waiting:
            waiting.register(process.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
            assert waiting.select(timeout=30), "the scheduler printed nothing in 30 s"
        shown = [process.stdout.readline()]  # type: ignore[union-attr]
        while "└" not in shown[-1] and shown[-1]:  # the whole timetable
            shown.append(process.stdout.readline())  # type: ignore[union-attr]
        assert "scheduled syncs" in shown[0] and "profile" in "".join(shown)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "stopped by SIGTERM between runs; nothing was running" in " ".join(err.split())


def test_sigterm_while_a_round_waits_for_the_state_stops_as_between_runs(
    project_factory: ProjectFactory,
) -> None:
    """A round due while a `lockgate sync` by hand holds the state waits for it (up to 10
    minutes): a SIGTERM then (a rolling deploy) stops the scheduler as between runs, exit 0.
    It printed a failed, interrupted run's line for a run that never began (none is in
    `lockgate runs`) and exited 143."""
    from lockgate.state.store import StateStore

    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE})
    held = StateStore.open(project.state_dir)  # as a run by hand holds it
    env = {**os.environ, "CUSTOMERIO_TRACK_URL": project_factory.emulator.base_url or ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "schedule", "--json", "--project", str(project.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        # wait (at most 30 s) until the round says it waits for the state, then stop it
        with selectors.DefaultSelector() as waiting:
            waiting.register(process.stderr, selectors.EVENT_READ)  # type: ignore[arg-type]
            said = ""
            while "waiting for it" not in said:
                assert waiting.select(timeout=30), f"not waiting for the state in 30 s: {said}"
                line = process.stderr.readline()  # type: ignore[union-attr]
                assert line, said
                said += line
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        held.close()
    assert process.returncode == 0, err
    assert out == ""  # no line for a run that never began
    warned = " ".join(err.split())
    assert "stopped by SIGTERM while waiting for the project state; nothing was running" in warned
    listed = CliRunner().invoke(cli, ["runs", "--json", "--project", str(project.root)])
    assert json.loads(listed.stdout) == []
    assert project_factory.emulator.people() == []


def test_sigterm_during_a_run_prints_the_stopped_runs_line_with_json(
    project_factory: ProjectFactory,
) -> None:
    """`lockgate schedule --json` is read line by line by a log collector: a SIGTERM during
    a run ends the stream with that run's line, as recorded (failed, interrupted, what it
    delivered before it stopped), not with nothing."""
    project_factory.sql(
        "create or replace table users as select i as user_id, 'pro' as plan from range(1, 61) t(i)"
    )
    slow = Emulator(EmulatorConfig(faults=FaultConfig(answer_latency_ms=400)))
    with slow.serve() as url:
        project = project_factory.write({"profile": PROFILE}, url=url)
        yml = project.root / "lockgate.yml"
        yml.write_text(yml.read_text() + "    batch_size: 10\n    concurrency: 1\n")
        process = subprocess.Popen(
            [sys.executable, "-m", "lockgate", "schedule", "--json"]
            + ["--project", str(project.root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while len(slow.people()) < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
        delivered = len(slow.people())
    assert process.returncode == 143, err
    [line] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert (line["sync"], line["status"], line["error"]) == ("profile", "failed", "interrupted")
    assert line["delivered"] == delivered and 20 <= delivered < 60
    assert line["changes"]["to_send"] == 60 and "scheduled_at" in line


def test_the_scheduler_warns_once_of_two_syncs_writing_one_attribute(
    project_factory: ProjectFactory,
) -> None:
    """`profile` (scheduled) and `leads` both write `plan` unacknowledged: `validate` refuses
    it, and `sync` and `plan` warn of it once per command, but the scheduler, where a
    project runs in production, ran `profile` round after round without a word. It warns
    once (not every round), and runs, as `lockgate sync` does (docs/guardrails.md)."""
    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE, "leads": LEADS})
    result = schedule(project, "--cycles", "2", "--json")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    warning = (
        "attribute `plan` of destination `customerio` is written by sync `leads` "
        "(syncs/leads.yml) and sync `profile` (syncs/profile.yml): each run overwrites"
    )
    assert said.count(warning) == 1, said
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["sync"], r["status"]) for r in runs] == [("profile", "success")] * 2


def test_the_scheduler_refuses_to_start_when_a_scheduled_sync_could_not_send(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its environment does not change while it runs: a key not set would fail every round,
    the first of them maybe hours away. It says so at once, and runs nothing."""
    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE, "orders": ORDERS, "leads": LEADS})
    monkeypatch.delenv("CUSTOMERIO_API_KEY")
    with pytest.raises(LockgateError) as refused:
        CliRunner().invoke(
            cli,
            ["schedule", "--cycles", "1", "--project", str(project.root)],
            catch_exceptions=False,
            standalone_mode=False,
        )
    assert str(refused.value).startswith(
        "lockgate.yml:7: syncs `orders`, `profile` could not send: destination `customerio`: "
        "environment variable `CUSTOMERIO_API_KEY` (for `api_key`) is not set"
    )
    assert "export CUSTOMERIO_API_KEY=" in (refused.value.hint or "")
    assert not (project.state_dir / "state.duckdb").exists()
    assert project_factory.emulator.people() == []


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        # saved by an editor as Latin-1: was a UnicodeDecodeError that ended the scheduler
        (
            lambda body: body.encode() + b"# caf\xe9\n",
            "syncs/profile.yml:10: the file is not UTF-8 text (byte 0xe9)",
        ),
        # a valid cron expression that is never due: croniter's error ended the scheduler
        (
            lambda body: body.replace(EVERY_2S, '"0 0 30 2 *"').encode(),
            "syncs/profile.yml:9: `0 0 30 2 *` is never due",
        ),
    ],
)
def test_an_edit_that_does_not_load_keeps_the_last_good_project_running(
    project_factory: ProjectFactory,
    capsys: pytest.CaptureFixture[str],
    edit: Any,
    said: str,
) -> None:
    """Each round reloads the project (`_reload`, then the timetable of what loaded); an edit
    that does not load is reported and the last good project runs on, its sync still due when
    it was."""
    from lockgate.cli.schedule import _reload
    from lockgate.console import RichConsole
    from lockgate.sync.schedule import Timetable

    project = project_factory.write({"profile": PROFILE})
    table = Timetable.of(project, datetime.now(UTC))
    due_at = table.entries["profile"].next_at
    (project.root / "syncs" / "profile.yml").write_bytes(edit(PROFILE))

    kept = _reload(project.root, project, RichConsole())
    table = Timetable.of(kept, datetime.now(UTC), before=table)
    assert kept is project and table.entries["profile"].next_at == due_at
    warned = " ".join(capsys.readouterr().err.split())
    assert f"project not reloaded, the last good one runs: {said}" in warned


def test_a_deploy_that_replaces_the_syncs_folder_does_not_stop_the_scheduler(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy that replaces `syncs/` (removed, then copied back) can leave a round's reload
    with no scheduled sync. The scheduler stopped there with exit 0, which a service manager
    restarting only failures took as done: no sync ran again. It now waits, reloading the
    project, and runs the syncs once they are back."""
    import lockgate.cli.schedule as scheduler

    monkeypatch.setattr(scheduler, "HEARTBEAT_SECONDS", 0.2)  # the idle reload, sped up
    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE})
    syncs, away = project.root / "syncs", project.root / "syncs.deploying"
    beat = project.root / "heartbeat.json"
    deployed = threading.Event()

    def deploy() -> None:
        """After the first round: take `syncs/` away for two slots, then put it back."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                state = json.loads(beat.read_text())["state"]
            except (OSError, ValueError):
                state = None
            if state == "waiting" and len(project_factory.emulator.people()) == 20:
                break
            time.sleep(0.02)
        syncs.rename(away)
        time.sleep(5)  # at least two 2 s slots pass with nothing scheduled
        away.rename(syncs)
        deployed.set()

    worker = threading.Thread(target=deploy, daemon=True)
    worker.start()
    result = CliRunner().invoke(
        cli,
        ["schedule", "--project", str(project.root), "--cycles", "2", "--json"]
        + ["--heartbeat", str(beat)],
        catch_exceptions=False,
    )
    worker.join(timeout=60)
    assert deployed.is_set()
    assert result.exit_code == 0, result.output
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["sync"], r["status"]) for r in runs] == [("profile", "success")] * 2
    # the second round came after the deploy, not during it
    first, second = (datetime.fromisoformat(r["scheduled_at"]) for r in runs)
    assert (second - first).total_seconds() >= 4
    said = " ".join(result.stderr.split())
    assert "no sync of the project has a `schedule:` any more: waiting for one" in said


def test_a_run_out_of_state_memory_fails_alone_and_the_next_round_runs(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB's out-of-memory error is no LockgateError: it ended the scheduler in the first
    round, and with it every sync of the project, until someone restarted it. It fails its
    run (recorded, with the setting to raise) and the scheduler goes on: the other syncs, and
    the next round."""
    from lockgate.state.store import StateStore

    project_factory.sql(DATA)
    project = project_factory.write({"profile": PROFILE, "orders": ORDERS})
    # what a run killed while sending 200,000 events leaves: keeping their ids runs out of
    # 16 MB (tests/sync/test_memory_limit.py), a failure of `orders` alone, every round
    with StateStore.open(project.state_dir) as store:
        store.ensure_sync_tables("orders")
        store.exec_sql(
            'insert into "sending_events__orders" '
            "select 'e' || i, 0, hash(i), hash(-i) from range(200000) t(i)"
        )
    monkeypatch.setenv("LOCKGATE_STATE_MEMORY_LIMIT", "16MB")
    monkeypatch.setenv("LOCKGATE_STATE_THREADS", "1")

    result = schedule(project, "--cycles", "2", "--json")
    assert result.exit_code == 1, result.output
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["sync"], r["status"]) for r in runs] == [
        ("profile", "success"),
        ("orders", "failed"),
        ("profile", "success"),
        ("orders", "failed"),
    ]
    assert runs[1]["error"].startswith("the state ran out of memory (16MB): Out of Memory Error")
    assert "hint: set LOCKGATE_STATE_MEMORY_LIMIT to a larger size" in runs[1]["error"]
    assert len(project_factory.emulator.people()) == 20
    listed = CliRunner().invoke(cli, ["runs", "--json", "--project", str(project.root)])
    recorded = [(r["sync"], r["status"]) for r in json.loads(listed.stdout)]
    assert sorted(recorded) == [("orders", "failed")] * 2 + [("profile", "success")] * 2


def test_rounds_after_rounds_leave_no_open_files_threads_or_spill_folders(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lockgate schedule` runs for weeks in one process: what a round opens (the state, its
    connection, HTTP clients, the committer's thread, spill folders) is closed with it, a
    failed round (a guardrail edited in) included. Drives what the loop does each round
    (reload, timetable, run the due syncs) with the slot come, rather than waiting for it."""
    from lockgate.cli.schedule import _reload, _round
    from lockgate.console import RichConsole
    from lockgate.sync.schedule import Timetable

    def resources() -> tuple[int, int, list[str]]:
        state = sorted(p.name for p in project.state_dir.iterdir())
        return len(os.listdir("/proc/self/fd")), threading.active_count(), state

    project = project_factory.write({"profile": PROFILE})
    sync_file = project.root / "syncs" / "profile.yml"
    console = RichConsole()
    table = Timetable.of(project, datetime.now(UTC))
    seen, codes = [], []
    for round_ in range(8):
        project_factory.sql(
            f"create or replace table users as select i as user_id, 'plan {round_}' as plan "
            "from range(1, 21) t(i)"
        )
        guarded = round_ % 4 == 3  # every person changes: over the limit, nothing is sent
        sync_file.write_text(PROFILE + ("guardrails: {max_changed: 1}\n" if guarded else ""))
        project = _reload(project.root, project, console)
        table = Timetable.of(project, datetime.now(UTC), before=table)
        table.entries["profile"].next_at = datetime.now(UTC)  # its slot has come
        codes.append(_round(project, table.due(datetime.now(UTC)), table, console, True))
        seen.append(resources())
    assert codes == [0, 0, 0, 1] * 2
    assert seen[-1] == seen[2], seen  # nothing left open by round after round
    assert seen[-1][2] == ["runs.json", "state.duckdb", "state.lock"]
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in runs] == ["success", "success", "success", "failed"] * 2
    assert project_factory.emulator.person(id="1").attributes["plan"] == "plan 6"


HANDOVER = f"""
name: {{name}}
source: warehouse
model: {{{{table: {{name}}}}}}
kind: people
primary_key: user_id
identify_by: {{{{id: user_id, email: email}}}}
attributes: {{{{{{name}}_plan: plan}}}}
schedule: {EVERY_2S}
"""

VISITS = f"""
name: visits
source: warehouse
model: {{table: visits}}
kind: events
identify_by: {{id: user_id}}
event: {{name: {{value: Visited}}, id: visit_id}}
backfill: {{older: send}}
schedule: {EVERY_2S}
"""


def _handover(factory: ProjectFactory, *extra: str) -> Any:
    """`a_sync` and `b_sync`, both due in each round (with ``extra`` syncs): u1 of `b_sync`
    was delivered with e1@x.io; the warehouse now gives u1 e5@x.io and gives e1 to a new
    u2 of `a_sync`. `a_sync` runs first in a round and holds u2 back while u1 holds e1
    (tests/sync/test_email_across_syncs.py)."""
    syncs = {n: HANDOVER.format(name=n) for n in ("a_sync", "b_sync")}
    syncs.update({"visits": VISITS, "c_sync": HANDOVER.format(name="c_sync")})
    factory.sql(
        "create or replace table a_sync as select 'u3' as user_id, 'e3@x.io' as email, "
        "'free' as plan; "
        "create or replace table b_sync as select 'u1' as user_id, 'e1@x.io' as email, "
        "'gold' as plan; "
        "create or replace table c_sync as select 'u9' as user_id, 'e9@x.io' as email, "
        "'free' as plan; "
        "create or replace table visits as select 'v1' as visit_id, 'u3' as user_id"
    )
    project = factory.write({n: syncs[n] for n in ("a_sync", "b_sync", *extra)})
    first = CliRunner().invoke(cli, ["sync", "--all", "--project", str(project.root)])
    assert first.exit_code == 0, first.output
    factory.sql(
        "insert into a_sync values ('u2', 'E1@x.io', 'pro'); "
        "update b_sync set email = 'e5@x.io', plan = 'team'; "
        "insert into visits values ('v2', 'u2')"
    )
    return project


def _one_round(project: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int | None, list[Any]]:
    """One round of `lockgate schedule --json` with every sync's slot come (as the loop runs
    it, without waiting for the slot); its exit code and JSON lines."""
    from lockgate.cli.schedule import _round
    from lockgate.console import RichConsole
    from lockgate.sync.schedule import Timetable

    capsys.readouterr()
    table = Timetable.of(project, datetime.now(UTC))
    for entry in table.entries.values():
        entry.next_at = datetime.now(UTC)
    code = _round(project, table.due(datetime.now(UTC)), table, RichConsole(quiet=True), True)
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _emails(emu: Emulator) -> dict[str | None, str | None]:
    return {p.id: p.email for p in emu.people()}


def test_a_round_runs_the_follow_up_that_completes_a_handover_between_its_syncs(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both syncs of a handover due in one round: the round runs `a_sync` once more after the
    people syncs (a follow-up, as `sync --all` does), so u2 takes e1 in that round, not a
    slot later, and the events sync after it finds u2."""
    emu = project_factory.emulator
    project = _handover(project_factory, "visits")

    code, runs = _one_round(project, capsys)
    assert code == 0, runs
    assert [(r["sync"], r["status"]) for r in runs] == [
        ("a_sync", "success"),
        ("b_sync", "success"),
        ("a_sync", "success"),
        ("visits", "success"),
    ]
    assert runs[0]["changes"]["rejected"] == 1  # u2, held back while u1 had e1
    assert runs[2]["follow_up_of"] == runs[0]["run_id"]
    assert [r["follow_up_of"] for r in runs[:2] + runs[3:]] == [None] * 3
    assert runs[2]["delivered"] == 1
    assert _emails(emu) == {"u1": "e5@x.io", "u2": "E1@x.io", "u3": "e3@x.io"}
    assert emu.person(id="u2").attributes.get("a_sync_plan") == "pro"
    assert [a.message for a in emu.activity_log() if a.kind == "attribute update failure"] == []

    listed = CliRunner().invoke(cli, ["runs", "--project", str(project.root)])
    assert listed.exit_code == 0, listed.output
    assert "success (follow-up)" in listed.stdout


def test_a_failing_sync_in_the_round_stops_no_follow_up_of_the_others(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`c_sync` fails (its table is gone): the others run, the handover completes by its
    follow-up, and the round's exit code is 1."""
    emu = project_factory.emulator
    project = _handover(project_factory, "c_sync")
    project_factory.sql("drop table c_sync")

    code, runs = _one_round(project, capsys)
    assert code == 1
    assert [(r["sync"], r["status"], r.get("follow_up_of") is not None) for r in runs] == [
        ("a_sync", "success", False),
        ("b_sync", "success", False),
        ("c_sync", "failed", False),
        ("a_sync", "success", True),
    ]
    assert "c_sync" in runs[2]["error"]
    assert _emails(emu)["u2"] == "E1@x.io"


def test_a_giver_that_fails_frees_nothing_and_runs_no_follow_up(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`b_sync` fails before it moves u1 off e1: `a_sync` keeps u2 held back (no follow-up,
    which would send u2 while u1 still has e1); once `b_sync` runs again, the next round
    completes the handover."""
    emu = project_factory.emulator
    project = _handover(project_factory)
    project_factory.sql("alter table b_sync rename to b_gone")

    code, runs = _one_round(project, capsys)
    assert code == 1
    assert [(r["sync"], r["status"]) for r in runs] == [("a_sync", "success"), ("b_sync", "failed")]
    assert runs[0]["changes"]["rejected"] == 1
    assert _emails(emu) == {"u1": "e1@x.io", "u3": "e3@x.io"}

    project_factory.sql("alter table b_gone rename to b_sync")
    code, runs = _one_round(project, capsys)
    assert code == 0, runs
    assert [(r["sync"], r["follow_up_of"] is not None) for r in runs] == [
        ("a_sync", False),
        ("b_sync", False),
        ("a_sync", True),
    ]
    assert _emails(emu) == {"u1": "e5@x.io", "u2": "E1@x.io", "u3": "e3@x.io"}
