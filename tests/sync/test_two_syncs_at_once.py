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
import subprocess
import time
from pathlib import Path

import pytest
from tests.sync.crash_harness import emulator_state, env_for, make_project, sync_all

from lockgate.demo import warehouse
from lockgate.emulator import Emulator, EmulatorConfig

USERS = 60
TRIALS = int(os.environ.get("LOCKGATE_CRASH_TRIALS", "1"))
SEED = int(os.environ.get("LOCKGATE_CRASH_SEED", "20261205"))


def writes(emu: Emulator) -> int:
    return sum(1 for r in emu.request_log() if r.method != "GET")


def both_at_once(root: Path, emu: Emulator, offset: float) -> list[tuple[int, str]]:
    """Start two `sync --all` of ``root``, the second ``offset`` seconds after the first;
    their exit codes and standard errors."""
    runs: list[subprocess.Popen[bytes]] = [sync_all(root, env_for(emu))]
    time.sleep(offset)
    runs.append(sync_all(root, env_for(emu)))
    done = []
    for run in runs:
        _, err = run.communicate(timeout=300)
        done.append((run.returncode, err.decode()))
    return done


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_syncs_started_at_once_never_both_send(tmp_path: Path) -> None:
    warehouse_file = tmp_path / "warehouse.duckdb"
    warehouse.build(warehouse_file, users=USERS)
    config = EmulatorConfig(require_ulid_event_ids=True)
    reference_emu = Emulator(config)
    with reference_emu.serve() as url:
        root = make_project(tmp_path / "reference", warehouse_file, url)
        done = sync_all(root, env_for(reference_emu))
        assert done.wait(timeout=300) == 0, done.stderr.read() if done.stderr else ""
        expected, expected_writes = emulator_state(reference_emu), writes(reference_emu)

    rng = random.Random(SEED)
    emu = Emulator(config)
    with emu.serve() as url:
        for trial in range(TRIALS):
            emu.reset()
            root = make_project(tmp_path / f"trial{trial}", warehouse_file, url)
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
