"""Two `lockgate sync --all` of one project started at once: the project lock lets one send,
and the other stops saying which process holds the state; nothing is sent twice.

Both are started together (seeded offsets of a few milliseconds, so either may take the lock
first, or both reach it in the same moment), against one emulator. Whatever the order, the
emulator must equal that of one uninterrupted run, and every request must have been made once:
as many writes as the clean run made. A second round of both, once nothing changed, must send
nothing."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from tests.sync.crash_harness import (
    Forked,
    clean_run,
    emulator_state,
    make_project,
    sync_all,
    writes,
)

from lockgate.emulator import Emulator, EmulatorConfig

USERS = 60
TRIALS = int(os.environ.get("LOCKGATE_CRASH_TRIALS", "1"))
SEED = int(os.environ.get("LOCKGATE_CRASH_SEED", "20261205"))


def both_at_once(root: Path, emu: Emulator, offset: float) -> list[tuple[int, str]]:
    """Start two `sync --all` of ``root``, the second ``offset`` seconds after the first;
    their exit codes and standard errors."""
    runs: list[Forked] = [sync_all(root, emu)]
    time.sleep(offset)
    runs.append(sync_all(root, emu))
    done = []
    for run in runs:
        _, err = run.communicate(timeout=300)
        done.append((run.returncode, err.decode()))
    return done


@pytest.mark.slow
@pytest.mark.timeout(max(600, 60 * TRIALS))
def test_two_syncs_started_at_once_never_both_send(tmp_path: Path) -> None:
    config = EmulatorConfig(require_ulid_event_ids=True)
    reference = clean_run(tmp_path, USERS, config)
    expected, expected_writes = reference.state, reference.writes

    rng = random.Random(SEED)
    emu = Emulator(config)
    with emu.serve() as url:
        for trial in range(TRIALS):
            emu.reset()
            root = make_project(tmp_path / f"trial{trial}", reference.warehouse, url)
            offset = rng.uniform(0, 0.05)
            label = f"seed {SEED} trial {trial} (second started {offset:.3f}s after the first)"
            outcomes = both_at_once(root, emu, offset)
            codes = sorted(code for code, _ in outcomes)
            assert codes in ([0, 0], [0, 1]), (label, outcomes)
            refused = [err for code, err in outcomes if code != 0]
            for err in refused:  # the one that stopped said why and who holds the state
                assert "is in use by pid" in " ".join(err.split()), (label, err)
            assert emulator_state(emu) == expected, label
            assert writes(emu) == expected_writes, label  # no request made twice

            # and once nothing changed, two more at once send nothing at all
            outcomes = both_at_once(root, emu, offset)
            assert all(code in (0, 1) for code, _ in outcomes), (label, outcomes)
            assert writes(emu) == expected_writes, label
