"""The identity graph on integers: degree caps and limit-aware union-find.

Nodes are dense integers (one per typed identifier value); edges are parallel numpy arrays.
Nothing here sees a string except through the `edge_order` callback, which the engine uses
to sort the few edges that need exact, ordered processing.

The hybrid (`stitch`) gives exactly the partition of `ordered_union` over every edge:

* `connected_components` (vectorised union-find) labels the graph without limits;
* a component can only see a union refused if its *final* unconstrained state breaks a rule
  (type counts and sizes only grow as components merge; a bridge refusal needs a weak node
  with two edges and two known nodes), so every other component is already final;
* the flagged components' edges are replayed by `ordered_union` in the same order, so the
  result is the one plain ordered union-find would give.

Example::

    labels, refusals = stitch(graph, active, rules, edge_order)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Int64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

ACCEPTED, REFUSED, QUARANTINED, CAPPED, EXCLUDED, RETRACTED, FORCED = range(7)
STATUS_NAMES = ("accepted", "refused", "quarantined", "capped", "excluded", "retracted", "forced")


@dataclass(frozen=True)
class Graph:
    """Distinct edges between dense node ids, with their evidence.

    `a` is the edge's anchor side (the more trusted endpoint). `first_obs` is the earliest
    observed time (int64 microseconds, `INT64_MAX` when unknown), `last_obs` the latest
    (`INT64_MIN` when unknown), `sources` a bitmask of the sources that saw the edge.
    """

    n_nodes: int
    node_type: npt.NDArray[np.int16]
    a: Int64s
    b: Int64s
    rank: npt.NDArray[np.int16]
    batch: Int64s
    first_obs: Int64s
    last_obs: Int64s
    sources: npt.NDArray[np.uint64]

    @property
    def n_edges(self) -> int:
        return int(self.a.shape[0])


@dataclass(frozen=True)
class Rules:
    """Union rules per type index: limit (-1 = none), exempt source mask, weak (no bridging)."""

    type_names: tuple[str, ...]
    limits: tuple[int, ...]
    exempt: tuple[int, ...]
    weak: tuple[bool, ...]
    max_size: int | None = None


@dataclass(frozen=True)
class Refusal:
    """One refused union: the edge index, the rule broken and the counts at that moment."""

    edge: int
    rule: str
    counts: str


@dataclass
class _Union:
    parent: dict[int, int] = field(default_factory=dict)
    counts: dict[int, list[int]] = field(default_factory=dict)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x


def ordered_union(
    graph: Graph, edges: Sequence[int], rules: Rules
) -> tuple[dict[int, int], list[Refusal]]:
    """Plain limit-aware union-find over `edges`, in the order given.

    Returns each touched node's root and the refusals. Per-root counts hold one entry per
    type, then the number of known (non-weak) nodes, then the size.
    """
    n_types = len(rules.type_names)
    uf = _Union()
    node_type = graph.node_type
    weak = rules.weak
    limits = rules.limits
    exempt = rules.exempt
    max_size = rules.max_size
    a_arr, b_arr, src_arr = graph.a, graph.b, graph.sources
    refusals: list[Refusal] = []

    def add(x: int) -> None:
        if x not in uf.parent:
            uf.parent[x] = x
            row = [0] * (n_types + 2)
            t = int(node_type[x])
            row[t] = 1
            row[n_types] = 0 if weak[t] else 1
            row[n_types + 1] = 1
            uf.counts[x] = row

    for e in edges:
        x, y = int(a_arr[e]), int(b_arr[e])
        add(x)
        add(y)
        rx, ry = uf.find(x), uf.find(y)
        if rx == ry:
            continue
        cx, cy = uf.counts[rx], uf.counts[ry]
        rule = None
        if (weak[int(node_type[x])] or weak[int(node_type[y])]) and cx[n_types] and cy[n_types]:
            rule = "bridge_known_profiles"
        else:
            sources = int(src_arr[e])
            for t in range(n_types):
                limit = limits[t]
                if limit >= 0 and cx[t] + cy[t] > limit and not (sources & exempt[t]):
                    rule = f"limit:{rules.type_names[t]} {cx[t] + cy[t]}>{limit}"
                    break
            if rule is None and max_size is not None and cx[-1] + cy[-1] > max_size:
                rule = f"max_component_size {cx[-1] + cy[-1]}>{max_size}"
        if rule is not None:
            counts = " ".join(
                f"{rules.type_names[t]}={cx[t]}+{cy[t]}" for t in range(n_types) if cx[t] or cy[t]
            )
            refusals.append(Refusal(e, rule, counts))
            continue
        if cx[-1] < cy[-1]:
            rx, ry, cx, cy = ry, rx, cy, cx
        uf.parent[ry] = rx
        for i in range(n_types + 2):
            cx[i] += cy[i]
        del uf.counts[ry]
    return {x: uf.find(x) for x in uf.parent}, refusals


def components(graph: Graph, active: Bools) -> tuple[int, Int64s]:
    """Connected components of the active edges (no limits): count and label per node."""
    return connected_components(graph.a[active], graph.b[active], graph.n_nodes)


def connected_components(a: Int64s, b: Int64s, n: int) -> tuple[int, Int64s]:
    """Components of the undirected graph of ``n`` nodes and edges ``a[i]``-``b[i]``: their
    count and a label per node, numbered in the order of each component's smallest node (the
    labels scipy's ``connected_components`` gives, which this replaced: importing scipy's
    sparse graphs took 0.27 s of every command that resolves identities, as long as the
    components of a million-person graph take here).

    Vectorised union-find: each round hooks every root an edge touches onto the smallest
    root across its edges (so parents only decrease: no cycles), then pointer jumping points
    every node at its root; edges inside one component drop out. A root either hooks or is a
    local minimum among the roots it touches, and no two local minima touch, so each round at
    least halves the roots that still have an edge: O(log n) rounds."""
    parent = np.arange(n, dtype=np.int64)
    a = a.astype(np.int64, copy=False)
    b = b.astype(np.int64, copy=False)
    while a.size:
        ra, rb = parent[a], parent[b]
        crossing = ra != rb
        if not crossing.all():
            a, b, ra, rb = a[crossing], b[crossing], ra[crossing], rb[crossing]
            if not a.size:
                break
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    roots = parent == np.arange(n, dtype=np.int64)
    dense = np.cumsum(roots, dtype=np.int64) - 1
    return int(roots.sum()), dense[parent]


def flag_components(graph: Graph, active: Bools, labels: Int64s, count: int, rules: Rules) -> Bools:
    """Components whose final unconstrained state could have seen a union refused."""
    n_types = len(rules.type_names)
    per_type = np.bincount(
        labels * n_types + graph.node_type.astype(np.int64), minlength=count * n_types
    ).reshape(count, n_types)
    flagged = np.zeros(count, dtype=bool)
    for t, limit in enumerate(rules.limits):
        if limit >= 0:
            flagged |= per_type[:, t] > limit
    if rules.max_size is not None:
        flagged |= per_type.sum(axis=1) > rules.max_size
    weak = np.array(rules.weak, dtype=bool)
    if weak.any():
        a, b = graph.a[active], graph.b[active]
        degree = np.bincount(a, minlength=graph.n_nodes) + np.bincount(b, minlength=graph.n_nodes)
        hubs = weak[graph.node_type] & (degree >= 2)
        known = per_type[:, ~weak].sum(axis=1)
        hub_comps = np.unique(labels[hubs])
        flagged[hub_comps] |= known[hub_comps] >= 2
    return flagged


def stitch(
    graph: Graph,
    active: Bools,
    rules: Rules,
    edge_order: Callable[[Int64s], list[int]],
) -> tuple[Int64s, list[Refusal], int]:
    """Limit-aware stitching: the hybrid of plain components and ordered union-find.

    `edge_order` takes edge indices and returns them sorted in canonical order.
    Returns a label per node (not dense), the refusals, and how many edges were replayed.
    """
    count, labels = components(graph, active)
    flagged = flag_components(graph, active, labels, count, rules)
    if not flagged.any():
        return labels, [], 0
    residual = np.flatnonzero(active & flagged[labels[graph.a]])
    roots, refusals = ordered_union(graph, edge_order(residual), rules)
    nodes = np.fromiter(roots.keys(), dtype=np.int64, count=len(roots))
    root_ids = np.fromiter(roots.values(), dtype=np.int64, count=len(roots))
    labels = labels.copy()
    labels[nodes] = count + root_ids
    return labels, refusals, int(residual.shape[0])


def stitch_reference(
    graph: Graph,
    active: Bools,
    rules: Rules,
    edge_order: Callable[[Int64s], list[int]],
) -> tuple[Int64s, list[Refusal]]:
    """Plain ordered union-find over every active edge: the definition `stitch` must match."""
    roots, refusals = ordered_union(graph, edge_order(np.flatnonzero(active)), rules)
    labels = np.arange(graph.n_nodes, dtype=np.int64)
    for node, root in roots.items():
        labels[node] = root
    return labels, refusals


def degree_caps(
    graph: Graph,
    active: Bools,
    caps: Sequence[tuple[int, int, int, str]],
    tie_break: Callable[[Int64s], list[int]],
) -> tuple[npt.NDArray[np.int8], list[tuple[int, int, int, int, str]]]:
    """Order-free degree caps over the active edges, all counted before any is applied.

    `caps` holds `(type, neighbour_type, max, policy)`. Returns a status per edge (ACCEPTED,
    QUARANTINED or CAPPED) and one record per capped value: (node, neighbour type, degree,
    max, policy). `tie_break` orders candidate edges of one value for `keep_*` policies.
    """
    status = np.zeros(graph.n_edges, dtype=np.int8)
    records: list[tuple[int, int, int, int, str]] = []
    node_type = graph.node_type
    ta, tb = node_type[graph.a], node_type[graph.b]
    for t, nt, limit, policy in caps:
        sel_a = active & (ta == t) & (tb == nt)
        sel_b = active & (tb == t) & (ta == nt)
        holder = np.concatenate([graph.a[sel_a], graph.b[sel_b]])
        edge_ids = np.concatenate([np.flatnonzero(sel_a), np.flatnonzero(sel_b)])
        degree = np.bincount(holder, minlength=graph.n_nodes)
        over = np.flatnonzero(degree > limit)
        if over.shape[0] == 0:
            continue
        for node in over.tolist():
            records.append((node, nt, int(degree[node]), limit, policy))
        if policy == "quarantine":
            touch = np.isin(graph.a, over) | np.isin(graph.b, over)
            status[touch & active] = QUARANTINED
            continue
        mine = np.isin(holder, over)
        edge_ids, holder = edge_ids[mine], holder[mine]
        for node in over.tolist():
            candidates = edge_ids[holder == node]
            ordered = tie_break(candidates)
            if policy == "keep_latest":
                best = max(ordered, key=lambda e: int(graph.last_obs[e]))
            else:
                best = min(ordered, key=lambda e: (int(graph.batch[e]), int(graph.first_obs[e])))
            for e in candidates.tolist():
                if e != best and status[e] == ACCEPTED:
                    status[e] = CAPPED
    return status, records
