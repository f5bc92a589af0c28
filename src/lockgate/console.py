"""The only module that prints or draws progress.

Core code reports through the small :class:`Console` protocol; the CLI supplies
:class:`RichConsole`, tests and servers use :class:`NullConsole` (or their own).

Example::

    console = RichConsole()
    with console.progress("deliver customer_profile", total=10_000) as advance:
        advance(500)
    console.info("done")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from rich.console import Console as _RichConsole
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

Advance = Callable[[int], None]


class Console(Protocol):
    """What the core may tell a person. Keep it to a handful of methods.

    A message is text, printed as it is: a key, a path or an error quoted in it keeps its
    ``[...]`` (it is never read as markup). A part to stand out (a heading in bold) is a rich
    :class:`~rich.text.Text` with that style."""

    def info(self, message: str | Text) -> None: ...

    def warn(self, message: str) -> None: ...

    def progress(self, label: str, total: int | None) -> contextlib.AbstractContextManager[Advance]:
        """A context manager yielding ``advance(n)``; draws a bar on a terminal."""
        ...

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...


class NullConsole:
    """Says nothing; collects messages so tests can read them."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def info(self, message: str | Text) -> None:
        self.messages.append(str(message))

    def warn(self, message: str) -> None:
        self.messages.append(f"warning: {message}")

    @contextlib.contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[Advance]:
        yield lambda n: None

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.messages.append(title)


class _Count(ProgressColumn):
    """`done/total` (`1,000/3,053`); without a total, the count so far (`1,003`), or nothing
    for work that counts nothing (a diff): the pulsing bar and the elapsed time say it is
    going on."""

    def render(self, task: Task) -> Text:
        if task.total is not None:
            done, total = int(task.completed), int(task.total)
            return Text(
                f"{done:,}/{total:,}".rjust(2 * len(f"{total:,}") + 1), style="progress.download"
            )
        return Text(f"{int(task.completed):,}" if task.completed else "", style="progress.download")


class RichConsole:
    """Draws with rich on the terminal (stderr for progress, stdout for results). Progress
    bars are drawn on an interactive terminal only (:meth:`progress`).

    On a terminal, messages wrap at its width and a table folds its values to fit it. Where a
    stream is not a terminal (a pipe, a file, a CI log, cron's mail) it has no width: a message
    is printed whole, one line per line of it, and a table as wide as it needs
    (:meth:`_print_whole`), so that ``grep`` finds a line whole. Colour follows rich: none off
    a terminal, none with ``NO_COLOR``; ``FORCE_COLOR`` adds it to a log, without the
    terminal's wrapping.

    ``quiet`` (a command's ``--json``) draws no progress, info or table: stdout is left to the
    command's JSON; warnings still go to stderr."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.out = _RichConsole(highlight=False)
        self.err = _RichConsole(stderr=True, highlight=False)
        self.quiet = quiet

    def info(self, message: str | Text) -> None:
        if not self.quiet:
            # a message is text, never markup: `history --person '[/x]'` or a run's error
            # quoting `[plan]` is printed as it is
            _say(self.out, Text(message) if isinstance(message, str) else message)

    def warn(self, message: str) -> None:
        # a message is text, never markup: a hint's `shared_attributes: [plan]` keeps `[plan]`
        _say(self.err, Text.assemble(("warning:", "yellow"), " ", message))

    @contextlib.contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[Advance]:
        """A bar on stderr while the step runs, drawn only where stderr is a terminal that can
        redraw it (rich's ``is_interactive``: not a pipe, a file or a scheduler's log, not
        ``TERM=dumb``; ``TTY_INTERACTIVE=0/1`` overrides): elsewhere a bar would be left
        there as its last frame, one line per step. ``NO_COLOR`` draws it without colour;
        ``FORCE_COLOR`` (colour in a CI log) draws none, as a log is no terminal: its frames
        and cursor codes would fill the log."""
        interactive = self.err.is_interactive and (
            _on_a_terminal(self.err) or os.environ.get("TTY_INTERACTIVE") == "1"
        )
        if self.quiet or not interactive:
            yield lambda n: None
            return
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            _Count(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.err, transient=False) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.quiet:  # a `--json` command's stdout holds its JSON alone
            return
        table = Table()
        counts = [
            all(_is_count(row[i]) or row[i] in ("", None) for row in rows)
            and any(_is_count(row[i]) for row in rows)
            for i in range(len(columns))
        ]
        for column, count in zip(columns, counts, strict=True):
            # a narrow terminal folds a long value onto the next line instead of cutting it
            # with `…`: a run id, a key or a reason is shown whole. Counts are right-aligned.
            table.add_column(column, overflow="fold", justify="right" if count else "left")
        for row in rows:
            # a cell is data, never markup: `{hash: [order_id]}` or a value quoted in a reason
            # would lose its `[...]` as a style tag
            table.add_row(*(f"{v:,}" if _is_count(v) else Text(str(v)) for v in row))
        # the title is a line of its own, not the table's: a title longer than a narrow table
        # (a report's `customer_profile (people, upsert) — success in 0.2s` over two columns)
        # is not wrapped to the table's width nor padded to it
        if title:
            _say(self.out, Text(title, style="table.title"))
        self._print_whole(table)

    def _print_whole(self, table: Table) -> None:
        """Print ``table``; where the output is not a terminal (a pipe, a log, CI) and no
        ``COLUMNS`` is set, as wide as it needs (up to :data:`PIPED_WIDTH`) rather than folded
        into 80 columns: one line per row reads and greps better there."""
        out = self.out
        if _on_a_terminal(out) or os.environ.get("COLUMNS"):
            out.print(table)
            return
        natural = out.measure(table, options=out.options.update_width(PIPED_WIDTH)).maximum
        if natural <= out.width:
            out.print(table)
            return
        width = out.width
        out.width = natural
        try:
            out.print(table)
        finally:
            out.width = width


#: the widest a table is printed where the output is not a terminal
PIPED_WIDTH = 200


def _on_a_terminal(console: _RichConsole) -> bool:
    """Whether ``console`` writes to a terminal, whose width its lines are fitted to: rich's
    ``is_terminal``, but not where only ``FORCE_COLOR`` or ``TTY_COMPATIBLE=1`` make it one (a
    CI log asking for colour): that output still goes to a log, which has no width."""
    if not console.is_terminal:
        return False
    if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE") == "1":
        isatty = getattr(console.file, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False
    return True


def _say(console: _RichConsole, message: Text) -> None:
    """Print a message: wrapped at the width of a terminal, whole (one line per line of it)
    anywhere else, where a hard wrap at 80 columns would split what ``grep`` looks for."""
    console.print(message, soft_wrap=not _on_a_terminal(console))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
