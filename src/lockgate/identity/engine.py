"""One identity run: source rows in, profiles and audit tables out (embedded mode).

The steps, in order (identity.md §3.3):

1. normalise, block and validate every identifier column (Arrow compute, vectorised);
2. turn values into dense integers early (one dictionary per type);
3. build a star of edges per row around its most trusted identifier, and merge them with the
   previous run's edges and nodes (snapshot sources retract what vanished);
4. apply operator overrides and order-free degree caps;
5. stitch with limits (`graph.stitch`: scipy components + exact ordered union-find where a
   limit could bite), then force-includes;
6. carry profile ids forward (`profiles.assign`) and write the analyst tables.

Example::

    result = resolve(config, {"app_users": users, "identifies": identifies}, run_id="r1")
    result.profiles        # lg_profiles
    result.state           # pass to the next run
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from lockgate.errors import ConfigError
from lockgate.identity import graph as g
from lockgate.identity.memory import give_back
from lockgate.identity.normalize import check_values, normalize_column, operator_blocked
from lockgate.identity.profiles import (
    PreviousProfiles,
    assign,
    hold_splits,
    track_contested,
    track_lost,
)
from lockgate.identity.state import (
    ALIASES_SCHEMA,
    BLOCKED_SCHEMA,
    CONTESTED_SCHEMA,
    EDGES_SCHEMA,
    HELD_SCHEMA,
    LOST_SCHEMA,
    MERGES_SCHEMA,
    MOVES_SCHEMA,
    NODES_SCHEMA,
    PROFILES_BASE,
    QUARANTINE_SCHEMA,
    REFUSALS_SCHEMA,
    SPLITS_SCHEMA,
    STITCH_COLUMNS,
    TIMESTAMP,
    IdentityResult,
    IdentityState,
)
from lockgate.project.identity import IdentityConfig

#: bumped whenever `resolve` would stitch the same inputs differently (a rule, an order, a
#: normalisation): a saved graph is reused only by a run of the same version
RESOLVER_VERSION = 1

I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min
CioExists = Callable[[str, str], bool]

#: the previous identifier map's and edges' columns a run reads
PREV_NODE_COLUMNS = STITCH_COLUMNS["nodes"]
PREV_EDGE_COLUMNS = STITCH_COLUMNS["edges"]


@dataclass
class _Cells:
    """One source's normalised identifier columns, still as strings."""

    source: int
    rank: int
    n_rows: int
    observed: npt.NDArray[np.int64]
    keys: pa.Array
    columns: list[tuple[int, pa.StringArray]]


def _observed(table: pa.Table, column: str | None, source: str) -> npt.NDArray[np.int64]:
    if column is None:
        return np.full(table.num_rows, I64_MAX, dtype=np.int64)
    if column not in table.column_names:
        raise ConfigError(
            f"identity source `{source}` has no column `{column}` (its `observed_at`)",
            hint=f"the columns are {', '.join(table.column_names)}",
        )
    col = table[column].combine_chunks()
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.timestamp("us", tz=col.type.tz))
    else:
        col = pc.cast(col, pa.timestamp("us"))
    values = pc.fill_null(col.cast(pa.int64()), I64_MAX)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def _source_mask(
    names: pa.ChunkedArray | pa.Array, index: Mapping[str, int]
) -> npt.NDArray[np.uint64]:
    """Lists of source names as bitmasks of their positions in ``index`` (names it lacks, and
    null lists, add nothing). Vectorised: a Python list per node cost seconds and a few
    hundred MiB of objects at a million nodes. A chunk at a time: not a copy of every list
    of a million previous edges, and of every name in them, at once."""
    out = np.zeros(len(names), dtype=np.uint64)
    known = pa.array(list(index), pa.string())
    bits = np.array([np.uint64(1) << np.uint64(index[n]) for n in index] + [0], dtype=np.uint64)
    start = 0
    for lists in names.chunks if isinstance(names, pa.ChunkedArray) else [names]:
        rows = out[start : start + len(lists)]  # a view: filled in place
        start += len(lists)
        if lists.null_count:
            lists = pc.fill_null(lists, pa.scalar([], lists.type))
        flat = pc.list_flatten(lists)
        if not len(flat):
            continue
        pos = pc.fill_null(pc.index_in(flat, value_set=known), len(index)).to_numpy()
        row = pc.list_parent_indices(lists).to_numpy()
        np.bitwise_or.at(rows, row, bits[pos])
    return out


def _rows_kept(column: pa.ChunkedArray, keep: npt.NDArray[np.bool_]) -> pa.ChunkedArray:
    """``column`` where ``keep``: the column itself when every row is kept (the common case),
    not a filtered copy of it."""
    return column if keep.all() else column.filter(pa.array(keep))


def rows_of_type(nodes: pa.Table, type_name: str) -> pa.Table:
    """The rows of an identifier map whose `id_type` is ``type_name``: a slice, not a copy,
    when they are contiguous (as `resolve` writes the map, type by type; a copy of a
    million-person map's columns cost ~200 MiB), else a filtered copy."""
    hit = pc.equal(nodes["id_type"], type_name)
    rows = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
    if rows.size and int(rows[-1]) - int(rows[0]) + 1 == rows.size:
        return nodes.slice(int(rows[0]), int(rows.size))
    return nodes.filter(hit)


def _still_valid(
    config: IdentityConfig, type_name: str, part: pa.Table, extra_blocked: frozenset[str]
) -> pa.Table:
    """The previous map's rows of one type whose value today's rules still accept."""
    if not part.num_rows:
        return part
    # a node's value carries its type's `namespace:`; the rules are about the value
    values = part["id_value"].combine_chunks()
    namespace = config.identifier_types[type_name].namespace
    if namespace:
        values = pc.utf8_replace_slice(values, 0, len(namespace) + 1, "")
    blocked, invalid = check_values(config, type_name, values, extra_blocked=extra_blocked)
    dropped = pc.or_(blocked, invalid)
    return part.filter(pc.invert(dropped)) if pc.any(dropped).as_py() else part


def _mask_names(masks: npt.NDArray[np.uint64], names: list[str]) -> pa.Array:
    """Source bitmasks as lists of source names (built once per distinct mask)."""
    encoded = pa.array(masks, pa.uint64()).dictionary_encode()  # hashing, no sort
    uniq = encoded.dictionary.to_pylist()
    lists = pa.array(
        [[n for i, n in enumerate(names) if int(m) >> i & 1] for m in uniq],
        pa.list_(pa.string()),
    )
    return lists.take(encoded.indices)


def _to_ts(values: npt.NDArray[np.int64], sentinel: int) -> pa.Array:
    arr = pa.array(values, pa.int64())
    arr = pc.if_else(pc.equal(arr, sentinel), pa.scalar(None, pa.int64()), arr)
    return arr.cast(TIMESTAMP)


def _ts_int(col: pa.ChunkedArray, sentinel: int) -> npt.NDArray[np.int64]:
    values = pc.fill_null(col.cast(TIMESTAMP).cast(pa.int64()), sentinel)
    return np.asarray(values.to_numpy(), dtype=np.int64)


def _normalize_source(
    config: IdentityConfig,
    name: str,
    table: pa.Table,
    source: int,
    type_index: Mapping[str, int],
    extra_blocked: Mapping[str, frozenset[str]],
    keep_rows: bool,
    blocked: list[pa.Table],
) -> _Cells:
    """One source's identifier columns normalised; the groups of values it blocked are added
    to ``blocked``. A function of its own so that its temporaries (each column's normalised
    forms and reasons, ~50 MiB a million rows) go when it returns, not at the end of the run."""
    spec = config.sources[source]
    mapping = config.source_columns(spec, table.column_names)
    missing = [c for c in mapping if c not in table.column_names]
    if missing:
        raise ConfigError(
            f"identity source `{name}` has no column `{missing[0]}`",
            hint=f"the columns are {', '.join(table.column_names)}",
        )
    if not mapping:
        raise ConfigError(
            f"identity source `{name}` has no identifier columns",
            hint="name columns after identifier types, or map them with `columns:`",
        )
    columns: list[tuple[int, pa.StringArray]] = []
    for column, type_name in sorted(mapping.items(), key=lambda kv: (type_index[kv[1]], kv[0])):
        clean = normalize_column(
            config,
            type_name,
            table[column],
            extra_blocked=extra_blocked[type_name],
        )
        columns.append((type_index[type_name], clean.values))
        dropped = pc.is_valid(clean.reasons)
        if pc.any(dropped).as_py():
            sample = table[column].combine_chunks().filter(dropped)
            blocked.append(_blocked_group(name, type_name, clean, sample, dropped))
    if keep_rows and spec.key and spec.key not in table.column_names:
        # each row was named by its number instead, in `explain`, without a word (a run keeps
        # no rows: a `key` there names nothing, and stops no sync)
        raise ConfigError(
            f"identity source `{name}` has no column `{spec.key}` (its `key`)",
            hint=f"the columns are {', '.join(table.column_names)}",
        )
    keys = (
        pc.cast(table[spec.key].combine_chunks(), pa.string())
        if spec.key and spec.key in table.column_names
        else pa.array(np.arange(table.num_rows).astype(str).tolist(), pa.string())
        if keep_rows
        else pa.nulls(table.num_rows, pa.string())
    )
    return _Cells(
        source=source,
        rank=spec.trust,
        n_rows=table.num_rows,
        observed=_observed(table, spec.observed_at, name),
        keys=keys,
        columns=columns,
    )


@dataclass
class _NodeEvidence:
    """Per node: its sources (a bitmask), first batch, first and last seen, best rank."""

    mask: npt.NDArray[np.uint64]
    batch: npt.NDArray[np.int64]
    first: npt.NDArray[np.int64]
    last: npt.NDArray[np.int64]
    rank: npt.NDArray[np.int64]


def _previous_evidence(
    node: _NodeEvidence,
    prev_ids: Mapping[int, npt.NDArray[np.int64]],
    prev_by_type: Mapping[int, pa.Table],
    source_index: Mapping[str, int],
    reread: int,
) -> None:
    """The previous map's evidence of each node, in place (sources read again left out).

    A node's best rank is kept only while a source not read again still holds it: a node the
    sources read again alone hold now has the rank they give it now. (An email a user's row
    gave up, still linked by a less trusted source, would keep the rank of the row it left,
    and could stay the profile's Customer.io email over the one the row gives now.)"""
    for t, ids in prev_ids.items():
        part = prev_by_type[t]
        if not part.num_rows:
            continue
        mask = _source_mask(part["sources"], source_index) & ~np.uint64(reread)
        # one row per node in the previous map, so plain fancy indexing is exact
        node.mask[ids] |= mask
        node.batch[ids] = np.minimum(node.batch[ids], part["first_seen_batch"].to_numpy())
        node.first[ids] = np.minimum(node.first[ids], _ts_int(part["first_observed"], I64_MAX))
        node.last[ids] = np.maximum(node.last[ids], _ts_int(part["last_observed"], I64_MIN))
        held = mask != 0
        ranked = ids[held]
        node.rank[ranked] = np.minimum(
            node.rank[ranked], part["best_rank"].to_numpy().astype(np.int64)[held]
        )


def _source_evidence(
    node: _NodeEvidence,
    cells: list[_Cells],
    cell_ids: Mapping[tuple[int, int], npt.NDArray[np.int64]],
    batch: int,
) -> None:
    """This run's sources' evidence of each node, in place."""
    for ci, c in enumerate(cells):
        bit = np.uint64(1 << c.source)
        last = np.where(c.observed == I64_MAX, I64_MIN, c.observed)
        for j in range(len(c.columns)):
            ids = cell_ids[(ci, j)]
            present = ids >= 0
            sel = ids[present]
            # constant per column: repeated ids write the same value
            node.mask[sel] |= bit
            node.batch[sel] = np.minimum(node.batch[sel], batch)
            node.rank[sel] = np.minimum(node.rank[sel], c.rank)
            # first/last seen vary per row (numpy's ufunc.at beats a hash group-by here), a
            # column at a time: the minimum is the same as over all of them joined, without
            # the joined copies (~100 MiB at a million people)
            np.minimum.at(node.first, sel, c.observed[present])
            np.maximum.at(node.last, sel, last[present])


@dataclass
class _EdgeParts:
    """The star edges of every source, one array per source column, before they are joined."""

    a: list[npt.NDArray[np.int64]] = field(default_factory=list)
    b: list[npt.NDArray[np.int64]] = field(default_factory=list)
    rank: list[npt.NDArray[np.int64]] = field(default_factory=list)
    batch: list[npt.NDArray[np.int64]] = field(default_factory=list)
    first: list[npt.NDArray[np.int64]] = field(default_factory=list)
    last: list[npt.NDArray[np.int64]] = field(default_factory=list)
    mask: list[npt.NDArray[np.uint64]] = field(default_factory=list)
    rows: list[pa.Table] = field(default_factory=list)


def _star_edges(
    c: _Cells,
    ids_of: list[npt.NDArray[np.int64]],
    batch: int,
    source_name: str | None,
    out: _EdgeParts,
) -> None:
    """One source's edges, a star per row around its most trusted identifier, added to ``out``
    (with each observation when ``source_name`` is given: `keep_rows`). A function of its own
    so that its temporaries (anchors, the smaller value of each type) go when it returns."""
    anchor = np.full(c.n_rows, -1, dtype=np.int64)
    by_type: dict[int, list[int]] = {}
    for j, (t, _) in enumerate(c.columns):
        by_type.setdefault(t, []).append(j)
    for t in sorted(by_type):
        first = by_type[t][0]
        ids = ids_of[first]
        vals = c.columns[first][1]
        for j in by_type[t][1:]:
            ids2, vals2 = ids_of[j], c.columns[j][1]
            smaller = pc.fill_null(pc.less(vals2, vals), False).to_numpy(zero_copy_only=False)
            take2 = (ids < 0) | ((ids2 >= 0) & smaller)
            ids = np.where(take2, ids2, ids)
            vals = pc.if_else(pa.array(take2), vals2, vals)
        anchor = np.where(anchor < 0, ids, anchor)
    last = np.where(c.observed == I64_MAX, I64_MIN, c.observed)
    for j in range(len(c.columns)):
        ids = ids_of[j]
        keep = (ids >= 0) & (ids != anchor)
        count = int(keep.sum())
        out.a.append(anchor[keep])
        out.b.append(ids[keep])
        out.rank.append(np.full(count, c.rank, dtype=np.int64))
        out.batch.append(np.full(count, batch, dtype=np.int64))
        out.first.append(c.observed[keep])
        out.last.append(last[keep])
        out.mask.append(np.full(count, 1 << c.source, dtype=np.uint64))
        if source_name is not None and count:
            out.rows.append(
                pa.table(
                    {
                        "a": anchor[keep],
                        "b": ids[keep],
                        "source": pa.array([source_name] * count, pa.string()),
                        "row_key": c.keys.filter(pa.array(keep)),
                    }
                )
            )


def _edge_ends(
    edges: pa.Table,
    types: tuple[str, ...],
    dictionaries: list[pa.StringArray],
    offsets: npt.NDArray[np.int64],
) -> list[npt.NDArray[np.int64]]:
    """The node of each end (`a`, `b`) of the previous edges, -1 where it is no node now. A
    function of its own: the columns it reads and its lookups go when it returns."""
    ends = []
    for side in ("a", "b"):
        out = np.full(edges.num_rows, -1, dtype=np.int64)
        tcol = edges[f"type_{side}"]
        vcol = edges[f"value_{side}"]
        for t, type_name in enumerate(types):
            sel = pc.equal(tcol, type_name).to_numpy(zero_copy_only=False)
            if not sel.any():
                continue
            found = pc.index_in(vcol.filter(pa.array(sel)), value_set=dictionaries[t])
            found_np = pc.fill_null(found.cast(pa.int64()), -1).to_numpy(zero_copy_only=False)
            out[sel] = np.where(found_np >= 0, found_np + offsets[t], -1)
        ends.append(out)
    return ends


def _previous_profile_of(
    n_nodes: int,
    prev_ids: Mapping[int, npt.NDArray[np.int64]],
    prev_by_type: Mapping[int, pa.Table],
    previous: PreviousProfiles,
    alive: npt.NDArray[np.bool_],
    remap: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Per (renumbered) node, the code of its previous profile (-1 for none)."""
    prev_pid = np.full(n_nodes, -1, dtype=np.int64)
    for t, ids in prev_ids.items():
        part = prev_by_type[t]
        if not part.num_rows:
            continue
        codes = previous.codes(part["profile_id"])
        live = alive[ids]
        prev_pid[remap[ids[live]]] = codes[live]
    return prev_pid


def resolve(
    config: IdentityConfig,
    inputs: Mapping[str, pa.Table],
    *,
    run_id: str,
    state: IdentityState | None = None,
    blocklist: pa.Table | None = None,
    overrides: pa.Table | None = None,
    cio_exists: CioExists | None = None,
    keep_rows: bool = False,
    processing: str | None = None,
    algorithm: str = "hybrid",
) -> IdentityResult:
    """Resolve identities for one run.

    Args:
        inputs: source name → that source's rows (snapshot sources: every row; append-only
            sources: the rows new since the last run). A snapshot source left out keeps its
            previous links.
        state: the previous run's `IdentityResult.state`; `None` for the first run.
        blocklist: the operator's `blocked_values_table` (`id_type`, `id_value`; `*` = any type).
        overrides: the operator's `overrides_table` (`action` include|exclude, `type_a`,
            `value_a`, `type_b`, `value_b`, `reason`); an exclude without `type_b` removes a node.
        cio_exists: `(kind, value) -> bool` for kind `id` / `email` / `cio_id`, to prefer a
            profile that already is a Customer.io person as a merge survivor.
        keep_rows: keep every observation (source, row key, edge) for `explain`.
        processing: overrides `rules.processing` (`online` or `canonical`).
        algorithm: `hybrid` (default) or `union_find`, plain ordered union-find over every edge
            (the definition the hybrid matches; slow, for tests and benchmarks).

    Example::

        result = resolve(config, {"app_users": users}, run_id="r1")
    """
    clock = time.perf_counter()
    stats: dict[str, float] = {}
    types = config.type_order
    type_index = {name: i for i, name in enumerate(types)}
    n_types = len(types)
    source_names = [s.name for s in config.sources]
    if len(source_names) > 63:
        raise ConfigError(
            "more than 63 identity sources", hint="combine sources with a `sql:` union"
        )
    source_index = {name: i for i, name in enumerate(source_names)}
    batch = (state.batch if state is not None else 0) + 1
    mode = processing or config.rules.processing

    extra_blocked = operator_blocked(config, blocklist)

    # 1. normalise every identifier column
    cells: list[_Cells] = []
    blocked_rows: list[pa.Table] = []
    reread = 0
    for name, table in inputs.items():
        if name not in source_index:
            raise ConfigError(
                f"no identity source named `{name}`",
                hint=f"identity sources are: {', '.join(source_names) or '(none)'}",
            )
        spec = config.sources[source_index[name]]
        if spec.mode == "snapshot":
            reread |= 1 << source_index[name]
        cells.append(
            _normalize_source(
                config,
                name,
                table,
                source_index[name],
                type_index,
                extra_blocked,
                keep_rows,
                blocked_rows,
            )
        )
    # a caller that handed its sources over (kept no reference) has their memory back now
    del inputs
    table = pa.table({})  # nor the last source's rows
    stats["normalize_s"] = time.perf_counter() - clock
    give_back()  # normalisation's temporaries

    # of the previous graph only these are read: a caller that handed the state over (kept no
    # reference) has the memory of the rest back now (the map's run ids and statuses, the
    # edges' statuses and reasons), and of each part once it is merged in below
    prev_nodes = (state.nodes if state is not None else NODES_SCHEMA.empty_table()).select(
        PREV_NODE_COLUMNS
    )
    prev_edges = (state.edges if state is not None else EDGES_SCHEMA.empty_table()).select(
        PREV_EDGE_COLUMNS
    )
    previous = PreviousProfiles.from_state(state, types)
    prev_held = state.held if state is not None else HELD_SCHEMA.empty_table()
    prev_lost = state.lost if state is not None else LOST_SCHEMA.empty_table()
    prev_withheld = state.withheld if state is not None else None
    prev_contested = state.contested if state is not None else CONTESTED_SCHEMA.empty_table()
    del state

    # previous nodes, re-checked against today's blocklist
    prev_by_type = {
        t: _still_valid(
            config,
            type_name,
            rows_of_type(prev_nodes, type_name).drop_columns(["id_type"]),
            extra_blocked[type_name],
        )
        for t, type_name in enumerate(types)
    }

    # 2. dense integers: one dictionary per type
    t0 = time.perf_counter()
    dictionaries: list[pa.StringArray] = []
    offsets = np.zeros(n_types + 1, dtype=np.int64)
    cell_ids: dict[tuple[int, int], npt.NDArray[np.int64]] = {}
    prev_ids: dict[int, npt.NDArray[np.int64]] = {}
    for t in range(n_types):
        parts: list[tuple[tuple[int, int] | None, pa.Array | pa.ChunkedArray]] = [
            ((ci, j), values)
            for ci, c in enumerate(cells)
            for j, (ct, values) in enumerate(c.columns)
            if ct == t
        ]
        # the previous values as the chunks they were read in: one copy of every value, in
        # `joined`, not a second one of the previous ones (~23 MiB of a million emails)
        parts.append((None, prev_by_type[t]["id_value"]))
        joined = pa.chunked_array(
            [c for _, v in parts for c in (v.chunks if isinstance(v, pa.ChunkedArray) else [v])],
            pa.string(),
        ).combine_chunks()
        encoded = joined.dictionary_encode()
        del joined
        idx = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
        idx[idx >= 0] += offsets[t]  # in place: no second copy of the ids
        dictionaries.append(encoded.dictionary)
        offsets[t + 1] = offsets[t] + len(encoded.dictionary)
        pos = 0
        for key, values in parts:
            chunk = idx[pos : pos + len(values)]
            pos += len(values)
            if key is None:
                prev_ids[t] = chunk
            else:
                cell_ids[key] = chunk
    del parts, encoded, idx, values, chunk  # the last type's
    n_nodes = int(offsets[-1])
    node_values: pa.StringArray = pa.chunked_array(dictionaries, pa.string()).combine_chunks()
    # each type's dictionary as a slice of the one copy (not a second copy of every value)
    dictionaries = [
        node_values.slice(int(offsets[t]), int(offsets[t + 1] - offsets[t])) for t in range(n_types)
    ]
    node_type = np.repeat(np.arange(n_types, dtype=np.int16), np.diff(offsets))
    give_back()  # the encoding's copies of every value

    stats["dictionary_s"] = time.perf_counter() - t0
    # node evidence
    node_mask = np.zeros(n_nodes, dtype=np.uint64)
    node_batch = np.full(n_nodes, I64_MAX, dtype=np.int64)
    node_first = np.full(n_nodes, I64_MAX, dtype=np.int64)
    node_last = np.full(n_nodes, I64_MIN, dtype=np.int64)
    node_rank = np.full(n_nodes, 32767, dtype=np.int64)
    evidence = _NodeEvidence(node_mask, node_batch, node_first, node_last, node_rank)
    _previous_evidence(evidence, prev_ids, prev_by_type, source_index, reread)
    # from here on only their profile ids are read
    prev_by_type = {t: part.select(["profile_id"]) for t, part in prev_by_type.items()}
    del prev_nodes
    _source_evidence(evidence, cells, cell_ids, batch)
    del evidence

    stats["evidence_s"] = time.perf_counter() - t0 - stats["dictionary_s"]
    give_back()  # the previous nodes' columns read above
    # 3. star edges per row, around the row's most trusted identifier
    parts_e = _EdgeParts()
    for ci in range(len(cells)):
        _star_edges(
            cells[ci],
            [cell_ids[(ci, j)] for j in range(len(cells[ci].columns))],
            batch,
            source_names[cells[ci].source] if keep_rows else None,
            parts_e,
        )
    e_a, e_b, e_rank, e_batch = parts_e.a, parts_e.b, parts_e.rank, parts_e.batch
    e_first, e_last, e_mask, row_parts = parts_e.first, parts_e.last, parts_e.mask, parts_e.rows
    del parts_e

    # previous edges (both ends must still be nodes)
    if prev_edges.num_rows:
        ends = _edge_ends(prev_edges, types, dictionaries, offsets)
        ok = (ends[0] >= 0) & (ends[1] >= 0)
        e_a.append(ends[0][ok])
        e_b.append(ends[1][ok])
        e_rank.append(_rows_kept(prev_edges["rank"], ok).to_numpy().astype(np.int64))
        e_batch.append(_rows_kept(prev_edges["first_seen_batch"], ok).to_numpy().astype(np.int64))
        e_first.append(_ts_int(_rows_kept(prev_edges["first_observed"], ok), I64_MAX))
        e_last.append(_ts_int(_rows_kept(prev_edges["last_observed"], ok), I64_MIN))
        e_mask.append(
            _source_mask(_rows_kept(prev_edges["sources"], ok), source_index) & ~np.uint64(reread)
        )
        del ends, ok
    # the sources' normalised values are all in `node_values` and the edges now (and a type's
    # dictionary, a slice of the values before unsupported nodes are dropped, kept that copy)
    del cells, cell_ids, dictionaries
    # of the previous graph only its profiles and logs are read from here on
    del prev_edges

    give_back()  # the previous graph's edges, when handed over
    # drop nodes nobody supports any more, then renumber
    alive = node_mask != 0
    remap = np.cumsum(alive, dtype=np.int64) - 1
    all_a = np.concatenate(e_a) if e_a else np.zeros(0, np.int64)
    all_b = np.concatenate(e_b) if e_b else np.zeros(0, np.int64)
    edge_ok = alive[all_a] & alive[all_b] if all_a.size else np.zeros(0, bool)
    if not alive.all():
        keep_nodes = np.flatnonzero(alive)
        node_values = node_values.take(pa.array(keep_nodes))
        node_type = node_type[keep_nodes]
        node_mask, node_batch = node_mask[keep_nodes], node_batch[keep_nodes]
        node_first, node_last = node_first[keep_nodes], node_last[keep_nodes]
        node_rank = node_rank[keep_nodes]
        n_nodes = int(keep_nodes.shape[0])
        del keep_nodes
    all_a, all_b = remap[all_a[edge_ok]], remap[all_b[edge_ok]]

    def cat(
        parts: list[npt.NDArray[np.int64]] | list[npt.NDArray[np.uint64]], ok: npt.NDArray[np.bool_]
    ) -> np.ndarray:
        return np.concatenate(parts)[ok] if parts else np.zeros(0)

    rank_all, batch_all = cat(e_rank, edge_ok), cat(e_batch, edge_ok)
    first_all, last_all = cat(e_first, edge_ok), cat(e_last, edge_ok)
    mask_all = cat(e_mask, edge_ok)
    del e_a, e_b, e_rank, e_batch, e_first, e_last, e_mask, edge_ok
    rows_table = None
    if keep_rows and row_parts:
        # the observations' ends renumbered now: `remap` goes once profile ids are read
        rows_table = pa.concat_tables(row_parts)
        for i, end in enumerate(("a", "b")):
            renumbered = pa.array(remap[rows_table[end].to_numpy()])
            rows_table = rows_table.set_column(i, end, renumbered)
    stats["encode_s"] = time.perf_counter() - t0

    # distinct edges
    t0 = time.perf_counter()
    key = all_a * max(n_nodes, 1) + all_b
    order = np.argsort(key, kind="stable")
    skey = key[order]
    starts = (
        np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]]) if skey.size else np.zeros(0, np.int64)
    )
    if skey.size:
        ga = all_a[order[starts]]
        gb = all_b[order[starts]]
        grank = np.minimum.reduceat(rank_all[order], starts).astype(np.int16)
        gbatch = np.minimum.reduceat(batch_all[order], starts).astype(np.int64)
        gfirst = np.minimum.reduceat(first_all[order], starts).astype(np.int64)
        glast = np.maximum.reduceat(last_all[order], starts).astype(np.int64)
        gmask = np.bitwise_or.reduceat(mask_all[order].astype(np.uint64), starts)
    else:
        ga = gb = gbatch = gfirst = glast = np.zeros(0, np.int64)
        grank = np.zeros(0, np.int16)
        gmask = np.zeros(0, np.uint64)
    graph = g.Graph(
        n_nodes=n_nodes,
        node_type=node_type,
        a=ga,
        b=gb,
        rank=grank,
        batch=gbatch,
        first_obs=gfirst,
        last_obs=glast,
        sources=gmask,
    )
    status = np.zeros(graph.n_edges, dtype=np.int8)
    reason: dict[int, str] = {}
    status[gmask == 0] = g.RETRACTED
    edge_keys = skey[starts] if skey.size else np.zeros(0, np.int64)
    del key, order, skey, starts, all_a, all_b, rank_all, batch_all, first_all, last_all, mask_all
    stats["dedup_s"] = time.perf_counter() - t0
    give_back()  # the normalised sources and the star edges, freed above

    def node_of(type_name: str | None, value: str | None) -> int:
        if type_name not in type_index or value is None:
            return -1
        t = type_index[type_name]
        lo, hi = (
            int(np.searchsorted(node_type, t, "left")),
            int(np.searchsorted(node_type, t, "right")),
        )
        found = pc.index_in(pa.array([value], pa.string()), value_set=node_values[lo:hi])[0]
        return -1 if not found.is_valid else lo + int(found.as_py())

    def edge_of(x: int, y: int) -> int:
        for p, q in ((x, y), (y, x)):
            k = p * max(n_nodes, 1) + q
            i = int(np.searchsorted(edge_keys, k))
            if i < edge_keys.size and edge_keys[i] == k:
                return i
        return -1

    # 4. overrides, then degree caps
    forced: list[tuple[int, int, str]] = []
    if overrides is not None and overrides.num_rows:
        for row in overrides.to_pylist():
            x = node_of(row.get("type_a"), row.get("value_a"))
            y = node_of(row.get("type_b"), row.get("value_b"))
            why = str(row.get("reason") or "override")
            if row.get("action") == "exclude" and x >= 0 and row.get("type_b") is None:
                hit = ((graph.a == x) | (graph.b == x)) & (status == g.ACCEPTED)
                status[hit] = g.EXCLUDED
                for e in np.flatnonzero(hit).tolist():
                    reason[e] = why
            elif row.get("action") == "exclude" and x >= 0 and y >= 0:
                e = edge_of(x, y)
                if e >= 0 and status[e] == g.ACCEPTED:
                    status[e] = g.EXCLUDED
                    reason[e] = why
            elif row.get("action") == "include" and x >= 0 and y >= 0:
                forced.append((x, y, why))

    def edge_order(idx: npt.NDArray[np.int64]) -> list[int]:
        if idx.size == 0:
            return []
        ia = pa.array(graph.a[idx])
        ib = pa.array(graph.b[idx])
        va = node_values.take(ia).to_pylist()
        vb = node_values.take(ib).to_pylist()
        ta = node_type[graph.a[idx]].tolist()
        tb = node_type[graph.b[idx]].tolist()
        r = graph.rank[idx].tolist()
        bt = graph.batch[idx].tolist()
        fo = graph.first_obs[idx].tolist()
        if mode == "canonical":
            keys = list(zip(r, bt, fo, ta, va, tb, vb, idx.tolist(), strict=True))
        else:
            keys = list(zip(bt, r, fo, ta, va, tb, vb, idx.tolist(), strict=True))
        keys.sort()
        return [k[-1] for k in keys]

    caps = [
        (type_index[name], type_index[other], cap.max, cap.policy)
        for name in types
        for other, cap in sorted(config.identifier_types[name].degree_cap.items())
    ]
    quarantined_nodes = np.zeros(n_nodes, dtype=bool)
    cap_records: list[tuple[int, int, int, int, str]] = []
    if caps:
        cap_status, cap_records = g.degree_caps(graph, status == g.ACCEPTED, caps, edge_order)
        for node, _nt, _deg, _mx, policy in cap_records:
            if policy == "quarantine":
                quarantined_nodes[node] = True
        capped_nodes = {r[0] for r in cap_records}
        for e in np.flatnonzero(cap_status != g.ACCEPTED).tolist():
            status[e] = cap_status[e]
            x, y = int(graph.a[e]), int(graph.b[e])
            held = x if x in capped_nodes else y
            reason[e] = f"degree_cap:{types[node_type[held]]}"

    # 5. stitch with limits
    t0 = time.perf_counter()
    rules = g.Rules(
        type_names=types,
        limits=tuple(
            -1
            if config.identifier_types[n].limit is None
            else int(config.identifier_types[n].limit or 0)
            for n in types
        ),
        exempt=tuple(
            sum(1 << source_index[s] for s in config.identifier_types[n].limit_exempt_sources)
            for n in types
        ),
        weak=tuple(not config.identifier_types[n].bridge_known_profiles for n in types),
        max_size=config.rules.max_component_size,
    )
    if algorithm == "union_find":
        labels, refusals = g.stitch_reference(graph, status == g.ACCEPTED, rules, edge_order)
        replayed = int((status == g.ACCEPTED).sum())
    else:
        labels, refusals, replayed = g.stitch(graph, status == g.ACCEPTED, rules, edge_order)
    for refusal in refusals:
        status[refusal.edge] = g.REFUSED
        reason[refusal.edge] = refusal.rule
    for x, y, why in forced:
        lx, ly = labels[x], labels[y]
        e = edge_of(x, y)
        if e >= 0:
            status[e] = g.FORCED
            reason[e] = why
        if lx != ly:
            labels = np.where(labels == ly, lx, labels)
    stats["stitch_s"] = time.perf_counter() - t0
    stats["replayed_edges"] = replayed

    # 6. profile ids
    give_back()  # the components' rounds
    t0 = time.perf_counter()
    prev_pid = _previous_profile_of(n_nodes, prev_ids, prev_by_type, previous, alive, remap)
    # the previous map's profile ids and the old node numbers are not read again
    del prev_ids, prev_by_type, remap
    assigned = assign(
        labels=labels,
        node_type=node_type,
        node_values=node_values,
        quarantined=quarantined_nodes,
        prev_pid=prev_pid,
        previous=previous,
        graph=graph,
        accepted=(status == g.ACCEPTED) | (status == g.FORCED),
        node_rank=node_rank,
        node_last=node_last,
        node_batch=node_batch,
        config=config,
        batch=batch,
        run_id=run_id,
        cio_exists=cio_exists,
        withheld=prev_withheld,
    )
    held = hold_splits(
        prev_held,
        previous.table,
        assigned.splits,
        assigned.profiles,
        run_id,
    )
    lost = track_lost(
        prev_lost,
        assigned.moves,
        assigned.profiles,
        types,
    )
    stats["profiles_s"] = time.perf_counter() - t0
    # the tables below read none of these
    del labels, prev_pid, alive
    give_back()  # the profile assignment's temporaries

    # 7. analyst tables
    t0 = time.perf_counter()
    type_names = pa.array(list(types), pa.string())
    node_type_names = type_names.take(pa.array(node_type.astype(np.int32)))
    identifier_map = pa.table(
        {
            "run_id": pa.repeat(pa.scalar(run_id), n_nodes),
            "id_type": node_type_names,
            "id_value": node_values,
            "profile_id": assigned.node_profile,
            "status": pc.if_else(pa.array(quarantined_nodes), "quarantined", "active"),
            "first_seen_batch": pa.array(node_batch, pa.int64()),
            "first_observed": _to_ts(node_first, I64_MAX),
            "last_observed": _to_ts(node_last, I64_MIN),
            "best_rank": pa.array(np.minimum(node_rank, 32767).astype(np.int16), pa.int16()),
            "sources": _mask_names(node_mask, source_names),
        },
        schema=NODES_SCHEMA,
    )
    # the nodes' evidence is in the map now (~75 MiB at a million people)
    del node_mask, node_batch, node_first, node_last, node_rank, quarantined_nodes
    give_back()
    ia, ib = pa.array(graph.a), pa.array(graph.b)
    status_names = pa.array(list(g.STATUS_NAMES), pa.string())
    reason_col: list[str | None] = [None] * graph.n_edges
    for e, why in reason.items():
        reason_col[e] = why
    edges = pa.table(
        {
            "run_id": pa.repeat(pa.scalar(run_id), graph.n_edges),
            "type_a": node_type_names.take(ia),
            "value_a": node_values.take(ia),
            "type_b": node_type_names.take(ib),
            "value_b": node_values.take(ib),
            "rank": pa.array(graph.rank, pa.int16()),
            "first_seen_batch": pa.array(graph.batch, pa.int64()),
            "first_observed": _to_ts(graph.first_obs, I64_MAX),
            "last_observed": _to_ts(graph.last_obs, I64_MIN),
            "sources": _mask_names(graph.sources, source_names),
            "status": status_names.take(pa.array(status.astype(np.int32))),
            "reason": pa.array(reason_col, pa.string()),
        },
        schema=EDGES_SCHEMA,
    )
    node_profile = assigned.node_profile
    refused = pa.table(
        {
            "run_id": [run_id] * len(refusals),
            "type_a": [types[node_type[graph.a[r.edge]]] for r in refusals],
            "value_a": [node_values[int(graph.a[r.edge])].as_py() for r in refusals],
            "type_b": [types[node_type[graph.b[r.edge]]] for r in refusals],
            "value_b": [node_values[int(graph.b[r.edge])].as_py() for r in refusals],
            "rank": [int(graph.rank[r.edge]) for r in refusals],
            "rule": [r.rule for r in refusals],
            "counts": [r.counts for r in refusals],
            "profile_a": [node_profile[int(graph.a[r.edge])].as_py() for r in refusals],
            "profile_b": [node_profile[int(graph.b[r.edge])].as_py() for r in refusals],
        },
        schema=REFUSALS_SCHEMA,
    )
    contested = track_contested(
        prev_contested,
        refused,
        assigned.aliases,
        assigned.profiles,
        {t: spec.customerio for t, spec in config.identifier_types.items()},
    )
    quarantine = pa.table(
        {
            "run_id": [run_id] * len(cap_records),
            "id_type": [types[node_type[n]] for n, *_ in cap_records],
            "id_value": [node_values[n].as_py() for n, *_ in cap_records],
            "neighbour_type": [types[nt] for _, nt, *_ in cap_records],
            "degree": [d for _, _, d, _, _ in cap_records],
            "max": [m for _, _, _, m, _ in cap_records],
            "policy": [p for *_, p in cap_records],
        },
        schema=QUARANTINE_SCHEMA,
    )
    blocked = (
        pa.concat_tables(blocked_rows)
        if blocked_rows
        else BLOCKED_SCHEMA.empty_table().drop_columns(["run_id"])
    )
    blocked = blocked.add_column(0, "run_id", pa.array([run_id] * blocked.num_rows, pa.string()))
    blocked = blocked.select(BLOCKED_SCHEMA.names).cast(BLOCKED_SCHEMA)
    rows_out = None
    if rows_table is not None:
        ra, rb = rows_table["a"].combine_chunks(), rows_table["b"].combine_chunks()
        rows_out = pa.table(
            {
                "type_a": node_type_names.take(ra),
                "value_a": node_values.take(ra),
                "type_b": node_type_names.take(rb),
                "value_b": node_values.take(rb),
                "source": rows_table["source"],
                "row_key": rows_table["row_key"],
            }
        )
    stats["tables_s"] = time.perf_counter() - t0
    stats["total_s"] = time.perf_counter() - clock
    stats["nodes"] = n_nodes
    stats["edges"] = graph.n_edges
    return IdentityResult(
        run_id=run_id,
        batch=batch,
        profiles=assigned.profiles,
        identifier_map=identifier_map,
        edges=edges,
        aliases=assigned.aliases,
        merges=assigned.merges,
        refused=refused,
        quarantine=quarantine,
        splits=assigned.splits,
        moves=assigned.moves,
        blocked=blocked,
        previous_profiles=previous.table,
        rows=rows_out,
        stats=stats,
        held=held,
        lost=lost,
        contested=contested,
        retired=assigned.retired,
        withheld=assigned.withheld,
    )


def _blocked_group(
    source: str, type_name: str, clean: object, sample: pa.Array, dropped: pa.Array
) -> pa.Table:
    from lockgate.identity.normalize import NormalizedColumn

    assert isinstance(clean, NormalizedColumn)
    table = pa.table(
        {
            "id_type": pa.array([type_name] * len(sample), pa.string()),
            "reason": clean.reasons.filter(dropped),
            "value": clean.normalized.filter(dropped),
            "raw": pc.cast(sample, pa.string()),
        }
    )
    grouped = table.group_by(["id_type", "reason", "value"], use_threads=False).aggregate(
        [("raw", "min"), ("raw", "count", pc.CountOptions(mode="all"))]
    )
    return pa.table(
        {
            "source": pa.array([source] * grouped.num_rows, pa.string()),
            "id_type": grouped["id_type"],
            "reason": grouped["reason"],
            "value": grouped["value"],
            "raw_sample": grouped["raw_min"],
            "count": grouped["raw_count"],
        }
    )


__all__ = [
    "ALIASES_SCHEMA",
    "RESOLVER_VERSION",
    "MERGES_SCHEMA",
    "MOVES_SCHEMA",
    "PROFILES_BASE",
    "SPLITS_SCHEMA",
    "resolve",
]
