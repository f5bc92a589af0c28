"""The demo's sample SaaS warehouse (DuckDB): users, subscriptions, product events.

Deterministic (no randomness at run time), with the mess real warehouses have: mixed-case
emails, a duplicated user row, a user without an id, an oversized value, a repeated event,
an event from the future, an event without a user and events too old to trigger journeys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb

USERS = 1_000
COMPANIES = 100


def build(path: Path, *, now: datetime | None = None, users: int = USERS) -> None:
    """Create (or replace) the warehouse file at ``path`` (``users`` people, 3 events each)."""
    now = now or datetime.now(UTC)
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute("create schema app; create schema analytics")
        con.execute(
            f"""
            create table app.users as
            select
                i as id,
                case when i % 7 = 0 then upper(substr(n, 1, 1)) || substr(n, 2) || '@SaaSCo.IO '
                     else n || '@saasco.io' end as email,
                ['Ada', 'Grace', 'Linus', 'Barbara', 'Ken', 'Margaret', 'Dennis',
                 'Frances'][1 + i % 8]
                    as first_name,
                timestamptz '{now.isoformat()}' - to_days(30 + i % 400) as created_at,
                case when i % 11 = 0 then true when i % 13 = 0 then null else false end
                    as do_not_discount
            from (select i, 'user' || i as n from range(1, {users + 1}) t(i))
            """
        )
        con.execute(
            f"""
            create table analytics.subscriptions as
            select
                id as user_id,
                ['free', 'starter', 'pro', 'enterprise'][1 + id % 4] as plan_tier,
                case when id % 9 = 0 then 'past_due' when id % 4 = 0 then 'trialing'
                     else 'active' end as status,
                (id % 4) * 149.5::decimal(10, 2) as mrr,
                case when id % 4 = 0 then (timestamptz '{now.isoformat()}' + to_days(id % 14))::date
                     end as trial_ends_on,
                1 + id % 25 as seats
            from app.users
            """
        )
        con.execute(
            f"""
            create table analytics.companies as
            select 'co_' || c as company_id,
                   ['Acme', 'Globex', 'Initech', 'Umbrella', 'Hooli'][1 + c % 5] || ' ' || c
                       as name,
                   ['starter', 'pro', 'enterprise'][1 + c % 3] as plan,
                   5 + (c * 7) % 200 as seats,
                   ['software', 'retail', 'health'][1 + c % 3] as industry
            from range(1, {COMPANIES + 1}) t(c)
            """
        )
        con.execute(
            f"""
            create table analytics.company_members as
            select id as user_id, 'co_' || (1 + id % {COMPANIES}) as company_id,
                   case when id % {COMPANIES} = 0 then 'owner' when id % 10 = 0 then 'admin'
                        else 'member' end as role
            from app.users
            union all
            -- a membership whose company is not in the warehouse yet: held, not lost
            select 7, 'co_new', 'admin'
            """
        )
        # the mess: a duplicated user row, a user without an id, an oversized first name
        con.execute(
            """
            insert into app.users values
                (42, 'user42-dup@saasco.io', 'Dup', now(), false),
                (null, 'ghost@saasco.io', 'Ghost', now(), false),
                (5000, 'long@saasco.io', repeat('x', 1200), now(), false)
            """
        )
        con.execute(
            f"""
            create table analytics.product_events as
            select
                'evt_' || i as event_id,
                1 + (i * 7) % {users} as user_id,
                ['Feature Used', 'Report Exported', 'Invite Sent',
                 'Integration Connected'][1 + i % 4]
                    as event_name,
                timestamptz '{now.isoformat()}' - to_minutes(5 + (i * 13) % 2800) as occurred_at,
                ['dashboards', 'exports', 'alerts', 'sso'][1 + i % 4] as feature_key,
                (i % 50) * 1.5 as value
            from range(1, {3 * users + 1}) t(i)
            """
        )
        # identity mess: Stripe and CRM ids (emails in another case), two sessions per user
        # plus a kiosk device shared by 20 people, and marketing leads, two of which are
        # users' work addresses (duplicates in Customer.io until act 2 links them)
        con.execute(
            f"""
            create schema billing; create schema crm; create schema web; create schema marketing;
            create table billing.stripe_customers as
            select 'cus_' || id as stripe_id, upper(trim(email)) as email,
                   (id % 4) * 49.0 as mrr
            from app.users where id % 3 = 0 and id <= {users}
            union all select 'cus_ada', 'user1@saasco.io', 99.0
            union all select 'cus_grace', 'user2@saasco.io', 49.0;
            create table crm.contacts as
            select 'hs_' || id as crm_id, email from app.users where id % 5 = 0 and id <= {users};
            create table web.sessions as
            select 'anon_' || id || '_' || s as anonymous_id, id as user_id
            from app.users, range(2) t(s) where id <= {users}
            union all select 'device-kiosk', id from range(1, 21) t(id);
            create table marketing.leads as select * from (values
              ('ada.work@saasco.io', 'webinar'), ('grace.work@saasco.io', 'ebook'),
              ('lead1@saasco.io', 'ads')) t(email, lead_source);
            """
        )
        con.execute(
            f"""
            insert into analytics.product_events values
                ('evt_7', 50, 'Feature Used', timestamptz '{now.isoformat()}' - to_minutes(30),
                 'dashboards', 1.0),
                ('evt_future', 3, 'Feature Used', timestamptz '{now.isoformat()}' + to_days(2),
                 'dashboards', 1.0),
                ('evt_orphan', null, 'Feature Used', timestamptz '{now.isoformat()}' - to_hours(1),
                 'alerts', 2.0);
            insert into analytics.product_events
            select 'evt_old_' || i, i, 'Feature Used',
                   timestamptz '{now.isoformat()}' - to_days(10 + i), 'exports', 0.0
            from range(1, 51) t(i);
            """
        )
    finally:
        con.close()


def change_a_few_rows(path: Path, *, now: datetime | None = None) -> dict[str, int]:
    """The second act: upgrade three people, add one, log two new events, add the company
    a held membership was waiting for."""
    now = now or datetime.now(UTC)
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "update analytics.subscriptions set plan_tier = 'enterprise', mrr = 900 "
            "where user_id in (1, 2, 3)"
        )
        con.execute(
            "insert into analytics.companies values ('co_new', 'Newco', 'pro', 12, 'software')"
        )
        # user 9 changes their email: the same person in Customer.io gets the new address
        con.execute("update app.users set email = 'user9.new@saasco.io' where id = 9")
        # Stripe learns the work addresses of Ada (user 1) and Grace (user 2): the identity
        # graph joins each to the lead Customer.io already holds, and Lockgate merges them
        con.execute(
            "insert into billing.stripe_customers values "
            "('cus_ada', 'ada.work@saasco.io', 99.0), ('cus_grace', 'grace.work@saasco.io', 49.0)"
        )
        con.execute(
            f"insert into app.users values ({USERS + 1}, 'New.Person@SaaSCo.io', 'Nova', "
            f"timestamptz '{now.isoformat()}', false)"
        )
        con.execute(
            f"""
            insert into analytics.product_events values
              ('evt_new_1', 1, 'Plan Upgraded', timestamptz '{now.isoformat()}' - to_minutes(2),
               'billing', 900.0),
              ('evt_new_2', {USERS + 1}, 'Signed Up',
               timestamptz '{now.isoformat()}' - to_minutes(1),
               'onboarding', 0.0)
            """
        )
    finally:
        con.close()
    return {
        "people_changed": 3,
        "people_added": 1,
        "events_added": 2,
        "companies_added": 1,
        "work_emails_linked": 2,
        "emails_changed": 1,
    }
