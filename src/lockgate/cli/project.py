"""`lockgate init` and `lockgate validate`: scaffold a project, check it before any run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson
from rich.text import Text

from lockgate.cli.options import json_option, open_project, project_option
from lockgate.console import RichConsole
from lockgate.errors import ConfigError, ConnectionCheckError, ContractError, LockgateError
from lockgate.project.fielddocs import json_schema
from lockgate.project.loader import Project
from lockgate.project.models import (
    ENV_IN_TEXT,
    ENV_REF,
    HIDDEN_NAME,
    HIDDEN_NAME_HINT,
    ProjectConfig,
    SyncConfig,
    name_hidden,
)

if TYPE_CHECKING:
    from lockgate.sync.connections import Check


def json_schemas() -> dict[str, object]:
    """JSON Schemas for editors: `lockgate.yml` and `syncs/*.yml`."""
    return {
        "lockgate.yml": json_schema(ProjectConfig),
        "syncs/*.yml": json_schema(SyncConfig),
    }


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@click.option(
    "--sample-data",
    is_flag=True,
    help="Also build the sample SaaS warehouse the scaffolded syncs read (`warehouse.duckdb`), "
    "to try the project against `lockgate emulator` before pointing it at your own.",
)
def init(directory: Path, force: bool, sample_data: bool) -> None:
    """Scaffold a project: lockgate.yml, syncs of people, events, companies (objects) and
    memberships (relationships) keyed through the identity graph, a SQL model, and JSON Schemas
    for editors."""
    from lockgate.demo import scaffold, scaffold_files

    schema_dir = directory / ".lockgate-schema"
    schema_files = {"lockgate.yml": "project.schema.json", "syncs/*.yml": "sync.schema.json"}
    writes = [
        *scaffold_files(),
        *(schema_dir.relative_to(directory) / f for f in schema_files.values()),
        *([Path("warehouse.duckdb")] if sample_data else []),
    ]
    # a file of the folder's own (a warehouse named `warehouse.duckdb`, a sync or a model of
    # the same name) is never replaced without `--force`: nothing is written then
    taken = [str(f) for f in writes if (directory / f).exists()]
    if taken and not force:
        shown = ", ".join(f"`{f}`" for f in taken[:5]) + (" and more" if len(taken) > 5 else "")
        raise ConfigError(
            f"`{directory}` already has {shown}, which `lockgate init` would overwrite; "
            "nothing was written",
            hint="pass `--force` to overwrite them, or choose another folder",
        )
    directory.mkdir(parents=True, exist_ok=True)
    scaffold(directory)
    schema_dir.mkdir(exist_ok=True)
    for name, schema in json_schemas().items():
        (schema_dir / schema_files[name]).write_bytes(
            orjson.dumps(schema, option=orjson.OPT_INDENT_2)
        )
    console = RichConsole()
    if sample_data:
        from lockgate.demo import warehouse

        with console.progress("building the sample warehouse", None):
            warehouse.build(directory / "warehouse.duckdb")
    console.info(Text.assemble("Created a Lockgate project in ", (str(directory), "bold"), ":"))
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        console.info(f"  {path.relative_to(directory)}")
    if sample_data:
        from lockgate.emulator.config import DEFAULT_API_KEY, DEFAULT_APP_API_KEY, DEFAULT_SITE_ID

        console.info(
            "Try it without a workspace: run `lockgate emulator` in another terminal, then\n"
            "  export CUSTOMERIO_TRACK_URL=http://127.0.0.1:8765\n"
            f"  export CUSTOMERIO_SITE_ID={DEFAULT_SITE_ID}\n"
            f"  export CUSTOMERIO_API_KEY={DEFAULT_API_KEY}\n"
            f"  export CUSTOMERIO_APP_API_KEY={DEFAULT_APP_API_KEY}   # optional: emails checked\n"
            f"  lockgate plan customer_profile --project {directory}\n"
            f"  lockgate sync --all --project {directory}\n"
            "Then point `sources.warehouse` at your warehouse and the credentials at your "
            "workspace (README: Point it at your Customer.io workspace)."
        )
    else:
        console.info(
            "Next: point `sources.warehouse` at your warehouse, set CUSTOMERIO_SITE_ID and "
            "CUSTOMERIO_API_KEY, then run `lockgate validate --connect` and `lockgate plan "
            "customer_profile` (or `lockgate init --sample-data` for a sample warehouse to "
            "try it against `lockgate emulator`)."
        )


@click.command()
@project_option
@json_option
@click.option(
    "--schema",
    "print_schema",
    is_flag=True,
    help="Print the JSON Schemas of lockgate.yml and sync files, then exit.",
)
@click.option(
    "--connect",
    is_flag=True,
    help="Also connect: each warehouse, each sync's model against its mapping (no rows "
    "read), and Customer.io with the credentials syncs will use (nothing sent).",
)
def validate(project_path: Path, as_json: bool, print_schema: bool, connect: bool) -> None:
    """Check lockgate.yml and every sync file; errors name the file and line. Also checks the
    data contract: attribute ownership, event-name drift, identifiers changed since the last
    run, deletes another sync cannot see, an events sync without timestamps whose first run
    would stop (docs/guardrails.md). With `--connect`, also checks that every warehouse, model and
    Customer.io credential works. Exits 1 on an error."""
    if print_schema:
        sys.stdout.write(orjson.dumps(json_schemas(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    try:
        project = open_project(project_path)
        for sync in project:
            project.model_sql(sync)  # a model file that cannot be read names its sync file, line
        missing = _missing_env(project)
        regions = _bad_regions(project)
        from lockgate.sync import contract

        findings = contract.check_project(project)
        errors = [f for f in findings if f.level == "error"]
        console = RichConsole(quiet=as_json)
        checks = _connect(project, console) if connect else []
    except LockgateError as exc:
        if as_json:  # CI reads `valid` from stdout: a file error is `valid: false` too
            invalid: dict[str, object] = {
                "valid": False,
                "syncs": [],
                "missing_env": [],
                "bad_region": [],
                "contract": [],
                "error": str(exc),
            }
            if connect:
                invalid["connections"] = []
            sys.stdout.write(orjson.dumps(invalid).decode() + "\n")
            exc.printed_as_json = True
        raise
    failed = [c for c in checks if c.ok is False]
    if as_json:
        doc: dict[str, object] = {
            "valid": not errors and not failed,
            "syncs": sorted(project.syncs),
            "missing_env": _missing_shown(missing),
            "bad_region": regions,
            "contract": [f.as_dict() for f in findings],
        }
        if connect:
            doc["connections"] = [c.as_dict() for c in checks]
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        if errors or failed:
            sys.exit(1)
        return
    console.table(
        f"{project.root / 'lockgate.yml'} is valid",
        ["sync", "kind", "source", "model", "file"],
        [
            (
                s.name,
                s.kind,
                s.source,
                s.model.table or s.model.file or "(inline SQL)",
                project.sync_files[s.name],
            )
            for s in project
        ],
    )
    for name, (where, line) in missing.items():
        state = "is empty" if name in os.environ else "is not set"
        at = f"lockgate.yml:{line}" if line else "lockgate.yml"
        if name_hidden(name, where):  # `api_key: ${sk_live_...}`: the "name" is the key
            console.warn(
                f"the environment variable named in `{where}` ({at}) {state}; syncs will need "
                f"it ({HIDDEN_NAME}). Hint: {HIDDEN_NAME_HINT}"
            )
            continue
        console.warn(
            f"{at}: environment variable `{name}` (for `{where}`) {state}; syncs will need it"
        )
    for warning in regions:
        console.warn(warning)
    contract.render(console, findings)
    if connect:
        _render_connections(console, checks)
    if errors:
        raise ContractError(
            f"{len(errors)} data-contract error{'s' if len(errors) > 1 else ''} (table above)",
            hint="see docs/guardrails.md for each check and how to acknowledge it",
        )
    if failed:
        raise ConnectionCheckError(
            f"{len(failed)} of {len(checks)} connection checks failed (table above)",
            hint="fix each as its hint says, then run `lockgate validate --connect` again",
        )


def _bad_regions(project: Project) -> list[str]:
    """A warning for each destination whose region comes from a `CUSTOMERIO_REGION` that is no
    region: every sync through it would stop at its deliver step, after reading and diffing.
    A warning, as for a variable not set: the runs may see another environment."""
    out = []
    for name, destination in project.config.destinations.items():
        try:
            destination.region_to_use()
        except ConfigError as exc:
            out.append(
                f"destination `{name}`: {exc.reason}; syncs through it will stop before "
                f"sending ({exc.hint})"
            )
    return out


def _missing_env(project: Project) -> dict[str, tuple[str, int | None]]:
    """Each `${VAR}` reference in lockgate.yml whose variable is unset or empty -> the first
    key that names it (`alerts[0].url`) and that key's line: those written in the file, and the
    destinations' `site_id` and `api_key`, which every sync needs even when left to their
    defaults (the default `app_api_key` is optional: `reconcile` says so itself when it is
    missing, a run reads back no email change without it and its report says so)."""
    found: dict[str, tuple[str, int | None]] = {}

    def walk(value: object, loc: tuple[str | int, ...]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*loc, str(key)))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, (*loc, i))
        elif isinstance(value, str):
            # a path option expands references anywhere in it (`${VOLUME}/lockgate`)
            path = bool(loc) and loc[-1] in PATH_OPTIONS
            names = ENV_IN_TEXT.findall(value) if path else []
            match = ENV_REF.match(value)
            for name in names or ([match.group(1)] if match else []):
                if not os.environ.get(name):
                    found.setdefault(name, (_dotted(loc), _line_of(project, loc)))

    for name, destination in project.config.destinations.items():
        for key in ("site_id", "api_key"):
            walk(getattr(destination, key), ("destinations", name, key))
    walk(project.config.model_dump(exclude_unset=True, by_alias=True), ())
    for name in ENV_IN_TEXT.findall(project.config.state):  # the default is not dumped
        if not os.environ.get(name):
            found.setdefault(name, ("state", project.lines.get(("state",))))
    return found


def _line_of(project: Project, loc: tuple[str | int, ...]) -> int | None:
    """The line of the key at ``loc`` in lockgate.yml; for a key left to its default (a
    destination's `api_key`), the line of the block it is in."""
    return project.lines.get(loc) or (project.lines.get(loc[:-1]) if len(loc) > 1 else None)


def _dotted(loc: tuple[str | int, ...]) -> str:
    """``("alerts", 0, "url")`` as `alerts[0].url`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _missing_shown(missing: dict[str, tuple[str, int | None]]) -> list[str]:
    """The variables of `missing_env` (`validate --json`) as they may be printed: a name
    :func:`name_hidden` hides is replaced by the key it is in."""
    return [
        f"(name not shown, in {where})" if name_hidden(name, where) else name
        for name, (where, _line) in missing.items()
    ]


#: the keys of lockgate.yml that name a file or folder (`project_path` expands them)
PATH_OPTIONS = ("state", "spool", "path", "private_key_path", "credentials_path")


def _connect(project: Project, console: RichConsole) -> list[Check]:
    from lockgate.sync import connections

    with console.progress("checking connections", connections.count(project)) as advance:
        return connections.check_connections(project, advance)


def _render_connections(console: RichConsole, checks: list[Check]) -> None:
    status = {True: "ok", False: "FAILED", None: "skipped"}
    console.table(
        "connections",
        ["check", "name", "status", "detail", "seconds"],
        [(c.what, c.name, status[c.ok], c.detail, f"{c.seconds:.2f}") for c in checks],
    )
    for c in checks:
        if c.hint and c.ok is not True:
            console.info(f"  {c.what} `{c.name}`: {c.hint}")
