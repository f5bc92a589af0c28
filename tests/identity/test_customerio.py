"""Customer.io planning rules beyond the catalogue: merge once, weak evidence, merges disabled."""

from __future__ import annotations

from tests.identity.helpers import config, rows, run

from lockgate.identity import plan_customerio

EXISTS = {("id", "u1"), ("email", "lead@x.com")}


def merged_pair(trust_source: str, **changes):  # type: ignore[no-untyped-def]
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
        run_id="r2",
    )
    assert second.merges.num_rows == 1
    return cfg, second


def test_a_merge_is_planned_once_with_a_stable_idempotency_key() -> None:
    cfg, second = merged_pair("crm_contacts")
    plan = plan_customerio(second, cfg, exists=EXISTS)
    again = plan_customerio(second, cfg, exists=EXISTS)
    assert [op.key for op in plan.merges] == [op.key for op in again.merges]
    assert len(plan.merges) == 1
    assert plan.merge_outcomes["outcome"].to_pylist() == ["merged"]
    third = run(cfg, {}, state=second.state, run_id="r3")
    assert plan_customerio(third, cfg, exists=EXISTS).merges == []


def test_weak_evidence_holds_the_merge_for_review() -> None:
    cfg, second = merged_pair("identifies")  # rank 3 > min_path_rank 2
    plan = plan_customerio(second, cfg, exists=EXISTS)
    assert plan.merges == []
    assert plan.merge_outcomes["outcome"].to_pylist() == ["held_for_review"]


def test_merges_can_be_switched_off() -> None:
    cfg, second = merged_pair("crm_contacts", customerio={"merge_policy": {"enabled": False}})
    plan = plan_customerio(second, cfg, exists=EXISTS)
    assert plan.merges == [] and plan.merge_outcomes["outcome"].to_pylist() == ["skipped_disabled"]


def test_no_merge_when_the_absorbed_profile_is_not_a_person() -> None:
    cfg, second = merged_pair("crm_contacts")
    plan = plan_customerio(second, cfg, exists={("id", "u1")})
    assert plan.merges == [] and plan.merge_outcomes["outcome"].to_pylist() == ["skipped_no_cio"]
