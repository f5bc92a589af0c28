"""Crash safety of a project's first run when it is a run of named records: SIGKILL
`lockgate sync --all --only ...` while it creates the state (the state file, its tables, each
sync's tables), resolves the identity graph, skips the events past `backfill` and sends.

Each trial makes a fresh project of the demo (its events sync has `backfill: {max_age: 72h,
older: skip}`) and kills the first `sync --all --only` after a seeded delay: every other trial
from the process's first moments to past a clean run's length, the others within 0.3 s of the
state file appearing (while DuckDB writes its headers, the schema is created and each sync's
tables are added). It runs it again to completion and then runs
`sync --all`: the emulator must equal that of the same two runs uninterrupted, no event may be
stored twice, and a further plan must have nothing left to send. Seeded
(``LOCKGATE_CRASH_SEED``) and bounded in count (``LOCKGATE_CRASH_TRIALS``).
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
    emulator_state,
    lockgate,
    make_project,
    rerun_and_check,
    sync_all,
)

from lockgate.demo import warehouse
from lockgate.emulator import Emulator, EmulatorConfig

USERS = 60
TRIALS = int(os.environ.get("LOCKGATE_CRASH_TRIALS", "1"))
SEED = int(os.environ.get("LOCKGATE_CRASH_SEED", "20261205"))
NAMED = ("7", "user12@saasco.io", "lead1@saasco.io")
"""A person by id, one by email (their events too) and a marketing lead."""


def sync_only(root: Path, emu: Emulator) -> Forked:
    return lockgate(root, emu, "sync", "--all", *(a for v in NAMED for a in ("--only", v)))


@pytest.mark.slow
@pytest.mark.timeout(max(900, 120 * TRIALS))
def test_sigkill_a_first_run_of_named_records_then_rerun_equals_clean_runs(
    tmp_path: Path,
) -> None:
    warehouse_file = tmp_path / "warehouse.duckdb"
    warehouse.build(warehouse_file, users=USERS)
    config = EmulatorConfig(require_ulid_event_ids=True)
    reference_emu = Emulator(config)
    with reference_emu.serve() as url:
        root = make_project(tmp_path / "reference", warehouse_file, url)
        started = time.monotonic()
        named = sync_only(root, reference_emu)
        assert named.wait(timeout=300) == 0, named.stderr.read() if named.stderr else ""
        clean_seconds = time.monotonic() - started
        after_named = emulator_state(reference_emu)
        everything = sync_all(root, reference_emu)
        assert everything.wait(timeout=300) == 0
        expected = emulator_state(reference_emu)
    assert {"7", "12", "lead1@saasco.io"} <= after_named[0].keys()
    assert after_named[1] and len(after_named[1]) < len(expected[1])

    rng = random.Random(SEED)
    problems: list[str] = []
    emu = Emulator(config)
    with emu.serve() as url:
        for trial in range(TRIALS):
            emu.reset()
            root = make_project(tmp_path / f"trial{trial}", warehouse_file, url)
            state = root / ".lockgate" / "state.duckdb"
            at_state = trial % 2 == 1
            delay = rng.uniform(0, 0.3) if at_state else rng.uniform(0.05, clean_seconds * 1.1)
            victim = sync_only(root, emu)
            while at_state and not state.exists() and victim.poll() is None:
                time.sleep(0.001)
            time.sleep(delay)
            if victim.poll() is None:
                victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=60)
            when = "of the state file appearing" if at_state else "of its start"
            label = f"seed {SEED} trial {trial} (first run killed within {delay:.2f}s {when})"
            again = sync_only(root, emu)
            if again.wait(timeout=300) != 0:
                err = again.stderr.read().decode() if again.stderr else ""
                problems.append(f"{label}: the re-run of the named records failed: {err[-800:]}")
                continue
            if emulator_state(emu) != after_named:
                problems.append(f"{label}: the named records' re-run left another workspace")
            problems += rerun_and_check(label, root, emu, expected)
    assert problems == [], "\n".join(problems)
