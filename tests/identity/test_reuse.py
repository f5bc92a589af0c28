"""Stitching unchanged inputs again gives back the graph it started from, so a sync may reuse
the saved graph (`IdentityResult.reused`) when nothing that feeds it changed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lockgate.identity import IdentityResult, IdentityState, Resolver, plan_customerio, resolve
from lockgate.identity.customerio import profile_attributes
from lockgate.identity.synthetic import synthetic_config, synthetic_sources


def _without_run_id(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in ("run_id",) if c in table.column_names])


def _same_state(a: IdentityState, b: IdentityState) -> list[str]:
    return [
        part
        for part in IdentityState._PARTS
        if not _without_run_id(getattr(a, part)).equals(_without_run_id(getattr(b, part)))
    ]


@pytest.mark.parametrize("order", ["grow", "shrink"])
def test_a_second_run_on_unchanged_inputs_changes_nothing_and_reuse_gives_its_outcome(
    order: str,
) -> None:
    """After a run that merged (more rows) or split (fewer rows, `on_split: review` holds
    some), stitching the same rows again reproduces the state, and the saved graph taken as
    it is keys rows, sets attributes and plans Customer.io calls exactly as that run does."""
    config = synthetic_config()
    full = synthetic_sources(3000, seed=5)
    rng = np.random.default_rng(2)
    part = {k: v.filter(pa.array(rng.random(v.num_rows) < 0.8)) for k, v in full.items()}
    first, then = (part, full) if order == "grow" else (full, part)
    start = resolve(config, first, run_id="r1")
    changed = resolve(config, then, run_id="r2", state=start.state)
    assert changed.merges.num_rows if order == "grow" else changed.splits.num_rows
    assert changed.contested.num_rows  # `contested_email` set (grow) or cleared (shrink)
    assert changed.refused.num_rows if order == "grow" else changed.held.num_rows
    again = resolve(config, then, run_id="r3", state=changed.state)
    assert _same_state(changed.state, again.state) == []
    assert _without_run_id(again.refused).equals(_without_run_id(changed.refused))
    assert again.merges.num_rows == again.splits.num_rows == again.moves.num_rows == 0

    # the saved graph, as a sync reads it back and reuses it
    reused = IdentityResult.reused(changed.state, "r3")
    rows = pa.concat_tables(
        [t.select(["user_id", "email"]) for t in (full["app_users"], full["identifies"])]
    )
    columns = {"user_id": "user_id", "email": "email"}
    assert (
        Resolver(config, reused)
        .resolve_table(rows, columns)
        .equals(Resolver(config, again).resolve_table(rows, columns))
    )
    assert profile_attributes(reused, config) == profile_attributes(again, config)
    known = {("id", v) for v in again.profiles["cio_person_id"].drop_null().to_pylist()[::2]} | {
        ("email", v) for v in again.profiles["cio_email"].drop_null().to_pylist()[::3]
    }
    plans = [plan_customerio(r, config, exists=known, limit_merges=False) for r in (reused, again)]
    assert [(o.key, o.payload) for o in plans[0].ops] == [(o.key, o.payload) for o in plans[1].ops]
    assert plans[0].merge_outcomes.equals(plans[1].merge_outcomes)
    assert plans[0].review.equals(plans[1].review)
