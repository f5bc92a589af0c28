"""The null policy across runs: a value the model lost never erases what Customer.io holds,
unless the sync asks for it (`on_null: clear`), and then `max_cleared` counts it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from tests.sync.helpers import USERS_PROFILE, sent_ops
from tests.sync.test_guardrails import PROFILE, USERS, refused, with_guardrails

from lockgate.cli import cli
from lockgate.cli.sync import change_rows
from lockgate.console import NullConsole
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)


def attributes(factory: ProjectFactory, person: int) -> dict[str, Any]:
    found = factory.emulator.person(id=str(person))
    assert found is not None
    return dict(found.attributes)


def test_an_empty_string_is_a_null_and_never_erases_an_attribute(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io removes an attribute sent as `""`: a model that turned nulls into empty
    strings (`coalesce(plan, '')` in a bad deploy) would erase half the profiles while the run
    counted nothing cleared. An empty string follows the null policy: skipped by default,
    cleared (and counted, so `max_cleared` stops it) under `on_null: clear`, the default under
    `on_null: default`."""
    project_factory.sql(USERS + "alter table users add column tier varchar default 'gold';")
    body = with_guardrails(
        PROFILE + "  tier: {column: tier, on_null: default, default: basic}\n", "{max_cleared: 3}"
    )
    project = project_factory.write({"profile": body})
    run_sync(project, "profile", console=NullConsole())

    project_factory.sql("update users set plan = '', tier = '' where user_id <= 10")
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "success" and report.changes.attributes_cleared == 0
    assert attributes(project_factory, 1)["plan"] == "free"  # kept, not erased
    assert attributes(project_factory, 1)["tier"] == "basic"  # the default, as for a null
    assert attributes(project_factory, 11)["plan"] == "free"

    # `on_null: clear` clears it, and the clear is counted
    project_factory.sql("update users set promo = '' where user_id <= 4")
    message = refused(project, "profile", project_factory.emulator)
    assert "max_cleared is 4, over the limit of 3" in message
    assert "1: clears promo" in message
    assert attributes(project_factory, 1)["promo"] == "P1"

    # back to a value: sent again
    project_factory.sql("update users set plan = 'pro', promo = 'P' || user_id where user_id <= 10")
    assert run_sync(project, "profile", console=NullConsole()).delivered == 10
    assert attributes(project_factory, 1)["plan"] == "pro"


@pytest.mark.parametrize("text", ['""', ' "" '])
def test_a_json_empty_string_is_a_null_too(project_factory: ProjectFactory, text: str) -> None:
    """A `json` field whose text is `""` would be sent as the empty string, which erases the
    attribute: like the JSON `null`, it is a null for the field's `on_null`."""
    project_factory.sql(
        "create table users as select i as user_id, '{\"a\": 1}' as meta from range(1, 4) t(i)"
    )
    body = USERS_PROFILE + "  meta: {column: meta, type: json}\n"
    project = project_factory.write({"profile": body})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql(f"update users set meta = '{text}' where user_id = 1")
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "success" and report.changes.rejected == 0
    assert attributes(project_factory, 1)["meta"] == {"a": 1}


def test_an_empty_string_of_a_typed_attribute_is_a_null_not_a_rejected_row(
    project_factory: ProjectFactory,
) -> None:
    """A text column read as a `number`, `timestamp`, `boolean` or `json` attribute, with its
    nulls turned into `''` (a CSV load, `coalesce(x::varchar, '')`): the empty string is a
    null as it is under `auto` and `string`, so the field's `on_null` applies, instead of the
    whole row (its other attributes too) being rejected as "`` is not a number"."""
    project_factory.sql(
        """
        create table users as select * from (values
          (1, '5', '2026-01-31T12:00:00Z', 'true', '{"a": 1}', 'pro'),
          (2, '7', '2026-02-01T00:00:00Z', 'false', '[1]', 'free')
        ) t(user_id, seats, renewed_at, active, meta, plan)
        """
    )
    body = (
        USERS_PROFILE
        + """\
  seats: {column: seats, type: number}
  renewed_at: {column: renewed_at, type: timestamp, on_null: clear}
  active: {column: active, type: boolean, on_null: default, default: false}
  meta: {column: meta, type: json}
  plan: plan
"""
    )
    project = project_factory.write({"profile": body})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql(
        "update users set seats = '', renewed_at = '', active = '', meta = '', plan = 'team' "
        "where user_id = 1"
    )

    report = run_sync(project, "profile", console=NullConsole())

    assert (report.status, report.changes.rejected) == ("success", 0)
    assert report.changes.attributes_cleared == 1
    assert attributes(project_factory, 1) == {
        "seats": 5,
        "active": False,
        "meta": {"a": 1},
        "plan": "team",
    }


def test_an_empty_enum_value_is_a_null_too(project_factory: ProjectFactory) -> None:
    """A DuckDB `ENUM` whose values include `''` (a CSV load's empty category) would be sent
    as `""`, which erases the attribute: it is a null for the field's `on_null`, as text is."""
    project_factory.sql(
        """
        create type tier_t as enum ('', 'gold', 'free');
        create table users as select i as user_id, 'gold'::tier_t as tier from range(1, 4) t(i)
        """
    )
    body = USERS_PROFILE + "  tier: tier\n"
    project = project_factory.write({"profile": body})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("update users set tier = '' where user_id = 1")
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "success" and report.changes.attributes_cleared == 0
    assert attributes(project_factory, 1)["tier"] == "gold"


# -- a row whose every value went null under `skip`: nothing to send ---------------------------

NULLABLE = """
create or replace table users as select * from (values
  (1, 'a@x.io', 'pro', 'P1'), (2, 'b@x.io', 'free', 'P2'), (3, 'c@x.io', 'free', 'P3')
) t(user_id, email, plan, promo);
"""


def calls_for(factory: ProjectFactory, since: int, **identifiers: str) -> list[dict[str, Any]]:
    """The operations the emulator accepted after request ``since`` addressed to a person."""
    return [op for op in sent_ops(factory.emulator, since) if op["identifiers"] == identifiers]


def requests(factory: ProjectFactory) -> int:
    return len(factory.emulator.request_log())


def test_a_row_whose_values_all_went_null_is_not_sent(project_factory: ProjectFactory) -> None:
    """Under `on_null: skip` a null is not sent: a row whose attributes have all become null
    has nothing to send (an identify with `attributes: {}` changes nothing). `plan` counts it
    unchanged, with no sample; the run sends nothing for it and records its row, so the next
    run does not find it changed again; a later real change is sent."""
    project_factory.sql(NULLABLE)
    project = project_factory.write({"profile": USERS_PROFILE + "  plan: plan\n  promo: promo\n"})
    run_sync(project, "profile", console=NullConsole())

    project_factory.sql("update users set plan = null, promo = null where user_id = 1")
    plan = plan_sync(project, "profile", console=NullConsole())
    assert (plan.changes.changed, plan.changes.unchanged, plan.changes.to_send) == (0, 3, 0)
    assert plan.changes.nulls_only == 1
    assert plan.samples == ()
    assert ("  of which changed only to nulls (nothing to send)", 1) in change_rows(plan)

    since = requests(project_factory)
    second = run_sync(project, "profile", console=NullConsole())
    assert calls_for(project_factory, since, id="1") == []
    assert (second.changes.changed, second.changes.unchanged, second.delivered) == (0, 3, 0)
    assert second.changes.as_dict() | {"rows_copied": 0} == plan.changes.as_dict() | {
        "rows_copied": 0
    }
    assert attributes(project_factory, 1) == {"plan": "pro", "promo": "P1"}  # kept
    listed = CliRunner().invoke(
        cli, ["runs", "--json", "--limit", "1", "--project", str(project.root)]
    )
    assert listed.exit_code == 0, listed.output
    recorded = json.loads(listed.output)[0]["counts"]
    assert recorded["delivered"] == 0
    assert recorded["changes"]["nulls_only"] == 1 and recorded["changes"]["to_send"] == 0

    # recorded: the third run finds nothing changed, and counts nothing as nulls only
    since = requests(project_factory)
    third = run_sync(project, "profile", console=NullConsole())
    assert requests(project_factory) == since
    assert (third.changes.to_send, third.changes.nulls_only, third.changes.unchanged) == (0, 0, 3)

    # a real change is sent
    project_factory.sql("update users set plan = 'team' where user_id = 1")
    since = requests(project_factory)
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    assert calls_for(project_factory, since, id="1")[0]["attributes"] == {"plan": "team"}
    assert attributes(project_factory, 1) == {"plan": "team", "promo": "P1"}


def test_a_row_gone_to_nulls_is_sent_when_new_or_its_identifiers_change(
    project_factory: ProjectFactory,
) -> None:
    """A row with no attribute value left is still sent when its identify does something: it
    is new (the identify creates the person), or its identifiers changed (an email given up,
    or a new one). The `email` sent with the identifiers of a sync identified by email is no
    value of its own: a row left with only it has nothing to send."""
    project_factory.sql(NULLABLE)
    body = USERS_PROFILE.replace("{id: user_id}", "{id: user_id, email: email}") + "  plan: plan\n"
    project = project_factory.write({"profile": body})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql(
        """
        update users set plan = null;
        update users set email = null where user_id = 2;
        update users set email = 'c2@x.io' where user_id = 3;
        insert into users values (4, null, null, null), (5, 'e@x.io', null, null);
        """
    )
    plan = plan_sync(project, "profile", console=NullConsole())
    c = plan.changes
    assert (c.new, c.changed, c.unchanged, c.nulls_only) == (2, 2, 1, 1)

    since = requests(project_factory)
    report = run_sync(project, "profile", console=NullConsole())
    assert report.delivered == 4
    assert calls_for(project_factory, since, id="1") == []
    assert [op["attributes"] for op in calls_for(project_factory, since, id="2")] == [{}]
    assert [op["attributes"] for op in calls_for(project_factory, since, id="3")] == [
        {"email": "c2@x.io"}
    ]
    assert project_factory.emulator.person(id="4") is not None  # created
    assert project_factory.emulator.person(id="5") is not None
    assert attributes(project_factory, 1) == {"plan": "pro"}


@pytest.mark.parametrize(
    ("spec", "sent"),
    [
        ("{column: promo, on_null: clear}", ""),
        ("{column: promo, on_null: default, default: D}", "D"),
    ],
)
def test_a_row_gone_to_nulls_is_sent_when_a_null_is_cleared_or_defaulted(
    project_factory: ProjectFactory, spec: str, sent: str
) -> None:
    """`on_null: clear` and `on_null: default` send something for a null: such a row is
    sent, as before."""
    project_factory.sql(NULLABLE)
    project = project_factory.write({"profile": USERS_PROFILE + f"  plan: plan\n  promo: {spec}\n"})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("update users set plan = null, promo = null where user_id = 1")
    assert plan_sync(project, "profile", console=NullConsole()).changes.nulls_only == 0
    since = requests(project_factory)
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    assert [op["attributes"] for op in calls_for(project_factory, since, id="1")] == [
        {"promo": sent}
    ]


def test_update_mode_sends_nothing_for_a_row_gone_to_nulls(
    project_factory: ProjectFactory,
) -> None:
    """`mode: update` adds `_update: true` to every identify: a flag, not a value, so a row
    left with only it has nothing to send either."""
    project_factory.sql(NULLABLE)
    body = USERS_PROFILE + "  plan: plan\n"
    run_sync(project_factory.write({"profile": body}), "profile", console=NullConsole())
    # `update` creates nobody: the people are there from the upsert run above
    body = body.replace("attributes:", "mode: update\nattributes:")
    project = project_factory.write({"profile": body})
    remapped = run_sync(project, "profile", console=NullConsole())
    # three people sent, one attribute each: `_update` is not counted as an attribute set
    assert (remapped.delivered, remapped.changes.attributes_set) == (3, 3)
    project_factory.sql("update users set plan = null where user_id = 1")
    since = requests(project_factory)
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.changes.nulls_only, report.delivered) == (1, 0)
    assert requests(project_factory) == since
    assert attributes(project_factory, 1) == {"plan": "pro"}


COMPANIES = """
name: companies
source: warehouse
model: {table: companies}
kind: objects
object_type_id: "1"
primary_key: company_id
attributes: {name: name, plan: plan}
"""


def test_an_object_gone_to_nulls_is_not_sent(project_factory: ProjectFactory) -> None:
    """The same for an objects sync: an object whose attributes all became null has nothing
    to send; it is recorded, and sent again once a value comes back."""
    project_factory.sql(
        "create table companies as select * from (values ('acme', 'Acme', 'pro'), "
        "('globex', 'Globex', 'free')) t(company_id, name, plan)"
    )
    project = project_factory.write({"companies": COMPANIES})
    run_sync(project, "companies", console=NullConsole())
    project_factory.sql("update companies set name = null, plan = null where company_id = 'acme'")
    plan = plan_sync(project, "companies", console=NullConsole())
    assert (plan.changes.changed, plan.changes.nulls_only, plan.samples) == (0, 1, ())
    assert ("  of which changed only to nulls (nothing to send)", 1) in change_rows(plan)

    since = requests(project_factory)
    assert run_sync(project, "companies", console=NullConsole()).delivered == 0
    assert run_sync(project, "companies", console=NullConsole()).changes.nulls_only == 0
    assert requests(project_factory) == since

    project_factory.sql("update companies set plan = 'team' where company_id = 'acme'")
    assert run_sync(project, "companies", console=NullConsole()).delivered == 1
    objects = {o.object_id: o.attributes for o in project_factory.emulator.objects()}
    assert objects["acme"] == {"name": "Acme", "plan": "team"}


CARTS = """
name: carts
source: warehouse
model: {table: carts}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {cart_status: cart_status}
on_change:
  - {attribute: cart_status, from: open, to: inactive, event: cart_abandoned}
"""


def test_an_on_change_row_gone_to_nulls_records_its_null(project_factory: ProjectFactory) -> None:
    """An `on_change` sync's row gone to nulls is not sent either, but its watched value is
    recorded as null, as a delivered row's is: `open`, then null, then `inactive` is no
    `open` to `inactive` transition, and fires nothing."""
    project_factory.sql(
        "create table carts as select i as user_id, 'open' as cart_status from range(1, 3) t(i)"
    )
    project = project_factory.write({"carts": CARTS})
    run_sync(project, "carts", console=NullConsole())
    project_factory.sql("update carts set cart_status = null where user_id = 1")
    since = requests(project_factory)
    report = run_sync(project, "carts", console=NullConsole())
    assert (report.changes.nulls_only, report.delivered) == (1, 0)
    assert requests(project_factory) == since

    project_factory.sql("update carts set cart_status = 'inactive'")
    report = run_sync(project, "carts", console=NullConsole())
    assert (report.changes.state_events, report.delivered) == (1, 3)  # 2 only
    fired = [e for e in project_factory.emulator.events() if e.name == "cart_abandoned"]
    assert len(fired) == 1


def test_a_constant_already_delivered_is_no_value_to_send(project_factory: ProjectFactory) -> None:
    """A constant (`{value: ...}`) was sent with every delivery of the record and has not
    changed since: a row whose other attributes all went null would send only it again, which
    changes nothing. It counts as changed only to nulls and is recorded; once the constant is
    edited in the sync file, every record is sent with the new value, this one too."""
    project_factory.sql(NULLABLE)
    body = USERS_PROFILE + "  plan: plan\n  origin: {value: billing}\n"
    project = project_factory.write({"profile": body})
    run_sync(project, "profile", console=NullConsole())
    assert attributes(project_factory, 1) == {"plan": "pro", "origin": "billing"}

    project_factory.sql("update users set plan = null where user_id = 1")
    plan = plan_sync(project, "profile", console=NullConsole())
    assert (plan.changes.changed, plan.changes.nulls_only, plan.samples) == (0, 1, ())
    since = requests(project_factory)
    report = run_sync(project, "profile", console=NullConsole())
    assert calls_for(project_factory, since, id="1") == []
    assert (report.changes.nulls_only, report.delivered) == (1, 0)
    assert report.changes.as_dict() | {"rows_copied": 0} == plan.changes.as_dict() | {
        "rows_copied": 0
    }
    # recorded: nothing changed for the next run
    assert run_sync(project, "profile", console=NullConsole()).changes.nulls_only == 0
    assert requests(project_factory) == since

    # the constant edited: its new value is a value to send, to every record
    project = project_factory.write({"profile": body.replace("billing", "crm")})
    plan = plan_sync(project, "profile", console=NullConsole())
    assert (plan.changes.changed, plan.changes.nulls_only) == (3, 0)
    since = requests(project_factory)
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.changes.changed, report.changes.nulls_only, report.delivered) == (3, 0, 3)
    assert [op["attributes"] for op in calls_for(project_factory, since, id="1")] == [
        {"origin": "crm"}
    ]
    assert attributes(project_factory, 1) == {"plan": "pro", "origin": "crm"}


def test_a_constant_added_is_sent_to_a_row_gone_to_nulls(project_factory: ProjectFactory) -> None:
    """A constant the last run did not send (added to the mapping in the run where the row's
    values went null) is a value to send: the record is sent with it."""
    project_factory.sql(NULLABLE)
    body = USERS_PROFILE + "  plan: plan\n"
    run_sync(project_factory.write({"profile": body}), "profile", console=NullConsole())
    project_factory.sql("update users set plan = null where user_id = 1")
    project = project_factory.write({"profile": body + "  origin: {value: billing}\n"})
    assert plan_sync(project, "profile", console=NullConsole()).changes.nulls_only == 0
    since = requests(project_factory)
    assert run_sync(project, "profile", console=NullConsole()).delivered == 3
    assert [op["attributes"] for op in calls_for(project_factory, since, id="1")] == [
        {"origin": "billing"}
    ]


def test_a_record_the_constant_change_missed_is_sent_it_when_gone_to_nulls(
    project_factory: ProjectFactory,
) -> None:
    """A record the run that edited a constant did not send to (its row rejected then, or out
    of the model) still holds the old constant in Customer.io: once its row is back with only
    nulls, the identify carrying the new constant is sent, not skipped as nothing to send."""
    project_factory.sql(NULLABLE + "alter table users add column seats varchar default '5';")
    body = USERS_PROFILE + (
        "  plan: plan\n  seats: {column: seats, type: number}\n  origin: {value: billing}\n"
    )
    run_sync(project_factory.write({"profile": body}), "profile", console=NullConsole())
    project_factory.sql(
        "update users set seats = 'many' where user_id = 1; "
        "create table gone as select * from users where user_id = 2; "
        "delete from users where user_id = 2"
    )
    project = project_factory.write({"profile": body.replace("billing", "crm")})
    edited = run_sync(project, "profile", console=NullConsole())
    assert (edited.changes.rejected, edited.delivered) == (1, 1)  # only user 3 gets `crm`

    project_factory.sql(
        "update users set seats = null, plan = null where user_id = 1; "
        "insert into users by name select * replace (null as plan, null as seats) from gone"
    )
    plan = plan_sync(project, "profile", console=NullConsole())
    assert (plan.changes.changed, plan.changes.nulls_only) == (2, 0)
    since = requests(project_factory)
    report = run_sync(project, "profile", console=NullConsole())
    assert report.changes.as_dict() | {"rows_copied": 0} == plan.changes.as_dict() | {
        "rows_copied": 0
    }
    for person in ("1", "2"):
        assert [op["attributes"] for op in calls_for(project_factory, since, id=person)] == [
            {"origin": "crm"}
        ]
        assert attributes(project_factory, int(person))["origin"] == "crm"
    # delivered: the next row of theirs gone to nulls again has nothing to send
    project_factory.sql("update users set plan = 'pro' where user_id = 1")
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("update users set plan = null where user_id = 1")
    assert run_sync(project, "profile", console=NullConsole()).changes.nulls_only == 1
