"""Resolve: key a sync's rows by profile through the identity graph (docs/identity.md).

Runs between extract and map, only for syncs whose `identify_by` uses identifier types that
Customer.io does not know by itself (`stripe_id`, `crm_id`, `anonymous_id`, ...). It reads
the project's identity sources, stitches them (`lockgate.identity.resolve`, with the previous
run's state so profile ids are stable), and adds to the staged model the identifiers
Customer.io should see for each row: ``cio_person_id`` (the Customer.io `id`), ``cio_email``
and ``cio_anonymous_id``. The sync is then mapped as if it had been keyed by those.

When the graph finds that two people Lockgate already delivered are one person, the planned
Customer.io merges (primary by priority, each exactly once, at most
`customerio.merge_policy.max_merges_per_run`) are sent before the sync's own updates, and
the resolved attributes are re-applied to the survivor by the sync's normal diff.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lockgate.console import Console
from lockgate.destinations.customerio.settings import CustomerIOSettings
from lockgate.errors import ConfigError, LockgateError, SourceError, StateError
from lockgate.identity import IdentityResult, IdentityState, Resolver, plan_customerio, resolve
from lockgate.identity.customerio import (
    CioOp,
    adoption_ops,
    adoptions,
    anonymous_id_ops,
    attribute_names,
    clear_ops,
    merge_addresses,
    merges_of,
    profile_attribute_columns,
    readdress_ops,
    readdressings,
    release_ops,
    releases,
    retired_clears,
    weak_adoptions,
    withheld_emails,
)
from lockgate.identity.memory import give_back
from lockgate.identity.normalize import normalize_column
from lockgate.identity.state import STITCH_COLUMNS
from lockgate.project.identity import IdentityConfig, IdentitySourceConfig
from lockgate.project.loader import PROJECT_FILE, Project
from lockgate.project.models import (
    FieldConfig,
    SyncConfig,
)
from lockgate.sources import connect
from lockgate.sources.base import Source, sql_excerpt
from lockgate.sources.postgres import PostgresSource
from lockgate.state.store import StateStore, registered, run_sql, table
from lockgate.sync.extract import Carry, read_as_text
from lockgate.sync.guard import GuardResult, columns_read
from lockgate.sync.mapping import (
    CUSTOMERIO_IDENTIFIERS,
    GRAPH_ATTRIBUTE_PREFIX,
    local_instant,
    same_zone,
)

IDENTITY_STATE = "identity"


def identity_config(project: Project, sync: SyncConfig) -> IdentityConfig:
    config = project.config.identity
    if config is None:
        unknown = [k for k in sync.identify_by if k not in CUSTOMERIO_IDENTIFIERS]
        raise ConfigError(
            f"sync `{sync.name}` identifies rows by {', '.join(f'`{k}`' for k in unknown)}, "
            "which needs identity resolution",
            hint="add an `identity:` section to lockgate.yml (docs/identity.md), or identify by "
            "`id`, `email` or `cio_id`",
            file=project.sync_files.get(sync.name),
        )
    for kind in sync.identify_by:
        if kind not in config.identifier_types and kind not in CUSTOMERIO_IDENTIFIERS:
            raise ConfigError(
                f"sync `{sync.name}`: identifier type `{kind}` is not declared under "
                "`identity.identifier_types`",
                hint=f"declared: {', '.join(sorted(config.identifier_types))}",
                file=project.sync_files.get(sync.name),
            )
    return config


def identity_queries(
    project: Project, config: IdentityConfig
) -> dict[str, list[tuple[IdentitySourceConfig, str]]]:
    """Each warehouse's identity sources and the query that reads each, by warehouse name."""
    declared = sorted(project.config.sources)
    by_warehouse: dict[str, list[tuple[IdentitySourceConfig, str]]] = {}
    for i, spec in enumerate(config.sources):
        name = spec.source or (declared[0] if len(declared) == 1 else None)
        if name is None or name not in project.config.sources:
            # `load_project` refuses both; a config built in code can still get here
            raise ConfigError(
                f"identity source `{spec.name}` (`identity.sources[{i}]`) "
                + (
                    "has no `source:`, and lockgate.yml declares several warehouses"
                    if name is None
                    else f"reads from `{name}`, which lockgate.yml does not declare"
                ),
                hint=f"set its `source:` to one of {', '.join(f'`{n}`' for n in declared)}",
                file=PROJECT_FILE,
                line=project.lines.get(("identity", "sources", i)),
            )
        by_warehouse.setdefault(name, []).append((spec, spec.sql or f"SELECT * FROM {spec.table}"))
    return by_warehouse


def identity_warehouse(project: Project, config: IdentityConfig) -> str:
    """The warehouse of the identity sources (the first one's `source:`, or the one source
    lockgate.yml declares): the operator's tables are read from it and the analyst tables
    written into it, next to the data they are about."""
    declared = sorted(project.config.sources)
    return next((s.source for s in config.sources if s.source), None) or declared[0]


class Warehouses:
    """The project's warehouses as one identity step reads them: each connected on first use
    (once, not per identity source: opening a DuckDB file or a Postgres session costs more
    than reading a small table) and closed at the end. A Postgres warehouse is read in one
    snapshot (:meth:`PostgresSource.snapshot`): the fingerprints of its identity inputs,
    its identity sources and the operator's tables all see the same rows, whatever other
    sessions commit meanwhile. Redshift's reads share one transaction the same way (its
    server-side cursors, :meth:`RedshiftSource._snapshot_connection`).

    Example::

        with Warehouses(project) as warehouses:
            found = graphinputs.inputs(project, config, warehouses)
            rows = read_sources(project, config, warehouses)
    """

    def __init__(self, project: Project) -> None:
        self.project = project
        self._open: dict[str, Source] = {}
        self._closing = contextlib.ExitStack()

    def __enter__(self) -> Warehouses:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._open.clear()
        self._closing.__exit__(*exc)  # a snapshot ended by an error is rolled back

    def get(self, name: str) -> Source:
        """The warehouse ``name``, connected (and, for Postgres, its snapshot begun) on the
        first call."""
        if name in self._open:
            return self._open[name]
        source = connect(self.project.config.sources[name], root=self.project.root, name=name)
        with contextlib.ExitStack() as opened:
            opened.callback(source.close)
            if isinstance(source, PostgresSource):
                opened.enter_context(source.snapshot())
            self._closing.push(opened.pop_all())  # the snapshot ends, then the source closes
        self._open[name] = source
        return source


def read_sources(
    project: Project, config: IdentityConfig, warehouses: Warehouses | None = None
) -> dict[str, pa.Table]:
    """Every identity source's rows, read from the project's warehouses (through
    ``warehouses``, by default connections of its own)."""
    if warehouses is None:
        with Warehouses(project) as own:
            return read_sources(project, config, own)
    out: dict[str, pa.Table] = {}
    index = {spec.name: i for i, spec in enumerate(config.sources)}
    for name, queries in identity_queries(project, config).items():
        source = warehouses.get(name)
        zone = project.config.sources[name].timezone
        for spec, sql in queries:
            i = index[spec.name]
            what = f"`{spec.table}`" if spec.table else f"`{sql_excerpt(spec.sql or '')}`"
            with _reading(
                f"identity source `{spec.name}` (`identity.sources[{i}]`, "
                f"{project.where('identity', 'sources', i)})",
                f"check its `{'table' if spec.table else 'sql'}:` ({what}) against source "
                f"`{name}`; `lockgate sources inspect {name}` lists its tables and columns",
            ):
                # a UHUGEINT past 2^127 as its digits, not as Arrow wraps it
                rows = read_as_text(source, sql).read_all()
            out[spec.name] = observed_in_zone(rows, spec.observed_at, zone)
    return {spec.name: out[spec.name] for spec in config.sources}


@contextlib.contextmanager
def _reading(what: str, hint: str) -> Iterator[None]:
    """A failed read of an identity table names the setting that asked for it, not a sync's
    model (the warehouse's own message is kept)."""
    try:
        yield
    except SourceError as exc:
        raise SourceError(f"{what} could not be read: {exc.reason}", hint=hint) from exc


#: the columns each operator table needs, for the hint of one that cannot be read
OPERATOR_COLUMNS = {
    "blocked_values_table": "`id_type`, `id_value`",
    "overrides_table": "`action`, `type_a`, `value_a`, `type_b`, `value_b`, `reason`",
}


def read_operator_tables(
    project: Project, config: IdentityConfig, warehouses: Warehouses | None = None
) -> tuple[pa.Table | None, pa.Table | None]:
    """The operator's blocklist and overrides tables, when the config names them, read from
    the warehouse of the identity sources (:func:`identity_warehouse`), through
    ``warehouses`` (by default a connection of its own)."""
    wanted = [
        (("identity", "blocked_values_table"), config.blocked_values_table),
        (("identity", "rules", "overrides_table"), config.rules.overrides_table),
    ]
    if not any(t for _, t in wanted):
        return None, None
    if warehouses is None:
        with Warehouses(project) as own:
            return read_operator_tables(project, config, own)
    name = identity_warehouse(project, config)
    source = warehouses.get(name)
    tables: list[pa.Table | None] = []
    for key, table_name in wanted:
        if not table_name:
            tables.append(None)
            continue
        with _reading(
            f"`{'.'.join(key)}` ({project.where(*key)}) names `{table_name}`, which",
            f"create `{table_name}` in source `{name}`, the warehouse of the identity "
            f"sources (columns {OPERATOR_COLUMNS[str(key[-1])]}), or correct the name; "
            f"`lockgate sources inspect {name}` lists its tables",
        ):
            tables.append(read_as_text(source, f"SELECT * FROM {table_name}").read_all())
    return tables[0], tables[1]


@dataclass
class Resolution:
    """One run's identity result and the resolver that keys rows with it."""

    config: IdentityConfig
    result: IdentityResult
    resolver: Resolver
    #: the graph was kept and its analyst tables written (by the first of several syncs that
    #: share it to commit: see ``run.Session``)
    saved: bool = False
    #: the saved graph, taken as it is: nothing that feeds it changed since it was stitched
    #: (:mod:`lockgate.sync.graphinputs`)
    reused: bool = False
    #: the key of the inputs this graph was stitched from, recorded with it once it is saved
    #: and its analyst tables written; None when they could not all be fingerprinted
    inputs_key: str | None = None
    #: what the App API said of each `(new, old)` email pair of ``readdressings``, by
    #: destination (:func:`readdress_lookup`): its old person's `cio_id` (or None), whether
    #: a person holds the new email, whether none holds the old one. Asked by the first sync
    #: sharing this graph; the later ones (`sync --all`: the same readdressings) build the
    #: same operations from it, filtered as delivered, without asking again (the App API's
    #: rate limit is low)
    readdress_answers: dict[tuple[str, str, str], tuple[str | None, bool, bool]] = field(
        default_factory=dict, repr=False
    )
    #: `(id, email lowercased)`: the profiles known by email alone that gained an `id` no
    #: person had when the first sync sharing this graph planned them, and the email they
    #: hold now: that sync's identify gives the person holding it the `id`, so a later sync
    #: of the command, which finds a person of that `id`, must not take it for a returning
    #: user's to merge with merges off (one person, twice)
    adopted_by_identify: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def save(self, state_dir: Path) -> None:
        """Keep this run's graph as the next run's starting point (stable profile ids)."""
        from lockgate.sync import graphinputs

        graphinputs.forget(state_dir)  # a key never describes a graph it was not recorded for
        self.result.state.write(state_dir / IDENTITY_STATE)

    def record_inputs(self, state_dir: Path) -> None:
        """Record what fed the saved graph, once it and its analyst tables are written: a
        next run whose inputs are the same reuses it."""
        from lockgate.sync import graphinputs

        if self.inputs_key is not None:
            graph = graphinputs.graph_id(self.result.batch, self.result.profiles)
            graphinputs.record(state_dir, graph, self.inputs_key)


def saved_graph(
    project: Project, columns: Mapping[str, list[str]] | None = None
) -> IdentityState | None:
    """The graph the last sync kept (`None` before the first), read without the state lock:
    `identity explain` and `identity plan` read it while a sync may be running. A sync swaps
    the folder in by renames (`IdentityState.write`), so a read caught between them is
    tried again rather than failing on a file that was just moved. `columns`: only these
    columns of a part (`IdentityState.read`)."""
    folder = project.state_dir / IDENTITY_STATE
    for attempt in range(5):
        try:
            return IdentityState.read(folder, columns)
        except OSError:
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
        # a part that is no Parquet file (damaged, cut short) or a `state.json` that is no
        # JSON: the sync's own renames never leave one, so reading again would not help
        except (ValueError, KeyError, pa.ArrowException) as exc:
            raise StateError(
                f"the saved identity graph in `{folder}` cannot be read: {exc}",
                hint="restore the folder from a backup; or move it away: the next run "
                "stitches the graph again from its sources, as a first run does (what the "
                "graph remembered beyond them, such as identifiers that left and merges held "
                "for review, is forgotten); `lockgate plan --all` shows what that would send",
            ) from exc
    return None  # pragma: no cover - the loop returns or raises


def people_of_anonymous_id(project: Project, value: str) -> list[str]:
    """The Customer.io `id`, email and `cio_id` of the people whose profile in the saved graph
    has the anonymous id ``value`` (an identifier of a type sent as Customer.io's
    `anonymous_id`): their identify carried it as an attribute and their anonymous events went
    out by `id`, so `lockgate history` finds their calls by these. Empty without an
    `identity:` section or before a sync saved a graph. Reads only the rows of the graph's
    Parquet files that hold ``value``."""
    config = project.config.identity
    if config is None:
        return []
    kinds = [n for n, t in config.identifier_types.items() if t.customerio == "anonymous_id"]
    folder = project.state_dir / IDENTITY_STATE
    if not (folder / "state.json").exists():
        folder = folder.with_name(folder.name + ".old")  # a write caught between its renames
        if not (folder / "state.json").exists():
            return []

    def parquet(part: str) -> str:
        return "'" + str(folder / f"{part}.parquet").replace("'", "''") + "'"

    con = duckdb.connect()
    try:
        rows = con.execute(
            f"""
            select cio_person_id, cio_email, cio_id from read_parquet({parquet("profiles")})
            where cio_anonymous_id = $value or profile_id in (
                select profile_id from read_parquet({parquet("nodes")})
                where id_value = $value and list_contains($kinds, id_type)
                  and status = 'active'  -- a quarantined one (a shared device) is no one's
            )
            """,
            {"value": value, "kinds": kinds},
        ).fetchall()
    except duckdb.Error:  # the graph was rewritten (a sync) while it was read: as if none
        return []
    finally:
        con.close()
    return sorted({str(v) for row in rows for v in row if v is not None})


def observed_in_zone(rows: pa.Table, column: str | None, zone: str | None) -> pa.Table:
    """``rows`` with their naive `observed_at` ``column`` (a timestamp without a time zone)
    read as local times in their source's `timezone` ``zone``, by the rule the syncs read
    them with (:func:`mapping.local_instant`): instants, ordered with a `timestamptz`
    `observed_at` of another identity source as they happened (a `keep_latest` cap keeps the
    link seen last). ``rows`` as they are without a zone (naive times are UTC, as ever), or
    when the column is not a naive timestamp (text is read as the graph reads it)."""
    if zone is None or same_zone(None, zone) or column is None or column not in rows.column_names:
        return rows
    at = rows.column_names.index(column)
    kind = rows.schema.field(at).type
    if not pa.types.is_timestamp(kind) or kind.tz is not None:
        return rows
    from lockgate.scratch import scratch

    with scratch() as con:
        con.execute("set TimeZone='UTC'")
        walls = pa.table({"w": rows.column(at)})
        con.register("__walls", walls)
        wall = "w" if kind.unit == "us" else "w::timestamp"
        read = con.sql(f"select {local_instant(wall, zone)} as o from __walls")
        instants = read.to_arrow_table().column("o")
    return rows.set_column(at, rows.schema.field(at).with_type(instants.type), instants)


def _graph_id(state: IdentityState) -> str:
    from lockgate.sync import graphinputs

    return graphinputs.graph_id(state.batch, state.profiles)


def saved_graph_id(project: Project) -> str | None:
    """The saved graph's :func:`graphinputs.graph_id` without reading the graph: its
    `state.json` batch and the run id on its first profile. None before the first graph, or
    if it is being swapped (then nothing is reused: the graph is stitched)."""
    import json

    import pyarrow.parquet as pq

    from lockgate.sync import graphinputs

    folder = IdentityState.stored_in(project.state_dir / IDENTITY_STATE)
    if folder is None:
        return None
    try:
        batch = int(json.loads((folder / "state.json").read_text())["batch"])
        profiles = pq.ParquetFile(folder / "profiles.parquet")
        # the first row alone: a row group of a million profiles' run ids took 0.12 s
        head = next(profiles.iter_batches(batch_size=1, columns=["run_id"]), None)
        first = (
            pa.Table.from_batches([head])
            if head is not None
            else pa.table({"run_id": pa.array([], pa.string())})
        )
    except (OSError, KeyError, ValueError):  # swapped while read: stitched, not reused
        return None
    return graphinputs.graph_id(batch, first)


def resolve_identities(project: Project, config: IdentityConfig, run_id: str) -> Resolution:
    """Stitch the project's identity sources, continuing from the saved graph; or, when
    nothing that feeds the graph changed since it was saved (the sources' rows, the
    operator's tables, the identity config, Lockgate's resolver), reuse the saved graph as it
    is: stitching the same inputs again gives it back (:mod:`lockgate.sync.graphinputs`)."""
    from lockgate.sync import graphinputs

    # decided before anything is read: the graph, when its key was recorded and the inputs
    # turn out unchanged, is read whole once the snapshot is over; otherwise only the columns
    # of the map and the edges a stitch reads (not their run ids, statuses and reasons: ~50 MiB
    # at a million people), before the snapshot when no key could match (no idle
    # transaction while it loads)
    graph = saved_graph_id(project)
    saved_key = None if graph is None else graphinputs.recorded(project.state_dir, graph)
    previous = saved_graph(project, STITCH_COLUMNS) if saved_key is None else None
    # one snapshot of each Postgres warehouse for the fingerprints and the reads: the key
    # recorded with the graph describes the rows it was stitched from, whatever is
    # committed meanwhile
    with Warehouses(project) as warehouses:
        found = graphinputs.inputs(project, config, warehouses)
        key = None if found is None else found.key
        reusable = key is not None and key == saved_key
        if not reusable:
            if previous is None:
                previous = saved_graph(project, STITCH_COLUMNS)
            inputs = read_sources(project, config, warehouses)
            blocklist, overrides = read_operator_tables(project, config, warehouses)
            if found is not None and (
                # read outside a snapshot (DuckDB): fingerprinted again, the rows must not
                # have changed while they were read
                (not found.in_snapshot and graphinputs.inputs_key(project, config) != key)
                or not found.read_as(inputs, blocklist, overrides)
            ):
                key = None  # a source changed while it was read: which rows were read is not known
    if reusable:
        whole = saved_graph(project)
        if whole is not None and _graph_id(whole) == graph:
            reused = IdentityResult.reused(whole, run_id)
            return Resolution(config, reused, Resolver(config, reused), saved=True, reused=True)
        del whole
        # replaced between the two reads (a `plan` beside a sync): stitch what is there now
        return _stitch_again(project, config, run_id)
    give_back()  # the Parquet and warehouse readers' buffers
    # handed over, not kept here: `resolve` lets go of the sources once they are normalised
    # and of the saved graph's nodes and edges once they are merged in (~100 MiB at 300k
    # people), before its own peak
    sources, state = [inputs], [previous]
    del inputs, previous
    result = resolve(
        config,
        sources.pop(),
        run_id=run_id,
        state=state.pop(),
        blocklist=blocklist,
        overrides=overrides,
    )
    give_back()  # the stitch's temporaries
    return Resolution(config, result, Resolver(config, result), inputs_key=key)


def _stitch_again(project: Project, config: IdentityConfig, run_id: str) -> Resolution:
    """Stitch without reuse: the saved graph was replaced between the reuse check and its
    read (a `plan` beside a sync). No key is recorded with the result: which graph the
    inputs were compared against is not known."""
    previous = saved_graph(project, STITCH_COLUMNS)
    with Warehouses(project) as warehouses:
        inputs = read_sources(project, config, warehouses)
        blocklist, overrides = read_operator_tables(project, config, warehouses)
    result = resolve(
        config, inputs, run_id=run_id, state=previous, blocklist=blocklist, overrides=overrides
    )
    return Resolution(config, result, Resolver(config, result), inputs_key=None)


def model_collisions(sync: SyncConfig, columns: list[str], file: str | None = None) -> list[str]:
    """The model's columns named like one :func:`key_rows` adds (``profile_id``, the ``cio_*``
    identifiers, a graph attribute's): left out of the keyed model when the sync does not read
    them, so the graph's stand; a config error when it does, since which one it means is not
    clear (its own `cio_person_id` would otherwise send events to other people)."""
    from lockgate.identity.explain import CIO_COLUMNS

    added = {"profile_id", *CIO_COLUMNS}
    clash = [c for c in columns if c in added or c.startswith(graph_attribute_column(""))]
    read = [c for c in columns_read(sync) if c in clash]
    if read:
        raise ConfigError(
            f"sync `{sync.name}` reads the model's column `{read[0]}`, which has the name of a "
            "column the identity graph adds to each row (`profile_id`, `cio_person_id`, "
            "`cio_email`, `cio_anonymous_id`, `cio_id`)",
            hint=f"rename it in the model (`{read[0]} as crm_{read[0]}`) and in the sync file",
            file=file,
        )
    return clash


def key_rows(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    resolution: Resolution,
    file: str | None = None,
) -> SyncConfig:
    """Add the Customer.io identifiers to the staged model; return the sync keyed by them."""
    # through Arrow and back: a UHUGEINT past 2^127 (a HUGEINT of -2^127) crosses as its text
    carry = Carry.of({r[0]: r[1] for r in con.execute("describe model").fetchall()})
    staged = con.sql(carry.read("model")).to_arrow_table()
    clash = model_collisions(sync, staged.column_names, file)
    if clash:
        staged = staged.drop_columns(clash)
    require_columns(sync, staged.column_names)
    aliases = {"id": "user_id"}  # Customer.io's `id` is the identity graph's `user_id`
    columns = {column: aliases.get(kind, kind) for kind, column in sync.identify_by.items()}
    keyed = resolution.resolver.resolve_table(staged, columns)
    withheld = withheld_emails(resolution.result, resolution.config)
    if withheld and "cio_email" in keyed.column_names:
        # merges off, the profile's email is another of its Customer.io people's: sent with
        # it, the update would be dropped whole (docs/identity.md, "Merges turned off")
        hit = pc.is_in(keyed["profile_id"], value_set=pa.array(sorted(withheld), pa.string()))
        email = keyed["cio_email"]
        keyed = keyed.set_column(
            keyed.schema.get_field_index("cio_email"),
            "cio_email",
            pc.if_else(pc.fill_null(hit, False), pa.nulls(len(keyed), email.type), email),
        )
    graph_attributes: dict[str, str] = {}
    if sync.kind == "relationships":
        keyed = one_row_per_relationship(keyed, sync, columns, resolution.config)
    if sync.kind == "people":
        keyed = one_row_per_person(keyed, sync, columns, resolution.config)
        # what the graph knows goes to every person (Stripe id, contested email, ...); a value
        # that moves to another profile is cleared (`""`) on the person who no longer holds it.
        # A null is skipped, never sent as a clear: only a move clears.
        by_name = profile_attribute_columns(resolution.result, resolution.config)
        for name in attribute_names(resolution.config):
            if name in sync.attributes:
                continue
            holders = by_name.get(name)
            if holders is None:
                holders = pa.table(
                    {"profile_id": pa.array([], pa.string()), "value": pa.array([], pa.string())}
                )
            at = pc.index_in(keyed["profile_id"], value_set=holders["profile_id"].combine_chunks())
            values = holders["value"].combine_chunks().take(at)
            column = graph_attribute_column(name)
            keyed = keyed.append_column(column, values)
            graph_attributes[name] = column
    with registered(con, "_keyed_model", keyed):
        loaded = carry.only(keyed.column_names).load("_keyed_model")
        run_sql(con, f"create or replace temp table model as {loaded}")
    return keyed_sync(sync, graph_attributes)


def graph_attribute_column(name: str) -> str:
    """The column :func:`key_rows` adds for the graph attribute ``name`` (a Stripe id...)."""
    return f"{GRAPH_ATTRIBUTE_PREFIX}{name}"


def keyed_sync(sync: SyncConfig, graph_attributes: dict[str, str]) -> SyncConfig:
    """``sync`` as it reads the model once :func:`key_rows` added the graph's columns
    (``profile_id``, the ``cio_*`` identifiers, and ``graph_attributes``: attribute name ->
    column)."""
    identify_by = {"id": "cio_person_id", "email": "cio_email"}
    attributes = dict(sync.attributes)
    if sync.kind == "people" and "anonymous_id" not in attributes:
        # carrying the anonymous id on identify attaches earlier anonymous events
        attributes["anonymous_id"] = FieldConfig(column="cio_anonymous_id")
    for name, column in graph_attributes.items():
        attributes[name] = FieldConfig(column=column, on_null="skip")
    return sync.keyed_through_graph(
        graph_columns_added(graph_attributes), identify_by=identify_by, attributes=attributes
    )


def graph_columns_added(graph_attributes: dict[str, str]) -> list[str]:
    """The columns :func:`key_rows` adds to each row: the profile id, the Customer.io
    identifiers and the graph's attributes (``graph_attributes``: name -> column)."""
    from lockgate.identity.explain import CIO_COLUMNS

    return ["profile_id", *CIO_COLUMNS, *graph_attributes.values()]


def require_columns(sync: SyncConfig, columns: list[str]) -> None:
    """The columns resolution reads must be in the model: the same error the mapping gives
    for them, before the graph's tables are built on a missing one."""
    missing = [
        f"primary key column `{c}` is not in the model"
        for c in sync.key_columns
        if c not in columns
    ]
    missing += [
        f"identifier `{kind}` reads column `{c}`, which the model does not return"
        for kind, c in sync.identify_by.items()
        if c not in columns
    ]
    if sync.kind == "relationships" and sync.object_id and sync.object_id not in columns:
        missing.append(f"object id column `{sync.object_id}` is not in the model")
    if missing:
        raise ConfigError(
            f"sync `{sync.name}`: {missing[0]}",
            hint=f"the model's columns are {', '.join(f'`{c}`' for c in columns)}",
        )


def _person_of(keyed: pa.Table) -> pa.Array:
    """The person each resolved row goes to (`id`, else email), as one string (a split under
    review sends several profiles to one person)."""
    return pc.coalesce(
        pc.binary_join_element_wise("id", keyed["cio_person_id"], pa.scalar("\x1f")),
        pc.binary_join_element_wise("email", keyed["cio_email"], pa.scalar("\x1f")),
    ).combine_chunks()


def _own_rank(keyed: pa.Table, columns: dict[str, str], config: IdentityConfig) -> pa.Array:
    """Per row, 0 when its own `id` is its person's `id`, 1 when its own email is its person's
    email, else 2: which of several rows of one person speaks for it."""
    rank = pa.repeat(pa.scalar(2, pa.int8()), keyed.num_rows)
    for column, type_name in columns.items():
        target = config.identifier_types[type_name].customerio
        if target not in ("id", "email"):
            continue
        own = normalize_column(config, type_name, keyed[column]).values
        person = keyed["cio_person_id" if target == "id" else "cio_email"]
        hit = pc.fill_null(pc.equal(own, person), False)
        best = pc.min_element_wise(rank, pa.scalar(0 if target == "id" else 1, pa.int8()))
        rank = pc.if_else(hit, best, rank)
    return rank


def one_row_per_relationship(
    keyed: pa.Table, sync: SyncConfig, columns: dict[str, str], config: IdentityConfig
) -> pa.Table:
    """Rows of a relationships sync that resolve to the same person and object are one
    relationship (two accounts of one company found to be one human): the row whose own `id`
    is the person's (else its email, else the first) is kept, the others are left out, so
    the relationship is neither rejected as a repeated key nor sent twice."""
    assert sync.object_id is not None
    pair = pc.binary_join_element_wise(
        _person_of(keyed), pc.cast(keyed[sync.object_id], pa.string()), pa.scalar("\x1f")
    )
    counts = pc.value_counts(pair.drop_null())
    shared = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(shared) == 0:
        return keyed
    order = (
        pa.table(
            {
                "pair": pair,
                "rank": _own_rank(keyed, columns, config),
                "row": pa.array(range(keyed.num_rows), pa.int64()),
            }
        )
        .filter(pc.is_in(pair, value_set=shared))
        .sort_by([("pair", "ascending"), ("rank", "ascending"), ("row", "ascending")])
    )
    pairs, rows = order["pair"].to_pylist(), order["row"].to_pylist()
    left_out = [rows[i] for i in range(1, len(rows)) if pairs[i] == pairs[i - 1]]
    keep = np.ones(keyed.num_rows, dtype=bool)
    keep[left_out] = False
    return keyed.filter(pa.array(keep))


def one_row_per_person(
    keyed: pa.Table, sync: SyncConfig, columns: dict[str, str], config: IdentityConfig
) -> pa.Table:
    """When several rows of a people sync resolve to one person, only one sets attributes.

    Two accounts found to be one human (a force-merge, a re-created account) are two rows
    that now identify the same person; sending both lets whichever arrives last win. The row
    whose own `id` is the person's `id` wins (else the one whose email is the person's, else
    the smallest primary key); where another row's attribute value contradicts the winner's,
    that value is nulled, and nulls are skipped (not sent); for a field whose nulls clear (or
    send a default), the other rows take the winner's value instead.
    """
    people = _person_of(keyed)
    counts = pc.value_counts(people.drop_null())
    shared = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(shared) == 0:
        return keyed
    rank = _own_rank(keyed, columns, config)
    keys = [sync.primary_key] if isinstance(sync.primary_key, str) else sync.primary_key or []
    order = pa.table(
        {
            "person": people,
            "rank": rank,
            "pk": pc.binary_join_element_wise(
                *[pc.cast(keyed[k], pa.string()) for k in keys], pa.scalar("\x1f")
            )
            if keys
            else pa.repeat(pa.scalar(""), keyed.num_rows),
            "row": pa.array(range(keyed.num_rows), pa.int64()),
        }
    ).filter(pc.is_in(people, value_set=shared))
    order = order.sort_by([("person", "ascending"), ("rank", "ascending"), ("pk", "ascending")])
    sorted_people = order["person"].to_pylist()
    # each row of a shared person points at the row that wins for that person
    winner = np.arange(keyed.num_rows, dtype=np.int64)
    first = -1
    for i, row in enumerate(order["row"].to_pylist()):
        if i == 0 or sorted_people[i] != sorted_people[i - 1]:
            first = row
        winner[row] = first
    lost = winner != np.arange(keyed.num_rows)
    at_winner = pa.array(winner)
    for name, spec in sync.attributes.items():
        column = spec.column or name
        if spec.value is not None or column not in keyed.column_names:
            continue
        data = keyed[column].combine_chunks()
        theirs = data.take(at_winner)
        if (spec.on_null or sync.on_null) == "skip":
            # a null is left out: only a value that contradicts the winner's is held back;
            # agreeing or extra ones stay
            clash = pc.fill_null(pc.not_equal(data, theirs), False)
            value = pc.if_else(pc.and_(pa.array(lost), clash), pa.nulls(len(data), data.type), data)
        else:
            # a null clears (or sends a default): the other rows send the winner's value, so
            # neither their nulls nor their own values undo what the winner sets
            value = pc.if_else(pa.array(lost), theirs, data)
        keyed = keyed.set_column(keyed.schema.get_field_index(column), column, value)
    return keyed


def known_people(
    store: StateStore, project: Project, among: Collection[tuple[str, str]] | None = None
) -> set[tuple[str, str]]:
    """People Lockgate has delivered, as `(kind, value)`: merges need both ends to exist.

    The people syncs' snapshots, the people they remember keeping an email their row let go
    of (``emails_kept__S``, ``diff.keep_emails``), and by `id` (by email, for one known by
    email alone) every person they made exist and Customer.io has not confirmed gone
    (``people_known__S``): a row that left a `mirror` sync without `delete_removed` leaves
    its snapshot once its clear is sent, one whose email a later row took leaves it with the
    release (``diff.forget_released_left``), and a row the graph keys to another person
    (a Stripe customer whose email became a user's) no longer shows the one it reached,
    but that person stays in Customer.io. Forgotten, a user who came back with the address
    of a lead's person would not have that person merged into theirs, and Customer.io would
    drop the user's update; a person known by email alone whose email joins a user's
    profile would be left beside the user's. The tables forget them once Customer.io
    deleted them, or merged them into another person (:func:`merged_away`).

    With `among`, only those of these pairs (the addresses a plan asks about): not a set of
    every person delivered (~480 MiB and 2 s at a million)."""
    known: set[tuple[str, str]] = set()
    if among is not None:
        wanted = set(among)
        if not wanted:
            return set()
        look = pa.table(
            {
                "kind": pa.array([k for k, _ in wanted], pa.string()),
                "v": pa.array([v for _, v in wanted], pa.string()),
            }
        )
    people = [other.name for other in project if other.kind == "people"]
    for name in people:
        store.ensure_sync_tables(name)
    if people:  # one statement over every people sync's snapshot
        sql = " union all ".join(
            f"select json_extract_string(ident, '$.id'), json_extract_string(ident, '$.email') "
            f"from {table('snap', name)} union all "
            f"select json_extract_string(ident, '$.id'), email from {table('emails_kept', name)} "
            f"union all select id, email from {table('people_known', name)}"
            for name in people
        )
        if among is None:
            rows = store.con.execute(sql).fetchall()
        else:
            with registered(store.con, "_addresses", look):
                rows = store.con.execute(
                    f"select * from ({sql}) s(i, e) where i in (select v from _addresses "
                    "where kind = 'id') or lower(e) in (select v from _addresses "
                    "where kind = 'email')"
                ).fetchall()
        for person_id, email in rows:
            if person_id:
                known.add(("id", person_id))
            if email:
                known.add(("email", email.lower()))
    return known if among is None else known & wanted


def email_holders(
    store: StateStore, project: Project, emails: Collection[str]
) -> dict[str, set[str]]:
    """Of ``emails`` (lowercased), the `id`s of the people the people syncs last left holding
    each in Customer.io: their snapshots (what a row was last sent) and the emails a row let
    go of that its person kept (``emails_kept__S``: a user who came back with a null email,
    which is not sent, still holds the old one). A person the graph takes for one known by
    email alone may be such a user's (a lead's row reached it by that email)."""
    wanted = sorted({e.lower() for e in emails})
    people = [other.name for other in project if other.kind == "people"]
    if not wanted or not people:
        return {}
    for name in people:
        store.ensure_sync_tables(name)
    sql = " union all ".join(
        f"select json_extract_string(ident, '$.id'), json_extract_string(ident, '$.email') "
        f"from {table('snap', name)} union all "
        f"select json_extract_string(ident, '$.id'), email from {table('emails_kept', name)}"
        for name in people
    )
    held: dict[str, set[str]] = {}
    for person_id, email in store.con.execute(
        f"select distinct i, lower(trim(e)) from ({sql}) s(i, e) where i is not null "
        "and lower(trim(e)) in (select unnest(?::varchar[]))",
        [wanted],
    ).fetchall():
        held.setdefault(str(email), set()).add(str(person_id))
    return held


def merged_away(project: Project, ops: pa.Table) -> Callable[[StateStore, list[str]], None] | None:
    """For the delivery of the identity operations ``ops`` (``k``, ``op``): what forgets, in
    the ``people_known__S`` of every people sync, the people the merges among them whose keys
    are delivered absorbed (their `secondary`, by `id`, `cio_id` or email: Customer.io
    deleted it), in the transaction that ledgers them (``Committer.forget_merged``). None
    when no merge is among them."""
    absorbed: dict[str, list[tuple[str, str]]] = {}
    for key, text in zip(ops["k"].to_pylist(), ops["op"].to_pylist(), strict=True):
        op = orjson.loads(text)
        if op.get("action") != "merge":
            continue
        for kind in ("id", "cio_id", "email"):
            value = op["secondary"].get(kind)
            if value is not None:
                value = str(value).lower() if kind == "email" else str(value)
                absorbed.setdefault(key, []).append((kind, value))
    people = [other.name for other in project if other.kind == "people"]
    if not absorbed or not people:
        return None

    def forget(store: StateStore, keys: list[str]) -> None:
        gone = [pair for k in keys for pair in absorbed.get(k, ())]
        if not gone:
            return
        pairs = pa.table(
            {
                "kind": pa.array([k for k, _ in gone], pa.string()),
                "value": pa.array([v for _, v in gone], pa.string()),
            }
        )
        with registered(store.con, "_merged_away", pairs):
            for name in people:
                store.exec_sql(
                    f"delete from {table('people_known', name)} "
                    "where ('id', id) in (select kind, value from _merged_away) "
                    "or ('cio_id', cio_id) in (select kind, value from _merged_away) "
                    "or ('email', email) in (select kind, value from _merged_away)"
                )

    return forget


def _may_merge(resolution: Resolution) -> bool:
    """Whether the graph's Customer.io plan can hold a merge: profiles merged this run, or a
    profile holding more than one imported Customer.io person (`cio_id` identifiers), the
    two sources of merges in ``plan_customerio``."""
    result, config = resolution.result, resolution.config
    if result.merges.num_rows:
        return True
    counts = [
        pc.fill_null(result.profiles[f"n_{t}"], 0)
        for t, spec in config.identifier_types.items()
        if spec.customerio == "cio_id" and f"n_{t}" in result.profiles.column_names
    ]
    if not counts:
        return False
    return bool(pc.any(pc.greater(functools.reduce(pc.add, counts), 1)).as_py())


def _id_and_email(op: CioOp) -> tuple[str, str] | None:
    """The `id` and email a merge names, one on each side (`{"id": ...}` into or from
    `{"email": ...}`); None for a merge of two emails or by `cio_id`."""
    sides = {**op.payload["primary"], **op.payload["secondary"]}
    if len(sides) != 2 or "id" not in sides or "email" not in sides:
        return None
    return str(sides["id"]), str(sides["email"]).lower()


def one_person_already(store: StateStore, project: Project, ops: list[CioOp]) -> set[str]:
    """The keys of the merges of ``ops`` whose two people are one person already, as the
    project's people syncs last delivered them: a record that gave the merge's `id` the
    merge's email (or one whose email Customer.io kept for that `id`, `emails_kept`).

    A lead whose row comes back while a user's person holds its email (the user's row gone)
    reaches that person; when the user comes back with it, the lead's profile gains the
    user's `id`, and a merge of the person with that `id` into the one with that email names
    one person twice, which Customer.io refuses."""
    pairs = {pair for op in merges_of(ops) if (pair := _id_and_email(op)) is not None}
    people = [other.name for other in project if other.kind == "people"]
    if not pairs or not people:
        return set()
    for name in people:
        store.ensure_sync_tables(name)
    held = " union all ".join(
        f"select json_extract_string(ident, '$.id'), json_extract_string(ident, '$.email') "
        f"from {table('snap', name)} union all "
        f"select json_extract_string(ident, '$.id'), email from {table('emails_kept', name)}"
        for name in people
    )
    look = pa.table(
        {
            "i": pa.array([i for i, _ in pairs], pa.string()),
            "e": pa.array([e for _, e in pairs], pa.string()),
        }
    )
    with registered(store.con, "_merged_pairs", look):
        rows = store.con.execute(
            f"select distinct p.i, p.e from ({held}) s(i, e) "
            "join _merged_pairs p on s.i = p.i and lower(s.e) = p.e"
        ).fetchall()
    together = {(i, e) for i, e in rows}
    return {op.key for op in merges_of(ops) if _id_and_email(op) in together}


def _delivered_by_any_sync(store: StateStore, project: Project, keys: list[str]) -> set[str]:
    """Which of these identity-operation keys a sync of the project has delivered: a merge
    is one Customer.io call whichever sync sends it, and each keeps its own ledger."""
    if not keys:
        return set()
    for other in project:
        store.ensure_sync_tables(other.name)
    ledgers = " union all ".join(f"select k from {table('ledger', o.name)}" for o in project)
    if not ledgers:
        return set()
    with registered(store.con, "_op_keys", pa.table({"k": pa.array(keys, pa.string())})):
        rows = store.con.execute(
            f"select distinct k from ({ledgers}) semi join _op_keys using (k)"
        ).fetchall()
    return {row[0] for row in rows}


def graph_clears(
    store: StateStore, project: Project, resolution: Resolution
) -> list[tuple[str, str]]:
    """`(email, id)` of the people whose email the graph's operations clear before a run's
    rows: sent by :func:`merge_operations` ahead of them (an undelivered one stops the run),
    or delivered already by a sync of the command that shares the resolution. A people sync
    whose own row gives that email up sends no second clear (``diff.order_email_moves``)."""
    released = releases(resolution.result)
    if not released:
        return []
    holders = known_people(store, project, among={("id", p) for _, p, _ in released})
    return sorted({(email, person) for _, person, email in released if ("id", person) in holders})


def merge_operations(
    store: StateStore,
    project: Project,
    resolution: Resolution,
    app: CustomerIOSettings | None = None,
    *,
    destination: str = "",
    console: Console | None = None,
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The Customer.io operations the graph asks for (merges first), not yet delivered, and
    the merges it needs that are kept back (:func:`skipped_merge`): by `merge_policy.enabled:
    false`, or held for review by `merge_policy.min_path_rank` (weaker evidence).

    With ``app`` (the App API settings of ``destination``, when it has a key), the people
    known by email alone whose own email left their profile are looked up by it
    (:func:`readdress_lookup`), once for all the syncs that share ``resolution``. Columns:
    ``k`` (the op's idempotency key), ``op`` (JSON). The merge limit
    (`customerio.merge_policy.max_merges_per_run`) is checked by :func:`merge_guard`: every
    merge sent here counts.
    """
    merging = resolution.config.customerio.merge_policy.enabled
    skipped: list[CioOp] = []
    # adoptions of a lead's person by a returning user joined to it by weak evidence
    held_adoptions: list[CioOp] = []

    # people known by email alone whose profile gained an `id`: given it first, so that the
    # rows' identify by the `id` reaches them rather than creating a second person (or
    # merged first into the person with that `id`, when one exists: a user who came back)
    adopted = adoptions(resolution.result)
    first: list[Any] = []
    adopting: list[CioOp] = []  # its merges, delivered already or not
    if adopted:
        addresses = {("email", email) for _, _, email in adopted}
        addresses |= {("id", person_id) for _, person_id, _ in adopted}
        # and the people the graph's merges go into: no `id` for a person merged away
        addresses |= merge_addresses(resolution.result, resolution.config)
        found = known_people(store, project, among=addresses)
        # a person another user left holding the email is none of the lead's to merge away
        kept_by = email_holders(store, project, [email for _, _, email in adopted])
        first, held_adoptions = weak_adoptions(
            resolution.result,
            resolution.config,
            adoption_ops(
                resolution.result,
                lambda kind, value: (kind, value) in found,
                merges=merging,
                holders=kept_by,
            ),
        )
        adopting = merges_of(first)
        if not merging:
            every = merges_of(
                adoption_ops(
                    resolution.result,
                    lambda kind, value: (kind, value) in found,
                    holders=kept_by,
                )
            )
            # nor is one kept back of a person with itself (an earlier sync of the command
            # gave the lead's person the `id`: a lead's profile a user signed up into)
            skipped += [
                op for op in every if _id_and_email(op) not in resolution.adopted_by_identify
            ]
        # (the person holding the profile's email now: the one its identify reaches)
        profiles = resolution.result.profiles
        kept = profiles.filter(
            pc.is_in(profiles["profile_id"], value_set=pa.array([p for p, _, _ in adopted]))
        )
        email_now = dict(
            zip(kept["profile_id"].to_pylist(), kept["cio_email"].to_pylist(), strict=True)
        )
        resolution.adopted_by_identify |= {
            (person_id, str(email_now[pid]).lower())
            for pid, person_id, _ in adopted
            if ("id", person_id) not in found and email_now.get(pid)
        }
        done = _delivered_by_any_sync(store, project, [op.key for op in first])
        done |= one_person_already(store, project, first)
        first = [op for op in first if op.key not in done]
    # people known by email alone whose own email left their profile while other addresses
    # stayed: given the profile's email now by their `cio_id` (or merged into the person of
    # that email), so that the rows' identify by it reaches one person, not a second one
    readdressed = readdressings(resolution.result)
    if readdressed:
        addresses = {("email", e) for _, new, old in readdressed for e in (new, old)}
        found = known_people(store, project, among=addresses)
        cio_ids: dict[str, str] = {}
        if app is not None:
            pairs = [(new, old) for _, new, old in readdressed if ("email", old) in found]
            cio_ids, held, gone = _readdress_answers(
                resolution, app, destination, pairs, console=console
            )
            found = (found | held) - gone
        readdress = readdress_ops(
            resolution.result, lambda kind, value: (kind, value) in found, cio_ids, merges=merging
        )
        if not merging:
            every = readdress_ops(
                resolution.result, lambda kind, value: (kind, value) in found, cio_ids
            )
            skipped += merges_of(every)
        done = _delivered_by_any_sync(store, project, [op.key for op in readdress])
        first += [op for op in readdress if op.key not in done]
    # emails a retired user's person gives up to the user who took them (a family email the
    # limit kept with the user whose row left): cleared first, or Customer.io would drop the
    # rows' identify giving the email to its new holder
    released = releases(resolution.result)
    if released:
        ids = {("id", person_id) for _, person_id, _ in released}
        holders = known_people(store, project, among=ids)
        release = release_ops(resolution.result, lambda kind, value: (kind, value) in holders)
        done = _delivered_by_any_sync(store, project, [op.key for op in release])
        first += [op for op in release if op.key not in done]
    # attributes (a Stripe id) that moved off a profile retired this run: cleared on its
    # person, which no identify of the rows reaches any more
    cleared = retired_clears(resolution.result, resolution.config)
    if cleared:
        people = {(kind, value) for _, kind, value, _ in cleared}
        found = known_people(store, project, among=people)
        clear = clear_ops(
            resolution.result, resolution.config, lambda kind, value: (kind, value) in found
        )
        done = _delivered_by_any_sync(store, project, [op.key for op in clear])
        first += [op for op in clear if op.key not in done]
    if not _may_merge(resolution):
        # the common run: no profiles merged, none holding two Customer.io people. The plan
        # below would be built for every profile (seconds at a million) to keep none of it
        return _ops_table(first), [skipped_merge(op, SKIPPED_DISABLED) for op in skipped] + [
            skipped_merge(op, HELD_FOR_REVIEW) for op in held_adoptions
        ]
    plan = plan_customerio(
        resolution.result,
        resolution.config,
        exists=known_people(
            store, project, among=merge_addresses(resolution.result, resolution.config)
        ),
        limit_merges=False,
        merged_only=True,  # only the merges' survivors' identifies are sent from it
    )
    wanted = [op.key for op in plan.ops if op.payload.get("action") in ("merge", "identify")]
    delivered = _delivered_by_any_sync(store, project, wanted)
    # Lockgate's syncs decide which people exist; from the graph's plan only merges, and the
    # identifiers re-applied to their survivors, are sent here. A merge already delivered, by
    # this sync or another, is not re-applied again: its survivor's identify has a new key
    # every run (it carries the run id), the syncs of one command share one resolution (and
    # so its keys), and Customer.io duplicates imported with `cio_id` keep planning the same
    # merge until the next export drops the absorbed person
    delivered |= one_person_already(store, project, merges_of(plan.ops))
    merges = [
        op for op in plan.ops if op.payload.get("action") == "merge" and op.key not in delivered
    ]
    # a person an adoption merges into a returning user's (sent first) is gone by the time
    # the graph's merges go into it: they go into the user's person
    adopters = _adopters(adopting, skipped)
    if adopters:
        merges = [_into_adopter(op, adopters) for op in merges]
        plan_held = [_into_adopter(op, adopters) for op in plan.held_merges]
        plan_skipped = [_into_adopter(op, adopters) for op in plan.skipped_merges]
    else:
        plan_held, plan_skipped = list(plan.held_merges), list(plan.skipped_merges)
    survivors = {op.profile_id for op in merges}
    skipped += plan_skipped
    ops = (
        first
        + merges
        + [
            op
            for op in plan.ops
            if op.payload.get("action") == "identify"
            and op.profile_id in survivors
            and op.key not in delivered
        ]
    )
    # held for review by `min_path_rank`: kept back as those of merges off are, and said so
    # (a row giving the survivor's `id` the email the other person holds is dropped alike)
    kept = [skipped_merge(op, SKIPPED_DISABLED) for op in skipped]
    held_now = held_adoptions + plan_held
    return _ops_table(ops), kept + [skipped_merge(op, HELD_FOR_REVIEW) for op in held_now]


def _adopters(*ops: list[CioOp]) -> dict[str, dict[str, Any]]:
    """Email (lowercased) -> the primary of the adoption merges among ``ops`` that fold the
    person holding that email into a returning user's (`{"id": ...}` from `{"email":
    ...}`), sent (or kept back) before the graph's own merges."""
    out: dict[str, dict[str, Any]] = {}
    for op in (op for group in ops for op in merges_of(group)):
        primary, secondary = op.payload["primary"], op.payload["secondary"]
        if set(primary) == {"id"} and set(secondary) == {"email"}:
            out[str(secondary["email"]).lower()] = primary
    return out


def _into_adopter(op: CioOp, adopters: Mapping[str, dict[str, Any]]) -> CioOp:
    """``op`` (a graph merge) into the returning user's person when its primary is the
    person of an email an adoption merges into that user's (:func:`_adopters`): addressed by
    that email, it would reach nobody once the adoption is made. Its key stays (a run killed
    and run again plans the same)."""
    primary = op.payload.get("primary") or {}
    if set(primary) != {"email"}:
        return op
    into = adopters.get(str(primary["email"]).lower())
    if into is None:
        return op
    return CioOp(op.key, op.profile_id, {**op.payload, "primary": dict(into)})


SKIPPED_DISABLED = "skipped_disabled"
"""A merge kept back by `merge_policy.enabled: false` (:func:`skipped_merge`'s `outcome`)."""
HELD_FOR_REVIEW = "held_for_review"
"""A merge held for review by `merge_policy.min_path_rank` (:func:`skipped_merge`'s
`outcome`): the evidence joining the two people is weaker than it allows."""


def skipped_merge(op: CioOp, outcome: str) -> dict[str, Any]:
    """A merge kept back, as a run's report lists it: the profile, the two Customer.io people
    (`primary` keeps its identifiers; `secondary` would be merged into it and deleted), and
    what kept it back (`outcome`, as in `CioPlan.merge_outcomes`: :data:`SKIPPED_DISABLED` or
    :data:`HELD_FOR_REVIEW`)."""
    return {
        "profile_id": op.profile_id,
        "primary": op.payload["primary"],
        "secondary": op.payload["secondary"],
        "outcome": outcome,
    }


def _readdress_answers(
    resolution: Resolution,
    app: CustomerIOSettings,
    destination: str,
    pairs: list[tuple[str, str]],
    *,
    console: Console | None = None,
) -> tuple[dict[str, str], set[tuple[str, str]], set[tuple[str, str]]]:
    """:func:`readdress_lookup` of ``pairs``, asking the App API only about those no sync
    sharing ``resolution`` asked about yet (``Resolution.readdress_answers``)."""
    answers = resolution.readdress_answers
    ask = [(new, old) for new, old in pairs if (destination, new, old) not in answers]
    if ask:
        cio_ids, held, gone = readdress_lookup(app, ask, console=console)
        for new, old in ask:
            answers[destination, new, old] = (
                cio_ids.get(old),
                ("email", new) in held,
                ("email", old) in gone,
            )
    cio_ids, held, gone = {}, set(), set()
    for new, old in pairs:
        cio_id, taken, left = answers[destination, new, old]
        if cio_id is not None:
            cio_ids[old] = cio_id
        if taken:
            held.add(("email", new))
        if left:
            gone.add(("email", old))
    return cio_ids, held, gone


def readdress_lookup(
    app: CustomerIOSettings,
    emails: list[tuple[str, str]],
    *,
    console: Console | None = None,
    transport: Any = None,
) -> tuple[dict[str, str], set[tuple[str, str]], set[tuple[str, str]]]:
    """Who holds each ``(new, old)`` email pair of :func:`readdressings` in Customer.io, by
    the App API (``GET /v1/customers?email=``, two requests a pair): the `cio_id` of the one
    person holding the old email, by old email, when nobody holds the new one (that person
    is given the new email by its `cio_id`); the new emails a person holds (`("email", e)`:
    the old one's person is merged into it); the old emails nobody holds (deleted in
    Customer.io: nothing to keep). An App API that refuses the key or does not answer gives
    no `cio_id` (the old person is merged instead), with a warning on ``console``."""
    import asyncio

    import httpx

    from lockgate.destinations.customerio.app_api import AppAPIClient

    async def look() -> tuple[dict[str, str], set[tuple[str, str]], set[tuple[str, str]]]:
        cio_ids: dict[str, str] = {}
        held: set[tuple[str, str]] = set()
        gone: set[tuple[str, str]] = set()
        async with AppAPIClient(app, transport=transport) as client:
            for new, old in emails:
                holders = [
                    p
                    for p in await client.find_people_by_email(old)
                    if str(p.get("email") or "").lower() == old.lower() and p.get("cio_id")
                ]
                taken = [
                    p
                    for p in await client.find_people_by_email(new)
                    if str(p.get("email") or "").lower() == new.lower()
                ]
                if taken:
                    held.add(("email", new))
                if not holders:
                    gone.add(("email", old))
                elif len(holders) == 1 and not taken:
                    cio_ids[old] = str(holders[0]["cio_id"]).removeprefix("cio_")
        return cio_ids, held, gone

    if not emails:
        return {}, set(), set()
    try:
        return asyncio.run(look())
    except (LockgateError, httpx.HTTPError) as exc:
        if console is not None:
            console.warn(
                f"the App API could not find the people whose email left their profile "
                f"({exc}): they are merged into the person of their profile's email instead"
            )
        return {}, set(), set()


def anonymous_operations(
    store: StateStore,
    project: Project,
    resolution: Resolution,
    reached: Collection[tuple[str, str]],
    *,
    resent: Collection[tuple[str, str]] = (),
    creates: bool = False,
) -> pa.Table:
    """The identifies carrying each anonymous id a profile's own identify does not
    (``customerio.anonymous_id_ops``), not yet delivered by any sync, for the people that
    exist once the run's rows are sent: delivered by a people sync (:func:`known_people`),
    found by an imported `cio_id`, or ``reached`` (`(kind, value)`, the `id` and lowercased
    email each row of the run is sent to). Sent after the rows: an identify by a new `id`
    sent first would create a person of its own, where the rows' identify by that `id` and an
    email another person holds gives that person the `id`.

    ``resent``: the `(kind, value)` of the people a `--full-resync` sends their rows again
    (``reached``). Theirs go again, delivered or not: a person deleted in Customer.io and
    created again by the rows holds only the anonymous id its own identify carries. Sending
    one again to a person who still holds it attaches nothing twice. With ``creates`` (a
    people sync's run), so do those of the people its rows create: ``reached``, and known
    neither by `id` nor by email (:func:`known_people`), as one whose delete Customer.io
    confirmed (a row that left a `mirror` sync with `delete_removed` and came back).

    Columns: ``k`` (the op's idempotency key), ``op`` (JSON)."""
    from lockgate.sync.mapping import needs_identity

    # the people syncs through the graph carry the profile's own anonymous id on identify
    carried = any(
        other.kind == "people"
        and needs_identity(project, other)
        and "anonymous_id" not in other.attributes
        for other in project
    )
    ops = anonymous_id_ops(resolution.result, resolution.config, include_own=not carried)
    if not ops:
        return _ops_table([])
    addresses = {
        (kind, value.lower() if kind == "email" else value)
        for op in ops
        for kind, value in op.payload["identifiers"].items()
        if kind != "cio_id"
    }
    found = known_people(store, project, among=addresses) | set(reached)

    def exists(op: Any) -> bool:
        ((kind, value),) = op.payload["identifiers"].items()
        return kind == "cio_id" or (kind, value.lower() if kind == "email" else value) in found

    ops = [op for op in ops if exists(op)]
    pairs = _people_pairs(resolution, {op.profile_id for op in ops} if resent or creates else set())
    again = {pid for pid, held in pairs.items() if held & set(resent)}
    if creates:
        again |= _profiles_created(store, project, pairs, set(reached))
    done = _delivered_by_any_sync(store, project, [op.key for op in ops])
    return _ops_table([op for op in ops if op.key not in done or op.profile_id in again])


def _people_pairs(resolution: Resolution, profiles: set[str]) -> dict[str, set[tuple[str, str]]]:
    """`(kind, value)` of the Customer.io person of each of the ``profiles``: its `id` and
    lowercased email (a row names these; an anonymous id's identify goes by `cio_id` when the
    profile has one)."""
    if not profiles:
        return {}
    people = resolution.result.profiles.select(["profile_id", "cio_person_id", "cio_email"])
    people = people.filter(pc.is_in(people["profile_id"], value_set=pa.array(sorted(profiles))))
    pairs: dict[str, set[tuple[str, str]]] = {}
    for row in people.to_pylist():
        held = pairs.setdefault(row["profile_id"], set())
        if row["cio_person_id"] is not None:
            held.add(("id", str(row["cio_person_id"])))
        if row["cio_email"] is not None:
            held.add(("email", str(row["cio_email"]).lower()))
    return pairs


def _profiles_created(
    store: StateStore,
    project: Project,
    pairs: dict[str, set[tuple[str, str]]],
    reached: set[tuple[str, str]],
) -> set[str]:
    """Which profiles of ``pairs`` (:func:`_people_pairs`) are people a run's rows create:
    ``reached`` by their `id` or lowercased email, and known by neither (:func:`known_people`)."""
    reaching = {pid for pid, held in pairs.items() if held & reached}
    if not reaching:
        return set()
    known = known_people(store, project, among={pair for pid in reaching for pair in pairs[pid]})
    return {pid for pid in reaching if not pairs[pid] & known}


def _ops_table(ops: list[Any]) -> pa.Table:
    import orjson

    return pa.table(
        {
            "k": pa.array([op.key for op in ops], pa.string()),
            "op": pa.array([orjson.dumps(op.payload).decode() for op in ops], pa.string()),
        }
    )


def merge_guard(resolution: Resolution, ops: pa.Table) -> GuardResult:
    """`max_merges_per_run` as one of the sync's guardrails: a merge storm (a bad rule, a
    shared email) stops the run before anything is sent, shows in `plan`, and `--force` lets
    one run through."""
    import orjson

    limit = resolution.config.customerio.merge_policy.max_merges_per_run
    merges = [
        orjson.loads(op)
        for op in ops["op"].to_pylist()
        if orjson.loads(op).get("action") == "merge"
    ]
    return GuardResult(
        "max_merges_per_run",
        f"{limit:,}",
        f"{len(merges):,}",
        len(merges) > limit,
        detail="Customer.io people this run would merge (review them with `lockgate identity "
        "plan`).",
        samples=tuple(
            f"{orjson.dumps(m['secondary']).decode()} into {orjson.dumps(m['primary']).decode()}"
            for m in merges[:5]
        ),
        raise_at="`identity.customerio.merge_policy`",
    )


#: analyst tables replaced with the latest graph each run; the others are logs, appended
STATE_TABLES = {
    "lg_profiles",
    "lg_identifier_map",
    "lg_edges",
    "lg_profile_aliases",
    "lg_refused_merges",  # every run replays the links: these are today's refusals
    "lg_quarantine",
    "lg_blocked_values",
}
OUTPUT_SCHEMA = "lockgate"


def write_tables(project: Project, resolution: Resolution) -> str:
    """Write the run's analyst tables into the warehouse of the identity sources, schema
    `lockgate`, in one transaction: the graph tables replaced, the logs (merges, refusals,
    splits, moves) appended.

    Returns where they went. DuckDB, Postgres, Redshift and Snowflake are supported; BigQuery
    raises
    ``SourceError`` (the tables stay available through `lockgate identity explain`).
    """
    from lockgate.sources.write import TableWrite, writable
    from lockgate.sources.write import write_tables as write

    name = identity_warehouse(project, resolution.config)
    source = project.config.sources[name]
    why = writable(project, name)
    if why is not None and source.type != "duckdb":
        raise SourceError(
            f"writing identity tables into a `{source.type}` warehouse is not supported yet",
            hint="use `lockgate identity explain` to read them, or a DuckDB, Postgres, Redshift "
            "or Snowflake source",
        )
    return write(
        project,
        name,
        OUTPUT_SCHEMA,
        [
            TableWrite(table_name, data, "replace" if table_name in STATE_TABLES else "append")
            for table_name, data in resolution.result.tables().items()
        ],
    )
