"""A sync file edited so that no payload changes (a spelling, an order, a default written out)
sends nothing; an edit that can change a payload still sends each record once."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.state.store import StateStore, table
from lockgate.sync.mapping import MAPPING_VERSION, q, shaping
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id, email: email}
attributes:
  plan: plan
  seats: {column: seats, type: integer}
  promo: {column: promo, on_null: clear}
"""

USERS = """
create or replace table users as
select i as user_id, 'u' || i || '@example.com' as email,
       case when i % 2 = 0 then 'pro' else 'free' end as plan, i as seats,
       case when i % 3 = 0 then null else 'P' || i end as promo, 'emea' as region
from range(1, 21) t(i);
"""

ATTRIBUTES = """\
  plan: plan
  seats: {column: seats, type: integer}
  promo: {column: promo, on_null: clear}
"""

#: edits that send the same payload for every row
SAME_PAYLOADS = {
    "primary key as a list": PROFILE.replace("primary_key: user_id", "primary_key: [user_id]"),
    "identify_by reordered": PROFILE.replace(
        "{id: user_id, email: email}", "{email: email, id: user_id}"
    ),
    "identify_by `user_id` for `id`": PROFILE.replace(
        "{id: user_id, email: email}", "{user_id: user_id, email: email}"
    ),
    "attributes reordered": PROFILE.replace(
        ATTRIBUTES,
        "  promo: {column: promo, on_null: clear}\n  seats: {column: seats, type: integer}\n"
        "  plan: plan\n",
    ),
    "column left out": PROFILE.replace("{column: seats, type: integer}", "{type: integer}"),
    "the sync's null policy written on a field": PROFILE.replace(
        "plan: plan", "plan: {column: plan, on_null: skip}"
    ),
    "the default mode written": PROFILE + "mode: upsert\n",
    "a default without `on_null: default`": PROFILE.replace(
        "plan: plan", "plan: {column: plan, default: free}"
    ),
    "the identify_by email as an attribute": PROFILE + "  email: email\n",
    "a guardrail": PROFILE + "guardrails: {max_changed: 5}\n",
}

#: edits that can change a payload: each record is sent again once (attribute and value
#: sent to person 3)
NEW_PAYLOADS = {
    "an attribute added": (PROFILE + "  region: region\n", "region", "emea"),
    "a type changed": (
        PROFILE.replace("{column: seats, type: integer}", "{column: seats, type: string}"),
        "seats",
        "3",
    ),
    "a constant added": (PROFILE + "  source: {value: warehouse}\n", "source", "warehouse"),
    "a null policy changed": (
        PROFILE.replace("on_null: clear}", "on_null: default, default: none}"),
        "promo",
        "none",
    ),
}


def batches(emu: Emulator) -> int:
    return sum(1 for r in emu.request_log() if r.path == "/api/v2/batch")


def first_run(project_factory: ProjectFactory, body: str = PROFILE) -> Any:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": body})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 20
    return project


def sends_nothing(project_factory: ProjectFactory, body: str) -> None:
    """``body`` written over the sync file: the plan sends nothing and names no mapping
    change; the run sends no request and the people in the emulator stay as they were."""
    emu = project_factory.emulator
    people, sent = emu.people(), batches(emu)
    project = project_factory.write({"profile": body})
    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.changes.to_send == 0 and plan.changes.remapped == 0
    assert {g.name: g.actual for g in plan.guards}["mapping"] == "unchanged"
    assert run_sync(project, "profile", console=NullConsole()).delivered == 0
    assert batches(emu) == sent and emu.people() == people


@pytest.mark.parametrize("edit", list(SAME_PAYLOADS))
def test_an_edit_that_changes_no_payload_sends_nothing(
    project_factory: ProjectFactory, edit: str
) -> None:
    first_run(project_factory)
    sends_nothing(project_factory, SAME_PAYLOADS[edit])
    # and back: the first spelling sends nothing either
    sends_nothing(project_factory, PROFILE)


@pytest.mark.parametrize("edit", list(NEW_PAYLOADS))
def test_an_edit_that_changes_payloads_still_sends_each_record_once(
    project_factory: ProjectFactory, edit: str
) -> None:
    emu = project_factory.emulator
    first_run(project_factory)
    body, attribute, value = NEW_PAYLOADS[edit]
    project = project_factory.write({"profile": body})
    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.changes.changed == 20 and plan.changes.remapped == 20
    assert run_sync(project, "profile", console=NullConsole()).delivered == 20
    person = emu.person(id="3")  # promo null: cleared, or the default
    assert person is not None and person.attributes[attribute] == value
    assert plan_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_an_objects_key_written_as_a_list_sends_nothing(project_factory: ProjectFactory) -> None:
    emu = project_factory.emulator
    project_factory.sql(
        "create or replace table accounts as "
        "select 'acc' || i as account_id, 'Account ' || i as name from range(1, 6) t(i)"
    )
    accounts = """
name: accounts
source: warehouse
model: {table: accounts}
kind: objects
object_type_id: "1"
primary_key: account_id
attributes: [name]
"""
    project = project_factory.write({"accounts": accounts})
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 5
    sent = batches(emu)
    project = project_factory.write(
        {
            "accounts": accounts.replace("account_id\n", "[account_id]\n").replace(
                "[name]", "{name: {column: name, type: auto}}"
            )
        }
    )
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 0
    assert batches(emu) == sent


def _hashed_before_normal_form(project: Any) -> str:
    """Rewrite the state as Lockgate wrote it before row hashes were taken from the mapping's
    normal form: the fingerprint of the mapping as written, the columns in the file's order.
    Returns that hash's SQL."""
    sync = project.sync("profile")
    text = MAPPING_VERSION + orjson.dumps(shaping(sync), option=orjson.OPT_SORT_KEYS).decode()
    fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
    columns = ["user_id", "email", "plan", "seats", "promo"]  # identifiers, attributes, key
    old = f"hash({', '.join(q(c) for c in columns)}, '{fingerprint}')"
    with StateStore.open(project.state_dir) as store:
        store.exec_sql(f"attach '{project.root / 'warehouse.duckdb'}' as wh (read_only)")
        store.exec_sql(
            f"update {table('snap', 'profile')} s set h = u.h "
            f"from (select user_id::varchar as k, {old} as h from wh.users) u where u.k = s.k"
        )
        store.exec_sql(
            "update contract_mappings set mapping_hash = ? where sync = 'profile'", [old]
        )
        store.exec_sql("detach wh")
    return old


def recorded_hash(project: Any) -> str:
    with StateStore.open(project.state_dir) as store:
        rows = store.exec_sql("select mapping_hash from contract_mappings where sync = 'profile'")
    return str(rows[0][0])


def test_a_state_hashed_before_the_normal_form_is_not_sent_again(
    project_factory: ProjectFactory,
) -> None:
    """Upgrading Lockgate re-sends nothing: the hash the last run recorded is kept, also when
    the sync file is only spelt otherwise since; the next real mapping change sends each
    record once and moves the state to the normal form."""
    emu = project_factory.emulator
    project = first_run(project_factory)
    old = _hashed_before_normal_form(project)

    sends_nothing(project_factory, PROFILE)
    assert recorded_hash(project) == old
    sends_nothing(project_factory, SAME_PAYLOADS["attributes reordered"])
    sends_nothing(project_factory, SAME_PAYLOADS["primary key as a list"])
    assert recorded_hash(project) == old

    body, _, _ = NEW_PAYLOADS["an attribute added"]
    project = project_factory.write({"profile": body})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 20
    assert all(p.attributes["region"] == "emea" for p in emu.people())
    assert recorded_hash(project) != old
    sends_nothing(project_factory, body.replace("primary_key: user_id", "primary_key: [user_id]"))
