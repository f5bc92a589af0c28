"""`lockgate sources`: look inside the project's warehouses.

Example::

    lockgate sources inspect                      # the only source: schemas and tables
    lockgate sources inspect warehouse --schema analytics
    lockgate sources inspect warehouse --table analytics.users --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lockgate.cli.options import json_option, open_project, project_option
from lockgate.console import RichConsole
from lockgate.errors import ConfigError, SourceError
from lockgate.project.loader import Project
from lockgate.sources import connect


@click.group()
def sources() -> None:
    """Inspect the warehouses declared in lockgate.yml."""


def pick_source(project: Project, name: str | None) -> str:
    """The source to inspect: the one named, or the project's only source."""
    declared = sorted(project.config.sources)
    if name is not None:
        if name not in project.config.sources:
            raise ConfigError(
                f"no source named `{name}`",
                hint=f"sources in lockgate.yml: {', '.join(f'`{n}`' for n in declared)}",
            )
        return name
    if len(declared) == 1:
        return declared[0]
    raise ConfigError(
        f"this project declares {len(declared)} sources; name the one to inspect",
        hint=f"e.g. `lockgate sources inspect {declared[0]}`",
    )


def _rows(value: int | None) -> int | str:
    """A count, right-aligned and grouped by the table as every count; empty where the
    warehouse keeps no estimate (a view)."""
    return "" if value is None else value


@sources.command()
@click.argument("source", required=False)
@click.option("--schema", help="List the tables of this schema (dataset) only.")
@click.option("--table", help="Show the columns of this table (`schema.table` or `table`).")
@project_option
@json_option
def inspect(
    source: str | None,
    schema: str | None,
    table: str | None,
    project_path: Path,
    as_json: bool,
) -> None:
    """Show a source's schemas and tables, or a table's columns and their types.

    Without SOURCE, the project's only source is used. Row counts are the warehouse's own
    cheap estimates, shown where it keeps them.
    """
    project = open_project(project_path)
    name = pick_source(project, source)
    warehouse = connect(project.config.sources[name], root=project.root, name=name)
    try:
        if table is not None:
            columns = warehouse.columns(table)
            data: dict[str, Any] = {
                "source": name,
                "table": table,
                "columns": [
                    {
                        "name": c.name,
                        "type": c.type,
                        "arrow_type": None if c.arrow_type is None else str(c.arrow_type),
                        "nullable": c.nullable,
                    }
                    for c in columns
                ],
            }
        else:
            schemas = warehouse.schemas()
            if schema is not None:
                if schema not in schemas:
                    match = [s for s in schemas if s.lower() == schema.lower()]
                    if not match:
                        raise SourceError(
                            f"source `{name}` has no schema `{schema}`",
                            hint=f"its schemas are {', '.join(f'`{s}`' for s in schemas)}",
                        )
                    schema = match[0]
                schemas = [schema]
            tables = warehouse.tables(schema)
            data = {
                "source": name,
                "type": warehouse.NAME,
                "schemas": schemas,
                "tables": [
                    {"schema": t.schema, "name": t.name, "kind": t.kind, "rows": t.rows}
                    for t in tables
                ],
            }
    finally:
        warehouse.close()

    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = RichConsole()
    if table is not None:
        console.table(
            f"{name}: columns of {table}",
            ["column", "type", "arrow type", "nullable"],
            [
                [
                    c["name"],
                    c["type"],
                    c["arrow_type"] or "",
                    "" if c["nullable"] is None else ("yes" if c["nullable"] else "no"),
                ]
                for c in data["columns"]
            ],
        )
        return
    counts = {s: 0 for s in data["schemas"]}
    for t in data["tables"]:
        counts[t["schema"]] = counts.get(t["schema"], 0) + 1
    console.table(
        f"{name} ({data['type']}): schemas",
        ["schema", "tables"],
        [[s, n] for s, n in counts.items()],
    )
    console.table(
        f"{name}: tables" + (f" in {schema}" if schema else ""),
        ["schema", "table", "kind", "rows"],
        [[t["schema"], t["name"], t["kind"], _rows(t["rows"])] for t in data["tables"]],
    )
