"""The crash harnesses' shared parts (tests/sync/test_crash*.py): the demo project pointed at
an emulator, `lockgate sync --all` as a process of its own to kill, and the checks after a
re-run."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockgate.console import NullConsole
from lockgate.demo import scaffold, warehouse
from lockgate.emulator import Emulator, EmulatorConfig
from lockgate.project.loader import load_project
from lockgate.sync.run import Session, plan_sync

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
    # the run log of each project in a schema of its own: the projects share the warehouse
    # and the emulator's workspace, and a project's first run would otherwise find the other
    # projects' runs in the log (the guardrail `state missing?`, as for a state lost)
    config = config.replace("run_log: {}", f"run_log: {{dataset: log_{root.name}}}")
    assert str(warehouse_file) in config and url in config and f"log_{root.name}" in config
    (root / "lockgate.yml").write_text(config)
    return root


def env_for(emu: Emulator) -> dict[str, str]:
    site, key = emu.track_auth
    return {**os.environ, "CUSTOMERIO_SITE_ID": site, "CUSTOMERIO_API_KEY": key}


#: what a `lockgate sync` imports, imported once by the process the runs are forked from
#: (:class:`Forked`), not by each run: a Python starting and importing them costs ~0.6 s of
#: CPU, as much as a run of the demo project, and the harnesses start hundreds of runs. The
#: modules a run imports only when it needs them (the identity graph, the run log, Parquet)
#: too: the demo project's `sync --all` needs them all (0.26 s a run)
PRELOADED = [
    "lockgate.cli",
    "lockgate.cli.sync",
    "lockgate.sync.run",
    "lockgate.sync.deliver",
    "lockgate.sync.resolve",
    "lockgate.identity.engine",
    "lockgate.identity.customerio",
    "lockgate.identity.explain",
    "lockgate.sync.contract",
    "lockgate.sync.runlog",
    "lockgate.sync.reconcile",
    "lockgate.sync.reconcile_events",
    "lockgate.sources.write",
    "pyarrow.parquet",
    "pyarrow.dataset",
    "pyarrow.compute",
]
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(PRELOADED)


#: the forked process's code: `lockgate <args>` as the console script runs it, in ``env``, its
#: standard output dropped and its standard error written to the file ``stderr``. Run by
#: ``exec`` (pickled by name, as a target must be): the fork server cannot import this module
#: (pytest imports the tests with `--import-mode=importlib`, not from `sys.path`)
_RUN_CLI = """
import os, signal, sys
os.environ.clear()
os.environ.update(env)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv = ["lockgate", *args]
from lockgate.cli import entry
entry()
"""


class _Stderr:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> bytes:
        return self.path.read_bytes() if self.path.exists() else b""


class Forked:
    """A `lockgate` command running in a process of its own, forked from a process that
    imported Lockgate once (``multiprocessing``'s fork server): killed with SIGKILL, it dies
    as a `lockgate` started from a shell does, its state, files and requests left where they
    were. As much of :class:`subprocess.Popen` as the harnesses use."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        fd, name = tempfile.mkstemp(prefix="lockgate-stderr-")
        os.close(fd)
        self.stderr = _Stderr(Path(name))
        self.args = args
        scope = {"args": args, "env": env, "stderr": name}
        self._process = _FORKS.Process(target=exec, args=(_RUN_CLI, scope), daemon=False)
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(["lockgate", *self.args], timeout or 0)
        return code

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[None, bytes]:
        """Wait for the process; (no standard output, its standard error)."""
        self.wait(timeout)
        return None, self.stderr.read()

    def send_signal(self, signum: int) -> None:
        """As :meth:`subprocess.Popen.send_signal`: a process that ended meanwhile (reaped by
        the fork server before ``exitcode`` says so) is left alone."""
        if self._process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signum)

    def __del__(self) -> None:
        self.stderr.path.unlink(missing_ok=True)


def lockgate(root: Path, emu: Emulator, *args: str) -> Forked:
    """`lockgate <args> --json` of the project at ``root`` against ``emu``, in a process of
    its own to kill (its standard error kept for the failure message)."""
    return Forked([*args, "--json", "--project", str(root)], env_for(emu))


def sync_all(root: Path, emu: Emulator) -> Forked:
    return lockgate(root, emu, "sync", "--all")


def requests(emu: Emulator) -> int:
    """Every request the emulator has answered."""
    return sum(sum(by_status.values()) for by_status in emu.stats.requests.values())


def writes(emu: Emulator) -> int:
    """The requests that could change the workspace (every method but GET)."""
    return sum(1 for r in emu.request_log() if r.method != "GET")


@dataclass(frozen=True)
class CleanRun:
    """The demo warehouse synced once, uninterrupted: what each trial must end equal to."""

    warehouse: Path
    state: tuple[Any, ...]  # emulator_state
    requests: int
    writes: int
    seconds: float


def clean_run(tmp_path: Path, users: int, config: EmulatorConfig) -> CleanRun:
    """Build the demo warehouse of ``users`` users in ``tmp_path`` and run `sync --all` of
    the demo project once into an emulator of its own."""
    warehouse_file = tmp_path / "warehouse.duckdb"
    warehouse.build(warehouse_file, users=users)
    emu = Emulator(config)
    with emu.serve() as url:
        root = make_project(tmp_path / "reference", warehouse_file, url)
        started = time.monotonic()
        done = sync_all(root, emu)
        assert done.wait(timeout=300) == 0, done.stderr.read() if done.stderr else ""
        seconds = time.monotonic() - started
        return CleanRun(warehouse_file, emulator_state(emu), requests(emu), writes(emu), seconds)


def rerun_and_check(label: str, root: Path, emu: Emulator, expected: tuple[Any, ...]) -> list[str]:
    """Run `sync --all` to completion after a kill; what differs from ``expected`` (the
    emulator after uninterrupted runs), an event stored twice, or a plan with something
    left to send, as problems (none: the run recovered)."""
    rerun = sync_all(root, emu)
    if rerun.wait(timeout=120) != 0:
        err = rerun.stderr.read().decode() if rerun.stderr else ""
        return [f"{label}: re-run failed: {err[-500:]}"]
    problems = []
    state = emulator_state(emu)
    if state != expected:
        people, events, objects, relationships = state
        wrong = sorted(
            k for k in people.keys() | expected[0].keys() if people.get(k) != expected[0].get(k)
        )[:3]
        wrong_objects = sorted(
            k for k in objects.keys() | expected[2].keys() if objects.get(k) != expected[2].get(k)
        )[:3]
        problems.append(
            f"{label}: {len(people)} people, {len(events)} events; expected {len(expected[0])} "
            f"and {len(expected[1])}; people differing: "
            + "; ".join(f"{k}: {people.get(k)} != {expected[0].get(k)}" for k in wrong)
            + f"; events differing: {sorted(set(events) ^ set(expected[1]))[:3]}"
            + "; objects differing: "
            + "; ".join(f"{k}: {objects.get(k)} != {expected[2].get(k)}" for k in wrong_objects)
            + f"; relationships differing: {sorted(set(relationships) ^ set(expected[3]))[:3]}"
        )
    # the same occurrence stored again (under another id): more copies than the reference has
    twice = Counter(e[:2] + e[3:] for e in state[1]) - Counter(e[:2] + e[3:] for e in expected[1])
    if twice:
        problems.append(f"{label}: events stored twice: {sorted(twice)[:3]}")
    project = load_project(root)
    with Session() as session:  # as `lockgate plan --all` does
        for name in project.syncs:
            plan = plan_sync(project, name, console=NullConsole(), session=session)
            if plan.changes.to_send:
                problems.append(f"{label}: `{name}` still has {plan.changes.to_send} to send")
    return problems
