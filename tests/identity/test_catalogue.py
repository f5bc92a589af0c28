"""Every case of the identity.md §3.6 catalogue, asserted on the identity output tables.

Test names carry the catalogue number (`test_case_07_...`), so the emulator-state assertions
can be added next to them when the sync engine integrates identity.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from tests.identity.helpers import config, groups, profile_of, rows, run

from lockgate.errors import ContractError
from lockgate.identity.customerio import plan_customerio, tombstone
from lockgate.identity.explain import Resolver


def no_exemption() -> dict:  # type: ignore[type-arg]
    types = config().model_dump(by_alias=True)["identifier_types"]
    types["email"]["limit_exempt_sources"] = []
    return types  # type: ignore[no-any-return]


def ops_of(plan, action):  # type: ignore[no-untyped-def]
    return [op.payload for op in plan.ops if op.payload["action"] == action]


def test_case_01_happy_path_anon_trial_paid() -> None:
    cfg = config()
    result = run(
        cfg,
        {
            "identifies": rows(
                {"anonymous_id": "a1", "ts": 1}, {"anonymous_id": "a1", "user_id": "u1", "ts": 2}
            ),
            "app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 2}),
            "stripe_customers": rows(
                {"stripe_customer_id": "cus_1", "email": "e1@x.com", "user_id": "u1", "ts": 3}
            ),
            "crm_contacts": rows({"crm_contact_id": "c1", "email": "e1@x.com", "ts": 4}),
        },
    )
    assert groups(result) == {
        frozenset(
            {
                "user_id:u1",
                "email:e1@x.com",
                "anonymous_id:a1",
                "stripe_customer_id:cus_1",
                "crm_contact_id:hubspot:c1",
            }
        )
    }
    assert result.merges.num_rows == 0 and result.refused.num_rows == 0
    plan = plan_customerio(result, cfg, exists=set())
    assert ops_of(plan, "merge") == []
    [identify] = ops_of(plan, "identify")
    assert identify["identifiers"] == {"id": "u1"}
    assert identify["attributes"]["email"] == "e1@x.com"
    assert identify["attributes"]["anonymous_id"] == "a1"
    assert identify["attributes"]["stripe_customer_id"] == "cus_1"


def test_case_02_case_and_whitespace_variants() -> None:
    result = run(
        config(),
        {
            "newsletter": rows(
                {"email": " Jane@X.com "}, {"email": "jane@x.com"}, {"email": "JANE@x.COM\u00a0"}
            )
        },
    )
    emails = [r for r in result.identifier_map.to_pylist() if r["id_type"] == "email"]
    assert [r["id_value"] for r in emails] == ["jane@x.com"]
    assert result.profiles.num_rows == 1


def test_case_04_null_like_strings_dropped_and_counted() -> None:
    junk = ["null", "None", "undefined", "", "0", "-1", "N/A", "0000"]
    result = run(
        config(),
        {
            "identifies": rows(
                *({"user_id": v, "anonymous_id": f"a{i}"} for i, v in enumerate(junk))
            )
        },
    )
    assert not [r for r in result.identifier_map.to_pylist() if r["id_type"] == "user_id"]
    assert result.edges.num_rows == 0
    blocked = {r["value"]: r["count"] for r in result.blocked.to_pylist()}
    assert sum(blocked.values()) == len(junk)
    assert {r["id_type"] for r in result.blocked.to_pylist()} == {"user_id"}


def test_case_05_blocked_test_email_keeps_people_apart() -> None:
    result = run(
        config(),
        {
            "app_users": rows(
                *({"user_id": f"u{i}", "email": "test@example.com"} for i in range(300))
            )
        },
    )
    assert result.profiles.num_rows == 300
    assert result.merges.num_rows == 0
    [blocked] = result.blocked.to_pylist()
    assert (blocked["value"], blocked["reason"], blocked["count"]) == (
        "test@example.com",
        "blocked",
        300,
    )


def test_case_07_shared_family_email() -> None:
    result = run(
        config(),
        {
            "app_users": rows(
                {"user_id": "u1", "email": "fam@x.com", "ts": 1},
                {"user_id": "u2", "email": "fam@x.com", "ts": 2},
            )
        },
    )
    assert groups(result) == {
        frozenset({"user_id:u1", "email:fam@x.com"}),
        frozenset({"user_id:u2"}),
    }
    [refusal] = result.refused.to_pylist()
    assert refusal["rule"] == "limit:user_id 2>1"
    assert refusal["profile_a"] == profile_of(result, "user_id", "u2")
    assert refusal["profile_b"] == profile_of(result, "user_id", "u1")
    plan = plan_customerio(result, config(), exists=set())
    attrs = {op["identifiers"]["id"]: op["attributes"] for op in ops_of(plan, "identify")}
    assert attrs["u1"]["email"] == "fam@x.com" and "contested_email" not in attrs["u1"]
    assert attrs["u2"]["contested_email"] == "fam@x.com" and "email" not in attrs["u2"]


def test_case_08_shared_device_across_50_users() -> None:
    result = run(
        config(),
        {
            "identifies": rows(
                *({"anonymous_id": "a_shared", "user_id": f"u{i}"} for i in range(50))
            )
        },
    )
    assert result.profiles.num_rows == 50
    assert result.profiles["cio_anonymous_id"].null_count == 50
    [q] = result.quarantine.to_pylist()
    assert (q["id_value"], q["neighbour_type"], q["degree"], q["policy"]) == (
        "a_shared",
        "user_id",
        50,
        "quarantine",
    )
    node = [r for r in result.identifier_map.to_pylist() if r["id_value"] == "a_shared"][0]
    assert node["status"] == "quarantined" and node["profile_id"] is None


@pytest.mark.parametrize("policy", ["quarantine", "keep_first"])
def test_case_09_household_tablet(policy: str) -> None:
    cfg = config()
    types = cfg.model_dump(by_alias=True)["identifier_types"]
    types["anonymous_id"]["degree_cap"]["user_id"]["policy"] = policy
    cfg = config(identifier_types=types)
    result = run(
        cfg,
        {
            "identifies": rows(
                {"anonymous_id": "d", "user_id": "u1", "ts": 1},
                {"anonymous_id": "d", "user_id": "u2", "ts": 2},
            )
        },
    )
    if policy == "quarantine":
        assert groups(result) == {frozenset({"user_id:u1"}), frozenset({"user_id:u2"})}
    else:
        assert groups(result) == {
            frozenset({"user_id:u1", "anonymous_id:d"}),
            frozenset({"user_id:u2"}),
        }
        capped = [e for e in result.edges.to_pylist() if e["status"] == "capped"]
        assert [(e["value_a"], e["reason"]) for e in capped] == [("u2", "degree_cap:anonymous_id")]


def test_case_10_device_bridging_a_lead_and_a_user() -> None:
    result = run(
        config(),
        {
            "identifies": rows(
                {"anonymous_id": "d", "user_id": "u1", "email": "e1@x.com", "ts": 1},
                {"anonymous_id": "d", "email": "e9@x.com", "ts": 2},
            )
        },
    )
    assert len(groups(result)) == 2
    assert profile_of(result, "email", "e9@x.com") != profile_of(result, "user_id", "u1")
    [refusal] = result.refused.to_pylist()
    assert refusal["rule"] == "bridge_known_profiles"


def test_case_11_stripe_id_reassigned_is_a_move() -> None:
    cfg = config()
    users = rows({"user_id": "u1", "ts": 1}, {"user_id": "u2", "ts": 1})
    first = run(
        cfg,
        {
            "app_users": users,
            "stripe_customers": rows({"stripe_customer_id": "cus_9", "user_id": "u1", "ts": 1}),
        },
    )
    second = run(
        cfg,
        {
            "app_users": users,
            "stripe_customers": rows({"stripe_customer_id": "cus_9", "user_id": "u2", "ts": 5}),
        },
        state=first.state,
        run_id="r2",
    )
    assert profile_of(second, "stripe_customer_id", "cus_9") == profile_of(second, "user_id", "u2")
    assert profile_of(second, "user_id", "u1") == profile_of(first, "user_id", "u1")
    assert second.merges.num_rows == 0 and second.splits.num_rows == 0
    retracted = [e for e in second.edges.to_pylist() if e["status"] == "retracted"]
    assert [(e["value_a"], e["value_b"]) for e in retracted] == [("u1", "cus_9")]
    [move] = second.moves.to_pylist()
    assert move["from_profile_id"] == profile_of(first, "user_id", "u1")
    plan = plan_customerio(second, cfg, exists={("id", "u1"), ("id", "u2")})
    attrs = {op["identifiers"]["id"]: op["attributes"] for op in ops_of(plan, "identify")}
    assert attrs["u1"]["stripe_customer_id"] == ""  # cleared: Customer.io removes it
    assert attrs["u2"]["stripe_customer_id"] == "cus_9"


def test_case_11_a_stripe_id_moving_off_a_user_no_source_shows_merges_nobody() -> None:
    """The Stripe customer named `u1` (known from Stripe alone), then a lead's email: the
    Stripe id moves to the lead, and `u1`'s profile, holding nothing its person is found by,
    is retired, not merged into the lead's (which would delete `u1`'s person)."""
    cfg = config()
    lead = {"newsletter": rows({"email": "e1@x.com"})}
    first = run(
        cfg,
        {**lead, "stripe_customers": rows({"stripe_customer_id": "cus_9", "user_id": "u1"})},
    )
    second = run(
        cfg,
        {**lead, "stripe_customers": rows({"stripe_customer_id": "cus_9", "email": "e1@x.com"})},
        state=first.state,
        run_id="r2",
    )
    was, lead_profile = profile_of(first, "user_id", "u1"), profile_of(first, "email", "e1@x.com")
    assert second.merges.num_rows == 0 and second.splits.num_rows == 0
    assert second.aliases.num_rows == 0
    assert profile_of(second, "stripe_customer_id", "cus_9") == lead_profile
    assert was not in second.profiles["profile_id"].to_pylist()
    [move] = second.moves.to_pylist()
    assert (move["from_profile_id"], move["to_profile_id"]) == (was, lead_profile)
    plan = plan_customerio(second, cfg, exists={("id", "u1"), ("email", "e1@x.com")})
    assert ops_of(plan, "merge") == []
    by = {tuple(op["identifiers"].items()): op["attributes"] for op in ops_of(plan, "identify")}
    assert by[(("id", "u1"),)] == {
        "_update": True,
        "stripe_customer_id": "",
    }  # u1's person: cleared, kept
    assert by[(("email", "e1@x.com"),)]["stripe_customer_id"] == "cus_9"


def test_case_13_email_change_keeps_one_person() -> None:
    cfg = config()
    first = run(
        cfg,
        {
            "app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1}),
            "identifies": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1}),
        },
    )
    second = run(
        cfg,
        {"app_users": rows({"user_id": "u1", "email": "e2@x.com", "ts": 9})},
        state=first.state,
        run_id="r2",
    )
    assert groups(second) == {frozenset({"user_id:u1", "email:e1@x.com", "email:e2@x.com"})}
    [profile] = second.profiles.to_pylist()
    assert profile["cio_email"] == "e2@x.com"
    assert profile["profile_id"] == first.profiles["profile_id"][0].as_py()
    plan = plan_customerio(second, cfg, exists={("id", "u1")})
    assert [op["attributes"]["email"] for op in ops_of(plan, "identify")] == ["e2@x.com"]
    assert ops_of(plan, "merge") == []


def test_case_13_an_email_given_up_and_taken_by_a_new_user_in_one_run_moves_to_them() -> None:
    """u1 changes e1 -> e2 while new user u0 signs up with e1: e1 moves to u0's new profile,
    which is identified as itself, not a split of u1's profile sent to u1's person."""
    cfg = config()
    first = run(cfg, {"app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1})})
    second = run(
        cfg,
        {
            "app_users": rows(
                {"user_id": "u1", "email": "e2@x.com", "ts": 9},
                {"user_id": "u0", "email": "e1@x.com", "ts": 9},
            )
        },
        state=first.state,
        run_id="r2",
    )
    assert second.splits.num_rows == 0 and second.held.num_rows == 0
    [move] = second.moves.to_pylist()
    assert (move["id_value"], move["from_profile_id"]) == (
        "e1@x.com",
        profile_of(first, "user_id", "u1"),
    )
    assert move["to_profile_id"] == profile_of(second, "user_id", "u0")
    plan = plan_customerio(second, cfg, exists={("id", "u1"), ("email", "e1@x.com")})
    assert sorted(
        (op["identifiers"]["id"], op["attributes"]["email"]) for op in ops_of(plan, "identify")
    ) == [
        ("u0", "e1@x.com"),
        ("u1", "e2@x.com"),
    ]
    rows_ = Resolver(cfg, second).resolve_table(pa.table({"user_id": ["u0"]}))
    assert rows_["cio_person_id"].to_pylist() == ["u0"]


def test_case_14_email_change_onto_an_existing_lead() -> None:
    cfg = config()
    first = run(
        cfg,
        {
            "app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1}),
            "identifies": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1}),
            "newsletter": rows({"email": "e2@x.com"}),
        },
    )
    second = run(
        cfg,
        {"app_users": rows({"user_id": "u1", "email": "e2@x.com", "ts": 9})},
        state=first.state,
        run_id="r2",
    )
    [merge] = second.merges.to_pylist()
    assert merge["profile_id"] == profile_of(first, "user_id", "u1")
    assert merge["absorbed_profile_id"] == profile_of(first, "email", "e2@x.com")
    plan = plan_customerio(second, cfg, exists={("id", "u1"), ("email", "e2@x.com")})
    assert [op.payload["action"] for op in plan.ops] == ["merge", "identify"]
    assert plan.ops[0].payload["primary"] == {"id": "u1"}
    assert plan.ops[0].payload["secondary"] == {"email": "e2@x.com"}
    assert plan.ops[1].payload["identifiers"] == {"id": "u1"}
    assert plan.ops[1].payload["attributes"]["email"] == "e2@x.com"


@pytest.mark.parametrize("exempt", [True, False])
def test_case_15_email_churn_and_the_soft_limit(exempt: bool) -> None:
    cfg = config()
    if not exempt:
        types = cfg.model_dump(by_alias=True)["identifier_types"]
        types["email"]["limit_exempt_sources"] = []
        cfg = config(identifier_types=types)
    result = run(
        cfg,
        {
            "app_users": rows(
                *({"user_id": "u1", "email": f"e{i}@x.com", "ts": i} for i in range(6))
            )
        },
    )
    if exempt:
        assert result.profiles.num_rows == 1 and result.refused.num_rows == 0
    else:
        assert result.profiles.num_rows == 2
        [refusal] = result.refused.to_pylist()
        assert refusal["rule"] == "limit:email 6>5" and refusal["value_b"] == "e5@x.com"


def test_case_16_chain_arriving_out_of_order() -> None:
    sources = config().model_dump()["sources"]
    sources[4]["columns"] = {
        "email": "email",
        "referred_email": "email",
        "anonymous_id": "anonymous_id",
    }
    cfg = config(sources=sources)
    b1 = run(cfg, {"identifies": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1})})
    b2 = run(
        cfg,
        {"newsletter": rows({"email": "e2@x.com", "anonymous_id": "a5", "referred_email": None})},
        state=b1.state,
        run_id="r2",
    )
    assert b2.profiles.num_rows == 2
    b3 = run(
        cfg,
        {
            "newsletter": rows(
                {"email": "e1@x.com", "referred_email": "e2@x.com", "anonymous_id": None}
            )
        },
        state=b2.state,
        run_id="r3",
    )
    assert b3.profiles.num_rows == 1
    [merge] = b3.merges.to_pylist()
    assert merge["profile_id"] == profile_of(b1, "user_id", "u1")
    plan = plan_customerio(b3, cfg, exists={("id", "u1"), ("email", "e2@x.com")})
    assert [m["secondary"] for m in ops_of(plan, "merge")] == [{"email": "e2@x.com"}]


def test_case_18_triangle_of_existing_people() -> None:
    cfg = config(
        identifier_types=no_exemption(),
        sources=[
            {
                "name": "newsletter",
                "table": "leads",
                "trust": 2,
                "mode": "append_only",
                "columns": {"email": "email", "other": "email"},
            }
        ],
    )
    first = run(
        cfg,
        {
            "newsletter": rows(
                {"email": "a@x.com", "other": None}, {"email": "b@x.com"}, {"email": "c@x.com"}
            )
        },
    )
    second = run(
        cfg,
        {
            "newsletter": rows(
                {"email": "a@x.com", "other": "b@x.com"},
                {"email": "b@x.com", "other": "c@x.com"},
                {"email": "c@x.com", "other": "a@x.com"},
            )
        },
        state=first.state,
        run_id="r2",
    )
    assert second.profiles.num_rows == 1 and second.merges.num_rows == 2
    exists = {("email", e) for e in ("a@x.com", "b@x.com", "c@x.com")}
    merges = ops_of(plan_customerio(second, cfg, exists=exists), "merge")
    assert len({str(m["primary"]) for m in merges}) == 1
    secondaries = [m["secondary"] for m in merges]
    assert merges[0]["primary"] not in secondaries and len(secondaries) == 2


def test_case_19_limit_conflict_through_crm() -> None:
    cfg = config(
        sources=[
            {"name": "app_users", "table": "u", "trust": 1},
            {
                "name": "crm_contacts",
                "table": "c",
                "trust": 2,
                "columns": {
                    "crm_contact_id": "crm_contact_id",
                    "email": "email",
                    "app_user_id": "user_id",
                },
            },
        ]
    )
    result = run(
        cfg,
        {
            "app_users": rows(
                {"user_id": "u1", "email": "e1@x.com"}, {"user_id": "u2", "email": "e2@x.com"}
            ),
            "crm_contacts": rows(
                {"crm_contact_id": "c7", "email": "e1@x.com", "app_user_id": "u2"}
            ),
        },
    )
    p1, p2 = profile_of(result, "user_id", "u1"), profile_of(result, "user_id", "u2")
    assert profile_of(result, "crm_contact_id", "hubspot:c7") == p2
    assert profile_of(result, "email", "e1@x.com") == p1
    [refusal] = result.refused.to_pylist()
    assert (refusal["value_a"], refusal["value_b"], refusal["rule"]) == (
        "u2",
        "e1@x.com",
        "limit:user_id 2>1",
    )
    assert {refusal["profile_a"], refusal["profile_b"]} == {p1, p2}


def test_case_21_idempotent_rerun() -> None:
    cfg = config()
    inputs = {
        "app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1}),
        "identifies": rows({"anonymous_id": "a1", "user_id": "u1", "ts": 1}),
    }
    first = run(cfg, inputs)
    again = run(cfg, inputs, state=first.state, run_id="r2")
    assert again.profiles.drop_columns(["run_id"]).equals(first.profiles.drop_columns(["run_id"]))
    assert again.merges.num_rows == again.splits.num_rows == again.moves.num_rows == 0
    exists = {("id", "u1"), ("email", "e1@x.com")}
    assert plan_customerio(again, cfg, exists=exists).ops == ()


def test_case_22_pre_existing_customerio_duplicates() -> None:
    cfg = config()
    result = run(
        cfg,
        {
            "customerio_people": rows(
                {"cio_id": "X", "user_id": "u1"}, {"cio_id": "Y", "email": "e1@x.com"}
            ),
            "app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1}),
        },
    )
    assert result.profiles.num_rows == 1
    [merge] = ops_of(
        plan_customerio(result, cfg, exists={("cio_id", "X"), ("cio_id", "Y")}), "merge"
    )
    assert merge["primary"] == {"cio_id": "X"} and merge["secondary"] == {"cio_id": "Y"}


def test_case_23_person_deleted_outside_lockgate_is_identified_again() -> None:
    cfg = config()
    inputs = {"app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1})}
    first = run(cfg, inputs)
    second = run(cfg, inputs, state=first.state, run_id="r2")
    plan = plan_customerio(second, cfg, exists=set())  # the lookup found nobody
    assert ops_of(plan, "merge") == []
    [identify] = ops_of(plan, "identify")
    assert identify["identifiers"] == {"id": "u1"}


def test_case_24_anonymous_only_profile() -> None:
    cfg = config()
    result = run(cfg, {"identifies": rows({"anonymous_id": "a7", "ts": 1})})
    [profile] = result.profiles.to_pylist()
    assert profile["anchor_type"] == "anonymous_id" and profile["cio_person_id"] is None
    assert plan_customerio(result, cfg, exists=set()).ops == ()


def test_case_25_identified_40_days_after_anonymous_activity() -> None:
    cfg = config()
    result = run(
        cfg,
        {
            "identifies": rows(
                {"anonymous_id": "a8", "ts": 0}, {"anonymous_id": "a8", "user_id": "u8", "ts": 40}
            )
        },
    )
    [identify] = ops_of(plan_customerio(result, cfg, exists=set()), "identify")
    assert (
        identify["identifiers"] == {"id": "u8"} and identify["attributes"]["anonymous_id"] == "a8"
    )


def test_case_26_newly_blocklisted_value_proposes_a_split_for_review() -> None:
    cfg = config(
        identifier_types={
            "email": {"priority": 2, "limit": None, "customerio": "email"},
            "coupon": {"priority": 6, "limit": None},
        },
        sources=[{"name": "leads", "table": "l", "mode": "append_only"}],
        customerio={"id_from": []},
    )
    first = run(
        cfg,
        {"leads": rows(*({"email": f"p{i:02d}@x.com", "coupon": "SHARED1"} for i in range(40)))},
    )
    assert first.profiles.num_rows == 1
    parent = first.profiles["profile_id"][0].as_py()
    second = run(
        cfg,
        {},
        state=first.state,
        run_id="r2",
        blocklist=pa.table({"id_type": ["coupon"], "id_value": ["SHARED1"]}),
    )
    assert second.profiles.num_rows == 40
    assert profile_of(second, "email", "p00@x.com") == parent
    assert second.splits.num_rows == 39
    assert set(second.splits["status"].to_pylist()) == {"needs_review"}
    plan = plan_customerio(second, cfg, exists={("email", "p00@x.com")})
    assert plan.ops == () and plan.review.num_rows == 39
    # until approved, all 40 keep the person they were before the split, run after run
    before = first.profiles.to_pylist()[0]["cio_email"]
    third = run(
        cfg,
        {},
        state=second.state,
        run_id="r3",
        blocklist=pa.table({"id_type": ["coupon"], "id_value": ["SHARED1"]}),
    )
    assert third.held.num_rows == 40 and set(third.held["cio_email"].to_pylist()) == {before}
    assert third.splits.num_rows == 0
    assert plan_customerio(third, cfg, exists={("email", before)}).ops == ()
    rows_ = Resolver(cfg, third).resolve_table(pa.table({"email": ["p07@x.com"]}))
    assert rows_["cio_email"].to_pylist() == [before]


def test_case_27_gdpr_delete_tombstones_identifiers() -> None:
    cfg = config()
    inputs = {
        "app_users": rows({"user_id": "u5", "email": "e5@x.com", "ts": 1}),
        "identifies": rows({"user_id": "u5", "anonymous_id": "a5", "ts": 1}),
    }
    first = run(cfg, inputs)
    blocked, op = tombstone(first, "user_id", "u5")
    assert op is not None and op.payload == {
        "type": "person",
        "action": "suppress",
        "identifiers": {"id": "u5"},
    }
    later = run(
        cfg,
        {"identifies": rows({"user_id": "u5", "anonymous_id": "a5", "ts": 9})},
        state=first.state,
        run_id="r2",
        blocklist=blocked,
    )
    assert later.profiles.num_rows == 0 and later.identifier_map.num_rows == 0


def test_operator_blocklist_rows_are_normalised_and_may_carry_the_namespace() -> None:
    """The operator's table is written by hand or by `tombstone` (which gives the graph's
    `hubspot:123`): a row blocks the value however the sources write it, in this run's rows
    and among the nodes kept from the last run."""
    cfg = config()
    inputs = {
        "crm_contacts": rows(
            {"crm_contact_id": "123", "email": "ann@x.com", "ts": 1},
            {"crm_contact_id": "456", "email": "Bob@X.com", "ts": 1},
        )
    }
    first = run(cfg, inputs)
    assert profile_of(first, "crm_contact_id", "hubspot:123") is not None
    blocklist = pa.table(
        {"id_type": ["crm_contact_id", "email"], "id_value": ["hubspot:123", " BOB@x.com"]}
    )
    later = run(cfg, inputs, state=first.state, run_id="r2", blocklist=blocklist)
    assert groups(later) == {
        frozenset({"email:ann@x.com"}),
        frozenset({"crm_contact_id:hubspot:456"}),
    }
    assert sorted(later.blocked["value"].to_pylist()) == ["bob@x.com", "hubspot:123"]
    # the bare value blocks it too
    bare = pa.table({"id_type": ["crm_contact_id"], "id_value": ["456"]})
    assert "crm_contact_id:hubspot:456" not in str(
        groups(run(cfg, inputs, state=later.state, run_id="r3", blocklist=bare))
    )


def test_case_29_same_value_different_types() -> None:
    result = run(
        config(),
        {
            "app_users": rows({"user_id": "123"}),
            "crm_contacts": rows({"crm_contact_id": "123"}),
        },
    )
    assert groups(result) == {frozenset({"user_id:123"}), frozenset({"crm_contact_id:hubspot:123"})}


def test_case_31_recycled_phone_goes_to_the_latest_owner() -> None:
    result = run(
        config(),
        {
            "crm_contacts": rows(
                {"phone": "+1 415 555 2671", "user_id": "u1", "ts": 1},
                {"phone": "(415) 555-2671", "user_id": "u9", "ts": 700},
            )
        },
    )
    assert profile_of(result, "phone", "+14155552671") == profile_of(result, "user_id", "u9")
    [q] = result.quarantine.to_pylist()
    assert q["policy"] == "keep_latest"


def test_case_34_manual_force_merge() -> None:
    cfg = config()
    inputs = {"app_users": rows({"user_id": "u1", "ts": 1}, {"user_id": "u2", "ts": 2})}
    first = run(cfg, inputs)
    second = run(
        cfg,
        inputs,
        state=first.state,
        run_id="r2",
        overrides=pa.table(
            {
                "action": ["include"],
                "type_a": ["user_id"],
                "value_a": ["u1"],
                "type_b": ["user_id"],
                "value_b": ["u2"],
                "reason": ["account re-created"],
            }
        ),
    )
    assert second.profiles.num_rows == 1
    [merge] = second.merges.to_pylist()
    assert merge["cause"] == "forced"


def test_case_36_merge_circuit_breaker() -> None:
    cfg = config(
        identifier_types=no_exemption(),
        sources=[
            {
                "name": "newsletter",
                "table": "l",
                "trust": 2,
                "mode": "append_only",
                "columns": {"email": "email", "other": "email"},
            }
        ],
        customerio={"merge_policy": {"max_merges_per_run": 1}},
    )
    first = run(
        cfg,
        {
            "newsletter": rows(
                {"email": "a@x.com", "other": None}, {"email": "b@x.com"}, {"email": "c@x.com"}
            )
        },
    )
    second = run(
        cfg,
        {
            "newsletter": rows(
                {"email": "a@x.com", "other": "b@x.com"}, {"email": "a@x.com", "other": "c@x.com"}
            )
        },
        state=first.state,
        run_id="r2",
    )
    exists = {("email", e) for e in ("a@x.com", "b@x.com", "c@x.com")}
    with pytest.raises(ContractError) as err:
        plan_customerio(second, cfg, exists=exists)
    assert "max_merges_per_run" in str(err.value) and err.value.hint


def test_case_37_identify_then_merge_race_identifies_the_survivor() -> None:
    cfg = config()
    first = run(cfg, {"newsletter": rows({"email": "old@x.com"})})
    second = run(
        cfg,
        {"app_users": rows({"user_id": "u9", "email": "old@x.com", "ts": 3})},
        state=first.state,
        run_id="r2",
    )
    assert second.merges.num_rows == 0
    plan = plan_customerio(second, cfg, exists={("email", "old@x.com")})
    assert ops_of(plan, "merge") == []
    [identify] = ops_of(plan, "identify")
    assert (
        identify["identifiers"] == {"id": "u9"} and identify["attributes"]["email"] == "old@x.com"
    )


def test_a_sync_skips_the_customerio_plan_only_when_it_can_hold_no_merge() -> None:
    """A sync builds the graph's Customer.io plan only for its merges; it skips building it
    when the run merged no profiles and no profile holds two Customer.io people. Each case
    here checks that the skip agrees with what the full plan holds."""
    from lockgate.identity import Resolver
    from lockgate.sync.resolve import Resolution, _may_merge

    cfg = config()
    everyone = {("cio_id", "X"), ("cio_id", "Y"), ("id", "u1"), ("id", "u2")}
    everyone |= {("email", "e1@x.com"), ("email", "e2@x.com")}
    app = rows({"user_id": "u1", "email": "e1@x.com", "ts": 1})
    plain = run(cfg, {"app_users": app})
    duplicates = run(
        cfg,
        {
            "customerio_people": rows(
                {"cio_id": "X", "user_id": "u1"}, {"cio_id": "Y", "email": "e1@x.com"}
            ),
            "app_users": app,
        },
    )
    apart = {
        "app_users": rows({"user_id": "u2", "email": "e2@x.com", "ts": 1}),
        "newsletter": rows({"email": "e1@x.com", "ts": 1}),
    }
    first = run(cfg, apart)
    joined = run(
        cfg,
        {
            **apart,
            "app_users": rows(
                {"user_id": "u2", "email": "e2@x.com", "ts": 1},
                {"user_id": "u2", "email": "e1@x.com", "ts": 2},
            ),
        },
        state=first.state,
        run_id="r2",
    )
    cases = {"plain": plain, "cio duplicates": duplicates, "joined": joined}
    seen = {}
    for name, result in cases.items():
        merges = ops_of(plan_customerio(result, cfg, exists=everyone), "merge")
        seen[name] = (_may_merge(Resolution(cfg, result, Resolver(cfg, result))), bool(merges))
    assert seen == {"plain": (False, False), "cio duplicates": (True, True), "joined": (True, True)}
