"""Crash safety of `lockgate schedule`: SIGKILL the scheduler in the middle of a round (the
demo's syncs, all due every second, run as `sync --all` runs them), start it again for one
round, then run `sync --all`.

The emulator must equal that of one uninterrupted `sync --all`, no event may be stored twice,
and a further plan must have nothing left to send: a round is crash-safe as a run by hand is,
and the restarted scheduler takes up what the killed round left (its unconfirmed records,
its journal). Seeded (``LOCKGATE_CRASH_SEED``) and bounded in count
(``LOCKGATE_CRASH_TRIALS``).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from tests.sync.crash_harness import (
    Forked,
    clean_run,
    lockgate,
    make_project,
    requests,
    rerun_and_check,
)

from lockgate.emulator import Emulator, EmulatorConfig

USERS = 100
TRIALS = int(os.environ.get("LOCKGATE_CRASH_TRIALS", "1"))
SEED = int(os.environ.get("LOCKGATE_CRASH_SEED", "20261205"))


def scheduled(root: Path) -> Path:
    """Every sync of the demo due every second."""
    for sync in (root / "syncs").glob("*.yml"):
        sync.write_text(sync.read_text() + 'schedule: "* * * * * *"\n')
    return root


def scheduler(root: Path, emu: Emulator, *options: str) -> Forked:
    return lockgate(root, emu, "schedule", *options)


@pytest.mark.slow
@pytest.mark.timeout(max(900, 120 * TRIALS))
def test_sigkill_the_scheduler_mid_round_then_restart_equals_a_clean_run(
    tmp_path: Path,
) -> None:
    config = EmulatorConfig(require_ulid_event_ids=True)
    reference = clean_run(tmp_path, USERS, config)
    sent, expected = reference.requests, reference.state

    rng = random.Random(SEED)
    problems: list[str] = []
    killed = 0
    emu = Emulator(config)
    with emu.serve() as url:
        for trial in range(TRIALS):
            emu.reset()
            root = scheduled(make_project(tmp_path / f"trial{trial}", reference.warehouse, url))
            at = rng.randint(1, sent)
            victim = scheduler(root, emu)
            while victim.poll() is None and requests(emu) < at:
                time.sleep(0.002)
            if victim.poll() is None:
                victim.send_signal(signal.SIGKILL)
                killed += 1
            victim.wait(timeout=60)
            label = f"seed {SEED} trial {trial} (scheduler killed at request {at})"
            again = scheduler(root, emu, "--cycles", "1")
            _, err = again.communicate(timeout=300)
            if again.returncode != 0:
                problems.append(f"{label}: the restarted round failed: {err.decode()[-800:]}")
                continue
            problems += rerun_and_check(label, root, emu, expected)
    assert problems == [], "\n".join(problems)
    assert killed == TRIALS
