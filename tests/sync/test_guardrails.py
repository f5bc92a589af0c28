"""Guardrails: a run that breaks the data contract is refused before anything is sent."""

from __future__ import annotations

from typing import Any

import pytest

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.errors import ContractError
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {sql: "select * from users"}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes:
  plan: plan
  signed_up_at: {column: signed_up_at, type: timestamp}
  promo: {column: promo, on_null: clear}
"""

USERS = """
create or replace table users as
select i as user_id, case when i % 2 = 0 then 'pro' else 'free' end as plan,
       timestamptz '2026-01-01 00:00:00+00' + to_days(i) as signed_up_at,
       'P' || i as promo
from range(1, 21) t(i);
"""

EVENTS = """
name: orders
source: warehouse
model: {sql: "select * from orders"}
kind: events
identify_by: {id: user_id}
event: {name: {value: Order Placed}, id: order_id}
backfill: {older: send}
"""

#: an events sync of the `orders` table whose event names come from its `event_name` column
NAMED_ORDERS = """
name: orders
source: warehouse
model: {table: orders}
kind: events
identify_by: {id: user_id}
event: {name: event_name, id: order_id}
backfill: {first_run: send}
"""


class Sent:
    """What the emulator holds and how many batches it got, to show nothing more arrived."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.people = emu.people()
        self.events = emu.events()
        self.batches = self.count()

    def count(self) -> int:
        return sum(1 for r in self.emu.request_log() if r.path == "/api/v2/batch")

    def assert_nothing_new(self) -> None:
        assert self.emu.people() == self.people
        assert self.emu.events() == self.events
        assert self.count() == self.batches


def with_guardrails(body: str, guardrails: str) -> str:
    return body + f"guardrails: {guardrails}\n"


def refused(project: Any, sync: str, emu: Emulator) -> str:
    before = Sent(emu)
    with pytest.raises(ContractError) as caught:
        run_sync(project, sync, console=NullConsole())
    before.assert_nothing_new()
    return str(caught.value)


def synced_once(factory: ProjectFactory, guardrails: str | None = None) -> Any:
    """The 20 users of USERS sent once by PROFILE (with ``guardrails``, if any): the
    snapshot and contract the next run is held to. Returns the project."""
    factory.sql(USERS)
    body = PROFILE if guardrails is None else with_guardrails(PROFILE, guardrails)
    project = factory.write({"profile": body})
    run_sync(project, "profile", console=NullConsole())
    return project


def signed_up_at_as(factory: ProjectFactory, expression: str) -> None:
    """The `users` table with its `signed_up_at` read as ``expression`` (a model change)."""
    factory.sql(
        f"create or replace table users as select user_id, plan, {expression} as signed_up_at, "
        "promo from (select * from users)"
    )


def test_max_changed_stops_the_run_with_the_limit_the_excess_and_samples(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    project_factory.sql(USERS)
    project = project_factory.write({"profile": with_guardrails(PROFILE, "{max_changed: 25%}")})
    first = run_sync(project, "profile", console=NullConsole())
    assert first.delivered == 20
    assert [g.actual for g in first.guards if g.name == "max_changed"] == [
        "0 (skipped: no previous snapshot)"
    ]

    project_factory.sql("update users set plan = 'enterprise' where user_id <= 6")
    message = refused(project, "profile", emu)
    assert "max_changed is 6 of 20 people (30.0%), over the limit of 25%" in message
    assert "allows 5: 1 over" in message
    assert '1: {"plan":"enterprise"' in message  # a sample row
    assert "--force" in message

    plan = plan_sync(project, "profile", console=NullConsole())
    (guard,) = [g for g in plan.guards if g.name == "max_changed"]
    assert guard.breached and guard.limit == "25%"
    # a plan builds payloads only for what it shows: the guard's samples still have them
    assert any(s.startswith('1: {"plan":"enterprise"') for s in guard.samples)

    forced = run_sync(project, "profile", console=NullConsole(), force=True)
    assert forced.status == "success" and forced.delivered == 6
    person = emu.person(id="1")
    assert person is not None and person.attributes["plan"] == "enterprise"


def test_max_removed_and_max_cleared(project_factory: ProjectFactory) -> None:
    emu = project_factory.emulator
    project = synced_once(project_factory, "{max_removed: 10%, max_cleared: 3}")

    project_factory.sql("delete from users where user_id > 17")
    message = refused(project, "profile", emu)
    assert "max_removed is 3 of 20 people (15.0%), over the limit of 10%" in message
    assert "18 {" in message  # sample: a removed key with its identifiers

    project_factory.sql(USERS + "update users set promo = null where user_id <= 4")
    message = refused(project, "profile", emu)
    assert "max_cleared is 4, over the limit of 3" in message
    assert "1: clears promo" in message


def test_a_full_resync_is_held_to_max_removed_and_max_cleared_of_the_real_snapshot(
    project_factory: ProjectFactory,
) -> None:
    """`--full-resync` sends everyone again, but the people who left the model are still
    undone from the snapshot: a `mirror` run must not delete (or clear) them past the limits
    a plain run is held to."""
    emu = project_factory.emulator
    project_factory.sql(USERS)
    deleting = with_guardrails(PROFILE + "mode: mirror\ndelete_removed: true\n",
                               "{max_removed: 10%}")  # fmt: skip
    clearing = with_guardrails(
        PROFILE.replace("name: profile", "name: cleared") + "mode: mirror\n", "{max_cleared: 5}"
    )
    project = project_factory.write({"profile": deleting, "cleared": clearing})
    run_sync(project, "profile", console=NullConsole())
    run_sync(project, "cleared", console=NullConsole())
    project_factory.sql("delete from users where user_id > 10")  # a broken join

    plan = plan_sync(project, "profile", console=NullConsole(), full_resync=True)
    (guard,) = [g for g in plan.guards if g.name == "max_removed"]
    assert guard.breached and guard.actual == "10 of 20 people (50.0%)"
    before = Sent(emu)
    with pytest.raises(ContractError) as caught:
        run_sync(project, "profile", console=NullConsole(), full_resync=True)
    before.assert_nothing_new()
    assert "max_removed is 10 of 20 people (50.0%), over the limit of 10%" in str(caught.value)
    assert len(emu.people()) == 20

    with pytest.raises(ContractError, match=r"max_cleared is 30, over the limit of 5"):
        run_sync(project, "cleared", console=NullConsole(), full_resync=True)
    before.assert_nothing_new()

    forced = run_sync(project, "profile", console=NullConsole(), full_resync=True, force=True)
    assert forced.status == "success" and forced.changes.removed_sent == 10
    assert sorted(int(p.id) for p in emu.people()) == list(range(1, 11))


def test_max_events_is_a_count_per_run(project_factory: ProjectFactory) -> None:
    emu = project_factory.emulator
    project_factory.sql(
        "create table orders as select i as order_id, i % 3 as user_id from range(12) t(i)"
    )
    project = project_factory.write({"orders": with_guardrails(EVENTS, "{max_events: 10}")})
    message = refused(project, "orders", emu)
    assert "max_events is 12, over the limit of 10" in message
    assert ": Order Placed" in message
    assert run_sync(project, "orders", console=NullConsole(), force=True).delivered == 12


def test_defaults_apply_to_every_sync_and_a_sync_can_turn_one_off(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    (project.root / "lockgate.yml").write_text(
        (project.root / "lockgate.yml").read_text() + "defaults:\n  guardrails: {max_changed: 1}\n"
    )
    from lockgate.project.loader import load_project

    project = load_project(project.root)
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("update users set plan = 'x' where user_id <= 2")
    assert "max_changed is 2, over the limit of 1" in refused(project, "profile", emu)

    sync_file = project.root / "syncs" / "profile.yml"
    sync_file.write_text(sync_file.read_text() + "guardrails: {max_changed: off}\n")
    assert run_sync(load_project(project.root), "profile", console=NullConsole()).delivered == 2


def test_type_drift_stops_until_acknowledged_and_force_does_not_override(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    project = synced_once(project_factory)

    signed_up_at_as(project_factory, "strftime(signed_up_at, '%Y-%m-%dT%H:%M:%SZ')")
    message = refused(project, "profile", emu)
    assert "type drift" in message
    assert "`signed_up_at` TIMESTAMP WITH TIME ZONE → VARCHAR" in message
    assert "accept_type_changes: {signed_up_at: VARCHAR}" in message
    assert "2026-01-02T00:00:00Z" in message  # sample values of the column

    before = Sent(emu)
    with pytest.raises(ContractError, match="--force` does not override type drift"):
        run_sync(project, "profile", console=NullConsole(), force=True)
    before.assert_nothing_new()

    # acknowledged: the string is parsed as a timestamp, same value as before
    accepted = with_guardrails(PROFILE, "{accept_type_changes: {signed_up_at: VARCHAR}}")
    project = project_factory.write({"profile": accepted})
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "success"
    person = emu.person(id="3")
    assert person is not None and person.attributes["signed_up_at"] == 1767484800
    # the new type is now the contract: the acknowledgement can go
    project = project_factory.write({"profile": PROFILE})
    assert run_sync(project, "profile", console=NullConsole()).status == "success"


def test_a_column_that_became_a_bare_null_is_named_a_model_bug_not_a_type_to_accept(
    project_factory: ProjectFactory,
) -> None:
    """`null as signed_up_at` in the model (a placeholder, a join that lost its table) has no
    type at all (DuckDB: NULL): the run stops saying every value is null and how to fix the
    model, and offers no acknowledgement (a column of no type is no type to accept). Once
    the model casts it (`cast(null as ...)`), its type is back and nothing stops it."""
    emu = project_factory.emulator
    project = synced_once(project_factory)

    signed_up_at_as(project_factory, "null")
    message = refused(project, "profile", emu)
    assert "type drift: `signed_up_at` TIMESTAMP WITH TIME ZONE → NULL (no type)" in message
    assert "every value in it is null (all 20 rows)" in message
    assert "a bug in the model, most often a broken join or a placeholder" in message
    assert "has no type any more (a bare `null as signed_up_at` in the model)" in message
    assert "cast(null as TIMESTAMP WITH TIME ZONE) as signed_up_at" in message
    assert "remove the field" in message
    assert "accept_type_changes: {" not in message  # nothing to acknowledge
    plan = plan_sync(project, "profile", console=NullConsole())
    (guard,) = [g for g in plan.guards if g.name == "type drift"]
    assert guard.breached and not guard.forceable

    # acknowledging it is refused where it is written, with the same fix
    from lockgate.errors import ConfigError

    acked = with_guardrails(PROFILE, '{accept_type_changes: {signed_up_at: "NULL"}}')
    with pytest.raises(ConfigError, match=r"cast\(null as"):
        project_factory.write({"profile": acked})

    # cast in the model: the type is the contract's again and the run goes on; under
    # `on_null: skip` everyone keeps the value they had
    signed_up_at_as(project_factory, "cast(null as timestamptz)")
    assert run_sync(project, "profile", console=NullConsole()).status == "success"
    person = emu.person(id="3")
    assert person is not None and person.attributes["signed_up_at"] == 1767484800


def test_a_column_of_a_new_type_whose_every_value_is_null_says_so(
    project_factory: ProjectFactory,
) -> None:
    """A type change where every value is null (Postgres types a bare `null as x` as text)
    leads with that: no sample value to show, most likely a model bug."""
    emu = project_factory.emulator
    project = synced_once(project_factory)

    signed_up_at_as(project_factory, "cast(null as varchar)")
    message = refused(project, "profile", emu)
    assert "`signed_up_at` TIMESTAMP WITH TIME ZONE → VARCHAR" in message
    assert "every value in it is null (all 20 rows)" in message
    assert "cast(null as TIMESTAMP WITH TIME ZONE) as signed_up_at" in message
    assert "Sample rows" not in message


def test_a_column_of_no_type_given_its_type_again_is_no_drift(
    project_factory: ProjectFactory,
) -> None:
    """A first run with a bare `null as signed_up_at` records a column of no type; the model
    fixed (timestamps again) is what should happen, not a drift to acknowledge."""
    project_factory.sql(USERS)
    signed_up_at_as(project_factory, "null")
    project = project_factory.write({"profile": PROFILE})
    assert run_sync(project, "profile", console=NullConsole()).status == "success"
    project_factory.sql(USERS)
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "success"
    person = project_factory.emulator.person(id="3")
    assert person is not None and person.attributes["signed_up_at"] == 1767484800


def test_a_changed_identifier_stops_the_run_until_forced_once(
    project_factory: ProjectFactory,
) -> None:
    emu = project_factory.emulator
    project_factory.sql(
        USERS + "alter table users add column email varchar;"
        "update users set email = 'u' || user_id || '@example.com';"
    )
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())

    by_email = PROFILE.replace("identify_by: {id: user_id}", "identify_by: {email: email}")
    project = project_factory.write({"profile": by_email})
    message = refused(project, "profile", emu)
    assert "identifier changed" in message
    assert '`identify_by` was {"id":"user_id"}, now {"email":"email"}' in message

    assert run_sync(project, "profile", console=NullConsole(), force=True).status == "success"
    assert run_sync(project, "profile", console=NullConsole()).status == "success"


def test_the_alias_user_id_or_another_order_of_the_same_identifiers_is_no_change(
    project_factory: ProjectFactory,
) -> None:
    """`{id: user_id}` → `{user_id: user_id}` (the documented alias of `id`), or the same
    identifiers in another order, address everyone as before: neither `validate` nor the run
    takes it for a changed identifier."""
    from lockgate.sync.contract import check_project

    project_factory.sql(
        USERS + "alter table users add column email varchar;"
        "update users set email = 'u' || user_id || '@example.com';"
    )
    both = PROFILE.replace("{id: user_id}", "{id: user_id, email: email}")
    run_sync(project_factory.write({"profile": both}), "profile", console=NullConsole())

    for same in ("{user_id: user_id, email: email}", "{email: email, id: user_id}"):
        project = project_factory.write({"profile": PROFILE.replace("{id: user_id}", same)})
        assert [f for f in check_project(project) if f.check == "identifier changed"] == []
        report = run_sync(project, "profile", console=NullConsole())
        assert report.status == "success"
        assert [g.actual for g in report.guards if g.name.startswith("identifier")] == ["unchanged"]


def test_a_changed_event_key_stops_the_run_until_forced_once(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`event.id: order_id` → `{hash: [order_id]}` keys the same occurrences differently: none
    is in the ledger under its new key, so every delivered event would be sent again as a new
    one. `validate`, `plan` and `sync` say so; `--force` accepts it once."""
    from lockgate.cli import main
    from lockgate.sync.contract import check_project

    emu = project_factory.emulator
    project_factory.sql(
        "create table orders as select i as order_id, i % 3 as user_id from range(12) t(i)"
    )
    project = project_factory.write({"orders": EVENTS})
    assert run_sync(project, "orders", console=NullConsole()).delivered == 12
    # a new name is not a new key: nothing is sent again, nothing is refused
    renamed = EVENTS.replace("Order Placed", "Order Completed")
    report = run_sync(project_factory.write({"orders": renamed}), "orders", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 0)

    hashed = renamed.replace("id: order_id}", "id: {hash: [order_id]}}")
    project = project_factory.write({"orders": hashed})
    (finding,) = [f for f in check_project(project) if f.level == "error"]
    assert "`event.id` was `order_id`, now `{hash: [order_id]}`" in finding.message
    assert "every delivered event still in the model would be sent again" in finding.message

    capsys.readouterr()
    main(["plan", "orders", "--project", str(project.root)])
    out = capsys.readouterr().out
    assert "event key changed" in out and "now `{hash: [order_id]}`" in out and "BREACHED" in out

    message = refused(project, "orders", emu)
    assert message.startswith(
        "sync `orders` stopped before sending anything: event key changed: `event.id` was "
        "`order_id`, now `{hash: [order_id]}`."
    )
    assert "each still in the model would be sent again as a new event" in message
    assert "this run would send 12 events" in message
    assert "set `event.id` back to `order_id`" in message
    assert "`lockgate sync orders --force` once" in message

    assert run_sync(project, "orders", console=NullConsole(), force=True).delivered == 12
    assert len(emu.events()) == 24  # what forcing it means: each order twice in Customer.io
    again = run_sync(project, "orders", console=NullConsole())
    assert (again.status, again.delivered, again.changes.already_delivered) == ("success", 0, 12)
    # a key change in a run that would send no event stops nothing (the model is empty now)
    project_factory.sql("delete from orders")
    project = project_factory.write({"orders": renamed})
    assert run_sync(project, "orders", console=NullConsole()).status == "success"


def test_a_key_changed_while_no_event_would_be_sent_is_refused_not_recorded_unseen(
    project_factory: ProjectFactory,
) -> None:
    """A key changed in a run where every event is older than `backfill.max_age` (skipped),
    or every row is rejected, sends nothing now, but the events delivered under the old key
    are not in the ledger under the new one: recorded silently, the new key let a later
    `older: send` (or a longer `max_age`, or a fixed row) send each of them again as a new
    event. The run is refused, saying so."""
    emu = project_factory.emulator
    project_factory.sql(
        "create table orders as select i as order_id, 1 as user_id, "
        "now() - to_hours(i) as placed_at from range(1, 5) t(i)"
    )
    timed = EVENTS.replace("order_id}", "order_id, timestamp: placed_at}")
    project = project_factory.write({"orders": timed})
    assert run_sync(project, "orders", console=NullConsole()).delivered == 4
    # all four are older than 30 minutes now: skipped, nothing would be sent
    quiet = timed.replace("id: order_id,", "id: {hash: [order_id]},").replace(
        "backfill: {older: send}", "backfill: {max_age: 30m, older: skip}"
    )
    message = refused(project_factory.write({"orders": quiet}), "orders", emu)
    assert "event key changed: `event.id` was `order_id`, now `{hash: [order_id]}`" in message
    assert "4 events older than `backfill.max_age` (30m) are skipped now" in message
    assert "sent again as new events if `backfill.older` becomes `send`" in message
    # so is one whose rows are all rejected now (a row gone bad after its event was sent)
    project_factory.sql("update orders set user_id = null")
    bad = quiet.replace("max_age: 30m", "max_age: 72h")
    message = refused(project_factory.write({"orders": bad}), "orders", emu)
    assert "4 rows rejected now would be sent as new events once fixed" in message
    project_factory.sql("update orders set user_id = 1")
    # nothing was recorded: sending the old events later sends none of them twice
    project = project_factory.write({"orders": timed})
    report = run_sync(project, "orders", console=NullConsole())
    assert (report.status, report.delivered, report.changes.already_delivered) == ("success", 0, 4)
    assert len(emu.events()) == 4


def test_plan_shows_the_guardrails_and_sync_exits_1_naming_the_breach(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from lockgate.cli import main

    emu = project_factory.emulator
    project_factory.sql(USERS)
    project = project_factory.write({"profile": with_guardrails(PROFILE, "{max_removed: 2}")})
    args = ["--project", str(project.root)]
    main(["sync", "profile", *args])
    project_factory.sql("delete from users where user_id > 15")
    capsys.readouterr()

    main(["plan", "profile", *args])
    out = capsys.readouterr().out
    assert "profile: guardrails" in out and "max_removed" in out and "BREACHED" in out

    before = Sent(emu)
    with pytest.raises(SystemExit) as exited:
        main(["sync", "profile", *args])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "stopped before sending anything: max_removed is 5, over the limit of 2" in err
    assert "--force" in err
    before.assert_nothing_new()

    main(["sync", "profile", *args, "--force"])  # returns: exit 0
    assert "max_removed" in capsys.readouterr().out


def test_a_sync_a_guardrail_stops_reports_its_counts_and_guardrails(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sync --json` of a stopped run carries what `plan --json` does (its run id, counts and
    `guardrails`), the human output shows the guardrails table, and the error names every
    breached guardrail, not "(and 1 more)"."""
    import json

    from lockgate.cli import main

    emu = project_factory.emulator
    project_factory.sql(USERS)
    rails = "{max_changed: 1, max_removed: 0}"
    project = project_factory.write({"profile": with_guardrails(PROFILE, rails)})
    args = ["--project", str(project.root)]
    main(["sync", "profile", *args])
    project_factory.sql("update users set plan = 'x' where user_id < 5; delete from users "
                        "where user_id = 10")  # fmt: skip
    capsys.readouterr()

    before = Sent(emu)
    with pytest.raises(SystemExit) as exited:
        main(["sync", "profile", *args, "--json"])
    assert exited.value.code == 1
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["status"] == "failed" and doc["sync"] == "profile" and doc["run_id"]
    assert (doc["changes"]["changed"], doc["changes"]["removed"], doc["delivered"]) == (4, 1, 0)
    breached = {g["name"]: g["actual"] for g in doc["guardrails"] if g["breached"]}
    assert breached == {"max_changed": "4", "max_removed": "1"}
    assert "max_changed is 4, over the limit of 1 (also breached: max_removed (1))" in doc["error"]
    (run,) = [r for r in json.loads(_out(capsys, main, ["runs", *args, "--json"])) if
              r["run_id"] == doc["run_id"]]  # fmt: skip
    assert run["status"] == "failed"

    with pytest.raises(SystemExit):
        main(["sync", "profile", *args])
    out = capsys.readouterr().out
    assert "profile: guardrails" in out and out.count("BREACHED") == 2
    before.assert_nothing_new()


def _out(capsys: pytest.CaptureFixture[str], main: Any, argv: list[str]) -> str:
    capsys.readouterr()
    main(argv)
    return capsys.readouterr().out


def test_type_drift_covers_the_columns_of_on_change_properties_and_unless(
    project_factory: ProjectFactory,
) -> None:
    """A column read only as an `on_change` event property (or in its `unless`) that changes
    type would change what the event carries (`10` → `'20'`): the run is refused like for an
    attribute's column."""
    emu = project_factory.emulator
    project_factory.sql(
        "create table carts as select i as user_id, 'open' as cart_status, i * 10 as cart_value, "
        "null::integer as order_id from range(1, 4) t(i)"
    )
    carts = """
    name: carts
    source: warehouse
    model: {table: carts}
    kind: people
    primary_key: user_id
    identify_by: {id: user_id}
    attributes: {cart_status: cart_status}
    on_change:
      - attribute: cart_status
        to: abandoned
        event: cart_abandoned
        properties: {cart_value: cart_value}
        unless: "order_id is not null"
    """
    project = project_factory.write({"carts": carts})
    run_sync(project, "carts", console=NullConsole())
    project_factory.sql(
        "alter table carts alter cart_value type varchar; "
        "alter table carts alter order_id type varchar; "
        "update carts set cart_status = 'abandoned' where user_id = 2"
    )
    (guard,) = [g for g in plan_sync(project, "carts", console=NullConsole()).guards if g.breached]
    assert guard.actual == "`cart_value` BIGINT → VARCHAR, `order_id` INTEGER → VARCHAR"
    message = refused(project, "carts", emu)
    assert "type drift: `cart_value` BIGINT → VARCHAR" in message
    assert "accept_type_changes: {cart_value: VARCHAR, order_id: VARCHAR}" in message
    assert emu.events() == []


def test_types_drift_across_families_not_within_one() -> None:
    from lockgate.sync.guard import type_family

    assert type_family("INTEGER") == type_family("BIGINT") == type_family("DECIMAL(12,2)")
    assert type_family("TIMESTAMP WITH TIME ZONE") == type_family("DATE") == "timestamp"
    assert type_family("VARCHAR") == "string" != type_family("TIMESTAMP")
    assert type_family("INTEGER[]") == "nested" != type_family("INTEGER")
    # what earlier versions staged these DuckDB types as (a BIT as its bytes, a TIMETZ without
    # its offset, a UHUGEINT as a decimal) and what they are staged as now: an upgrade stops
    # no sync for type drift
    assert type_family("BLOB") == type_family("BIT")
    assert type_family("TIME") == type_family("TIME WITH TIME ZONE")
    assert type_family("DECIMAL(38,0)") == type_family("HUGEINT") == type_family("UHUGEINT")


def test_max_rejected_stops_a_run_whose_model_went_bad_even_on_a_first_run(
    project_factory: ProjectFactory,
) -> None:
    """A broken join that nulls the identifiers of half the rows stops the run (a share of
    this run's rows, so it applies on a first run); `--force` sends the good rows once."""
    emu = project_factory.emulator
    project_factory.sql(USERS + "update users set user_id = null where user_id > 10;")
    project = project_factory.write({"profile": with_guardrails(PROFILE, "{max_rejected: 5%}")})
    message = refused(project, "profile", emu)
    assert "max_rejected is 10 of 20 rows in the model (50.0%), over the limit of 5%" in message
    assert "10 rows rejected by the mapping where the limit allows 1: 9 over" in message
    assert "primary key is null" in message  # a sample row's reason
    report = run_sync(project, "profile", console=NullConsole(), force=True)
    assert report.delivered == 10 and len(emu.people()) == 10
    # the same rows are rejected again by the next run: the hint says so, and how to end it
    assert "fix the rows in the model (`lockgate plan profile --export-rejected FILE`" in message
    assert "rows still bad are rejected again and stop the next run" in message
    assert "max_rejected is 10 of 20 rows" in refused(project, "profile", emu)


def test_a_share_limit_skipped_says_why_a_first_run_an_empty_snapshot_or_no_rows(
    project_factory: ProjectFactory,
) -> None:
    """A share needs something to be a share of. Each skipped breaker says what is missing:
    no previous snapshot (a first run), a previous snapshot that is empty (the last committed
    run's model was empty: nothing in it can change, be cleared or be removed, so the share
    stops nothing), or a model with no rows (`max_rejected`, a share of this run's rows).
    Once the snapshot holds people again, the shares hold."""
    emu = project_factory.emulator
    project_factory.sql(USERS + "delete from users;")
    rails = "{max_changed: 10%, max_cleared: 10%, max_removed: 10%, max_rejected: 10%}"
    project = project_factory.write({"profile": with_guardrails(PROFILE + "mode: mirror\n", rails)})

    def skipped(report: Any) -> dict[str, tuple[str, str]]:
        return {g.name: (g.actual, g.detail) for g in report.guards if g.name.startswith("max_")}

    first = skipped(run_sync(project, "profile", console=NullConsole()))
    for name in ("max_changed", "max_cleared", "max_removed"):
        assert first[name][0] == "0 (skipped: no previous snapshot)"
    assert first["max_rejected"][0] == "0 (skipped: the model has no rows)"
    assert "a share of this run's rows" in first["max_rejected"][1]

    second = skipped(plan_sync(project, "profile", console=NullConsole()))
    for name in ("max_changed", "max_cleared", "max_removed"):
        assert second[name][0] == "0 (skipped: the previous snapshot is empty)"
        assert "the last committed run left no people" in second[name][1]
        assert "no previous snapshot" not in second[name][1]
        assert "first" not in second[name][1]

    # the model fills again: every person is new, nothing in the snapshot to count
    project_factory.sql(USERS)
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 20)
    assert skipped(report)["max_removed"][0] == "0 (skipped: the previous snapshot is empty)"
    assert skipped(report)["max_rejected"][0] == "0 of 20 rows in the model (0.0%)"
    # and now the shares are of those 20
    project_factory.sql("delete from users where user_id > 17")
    message = refused(project, "profile", emu)
    assert "max_cleared is 9 of 20 people × 3 attributes (15.0%)" in message
    assert "also breached: max_removed (3 of 20 people (15.0%))" in message


def test_people_who_left_an_upsert_sync_stop_counting_once_a_run_is_forced_past_them(
    project_factory: ProjectFactory,
) -> None:
    """In `upsert` mode nothing is sent for people who left the model, and they stay in the
    snapshot: the error says so, and the run `--force` accepts them forgets them, so the next
    run (with an ordinary change) is not refused again for the same people."""
    emu = project_factory.emulator
    project = synced_once(project_factory, "{max_removed: 10%}")
    project_factory.sql("delete from users where user_id > 17")

    message = refused(project, "profile", emu)
    assert "max_removed is 3 of 20 people (15.0%), over the limit of 10%" in message
    assert "3 people left the model (nothing is sent for them in `upsert` mode)" in message
    assert "would be sent" not in message
    assert "that run forgets them, so they stop counting" in message
    forced = run_sync(project, "profile", console=NullConsole(), force=True)
    assert forced.status == "success" and forced.delivered == 0

    project_factory.sql("update users set plan = 'enterprise' where user_id = 1")
    after = run_sync(project, "profile", console=NullConsole())
    assert after.status == "success" and after.delivered == 1
    assert after.changes.removed == 0
    person = emu.person(id="1")
    assert person is not None and person.attributes["plan"] == "enterprise"
    assert len(emu.people()) == 20  # those who left are still in Customer.io, as they were
    # one who comes back is sent again
    project_factory.sql("insert into users select 18, plan, signed_up_at, promo from users limit 1")
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1


def test_emails_as_keys_in_another_case_are_the_same_people_not_removed_ones(
    project_factory: ProjectFactory,
) -> None:
    """A `mirror` sync keyed by the email: every email upper-cased in the model (one with
    spaces around it) gives every row a new key, but Customer.io finds people by their email
    in any case, and Lockgate trims it: they are the same people. The run undoes none of
    them, so `max_removed` does not count them; the run keeps them under their new keys only,
    so the next run counts nothing again, and a real removal still counts."""
    emu = project_factory.emulator
    project_factory.sql(
        "create table users as select 'u' || i || '@example.com' as email, 'pro' as plan "
        "from range(1, 11) t(i)"
    )
    body = """
name: profile
source: warehouse
model: {sql: "select * from users"}
kind: people
primary_key: email
identify_by: {email: email}
attributes: {plan: plan}
mode: mirror
delete_removed: true
guardrails: {max_removed: 10%}
"""
    project = project_factory.write({"profile": body})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 10
    project_factory.sql(
        "update users set email = upper(email); "
        "update users set email = '  ' || email || ' ' where email = 'U1@EXAMPLE.COM'"
    )

    plan = plan_sync(project, "profile", console=NullConsole())
    (guard,) = [g for g in plan.guards if g.name == "max_removed"]
    assert not guard.breached
    assert guard.actual.startswith("0 of 10 people (0.0%)")
    assert "10 under a new key" in guard.actual
    assert plan.changes.removed_sent == 0

    before = len(emu.request_log())
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "success"
    sent = [
        op["action"]
        for r in emu.request_log()[before:]
        if r.path == "/api/v2/batch"
        for op in r.body["batch"]
    ]
    assert "delete" not in sent and sent == ["identify"] * 10
    assert sorted((p.email or "").lower() for p in emu.people()) == sorted(
        f"u{i}@example.com" for i in range(1, 11)
    )
    assert all(p.attributes == {"plan": "pro"} for p in emu.people())

    # the old keys are gone from the snapshot: nothing left to count, shares of 10 people
    again = plan_sync(project, "profile", console=NullConsole())
    assert again.changes.removed == 0 and again.changes.to_send == 0
    (guard,) = [g for g in again.guards if g.name == "max_removed"]
    assert guard.actual == "0 of 10 people (0.0%)"
    gone = "('U1@EXAMPLE.COM', 'U2@EXAMPLE.COM')"  # U1 with its spaces
    project_factory.sql(f"delete from users where trim(email) in {gone}")
    assert "max_removed is 2 of 10 people (20.0%)" in refused(project, "profile", emu)


def test_emails_as_keys_in_another_case_have_not_left_an_upsert_sync(
    project_factory: ProjectFactory,
) -> None:
    """In `upsert` mode nothing is sent for rows that left, but `max_removed` counts them: a
    recased email key is the same person, not one that left, and stops nothing."""
    project_factory.sql(
        "create table users as select 'u' || i || '@example.com' as email, 'pro' as plan "
        "from range(1, 11) t(i)"
    )
    body = """
name: profile
source: warehouse
model: {sql: "select * from users"}
kind: people
primary_key: email
identify_by: {email: email}
attributes: {plan: plan}
guardrails: {max_removed: 10%}
"""
    project = project_factory.write({"profile": body})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("update users set email = upper(email)")
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "success" and report.changes.rekeyed == 10
    assert run_sync(project, "profile", console=NullConsole()).changes.removed == 0
    assert len(project_factory.emulator.people()) == 10


def test_an_empty_model_never_undoes_a_mirror_sync_without_force(
    project_factory: ProjectFactory,
) -> None:
    """No breaker set: a `mirror` sync whose model comes back empty (a failed upstream run, a
    truncated table) is still refused before clearing every person it sent, and `plan`
    shows why; `--force` accepts it once. An upsert sync sends nothing for the rows that left,
    so it runs."""
    emu = project_factory.emulator
    project_factory.sql(USERS)
    mirror = PROFILE + "mode: mirror\n"
    project = project_factory.write(
        {"profile": mirror, "upserted": PROFILE.replace("name: profile", "name: upserted")}
    )
    run_sync(project, "profile", console=NullConsole())
    run_sync(project, "upserted", console=NullConsole())

    project_factory.sql("delete from users")
    (guard,) = [
        g
        for g in plan_sync(project, "profile", console=NullConsole()).guards
        if g.name == "empty model"
    ]
    assert guard.breached and guard.actual == "0 rows, 20 of 20 people to undo"
    message = refused(project, "profile", emu)
    assert "empty model: 0 rows, 20 of 20 people to undo" in message
    assert "broken upstream" in message
    assert all(p.attributes.get("plan") for p in emu.people())  # nobody was cleared

    assert run_sync(project, "upserted", console=NullConsole()).status == "success"
    forced = run_sync(project, "profile", console=NullConsole(), force=True)
    assert forced.changes.removed_sent == 20
    assert not any(p.attributes.get("plan") for p in emu.people())
    # the snapshot is empty now: an empty model has nothing left to undo
    assert run_sync(project, "profile", console=NullConsole()).status == "success"


WITH_REGION = PROFILE + "  region: {column: region}\n"


def test_a_mapping_change_sends_everyone_once_without_counting_as_changed_data(
    project_factory: ProjectFactory,
) -> None:
    """An attribute added to the sync file changes every person's payload: each is sent once
    with it, and the plan says why (the `mapping` row, `of which only for the mapping
    change`) instead of `max_changed` refusing a run that changes no data."""
    emu = project_factory.emulator
    project_factory.sql(USERS + "alter table users add column region varchar default 'emea';")
    rails = "{max_changed: 25%}"
    project = project_factory.write({"profile": with_guardrails(PROFILE, rails)})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 20

    project = project_factory.write({"profile": with_guardrails(WITH_REGION, rails)})
    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.changes.changed == 20 and plan.changes.remapped == 20
    guards = {g.name: g for g in plan.guards}
    assert guards["mapping"].actual == "added attribute `region`: 20 people sent again for it"
    assert not guards["max_changed"].breached
    assert guards["max_changed"].actual == "0 of 20 people (0.0%)"

    run = run_sync(project, "profile", console=NullConsole())
    assert run.status == "success" and run.delivered == 20
    assert all(p.attributes.get("region") == "emea" for p in emu.people())
    # once: the next run has nothing to send, and the mapping is recorded as unchanged
    again = plan_sync(project, "profile", console=NullConsole())
    assert again.changes.to_send == 0
    assert {g.name: g.actual for g in again.guards}["mapping"] == "unchanged"


def test_data_changed_with_the_mapping_still_counts_toward_max_changed(
    project_factory: ProjectFactory,
) -> None:
    """The mapping changed and six people's data did too: those six count toward
    `max_changed` (and trip it), the other fourteen are the mapping's."""
    emu = project_factory.emulator
    project_factory.sql(USERS + "alter table users add column region varchar default 'emea';")
    rails = "{max_changed: 25%}"
    run_sync(project_factory.write({"profile": with_guardrails(PROFILE, rails)}), "profile",
             console=NullConsole())  # fmt: skip
    project_factory.sql("update users set plan = 'enterprise' where user_id <= 6")
    project = project_factory.write({"profile": with_guardrails(WITH_REGION, rails)})
    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.changes.changed == 20 and plan.changes.remapped == 14
    message = refused(project, "profile", emu)
    assert "max_changed is 6 of 20 people (30.0%), over the limit of 25%" in message


def test_an_attribute_taken_out_of_the_mapping_is_cleared_when_asked(
    project_factory: ProjectFactory,
) -> None:
    """`clear_removed_attributes: true`: an attribute taken out of `attributes` is cleared on
    every profile by the next run (once), which `max_cleared` stops until accepted, and the
    `mapping` row says so. Without it, the profiles keep the value (the test above)."""
    emu = project_factory.emulator
    project_factory.sql(USERS + "alter table users add column region varchar default 'emea';")
    run_sync(project_factory.write({"profile": WITH_REGION}), "profile", console=NullConsole())
    assert all(p.attributes.get("region") == "emea" for p in emu.people())

    clearing = with_guardrails(PROFILE + "clear_removed_attributes: true\n", "{max_cleared: 2%}")
    project = project_factory.write({"profile": clearing})
    plan = plan_sync(project, "profile", console=NullConsole(), samples=1)
    guards = {g.name: g for g in plan.guards}
    assert guards["mapping"].actual == (
        "removed attribute `region` (cleared on each record sent: `clear_removed_attributes`): "
        "20 people sent again for it"
    )
    assert plan.samples[0]["payload"]["attributes"]["region"] == ""
    # clearing an attribute on every profile is what `max_cleared` is for: accepted once
    assert guards["max_cleared"].breached
    assert "max_cleared" in refused(project, "profile", emu)
    assert all(p.attributes.get("region") == "emea" for p in emu.people())

    forced = run_sync(project, "profile", console=NullConsole(), force=True)
    assert forced.delivered == 20 and forced.changes.attributes_cleared == 20
    assert not any("region" in p.attributes for p in emu.people())
    assert all(p.attributes.get("plan") in ("pro", "free") for p in emu.people())
    # once: the clears are not part of what the next run compares
    again = plan_sync(project, "profile", console=NullConsole())
    assert again.changes.to_send == 0
    assert {g.name: g.actual for g in again.guards}["mapping"] == "unchanged"


def test_max_cleared_counts_only_what_a_clear_can_take_away(
    project_factory: ProjectFactory,
) -> None:
    """`max_cleared` counts the `""` sent to records already in the snapshot. A new person's
    clear takes nothing away; a record sent again only for a mapping change re-sends the `""`
    of an attribute mapped as before (sent already), but an attribute new to the mapping may
    clear a value another source set, so its clears count."""
    emu = project_factory.emulator
    project_factory.sql(
        USERS
        + "update users set promo = null where user_id % 4 = 0;"  # 5 of 20 cleared each run
        + "alter table users add column region varchar;"
        + "update users set region = 'emea' where user_id % 2 = 0;"
    )
    rails = "{max_cleared: 2%}"
    project = project_factory.write({"profile": with_guardrails(PROFILE, rails)})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 20
    project_factory.sql(
        "insert into users select i, 'free', timestamptz '2026-03-01 00:00:00+00', null, 'apac' "
        "from range(21, 41) t(i)"  # 20 new people, every promo null
    )
    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.changes.attributes_cleared == 20
    cleared = {g.name: g for g in plan.guards}["max_cleared"]
    assert not cleared.breached and cleared.actual == "0 of 20 people × 3 attributes (0.0%)"
    assert run_sync(project, "profile", console=NullConsole()).delivered == 20

    with_region = PROFILE + "  region: {column: region, on_null: clear}\n"
    project = project_factory.write({"profile": with_guardrails(with_region, rails)})
    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.changes.remapped == 40
    # 10 regions cleared by the new attribute; the 25 promos were cleared before
    cleared = {g.name: g for g in plan.guards}["max_cleared"]
    assert cleared.breached and cleared.actual == "10 of 40 people × 4 attributes (6.2%)"
    assert "max_cleared" in refused(project, "profile", emu)


def test_state_from_before_mappings_were_recorded_and_a_column_gone_from_the_model(
    project_factory: ProjectFactory,
) -> None:
    """A state written before Lockgate recorded mappings gains the columns on its first use and
    says `not recorded` (every changed record counts, as before); a last mapping reading a
    column the model no longer has cannot tell data changes apart, so all count."""
    from lockgate.state.store import StateStore

    emu = project_factory.emulator
    project_factory.sql(USERS + "alter table users add column region varchar default 'emea';")
    project = project_factory.write({"profile": WITH_REGION})
    run_sync(project, "profile", console=NullConsole())
    with StateStore.open(project.state_dir) as store:
        # the table an older Lockgate inserts 5 values into (no column list) keeps its shape
        columns = [row[0] for row in store.exec_sql("describe contract_syncs")]
        assert columns == ["sync", "run_id", "identify_by", "key_columns", "recorded_at"]
        store.exec_sql("drop table contract_mappings")  # as an older Lockgate left the state
    project = project_factory.write({"profile": PROFILE})  # `region` no longer sent
    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.changes.changed == 20 and plan.changes.remapped == 0
    assert {g.name: g.actual for g in plan.guards}["mapping"] == (
        "not recorded (a state of an older Lockgate)"
    )
    assert run_sync(project, "profile", console=NullConsole(), force=True).delivered == 20

    # recorded now; the model drops `promo`, which the last mapping read, and the sync stops
    # sending it: which records changed data cannot be told, so none is taken as the mapping's
    project_factory.sql("alter table users drop column promo")
    project = project_factory.write(
        {"profile": PROFILE.replace("  promo: {column: promo, on_null: clear}\n", "")}
    )
    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.changes.changed == 20 and plan.changes.remapped == 0
    assert {g.name: g.actual for g in plan.guards}["mapping"].startswith(
        "removed attribute `promo` (Customer.io keeps the values sent before): 0 people"
    )
    assert len(emu.people()) == 20


def test_max_changed_after_an_upgrade_that_sends_everyone_again_says_why(
    project_factory: ProjectFactory,
) -> None:
    """An upgrade whose payloads differ (the CHANGELOG says every record is sent again once),
    on a state whose older Lockgate recorded no mapping: every person counts as changed, and
    `max_changed`'s hint says so and how to go on, instead of sending the user to the model."""
    from lockgate.state.store import StateStore

    emu = project_factory.emulator
    project_factory.sql(USERS)
    project = project_factory.write({"profile": with_guardrails(PROFILE, "{max_changed: 10%}")})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 20
    with StateStore.open(project.state_dir) as store:
        store.exec_sql("drop table contract_mappings")  # as an older Lockgate left the state
        store.exec_sql('update "snap__profile" set h = h + 1')  # which hashed payloads apart

    said = " ".join(refused(project, "profile", emu).split())
    assert "max_changed is 20 of 20 people (100.0%), over the limit of 10%" in said
    assert (
        "hint: these may not be data changes: the state, written by an older Lockgate, does not "
        "record the mapping they were last sent with: after an upgrade that sends every record "
        "again once (its CHANGELOG says so), each counts as changed. If that is expected, run "
        "`lockgate sync profile --force` once (it records the mapping; later runs count data "
        "changes alone)"
    ) in said
    assert run_sync(project, "profile", console=NullConsole(), force=True).delivered == 20

    # the mapping recorded now: a real change of every person sends the user to the model
    project_factory.sql("update users set plan = 'team'")
    said = " ".join(refused(project, "profile", emu).split())
    assert "these may not be data changes" not in said
    assert "hint: check the model; if this change is intended" in said


def test_warn_at_shows_a_breaker_near_its_limit_and_the_run_goes_on(
    project_factory: ProjectFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from click.testing import CliRunner

    from lockgate.cli import cli, main
    from lockgate.errors import ConfigError
    from lockgate.project.loader import load_project

    project_factory.sql(USERS)
    project = project_factory.write({"profile": with_guardrails(PROFILE, "{max_changed: 5}")})
    (project.root / "lockgate.yml").write_text(
        (project.root / "lockgate.yml").read_text() + "defaults:\n  guardrails: {warn_at: 60%}\n"
    )
    project = load_project(project.root)
    run_sync(project, "profile", console=NullConsole())

    project_factory.sql("update users set plan = 'x' where user_id <= 2")  # 2 of 5: 40%
    [changed] = [g for g in plan_sync(project, "profile", console=NullConsole()).guards
                 if g.name == "max_changed"]  # fmt: skip
    assert (changed.breached, changed.near, changed.status) == (False, False, "ok")

    project_factory.sql("update users set plan = 'x' where user_id <= 3")  # 3 of 5: 60%
    main(["plan", "profile", "--project", str(project.root)])
    assert "near limit" in capsys.readouterr().out
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "success" and report.delivered == 3  # a warning does not stop it
    [changed] = [g for g in report.as_dict()["guardrails"] if g["name"] == "max_changed"]
    assert changed["near"] is True and not changed["breached"]
    assert "3 changed people would be sent: 60% of the 5 the limit allows" in changed["detail"]

    # `lockgate runs` shows the run that came near its limit as such
    listed = CliRunner().invoke(cli, ["runs", "--project", str(project.root)])
    assert "success, near limit: max_changed" in " ".join(listed.output.split())
    (project.root / "lockgate.yml").write_text(
        (project.root / "lockgate.yml").read_text().replace("60%", "0%")
    )
    with pytest.raises(ConfigError, match="not a share of a limit"):
        load_project(project.root)


def test_a_column_retyped_within_its_family_is_not_counted_as_changed_data(
    project_factory: ProjectFactory,
) -> None:
    """A model refactor that changes a column's type but not its values (`DECIMAL(8,2)` →
    `DECIMAL(8,4)`, `INTEGER` → `DOUBLE`, `DATE` → `TIMESTAMP`) passes type drift, but the
    row hash is of the typed value, so every person is sent again once: the `mapping` row says
    why, and `max_changed` counts only the people whose value really changed (not stopping
    a run that changes no data)."""
    emu = project_factory.emulator
    body = """
name: scores
source: warehouse
model: {table: scores}
kind: people
primary_key: id
identify_by: {id: id}
attributes: {score: score, level: level, since: since}
guardrails: {max_changed: 10%}
"""
    project_factory.sql(
        "create table scores as select i as id, (i + 0.5)::decimal(8,2) as score, "
        "i::integer as level, date '2026-01-01' + i::integer as since from range(20) t(i)"
    )
    project = project_factory.write({"scores": body})
    run_sync(project, "scores", console=NullConsole())
    first = {p.id: dict(p.attributes) for p in emu.people()}

    project_factory.sql(
        "create or replace table scores as select id, score::decimal(8,4) as score, "
        "level::double as level, since::timestamp as since from scores"
    )
    plan = plan_sync(project, "scores", console=NullConsole())
    assert plan.changes.changed == 20 and plan.changes.remapped == 20
    (mapping_row,) = [g for g in plan.guards if g.name == "mapping"]
    assert mapping_row.actual == (
        "column types changed (`score` DECIMAL(8,2) → DECIMAL(8,4), `level` INTEGER → DOUBLE, "
        "`since` DATE → TIMESTAMP): 20 people sent again for it"
    )
    (changed,) = [g for g in plan.guards if g.name == "max_changed"]
    assert not changed.breached and changed.actual == "0 of 20 people (0.0%)"
    report = run_sync(project, "scores", console=NullConsole())
    assert report.status == "success" and report.delivered == 20
    assert {p.id: dict(p.attributes) for p in emu.people()} == first  # the same values

    # a value its old type would round to the old value is a change all the same (0.50001
    # is not 0.5000), and so is one changed with its type (3 hours later, now with a zone)
    project_factory.sql(
        "create or replace table scores as select id, "
        "(score + case when id < 3 then 0.00001 else 0 end)::decimal(10,6) as score, "
        "level::integer as level, "
        "(since + case when id = 5 then interval 3 hour else interval 0 hour end)::timestamptz "
        "as since from scores"
    )
    message = refused(project, "scores", emu)
    assert "max_changed is 4 of 20 people (20.0%), over the limit of 10%" in message
    plan = plan_sync(project, "scores", console=NullConsole())
    assert (plan.changes.changed, plan.changes.remapped) == (20, 16)


def test_an_event_name_drifting_in_the_model_stops_the_run_that_would_first_send_it(
    project_factory: ProjectFactory,
) -> None:
    """An events sync reading its name from a column: the model starts writing `order_placed`
    where it wrote `Order Placed`. Customer.io would keep two events and every campaign
    triggered by `Order Placed` would miss the new ones, so the run that would first send the
    new spelling stops (with the names, where each comes from, sample keys and the fix); a
    name listed in `distinct_event_names` is not compared, and `--force` sends it once."""
    emu = project_factory.emulator
    body = NAMED_ORDERS
    project_factory.sql(
        "create table orders as select i as order_id, 1 as user_id, 'Order Placed' as event_name "
        "from range(3) t(i)"
    )
    project = project_factory.write({"orders": body})
    run_sync(project, "orders", console=NullConsole())
    project_factory.sql(
        "insert into orders values (3, 1, 'order_placed'), (4, 1, 'order_placed'), "
        "(5, 1, 'Order Refunded')"
    )
    plan = plan_sync(project, "orders", console=NullConsole())
    (drift,) = [g for g in plan.guards if g.name == "event-name drift"]
    assert drift.breached
    assert drift.actual == "`order_placed` vs `Order Placed` (sent by sync `orders`)"
    message = refused(project, "orders", emu)
    assert "event-name drift: `order_placed` vs `Order Placed` (sent by sync `orders`)" in message
    assert "would send 2 events under a name new to the sync" in message
    assert "Sample rows: 3: order_placed; 4: order_placed" in message
    assert "distinct_event_names: [order_placed]" in message
    assert sorted(e.name for e in emu.events()) == ["Order Placed"] * 3

    # a name that is no other's spelling goes; acknowledged, the new one goes too
    acknowledged = with_guardrails(body, "{distinct_event_names: [order_placed]}")
    report = run_sync(project_factory.write({"orders": acknowledged}), "orders",
                      console=NullConsole())  # fmt: skip
    assert report.status == "success" and report.delivered == 3
    # forced once, a new spelling is recorded and stops nothing more
    project_factory.sql("insert into orders values (6, 1, 'ORDER-REFUNDED')")
    project = project_factory.write({"orders": body})
    assert "`ORDER-REFUNDED` vs `Order Refunded`" in refused(project, "orders", emu)
    assert run_sync(project, "orders", console=NullConsole(), force=True).delivered == 1
    project_factory.sql("insert into orders values (7, 1, 'ORDER-REFUNDED')")
    assert run_sync(project, "orders", console=NullConsole()).delivered == 1


def test_event_names_in_other_scripts_are_not_taken_for_spellings_of_each_other(
    project_factory: ProjectFactory,
) -> None:
    """Names with no Latin letter (`注文完了`, `会員登録`) are distinct events: they go, while
    a case variant of a Cyrillic name already sent stops the run as a Latin one does."""
    emu = project_factory.emulator
    body = NAMED_ORDERS
    project_factory.sql(
        "create table orders as select * from (values (1, 1, '注文完了'), (2, 1, '会員登録'), "
        "(3, 1, 'Заказ оформлен')) t(order_id, user_id, event_name)"
    )
    project = project_factory.write({"orders": body})
    report = run_sync(project, "orders", console=NullConsole())
    assert report.status == "success" and report.delivered == 3
    names = sorted(e.name for e in emu.events())
    assert names == sorted(["注文完了", "会員登録", "Заказ оформлен"])
    project_factory.sql("insert into orders values (4, 1, 'заказ_оформлен')")
    assert "`заказ_оформлен` vs `Заказ оформлен`" in refused(project, "orders", emu)
