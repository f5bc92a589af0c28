"""Look-ups on a finished run: resolve rows to profiles, explain a value, plan a rule change.

Example::

    resolver = Resolver(config, result)
    resolver.resolve_row({"email": " Jane@X.com "}).cio_identifiers()   # {"id": "u1", ...}
    explain(config, result, "jane@x.com").profile_id
    plan(old_config, new_config, inputs, state=state).merges
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lockgate.identity.engine import resolve, rows_of_type
from lockgate.identity.normalize import normalize_column, normalize_value
from lockgate.identity.state import IdentityResult, IdentityState
from lockgate.project.identity import IdentityConfig

CIO_COLUMNS = ("cio_person_id", "cio_email", "cio_anonymous_id", "cio_id")


@dataclass(frozen=True)
class ResolvedRow:
    """One row's profile and the identifiers Customer.io should see for it."""

    profile_id: str
    cio_person_id: str | None
    cio_email: str | None
    cio_anonymous_id: str | None
    cio_id: str | None

    def cio_identifiers(self) -> dict[str, str]:
        """`id`, `email` and `anonymous_id` to send on identify (only those that are set)."""
        out = {"id": self.cio_person_id, "email": self.cio_email}
        out["anonymous_id"] = self.cio_anonymous_id
        return {k: v for k, v in out.items() if v is not None}


class Resolver:
    """Maps warehouse rows to profiles using a run's identifier map (vectorised).

    A row belongs to the profile of its most trusted identifier that is a known, active node;
    quarantined and blocked values resolve to nothing. The rows of a split waiting for review
    keep the Customer.io identifiers of the person they went to before the split.
    """

    def __init__(self, config: IdentityConfig, result: IdentityResult | IdentityState) -> None:
        self.config = config
        nodes = result.identifier_map if isinstance(result, IdentityResult) else result.nodes
        profiles = result.profiles
        # the three columns it reads: filtering every column of the map (its `sources` lists
        # above all) cost seconds and a copy of the whole map at 600k identifiers
        nodes = nodes.select(["id_type", "id_value", "profile_id"])
        if nodes["profile_id"].null_count:
            nodes = nodes.filter(pc.is_valid(nodes["profile_id"]))
        self._by_type: dict[str, tuple[pa.Array, pa.Array]] = {}
        for type_name in config.type_order:
            # a slice of the map where a type's rows are together (as `resolve` writes them),
            # not a copy of its values and profile ids (~100 MiB at a million people)
            part = rows_of_type(nodes, type_name)
            self._by_type[type_name] = (_array(part["id_value"]), _array(part["profile_id"]))
        if result.held.num_rows:
            profiles = _hold(profiles, result.held)
        self._profiles = profiles
        self._profile_ids = _array(profiles["profile_id"])

    def resolve_table(self, table: pa.Table, columns: Mapping[str, str] | None = None) -> pa.Table:
        """`table` with `profile_id` and the `cio_*` columns appended.

        `columns` maps column → identifier type; by default columns named after types.
        """
        mapping = dict(columns or {c: c for c in table.column_names if c in self._by_type})
        order = self.config.type_order
        profile = pa.nulls(table.num_rows, pa.string())
        for column, type_name in sorted(
            mapping.items(), key=lambda kv: (order.index(kv[1]), kv[0])
        ):
            values, pids = self._by_type[type_name]
            clean = normalize_column(self.config, type_name, table[column]).values
            found = pids.take(pc.index_in(clean, value_set=values))
            profile = pc.coalesce(profile, found)
        out = table.append_column("profile_id", profile)
        at = pc.index_in(profile, value_set=self._profile_ids)
        for name in CIO_COLUMNS:
            out = out.append_column(name, self._profiles[name].combine_chunks().take(at))
        return out

    def resolve_row(self, identifiers: Mapping[str, Any]) -> ResolvedRow | None:
        """The profile of one row given as `{type: value}`; `None` when nothing is known."""
        table = pa.table(
            {
                k: pa.array([None if v is None else str(v)], pa.string())
                for k, v in identifiers.items()
            }
        )
        row = self.resolve_table(table, {k: k for k in identifiers}).to_pylist()[0]
        if row["profile_id"] is None:
            return None
        return ResolvedRow(
            profile_id=row["profile_id"], **{name: row[name] for name in CIO_COLUMNS}
        )


def _array(column: pa.ChunkedArray) -> pa.Array:
    """A column as one array: its only chunk as it is (`combine_chunks` copies even that one:
    ~100 MiB of a million-person graph's map and profile ids), else the chunks joined."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _hold(profiles: pa.Table, held: pa.Table) -> pa.Table:
    """`profiles` with the Customer.io identifiers of a split waiting for review.

    Every split-off part goes to the person its parent goes to. The parent keeps its current
    identifiers while they still address the same person (the same `id`; an email change on a
    person with an `id` is fine; an `id` given to a person known by its email alone, with
    that email: a lead's profile a user signs up into, its other address split off, whose
    identify by the `id` and the email gives the lead's person the `id`), else the
    identifiers it had before the split.
    """
    ids = pa.concat_arrays(
        [
            held["profile_id"].combine_chunks(),
            held["parent_profile_id"].combine_chunks(),
        ]
    )
    current = {
        r["profile_id"]: r
        for r in profiles.filter(pc.is_in(profiles["profile_id"], value_set=ids))
        .select(["profile_id", *CIO_COLUMNS])
        .to_pylist()
    }
    effective: dict[str, dict[str, Any]] = {}
    rows = held.to_pylist()
    for row in rows:
        parent = row["parent_profile_id"]
        if parent in effective:
            continue
        now = current.get(parent)
        same = now is not None and (
            now["cio_person_id"] == row["cio_person_id"]
            if row["cio_person_id"] is not None
            else now["cio_person_id"] is not None
            or (now["cio_email"] is not None and now["cio_email"] == row["cio_email"])
        )
        effective[parent] = dict(now) if same and now is not None else row
    out = {r["profile_id"]: effective[r["parent_profile_id"]] for r in rows}
    for pid, frozen in out.items():
        # a part that gained an `id` over a person known by email alone (its parent absorbed
        # into it, or gone): the rows go by that `id`, as the parent's would
        own = current.get(pid)
        if frozen["cio_person_id"] is None and own is not None and own["cio_person_id"]:
            out[pid] = own
    at = pc.index_in(profiles["profile_id"], value_set=pa.array(list(out), pa.string()))
    for name in CIO_COLUMNS:
        frozen = pa.array([v[name] for v in out.values()], pa.string()).take(at)
        column = pc.if_else(pc.is_valid(at), frozen, profiles[name])
        profiles = profiles.set_column(profiles.schema.get_field_index(name), name, column)
    return profiles


@dataclass(frozen=True)
class Explanation:
    """Why a value belongs where it does.

    `identifiers` are the profile's nodes; `edges` the links between them (accepted, forced)
    and around them (refused, quarantined, capped, excluded, retracted); `rows` the source rows
    behind those links (when the run kept rows); `refused` the refused unions touching it.
    """

    query: str
    matches: list[dict[str, Any]]
    profile_id: str | None
    profile: dict[str, Any] | None
    identifiers: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)


def explain(
    config: IdentityConfig, result: IdentityResult, value: str, *, id_type: str | None = None
) -> Explanation:
    """Explain one identifier value: its profile, identifiers, joining rows and refusals.

    Without `id_type`, the value is normalised as every type and the first match (most trusted
    type) is explained; all matches are listed in `matches`.
    """
    imap = result.identifier_map
    matches: list[dict[str, Any]] = []
    for type_name in [id_type] if id_type else list(config.type_order):
        clean = normalize_value(config, type_name, value)
        if clean is None:
            continue
        hit = imap.filter(
            pc.and_(pc.equal(imap["id_type"], type_name), pc.equal(imap["id_value"], clean))
        )
        matches += hit.select(["id_type", "id_value", "profile_id", "status"]).to_pylist()
    if not matches:
        return Explanation(value, [], None, None)
    first = matches[0]
    pid = first["profile_id"]
    if pid is not None:
        members = imap.filter(pc.equal(imap["profile_id"], pid))
    else:
        members = imap.filter(
            pc.and_(
                pc.equal(imap["id_type"], first["id_type"]),
                pc.equal(imap["id_value"], first["id_value"]),
            )
        )
    keys = {(r["id_type"], r["id_value"]) for r in members.to_pylist()}
    edges = [
        e
        for e in result.edges.drop_columns(["run_id"]).to_pylist()
        if (e["type_a"], e["value_a"]) in keys or (e["type_b"], e["value_b"]) in keys
    ]
    rows = []
    if result.rows is not None:
        rows = [
            r
            for r in result.rows.to_pylist()
            if (r["type_a"], r["value_a"]) in keys or (r["type_b"], r["value_b"]) in keys
        ]
    refused = [
        r
        for r in result.refused.drop_columns(["run_id"]).to_pylist()
        if pid is not None
        and pid in (r["profile_a"], r["profile_b"])
        or (r["type_a"], r["value_a"]) in keys
        or (r["type_b"], r["value_b"]) in keys
    ]
    near = {(e["type_a"], e["value_a"]) for e in edges} | {
        (e["type_b"], e["value_b"]) for e in edges
    }
    quarantine = [
        q
        for q in result.quarantine.drop_columns(["run_id"]).to_pylist()
        if (q["id_type"], q["id_value"]) in near
    ]
    profile = None
    if pid is not None:
        found = result.profiles.filter(pc.equal(result.profiles["profile_id"], pid)).to_pylist()
        profile = found[0] if found else None
    aliases = [a["old_profile_id"] for a in result.aliases.to_pylist() if a["profile_id"] == pid]
    return Explanation(
        value,
        matches,
        pid,
        profile,
        members.drop_columns(["run_id"]).to_pylist(),
        edges,
        rows,
        refused,
        quarantine,
        aliases,
    )


@dataclass(frozen=True)
class RulesPlan:
    """What switching from the old rules to the new ones would do.

    `merges`, `splits` and `moves` are the tables a run under the new rules would write;
    `people` lists the Customer.io people (by profile) those changes touch.
    """

    merges: pa.Table
    splits: pa.Table
    moves: pa.Table
    people: list[dict[str, Any]]
    before: IdentityResult
    after: IdentityResult

    @property
    def empty(self) -> bool:
        return bool(self.merges.num_rows == self.splits.num_rows == self.moves.num_rows == 0)


def plan(
    old_rules: IdentityConfig,
    new_rules: IdentityConfig,
    inputs: Mapping[str, pa.Table],
    *,
    state: IdentityState | None = None,
    blocklist: pa.Table | None = None,
    new_blocklist: pa.Table | None = None,
    overrides: pa.Table | None = None,
) -> RulesPlan:
    """Preview a rule change: resolve under the old rules, then re-run under the new ones.

    Every run replays the stored links under the current rules, so the second run's merge,
    split and move tables are exactly what deploying `new_rules` would do. With `state` (the
    graph the last sync kept) the profiles and their ids are the ones the syncs use.
    """
    before = resolve(
        old_rules,
        inputs,
        run_id="plan_before",
        state=state,
        blocklist=blocklist,
        overrides=overrides,
    )
    after = resolve(
        new_rules,
        inputs,
        run_id="plan_after",
        state=before.state,
        blocklist=new_blocklist if new_blocklist is not None else blocklist,
        overrides=overrides,
    )
    touched = (
        set(after.merges["profile_id"].to_pylist())
        | set(after.merges["absorbed_profile_id"].to_pylist())
        | set(after.splits["parent_profile_id"].to_pylist())
        | set(after.moves["from_profile_id"].to_pylist())
        | set(after.moves["to_profile_id"].to_pylist())
    )
    people = [
        {k: r[k] for k in ("profile_id", "cio_person_id", "cio_email")}
        for r in before.profiles.to_pylist()
        if r["profile_id"] in touched and (r["cio_person_id"] or r["cio_email"])
    ]
    return RulesPlan(after.merges, after.splits, after.moves, people, before, after)
