"""Syncs keyed through the identity graph: one Customer.io profile per real person."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import pytest

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.errors import LockgateError
from lockgate.project.loader import load_project
from lockgate.sync.run import run_sync

#: the project and identity types every test here shares
HEAD = """\
name: ident
sources:
  warehouse: {{type: duckdb, path: w.duckdb}}
destinations:
  customerio: {{type: customerio, track_url: "{url}"}}
identity:
  identifier_types:
    user_id: {{priority: 1, limit: 1, customerio: id}}
    email: {{priority: 2, limit: 5, customerio: email}}
"""

PROJECT = (
    HEAD
    + """\
    stripe_id: {{priority: 3, limit: 2, customerio: "attribute:stripe_id"}}
    anonymous_id: {{priority: 9, limit: 25, customerio: anonymous_id,
                   degree_cap: {{user_id: {{max: 1, policy: quarantine}}}}}}
  sources:
    - {{name: app_users, table: app_users}}
    - {{name: stripe, table: stripe_customers}}
    - {{name: sessions, table: sessions, mode: append_only}}
    - {{name: leads, table: leads}}
"""
)

BILLING = """
name: billing
source: warehouse
model: {table: invoices}
kind: people
primary_key: stripe_id
identify_by: {stripe_id: stripe_id}
attributes: {mrr: {column: mrr, type: number}}
"""

PROFILE = """
name: profile
source: warehouse
model: {table: app_users}
kind: people
primary_key: user_id
identify_by: {user_id: user_id, email: email}
attributes: {plan: plan}
"""


LEADS = """
name: leads
source: warehouse
model: {table: leads}
kind: people
primary_key: email
identify_by: {email: email}
attributes: {lead_source: lead_source}
"""


def setup(root: Path, url: str) -> Any:
    con = duckdb.connect(str(root / "w.duckdb"))
    con.execute(
        """
        create table app_users as select * from (values
          ('u1', 'Ada@Acme.io', 'pro'), ('u2', 'grace@acme.io', 'free')
        ) t(user_id, email, plan);
        create table stripe_customers as select * from (values
          ('cus_A', 'ada@acme.io'), ('cus_B', 'GRACE@acme.io ')
        ) t(stripe_id, email);
        create table invoices as select * from (values ('cus_A', 49.0), ('cus_B', 0.0))
          t(stripe_id, mrr);
        create table sessions as select * from (values
          ('anon-1', 'u1'), ('anon-shared', 'u1'), ('anon-shared', 'u2')
        ) t(anonymous_id, user_id);
        create table leads as select 'ada.work@acme.io' as email, 'webinar' as lead_source;
        """
    ).fetchall()
    con.close()
    (root / "syncs").mkdir()
    (root / "lockgate.yml").write_text(PROJECT.format(url=url))
    for name, body in {"billing": BILLING, "profile": PROFILE, "leads": LEADS}.items():
        (root / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
    return load_project(root)


def test_rows_keyed_by_stripe_id_land_on_the_app_user(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    project = setup(tmp_path, customerio_emulator.base_url or "")

    profile = run_sync(project, "profile", console=NullConsole())
    billing = run_sync(project, "billing", console=NullConsole())
    assert (profile.status, billing.status) == ("success", "success")

    people = {p.id: p for p in customerio_emulator.people()}
    assert sorted(people) == ["u1", "u2"]  # no third profile for a Stripe-only identifier
    assert people["u1"].attributes["mrr"] == 49.0 and people["u1"].attributes["plan"] == "pro"
    assert people["u2"].attributes["mrr"] == 0.0
    # the identify carries the user's anonymous id; the shared device links nobody
    assert people["u1"].anonymous_ids == ("anon-1",)
    assert people["u2"].anonymous_ids == ()

    # a re-run resolves to the same profiles and sends nothing
    again = run_sync(project, "billing", console=NullConsole())
    assert again.changes.to_send == 0
    assert len(customerio_emulator.people()) == 2

    # an email change: the same person gets the new address, nobody new is created
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("update app_users set email = 'grace.h@acme.io' where user_id = 'u2'").fetchall()
    con.close()
    run_sync(project, "profile", console=NullConsole())
    grace = customerio_emulator.person(id="u2")
    assert grace is not None and grace.email == "grace.h@acme.io"
    assert len(customerio_emulator.people()) == 2

    # the graph is in the warehouse for analysts
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    profiles = con.execute(
        "select cio_person_id, n_stripe_id from lockgate.lg_profiles "
        "where cio_person_id is not null order by 1"
    ).fetchall()
    quarantined = con.execute("select id_value from lockgate.lg_quarantine").fetchall()
    con.close()
    # Stripe still holds Grace's old address, which the app no longer does: the link is gone
    assert profiles == [("u1", 1), ("u2", 0)]
    assert quarantined == [("anon-shared",)]


def test_a_row_the_graph_cannot_place_is_rejected_naming_the_models_column(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows keyed through the graph are sent by the Customer.io identifiers it finds; a row it
    finds none for is rejected with a reason naming the model's own identifier column, not
    the graph's internal ones; the other rows go on."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    project = setup(tmp_path, customerio_emulator.base_url or "")
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    # a Stripe customer no app user or lead matches: a profile without a Customer.io id or email
    con.execute("insert into invoices values ('cus_Z', 12.0)").fetchall()
    con.close()

    run_sync(project, "profile", console=NullConsole())
    report = run_sync(project, "billing", console=NullConsole())
    assert report.delivered == 2 and report.changes.rejected == 1
    ((_, reason),) = report.changes.rejected_samples
    assert "no identifier" in reason and "`stripe_id` is null, or on a profile" in reason
    assert "cio_" not in reason


COMPANIES = """
name: companies
source: warehouse
model: {table: companies}
kind: objects
object_type_id: "1"
primary_key: company_id
attributes: {name: name}
"""

BILLING_CONTACTS = """
name: billing_contacts
source: warehouse
model: {table: billing_contacts}
kind: relationships
object_type_id: "1"
object_id: company_id
identify_by: {stripe_id: stripe_id}
relationship_attributes: {role: role}
guardrails: {max_removed: 0}
"""


def test_a_relationship_whose_row_the_graph_no_longer_places_is_kept_while_it_is_rejected(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relationships sync keyed through the graph (by Stripe id): a contact row whose Stripe
    id turns null is rejected, its reason naming the model's column and what to do, and the
    relationship it delivered is not deleted, nor counted by `max_removed` (a limit of 0
    does not stop the run); once the row leaves, the relationship goes."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    project = setup(tmp_path, customerio_emulator.base_url or "")

    def sql(statement: str) -> None:
        con = duckdb.connect(str(tmp_path / "w.duckdb"))
        con.execute(statement).fetchall()
        con.close()

    sql(
        """
        create table companies as select 'acme' as company_id, 'Acme' as name;
        create table billing_contacts as select * from (values
          ('cus_A', 'acme', 'payer'), ('cus_B', 'acme', 'approver')) t(stripe_id, company_id, role);
        """
    )
    for name, body in {"companies": COMPANIES, "billing_contacts": BILLING_CONTACTS}.items():
        (tmp_path / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
    project = load_project(tmp_path)
    for name in ("companies", "profile", "billing_contacts"):
        assert run_sync(project, name, console=NullConsole()).status == "success"

    def related() -> set[tuple[str | None, str, Any]]:
        ids = {p.cio_id: p.id for p in customerio_emulator.people()}
        return {
            (ids.get(r.person), r.object_id, r.attributes.get("role"))
            for r in customerio_emulator.relationships()
        }

    both = {("u1", "acme", "payer"), ("u2", "acme", "approver")}
    assert related() == both

    sql("update billing_contacts set stripe_id = null where stripe_id = 'cus_B'")
    report = run_sync(project, "billing_contacts", console=NullConsole())
    assert report.status == "success"
    assert (report.changes.rejected, report.changes.removed_sent) == (1, 0)
    assert report.changes.rejected_samples == (
        (
            "(no person) acme",
            "no identifier: the identity graph gives this row no Customer.io id or email "
            "(`stripe_id` is null, or on a profile without one); fix it in the model or at the "
            "source (while it is rejected, the relationships of its object that left the model as "
            "it came or changed are kept: it may be the row of one)",
        ),
    )
    assert related() == both

    sql("delete from billing_contacts where stripe_id is null")
    left = run_sync(project, "billing_contacts", console=NullConsole(), force=True)
    assert (left.status, left.changes.rejected, left.changes.removed_sent) == ("success", 0, 1)
    assert related() == {("u1", "acme", "payer")}


def two_profiles_found_to_be_one(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Ada's app profile and her work-address lead synced as two people; then Stripe says
    the work address is Ada's: the next run's graph joins them (a merge to send)."""
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    project = setup(tmp_path, emulator.base_url or "")
    run_sync(project, "profile", console=NullConsole())
    run_sync(project, "leads", console=NullConsole())
    assert len(emulator.people()) == 3  # u1, u2 and the lead: not known as one yet
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("insert into stripe_customers values ('cus_C', 'ada.work@acme.io')").fetchall()
    con.execute("insert into app_users values ('u1', 'ada.work@acme.io', 'pro')").fetchall()
    con.close()
    return project


def test_two_people_found_to_be_one_are_merged_once(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = two_profiles_found_to_be_one(tmp_path, customerio_emulator, monkeypatch)
    report = run_sync(project, "leads", console=NullConsole())
    assert report.status == "success"
    merges = customerio_emulator.merges()
    assert len(merges) == 1
    people = {p.id: p for p in customerio_emulator.people()}
    assert sorted(people) == ["u1", "u2"]
    assert people["u1"].attributes.get("lead_source") == "webinar"
    # exactly once: a re-run sends no second merge
    run_sync(project, "leads", console=NullConsole())
    assert len(customerio_emulator.merges()) == 1
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    merge_runs = con.execute("select count(distinct run_id) from lockgate.lg_merge_log").fetchall()
    con.close()
    assert merge_runs == [(1,)]  # the log keeps the run that merged


PG_PROJECT = """\
name: ident
sources:
  warehouse: {{type: postgres, url: '{dsn}'}}
destinations:
  customerio: {{type: customerio, track_url: "{url}"}}
identity:
  identifier_types:
    user_id: {{priority: 1, limit: 1, customerio: id}}
    email: {{priority: 2, limit: 5, customerio: email}}
    stripe_id: {{priority: 3, limit: 2, customerio: "attribute:stripe_id"}}
    anonymous_id: {{priority: 9, limit: 25, customerio: anonymous_id,
                   degree_cap: {{user_id: {{max: 1, policy: quarantine}}}}}}
  sources:
    - {{name: app_users, table: lg_ident.app_users}}
    - {{name: stripe, table: lg_ident.stripe_customers}}
    - {{name: sessions, table: lg_ident.sessions, mode: append_only}}
    - {{name: leads, table: lg_ident.leads}}
"""


@pytest.mark.postgres
def test_analyst_tables_land_in_a_postgres_warehouse(
    tmp_path: Path,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    postgres_dsn: str,
) -> None:
    import psycopg

    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists lg_ident cascade")
        conn.execute("drop schema if exists lockgate cascade")
        conn.execute("create schema lg_ident")
        for statement in (
            "create table lg_ident.app_users as select * from (values ('u1', 'Ada@Acme.io', "
            "'pro'), ('u2', 'grace@acme.io', 'free'), ('u3', 'GRACE@acme.io', 'free')) "
            "t(user_id, email, plan)",
            "create table lg_ident.stripe_customers as select * from (values "
            "('cus_A', 'ada@acme.io')) t(stripe_id, email)",
            "create table lg_ident.sessions as select * from (values ('anon-1', 'u1'), "
            "('anon-shared', 'u1'), ('anon-shared', 'u2')) t(anonymous_id, user_id)",
            "create table lg_ident.leads as select 'ada.work@acme.io' as email, "
            "'webinar' as lead_source",
        ):
            conn.execute(statement)
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(
        PG_PROJECT.format(dsn=postgres_dsn, url=customerio_emulator.base_url)
    )
    profile = PROFILE.replace("model: {table: app_users}", "model: {table: lg_ident.app_users}")
    leads = LEADS.replace("model: {table: leads}", "model: {table: lg_ident.leads}")
    for name, body in {"profile": profile, "leads": leads}.items():
        (tmp_path / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
    project = load_project(tmp_path)
    run_sync(project, "profile", console=NullConsole())
    run_sync(project, "leads", console=NullConsole())
    # Stripe finds that the lead is Ada: one merge in Customer.io, logged once
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("insert into lg_ident.stripe_customers values ('cus_A', 'ada.work@acme.io')")
    run_sync(project, "leads", console=NullConsole())
    run_sync(project, "profile", console=NullConsole())
    assert len(customerio_emulator.merges()) == 1
    people = {p.id: p for p in customerio_emulator.people()}
    assert sorted(people) == ["u1", "u2", "u3"]  # u3 shares Grace's address: refused, kept apart
    assert people["u3"].attributes["contested_email"] == "grace@acme.io"

    with psycopg.connect(postgres_dsn) as conn:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return conn.execute(sql).fetchall()

        tables = rows(
            "select table_name from information_schema.tables where table_schema = 'lockgate'"
        )
        assert {t for (t,) in tables} >= {
            "lg_profiles",
            "lg_identifier_map",
            "lg_edges",
            "lg_merge_log",
            "lg_refused_merges",
            "lg_quarantine",
            "lg_split_log",
        }
        assert rows(
            "select cio_person_id, n_email, n_stripe_id from lockgate.lg_profiles "
            "where cio_person_id is not null order by 1"
        ) == [("u1", 2, 1), ("u2", 1, 0), ("u3", 0, 0)]
        assert rows(
            "select id_type, id_value, status from lockgate.lg_identifier_map "
            "where profile_id is null"
        ) == [("anonymous_id", "anon-shared", "quarantined")]
        edges = rows("select value_a, value_b, status from lockgate.lg_edges")
        assert ("u1", "anon-1", "accepted") in edges
        assert ("u2", "anon-shared", "quarantined") in edges
        # the merge is logged by the run that made it, once; the graph tables are replaced
        [(survivor, absorbed, cause)] = rows(
            "select profile_id, absorbed_profile_id, cause from lockgate.lg_merge_log"
        )
        assert cause == "merge" and survivor != absorbed
        assert rows("select id_value, policy from lockgate.lg_quarantine") == [
            ("anon-shared", "quarantine")
        ]
        assert rows("select count(distinct run_id) from lockgate.lg_profiles") == [(1,)]
        # four runs, one refusal: today's refusals, not one copy per run
        assert rows("select rule from lockgate.lg_refused_merges") == [("limit:user_id 2>1",)]
        assert rows("select count(*) from lockgate.lg_split_log") == [(0,)]


CRM_PROJECT = (
    HEAD
    + """\
    crm_id: {{priority: 3, limit: 1, customerio: "attribute:crm_id"}}
  sources:
    - {{name: app_users, table: app_users}}
    - {{name: crm_contacts, table: crm_contacts}}
"""
)

DEALS = """
name: deals
source: warehouse
model: {table: crm_deals}
kind: people
primary_key: crm_id
identify_by: {crm_id: crm_id}
attributes: {deal_stage: stage}
"""


def test_a_crm_id_held_as_integer_and_as_decimal_is_one_person(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    # the app keeps the HubSpot id as an integer, the CRM export as a numeric(12,2)
    con.execute(
        """
        create table app_users (user_id varchar, email varchar, plan varchar, crm_id bigint);
        insert into app_users values ('u1', 'ada@acme.io', 'pro', 7),
                                     ('u2', 'grace@acme.io', 'free', 8);
        create table crm_contacts (crm_id decimal(12, 2), email varchar);
        insert into crm_contacts values (7.00, 'ada.work@acme.io'), (8.00, 'grace@acme.io');
        create table crm_deals (crm_id decimal(12, 2), stage varchar);
        insert into crm_deals values (7.00, 'won'), (8.00, 'open');
        """
    ).fetchall()
    con.close()
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(
        CRM_PROJECT.format(url=customerio_emulator.base_url or "")
    )
    for name, body in {"profile": PROFILE, "deals": DEALS}.items():
        (tmp_path / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
    project = load_project(tmp_path)

    profile = run_sync(project, "profile", console=NullConsole())
    deals = run_sync(project, "deals", console=NullConsole())
    assert (profile.status, deals.status) == ("success", "success")
    people = {p.id: p for p in customerio_emulator.people()}
    assert sorted(people, key=str) == ["u1", "u2"]  # nobody new for Ada's work address
    assert people["u1"].attributes["deal_stage"] == "won"
    assert people["u1"].attributes["crm_id"] == "7"  # the CRM id as the sync sends it
    assert people["u2"].attributes["deal_stage"] == "open"


def test_syncs_of_one_command_resolve_the_graph_once_with_the_same_outcome(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sync --all` resolves the identity graph once for all its syncs (a `Session`). What
    reaches Customer.io and the warehouse's identity tables is what separate runs give, and a
    sync that fails after resolving leaves keeping the graph to the next one."""
    from lockgate.sync.resolve import IDENTITY_STATE
    from lockgate.sync.run import Session

    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    broken = BILLING.replace("{mrr: {column: mrr, type: number}}", "{mrr: {column: nope}}")

    def outcome(root: Path, session: Session | None) -> tuple[Any, ...]:
        root.mkdir()
        project = setup(root, customerio_emulator.base_url or "")
        (root / "syncs" / "billing.yml").write_text(textwrap.dedent(broken))
        project = load_project(root)
        customerio_emulator.reset()
        with pytest.raises(LockgateError, match="nope"):
            run_sync(project, "billing", console=NullConsole(), session=session)
        assert not (project.state_dir / IDENTITY_STATE).exists()  # billing kept nothing
        for name in ("profile", "leads"):
            assert run_sync(project, name, console=NullConsole(), session=session).delivered
        assert (project.state_dir / IDENTITY_STATE).exists()
        con = duckdb.connect(str(root / "w.duckdb"), read_only=True)
        profiles = con.execute(
            "select profile_id, cio_person_id from lockgate.lg_profiles order by 1"
        ).fetchall()
        con.close()
        people = sorted(
            (p.id or "", p.email or "", p.attributes) for p in customerio_emulator.people()
        )
        return profiles, people

    separate = outcome(tmp_path / "separate", None)
    with Session() as session:
        shared = outcome(tmp_path / "shared", session)
    assert session.resolution is not None and session.resolution.saved
    assert shared == separate
    assert len(shared[1]) == 3 and len(shared[0]) == 3


def test_a_run_of_named_records_waits_for_the_merges_a_whole_run_sends(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--only` sends the named records alone: merges the graph found belong to a whole run
    (the updates after them assume them), so a run of named records stops, naming the way."""
    project = two_profiles_found_to_be_one(tmp_path, customerio_emulator, monkeypatch)
    with pytest.raises(LockgateError, match="merges to send first") as stopped:
        run_sync(project, "leads", console=NullConsole(), only=("ada.work@acme.io",))
    assert "without `--only`" in (stopped.value.hint or "")
    assert customerio_emulator.merges() == []
    run_sync(project, "leads", console=NullConsole())
    assert len(customerio_emulator.merges()) == 1


def test_a_merge_found_by_one_command_is_sent_and_reported_once(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The syncs of one `sync --all` share the resolution that found a merge: the first sends
    it, and the others, each with its own ledger, neither send nor count it again."""
    from lockgate.sync.run import Session

    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    project = setup(tmp_path, customerio_emulator.base_url or "")
    names = ("billing", "profile", "leads")
    for name in names:
        run_sync(project, name, console=NullConsole())
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("insert into stripe_customers values ('cus_C', 'ada.work@acme.io')").fetchall()
    con.execute("insert into app_users values ('u1', 'ada.work@acme.io', 'pro')").fetchall()
    con.close()
    before = len(customerio_emulator.request_log())
    with Session() as session:
        reports = [run_sync(project, n, console=NullConsole(), session=session) for n in names]
    assert [r.identity_merges for r in reports] == [1, 0, 0]
    assert len(customerio_emulator.merges()) == 1
    merge_ops = [
        op
        for r in customerio_emulator.request_log()[before:]
        if r.path == "/api/v2/batch" and isinstance(r.body, dict)
        for op in r.body.get("batch", [])
        if op.get("action") == "merge"
    ]
    assert len(merge_ops) == 1


SF_PROJECT = HEAD.replace(
    "{{type: duckdb, path: w.duckdb}}", "{{type: snowflake, account: lg, user: t, database: LG}}"
) + (
    """\
  sources:
    - {{name: app_users, table: lg_ident.app_users}}
"""
)


def test_analyst_tables_land_in_a_snowflake_warehouse(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fakesnow behind the official connector: the graph tables replaced each run (one run's
    rows), list columns as VARIANT, names upper case as Snowflake folds them."""
    import warnings

    import fakesnow
    import snowflake.connector

    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(SF_PROJECT.format(url=customerio_emulator.base_url))
    profile = PROFILE.replace("model: {table: app_users}", "model: {table: lg_ident.app_users}")
    (tmp_path / "syncs" / "profile.yml").write_text(textwrap.dedent(profile))
    project = load_project(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fakesnow's own DuckDB warnings, not Lockgate's
        with fakesnow.patch():
            conn = snowflake.connector.connect(account="lg", user="t", database="LG")
            cursor = conn.cursor()
            cursor.execute("create schema lg_ident")
            cursor.execute(
                "create table lg_ident.app_users (user_id varchar, email varchar, plan varchar)"
            )
            cursor.execute(
                "insert into lg_ident.app_users values ('u1', 'Ada@Acme.io', 'pro'), "
                "('u2', 'grace@acme.io', 'free')"
            )
            run_sync(project, "profile", console=NullConsole())
            cursor.execute("insert into lg_ident.app_users values ('u3', 'lin@acme.io', 'pro')")
            run_sync(project, "profile", console=NullConsole())
            cursor.execute(
                "select cio_person_id, n_email from lockgate.lg_profiles order by cio_person_id"
            )
            profiles = cursor.fetchall()
            cursor.execute("select count(distinct run_id) from lockgate.lg_profiles")
            runs = cursor.fetchall()
            cursor.execute("select sources[0]::varchar from lockgate.lg_edges where value_a = 'u1'")
            sources = cursor.fetchall()
            conn.close()
    assert sorted(p.id for p in customerio_emulator.people()) == ["u1", "u2", "u3"]
    assert profiles == [("u1", 1), ("u2", 1), ("u3", 1)]
    assert runs == [(1,)]
    assert sources == [("app_users",)]


def test_a_model_column_named_like_the_graphs_is_left_out_or_refused_when_read(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph adds `profile_id` and `cio_person_id` (and more) to each row. A model with
    its own column of such a name: unread, it is left out and the graph's identifiers stand
    (before, a people sync crashed and an events sync sent to the model's ids); read by the
    sync, it is a config error naming the sync file and the rename."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    project = setup(tmp_path, customerio_emulator.base_url or "")
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        "create table billing_view as select *, 'crm-' || stripe_id as profile_id, "
        "'legacy-' || stripe_id as cio_person_id from invoices"
    ).fetchall()
    con.close()
    sync_file = tmp_path / "syncs" / "billing.yml"
    sync_file.write_text(textwrap.dedent(BILLING).replace("{table: invoices}", "billing_view"))
    project = load_project(tmp_path)

    run_sync(project, "profile", console=NullConsole())
    billing = run_sync(project, "billing", console=NullConsole())
    assert billing.status == "success" and billing.delivered == 2
    people = {p.id: p.attributes for p in customerio_emulator.people()}
    assert sorted(people) == ["u1", "u2"] and people["u1"]["mrr"] == 49.0

    read = sync_file.read_text().replace("number}}", "number}, crm: {column: profile_id}}")
    sync_file.write_text(read)
    with pytest.raises(LockgateError) as caught:
        run_sync(load_project(tmp_path), "billing", console=NullConsole())
    assert "reads the model's column `profile_id`, which has the name of a column the " in str(
        caught.value
    )
    assert "billing.yml" in str(caught.value)
    assert "profile_id as crm_profile_id" in (caught.value.hint or "")


def test_a_missing_column_is_named_with_the_models_own_columns(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A field reading a column the model lacks names the model's columns, not those the
    identity graph adds to each row (`profile_id`, `cio_person_id`, ...), which no sync can
    read."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    setup(tmp_path, customerio_emulator.base_url or "")
    sync_file = tmp_path / "syncs" / "billing.yml"
    sync_file.write_text(
        sync_file.read_text().replace("number}}", "number}, tier: {column: plan_tier}}")
    )
    with pytest.raises(LockgateError) as caught:
        run_sync(load_project(tmp_path), "billing", console=NullConsole())
    assert "field `tier` reads column `plan_tier`, which the model does not return" in str(
        caught.value
    )
    assert caught.value.hint == "the model's columns are `stripe_id`, `mrr`"
    assert customerio_emulator.people() == []


BLOCKING_PROJECT = (
    HEAD
    + """\
    crm_id: {{priority: 4, limit: 1}}
  blocked_values:
    crm_id: {{exact_ci: [TBD]}}
  blocked_values_table: ops.blocklist
  sources:
    - {{name: leads, table: leads}}
    - {{name: crm, table: crm, trust: 2}}
    - {{name: contacts, table: contacts, trust: 2, columns: {{email: email, work_email: email}}}}
"""
)


def test_blocked_values_written_in_capitals_block_the_placeholder_and_merge_nobody(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exact_ci: [TBD]` blocks the CRM's placeholder whatever its case, and the operator's
    `email, Shared@Corp.com` row blocks the team inbox however it is written: neither links
    two leads, so no Customer.io person is merged away (before, either linked them and one
    lead was deleted with its attributes)."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        """
        create table leads as select * from (values
          ('ann@a.com', 'webinar'), ('bob@b.com', 'ads'), ('cy@c.com', 'event')
        ) t(email, lead_source);
        create table crm (crm_id varchar, email varchar);
        create table contacts (email varchar, work_email varchar);
        create schema ops;
        create table ops.blocklist as select 'email' as id_type, 'Shared@Corp.com' as id_value;
        """
    ).fetchall()
    con.close()
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(
        BLOCKING_PROJECT.format(url=customerio_emulator.base_url or "")
    )
    (tmp_path / "syncs" / "leads.yml").write_text(textwrap.dedent(LEADS))
    project = load_project(tmp_path)
    assert run_sync(project, "leads", console=NullConsole()).status == "success"

    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        """
        insert into crm values ('TBD', 'ann@a.com'), ('TBD', 'bob@b.com'), ('tbd', 'cy@c.com');
        insert into contacts values ('bob@b.com', 'shared@corp.com'),
          ('cy@c.com', 'SHARED@Corp.com ');
        update leads set lead_source = lead_source || '!';
        """
    ).fetchall()
    con.close()
    report = run_sync(project, "leads", console=NullConsole())
    assert report.status == "success"

    assert customerio_emulator.merges() == []
    people = {p.email: p.attributes["lead_source"] for p in customerio_emulator.people()}
    assert people == {"ann@a.com": "webinar!", "bob@b.com": "ads!", "cy@c.com": "event!"}
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    blocked = con.execute(
        "select source, id_type, reason, value, count from lockgate.lg_blocked_values "
        "order by source"
    ).fetchall()
    con.close()
    assert blocked == [
        ("contacts", "email", "blocked", "shared@corp.com", 2),
        ("crm", "crm_id", "blocked", "TBD", 2),
        ("crm", "crm_id", "blocked", "tbd", 1),
    ]


TWO_WAREHOUSES = """\
name: ident
sources:
  warehouse: {{type: duckdb, path: w.duckdb}}
  analytics: {{type: duckdb, path: a.duckdb}}
destinations:
  customerio: {{type: customerio, track_url: "{url}"}}
identity:
  identifier_types:
    user_id: {{priority: 1, limit: 1, customerio: id}}
    email: {{priority: 2, limit: 5, customerio: email}}
    crm_id: {{priority: 4, limit: 1}}
  blocked_values_table: ops.blocklist
  sources:
    - {{name: leads, table: leads, source: warehouse}}
    - {{name: crm, table: crm, source: warehouse, trust: 2}}
"""


def test_operator_tables_are_read_from_the_warehouse_of_the_identity_sources(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a second warehouse (`analytics`, first by name), the blocklist is read where the
    identity sources are (before: from `analytics`, and every sync failed with a hint about
    "the model's SQL"); a table that cannot be read names the setting and its line."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        """
        create table leads as select * from (values ('ann@a.com', 'webinar'), ('bob@b.com', 'ads'))
          t(email, lead_source);
        create table crm as select * from (values ('c-0', 'ann@a.com'), ('c-0', 'bob@b.com'))
          t(crm_id, email);
        create schema ops;
        create table ops.blocklist as select 'crm_id' as id_type, 'c-0' as id_value;
        """
    ).fetchall()
    con.close()
    duckdb.connect(str(tmp_path / "a.duckdb")).execute("create table other as select 1 x").close()
    (tmp_path / "syncs").mkdir()
    project_file = tmp_path / "lockgate.yml"
    project_file.write_text(TWO_WAREHOUSES.format(url=customerio_emulator.base_url or ""))
    (tmp_path / "syncs" / "leads.yml").write_text(textwrap.dedent(LEADS))

    report = run_sync(load_project(tmp_path), "leads", console=NullConsole())
    assert report.status == "success"
    # the blocked CRM id links nobody: two people
    assert sorted(p.email for p in customerio_emulator.people()) == ["ann@a.com", "bob@b.com"]
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    assert con.execute("select count(*) from lockgate.lg_blocked_values").fetchall() == [(1,)]
    con.close()

    project_file.write_text(project_file.read_text().replace("ops.blocklist", "ops.blocklst"))
    with pytest.raises(LockgateError) as caught:
        run_sync(load_project(tmp_path), "leads", console=NullConsole())
    assert (
        "`identity.blocked_values_table` (lockgate.yml:12) names `ops.blocklst`, which could "
        "not be read: duckdb source `warehouse`: query failed:" in str(caught.value)
    )
    assert caught.value.hint == (
        "create `ops.blocklst` in source `warehouse`, the warehouse of the identity sources "
        "(columns `id_type`, `id_value`), or correct the name; `lockgate sources inspect "
        "warehouse` lists its tables"
    )

    project_file.write_text(
        project_file.read_text()
        .replace("ops.blocklst", "ops.blocklist")
        .replace("table: crm,", "table: crmx,")
    )
    with pytest.raises(LockgateError) as caught:
        run_sync(load_project(tmp_path), "leads", console=NullConsole())
    assert (
        "identity source `crm` (`identity.sources[1]`, lockgate.yml:15) could not be read: "
        "duckdb source `warehouse`: query failed:" in str(caught.value)
    )
    assert caught.value.hint == (
        "check its `table:` (`crmx`) against source `warehouse`; `lockgate sources inspect "
        "warehouse` lists its tables and columns"
    )
    assert "model" not in str(caught.value)

    # one of `sql:` quotes its SQL (it said "check its `sql:` (its `sql`)")
    project_file.write_text(
        project_file.read_text().replace(
            "table: crmx,", 'sql: "select crm_idd as crm_id, email from crm",'
        )
    )
    with pytest.raises(LockgateError) as caught:
        run_sync(load_project(tmp_path), "leads", console=NullConsole())
    assert caught.value.hint == (
        "check its `sql:` (`select crm_idd as crm_id, email from crm`) against source "
        "`warehouse`; `lockgate sources inspect warehouse` lists its tables and columns"
    )


def test_explain_and_plan_continue_from_the_graph_the_sync_kept(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """u1 takes u2's email in the second run: the sync keeps it with u2 (earlier decisions
    stand) and refuses u1's link. `identity explain` says the same, with the sync's profile
    ids (before, it resolved from scratch and gave the email to u1), and `identity plan`
    previews a rule change from the profiles the syncs use."""
    from click.testing import CliRunner

    from lockgate.cli import cli

    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    project = setup(tmp_path, customerio_emulator.base_url or "")
    assert run_sync(project, "profile", console=NullConsole()).status == "success"
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("update app_users set email = 'grace@acme.io' where user_id = 'u1'").fetchall()
    con.close()
    assert run_sync(project, "profile", console=NullConsole()).status == "success"
    grace = customerio_emulator.person(id="u2")
    assert grace is not None and grace.email == "grace@acme.io"
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    profile_ids = dict(
        con.execute("select cio_person_id, profile_id from lockgate.lg_profiles").fetchall()
    )
    con.close()

    def invoke(*args: str) -> Any:
        out = CliRunner().invoke(
            cli, [*args, "--project", str(tmp_path), "--json"], catch_exceptions=False
        )
        assert out.exit_code == 0, out.output
        return json.loads(out.output)

    why = invoke("identity", "explain", "grace@acme.io")
    assert why["profile"]["cio_person_id"] == "u2"
    assert why["profile_id"] == profile_ids["u2"]
    assert [(r["value_a"], r["value_b"], r["rule"]) for r in why["refused"]] == [
        ("u1", "grace@acme.io", "limit:user_id 2>1")
    ]
    state = sorted(p.name for p in (tmp_path / ".lockgate").rglob("*") if p.is_file())

    # a rule change that lets one profile hold two user ids: u1 and u2 would be merged
    old = tmp_path / "old.yml"
    old.write_text((tmp_path / "lockgate.yml").read_text())
    (tmp_path / "lockgate.yml").write_text(
        old.read_text().replace(
            "user_id: {priority: 1, limit: 1", "user_id: {priority: 1, limit: 2"
        )
    )
    preview = invoke("identity", "plan", "--old", str(old))
    assert len(preview["merges"]) == 1
    assert sorted(preview["customerio_people"], key=lambda p: p["cio_person_id"]) == [
        {"profile_id": profile_ids["u1"], "cio_person_id": "u1", "cio_email": None},
        {"profile_id": profile_ids["u2"], "cio_person_id": "u2", "cio_email": "grace@acme.io"},
    ]
    # neither command keeps anything
    assert sorted(p.name for p in (tmp_path / ".lockgate").rglob("*") if p.is_file()) == state


APP_ONLY = (
    HEAD
    + """\
  sources:
    - {{name: app_users, table: app_users}}
"""
)

ACTIVITY = """
name: activity
source: warehouse
model: {table: track}
kind: events
identify_by: {user_id: user_id}
event: {name: name, timestamp: ts, id: event_id}
"""


def app_project(root: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    con = duckdb.connect(str(root / "w.duckdb"))
    con.execute(
        """
        create table app_users as select * from (values
          ('u1', 'a@x.com', 'pro'), ('u2', 'b@x.com', 'free')) t(user_id, email, plan);
        create table track (event_id varchar, user_id varchar, name varchar, ts timestamp);
        insert into track values ('e1', 'u1', 'login', now()::timestamp - interval 1 hour);
        """
    ).fetchall()
    con.close()
    (root / "syncs").mkdir()
    (root / "lockgate.yml").write_text(APP_ONLY.format(url=emulator.base_url or ""))
    for name, body in {"profile": PROFILE, "activity": ACTIVITY}.items():
        (root / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
    return load_project(root)


def sync_all(project: Any) -> list[Any]:
    return [run_sync(project, name, console=NullConsole()) for name in ("profile", "activity")]


def test_a_new_user_taking_an_email_given_up_in_the_same_run_is_a_person_of_its_own(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """u1 changes a@x.com -> a2@x.com while new user u0 signs up with a@x.com: u0 is a new
    person with its own plan and event, not a split of u1's profile sent to u1's person."""
    project = app_project(tmp_path, customerio_emulator, monkeypatch)
    sync_all(project)
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        """
        update app_users set email = 'a2@x.com' where user_id = 'u1';
        insert into app_users values ('u0', 'a@x.com', 'trial');
        insert into track values ('e2', 'u0', 'signed_up', now()::timestamp - interval 1 hour);
        """
    ).fetchall()
    con.close()
    reports = sync_all(project)
    assert [(r.status, r.delivered) for r in reports] == [("success", 2), ("success", 1)]
    people = {p.id: p for p in customerio_emulator.people()}
    assert {k: (p.email, p.attributes["plan"]) for k, p in people.items()} == {
        "u0": ("a@x.com", "trial"),
        "u1": ("a2@x.com", "pro"),
        "u2": ("b@x.com", "free"),
    }
    assert [e.name for e in customerio_emulator.events(people["u0"])] == ["signed_up"]
    assert [e.name for e in customerio_emulator.events(people["u1"])] == ["login"]
    assert [a for a in customerio_emulator.activity_log() if "failure" in a.kind] == []
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        assert con.execute("select count(*) from lockgate.lg_split_log").fetchall() == [(0,)]
        moves = con.execute("select id_type, id_value from lockgate.lg_identifier_moves").fetchall()
        assert moves == [("email", "a@x.com")]
    assert [r.delivered for r in sync_all(project)] == [0, 0]


def test_two_users_swapping_emails_in_one_run_both_get_theirs(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Identifying u1 with b@x.com while u2 still holds it is dropped by Customer.io (200,
    nothing applied): one side's email is cleared first, then each is sent in turn."""
    project = app_project(tmp_path, customerio_emulator, monkeypatch)
    sync_all(project)
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        """
        update app_users set
          email = case user_id when 'u1' then 'b@x.com' else 'a@x.com' end,
          plan = case user_id when 'u1' then 'enterprise' else plan end
        """
    ).fetchall()
    con.close()
    report = run_sync(project, "profile", console=NullConsole())
    assert (report.status, report.delivered) == ("success", 2)
    people = {p.id: (p.email, p.attributes["plan"]) for p in customerio_emulator.people()}
    assert people == {"u1": ("b@x.com", "enterprise"), "u2": ("a@x.com", "free")}
    assert [a for a in customerio_emulator.activity_log() if "failure" in a.kind] == []
    assert run_sync(project, "profile", console=NullConsole()).changes.to_send == 0


@pytest.mark.parametrize("crm_type", ["uhugeint", "hugeint"])
def test_crm_ids_past_64_and_127_bits_are_read_by_the_graph_with_every_digit(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch, crm_type: str
) -> None:
    """A UHUGEINT of 2^127 or more (a HUGEINT of -2^127) reached the identity graph as
    DuckDB's Arrow export gives it: wrapped to a negative number (-2^127: a decimal that
    cannot be written). The syncs send such an id by its exact digits, so the graph and the
    rows it keys disagreed on who it was. The graph reads them as their text now."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    ids = [2**64 + 5, 2**127 + 7, 2**128 - 1] if crm_type == "uhugeint" else [2**64 + 5, -(2**127)]
    users = ", ".join(f"('u{i}', 'p{i}@acme.io', 'pro', '{v}')" for i, v in enumerate(ids))
    contacts = ", ".join(f"('{v}', 'work{i}@acme.io')" for i, v in enumerate(ids))
    deals = ", ".join(f"('{v}', 'won{i}')" for i, v in enumerate(ids))
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        f"""
        create table app_users as select user_id, email, plan, crm_id::{crm_type} as crm_id
            from (values {users}) v(user_id, email, plan, crm_id);
        create table crm_contacts as select crm_id::{crm_type} as crm_id, email
            from (values {contacts}) v(crm_id, email);
        create table crm_deals as select crm_id::{crm_type} as crm_id, stage
            from (values {deals}) v(crm_id, stage);
        """
    ).fetchall()
    con.close()
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(
        CRM_PROJECT.format(url=customerio_emulator.base_url or "")
    )
    for name, body in {"profile": PROFILE, "deals": DEALS}.items():
        (tmp_path / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
    project = load_project(tmp_path)

    profile = run_sync(project, "profile", console=NullConsole())
    deals_run = run_sync(project, "deals", console=NullConsole())
    assert (profile.status, deals_run.status) == ("success", "success")
    assert deals_run.changes.rejected == 0, deals_run.changes.rejected_samples
    people = {p.id: dict(p.attributes) for p in customerio_emulator.people()}
    assert sorted(people) == [f"u{i}" for i in range(len(ids))]  # nobody new
    assert {k: (a["crm_id"], a["deal_stage"]) for k, a in people.items()} == {
        f"u{i}": (str(v), f"won{i}") for i, v in enumerate(ids)
    }


def test_events_through_the_graph_whose_hash_columns_are_all_blank_are_rejected(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An events sync keyed through the identity graph rejects the rows whose `event.id.hash`
    columns are all blank, as one that is not does: not merged into one event."""
    app_project(tmp_path, customerio_emulator, monkeypatch)
    (tmp_path / "syncs" / "activity.yml").write_text(
        textwrap.dedent(ACTIVITY).replace("id: event_id}", "id: {hash: [event_id, ref]}}")
    )
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        """
        alter table track add column ref varchar;
        insert into track values
          ('', 'u1', 'blank', now()::timestamp - interval 2 hour, ''),
          (' ', 'u2', 'blank', now()::timestamp - interval 2 hour, chr(9)),
          ('', 'u2', 'kept', now()::timestamp - interval 2 hour, 'r1');
        """
    ).fetchall()
    con.close()
    profile, activity = sync_all(load_project(tmp_path))
    assert (profile.status, activity.status) == ("success", "success")
    assert (activity.delivered, activity.changes.rejected) == (2, 2)
    assert activity.changes.duplicates_in_model == 0
    blank = "event id is blank: every `event.id.hash` column (`event_id`, `ref`) is empty"
    assert [r.startswith(blank) for _, r in activity.changes.rejected_samples] == [True, True]
    assert sorted(e.name for e in customerio_emulator.events()) == ["kept", "login"]


def test_a_naive_observed_at_is_read_in_its_source_time_zone(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device seen with u1 at 10:00 New York time (a naive `timestamp`, 14:00 UTC) and with
    u2 at 12:00 UTC (a `timestamptz`): `keep_latest` gives it to u1, the later one, once the
    source says its naive times are New York's; read as UTC, 10:00 came first."""
    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        """
        create table users as select * from (values ('u1', 'pro'), ('u2', 'free')) t(user_id, plan);
        create table app_devices as select 'dev-1' as anonymous_id, 'u1' as user_id,
          timestamp '2026-07-01 10:00:00' as ts;
        create table tracked as select 'dev-1' as anonymous_id, 'u2' as user_id,
          timestamptz '2026-07-01 12:00:00+00' as ts;
        """
    ).fetchall()
    con.close()
    (tmp_path / "syncs").mkdir()
    yml = (
        HEAD
        + """\
    anonymous_id: {{priority: 9, limit: 25, customerio: anonymous_id,
                   degree_cap: {{user_id: {{max: 1, policy: keep_latest}}}}}}
  sources:
    - {{name: app_devices, table: app_devices, observed_at: ts}}
    - {{name: tracked, table: tracked, observed_at: ts}}
"""
    ).format(url=customerio_emulator.base_url)
    (tmp_path / "lockgate.yml").write_text(yml)
    (tmp_path / "syncs" / "profile.yml").write_text(
        PROFILE.replace("app_users", "users").replace(", email: email", "")
    )
    # no zone: the naive 10:00 is UTC, before 12:00 UTC
    assert run_sync(load_project(tmp_path), "profile", console=NullConsole()).status == "success"
    people = {p.id: p.anonymous_ids for p in customerio_emulator.people()}
    assert people == {"u1": (), "u2": ("dev-1",)}

    # the zone set on the source: the graph is stitched again (not the saved one reused),
    # and the device goes to u1, seen last. Customer.io attached it (and its events) to u2
    # already: it is sent to nobody else (docs/identity.md, "An anonymous id that moves")
    zoned = yml.replace("path: w.duckdb}", "path: w.duckdb, timezone: America/New_York}")
    assert zoned != yml
    (tmp_path / "lockgate.yml").write_text(zoned)
    assert run_sync(load_project(tmp_path), "profile", console=NullConsole()).status == "success"
    people = {p.id: p.anonymous_ids for p in customerio_emulator.people()}
    assert people == {"u1": (), "u2": ("dev-1",)}
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    edges = con.execute("select value_a, status from lockgate.lg_edges order by 1").fetchall()
    con.close()
    assert edges == [("u1", "accepted"), ("u2", "capped")]


@pytest.mark.parametrize("part", ["profiles.parquet", "state.json"])
def test_a_damaged_saved_graph_is_said_with_its_folder_and_moving_it_away_starts_over(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch, part: str
) -> None:
    """A part of the saved identity graph that cannot be read (a bad copy or restore) stops
    the run before anything is sent, naming the folder and the two ways out; moved away, the
    next run stitches the graph again and finds the same people (nothing new created)."""
    from lockgate.sync.run import plan_sync

    site, key = customerio_emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    project = setup(tmp_path, customerio_emulator.base_url or "")
    assert run_sync(project, "profile", console=NullConsole()).status == "success"
    folder = project.state_dir / "identity"
    (folder / part).write_bytes(b"\x00not what was saved\x00" * 50)
    sent = len(customerio_emulator.request_log())

    for step in (plan_sync, run_sync):
        with pytest.raises(LockgateError) as info:  # the `resolve` step's, naming it
            step(project, "profile", console=NullConsole())
        assert f"saved identity graph in `{folder}` cannot be read" in str(info.value)
        assert "restore the folder from a backup" in (info.value.hint or "")
        assert "move it away" in (info.value.hint or "")
    assert len(customerio_emulator.request_log()) == sent  # nothing was sent

    folder.rename(tmp_path / "identity.damaged")
    assert run_sync(project, "profile", console=NullConsole()).status == "success"
    assert sorted(p.id for p in customerio_emulator.people()) == ["u1", "u2"]
