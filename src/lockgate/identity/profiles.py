"""Stable profile ids: carry ids forward, pick merge survivors, detect splits and moves.

Rules (identity.md §2.3, §2.4):

* a new component is named `lg_` + a hash of its anchor (its most trusted identifier; ties by
  value), with a suffix if that id was ever used;
* each previous profile has one heir: the component holding its old anchor, else the one
  holding most of its identifiers;
* a component that is heir to several profiles is a merge: the survivor is the one that is a
  Customer.io person with an `id`, then with an email only, then the most trusted anchor type,
  then the oldest, then the smallest id; the others become aliases;
* a profile that was a Customer.io person with an `id` is heir to no component whose `id`
  is another one and that does not hold its own (its user left, and what remains of it is
  another user's): it is retired, never merged into another user;
* among several heirs of one component, a profile that was a Customer.io person and whose
  component holds neither its anchor nor any of its person's identifiers (`id`, email,
  `cio_id`) is retired too, when another heir holds its own: a leaf that moved (a Stripe id)
  drags nobody into a merge;
* a component heir to nobody that holds identifiers of an earlier profile is a split child
  (a new id, logged for review); identifiers landing in another existing profile are moves,
  and so are those landing in a new profile with a Customer.io `id` no earlier profile held
  (a new user who took an email its old owner gave up in the same run).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from lockgate.identity import graph as g
from lockgate.identity.memory import give_back
from lockgate.identity.state import (
    ALIASES_SCHEMA,
    CONTESTED_SCHEMA,
    HELD_SCHEMA,
    LOST_SCHEMA,
    MERGES_SCHEMA,
    MOVES_SCHEMA,
    PROFILES_BASE,
    SPLITS_SCHEMA,
    WITHHELD_SCHEMA,
    IdentityState,
)
from lockgate.project.identity import IdentityConfig

I64_MIN = np.iinfo(np.int64).min

Node = TypeVar("Node")
"""A node of a union-find forest (:func:`union_root`)."""


def profile_schema(types: tuple[str, ...]) -> pa.Schema:
    """`lg_profiles` for a config: the base columns and one `n_<type>` count per type."""
    return pa.schema(PROFILES_BASE + [(f"n_{t}", pa.int64()) for t in types])


def profile_id_for(type_name: str, value: str) -> str:
    """The id a new profile anchored on `type_name:value` gets (before any suffix)."""
    digest = hashlib.md5(f"{type_name}\x1f{value}".encode(), usedforsecurity=False).hexdigest()
    return f"lg_{digest[:16]}"


def profile_ids_for(type_names: pa.Array, values: pa.Array) -> pa.StringArray:
    """`profile_id_for` over whole columns (DuckDB's md5, vectorised)."""
    from lockgate.scratch import scratch

    table = pa.table({"t": type_names, "v": values})
    with scratch() as con:
        con.register("anchors", table)
        out = con.sql(
            "SELECT 'lg_' || substr(md5(t || chr(31) || v), 1, 16) FROM anchors"
        ).to_arrow_table()
    result: pa.StringArray = out.column(0).combine_chunks().cast(pa.string())
    return result


@dataclass(frozen=True)
class PreviousProfiles:
    """The previous run's profiles, indexed by an integer code.

    The first `live` are the previous run's profiles; the rest are retired ones
    (`IdentityState.retired`): people known by email alone whose profile was heir to nothing,
    which a component holding that email takes over (they hold that node, see
    :func:`_claim_retired`)."""

    table: pa.Table
    ids: pa.StringArray
    aliases: pa.Table
    live: int = 0
    own_person: pa.ChunkedArray | None = None
    """`cio_person_id` as each profile had it: ``table`` shows a part of a split waiting for
    review as the person it was split off (:func:`_as_held`); None when they are the same."""

    @classmethod
    def from_state(cls, state: IdentityState | None, types: tuple[str, ...]) -> PreviousProfiles:
        if state is None:
            empty = profile_schema(types).empty_table()
            return cls(empty, pa.array([], pa.string()), ALIASES_SCHEMA.empty_table())
        profiles = state.profiles
        live = profiles.num_rows
        if state.retired.num_rows:
            profiles = pa.concat_tables([profiles, _aligned(state.retired, profiles.schema)])
        # the ids as one array, in the table too: not a second copy of every id beside the
        # chunks a read gave (~20 MiB at a million profiles)
        ids = profiles["profile_id"].combine_chunks()
        column = profiles.schema.get_field_index("profile_id")
        profiles = profiles.set_column(column, profiles.schema.field(column), ids)
        own = None
        if state.held.num_rows:
            own = profiles["cio_person_id"]
            profiles = _as_held(profiles, ids, state.held)
        return cls(profiles, ids, state.aliases, live, own)

    def _old_ids(self) -> pa.StringArray:
        old: pa.StringArray = self.aliases["old_profile_id"].combine_chunks().cast(pa.string())
        return old

    def known(self) -> pa.StringArray:
        """Every profile id given before (current ones and aliased ones), each once: an Arrow
        array, not a Python set of every profile. Built when asked for (a hash of every id)."""
        both = pa.concat_arrays([self.ids.cast(pa.string()), self._old_ids()])
        found: pa.StringArray = both.drop_null().unique()
        return found

    def any_known(self, ids: pa.StringArray) -> bool:
        """Whether any of ``ids`` was given before: hashes the smaller side, not every id
        given before (a re-stitch names a few new profiles, a first stitch has none before)."""
        for given in (self.ids.cast(pa.string()), self._old_ids()):
            if not len(given) or not len(ids):
                continue
            small, large = (ids, given) if len(ids) <= len(given) else (given, ids)
            if pc.any(pc.is_in(large, value_set=small)).as_py():
                return True
        return False

    def codes(self, profile_ids: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.int64]:
        found = pc.index_in(profile_ids, value_set=self.ids)
        return np.asarray(
            pc.fill_null(found.cast(pa.int64()), -1).to_numpy(zero_copy_only=False), np.int64
        )

    def column(self, name: str) -> _Values:
        """One column, read a value at a time: the few profiles a merge or a split is about
        are asked for, not a Python object made for every profile."""
        return _Values(self.table[name])

    def name(self, code: int) -> str:
        """The profile id of ``code``."""
        return str(self.ids[code].as_py())


def _as_held(profiles: pa.Table, ids: pa.Array, held: pa.Table) -> pa.Table:
    """``profiles`` with each part split off a Customer.io person with an `id` (a split
    waiting for review) shown as that person: its rows went to the parent's person (its `id`
    and the email Customer.io holds), whatever its own identifiers say.

    So a part that later holds another user's `id` is that person's, not heir to it (two
    user ids are never one person, :func:`_retire_other_ids`): the new user is a person of
    their own, and an email the part takes along is released from the held person first
    (`customerio.releases`), instead of the new user's rows going to the other user's person.
    """
    parts = held.filter(
        pc.and_(
            pc.not_equal(held["profile_id"], held["parent_profile_id"]),
            pc.is_valid(held["cio_person_id"]),
        )
    )
    if not parts.num_rows:
        return profiles
    at = pc.index_in(ids, value_set=parts["profile_id"].combine_chunks())
    at = pc.if_else(pc.is_null(profiles["cio_person_id"]), at, pa.scalar(None, at.type))
    for name in ("cio_person_id", "cio_email"):
        column = profiles.schema.get_field_index(name)
        held_values = parts[name].combine_chunks().cast(profiles.schema.field(column).type)
        values = pc.if_else(pc.is_valid(at), held_values.take(at), profiles[name])
        profiles = profiles.set_column(column, profiles.schema.field(column), values)
    return profiles


def _aligned(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with the columns of ``schema``: those it lacks (a type added to the config
    since) are nulls, those it has and ``schema`` does not are left out."""
    return pa.table(
        [
            table[f.name].cast(f.type)
            if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type)
            for f in schema
        ],
        schema=schema,
    )


class _Values:
    """A column's values by row, each converted when asked for."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self._column = column

    def __getitem__(self, row: int) -> object:
        return self._column[row].as_py()


@dataclass(frozen=True)
class Assigned:
    """Profile ids per node and the profile-level tables of one run."""

    node_profile: pa.StringArray
    profiles: pa.Table
    aliases: pa.Table
    merges: pa.Table
    splits: pa.Table
    moves: pa.Table
    retired: pa.Table
    withheld: pa.Table = field(default_factory=lambda: WITHHELD_SCHEMA.empty_table())
    """The anonymous ids sent to nobody (`IdentityState.withheld`): those of earlier runs and
    the ones that left a Customer.io person's profile in this one."""


def _pick(
    comp: npt.NDArray[np.int64],
    candidates: npt.NDArray[np.bool_],
    node_rank: npt.NDArray[np.int64],
    node_last: npt.NDArray[np.int64],
    node_values: pa.StringArray,
    n_comp: int,
) -> npt.NDArray[np.int64]:
    """Per component, the candidate node with the best rank, then latest seen, then value."""
    out = np.full(n_comp, -1, dtype=np.int64)
    nodes = np.flatnonzero(candidates)
    if nodes.size == 0:
        return out
    c = comp[nodes]
    per = np.bincount(c, minlength=n_comp)
    alone = per[c] == 1
    out[c[alone]] = nodes[alone]
    nodes = nodes[~alone]
    if nodes.size == 0:
        return out
    c, r, last = comp[nodes], node_rank[nodes], node_last[nodes]
    order = np.lexsort((-last, r, c))
    nodes, c, r, last = nodes[order], c[order], r[order], last[order]
    first = np.r_[True, c[1:] != c[:-1]]
    out[c[first]] = nodes[first]
    # ties on (rank, last seen) are broken by the smaller value, in Python (rare)
    tie = (
        ~first & (c == np.r_[-1, c[:-1]]) & (r == np.r_[-1, r[:-1]]) & (last == np.r_[0, last[:-1]])
    )
    tied_comps = np.unique(c[tie])
    if tied_comps.size:
        best_r = node_rank[out[tied_comps]]
        best_l = node_last[out[tied_comps]]
        sel = np.isin(c, tied_comps)
        lookup = dict(
            zip(
                tied_comps.tolist(), zip(best_r.tolist(), best_l.tolist(), strict=True), strict=True
            )
        )
        values = node_values.take(pa.array(nodes[sel])).to_pylist()
        best: dict[int, tuple[str, int]] = {}
        for node, cc, rr, ll, v in zip(
            nodes[sel].tolist(),
            c[sel].tolist(),
            r[sel].tolist(),
            last[sel].tolist(),
            values,
            strict=True,
        ):
            if (rr, ll) != lookup[cc]:
                continue
            if cc not in best or v < best[cc][0]:
                best[cc] = (v, node)
        for cc, (_, node) in best.items():
            out[cc] = node
    return out


def _joined_to(
    nodes: npt.NDArray[np.int64], graph: g.Graph, accepted: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Per node, whether an accepted edge joins it to one of ``nodes`` (-1s ignored)."""
    marked = np.zeros(graph.n_nodes, dtype=bool)
    marked[nodes[nodes >= 0]] = True
    joined = np.zeros(graph.n_nodes, dtype=bool)
    # boolean masks over the edges (a byte each), not their positions (eight)
    joined[graph.b[marked[graph.a] & accepted]] = True
    joined[graph.a[marked[graph.b] & accepted]] = True
    return joined


def assign(
    *,
    labels: npt.NDArray[np.int64],
    node_type: npt.NDArray[np.int16],
    node_values: pa.StringArray,
    quarantined: npt.NDArray[np.bool_],
    prev_pid: npt.NDArray[np.int64],
    previous: PreviousProfiles,
    graph: g.Graph,
    accepted: npt.NDArray[np.bool_],
    node_rank: npt.NDArray[np.int64],
    node_last: npt.NDArray[np.int64],
    node_batch: npt.NDArray[np.int64],
    config: IdentityConfig,
    batch: int,
    run_id: str,
    cio_exists: Callable[[str, str], bool] | None,
    withheld: pa.Table | None = None,
) -> Assigned:
    """Name every component, carrying ids forward from `previous`.

    ``withheld``: the anonymous ids earlier runs withheld (`IdentityState.withheld`); none of
    them is a profile's `cio_anonymous_id`, nor is one that leaves a Customer.io person's
    profile in this run (added to them)."""
    types = config.type_order
    n_types = len(types)
    eligible = ~quarantined
    prev_pid = _claim_retired(prev_pid, previous, config, types, node_type, node_values, eligible)
    elig_nodes = np.flatnonzero(eligible)
    # dense component numbers in label order, without sorting (labels are small non-negatives)
    elig_labels = labels[elig_nodes]
    present = np.zeros(int(elig_labels.max()) + 1 if elig_labels.size else 0, dtype=bool)
    present[elig_labels] = True
    dense = np.cumsum(present, dtype=np.int64) - 1
    comp_dense = dense[elig_labels]
    n_comp = int(present.sum())
    comp_of = np.full(labels.shape[0], -1, dtype=np.int64)
    comp_of[elig_nodes] = comp_dense
    ec = comp_dense  # int64 already: not a copy
    et = node_type[elig_nodes].astype(np.int64)
    del elig_labels, present, dense

    # anchor: most trusted type, then smallest value
    min_type = np.full(n_comp, n_types, dtype=np.int64)
    np.minimum.at(min_type, ec, et)
    cand = et == min_type[ec]
    cand_count = np.bincount(ec[cand], minlength=n_comp)
    anchor = np.full(n_comp, -1, dtype=np.int64)
    anchor[ec[cand]] = elig_nodes[cand]
    tie_nodes = elig_nodes[cand & (cand_count[ec] > 1)]
    if tie_nodes.size:
        best: dict[int, tuple[str, int]] = {}
        vals = node_values.take(pa.array(tie_nodes)).to_pylist()
        for node, v in zip(tie_nodes.tolist(), vals, strict=True):
            c = int(comp_of[node])
            if c not in best or v < best[c][0]:
                best[c] = (v, node)
        for c, (_, node) in best.items():
            anchor[c] = node
    del min_type, cand, cand_count, tie_nodes

    def anchor_key(c: int) -> tuple[int, str]:
        node = int(anchor[c])
        return int(node_type[node]), str(node_values[node].as_py())

    # Customer.io identity per profile
    def pick_for(kind: str, first: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.int64]:
        """Per component, its node of the `kind` picked (-1: none), from the types in order;
        nodes in ``first`` before any other."""
        chosen = np.full(n_comp, -1, dtype=np.int64)
        order = (
            config.customerio.id_from
            if kind == "id"
            else tuple(t for t in types if config.identifier_types[t].customerio == kind)
        )
        for only in (first, None) if first is not None else (None,):
            for t_name in order:
                t = types.index(t_name)
                candidates = eligible & (node_type == t)
                if only is not None:
                    candidates &= only
                if kind == "anonymous_id" and held_back is not None:
                    candidates &= ~held_back
                found = _pick(comp_of, candidates, node_rank, node_last, node_values, n_comp)
                chosen = np.where(chosen < 0, found, chosen)
        return chosen

    def values_of(nodes: npt.NDArray[np.int64]) -> pa.Array:
        return node_values.take(pa.array(nodes, mask=nodes < 0))

    # heirs of previous profiles
    n_prev = len(previous.ids)
    heir = np.full(n_prev, -1, dtype=np.int64)
    has_prev = eligible & (prev_pid >= 0)
    pn = np.flatnonzero(has_prev)
    pair_key = comp_of[pn] * max(n_prev, 1) + prev_pid[pn]
    pkeys, pcounts = np.unique(pair_key, return_counts=True)
    pair_comp, pair_pid = pkeys // max(n_prev, 1), pkeys % max(n_prev, 1)
    pid_ncomps = np.bincount(pair_pid, minlength=n_prev)
    simple = pid_ncomps[pair_pid] == 1
    heir[pair_pid[simple]] = pair_comp[simple]
    complex_pids = np.flatnonzero(pid_ncomps > 1)
    if complex_pids.size:
        anchors_t = previous.column("anchor_type")
        anchors_v = previous.column("anchor_value")
        type_index = {t: i for i, t in enumerate(types)}
        sel = np.isin(pair_pid, complex_pids)
        options: dict[int, list[tuple[int, int]]] = {}
        for c, p, n in zip(
            pair_comp[sel].tolist(), pair_pid[sel].tolist(), pcounts[sel].tolist(), strict=True
        ):
            options.setdefault(p, []).append((c, n))
        for p, opts in options.items():
            chosen = -1
            t_name, v = anchors_t[p], anchors_v[p]
            if t_name in type_index:
                t = type_index[t_name]
                for c, _ in opts:
                    members = elig_nodes[(ec == c) & (et == t)]
                    if members.size and v in node_values.take(pa.array(members)).to_pylist():
                        chosen = c
                        break
            if chosen < 0:
                chosen = min(opts, key=lambda cn: (-cn[1], anchor_key(cn[0])))[0]
            heir[p] = chosen
    # a profile that was a Customer.io person with an `id` is heir to no component whose
    # `id` is another one and that no longer holds its own: two user ids are never one
    # person (but when a forced union joins them). Its identifiers there are moves (the
    # family email a deleted user held goes to the user who shared it), and the profile,
    # heir to nothing, is retired: its person is left as it is, but for an email it gave up
    # (`customerio.releases`)
    id_nodes = pick_for("id")
    person_ids = values_of(id_nodes)
    if n_prev and pc.any(pc.is_valid(previous.table["cio_person_id"])).as_py():
        heir = _retire_other_ids(
            heir, person_ids, previous, config, types, node_type, node_values, comp_of, eligible
        )
    # a profile that was a Customer.io person is heir to no component heir to others too
    # that holds none of the identifiers its person is found by, when another heir there
    # holds its own: a leaf that moved (a Stripe id reassigned) does not drag its old
    # profile into a merge (identity.md §2.4, §3.6 case 11). It is retired, its identifiers
    # there are moves, and its person is left as it is, but for what moved
    if n_prev:
        heir = _retire_dragged(
            heir, previous, config, types, node_type, node_values, comp_of, eligible
        )
    # of the eligible nodes only their counts per component and type are read from here on
    counts = np.bincount(ec * n_types + et, minlength=n_comp * n_types).reshape(n_comp, n_types)
    del pair_key, pkeys, pcounts, pair_comp, pair_pid, pid_ncomps, simple, complex_pids, has_prev
    del elig_nodes, comp_dense, ec, et

    # which previous id each component keeps
    comp_pid = np.full(n_comp, -1, dtype=np.int64)
    has_heir = np.flatnonzero(heir >= 0)
    heirs_per_comp = np.bincount(heir[has_heir], minlength=n_comp)
    single = has_heir[heirs_per_comp[heir[has_heir]] == 1]
    comp_pid[heir[single]] = single
    merges: list[tuple[int, int, int]] = []  # (comp, survivor pid, absorbed pid)
    multi = has_heir[heirs_per_comp[heir[has_heir]] > 1]
    if multi.size:
        exists = cio_exists or (lambda kind, value: True)
        person = previous.column("cio_person_id")
        email = previous.column("cio_email")
        created = previous.column("created_batch")
        a_type = previous.column("anchor_type")
        rank_of = {t: i for i, t in enumerate(types)}

        def survivor_key(p: int) -> tuple[int, bool, int, int, str]:
            cls = 2
            if person[p] is not None and exists("id", str(person[p])):
                cls = 0
            elif email[p] is not None and exists("email", str(email[p])):
                cls = 1
            return (
                cls,
                p >= previous.live,  # a retired profile joins a live one (its rows' person)
                rank_of.get(str(a_type[p]), n_types),
                int(str(created[p] or 0)),
                previous.name(p),
            )

        groups: dict[int, list[int]] = {}
        for p in multi.tolist():
            groups.setdefault(int(heir[p]), []).append(p)
        for c, pids in groups.items():
            pids.sort(key=survivor_key)
            comp_pid[c] = pids[0]
            merges.extend((c, pids[0], p) for p in pids[1:])

    del has_heir, heirs_per_comp, single, multi

    # new ids for components heir to nobody (vectorised; Python only for collisions)
    new_comps = np.flatnonzero(comp_pid < 0)
    new_arr = pa.nulls(n_comp, pa.string())
    if new_comps.size:
        an = anchor[new_comps]
        t_arr = pa.array(list(types), pa.string()).take(pa.array(node_type[an].astype(np.int32)))
        hashed = profile_ids_for(t_arr, node_values.take(pa.array(an)))
        if pc.count_distinct(hashed).as_py() < len(hashed) or previous.any_known(hashed):
            used = set(previous.known().to_pylist())
            names = hashed.to_pylist()
            for i, pid in enumerate(names):
                if pid in used:
                    n = 2
                    while f"{pid}_{n}" in used:
                        n += 1
                    names[i] = pid = f"{pid}_{n}"
                used.add(pid)
            hashed = pa.array(names, pa.string())
        where = np.full(n_comp, -1, dtype=np.int64)
        where[new_comps] = np.arange(new_comps.size)
        new_arr = hashed.take(pa.array(where, mask=where < 0))
        del where, hashed, an, t_arr
    prev_taken = previous.ids.take(pa.array(comp_pid, mask=comp_pid < 0))
    comp_arr = pc.coalesce(prev_taken, new_arr)
    new_ids = new_arr
    del prev_taken, new_arr

    # nodes that left their old profile: splits (into a new id) or moves (into an existing one,
    # or into a new profile that has a Customer.io `id` of its own: see `_own_new_id`)
    split_pairs: set[tuple[int, int]] = set()
    moves: list[tuple[int, int, int]] = []
    changed = np.zeros(n_comp, dtype=bool)
    if pn.size:
        old = prev_pid[pn]
        now = comp_of[pn]
        left = heir[old] != now
        own_id = _own_new_id(config, types, node_type, prev_pid, comp_of, eligible, n_comp)
        for node, p, c in zip(
            pn[left].tolist(), old[left].tolist(), now[left].tolist(), strict=True
        ):
            if comp_pid[c] < 0 and not own_id[c]:
                split_pairs.add((p, c))
            elif comp_pid[c] < 0:
                moves.append((node, p, c))
            elif comp_pid[c] != p and not any(m[2] == p for m in merges):
                moves.append((node, p, c))
            if heir[p] >= 0:
                changed[heir[p]] = True
        withheld_now = _withheld_moves(
            config,
            types,
            node_type,
            (pn[left], old[left], now[left]),
            previous,
            person_ids,
            run_id,
            node_values,
        )
        del old, now, left, own_id
    else:
        withheld_now = WITHHELD_SCHEMA.empty_table()
    del pn
    withheld_all = _first_withheld(
        withheld if withheld is not None else WITHHELD_SCHEMA.empty_table(), withheld_now
    )
    # read by `pick_for("anonymous_id")`, called from here on only
    held_back = _withheld_nodes(withheld_all, types, node_type, node_values)
    diff_node = eligible & (
        prev_pid != np.where(comp_of >= 0, comp_pid[np.maximum(comp_of, 0)], -1)
    )
    changed[np.unique(comp_of[diff_node])] = True
    del diff_node
    changed[new_comps] = True
    for c, _, _ in merges:
        changed[c] = True

    pid_take = pa.array(comp_pid, mask=comp_pid < 0)

    def carried(column: str, fresh: object, kind: pa.DataType) -> pa.Array:
        if not n_prev:
            return pa.repeat(pa.scalar(fresh, kind), n_comp)
        old_values = previous.table[column].combine_chunks().cast(kind).take(pid_take)
        return pc.coalesce(old_values, pa.scalar(fresh, kind))

    # a profile that was a Customer.io person with an `id` and is heir to a component that
    # holds none now (its user left, a lead's email of it stays) is still that person in
    # Customer.io, `id` and all: not a person known by email alone, whom a link could merge
    # into another (deleting the person with the `id`), or whose email a new user could take
    # without the person giving it up first (a part split off such a person keeps its own:
    # its rows go to that person meanwhile)
    if n_prev:
        own = previous.own_person
        own = previous.table["cio_person_id"] if own is None else own
        old_person = own.combine_chunks().cast(pa.string())
        person_ids = pc.coalesce(person_ids, old_person.take(pid_take))
    created_run = carried("created_run", run_id, pa.string())
    created_batch = carried("created_batch", batch, pa.int64())
    updated = pc.if_else(
        pa.array(changed), pa.scalar(run_id), carried("updated_run", run_id, pa.string())
    )
    # a person with an `id` is given an email its `id` is joined to (its own row's) before
    # one other rows bring into the profile: not the email a refused union leaves with it,
    # another user's own (seen last, by that user's row)
    emails = _kept_email(
        values_of(pick_for("email", first=_joined_to(id_nodes, graph, accepted))),
        person_ids,
        previous,
        comp_pid,
        merges,
        config,
        types,
        node_type,
        node_values,
        comp_of,
        eligible,
    )
    type_names = pa.array(list(types), pa.string())
    columns: dict[str, pa.Array] = {
        "run_id": pa.repeat(pa.scalar(run_id), n_comp),
        "profile_id": comp_arr,
        "status": pa.repeat(pa.scalar("active"), n_comp),
        "anchor_type": type_names.take(pa.array(node_type[anchor].astype(np.int32))),
        "anchor_value": node_values.take(pa.array(anchor)),
        "created_run": created_run,
        "created_batch": created_batch,
        "updated_run": updated,
        "n_identifiers": pa.array(counts.sum(axis=1), pa.int64()),
        "cio_id": values_of(pick_for("cio_id")),
        "cio_person_id": person_ids,
        "cio_email": emails,
        "cio_anonymous_id": values_of(pick_for("anonymous_id")),
    }
    for t, name in enumerate(types):
        columns[f"n_{name}"] = pa.array(counts[:, t], pa.int64())
    profiles = pa.table(columns, schema=profile_schema(types))
    # each node's profile id (two strings a person) made once the profile columns are: not
    # alive beside the temporaries of their picks, nor beside `comp_of` (its int32 copy as
    # the positions taken, where they fit)
    del columns
    where = pa.array(comp_of.astype(np.int32 if n_comp < 2**31 else np.int64), mask=comp_of < 0)
    # the nodes of the components that merge, and their component: all the merges' triggers
    # need of `comp_of` (a few nodes, where a copy of it per edge was ~60 MiB at 1M people)
    merge_nodes = merge_comps = np.zeros(0, dtype=np.int64)
    if merges:  # (none in most runs: no pass over the nodes then)
        merging = np.zeros(n_comp, dtype=np.bool_)
        merging[[c for c, _, _ in merges]] = True
        merge_nodes = np.flatnonzero((comp_of >= 0) & merging[np.maximum(comp_of, 0)])
        merge_comps = comp_of[merge_nodes]
        del merging
    comp_of = np.zeros(0, dtype=np.int64)  # (`pick_for` reads it: not called from here on)
    give_back()  # the picks' temporaries, before the last large array of the stitch
    node_profile = comp_arr.take(where)
    del where

    # merges: the edge that joins each absorbed profile to its survivor is its trigger
    merge_rows: dict[str, list[object]] = {n: [] for n in MERGES_SCHEMA.names}
    alias_new: dict[str, str] = {}
    if merges:
        # a survivor whose person holds the component's `id` (a returning user, their own
        # node new: their profile was retired) has that node on its side of the path
        kept = sorted({s for _, s, _ in merges})  # the survivors' rows of `old_person` alone
        ids_of = dict(zip(kept, old_person.take(pa.array(kept)).to_pylist(), strict=True))
        person_node: dict[int, int] = {}
        for c, s, _ in merges:
            n = int(id_nodes[c])
            if n >= 0 and ids_of[s] is not None and ids_of[s] == node_values[n].as_py():
                person_node[s] = n
        trigger = _merge_triggers(
            graph, accepted, prev_pid, merge_nodes, merge_comps, merges, person_node
        )
        for _c, s, p in merges:
            e = trigger.get(p, -1)
            merge_rows["run_id"].append(run_id)
            merge_rows["profile_id"].append(previous.name(s))
            merge_rows["absorbed_profile_id"].append(previous.name(p))
            for side, arr in (("a", graph.a), ("b", graph.b)):
                node = int(arr[e]) if e >= 0 else -1
                merge_rows[f"type_{side}"].append(types[node_type[node]] if node >= 0 else None)
                merge_rows[f"value_{side}"].append(node_values[node].as_py() if node >= 0 else None)
            merge_rows["evidence_rank"].append(int(graph.rank[e]) if e >= 0 else None)
            merge_rows["cause"].append("merge" if e >= 0 else "forced")
            alias_new[previous.name(p)] = previous.name(s)
    merges_t = pa.table(merge_rows, schema=MERGES_SCHEMA)

    # aliases, chains written out
    old_alias = previous.aliases
    rows: dict[str, list[object]] = {n: old_alias[n].to_pylist() for n in ALIASES_SCHEMA.names}
    rows["profile_id"] = [alias_new.get(str(pid), pid) for pid in rows["profile_id"]]
    for old_id, survivor in sorted(alias_new.items()):
        rows["run_id"].append(run_id)
        rows["old_profile_id"].append(old_id)
        rows["profile_id"].append(survivor)
        rows["cause"].append("merge")
    aliases = pa.table(rows, schema=ALIASES_SCHEMA)

    # which previous profiles were a Customer.io person (asked of split parents only: not a
    # Python object per profile every run)
    had_person = (
        pc.or_(
            pc.is_valid(previous.table["cio_person_id"]),
            pc.is_valid(previous.table["cio_email"]),
        ).to_numpy(zero_copy_only=False)
        if split_pairs
        else np.zeros(0, dtype=bool)
    )
    split_list = sorted((previous.name(p), str(new_ids[c].as_py()), p) for p, c in split_pairs)
    splits = pa.table(
        {
            "run_id": [run_id] * len(split_list),
            "parent_profile_id": [p for p, _, _ in split_list],
            "child_profile_id": [c for _, c, _ in split_list],
            "cause": ["recompute"] * len(split_list),
            "status": ["needs_review" if had_person[i] else "applied" for _, _, i in split_list],
        },
        schema=SPLITS_SCHEMA,
    )
    moves_t = pa.table(
        {
            "run_id": [run_id] * len(moves),
            "id_type": [types[node_type[n]] for n, _, _ in moves],
            "id_value": [node_values[n].as_py() for n, _, _ in moves],
            "from_profile_id": [previous.name(p) for _, p, _ in moves],
            "to_profile_id": [comp_arr[c].as_py() for _, _, c in moves],
        },
        schema=MOVES_SCHEMA,
    )
    del node_batch
    retired = _retired(heir, previous, run_id)
    return Assigned(
        node_profile, profiles, aliases, merges_t, splits, moves_t, retired, withheld_all
    )


def _merge_triggers(
    graph: g.Graph,
    accepted: npt.NDArray[np.bool_],
    prev_pid: npt.NDArray[np.int64],
    merge_nodes: npt.NDArray[np.int64],
    merge_comps: npt.NDArray[np.int64],
    merges: list[tuple[int, int, int]],
    person_node: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """Per absorbed profile of ``merges`` (component, survivor, absorbed), the edge that joins
    it to its survivor by the strongest evidence: the accepted edges of its component added
    weakest rank last (then batch, first seen), each earlier profile's own nodes one from the
    start, the edge at which the two are first joined. Its rank is the merge's evidence: the
    weakest link of the best path between the two, new identifiers included (a returning
    user's own row joining their `id` to a lead's email is no evidence that a link joins
    that lead to another). No edge (-1 when absent): an operator's `include` forced it.
    ``merge_nodes`` (sorted) are the nodes of the merging components, ``merge_comps`` theirs."""
    marked = np.zeros(len(prev_pid), dtype=np.bool_)  # a byte a node, not 8 an edge
    marked[merge_nodes] = True
    edges = np.flatnonzero(accepted & marked[graph.a])
    del marked
    order = np.lexsort((edges, graph.first_obs[edges], graph.batch[edges], graph.rank[edges]))
    edges = edges[order]
    comps = merge_comps[np.searchsorted(merge_nodes, graph.a[edges])]
    by_comp: dict[int, list[int]] = {}
    for e, c in zip(edges.tolist(), comps.tolist(), strict=True):
        by_comp.setdefault(c, []).append(e)
    pending: dict[int, list[tuple[int, int]]] = {}
    for c, s, p in merges:
        pending.setdefault(c, []).append((s, p))
    found: dict[int, int] = {}
    a_nodes, b_nodes = graph.a.tolist(), graph.b.tolist()
    for c, wanted in pending.items():
        parent: dict[tuple[int, int], tuple[int, int]] = {}
        for s, _ in wanted:  # the node of the `id` its person holds, on the survivor's side
            if person_node and s in person_node:
                parent[union_root(parent, (1, person_node[s]))] = union_root(parent, (0, s))
        left = list(wanted)
        for e in by_comp.get(c, []):
            ends = []
            for node in (a_nodes[e], b_nodes[e]):
                pid = int(prev_pid[node])  # an earlier profile's nodes are one from the start
                ends.append(union_root(parent, (0, pid) if pid >= 0 else (1, node)))
            if ends[0] == ends[1]:
                continue
            parent[ends[0]] = ends[1]
            still = []
            for s, p in left:
                if union_root(parent, (0, s)) == union_root(parent, (0, p)):
                    found[p] = e
                else:
                    still.append((s, p))
            left = still
            if not left:
                break
    return found


def union_root(parent: dict[Node, Node], x: Node) -> Node:
    """The root of ``x`` in the union-find forest ``parent`` (paths halved as it goes); ``x``
    joins the forest as a root of its own when new."""
    parent.setdefault(x, x)
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def _withheld_moves(
    config: IdentityConfig,
    types: tuple[str, ...],
    node_type: npt.NDArray[np.int16],
    left: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]],
    previous: PreviousProfiles,
    person_ids: pa.Array,
    run_id: str,
    node_values: pa.StringArray,
) -> pa.Table:
    """Of the nodes that left their previous profile this run (``left``: the nodes, the
    profiles they left, the components they are in now), the anonymous ids (of a type sent as
    Customer.io's `anonymous_id`) whose profile was a Customer.io person (an `id` or an email)
    other than the one their component's `id` (``person_ids``) names: that person may hold
    them, and the events they attached."""
    nodes, old, now = left
    kinds = [
        i for i, t in enumerate(types) if config.identifier_types[t].customerio == "anonymous_id"
    ]
    pick = np.isin(node_type[nodes], kinds) if kinds else np.zeros(nodes.size, dtype=bool)
    if not pick.any():
        return WITHHELD_SCHEMA.empty_table()
    nodes, old, now = nodes[pick], old[pick], now[pick]
    table = previous.table
    person = pc.or_(pc.is_valid(table["cio_person_id"]), pc.is_valid(table["cio_email"]))
    was_person = person.combine_chunks().to_numpy(zero_copy_only=False)[old]
    old_id = table["cio_person_id"].combine_chunks().cast(pa.string()).take(pa.array(old))
    new_id = person_ids.cast(pa.string()).take(pa.array(now))
    same = pc.fill_null(pc.equal(old_id, new_id), False).to_numpy(zero_copy_only=False)
    keep = was_person & ~same
    nodes, old = nodes[keep], old[keep]
    return pa.table(
        {
            "id_type": [types[node_type[n]] for n in nodes.tolist()],
            "id_value": node_values.take(pa.array(nodes)).to_pylist(),
            "profile_id": [previous.name(p) for p in old.tolist()],
            "run_id": [run_id] * int(nodes.size),
        },
        schema=WITHHELD_SCHEMA,
    )


def _first_withheld(before: pa.Table, now: pa.Table) -> pa.Table:
    """``before`` and the anonymous ids of ``now`` it does not hold yet (each kept with the
    person's profile it first left)."""
    if not now.num_rows:
        return before
    seen = set(zip(before["id_type"].to_pylist(), before["id_value"].to_pylist(), strict=True))
    keep = []
    for i, key in enumerate(
        zip(now["id_type"].to_pylist(), now["id_value"].to_pylist(), strict=True)
    ):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return pa.concat_tables([before, now.take(pa.array(keep, pa.int64()))])


def _withheld_nodes(
    withheld: pa.Table,
    types: tuple[str, ...],
    node_type: npt.NDArray[np.int16],
    node_values: pa.StringArray,
) -> npt.NDArray[np.bool_] | None:
    """The nodes whose type and value are ``withheld`` (None when none are)."""
    if not withheld.num_rows:
        return None
    out = np.zeros(node_type.shape[0], dtype=bool)
    for name in set(withheld["id_type"].to_pylist()):
        if name not in types:
            continue
        t = types.index(name)
        values = withheld.filter(pc.equal(withheld["id_type"], name))["id_value"]
        of_type = np.flatnonzero(node_type == t)
        hit = pc.is_in(node_values.take(pa.array(of_type)), value_set=values.combine_chunks())
        out[of_type[hit.to_numpy(zero_copy_only=False)]] = True
    return out


def _claim_retired(
    prev_pid: npt.NDArray[np.int64],
    previous: PreviousProfiles,
    config: IdentityConfig,
    types: tuple[str, ...],
    node_type: npt.NDArray[np.int16],
    node_values: pa.StringArray,
    eligible: npt.NDArray[np.bool_],
) -> npt.NDArray[np.int64]:
    """``prev_pid`` with each retired profile (`IdentityState.retired`) holding the node of
    its Customer.io email again, when that node is back and no other profile held it.

    Its person is still in Customer.io, found by that email: the component holding the email
    is the retired profile's heir, so it is the profile again (alone) or merges with the
    other profiles there (the person is merged into theirs). Without this, the email would
    join another profile as a new identifier, and that person would be left beside it."""
    n_retired = len(previous.ids) - previous.live
    if n_retired <= 0:
        return prev_pid
    emails = previous.table["cio_email"].slice(previous.live).combine_chunks().cast(pa.string())
    email_types = [
        types.index(t) for t in types if config.identifier_types[t].customerio == "email"
    ]
    candidates = np.flatnonzero(
        eligible
        & (prev_pid < 0)
        & np.isin(node_type, email_types)
        & pc.fill_null(pc.is_in(node_values, value_set=emails.drop_null()), False)
        .to_numpy(zero_copy_only=False)
        .astype(bool)
    )
    if not candidates.size:
        return prev_pid
    code_of: dict[str, int] = {}
    for i, email in enumerate(emails.to_pylist()):
        if email is not None:
            code_of.setdefault(email, previous.live + i)
    out = prev_pid.copy()
    claimed: set[int] = set()
    for node, value in zip(
        candidates.tolist(), node_values.take(pa.array(candidates)).to_pylist(), strict=True
    ):
        code = code_of[value]
        if code not in claimed:  # one node each (an email kept by two email types)
            out[node] = code
            claimed.add(code)
    return out


def _retired(heir: npt.NDArray[np.int64], previous: PreviousProfiles, run_id: str) -> pa.Table:
    """The profiles retired after this run: those heir to nothing that were a Customer.io
    person known by email alone (no `id`: a user whose row left is never taken over by
    another profile), newly (`run_id` this run's) or since an earlier run (as they were).
    A retired profile that is heir to a component now is that profile again, or merged."""
    none = heir < 0
    if not none.any():
        return previous.table.slice(0, 0)
    table = previous.table
    email_only = pc.and_(pc.is_null(table["cio_person_id"]), pc.is_valid(table["cio_email"]))
    keep = none & email_only.to_numpy(zero_copy_only=False).astype(bool)
    codes = np.flatnonzero(keep)
    if not codes.size:
        return table.slice(0, 0)
    # a block at a time: ``take`` of the whole table would join every column's chunks first
    # (the previous profiles again, ~140 MiB at a million, while the stitch's arrays are alive)
    out = pa.concat_tables(
        [
            table.slice(start, _BLOCK).take(pa.array(local - start))
            for start in range(0, table.num_rows, _BLOCK)
            if (local := codes[(codes >= start) & (codes < start + _BLOCK)]).size
        ]
    )
    fresh = pa.array(codes < previous.live)
    out = out.set_column(
        out.schema.get_field_index("run_id"),
        "run_id",
        pc.if_else(fresh, pa.scalar(run_id), out["run_id"].combine_chunks().cast(pa.string())),
    )
    return out.set_column(
        out.schema.get_field_index("status"),
        "status",
        pa.repeat(pa.scalar("retired"), out.num_rows),
    )


_BLOCK = 1 << 16
"""Rows of the previous profiles read at a time by the passes that compare them with this
run's components: a column's values as one array are a copy of every chunk of it."""


def _blocks(column: pa.ChunkedArray) -> Iterator[tuple[int, pa.Array]]:
    """``(offset, values)`` of a column of the previous profiles, ``_BLOCK`` rows at a time.

    Not a copy of the whole column (``combine_chunks``, or ``take`` of a chunked array,
    which joins every chunk first: ~23 MiB for the emails of a million profiles, and as much
    again for what is taken of them, while the stitch's own arrays are alive).
    """
    for start in range(0, len(column), _BLOCK):
        yield start, column.slice(start, _BLOCK).combine_chunks()


def _retire_other_ids(
    heir: npt.NDArray[np.int64],
    person_ids: pa.Array,
    previous: PreviousProfiles,
    config: IdentityConfig,
    types: tuple[str, ...],
    node_type: npt.NDArray[np.int16],
    node_values: pa.StringArray,
    comp_of: npt.NDArray[np.int64],
    eligible: npt.NDArray[np.bool_],
) -> npt.NDArray[np.int64]:
    """``heir`` without the heirs of previous profiles that were a Customer.io person with
    an `id` handed to a component whose `id` is another one and that does not hold theirs
    (their user left, their remaining identifiers are another user's now)."""
    wanted: dict[int, str] = {}
    for start, had in _blocks(previous.table["cio_person_id"]):
        own = heir[start : start + len(had)]
        now_id = person_ids.take(pa.array(own, mask=own < 0))
        other = pc.fill_null(pc.not_equal(had.cast(pa.string()), now_id), False)
        rows = np.flatnonzero(np.asarray(other.to_numpy(zero_copy_only=False), dtype=bool))
        wanted.update(
            zip(
                (start + rows).tolist(),
                had.take(pa.array(rows)).cast(pa.string()).to_pylist(),
                strict=True,
            )
        )
    if not wanted:
        return heir
    id_types = [types.index(t) for t in config.customerio.id_from if t in types]
    candidates = np.flatnonzero(
        eligible
        & np.isin(node_type, id_types)
        & (comp_of >= 0)
        & pc.is_in(node_values, value_set=pa.array(sorted(set(wanted.values())), pa.string()))
        .to_numpy(zero_copy_only=False)
        .astype(bool)
    )
    held = set(
        zip(
            comp_of[candidates].tolist(),
            node_values.take(pa.array(candidates)).to_pylist(),
            strict=True,
        )
    )
    out = heir.copy()
    for p, person in wanted.items():
        if (int(heir[p]), person) not in held:
            out[p] = -1
    return out


def _retire_dragged(
    heir: npt.NDArray[np.int64],
    previous: PreviousProfiles,
    config: IdentityConfig,
    types: tuple[str, ...],
    node_type: npt.NDArray[np.int16],
    node_values: pa.StringArray,
    comp_of: npt.NDArray[np.int64],
    eligible: npt.NDArray[np.bool_],
) -> npt.NDArray[np.int64]:
    """``heir`` without the heirs, among several of one component, that were a Customer.io
    person and whose component holds neither their anchor nor any of the identifiers that
    person is found by (its `id`, its email, its `cio_id`), when another heir there holds
    one of its own.

    Such a profile reached the component through a leaf alone (its Stripe id, now another
    profile's): its own evidence is gone from every source, and merging it would delete its
    person in Customer.io for an identifier that merely moved. A profile whose anchor is
    there reached it through the identifier it is named after, not a leaf (a lead whose
    Customer.io email left while its anchor email stayed, now linked to another lead's
    email): it is that component's heir as identity.md §2.3 says, and merges. A component
    whose heirs hold none of their own is left to merge as before (nothing says which of
    them it is)."""
    has = np.flatnonzero(heir >= 0)
    if not has.size:
        return heir
    per = np.bincount(heir[has])
    multi = has[per[heir[has]] > 1]
    if not multi.size:
        return heir
    columns = {
        "id": previous.column("cio_person_id"),
        "email": previous.column("cio_email"),
        "cio_id": previous.column("cio_id"),
    }
    own: dict[int, set[tuple[str, str]]] = {}
    for p in multi.tolist():
        own[p] = {(kind, str(v)) for kind, col in columns.items() if (v := col[p]) is not None}
    wanted = {v for keys in own.values() for _, v in keys}
    if not wanted:
        return heir
    kind_of = np.full(len(types), -1, dtype=np.int64)
    kinds = ("id", "email", "cio_id")
    for t, name in enumerate(types):
        target = config.identifier_types[name].customerio
        if name in config.customerio.id_from:
            kind_of[t] = 0
        elif target in ("email", "cio_id"):
            kind_of[t] = kinds.index(target)
    candidates = np.flatnonzero(
        eligible
        & (comp_of >= 0)
        & (kind_of[node_type] >= 0)
        & pc.is_in(node_values, value_set=pa.array(sorted(wanted), pa.string()))
        .to_numpy(zero_copy_only=False)
        .astype(bool)
    )
    held = set(
        zip(
            comp_of[candidates].tolist(),
            (kinds[k] for k in kind_of[node_type[candidates]].tolist()),
            node_values.take(pa.array(candidates)).to_pylist(),
            strict=True,
        )
    )
    anchored = _hold_anchor(
        [p for p in multi.tolist() if own[p]],
        heir,
        previous,
        types,
        node_type,
        node_values,
        comp_of,
        eligible,
    )
    groups: dict[int, list[int]] = {}
    for p in multi.tolist():
        groups.setdefault(int(heir[p]), []).append(p)
    out = heir.copy()
    for c, pids in groups.items():
        holds = {p: p in anchored or any((c, kind, v) in held for kind, v in own[p]) for p in pids}
        if any(holds.values()):
            for p in pids:
                if own[p] and not holds[p]:
                    out[p] = -1
    return out


def _hold_anchor(
    pids: list[int],
    heir: npt.NDArray[np.int64],
    previous: PreviousProfiles,
    types: tuple[str, ...],
    node_type: npt.NDArray[np.int16],
    node_values: pa.StringArray,
    comp_of: npt.NDArray[np.int64],
    eligible: npt.NDArray[np.bool_],
) -> set[int]:
    """Those of ``pids`` (previous profiles) whose heir component holds their old anchor."""
    if not pids:
        return set()
    a_type, a_value = previous.column("anchor_type"), previous.column("anchor_value")
    type_index = {t: i for i, t in enumerate(types)}
    wanted = {
        p: (type_index[str(a_type[p])], str(a_value[p]))
        for p in pids
        if a_type[p] is not None and a_value[p] is not None and str(a_type[p]) in type_index
    }
    if not wanted:
        return set()
    values = pa.array(sorted({v for _, v in wanted.values()}), pa.string())
    candidates = np.flatnonzero(
        eligible
        & (comp_of >= 0)
        & pc.is_in(node_values, value_set=values).to_numpy(zero_copy_only=False).astype(bool)
    )
    held = set(
        zip(
            comp_of[candidates].tolist(),
            node_type[candidates].tolist(),
            node_values.take(pa.array(candidates)).to_pylist(),
            strict=True,
        )
    )
    return {p for p, (t, v) in wanted.items() if (int(heir[p]), t, v) in held}


def _kept_email(
    picked: pa.Array,
    person_ids: pa.Array,
    previous: PreviousProfiles,
    comp_pid: npt.NDArray[np.int64],
    merges: list[tuple[int, int, int]],
    config: IdentityConfig,
    types: tuple[str, ...],
    node_type: npt.NDArray[np.int16],
    node_values: pa.StringArray,
    comp_of: npt.NDArray[np.int64],
    eligible: npt.NDArray[np.bool_],
) -> pa.Array:
    """Per component, the Customer.io email: ``picked`` (best rank, then latest seen), except
    for a profile that is a Customer.io person by its email alone (no `id` before or now),
    which keeps the email it had while it still holds it; a merge's survivor that no longer
    holds its own keeps, of the profiles it absorbs (``merges``: component, survivor,
    absorbed, in survivor order) that were people by their email alone, the first one's
    email it holds.

    Such a person can only be found by that email: identifying it by another one of the
    profile's emails (a smaller address that joined, a lead's second address) would create a
    second person for the one profile, and leave the first with the profile's older values.
    After a merge the people merge into the one holding the kept email (`customerio`'s
    ``_merge_into``): the absorbed lead's person, when the survivor's own address left.
    """
    if not len(previous.ids) or not len(picked):
        return picked
    # only the previous profiles that were a person by their email alone are read, and of
    # those only the ones a component kept (``comp_pid``) that has no `id` now
    kept = np.flatnonzero(comp_pid >= 0)
    kept_by = np.full(len(previous.ids), -1, dtype=np.int64)
    kept_by[comp_pid[kept]] = kept
    del kept
    no_id = np.asarray(pc.is_null(person_ids).to_numpy(zero_copy_only=False), dtype=bool)
    wanted: dict[int, list[str]] = {}
    settled: set[int] = set()  # components whose picked email is the survivor's own
    emails = previous.table["cio_email"]
    person = previous.table["cio_person_id"]
    for start in range(0, len(emails), _BLOCK):
        comps = kept_by[start : start + _BLOCK]
        email_only = pc.and_(
            pc.is_valid(emails.slice(start, _BLOCK)), pc.is_null(person.slice(start, _BLOCK))
        )
        rows = np.flatnonzero(
            np.asarray(email_only.to_numpy(zero_copy_only=False), dtype=bool)
            & (comps >= 0)
            & no_id[np.maximum(comps, 0)]
        )
        if not rows.size:
            continue
        old = emails.slice(start, _BLOCK).take(pa.array(rows)).combine_chunks()
        now = picked.take(pa.array(comps[rows]))
        stale = np.asarray(
            pc.fill_null(pc.not_equal(now, old.cast(pa.string())), True).to_numpy(
                zero_copy_only=False
            ),
            dtype=bool,
        )
        chosen = np.flatnonzero(stale)
        for c, email in zip(
            comps[rows[chosen]].tolist(),
            old.take(pa.array(chosen)).cast(pa.string()).to_pylist(),
            strict=True,
        ):
            wanted[c] = [email]
        if merges:
            settled.update(comps[rows[~stale]].tolist())
    del kept_by
    if merges:
        for c, _, absorbed in merges:
            if c in settled or not no_id[c]:
                continue
            email, person = (
                previous.column("cio_email")[absorbed],
                previous.column("cio_person_id")[absorbed],
            )
            if email is not None and person is None:
                wanted.setdefault(c, []).append(str(email))
    del no_id, settled
    if not wanted:
        return picked
    email_types = [
        types.index(t) for t in types if config.identifier_types[t].customerio == "email"
    ]
    candidates = np.flatnonzero(
        eligible
        & np.isin(node_type, email_types)
        & (comp_of >= 0)
        & pc.is_in(
            node_values,
            value_set=pa.array(sorted({e for es in wanted.values() for e in es}), pa.string()),
        )
        .to_numpy(zero_copy_only=False)
        .astype(bool)
    )
    held = {
        (int(c), v)
        for c, v in zip(
            comp_of[candidates].tolist(),
            node_values.take(pa.array(candidates)).to_pylist(),
            strict=True,
        )
    }
    # the kept emails replace the picked ones in place: not a Python string per profile
    kept_email: dict[int, str] = {}
    for c, options in wanted.items():
        for email in options:
            if (c, email) in held:
                kept_email[c] = email
                break
    keep = sorted(kept_email)
    if not keep:
        return picked
    mask = np.zeros(len(picked), dtype=bool)
    mask[keep] = True
    return pc.replace_with_mask(
        picked.cast(pa.string()),
        pa.array(mask),
        pa.array([kept_email[c] for c in keep], pa.string()),
    )


def _own_new_id(
    config: IdentityConfig,
    types: tuple[str, ...],
    node_type: npt.NDArray[np.int16],
    prev_pid: npt.NDArray[np.int64],
    comp_of: npt.NDArray[np.int64],
    eligible: npt.NDArray[np.bool_],
    n_comp: int,
) -> npt.NDArray[np.bool_]:
    """Per component, whether it holds a Customer.io `id` (a `customerio.id_from` type) that
    no earlier profile held, and none that one did.

    Such a component is a new person (a user who signed up), not a part split off an older
    profile, even when it took identifiers that profile had: an email its owner gave up in
    the same run (identity.md §3.6 cases 11, 13) belongs to the new user now. Its identifiers
    are moves, and its rows go to its own person, not to the older profile's (which a split
    waiting for review would do, sending a new user's attributes and events to someone else).
    """
    ids = [types.index(t) for t in config.customerio.id_from if t in types]
    is_id = eligible & np.isin(node_type, ids) & (comp_of >= 0)
    fresh = np.zeros(n_comp, dtype=bool)
    known = np.zeros(n_comp, dtype=bool)
    fresh[comp_of[is_id & (prev_pid < 0)]] = True
    known[comp_of[is_id & (prev_pid >= 0)]] = True
    return fresh & ~known


HELD_COLUMNS = ("cio_id", "cio_person_id", "cio_email", "cio_anonymous_id")


def hold_splits(
    previous_held: pa.Table,
    previous_profiles: pa.Table,
    splits: pa.Table,
    profiles: pa.Table,
    run_id: str,
) -> pa.Table:
    """The profiles of splits waiting for review, with the identifiers their rows keep.

    A split of a profile that was a Customer.io person (`needs_review`) must not change
    Customer.io until someone approves it: the parent and every split-off part keep the
    parent's Customer.io identifiers from before the split, run after run. Entries carry over
    while their profile exists.
    """
    rows: dict[str, dict[str, object]] = {}
    if previous_held.num_rows:
        # (not asked with none held: `is_in` hashes every profile id, ~60 MiB at 1M people)
        live = pc.is_in(previous_held["profile_id"], value_set=profiles["profile_id"])
        rows = {r["profile_id"]: r for r in previous_held.filter(live).to_pylist()}
    review = splits.filter(pc.equal(splits["status"], "needs_review"))
    if review.num_rows:
        parents = previous_profiles.filter(
            pc.is_in(previous_profiles["profile_id"], value_set=review["parent_profile_id"])
        )
        before = {r["profile_id"]: r for r in parents.to_pylist()}
        alive = set(
            profiles.filter(
                pc.is_in(
                    profiles["profile_id"],
                    value_set=pa.concat_arrays(
                        [
                            review["parent_profile_id"].combine_chunks(),
                            review["child_profile_id"].combine_chunks(),
                        ]
                    ),
                )
            )["profile_id"].to_pylist()
        )
        for split in review.to_pylist():
            parent = split["parent_profile_id"]
            frozen = rows.get(parent) or before.get(parent)
            if frozen is None:
                continue
            root = rows[parent]["parent_profile_id"] if parent in rows else parent
            for pid in (parent, split["child_profile_id"]):
                if pid in alive and pid not in rows:
                    rows[pid] = {
                        "run_id": run_id,
                        "profile_id": pid,
                        "parent_profile_id": root,
                        **{name: frozen[name] for name in HELD_COLUMNS},
                    }
    return pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=HELD_SCHEMA)


def track_lost(
    previous_lost: pa.Table, moves: pa.Table, profiles: pa.Table, types: tuple[str, ...]
) -> pa.Table:
    """Profiles that lost their values of a type to another profile and hold none now.

    An identifier that moves (a reassigned Stripe id, a recycled phone) must be cleared on
    the person who no longer holds it, and stay cleared on later runs.
    """
    pairs = set(
        zip(
            previous_lost["profile_id"].to_pylist(),
            previous_lost["id_type"].to_pylist(),
            strict=True,
        )
    )
    pairs |= set(
        zip(moves["from_profile_id"].to_pylist(), moves["id_type"].to_pylist(), strict=True)
    )
    if not pairs:
        return LOST_SCHEMA.empty_table()
    counts = {
        r["profile_id"]: r
        for r in profiles.filter(
            pc.is_in(profiles["profile_id"], value_set=pa.array({p for p, _ in pairs}))
        )
        .select(["profile_id", *(f"n_{t}" for t in types)])
        .to_pylist()
    }
    keep = sorted((pid, t) for pid, t in pairs if pid in counts and not counts[pid].get(f"n_{t}"))
    return pa.table(
        {"profile_id": [p for p, _ in keep], "id_type": [t for _, t in keep]}, schema=LOST_SCHEMA
    )


def contested_values(refused: pa.Table, targets: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """`(profile_id, kind, value)` for each union a limit refused over an email (or `id`).

    The value stays with the profile that holds it; the other profile's person gets it as
    the attribute `contested_<kind>`. `targets` maps each identifier type to its Customer.io
    target (`email`, `id`, `attribute:<name>`, ...).
    """
    out = []
    for r in refused.to_pylist():
        if not r["rule"].startswith("limit:"):
            continue
        for side, other in (("b", "a"), ("a", "b")):
            kind = targets.get(r[f"type_{side}"], "")
            holder = r[f"profile_{other}"]
            if kind in ("email", "id") and holder and holder != r[f"profile_{side}"]:
                out.append((holder, kind, r[f"value_{side}"]))
                break
    return out


def track_contested(
    previous: pa.Table,
    refused: pa.Table,
    aliases: pa.Table,
    profiles: pa.Table,
    targets: Mapping[str, str],
) -> pa.Table:
    """Profiles given `contested_<kind>` this run or before, under their current profile id.

    A refusal can go away (the family member gets their own email, the limit is raised): the
    person keeps the attribute in Customer.io until it is cleared, so every profile that ever
    had it is remembered. A profile merged into another is followed to its survivor, since a
    Customer.io merge carries the absorbed person's attributes over.
    """
    survivor = dict(
        zip(aliases["old_profile_id"].to_pylist(), aliases["profile_id"].to_pylist(), strict=True)
    )
    pairs = {
        (survivor.get(pid, pid), kind)
        for pid, kind in zip(
            previous["profile_id"].to_pylist(), previous["kind"].to_pylist(), strict=True
        )
    }
    pairs |= {(pid, kind) for pid, kind, _ in contested_values(refused, targets)}
    alive = (
        set(
            profiles.filter(
                pc.is_in(
                    profiles["profile_id"], value_set=pa.array({p for p, _ in pairs}, pa.string())
                )
            )["profile_id"].to_pylist()
        )
        if pairs
        else set()
    )
    keep = sorted(pair for pair in pairs if pair[0] in alive)
    return pa.table(
        {"profile_id": [p for p, _ in keep], "kind": [k for _, k in keep]},
        schema=CONTESTED_SCHEMA,
    )
