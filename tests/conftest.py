"""Shared fixtures: a clean environment, a throwaway Postgres server, markers.

A test is `fast` unless it is marked `postgres` or `remote`. The Postgres server is
a real one, started once per session on loopback in a temporary directory
(`initdb` refuses root, so as root the cluster is owned by the `postgres` user).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

KEEP_ENV_PREFIXES = ("PATH", "HOME", "LANG", "LC_", "TMPDIR", "VIRTUAL_ENV", "PYTHON", "CI", "TERM")


#: the test files that take longest (`make test` lists the slowest tests), started first in
#: this order, so the short files fill both workers at the end: `make test` runs `-n auto
#: --dist loadfile --no-loadscope-reorder` (xdist otherwise queues files by their number of
#: tests, which put these few-test files last, where the crash harness ran alone for minutes)
LONGEST_FIRST = (
    "tests/sync/test_crash.py",
    "tests/sync/test_sync_properties.py",
    "tests/webhooks/test_properties.py",
    "tests/sync/test_b2b_properties.py",
    "tests/sync/test_identity_properties.py",
    # one test each, 20-40 s: queued last (fewest tests), they made the suite's tail
    "tests/sync/test_crash_first_only.py",
    "tests/sync/test_crash_full_resync.py",
    "tests/sync/test_crash_schedule.py",
    "tests/sync/test_two_syncs_at_once.py",
    "tests/sync/test_identity_properties_held.py",  # two machines of ~17 s
)
#: the second SIGKILL harness goes to the middle of the queue, not beside the first: each runs
#: two trials at once, and the two together on 2 cores slowed each other (a minute more)
IN_THE_MIDDLE = "tests/sync/test_crash_incremental.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("postgres", "remote")):
            item.add_marker(pytest.mark.fast)
    items[:] = _queued(items)


def _queued(items: list[pytest.Item]) -> list[pytest.Item]:
    """The items file by file (each file's in their own order): :data:`LONGEST_FIRST`, then the
    others by their number of tests, most first (xdist's own order), with
    :data:`IN_THE_MIDDLE` where half of those tests are queued."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    first = [f for f in LONGEST_FIRST if f in files]
    rest = sorted(
        (f for f in files if f not in first and f != IN_THE_MIDDLE), key=lambda f: -len(files[f])
    )
    if IN_THE_MIDDLE in files:
        half, queued, at = sum(len(files[f]) for f in rest) / 2, 0, len(rest)
        for i, f in enumerate(rest):
            queued += len(files[f])
            if queued >= half:
                at = i + 1
                break
        rest.insert(at, IN_THE_MIDDLE)
    return [item for f in first + rest for item in files[f]]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """fakesnow makes a stage folder in /tmp when imported and never removes it."""
    import sys

    stage = sys.modules.get("fakesnow.transforms.stage")
    if stage is not None:
        shutil.rmtree(getattr(stage, "LOCAL_BUCKET_PATH", ""), ignore_errors=True)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's credentials, Lockgate settings or terminal size."""
    for key in list(os.environ):
        if key.startswith(("CUSTOMERIO_", "LOCKGATE_", "SNOWFLAKE_", "GOOGLE_")):
            monkeypatch.delenv(key, raising=False)
    # output as where nothing sets a width (pytest-xdist's workers set COLUMNS=80): a test
    # that wants a width sets it
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    pytest.skip(f"Postgres server binary `{name}` not found; run `make postgres-bin`")
    raise AssertionError  # unreachable


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A DSN for a real, empty Postgres server on loopback, for the whole session."""
    root = Path(tempfile.mkdtemp(prefix="lockgate-pg-"))
    data = root / "data"
    port = free_port()
    as_root = os.geteuid() == 0

    def run(args: list[str]) -> None:
        if as_root:
            args = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(args)]
        subprocess.run(args, check=True, capture_output=True)

    if as_root:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        root.chmod(0o755)
    run([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    log = root / "server.log"
    run(
        [
            _pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-o",
            f"'-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off'",
            "-w",
            "start",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            run([_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)
