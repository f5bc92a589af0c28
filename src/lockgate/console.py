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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from rich.console import Console as _RichConsole
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
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
    """What the core may tell a person. Keep it to a handful of methods."""

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def progress(self, label: str, total: int | None) -> contextlib.AbstractContextManager[Advance]:
        """A context manager yielding ``advance(n)``; draws a bar on a terminal."""
        ...

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...


class NullConsole:
    """Says nothing; collects messages so tests can read them."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def info(self, message: str) -> None:
        self.messages.append(message)

    def warn(self, message: str) -> None:
        self.messages.append(f"warning: {message}")

    @contextlib.contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[Advance]:
        yield lambda n: None

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.messages.append(title)


class _Count(ProgressColumn):
    """`done/total`; without a total, the count so far (`1,003`), or nothing for work that
    counts nothing (a diff): the pulsing bar and the elapsed time say it is going on."""

    def __init__(self) -> None:
        super().__init__()
        self._known = MofNCompleteColumn()

    def render(self, task: Task) -> Text:
        if task.total is not None:
            return self._known.render(task)
        return Text(f"{int(task.completed):,}" if task.completed else "", style="progress.download")


class RichConsole:
    """Draws with rich on the terminal (stderr for progress, stdout for results)."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.out = _RichConsole(highlight=False)
        self.err = _RichConsole(stderr=True, highlight=False)
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            self.out.print(message)

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {message}")

    @contextlib.contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[Advance]:
        if self.quiet:
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
        table = Table(title=title, title_justify="left")
        for column in columns:
            # a narrow terminal folds a long value onto the next line instead of cutting it
            # with `…`: a run id, a key or a reason is shown whole
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(str(v) for v in row))
        self.out.print(table)
