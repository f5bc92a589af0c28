"""Crash safety: SIGKILL `lockgate sync` at random points, re-run, compare with a clean run.

Each trial starts `lockgate sync --all` in a subprocess against an emulator on loopback,
kills it with SIGKILL after a random delay (anywhere from start-up through extraction,
diffing, delivery and commit), then runs it again to completion. The emulator's final
people, events, objects and relationships must equal those of an uninterrupted run, no
event may be stored twice, and a further plan must have nothing left to send. Trials are
seeded, bounded in count and time, and run two at a time (one emulator each).
"""

from __future__ import annotations

import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.sync.crash_harness import WORKERS, clean_run, make_project, rerun_and_check, sync_all

from lockgate.emulator import Emulator, EmulatorConfig

USERS = 300  # 300 people, 900 events, companies and memberships: ~70 batches of 20
TRIALS = int(os.environ.get("LOCKGATE_CRASH_TRIALS", "50"))
SEED = int(os.environ.get("LOCKGATE_CRASH_SEED", "20261123"))


@pytest.mark.slow
@pytest.mark.timeout(max(900, 20 * TRIALS))
def test_sigkill_at_random_points_then_rerun_equals_a_clean_run(tmp_path: Path) -> None:
    config = EmulatorConfig(require_ulid_event_ids=True)
    reference = clean_run(tmp_path, USERS, config)
    expected, clean_seconds = reference.state, reference.seconds
    assert len(expected[0]) == USERS + 3  # and the marketing leads
    assert len(expected[1]) == 3 * USERS
    assert len(expected[2]) == 100 and len(expected[3]) == USERS

    rng = random.Random(SEED)
    delays = [rng.uniform(0.2, clean_seconds * 1.1) for _ in range(TRIALS)]
    killed_mid_run = 0

    def worker(index: int) -> list[str]:
        nonlocal killed_mid_run
        problems: list[str] = []
        emu = Emulator(config)
        with emu.serve() as url:
            for trial in range(index, TRIALS, WORKERS):
                emu.reset()
                root = make_project(tmp_path / f"trial{trial}", reference.warehouse, url)
                victim = sync_all(root, emu)
                time.sleep(delays[trial])
                if victim.poll() is None:
                    victim.send_signal(signal.SIGKILL)
                    killed_mid_run += 1
                victim.wait(timeout=60)
                label = f"seed {SEED} trial {trial} (kill after {delays[trial]:.2f}s)"
                problems += rerun_and_check(label, root, emu, expected)
        return problems

    with ThreadPoolExecutor(WORKERS) as pool:
        problems = [p for result in pool.map(worker, range(WORKERS)) for p in result]
    assert problems == []
    assert killed_mid_run >= TRIALS // 2  # most kills landed while the sync was running
