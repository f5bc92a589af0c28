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
from tests.sync.crash_harness import (
    WORKERS,
    emulator_state,
    env_for,
    make_project,
    rerun_and_check,
    sync_all,
)

from lockgate.demo import warehouse
from lockgate.emulator import Emulator, EmulatorConfig

USERS = 300  # 300 people, 900 events, companies and memberships: ~70 batches of 20
TRIALS = int(os.environ.get("LOCKGATE_CRASH_TRIALS", "50"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_at_random_points_then_rerun_equals_a_clean_run(tmp_path: Path) -> None:
    warehouse_file = tmp_path / "warehouse.duckdb"
    warehouse.build(warehouse_file, users=USERS)
    config = EmulatorConfig(require_ulid_event_ids=True)

    # the reference: one uninterrupted run
    reference_emu = Emulator(config)
    with reference_emu.serve() as url:
        root = make_project(tmp_path / "reference", warehouse_file, url)
        started = time.monotonic()
        done = sync_all(root, env_for(reference_emu))
        assert done.wait(timeout=120) == 0, done.stderr.read() if done.stderr else ""
        clean_seconds = time.monotonic() - started
    expected = emulator_state(reference_emu)
    assert len(expected[0]) == USERS + 3  # and the marketing leads
    assert len(expected[1]) == 3 * USERS
    assert len(expected[2]) == 100 and len(expected[3]) == USERS

    rng = random.Random(20261123)
    delays = [rng.uniform(0.2, clean_seconds * 1.1) for _ in range(TRIALS)]
    killed_mid_run = 0

    def worker(index: int) -> list[str]:
        nonlocal killed_mid_run
        problems: list[str] = []
        emu = Emulator(config)
        with emu.serve() as url:
            env = env_for(emu)
            for trial in range(index, TRIALS, WORKERS):
                emu.reset()
                root = make_project(tmp_path / f"trial{trial}", warehouse_file, url)
                victim = sync_all(root, env)
                time.sleep(delays[trial])
                if victim.poll() is None:
                    victim.send_signal(signal.SIGKILL)
                    killed_mid_run += 1
                victim.wait(timeout=60)
                label = f"trial {trial} (kill after {delays[trial]:.2f}s)"
                problems += rerun_and_check(label, root, emu, expected)
        return problems

    with ThreadPoolExecutor(WORKERS) as pool:
        problems = [p for result in pool.map(worker, range(WORKERS)) for p in result]
    assert problems == []
    assert killed_mid_run >= TRIALS // 2  # most kills landed while the sync was running
