"""`on_change`: an attribute transition fires an event, exactly once per transition."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest

from lockgate.cli.sync import change_rows
from lockgate.console import NullConsole
from lockgate.errors import LockgateError
from lockgate.project.loader import Project
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


SCORES = """
name: accounts_health
source: warehouse
model: {table: health}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {score: score, plan: plan}
on_change:
  - {attribute: score, from: 2, to: 1, event: health_dropped}
  - {attribute: score, event: score_changed, properties: {score: score}}
"""


def test_a_watched_value_the_attribute_cannot_take_rejects_its_row_and_fires_nothing(
    project_factory: ProjectFactory,
) -> None:
    """A watched score going to NaN or Infinity (which JSON cannot write) rejects the row as
    the attribute does, with its reason: no event fires for it, the person keeps the value
    last delivered, and the other rows go on. Once fixed, the change from the value last
    delivered fires, once."""
    project_factory.sql(
        """
        create or replace table health as select * from (values
          (1, 2.0::double, 'pro'), (2, 2.0::double, 'pro'), (3, 2.0::double, 'pro')
        ) t(user_id, score, plan)
        """
    )
    project = project_factory.write({"health": SCORES})
    run_sync(project, "accounts_health", console=NullConsole())
    project_factory.sql(
        """
        update health set plan = 'free';
        update health set score = 'nan'::double where user_id = 1;
        update health set score = 'infinity'::double where user_id = 2;
        update health set score = 1.0 where user_id = 3;
        """
    )
    plan = plan_sync(project, "accounts_health", console=NullConsole())
    assert plan.changes.state_events == 2
    report = run_sync(project, "accounts_health", console=NullConsole())

    assert report.changes.state_events == 2
    assert sorted(report.changes.rejected_samples) == [
        ("1", "column `score` (field `score`): value `nan` is not a finite number"),
        ("2", "column `score` (field `score`): value `inf` is not a finite number"),
    ]
    emu = project_factory.emulator
    assert fired(emu) == [("health_dropped", "3"), ("score_changed", "3")]
    people = {p.id: p.attributes for p in emu.people()}
    assert {k: (a["score"], a["plan"]) for k, a in people.items()} == {
        "1": (2, "pro"),
        "2": (2, "pro"),
        "3": (1, "free"),
    }

    project_factory.sql("update health set score = 1.0 where user_id in (1, 2)")
    assert run_sync(project, "accounts_health", console=NullConsole()).changes.state_events == 4
    assert run_sync(project, "accounts_health", console=NullConsole()).changes.state_events == 0
    assert fired(emu) == [
        ("health_dropped", "1"),
        ("health_dropped", "2"),
        ("health_dropped", "3"),
        ("score_changed", "1"),
        ("score_changed", "2"),
        ("score_changed", "3"),
    ]
    assert [e.data for e in emu.events() if e.name == "score_changed"] == [{"score": 1}] * 3


SETTINGS = """
name: settings
source: warehouse
model: {table: settings}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {prefs: prefs, layout: {column: layout, type: json}, plan: plan}
on_change:
  - {attribute: prefs, event: prefs_changed}
  - {attribute: layout, event: layout_changed}
"""


def test_a_watched_json_value_holding_nan_rejects_its_row_and_fires_nothing(
    project_factory: ProjectFactory,
) -> None:
    """A JSON column holding NaN, and the text of a `type: json` attribute holding it, are no
    JSON Customer.io reads: the row is rejected as the attribute is, no event fires for it,
    and the other rows go on. Once fixed, the change fires once."""
    project_factory.sql(
        """
        create or replace table settings as select * from (values
          (1, '{"a": 1}'::json, '{"cols": 2}', 'pro'),
          (2, '{"a": 1}'::json, '{"cols": 2}', 'pro'),
          (3, '{"a": 1}'::json, '{"cols": 2}', 'pro')
        ) t(user_id, prefs, layout, plan)
        """
    )
    project = project_factory.write({"settings": SETTINGS})
    run_sync(project, "settings", console=NullConsole())
    project_factory.sql(
        """
        update settings set plan = 'free';
        update settings set prefs = '{"a": NaN}' where user_id = 1;
        update settings set layout = '{"cols": [1, Infinity]}' where user_id = 2;
        update settings set prefs = '{"a": 2}', layout = '{"cols": 3}' where user_id = 3;
        """
    )
    report = run_sync(project, "settings", console=NullConsole())

    assert report.changes.state_events == 2
    assert sorted(report.changes.rejected_samples) == [
        ("1", 'column `prefs` (field `prefs`): value `{"a": NaN}` is not valid JSON'),
        (
            "2",
            'column `layout` (field `layout`): value `{"cols": [1, Infinity]}` is not valid JSON',
        ),
    ]
    emu = project_factory.emulator
    assert fired(emu) == [("layout_changed", "3"), ("prefs_changed", "3")]
    people = {p.id: p.attributes for p in emu.people()}
    assert {k: (a["prefs"], a["layout"], a["plan"]) for k, a in people.items()} == {
        "1": ({"a": 1}, {"cols": 2}, "pro"),
        "2": ({"a": 1}, {"cols": 2}, "pro"),
        "3": ({"a": 2}, {"cols": 3}, "free"),
    }

    project_factory.sql(
        """update settings set prefs = '{"a": 5}' where user_id = 1;
        update settings set layout = '{"cols": 5}' where user_id = 2"""
    )
    assert run_sync(project, "settings", console=NullConsole()).changes.state_events == 2
    assert run_sync(project, "settings", console=NullConsole()).changes.state_events == 0
    assert fired(emu) == [
        ("layout_changed", "2"),
        ("layout_changed", "3"),
        ("prefs_changed", "1"),
        ("prefs_changed", "3"),
    ]
    assert emu.person(id="1").attributes["prefs"] == {"a": 5}  # type: ignore[union-attr]
    assert emu.person(id="2").attributes["layout"] == {"cols": 5}  # type: ignore[union-attr]


PROPERTIES = """
name: carts
source: warehouse
model: {table: carts}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {cart_status: cart_status, plan: plan}
on_change:
  - attribute: cart_status
    to: inactive
    event: cart_abandoned
    properties: {amount: {amount}}
"""


@pytest.mark.parametrize(
    ("column_type", "spec", "good", "bad", "reason", "sent"),
    [
        ("double", "amount", "4.5", "'nan'", "value `nan` is not a finite number", 4.5),
        (
            "double",
            "{column: amount, type: number}",
            "4.5",
            "'-infinity'",
            "value `-inf` is not a number",
            4.5,
        ),
        (
            "json",
            "amount",
            """'{"x": 1}'""",
            """'{"x": NaN}'""",
            'value `{"x": NaN}` is not valid JSON',
            {"x": 1},
        ),
        (
            "double[]",
            "amount",
            "[1.0]",
            "[1.0, 'nan'::double]",
            "value `[1.0, nan]` is not JSON (it holds NaN or Infinity)",
            [1],
        ),
        (
            "double",
            "{column: amount, type: integer}",
            "4",
            "2.5",
            "value `2.5` is not an integer",
            4,
        ),
        (
            "varchar",
            "{column: amount, type: number}",
            "'4.5'",
            "'lots'",
            "value `lots` is not a number",
            4.5,
        ),
        (
            "varchar",
            "{column: amount, type: json}",
            """'[1]'""",
            """'[1e400]'""",
            "value `[1e400]` holds a number too large for a double (over 1.8e308)",
            [1],
        ),
    ],
)
def test_an_event_property_the_event_cannot_carry_rejects_the_row_it_fires_for(
    project_factory: ProjectFactory,
    column_type: str,
    spec: str,
    good: str,
    bad: str,
    reason: str,
    sent: Any,
) -> None:
    """A transition whose event would carry a property it cannot (NaN, an infinity, a
    fraction as an integer, text that is no number) rejects its row, with the reason an
    events sync gives: the event is not sent without the property, nor the attributes that
    would move the snapshot past the transition. The other rows go on, a row that fires no
    event is sent whatever the property column holds, and once fixed, the transition fires
    once with the property."""
    project_factory.sql(
        f"""
        create or replace table carts as select user_id, 'open' as cart_status,
          {good}::{column_type} as amount, 'pro' as plan from range(1, 4) t(user_id)
        """
    )
    project = project_factory.write({"carts": PROPERTIES.replace("{amount}", spec)})
    run_sync(project, "carts", console=NullConsole())
    project_factory.sql(
        f"""
        update carts set plan = 'free';
        update carts set cart_status = 'inactive' where user_id in (1, 2);
        update carts set amount = {bad} where user_id in (1, 3);
        """
    )
    plan = plan_sync(project, "carts", console=NullConsole())
    report = run_sync(project, "carts", console=NullConsole())

    expected = [("1", f"column `amount` (field `amount`): {reason}")]
    assert plan.changes.rejected_samples == report.changes.rejected_samples
    assert list(report.changes.rejected_samples) == expected
    assert (plan.changes.state_events, report.changes.state_events) == (1, 1)
    emu = project_factory.emulator
    assert [(e.name, e.data) for e in emu.events()] == [("cart_abandoned", {"amount": sent})]
    assert fired(emu) == [("cart_abandoned", "2")]
    people = {p.id: p.attributes for p in emu.people()}
    assert {k: (a["cart_status"], a["plan"]) for k, a in people.items()} == {
        "1": ("open", "pro"),
        "2": ("inactive", "free"),
        "3": ("open", "free"),
    }

    project_factory.sql(f"update carts set amount = {good}::{column_type} where user_id = 1")
    assert run_sync(project, "carts", console=NullConsole()).changes.state_events == 1
    assert run_sync(project, "carts", console=NullConsole()).changes.state_events == 0
    assert fired(emu) == [("cart_abandoned", "1"), ("cart_abandoned", "2")]
    assert [e.data for e in emu.events()] == [{"amount": sent}] * 2
    person = emu.person(id="1")
    assert person is not None and person.attributes["cart_status"] == "inactive"


def test_a_row_rejected_for_its_event_property_keeps_its_email_from_the_row_taking_it(
    project_factory: ProjectFactory,
) -> None:
    """Cart 5 moves to a new email and goes inactive with a NaN amount, while new row 6 takes
    its old email. Row 5 is rejected, so it gives nothing up: row 6 waits, naming it, instead
    of an identify that Customer.io would apply to person 5 (its email's holder). Once the
    amount is fixed, both land and the event fires once."""
    project_factory.sql(
        "create or replace table carts as select * from (values "
        "(5, 'ann@x.io', 'open', 4.5::double, 'pro')) t(user_id, email, cart_status, amount, plan)"
    )
    sync = PROPERTIES.replace("{amount}", "amount").replace(
        "identify_by: {id: user_id}", "identify_by: {id: user_id, email: email}"
    )
    project = project_factory.write({"carts": sync})
    emu = project_factory.emulator
    run_sync(project, "carts", console=NullConsole())
    project_factory.sql(
        """
        update carts set email = 'ann5@x.io', cart_status = 'inactive', amount = 'nan';
        insert into carts values (6, 'ann@x.io', 'open', 1.0, 'free');
        """
    )
    report = run_sync(project, "carts", console=NullConsole())

    rejected = dict(report.changes.rejected_samples)
    assert rejected["5"] == "column `amount` (field `amount`): value `nan` is not a finite number"
    assert "key `5`" in rejected["6"], rejected
    assert (report.delivered, report.changes.state_events) == (0, 0)
    assert {p.id: (p.email, p.attributes["cart_status"]) for p in emu.people()} == {
        "5": ("ann@x.io", "open")
    }
    assert emu.events() == []

    project_factory.sql("update carts set amount = 3.0 where user_id = 5")
    fixed = run_sync(project, "carts", console=NullConsole())
    assert (fixed.status, fixed.changes.rejected, fixed.changes.state_events) == ("success", 0, 1)
    assert {p.id: (p.email, p.attributes["cart_status"]) for p in emu.people()} == {
        "5": ("ann5@x.io", "inactive"),
        "6": ("ann@x.io", "open"),
    }
    assert [(e.name, e.data) for e in emu.events()] == [("cart_abandoned", {"amount": 3})]


def test_an_object_transition_whose_property_is_nan_rejects_the_object_and_notifies_nobody(
    project_factory: ProjectFactory,
) -> None:
    """Acme churns with a NaN `arr`: its row is rejected with the reason, none of its people
    hears (each heard `{}` without the property, and never again), and it keeps its plan in
    Customer.io; Globex churns as it should. Fixed, Acme's people hear once each."""
    project_factory.sql(
        """
        create or replace table accounts as select * from (values
          ('acme', 'pro', 10.0::double), ('globex', 'pro', 20.0)) t(account_id, plan, arr);
        create or replace table members as select * from (values
          (1, 'acme'), (2, 'acme'), (3, 'globex')) t(user_id, account_id);
        """
    )
    accounts = ACCOUNTS.replace("properties: [plan]", "properties: [plan, arr]")
    project = project_factory.write({"accounts": accounts, "members": MEMBERS})
    run_sync(project, "accounts", console=NullConsole())
    run_sync(project, "members", console=NullConsole())
    project_factory.sql(
        "update accounts set plan = 'churned'; "
        "update accounts set arr = 'nan' where account_id = 'acme'"
    )
    report = run_sync(project, "accounts", console=NullConsole())

    assert list(report.changes.rejected_samples) == [
        ("acme", "column `arr` (field `arr`): value `nan` is not a finite number")
    ]
    fix = "update accounts set arr = 0 where account_id = 'acme'"
    assert_acme_held_then_heard_once_fixed(project_factory, project, fix, ["1", "2"])
    arr = sorted(e.data["arr"] for e in project_factory.emulator.events())
    assert arr == [0, 0, 20]


def assert_acme_held_then_heard_once_fixed(
    project_factory: ProjectFactory, project: Project, fix: str, acme_people: list[str]
) -> None:
    """Acme's row was rejected as both accounts churned: only Globex's person heard and Acme
    kept its plan in Customer.io. Once ``fix`` (SQL) mends the row, each of ``acme_people``
    hears once, and a run after that fires nothing."""
    emu = project_factory.emulator
    assert fired(emu) == [("account_churned", "3")]
    plans = {o.object_id: o.attributes["plan"] for o in emu.objects()}
    assert plans == {"acme": "pro", "globex": "churned"}
    project_factory.sql(fix)
    assert run_sync(project, "accounts", console=NullConsole()).changes.state_events == 2
    assert run_sync(project, "accounts", console=NullConsole()).changes.state_events == 0
    everyone = sorted([*acme_people, "3"])
    assert fired(emu) == [("account_churned", p) for p in everyone]


NOTES = """
name: carts
source: warehouse
model: {table: carts}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {cart_status: cart_status, plan: plan}
on_change:
  - attribute: cart_status
    to: inactive
    event: cart_abandoned
    properties: {note: note}
"""


def event_bytes(identifiers: str, name: str, properties: str) -> int:
    """The bytes of an event's operation as the delivery client measures it against
    Customer.io's 32 KB: its ULID id, identifiers, name, a unix second (10 digits) and
    properties."""
    op = (
        f'{{"id":"{"0" * 26}","type":"person","action":"event","identifiers":{identifiers},'
        f'"name":"{name}","timestamp":{"1" * 10},"attributes":{properties}}}'
    )
    return len(op.encode())


def test_an_event_over_32_kb_as_sent_rejects_the_row_it_fires_for(
    project_factory: ProjectFactory,
) -> None:
    """Cart 1's event would be one byte over Customer.io's 32,768 bytes per operation: its row
    is rejected, in plan and run alike, with its size, its properties' and the largest one,
    rather than said to be sent, refused by the delivery client and held back run after run.
    Cart 2's event, exactly at the limit, is delivered; cart 3, as large but firing nothing,
    is sent as it is. Once the note is trimmed, cart 1's transition fires once."""
    base = event_bytes('{"id":"1"}', "cart_abandoned", '{"note":""}')
    over, at = 32_769 - base, 32_768 - base
    project_factory.sql(
        "create or replace table carts as select user_id, 'open' as cart_status, "
        "'x' as note, 'pro' as plan from range(1, 4) t(user_id)"
    )
    project = project_factory.write({"carts": NOTES})
    run_sync(project, "carts", console=NullConsole())
    project_factory.sql(
        f"""
        update carts set plan = 'free';
        update carts set cart_status = 'inactive' where user_id in (1, 2);
        update carts set note = repeat('y', {over}) where user_id in (1, 3);
        update carts set note = repeat('z', {at}) where user_id = 2;
        """
    )
    plan = plan_sync(project, "carts", console=NullConsole())
    report = run_sync(project, "carts", console=NullConsole())

    reason = (
        "event `cart_abandoned` of `on_change[0]` is 32769 bytes as sent, over the 32768-byte "
        f"limit of Customer.io per operation ({over + 11} bytes of properties, the largest "
        f"`note` {over + 9} bytes); trim large properties in the model or leave them out of "
        "`on_change[0].properties`"
    )
    assert plan.changes.rejected_samples == report.changes.rejected_samples
    assert list(report.changes.rejected_samples) == [("1", reason)]
    assert (plan.changes.to_send, report.changes.to_send) == (2, 2)
    assert report.status == "success"  # nothing refused in delivery: no person held back
    assert (plan.changes.state_events, report.changes.state_events) == (1, 1)
    emu = project_factory.emulator
    assert fired(emu) == [("cart_abandoned", "2")]
    assert [e.data for e in emu.events()] == [{"note": "z" * at}]
    people = {p.id: p.attributes for p in emu.people()}
    assert {k: (a["cart_status"], a["plan"]) for k, a in people.items()} == {
        "1": ("open", "pro"),
        "2": ("inactive", "free"),
        "3": ("open", "free"),
    }
    again = run_sync(project, "carts", console=NullConsole())
    assert list(again.changes.rejected_samples) == [("1", reason)]
    assert (again.status, again.delivered, again.changes.state_events) == ("success", 0, 0)

    project_factory.sql("update carts set note = 'trimmed' where user_id = 1")
    fixed = run_sync(project, "carts", console=NullConsole())
    assert (fixed.status, fixed.changes.rejected, fixed.changes.state_events) == ("success", 0, 1)
    assert run_sync(project, "carts", console=NullConsole()).changes.state_events == 0
    assert fired(emu) == [("cart_abandoned", "1"), ("cart_abandoned", "2")]
    assert [e.data for e in emu.events()][1:] == [{"note": "trimmed"}]
    person = emu.person(id="1")
    assert person is not None and person.attributes["cart_status"] == "inactive"


def test_an_object_transition_over_32_kb_for_one_related_person_rejects_the_object(
    project_factory: ProjectFactory,
) -> None:
    """Acme's event is checked as sent to each of its people: to person 1 it is exactly at
    Customer.io's 32,768 bytes per operation, to person 22 (one identifier byte more) over it.
    Acme's row is rejected with the size of the largest, none of its people hears and it keeps
    its plan; Globex churns as it should. Trimmed, Acme's people hear once each."""
    properties = '{"plan":"churned","notes":"","object_type_id":"1","object_id":"acme"}'
    at = 32_768 - event_bytes('{"id":"1"}', "account_churned", properties)
    project_factory.sql(
        f"""
        create or replace table accounts as select * from (values
          ('acme', 'pro', repeat('n', {at})), ('globex', 'pro', 'small')
        ) t(account_id, plan, notes);
        create or replace table members as select * from (values
          (1, 'acme'), (22, 'acme'), (3, 'globex')) t(user_id, account_id);
        """
    )
    accounts = ACCOUNTS.replace("properties: [plan]", "properties: [plan, notes]")
    project = project_factory.write({"accounts": accounts, "members": MEMBERS})
    run_sync(project, "accounts", console=NullConsole())
    run_sync(project, "members", console=NullConsole())
    project_factory.sql("update accounts set plan = 'churned'")
    plan = plan_sync(project, "accounts", console=NullConsole())
    report = run_sync(project, "accounts", console=NullConsole())

    reason = (
        "event `account_churned` of `on_change[0]` is 32769 bytes as sent, over the 32768-byte "
        f"limit of Customer.io per operation ({at + 69} bytes of properties, the largest "
        f"`notes` {at + 10} bytes); trim large properties in the model or leave them out of "
        "`on_change[0].properties`"
    )
    assert plan.changes.rejected_samples == report.changes.rejected_samples
    assert list(report.changes.rejected_samples) == [("acme", reason)]
    assert report.status == "success"
    assert (plan.changes.state_events, report.changes.state_events) == (1, 1)
    fix = "update accounts set notes = 'short' where account_id = 'acme'"
    assert_acme_held_then_heard_once_fixed(project_factory, project, fix, ["1", "22"])
