"""`lockgate identity`: explain a value's profile, preview a rule change.

Both commands read every identity source from the project's warehouses and resolve them in
memory, continuing from the graph the last sync kept, as the next sync would: what they
show is what the syncs do. They write no state and take no lock, so they can run while a
sync does.

Example::

    lockgate identity explain jane@x.com
    lockgate identity plan --old lockgate.prev.yml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from lockgate.cli.options import json_option, open_project, project_option
from lockgate.console import RichConsole
from lockgate.errors import ConfigError
from lockgate.identity import explain as explain_value
from lockgate.identity import plan as plan_rules
from lockgate.identity import resolve
from lockgate.project.identity import IdentityConfig
from lockgate.project.loader import read_yaml
from lockgate.sync.resolve import Warehouses, read_operator_tables, read_sources, saved_graph


def identity_config(data: Any, file: Path, root: Path) -> IdentityConfig:
    """The `identity:` section of a lockgate.yml, with file:line on errors."""
    shown = str(file.relative_to(root)) if file.is_relative_to(root) else str(file)
    if isinstance(data, IdentityConfig):
        return data
    if not data:
        raise ConfigError(
            "this project has no `identity:` section",
            hint="add one to lockgate.yml (see docs/identity.md)",
            file=shown,
        )
    try:
        return IdentityConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ("identity", *first["loc"])
        _, lines = read_yaml(file, root)
        line = None
        for cut in range(len(loc), 0, -1):
            line = lines.get(tuple(loc[:cut]))
            if line:
                break
        where = ".".join(str(p) for p in loc)
        hint = (first.get("ctx") or {}).get("hint") or "see docs/identity.md"
        raise ConfigError(f"`{where}`: {first['msg']}", hint=hint, file=shown, line=line) from exc


@click.group()
def identity() -> None:
    """Explain and plan identity resolution."""


@identity.command()
@click.argument("value")
@click.option("--type", "id_type", help="Identifier type of VALUE (default: try every type).")
@project_option
@json_option
def explain(value: str, id_type: str | None, project_path: Path, as_json: bool) -> None:
    """Show VALUE's profile, its identifiers, the rows that joined them and refused merges."""
    project = open_project(project_path)
    config = identity_config(project.config.identity, project.root / "lockgate.yml", project.root)
    if id_type is not None and id_type not in config.identifier_types:
        raise ConfigError(
            f"unknown identifier type `{id_type}`",
            hint=f"types: {', '.join(config.type_order)}",
        )
    with Warehouses(project) as warehouses:  # one snapshot of a Postgres warehouse
        blocklist, overrides = read_operator_tables(project, config, warehouses)
        sources = read_sources(project, config, warehouses)
    result = resolve(
        config,
        sources,
        run_id="explain",
        # from the graph the syncs kept: which earlier decisions stand (who keeps a contested
        # email) and the profile ids are theirs, not a fresh resolve's
        state=saved_graph(project),
        keep_rows=True,
        blocklist=blocklist,
        overrides=overrides,
    )
    why = explain_value(config, result, value, id_type=id_type)
    if as_json:
        click.echo(json.dumps(why.__dict__, default=str, indent=2))
        return
    console = RichConsole()
    if why.profile is None:
        found = ", ".join(f"{m['id_type']} ({m['status']})" for m in why.matches)
        console.info(f"`{value}` belongs to no profile" + (f": {found}" if found else ""))
        return
    p = why.profile
    console.info(
        f"profile {why.profile_id}: Customer.io id={p['cio_person_id']} email={p['cio_email']} "
        f"anonymous_id={p['cio_anonymous_id']}"
    )
    console.table(
        "identifiers",
        ["type", "value", "status", "sources"],
        [
            [i["id_type"], i["id_value"], i["status"], ", ".join(i["sources"])]
            for i in why.identifiers
        ],
    )
    console.table(
        "links",
        ["from", "to", "status", "reason", "sources"],
        [
            [
                f"{e['type_a']}:{e['value_a']}",
                f"{e['type_b']}:{e['value_b']}",
                e["status"],
                e["reason"] or "",
                ", ".join(e["sources"]),
            ]
            for e in why.edges
        ],
    )
    console.table(
        "source rows",
        ["source", "row", "link"],
        [[r["source"], r["row_key"], f"{r['value_a']} — {r['value_b']}"] for r in why.rows],
    )
    if why.refused:
        console.table(
            "refused merges",
            ["link", "rule", "counts", "profiles"],
            [
                [
                    f"{r['value_a']} — {r['value_b']}",
                    r["rule"],
                    r["counts"],
                    f"{r['profile_a']} / {r['profile_b']}",
                ]
                for r in why.refused
            ],
        )


@identity.command()
@click.option(
    "--old",
    "old_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A lockgate.yml holding the current (old) identity rules.",
)
@project_option
@json_option
def plan(old_path: Path, project_path: Path, as_json: bool) -> None:
    """Preview what the project's identity rules would merge, split or move versus --old."""
    project = open_project(project_path)
    new = identity_config(project.config.identity, project.root / "lockgate.yml", project.root)
    old_data, _ = read_yaml(old_path.resolve())
    old = identity_config(
        (old_data or {}).get("identity"), old_path.resolve(), old_path.parent.resolve()
    )
    with Warehouses(project) as warehouses:  # one snapshot of a Postgres warehouse
        blocklist, overrides = read_operator_tables(project, new, warehouses)
        sources = read_sources(project, new, warehouses)
    preview = plan_rules(
        old,
        new,
        sources,
        state=saved_graph(project),
        blocklist=blocklist,
        overrides=overrides,
    )
    summary = {
        "merges": preview.merges.drop_columns(["run_id"]).to_pylist(),
        "splits": preview.splits.drop_columns(["run_id"]).to_pylist(),
        "moves": preview.moves.drop_columns(["run_id"]).to_pylist(),
        "customerio_people": preview.people,
    }
    if as_json:
        click.echo(json.dumps(summary, default=str, indent=2))
        return
    console = RichConsole()
    console.info(
        f"{len(summary['merges'])} merges, {len(summary['splits'])} splits, "
        f"{len(summary['moves'])} moves; {len(preview.people)} Customer.io people touched"
    )
    for title, rows in summary.items():
        if rows:
            columns = list(rows[0])
            console.table(title, columns, [[r[c] for c in columns] for r in rows])
