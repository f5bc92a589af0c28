"""Identity sources kept in Postgres: a run whose sources did not change reuses the saved
graph (the fingerprint is computed by the server), and any one-value change stitches again."""

from __future__ import annotations

import itertools
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.errors import SourceError
from lockgate.project.loader import load_project
from lockgate.sources.postgres import PostgresSource, RedshiftSource
from lockgate.sync.graphinputs import fingerprint
from lockgate.sync.run import run_sync

pytestmark = pytest.mark.postgres

_databases = itertools.count()

#: the project and identity types both projects here share
HEAD = """\
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
"""

PROJECT = (
    HEAD
    + """\
  blocked_values_table: crm.blocked
  sources:
    - {{name: app_users, table: crm.app_users}}
    - {{name: stripe, table: crm.stripe_customers}}
"""
)

PAYMENTS = """
    name: payments
    source: warehouse
    model: {table: crm.payments}
    kind: events
    identify_by: {stripe_id: stripe_id}
    event: {name: event_name, id: payment_id}
    properties: {payment: payment_id}
    backfill: {first_run: send}
    """


def database(server: str) -> str:
    """A fresh database on the session's server, with the identity sources in `crm`:
    floats, times and nulls among them, whose text must read the same on every run."""
    name = f"lg_idreuse_{next(_databases)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name}")
        conn.execute(f"create database {name}")
    dsn = server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            create schema crm;
            create table crm.app_users (user_id text, email text, plan text);
            insert into crm.app_users values
              ('u1', 'ada@acme.io', 'pro'), ('u2', 'grace@acme.io', 'free'),
              ('u3', 'linus@acme.io', null);
            create table crm.stripe_customers (
              stripe_id text, email text, score float8, seen timestamptz, amount numeric(12, 2)
            );
            insert into crm.stripe_customers values
              ('cus_A', 'ada@acme.io', 0.1::float8 + 0.2::float8,
               '2026-01-02 03:04:05.123456+02', 10.50),
              ('cus_B', null, 1e-300, null, null);
            create table crm.payments (payment_id text, stripe_id text, event_name text);
            insert into crm.payments values ('p1', 'cus_A', 'Paid');
            create table crm.blocked (id_type text, id_value text);
            insert into crm.blocked values ('email', 'test@acme.io');
            """
        )
    return dsn


def sql(dsn: str, statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statements)


def setup(root: Path, dsn: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    (root / "syncs").mkdir()
    (root / "lockgate.yml").write_text(PROJECT.format(dsn=dsn, url=emulator.base_url or ""))
    (root / "syncs" / "payments.yml").write_text(textwrap.dedent(PAYMENTS))
    return load_project(root)


def graph(project: Any) -> str:
    report = run_sync(project, "payments", console=NullConsole())
    assert report.status == "success"
    return str(report.identity_graph)


def payers(emulator: Emulator) -> dict[str, str | None]:
    """Each payment event and the `id` of the person it landed on."""
    ids = {p.cio_id: p.id for p in emulator.people()}
    return {str(e.data["payment"]): ids.get(e.person or "") for e in emulator.events()}


def test_identity_sources_in_postgres_reuse_the_graph_until_one_value_changes(
    tmp_path: Path,
    postgres_dsn: str,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = customerio_emulator
    dsn = database(postgres_dsn)
    project = setup(tmp_path, dsn, emulator, monkeypatch)
    assert graph(project) == "stitched"  # no graph saved yet
    assert payers(emulator) == {"p1": "u1"}

    # nothing changed in Postgres: the graph is reused, and a new event routes the same
    sql(dsn, "insert into crm.payments values ('p2', 'cus_A', 'Paid')")
    assert graph(project) == "reused"
    assert payers(emulator) == {"p1": "u1", "p2": "u1"}

    # a null becoming a value: cus_B is Grace's now
    sql(
        dsn,
        "update crm.stripe_customers set email = 'grace@acme.io' where stripe_id = 'cus_B';"
        "insert into crm.payments values ('p3', 'cus_B', 'Paid')",
    )
    assert graph(project) == "stitched"
    assert payers(emulator)["p3"] == "u2"
    assert graph(project) == "reused"

    # two rows swapping a value: each row changed, each column holds the same values
    sql(
        dsn,
        "update crm.stripe_customers set email = case stripe_id "
        "when 'cus_A' then 'grace@acme.io' else 'ada@acme.io' end;"
        "insert into crm.payments values ('p4', 'cus_A', 'Paid'), ('p5', 'cus_B', 'Paid')",
    )
    assert graph(project) == "stitched"
    assert {k: v for k, v in payers(emulator).items() if k in ("p4", "p5")} == {
        "p4": "u2",
        "p5": "u1",
    }
    assert graph(project) == "reused"

    # an email changed: cus_A is Linus's now
    sql(
        dsn,
        "update crm.stripe_customers set email = 'linus@acme.io' where stripe_id = 'cus_A';"
        "insert into crm.payments values ('p6', 'cus_A', 'Paid')",
    )
    assert graph(project) == "stitched"
    assert payers(emulator)["p6"] == "u3"
    assert graph(project) == "reused"

    # a row deleted
    sql(dsn, "delete from crm.app_users where user_id = 'u3'")
    assert graph(project) == "stitched"
    assert graph(project) == "reused"

    # the operator's blocklist in Postgres: a new row stitches too
    sql(dsn, "insert into crm.blocked values ('email', 'nobody@acme.io')")
    assert graph(project) == "stitched"
    assert graph(project) == "reused"


def test_the_postgres_fingerprint_changes_with_any_value_and_not_with_order_or_settings(
    postgres_dsn: str,
) -> None:
    dsn = database(postgres_dsn)
    # a session whose floats print with fewer digits: 0.1 + 0.2 and 0.3 would read the same
    source = PostgresSource(dsn + "?options=-c%20extra_float_digits%3D-3%20-c%20timezone%3DUTC")
    table = "select * from crm.stripe_customers"
    base = fingerprint(source, table)
    assert base is not None
    assert fingerprint(source, table + " order by stripe_id desc") == base
    # the settings a source's `sql:` is read under are part of it: in another zone, or with
    # other float digits, `created_at::date` or `score::text` can read other rows
    for options in ("timezone%3DUTC", "timezone%3DAsia/Tokyo%20-c%20datestyle%3DSQL"):
        other = PostgresSource(dsn + "?options=-c%20" + options)
        assert fingerprint(other, table) != base, options
        other.close()
    for changed in (
        "select stripe_id, email, 0.3::float8 as score, seen, amount from crm.stripe_customers",
        "select stripe_id, email, score, seen + interval '1 microsecond' as seen, amount "
        "from crm.stripe_customers",
        "select stripe_id, email, score, seen, 10.5::numeric(12, 1) as amount "
        "from crm.stripe_customers",
        "select stripe_id, coalesce(email, '~') as email, score, seen, amount "
        "from crm.stripe_customers",  # a null is not the text `~`
        "select stripe_id, coalesce(email, '') as email, score, seen, amount "
        "from crm.stripe_customers",  # nor the empty text
        table + " union all select * from crm.stripe_customers where stripe_id = 'cus_A'",
        table + " where stripe_id = 'cus_A'",
        "select stripe_id::varchar as stripe_id, email, score, seen, amount "
        "from crm.stripe_customers",  # a type
        "select stripe_id as id, email, score, seen, amount from crm.stripe_customers",
    ):
        assert fingerprint(source, changed) != base, changed
    # a value moved from one column into the next is not the same row
    moved = "select * from (values ('a', 'bc'), ('x', 'y')) v(a, b)"
    assert fingerprint(source, moved) != fingerprint(
        source, "select * from (values ('ab', 'c'), ('x', 'y')) v(a, b)"
    )
    source.close()
    # Redshift (the same server read as `redshift: true`) has no `bit(64)` cast: not
    # fingerprinted, so its identity sources are stitched every run
    redshift = RedshiftSource(dsn)
    assert fingerprint(redshift, table) is None
    redshift.close()


SIGNUPS_PROJECT = (
    HEAD
    + """\
  sources:
    - {{name: stripe, table: crm.stripe_customers}}
    - name: signups
      sql: "select user_id, email from crm.signups where created_at::date >= date '2026-01-02'"
"""
)


def test_a_source_sql_read_in_the_databases_time_zone_is_fingerprinted_in_it(
    tmp_path: Path,
    postgres_dsn: str,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An identity `sql:` whose rows depend on the session's `TimeZone` (a `::date` of a
    `timestamptz`) is read in the database's own zone: its fingerprint is taken in that zone
    too, so a change the run would read is not hidden by a fingerprint taken in UTC."""
    emulator = customerio_emulator
    dsn = database(postgres_dsn)
    sql(
        dsn,
        f"alter database {dsn.rsplit('/', 1)[1]} set timezone = 'Asia/Tokyo';"
        "create table crm.signups (user_id text, email text, created_at timestamptz);"
        # 19:00 on 1 January in Tokyo: before the cut-off, not read
        "insert into crm.signups values ('u1', 'ada@acme.io', '2026-01-01 10:00+00')",
    )
    project = setup(tmp_path, dsn, emulator, monkeypatch)
    (tmp_path / "lockgate.yml").write_text(
        SIGNUPS_PROJECT.format(dsn=dsn, url=emulator.base_url or "")
    )
    project = load_project(tmp_path)
    assert graph(project) == "stitched"
    assert payers(emulator) == {"p1": None}  # cus_A is Ada's email only
    assert graph(project) == "reused"

    # 05:00 on 2 January in Tokyo (still 1 January in UTC): the signup is read now, and
    # cus_A is u1's
    sql(
        dsn,
        "update crm.signups set created_at = '2026-01-01 20:00+00';"
        "insert into crm.payments values ('p2', 'cus_A', 'Paid')",
    )
    assert graph(project) == "stitched"
    assert payers(emulator)["p2"] == "u1"


def test_a_read_that_missed_rows_the_fingerprints_saw_does_not_record_them(
    tmp_path: Path,
    postgres_dsn: str,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read, in the snapshot the fingerprint was taken in, still saw other rows than it
    counted (a view whose rows depend on a volatile function it hides): the graph stitched
    from that read is not recorded as the graph of the rows fingerprinted, so the next run
    reads them again rather than reusing it."""
    emulator = customerio_emulator
    dsn = database(postgres_dsn)
    # the view reads empty once, on its second read: the run's own read, after the
    # fingerprint (taken in the same snapshot: a view that reads otherwise each time is
    # what can still read other rows than the fingerprint counted)
    sql(
        dsn,
        "create sequence crm.reads;"
        "create view crm.app_users_feed as select user_id, email from crm.app_users "
        "where (select nextval('crm.reads')) <> 2",
    )
    project = setup(tmp_path, dsn, emulator, monkeypatch)
    (tmp_path / "lockgate.yml").write_text(
        PROJECT.format(dsn=dsn, url=emulator.base_url or "").replace(
            "table: crm.app_users", "table: crm.app_users_feed"
        )
    )
    project = load_project(tmp_path)
    assert graph(project) == "stitched"
    with psycopg.connect(dsn) as conn:
        # the fingerprint and the read: none again after it, in the same snapshot
        assert conn.execute("select last_value from crm.reads").fetchone() == (2,)
    assert payers(emulator) == {"p1": None}  # read without Ada's account

    sql(dsn, "insert into crm.payments values ('p2', 'cus_A', 'Paid')")
    assert graph(project) == "stitched"  # not the graph of the empty read, reused
    assert payers(emulator)["p2"] == "u1"
    assert graph(project) == "reused"


#: a gate in the view of an identity source: on the view's 2nd and 3rd reads (not on the
#: fingerprint's first), the reading session waits for advisory lock 2 (then 3), which the
#: test holds, so a concurrent writer commits at a point every run reaches the same way
GATE = """
create sequence crm.reads;
create function crm.gate(n bigint) returns boolean language plpgsql as $$
begin
  if n in (2, 3) then
    perform pg_advisory_lock_shared(n);
    perform pg_advisory_unlock_shared(n);
  end if;
  return true;
end $$;
create or replace view crm.app_users_feed as
  select user_id, email, plan from crm.app_users where (select crm.gate(nextval('crm.reads')));
insert into crm.app_users values ('u4', 'mary@acme.io', null);
"""


class Writer(threading.Thread):
    """A concurrent writer: holds advisory locks 2 and 3; once a session waits on lock 2 it
    commits ``changes[0]`` and lets it go, then the same with lock 3 and ``changes[1]``. A
    change whose lock no session asked for by the end of the run (``done``) is committed
    after it."""

    def __init__(self, dsn: str, changes: list[str]) -> None:
        super().__init__(daemon=True)
        self.dsn, self.changes = dsn, changes
        self.holding, self.done = threading.Event(), threading.Event()
        self.failed: BaseException | None = None
        self.committed_at: list[str] = []

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("select pg_advisory_lock(2), pg_advisory_lock(3)")
                self.holding.set()
                for key, change in zip((2, 3), self.changes, strict=True):
                    while not self.done.is_set() and not self._waited_on(conn, key):
                        time.sleep(0.005)  # polls a condition: no timing is asserted
                    self.committed_at.append("after the run" if self.done.is_set() else "gate")
                    conn.execute(change)
                    conn.execute("select pg_advisory_unlock(%s)", (key,))
        except BaseException as exc:  # reported by the test
            self.failed = exc
            self.holding.set()

    @staticmethod
    def _waited_on(conn: psycopg.Connection[Any], key: int) -> bool:
        row = conn.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and objid = %s "
            "and not granted",
            (key,),
        ).fetchone()
        return bool(row and row[0])


def graph_while(writer: Writer, project: Any) -> str:
    """:func:`graph` of a run while ``writer`` commits at the gates its reads reach."""
    writer.start()
    assert writer.holding.wait(30)
    try:
        return graph(project)
    finally:
        writer.done.set()
        writer.join(30)
        assert writer.failed is None


def test_an_identity_source_changed_and_changed_back_during_a_run_is_read_as_fingerprinted(
    tmp_path: Path,
    postgres_dsn: str,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer changes a row of one identity source after the run fingerprinted the sources
    and before it read that one, and changes it back before the run could fingerprint them
    again. The fingerprint the run records with its graph must describe the rows the graph
    was stitched from: the run reads every source in the snapshot it fingerprinted, so the
    next run, on the same rows, reuses a graph of those rows."""
    emulator = customerio_emulator
    dsn = database(postgres_dsn)
    sql(
        dsn,
        "create view crm.app_users_feed as select user_id, email, plan from crm.app_users",
    )
    project = setup(tmp_path, dsn, emulator, monkeypatch)
    (tmp_path / "lockgate.yml").write_text(
        PROJECT.format(dsn=dsn, url=emulator.base_url or "").replace(
            "table: crm.app_users", "table: crm.app_users_feed"
        )
    )
    project = load_project(tmp_path)
    assert graph(project) == "stitched"
    assert payers(emulator) == {"p1": "u1"}

    # a new user (so the next run stitches), and the gate in the view of `app_users`, which
    # is read before `stripe`
    sql(dsn, GATE + "insert into crm.payments values ('p2', 'cus_A', 'Paid')")
    writer = Writer(
        dsn,
        [
            "update crm.stripe_customers set email = 'grace@acme.io' where stripe_id = 'cus_A'",
            "update crm.stripe_customers set email = 'ada@acme.io' where stripe_id = 'cus_A'",
        ],
    )
    assert graph_while(writer, project) == "stitched"
    assert writer.committed_at[0] == "gate"  # while the run was between statements
    # cus_A was Ada's when the run began, and is Ada's again
    assert payers(emulator)["p2"] == "u1"

    sql(dsn, "insert into crm.payments values ('p3', 'cus_A', 'Paid')")
    assert graph(project) == "reused"
    assert payers(emulator)["p3"] == "u1"  # not the graph of a read that saw Grace's


def test_a_postgres_snapshot_reads_one_state_and_a_failed_fingerprint_spoils_no_read(
    postgres_dsn: str,
) -> None:
    """Inside `PostgresSource.snapshot()` every read and fingerprint sees the rows as of
    the first, a row another session commits meanwhile in none of them; a fingerprint that
    fails, or sets its own float digits, leaves the reads after it as they were. Redshift's
    reads (server-side cursors) share one snapshot the same way."""
    dsn = database(postgres_dsn)
    users = "select * from crm.app_users"
    source = PostgresSource(dsn)
    with source.snapshot():
        before = fingerprint(source, users)
        sql(dsn, "insert into crm.app_users values ('u9', 'nine@acme.io', null)")
        assert source.read(users).read_all().num_rows == 3
        with pytest.raises(SourceError):  # two columns `a`: `concat("a")` is ambiguous
            fingerprint(source, "select 1 as a, 2 as a")
        digits = "select current_setting('extra_float_digits') as d"
        assert source.read(digits).read_all()["d"].to_pylist() == ["1"]  # not the 3 it set
        assert fingerprint(source, users) == before
    assert source.read(users).read_all().num_rows == 4
    assert fingerprint(source, users) != before
    source.close()

    redshift = RedshiftSource(dsn)
    with redshift.snapshot():
        assert redshift.read(users).read_all().num_rows == 4
        sql(dsn, "delete from crm.app_users where user_id = 'u9'")
        # a reader left open keeps its cursor while the next one reads
        open_reader = redshift.read(users, batch_rows=1)
        assert redshift.read(users).read_all().num_rows == 4
        assert redshift.schema_of(users).names == ["user_id", "email", "plan"]
        assert open_reader.read_all().num_rows == 4
    assert redshift.read(users).read_all().num_rows == 3
    with pytest.raises(SourceError), redshift.snapshot():
        redshift.read("select * from crm.no_such_table")
    assert redshift.read(users).read_all().num_rows == 3  # the failed snapshot let go
    redshift.close()


def test_redshift_identity_sources_are_read_in_one_snapshot(
    tmp_path: Path,
    postgres_dsn: str,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `redshift: true` the identity sources are read through server-side cursors in
    one transaction: a writer that moves Ada's Stripe customer to Grace while the run reads
    `app_users` (before `stripe`) is seen by neither read, so the payment lands on Ada, as
    the warehouse stood when the run began, not on a graph of two moments."""
    emulator = customerio_emulator
    dsn = database(postgres_dsn)
    # the run's first read of the view waits for advisory lock 2, which the writer holds
    sql(
        dsn,
        GATE.replace("if n in (2, 3) then", "if n = 1 then")
        .replace("pg_advisory_lock_shared(n)", "pg_advisory_lock_shared(2)")
        .replace("pg_advisory_unlock_shared(n)", "pg_advisory_unlock_shared(2)"),
    )
    project = setup(tmp_path, dsn, emulator, monkeypatch)
    (tmp_path / "lockgate.yml").write_text(
        PROJECT.format(dsn=dsn, url=emulator.base_url or "")
        .replace("table: crm.app_users", "table: crm.app_users_feed")
        .replace(f"url: '{dsn}'}}", f"url: '{dsn}', redshift: true}}")
    )
    project = load_project(tmp_path)
    assert project.config.sources["warehouse"].redshift
    writer = Writer(
        dsn,
        [
            "update crm.stripe_customers set email = 'grace@acme.io' where stripe_id = 'cus_A'",
            "select 1",  # lock 3: asked for by no read
        ],
    )
    assert graph_while(writer, project) == "stitched"
    assert writer.committed_at == ["gate", "after the run"]
    assert payers(emulator) == {"p1": "u1"}  # Ada's when the run began


def test_a_decimal_nan_through_the_identity_graph_rejects_its_row_and_the_others_go_on(
    tmp_path: Path,
    postgres_dsn: str,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rows keyed by the identity graph keep what the read said of a `numeric(p,s)`
    `NaN`: its row is rejected naming the column, not sent without the value."""
    dsn = database(postgres_dsn)
    sql(
        dsn,
        "create table crm.billing (stripe_id text, amount numeric(12, 2));"
        "insert into crm.billing values ('cus_A', 10.5), ('cus_B', 'NaN')",
    )
    setup(tmp_path, dsn, customerio_emulator, monkeypatch)
    (tmp_path / "syncs" / "billing.yml").write_text(
        textwrap.dedent(
            """
            name: billing
            source: warehouse
            model: {table: crm.billing}
            kind: people
            primary_key: stripe_id
            identify_by: {stripe_id: stripe_id}
            attributes: {amount: amount}
            """
        )
    )
    project = load_project(tmp_path)

    report = run_sync(project, "billing", console=NullConsole())

    amounts = {p.id: p.attributes.get("amount") for p in customerio_emulator.people()}
    assert amounts == {"u1": 10.5}
    assert [reason for _, reason in report.changes.rejected_samples] == [
        "column `amount`: value `NaN` is not a finite number (JSON, and so Customer.io, has "
        "no NaN); `nullif(amount, 'NaN') as amount` in the model sends a null instead"
    ]
