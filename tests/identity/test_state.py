"""State survives a trip through Parquet, so a later process continues where a run left off."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
from tests.identity.helpers import config, rows, run

from lockgate.identity import IdentityState


def test_state_written_and_read_back_continues_the_run(tmp_path: Path) -> None:
    cfg = config()
    assert IdentityState.read(tmp_path / "identity") is None
    first = run(cfg, {"app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1})})
    first.state.write(tmp_path / "identity")
    state = IdentityState.read(tmp_path / "identity")
    assert state is not None and state.batch == 1
    second = run(
        cfg,
        {"identifies": rows({"user_id": "u1", "anonymous_id": "a1", "ts": 2})},
        state=state,
        run_id="r2",
    )
    assert second.batch == 2
    [profile] = second.profiles.to_pylist()
    assert profile["profile_id"] == first.profiles["profile_id"][0].as_py()
    assert profile["cio_anonymous_id"] == "a1" and profile["n_email"] == 1


def test_a_write_cut_off_midway_never_leaves_a_torn_state(tmp_path: Path) -> None:
    cfg = config()
    first = run(cfg, {"app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1})})
    folder = tmp_path / "identity"
    first.state.write(folder)
    # killed after writing the new files but before they were swapped in
    (tmp_path / "identity.new").mkdir()
    (tmp_path / "identity.new" / "state.json").write_text("")
    assert IdentityState.read(folder) is not None
    # killed between the two renames: the previous state is still found
    folder.rename(tmp_path / "identity.old")
    state = IdentityState.read(folder)
    assert state is not None and state.batch == 1
    # and the next write cleans up after the interrupted one
    first.state.write(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity"]


def test_the_next_runs_state_keeps_exactly_the_links_not_retracted() -> None:
    # app_users is a snapshot source: a user's link to the email they changed is retracted
    # (the newsletter still knows the email), and the state handed to the next run holds
    # every other link, in order (a few retracted ones are left out without copying the
    # rest; past a thousand, the rest is a filtered copy)
    cfg = config()
    users = [{"user_id": f"u{i}", "email": f"e{i}@x.com", "ts": 1} for i in range(1500)]
    leads = rows(*({"email": u["email"]} for u in users))
    first = run(cfg, {"app_users": rows(*users), "newsletter": leads})
    for changed in (set(range(0, 1500, 500)), set(range(1200))):
        now = [{**u, "email": f"n{i}@x.com"} if i in changed else u for i, u in enumerate(users)]
        second = run(cfg, {"app_users": rows(*now)}, state=first.state, run_id="r2")
        edges = second.edges
        live = edges.filter(pc.not_equal(edges["status"], "retracted"))
        assert edges.num_rows - live.num_rows == len(changed)
        assert second.state.edges.equals(live)
