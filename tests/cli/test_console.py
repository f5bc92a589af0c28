"""How tables read: on a narrow terminal, and where the output is piped or logged."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from rich.console import Console

from lockgate.console import RichConsole

RUNS = ["run", "sync", "started", "status", "sent", "delivered", "rejected", "dead-lettered"]
ROW = (
    "20261203T024346-7a10d4",
    "product_events",
    "2026-12-03 02:43:46",
    "success",
    3000,
    12345,
    0,
    7,
)


def printed(console: RichConsole) -> str:
    console.table("runs", RUNS, [ROW])
    file = console.out.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def test_a_piped_table_is_one_line_per_row_with_counts_grouped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console = RichConsole()
    console.out = Console(file=io.StringIO(), highlight=False)  # not a terminal: 80 by default
    out = printed(console)
    (line,) = [row for row in out.splitlines() if "product_events" in row]
    assert "20261203T024346-7a10d4" in line and "2026-12-03 02:43:46" in line
    # counts right-aligned with thousands grouped; an empty count stays empty
    cells = [c.strip() for c in line.split("│")[1:-1]]
    assert cells[4:] == ["3,000", "12,345", "0", "7"]
    assert line.index("12,345") + len("12,345") == line.index("│", line.index("12,345")) - 1


@pytest.mark.parametrize("width", [80, 50])
def test_a_narrow_terminal_folds_values_and_cuts_nothing(width: int) -> None:
    console = RichConsole()
    console.out = Console(file=io.StringIO(), width=width, force_terminal=True, highlight=False)
    out = re.sub(r"\x1b\[[0-9;]*m", "", printed(console))  # the terminal's styles
    assert max(len(line) for line in out.splitlines()) <= width
    assert "…" not in out  # folded, not cut
    last = "".join(line.split("│")[-2].strip() for line in out.splitlines() if "│" in line)
    assert last == "7"  # the last column is there, not cropped
    # the run id is all there, over several lines
    folded = "".join(line.split("│")[1].strip() for line in out.splitlines() if "│" in line)
    assert "20261203T024346-7a10d4" in folded


def test_a_quiet_console_leaves_stdout_to_the_json() -> None:
    """`--json` commands make their console quiet: a table drawn by shared code (the
    scheduler's timetable, a contract's findings) must not land before the JSON."""
    console = RichConsole(quiet=True)
    console.out = Console(file=io.StringIO(), highlight=False)
    assert printed(console) == ""


LONG = (
    "customer_profile: 999 new people's emails were not checked: Customer.io gives a new id "
    "sent with an email another person holds to that person; set `CUSTOMERIO_APP_API_KEY`"
)
TITLE = "customer_profile (people, upsert) — success in 0.2s"


def piped(monkeypatch: pytest.MonkeyPatch, **env: str) -> RichConsole:
    """A console writing where a pipe, a file or a CI log would: not a terminal."""
    for name in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    console = RichConsole()
    console.out = Console(file=io.StringIO(), highlight=False)
    console.err = Console(file=io.StringIO(), stderr=True, highlight=False)
    return console


def text(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def test_a_piped_message_is_one_line_however_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log is grepped: a message hard-wrapped at 80 columns is not found whole."""
    console = piped(monkeypatch)
    console.info(LONG)
    console.info("two\nlines")
    console.warn(LONG)
    assert text(console.out).splitlines() == [LONG, "two", "lines"]
    assert text(console.err).splitlines() == [f"warning: {LONG}"]


def test_a_piped_title_is_one_line_above_a_narrower_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console = piped(monkeypatch)
    console.table(TITLE, ["", "count"], [("rows in model", 1_004)])
    lines = text(console.out).splitlines()
    assert lines[0] == TITLE  # whole, and not padded to the table's width
    assert "rows in model" in lines[4] and len(lines[4]) < len(TITLE)


def test_a_terminal_wraps_messages_at_its_width_and_keeps_a_title_whole() -> None:
    """On a terminal nothing changes: a message wraps at its width (by words); a title
    longer than its table is on one line where the terminal is wide enough."""
    console = RichConsole()
    console.out = Console(file=io.StringIO(), width=60, force_terminal=True, highlight=False)
    console.info(LONG)
    console.table(TITLE, ["", "count"], [("rows in model", 1_004)])
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text(console.out)).splitlines()
    assert all(len(line) <= 60 for line in lines)
    assert len(lines) == 3 + 1 + 5 and " ".join(lines[:3]).split() == LONG.split()
    assert lines[3] == TITLE


def test_columns_sets_a_piped_tables_width_not_a_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console = piped(monkeypatch, COLUMNS="60")
    console.info(LONG)
    console.table("runs", RUNS, [ROW])
    lines = text(console.out).splitlines()
    assert lines[0] == LONG
    assert max(len(line) for line in lines[1:]) <= 60


def test_force_color_colours_a_log_but_does_not_wrap_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI jobs set FORCE_COLOR for coloured logs; the log still has no width to wrap at."""
    console = piped(monkeypatch, FORCE_COLOR="1")
    console.warn(LONG)
    console.table("runs", RUNS, [ROW])
    err = text(console.err)
    assert "\x1b[" in err  # the colour asked for
    assert re.sub(r"\x1b\[[0-9;]*m", "", err).splitlines() == [f"warning: {LONG}"]
    out = re.sub(r"\x1b\[[0-9;]*m", "", text(console.out))
    (line,) = [row for row in out.splitlines() if "product_events" in row]
    assert "20261203T024346-7a10d4" in line  # one line per row, as in any log


def test_force_color_draws_no_progress_bar_into_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bar's frames and cursor codes would fill a CI log asking only for colour."""
    console = piped(monkeypatch, FORCE_COLOR="1")
    with console.progress("deliver customer_profile", total=10) as advance:
        advance(5)
    assert text(console.err) == ""


def lockgate(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The command as a scheduler or `| tee` runs it: stdout and stderr are pipes."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in {"COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"}
        and not k.startswith("CUSTOMERIO_")
    }
    return subprocess.run(
        [sys.executable, "-m", "lockgate", *args],
        cwd=cwd,
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_piped_command_output_is_plain_whole_lines(tmp_path: Path) -> None:
    """`lockgate validate | tee log`: no escape codes, no message or title split over lines,
    no trailing padding; the warnings on stderr likewise."""
    root = tmp_path / ("a-project-folder-with-a-long-name-" * 2)
    assert lockgate("init", str(root), cwd=tmp_path).returncode == 0
    done = lockgate("validate", "--project", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "\x1b" not in output
    assert all(line == line.rstrip() for line in output.splitlines())
    assert f"{root}/lockgate.yml is valid" in done.stdout.splitlines()
    warned = (
        ": environment variable `CUSTOMERIO_SITE_ID` (for "
        "`destinations.customerio.site_id`) is not set; syncs will need it"
    )
    assert any(
        line.startswith("warning: lockgate.yml:") and line.endswith(warned)
        for line in done.stderr.splitlines()
    ), done.stderr


def on_a_terminal(*args: str, cwd: Path, **env: str) -> str:
    """What a person sees running the command in a terminal 100 columns wide."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in {"COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"}
    }
    with subprocess.Popen(
        [sys.executable, "-m", "lockgate", *args],
        cwd=cwd,
        env={**environ, "TERM": "xterm-256color", **env},
        stdin=child,
        stdout=child,
        stderr=child,
    ) as process:
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal is closed once the command is done
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait()
    os.close(main)
    return b"".join(chunks).decode()


@pytest.mark.parametrize("no_color", ["", "1"])
def test_no_color_leaves_a_terminals_error_plain(tmp_path: Path, no_color: str) -> None:
    """https://no-color.org: `NO_COLOR` set, the terminal gets no colour, the `Error:` line
    included; unset, the error is red as before."""
    shown = on_a_terminal(
        "plan", "nosuch", "--project", str(tmp_path), cwd=tmp_path, NO_COLOR=no_color
    )
    assert "Error:" in shown
    assert ("\x1b[" in shown) is (not no_color)


def test_a_message_or_title_is_text_never_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key, a path or an error quoted in a message keeps its `[...]`; `[/x]` is no crash."""
    console = piped(monkeypatch)
    quoted = "run failed: {hash: [order_id]} is not [plan] [/x]"
    console.info(quoted)
    console.table(f"history of {quoted}", ["key"], [("[bold]k[/bold]",)])
    out = text(console.out)
    assert out.splitlines()[:2] == [quoted, f"history of {quoted}"]
    assert "[bold]k[/bold]" in out


def test_history_of_a_person_named_like_markup(tmp_path: Path) -> None:
    """`lockgate history --person '[/x] [email]'` answers about that value, as typed."""
    assert lockgate("init", str(tmp_path / "p"), cwd=tmp_path).returncode == 0
    done = lockgate("history", "--person", "[/x] [email]", "--project", "p", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("No call recorded for `[/x] [email]`")
