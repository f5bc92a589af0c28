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
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lockgate.console import NullConsole
from lockgate.demo import scaffold, warehouse
from lockgate.emulator import Emulator, EmulatorConfig
from lockgate.project.loader import load_project
from lockgate.sync.run import Session, plan_sync

USERS = 300  # 300 people, 900 events, companies and memberships: ~70 batches of 20
TRIALS = int(os.environ.get("LOCKGATE_CRASH_TRIALS", "50"))
WORKERS = 2
LOCKGATE = [sys.executable, "-m", "lockgate"]


def emulator_state(emu: Emulator) -> tuple[Any, ...]:
    everyone = emu.people()
    people = {p.id or p.email: p.attributes for p in everyone}
    by_cio = {p.cio_id: p.id for p in everyone}  # cio_ids depend on arrival order: compare ids
    events = sorted(
        (by_cio.get(e.person, e.person), e.name, e.id, e.timestamp, repr(e.data))
        for e in emu.events()
    )
    objects = {(o.object_type_id, o.object_id): o.attributes for o in emu.objects()}
    relationships = sorted(
        (by_cio.get(r.person, r.person), r.object_id, repr(r.attributes))
        for r in emu.relationships()
    )
    return people, events, objects, relationships


def make_project(root: Path, warehouse_file: Path, url: str) -> Path:
    """The demo project (identity graph, guardrails and all), pointed at this warehouse and
    emulator, with small batches and two in flight so a kill can land between batches."""
    scaffold(root)
    config = (root / "lockgate.yml").read_text()
    config = config.replace("path: warehouse.duckdb", f"path: {warehouse_file}")
    config = config.replace(
        "    rate_limit: 100/s\n",
        f"    rate_limit: 1000/s\n    track_url: {url}\n    concurrency: 2\n    batch_size: 20\n",
    )
    assert str(warehouse_file) in config and url in config
    (root / "lockgate.yml").write_text(config)
    return root


def env_for(emu: Emulator) -> dict[str, str]:
    site, key = emu.track_auth
    return {**os.environ, "CUSTOMERIO_SITE_ID": site, "CUSTOMERIO_API_KEY": key}


def sync_all(root: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*LOCKGATE, "sync", "--all", "--json", "--project", str(root)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


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
                rerun = sync_all(root, env)
                if rerun.wait(timeout=120) != 0:
                    err = rerun.stderr.read().decode() if rerun.stderr else ""
                    problems.append(f"trial {trial}: re-run failed: {err[-500:]}")
                    continue
                if emulator_state(emu) != expected:
                    people, events, *_ = emulator_state(emu)
                    wrong = sorted(
                        k
                        for k in people.keys() | expected[0].keys()
                        if people.get(k) != expected[0].get(k)
                    )[:3]
                    problems.append(
                        f"trial {trial} (kill after {delays[trial]:.2f}s): {len(people)} people, "
                        f"{len(events)} events; expected {len(expected[0])} and "
                        f"{len(expected[1])}; people differing: "
                        + "; ".join(f"{k}: {people.get(k)} != {expected[0].get(k)}" for k in wrong)
                        + f"; events differing: {len(set(events) ^ set(expected[1]))}"
                    )
                project = load_project(root)
                with Session() as session:  # as `lockgate plan --all` does
                    for name in project.syncs:
                        plan = plan_sync(project, name, console=NullConsole(), session=session)
                        if plan.changes.to_send:
                            problems.append(
                                f"trial {trial}: `{name}` still has {plan.changes.to_send} to send"
                            )
        return problems

    with ThreadPoolExecutor(WORKERS) as pool:
        problems = [p for result in pool.map(worker, range(WORKERS)) for p in result]
    assert problems == []
    assert killed_mid_run >= TRIALS // 2  # most kills landed while the sync was running
