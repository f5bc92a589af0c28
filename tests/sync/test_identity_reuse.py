"""A run whose identity inputs did not change since the saved graph reuses it, and a run after
any change to them (a source's row, the operator's tables, the identity config) stitches."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from lockgate import LockgateError
from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.project.loader import load_project
from lockgate.sources.duckdb import DuckDBSource
from lockgate.sync.graphinputs import fingerprint, volatile
from lockgate.sync.run import plan_sync, run_sync

from .test_identity_sync import HEAD

#: test_identity_sync's project and identity types, with Stripe ids
PROJECT = (
    HEAD
    + """\
    stripe_id: {{priority: 3, limit: 2, customerio: "attribute:stripe_id"}}
  blocked_values_table: blocked
  sources:
    - {{name: app_users, table: app_users}}
    - {{name: stripe, table: stripe_customers}}
    - {{name: leads, {leads}}}
"""
)

SYNCS = {
    "profile": """
        name: profile
        source: warehouse
        model: {table: app_users}
        kind: people
        primary_key: user_id
        identify_by: {user_id: user_id, email: email}
        attributes: {plan: plan}
        """,
    "leads": """
        name: leads
        source: warehouse
        model: {table: leads}
        kind: people
        primary_key: email
        identify_by: {email: email}
        attributes: {lead_source: lead_source}
        """,
    "payments": """
        name: payments
        source: warehouse
        model: {table: payments}
        kind: events
        identify_by: {stripe_id: stripe_id}
        event: {name: event_name, id: payment_id}
        properties: {payment: payment_id}
        backfill: {first_run: send}
        """,
}


def setup(
    root: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, leads: str = "table: leads"
) -> Any:
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    warehouse(
        root,
        """
        create table app_users as select * from (values
          ('u1', 'ada@acme.io', 'pro'), ('u2', 'grace@acme.io', 'free')
        ) t(user_id, email, plan);
        create table stripe_customers as select * from (values ('cus_A', 'ada@acme.io'))
          t(stripe_id, email);
        create table leads as select 'ada.work@acme.io' as email, 'webinar' as lead_source;
        create table payments as select 'p1' as payment_id, 'cus_A' as stripe_id,
          'Paid' as event_name;
        create table blocked as select 'email' as id_type, 'test@acme.io' as id_value;
        """,
    )
    (root / "syncs").mkdir()
    (root / "lockgate.yml").write_text(PROJECT.format(url=emulator.base_url or "", leads=leads))
    for name, body in SYNCS.items():
        (root / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
    return load_project(root)


def warehouse(root: Path, sql: str) -> None:
    con = duckdb.connect(str(root / "w.duckdb"))
    con.execute(sql).fetchall()
    con.close()


def run(project: Any, name: str) -> Any:
    report = run_sync(project, name, console=NullConsole())
    assert report.status == "success"
    return report


def payers(emulator: Emulator) -> dict[str, str | None]:
    """Each payment event and the `id` of the person it landed on."""
    ids = {p.cio_id: p.id for p in emulator.people()}
    return {str(e.data["payment"]): ids.get(e.person or "") for e in emulator.events()}


def test_a_run_with_unchanged_identity_inputs_reuses_the_graph_and_routes_the_same(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = customerio_emulator
    project = setup(tmp_path, emulator, monkeypatch)
    first = run(project, "profile")
    assert first.identity_graph == "stitched"  # no graph saved yet
    assert first.as_dict()["identity_graph"] == "stitched"
    run(project, "leads")
    payments = run(project, "payments")
    assert payments.identity_graph == "reused"
    assert payers(emulator) == {"p1": "u1"}

    # nothing changed: the graph is reused, the people syncs send nothing, and a new event
    # of the same customer lands on the same person
    warehouse(tmp_path, "insert into payments values ('p2', 'cus_A', 'Paid')")
    plan = plan_sync(project, "profile", console=NullConsole())
    assert plan.identity_graph == "reused"
    again = [run(project, name) for name in ("profile", "leads", "payments")]
    assert [r.identity_graph for r in again] == ["reused"] * 3
    assert [r.changes.to_send for r in again[:2]] == [0, 0]
    assert payers(emulator) == {"p1": "u1", "p2": "u1"}
    assert sorted(p.id or p.email for p in emulator.people()) == ["ada.work@acme.io", "u1", "u2"]

    # a new Stripe link in a source: the next run stitches, and the payment lands on Grace
    warehouse(
        tmp_path,
        "insert into stripe_customers values ('cus_B', 'grace@acme.io');"
        "insert into payments values ('p3', 'cus_B', 'Paid')",
    )
    changed = run(project, "payments")
    assert changed.identity_graph == "stitched"
    assert payers(emulator) == {"p1": "u1", "p2": "u1", "p3": "u2"}
    assert run(project, "payments").identity_graph == "reused"

    # Stripe says the work address is Ada's too: the two people are merged, once
    warehouse(tmp_path, "insert into stripe_customers values ('cus_A', 'ada.work@acme.io')")
    merged = run(project, "leads")
    assert (merged.identity_graph, merged.identity_merges) == ("stitched", 1)
    assert len(emulator.merges()) == 1
    assert sorted(p.id for p in emulator.people()) == ["u1", "u2"]
    assert emulator.person(id="u1").attributes.get("lead_source") == "webinar"  # type: ignore[union-attr]
    after = run(project, "leads")
    assert (after.identity_graph, after.identity_merges, after.changes.to_send) == ("reused", 0, 0)
    assert len(emulator.merges()) == 1


def test_a_change_to_the_operators_tables_or_the_identity_config_stitches_again(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = setup(tmp_path, customerio_emulator, monkeypatch)
    run(project, "profile")
    assert run(project, "profile").identity_graph == "reused"
    # Grace's address blocked by the operator: the graph is stitched again without it
    warehouse(tmp_path, "insert into blocked values ('email', 'grace@acme.io')")
    assert run(project, "profile").identity_graph == "stitched"
    assert run(project, "profile").identity_graph == "reused"
    # a limit changed in lockgate.yml
    yml = tmp_path / "lockgate.yml"
    yml.write_text(yml.read_text().replace("limit: 5", "limit: 4"))
    project = load_project(tmp_path)
    assert run(project, "profile").identity_graph == "stitched"
    assert run(project, "profile").identity_graph == "reused"


def test_plan_and_sync_say_whether_the_graph_was_reused(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup(tmp_path, customerio_emulator, monkeypatch)

    def invoke(*args: str) -> str:
        out = CliRunner().invoke(cli, [*args, "--project", str(tmp_path)], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return " ".join(out.output.replace("│", " ").split())  # the table's cells, as text

    assert "identity graph stitched from its sources" in invoke("sync", "profile")
    assert "identity graph reused (sources unchanged)" in invoke("plan", "profile")
    assert "identity graph reused (sources unchanged)" in invoke("sync", "profile")


def test_an_identity_source_whose_sql_reads_differently_each_time_always_stitches(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = setup(
        tmp_path,
        customerio_emulator,
        monkeypatch,
        leads='sql: "select email, lead_source from leads where random() < 2"',
    )
    run(project, "profile")
    assert run(project, "profile").identity_graph == "stitched"


def test_a_graph_whose_analyst_tables_were_not_written_is_not_reused(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until a run wrote the analyst tables of the graph it saved, the next one stitches
    (and writes them)."""
    project = setup(tmp_path, customerio_emulator, monkeypatch)
    # a table of the analysts' in the way: the write of the graph's tables fails
    warehouse(tmp_path, "create schema lockgate; create view lockgate.lg_merge_log as select 1")
    assert run(project, "profile").identity_graph == "stitched"
    assert run(project, "profile").identity_graph == "stitched"
    warehouse(tmp_path, "drop view lockgate.lg_merge_log")
    assert run(project, "profile").identity_graph == "stitched"  # the tables written now
    assert run(project, "profile").identity_graph == "reused"


def test_the_fingerprint_of_rows_changes_with_any_value_and_not_with_their_order(
    tmp_path: Path,
) -> None:
    source = DuckDBSource()
    source.query(
        """
        create table t as select * from (values
          (1, 'a', null, 170141183460469231731687303715884105728::uhugeint, -1::hugeint),
          (2, 'b', 'x', 1::uhugeint, 2::hugeint)
        ) v(n, s, m, big, h)
        """
    )
    base = fingerprint(source, "select * from t")
    assert fingerprint(source, "select * from t order by n desc") == base
    for other in (
        "select * replace (case when n = 2 then 'c' else s end as s) from t",
        "select * replace (case when n = 1 then '~' else m end as m) from t",  # null vs '~'
        "select * replace (case when n = 1 then 'a' else s end as s, "
        "case when n = 1 then 'x' else m end as m) from t",
        "select * replace (big + 1 as big) from t",
        "select * replace (h - 1 as h) from t",
        "select * from t union all select * from t where n = 1",  # a repeated row
        "select * from t where n = 1",
        "select * replace (n::double as n) from t",  # a type
        "select * rename (s as t) from t",  # a name
        "select * exclude (m) from t",
    ):
        assert fingerprint(source, other) != base, other
    # a value moved from one column into the next is not the same row
    source.query("create table u as select * from (values ('ab', 'c'), ('x', 'y')) v(a, b)")
    moved = "select * from (values ('a', 'bc'), ('x', 'y')) v(a, b)"
    assert fingerprint(source, moved) != fingerprint(source, "select * from u")
    source.close()
    assert volatile("select * from users where seen > now() - interval 1 day")
    assert volatile("select *, RANDOM () as r from users")
    assert volatile("select * from users where day < current_date")
    assert not volatile("select current_plan, nowhere, randomness from users")


def test_merges_a_guardrail_stopped_are_planned_again_not_dropped_by_a_reuse(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped by `max_merges_per_run` keeps no graph: the next run stitches again and
    plans the same merge (a reuse would have planned none), until one is let through."""
    emulator = customerio_emulator
    project = setup(tmp_path, emulator, monkeypatch)
    yml = tmp_path / "lockgate.yml"
    yml.write_text(
        yml.read_text().replace(
            "  blocked_values_table:",
            "  customerio: {merge_policy: {max_merges_per_run: 0}}\n  blocked_values_table:",
        )
    )
    project = load_project(tmp_path)
    run(project, "profile")
    run(project, "leads")
    warehouse(tmp_path, "insert into stripe_customers values ('cus_A', 'ada.work@acme.io')")
    for _ in range(2):
        with pytest.raises(LockgateError, match="max_merges_per_run"):
            run_sync(project, "leads", console=NullConsole())
    assert plan_sync(project, "leads", console=NullConsole()).identity_graph == "stitched"
    assert emulator.merges() == []
    forced = run_sync(project, "leads", console=NullConsole(), force=True)
    assert (forced.identity_graph, forced.identity_merges) == ("stitched", 1)
    assert len(emulator.merges()) == 1
    assert run(project, "leads").identity_graph == "reused"
    assert len(emulator.merges()) == 1


def test_a_graph_restored_from_a_backup_is_not_taken_for_the_one_the_key_was_recorded_with(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`identity/` put back from a backup under a newer `identity.inputs.json`: the key
    names the graph it was recorded with (its batch and run), so the run stitches."""
    emulator = customerio_emulator
    project = setup(tmp_path, emulator, monkeypatch)
    run(project, "payments")
    graph = project.state_dir / "identity"
    shutil.copytree(graph, tmp_path / "backup")
    # cus_A is Grace's now: stitched, and the key recorded with that graph
    warehouse(
        tmp_path,
        "update stripe_customers set email = 'grace@acme.io';"
        "insert into payments values ('p2', 'cus_A', 'Paid')",
    )
    assert run(project, "payments").identity_graph == "stitched"
    assert payers(emulator)["p2"] == "u2"
    shutil.rmtree(graph)
    shutil.copytree(tmp_path / "backup", graph)
    warehouse(tmp_path, "insert into payments values ('p3', 'cus_A', 'Paid')")
    assert run(project, "payments").identity_graph == "stitched"
    assert payers(emulator)["p3"] == "u2"


def test_an_upgrade_of_a_library_that_reads_or_stitches_the_sources_stitches_again(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB (or pyarrow, NumPy, the Postgres driver) upgraded under the same Lockgate can
    read or normalise a value otherwise: the next run stitches, then reuses again."""
    project = setup(tmp_path, customerio_emulator, monkeypatch)
    run(project, "profile")
    assert run(project, "profile").identity_graph == "reused"
    monkeypatch.setattr(duckdb, "__version__", duckdb.__version__ + ".post1")
    assert run(project, "profile").identity_graph == "stitched"
    assert run(project, "profile").identity_graph == "reused"
