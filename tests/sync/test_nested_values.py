"""A list, map or struct value that DuckDB's `hash` cannot tell from null (`[]`, `{}`, a
struct of nulls) or from its neighbours is still a change: Customer.io ends with the
warehouse's value. A state hashed before these values were told apart re-sends only the rows
that hold them."""

from __future__ import annotations

from typing import Any

import pytest

from lockgate.console import NullConsole
from lockgate.state.store import StateStore, table
from lockgate.sync import mapping
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: id
identify_by: {id: id}
on_null: POLICY
attributes: [tags, prefs, address, nick]
"""

#: the model: `u1`'s values, and `u2`, whose values never change
USERS = """
create or replace table users as
select * from (values
  ('u1', {tags}::varchar[], {prefs}::map(varchar, varchar),
   {address}::struct(city varchar, zip varchar), 'Bob'),
  ('u2', ['a', 'b'], map {{'k': 'v'}}, {{'city': 'Rome', 'zip': null}}, 'Ann')
) t(id, tags, prefs, address, nick)
"""

FULL = {
    "tags": "['vip']",
    "prefs": "map {'lang': 'en'}",
    "address": "{'city': 'Oslo', 'zip': '01'}",
}
NULL = {"tags": "null", "prefs": "null", "address": "null"}
EMPTY = {"tags": "[]", "prefs": "map {}", "address": "{'city': null, 'zip': null}"}
SENT_FULL = {"tags": ["vip"], "prefs": {"lang": "en"}, "address": {"city": "Oslo", "zip": "01"}}
SENT_EMPTY = {"tags": [], "prefs": {}, "address": {"city": None, "zip": None}}


def u1(project_factory: ProjectFactory, policy: str, values: dict[str, str]) -> dict[str, Any]:
    """Set `u1`'s values, run the sync (it sends `u1` alone) and return `u1`'s attributes in the
    emulator."""
    project_factory.sql(USERS.format(**values))
    project = project_factory.write({"profile": PROFILE.replace("POLICY", policy)})
    assert plan_sync(project, "profile", console=NullConsole()).changes.to_send == 1
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    assert plan_sync(project, "profile", console=NullConsole()).changes.to_send == 0
    person = project_factory.emulator.person(id="u1")
    assert person is not None
    return {k: v for k, v in person.attributes.items() if k != "nick"}


def test_empty_values_after_null_are_sent_and_a_null_after_them_is_skipped(
    project_factory: ProjectFactory,
) -> None:
    """`on_null: skip`: a null keeps the last value sent; `[]`, `{}` and a struct of nulls
    after a null are values Customer.io must get, and a null after them keeps them."""
    project_factory.sql(USERS.format(**FULL))
    project = project_factory.write({"profile": PROFILE.replace("POLICY", "skip")})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 2

    assert u1(project_factory, "skip", NULL) == SENT_FULL
    assert u1(project_factory, "skip", EMPTY) == SENT_EMPTY
    # a null after them: sent (its payload differs) as a skip, which keeps them
    assert u1(project_factory, "skip", NULL) == SENT_EMPTY
    assert u1(project_factory, "skip", FULL) == SENT_FULL


def test_a_null_after_empty_values_is_cleared(project_factory: ProjectFactory) -> None:
    """`on_null: clear`: null clears the attribute, `[]`, `{}` and a struct of nulls set it,
    each way round."""
    project_factory.sql(USERS.format(**FULL))
    project = project_factory.write({"profile": PROFILE.replace("POLICY", "clear")})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 2

    assert u1(project_factory, "clear", NULL) == {}
    assert u1(project_factory, "clear", EMPTY) == SENT_EMPTY
    assert u1(project_factory, "clear", NULL) == {}
    assert u1(project_factory, "clear", EMPTY) == SENT_EMPTY


def test_an_item_moved_to_the_next_list_is_sent(project_factory: ProjectFactory) -> None:
    """DuckDB hashes the items of two list columns as one run of items: `['a'], ['b']` and
    `['a', 'b'], []` hashed alike."""
    project_factory.sql(
        "create or replace table users as select 'u1' as id, ['a'] as roles, ['b'] as teams"
    )
    body = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: id
identify_by: {id: id}
attributes: [roles, teams]
"""
    project = project_factory.write({"profile": body})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    project_factory.sql("update users set roles = ['a', 'b'], teams = []")
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    person = project_factory.emulator.person(id="u1")
    assert person is not None and person.attributes == {"roles": ["a", "b"], "teams": []}


def test_an_objects_list_emptied_after_a_null_is_sent(project_factory: ProjectFactory) -> None:
    project_factory.sql(
        "create or replace table accounts as select 'acc1' as account_id, ['eu'] as regions"
    )
    body = """
name: accounts
source: warehouse
model: {table: accounts}
kind: objects
object_type_id: "1"
primary_key: account_id
attributes: {regions: {column: regions, on_null: clear}}
"""
    project = project_factory.write({"accounts": body})
    for value, sent in (("['eu']", ["eu"]), ("null", None), ("[]", []), ("null", None)):
        project_factory.sql(f"update accounts set regions = {value}")
        run_sync(project, "accounts", console=NullConsole())
        (account,) = project_factory.emulator.objects()
        assert account.attributes.get("regions") == sent


def _hashed_before_nested_terms(project: Any) -> str:
    """Rewrite the state as Lockgate wrote it before the row hash told nested values apart:
    every record's hash, and the recorded hash SQL, without the nested terms. Returns it."""
    with StateStore.open(project.state_dir) as store:
        (recorded,) = store.exec_sql(
            "select mapping_hash from contract_mappings where sync = 'profile'"
        )[0]
        old = mapping.hash_base(recorded)
        assert old != recorded  # the model has nested columns: the hash has terms
        as_hashed_by(store, project, old)
    return old


def as_hashed_by(store: StateStore, project: Any, old: str) -> None:
    """Rewrite the `profile` sync's snapshot and recorded mapping as a Lockgate whose row hash
    was ``old`` (SQL over `users`) left them: the state before an upgrade."""
    store.exec_sql(f"attach '{project.root / 'warehouse.duckdb'}' as wh (read_only)")
    store.exec_sql(
        f"update {table('snap', 'profile')} s set h = u.h "
        f"from (select id::varchar as k, {old} as h from wh.users) u where u.k = s.k"
    )
    store.exec_sql("update contract_mappings set mapping_hash = ? where sync = 'profile'", [old])
    store.exec_sql("detach wh")


@pytest.mark.parametrize("ambiguous", [False, True])
def test_a_state_hashed_before_upgrading_sends_only_rows_with_ambiguous_values(
    project_factory: ProjectFactory, ambiguous: bool
) -> None:
    """Upgrading keeps the hash of every row whose values are null, plain or a struct of
    plain values: such a state sends nothing. A row holding a list (or a struct of nulls) is
    sent once, as a change of what payloads are built from, and then no more."""
    emu = project_factory.emulator
    project_factory.sql(
        """
        create or replace table users as
        select 'u' || i as id, null::varchar[] as tags, null::map(varchar, varchar) as prefs,
               {'city': 'C' || i, 'zip': null}::struct(city varchar, zip varchar) as address,
               'N' || i as nick
        from range(1, 11) t(i)
        """
    )
    if ambiguous:
        project_factory.sql(
            "update users set tags = ['x'] where id = 'u1';"
            "update users set address = {'city': null, 'zip': null} where id = 'u2'"
        )
    project = project_factory.write({"profile": PROFILE.replace("POLICY", "skip")})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 10
    old = _hashed_before_nested_terms(project)
    people, sent = emu.people(), len(emu.request_log())

    plan = plan_sync(project, "profile", console=NullConsole())
    guards = {g.name: g.actual for g in plan.guards}
    if not ambiguous:
        assert plan.changes.to_send == 0
        assert guards["mapping"] == "unchanged"
        assert run_sync(project, "profile", console=NullConsole()).delivered == 0
        assert len(emu.request_log()) == sent
    else:
        assert plan.changes.to_send == plan.changes.remapped == 2
        assert (
            guards["mapping"]
            == "what the payloads are built from changed: 2 people sent again for it"
        )
        assert run_sync(project, "profile", console=NullConsole()).delivered == 2
    # the same values (the re-send may move `updated_at` on by a second)
    assert [(p.id, p.attributes) for p in emu.people()] == [(p.id, p.attributes) for p in people]
    with StateStore.open(project.state_dir) as store:
        recorded = store.exec_sql(
            "select mapping_hash from contract_mappings where sync = 'profile'"
        )[0][0]
    assert mapping.hash_base(recorded) == old and recorded != old
    assert plan_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_a_model_of_plain_columns_hashes_as_before() -> None:
    """No nested column: the row hash is the one earlier versions wrote, so it costs nothing
    more and an upgrade sends nothing."""
    from lockgate.project.models import SyncConfig

    sync = SyncConfig.model_validate(
        {
            "name": "p",
            "source": "w",
            "model": {"table": "t"},
            "kind": "people",
            "primary_key": "id",
            "identify_by": {"id": "id"},
            "attributes": ["plan", "meta"],
        }
    )
    types = {"id": "VARCHAR", "plan": "VARCHAR", "meta": "JSON"}
    sql = mapping.source_hash(sync, ("id", "plan", "meta"), types)
    assert sql.startswith("hash(") and mapping.hash_base(sql) == sql
    nested = mapping.source_hash(sync, ("id", "plan", "meta"), {**types, "plan": "VARCHAR[]"})
    assert mapping.hash_base(nested) == sql


STRINGS = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  tags: {column: tags, type: string}
  prefs: {column: prefs, type: string}
  address: {column: address, type: string}
  scores: {column: scores, type: string}
  raw: {column: raw, type: string}
"""


def test_a_list_map_or_struct_as_a_string_is_sent_as_its_json_text(
    project_factory: ProjectFactory,
) -> None:
    """`type: string` over a list, map or struct sent DuckDB's text of it (`{'city': Oslo}`,
    `[vip, 'a b']`), which no JSON reader (nor a Liquid `parse_json`) takes: it is the value's
    JSON text, as `type: json` and `auto` would send it, as one string."""
    project_factory.sql(
        "create or replace table users as select 'u1' as id, ['vip', 'a b'] as tags, "
        "map {'lang': 'en'} as prefs, {'city': 'Oslo', 'zip': null} as address, "
        "[1.0, 2.5]::double[] as scores, {'plan': '{\"tier\": 1}'::json} as raw"
    )
    project = project_factory.write({"profile": STRINGS})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    person = project_factory.emulator.person(id="u1")
    assert person is not None
    assert person.attributes == {
        "tags": '["vip","a b"]',
        "prefs": '{"lang":"en"}',
        "address": '{"city":"Oslo","zip":null}',
        "scores": "[1,2.5]",
        "raw": '{"plan":{"tier":1}}',
    }


def test_a_list_sent_as_duckdb_text_before_upgrading_is_sent_again_once(
    project_factory: ProjectFactory,
) -> None:
    """A state whose run sent DuckDB's text of a list as `type: string` (`[vip, a b]`): the
    next run sends each such record once again, saying why, so Customer.io holds the JSON
    text; then nothing."""
    project_factory.sql(
        "create or replace table users as select 'u' || i as id, ['vip', 'a b'] as tags, "
        "'N' || i as nick from range(1, 4) t(i)"
    )
    body = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  tags: {column: tags, type: string}
  nick: nick
"""
    project = project_factory.write({"profile": body})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 3
    sync = project.sync("profile")
    types = {"id": "VARCHAR", "tags": "VARCHAR[]", "nick": "VARCHAR"}
    now, before = (
        mapping.lit(mapping._fingerprint(mapping._hash_normal(sync, types, nested_text=flag)))
        for flag in (True, False)
    )
    # the state as the Lockgate that sent `[vip, a b]` wrote it: its fingerprint had no
    # `nested_text`
    with StateStore.open(project.state_dir) as store:
        (recorded,) = store.exec_sql(
            "select mapping_hash from contract_mappings where sync = 'profile'"
        )[0]
        assert now in recorded
        old = recorded.replace(now, before)
        as_hashed_by(store, project, old)

    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.changes.to_send == plan.changes.remapped == 3
    guards = {g.name: g.actual for g in plan.guards}
    assert guards["mapping"] == (
        "`tags` (`type: string` over a list, map or struct) sent as the value's JSON text, no "
        "longer as DuckDB's text of it: 3 people sent again for it"
    )
    assert run_sync(project, "profile", console=NullConsole()).delivered == 3
    assert plan_sync(project, "profile", console=NullConsole()).changes.to_send == 0
    person = project_factory.emulator.person(id="u1")
    assert person is not None and person.attributes["tags"] == '["vip","a b"]'


def test_a_list_as_a_string_holding_nan_or_over_the_limit_rejects_its_row_alone(
    project_factory: ProjectFactory,
) -> None:
    """NaN has no JSON form, and a value's text over 1,000 bytes is refused by Customer.io:
    either rejects its row, naming the column, and the other rows are sent."""
    project_factory.sql(
        "create or replace table users as select * from (values "
        "('u1', [1.5, 2]::double[]), ('u2', ['nan'::double]), "
        "('u3', range(300)::double[])) t(id, scores)"
    )
    body = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  scores: {column: scores, type: string}
"""
    project = project_factory.write({"profile": body})
    report = run_sync(project, "profile", console=NullConsole())
    assert report.delivered == 1 and report.changes.rejected == 2
    reasons = dict(report.changes.rejected_samples)
    assert "column `scores` (field `scores`)" in reasons["u2"]
    assert "NaN" in reasons["u2"]
    assert "over the 1000-byte limit" in reasons["u3"]
    person = project_factory.emulator.person(id="u1")
    assert person is not None and person.attributes == {"scores": "[1.5,2]"}
