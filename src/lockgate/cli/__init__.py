"""The `lockgate` command line: one click group, one module per command group.

Commands are imported lazily (``COMMANDS`` maps a name to ``module:attribute``), so
``lockgate --help`` stays fast and a command whose optional driver is missing does
not break the others. Every command raises :class:`~lockgate.errors.LockgateError`
for user mistakes; :func:`main` prints ``Error: <reason>`` and the hint, and exits 1
(a traceback only with ``--debug``). Any other exception is a bug: it is shown as one
``Error: unexpected ...`` line too, its traceback only with ``--debug``.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from lockgate import __version__, stopping
from lockgate.errors import LockgateError
from lockgate.stopping import CutShort, Interrupted, Stopped, Terminated

COMMANDS: dict[str, str] = {
    "init": "lockgate.cli.project:init",
    "validate": "lockgate.cli.project:validate",
    "sources": "lockgate.cli.sources:sources",
    "plan": "lockgate.cli.sync:plan",
    "sync": "lockgate.cli.sync:sync",
    "runs": "lockgate.cli.sync:runs",
    "schedule": "lockgate.cli.schedule:schedule",
    "history": "lockgate.cli.sync:history",
    "demo": "lockgate.cli.demo:demo",
    "emulator": "lockgate.cli.emulator:emulator",
    "webhooks": "lockgate.cli.webhooks:webhooks",
    "identity": "lockgate.cli.identity:identity",
    "reconcile": "lockgate.cli.reconcile:reconcile",
    "state": "lockgate.cli.state:state",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        # importing a command builds hundreds of thousands of objects (pydantic models, DuckDB,
        # Arrow) and none are garbage: the collector's passes over them while they are built
        # are ~5% of a command's start-up
        collecting = gc.isenabled()
        gc.disable()
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # the command is not built yet
                return None
            raise
        finally:
            if collecting:
                gc.enable()
        command: click.Command = getattr(module, attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lockgate")
@click.option(
    "--debug",
    is_flag=True,
    envvar="LOCKGATE_DEBUG",
    help="Show tracebacks for errors. [env: LOCKGATE_DEBUG]",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Lockgate moves customer data between your warehouse and Customer.io."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@contextmanager
def signals_let_requests_finish() -> Iterator[None]:
    """A scheduler (cron's kill, systemd, Kubernetes, Airflow) stops a job with SIGTERM, then
    SIGKILL after a grace period. By default SIGTERM ends Python on the spot, leaving the run
    recorded as running until the next one marks it crashed. Here it stops a run as Ctrl-C
    does: nothing more is sent, what was delivered is committed, the run is recorded as
    interrupted. During delivery, SIGTERM and the first Ctrl-C both let the requests in flight
    get their answers first (:mod:`lockgate.stopping`); a second one stops at once. Only from
    the main thread, and only for a signal no one else handles;
    `lockgate sync` uses it (a server such as `lockgate emulator` has its own shutdown)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed: dict[signal.Signals, Any] = {}

    def stops(first: type[Stopped], at_once: type[KeyboardInterrupt], notice: str = "") -> Any:
        def on_signal(signum: int, frame: object) -> None:
            if stopping.request(first):  # a delivery is under way: it drains its requests first
                if notice:
                    sys.stderr.write(notice)
                return
            raise CutShort(first) if stopping.requested() else at_once

        return on_signal

    on_sigterm = stops(Terminated, Terminated)
    on_sigint = stops(
        Interrupted,
        KeyboardInterrupt,
        "Ctrl-C: stopping once the requests in flight are answered, so that what Customer.io "
        "took is recorded (Ctrl-C again stops at once)\n",
    )

    for sig, handler, default in (
        (signal.SIGTERM, on_sigterm, signal.SIG_DFL),
        (signal.SIGINT, on_sigint, signal.default_int_handler),
    ):
        if signal.getsignal(sig) is default:
            installed[sig] = default
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is DuckDB running out of the state's memory limit: not a bug, and
    DuckDB's own advice (`SET memory_limit`) is not something a user of Lockgate can do."""
    import duckdb

    return isinstance(exc, duckdb.OutOfMemoryException)


def unexpected(exc: Exception) -> tuple[str, str]:
    """What to say of an error that is not a :class:`LockgateError` (reason, hint): the state
    out of its memory limit (not a bug, with the setting to raise), or else a bug."""
    if _out_of_memory(exc):
        from lockgate.state.store import MEMORY_LIMIT, MEMORY_LIMIT_ENV

        limit = os.environ.get(MEMORY_LIMIT_ENV, "").strip() or MEMORY_LIMIT
        return (
            f"the state ran out of memory ({limit}): {str(exc).splitlines()[0]}",
            f"set {MEMORY_LIMIT_ENV} to a larger size (such as 1GB) and run again: the state "
            "keeps what was committed, and the next run goes on from there",
        )
    from lockgate.sources.base import redact

    return (
        f"unexpected {type(exc).__name__}: {redact(str(exc))}",
        "this is a bug in Lockgate; check the names above against your project files, and "
        "run again with `--debug` for the traceback to report it",
    )


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI with one error handler for every command."""
    debug = "--debug" in (argv or sys.argv) or os.environ.get("LOCKGATE_DEBUG") == "1"
    try:
        return cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort as exc:
        cause = exc.__cause__
        if isinstance(cause, Stopped):
            if isinstance(cause, CutShort):
                said = (
                    f"Stopped at once by a second {cause.by}: the requests in flight were cut "
                    "off. What was delivered before them is recorded; the next run sends theirs "
                    "again with the rest (events keep their ids: none is stored twice)."
                )
            else:
                said = (
                    f"Stopped by {cause.by}: what was delivered is recorded; the next run sends "
                    "the rest."
                )
            click.echo(said, err=True)
            sys.exit(128 + cause.signum)
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except LockgateError as exc:
        if debug:
            raise
        where = getattr(exc, "location", None)
        click.secho(
            f"Error: {where + ': ' if where else ''}{exc.reason}",
            fg="red",
            err=True,
            color=_colour(),
        )
        if exc.hint:
            click.echo(f"  hint: {exc.hint}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug: still one line, not a traceback (unless --debug)
        if debug:
            raise
        reason, hint = unexpected(exc)
        click.secho(f"Error: {reason}", fg="red", err=True, color=_colour())
        click.echo(f"  hint: {hint}", err=True)
        sys.exit(1)


def _colour() -> bool:
    """Whether `Error:` is red: by the rule the rest of the output follows (rich's), so that
    ``NO_COLOR`` leaves a terminal's error plain too and ``FORCE_COLOR`` colours a log's."""
    from rich.console import Console

    err = Console(stderr=True)
    return err.is_terminal and not err.no_color


def entry() -> None:
    """The `lockgate` console script (and `python -m lockgate`): :func:`main`, then leave
    without the interpreter's teardown.

    Unloading DuckDB, Arrow, NumPy, pydantic and the rest takes ~0.2 s after every command
    (10% of an incremental sync), with nothing left to do by then: the state database is
    closed, the committer's thread joined, the output flushed. So the process ends with
    ``os._exit``, unless a thread other than the main one is still alive (then it exits the
    usual way, which waits for it). An unexpected exception (``--debug``) also leaves the
    usual way, with its traceback."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            raise
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`lockgate runs | head`)
            pass
    os._exit(code)
