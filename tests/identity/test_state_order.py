"""A saved graph whose identifier map is not grouped by type (written by another tool, or
sorted by value in the warehouse) is continued from exactly as the one `resolve` wrote: a run
reads each type's rows as a slice of the map only when they are contiguous."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from lockgate.identity import resolve
from lockgate.identity.synthetic import synthetic_config, synthetic_sources


def test_a_map_in_any_row_order_gives_the_same_next_run() -> None:
    config = synthetic_config()
    sources = synthetic_sources(2000, seed=11, shared_device_every=400, shared_email_every=100)
    first = resolve(config, sources, run_id="r1")
    state = first.state
    shuffled = state.nodes.take(
        pa.array(np.random.default_rng(3).permutation(state.nodes.num_rows))
    )
    # a changed source, so the next run moves, merges and refuses on top of the saved graph
    users = sources["app_users"]
    changed = {**sources, "app_users": users.slice(0, users.num_rows - 50)}

    kept = resolve(config, changed, run_id="r2", state=state)
    other = resolve(config, changed, run_id="r2", state=dataclasses.replace(state, nodes=shuffled))

    assert kept.profiles.num_rows > 0 and kept.refused.num_rows > 0
    for name, table in kept.tables().items():
        assert other.tables()[name].equals(table), name
