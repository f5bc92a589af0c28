"""Sync files and warehouse tables more than one test module of tests/sync uses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, Phase, settings

from lockgate.emulator import Emulator

#: in-memory DuckDB instances that write and read the tests' warehouse files, one per value of
#: the `TZ` variable (an instance takes the machine's time zone when it starts, as a file
#: opened with `duckdb.connect` does)
_WAREHOUSE_ENGINES: dict[str | None, duckdb.DuckDBPyConnection] = {}


def warehouse_sql(path: Path, statements: str, *, read_only: bool = False) -> list[Any]:
    """Run ``statements`` on the DuckDB file ``path`` (created if new) as a connection of its
    own would, and return the last one's rows. The file is attached to an in-memory instance
    kept for the process (under the name a `duckdb.connect` of it gives its database) and
    detached after, so no lock outlives the call and a sync opens it as usual: starting a
    DuckDB instance costs ~20 ms of CPU, an attach a few, and the tests write warehouses
    hundreds of times."""
    zone = os.environ.get("TZ")
    engine = _WAREHOUSE_ENGINES.get(zone)
    if engine is None:
        engine = _WAREHOUSE_ENGINES[zone] = duckdb.connect(":memory:")
    name = '"' + Path(path).stem.replace('"', '""') + '"'
    where = "'" + str(path).replace("'", "''") + "'"
    con = engine.cursor()
    try:
        con.execute(f"attach {where} as {name}{' (read_only)' if read_only else ''}")
    except BaseException:
        con.close()
        raise
    try:
        con.execute(f"use {name}")
        return con.execute(statements).fetchall()
    finally:
        con.close()
        engine.execute(f"detach database if exists {name}")


#: a people sync of one attribute (`plan`) over a `people` table keyed by `id`
#: SQL a test standing for a state an older Lockgate left (a table it altered back) runs with
#: it: that Lockgate wrote no mark of a sync's tables made whole at this format
#: (``lockgate.state.store.TABLES_STEP``), so this one brings them up to date
UNMARK_TABLES = "delete from upgraded where step like 'tables@%'"

#: a people sync by `id` and email setting `<name>_plan` (the app's users, the CRM's leads of
#: one person): ``PLAN_SYNC.format(name=...)``, read back by :func:`plans_by_id`
PLAN_SYNC = """
name: {name}
source: warehouse
model: {{table: {name}}}
kind: people
primary_key: user_id
identify_by: {{id: user_id, email: email}}
attributes: {{{name}_plan: plan}}
"""


#: a `mirror` people sync deleting the people whose rows leave, over an `accounts` table of
#: several accounts per user (`account_id`, `user_id`, `email`, `plan`)
ACCOUNTS_MIRROR_DELETING = """
name: accounts
source: warehouse
model: {table: accounts}
kind: people
primary_key: account_id
identify_by: {id: user_id, email: email}
attributes: {plan: plan}
mode: mirror
delete_removed: true
"""


def plans_by_id(emu: Emulator) -> dict[str | None, tuple[str | None, dict[str, Any]]]:
    """id -> (email, the plans each :data:`PLAN_SYNC` set)."""
    return {
        p.id: (p.email, {k: v for k, v in p.attributes.items() if k.endswith("_plan")})
        for p in emu.people()
    }


PEOPLE = """
name: people
source: warehouse
model: {table: people}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  plan: plan
"""

#: the head of a people sync `profile` over the `users` table, keyed and identified by
#: `user_id`: its attributes follow, one a line (`USERS_PROFILE + "  plan: plan\n"`)
USERS_PROFILE = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes:
"""

#: an events sync `activity` over the `events` table (`user_id`, `event_name`, `occurred_at`,
#: `event_id`) with no properties
EVENTS_ONLY = """
name: activity
source: warehouse
model: {table: events}
kind: events
identify_by: {id: user_id}
event:
  name: event_name
  timestamp: occurred_at
  id: event_id
"""

#: :data:`EVENTS_ONLY` with the property `feature`; more follow, one a line
#: (`ACTIVITY + "  n: n\n"`)
ACTIVITY = EVENTS_ONLY + "properties:\n  feature: feature\n"

#: a people sync of 40 attributes, over the `people` table :func:`wide_people` builds
WIDE = """
name: wide
source: warehouse
model: {table: people}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
""" + "".join(f"  a{i}: a{i}\n" for i in range(40))


def wide_people(factory: Any, rows: int, *, huge: tuple[int, ...] = ()) -> None:
    """``rows`` people with 40 attributes of ~200 bytes each (~8 KB per operation); the ids
    in ``huge`` have 900 bytes in each, 36 KB in all: over Track v2's 32 KB per operation,
    so Customer.io would refuse them (the client rejects them before sending)."""
    columns = ", ".join(
        f"case when i in ({', '.join(map(str, huge)) or '-1'}) then repeat('x', 900) "
        f"else repeat('y', 200) || i end as a{j}"
        for j in range(40)
    )
    factory.sql(
        f"create or replace table people as select i as id, {columns} from range({rows}) t(i)"
    )


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """``folder`` made read-only for real: remounted read-only as root, else its permissions
    taken away. Yields what the OS then says of a write."""
    if os.geteuid() == 0:
        if shutil.which("mount") is None:
            pytest.skip("no `mount` to make a folder read-only as root")
        for args in (["--bind", str(folder), str(folder)], ["-o", "remount,ro,bind", str(folder)]):
            done = subprocess.run(["mount", *args], capture_output=True)
            if done.returncode:
                subprocess.run(["umount", str(folder)], check=False, capture_output=True)
                pytest.skip(f"cannot remount read-only: {done.stderr.decode().strip()}")
        try:
            yield "read-only file system"
        finally:
            subprocess.run(["umount", str(folder)], check=False)
        return
    modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
    for path in modes:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        yield "permission denied"
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def sql_text(value: str | None) -> str:
    """``value`` as a SQL text literal (``null`` for None)."""
    return "null" if value is None else "'" + value.replace("'", "''") + "'"


def sent_ops(emu: Emulator, since: int) -> list[dict[str, Any]]:
    """The Track v2 batch operations the emulator accepted after request ``since``."""
    return [
        op
        for r in emu.request_log()[since:]
        if r.path == "/api/v2/batch" and isinstance(r.body, dict) and r.status < 300
        for op in r.body.get("batch", [])
    ]


def canonical(ops: list[dict[str, Any]]) -> list[str]:
    """Operations in an order-free form, to compare what was planned with what was sent."""
    return sorted(json.dumps(op, sort_keys=True) for op in ops)


def roots(base: Path) -> Iterator[Path]:
    """New folders under ``base``, one per example of a state machine."""
    while True:
        yield Path(tempfile.mkdtemp(dir=base))


def property_settings(examples: int, steps: int) -> settings:
    """The Hypothesis settings of the sync property tests: in CI ``examples`` runs of
    ``steps`` steps, derandomized (the same runs every time); for a longer hunt, random runs
    sized by LOCKGATE_PROPERTY_EXAMPLES and LOCKGATE_PROPERTY_STEPS, without shrinking when
    LOCKGATE_PROPERTY_NO_SHRINK is set (a failure then shows as found, sooner)."""
    return settings(
        max_examples=int(os.environ.get("LOCKGATE_PROPERTY_EXAMPLES", str(examples))),
        stateful_step_count=int(os.environ.get("LOCKGATE_PROPERTY_STEPS", str(steps))),
        deadline=None,
        derandomize="LOCKGATE_PROPERTY_EXAMPLES" not in os.environ,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        phases=[Phase.explicit, Phase.reuse, Phase.generate]
        + ([] if os.environ.get("LOCKGATE_PROPERTY_NO_SHRINK") else [Phase.shrink]),
    )


def bind_machine(machine: Any, emulator: Emulator, tmp_path: Path, mp: pytest.MonkeyPatch) -> None:
    """Give a sync state machine class what each of its examples starts from: the one
    emulator (reset by the machine), a new project folder per example, the monkeypatch."""
    machine.emulator = emulator
    machine.roots = roots(tmp_path)
    machine.monkeypatch = mp


#: a people sync `accounts` over the `accounts` table (`user_id`, `email`, `plan`), identified by
#: `id` and `email`
ACCOUNTS = """
name: accounts
source: warehouse
model: {table: accounts}
kind: people
primary_key: user_id
identify_by: {id: user_id, email: email}
attributes:
  plan: plan
"""


def people(emu: Emulator) -> dict[str | None, tuple[str | None, Any]]:
    """Each person in the emulator by `id`: (email, `plan` attribute)."""
    return {p.id: (p.email, p.attributes.get("plan")) for p in emu.people()}
