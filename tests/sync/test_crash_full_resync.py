"""Crash safety of `lockgate sync SYNC --full-resync`: SIGKILL it while it sends, then run
`lockgate sync --all` without the flag.

A first, clean run of the demo project (people under `mode: mirror` with
`delete_removed: true`) is made once. Customer.io then drifts from it: some people's attributes
are changed there by hand, which only a full resync repairs (the snapshot says they were
delivered as they are). The warehouse changes too (the second act of
``test_crash_incremental``: updates, people who leave the model, new events). Each trial
starts from a copy of that state and workspace, kills `sync customer_profile --full-resync`
once a seeded number of requests has arrived, and runs `sync --all` (no flag) to completion.
The resync the killed run started must complete: the emulator must equal that of an
uninterrupted full resync followed by `sync --all` (every drifted person repaired, those who
left deleted, no person that is in the model deleted), no event may be stored twice, and a
further plan must have nothing left to send. Seeded (``LOCKGATE_CRASH_SEED``) and bounded in count
(``LOCKGATE_CRASH_TRIALS``).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import httpx
import pytest
from tests.sync.crash_harness import (
    Forked,
    emulator_state,
    lockgate,
    make_project,
    requests,
    rerun_and_check,
    sync_all,
)
from tests.sync.test_crash_incremental import (
    change_more_rows,
    copy_project,
    mirror,
    replay,
)

from lockgate.demo import warehouse
from lockgate.emulator import Emulator, EmulatorConfig

USERS = 300
TRIALS = int(os.environ.get("LOCKGATE_CRASH_TRIALS", "1"))
SEED = int(os.environ.get("LOCKGATE_CRASH_SEED", "20261205"))
DRIFTED = [str(i) for i in range(1, USERS + 1, 7)]
"""People whose attributes are changed in Customer.io by hand after the first run."""


def resync(root: Path, emu: Emulator) -> Forked:
    return lockgate(root, emu, "sync", "customer_profile", "--full-resync")


def drift(emu: Emulator) -> None:
    """Change some people in Customer.io as a hand edit would (not through Lockgate)."""
    with httpx.Client(base_url=emu.base_url or "", auth=emu.track_auth, timeout=30) as client:
        for person in DRIFTED:
            answer = client.put(
                f"/api/v1/customers/{person}",
                json={"plan_tier": "drifted", "seats": 9999, "first_name": "Hand Edited"},
            )
            assert answer.status_code == 200, answer.text


@pytest.mark.slow
@pytest.mark.timeout(max(900, 120 * TRIALS))
def test_sigkill_a_full_resync_then_a_plain_run_completes_it(tmp_path: Path) -> None:
    config = EmulatorConfig(require_ulid_event_ids=True)
    base = tmp_path / "base"
    reference_emu = Emulator(config)
    with reference_emu.serve() as reference_url:
        make_project(base, base / "warehouse.duckdb", reference_url)
        warehouse.build(base / "warehouse.duckdb", users=USERS)
        mirror(base)
        first = sync_all(base, reference_emu)
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
        drift(reference_emu)
        workspace = [r for r in reference_emu.request_log() if r.method != "GET"]
        drifted = emulator_state(reference_emu)
        warehouse.change_a_few_rows(base / "warehouse.duckdb")
        change_more_rows(base / "warehouse.duckdb")

        # the reference: the full resync, uninterrupted, from the drifted workspace
        reference = copy_project(base, tmp_path / "reference", reference_url, reference_url)
        before = requests(reference_emu)
        done = resync(reference, reference_emu)
        assert done.wait(timeout=120) == 0, done.stderr.read() if done.stderr else ""
        sent = requests(reference_emu) - before
        everything = sync_all(reference, reference_emu)
        assert everything.wait(timeout=120) == 0
        expected = emulator_state(reference_emu)
    people = expected[0]
    assert drifted[0]["1"]["plan_tier"] == "drifted" and "40" in drifted[0]
    assert "40" not in people and "41" not in people and "42" in people
    assert all(people[p].get("plan_tier") != "drifted" for p in DRIFTED if p in people)
    assert sent > 10

    rng = random.Random(SEED)
    at = [rng.randint(1, sent) for _ in range(TRIALS)]
    problems: list[str] = []
    killed = 0
    emu = Emulator(config)
    with emu.serve() as url:
        for trial in range(TRIALS):
            emu.reset()
            replay(emu, workspace)
            assert emulator_state(emu) == drifted
            root = copy_project(base, tmp_path / f"trial{trial}", reference_url, url)
            start = requests(emu)
            victim = resync(root, emu)
            while victim.poll() is None and requests(emu) - start < at[trial]:
                time.sleep(0.002)
            if victim.poll() is None:
                victim.send_signal(signal.SIGKILL)
                killed += 1
            victim.wait(timeout=60)
            label = f"seed {SEED} trial {trial} (full resync killed at request {at[trial]})"
            problems += rerun_and_check(label, root, emu, expected)
    assert problems == [], "\n".join(problems)
    assert killed >= TRIALS // 2
