"""People syncs identified by `id` and `email` whose rows share an email under different ids.

Customer.io matches an identify's email in any case: an identify of a new `id` whose email
another person holds renames that person (the first row's person gets the second row's id),
and one of an `id` it has refuses the update silently. Sent anyway, a row would be recorded
as delivered while its person is gone or stale, and never sent again while unchanged. So of
the rows sharing one email, one is sent (the one delivered with it, else the lowest key) and
the others are rejected, with the reason, until the model is deduped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tests.sync.helpers import ACCOUNTS, people, sent_ops
from tests.sync.test_unconfirmed import killed_once_applied

from lockgate.console import NullConsole
from lockgate.project.loader import load_project
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)


def held(report: Any) -> dict[str, str]:
    return dict(report.changes.rejected_samples)


def test_two_new_rows_of_one_email_send_one_and_hold_the_other_back(
    project_factory: ProjectFactory,
) -> None:
    """The reproduction: (2, Cy@x.io) and (3, CY@X.IO) new in one run. Both sent, Customer.io
    gave person 2 the id 3, and person 2 was gone for good once row 3 moved on. Now row 3 is
    held back with a reason naming row 2; person 2 stays; once deduped, row 3 is sent."""
    project_factory.sql(
        "create table accounts as select * from (values (2, 'Cy@x.io', 'free'), "
        "(3, 'CY@X.IO', 'pro'), (4, 'dee@x.io', 'team')) t(user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS})
    emu = project_factory.emulator

    plan = plan_sync(project, "accounts", console=NullConsole())
    assert (plan.changes.to_send, plan.changes.rejected) == (2, 1)
    reason = held(plan)["3"]
    assert "column `email`" in reason and "key `2`" in reason, reason
    assert "dedupe" in reason and "identity:" in reason, reason

    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.status, report.delivered, report.changes.rejected) == ("success", 2, 1)
    assert held(report) == {"3": reason}
    assert people(emu) == {"2": ("Cy@x.io", "free"), "4": ("dee@x.io", "team")}

    # row 3 moves on to an email of its own: person 2 keeps theirs, and 3 is sent as new
    project_factory.sql("update accounts set email = 'cy3@x.io' where user_id = 3")
    again = run_sync(project, "accounts", console=NullConsole())
    assert (again.status, again.delivered, again.changes.rejected) == ("success", 1, 0)
    assert people(emu) == {
        "2": ("Cy@x.io", "free"),
        "3": ("cy3@x.io", "pro"),
        "4": ("dee@x.io", "team"),
    }
    assert run_sync(project, "accounts", console=NullConsole()).changes.to_send == 0


def test_a_row_taking_the_email_a_delivered_person_keeps_is_held_back(
    project_factory: ProjectFactory,
) -> None:
    """Person 5 was delivered with ann@x.io and still has it. A new row (1, a lower key) and a
    changed row (7, which had its own email) taking it are held back naming row 5: Customer.io
    would rename person 5, or drop row 7's update silently. Person 7, delivered already, gets
    its new plan without the email; new row 1 waits whole. Deduped, both land."""
    project_factory.sql(
        "create table accounts as select * from (values (5, 'ann@x.io', 'free'), "
        "(7, 'bob@x.io', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS})
    emu = project_factory.emulator
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 2
    project_factory.sql(
        "insert into accounts values (1, ' ANN@x.io', 'pro');"
        "update accounts set email = 'Ann@X.io', plan = 'team' where user_id = 7"
    )
    plan = plan_sync(project, "accounts", console=NullConsole())
    assert (plan.changes.to_send, plan.changes.rejected, plan.changes.email_held_sent) == (
        1,
        2,
        1,
    )
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.status, report.delivered, report.changes.rejected) == ("success", 1, 2)
    assert sorted(held(report)) == ["1", "7"]
    assert all("key `5`" in r for r in held(report).values()), held(report)
    assert "other changes are sent" in held(report)["7"]
    assert "other changes are sent" not in held(report)["1"]
    assert people(emu) == {"5": ("ann@x.io", "free"), "7": ("bob@x.io", "team")}

    # rejected rows are tried again each run: deduped, they are sent
    project_factory.sql(
        "update accounts set email = 'al@x.io' where user_id = 1;"
        "update accounts set email = 'bo@x.io' where user_id = 7"
    )
    again = run_sync(project, "accounts", console=NullConsole())
    assert (again.status, again.delivered, again.changes.rejected) == ("success", 2, 0)
    assert people(emu) == {
        "1": ("al@x.io", "pro"),
        "5": ("ann@x.io", "free"),
        "7": ("bo@x.io", "team"),
    }


#: email column shapes: (its name and type, SQL of a value of it from an email's text)
EMAIL_COLUMNS = {
    "varchar": ("email varchar", "{}"),
    "varchar(40)": ("email varchar(40)", "{}"),
    "char(20)": ("email char(20)", "{}"),
    "enum": ("email mail", "{}"),
    "upper case": ("email varchar", "upper({})"),
    "spaces around": ("email varchar", "' ' || {} || chr(9)"),
    "json": ("email json", "to_json({})"),
    "blob": ("email blob", "{}::blob"),
}


def each_other_change_is_sent_once(
    project_factory: ProjectFactory, sql: Callable[[str], None], email: Callable[[str], str]
) -> None:
    """Row 7 (delivered with bob@x.io) takes row 5's email ann@x.io with a new plan, then
    another plan; each plan goes without the email, once: a run that finds the row as it was
    sends nothing (no request), and `plan` says so. Once 5 frees the email, 7 takes it.
    ``sql`` runs a statement on table ``accounts`` of the warehouse, ``email`` gives SQL of a
    value of its email column."""
    project = project_factory.project
    emu = project_factory.emulator
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 2
    (bob,) = [p.email for p in emu.people() if p.id == "7"]
    for plan in ("team", "pro"):
        taken = "" if plan == "pro" else f"email = {email('ann@x.io')}, "
        sql(f"update accounts set {taken}plan = '{plan}' where user_id = 7")
        report = run_sync(project, "accounts", console=NullConsole())
        assert (report.delivered, report.changes.email_held_sent) == (1, 1)
        assert "other changes are sent" in held(report)["7"]
        assert people(emu)["7"] == (bob, plan)
        assert plan_sync(project, "accounts", console=NullConsole()).changes.to_send == 0
        since = len(emu.request_log())
        again = run_sync(project, "accounts", console=NullConsole())
        assert (again.delivered, again.changes.rejected, sent_ops(emu, since)) == (0, 1, [])
    sql(f"update accounts set email = {email('al@x.io')} where user_id = 5")
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 2
    address, plan = people(emu)["7"]
    assert ("ann@x.io" in str(address).lower(), plan) == (True, "pro")


@pytest.mark.parametrize("shape", list(EMAIL_COLUMNS))
def test_a_held_row_sends_each_other_change_once_whatever_its_email_columns_type(
    project_factory: ProjectFactory, shape: str
) -> None:
    """:func:`each_other_change_is_sent_once`, the email column of each shape. A JSON or BLOB
    email column recorded no hash of the row: every change after the first was taken for the
    held email alone, never sent."""
    column, value = EMAIL_COLUMNS[shape]

    def email(text: str) -> str:
        return value.format(f"'{text}'")

    project_factory.sql(
        "create type mail as enum ('ann@x.io', 'bob@x.io', 'al@x.io');"
        f"create table accounts (user_id int, {column}, plan varchar);"
        f"insert into accounts values (5, {email('ann@x.io')}, 'free'), "
        f"(7, {email('bob@x.io')}, 'free')"
    )
    project_factory.project = project_factory.write({"accounts": ACCOUNTS})
    each_other_change_is_sent_once(project_factory, project_factory.sql, email)


@pytest.mark.postgres
@pytest.mark.parametrize("column", ["char(20)", "citext", "lg_held.mail", "jsonb"])
def test_a_held_row_of_a_postgres_model_sends_each_other_change_once(
    project_factory: ProjectFactory, postgres_dsn: str, column: str
) -> None:
    """The same from a Postgres model whose email column is padded text, `citext`, an enum or
    `jsonb` (whose later changes were never sent)."""
    import psycopg

    def sql(statement: str) -> None:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(statement.replace("accounts", "lg_held.accounts"))

    def email(text: str) -> str:
        return f"to_jsonb('{text}'::text)" if column == "jsonb" else f"'{text}'"

    sql(
        "drop schema if exists lg_held cascade; create schema lg_held;"
        "create extension if not exists citext;"
        "create type lg_held.mail as enum ('ann@x.io', 'bob@x.io', 'al@x.io');"
        f"create table accounts (user_id int, email {column}, plan varchar);"
        f"insert into accounts values (5, {email('ann@x.io')}, 'free'), "
        f"(7, {email('bob@x.io')}, 'free')"
    )
    sync = ACCOUNTS.replace("{table: accounts}", '{sql: "select * from lg_held.accounts"}')
    project_factory.write({"accounts": sync})
    config = project_factory.root / "lockgate.yml"
    config.write_text(
        config.read_text().replace(
            "type: duckdb\n    path: warehouse.duckdb", f"type: postgres\n    url: '{postgres_dsn}'"
        )
    )
    project_factory.project = load_project(project_factory.root)
    each_other_change_is_sent_once(project_factory, sql, email)


@pytest.mark.parametrize("shape", [s for s in EMAIL_COLUMNS if s != "spaces around"])
def test_a_held_row_whose_only_change_is_its_email_sends_nothing(
    project_factory: ProjectFactory, shape: str
) -> None:
    """Row 7 takes row 5's email and nothing else: held, it has nothing else to send, in
    any type of email column (a JSON or BLOB one sent its unchanged plan once). (An email
    delivered with white space around it hashes otherwise: docs/sync.md.)"""
    column, value = EMAIL_COLUMNS[shape]
    project_factory.sql(
        "create type mail as enum ('ann@x.io', 'bob@x.io');"
        f"create table accounts (user_id int, {column}, plan varchar);"
        f"insert into accounts values (5, {value.format(repr('ann@x.io'))}, 'free'), "
        f"(7, {value.format(repr('bob@x.io'))}, 'free')"
    )
    project = project_factory.write({"accounts": ACCOUNTS})
    emu = project_factory.emulator
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 2
    ann = value.format(repr("ann@x.io"))
    project_factory.sql(f"update accounts set email = {ann} where user_id = 7")
    assert plan_sync(project, "accounts", console=NullConsole()).changes.to_send == 0
    since = len(emu.request_log())
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.delivered, report.changes.rejected, sent_ops(emu, since)) == (0, 1, [])


def test_an_attribute_of_the_email_column_waits_with_the_email(
    project_factory: ProjectFactory,
) -> None:
    """Attribute `contact` reads the email column too. Row 7 takes row 5's email with a new
    plan: the plan goes, `contact` waits with the email (sent, it stayed in Customer.io when
    the row went back to its email: the row was found as recorded, and person 7 kept the
    other address). Back at its own email, the row sends nothing; freed, the email and
    `contact` go together."""
    project_factory.sql(
        "create table accounts as select * from (values (5, 'ann@x.io', 'free'), "
        "(7, 'bob@x.io', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS + "  contact: email\n"})
    emu = project_factory.emulator

    def seven() -> tuple[Any, ...]:
        person = emu.person(id="7")
        assert person is not None
        return (person.email, person.attributes["plan"], person.attributes["contact"])

    assert run_sync(project, "accounts", console=NullConsole()).delivered == 2
    project_factory.sql("update accounts set email = 'ann@x.io', plan = 'team' where user_id = 7")
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.delivered, report.changes.email_held_sent) == (1, 1)
    assert seven() == ("bob@x.io", "team", "bob@x.io")
    project_factory.sql("update accounts set email = 'bob@x.io' where user_id = 7")
    assert plan_sync(project, "accounts", console=NullConsole()).changes.to_send == 0
    since = len(emu.request_log())
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 0
    assert (seven(), sent_ops(emu, since)) == (("bob@x.io", "team", "bob@x.io"), [])
    # an attribute of the email column alone changed: held, nothing else to send
    project_factory.sql("update accounts set email = 'ann@x.io' where user_id = 7")
    since = len(emu.request_log())
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.delivered, report.changes.rejected, sent_ops(emu, since)) == (0, 1, [])
    project_factory.sql("update accounts set email = 'al@x.io' where user_id = 5")
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 2
    assert seven() == ("ann@x.io", "team", "ann@x.io")


def test_a_held_rows_other_change_applied_by_a_killed_run_is_undone_when_the_row_goes_back(
    project_factory: ProjectFactory,
) -> None:
    """Row 7 takes row 5's email with a new plan; the run sends the plan without the email,
    Customer.io applies it and the run is SIGKILLed before it hears so. The row's plan then
    goes back to the one last confirmed while its email still waits: the next run sends the
    plan again (it was taken for a row whose only change is its email, and person 7 kept the
    plan of the killed run), and the one after sends nothing."""
    project_factory.sql(
        "create table accounts as select * from (values (5, 'ann@x.io', 'free'), "
        "(7, 'bob@x.io', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS})
    emu = project_factory.emulator
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 2
    project_factory.sql("update accounts set email = 'ann@x.io', plan = 'team' where user_id = 7")

    def applied() -> bool:
        person = emu.person(id="7")
        return person is not None and person.attributes.get("plan") == "team"

    killed_once_applied(project.root, "accounts", emu, applied)
    project_factory.sql("update accounts set plan = 'free' where user_id = 7")
    assert plan_sync(project, "accounts", console=NullConsole()).changes.to_send == 1
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.status, report.delivered, report.changes.email_held_sent) == ("success", 1, 1)
    assert people(emu) == {"5": ("ann@x.io", "free"), "7": ("bob@x.io", "free")}
    since = len(emu.request_log())
    again = run_sync(project, "accounts", console=NullConsole())
    assert (again.delivered, again.changes.rejected, sent_ops(emu, since)) == (0, 1, [])


def test_an_email_that_changes_hands_in_one_run_is_not_held_back(
    project_factory: ProjectFactory,
) -> None:
    """A move is not sharing: row 5 gives ann@x.io up and new row 6 takes it in the same run;
    both are sent (the release first), nothing is rejected."""
    project_factory.sql(
        "create table accounts as select * from (values (5, 'ann@x.io', 'free')) "
        "t(user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS})
    emu = project_factory.emulator
    run_sync(project, "accounts", console=NullConsole())
    project_factory.sql(
        "update accounts set email = 'ann5@x.io';insert into accounts values (6, 'ANN@x.io', 'pro')"
    )
    assert plan_sync(project, "accounts", console=NullConsole()).changes.rejected == 0
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.status, report.delivered, report.changes.rejected) == ("success", 2, 0)
    assert people(emu) == {"5": ("ann5@x.io", "free"), "6": ("ANN@x.io", "pro")}


@pytest.mark.parametrize("named", ["2", "3", "cy@x.io"])
def test_a_run_of_named_records_holds_back_a_shared_email_too(
    project_factory: ProjectFactory, named: str
) -> None:
    """`--only` of either row, or of the email: one row of the email is sent, never both, and
    the person it made keeps its id through the whole runs that follow."""
    project_factory.sql(
        "create table accounts as select * from (values (2, 'Cy@x.io', 'free'), "
        "(3, 'CY@X.IO', 'pro')) t(user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS})
    emu = project_factory.emulator
    first = run_sync(project, "accounts", console=NullConsole(), only=(named,))
    assert first.delivered == 1
    (sent,) = people(emu)
    assert sent is not None
    other = "3" if sent == "2" else "2"
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.delivered, sorted(held(report))) == (0, [other])
    assert f"key `{sent}`" in held(report)[other]
    want = {"2": ("Cy@x.io", "free"), "3": ("CY@X.IO", "pro")}
    assert people(emu) == {sent: want[sent]}
    # the held row is named alone: still held, as the person of the email is sent already
    alone = run_sync(project, "accounts", console=NullConsole(), only=(other,))
    assert (alone.delivered, sorted(held(alone))) == (0, [other])
    assert people(emu) == {sent: want[sent]}


def test_a_full_resync_sends_again_the_row_delivered_with_the_email_not_the_held_one(
    project_factory: ProjectFactory,
) -> None:
    """A `--full-resync` reads every row as new, but the whole snapshot still says which row
    has the email: row 2 is sent again; row 3 and a new row 1 (a lower key) still wait."""
    project_factory.sql(
        "create table accounts as select * from (values (2, 'Cy@x.io', 'free'), "
        "(3, 'CY@X.IO', 'pro')) t(user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS})
    emu = project_factory.emulator
    run_sync(project, "accounts", console=NullConsole())
    project_factory.sql("insert into accounts values (1, 'cy@x.io', 'team')")
    report = run_sync(project, "accounts", console=NullConsole(), full_resync=True)
    assert (report.status, report.delivered) == ("success", 1)
    assert sorted(held(report)) == ["1", "3"]
    assert people(emu) == {"2": ("Cy@x.io", "free")}


def test_the_email_a_held_row_was_delivered_with_is_still_its_own(
    project_factory: ProjectFactory,
) -> None:
    """Row 10 moves to row 11's email (held back: 11 keeps it), and new row 12 takes 10's old
    email. 10 was sent without its email (its new plan only), so Customer.io still gives it
    that email: 12 waits too (sent, it would rename person 10), until 10 lands elsewhere."""
    project_factory.sql(
        "create table accounts as select * from (values (10, 'x@x.io', 'free'), "
        "(11, 'y@x.io', 'free')) t(user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS})
    emu = project_factory.emulator
    run_sync(project, "accounts", console=NullConsole())
    project_factory.sql(
        "update accounts set email = 'Y@x.io', plan = 'pro' where user_id = 10;"
        "insert into accounts values (12, 'x@x.io', 'team')"
    )
    plan = plan_sync(project, "accounts", console=NullConsole())
    assert (plan.changes.to_send, sorted(held(plan))) == (1, ["10", "12"])
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.delivered, sorted(held(report))) == (1, ["10", "12"])
    assert "key `11`" in held(report)["10"] and "key `10`" in held(report)["12"]
    assert people(emu) == {"10": ("x@x.io", "pro"), "11": ("y@x.io", "free")}
    # nothing is sent again while 10's email waits
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 0
    # 10 gets an email of its own: it gives x@x.io up, and 12 takes it after it
    project_factory.sql("update accounts set email = 'ten@x.io' where user_id = 10")
    again = run_sync(project, "accounts", console=NullConsole())
    assert (again.status, again.delivered, again.changes.rejected) == ("success", 2, 0)
    assert people(emu) == {
        "10": ("ten@x.io", "pro"),
        "11": ("y@x.io", "free"),
        "12": ("x@x.io", "team"),
    }


ACCOUNTS_OF_USERS = """
name: accounts
source: warehouse
model: {table: accounts}
kind: people
primary_key: account_id
identify_by: {id: user_id, email: email}
attributes:
  plan: plan
"""


def test_a_first_run_holds_one_email_of_two_people_not_of_one(
    project_factory: ProjectFactory,
) -> None:
    """In a first run, two accounts of one user with one email (in any case) are one person
    taking it: both are sent (and reported as one person's rows); two users whose emails
    differ only in case, starting with a letter outside ASCII, are two people: one waits."""
    project_factory.sql(
        "create table accounts as select * from (values "
        "('a1', 'u1', 'Ada@x.io', 'free'), ('a2', 'u1', 'ada@X.io', 'pro'), "
        "('a3', 'u3', 'Émile@x.io', 'team'), ('a4', 'u4', 'émile@x.io', 'free')) "
        "t(account_id, user_id, email, plan)"
    )
    project = project_factory.write({"accounts": ACCOUNTS_OF_USERS})
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.status, report.delivered, report.changes.rejected) == ("success", 3, 1)
    reason = held(report)["a4"]
    assert "column `email`" in reason and "key `a3`" in reason, reason
    assert report.changes.shared_person == 2
    assert report.changes.shared_samples == (("id:u1", "a1, a2"),)
    assert sorted(people(project_factory.emulator)) == ["u1", "u3"]
