"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

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
    """`--json`: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(func)


def open_project(project_path: Path) -> Project:
    """Load the project, raising ConfigError (file:line) when it is invalid."""
    return load_project(project_path)
