"""Options shared by several commands."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from lockgate.errors import LockgateError
from lockgate.project.loader import Project, load_project

F = TypeVar("F", bound=Callable[..., Any])


def project_option(func: F) -> F:
    """`--project PATH` (env `LOCKGATE_PROJECT`, default: the current folder)."""
    return click.option(
        "--project",
        "project_path",
        type=click.Path(file_okay=False, path_type=Path),
        default=".",
        envvar="LOCKGATE_PROJECT",
        show_default=True,
        help="Project folder holding lockgate.yml. [env: LOCKGATE_PROJECT]",
    )(func)


def json_option(func: F) -> F:
    """`--json`: machine-readable output on stdout. A script reading stdout always gets one
    document: an error that stops the command before it prints its own is printed as
    `{"status": "failed", "error": ...}` (the message as on stderr, with its file, line and
    hint); the error still goes to stderr and the exit code stays 1. A stop by SIGTERM or
    Ctrl-C is printed the same way, with the error `interrupted` (exit 143 or 130)."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (LockgateError, KeyboardInterrupt) as exc:
            if _json_asked(kwargs) and not printed_as_json(exc):
                error = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
                doc = {"status": "failed", "error": error}
                sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
                mark_printed_as_json(exc)
            raise

    option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
    return option(command)  # type: ignore[return-value]


#: set on an error or a stop (KeyboardInterrupt) once a command printed it in its `--json`
#: document (:attr:`LockgateError.printed_as_json`), so that it is printed once
_PRINTED = "printed_as_json"


def printed_as_json(exc: BaseException) -> bool:
    """Whether the command already printed ``exc`` in its `--json` document."""
    return bool(getattr(exc, _PRINTED, False))


def mark_printed_as_json(exc: BaseException) -> None:
    setattr(exc, _PRINTED, True)


def _json_asked(kwargs: dict[str, Any]) -> bool:
    """`--json` on this command or on a group above it (`lockgate runs --json show`)."""
    if kwargs.get("as_json"):
        return True
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("as_json"):
            return True
        ctx = ctx.parent
    return False


def open_project(project_path: Path) -> Project:
    """Load the project, raising ConfigError (file:line) when it is invalid."""
    return load_project(project_path)
