"""How tables read: on a narrow terminal, and where the output is piped or logged."""

from __future__ import annotations

import io
import re

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
