"""What one identity run hands to the next, and what it hands to analysts.

Every table is Arrow. The state tables are the analyst tables of the previous run, so the sync
engine stores them once (in the warehouse or the state store) and passes them back next run.

Example::

    first = resolve(config, {"app_users": users}, run_id="r1")
    second = resolve(config, {"app_users": users}, run_id="r2", state=first.state)
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TIMESTAMP = pa.timestamp("us", tz="UTC")

NODES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("id_type", pa.string()),
        ("id_value", pa.string()),
        ("profile_id", pa.string()),
        ("status", pa.string()),
        ("first_seen_batch", pa.int64()),
        ("first_observed", TIMESTAMP),
        ("last_observed", TIMESTAMP),
        ("best_rank", pa.int16()),
        ("sources", pa.list_(pa.string())),
    ]
)
"""`lg_identifier_map`: one row per identifier node (status `active` or `quarantined`)."""

EDGES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("type_a", pa.string()),
        ("value_a", pa.string()),
        ("type_b", pa.string()),
        ("value_b", pa.string()),
        ("rank", pa.int16()),
        ("first_seen_batch", pa.int64()),
        ("first_observed", TIMESTAMP),
        ("last_observed", TIMESTAMP),
        ("sources", pa.list_(pa.string())),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)
"""`lg_edges`: one row per distinct edge, `a` being the more trusted end."""

PROFILES_BASE = [
    ("run_id", pa.string()),
    ("profile_id", pa.string()),
    ("status", pa.string()),
    ("anchor_type", pa.string()),
    ("anchor_value", pa.string()),
    ("created_run", pa.string()),
    ("created_batch", pa.int64()),
    ("updated_run", pa.string()),
    ("n_identifiers", pa.int64()),
    ("cio_id", pa.string()),
    ("cio_person_id", pa.string()),
    ("cio_email", pa.string()),
    ("cio_anonymous_id", pa.string()),
]
"""`lg_profiles` columns before the per-type counts (`n_<type>`)."""

ALIASES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("old_profile_id", pa.string()),
        ("profile_id", pa.string()),
        ("cause", pa.string()),
    ]
)
MERGES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("profile_id", pa.string()),
        ("absorbed_profile_id", pa.string()),
        ("type_a", pa.string()),
        ("value_a", pa.string()),
        ("type_b", pa.string()),
        ("value_b", pa.string()),
        ("evidence_rank", pa.int16()),
        ("cause", pa.string()),
    ]
)
REFUSALS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("type_a", pa.string()),
        ("value_a", pa.string()),
        ("type_b", pa.string()),
        ("value_b", pa.string()),
        ("rank", pa.int16()),
        ("rule", pa.string()),
        ("counts", pa.string()),
        ("profile_a", pa.string()),
        ("profile_b", pa.string()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("id_type", pa.string()),
        ("id_value", pa.string()),
        ("neighbour_type", pa.string()),
        ("degree", pa.int64()),
        ("max", pa.int64()),
        ("policy", pa.string()),
    ]
)
SPLITS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("parent_profile_id", pa.string()),
        ("child_profile_id", pa.string()),
        ("cause", pa.string()),
        ("status", pa.string()),
    ]
)
MOVES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("id_type", pa.string()),
        ("id_value", pa.string()),
        ("from_profile_id", pa.string()),
        ("to_profile_id", pa.string()),
    ]
)
HELD_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("profile_id", pa.string()),
        ("parent_profile_id", pa.string()),
        ("cio_id", pa.string()),
        ("cio_person_id", pa.string()),
        ("cio_email", pa.string()),
        ("cio_anonymous_id", pa.string()),
    ]
)
"""Profiles of a split waiting for review (`on_split: review`), and the Customer.io identifiers
their rows keep using meanwhile: the parent's person from before the split. `run_id` is the run
that found the split."""

LOST_SCHEMA = pa.schema([("profile_id", pa.string()), ("id_type", pa.string())])
"""Profiles that lost their only value of a type to another profile (an identifier move) and
hold none since: their person's attribute for that type is cleared, run after run."""

WITHHELD_SCHEMA = pa.schema(
    [
        ("id_type", pa.string()),
        ("id_value", pa.string()),
        ("profile_id", pa.string()),
        ("run_id", pa.string()),
    ]
)
"""Anonymous ids (of a type sent as Customer.io's `anonymous_id`) that left the profile of a
Customer.io person for another profile (`profile_id` the one they left, `run_id` the run that
saw it): Customer.io may have attached them, and their events, to that person, so they are
never sent to another one, run after run."""

CONTESTED_SCHEMA = pa.schema([("profile_id", pa.string()), ("kind", pa.string())])
"""Profiles whose person was given `contested_<kind>` (`email` or `id`) because a limit refused
a union: once no union is refused for them, that attribute is cleared, run after run."""

RETIRED_BASE = pa.schema(PROFILES_BASE)
"""The columns every `retired` row has: a retired profile's row as it was last (its
`lg_profiles` columns, the per-type counts of that run's config too), `status` `retired` and
`run_id` the run that retired it."""

BLOCKED_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("source", pa.string()),
        ("id_type", pa.string()),
        ("reason", pa.string()),
        ("value", pa.string()),
        ("raw_sample", pa.string()),
        ("count", pa.int64()),
    ]
)


#: the columns of the previous identifier map and edges that `resolve` reads (the others,
#: run ids, statuses and reasons, are the analyst's)
STITCH_COLUMNS: dict[str, list[str]] = {
    "nodes": [
        "id_type",
        "id_value",
        "profile_id",
        "first_seen_batch",
        "first_observed",
        "last_observed",
        "best_rank",
        "sources",
    ],
    "edges": [
        "type_a",
        "value_a",
        "type_b",
        "value_b",
        "rank",
        "first_seen_batch",
        "first_observed",
        "last_observed",
        "sources",
    ],
}


@dataclass(frozen=True)
class IdentityState:
    """The previous run's graph: pass `IdentityResult.state` into the next `resolve`.

    `batch` is the last batch number; `nodes`, `edges`, `profiles` and `aliases` are that run's
    identifier map, edges (retracted ones left out), profiles and alias chains.
    """

    batch: int
    nodes: pa.Table
    edges: pa.Table
    profiles: pa.Table
    aliases: pa.Table = field(default_factory=lambda: ALIASES_SCHEMA.empty_table())
    held: pa.Table = field(default_factory=lambda: HELD_SCHEMA.empty_table())
    lost: pa.Table = field(default_factory=lambda: LOST_SCHEMA.empty_table())
    contested: pa.Table = field(default_factory=lambda: CONTESTED_SCHEMA.empty_table())
    refused: pa.Table = field(default_factory=lambda: REFUSALS_SCHEMA.empty_table())
    """That run's refused unions (`lg_refused_merges`): every run replays its links and refuses
    the same ones again, so a run whose inputs did not change can reuse them (the `contested_*`
    attributes come from them)."""
    retired: pa.Table = field(default_factory=lambda: RETIRED_BASE.empty_table())
    """Profiles that were a Customer.io person known by email alone and are heir to nothing
    now (their rows left): their person is still in Customer.io, so a later profile holding
    that email takes the profile over (a merge, or the profile back). See `RETIRED_BASE`."""
    withheld: pa.Table = field(default_factory=lambda: WITHHELD_SCHEMA.empty_table())
    """Anonymous ids never sent again (`WITHHELD_SCHEMA`)."""

    _PARTS = (
        "nodes",
        "edges",
        "profiles",
        "aliases",
        "held",
        "lost",
        "contested",
        "refused",
        "retired",
        "withheld",
    )

    def write(self, directory: str | Path) -> None:
        """Store the state as Parquet files plus `state.json` in `directory`, atomically.

        The files are written into a sibling folder and swapped in by renames, so a process
        killed at any point leaves either the previous state or the new one, never a torn mix
        (`read` falls back to the previous folder if it was caught between the two renames).
        """
        folder = Path(directory)
        fresh = folder.with_name(folder.name + ".new")
        previous = folder.with_name(folder.name + ".old")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        for part in self._PARTS:
            pq.write_table(getattr(self, part), fresh / f"{part}.parquet")
        (fresh / "state.json").write_text(json.dumps({"batch": self.batch}))
        for path in fresh.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        shutil.rmtree(previous, ignore_errors=True)
        if folder.exists():
            folder.rename(previous)
        fresh.rename(folder)
        shutil.rmtree(previous, ignore_errors=True)

    @staticmethod
    def stored_in(directory: str | Path) -> Path | None:
        """The folder holding the state `write` stored in `directory`: `directory` itself, or
        the previous folder beside it when a `write` was caught between its two renames;
        `None` if there is none yet."""
        for folder in (Path(directory), Path(f"{directory}.old")):
            if (folder / "state.json").exists():
                return folder
        return None

    @classmethod
    def read(
        cls, directory: str | Path, columns: Mapping[str, list[str]] | None = None
    ) -> IdentityState | None:
        """The state `write` stored in `directory`, or `None` if there is none yet.

        `columns` names, per part, the only columns to read of it (`resolve` reads a few of
        the map's and the edges': :data:`STITCH_COLUMNS`); the other parts are read whole.
        """
        folder = cls.stored_in(directory)
        if folder is None:
            return None
        batch = int(json.loads((folder / "state.json").read_text())["batch"])
        # a state written before a part existed (`held`) starts that part empty
        parts = {
            part: pq.read_table(folder / f"{part}.parquet", columns=(columns or {}).get(part))
            for part in cls._PARTS
            if (folder / f"{part}.parquet").exists()
        }
        return cls(batch=batch, **parts)


def _live(edges: pa.Table) -> pa.Table:
    """The edges that are not retracted. Where a few are, the runs of edges between them, as
    slices of the same memory: a filtered copy of every edge cost ~110 MiB at a million people
    while the graph was saved."""
    keep = pa.compute.fill_null(
        pa.compute.not_equal(edges["status"], pa.scalar("retracted")), False
    ).to_numpy(zero_copy_only=False)
    dropped = np.flatnonzero(~keep)
    if not dropped.size:
        return edges
    if dropped.size > 1000:
        return edges.filter(pa.array(keep))
    bounds = [-1, *dropped.tolist(), edges.num_rows]
    runs = [edges.slice(a + 1, b - a - 1) for a, b in itertools.pairwise(bounds) if b - a > 1]
    return pa.concat_tables(runs) if runs else edges.slice(0, 0)


@dataclass(frozen=True)
class IdentityResult:
    """Everything one `resolve` run produced, each table carrying `run_id`.

    The analyst tables (`lg_*` in the docs) are `profiles`, `identifier_map`, `edges`,
    `aliases`, `merges`, `refused`, `quarantine`, `splits`, `moves` and `blocked`.
    `previous_profiles` is the previous run's profile table (for the Customer.io plan), then
    the retired profiles it started from (`status` `retired`, see `IdentityState.retired`).
    """

    run_id: str
    batch: int
    profiles: pa.Table
    identifier_map: pa.Table
    edges: pa.Table
    aliases: pa.Table
    merges: pa.Table
    refused: pa.Table
    quarantine: pa.Table
    splits: pa.Table
    moves: pa.Table
    blocked: pa.Table
    previous_profiles: pa.Table
    rows: pa.Table | None = None
    stats: dict[str, float] = field(default_factory=dict)
    held: pa.Table = field(default_factory=lambda: HELD_SCHEMA.empty_table())
    """Profiles of splits waiting for review, and the Customer.io identifiers they keep."""
    lost: pa.Table = field(default_factory=lambda: LOST_SCHEMA.empty_table())
    """Profiles that lost every value of a type to another profile (`LOST_SCHEMA`)."""
    contested: pa.Table = field(default_factory=lambda: CONTESTED_SCHEMA.empty_table())
    """Profiles given a `contested_<kind>` attribute, now or before (`CONTESTED_SCHEMA`)."""
    retired: pa.Table = field(default_factory=lambda: RETIRED_BASE.empty_table())
    """Profiles known by email alone in Customer.io that are heir to nothing (`IdentityState`)."""
    withheld: pa.Table = field(default_factory=lambda: WITHHELD_SCHEMA.empty_table())
    """Anonymous ids that left a Customer.io person's profile: sent to nobody else
    (`WITHHELD_SCHEMA`)."""

    @property
    def state(self) -> IdentityState:
        """The state to pass to the next run."""
        return IdentityState(
            batch=self.batch,
            nodes=self.identifier_map,
            edges=_live(self.edges),
            profiles=self.profiles,
            aliases=self.aliases,
            held=self.held,
            lost=self.lost,
            contested=self.contested,
            refused=self.refused,
            retired=self.retired,
            withheld=self.withheld,
        )

    @classmethod
    def reused(cls, state: IdentityState, run_id: str) -> IdentityResult:
        """The result a run resolving the same inputs from ``state`` gives, without stitching:
        the same graph, profiles and refusals, and nothing merged, split or moved (`resolve`
        is idempotent: a second run on unchanged inputs reproduces the state it starts from,
        see tests/identity/test_reuse.py). Its analyst tables are the saved graph's."""
        return cls(
            run_id=run_id,
            batch=state.batch,
            profiles=state.profiles,
            identifier_map=state.nodes,
            edges=state.edges,
            aliases=state.aliases,
            merges=MERGES_SCHEMA.empty_table(),
            refused=state.refused,
            quarantine=QUARANTINE_SCHEMA.empty_table(),
            splits=SPLITS_SCHEMA.empty_table(),
            moves=MOVES_SCHEMA.empty_table(),
            blocked=BLOCKED_SCHEMA.empty_table(),
            previous_profiles=state.profiles,
            held=state.held,
            lost=state.lost,
            contested=state.contested,
            retired=state.retired,
            withheld=state.withheld,
        )

    def tables(self) -> dict[str, pa.Table]:
        """The analyst tables by their warehouse name."""
        return {
            "lg_profiles": self.profiles,
            "lg_identifier_map": self.identifier_map,
            "lg_edges": self.edges,
            "lg_profile_aliases": self.aliases,
            "lg_merge_log": self.merges,
            "lg_refused_merges": self.refused,
            "lg_quarantine": self.quarantine,
            "lg_split_log": self.splits,
            "lg_identifier_moves": self.moves,
            "lg_blocked_values": self.blocked,
        }
