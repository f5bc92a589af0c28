"""The per-row resolver, `explain` and `plan` on small, readable graphs."""

from __future__ import annotations

import pyarrow as pa
from tests.identity.helpers import config, rows, run

from lockgate.identity import Resolver, explain, plan


def shared_family():  # type: ignore[no-untyped-def]
    cfg = config()
    inputs = {
        "app_users": rows(
            {"user_id": "u1", "email": "fam@x.com", "ts": 1},
            {"user_id": "u2", "email": "fam@x.com", "ts": 2},
        ),
        "identifies": rows({"anonymous_id": "a1", "user_id": "u1", "ts": 3}),
    }
    return cfg, inputs, run(cfg, inputs, keep_rows=True)


def test_resolver_maps_rows_to_profiles_and_customerio_identifiers() -> None:
    cfg, _, result = shared_family()
    resolver = Resolver(cfg, result)
    row = resolver.resolve_row({"email": " FAM@x.com "})
    assert row is not None
    assert row.cio_identifiers() == {"id": "u1", "email": "fam@x.com", "anonymous_id": "a1"}
    table = resolver.resolve_table(
        pa.table({"uid": ["u2", "nobody", None], "mail": [None, None, "fam@x.com"]}),
        {"uid": "user_id", "mail": "email"},
    )
    assert table["cio_person_id"].to_pylist() == ["u2", None, "u1"]
    assert resolver.resolve_row({"user_id": "null"}) is None


def test_explain_shows_identifiers_rows_and_refusals() -> None:
    cfg, _, result = shared_family()
    why = explain(cfg, result, "fam@x.com")
    assert why.profile is not None and why.profile["cio_person_id"] == "u1"
    assert {(i["id_type"], i["id_value"]) for i in why.identifiers} == {
        ("user_id", "u1"),
        ("email", "fam@x.com"),
        ("anonymous_id", "a1"),
    }
    assert {(r["source"], r["row_key"]) for r in why.rows} >= {
        ("app_users", "0"),
        ("app_users", "1"),
    }
    assert [r["rule"] for r in why.refused] == ["limit:user_id 2>1"]
    assert explain(cfg, result, "nobody@x.com").profile_id is None


def test_plan_previews_a_tighter_blocklist_as_a_split() -> None:
    cfg, inputs, _ = shared_family()
    stricter = config(blocked_values={"email": {"exact_ci": ["fam@x.com"]}})
    preview = plan(cfg, stricter, inputs)
    assert preview.splits.num_rows == 0 and preview.merges.num_rows == 0
    # the email only left u1's profile: nothing splits, u1 keeps its id
    looser = plan(stricter, cfg, inputs)
    assert looser.empty
    assert plan(cfg, cfg, inputs).empty
