"""An email that addresses a row must be one address: warehouse junk (two addresses in a cell,
`Jane <jane@x.com>`, `mailto:`, inner spaces, control characters, `jane@x`, a trailing dot,
300 characters) is rejected with what is wrong and how to fix it, not sent to create or rename
a person named by it; unusual but real addresses go (docs/sync.md, Rows that cannot be sent)."""

from __future__ import annotations

from typing import Any

import pytest

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.sync.run import run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

BY_EMAIL = """
name: accounts
source: warehouse
model: {table: accounts}
kind: people
primary_key: account_id
identify_by: {email: email}
attributes: {plan: plan}
"""

#: addresses that are unusual but real: each is sent as it is
UNUSUAL = {
    "g1": "Jane.Doe+news@Mail.Example.co.uk",  # plus tag, subdomains, capitals
    "g2": "jane@bücher.de",  # a non-ASCII (IDN) domain
    "g3": "jöhn.müller@example.de",  # a non-ASCII name
    "g4": '"jane.doe"@example.com',  # a quoted name without a space
    "g5": "o'brien_42@example.io",
}

FIX = "; fix it in the model or at the source"

#: warehouse junk, each with the reason its row is rejected for
JUNK = {
    "b01": ("a@x.com, b@y.com", "more than one address: keep one"),
    "b02": ("a@x.com;b@y.com", "more than one address: keep one"),
    "b03": ("Jane Doe <jane@x.com>", "a name and an address: keep the address between `<` and `>`"),
    "b04": ("mailto:jane@x.com", "a link: drop the `mailto:` before the address"),
    "b05": ("jane doe@x.com", "white space or a control character in it"),
    "b06": ("jane@", "no domain after the `@`"),
    "b07": ("@x.com", "nothing before the `@`"),
    "b08": ("jane@@x.com", "more than one `@`"),
    "b09": ("jane@x", "no dot in its domain"),
    "b10": ("jane@x.com.", "a dot at the end: drop it"),
    "b11": ("jane@x..com", "an empty part in its domain"),
    "b12": ("ja\x07ne@x.com", "white space or a control character in it"),
    "b13": ("jane\u00a0doe@x.com", "white space or a control character in it"),
    "b14": ("x" * 294 + "@x.com", "300 characters, over the 254 an address can have"),
    "b15": ("jane@x.com;", "`,`, `;`, `:` or `>` in it"),
    "b16": ("n/a", "no `@`"),
}


def shown(value: str) -> str:
    """A value as a reason quotes it: a control character as `�`, a long one cut."""
    value = value.replace("\x07", "\ufffd")
    return value if len(value) <= 100 else f"{value[:80]}… ({len(value)} characters)"


def text(value: str) -> str:
    """SQL for the text ``value``, its BEL written as `chr(7)`."""
    return "'" + value.replace("'", "''").replace("\x07", "' || chr(7) || '") + "'"


def accounts(factory: ProjectFactory, rows: dict[str, tuple[str, str]]) -> None:
    values = ", ".join(
        f"({text(k)}, {text(email)}, {text(plan)})" for k, (email, plan) in rows.items()
    )
    factory.sql(
        f"create or replace table accounts as select * from (values {values}) "
        "t(account_id, email, plan)"
    )


def people(emu: Emulator) -> dict[str | None, Any]:
    return {p.email: p.attributes.get("plan") for p in emu.people()}


def test_an_email_that_is_no_address_is_rejected_saying_why_and_sent_once_fixed(
    project_factory: ProjectFactory,
) -> None:
    """Each kind of junk is rejected with its value and what to do; the unusual addresses are
    delivered beside them; fixed in the model, the rejected rows are sent by the next run."""
    rows = {k: (e, "pro") for k, e in UNUSUAL.items()}
    rows |= {k: (e, "pro") for k, (e, _) in JUNK.items()}
    accounts(project_factory, rows)
    project = project_factory.write({"accounts": BY_EMAIL})

    report = run_sync(project, "accounts", console=NullConsole())
    assert report.delivered == len(UNUSUAL)
    assert report.changes.rejected == len(JUNK)
    assert dict(report.changes.rejected_samples) == {
        k: f"column `email`: `{shown(e)}` is not an email address ({why}){FIX}"
        for k, (e, why) in JUNK.items()
    }
    emu = project_factory.emulator
    assert people(emu) == {e: "pro" for e in UNUSUAL.values()}  # nobody named by junk

    # fixed in the model: the next run sends exactly the rows it rejected
    fixed = {k: (f"{k}@example.com", "pro") for k in JUNK}
    accounts(project_factory, {k: (e, "pro") for k, e in UNUSUAL.items()} | fixed)
    again = run_sync(project, "accounts", console=NullConsole())
    assert (again.delivered, again.changes.rejected) == (len(JUNK), 0)
    assert people(emu) == {e: "pro" for e in [*UNUSUAL.values(), *(e for e, _ in fixed.values())]}


def test_an_email_delivered_before_that_is_no_address_now_changes_nothing_until_fixed(
    project_factory: ProjectFactory,
) -> None:
    """A person delivered with a good email whose row now holds junk (a CRM export that
    joined two contacts' emails into one cell): the row is rejected, the person keeps their
    email and attributes, nobody is created or renamed; fixed, its change is sent once."""
    accounts(project_factory, {"a1": ("jane@x.com", "free"), "a2": ("bob@x.com", "free")})
    project = project_factory.write({"accounts": BY_EMAIL})
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 2
    emu = project_factory.emulator
    jane = emu.person(email="jane@x.com")
    assert jane is not None

    accounts(project_factory, {"a1": ("jane@x.com, joe@x.com", "pro"), "a2": ("bob@x.com", "pro")})
    report = run_sync(project, "accounts", console=NullConsole())
    assert (report.delivered, report.changes.rejected) == (1, 1)
    assert dict(report.changes.rejected_samples) == {
        "a1": "column `email`: `jane@x.com, joe@x.com` is not an email address (more than one "
        f"address: keep one){FIX}"
    }
    assert people(emu) == {"jane@x.com": "free", "bob@x.com": "pro"}
    assert emu.person(email="jane@x.com").cio_id == jane.cio_id  # type: ignore[union-attr]

    accounts(project_factory, {"a1": ("jane@x.com", "pro"), "a2": ("bob@x.com", "pro")})
    fixed = run_sync(project, "accounts", console=NullConsole())
    assert (fixed.delivered, fixed.changes.rejected) == (1, 0)
    assert people(emu) == {"jane@x.com": "pro", "bob@x.com": "pro"}
    assert run_sync(project, "accounts", console=NullConsole()).delivered == 0  # sent once


BY_ID_AND_EMAIL = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: pk
identify_by: {id: user_id, email: email}
attributes: {plan: plan}
"""


def test_an_email_is_checked_where_it_addresses_the_row_and_not_beside_an_id(
    project_factory: ProjectFactory,
) -> None:
    """`identify_by: {id, email}`: a row whose id is null is addressed by its email, which is
    checked; beside an id the email is the person's attribute and is sent as the model has it
    (as an `email` attribute of its own column is: docs/sync.md)."""
    project_factory.sql(
        "create or replace table users as select * from (values "
        "(1, null, 'Jane <jane@x.com>', 'pro'), (2, null, 'ok@x.com', 'pro'), "
        "(3, 'u3', 'Cy <cy@x.com>', 'pro')) t(pk, user_id, email, plan)"
    )
    project = project_factory.write({"profile": BY_ID_AND_EMAIL})
    report = run_sync(project, "profile", console=NullConsole())
    assert dict(report.changes.rejected_samples) == {
        "1": "column `email`: `Jane <jane@x.com>` is not an email address (a name and an "
        f"address: keep the address between `<` and `>`){FIX}"
    }
    got = sorted((p.id or "", p.email) for p in project_factory.emulator.people())
    assert got == [("", "ok@x.com"), ("u3", "Cy <cy@x.com>")]


def test_an_event_addressed_by_an_email_that_is_no_address_is_rejected(
    project_factory: ProjectFactory,
) -> None:
    """An events sync identified by email sends no event to a person named by junk; the good
    event goes, and the rejected one is sent once its email is fixed."""
    project_factory.sql(
        "create or replace table events as select * from (values "
        "('e1', 'mailto:ann@x.com', now() - interval 1 hour), "
        "('e2', 'ann@x.com', now() - interval 1 hour)) t(event_id, email, ts)"
    )
    sync = """
name: viewed
source: warehouse
model: {table: events}
kind: events
identify_by: {email: email}
event: {name: {value: Viewed}, timestamp: ts, id: event_id}
"""
    project = project_factory.write({"viewed": sync})
    report = run_sync(project, "viewed", console=NullConsole())
    assert report.delivered == 1
    assert dict(report.changes.rejected_samples) == {
        "e1": "column `email`: `mailto:ann@x.com` is not an email address (a link: drop the "
        f"`mailto:` before the address){FIX}"
    }
    emu = project_factory.emulator
    assert [p.email for p in emu.people()] == ["ann@x.com"]

    project_factory.sql("update events set email = 'ann@x.com' where event_id = 'e1'")
    assert run_sync(project, "viewed", console=NullConsole()).delivered == 1
    ann = emu.person(email="ann@x.com")
    assert ann is not None and [e.person for e in emu.events()] == [ann.cio_id] * 2


CONTACTS = """
name: crm_contacts
source: warehouse
model: {table: contacts}
kind: relationships
object_type_id: "1"
object_id: company_id
identify_by: {email: email}
relationship_attributes: {crm_role: crm_role}
"""


def test_a_relationship_whose_email_is_no_address_now_is_rejected_and_kept(
    project_factory: ProjectFactory,
) -> None:
    """A relationships sync addressing people by email (its rows keyed by person and object):
    a contact delivered with a good email whose cell now holds two is rejected, and the
    relationship delivered before is not deleted as a row that left (it was, the junk row
    being another key), nor is anybody created for the junk. Fixed to another address, the
    relationship moves to it: the old one is deleted then."""
    project_factory.sql(
        "create or replace table contacts as select * from (values "
        "('ada@x.io', 'acme', 'billing'), ('bob@x.io', 'acme', 'tech')) "
        "t(email, company_id, crm_role)"
    )
    project = project_factory.write({"crm_contacts": CONTACTS})
    assert run_sync(project, "crm_contacts", console=NullConsole()).delivered == 2
    emu = project_factory.emulator

    def related() -> set[tuple[str | None, str]]:
        by_cio = {p.cio_id: p.email for p in emu.people()}
        return {(by_cio.get(r.person), r.object_id) for r in emu.relationships()}

    spoil = "update contacts set email = 'ada@x.io; ada@y.io' where crm_role = 'billing'"
    project_factory.sql(spoil)
    report = run_sync(project, "crm_contacts", console=NullConsole())
    assert (report.changes.rejected, report.changes.removed_sent, report.delivered) == (1, 0, 0)
    assert report.changes.rekeyed == 1  # not counted by `max_removed` either
    assert related() == {("ada@x.io", "acme"), ("bob@x.io", "acme")}
    assert sorted(p.email or "" for p in emu.people()) == ["ada@x.io", "bob@x.io"]

    project_factory.sql("update contacts set email = 'ada@y.io' where crm_role = 'billing'")
    fixed = run_sync(project, "crm_contacts", console=NullConsole())
    assert (fixed.changes.rejected, fixed.changes.removed_sent, fixed.delivered) == (0, 1, 2)
    assert related() == {("ada@y.io", "acme"), ("bob@x.io", "acme")}
    assert run_sync(project, "crm_contacts", console=NullConsole()).changes.to_send == 0


@pytest.mark.parametrize("emptied", ["null", "'  '"], ids=["null", "blank"])
def test_a_relationship_whose_email_is_gone_now_is_rejected_and_kept(
    project_factory: ProjectFactory, emptied: str
) -> None:
    """As a spoiled email: a contact delivered with a good email whose cell is now null (or
    blank) is rejected, saying so, and the relationship delivered before is not deleted as a
    row that left, nor counted by `max_removed`. Given an email again, the relationship moves
    to it; and once the row leaves, the one it delivered is deleted."""
    project_factory.sql(
        "create or replace table contacts as select * from (values "
        "('ada@x.io', 'acme', 'billing'), ('bob@x.io', 'acme', 'tech')) "
        "t(email, company_id, crm_role)"
    )
    project = project_factory.write({"crm_contacts": CONTACTS})
    assert run_sync(project, "crm_contacts", console=NullConsole()).delivered == 2
    emu = project_factory.emulator

    def related() -> set[tuple[str | None, str]]:
        by_cio = {p.cio_id: p.email for p in emu.people()}
        return {(by_cio.get(r.person), r.object_id) for r in emu.relationships()}

    project_factory.sql(f"update contacts set email = {emptied} where crm_role = 'billing'")
    report = run_sync(project, "crm_contacts", console=NullConsole())
    assert (report.changes.rejected, report.changes.removed_sent, report.delivered) == (1, 0, 0)
    assert report.changes.removed - report.changes.rekeyed == 0  # what `max_removed` counts
    assert related() == {("ada@x.io", "acme"), ("bob@x.io", "acme")}
    blank = "is null" if emptied == "null" else "is blank (only white space)"
    assert report.changes.rejected_samples == (
        (
            "(no person) acme",
            f"no identifier: `email` {blank}; fix it in the model or at the source (while it "
            "is rejected, the relationships of its object that left the model as it came or "
            "changed are kept: it may be the row of one)",
        ),
    )

    project_factory.sql("update contacts set email = 'ada@y.io' where crm_role = 'billing'")
    fixed = run_sync(project, "crm_contacts", console=NullConsole())
    assert (fixed.changes.rejected, fixed.changes.removed_sent, fixed.delivered) == (0, 1, 2)
    assert related() == {("ada@y.io", "acme"), ("bob@x.io", "acme")}

    project_factory.sql(f"update contacts set email = {emptied} where crm_role = 'billing'")
    run_sync(project, "crm_contacts", console=NullConsole())
    project_factory.sql("delete from contacts where crm_role = 'billing'")
    left = run_sync(project, "crm_contacts", console=NullConsole())
    assert (left.changes.rejected, left.changes.removed_sent) == (0, 1)
    assert related() == {("bob@x.io", "acme")}


@pytest.mark.parametrize("spoiled", ["null", "'ada@x.io; ada@y.io'"], ids=["null", "junk"])
def test_a_relationship_kept_for_a_rejected_row_stays_delivered_through_a_full_resync(
    project_factory: ProjectFactory, spoiled: str
) -> None:
    """A relationship kept while its row is rejected with no person (its email null, or no
    address) is still in Customer.io: a `--full-resync` keeps it delivered, so it is removed
    once the row leaves. It was forgotten with the rest of the snapshot, and stayed in
    Customer.io for good."""
    project_factory.sql(
        "create or replace table contacts as select * from (values "
        "('ada@x.io', 'acme', 'billing'), ('bob@x.io', 'acme', 'tech')) "
        "t(email, company_id, crm_role)"
    )
    project = project_factory.write({"crm_contacts": CONTACTS})
    run_sync(project, "crm_contacts", console=NullConsole())
    emu = project_factory.emulator

    def related() -> set[tuple[str | None, str]]:
        by_cio = {p.cio_id: p.email for p in emu.people()}
        return {(by_cio.get(r.person), r.object_id) for r in emu.relationships()}

    project_factory.sql(f"update contacts set email = {spoiled} where crm_role = 'billing'")
    resync = run_sync(project, "crm_contacts", console=NullConsole(), full_resync=True)
    assert (resync.changes.rejected, resync.changes.removed_sent) == (1, 0)
    assert related() == {("ada@x.io", "acme"), ("bob@x.io", "acme")}
    again = run_sync(project, "crm_contacts", console=NullConsole())
    assert (again.changes.to_send, again.changes.removed_sent) == (0, 0)

    project_factory.sql("delete from contacts where crm_role = 'billing'")
    left = run_sync(project, "crm_contacts", console=NullConsole())
    assert (left.changes.rejected, left.changes.removed_sent) == (0, 1)
    assert related() == {("bob@x.io", "acme")}
