"""Customer.io planning rules beyond the catalogue: merge once, weak evidence, merges disabled."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.identity.helpers import config, profile_of, rows, run

from lockgate.errors import ContractError
from lockgate.identity import IdentityState, plan_customerio
from lockgate.identity.customerio import (
    merge_addresses,
    profile_attribute_columns,
    profile_attributes,
    readdress_ops,
)

EXISTS = {("id", "u1"), ("email", "lead@x.com")}


def merged_pair(trust_source: str, run_id: str = "r2", **changes):  # type: ignore[no-untyped-def]
    cfg = config(**changes)
    first = run(
        cfg,
        {
            "app_users": rows({"user_id": "u1", "ts": 1}),
            "newsletter": rows({"email": "lead@x.com"}),
        },
    )
    second = run(
        cfg,
        {trust_source: rows({"user_id": "u1", "email": "lead@x.com", "ts": 2})},
        state=first.state,
        run_id=run_id,
    )
    assert second.merges.num_rows == 1
    return cfg, second


def test_a_merge_is_planned_once_with_a_stable_idempotency_key() -> None:
    """The same merge has the same key when planned again, and when the run is stitched
    again from the same saved graph under another run id (a run killed once the merge was
    delivered, before its graph was saved): the next run finds it delivered."""
    cfg, second = merged_pair("crm_contacts")
    plan = plan_customerio(second, cfg, exists=EXISTS)
    again = plan_customerio(second, cfg, exists=EXISTS)
    assert [op.key for op in plan.merges] == [op.key for op in again.merges]
    _, rerun = merged_pair("crm_contacts", run_id="r2-after-a-kill")
    rerun_plan = plan_customerio(rerun, cfg, exists=EXISTS)
    assert [op.key for op in rerun_plan.merges] == [op.key for op in plan.merges]
    assert len(plan.merges) == 1
    assert plan.merge_outcomes["outcome"].to_pylist() == ["merged"]
    third = run(cfg, {}, state=second.state, run_id="r3")
    assert plan_customerio(third, cfg, exists=EXISTS).merges == []


def test_weak_evidence_holds_the_merge_for_review() -> None:
    """The merge is not planned; it is kept, as it would have been sent, in `held_merges`
    (a sync lists it and holds back the rows Customer.io would drop), not in
    `skipped_merges` (merges off)."""
    cfg, second = merged_pair("identifies")  # rank 3 > min_path_rank 2
    plan = plan_customerio(second, cfg, exists=EXISTS)
    assert plan.merges == []
    assert plan.merge_outcomes["outcome"].to_pylist() == ["held_for_review"]
    assert [(op.payload["primary"], op.payload["secondary"]) for op in plan.held_merges] == [
        ({"id": "u1"}, {"email": "lead@x.com"})
    ]
    assert plan.skipped_merges == ()
    assert (plan.counts["merges"], plan.counts["merges_held"]) == (0, 1)


def test_merges_can_be_switched_off() -> None:
    cfg, second = merged_pair("crm_contacts", customerio={"merge_policy": {"enabled": False}})
    plan = plan_customerio(second, cfg, exists=EXISTS)
    assert plan.merges == [] and plan.merge_outcomes["outcome"].to_pylist() == ["skipped_disabled"]


def test_no_merge_when_the_absorbed_profile_is_not_a_person() -> None:
    cfg, second = merged_pair("crm_contacts")
    plan = plan_customerio(second, cfg, exists={("id", "u1")})
    assert plan.merges == [] and plan.merge_outcomes["outcome"].to_pylist() == ["skipped_no_cio"]


def returning_user(back_with=None, **changes):  # type: ignore[no-untyped-def]
    """A user and a lead known by email alone; the lead's row leaves, then the user's, and
    the user comes back with the lead's email (or with the rows ``back_with``): their profile
    is the lead's, gaining the user's `id`, which a person holds already (a merge of the
    lead's person into it)."""
    cfg = config(**changes)
    first = run(
        cfg,
        {"app_users": rows({"user_id": "u1", "email": "a@x.com", "ts": 1}, {"email": "l@x.com"})},
    )
    second = run(
        cfg,
        {"app_users": rows({"user_id": "u1", "email": "a@x.com", "ts": 2})},
        state=first.state,
        run_id="r2",
    )
    third = run(cfg, {"app_users": rows({"email": "z@x.com", "ts": 3})}, state=second.state)
    back = run(
        cfg,
        back_with or {"app_users": rows({"user_id": "u1", "email": "l@x.com", "ts": 4})},
        state=third.state,
        run_id="r4",
    )
    return cfg, back


RETURNING = {("id", "u1"), ("email", "l@x.com"), ("email", "a@x.com")}
LEAD_INTO_USER = {
    "type": "person",
    "action": "merge",
    "primary": {"id": "u1"},
    "secondary": {"email": "l@x.com"},
}


def test_a_returning_users_merge_counts_towards_the_limit() -> None:
    """The merge of a lead's person into a returning user's is a merge like any other: it
    counts towards `max_merges_per_run` (a storm of them stops the run) and in the plan."""
    cfg, back = returning_user(customerio={"merge_policy": {"max_merges_per_run": 0}})
    with pytest.raises(ContractError, match="would merge `1` Customer.io people"):
        plan_customerio(back, cfg, exists=RETURNING)
    plan = plan_customerio(back, cfg, exists=RETURNING, limit_merges=False)
    assert [op.payload for op in plan.merges] == [LEAD_INTO_USER]
    assert plan.counts["merges"] == 1
    assert plan.merge_outcomes["outcome"].to_pylist() == ["merged"]


@pytest.mark.parametrize(
    "evidence",
    ["identifies", "app_users"],
    ids=["an identify joins the lead's email (rank 3)", "the user's row gives it (rank 1)"],
)
def test_a_returning_users_merge_on_weak_evidence_is_held_for_review(evidence: str) -> None:
    """A user who comes back with an email of their own while an identify (rank 3, weaker
    than `min_path_rank` 2) joins them to a retired lead's: the merge of the lead's person
    into theirs is judged by that evidence, as a merge of two profiles is, and held for
    review (`held_merges`, outcome `held_for_review`), not sent. Their own row giving the
    lead's email (rank 1) merges."""
    user = {"user_id": "u1", "email": "b@x.com", "ts": 4}
    link = {"user_id": "u1", "email": "l@x.com", "ts": 4}
    back_with = (
        {"app_users": rows(user), "identifies": rows(link)}
        if evidence == "identifies"
        else {"app_users": rows(user, link)}
    )
    cfg, back = returning_user(back_with)
    assert profile_of(back, "user_id", "u1") == profile_of(back, "email", "l@x.com")
    plan = plan_customerio(back, cfg, exists=RETURNING)
    if evidence == "identifies":
        assert plan.merges == []
        assert [op.payload for op in plan.held_merges] == [LEAD_INTO_USER]
        assert plan.merge_outcomes["outcome"].to_pylist() == ["held_for_review"]
        assert (plan.counts["merges"], plan.counts["merges_held"]) == (0, 1)
    else:
        assert [op.payload for op in plan.merges] == [LEAD_INTO_USER]
        assert plan.held_merges == ()


def test_merges_off_keep_back_a_returning_users_merge() -> None:
    """With `merge_policy.enabled: false` the lead's person is not merged into the returning
    user's: the plan keeps the merge back (`skipped_merges`, outcome `skipped_disabled`) and
    sends no merge, nor counts one towards the limit."""
    cfg, back = returning_user(
        customerio={"merge_policy": {"enabled": False, "max_merges_per_run": 0}}
    )
    plan = plan_customerio(back, cfg, exists=RETURNING)
    assert plan.merges == []
    assert [op.payload for op in plan.skipped_merges] == [LEAD_INTO_USER]
    assert plan.merge_outcomes["outcome"].to_pylist() == ["skipped_disabled"]
    assert (plan.counts["merges"], plan.counts["merges_skipped"]) == (0, 1)


def test_merges_off_keep_imported_duplicates_apart() -> None:
    """A profile holding two imported Customer.io people, one with the user's `id` and one
    with their email: merges off, no merge, and the profile's identify goes to the person of
    its `id` without the email the other holds (Customer.io would drop the whole update)."""
    cfg = config(customerio={"merge_policy": {"enabled": False}})
    result = run(
        cfg,
        {
            "customerio_people": rows(
                {"cio_id": "X", "user_id": "u1"}, {"cio_id": "Y", "email": "e1@x.com"}
            ),
            "app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1}),
        },
    )
    plan = plan_customerio(result, cfg, exists={("cio_id", "X"), ("cio_id", "Y")})
    assert plan.merges == []
    assert [op.payload for op in plan.skipped_merges] == [
        {
            "type": "person",
            "action": "merge",
            "primary": {"cio_id": "X"},
            "secondary": {"cio_id": "Y"},
        }
    ]
    assert plan.merge_outcomes["outcome"].to_pylist() == ["skipped_disabled"]
    assert [op.payload for op in plan.ops] == [
        {"type": "person", "action": "identify", "identifiers": {"id": "u1"}, "attributes": {}}
    ]


def merge_runs():  # type: ignore[no-untyped-def]
    """Four leads merged into one user, a lead pair merged, then that pair merged into a
    second user a run later (a survivor absorbed); other profiles unchanged throughout."""
    cfg = config()
    users = [{"user_id": "u1", "email": "s@x.com", "ts": 1}]
    users += [{"user_id": "u2", "email": "t@x.com", "ts": 1}]
    users += [{"user_id": f"o{i}", "email": f"o{i}@x.com", "ts": 1} for i in range(5)]
    leads = rows(*({"email": f"e{i}@x.com"} for i in range(1, 7)))
    first = run(cfg, {"app_users": rows(*users), "newsletter": leads})
    linked = users + [{"user_id": "u1", "email": f"e{i}@x.com", "ts": 2} for i in range(1, 5)]
    crm = rows(
        {"crm_contact_id": "c9", "email": "e5@x.com", "ts": 2},
        {"crm_contact_id": "c9", "email": "e6@x.com", "ts": 2},
    )
    inputs = {"app_users": rows(*linked), "newsletter": leads, "crm_contacts": crm}
    second = run(cfg, inputs, state=first.state, run_id="r2")
    inputs["app_users"] = rows(*linked, {"user_id": "u2", "email": "e5@x.com", "ts": 3})
    third = run(cfg, inputs, state=second.state, run_id="r3")
    return cfg, second, third


EVERYONE = {("id", u) for u in ("u1", "u2")} | {("email", f"e{i}@x.com") for i in range(1, 7)}


def test_many_merges_into_one_survivor_and_merges_chained_across_runs() -> None:
    cfg, second, third = merge_runs()
    assert (second.merges.num_rows, third.merges.num_rows) == (5, 1)
    exists = EVERYONE - {("email", "e3@x.com")}  # e3 never became a Customer.io person
    plan = plan_customerio(second, cfg, exists=exists)
    into_u1 = [m.payload for m in plan.merges if m.payload["primary"] == {"id": "u1"}]
    assert sorted(m["secondary"]["email"] for m in into_u1) == [
        "e1@x.com",
        "e2@x.com",
        "e4@x.com",
    ]
    assert sorted(plan.merge_outcomes["outcome"].to_pylist()) == [
        "merged",
        "merged",
        "merged",
        "merged",
        "skipped_no_cio",
    ]
    # the lead pair's survivor is absorbed by u2 a run later: one merge, into u2's person
    [later] = plan_customerio(third, cfg, exists=exists).merges
    assert later.payload["primary"] == {"id": "u2"}
    assert later.payload["secondary"]["email"] in ("e5@x.com", "e6@x.com")


def test_a_plan_of_the_merged_profiles_only_is_the_whole_plan_for_them() -> None:
    cfg, second, third = merge_runs()
    for result in (second, third):
        for exists in (EVERYONE, set(), EVERYONE - {("id", "u1")}):
            whole = plan_customerio(result, cfg, exists=exists)
            merged = plan_customerio(result, cfg, exists=exists, merged_only=True)
            survivors = set(result.merges["profile_id"].to_pylist())
            assert merged.ops == tuple(
                op
                for op in whole.ops
                if op.payload["action"] == "merge" or op.profile_id in survivors
            )
            assert merged.merge_outcomes.equals(whole.merge_outcomes)
            assert merged.counts["merges"] == whole.counts["merges"]
            # the whole plan identifies the other changed profiles too: the sync does not
            assert {op.profile_id for op in merged.ops} == survivors


def test_a_plan_of_the_merged_profiles_asks_only_about_their_addresses() -> None:
    """A sync looks up in its deliveries only the people `merge_addresses` names: the plan
    must ask about no one else, or a person who exists would be taken for a missing one."""
    cfg, second, third = merge_runs()
    duplicates = run(
        cfg,
        {
            "customerio_people": rows(
                {"cio_id": "X", "user_id": "u1"}, {"cio_id": "Y", "email": "e1@x.com"}
            ),
            "app_users": rows({"user_id": "u1", "email": "e1@x.com", "ts": 1}),
        },
    )
    for result in (second, third, duplicates):
        asked: set[tuple[str, str]] = set()

        def exists(kind: str, value: str, asked: set[tuple[str, str]] = asked) -> bool:
            asked.add((kind, value))
            return True

        plan = plan_customerio(result, cfg, exists=exists, merged_only=True)
        assert plan.merges
        assert asked <= merge_addresses(result, cfg)
        if result is not duplicates:  # a first run has no previous person to look up
            assert asked


def by_name(attrs: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for pid, values in attrs.items():
        for name, value in values.items():
            out.setdefault(name, {})[pid] = value
    return out


def test_the_graph_attributes_as_columns_are_those_of_each_profile() -> None:
    """A people sync reads the graph's attributes as columns: latest value seen, a moved
    Stripe id cleared on the person who lost it, a contested email set then cleared."""
    cfg = config()
    users = [
        {"user_id": "u1", "ts": 1},
        {"user_id": "u2", "ts": 1},
        {"user_id": "u6", "email": "fam@x.com", "ts": 1},
        {"user_id": "u7", "email": "fam@x.com", "ts": 2},
    ]
    stripe = [
        {"stripe_customer_id": "cus_9", "user_id": "u1", "ts": 1},
        {"stripe_customer_id": "cus_8a", "user_id": "u8", "ts": 1},
        {"stripe_customer_id": "cus_8b", "user_id": "u8", "ts": 3},
    ]
    crm = [{"crm_contact_id": "c5", "user_id": "u5", "phone": "+1555", "ts": 1}]
    inputs = {"app_users": rows(*users), "stripe_customers": rows(*stripe)}
    inputs["crm_contacts"] = rows(*crm)
    first = run(cfg, inputs)
    inputs["stripe_customers"] = rows(
        {"stripe_customer_id": "cus_9", "user_id": "u2", "ts": 5}, *stripe[1:]
    )
    inputs["app_users"] = rows(*users[:3], {"user_id": "u7", "email": "own@x.com", "ts": 4})
    second = run(cfg, inputs, state=first.state, run_id="r2")
    assert first.refused.num_rows and second.lost.num_rows and second.contested.num_rows
    for result in (first, second):
        columns = {
            name: dict(zip(t["profile_id"].to_pylist(), t["value"].to_pylist(), strict=True))
            for name, t in profile_attribute_columns(result, cfg).items()
        }
        assert {n: v for n, v in columns.items() if v} == by_name(profile_attributes(result, cfg))
    got = {n: set(v.values()) for n, v in by_name(profile_attributes(second, cfg)).items()}
    assert got["stripe_customer_id"] == {"cus_9", "cus_8b", ""}
    assert got["contested_email"] == {""}


def test_a_person_known_by_email_alone_is_given_the_id_its_profile_gained() -> None:
    """A lead (a person by email alone) whose profile gains a user id with another email:
    the person is first given the `id` by an identify carrying the email it holds, then the
    profile's identify by the `id` changes the email; by the new `id` and email alone,
    Customer.io would find nobody and create a second person."""
    cfg = config()
    first = run(cfg, {"newsletter": rows({"email": "lead@x.com"})})
    second = run(
        cfg,
        {
            "app_users": rows({"user_id": "u1", "email": "new@x.com", "ts": 2}),
            "crm_contacts": rows({"user_id": "u1", "email": "lead@x.com", "ts": 2}),
        },
        state=first.state,
        run_id="r2",
    )
    assert second.merges.num_rows == 0  # one profile all along: the lead's
    plan = plan_customerio(second, cfg, exists={("email", "lead@x.com")})
    identifies = [op.payload for op in plan.ops if op.payload["action"] == "identify"]
    assert [(p["identifiers"], p["attributes"].get("email")) for p in identifies] == [
        ({"id": "u1"}, "lead@x.com"),
        ({"id": "u1"}, "new@x.com"),
    ]
    # once the person holds the `id`, nothing more to give
    third = run(cfg, {}, state=second.state, run_id="r3")
    assert plan_customerio(third, cfg, exists={("id", "u1")}).ops == ()


def test_a_lead_merged_into_another_leads_person_is_never_given_the_id_first() -> None:
    """Two leads (people by email alone) whose profiles merge as they gain a user id, the
    user's email being the other lead's: the merge folds the first lead's person into the
    second's (the one holding the profile's email), and the survivor's identify by the `id`
    gives it the `id`. The first lead's person is not given the `id` before: a merge deletes
    its secondary, and a person with an `id` is never merged away."""
    cfg = config()
    first = run(cfg, {"newsletter": rows({"email": "a@x.com"}, {"email": "b@x.com"})})
    second = run(
        cfg,
        {
            "app_users": rows({"user_id": "u1", "email": "b@x.com", "ts": 2}),
            "crm_contacts": rows({"user_id": "u1", "email": "a@x.com", "ts": 2}),
        },
        state=first.state,
        run_id="r2",
    )
    assert second.merges.num_rows == 1
    plan = plan_customerio(second, cfg, exists={("email", "a@x.com"), ("email", "b@x.com")})
    merges = [(op.payload["primary"], op.payload["secondary"]) for op in plan.merges]
    assert merges == [({"email": "b@x.com"}, {"email": "a@x.com"})]
    identifies = [op.payload for op in plan.ops if op.payload["action"] == "identify"]
    assert [(p["identifiers"], p["attributes"].get("email")) for p in identifies] == [
        ({"id": "u1"}, "b@x.com")
    ]


def _retired_lead(tmp_path: Path | None = None):  # type: ignore[no-untyped-def]
    """A lead (a person by email alone) whose row left; a user `u1` beside it. The state
    goes through Parquet when ``tmp_path`` is given."""
    cfg = config()
    first = run(
        cfg,
        {
            "app_users": rows({"user_id": "u1", "email": "u1@x.com", "ts": 1}),
            "crm_contacts": rows({"email": "lead@x.com", "ts": 1}),
        },
    )
    gone = run(cfg, {"crm_contacts": rows(columns=["email", "ts"])}, state=first.state, run_id="r2")
    assert gone.profiles.num_rows == 1  # the lead's profile is heir to nothing
    state = gone.state
    if tmp_path is not None:
        state.write(tmp_path / "identity")
        read = IdentityState.read(tmp_path / "identity")
        assert read is not None
        state = read
    lead = profile_of(first, "email", "lead@x.com")
    assert state.retired["profile_id"].to_pylist() == [lead]
    return cfg, first, state, lead


def test_a_lead_whose_row_left_is_merged_into_the_user_its_email_joins(tmp_path: Path) -> None:
    """A lead's row leaves (its person stays in Customer.io); later a link says its address
    is a user's: the lead's person is merged into the user's, as when two profiles that are
    both people join, rather than left beside it as a second person."""
    cfg, first, state, lead = _retired_lead(tmp_path)
    user = profile_of(first, "user_id", "u1")
    third = run(
        cfg,
        {"crm_contacts": rows({"user_id": "u1", "email": "lead@x.com", "ts": 3})},
        state=state,
        run_id="r3",
    )
    assert [(m["profile_id"], m["absorbed_profile_id"]) for m in third.merges.to_pylist()] == [
        (user, lead)
    ]
    assert third.merges["cause"].to_pylist() == ["merge"]  # the link that joined them
    assert third.aliases.select(["old_profile_id", "profile_id"]).to_pylist() == [
        {"old_profile_id": lead, "profile_id": user}
    ]
    assert third.retired.num_rows == 0  # taken over: not retired any more
    exists = {("id", "u1"), ("email", "lead@x.com")}
    plan = plan_customerio(third, cfg, exists=exists)
    assert [op.payload for op in plan.merges] == [
        {
            "type": "person",
            "action": "merge",
            "primary": {"id": "u1"},
            "secondary": {"email": "lead@x.com"},
        }
    ]
    assert ("email", "lead@x.com") in merge_addresses(third, cfg)
    # a person deleted meanwhile (`delete_removed`) is not merged
    gone = plan_customerio(third, cfg, exists={("id", "u1")})
    assert gone.merges == [] and gone.merge_outcomes["outcome"].to_pylist() == ["skipped_no_cio"]


def test_a_lead_whose_row_left_and_came_back_is_its_old_profile() -> None:
    """Its email back alone, the retired lead is its profile again (same id, same person
    addressed by the email it holds); a user's retired profile is never remembered this way
    (two user ids are never one person)."""
    cfg, _, state, lead = _retired_lead()
    back = run(
        cfg,
        {"crm_contacts": rows({"email": "lead@x.com", "ts": 3})},
        state=state,
        run_id="r3",
    )
    assert profile_of(back, "email", "lead@x.com") == lead
    assert back.merges.num_rows == 0 and back.retired.num_rows == 0
    plan = plan_customerio(back, cfg, exists={("email", "lead@x.com")})
    assert [op.payload["identifiers"] for op in plan.ops if op.profile_id == lead] == []
    # the user leaves: not remembered as a retired profile
    left = run(cfg, {"app_users": rows(columns=["user_id", "email", "ts"])}, state=back.state)
    assert left.retired.num_rows == 0


def test_a_retired_lead_joining_a_live_lead_is_merged_into_it() -> None:
    """The live lead's person, the one its rows reach, is the one kept."""
    cfg, _, state, lead = _retired_lead()
    live = run(cfg, {"newsletter": rows({"email": "other@x.com"})}, state=state, run_id="r3")
    other = profile_of(live, "email", "other@x.com")
    assert other != lead and live.retired["profile_id"].to_pylist() == [lead]
    joined = run(
        cfg,
        {
            "stripe_customers": rows(
                {"stripe_customer_id": "cus_1", "email": "other@x.com", "ts": 4},
                {"stripe_customer_id": "cus_1", "email": "lead@x.com", "ts": 4},
            ),
        },
        state=live.state,
        run_id="r4",
    )
    assert profile_of(joined, "email", "lead@x.com") == other
    assert joined.merges.select(["profile_id", "absorbed_profile_id"]).to_pylist() == [
        {"profile_id": other, "absorbed_profile_id": lead}
    ]
    plan = plan_customerio(joined, cfg, exists={("email", "other@x.com"), ("email", "lead@x.com")})
    assert [(op.payload["primary"], op.payload["secondary"]) for op in plan.merges] == [
        ({"email": "other@x.com"}, {"email": "lead@x.com"})
    ]


def test_a_retired_lead_whose_email_joins_a_new_user_is_given_the_users_id() -> None:
    """A user new to the graph signs up with another address, linked to a retired lead's:
    the profile is the lead's again, and its person is given the user's `id` first (as any
    lead whose profile gains an `id`), not left beside a new person for the user."""
    cfg, _, state, lead = _retired_lead()
    third = run(
        cfg,
        {
            "app_users": rows(
                {"user_id": "u1", "email": "u1@x.com", "ts": 3},
                {"user_id": "u5", "email": "new@x.com", "ts": 3},
            ),
            "crm_contacts": rows({"user_id": "u5", "email": "lead@x.com", "ts": 3}),
        },
        state=state,
        run_id="r3",
    )
    assert profile_of(third, "user_id", "u5") == lead and third.merges.num_rows == 0
    plan = plan_customerio(third, cfg, exists={("email", "lead@x.com"), ("id", "u1")})
    identifies = [op.payload for op in plan.ops if op.profile_id == lead]
    assert [(p["identifiers"], p["attributes"].get("email")) for p in identifies] == [
        ({"id": "u5"}, "lead@x.com"),
        ({"id": "u5"}, "new@x.com"),
    ]


def test_a_person_known_by_email_alone_whose_own_email_left_keeps_one_person() -> None:
    """A lead (a person by email alone) whose profile gains a second address, then loses its
    own: the profile is the same, and so must its person be. Customer.io changes an email
    only by `cio_id`: known (a sync looks it up through the App API), the person is given
    the new address by it; else it is merged into a person created under the new address
    (or the one holding it), which the profile's identify then reaches by it. Nothing when
    the old person is not known to exist, nor once the profile holds the new address."""
    cfg = config()
    first = run(cfg, {"crm_contacts": rows({"email": "old@x.com", "ts": 1})})
    both = rows(
        {"email": "old@x.com", "crm_contact_id": "c1", "ts": 2},
        {"email": "new@x.com", "crm_contact_id": "c1", "ts": 2},
    )
    second = run(cfg, {"crm_contacts": both}, state=first.state, run_id="r2")
    third = run(
        cfg,
        {"crm_contacts": rows({"email": "new@x.com", "crm_contact_id": "c1", "ts": 3})},
        state=second.state,
        run_id="r3",
    )
    assert profile_of(third, "email", "new@x.com") == profile_of(first, "email", "old@x.com")

    def sent(ops):  # type: ignore[no-untyped-def]
        return [
            (op.payload["action"], op.payload.get("identifiers") or op.payload["secondary"])
            for op in ops
        ]

    old = {("email", "old@x.com")}
    by_cio_id = readdress_ops(third, lambda k, v: (k, v) in old, {"old@x.com": "c0ffee"})
    assert [op.payload for op in by_cio_id] == [
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"cio_id": "c0ffee"},
            "attributes": {"email": "new@x.com"},
        }
    ]
    merged = readdress_ops(third, lambda k, v: (k, v) in old)
    assert sent(merged) == [("identify", {"email": "new@x.com"}), ("merge", {"email": "old@x.com"})]
    assert merged[1].payload["primary"] == {"email": "new@x.com"}
    # a person known to hold the new email is identified first all the same: it may have
    # been merged away since its row was delivered (an identify changes nothing if not)
    held = old | {("email", "new@x.com")}
    assert sent(readdress_ops(third, lambda k, v: (k, v) in held)) == sent(merged)
    assert readdress_ops(third, lambda k, v: False) == []
    # `merge_policy.enabled: false` sends no merge: the `cio_id` path alone stands
    assert readdress_ops(third, lambda k, v: (k, v) in old, merges=False) == []
    kept = readdress_ops(third, lambda k, v: (k, v) in old, {"old@x.com": "c0ffee"}, merges=False)
    assert [op.payload for op in kept] == [op.payload for op in by_cio_id]
    # the graph's whole plan: the merge path, then the profile's identify by the new address
    plan = plan_customerio(third, cfg, exists=old)
    assert sent(plan.ops) == sent(merged) + [("identify", {"email": "new@x.com"})]
    fourth = run(cfg, {}, state=third.state, run_id="r4")
    assert readdress_ops(fourth, lambda k, v: True) == []
