"""`lockgate demo`: a sample warehouse synced into the local Customer.io emulator, twice.

Act 1 builds the warehouse and runs every sync from scratch; act 2 changes a few rows and
runs again, showing that only those changes go out; act 3 closes the loop: the emulator sends
signed reporting webhooks for an email campaign, Lockgate receives them durably, loads them
into the warehouse, and a sync brings `last_email_opened_at` back into Customer.io. Nothing
leaves the machine: the emulator is served on a loopback port for the length of the demo.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rich.text import Text

from lockgate.console import Console
from lockgate.demo import warehouse
from lockgate.emulator import Emulator
from lockgate.errors import LockgateError
from lockgate.project.loader import load_project
from lockgate.sync.run import KIND_ORDER, RunReport, Session, run_sync

#: people who get the act 3 email campaign (a sample keeps the demo quick)
ENGAGED_PEOPLE = 200


@dataclass
class DemoResult:
    """Reports of both acts and what the emulator held after each."""

    directory: Path
    acts: list[list[RunReport]] = field(default_factory=list)
    people_in_customerio: list[int] = field(default_factory=list)
    events_in_customerio: list[int] = field(default_factory=list)
    objects_in_customerio: list[int] = field(default_factory=list)
    relationships_in_customerio: list[int] = field(default_factory=list)
    merges_in_customerio: list[int] = field(default_factory=list)
    engagement: Any = None
    people_with_opens: int = 0


def scaffold(directory: Path) -> None:
    """Copy the demo project (lockgate.yml, syncs/, models/) into ``directory``."""
    template = resources.files("lockgate.demo") / "project"
    with resources.as_file(template) as source:
        shutil.copytree(source, directory, dirs_exist_ok=True)


def scaffold_files() -> list[Path]:
    """The files :func:`scaffold` writes, relative to the folder it writes them in."""
    template = resources.files("lockgate.demo") / "project"
    with resources.as_file(template) as source:
        return sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())


#: the file `lockgate demo` leaves in its folder: a later demo replaces only a folder holding
#: it (or an empty one), never one that holds someone's own files
DEMO_MARK = ".lockgate-demo"


#: SHA-256 of the demo's lockgate.yml as earlier versions wrote it (their folders, made before
#: the mark, are still the demo's own)
OLDER_TEMPLATES = frozenset({"7f6fbfed55a2c1cc24e9a693a5db821fc3a8e9fc5d28a1bb0d2366a117727814"})


def _replaceable(directory: Path) -> bool:
    """Whether ``directory`` is empty or a demo's own folder (by its mark, or, for a demo
    folder made before the mark, by its lockgate.yml being the demo's)."""
    if not any(directory.iterdir()) or (directory / DEMO_MARK).is_file():
        return True
    template = resources.files("lockgate.demo") / "project" / "lockgate.yml"
    ours = directory / "lockgate.yml"
    if not ours.is_file():
        return False
    made = ours.read_bytes()
    return made == template.read_bytes() or hashlib.sha256(made).hexdigest() in OLDER_TEMPLATES


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def run_demo(directory: Path, console: Console) -> DemoResult:
    """Build, sync, change, sync again; returns both acts' reports. ``directory`` is replaced
    when it is a previous demo's (or empty); any other existing path is refused untouched."""
    if directory.exists():
        if not directory.is_dir() or not _replaceable(directory):
            raise LockgateError(
                f"`{directory}` exists and is not a folder `lockgate demo` made: the demo "
                "replaces its folder, so it will not use this one",
                hint="pass `--dir` a new or empty folder (or remove this one yourself)",
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / DEMO_MARK).write_text(
        "Made by `lockgate demo`, which replaces this folder when it runs again.\n"
    )
    scaffold(directory)
    warehouse.build(directory / "warehouse.duckdb")
    result = DemoResult(directory)
    emulator = Emulator()
    site_id, api_key = emulator.track_auth
    with (
        emulator.serve() as base_url,
        _env(
            {
                "CUSTOMERIO_SITE_ID": site_id,
                "CUSTOMERIO_API_KEY": api_key,
                "CUSTOMERIO_TRACK_URL": base_url,
                "CUSTOMERIO_APP_API_KEY": emulator.config.app_api_key,
                "CUSTOMERIO_APP_URL": base_url,
            }
        ),
    ):
        console.info(f"Customer.io emulator listening on {base_url}")
        for act in (1, 2):
            if act == 2:
                changed = warehouse.change_a_few_rows(directory / "warehouse.duckdb")
                console.info(
                    Text.assemble(
                        "\n",
                        ("Act 2", "bold"),
                        f": changed the warehouse ({changed['people_changed']} "
                        f"upgrades, {changed['people_added']} new person, "
                        f"{changed['events_added']} new events, {changed['companies_added']} new "
                        f"company, {changed['emails_changed']} email change, "
                        f"{changed['work_emails_linked']} work addresses learned by Stripe) "
                        "and ran again",
                    )
                )
            else:
                console.info(
                    Text.assemble("\n", ("Act 1", "bold"), ": first sync of a fresh warehouse")
                )
            project = load_project(directory)
            names = sorted(project.syncs, key=lambda n: KIND_ORDER[project.syncs[n].kind])
            # the identity graph resolved once for all the syncs, the state store opened once
            with Session() as session:
                reports = [
                    run_sync(project, name, console=console, session=session) for name in names
                ]
            result.acts.append(reports)
            result.people_in_customerio.append(len(emulator.people()))
            result.events_in_customerio.append(len(emulator.events()))
            result.objects_in_customerio.append(len(emulator.objects()))
            result.relationships_in_customerio.append(len(emulator.relationships()))
            result.merges_in_customerio.append(len(emulator.merges()))
        console.info(
            Text.assemble(
                "\n",
                ("Act 3", "bold"),
                ": Customer.io sends engagement back (reporting webhooks) into the warehouse, "
                "and a sync turns it into attributes",
            )
        )
        if importlib.util.find_spec("dlt") is None:  # the `webhooks` extra loads them
            console.warn(
                "act 3 skipped: loading webhooks into the warehouse needs dlt "
                '(pip install "lockgate[webhooks]"); `make demo` installs it'
            )
            return result
        from lockgate.webhooks.loop import run_engagement_loop

        result.engagement = run_engagement_loop(
            directory, emulator, console=console, max_people=ENGAGED_PEOPLE
        )
        opened = [p for p in emulator.people() if "last_email_opened_at" in p.attributes]
        result.people_with_opens = len(opened)
    return result
