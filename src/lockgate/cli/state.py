"""`lockgate state`: the syncs the project's state holds, by name.

A sync's name is its key in the state. Renamed in its file alone, it would start over as a
first run (every person sent again, recent events sent again); `state rename` carries its
snapshot, ledger, runs and history over to the new name. `state forget` drops the state of a
sync taken out of the project. See docs/sync.md, "Renaming or removing a sync".

Example::

    lockgate state list
    lockgate state rename product_events app_events
    lockgate state forget old_trial_events
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from lockgate.cli.options import json_option, open_project, project_option
from lockgate.console import RichConsole
from lockgate.errors import StateError
from lockgate.state import names
from lockgate.state.store import StateStore


@click.group()
def state() -> None:
    """List, rename or forget the syncs the project's state holds."""


@state.command("list")
@project_option
@json_option
def list_(project_path: Path, as_json: bool) -> None:
    """Every sync the state holds: its runs, what it delivered, and whether the project still
    has it (one it does not is a sync renamed or removed: `state rename` or `state forget`)."""
    project = open_project(project_path)
    held: list[names.HeldSync] = []
    if (project.state_dir / "state.duckdb").exists():
        with StateStore.open_read_only(project.state_dir) as store:
            held = names.held(store)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "sync": h.name,
                        "in_project": h.name in project.syncs,
                        "kind": h.kind,
                        "runs": h.runs,
                        "last_run": None if h.last_run is None else h.last_run.isoformat(),
                        "committed": h.committed,
                        "records": h.records,
                        "events": h.events,
                    }
                    for h in held
                ],
                indent=2,
            )
        )
        return
    console = RichConsole()
    if not held:
        console.info("the state holds no sync yet")
        return
    console.table(
        "syncs in the state",
        ["sync", "in lockgate.yml", "kind", "runs", "last run", "records delivered", "events"],
        [
            (
                h.name,
                "yes" if h.name in project.syncs else "NO",
                h.kind or "",
                h.runs,
                "" if h.last_run is None else f"{h.last_run:%Y-%m-%d %H:%M:%S}",
                h.records if h.kind != "events" else "",
                h.events if h.kind == "events" else "",
            )
            for h in held
        ],
    )
    gone = [h.name for h in held if h.name not in project.syncs]
    if gone:
        console.info(
            f"not in the project: {', '.join(f'`{n}`' for n in gone)}; renamed, carry the "
            "state over with `lockgate state rename OLD NEW`; removed for good, `lockgate "
            "state forget NAME`"
        )


@state.command()
@click.argument("old")
@click.argument("new")
@project_option
@json_option
def rename(old: str, new: str, project_path: Path, as_json: bool) -> None:
    """Carry sync OLD's state (snapshot, ledger, runs, history) over to NEW, the name its file
    now gives it, so its next run goes on from where OLD's left off instead of starting over.
    Rename the sync in its file first."""
    project = open_project(project_path)
    if new not in project.syncs:
        raise StateError(
            f"the project has no sync named `{new}`",
            hint=f"rename the sync in its file (`name: {new}`) first, then carry its state over",
        )
    if old in project.syncs:
        raise StateError(
            f"sync `{old}` is still in the project: its next run would start over",
            hint=f"rename it in its file (`name: {new}`) first, then carry its state over",
        )
    with StateStore.open(project.state_dir) as store:
        carried = names.rename(store, old, new)
    if as_json:
        held = carried.held
        print(json.dumps({"old": old, "new": new, "runs": held.runs, "records": held.records,
                          "events": held.events}))  # fmt: skip
        return
    RichConsole().info(
        f"the state of `{old}` is now `{new}`'s ({names.summary(carried.held)}): "
        f"`lockgate plan {new}` shows what its next run sends"
    )


@state.command()
@click.argument("name")
@click.option(
    "--yes", is_flag=True, help="Do not ask (a sync the project still has is refused anyway)."
)
@project_option
@json_option
def forget(name: str, yes: bool, project_path: Path, as_json: bool) -> None:
    """Drop everything the state holds of sync NAME, one taken out of the project: its
    snapshot, ledger, runs and history. What it delivered stays in Customer.io; a sync of
    that name added later starts as a first run."""
    project = open_project(project_path)
    if name in project.syncs:
        raise StateError(
            f"sync `{name}` is still in the project: forgetting its state would make its next "
            "run a first run (everything sent again)",
            hint=f"`lockgate sync {name} --full-resync` sends every record again while "
            "keeping its ledger; take the sync out of the project first to forget it",
        )
    with StateStore.open(project.state_dir) as store:
        held = {h.name: h for h in names.held(store)}.get(name)
        if held is not None and not yes and not as_json:
            click.confirm(
                f"forget sync `{name}` ({names.summary(held)})? What it delivered stays in "
                "Customer.io",
                abort=True,
            )
        was = names.forget(store, name)
    if as_json:
        print(json.dumps({"forgot": name, "runs": was.runs, "records": was.records,
                          "events": was.events}))  # fmt: skip
        return
    RichConsole().info(f"forgot sync `{name}` ({names.summary(was)})")
