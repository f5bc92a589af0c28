"""The same logical model gives the same Customer.io values from every warehouse.

Each test builds one small table in DuckDB, Postgres (the session's real server, read through
ADBC, and again with `redshift: true` through psycopg) and Snowflake (fakesnow behind the
official connector), runs the same people sync against
the emulator, and checks what Customer.io holds per person, and which rows were rejected and
why. A value Customer.io cannot hold (NaN, an infinite date) must be rejected, naming the
column, while the other rows go on.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from lockgate.cli import main
from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.errors import SourceError
from lockgate.project.loader import load_project
from lockgate.sync.run import RunReport, run_sync


@dataclass
class Warehouse:
    """A warehouse of one kind, its `sources:` entry, and a way to run SQL in it."""

    kind: str
    root: Path
    dsn: str = ""
    stack: ExitStack = field(default_factory=ExitStack)
    _snowflake: Any = None

    @property
    def postgres(self) -> bool:
        """A Postgres server, read through ADBC or (`redshift`) through psycopg."""
        return self.kind in ("postgres", "redshift")

    @property
    def yaml(self) -> str:
        if self.kind == "duckdb":
            return "{type: duckdb, path: w.duckdb}"
        if self.postgres:
            redshift = ", redshift: true" if self.kind == "redshift" else ""
            return f"{{type: postgres, url: '{self.dsn}'{redshift}}}"
        return "{type: snowflake, account: lg, user: t, database: LG, schema: PUBLIC}"

    def execute(self, statements: list[str]) -> None:
        if self.kind == "duckdb":
            with duckdb.connect(str(self.root / "w.duckdb")) as con:
                for statement in statements:
                    con.execute(statement)
        elif self.postgres:
            import psycopg

            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for statement in statements:
                    conn.execute(statement)
        else:
            cursor = self._snowflake.cursor()
            for statement in statements:
                cursor.execute(statement)
            cursor.close()


@pytest.fixture(
    params=[
        "duckdb",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redshift", marks=pytest.mark.postgres),
        "snowflake",
    ]
)
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    wh = Warehouse(request.param, tmp_path)
    with wh.stack:
        if wh.postgres:
            wh.dsn = request.getfixturevalue("postgres_dsn")
            wh.execute(["drop table if exists public.t"])
        elif wh.kind == "snowflake":
            import fakesnow
            import snowflake.connector

            wh.stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")  # fakesnow's own DuckDB warnings, not Lockgate's
            wh.stack.enter_context(fakesnow.patch())
            wh._snowflake = snowflake.connector.connect(
                account="lg", user="t", database="LG", schema="PUBLIC"
            )
            wh.stack.callback(wh._snowflake.close)
        yield wh


@dataclass
class Outcome:
    report: RunReport
    people: dict[str, dict[str, Any]]
    rejected: dict[str, str]


def write_project(
    wh: Warehouse,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    attributes: str,
    sql: str = "select * from t",
) -> None:
    """A project with a people sync `people` keyed by `id` over ``sql``."""
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    (wh.root / "syncs").mkdir(exist_ok=True)
    (wh.root / "lockgate.yml").write_text(
        f"name: t\nsources:\n  warehouse: {wh.yaml}\ndestinations:\n  customerio:\n"
        f"    type: customerio\n    track_url: {emulator.base_url}\n"
    )
    body = f"""
        name: people
        source: warehouse
        model: {{sql: "{sql}"}}
        kind: people
        primary_key: id
        identify_by: {{id: id}}
        attributes:
    """
    (wh.root / "syncs" / "people.yml").write_text(
        textwrap.dedent(body) + textwrap.indent(textwrap.dedent(attributes).strip(), "  ") + "\n"
    )


def sync_people(
    wh: Warehouse,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    attributes: str,
    sql: str = "select * from t",
) -> Outcome:
    """Run a people sync keyed by `id` over ``sql`` and read back what Customer.io holds."""
    write_project(wh, emulator, monkeypatch, attributes, sql)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fakesnow's DuckDB copy warning
        report = run_sync(load_project(wh.root), "people", console=NullConsole())
    people = {p.id: dict(p.attributes) for p in emulator.people() if p.id is not None}
    return Outcome(report, people, dict(report.changes.rejected_samples))


def test_nan_and_infinity_are_rejected_by_column_not_sent_as_invalid_json(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse.execute(
        [
            "create table t (id int, score double precision)",
            "insert into t values (1, 1.5), (2, 'NaN'), (3, 'inf'), (4, '-inf')",
        ]
    )

    out = sync_people(warehouse, customerio_emulator, monkeypatch, "score: score")

    assert out.people == {"1": {"score": 1.5}}
    assert set(out.rejected) == {"2", "3", "4"}
    assert all("column `score`" in reason for reason in out.rejected.values())
    assert "nan" in out.rejected["2"].lower() and "inf" in out.rejected["3"].lower()


def test_a_number_field_rejects_nan_text_too(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse.execute(
        [
            "create table t (id int, score varchar(20))",
            "insert into t values (1, '2.25'), (2, 'NaN'), (3, '-Infinity')",
        ]
    )

    out = sync_people(
        warehouse, customerio_emulator, monkeypatch, "score: {column: score, type: number}"
    )

    assert out.people == {"1": {"score": 2.25}}
    assert set(out.rejected) == {"2", "3"}
    assert all("column `score`" in reason for reason in out.rejected.values())


def test_timestamps_become_the_unix_second_they_fall_in_not_the_nearest_one(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 23:59:59.6 is still Jan 1: rounding sent Jan 2 00:00:00, moving the day a segment sees
    ntz, tz = (
        ("timestamp_ntz", "timestamp_tz")
        if warehouse.kind == "snowflake"
        else (
            "timestamp",
            "timestamptz",
        )
    )
    warehouse.execute(
        [
            f"create table t (id int, ts {ntz}, tz {tz})",
            "insert into t values (1, '2024-01-01 23:59:59.6', '2024-01-01 23:59:59.6+00:00'), "
            "(2, '1969-12-31 23:59:59.5', '1969-12-31 23:59:59.5+00:00')",
        ]
    )

    out = sync_people(
        warehouse,
        customerio_emulator,
        monkeypatch,
        """
        ts: {column: ts, type: timestamp}
        tz: {column: tz, type: timestamp}
        ts_auto: ts
        """,
    )

    assert out.rejected == {}
    assert out.people == {
        "1": {"ts": 1704153599, "tz": 1704153599, "ts_auto": 1704153599},
        "2": {"ts": -1, "tz": -1, "ts_auto": -1},
    }


def test_timestamps_after_year_9999_become_their_exact_unix_second(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `floor(epoch(ts))` went through a double: 20241-01-01 00:00:01 became ...400, a second
    # early; through year 9999 the values are as they were
    if warehouse.kind == "snowflake":
        pytest.skip("Snowflake's years end at 9999")
    warehouse.execute(
        [
            "create table t (id int, ts timestamp, tz timestamptz, txt varchar(40))",
            "insert into t values (1, '20241-01-01 00:00:01', '20241-01-01 00:00:01.5+00', "
            "'20241-01-01T00:00:01Z'), (2, '9999-12-31 23:59:59.999999', "
            "'1969-12-31 23:59:59.999999+00', '1969-12-31T23:59:59.5Z')",
        ]
    )

    out = sync_people(
        warehouse,
        customerio_emulator,
        monkeypatch,
        """
        ts: {column: ts, type: timestamp}
        tz: tz
        txt: {column: txt, type: timestamp}
        """,
    )

    assert out.rejected == {}
    assert out.people == {
        "1": {"ts": 576577094401, "tz": 576577094401, "txt": 576577094401},
        "2": {"ts": 253402300799, "tz": -1, "txt": -1},
    }


@pytest.mark.parametrize("attribute", ["{column: d, type: date}", "d"])
def test_infinite_dates_and_timestamps_reject_their_row_naming_the_column(
    warehouse: Warehouse,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    attribute: str,
) -> None:
    if warehouse.kind == "snowflake":
        pytest.skip("Snowflake has no infinite dates or timestamps")
    warehouse.execute(
        [
            "create table t (id int, d date, ts timestamptz)",
            "insert into t values (1, '1960-01-01', '1960-01-01 00:00:00+00'), "
            "(2, 'infinity', '2024-01-01 00:00:00+00'), (3, '2024-01-01', '-infinity')",
        ]
    )

    out = sync_people(
        warehouse,
        customerio_emulator,
        monkeypatch,
        f"""
        d: {attribute}
        ts: {{column: ts, type: timestamp}}
        """,
    )

    assert out.people == {"1": {"d": -315619200, "ts": -315619200}}
    assert set(out.rejected) == {"2", "3"}
    assert "column `d`" in out.rejected["2"] and "infinity" in out.rejected["2"]
    assert "column `ts`" in out.rejected["3"] and "-infinity" in out.rejected["3"]


@pytest.mark.postgres
@pytest.mark.parametrize("redshift", [False, True])
def test_infinite_dates_and_timestamps_read_as_infinity_on_both_postgres_read_paths(
    postgres_dsn: str, redshift: bool
) -> None:
    """What DuckDB (which maps every model) makes of ±infinity, alone and inside an array: the
    psycopg path failed the read, and ADBC's wrapped integers stayed dates in 5877612 BC
    inside a `date[]`."""
    from lockgate.sources.postgres import PostgresSource, RedshiftSource

    source = (RedshiftSource if redshift else PostgresSource)(postgres_dsn)
    try:
        read = source.read(
            "select 'infinity'::date as d, '-infinity'::timestamp as ts, "
            "'infinity'::timestamptz as tz, '{2024-01-01,-infinity}'::date[] as ds"
        ).read_all()
    finally:
        source.close()
    text = (
        duckdb.connect()
        .from_arrow(read)
        .select("d::varchar, ts::varchar, tz::varchar, ds::varchar")
    )
    assert text.fetchall() == [("infinity", "-infinity", "infinity", "[2024-01-01, -infinity]")]


def test_postgres_money_is_sent_in_its_units_not_in_cents(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not warehouse.postgres:
        pytest.skip("`money` is a Postgres type")
    warehouse.execute(
        [
            "create table t (id int, paid money)",
            "insert into t values (1, 12.34), (2, -0.05), (3, 92233720368547758.07)",
        ]
    )

    out = sync_people(
        warehouse,
        customerio_emulator,
        monkeypatch,
        """
        paid: paid
        paid_text: {column: paid, type: string}
        """,
    )

    assert out.rejected == {}
    assert out.people == {
        "1": {"paid": 12.34, "paid_text": "12.34"},
        "2": {"paid": -0.05, "paid_text": "-0.05"},
        "3": {"paid": 92233720368547758.07, "paid_text": "92233720368547758.07"},
    }


def test_a_postgres_decimal_nan_rejects_its_row_naming_the_column_and_the_fix(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No decimal holds `NaN`: a `numeric(p,s)` holding one stopped the whole read, so no row
    reached Customer.io. It rejects its own row now, as a float NaN does, and the others go
    on; a NaN in a column the sync does not read rejects nothing."""
    if not warehouse.postgres:
        pytest.skip("only Postgres has a decimal `NaN`")
    warehouse.execute(
        [
            'create table t (id int, amount numeric(10,2), "Other" numeric(10,2), '
            "unread numeric(10,2))",
            "insert into t values (1, 1.5, 2, 'NaN'), (2, 'NaN', 3, 1), (3, 2.25, 'NaN', 1), "
            "(4, null, 4.5, null)",
        ]
    )

    out = sync_people(warehouse, customerio_emulator, monkeypatch, "amount: amount\nother: Other")

    assert out.people == {"1": {"amount": 1.5, "other": 2}, "4": {"other": 4.5}}
    assert out.rejected == {
        "2": "column `amount`: value `NaN` is not a finite number (JSON, and so Customer.io, "
        "has no NaN); `nullif(amount, 'NaN') as amount` in the model sends a null instead",
        "3": "column `Other`: value `NaN` is not a finite number (JSON, and so Customer.io, "
        'has no NaN); `nullif("Other", \'NaN\') as "Other"` in the model sends a null instead',
    }
    assert out.report.changes.rejected == 2


def test_a_postgres_decimal_nan_where_a_null_was_delivered_is_rejected_on_every_run(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `NaN` is read as null, so the row hashes as the null delivered before: it must
    still be rejected (and again on the next run), not taken for unchanged and never told."""
    if not warehouse.postgres:
        pytest.skip("only Postgres has a decimal `NaN`")
    warehouse.execute(
        [
            "create table t (id int, amount numeric(10,2), plan text)",
            "insert into t values (1, null, 'pro'), (2, 1.5, 'pro')",
        ]
    )
    first = sync_people(warehouse, customerio_emulator, monkeypatch, "amount: amount\nplan: plan")
    assert first.rejected == {} and first.people == {
        "1": {"plan": "pro"},
        "2": {"amount": 1.5, "plan": "pro"},
    }
    warehouse.execute(["update t set amount = 'NaN'"])

    second = sync_people(warehouse, customerio_emulator, monkeypatch, "amount: amount\nplan: plan")
    third = sync_people(warehouse, customerio_emulator, monkeypatch, "amount: amount\nplan: plan")

    assert set(second.rejected) == set(third.rejected) == {"1", "2"}
    assert "column `amount`: value `NaN`" in third.rejected["1"]
    assert second.people == first.people


def test_a_postgres_decimal_nan_in_an_event_property_rejects_that_event_alone(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not warehouse.postgres:
        pytest.skip("only Postgres has a decimal `NaN`")
    warehouse.execute(
        [
            "create table t (id int, order_id int, total numeric(12,2))",
            "insert into t values (1, 10, 9.99), (1, 11, 'NaN'), (2, 12, 0.5)",
        ]
    )
    write_project(warehouse, customerio_emulator, monkeypatch, "unused: id")
    (warehouse.root / "syncs" / "people.yml").write_text(
        textwrap.dedent(
            """
            name: people
            source: warehouse
            model: {sql: "select * from t"}
            kind: events
            identify_by: {id: id}
            event: {name: {value: purchased}, id: order_id}
            properties: {total: total}
            backfill: {first_run: send}
            """
        )
    )

    report = run_sync(load_project(warehouse.root), "people", console=NullConsole())

    sent = sorted(
        (p.id, e.data["total"])
        for p in customerio_emulator.people()
        for e in customerio_emulator.events(p)
    )
    assert sent == [("1", 9.99), ("2", 0.5)]
    assert dict(report.changes.rejected_samples) == {
        "11": "column `total`: value `NaN` is not a finite number (JSON, and so Customer.io, "
        "has no NaN); `nullif(total, 'NaN') as total` in the model sends a null instead"
    }


def test_a_postgres_decimal_array_holding_nan_rejects_its_row(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An array's items carry no precision: a `numeric(p,s)[]` is read as a list of floats
    on both paths, whose NaN rejects its row as any float's does."""
    if not warehouse.postgres:
        pytest.skip("only Postgres has a decimal `NaN`")
    warehouse.execute(
        [
            "create table t (id int, prices numeric(10,2)[])",
            "insert into t values (1, '{1.5,2}'), (2, '{1,NaN}'), (3, null)",
        ]
    )

    out = sync_people(warehouse, customerio_emulator, monkeypatch, "prices: prices")

    assert out.people == {"1": {"prices": [1.5, 2]}, "3": {}}
    assert set(out.rejected) == {"2"}
    assert "column `prices`" in out.rejected["2"] and "NaN" in out.rejected["2"]


def test_a_two_dimensional_postgres_array_fails_the_run_naming_the_column(
    warehouse: Warehouse,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ADBC sent `{{1,2},{3,4}}` as [1,2,3,4] without a word; the psycopg path failed inside
    Arrow. Both now stop naming the column, and the JSON the hint suggests keeps the nesting."""
    if not warehouse.postgres:
        pytest.skip("a Postgres array's dimensions are its own")
    warehouse.execute(
        [
            "create table t (id int, grid int[][])",
            "insert into t values (1, '{{1,2},{3,4}}'), (2, '{5,6}'), (3, null)",
        ]
    )
    write_project(warehouse, customerio_emulator, monkeypatch, "grid: grid")

    with pytest.raises(SystemExit) as exited:
        main(["sync", "people", "--project", str(warehouse.root)])

    err = capsys.readouterr().err
    assert exited.value.code == 1
    assert "source `warehouse`: column `grid` holds a 2-dimensional array" in err
    assert "would send `{{1,2},{3,4}}` as [1,2,3,4]" in err
    assert "hint: send it as JSON, which keeps the nesting: `array_to_json(grid) as grid`" in err
    assert "Traceback" not in err
    assert customerio_emulator.people() == []

    out = sync_people(
        warehouse,
        customerio_emulator,
        monkeypatch,
        "grid: {column: grid, type: json}",
        sql="select id, array_to_json(grid) as grid from t",
    )
    assert out.rejected == {}
    assert out.people == {"1": {"grid": [[1, 2], [3, 4]]}, "2": {"grid": [5, 6]}, "3": {}}


@pytest.mark.postgres
@pytest.mark.parametrize("array", ["'{1,2}'::int[]", "'1,2'"])
def test_a_postgres_model_ending_in_a_comment_keeps_its_columns(
    postgres_dsn: str, array: str
) -> None:
    """ADBC wraps the model as `COPY (<sql>) TO STDOUT`: a last `-- comment` swallowed the
    closing parenthesis. A model with arrays is also wrapped to count their dimensions, and
    keeps its names (duplicates too) and their order."""
    from lockgate.sources.postgres import PostgresSource

    source = PostgresSource(postgres_dsn)
    try:
        table = source.read(
            f"select 1 as id, {array} as g, 2 as id, 'x' as \"Tags\" -- the last line"
        ).read_all()
    finally:
        source.close()
    assert table.column_names == ["id", "g", "id", "Tags"]
    g = [[1, 2]] if array.endswith("[]") else ["1,2"]
    assert [c.to_pylist() for c in table.columns] == [[1], g, [2], ["x"]]


def test_postgres_interval_citext_and_numeric_arrays_arrive_alike_on_both_read_paths(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg made an interval a `timedelta` of 30-day months (`10276:05:06`), a `money[]`
    and a `numeric[]` the Python text of their list; ADBC's `citext` was listed as `binary`."""
    if not warehouse.postgres:
        pytest.skip("Postgres types")
    warehouse.execute(
        [
            "create extension if not exists citext",
            "create table t (id int, iv interval, e citext, paid money[], n numeric(6,2)[])",
            "insert into t values (1, '1 year 2 mons 3 days 04:05:06', 'A@x.io', "
            "'{1.5,-2}', '{1.25}'), (2, '-1 days -00:00:01.5', 'b', null, null)",
        ]
    )

    out = sync_people(warehouse, customerio_emulator, monkeypatch, "iv: iv\ne: e\npaid: paid\nn: n")

    assert out.rejected == {}
    assert out.people == {
        "1": {
            "iv": "1 year 2 months 3 days 04:05:06",
            "e": "A@x.io",
            "paid": [1.5, -2],
            "n": [1.25],
        },
        "2": {"iv": "-1 day -00:00:01.5", "e": "b"},
    }
    from lockgate.sources.postgres import PostgresSource, RedshiftSource

    source = (RedshiftSource if warehouse.kind == "redshift" else PostgresSource)(warehouse.dsn)
    try:
        listed = {c.name: str(c.arrow_type) for c in source.columns("t")}
    finally:
        source.close()
    assert listed["iv"] == "month_day_nano_interval" and listed["e"] == "string"


@pytest.mark.postgres
def test_intervals_and_money_read_the_same_through_psycopg_as_through_adbc(
    postgres_dsn: str,
) -> None:
    from lockgate.sources.postgres import PostgresSource, RedshiftSource

    intervals = [
        "1 year 2 mons 3 days 04:05:06",
        "-1 years -2 mons +3 days -04:05:06.789",
        "00:00:00",
        "100:00:00.000001",
        "1 mon",
        "-3 days",
        "-00:00:00.5",
        "177999999 years",
    ]
    sql = " union all ".join(
        f"select {i} as i, '{v}'::interval as iv, ({i} * -1234.5)::money as m"
        for i, v in enumerate(intervals)
    )
    read = []
    for kind in (PostgresSource, RedshiftSource):
        source = kind(postgres_dsn)
        try:
            read.append(source.read(sql + " order by i").read_all())
        finally:
            source.close()
    assert read[0].schema == read[1].schema
    assert read[1].to_pylist() == read[0].to_pylist()


@pytest.mark.postgres
def test_a_read_flagging_nan_keeps_the_decimal_type_and_flags_the_rows_on_both_paths(
    postgres_dsn: str,
) -> None:
    """Asked to (as a sync's extract asks), both paths read a `numeric(p,s)` `NaN` as null in
    the column, which keeps its decimal type (`schema_of`'s, so type drift sees no change), and
    say which rows held one in a flag column after the result's own (a NaN in the first
    batch and in the last). Asked nothing (an identity source's read), the read stops naming
    the column."""
    from lockgate.sources.postgres import PostgresSource, RedshiftSource

    sql = (
        "select i, case when i in (3, 2500) then 'NaN' else i / 4.0 end::numeric(10,2) as amount, "
        "i::money as paid, 'NaN'::numeric as bare from generate_series(1, 2500) as g(i) order by i"
    )
    for kind in (PostgresSource, RedshiftSource):
        source = kind(postgres_dsn)
        try:
            table = source.read(sql, batch_rows=1_000, flag_nan=True).read_all()
            assert table.schema.names == ["i", "amount", "paid", "bare", "__nan_amount"]
            assert table.schema.remove(4).equals(source.schema_of(sql))
            assert table.schema.field("amount").type == pa.decimal128(10, 2)
            amount = table.column("amount").to_pylist()
            flagged = table.column("__nan_amount").to_pylist()
            assert [i for i, flag in enumerate(flagged, 1) if flag] == [3, 2500]
            assert amount[2] is None and amount[2499] is None and str(amount[3]) == "1.00"
            with pytest.raises(SourceError, match="column `amount` holds a numeric `NaN`"):
                source.read(sql, batch_rows=1_000).read_all()
        finally:
            source.close()


def test_postgres_numeric_wider_than_38_digits_syncs_as_a_number(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not warehouse.postgres:
        pytest.skip("only Postgres has decimals wider than 38 digits")
    warehouse.execute(
        [
            "create table t (id int, amount numeric(50,10))",
            "insert into t values (1, 1.25), (2, -12345678901234567890.5)",
        ]
    )

    out = sync_people(warehouse, customerio_emulator, monkeypatch, "amount: amount")

    assert out.report.status == "success"
    assert out.people == {"1": {"amount": 1.25}, "2": {"amount": -1.2345678901234567e19}}


def typed(people: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple[str, Any]]]:
    """Each attribute with its JSON type: `5` and `5.0` are equal in Python, not in Liquid."""
    return {p: {k: (type(v).__name__, v) for k, v in a.items()} for p, a in people.items()}


def test_whole_numbers_are_sent_as_integers_whatever_the_column_type(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `sum()` is a HUGEINT in DuckDB, a bare `numeric` in Postgres and a NUMBER(38,0) in
    Snowflake; money is often a decimal, and a ratio a double. A whole value of any of them
    reaches Customer.io as an integer (`5`, as JSON tools write it), not `5.0`, which Liquid
    prints as `5.0`; a NUMBER(38,0) keeps every digit; a fraction stays a number."""
    warehouse.execute(
        [
            "create table t (id int, n bigint, big numeric(38,0), price numeric(10,2), "
            "ratio double precision, neg double precision)",
            "insert into t values (1, 2, 9007199254740993, 5.00, 100.0, -0.0), "
            "(1, 3, 9007199254740993, 5.00, 100.0, -0.0), "
            "(2, 1, -42, 19.99, 0.5, -7.0)",
        ]
    )
    sql = (
        # an aggregate of a numeric is a bare `numeric` in Postgres, read as a double: the
        # cast keeps its digits (docs/sources.md)
        "select id, sum(n) as total, cast(max(big) as numeric(38,0)) as big, "
        "cast(max(price) as numeric(10,2)) as price, "
        "max(ratio) as ratio, max(neg) as neg, max(n) as n from t group by id"
    )

    out = sync_people(
        warehouse,
        customerio_emulator,
        monkeypatch,
        """
        total: total
        big: big
        price: price
        ratio: ratio
        neg: neg
        n_number: {column: n, type: number}
        price_number: {column: price, type: number}
        """,
        sql=sql,
    )

    assert out.rejected == {}
    assert typed(out.people) == {
        "1": {
            "total": ("int", 5),
            "big": ("int", 9007199254740993),
            "price": ("int", 5),
            "ratio": ("int", 100),
            "neg": ("int", 0),
            "n_number": ("int", 3),
            "price_number": ("int", 5),
        },
        "2": {
            "total": ("int", 1),
            "big": ("int", -42),
            "price": ("float", 19.99),
            "ratio": ("float", 0.5),
            "neg": ("int", -7),
            "n_number": ("int", 1),
            "price_number": ("float", 19.99),
        },
    }


def test_fixed_width_char_columns_are_sent_without_their_padding(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres pads `char(n)` with spaces (which its own comparisons and `::text` ignore);
    DuckDB and Snowflake do not: Customer.io gets `ab` from all three, and inner and leading
    spaces stay."""
    warehouse.execute(
        [
            "create table t (id int, code char(6))",
            "insert into t values (1, 'ab'), (2, ' a b'), (3, null)",
        ]
    )

    out = sync_people(warehouse, customerio_emulator, monkeypatch, "code: code")

    assert out.rejected == {}
    assert out.people == {"1": {"code": "ab"}, "2": {"code": " a b"}, "3": {}}


@pytest.mark.postgres
@pytest.mark.parametrize("redshift", [False, True])
def test_char_padding_is_dropped_on_both_postgres_read_paths(
    postgres_dsn: str, redshift: bool
) -> None:
    from lockgate.sources.postgres import PostgresSource, RedshiftSource

    source = (RedshiftSource if redshift else PostgresSource)(postgres_dsn)
    try:
        rows = source.read("select 'ab'::char(6) as code, ' a'::char(3) as other").read_all()
    finally:
        source.close()
    assert rows.to_pylist() == [{"code": "ab", "other": " a"}]


def test_a_boolean_field_rejects_nan_and_takes_infinity_as_true(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `NaN <> 0` holds, so a NaN used to reach Customer.io as `true`
    warehouse.execute(
        [
            "create table t (id int, score double precision)",
            "insert into t values (1, 1.5), (2, 0), (3, 'NaN'), (4, 'inf'), (5, '-inf')",
        ]
    )

    out = sync_people(
        warehouse, customerio_emulator, monkeypatch, "active: {column: score, type: boolean}"
    )

    assert out.people == {
        "1": {"active": True},
        "2": {"active": False},
        "4": {"active": True},
        "5": {"active": True},
    }
    assert set(out.rejected) == {"3"}
    assert "column `score` (field `active`)" in out.rejected["3"]
    assert "is not a boolean" in out.rejected["3"]


def test_a_string_field_rejects_nan_and_infinity_as_a_number_field_does(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse.execute(
        [
            "create table t (id int, score double precision)",
            "insert into t values (1, 2.5), (2, 'NaN'), (3, '-inf')",
        ]
    )

    out = sync_people(
        warehouse, customerio_emulator, monkeypatch, "score: {column: score, type: string}"
    )

    assert out.people == {"1": {"score": "2.5"}}
    assert set(out.rejected) == {"2", "3"}
    assert all("column `score` (field `score`)" in r for r in out.rejected.values())
    assert all("is not a finite number" in r for r in out.rejected.values())


@pytest.mark.parametrize(
    ("column_type", "values"),
    [
        ("double precision", "(1, 3.0), (2, 2.5), (3, 'NaN'), (4, 'inf')"),
        ("varchar(20)", "(1, ' 3 '), (2, '2.5'), (3, 'NaN'), (4, 'three')"),
    ],
)
def test_an_integer_field_rejects_a_fraction_instead_of_rounding_it(
    warehouse: Warehouse,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    column_type: str,
    values: str,
) -> None:
    # the cast rounded: 2.5 was sent as 2 (from a double or text) or 3 (from a decimal)
    warehouse.execute(
        [f"create table t (id int, seats {column_type})", f"insert into t values {values}"]
    )

    out = sync_people(
        warehouse, customerio_emulator, monkeypatch, "seats: {column: seats, type: integer}"
    )

    assert out.people == {"1": {"seats": 3}}
    assert set(out.rejected) == {"2", "3", "4"}
    assert all("column `seats` (field `seats`)" in r for r in out.rejected.values())
    assert all("is not an integer" in r for r in out.rejected.values())


def test_a_json_field_rejects_text_holding_nan_or_infinity(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DuckDB's JSON reader accepts `NaN` and `Infinity` (a Snowflake VARIANT writes them), and
    # the text went out as it was: invalid JSON, and Customer.io refused the whole batch
    warehouse.execute(
        [
            "create table t (id int, prefs varchar(100))",
            """insert into t values (1, '{"note": "NaN or Infinity", "info": 1e3}'), """
            """(2, '{"score": NaN}'), (3, '[1, -Infinity]'), (4, '{"a": [nan]}')""",
        ]
    )

    out = sync_people(
        warehouse, customerio_emulator, monkeypatch, "prefs: {column: prefs, type: json}"
    )

    assert out.people == {"1": {"prefs": {"note": "NaN or Infinity", "info": 1000}}}
    assert set(out.rejected) == {"2", "3", "4"}
    assert all("column `prefs` (field `prefs`)" in r for r in out.rejected.values())
    assert all("is not valid JSON" in r for r in out.rejected.values())


@pytest.mark.parametrize("attribute", ["scores", "{column: scores, type: json}"])
def test_a_list_of_floats_holding_nan_or_infinity_rejects_its_row(
    warehouse: Warehouse,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    attribute: str,
) -> None:
    # `to_json` wrote `[1.0,NaN]`: invalid JSON, and Customer.io refused the whole batch
    if warehouse.kind == "snowflake":
        pytest.skip("a Snowflake ARRAY arrives as JSON text (see the json-field test)")
    if warehouse.postgres:
        rows = "(1, '{1.5,2}'), (2, '{1,NaN}'), (3, '{-Infinity,null}'), (4, '{}'), (5, null)"
    else:
        nan, inf = "'nan'::double", "'-inf'::double"
        rows = f"(1, [1.5, 2]), (2, [1, {nan}]), (3, [{inf}, null]), (4, []), (5, null)"
    warehouse.execute(
        ["create table t (id int, scores double precision[])", f"insert into t values {rows}"]
    )

    out = sync_people(warehouse, customerio_emulator, monkeypatch, f"scores: {attribute}")

    assert out.people == {"1": {"scores": [1.5, 2.0]}, "4": {"scores": []}, "5": {}}
    assert set(out.rejected) == {"2", "3"}
    assert all("column `scores` (field `scores`)" in r for r in out.rejected.values())
    assert "nan" in out.rejected["2"] and "-inf" in out.rejected["3"]


def test_structs_maps_and_nested_lists_holding_nan_or_infinity_reject_their_row(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DuckDB's own nested types; a string member spelling `NaN` is no reason to reject
    if warehouse.kind != "duckdb":
        pytest.skip("structs and maps are DuckDB types")
    # `t` has a backslash and quotes: the list of structs is checked on its JSON text;
    # `d` only has a member named `double`
    good = (
        "{'score': 1.5, 'note': 'NaN'}, map(['k'], [2.0]), "
        """[{'x': [1.0], 't': 'say "Infinity" \\'}], [1.0]::float[1], """
        "[[1.0], [2.0]], union_value(s := 'NaN'), [{'double': 1}]"
    )
    none = "null, null, null, null, null, null, null"
    warehouse.execute(
        [
            "create table t (id int, s struct(score double, note varchar), "
            "m map(varchar, double), ls struct(x double[], t varchar)[], a float[1], "
            'll double[][], u union(n double, s varchar), d struct("double" integer)[])',
            f"insert into t values (1, {good}), (2, {none})",
            "insert into t (id, s) values (3, {'score': 'inf'::double, 'note': 'a'})",
            "insert into t (id, m) values (4, map(['k'], ['nan'::double]))",
            """insert into t (id, ls) values (5, [{'x': [1.0], 't': '"'}, """
            "{'x': [2.0, '-inf'::double], 't': null}])",
            "insert into t (id, a) values (6, ['nan'::float])",
            "insert into t (id, ll) values (7, [[1.0], ['inf'::double]])",
            "insert into t (id, u) values (8, union_value(n := 'nan'::double))",
        ]
    )

    out = sync_people(
        warehouse,
        customerio_emulator,
        monkeypatch,
        """
        s: s
        m: {column: m, type: json}
        ls: ls
        a: {column: a, type: json}
        ll: ll
        u: u
        d: d
        """,
    )

    assert out.people == {
        "1": {
            "s": {"score": 1.5, "note": "NaN"},
            "m": {"k": 2.0},
            "ls": [{"x": [1.0], "t": 'say "Infinity" \\'}],
            "a": [1.0],
            "ll": [[1.0], [2.0]],
            "u": {"s": "NaN"},
            "d": [{"double": 1}],
        },
        "2": {},
    }
    assert set(out.rejected) == {"3", "4", "5", "6", "7", "8"}
    for key, column in {"3": "s", "4": "m", "5": "ls", "6": "a", "7": "ll", "8": "u"}.items():
        assert f"column `{column}` (field `{column}`)" in out.rejected[key]
        assert "NaN or Infinity" in out.rejected[key]


@pytest.mark.parametrize(
    ("column_type", "rows", "bad"),
    [
        ("double precision", "(7, 'pro'), (2.5, 'free'), (1e16, 'team')", 2),
        ("numeric(10,2)", "(7, 'pro'), (2.5, 'free')", 1),
    ],
)
def test_a_numeric_identifier_names_the_person_by_its_integer(
    warehouse: Warehouse,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    column_type: str,
    rows: str,
    bad: int,
) -> None:
    """An id column typed float or decimal (a bare Postgres `numeric` arrives as a float, a
    Snowflake NUMBER(10,2) as a decimal) names the person `7`, not `7.0` or `7.00`, which
    would be people of their own. A fraction, or a float too large to be exact, would name
    a wrong person: the row is rejected naming the column."""
    warehouse.execute(
        [
            f"create table t (id {column_type}, plan varchar(10))",
            f"insert into t values {rows}",
        ]
    )
    out = sync_people(warehouse, customerio_emulator, monkeypatch, "plan: plan")
    assert out.people == {"7": {"plan": "pro"}}
    assert len(out.rejected) == bad
    for reason in out.rejected.values():
        assert reason.startswith("column `id` (identifier `id`): value `")
        assert "is not a whole number" in reason
    assert out.report.delivered == 1


def test_postgres_only_types_are_sent_as_their_text_on_both_read_paths(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADBC hands over a type Arrow lacks (`inet`, `timetz`, ranges, ...) as its binary wire
    form: an IP address reached Customer.io as `\\x02\\x18\\x00\\x04\\xC0...`, while the
    Redshift path sent `192.168.0.1/24`. Both now send what `::text` gives, and a re-run sends
    nothing."""
    if not warehouse.postgres:
        pytest.skip("Postgres types")
    warehouse.execute(
        [
            "create table t (id int, ip inet, net cidr, mac macaddr, at timetz, flags bit(5), "
            "span int4range, doc xml, ips inet[])",
            "insert into t values (1, '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', "
            "'12:00:00+05:30', B'10110', '[1,5)', '<a>x</a>', '{1.1.1.1,::1}'), "
            "(2, null, null, null, null, null, 'empty', null, '{}')",
        ]
    )
    attributes = (
        "ip: ip\nnet: net\nmac: mac\nat: at\nflags: flags\nspan: span\ndoc: doc\nips: ips\n"
        "pair: pair"
    )
    sql = "select t.*, row(id, ip) as pair from t"  # a record, which ADBC could not read at all

    out = sync_people(warehouse, customerio_emulator, monkeypatch, attributes, sql)

    assert out.rejected == {}
    # an array of such a type is a list from ADBC and one text on the Redshift path
    ips = ["1.1.1.1", "::1"] if warehouse.kind == "postgres" else "{1.1.1.1,::1}"
    assert out.people == {
        "1": {
            "ip": "192.168.0.1/24",
            "net": "10.0.0.0/8",
            "mac": "08:00:2b:01:02:03",
            "at": "12:00:00+05:30",
            "flags": "10110",
            "span": "[1,5)",
            "doc": "<a>x</a>",
            "ips": ips,
            "pair": "(1,192.168.0.1/24)",
        },
        "2": {"span": "empty", "ips": [] if warehouse.kind == "postgres" else "{}", "pair": "(2,)"},
    }
    again = sync_people(warehouse, customerio_emulator, monkeypatch, attributes, sql)
    assert again.report.changes.to_send == 0
    from lockgate.sources.postgres import PostgresSource, RedshiftSource

    source = (RedshiftSource if warehouse.kind == "redshift" else PostgresSource)(warehouse.dsn)
    try:
        listed = {c.name: str(c.arrow_type) for c in source.columns("t")}
    finally:
        source.close()
    assert listed["ip"] == listed["at"] == listed["span"] == "string"


def test_dates_outside_years_1_to_9999_and_midnight_24_00_read_on_both_postgres_paths(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres and Redshift keep dates from 4713 BC to 294276 AD and a `time` of `24:00:00`;
    Python's do not. One such value (a typo like `20241-01-01`) failed the whole read on the
    Redshift path, with no column named, while ADBC read it."""
    if not warehouse.postgres:
        pytest.skip("Postgres dates and times")
    warehouse.execute(
        [
            "create table t (id int, d date, ts timestamp, tz timestamptz, tm time)",
            "insert into t values (1, '0044-03-15 BC', '0044-03-15 12:00:00.5 BC', "
            "'20241-01-01 00:00:00+02', '24:00:00'), "
            "(2, '20241-01-01', '20241-01-01 00:00:00', '0001-01-01 00:00:00+00 BC', '00:00:00')",
        ]
    )

    out = sync_people(
        warehouse,
        customerio_emulator,
        monkeypatch,
        "d: d\nts: ts\ntz: tz\ntm: tm\nds: {column: d, type: string}",
    )

    assert out.report.status == "success" and out.rejected == {}
    assert out.people == {
        "1": {
            "d": -63517824000,
            "ts": -63517780800,
            "tz": 576577087200,
            "tm": "24:00:00",
            "ds": "0044-03-15 (BC)",
        },
        "2": {
            "d": 576577094400,
            "ts": 576577094400,
            "tz": -62167219200,
            "tm": "00:00:00",
            "ds": "20241-01-01",
        },
    }


@pytest.mark.postgres
def test_dates_and_times_python_cannot_hold_read_the_same_through_psycopg_as_through_adbc(
    postgres_dsn: str,
) -> None:
    """In arrays too, and in a session zone whose old offsets have seconds (`+00:19:32`)."""
    from lockgate.sources.postgres import PostgresSource, RedshiftSource

    url = f"{postgres_dsn}?options=-c%20TimeZone%3DEurope/Amsterdam"
    sql = (
        "select array['24:00:00'::time, '01:00', null] as times, "
        "array['20241-01-01'::date, '0001-01-01 BC', '2020-01-01'] as dates, "
        "'1800-01-01 00:00:00+00'::timestamptz as lmt, "
        "'0100-01-01 00:00:00.25+00 BC'::timestamptz as bc, "
        "'20241-06-01 12:30:00-07'::timestamptz as far, "
        "'0044-03-15 23:59:59.999999 BC'::timestamp as ides"
    )
    read = []
    for kind in (PostgresSource, RedshiftSource):
        source = kind(url)
        try:
            read.append(source.read(sql).read_all())
        finally:
            source.close()
    assert read[0].schema == read[1].schema
    assert read[1].equals(read[0])
    assert read[0].column("far").cast(pa.int64()).to_pylist() == [576590211000000000]


def test_a_single_precision_float_is_sent_as_the_number_it_holds_not_its_widened_double(
    warehouse: Warehouse, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `real` 19.99 reached Customer.io as 19.989999771118164 from Postgres, Redshift and
    DuckDB (`FLOAT`), and as 19.99 from Snowflake, whose `FLOAT` is a double: each float32 is
    now sent as the shortest number that reads back as it, as the warehouse prints it."""
    single = "float" if warehouse.kind in ("duckdb", "snowflake") else "real"
    warehouse.execute(
        [
            f"create table t (id int, price {single}, prices {single}[])"
            if warehouse.kind != "snowflake"
            else "create table t (id int, price float, prices array)",
            "insert into t values (1, 19.99, null), (2, 3, null), (3, 1e-7, null), "
            "(4, -0.1, null), (5, null, null)",
        ]
    )
    attributes = (
        "price: price\nas_number: {column: price, type: number}\n"
        "as_json: {column: price, type: json}"
    )
    if warehouse.kind != "snowflake":  # whose ARRAY is JSON text
        literal = "[19.99, 2]" if warehouse.kind == "duckdb" else "'{19.99, 2}'"
        warehouse.execute([f"insert into t values (6, null, {literal})"])
        attributes += "\nprices: prices"

    out = sync_people(warehouse, customerio_emulator, monkeypatch, attributes)

    assert out.rejected == {}

    def sent(kind: str, value: float) -> dict[str, tuple[str, float]]:
        return {"price": (kind, value), "as_number": (kind, value), "as_json": (kind, value)}

    assert typed(out.people) == {
        "1": sent("float", 19.99),
        "2": sent("int", 3),
        "3": sent("float", 1e-7),
        "4": sent("float", -0.1),
        "5": {},
        **({} if warehouse.kind == "snowflake" else {"6": {"prices": ("list", [19.99, 2])}}),
    }


@pytest.mark.parametrize(
    "ending", [";\\n-- the end", "; -- the end;", " -- the end", ";\\n/* done; */ ;"]
)
def test_a_model_ending_in_a_semicolon_or_a_comment_syncs_and_validates_on_every_warehouse(
    warehouse: Warehouse,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ending: str,
) -> None:
    """A `.sql` model as editors leave it, `select ...;` and a comment after. Postgres failed
    the run (`COPY (select ...;` is a syntax error), and `validate --connect` failed on
    Postgres and Snowflake, whose `limit 0` probe put the closing parenthesis in the comment."""
    warehouse.execute(
        [
            "create table t (id int, plan varchar(20))",
            "insert into t values (1, 'pro'), (2, 'it''s; -- not')",
        ]
    )

    out = sync_people(
        warehouse, customerio_emulator, monkeypatch, "plan: plan", sql=f"select * from t{ending}"
    )

    assert out.report.status == "success"
    assert out.people == {"1": {"plan": "pro"}, "2": {"plan": "it's; -- not"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fakesnow's DuckDB copy warning
        main(["validate", "--connect", "--project", str(warehouse.root)])
    assert "model" in capsys.readouterr().out


def test_a_postgres_table_named_with_capitals_unquoted_gets_a_hint_naming_it_quoted(
    warehouse: Warehouse,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sources inspect` lists `Analytics.Users` and finds it as `--table Analytics.Users`;
    the same name as a model's `table:` is `analytics.users` to Postgres, which does not
    exist. The error said to check the SQL against `inspect`, which showed just that name."""
    if not warehouse.postgres:
        pytest.skip("Postgres folds unquoted names to lower case")
    warehouse.execute(
        [
            'drop schema if exists "Analytics" cascade',
            'create schema "Analytics"',
            'create table "Analytics"."Users" (id int, plan text)',
            'insert into "Analytics"."Users" values (1, \'pro\')',
        ]
    )
    write_project(warehouse, customerio_emulator, monkeypatch, "plan: plan")
    sync_file = warehouse.root / "syncs" / "people.yml"
    sync_file.write_text(
        sync_file.read_text().replace(
            'model: {sql: "select * from t"}', "model: {table: Analytics.Users}"
        )
    )

    with pytest.raises(SystemExit):
        main(["sync", "people", "--project", str(warehouse.root)])

    err = " ".join(capsys.readouterr().err.split())
    assert 'relation "analytics.users" does not exist' in err
    assert 'hint: did you mean `"Analytics"."Users"`?' in err
    assert "Postgres reads an unquoted name in lower case" in err
    assert customerio_emulator.people() == []

    # quoted, as the hint says (the model's SQL is in a YAML string, hence `\\"`)
    quoted = '\\"Analytics\\".\\"Users\\"'
    out = sync_people(
        warehouse, customerio_emulator, monkeypatch, "plan: plan", f"select * from {quoted}"
    )
    assert out.people == {"1": {"plan": "pro"}}
