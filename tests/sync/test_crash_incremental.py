"""Crash safety of a run that changes things: SIGKILL a second `lockgate sync --all`.

A first, clean run of the demo project (people under `mode: mirror` with
`delete_removed: true`, leads, billing and companies under `mode: mirror`) is made once; its
project folder (state and warehouse) is copied for each trial and its requests replayed into
the trial's emulator. The warehouse then gets the demo's second act
(:func:`lockgate.demo.warehouse.change_a_few_rows`: updates, an email change, identity merges,
new events) and more: people who leave the model (deleted), a lead, a Stripe customer and a
company that leave (their attributes cleared), a null under `on_null: clear`, memberships
removed, moved and changed, an email that passes from one person to another, and more new
events. Each trial kills the second run after a random delay (every third trial kills the
run that recovers from it too; every other trial puts some rows back to what the first run
sent before the re-run, against a reference that made that third run too) and runs it again
to completion: the emulator must equal that
of a reference which made both runs uninterrupted, no event may be stored twice, and a
further plan must have nothing left to send. Trials are seeded (``LOCKGATE_CRASH_SEED``),
bounded in count (``LOCKGATE_CRASH_TRIALS``) and time, and run two at a time (one emulator
each).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import httpx
import pytest
from tests.sync.crash_harness import (
    WORKERS,
    emulator_state,
    make_project,
    requests,
    rerun_and_check,
    sync_all,
)

from lockgate.demo import warehouse
from lockgate.emulator import Emulator, EmulatorConfig, RequestRecord

USERS = 300
TRIALS = int(os.environ.get("LOCKGATE_CRASH_TRIALS", "10"))
SEED = int(os.environ.get("LOCKGATE_CRASH_SEED", "20261204"))


def mirror(root: Path) -> None:
    """The demo's syncs, mirrored: people who leave the profile model are deleted; a lead, a
    Stripe customer or a company that leaves has its attributes cleared."""
    profile = root / "syncs" / "customer_profile.yml"
    text = profile.read_text()
    assert "mode: upsert\n" in text
    profile.write_text(text.replace("mode: upsert\n", "mode: mirror\ndelete_removed: true\n"))
    for name in ("leads", "billing", "companies"):
        sync = root / "syncs" / f"{name}.yml"
        sync.write_text(sync.read_text() + "mode: mirror\n")
    # one lead of three and one Stripe customer of a hundred leave: large shares
    leads = root / "syncs" / "leads.yml"
    text = leads.read_text()
    assert "guardrails:\n  max_changed: off" in text
    off = "guardrails:\n  max_cleared: off\n  max_removed: off\n  max_changed: off"
    leads.write_text(text.replace("guardrails:\n  max_changed: off", off))
    billing = root / "syncs" / "billing.yml"
    billing.write_text(billing.read_text() + "guardrails:\n  max_cleared: off\n")


def change_more_rows(path: Path) -> None:
    """After the demo's second act: rows that leave mirrored models, memberships removed,
    moved and changed, an email that changes hands, more updates and events."""
    con = duckdb.connect(str(path))
    try:
        con.execute(
            """
            delete from app.users where id in (40, 41);          -- deleted in Customer.io
            delete from marketing.leads where email = 'lead1@saasco.io';   -- cleared
            delete from billing.stripe_customers where stripe_id = 'cus_6';  -- cleared
            delete from analytics.companies where company_id = 'co_50';     -- cleared
            update app.users set do_not_discount = null where id in (22, 44);  -- on_null: clear
            update app.users set email = 'user10.new@saasco.io' where id = 10;
            update app.users set email = 'user10@saasco.io' where id = 11;  -- 10's old address
            update analytics.subscriptions set status = 'canceled', seats = 1
                where user_id between 100 and 139;
            delete from analytics.company_members where user_id in (20, 21);
            update analytics.company_members set role = 'owner' where user_id = 30;
            update analytics.company_members set company_id = 'co_2' where user_id = 31;
            insert into analytics.product_events
            select 'evt_more_' || i, 1 + (i * 11) % 300, 'Report Exported',
                   now() - to_minutes(i), 'exports', i * 1.0
            from range(1, 61) t(i);
            """
        )
    finally:
        con.close()


def put_some_rows_back(path: Path) -> None:
    """Between a killed run and the next, some rows go back to what the first run sent:
    what the killed run may have changed in Customer.io without recording it must be sent
    again (its write-ahead record). Nothing that cannot be undone (a delete, an event) is.
    User 31's move to another company is: the membership the killed run may have added
    left the model before it was confirmed, and the next run must remove it."""
    con = duckdb.connect(str(path))
    try:
        con.execute(
            """
            update analytics.subscriptions
            set plan_tier = ['free', 'starter', 'pro', 'enterprise'][1 + user_id % 4],
                mrr = (user_id % 4) * 149.5::decimal(10, 2),
                status = case when user_id % 9 = 0 then 'past_due'
                              when user_id % 4 = 0 then 'trialing' else 'active' end,
                seats = 1 + user_id % 25
            where user_id in (1, 2, 3) or user_id between 100 and 139;
            update app.users set do_not_discount = true where id in (22, 44);
            insert into analytics.company_members values (20, 'co_21', 'admin'),
                (21, 'co_22', 'member');
            update analytics.company_members set role = 'admin' where user_id = 30;
            update analytics.company_members set company_id = 'co_32' where user_id = 31;
            """
        )
    finally:
        con.close()


def copy_project(source: Path, root: Path, old_url: str, url: str) -> Path:
    """A copy of a project folder (its state and warehouse with it), pointed at its own
    warehouse and at the emulator at ``url``."""
    shutil.copytree(source, root)
    config = (root / "lockgate.yml").read_text()
    assert str(source) in config and old_url in config
    config = config.replace(str(source), str(root)).replace(old_url, url)
    (root / "lockgate.yml").write_text(config)
    return root


def replay(emu: Emulator, requests: list[RequestRecord]) -> None:
    """Make this (reset) emulator's workspace that of the first run: its requests again."""
    with httpx.Client(base_url=emu.base_url or "", auth=emu.track_auth, timeout=30) as client:
        for r in requests:
            answer = client.request(r.method, r.path, json=r.body)
            assert answer.status_code == r.status, (r.path, answer.text)


def kill_at(root: Path, emu: Emulator, when: float | int) -> bool:
    """Start `sync --all` and SIGKILL it after ``when`` seconds (a float) or once the
    emulator has had ``when`` more requests (an int); False if it ended first."""
    before = requests(emu)
    victim = sync_all(root, emu)
    if isinstance(when, float):
        time.sleep(when)
    else:
        while victim.poll() is None and requests(emu) - before < when:
            time.sleep(0.002)
    killed = victim.poll() is None
    if killed:
        victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    return killed


@pytest.mark.slow
@pytest.mark.timeout(max(900, 60 * TRIALS))
def test_sigkill_a_run_that_changes_things_then_rerun_equals_clean_runs(tmp_path: Path) -> None:
    config = EmulatorConfig(require_ulid_event_ids=True)
    base = tmp_path / "base"
    reference_emu = Emulator(config)
    with reference_emu.serve() as reference_url:
        # the first run, made once: every trial starts from its state and workspace
        make_project(base, base / "warehouse.duckdb", reference_url)
        warehouse.build(base / "warehouse.duckdb", users=USERS)
        mirror(base)
        first = sync_all(base, reference_emu)
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
        first_requests = [r for r in reference_emu.request_log() if r.method != "GET"]
        after_first = emulator_state(reference_emu)

        # the warehouse changed for the second run; the reference makes it uninterrupted
        changed = copy_project(base, tmp_path / "changed", reference_url, reference_url)
        warehouse.change_a_few_rows(changed / "warehouse.duckdb")
        change_more_rows(changed / "warehouse.duckdb")
        reference = copy_project(changed, tmp_path / "reference", reference_url, reference_url)
        started, before = time.monotonic(), requests(reference_emu)
        second = sync_all(reference, reference_emu)
        assert second.wait(timeout=120) == 0, second.stderr.read() if second.stderr else ""
        clean_seconds = time.monotonic() - started
        sent = requests(reference_emu) - before
        expected = emulator_state(reference_emu)

        # and a third run, after some rows went back to what the first run sent
        put_some_rows_back(reference / "warehouse.duckdb")
        third = sync_all(reference, reference_emu)
        assert third.wait(timeout=120) == 0, third.stderr.read() if third.stderr else ""
        expected_back = emulator_state(reference_emu)
    people, events, objects, relationships = expected
    assert "40" not in people and "41" in after_first[0] and "40" in after_first[0]
    assert "lead_source" not in people["lead1@saasco.io"]
    assert "stripe_mrr" in after_first[0]["6"] and "stripe_mrr" not in people["6"]
    assert objects[("1", "co_50")] != after_first[2][("1", "co_50")]
    assert len(relationships) < len(after_first[3])
    assert len(events) == len(after_first[1]) - 2 * 3 + 62  # the deleted took theirs along
    assert people["1"]["plan_tier"] == "enterprise" and people["20"] == after_first[0]["20"]
    assert expected_back[0]["1"]["plan_tier"] == after_first[0]["1"]["plan_tier"] == "starter"
    assert (
        expected_back[0]["22"]["do_not_discount"] is True and "do_not_discount" not in people["22"]
    )
    assert expected_back[3] != relationships and expected_back[1] == events

    rng = random.Random(SEED)
    # a quarter of the kills at a time anywhere in the run; the others once a number of
    # requests has arrived, as a run spends most of its time reading and diffing and the
    # kills that test recovery are those with requests in flight (the trials that put rows
    # back are among them)
    when: list[float | int] = [
        rng.randint(1, sent) if t % 4 else rng.uniform(0.2, clean_seconds * 1.1)
        for t in range(TRIALS)
    ]
    # every third trial also kills the run that recovers from the first kill
    again = [rng.randint(1, sent) if t % 3 == 2 else None for t in range(TRIALS)]
    killed_mid_run = unfinished = 0

    def worker(index: int) -> list[str]:
        nonlocal killed_mid_run, unfinished
        problems: list[str] = []
        emu = Emulator(config)
        with emu.serve() as url:
            for trial in range(index, TRIALS, WORKERS):
                emu.reset()
                replay(emu, first_requests)
                assert emulator_state(emu) == after_first
                root = copy_project(changed, tmp_path / f"trial{trial}", reference_url, url)
                if kill_at(root, emu, when[trial]):
                    killed_mid_run += 1
                if emulator_state(emu) != expected:
                    unfinished += 1  # the kill left work undone: the re-run has to finish it
                at = when[trial]
                at_text = f"{at:.2f}s" if isinstance(at, float) else f"request {at}"
                label = f"seed {SEED} trial {trial} (killed at {at_text}"
                if back := trial % 2 == 1:
                    put_some_rows_back(root / "warehouse.duckdb")
                    label += ", some rows put back"
                if again[trial] is not None:
                    kill_at(root, emu, again[trial])
                    label += f", its re-run killed at request {again[trial]}"
                label += ")"
                problems += rerun_and_check(label, root, emu, expected_back if back else expected)
        return problems

    with ThreadPoolExecutor(WORKERS) as pool:
        problems = [p for result in pool.map(worker, range(WORKERS)) for p in result]
    assert problems == [], "\n".join(problems)
    assert killed_mid_run >= TRIALS // 2  # most kills landed while the sync was running
    assert unfinished >= TRIALS // 4  # and many before it had sent everything
