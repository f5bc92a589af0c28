"""Progress bars are drawn on a terminal only: piped to a file or a scheduler's log, stderr
holds no bar, and stdout the report as before."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from tests.sync.helpers import PEOPLE

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

#: what a drawn bar leaves in its output: rich's bar glyphs, carriage returns, cursor moves
BAR_MARKS = ("━", "╸", "╺", "\r", "\x1b[")


def project(factory: ProjectFactory, n: int = 3) -> Any:
    factory.sql(
        "create or replace table people as select i::varchar as id, 'pro' as plan "
        f"from range({n}) t(i)"
    )
    return factory.write({"people": PEOPLE})


def sync(project: Any, *, stderr: int, env: dict[str, str]) -> tuple[int, str, str]:
    """`lockgate sync people` in its own process: exit code, stdout, stderr (when piped)."""
    done = subprocess.run(
        [sys.executable, "-m", "lockgate", "sync", "people", "--project", str(project.root)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "COLUMNS": "120", **env},
        timeout=120,
    )
    return done.returncode, done.stdout.decode(), (done.stderr or b"").decode()


def test_a_piped_stderr_gets_no_progress_bars(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    proj = project(project_factory)
    code, out, err = sync(proj, stderr=subprocess.PIPE, env={})
    assert code == 0, err
    assert not [m for m in BAR_MARKS if m in err], repr(err)
    assert "extract people" not in err  # no bar's label either
    assert "people" in out and "success" in out  # the report, as before
    assert len(project_factory.emulator.people()) == 3


@pytest.mark.parametrize(("term", "drawn"), [("xterm-256color", True), ("dumb", False)])
def test_a_terminal_gets_bars_unless_it_is_dumb(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch, term: str, drawn: bool
) -> None:
    """On a terminal (here a pseudo-terminal) the bars are drawn; on one that says it cannot
    move the cursor (`TERM=dumb`), as rich reads it, they are not."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    proj = project(project_factory)
    leader, follower = os.openpty()
    try:
        code, out, _ = sync(proj, stderr=follower, env={"TERM": term})
        os.close(follower)
        follower = -1
        err = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            err += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert code == 0, err
    assert ("extract people" in err.decode()) is drawn, err
    assert "success" in out
