"""Which Customer.io workspace each sync's state describes.

A sync's snapshot, event ledger and unconfirmed records say what one workspace holds. They are
keyed by the sync's name alone, so pointed at another workspace (a project copied with its
`.lockgate` from staging to production, two projects sharing one `state:` folder with a sync
of the same name) the state would have every record the new workspace never got counted as
delivered: nothing sent, events not even by `--full-resync` (the ledger is kept).

So the first run of a sync to commit records the workspace it delivered to, and every later
run or plan of the sync compares it with the workspace it points at, before anything is sent.
A workspace is known by its Track API site id (a region or URL changed with the same site id,
a proxy in front of it, is the same workspace); the state keeps a digest of it, not the id.
A state written before this record was kept has none: the first run to commit adopts the
workspace it points at.

Table: ``workspaces(sync, workspace, recorded_at)``, one row per sync.

Example::

    with StateStore.open(project.state_dir) as store:
        workspace.check(store, project, sync)  # raises StateError on another workspace
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from lockgate.errors import LockgateError, StateError
from lockgate.project.loader import Project
from lockgate.project.models import SyncConfig, resolve_env
from lockgate.state import contract
from lockgate.state.store import (
    EMAILS_OF_MERGES_KEPT_BACK,
    StateStore,
    has_table,
    journal_history,
    run_sql,
    table,
    transaction,
)

SCHEMA = """
create table if not exists workspaces (
    sync varchar primary key, workspace varchar, recorded_at timestamptz
);
"""


def of(project: Project, sync: SyncConfig) -> str | None:
    """The digest of the workspace ``sync`` points at: its destination's site id; None when
    the site id is not set (a plan without credentials: nothing to compare)."""
    config = project.config.destinations.get(sync.destination)
    if config is None:
        return None
    try:
        site_id = resolve_env(config.site_id, field="site_id", at=config)
    except LockgateError:
        return None
    if not site_id:
        return None
    return hashlib.sha256(f"customerio site id\0{site_id}".encode()).hexdigest()[:16]


def recorded(store: StateStore, sync: str) -> str | None:
    """The digest recorded for ``sync``; None before its first committed run (or in a state
    written before workspaces were recorded). Creates nothing: reads a state opened to read
    only."""
    if store.workspaces is None:  # read once per open: asked ~3 times a run
        rows = (
            run_sql(store.con, "select sync, workspace from workspaces")
            if has_table(store.con, "workspaces")
            else []
        )
        store.workspaces = {str(name): str(digest) for name, digest in rows}
    return store.workspaces.get(sync)


def record(store: StateStore, sync: str, workspace: str | None) -> None:
    """After a run of ``sync`` committed: record the workspace it delivered to, unless one is
    (a run that got past :func:`check` points at that one)."""
    if workspace is None or recorded(store, sync) is not None:
        return  # (asking is cheaper than the insert that does nothing, every run after the first)
    store.workspaces = None
    run_sql(store.con, SCHEMA)
    run_sql(
        store.con,
        "insert into workspaces values (?, ?, ?) on conflict do nothing",
        [sync, workspace, datetime.now(UTC)],
    )


#: what the state says was delivered by a sync: its snapshot, event ledger, journal,
#: unconfirmed records, `on_change` events under way, write-ahead records, events' ids
#: kept, emails people keep unseen and the people it made exist
DELIVERED = (
    "snap",
    "ledger",
    "journal",
    "unconfirmed",
    "oc_sent",
    "sending",
    "sending_events",
    "event_ids",
    "emails_kept",
    "people_known",
)


def start_over(store: StateStore, sync: str) -> None:
    """Forget what the state says ``sync`` delivered, and the workspace it was to (`lockgate
    sync --new-workspace`), in one transaction: the sync's next commit records the workspace
    it points at, and it sends everything, as on its first run. Its runs, history and data
    contract (identifiers, column types, mapping) stay, marked started over
    (``contract.start_over``): until a run of it commits, its next whole run is a first run
    (an events sync without timestamps is then stopped, or records the model as history, as
    `backfill.first_run` says), even after this one is stopped."""
    store.workspaces = None
    run_sql(store.con, SCHEMA)
    contract.ensure_tables(store.con)
    store.ensure_sync_tables(sync)
    with transaction(store.con, store.path):
        journal_history(store.con, sync)  # the history a killed run's journal holds
        for name in DELIVERED:
            run_sql(store.con, f"delete from {table(name, sync)}")
        # a relationships sync's rows rejected with no person, and what it kept for them
        if has_table(store.con, f"unaddressed__{sync}"):
            run_sql(store.con, f"delete from {table('unaddressed', sync)}")
        # an objects sync's delivered objects whose row was rejected (none delivered in the new)
        if has_table(store.con, f"rejected_objects__{sync}"):
            run_sql(store.con, f"delete from {table('rejected_objects', sync)}")
        # rows held for a merge kept back in the workspace left (none is kept back in the new)
        if has_table(store.con, EMAILS_OF_MERGES_KEPT_BACK):
            run_sql(store.con, f"delete from {EMAILS_OF_MERGES_KEPT_BACK} where sync = ?", [sync])
        run_sql(store.con, "delete from workspaces where sync = ?", [sync])
        contract.start_over(store.con, sync)


def moved(store: StateStore, project: Project, sync: SyncConfig) -> bool:
    """Whether ``sync`` points at another workspace than its state is of."""
    now, was = of(project, sync), recorded(store, sync.name)
    return now is not None and was is not None and now != was


#: how to go on when a sync's state is of another workspace (``{syncs}``: the syncs' names)
FIX = (
    "give this project a state folder of its own (`state:` in lockgate.yml); or, if the sync "
    "has moved to this workspace for good, start it over there: `lockgate sync {syncs} "
    "--new-workspace` forgets what the state says was delivered and sends every record and "
    "event again"
)


def check(store: StateStore, project: Project, sync: SyncConfig) -> None:
    """Refuse a run or plan of ``sync`` whose destination is another workspace than the one
    its state is of."""
    if not moved(store, project, sync):
        return
    raise StateError(
        f"sync `{sync.name}`: the state `{store.path}` is of another Customer.io workspace "
        f"(another site id) than destination `{sync.destination}` points at now: a run would "
        "skip every record and event the state says that workspace holds",
        hint=FIX.format(syncs=sync.name),
    )
