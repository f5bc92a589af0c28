"""Guard: the data contract, checked after the diff and before anything is sent.

``check`` returns one :class:`GuardResult` per guardrail that applies to the sync (shown by
`lockgate plan`). When one is breached and the run is not forced, ``enforce`` raises
:class:`~lockgate.errors.ContractError` saying which limit, by how much, with sample rows,
before a single record is delivered.

The guardrails (docs/guardrails.md):

- **identifier changed**: `identify_by` or `primary_key` differ from the last committed run
  (``--force`` once to accept: the run then records the new ones);
- **event key changed**: an events sync's `event.id` differs from the last committed run's,
  so every delivered event would be sent again as a new one (``--force`` once to accept);
- **event-name drift**: an events sync would send a name new to it that is another spelling
  (case, punctuation, word order) of a name already sent or configured (``--force`` once);
- **type drift**: a column the sync reads changed type family (timestamp, number, string,
  boolean, json, nested...) since the last committed run; only acknowledging it in
  ``guardrails.accept_type_changes`` lets the sync run again (``--force`` does not);
- **sync renamed?**: the first run of a sync while the state holds a committed sync of the
  same kind and keys that the project no longer has (renamed in its file alone: its state is
  under the old name, so everything would go again); ``lockgate state rename OLD NEW``
  carries the state over, ``--force`` once runs it as a new sync;
- **state missing?** (with `run_log:`): a run of a sync whose last committed run in the
  warehouse's run log this state has not seen: on a first run, the state they kept is not
  here (a disk not kept, another machine), and everything would go again; on a later run, when
  that run is later than the state's own last, the state is behind (an older backup restored,
  another machine running the sync); ``--force`` once goes on on purpose;
- **first run without timestamps**: the first run of an events sync without
  `event.timestamp` would send every event in the model as happening now; it stops unless
  `backfill.first_run` is `skip` (history, not sent) or `send` (``--force`` once);
- **empty model** (always on for `mirror` syncs): no rows while the snapshot has records to
  undo; ``--force`` accepts it once;
- **circuit breakers** (`max_changed`, `max_cleared`, `max_removed` for people and objects,
  `max_changed` and `max_removed` for relationships, `max_events` for events and for
  `on_change` events): a share of the previous snapshot (skipped on a first run) or a
  count; ``--force`` overrides them for one run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson

from lockgate.errors import ContractError
from lockgate.project.loader import Project
from lockgate.project.models import GuardrailsConfig, SyncConfig
from lockgate.state import contract
from lockgate.state.store import StateStore, run_sql, table
from lockgate.sync.diff import RESYNC_PREVIOUS, ChangeSet, untimed_first_run, with_payloads
from lockgate.sync.mapping import (
    event_key,
    event_key_text,
    holds_json,
    json_identifier_upgrade,
    json_values,
    lit,
    nested_text_upgrade,
    normal_form,
    q,
    removed_attributes,
    same_identifiers,
    same_zone,
    shaping,
    shaping_changes,
)

SAMPLES = 5
NUMBER_TYPES = (
    *("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT"),
    *("UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL", "NUMERIC"),
)


@dataclass(frozen=True)
class GuardResult:
    """One guardrail's verdict on this run.

    ``forceable`` is false for a breach that only a config change can accept (type drift).
    """

    name: str
    limit: str
    actual: str
    breached: bool
    detail: str = ""
    samples: tuple[str, ...] = field(default_factory=tuple)
    forceable: bool = True
    raise_at: str = "the sync's `guardrails:`"
    """Where a `max_*` limit is raised."""
    hint: str = ""
    """What to do about a breach, where the generic hint does not fit."""
    near: bool = False
    """Not breached, but at `warn_at` of the limit or more (a warning, not a stop)."""

    @property
    def status(self) -> str:
        return "BREACHED" if self.breached else "near limit" if self.near else "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "limit": self.limit,
            "actual": self.actual,
            "breached": self.breached,
            "near": self.near,
            "forceable": self.forceable,
            "detail": self.detail,
            "samples": list(self.samples),
        }


@dataclass(frozen=True)
class Limits:
    """A sync's guardrails with `defaults.guardrails` filled in."""

    max_changed: int | str | None
    max_cleared: int | str | None
    max_removed: int | str | None
    max_events: int | str | None
    max_rejected: int | str | None
    accept_type_changes: dict[str, str]
    warn_at: float | None = None
    """`warn_at` as a fraction (0.8 for `80%`), or None."""


def limits(project: Project, sync: SyncConfig) -> Limits:
    """The effective guardrails of a sync: its own, else the project's defaults."""
    own: GuardrailsConfig = sync.guardrails
    base: GuardrailsConfig = project.config.defaults.guardrails

    def pick(name: str) -> int | str | None:
        value: int | str | None = getattr(own, name)
        if value is None:
            value = getattr(base, name)
        return value

    return Limits(
        max_changed=pick("max_changed"),
        max_cleared=pick("max_cleared"),
        max_removed=pick("max_removed"),
        max_events=pick("max_events"),
        max_rejected=pick("max_rejected"),
        accept_type_changes={**base.accept_type_changes, **own.accept_type_changes},
        warn_at=float(warn[:-1]) / 100 if (warn := own.warn_at or base.warn_at) else None,
    )


def columns_read(sync: SyncConfig, con: duckdb.DuckDBPyConnection | None = None) -> list[str]:
    """Every model column the sync's mapping reads: identifiers, key, attributes, properties
    (an `on_change` rule's too), event name, id and timestamp. With ``con``, also the columns
    an `on_change` rule's `unless` condition names (read from DuckDB's parse of it; a name
    that is not a model column is left out by the caller)."""
    cols: list[str] = [*sync.identify_by.values(), *sync.key_columns]
    fields = {**sync.attributes, **sync.properties, **getattr(sync, "relationship_attributes", {})}
    specs = [*fields.items()]
    for rule in sync.on_change:
        specs += rule.properties.items()
    for name, spec in specs:
        if spec.value is None:
            cols.append(spec.column or name)
    if sync.event is not None:
        cols += [c for c in (sync.event.name.column, sync.event.timestamp) if c]
        cols += [sync.event.id.column] if sync.event.id.column else list(sync.event.id.hash or [])
    object_id = getattr(sync, "object_id", None)
    if isinstance(object_id, str):
        cols.append(object_id)
    if con is not None:
        for rule in sync.on_change:
            if rule.unless:
                cols += _sql_columns(con, rule.unless)
    return list(dict.fromkeys(cols))


def _sql_columns(con: duckdb.DuckDBPyConnection, expression: str) -> list[str]:
    """The names an SQL expression refers to as columns (``a.b`` gives both), from DuckDB's
    parse of it; none when it does not parse (the run's mapping reports that)."""
    try:
        rows = con.execute("select json_serialize_sql(?)", [f"select {expression}"]).fetchall()
        tree = orjson.loads(rows[0][0])
    except (duckdb.Error, orjson.JSONDecodeError):
        return []
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class") == "COLUMN_REF":
                names.extend(str(n) for n in node.get("column_names") or [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree.get("statements"))
    return names


def type_family(duckdb_type: str) -> str:
    """The family of a DuckDB type: a change within one family (INTEGER → BIGINT) is not
    drift, a change across families (TIMESTAMP → VARCHAR) is."""
    t = duckdb_type.upper()
    if t.endswith("[]") or t.startswith(("STRUCT", "MAP", "UNION", "LIST")):
        return "nested"
    if t.startswith(("TIMESTAMP", "DATE")):
        return "timestamp"
    if t.startswith(("TIME", "INTERVAL")):
        return t.split("(")[0].split(" ")[0].lower()
    if t.startswith("BOOL"):
        return "boolean"
    if t.startswith(NUMBER_TYPES):
        return "number"
    if t.startswith(("VARCHAR", "UUID", "CHAR", "TEXT", "STRING")):
        return "string"
    if t.startswith("JSON"):
        return "json"
    # earlier versions staged a BIT column as a BLOB (its bytes): not drift on upgrading
    if t.startswith(("BLOB", "BIT")):
        return "blob"
    return t.lower()


def retyped(
    before: dict[str, str], now: dict[str, str], columns: tuple[str, ...] | list[str]
) -> dict[str, str]:
    """The ``columns`` whose type changed since the last committed run (``before``) within
    its family (`DECIMAL(8,2)` → `DECIMAL(8,4)`, `INTEGER` → `DOUBLE`, `DATE` → `TIMESTAMP`),
    each with its type then. Type drift lets such a change through, but the row hash is of
    the values as typed, so every row hashes anew: the diff tells the rows whose values are
    the same apart (``diff._remapped``), as it does for a mapping change, so `max_changed`
    does not count them as changed data."""
    out: dict[str, str] = {}
    for column in dict.fromkeys(columns):
        was, is_ = before.get(column), now.get(column)
        if was and is_ and was != is_ and type_family(was) == type_family(is_):
            out[column] = was
    return out


NO_SNAPSHOT = "no previous snapshot"


def _limit_text(limit: int | str) -> str:
    return limit if isinstance(limit, str) else f"{limit:,}"


def _breaker(
    name: str,
    limit: int | str | None,
    count: int,
    base: int,
    unit: str,
    base_text: str,
    samples: Any,
    outcome: str = "would be sent",
    *,
    warn_at: float | None = None,
    skipped: tuple[str, str] = (NO_SNAPSHOT, "a share needs a previous committed run"),
) -> GuardResult | None:
    """One circuit breaker: ``count`` against ``limit`` (a share of ``base`` or a count); at
    ``warn_at`` of the allowed count or more (and not over it), the result is `near`. A share
    of a ``base`` of 0 is no limit: the result says it is skipped, and why (``skipped``: what
    is the case, and a sentence saying what that means)."""
    if limit is None or limit == "off":
        return None
    if isinstance(limit, str):
        if base <= 0:
            why, detail = skipped
            return GuardResult(name, limit, f"{count:,} (skipped: {why})", False, detail)
        allowed = math.floor(float(limit.rstrip("%")) / 100 * base)
        actual = f"{count:,} of {base_text} ({count / base:.1%})"
    else:
        allowed = limit
        actual = f"{count:,}"
    if count <= allowed:
        if warn_at is not None and count > 0 and count >= math.ceil(warn_at * allowed):
            return GuardResult(
                name,
                _limit_text(limit),
                actual,
                False,
                f"{count:,} {unit} {outcome}: {count / allowed:.0%} of the {allowed:,} the limit "
                f"allows (warn_at {warn_at:.0%}).",
                near=True,
            )
        return GuardResult(name, _limit_text(limit), actual, False)
    over = count - allowed
    return GuardResult(
        name,
        _limit_text(limit),
        actual,
        True,
        f"{count:,} {unit} {outcome} where the limit allows {allowed:,}: {over:,} over.",
        tuple(samples()),
    )


def _no_base(
    sync: SyncConfig, last: contract.Contract | None, known: int, *, resynced: bool = False
) -> tuple[str, str]:
    """Why a share of the snapshot is skipped (its ``known`` records are 0, or ``resynced``:
    `max_changed` in a `--full-resync`, whose diff is against an empty snapshot): what is
    the case, and what it means."""
    noun = sync.kind
    if resynced:
        return (
            "full resync",
            f"`--full-resync` sends every one of the {noun} again on purpose, so none counts "
            "as changed",
        )
    if last is None:
        return (
            NO_SNAPSHOT,
            "a share needs a previous committed run, and this is the first: every record is new",
        )
    if known:
        return ("no attributes mapped", "the sync maps no attribute that could be cleared")
    return (
        "the previous snapshot is empty",
        f"the last committed run left no {noun} in the snapshot (its model was empty, or it "
        f"undid every one), so none can change, be cleared or be removed, and a share of none "
        f"is no limit: every record of this run is new",
    )


def _attrs(op: str) -> dict[str, Any]:
    doc = orjson.loads(op)
    attributes = doc.get("attributes") if isinstance(doc, dict) else None
    return attributes if isinstance(attributes, dict) else {}


def _clip(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


FIRST_RUN = "nothing recorded yet (first run)"


def _identity(sync: SyncConfig, last: contract.Contract | None) -> GuardResult | None:
    if last is None:
        return GuardResult("identifier unchanged", "same as last run", FIRST_RUN, False)
    was = {"identify_by": last.identify_by, "primary_key": last.key_columns}
    now = {"identify_by": dict(sync.identify_by), "primary_key": sync.key_columns}
    changed = [
        k
        for k, differs in (
            # the same identifiers in another order, or `user_id` for its alias `id`, are not
            ("identify_by", not same_identifiers(last.identify_by, dict(sync.identify_by))),
            ("primary_key", last.key_columns != sync.key_columns),
        )
        if differs
    ]
    if not changed:
        return GuardResult("identifier unchanged", "same as last run", "unchanged", False)
    parts = [
        f"`{k}` was {orjson.dumps(was[k]).decode()}, now {orjson.dumps(now[k]).decode()}"
        for k in changed
    ]
    return GuardResult(
        "identifier changed",
        "same as last run",
        "; ".join(parts),
        True,
        f"Since run {last.run_id}: {'; '.join(parts)}. People would be addressed (and may be "
        "created) under different identifiers.",
    )


def _event_key(sync: SyncConfig, last: contract.Contract | None, changes: ChangeSet) -> GuardResult:
    """An events sync's `event.id` against the last committed run's. The ledger holds the
    keys the old definition made: under a new one no delivered event is in it, so each still
    in the model (and not skipped as backfill) would be sent again as a new event, with a new
    dedupe id Customer.io cannot tell from the first. The event name is not part of the key
    (only of the dedupe id), so renaming an event sends nothing again. A change in a run whose
    model is empty stops nothing. One that would send no event stops all the same when the
    model holds rows: recorded, the new key would let a later `older: send` (or a longer
    `max_age`) send the events skipped as backfill now, and a fix send the rows rejected now,
    as new events, those delivered under the old key among them."""
    name, limit = "event key unchanged", "same as last run"
    was = (last.mapping or {}).get("event_key") if last is not None else None
    if was is None:  # a first run, or one recorded before the key was
        return GuardResult(name, limit, FIRST_RUN if last is None else "not recorded", False)
    now = event_key(sync)
    if now == was:
        return GuardResult(name, limit, "unchanged", False)
    assert last is not None and now is not None
    actual = f"`event.id` was `{event_key_text(was)}`, now `{event_key_text(now)}`"
    if not changes.rows:
        # no row in the model: nothing can go out again, the run records the new key
        return GuardResult("event key changed", limit, f"{actual}; no event sent again", False)
    age = f"older than `backfill.max_age` ({sync.backfill.max_age})"
    if sync.backfill.older != "skip":
        backfill = f"events {age} are sent as well"
    elif changes.backfill_skipped:
        skipped = changes.backfill_skipped
        backfill = (
            f"{skipped:,} {'event' if skipped == 1 else 'events'} {age} "
            f"{'is' if skipped == 1 else 'are'} skipped now; those "
            "delivered under the old key would be sent again as new events if "
            "`backfill.older` becomes `send` or `max_age` longer"
        )
    else:
        backfill = f"events {age} are skipped"
    if changes.rejected:
        one = changes.rejected == 1
        backfill += (
            f"; {changes.rejected:,} {'row' if one else 'rows'} rejected now would be sent as "
            f"{'a new event' if one else 'new events'} once fixed"
        )
    return GuardResult(
        "event key changed",
        limit,
        actual,
        True,
        f"Since run {last.run_id} every event is keyed anew, so none of those delivered "
        f"under the old key is in the ledger any more: each still in the model would "
        f"be sent again as a new event, with a new dedupe id Customer.io does not drop (this "
        f"run would send {changes.to_send:,} events; {backfill}).",
        hint=f"set `event.id` back to `{event_key_text(was)}` in the sync file to keep the "
        f"events delivered as they are; if every event still in the model should be sent "
        f"again as new, run `lockgate sync {sync.name} --force` once (it records the new key; "
        "`--full-resync` does not re-key events)",
    )


def _event_names(con: duckdb.DuckDBPyConnection, project: Project, sync: SyncConfig) -> GuardResult:
    """Event-name drift, as it happens: a name this run would send for the first time (read
    from a column, `Order Placed` one day and `order_placed` the next) that differs only in
    case, punctuation, separators or word order from a name already sent (by any sync of the
    project), written in a sync file, or sent in this same run. Customer.io keeps them as two
    events, so a campaign triggered by one misses the other. `lockgate validate` reports such
    names once sent; this stops the first run that would send one. Names listed in
    `distinct_event_names` are not compared; `--force` sends them once (the name is then
    recorded, and `validate` reports the pair until one is acknowledged or fixed)."""
    from lockgate.sync.contract import event_name_key

    name, limit = "event names", "no new spelling of a known name"
    rows = con.execute(
        "select n, count(*) from (select json_extract_string('{' || op, '$.name') as n "
        "from changes) where n is not null group by n order by n"
    ).fetchall()
    now = {str(n): int(c) for n, c in rows}
    sent = contract.event_names(con)
    own = set(sent.get(sync.name, []))
    origins: dict[str, set[str]] = {}
    for other, names in sent.items():
        if other in project.syncs:
            for n in names:
                origins.setdefault(n, set()).add(f"sent by sync `{other}`")
    for each in project:
        if each.event is not None and each.event.name.value:
            origins.setdefault(each.event.name.value.strip(), set()).add(
                f"in {project.sync_files.get(each.name, each.name)}"
            )
        for change in getattr(each, "on_change", None) or []:
            origins.setdefault(str(change.event).strip(), set()).add(
                f"`on_change` of sync `{each.name}`"
            )
    for n in now:
        origins.setdefault(n, set()).add("in this run")
    distinct = set(project.config.defaults.guardrails.distinct_event_names)
    for each in project:
        distinct.update(each.guardrails.distinct_event_names)
    by_key: dict[str, list[str]] = {}
    for n in origins:
        if n:
            by_key.setdefault(event_name_key(n), []).append(n)
    clashes: list[tuple[str, list[str]]] = []
    for n in sorted(now):
        if n in own or n in distinct:
            continue
        others = sorted(o for o in by_key.get(event_name_key(n), []) if o != n)
        if others and not distinct & set(others):
            clashes.append((n, others))
    if not clashes:
        return GuardResult(name, limit, f"{len(now):,} name{'' if len(now) == 1 else 's'}", False)
    actual = "; ".join(
        f"`{n}` vs " + ", ".join(f"`{o}` ({', '.join(sorted(origins[o]))})" for o in others)
        for n, others in clashes
    )
    count = sum(now[n] for n, _ in clashes)
    first = clashes[0][0]
    return GuardResult(
        "event-name drift",
        limit,
        actual,
        True,
        f"This run would send {count:,} event{'' if count == 1 else 's'} under a name new to "
        "the sync that differs only in case, punctuation or word order from a known one: "
        "Customer.io treats them as different events, so campaigns and segments triggered by "
        "one miss the others.",
        tuple(f"{k}: {n}" for n, _ in clashes for k in _keys_named(con, n))[:SAMPLES],
        hint=f"use one spelling in the model; if `{first}` really is another event, list it "
        f"under `guardrails: {{distinct_event_names: [{first}]}}`; `lockgate sync {sync.name} "
        "--force` sends it once (the name is then recorded, and `lockgate validate` reports "
        "the pair)",
    )


UNTIMED = "first run without timestamps"


def _untimed_first_run(
    sync: SyncConfig,
    last: contract.Contract | None,
    changes: ChangeSet,
    samples: Any,
) -> GuardResult | None:
    """An events sync without `event.timestamp` sends each event stamped with the time of
    sending, so `backfill.max_age` cannot hold old ones back: on its first run every event the
    model holds (years of history, often) would reach Customer.io as happening now and start
    every campaign it triggers. Such a first run stops unless `backfill.first_run` says what to
    do with them: `skip` records them as history (``diff.diff_events``), `send` sends them
    (as `older: send` does), `older: {rename}` sends them under the backfill name. `--force`
    sends them once. Later runs send the events that appeared since, as news."""
    if sync.event is None or sync.event.timestamp:
        return None
    limit = "`backfill.first_run` chosen"
    if not untimed_first_run(sync, last):
        return GuardResult(UNTIMED, limit, "not a first run: new events are sent as news", False)
    choice = sync.backfill.untimed_first_run
    n = changes.to_send
    events = f"{n:,} event{'' if n == 1 else 's'}"
    if choice == "skip":
        h = changes.history_skipped
        return GuardResult(
            UNTIMED,
            limit,
            f"{h:,} event{'' if h == 1 else 's'} in the model recorded as history, not sent "
            "(`first_run: skip`)",
            False,
        )
    if choice == "rename":
        b = changes.backfill_sent
        return GuardResult(
            UNTIMED,
            limit,
            f"{b:,} event{'' if b == 1 else 's'} sent as backfill, renamed (`older: rename`)",
            False,
        )
    if choice == "send":
        said = "first_run" if sync.backfill.first_run else "older"
        return GuardResult(
            UNTIMED, limit, f"{events} sent as happening now (`{said}: send`)", False
        )
    if not n:
        return GuardResult(UNTIMED, limit, "no event to send", False)
    return GuardResult(
        UNTIMED,
        limit,
        f"{events} with no timestamp, `backfill.first_run` not set",
        True,
        f"The sync has no `event.timestamp`, so each event is sent stamped with the time of "
        f"sending and `backfill.max_age` cannot tell old events from new: this first run would "
        f"send all {events} the model holds as happening now, and each would trigger the "
        "campaigns it starts, however long ago it happened.",
        tuple(samples()),
        hint=f"map `event.timestamp` to the column saying when each event happened (events "
        f"older than `backfill.max_age` are then held back); or set `backfill: {{first_run: "
        f"skip}}` in the sync file to record the events in the model now as history and send "
        f"only those that appear later; `backfill: {{first_run: send}}` (or `lockgate sync "
        f"{sync.name} --force` once) sends them all now",
    )


RENAMED = "sync renamed?"


def _renamed(
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    last: contract.Contract | None,
    changes: ChangeSet,
) -> GuardResult | None:
    """The first run of a sync while the state holds a committed sync the project no longer
    has, of the same kind and keys: most likely this one, renamed in its file. Its state is
    under the old name (``state.names``), so this run would send every record again, and an
    events sync every event of the last `backfill.max_age` again (with only Customer.io's
    dedupe on the event `id`, whose window is not published, against a second copy); one
    with nothing to send now would commit a fresh state under the new name. It stops
    unless `--force` (a new sync after all); `lockgate state rename OLD NEW` carries
    the old state over, `lockgate state forget OLD` drops it."""
    if last is not None:
        return None
    from lockgate.state import names

    limit = "no sync of the same kind and keys left the project"
    if not any(n not in project.syncs for n in names.committed(store)):
        return GuardResult(RENAMED, limit, "none", False)  # one question, most first runs
    same = [
        h
        for h in names.held(store)
        if h.name not in project.syncs
        and h.committed
        and h.kind == sync.kind
        and list(h.key_columns) == list(sync.key_columns)
        and (h.records or h.events)
    ]
    if not same:
        return GuardResult(RENAMED, limit, "none", False)
    was = same[0]
    others = "".join(f", `{h.name}`" for h in same[1:])
    return GuardResult(
        RENAMED,
        limit,
        f"`{was.name}`{others} ({names.summary(was)}) is in the state, not in the project",
        True,
        f"This is the first run of `{sync.name}`, and the state holds `{was.name}`, "
        f"{'an' if sync.kind[0] in 'aeiou' else 'a'} {sync.kind} sync with the same keys that "
        f"the project no longer has. If `{sync.name}` "
        f"is `{was.name}` renamed, its state is still under the old name, and this run would "
        + (
            f"send {n:,} {'events' if sync.kind == 'events' else 'records'} again as a first "
            "run does."
            if (n := changes.to_send)
            else f"start it over as a first run: nothing to send now, but what `{was.name}` "
            "delivered would count as never sent."
        ),
        hint=f"if it was renamed, run `lockgate state rename {was.name} {sync.name}` first (the "
        f"next run then goes on from where `{was.name}`'s left off); if it is a new sync, run "
        f"`lockgate sync {sync.name} --force` once (and `lockgate state forget {was.name}` when "
        "the old one is gone for good)",
    )


STATE_MISSING = "state missing?"


def _state_missing(
    store: StateStore, project: Project, sync: SyncConfig, last: contract.Contract | None
) -> GuardResult | None:
    """A run of a sync whose committed runs into the same workspace the warehouse's run log
    (`run_log:`) holds, the last of which this state has not seen:

    - on a first run (none committed in the state), the state that remembered what they
      delivered is not here (an ephemeral disk, a container or CI runner whose `.lockgate`
      was not kept, another machine, a `state:` pointing elsewhere). Run as a first run, it
      would send every record again, and every event within `backfill.max_age` again;
    - on a later run, when that run finished after this state's last committed run of the
      sync: the state is behind the log (an older backup or copy restored, another machine
      running the sync too), and its snapshot and event ledger lack what the later runs
      delivered. A state whose last run is the later one (a run forced after the state was
      lost, whose log write failed) is not behind.

    It stops unless `--force`; a run log that cannot be read, for whatever reason, is said and
    does not stop the run (the log is a record of the runs, not their state). A state that ran
    the last logged run itself (one of named records only records no contract) is the same
    state. The log is read once a command (``runlog.committed_runs_of``)."""
    if project.config.run_log is None:
        return None
    from lockgate.errors import LockgateError
    from lockgate.state import workspace
    from lockgate.sync import runlog

    limit = "the run log's last committed run of it is in this state"
    digest = workspace.of(project, sync)
    if digest is None:  # no site id (a plan without credentials): no workspace to ask about
        return GuardResult(STATE_MISSING, limit, "not checked: no site id", False)
    try:
        logged = runlog.committed_runs_of(store, project, sync.name, digest)
    except Exception as exc:  # a driver's own error too: a check that cannot look stops nothing
        said = exc.reason if isinstance(exc, LockgateError) else f"{type(exc).__name__}: {exc}"
        return GuardResult(STATE_MISSING, limit, f"not checked: {_clip(said)}", False)
    if not logged.runs:
        return GuardResult(STATE_MISSING, limit, "no committed run in the run log", False)
    seen = store.exec_sql("select 1 from runs where run_id = ?", [logged.last_run_id])
    if seen:
        return GuardResult(STATE_MISSING, limit, "in this state", False)
    runs, finished = logged.runs, logged.last_finished
    when = "" if finished is None else f", the last finished {finished:%Y-%m-%d %H:%M} UTC"
    force = f"`lockgate sync {sync.name} --force` once"
    if last is not None:  # a later run: is this state behind the log?
        ours = store.exec_sql(
            "select max(finished_at) from runs where sync = ? and status in ('success', 'partial')",
            [sync.name],
        )[0][0]
        if finished is None or (ours is not None and ours >= finished):
            return GuardResult(STATE_MISSING, limit, "this state's last run is later", False)
        mine = "" if ours is None else f" (its last finished {ours:%Y-%m-%d %H:%M} UTC)"
        return GuardResult(
            STATE_MISSING,
            limit,
            f"the run log's last committed run is later than this state's{when}",
            True,
            f"The warehouse's run log holds a committed run of `{sync.name}`{when}, later than "
            f"any the state in `{project.state_dir}` has{mine}: the state is behind the runs "
            "that delivered since (an older backup or copy restored, or another machine "
            "running the sync with a state of its own). Its snapshot and event ledger do not "
            "hold what they delivered, so this run would send it again.",
            hint=f"restore the newest state folder (or point `state:` at the one the other "
            f"runs use) and run again; to go on from this state on purpose, run {force}",
        )
    return GuardResult(
        STATE_MISSING,
        limit,
        f"{runs:,} committed run{'' if runs == 1 else 's'} in the run log{when}",
        True,
        f"The warehouse's run log holds {runs:,} committed run{'' if runs == 1 else 's'} of "
        f"`{sync.name}`{when}; the state in `{project.state_dir}` has not seen the last of "
        "them: it is not the state those runs kept (a disk not kept between runs, another "
        "machine, `state:` pointing elsewhere). This run would start over as a first run and "
        "send again what they delivered.",
        hint=f"restore the state folder those runs used (or point `state:` at it) and run "
        f"again; to start over on purpose, run {force}",
    )


def _keys_named(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    rows = con.execute(
        "select k from changes where json_extract_string('{' || op, '$.name') = ? "
        f"order by ts, k limit {SAMPLES}",
        [name],
    ).fetchall()
    return [str(r[0]) for r in rows]


NOT_RECORDED = "not recorded (a state of an older Lockgate)"


def _mapping(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    last: contract.Contract | None,
    changes: ChangeSet,
    noun: str,
    types: dict[str, tuple[str, str]] | None = None,
) -> GuardResult:
    """Not a limit: says when the sync file's mapping (or the type of a column it reads,
    within its family: ``types``, each column's type then and now) changed since the last
    committed run, and how many records that alone sends again (their data is as last
    delivered)."""
    name, limit = "mapping", "a change re-sends each record once"
    if last is None or last.mapping is None:
        return GuardResult(name, limit, FIRST_RUN if last is None else NOT_RECORDED, False)
    # compared as written one way: a mapping only spelt otherwise is `unchanged`
    what = shaping_changes(
        normal_form(last.mapping),
        normal_form(shaping(sync)),
        removed_attributes(sync, last.mapping),
    )
    if types and changes.remapped:
        what = [
            *what,
            "column types changed ("
            + ", ".join(f"`{c}` {was} → {now}" for c, (was, now) in types.items())
            + ")",
        ]
    if changes.remapped and last.columns:
        what += _json_upgrade(con, sync, last.columns)
    if changes.remapped and last.mapping_hash:
        now = {str(r[0]): str(r[1]) for r in con.execute("describe model").fetchall()}
        what += nested_text_upgrade(sync, now, last.mapping_hash)
        what += json_identifier_upgrade(sync, now, last.mapping_hash)
    was_zone = last.mapping.get("timezone")
    if changes.remapped and not same_zone(was_zone, sync.timezone):
        # naive timestamps read in another zone (`mapping.source_hash`)
        what.append(f"`timezone` was {was_zone or 'UTC'}, now {sync.timezone or 'UTC'}")
    if not what and not changes.remapped:
        return GuardResult(name, limit, "unchanged", False)
    # nothing in the sync file: the identity graph's attributes, or Lockgate's own format
    said = "; ".join(what) or "what the payloads are built from changed"
    return GuardResult(name, limit, f"{said}: {changes.remapped:,} {noun} sent again for it", False)


def _json_upgrade(
    con: duckdb.DuckDBPyConnection, sync: SyncConfig, before: dict[str, str]
) -> list[str]:
    """The fields now sent as the JSON values their column holds (`mapping.json_values`) that
    the last run sent as the JSON's text: their column, JSON now, was staged as text then."""
    now = {str(r[0]): str(r[1]) for r in con.execute("describe model").fetchall()}
    fields = {**sync.attributes, **sync.relationship_attributes}
    out = []
    for field_name in json_values(sync, now):
        spec = fields[field_name]
        column = spec.column or field_name
        was = before.get(column)
        if was is not None and not holds_json(was):
            out.append(
                f"`{field_name}` sent as the JSON value column `{column}` holds, no longer as "
                "the JSON's text (Lockgate now reads the column's JSON type)"
            )
    return out


def untyped(duckdb_type: str) -> bool:
    """Whether a column has no type at all: DuckDB's `NULL`, what a bare `null as x` in the
    model gives (every value of it is null)."""
    return duckdb_type.strip().strip('"').upper() == "NULL"


def _type_text(duckdb_type: str) -> str:
    return "NULL (no type)" if untyped(duckdb_type) else duckdb_type


def _types(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    last: contract.Contract | None,
    accepted: dict[str, str],
) -> GuardResult | None:
    if last is None or not last.columns:
        return GuardResult("column types", "unchanged or accepted", FIRST_RUN, False)
    current = {str(r[0]): str(r[1]) for r in con.execute("describe model").fetchall()}
    drift: list[tuple[str, str, str]] = []
    for column in columns_read(sync, con):
        before, after = last.columns.get(column), current.get(column)
        if before is None or after is None or type_family(before) == type_family(after):
            continue
        if type_family(before) == "string" and type_family(after) == "json":
            # a JSON column an earlier Lockgate staged as text: the `mapping` row says what
            # that changes (`mapping.json_values`), the column did not
            continue
        if untyped(before):  # a column of no type given one again: the model's fix
            continue
        ack = accepted.get(column)
        if (
            ack is not None
            and not untyped(after)
            and ack.strip().upper() in (after.upper(), type_family(after).upper())
        ):
            continue
        drift.append((column, before, after))
    if not drift:
        return GuardResult("column types", "unchanged or accepted", "unchanged", False)
    # a column whose every value is null is most likely a bug in the model (a placeholder, a
    # join that lost its table) and has no value to show: say that first, and how to fix it
    counts = con.execute(
        "select count(*), " + ", ".join(f"count({q(c)})" for c, _, _ in drift) + " from model"
    ).fetchall()[0]
    rows = int(counts[0])
    all_null = {c for (c, _, _), n in zip(drift, counts[1:], strict=True) if rows and not n}
    changes = ", ".join(f"`{c}` {b} → {_type_text(a)}" for c, b, a in drift)
    parts = [f"Since run {last.run_id} the model's types changed: {changes}."]
    nulls = [(c, b, a) for c, b, a in drift if c in all_null or untyped(a)]
    for column, _before, after in nulls:
        what = (
            f"`{column}` has no type any more (a bare `null as {column}` in the model):"
            if untyped(after)
            else f"`{column}`:"
        )
        parts.append(
            f"{what} every value in it is null (all {rows:,} rows), a bug in the model, most "
            "often a broken join or a placeholder."
        )
    fix = "; ".join(f"`cast(null as {b}) as {c}`" for c, b, _ in nulls)
    if nulls:
        parts.append(
            "Fix the join, or, if the column is meant to be null for now, cast it in the model "
            f"so it keeps its type ({fix}), or remove the field from the sync file."
        )
    acceptable = [(c, a) for c, _, a in drift if not untyped(a)]
    if acceptable:
        accept = ", ".join(f"{c}: {a}" for c, a in acceptable)
        parts.append(
            f"If the new type is intended, acknowledge it in the sync's "
            f"`guardrails: {{accept_type_changes: {{{accept}}}}}` once the mapping is right "
            "for it."
        )
    sampled = next((c for c, _, _ in drift if c not in all_null and rows), None)
    samples = (
        [
            f"`{sampled}` = {_clip(str(v[0]), 60)!r}"
            for v in con.execute(
                f"select distinct {q(sampled)}::varchar from model where {q(sampled)} is not "
                f"null limit {SAMPLES}"
            ).fetchall()
        ]
        if sampled is not None
        else []
    )
    hint = (
        "fix the model, or acknowledge the change under `guardrails:` in the sync file "
        "(`--force` does not override type drift)"
    )
    if nulls:
        hint = (
            f"fix the model (a column meant to be null keeps its type with {fix}) or remove "
            "the field from the sync file"
            + (
                ""
                if len(nulls) == len(drift)
                else "; acknowledge the other type changes under `guardrails:`"
            )
            + " (`--force` does not override type drift)"
        )
    return GuardResult(
        "type drift",
        "unchanged or accepted",
        changes,
        True,
        " ".join(parts),
        tuple(samples),
        forceable=False,
        hint=hint,
    )


def check(
    con: duckdb.DuckDBPyConnection,
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    changes: ChangeSet,
    *,
    last: contract.Contract | None,
    only: int = 0,
    full_resync: bool = False,
) -> list[GuardResult]:
    """Evaluate every guardrail that applies to this sync; sends and writes nothing. ``last``
    is the contract of its last committed run (``state.contract.last``), read once per run.

    ``full_resync``: the diff ran against an empty snapshot (every record is sent again, so
    `max_changed` has nothing to measure), but the records that left the model are still
    undone from the real one: `max_removed` and `max_cleared` are measured against it, as in
    any other run, so a full resync does not delete or clear what a plain run would refuse to.

    ``only``: the run sends only that many named records (`--only`); the breakers on shares
    of the model or snapshot (and the empty-model check) say nothing about such a run and are
    left out, the type and identifier contracts and the event counts still hold."""
    lim = limits(project, sync)
    breaker = functools.partial(_breaker, warn_at=lim.warn_at)
    if only:
        lim = dataclasses.replace(lim, max_changed=None, max_cleared=None, max_removed=None,
                                  max_rejected=None)  # fmt: skip
    results: list[GuardResult | None] = [
        _identity(sync, last),
        _renamed(store, project, sync, last, changes),
        _state_missing(store, project, sync, last),
        _types(con, sync, last, lim.accept_type_changes),
    ]
    if sync.kind != "events":  # people, objects, relationships: a snapshot of records
        snap = table("snap", sync.name)
        base = int(con.execute(f"select count(*) from {snap}").fetchall()[0][0])
        if full_resync:  # what was delivered before, hidden by the empty stand-in
            snap = RESYNC_PREVIOUS
        # and the records whose first delivery was not confirmed (a killed run's, those a
        # killed full resync forgot): Customer.io may hold them, and a `mirror` run undoes
        # one whose row has left, as it undoes a delivered one
        # (counted apart: a union with a snapshot of 1M keys took 50 ms of every run, most
        # of which have none unconfirmed)
        known = int(con.execute(f"select count(*) from {snap}").fetchall()[0][0])
        unsure = table("unconfirmed", sync.name)
        if con.execute(f"select 1 from {unsure} where ident is not null limit 1").fetchall():
            known += int(
                con.execute(
                    f"select count(distinct u.k) from {unsure} u where ident is not null "
                    f"and not exists (select 1 from {snap} s where s.k = u.k)"
                ).fetchall()[0][0]
            )
        # with the removed attributes this run clears on each record it sends
        n_attrs = len(sync.attributes) + len(
            removed_attributes(sync, last.mapping if last is not None else None)
        )

        def changed() -> list[str]:
            rows = with_payloads(
                con,
                f"select k, __rid, op from changes where not is_new and not removed order by k "
                f"limit {SAMPLES}",
            )
            return [f"{k}: {_clip(orjson.dumps(_attrs(op)).decode())}" for k, op in rows]

        def cleared() -> list[str]:
            # records whose data changed first: a record sent again only for the mapping
            # re-sends clears made before, which do not count unless the mapping is new
            first = (
                "exists (select 1 from remapped r where r.__rid = c.__rid), "
                if changes.remapped
                else ""
            )
            rows = with_payloads(
                con,
                "select k, __rid, op from changes c where n_cleared > 0 and not is_new "
                f"order by {first}k limit {SAMPLES}",
            )
            out = []
            for k, op in rows:
                names = [n for n, v in _attrs(op).items() if v == ""]
                out.append(f"{k}: clears {', '.join(names)}")
            return out

        def removed() -> list[str]:
            # those the run undoes (`mirror`), else those that left and no row reaches
            rows = con.execute(
                f"select k, ident from changes where removed order by k limit {SAMPLES}"
                if sync.effective_mode == "mirror"
                else f"select s.k, s.ident from {snap} s anti join keyed m on m.k = s.k "
                f"anti join rekeyed r on r.k = s.k order by s.k limit {SAMPLES}"
            ).fetchall()
            return [f"{k} {ident}" for k, ident in rows]

        noun = sync.kind  # people, objects or relationships
        people = f"{base:,} {noun}"
        known_people = f"{known:,} {noun}"
        current = {str(r[0]): str(r[1]) for r in con.execute("describe model").fetchall()}
        types = {
            c: (was, current[c])
            for c, was in retyped(
                last.columns if last is not None else {}, current, columns_read(sync, con)
            ).items()
        }
        mapping_row = _mapping(con, sync, last, changes, noun, types)
        if not only:
            results.append(_empty_model(sync, changes, known, noun))
        else:
            results.append(
                GuardResult(
                    "only",
                    f"{only} named",
                    "share limits skipped (and the empty-model check)",
                    False,
                )
            )
        results += [
            mapping_row,
            # records sent again only because the mapping changed are the mapping row's; those
            # sent again because their last delivery was not confirmed are no data change
            _with_hint(
                breaker(
                    "max_changed",
                    lim.max_changed,
                    changes.changed - changes.remapped - changes.unconfirmed,
                    base,
                    f"changed {noun}", people, changed,
                    skipped=_no_base(sync, last, known, resynced=full_resync and known > 0),
                ),
                hint=_remapped_untold(sync, last, changes, mapping_row, base),
            ),
            None if sync.kind == "relationships" else breaker(
                "max_cleared",
                lim.max_cleared,
                _cleared_on_known(con, sync, last, changes, snap if full_resync else None)
                if lim.max_cleared not in (None, "off")
                else 0,
                known * n_attrs,
                "cleared attribute values",
                f"{known:,} {noun} × {n_attrs} attribute{'' if n_attrs == 1 else 's'}",
                cleared,
                skipped=_no_base(sync, last, known),
            ),
            _max_removed(
                breaker(
                    "max_removed", lim.max_removed, _removed_count(sync, changes), known,
                    _removed_words(sync, noun)[0], known_people, removed,
                    _removed_words(sync, noun)[1], skipped=_no_base(sync, last, known),
                ),
                sync,
                changes,
            ),
        ]  # fmt: skip
        if sync.on_change:  # `on_change` events trigger journeys as any other event does

            def state_events() -> list[str]:
                rows = con.execute(f"select pk, op from oc_changes order by k limit {SAMPLES}")
                return [
                    f"{k}: {orjson.loads(b'{' + op.encode()).get('name')}"
                    for k, op in rows.fetchall()
                ]

            results.append(
                breaker(
                    "max_events", lim.max_events, changes.state_events, 0, "state-change events",
                    "", state_events,
                )
            )  # fmt: skip
    elif sync.kind == "events":
        results.append(_event_key(sync, last, changes))
        results.append(_event_names(con, project, sync))

        def events() -> list[str]:
            rows = con.execute(f"select k, op from changes order by ts, k limit {SAMPLES}")
            return [
                f"{k}: {orjson.loads(b'{' + op.encode()).get('name')}" for k, op in rows.fetchall()
            ]

        results.append(_untimed_first_run(sync, last, changes, events))

        results.append(
            breaker("max_events", lim.max_events, changes.to_send, 0, "events", "", events)
        )
    results.append(
        _with_hint(
            breaker(
                "max_rejected",
                lim.max_rejected,
                changes.rejected,
                changes.rows,
                "rows",
                f"{changes.rows:,} rows in the model",
                lambda: [f"{k}: {reason}" for k, reason in changes.rejected_samples[:SAMPLES]],
                outcome="rejected by the mapping",
                skipped=(
                    "the model has no rows",
                    "the limit is a share of this run's rows, and the model returned none: "
                    "there is nothing to reject",
                ),
            ),
            # a row that stays bad is rejected again by every run: `--force` alone does not end it
            hint=f"fix the rows in the model (`lockgate plan {sync.name} --export-rejected FILE` "
            f"lists every one with its reason), or raise the limit in the sync's `guardrails:`; "
            f"`lockgate sync {sync.name} --force` sends the good rows once, but rows still bad "
            "are rejected again and stop the next run",
        )
    )
    return [r for r in results if r is not None]


def _remapped_untold(
    sync: SyncConfig,
    last: contract.Contract | None,
    changes: ChangeSet,
    mapping_row: GuardResult,
    base: int,
) -> str:
    """`max_changed`'s hint when the run cannot tell the records sent again only for the
    mapping from those whose data changed, so every one counts as changed: the state does not
    record the mapping they were last sent with (written by an older Lockgate, which an
    upgrade that re-sends every record once trips), or it changed in a way the last mapping's
    hash cannot be read back for (a column it read is gone). Empty otherwise (the generic
    hint: check the model)."""
    if base <= 0:
        return ""
    if last is None or last.mapping is None or not last.mapping_hash:
        why = (
            "the state, written by an older Lockgate, does not record the mapping they were "
            "last sent with: after an upgrade that sends every record again once (its "
            "CHANGELOG says so), each counts as changed"
        )
    elif mapping_row.actual != "unchanged" and not changes.remapped:
        why = "the mapping changed (the `mapping` row), and those it alone sends again count"
    else:
        return ""
    return (
        f"these may not be data changes: {why}. If that is expected, run `lockgate sync "
        f"{sync.name} --force` once (it records the mapping; later runs count data changes "
        "alone); otherwise check the model, or raise the limit in the sync's `guardrails:`"
    )


def _with_hint(result: GuardResult | None, *, hint: str) -> GuardResult | None:
    """``result`` with ``hint`` when it is breached (and ``hint`` says something)."""
    if result is None or not result.breached or not hint:
        return result
    return dataclasses.replace(result, hint=hint)


def _removed_words(sync: SyncConfig, noun: str) -> tuple[str, str]:
    """`max_removed`'s unit, base text and outcome, by what the run does with the records
    that left the model: undoes them in `mirror` mode, nothing in `upsert`/`update` mode."""
    if sync.effective_mode == "mirror":
        what = (
            "removed"
            if sync.kind == "relationships"
            else "deleted"
            if sync.delete_removed
            else "cleared"
        )
        return f"removed {noun}", f"would be {what}"
    return noun, f"left the model (nothing is sent for them in `{sync.effective_mode}` mode)"


def _removed_count(sync: SyncConfig, changes: ChangeSet) -> int:
    """What `max_removed` counts: the records a `mirror` run undoes, or in `upsert`/`update`
    mode those that left the model. Neither counts a record a row still in the model reaches
    under another key (``changes.rekeyed``: an email key in another case or with spaces
    around it, as Customer.io finds the person; two rows carrying one email): the run
    undoes nothing for it, and keeps sending it."""
    if sync.effective_mode == "mirror":
        return changes.removed_sent
    return changes.removed - changes.rekeyed


def _max_removed(
    result: GuardResult | None, sync: SyncConfig, changes: ChangeSet
) -> GuardResult | None:
    """`max_removed` with the hint of its mode, and the records under a new key it did not
    count. In `upsert`/`update` mode the records that left stay in the snapshot (one that
    comes back unchanged is not sent again), so without more they would count, and stop,
    every later run: a run forced past the limit forgets them (:func:`forget_left`)."""
    if result is not None and changes.rekeyed:
        result = dataclasses.replace(
            result,
            actual=f"{result.actual}; {changes.rekeyed:,} under a new key of the same "
            f"{sync.kind} (not counted)",
        )
    if sync.effective_mode == "mirror":
        return result
    return _with_hint(
        result,
        hint=f"check the model (a lost join or filter?); if they left on purpose, run "
        f"`lockgate sync {sync.name} --force` once: that run forgets them, so they stop "
        f"counting (they stay in Customer.io as they are, and one that comes back is sent "
        f"again), or raise the limit in the sync's `guardrails:`",
    )


def forget_left(
    con: duckdb.DuckDBPyConnection, sync: SyncConfig, results: list[GuardResult]
) -> int:
    """After a run forced past `max_removed` in `upsert`/`update` mode: drop from the snapshot
    the records that left the model, which nothing undid. The run accepted their leaving;
    kept, they would count toward `max_removed` again in every later run, which `--force`
    "once" would not end. Returns how many were forgotten."""
    if sync.kind == "events" or sync.effective_mode == "mirror":
        return 0
    if not any(r.name == "max_removed" and r.breached for r in results):
        return 0
    snap = table("snap", sync.name)
    left = f"select s.k from {snap} s anti join keyed m on m.k = s.k"
    gone = int(con.execute(f"select count(*) from ({left})").fetchall()[0][0])
    if gone:
        run_sql(con, f"delete from {snap} where k in ({left})")
    return gone


def _cleared_on_known(
    con: duckdb.DuckDBPyConnection,
    sync: SyncConfig,
    last: contract.Contract | None,
    changes: ChangeSet,
    resynced: str | None = None,
) -> int:
    """Attribute values the run clears on records already in the snapshot: what `max_cleared`
    counts, a share of the snapshot's records.

    ``resynced``: the real snapshot of a `--full-resync` run, whose diff saw every record as
    new. The clears counted are then those undoing records that left the model (`mirror`) and
    those of records whose data differs from what the snapshot holds (a record sent again
    as it was clears nothing new).

    A new record has nothing to clear, so its `""` values (a null under `on_null: clear`) are
    not counted. A record sent again only for a mapping change (``changes.remapped``) has the
    data it was last delivered with: its `""` for an attribute mapped as before was sent then
    and clears nothing now, so only its clears of attributes new or changed in the mapping
    (which may clear a value another source set) and of those `clear_removed_attributes`
    clears count."""
    if resynced is not None:
        sql = (
            "select coalesce(sum(c.n_cleared), 0) from changes c "
            f"left join {resynced} s on s.k = c.k "
            "where c.removed or (s.k is not null and s.h is distinct from c.h)"
        )
        return int(con.execute(sql).fetchall()[0][0])
    if not changes.remapped:
        sql = "select coalesce(sum(n_cleared), 0) from changes where not is_new"
        return int(con.execute(sql).fetchall()[0][0])
    # each field with its null policy in force (`normal_form`): a sync-wide `on_null` change
    # changes every field that does not set its own
    before = normal_form(last.mapping)["attributes"] if last and last.mapping else {}
    now = normal_form(shaping(sync))["attributes"]
    fresh = [n for n, spec in now.items() if before.get(n) != spec]
    fresh += removed_attributes(sync, last.mapping if last is not None else None)
    others = con.execute(
        "select coalesce(sum(n_cleared), 0) from changes c "
        "anti join remapped r on r.__rid = c.__rid where not c.is_new"
    ).fetchall()[0][0]
    if not fresh:
        return int(others)
    # the payloads of the remapped records that clear anything, their fresh attributes read
    cleared = " + ".join(
        f"count(*) filter (where json_extract_string(p.op, {lit('$.attributes.' + _path(n))}) = '')"
        for n in fresh
    )
    mapped = con.execute(
        f"""
        select {cleared} from payloads p
        where p.__rid in (
            select c.__rid from changes c semi join remapped r on r.__rid = c.__rid
            where c.n_cleared > 0
        )
        """
    ).fetchall()[0][0]
    return int(others) + int(mapped or 0)


def _path(name: str) -> str:
    """A JSON path step naming the key ``name`` whatever it holds (`"a.b"`)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _empty_model(sync: SyncConfig, changes: ChangeSet, base: int, noun: str) -> GuardResult | None:
    """Always on: a model that returns no rows while a `mirror` sync has records to undo.

    An empty model is almost always a broken upstream (a failed dbt run, a truncated or
    renamed table, lost grants), and in `mirror` mode (relationships mirror by default) the
    run would clear, delete or unlink every record it ever sent. The circuit breakers are
    off unless set; this one is not, and `--force` accepts it once (after that run the
    snapshot is empty and the check passes)."""
    if sync.effective_mode != "mirror":
        return None  # nothing is sent for the records that left
    breached = changes.rows == 0 and changes.removed_sent > 0
    return GuardResult(
        "empty model",
        "not empty",
        f"0 rows, {changes.removed_sent:,} of {base:,} {noun} to undo"
        if breached
        else f"{changes.rows:,} rows",
        breached,
        f"The model returned no rows, so this `mirror` run would undo all {base:,} {noun} it "
        "has sent (clear their attributes, or delete them with `delete_removed`, or remove "
        "the relationships). An empty model usually means a broken upstream: a failed "
        "transformation, a truncated or renamed table, or lost grants."
        if breached
        else "",
        hint=f"check the model's SQL and its tables; if they are meant to be empty now, run "
        f"`lockgate sync {sync.name} --force` once",
    )


def enforce(sync: SyncConfig, results: list[GuardResult], *, force: bool) -> None:
    """Stop the run when a guardrail is breached, unless `--force` (which never overrides
    a breach that is not ``forceable``: type drift needs a config change)."""
    breached = [r for r in results if r.breached and (r.forceable is False or not force)]
    if not breached:
        return
    breached.sort(key=lambda r: r.forceable)
    first = breached[0]
    # the others by name: the guardrails table (`plan`, and the stopped run's report) has them
    others = [f"{r.name} ({r.actual})" for r in breached[1:]]
    more = f" (also breached: {'; '.join(others)})" if others else ""
    samples = f" Sample rows: {'; '.join(first.samples[:5])}" if first.samples else ""
    if not first.forceable:
        raise ContractError(
            f"sync `{sync.name}` stopped before sending anything: {first.name}: {first.actual}"
            f"{more}. {first.detail}{samples}",
            hint=first.hint
            or f"fix the model, or acknowledge the change under `guardrails:` in the sync "
            f"file (`--force` does not override {first.name})",
        )
    if first.hint and not first.name.startswith("max_"):
        raise ContractError(
            f"sync `{sync.name}` stopped before sending anything: {first.name}: {first.actual}"
            f"{more}. {first.detail}{samples}",
            hint=first.hint,
        )
    if not first.name.startswith("max_"):
        raise ContractError(
            f"sync `{sync.name}` stopped before sending anything: {first.name}{more}. "
            f"{first.detail}{samples}",
            hint=f"if this change is intended, run `lockgate sync {sync.name} --force` once; "
            "the run then records it as the new contract",
        )
    raise ContractError(
        f"sync `{sync.name}` stopped before sending anything: {first.name} is {first.actual}, "
        f"over the limit of {first.limit}{more}. {first.detail}{samples}",
        hint=first.hint
        or f"check the model; if this change is intended, run `lockgate sync {sync.name} "
        f"--force` once, or raise the limit in {first.raise_at}",
    )
