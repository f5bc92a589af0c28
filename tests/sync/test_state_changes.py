"""`on_change`: an attribute transition fires an event, exactly once per transition."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest

from lockgate.cli.sync import change_rows
from lockgate.console import NullConsole
from lockgate.errors import LockgateError
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

CARTS = """
name: carts
source: warehouse
model: {table: carts}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {cart_status: cart_status, cart_value: {column: cart_value, type: number}}
on_change:
  - attribute: cart_status
    from: open
    to: inactive
    event: cart_abandoned
    properties: {cart_value: {column: cart_value, type: number}}
    unless: has_order_after_cart
"""


def seed(factory: ProjectFactory) -> None:
    factory.sql(
        """
        create or replace table carts as select * from (values
          (1, 'open', 40.0, false), (2, 'open', 15.5, false), (3, 'open', 99.0, false)
        ) t(user_id, cart_status, cart_value, has_order_after_cart);
        """
    )


def abandoned(emu: Any) -> list[tuple[str | None, Any]]:
    by_cio = {p.cio_id: p.id for p in emu.people()}
    return sorted(
        (by_cio.get(e.person), e.data.get("cart_value"))
        for e in emu.events()
        if e.name == "cart_abandoned"
    )


def test_transition_fires_once_and_unless_suppresses(project_factory: ProjectFactory) -> None:
    seed(project_factory)
    project = project_factory.write({"carts": CARTS})
    first = run_sync(project, "carts", console=NullConsole())
    assert first.changes.state_events == 0  # a first sight is not a transition

    # 1 abandons; 2 abandons but ordered afterwards (unless); 3 goes open -> checked_out
    project_factory.sql(
        """
        update carts set cart_status = 'inactive' where user_id in (1, 2);
        update carts set has_order_after_cart = true where user_id = 2;
        update carts set cart_status = 'checked_out' where user_id = 3;
        """
    )
    plan = plan_sync(project, "carts", console=NullConsole())
    assert plan.changes.state_events == 1
    assert ("on_change events fired", 1) in change_rows(plan)  # the plan's table shows it
    second = run_sync(project, "carts", console=NullConsole())
    assert second.status == "success" and second.changes.state_events == 1
    emu = project_factory.emulator
    assert abandoned(emu) == [("1", 40.0)]
    person = emu.person(id="1")
    assert person is not None and person.attributes["cart_status"] == "inactive"

    # re-running fires nothing; a new open -> inactive later fires again
    assert run_sync(project, "carts", console=NullConsole()).changes.state_events == 0
    project_factory.sql("update carts set cart_status = 'open', cart_value = 12 where user_id = 1")
    run_sync(project, "carts", console=NullConsole())
    project_factory.sql("update carts set cart_status = 'inactive' where user_id = 1")
    run_sync(project, "carts", console=NullConsole())
    assert abandoned(emu) == [("1", 12.0), ("1", 40.0)]


def test_the_same_transition_again_fires_again(project_factory: ProjectFactory) -> None:
    """open -> inactive, back to open, inactive again, with nothing else changing: the second
    transition starts from the very state the first did, and is still a separate one."""
    seed(project_factory)
    project = project_factory.write({"carts": CARTS})
    run_sync(project, "carts", console=NullConsole())
    emu = project_factory.emulator
    for status, fired in (("inactive", 1), ("open", 0), ("inactive", 1), ("open", 0)):
        project_factory.sql(f"update carts set cart_status = '{status}' where user_id = 1")
        assert plan_sync(project, "carts", console=NullConsole()).changes.state_events == fired
        assert run_sync(project, "carts", console=NullConsole()).changes.state_events == fired
    assert run_sync(project, "carts", console=NullConsole()).changes.state_events == 0
    assert abandoned(emu) == [("1", 40.0), ("1", 40.0)]
    assert len({e.id for e in emu.events() if e.name == "cart_abandoned"}) == 2


ACCOUNTS = """
name: accounts
source: warehouse
model: {table: accounts}
kind: objects
object_type_id: "1"
primary_key: account_id
attributes: {plan: plan}
on_change:
  - attribute: plan
    to: churned
    event: account_churned
    properties: [plan]
"""

MEMBERS = """
name: members
source: warehouse
model: {table: members}
kind: relationships
object_type_id: "1"
object_id: account_id
identify_by: {id: user_id}
"""


def test_object_transition_notifies_every_related_person(project_factory: ProjectFactory) -> None:
    project_factory.sql(
        """
        create or replace table accounts as select * from (values
          ('acme', 'pro'), ('globex', 'pro')) t(account_id, plan);
        create or replace table members as select * from (values
          (1, 'acme'), (2, 'acme'), (3, 'globex')) t(user_id, account_id);
        """
    )
    project = project_factory.write({"accounts": ACCOUNTS, "members": MEMBERS})
    run_sync(project, "accounts", console=NullConsole())
    run_sync(project, "members", console=NullConsole())
    project_factory.sql("update accounts set plan = 'churned' where account_id = 'acme'")
    report = run_sync(project, "accounts", console=NullConsole())
    assert report.status == "success" and report.changes.state_events == 2

    emu = project_factory.emulator
    by_cio = {p.cio_id: p.id for p in emu.people()}
    churned = sorted(
        (by_cio.get(e.person), e.data) for e in emu.events() if e.name == "account_churned"
    )
    expected = {"plan": "churned", "object_type_id": "1", "object_id": "acme"}
    assert churned == [("1", expected), ("2", expected)]
    assert run_sync(project, "accounts", console=NullConsole()).changes.state_events == 0

    # back to pro, then churned again: a second, separate transition reaches both again
    for plan, fired in (("pro", 0), ("churned", 2)):
        project_factory.sql(f"update accounts set plan = '{plan}' where account_id = 'acme'")
        assert run_sync(project, "accounts", console=NullConsole()).changes.state_events == fired
    assert len([e for e in emu.events() if e.name == "account_churned"]) == 4


def test_an_object_transition_reaches_a_person_two_relationships_syncs_relate_once(
    project_factory: ProjectFactory,
) -> None:
    """The app's memberships relate Ada to Acme by `id`, the CRM's contacts by email, and the
    people sync delivers both: Customer.io holds one Ada and one relationship, so Acme
    churning is one event for her (it was two, with two dedupe ids), and one for Grace, whom
    only the app relates."""
    project_factory.sql(
        """
        create or replace table accounts as select * from (values ('acme', 'pro'))
          t(account_id, plan);
        create or replace table users as select * from (values
          (1, 'ada@x.io'), (2, 'grace@x.io')) t(user_id, email);
        create or replace table members as select * from (values (1, 'acme'), (2, 'acme'))
          t(user_id, account_id);
        create or replace table contacts as select * from (values ('Ada@x.io', 'acme'))
          t(email, account_id);
        """
    )
    users = """
    name: users
    source: warehouse
    model: {table: users}
    kind: people
    primary_key: user_id
    identify_by: {id: user_id, email: email}
    attributes: {}
    """
    contacts = MEMBERS.replace("name: members", "name: contacts").replace(
        "{table: members}", "{table: contacts}"
    )
    project = project_factory.write(
        {
            "accounts": ACCOUNTS,
            "users": users,
            "members": MEMBERS,
            "contacts": contacts.replace("{id: user_id}", "{email: email}"),
        }
    )
    for name in ("accounts", "users", "members", "contacts"):
        assert run_sync(project, name, console=NullConsole()).delivered > 0
    emu = project_factory.emulator
    assert len(emu.people()) == 2 and len(emu.relationships()) == 2

    project_factory.sql("update accounts set plan = 'churned'")
    plan = plan_sync(project, "accounts", console=NullConsole())
    assert plan.changes.state_events == 2
    report = run_sync(project, "accounts", console=NullConsole())
    assert report.status == "success" and report.changes.state_events == 2
    by_cio = {p.cio_id: p.id for p in emu.people()}
    churned = sorted(by_cio.get(e.person) for e in emu.events() if e.name == "account_churned")
    assert churned == ["1", "2"]
    assert run_sync(project, "accounts", console=NullConsole()).changes.state_events == 0


HEALTH = """
name: accounts_health
source: warehouse
model: {table: health}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {score: score, seats: {column: seats, type: number}, tier: tier}
on_change:
  - {attribute: score, from: 2, to: 1, event: health_dropped}
  - {attribute: seats, to: 0, event: seats_gone}
  - {attribute: tier, to: "1", event: tier_one}
"""


def test_a_rule_on_a_number_matches_whatever_the_column_number_type(
    project_factory: ProjectFactory,
) -> None:
    """`from: 2, to: 1` is a number: it matches a double's `2.0` → `1.0` and a decimal's
    `0.00`, which were compared as the texts `2.0` and `2` and never fired. A text `"1"` is
    still not the number 1."""
    project_factory.sql(
        """
        create or replace table health as select * from (values
          (1, 2.0::double, 3.00::decimal(10,2), 1), (2, 2.5::double, 1.00::decimal(10,2), 2)
        ) t(user_id, score, seats, tier)
        """
    )
    project = project_factory.write({"health": HEALTH})
    assert run_sync(project, "accounts_health", console=NullConsole()).changes.state_events == 0
    project_factory.sql("update health set score = 1.0, seats = 0, tier = 1")
    report = run_sync(project, "accounts_health", console=NullConsole())
    assert report.status == "success"
    emu = project_factory.emulator
    by_cio = {p.cio_id: p.id for p in emu.people()}
    fired = sorted((e.name, by_cio.get(e.person)) for e in emu.events())
    # 1 went 2.0 -> 1.0 (2 went 2.5 -> 1.0: not from 2); both went to 0 seats; the tier is
    # the integer 1, not the text "1"
    assert fired == [("health_dropped", "1"), ("seats_gone", "1"), ("seats_gone", "2")]
    assert run_sync(project, "accounts_health", console=NullConsole()).changes.state_events == 0


def test_a_row_without_a_key_is_named_by_its_identifiers_alone(
    project_factory: ProjectFactory,
) -> None:
    """A row of an `on_change` sync whose key is null is named, in reports and exports, by the
    identifiers it would be sent with, not by the internal `_watch` values the diff keeps."""
    project_factory.sql(
        """
        create or replace table carts as select * from (values
          (1, 'one@x.com', 'open', 40.0, false), (null, 'ghost@x.com', 'open', 15.5, false)
        ) t(user_id, email, cart_status, cart_value, has_order_after_cart);
        """
    )
    sync = CARTS.replace("identify_by: {id: user_id}", "identify_by: {id: user_id, email: email}")
    project = project_factory.write({"carts": sync})
    report = run_sync(project, "carts", console=NullConsole())
    assert report.delivered == 1
    assert [key for key, _ in report.changes.rejected_samples] == [
        '(null key) {"email":"ghost@x.com"}'
    ]


STATUS = """
name: carts
source: warehouse
model: {sql: "select user_id, {status} as cart_status, items from carts"}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {cart_status: cart_status, items: items}
on_change:
  - attribute: cart_status
    to: inactive
    event: cart_abandoned
  - attribute: cart_status
    event: cart_status_changed
"""


def fired(emu: Any) -> list[tuple[str, str | None]]:
    by_cio = {p.cio_id: p.id for p in emu.people()}
    return sorted((e.name, by_cio.get(e.person)) for e in emu.events())


def test_a_json_column_read_as_its_value_after_the_upgrade_fires_no_transition(
    project_factory: ProjectFactory,
) -> None:
    """An earlier Lockgate staged a JSON column as text and watched `"\\"inactive\\""`; this
    one watches `"inactive"`. The upgrade's run sends every record once more (the mapping
    changed), and no cart went anywhere: it fires nothing (it fired `cart_abandoned` for every
    inactive cart, and `cart_status_changed` for all of them)."""
    project_factory.sql(
        """
        create or replace table carts as select * from (values
          (1, '"inactive"'::json, 1), (2, '"open"'::json, 1), (3, '{"a": [1, 2]}'::json, 1)
        ) t(user_id, cart_status, items)
        """
    )
    # what an earlier Lockgate staged: the JSON's text
    project = project_factory.write({"carts": STATUS.replace("{status}", "cart_status::varchar")})
    run_sync(project, "carts", console=NullConsole())
    project = project_factory.write({"carts": STATUS.replace("{status}", "cart_status")})

    assert plan_sync(project, "carts", console=NullConsole()).changes.state_events == 0
    report = run_sync(project, "carts", console=NullConsole())

    assert (report.changes.remapped, report.changes.state_events) == (3, 0)
    emu = project_factory.emulator
    assert fired(emu) == []
    assert [emu.person(id=str(i)).attributes["cart_status"] for i in (1, 2)] == [  # type: ignore[union-attr]
        "inactive",
        "open",
    ]
    # and a real transition afterwards still fires
    project_factory.sql("update carts set cart_status = '\"inactive\"' where user_id = 2")
    assert run_sync(project, "carts", console=NullConsole()).changes.state_events == 2
    assert fired(emu) == [("cart_abandoned", "2"), ("cart_status_changed", "2")]


def test_an_empty_string_an_earlier_lockgate_watched_is_no_transition_to_null(
    project_factory: ProjectFactory,
) -> None:
    """An earlier Lockgate sent (and watched) a model's `''` as `""`; this one reads it as a
    null (`on_null`). A cart whose `items` change while its status stays `''` did not change
    status: no `cart_status_changed` (it fired, `""` → null)."""
    project_factory.sql(
        "create or replace table carts as select * from (values (1, '', 1), (2, 'open', 1)) "
        "t(user_id, cart_status, items)"
    )
    project = project_factory.write({"carts": STATUS.replace("{status}", "cart_status")})
    run_sync(project, "carts", console=NullConsole())
    # the state as an earlier Lockgate left it: the `''` watched as `""`
    con = duckdb.connect(str(project.state_dir / "state.duckdb"))
    try:
        changed = con.execute(
            """update "snap__carts" set ident = replace(ident, '"cart_status":null', """
            """'"cart_status":""') where k = '1'"""
        ).fetchall()
        assert changed == [(1,)]
    finally:
        con.close()
    project_factory.sql("update carts set items = 2")

    assert plan_sync(project, "carts", console=NullConsole()).changes.state_events == 0
    report = run_sync(project, "carts", console=NullConsole())

    assert (report.changes.changed, report.changes.state_events) == (2, 0)
    assert fired(project_factory.emulator) == []


def test_an_unless_that_is_not_a_condition_over_the_model_names_the_rule_and_its_line(
    project_factory: ProjectFactory,
) -> None:
    # each failed in the middle of the mapping's query: "unexpected ParserException ... this
    # is a bug in Lockgate", quoting Lockgate's SQL around it
    seed(project_factory)
    for unless, said in (
        ("has_order_after_cart = = true", 'syntax error at or near "="'),
        ("has_ordered", 'Referenced column "has_ordered" not found'),
        ("cart_status", "Cannot mix values of type VARCHAR and BOOLEAN"),
        ("(select count(*) from orders) > 0", "Table with name orders does not exist"),
    ):
        project = project_factory.write(
            {"carts": CARTS.replace("unless: has_order_after_cart", f'unless: "{unless}"')}
        )
        with pytest.raises(LockgateError) as failed:
            plan_sync(project, "carts", console=NullConsole())
        shown = " ".join(str(failed.value).split())
        assert (
            f"syncs/carts.yml:15: sync `carts`: `on_change[0].unless` (`{unless}`) is not a "
            "condition over the model's columns: "
        ) in shown
        assert said in shown and "LINE" not in shown, shown
        assert "a lookup in another table belongs in the model's SQL" in shown
        assert "`cart_status`, `cart_value`, `has_order_after_cart`" in shown
    # the rule as it should be runs, and sends the people
    project = project_factory.write({"carts": CARTS})
    assert run_sync(project, "carts", console=NullConsole()).delivered == 3


TYPED = """
name: accounts_health
source: warehouse
model: {table: health}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes:
  code: {column: code, type: string}
  renews_at: {column: renews_at, type: timestamp}
  active: {column: active, type: boolean}
on_change:
  - {attribute: code, to: 2, event: code_two}
  - {attribute: renews_at, to: "2030-01-01T00:00:00Z", event: renewal_moved}
  - {attribute: active, from: "yes", to: "no", event: deactivated}
"""


def test_a_rule_on_a_typed_attribute_compares_its_constants_as_that_type(
    project_factory: ProjectFactory,
) -> None:
    """A rule's `from` and `to` are read under the watched attribute's `type`, as a column's
    values are: `to: 2` of a `type: string` attribute (sent as the text `2`), an ISO time of a
    `type: timestamp` one (sent as unix seconds) and `"yes"` of a `type: boolean` one were
    compared as written, and never fired."""
    project_factory.sql(
        """
        create or replace table health as select * from (values
          (1, 1, '2029-06-01 00:00:00'::timestamp, 'yes')
        ) t(user_id, code, renews_at, active)
        """
    )
    project = project_factory.write({"health": TYPED})
    assert run_sync(project, "accounts_health", console=NullConsole()).changes.state_events == 0
    project_factory.sql("update health set code = 2, renews_at = '2030-01-01', active = 'no'")
    assert run_sync(project, "accounts_health", console=NullConsole()).status == "success"
    fired = sorted(e.name for e in project_factory.emulator.events())
    assert fired == ["code_two", "deactivated", "renewal_moved"]


def test_a_rule_constant_the_attribute_type_cannot_take_is_refused_at_its_line(
    tmp_path: Any,
) -> None:
    from lockgate.errors import ConfigError
    from lockgate.project.loader import load_project

    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text("name: t\nsources:\n  warehouse: {type: duckdb}\n")
    (tmp_path / "syncs" / "health.yml").write_text(
        TYPED.replace('to: "2030-01-01T00:00:00Z"', "to: soon")
    )
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert caught.value.location == "syncs/health.yml:14"
    assert caught.value.reason.startswith(
        "`to`: `soon` is not a timestamp (use ISO 8601, e.g. 2026-01-31T12:00:00Z)"
    )
    assert "(attribute `renews_at` is `type: timestamp`)" in caught.value.reason
