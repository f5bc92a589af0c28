"""People syncs: warehouse rows become Customer.io profiles; re-runs send only changes."""

from __future__ import annotations

from typing import Any

import pytest
from tests.sync.helpers import ACCOUNTS_MIRROR_DELETING, UNMARK_TABLES, USERS_PROFILE

from lockgate.console import NullConsole
from lockgate.emulator import Emulator, FaultConfig
from lockgate.errors import StepError
from lockgate.project.loader import load_project
from lockgate.state.store import StateStore
from lockgate.sync.resolve import known_people
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {sql: "select * from users"}
kind: people
primary_key: user_id
identify_by: {id: user_id, email: email}
attributes:
  plan: plan
  mrr: {column: mrr, type: number}
  vip: {column: vip, type: boolean}
  signed_up_at: {column: signed_up_at, type: timestamp}
  renews_on: {column: renews_on, type: date}
  promo: {column: promo, on_null: clear}
"""

USERS = """
create or replace table users as select * from (values
  (1, 'ada@example.com', 'pro', 99.5::decimal(8,2), 'true', timestamptz '2026-01-02 03:04:05+00',
   date '2026-12-01', 'SPRING'),
  (2, 'grace@example.com', 'free', 0, 'false', timestamptz '2026-02-01 00:00:00+00', null, null),
  (3, 'linus@example.com', null, 10, '1', null, null, 'X')
) t(user_id, email, plan, mrr, vip, signed_up_at, renews_on, promo);
"""


def sent_identifies(emu: Emulator) -> int:
    return sum(1 for r in emu.request_log() if r.path == "/api/v2/batch" and r.status in (200, 207))


def test_rows_become_profiles_with_typed_attributes(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    report = run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator

    assert report.status == "success"
    assert report.delivered == 3
    # the report counts what was sent: 7 for ada, 6 for grace (her null promo is a clear),
    # 4 for linus (his nulls are left out)
    assert (report.changes.attributes_set, report.changes.attributes_cleared) == (17, 1)
    ada = emu.person(id="1")
    assert ada is not None
    assert ada.email == "ada@example.com"
    assert ada.attributes["plan"] == "pro"
    assert ada.attributes["mrr"] == 99.5
    assert ada.attributes["vip"] is True
    assert ada.attributes["signed_up_at"] == 1767323045  # unix seconds, not ms, not a string
    assert ada.attributes["renews_on"] == 1796083200
    assert ada.attributes["promo"] == "SPRING"
    linus = emu.person(id="3")
    assert linus is not None
    assert "plan" not in linus.attributes  # a null is not sent
    assert linus.attributes["vip"] is True


def test_rerun_sends_only_changed_rows(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    before = sent_identifies(emu)

    again = run_sync(project, "profile", console=NullConsole())
    assert again.changes.to_send == 0
    assert again.changes.unchanged == 3
    assert sent_identifies(emu) == before  # nothing went out

    project_factory.sql("update users set plan = 'enterprise' where user_id = 2")
    third = run_sync(project, "profile", console=NullConsole())
    assert (third.changes.changed, third.changes.new, third.delivered) == (1, 0, 1)
    grace = emu.person(id="2")
    assert grace is not None and grace.attributes["plan"] == "enterprise"
    last = [r for r in emu.request_log() if r.path == "/api/v2/batch"][-1]
    assert [op["identifiers"] for op in last.body["batch"]] == [{"id": "2"}]


def test_null_never_overwrites_unless_the_field_says_clear(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("update users set plan = null, promo = null where user_id = 1")
    run_sync(project, "profile", console=NullConsole())

    ada = project_factory.emulator.person(id="1")
    assert ada is not None
    assert ada.attributes["plan"] == "pro"  # skip: the good value stays
    assert "promo" not in ada.attributes  # clear: removed on purpose


def test_bad_rows_are_rejected_with_reasons_and_good_rows_go_on(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        USERS
        + """
        alter table users alter mrr type varchar;
        insert into users values
          (null, 'ghost@example.com', 'pro', 1, 'true', null, null, null),
          (4, 'dup@example.com', 'pro', 'not-a-number', 'true', null, null, null),
          (5, 'five@example.com', 'pro', 1, 'maybe', null, null, null),
          (6, 'six@example.com', repeat('x', 1001), 1, 'true', null, null, null),
          (2, 'grace2@example.com', 'pro', 1, 'true', null, null, null);
        """
    )
    project = project_factory.write({"profile": PROFILE})
    report = run_sync(project, "profile", console=NullConsole())

    reasons = dict(report.changes.rejected_samples)
    assert report.delivered == 2  # users 1 and 3; 2 is duplicated, 4-6 are bad
    # a row without a key is named by its identifiers, so it can be found in the warehouse
    assert "primary key is null" in reasons['(null key) {"email":"ghost@example.com"}']
    assert "`not-a-number` is not a number" in reasons["4"]
    assert "`maybe` is not a boolean" in reasons["5"]
    assert "1001 bytes, over the 1000-byte limit" in reasons["6"]
    assert "appears 2 times" in reasons["2"]
    emu = project_factory.emulator
    assert emu.person(id="1") is not None and emu.person(id="4") is None


JSON_VALUES = (
    USERS_PROFILE
    + """\
  doc: {column: doc, type: json}
  tags: tags
  nums_text: {column: nums, type: string}
  address: address
"""
)


def test_a_json_null_is_a_null_and_a_number_past_a_double_is_rejected(
    project_factory: ProjectFactory,
) -> None:
    """A `type: json` field: the text `null` (a jsonb column's common default) is a null,
    skipped as the field's `on_null` says, not sent as `null`, which would erase the attribute
    while the run counted nothing cleared. `1e400` is valid JSON no double holds; Customer.io
    cannot read it, so its row is rejected naming the column."""
    project_factory.sql(
        """
        create or replace table users as select * from (values
          (1, '{"theme": "dark"}'), (2, '{"theme": "light"}'), (3, '{"n": 1}'))
          t(user_id, doc)
        """
    )
    project = project_factory.write({"profile": JSON_VALUES.split("  tags:")[0]})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql(
        "update users set doc = case user_id when 1 then 'null' when 2 then ' null ' "
        """else '{"n": 1e400}' end"""
    )
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.changes.rejected, report.changes.attributes_cleared) == (1, 0)
    assert dict(report.changes.rejected_samples) == {
        "3": 'column `doc` (field `doc`): value `{"n": 1e400}` holds a number too large for '
        "a double (over 1.8e308)"
    }
    docs = {p.id: p.attributes.get("doc") for p in project_factory.emulator.people()}
    assert docs == {"1": {"theme": "dark"}, "2": {"theme": "light"}, "3": {"n": 1}}


def test_json_values_over_1000_bytes_as_sent_are_rejected_naming_the_column(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io refuses an attribute value over 1,000 bytes: a string by its own UTF-8
    bytes, any other value by its JSON's. Lockgate measures what it sends (a `json` field's
    text without the model's whitespace, a list as text for a `string` field) and rejects the
    row before sending, naming the column; the rows at the limit are delivered and kept."""
    e496 = "repeat('é', 496)"  # 992 bytes of UTF-8
    ones = "list_transform(range(497), lambda x: 1)"  # `[10,1,...]` as JSON: 2 bytes a number
    project_factory.sql(
        f"""
        create or replace table users as select user_id,
          coalesce(doc, '{{"x":1}}') as doc, coalesce(tags, ['a']) as tags,
          coalesce(nums, [1]) as nums, coalesce(address, {{'city': 'Oslo'}}) as address
        from (values
          (1, null, null, null, null),
          (2, '{{"x":"' || {e496} || '"}}', null, null, null),      -- 1000 bytes
          (3, '{{"x":"' || {e496} || 'a"}}', null, null, null),     -- 1001 bytes
          (4, '{{ "x" : "' || {e496} || '" }}', null, null, null),  -- 1000 bytes as sent
          (5, '"' || repeat('z', 1000) || '"', null, null, null),   -- a string: 1000 bytes
          (6, '"' || repeat('z', 1001) || '"', null, null, null),
          (7, null, [repeat('t', 496), repeat('t', 497)], null, null),  -- 1000 bytes
          (8, null, [repeat('t', 497), repeat('t', 497)], null, null),
          (9, null, null, [10, 1] || {ones}, null),                     -- JSON: 1000 bytes
          (10, null, null, [10, 10] || {ones}, null),
          (11, null, null, null, {{'city': repeat('c', 1200)}})
        ) t(user_id, doc, tags, nums, address)
        """
    )
    project = project_factory.write({"profile": JSON_VALUES})
    report = run_sync(project, "profile", console=NullConsole())

    reasons = dict(report.changes.rejected_samples)
    assert sorted(reasons, key=int) == ["3", "6", "8", "10", "11"]
    assert reasons["3"] == (
        "column `doc` (field `doc`): value is 1001 bytes as sent, over the 1000-byte limit of "
        "Customer.io; trim it in the model or map its parts to separate attributes"
    )
    assert "column `doc` (field `doc`): value is 1001 bytes" in reasons["6"]
    assert "column `tags` (field `tags`): value is 1001 bytes" in reasons["8"]
    assert "column `nums` (field `nums_text`): value is 1001 bytes" in reasons["10"]
    assert "column `address` (field `address`): value is 1211 bytes" in reasons["11"]
    assert (report.status, report.delivered, report.rejected_by_api) == ("success", 6, 0)
    people = {p.id: p.attributes for p in project_factory.emulator.people()}
    assert sorted(people, key=int) == ["1", "2", "4", "5", "7", "9"]
    assert people["1"] == {
        "doc": {"x": 1},
        "tags": ["a"],
        "nums_text": "[1]",
        "address": {"city": "Oslo"},
    }
    assert people["2"]["doc"] == people["4"]["doc"] == {"x": "é" * 496}
    assert people["5"]["doc"] == "z" * 1000
    assert people["7"]["tags"] == ["t" * 496, "t" * 497]
    assert len(people["9"]["nums_text"]) == 1000


@pytest.mark.parametrize(
    ("field", "said"),
    [
        ("  terms: {value: " + "é" * 501 + "}", "the `value` of field `terms` is 1002 bytes"),
        (
            "  plan: {column: plan, on_null: default, default: [" + "1," * 500 + "1]}",
            "the `default` of field `plan` is 1003 bytes",
        ),
    ],
)
def test_a_constant_or_default_over_1000_bytes_stops_the_sync_before_sending(
    project_factory: ProjectFactory, field: str, said: str
) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE.replace("  plan: plan", field)})
    with pytest.raises(StepError) as caught:
        run_sync(project, "profile", console=NullConsole())
    assert f"{said}, over the 1000-byte limit of Customer.io for one value" in str(caught.value)
    assert project_factory.emulator.people() == []


def test_mirror_clears_people_who_leave_the_model(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    mirror = PROFILE.replace("mode: upsert", "") + "mode: mirror\n"
    project = project_factory.write({"profile": mirror})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("delete from users where user_id = 1")

    plan = plan_sync(project, "profile", console=NullConsole())
    assert (plan.changes.removed, plan.changes.removed_sent) == (1, 1)
    run_sync(project, "profile", console=NullConsole())
    ada = project_factory.emulator.person(id="1")
    assert ada is not None  # mirror clears, it does not delete
    assert not {"plan", "mrr", "vip", "promo"} & set(ada.attributes)
    # and a third run has nothing left to clear
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_mirror_with_delete_removed_deletes_the_person(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE + "mode: mirror\ndelete_removed: true\n"})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("delete from users where user_id = 3")
    run_sync(project, "profile", console=NullConsole())
    assert project_factory.emulator.person(id="3") is None
    assert project_factory.emulator.person(id="1") is not None


def test_mirror_keeps_a_person_another_row_still_syncs(project_factory: ProjectFactory) -> None:
    """Accounts that reach one person (the same `id`; the same email in another case): an
    account that leaves does not delete the person while another account still syncs it."""
    project_factory.sql(
        "create or replace table accounts as select * from (values "
        "('a1', 'u1', 'ada@example.com', 'pro'), ('a2', 'u1', null, 'pro'), "
        "('a3', 'u3', 'bob@example.com', 'free'), ('a4', null, ' ADA@Example.com', 'pro')"
        ") t(account_id, user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS_MIRROR_DELETING})
    run_sync(project, "accounts", console=NullConsole())
    emu = project_factory.emulator
    assert len(emu.people()) == 2
    project_factory.sql("delete from accounts where account_id in ('a1', 'a3')")
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.changes.removed, report.changes.removed_sent) == (2, 1)
    assert emu.person(id="u3") is None  # bob's only row left: deleted
    project_factory.sql("delete from accounts where account_id = 'a2'")
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.changes.removed, report.changes.removed_sent) == (2, 0)  # a4: same email
    ada = emu.person(id="u1")
    assert ada is not None and ada.attributes["plan"] == "pro"
    project_factory.sql("delete from accounts")  # empty: the `empty model` guardrail asks --force
    assert (
        run_sync(project, "accounts", console=NullConsole(), force=True).changes.removed_sent == 3
    )
    assert emu.people() == []


def test_a_person_two_rows_reach_is_known_once_and_forgotten_wholly_by_its_delete(
    project_factory: ProjectFactory,
) -> None:
    """The people a sync made exist (``people_known__S``) as a set: accounts `a1` and `a2`
    reach one person (`id` u1), both sent by the first run, which appends what it delivers
    without reading the table (it knew no one): u1 is kept once at its end. A repeat a run
    killed before that end leaves (u3 twice) reads as one person, and one confirmed delete
    takes every row of the person out; a person delivered again later is not added twice."""
    project_factory.sql(
        "create or replace table accounts as select * from (values "
        "('a1', 'u1', 'ada@example.com', 'pro'), ('a2', 'u1', null, 'pro'), "
        "('a3', 'u3', 'bob@example.com', 'free')) t(account_id, user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS_MIRROR_DELETING})
    emu = project_factory.emulator

    def known() -> list[tuple[str, int]]:
        with StateStore.open(project.state_dir) as store:
            return store.exec_sql(
                'select id, count(*) from "people_known__accounts" group by id order by id'
            )

    assert run_sync(project, "accounts", console=NullConsole()).delivered == 3
    assert len(emu.people()) == 2
    assert known() == [("u1", 1), ("u3", 1)]
    with StateStore.open(project.state_dir) as store:  # as a run killed mid-delivery leaves it
        store.exec_sql("""insert into "people_known__accounts" values ('u3', null, null)""")
        assert {("id", "u1"), ("id", "u3")} <= known_people(store, project)
    project_factory.sql("update accounts set plan = 'max' where user_id = 'u1'")
    project_factory.sql("delete from accounts where account_id = 'a3'")
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.delivered, report.changes.removed_sent) == (3, 1)
    assert emu.person(id="u3") is None and emu.person(id="u1").attributes["plan"] == "max"
    assert known() == [("u1", 1)]  # bob deleted: both of his rows gone; ada not added again
    project_factory.sql("delete from accounts")  # empty: the `empty model` guardrail asks --force
    run_sync(project, "accounts", console=NullConsole(), force=True)
    assert emu.people() == [] and known() == []


def _members_synced(project_factory: ProjectFactory, delete: bool) -> Any:
    """A `mirror` people sync `members` keyed by email (`ann@x.io`, tier `gold`, rank `2`),
    with ``delete`` its `delete_removed`, run once."""
    project_factory.sql(
        "create table members as select 'ann@x.io' as email, 'gold' as tier, '2' as rank"
    )
    body = """
name: members
source: warehouse
model: {table: members}
kind: people
primary_key: email
identify_by: {email: email}
mode: mirror
attributes:
  tier: tier
  rank: {column: rank, type: integer}
""" + ("delete_removed: true\n" if delete else "")
    project = project_factory.write({"members": body})
    run_sync(project, "members", console=NullConsole())
    return project


@pytest.mark.parametrize("delete", [False, True], ids=["clear", "delete"])
def test_mirror_keeps_a_person_whose_row_under_a_new_key_is_rejected(
    project_factory: ProjectFactory, delete: bool
) -> None:
    """An email key whose case changed while the row got a bad value: the row is rejected,
    but it is still in the model and reaches the person, as a rejected row under its old key
    would. The old key leaving must not clear (or delete) them; once the row is fixed it is
    sent, and once it leaves for good the person is undone."""
    project = _members_synced(project_factory, delete)
    emu = project_factory.emulator

    project_factory.sql("update members set email = 'ANN@x.io', rank = 'x'")
    report = run_sync(project, "members", console=NullConsole())
    assert (report.changes.rejected, report.changes.removed_sent) == (1, 0)
    ann = emu.person(email="ann@x.io")
    assert ann is not None and ann.attributes == {"tier": "gold", "rank": 2}

    project_factory.sql("update members set tier = 'silver', rank = '3'")
    report = run_sync(project, "members", console=NullConsole())
    assert (report.changes.new, report.changes.removed_sent) == (1, 0)
    ann = emu.person(email="ann@x.io")
    assert ann is not None and ann.attributes == {"tier": "silver", "rank": 3}

    project_factory.sql("delete from members")
    report = run_sync(project, "members", console=NullConsole(), force=True)
    assert report.changes.removed_sent == 1
    ann = emu.person(email="ann@x.io")
    assert ann is None if delete else (ann is not None and ann.attributes == {})


@pytest.mark.parametrize("delete", [False, True], ids=["clear", "delete"])
def test_a_full_resync_keeps_a_person_whose_row_under_a_new_key_is_rejected(
    project_factory: ProjectFactory, delete: bool
) -> None:
    """The same through `--full-resync`: the row under its new key (the email in another
    case) is rejected, so the resync sends nobody, and the person keeps what they held. Once
    the row leaves the model, `mirror` clears (or deletes) them; the resync had forgotten the
    old key with the snapshot, and the person kept every attribute in Customer.io for good.
    (Found by the sync machine, seed 1900: `BOB@X.IO` recased to `bob@x.io` with rank `2.5`,
    a full resync, the row deleted: bob kept `{'tier': 'silver', 'rank': 2}`.)"""
    project = _members_synced(project_factory, delete)
    emu = project_factory.emulator

    project_factory.sql("update members set email = 'ANN@x.io', rank = 'x'")
    report = run_sync(project, "members", console=NullConsole(), full_resync=True)
    assert (report.changes.rejected, report.changes.removed_sent, report.delivered) == (1, 0, 0)
    ann = emu.person(email="ann@x.io")
    assert ann is not None and ann.attributes == {"tier": "gold", "rank": 2}

    project_factory.sql("delete from members")
    plan = plan_sync(project, "members", console=NullConsole())
    assert plan.changes.removed_sent == 1
    report = run_sync(project, "members", console=NullConsole(), force=True)
    assert report.changes.removed_sent == 1
    ann = emu.person(email="ann@x.io")
    assert ann is None if delete else (ann is not None and ann.attributes == {})
    assert run_sync(project, "members", console=NullConsole(), force=True).changes.to_send == 0


def test_a_full_resync_forgets_the_old_key_of_a_person_sent_under_a_new_one(
    project_factory: ProjectFactory,
) -> None:
    """An email key whose case changed, sent by a full resync: the person is sent under the
    new key and the old one is forgotten, so it is undone once, with the new key, when the
    row leaves, and not counted among the removals of every later run."""
    project = _members_synced(project_factory, delete=False)
    project_factory.sql("update members set email = 'ANN@x.io', tier = 'silver'")
    report = run_sync(project, "members", console=NullConsole(), full_resync=True)
    assert (report.delivered, report.changes.removed_sent) == (1, 0)
    assert run_sync(project, "members", console=NullConsole()).changes.removed == 0
    project_factory.sql("delete from members")
    report = run_sync(project, "members", console=NullConsole(), force=True)
    assert (report.changes.removed, report.changes.removed_sent) == (1, 1)
    ann = project_factory.emulator.person(email="ann@x.io")
    assert ann is not None and ann.attributes == {}


def test_project_default_null_policy_applies_to_syncs(project_factory: ProjectFactory) -> None:
    """`defaults.on_null: clear` in lockgate.yml clears nulls in a sync that sets no policy;
    a sync's own `on_null` still wins."""
    project_factory.sql(USERS)
    project_factory.write(
        {
            "profile": PROFILE,
            "kept": PROFILE.replace("name: profile", "name: kept") + "on_null: skip\n",
        }
    )
    yml = project_factory.root / "lockgate.yml"
    yml.write_text(yml.read_text() + "defaults: {on_null: clear}\n")
    project = load_project(project_factory.root)
    assert (project.sync("profile").on_null, project.sync("kept").on_null) == ("clear", "skip")
    report = run_sync(project, "profile", console=NullConsole())
    # grace's null renews_on and linus's null plan, signed_up_at and renews_on are now clears
    assert report.changes.attributes_cleared == 1 + 1 + 3
    project_factory.sql("update users set plan = null where user_id = 1")
    run_sync(project, "profile", console=NullConsole())
    ada = project_factory.emulator.person(id="1")
    assert ada is not None and "plan" not in ada.attributes  # her null plan cleared 'pro'


def test_a_full_resync_in_mirror_mode_still_undoes_rows_that_left(
    project_factory: ProjectFactory,
) -> None:
    """`--full-resync` sends every row again; a person who left the model since the last run
    is still deleted (mirror, `delete_removed`), not forgotten with the old snapshot."""
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE + "mode: mirror\ndelete_removed: true\n"})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("delete from users where user_id = 3")
    planned = plan_sync(project, "profile", console=NullConsole(), full_resync=True)
    assert (planned.changes.removed, planned.changes.removed_sent) == (1, 1)
    report = run_sync(project, "profile", console=NullConsole(), full_resync=True)
    assert report.delivered == 3  # ada and grace again, linus deleted
    emu = project_factory.emulator
    assert emu.person(id="3") is None and emu.person(id="1") is not None
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


@pytest.mark.parametrize("delete", [False, True], ids=["clear", "delete"])
def test_a_full_resync_whose_undo_fails_undoes_it_next_run(
    project_factory: ProjectFactory, delete: bool
) -> None:
    """A full resync forgets the snapshot before it sends: a person who left the model and
    whose clear (or delete) Customer.io did not take must still be undone by the next run,
    not forgotten with the snapshot and left in Customer.io with every attribute."""
    project_factory.sql(USERS)
    body = PROFILE + "mode: mirror\n" + ("delete_removed: true\n" if delete else "")
    project = project_factory.write({"profile": body}, retries=0)
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("delete from users where user_id = 3")
    emu = project_factory.emulator
    emu.set_faults(FaultConfig(error_5xx=1.0))
    failed = run_sync(project, "profile", console=NullConsole(), full_resync=True)
    assert failed.status == "partial" and failed.delivered == 0
    emu.set_faults(FaultConfig())

    plan = plan_sync(project, "profile", console=NullConsole())
    assert (plan.changes.removed, plan.changes.removed_sent) == (1, 1)
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "success" and report.changes.removed_sent == 1
    linus = emu.person(id="3")
    if delete:
        assert linus is None
    else:
        assert linus is not None and not {"mrr", "vip", "promo"} & set(linus.attributes)
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


@pytest.mark.parametrize(
    ("reject", "delete"),
    [
        ("insert into users select * from users where user_id = 3", False),
        ("update users set vip = 'maybe' where user_id = 3", True),
    ],
    ids=["repeated-key-cleared", "bad-value-deleted"],
)
def test_a_row_rejected_by_a_full_resync_is_still_undone_when_it_leaves(
    project_factory: ProjectFactory, reject: str, delete: bool
) -> None:
    """A delivered row rejected by a full resync (its key repeated, a bad value) is not sent
    again, and its person still holds what it was sent before: the resync must not forget it
    with the snapshot, or, once its row leaves the model, `mirror` neither clears nor deletes
    the person, who keeps every attribute in Customer.io."""
    project_factory.sql(USERS)
    body = PROFILE + "mode: mirror\n" + ("delete_removed: true\n" if delete else "")
    project = project_factory.write({"profile": body})
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql(reject)
    resync = run_sync(project, "profile", console=NullConsole(), full_resync=True)
    assert resync.changes.rejected >= 1 and resync.delivered == 2  # ada and grace again
    project_factory.sql("delete from users where user_id = 3")
    plan = plan_sync(project, "profile", console=NullConsole())
    assert (plan.changes.removed, plan.changes.removed_sent) == (1, 1)
    run_sync(project, "profile", console=NullConsole())
    linus = project_factory.emulator.person(id="3")
    if delete:
        assert linus is None
    else:
        assert linus is not None and not {"mrr", "vip", "promo"} & set(linus.attributes)
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_update_mode_never_creates_people(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE + "mode: update\n"})
    report = run_sync(project, "profile", console=NullConsole())
    assert report.delivered == 3  # accepted by the API...
    assert project_factory.emulator.people() == []  # ...but nobody was created


def test_missing_column_names_sync_and_column(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE.replace("plan: plan", "plan: plan_tier")})
    with pytest.raises(StepError) as caught:
        run_sync(project, "profile", console=NullConsole())
    message = str(caught.value)
    assert "step `map`" in message and "`profile`" in message and "`plan_tier`" in message
    assert project_factory.emulator.people() == []


def test_dead_lettered_records_are_sent_again_next_run(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockgate.emulator import EmulatorConfig, FaultConfig

    project_factory.sql(USERS)
    broken = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=1.0, seed=1)))
    with broken.serve() as url:
        project = project_factory.write({"profile": PROFILE}, url=url, retries=0)
        first = run_sync(project, "profile", console=NullConsole())
    assert first.status == "partial" and first.dead_lettered == 3 and first.delivered == 0

    project = project_factory.write({"profile": PROFILE})
    second = run_sync(project, "profile", console=NullConsole())
    assert second.changes.new == 3 and second.delivered == 3
    assert len(project_factory.emulator.people()) == 3


def test_full_resync_sends_everyone_again(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())
    report = run_sync(project, "profile", console=NullConsole(), full_resync=True)
    assert report.delivered == 3 and report.changes.new == 3


def test_sql_error_in_the_model_names_the_sync(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    broken = PROFILE.replace("select * from users", "select * from userz")
    project = project_factory.write({"profile": broken})
    with pytest.raises(StepError) as caught:
        run_sync(project, "profile", console=NullConsole())
    message = str(caught.value)
    assert "step `extract`" in message and "userz" in message
    assert project_factory.emulator.people() == []


def test_a_key_that_becomes_repeated_is_rejected_not_sent(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())

    # user 1 now appears twice, identical; user 2 twice, one copy unchanged, one not
    project_factory.sql(
        """
        insert into users select * from users where user_id = 1;
        insert into users select user_id, email, 'enterprise', mrr, vip, signed_up_at, renews_on,
                                 promo from users where user_id = 2;
        """
    )
    second = run_sync(project, "profile", console=NullConsole())
    reasons = dict(second.changes.rejected_samples)
    assert "appears 2 times" in reasons["1"] and "appears 2 times" in reasons["2"]
    assert second.changes.rejected == 4 and second.changes.to_send == 0
    grace = project_factory.emulator.person(id="2")
    assert grace is not None and grace.attributes["plan"] == "free"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        # a copy of an unchanged row, identical: both copies match the snapshot
        ("insert into users select * from users where user_id = 1", "1"),
        # a copy of an unchanged row with another value: one copy matches, one differs
        (
            "insert into users select user_id, email, 'enterprise', mrr, vip, signed_up_at, "
            "renews_on, promo from users where user_id = 2",
            "2",
        ),
        # a changed row and a copy of it changed otherwise: neither matches
        (
            "update users set plan = 'team' where user_id = 3; insert into users select "
            "user_id, email, 'enterprise', mrr, vip, signed_up_at, renews_on, promo from users "
            "where user_id = 3",
            "3",
        ),
        # a new key, twice
        (
            "insert into users select 9, 'new@example.com', plan, mrr, vip, signed_up_at, "
            "renews_on, promo from users where user_id in (1, 2)",
            "9",
        ),
    ],
    ids=["identical-copy", "changed-copy", "both-changed", "new-twice"],
)
def test_each_way_a_key_comes_to_repeat_rejects_every_copy(
    project_factory: ProjectFactory, change: str, key: str
) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    run_sync(project, "profile", console=NullConsole())
    before = {p.id: dict(p.attributes) for p in project_factory.emulator.people()}

    project_factory.sql(change)
    second = run_sync(project, "profile", console=NullConsole())
    reasons = dict(second.changes.rejected_samples)
    assert f"key `{key}` appears 2 times in the model" in reasons[key]
    assert second.changes.rejected == 2 and second.changes.to_send == 0
    # nothing sent: every profile is as the first run left it, and the new key made none
    assert {p.id: dict(p.attributes) for p in project_factory.emulator.people()} == before


COMPOSITE = """
name: seats
source: warehouse
model: {table: seats}
kind: people
primary_key: [workspace, handle]
identify_by: {id: person_id}
attributes: {role: role}
"""


def test_a_composite_key_tells_apart_values_that_hold_its_separator(
    project_factory: ProjectFactory,
) -> None:
    # joined with `|` as they stand, the first two rows' keys would both read `eu|west|ada`
    # and both rows be rejected as one repeated key; the last two hold the escape character
    project_factory.sql(
        r"""
        create or replace table seats as select * from (values
          ('eu|west', 'ada', 'p1', 'owner'), ('eu', 'west|ada', 'p2', 'viewer'),
          ('a\', 'b', 'p3', 'editor'), ('a', '\b', 'p4', 'editor')
        ) t(workspace, handle, person_id, role);
        """
    )
    project = project_factory.write({"seats": COMPOSITE})
    first = run_sync(project, "seats", console=NullConsole())
    assert first.status == "success" and first.changes.rejected == 0 and first.delivered == 4
    emu = project_factory.emulator
    assert {p.id: p.attributes["role"] for p in emu.people()} == {
        "p1": "owner",
        "p2": "viewer",
        "p3": "editor",
        "p4": "editor",
    }

    # each key is its own snapshot row: changing one row sends that row alone
    project_factory.sql("update seats set role = 'admin' where person_id = 'p2'")
    second = run_sync(project, "seats", console=NullConsole())
    assert second.delivered == 1 and second.changes.rejected == 0
    assert emu.person(id="p2").attributes["role"] == "admin"  # type: ignore[union-attr]
    assert emu.person(id="p1").attributes["role"] == "owner"  # type: ignore[union-attr]


def test_plan_samples_are_the_payloads_the_run_sends(project_factory: ProjectFactory) -> None:
    project_factory.sql(USERS)
    project = project_factory.write({"profile": PROFILE})
    plan = plan_sync(project, "profile", console=NullConsole(), samples=3)
    run_sync(project, "profile", console=NullConsole())
    sent = {
        op["identifiers"]["id"]: op
        for r in project_factory.emulator.request_log()
        if r.path == "/api/v2/batch"
        for op in r.body["batch"]
    }
    assert len(plan.samples) == 3
    for sample in plan.samples:
        assert sample["payload"] == sent[sample["key"]]


def test_list_columns_are_sent_as_json_lists_with_their_nulls(
    project_factory: ProjectFactory,
) -> None:
    project_factory.sql(
        "create or replace table teams as select 1 as id, [3, null, 5] as seats, "
        "[true, null] as flags, ['a', null] as tags"
    )
    sync = """
name: teams
source: warehouse
model: {table: teams}
kind: people
primary_key: id
identify_by: {id: id}
attributes: [seats, flags, tags]
"""
    project = project_factory.write({"teams": sync})
    assert run_sync(project, "teams", console=NullConsole()).delivered == 1
    person = project_factory.emulator.person(id="1")
    assert person is not None
    assert person.attributes["seats"] == [3, None, 5]
    assert person.attributes["flags"] == [True, None]
    assert person.attributes["tags"] == ["a", None]


def test_whole_numbers_in_lists_and_json_fields_are_sent_as_integers(
    project_factory: ProjectFactory,
) -> None:
    """`5`, not `5.0`, wherever a number goes: in a list of doubles or decimals, in a struct
    or a map at any depth, and in a `type: json` field over a number column (Liquid prints
    `5.0` for a JSON `5.0`)."""
    project_factory.sql(
        """
        create or replace table scores as select * from (values
          (1, [1.0, 2.5, null]::double[], [5.00, 1.25]::decimal(6,2)[], 7.0::double,
           5.00::decimal(6,2), [3.0, -0.0]::double[2], []::double[],
           {'floor': 5.0, 'note': 'x:5.0,', 'rooms': [{'m2': 12.0}, {'m2': 7.5}]},
           map {'a': 2.00, 'b': null}::map(varchar, decimal(6,2))),
          (2, [1e20]::double[], [12345678901234567890.00]::decimal(30,2)[], 2.5,
           1.50, [1.5, 2.0]::double[2], null, null, map {}::map(varchar, decimal(6,2)))
        ) t(id, ratios, prices, ratio, price, pair, empty, address, totals)
        """
    )
    sync = """
name: scores
source: warehouse
model: {table: scores}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  ratios: ratios
  prices: prices
  pair: pair
  empty: empty
  ratios_json: {column: ratios, type: json}
  ratio_json: {column: ratio, type: json}
  price_json: {column: price, type: json}
  address: address
  totals: totals
  address_json: {column: address, type: json}
  ratios_text: {column: ratios, type: string}
  address_text: {column: address, type: string}
"""
    project = project_factory.write({"scores": sync})
    report = run_sync(project, "scores", console=NullConsole())
    assert report.delivered == 2 and report.changes.rejected == 0

    def typed(value: Any) -> Any:
        if isinstance(value, list):
            return [typed(v) for v in value]
        if isinstance(value, dict):
            return {k: typed(v) for k, v in value.items()}
        return (type(value).__name__, value)

    emu = project_factory.emulator
    people = {p.id: {k: typed(v) for k, v in p.attributes.items()} for p in emu.people()}
    assert people["1"] == {
        "ratios": [("int", 1), ("float", 2.5), ("NoneType", None)],
        "prices": [("int", 5), ("float", 1.25)],
        "pair": [("int", 3), ("int", 0)],
        "empty": [],
        "ratios_json": [("int", 1), ("float", 2.5), ("NoneType", None)],
        "ratio_json": ("int", 7),
        "price_json": ("int", 5),
        "address": {
            "floor": ("int", 5),
            "note": ("str", "x:5.0,"),
            "rooms": [{"m2": ("int", 12)}, {"m2": ("float", 7.5)}],
        },
        "totals": {"a": ("int", 2), "b": ("NoneType", None)},
        "address_json": {
            "floor": ("int", 5),
            "note": ("str", "x:5.0,"),
            "rooms": [{"m2": ("int", 12)}, {"m2": ("float", 7.5)}],
        },
        # a `string` field sends the value's JSON text, its numbers as above (it sent the
        # warehouse's own text of it, `[1.0, 2.5, NULL]`, which no JSON reader takes)
        "ratios_text": ("str", "[1,2.5,null]"),
        "address_text": ("str", '{"floor":5,"note":"x:5.0,","rooms":[{"m2":12},{"m2":7.5}]}'),
    }
    assert people["2"] == {
        # beyond 2^53 a double is not an exact integer: sent as the double it is
        "ratios": [("float", 1e20)],
        # a whole decimal keeps every digit
        "prices": [("int", 12345678901234567890)],
        "pair": [("float", 1.5), ("int", 2)],
        "ratios_json": [("float", 1e20)],
        "ratio_json": ("float", 2.5),
        "price_json": ("float", 1.5),
        "totals": {},
        "ratios_text": ("str", "[100000000000000000000.0]"),  # the JSON `ratios` is sent as
    }


#: accounts addressed by email alone: two accounts with one email reach one person
ACCOUNTS_BY_EMAIL = """
name: accounts
source: warehouse
model: {table: accounts}
kind: people
primary_key: account_id
identify_by: {email: email}
attributes: {plan: plan}
"""


def test_rows_that_reach_one_person_are_reported_not_silently_overwritten(
    project_factory: ProjectFactory,
) -> None:
    """Without an identity graph, two accounts with one email (in any case) go to one person
    and overwrite each other's attributes: plan and run report them with their keys."""
    project_factory.sql(
        "create or replace table accounts as select * from (values "
        "('a1', 'ada@example.com', 'pro'), ('a2', 'ADA@example.com', 'free'), "
        "('a3', 'bob@example.com', 'free')) t(account_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS_BY_EMAIL})
    plan = plan_sync(project, "accounts", console=NullConsole())
    assert plan.changes.shared_person == 2
    assert plan.changes.shared_samples == (("email:ada@example.com", "a1, a2"),)
    assert plan.as_dict()["shared_people"] == [
        {"person": "email:ada@example.com", "keys": ["a1", "a2"]}
    ]
    report = run_sync(project, "accounts", console=NullConsole())
    assert report.changes.shared_person == 2 and report.delivered == 3
    assert len(project_factory.emulator.people()) == 2


def test_a_changed_row_that_reaches_the_person_of_an_unchanged_row_is_reported(
    project_factory: ProjectFactory,
) -> None:
    """The row sharing the person need not be sent in the same run: an account whose email
    becomes another account's, or one of two sharing accounts changing alone, is reported
    with the unchanged row's key too, also from a snapshot written before it named people."""
    project_factory.sql(
        "create or replace table accounts as select * from (values "
        "('a1', 'ada@example.com', 'pro'), ('a2', 'ADA@example.com', 'free'), "
        "('a3', 'bob@example.com', 'free'), ('a4', 'cy@example.com', 'free')) "
        "t(account_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS_BY_EMAIL})
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 4

    # one of the two accounts of ada changes alone
    project_factory.sql("update accounts set plan = 'team' where account_id = 'a2'")
    plan = plan_sync(project, "accounts", console=NullConsole())
    assert plan.changes.to_send == 1 and plan.changes.shared_person == 1
    assert plan.changes.shared_samples == (("email:ada@example.com", "a1, a2"),)
    assert run_sync(project, "accounts", console=NullConsole()).changes.shared_person == 1

    # bob's account takes cy's email (in another case); a snapshot from before `addr` existed
    with StateStore.open(project.state_dir) as store:
        store.exec_sql(f'alter table "snap__accounts" drop column addr; {UNMARK_TABLES}')
    project_factory.sql("update accounts set email = 'CY@example.com' where account_id = 'a3'")
    plan = plan_sync(project, "accounts", console=NullConsole())
    assert plan.changes.to_send == 1 and plan.changes.shared_person == 1
    assert plan.changes.shared_samples == (("email:cy@example.com", "a3, a4"),)

    # unchanged rows that left the model reach nobody any more
    project_factory.sql("delete from accounts where account_id = 'a4'")
    assert plan_sync(project, "accounts", console=NullConsole()).changes.shared_person == 0


def test_a_snapshot_whose_person_column_was_added_but_not_filled_is_filled(
    project_factory: ProjectFactory,
) -> None:
    """The snapshot's `addr` (the person each row reaches) was added and derived by two
    statements, each committed on its own: a Lockgate killed between them left the column
    empty, and every later run blind to the people of the unchanged rows. The next open
    fills it; before, the column's presence was taken for a finished upgrade."""
    project_factory.sql(
        "create or replace table accounts as select * from (values "
        "('a1', 'ada@example.com', 'pro'), ('a2', 'bob@example.com', 'free'), "
        "('a3', 'cy@example.com', 'free')) t(account_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS_BY_EMAIL})
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 3
    # as a kill between the two left it, in a state of the Lockgate before `upgraded`
    # (which recorded state format 3)
    with StateStore.open(project.state_dir) as store:
        store.exec_sql(
            'update "snap__accounts" set addr = null; drop table if exists upgraded; '
            "update state_format set format = 3"
        )
    # bob's account takes cy's email: two accounts reach one person
    project_factory.sql("update accounts set email = 'Cy@example.com' where account_id = 'a2'")
    plan = plan_sync(load_project(project.root), "accounts", console=NullConsole())
    assert plan.changes.to_send == 1 and plan.changes.shared_person == 1
    assert plan.changes.shared_samples == (("email:cy@example.com", "a2, a3"),)
    report = run_sync(load_project(project.root), "accounts", console=NullConsole())
    assert report.changes.shared_person == 1


def test_identifiers_lose_tabs_and_line_breaks_at_either_end_not_only_spaces(
    project_factory: ProjectFactory,
) -> None:
    """A CSV load leaves `carol@x.com\\n` or `\\tdan@x.com`: sent as they are, each would be a
    person of its own apart from the clean address (emails match in any case, not with white
    space). The same person is reached whatever white space surrounds the value."""
    project_factory.sql(
        "create or replace table accounts as select * from (values "
        "('a1', '  bob@x.com  ', 'pro'), ('a2', 'carol@x.com' || chr(10), 'pro'), "
        "('a3', chr(9) || 'dan@x.com' || chr(13) || chr(10), 'pro'), "
        "('a4', chr(160) || 'eve@x.com' || chr(65279), 'pro')) t(account_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS_BY_EMAIL})
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 4
    emails = sorted(p.email or "" for p in project_factory.emulator.people())
    assert emails == ["bob@x.com", "carol@x.com", "dan@x.com", "eve@x.com"]
    # a row whose email is nothing but white space has no identifier, and is told from a
    # null one (which was what its reason said: the model shows no null there)
    project_factory.sql(
        "insert into accounts values ('a5', chr(9) || ' ' || chr(10), 'pro'), ('a6', null, 'pro')"
    )
    report = run_sync(project, "accounts", console=NullConsole())
    rejected = dict(report.changes.rejected_samples)
    assert rejected["a5"] == "no identifier: `email` is blank (only white space)"
    assert rejected["a6"] == "no identifier: `email` is null"
    # with two identifiers, both null, or blank and null
    both = (
        ACCOUNTS_BY_EMAIL.replace("name: accounts", "name: pairs")
        .replace("{table: accounts}", "{table: pairs}")
        .replace("primary_key: account_id", "primary_key: plan")
        .replace("{email: email}", "{id: account_id, email: email}")
    )
    project_factory.sql(
        "create or replace table pairs as select * from (values (' ', null::varchar, 'p1'), "
        "(null, null, 'p2')) t(account_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS_BY_EMAIL, "pairs": both})
    rejected = dict(run_sync(project, "pairs", console=NullConsole()).changes.rejected_samples)
    assert rejected == {
        "p1": "no identifier: `account_id` or `email` is null or blank",
        "p2": "no identifier: `account_id` or `email` is null",
    }


def test_a_row_addressed_by_its_email_because_its_id_is_null_needs_an_at_sign(
    project_factory: ProjectFactory,
) -> None:
    """`identify_by: {id, email}` addresses a row with a null id by its email: that email is
    checked as it is when it is the only identifier, so `n/a` is rejected, not sent to create
    a person named `n/a`. Next to a good id the row is sent as before."""
    project_factory.sql(
        "create or replace table users as select * from (values "
        "(1, null, 'n/a', 'pro'), (2, null, 'ok@x.com', 'pro'), (3, 'u3', 'n/a', 'pro')) "
        "t(pk, user_id, email, plan)"
    )
    sync = PROFILE_BY_ID_AND_EMAIL
    project = project_factory.write({"profile": sync})
    report = run_sync(project, "profile", console=NullConsole())
    assert dict(report.changes.rejected_samples) == {
        "1": "column `email`: `n/a` is not an email address (no `@`); fix it in the model or at "
        "the source"
    }
    # no person addressed by `n/a` alone; u3, addressed by its id, keeps its email attribute
    people = sorted((p.id or "", p.email) for p in project_factory.emulator.people())
    assert people == [("", "ok@x.com"), ("u3", "n/a")]


PROFILE_BY_ID_AND_EMAIL = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: pk
identify_by: {id: user_id, email: email}
attributes: {plan: plan}
"""


def test_an_integer_field_says_a_whole_value_is_beyond_the_64_bit_range(
    project_factory: ProjectFactory,
) -> None:
    """`type: integer` sends 64-bit integers: a whole value beyond them is rejected saying so
    (not "is not an integer", which sends the user looking for a fraction), and what would
    keep its digits; a fraction is still not an integer."""
    project_factory.sql(
        "create or replace table users as select * from (values "
        "(1, 12::hugeint, '12'), (2, 9223372036854775808::hugeint, '-9223372036854775809'), "
        "(3, 7, '2.5')) t(user_id, seats, quota)"
    )
    sync = (
        USERS_PROFILE
        + """\
  seats: {column: seats, type: integer}
  quota: {column: quota, type: integer}
"""
    )
    project = project_factory.write({"profile": sync})
    report = run_sync(project, "profile", console=NullConsole())
    beyond = (
        "is beyond the 64-bit integer range (-9223372036854775808 to 9223372036854775807) of "
        "an `integer` field; `type: string` sends its digits as text"
    )
    assert dict(report.changes.rejected_samples) == {
        "2": f"column `seats` (field `seats`): value `9223372036854775808` {beyond}",
        "3": "column `quota` (field `quota`): value `2.5` is not an integer",
    }
    one = project_factory.emulator.person(id="1")
    assert one is not None and one.attributes == {"seats": 12, "quota": 12}


def test_an_email_attribute_of_the_identify_by_column_sends_the_trimmed_identifier(
    project_factory: ProjectFactory,
) -> None:
    """`attributes: {email: ...}` over identify_by's own email column is the same email: it is
    sent as the identifier is (trimmed, so the person is not renamed to `bob@x.com\\n`), and
    its null policy still applies."""
    project_factory.sql(
        "create or replace table users as select * from (values "
        "(1, 'u1', 'bob@x.com' || chr(10)), (2, 'u2', 'amy@x.com')) t(pk, user_id, email)"
    )
    sync = PROFILE_BY_ID_AND_EMAIL.replace(
        "attributes: {plan: plan}", "attributes: {email: {column: email, on_null: clear}}"
    )
    project = project_factory.write({"profile": sync})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 2
    emu = project_factory.emulator
    bob = emu.person(id="u1")
    assert bob is not None and bob.email == "bob@x.com"
    project_factory.sql("update users set email = null where pk = 2")
    report = run_sync(project, "profile", console=NullConsole())
    assert report.changes.attributes_cleared == 1
    last = [op for r in emu.request_log() if r.path == "/api/v2/batch" for op in r.body["batch"]]
    assert last[-1]["identifiers"] == {"id": "u2"} and last[-1]["attributes"] == {"email": ""}


def test_a_run_whose_clears_take_a_call_over_300_attributes_stops_before_sending(
    project_factory: ProjectFactory,
) -> None:
    """`clear_removed_attributes` puts the removed names in the same `attributes` object as the
    mapped ones: swapping one of 300 attributes made 301 keys, and Customer.io refused every
    record. The run stops before sending, naming the file, the numbers and the way out."""
    cols = ", ".join(f"'x' as a{i}" for i in range(301))
    project_factory.sql(f"create or replace table users as select 1 as user_id, {cols}")

    def profile(names: range) -> str:
        listed = ", ".join(f"a{i}" for i in names)
        return (
            "name: profile\nsource: warehouse\nmodel: {table: users}\nkind: people\n"
            "primary_key: user_id\nidentify_by: {id: user_id}\n"
            f"clear_removed_attributes: true\nattributes: [{listed}]\n"
        )

    project = project_factory.write({"profile": profile(range(300))})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    batches = len(project_factory.emulator.request_log())
    project = project_factory.write({"profile": profile(range(1, 301))})  # a0 out, a300 in
    with pytest.raises(StepError) as caught:
        run_sync(project, "profile", console=NullConsole())
    assert str(caught.value.__cause__) == (
        "syncs/profile.yml: sync `profile`: each call would carry 301 attributes (300 mapped, "
        "`a0`, taken out and cleared by `clear_removed_attributes`); Customer.io refuses more "
        'than 300 ("cannot identify more than 300 attributes in one request"), so every record '
        "would fail\n  hint: take attributes out in one run and add new ones in the next (a run "
        "that clears 1 has room for 299 mapped), or leave `clear_removed_attributes` off for "
        "this change (Customer.io then keeps the removed values)"
    )
    assert len(project_factory.emulator.request_log()) == batches  # nothing sent
    # taking `a0` out first (299 mapped and 1 cleared) goes through, and clears it
    project = project_factory.write({"profile": profile(range(1, 300))})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    person = project_factory.emulator.person(id="1")
    assert person is not None and "a0" not in person.attributes


def test_a_typed_default_or_constant_is_sent_as_the_rows_values_are(
    project_factory: ProjectFactory,
) -> None:
    """One attribute, one type: a `type: timestamp` default reaches Customer.io as unix
    seconds like the rows that have a value (it was the ISO text), and typed constants as
    their type (a timestamp, a boolean), not as the text written in the file."""
    project_factory.sql(
        "create or replace table users as select * from (values (1, null::timestamp), "
        "(2, timestamp '2024-01-01')) t(user_id, trial_ends_at)"
    )
    sync = (
        USERS_PROFILE
        + """\
  trial_ends_at: {column: trial_ends_at, type: timestamp, on_null: default,
                  default: "2030-01-01T00:00:00Z"}
  launched_at: {value: "2024-05-01T00:00:00Z", type: timestamp}
  beta: {value: "yes", type: boolean}
"""
    )
    project = project_factory.write({"profile": sync})
    assert run_sync(project, "profile", console=NullConsole()).delivered == 2
    emu = project_factory.emulator
    people = {p.id: p.attributes for p in emu.people()}
    assert people == {
        "1": {"trial_ends_at": 1893456000, "launched_at": 1714521600, "beta": True},
        "2": {"trial_ends_at": 1704067200, "launched_at": 1714521600, "beta": True},
    }


EMAILS = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id, email: email}
attributes: {plan: plan}
"""


def emails_of(emu: Emulator) -> dict[str | None, tuple[str | None, Any]]:
    return {p.id: (p.email, p.attributes.get("plan")) for p in emu.people()}


def failures(emu: Emulator) -> list[str]:
    return [a.message for a in emu.activity_log() if a.kind == "attribute update failure"]


def test_people_who_pass_emails_between_them_in_one_run_all_get_theirs(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io drops (200, nothing applied) an identify whose email is another person's:
    a swap, a rotation, an address given up and taken by a new user in the same run, or one
    cleared by its owner, all land when the givers are sent (or cleared) first."""
    project_factory.sql(
        """
        create table users as select * from (values
          ('u1', 'a@x.com', 'pro'), ('u2', 'b@x.com', 'free'), ('u3', 'c@x.com', 'free'),
          ('u4', 'd@x.com', 'free'), ('u5', 'e@x.com', 'free'), ('u6', 'f@x.com', 'free')
        ) t(user_id, email, plan)
        """
    )
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    project_factory.sql(
        """
        -- u1 and u2 swap (and u1's plan changes); u3 -> u4 -> u5 -> u3 rotate
        update users set email = 'b@x.com', plan = 'enterprise' where user_id = 'u1';
        update users set email = 'a@x.com' where user_id = 'u2';
        update users set email = 'd@x.com' where user_id = 'u3';
        update users set email = 'e@x.com' where user_id = 'u4';
        update users set email = 'c@x.com' where user_id = 'u5';
        -- u6 gives its address up (null); new user u7 signs up with it
        update users set email = null where user_id = 'u6';
        insert into users values ('u7', 'f@x.com', 'trial');
        """
    )
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 7)
    assert failures(emu) == []
    assert emails_of(emu) == {
        "u1": ("b@x.com", "enterprise"),
        "u2": ("a@x.com", "free"),
        "u3": ("d@x.com", "free"),
        "u4": ("e@x.com", "free"),
        "u5": ("c@x.com", "free"),
        "u6": (None, "free"),
        "u7": ("f@x.com", "trial"),
    }
    again = run_sync(project, "profile", console=NullConsole())
    assert again.changes.to_send == 0


@pytest.mark.parametrize("full_resync", [False, True])
def test_people_who_swap_emails_all_get_theirs_in_a_run_of_one_of_them(
    project_factory: ProjectFactory, full_resync: bool
) -> None:
    """`--only u1` also sends u2, who takes u1's old email, though the snapshot the run diffs
    against holds u1 alone: whose email is whose is read from every record delivered, so u1's
    email is cleared first and neither identify is dropped."""
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'free'), "
        "('u2', 'b@x.com', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    project_factory.sql(
        "update users set plan = 'pro', "
        "email = case user_id when 'u1' then 'b@x.com' else 'a@x.com' end"
    )
    report = run_sync(
        project, "profile", console=NullConsole(), only=("u1",), full_resync=full_resync
    )
    assert (report.status, report.delivered) == ("success", 2)
    assert failures(emu) == []
    assert emails_of(emu) == {"u1": ("b@x.com", "pro"), "u2": ("a@x.com", "pro")}
    again = run_sync(project, "profile", console=NullConsole())
    assert again.changes.to_send == 0


def test_a_row_taking_an_email_its_giver_did_not_give_up_waits_for_the_next_run(
    project_factory: ProjectFactory,
) -> None:
    """u1 takes u2's email, u2 takes u3's, u3 moves on; Customer.io refuses u3. Sent anyway,
    u2 and u1 would be dropped by Customer.io (their emails still taken) yet counted
    delivered, and never sent again: both are held back, each counted rejected with its
    reason (the row it waits for), and land with the next run."""
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'free'), "
        "('u2', 'b@x.com', 'free'), ('u3', 'c@x.com', 'free'), ('u4', 'd@x.com', 'free')) "
        "t(user_id, email, plan)"
    )
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    project_factory.sql(
        """
        update users set email = 'b@x.com', plan = 'pro' where user_id = 'u1';
        update users set email = 'c@x.com', plan = 'pro' where user_id = 'u2';
        update users set email = 'e@x.com', plan = 'pro' where user_id = 'u3';
        update users set plan = 'pro' where user_id = 'u4';
        """
    )
    emu.set_faults(FaultConfig(reject_people=frozenset({"u3"})))
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.rejected_by_api) == ("partial", 1, 3)
    waits = {key: reason for key, _, reason in report.failures if key != "u3"}
    assert sorted(waits) == ["u1", "u2"]
    assert "row `u3` was not delivered" in waits["u2"]
    assert "row `u2` was not delivered" in waits["u1"]
    assert failures(emu) == []  # nothing was sent for Customer.io to drop
    assert emails_of(emu) == {
        "u1": ("a@x.com", "free"),
        "u2": ("b@x.com", "free"),
        "u3": ("c@x.com", "free"),
        "u4": ("d@x.com", "pro"),
    }
    emu.set_faults(FaultConfig())
    again = run_sync(project, "profile", console=NullConsole())
    assert (again.status, again.delivered) == ("success", 3)
    assert emails_of(emu) == {
        "u1": ("b@x.com", "pro"),
        "u2": ("c@x.com", "pro"),
        "u3": ("e@x.com", "pro"),
        "u4": ("d@x.com", "pro"),
    }
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_a_swap_whose_email_release_fails_is_a_partial_run_sent_again(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io down for the whole run: the release of a swapped email is dead-lettered and
    the swapping rows wait. The run says so (`partial`, one dead letter), not `success`."""
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'free'), "
        "('u2', 'b@x.com', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"profile": EMAILS}, retries=0)
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    project_factory.sql(
        "update users set plan = 'pro', "
        "email = case user_id when 'u1' then 'b@x.com' else 'a@x.com' end"
    )
    emu.set_faults(FaultConfig(error_5xx=1.0))
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered, report.dead_lettered) == ("partial", 0, 1)
    assert [(k, o) for k, o, _ in report.failures] == [("u1#release-email", "dead_letter")]
    emu.set_faults(FaultConfig())
    again = run_sync(project, "profile", console=NullConsole())
    assert again.status == "success"
    assert emails_of(emu) == {"u1": ("b@x.com", "pro"), "u2": ("a@x.com", "pro")}


def test_an_email_release_applied_unheard_then_undone_gives_the_email_back(
    project_factory: ProjectFactory,
) -> None:
    """The release of u1's email in a swap is applied but its answer lost; the swap is then
    undone in the warehouse. u1's row is back at what Lockgate last delivered, yet Customer.io
    holds u1 without an email: the next run sends u1 again (its release was unconfirmed)."""
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'free'), "
        "('u2', 'b@x.com', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"profile": EMAILS}, retries=0)
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    swap = "update users set email = case user_id when 'u1' then 'b@x.com' else 'a@x.com' end"
    project_factory.sql(swap)
    emu.set_faults(FaultConfig(error_5xx=1.0, applied_then_failed=True))
    assert run_sync(project, "profile", console=NullConsole()).status == "partial"
    assert emails_of(emu)["u1"] == (None, "free")  # the release was applied
    emu.set_faults(FaultConfig())
    project_factory.sql(swap.replace("'b@x.com' else 'a@x.com'", "'a@x.com' else 'b@x.com'"))
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.changes.unconfirmed, report.delivered) == ("success", 1, 1)
    assert emails_of(emu) == {"u1": ("a@x.com", "free"), "u2": ("b@x.com", "free")}
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_a_run_without_email_moves_sends_one_batch(project_factory: ProjectFactory) -> None:
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'pro'), "
        "('u2', 'b@x.com', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    before = len(emu.request_log())
    # u1 changes its address to a free one, u2 its plan: nothing to wait for
    project_factory.sql(
        "update users set email = 'a2@x.com' where user_id = 'u1';"
        "update users set plan = 'pro' where user_id = 'u2'"
    )
    report = run_sync(project, "profile", console=NullConsole())
    assert report.delivered == 2 and len(emu.request_log()) == before + 1
    assert emails_of(emu) == {"u1": ("a2@x.com", "pro"), "u2": ("b@x.com", "pro")}


def people_of(emu: Emulator) -> dict[str | None, tuple[str, str | None, Any]]:
    return {p.id: (p.cio_id, p.email, p.attributes.get("plan")) for p in emu.people()}


#: how u1 lets go of its email, each leaving it on u1's person in Customer.io: the sync's
#: mode, the steps, and u1's plan then (a `mirror` sync clears a leaving row's attributes)
LET_GO = {
    # `on_null: skip`: nothing is sent for the null, Customer.io keeps the email
    "set-to-null": ("", ("update users set email = null where user_id = 'u1'",), "pro"),
    # `mirror` without `delete_removed`: u1's attributes are cleared, its email stays
    "left-in-mirror": ("mode: mirror\n", ("delete from users where user_id = 'u1'",), None),
    # `upsert`: u1's person stays; a `--full-resync` then sends every row again, and keeps
    # the record of u1's (it sends nothing for it)
    "left-then-full-resync": ("", ("delete from users where user_id = 'u1'", "resync"), "pro"),
}


@pytest.mark.parametrize("let_go", LET_GO)
def test_an_email_a_user_let_go_of_is_released_when_a_later_run_gives_it_to_a_new_user(
    project_factory: ProjectFactory, let_go: str
) -> None:
    """u1 lets go of its email (it goes null, its row leaves a `mirror` sync, or its row
    leaves an `upsert` sync before a `--full-resync`), which stays on u1's person in
    Customer.io; a later run brings new user u2 with that address (in another case). Sent as
    is, Customer.io would give u2's id to u1's profile (u1 gone, u2 with u1's attributes):
    u1's email is released first, and u2 is a new person."""
    mode, steps, u1_plan = LET_GO[let_go]
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'pro'), "
        "('u0', 'z@x.com', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"profile": EMAILS + mode})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    u1 = emu.person(id="u1")
    assert u1 is not None
    for step in steps:
        if step == "resync":
            resync = run_sync(project, "profile", console=NullConsole(), full_resync=True)
            assert (resync.status, resync.delivered) == ("success", 1)  # u0 again, u1 alone
            continue
        project_factory.sql(step)
        assert run_sync(project, "profile", console=NullConsole()).status == "success"
    assert emails_of(emu)["u1"] == ("a@x.com", u1_plan)  # the email stays on u1's person
    project_factory.sql("insert into users values ('u2', 'A@x.com', 'trial')")
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 1)
    assert failures(emu) == []
    people = people_of(emu)
    assert people["u1"] == (u1.cio_id, None, u1_plan)
    assert people["u2"][1:] == ("A@x.com", "trial") and people["u2"][0] != u1.cio_id
    assert len(people) == 3
    assert email_clears_sent(emu) == ["u1"]
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_a_person_whose_email_went_null_then_changed_keeps_the_new_one(
    project_factory: ProjectFactory,
) -> None:
    """u1's email goes null, then u1 gets another address: Customer.io holds the new one,
    so a later user taking u1's first address releases nothing of u1's (its new address
    stays) and is sent at once."""
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'pro')) "
        "t(user_id, email, plan)"
    )
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    project_factory.sql("update users set email = null")
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("update users set email = 'b@x.com'")
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("insert into users values ('u2', 'a@x.com', 'trial')")
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 1)
    assert emails_of(emu) == {"u1": ("b@x.com", "pro"), "u2": ("a@x.com", "trial")}
    assert email_clears_sent(emu) == []


def test_an_email_cleared_under_on_null_clear_is_not_released_again_for_a_new_user(
    project_factory: ProjectFactory,
) -> None:
    """u1's email goes null, its `email` attribute under `on_null: clear`: the update itself
    clears it in Customer.io (its payload sends `"email": ""`), so u1 keeps nothing, and a
    later user taking that address is sent at once with no second release of u1's email.
    (The diff keeps no payload of a changed row: this check reads it from the model.)"""
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'pro')) "
        "t(user_id, email, plan)"
    )
    sync = EMAILS.replace("{plan: plan}", "{plan: plan, email: {column: email, on_null: clear}}")
    project = project_factory.write({"profile": sync})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    project_factory.sql("update users set email = null")
    run_sync(project, "profile", console=NullConsole())
    assert email_clears_sent(emu) == ["u1"]  # the update of u1, which clears it
    project_factory.sql("insert into users values ('u2', 'a@x.com', 'trial')")
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 1)
    assert emails_of(emu) == {"u1": (None, "pro"), "u2": ("a@x.com", "trial")}
    assert email_clears_sent(emu) == ["u1"]


def email_clears_sent(emu: Emulator, since: int = 0) -> list[str]:
    """The ids of the people sent `"email": ""` (an email released) after request ``since``."""
    return [
        op["identifiers"].get("id")
        for r in emu.request_log()[since:]
        if isinstance(r.body, dict)
        for op in r.body.get("batch", [])
        if op.get("attributes", {}).get("email") == ""
    ]


def test_a_person_deleted_after_keeping_an_email_is_not_sent_again_for_it(
    project_factory: ProjectFactory,
) -> None:
    """u1's email goes null (kept in Customer.io), then u1 leaves a `delete_removed` sync and
    is deleted, email and all: a later user taking the address is sent as is, with no release
    of u1's email that would bring u1 back as an empty person."""
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'pro'), "
        "('u0', 'z@x.com', 'free')) t(user_id, email, plan)"
    )
    sync = EMAILS + "mode: mirror\ndelete_removed: true\n"
    project = project_factory.write({"profile": sync})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    project_factory.sql("update users set email = null where user_id = 'u1'")
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("delete from users where user_id = 'u1'")
    run_sync(project, "profile", console=NullConsole())
    project_factory.sql("insert into users values ('u2', 'a@x.com', 'trial')")
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 1)
    assert emails_of(emu) == {"u0": ("z@x.com", "free"), "u2": ("a@x.com", "trial")}
    assert email_clears_sent(emu) == []


@pytest.mark.parametrize("later", [False, True])
def test_a_new_user_waits_while_the_email_it_takes_cannot_be_released(
    project_factory: ProjectFactory, later: bool
) -> None:
    """u1's email goes null and new user u2 takes it (the same run, or a later one): Customer.io
    refuses the release of u1's email. Sent anyway, u2 would take over u1's profile: u2 waits
    (a partial run) and lands, as a new person, with the next run."""
    project_factory.sql(
        "create table users as select * from (values ('u1', 'a@x.com', 'pro')) "
        "t(user_id, email, plan)"
    )
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    u1 = emu.person(id="u1")
    assert u1 is not None
    project_factory.sql("update users set email = null where user_id = 'u1'")
    if later:
        run_sync(project, "profile", console=NullConsole())
    project_factory.sql("insert into users values ('u2', 'a@x.com', 'trial')")
    emu.set_faults(FaultConfig(reject_people=frozenset({"u1"})))
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "partial"
    assert [k for k, _, _ in report.failures] == ["u1#release-email"]
    assert people_of(emu) == {"u1": (u1.cio_id, "a@x.com", "pro")}
    emu.set_faults(FaultConfig())
    again = run_sync(project, "profile", console=NullConsole())
    assert again.status == "success"
    people = people_of(emu)
    assert people["u1"] == (u1.cio_id, None, "pro")
    assert people["u2"][1:] == ("a@x.com", "trial") and people["u2"][0] != u1.cio_id
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


@pytest.mark.parametrize("later", [False, True])
def test_an_email_the_state_gives_two_people_is_released_from_both_for_the_row_taking_it(
    project_factory: ProjectFactory, later: bool
) -> None:
    """u2 leaves the model (`upsert`: nothing is sent, Customer.io keeps the person) and u1
    takes u2's address. A state written before rows that leave released their email says both
    have it: Customer.io dropped u1's update, which, with no App API key to read it back, was
    committed (set up below as that state and workspace were). u2 comes back without an
    email, u1's goes null, and new user u3 takes the address (the same run, or a later one).
    Released from u1 alone, the address would stay u2's and Customer.io would give u3's id to
    u2's profile (u2 gone): it is released from both, and u3 is a person of its own."""
    project_factory.sql(
        "create table users as select * from (values ('u1', 'b@x.com', 'pro'), "
        "('u2', 'a@x.com', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"profile": EMAILS})
    run_sync(project, "profile", console=NullConsole())
    emu = project_factory.emulator
    u2 = emu.person(id="u2")
    assert u2 is not None
    with StateStore.open(project.state_dir) as store:
        (u2_snap,) = store.con.execute("select * from snap__profile where k = 'u2'").fetchall()
    project_factory.sql(
        "delete from users where user_id = 'u2'; "
        "update users set email = 'A@x.com' where user_id = 'u1'"
    )
    assert run_sync(project, "profile", console=NullConsole()).delivered == 1
    # the state and workspace as before: u2 still delivered with the address, which it holds
    with StateStore.open(project.state_dir) as store:
        places = ", ".join("?" * len(u2_snap))
        store.con.execute(f"insert into snap__profile values ({places})", list(u2_snap))
    batch = [
        {"type": "person", "action": "identify", "identifiers": {"id": i}, "attributes": a}
        for i, a in (("u1", {"email": "b@x.com"}), ("u2", {"email": "a@x.com"}))
    ]
    with emu.client(auth=emu.track_auth) as client:
        assert client.post("/api/v2/batch", json={"batch": batch}).status_code == 200
    assert emails_of(emu) == {"u1": ("b@x.com", "pro"), "u2": ("a@x.com", "free")}  # dropped
    since = len(emu.request_log())
    project_factory.sql("insert into users values ('u2', null, 'free')")
    project_factory.sql("update users set email = null")
    if later:
        run_sync(project, "profile", console=NullConsole())
    project_factory.sql("insert into users values ('u3', 'a@x.com', 'trial')")
    report = run_sync(project, "profile", console=NullConsole())
    assert report.status == "success"
    people = people_of(emu)
    assert people["u2"] == (u2.cio_id, None, "free")
    assert people["u3"][1:] == ("a@x.com", "trial") and people["u3"][0] != u2.cio_id
    assert sorted(email_clears_sent(emu, since)) == ["u1", "u2"]
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


def test_a_plan_that_fails_says_so_without_naming_a_run(project_factory: ProjectFactory) -> None:
    """A plan records no run: its error names the step, not a run id that `lockgate runs show`
    would not find; a run's error names its run."""
    project_factory.sql(USERS)
    over = "  terms: {value: " + "é" * 501 + "}"
    project = project_factory.write({"profile": PROFILE.replace("  plan: plan", over)})
    with pytest.raises(StepError) as planned:
        plan_sync(project, "profile", console=NullConsole())
    assert str(planned.value).startswith("step `map` failed in the plan: "), str(planned.value)
    assert planned.value.run_id not in f"{planned.value} {planned.value.hint}"
    with pytest.raises(StepError) as ran:
        run_sync(project, "profile", console=NullConsole())
    assert f"failed in run `{ran.value.run_id}`" in str(ran.value)


def test_a_timestamp_attribute_of_epoch_milliseconds_rejects_its_row_saying_so(
    project_factory: ProjectFactory,
) -> None:
    """A number column is read as unix seconds: one of milliseconds was sent as a time past
    the year 50000, which every date segment and Liquid date reads wrong. Its row is rejected,
    as an event's is; the others are sent."""
    project_factory.sql(
        "create or replace table users as select * from (values "
        "(1, 1767323045), (2, 1767323045000)) t(user_id, seen_at)"
    )
    body = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {seen_at: {column: seen_at, type: timestamp}}
"""
    report = run_sync(project_factory.write({"profile": body}), "profile", console=NullConsole())
    assert (report.delivered, report.changes.rejected) == (1, 1)
    assert dict(report.changes.rejected_samples)["2"] == (
        "column `seen_at` (field `seen_at`): value `1767323045000` is not unix seconds (it would "
        "be past the year 5000): it looks like milliseconds; divide it in the model, e.g. "
        "`seen_at // 1000 as seen_at`"
    )
    emu = project_factory.emulator
    assert [(p.id, p.attributes) for p in emu.people()] == [("1", {"seen_at": 1767323045})]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        # a HUGEINT (a DuckDB `sum()`) past 2^53: quoted with every digit, not as the double
        # it rounds to (`...992`)
        (
            "9007199254740993::hugeint",
            "value `9007199254740993` is not unix seconds (it would be past the year 5000): it "
            "looks like milliseconds; divide it in the model, e.g. `seen_at // 1000 as seen_at`",
        ),
        # past the 64-bit range: finite, so not "not a finite unix timestamp"
        *(
            (
                sql,
                f"value `{text}` is not unix seconds (it is beyond the 64-bit range of a "
                "time); check what the column holds",
            )
            for sql, text in [
                ("1180591620717411303424::hugeint", "1180591620717411303424"),
                ("-1180591620717411303424::hugeint", "-1180591620717411303424"),
                ("18446744073709551615::ubigint", "18446744073709551615"),
                ("('1' || repeat('0', 30))::decimal(38,0)", "1" + "0" * 30),
                ("1e30::double", "1e+30"),
            ]
        ),
        ("'nan'::double", "value `nan` is not a finite unix timestamp"),
    ],
)
def test_a_timestamp_attribute_of_a_huge_number_says_what_it_is(
    project_factory: ProjectFactory, value: str, reason: str
) -> None:
    """A number too large for unix seconds is quoted as the warehouse holds it, and called what
    it is: milliseconds, or past any time (not "not finite"); the other rows are sent."""
    project_factory.sql(
        "create or replace table users as select * from (values "
        f"(1, 1767323045), (2, {value})) t(user_id, seen_at)"
    )
    body = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: {seen_at: {column: seen_at, type: timestamp}}
"""
    report = run_sync(project_factory.write({"profile": body}), "profile", console=NullConsole())
    assert (report.delivered, report.changes.rejected) == (1, 1)
    assert dict(report.changes.rejected_samples)["2"] == (
        f"column `seen_at` (field `seen_at`): {reason}"
    )
