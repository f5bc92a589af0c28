"""A `--full-resync` killed once past its guard: the next run, without the flag, completes it.

Past the guard a full resync forgets what the snapshot says was delivered, so that what it
does not deliver is sent again. Killed from there on (before or after its first record went
out), the records it forgot must stay known to the state: the next plain run sends every one
of them again, undoes (`mirror`) one whose row has left meanwhile, and measures its guardrails
against them, not against the few the resync kept (a false `max_removed` of 100% stopped it).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from tests.sync.helpers import PEOPLE
from tests.sync.test_unconfirmed import plan_of, seed_people

from lockgate.console import NullConsole
from lockgate.destinations.customerio.region import REGION_PATH
from lockgate.emulator import FaultConfig
from lockgate.project.loader import load_project
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

MIRROR = PEOPLE + "mode: mirror\ndelete_removed: true\nguardrails: {max_removed: 10%}\n"


def killed_full_resync(root: Path, emu: Any, when: Callable[[], bool]) -> None:
    """`lockgate sync people --full-resync` in a process of its own, against a Customer.io
    that answers each request 3 s after it applied it; SIGKILLed once ``when()`` holds."""
    emu.set_faults(FaultConfig(answer_latency_ms=3000))
    victim = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "sync", "people", "--full-resync"]
        + ["--project", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not when() and time.monotonic() < deadline and victim.poll() is None:
            time.sleep(0.01)
        assert when(), "the resync never got that far"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL, "the resync ended before it could be killed"
    emu.set_faults(FaultConfig())


def drifted_workspace(factory: ProjectFactory) -> tuple[Any, Any]:
    """40 people delivered by a `mirror` sync that deletes; then each one's `plan` changed in
    Customer.io by hand (only a full resync repairs it), and person 39's row leaves."""
    seed_people(factory, 40)
    project = factory.write({"people": MIRROR})
    emu = factory.emulator
    assert run_sync(project, "people", console=NullConsole()).status == "success"
    with httpx.Client(base_url=emu.base_url, auth=emu.track_auth) as client:
        for person in range(40):
            answer = client.put(f"/api/v1/customers/{person}", json={"plan": "hand edited"})
            assert answer.status_code == 200
    seed_people(factory, 39)
    return project, emu


def region_asked(emu: Any) -> Callable[[], bool]:
    """Whether a run since now asked Customer.io for its region: past the guard and the
    snapshot's reset, before the first record is written ahead and sent."""

    def asked() -> int:
        return sum(r.path == REGION_PATH for r in emu.request_log())

    before = asked()
    return lambda: asked() > before


def test_a_full_resync_killed_before_its_first_record_is_completed_by_the_next_run(
    project_factory: ProjectFactory,
) -> None:
    project, emu = drifted_workspace(project_factory)
    killed_full_resync(project.root, emu, region_asked(emu))
    project_factory.sql("delete from people where id = '38'")  # leaves after the kill

    again = run_sync(load_project(project.root), "people", console=NullConsole())
    assert again.status == "success"
    assert [plan_of(project_factory, str(p)) for p in range(38)] == [f"pro{p}" for p in range(38)]
    assert emu.person(id="38") is None and emu.person(id="39") is None  # both deleted
    assert plan_sync(project, "people", console=NullConsole()).changes.to_send == 0


def test_a_full_resync_killed_with_records_in_flight_is_completed_by_the_next_run(
    project_factory: ProjectFactory,
) -> None:
    project, emu = drifted_workspace(project_factory)
    killed_full_resync(project.root, emu, lambda: plan_of(project_factory, "0") == "pro0")
    project_factory.sql("delete from people where id = '38'")

    again = run_sync(load_project(project.root), "people", console=NullConsole())
    assert again.status == "success"
    assert [plan_of(project_factory, str(p)) for p in range(38)] == [f"pro{p}" for p in range(38)]
    assert emu.person(id="38") is None and emu.person(id="39") is None
    assert plan_sync(project, "people", console=NullConsole()).changes.to_send == 0
