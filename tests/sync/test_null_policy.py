"""The null policy across runs: a value the model lost never erases what Customer.io holds,
unless the sync asks for it (`on_null: clear`), and then `max_cleared` counts it."""

from __future__ import annotations

from typing import Any

import pytest
from tests.sync.helpers import USERS_PROFILE
from tests.sync.test_guardrails import PROFILE, USERS, refused, with_guardrails

from lockgate.console import NullConsole
from lockgate.sync.run import run_sync

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
