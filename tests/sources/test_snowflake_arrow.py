"""What Snowflake itself sends, through the official connector, reaches Customer.io right.

The other Snowflake tests run on fakesnow, which encodes a result from DuckDB's types; these
answer the model's query in Snowflake's own encoding (`tests/sources/snowflake_real.py`: a
`NUMBER(p,s)` as a scaled integer, timestamps as epoch/fraction structs, the session's time
zone `America/Los_Angeles`), so the connector's own `fetch_arrow_batches` conversion runs as it
does against an account, and a people sync sends the rows to the emulator.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from tests.sources.snowflake_real import TABLE, Column, Result, Server, real_server, timestamps

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.errors import StepError
from lockgate.project.loader import load_project
from lockgate.sync.run import RunReport, run_sync

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# 2024-03-01 12:30:00 UTC (14:30 at +02:00); 2023-12-31 23:59:59(.5) UTC; 9999-12-31 23:59:59
MARCH = 1709296200
NEW_YEAR = 1704067199
END = 253402300799


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with real_server(Result([])) as running:
        yield running


@pytest.fixture
def snowflake(server: Server, monkeypatch: pytest.MonkeyPatch) -> Result:
    """Every connection the connector opens goes to the server; the result it answers with."""
    import snowflake.connector

    where, result = server
    real = snowflake.connector.connect

    def to_server(**kwargs: Any) -> Any:
        return real(**{**kwargs, **where})

    monkeypatch.setattr(snowflake.connector, "connect", to_server)
    return result


Synced = tuple[RunReport, dict[str, dict[str, Any]]]


@pytest.fixture
def sync(
    snowflake: Result,
    tmp_path: Path,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[str], Synced]:
    """Run a people sync keyed by `id` over `select * from REAL_SHAPED` sending ``attributes``
    (YAML, one a line); the run's report and what Customer.io holds."""
    return lambda attributes: _sync(tmp_path, customerio_emulator, monkeypatch, attributes)


def _sync(
    root: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, attributes: str
) -> Synced:
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "pw")
    (root / "syncs").mkdir(exist_ok=True)
    (root / "lockgate.yml").write_text(
        "name: t\nsources:\n  warehouse: {type: snowflake, account: lg, user: t, "
        "password: '${SNOWFLAKE_PASSWORD}', database: LG, schema: PUBLIC}\n"
        "destinations:\n  customerio:\n"
        f"    type: customerio\n    track_url: {emulator.base_url}\n"
    )
    body = f"""
        name: people
        source: warehouse
        model: {{sql: "select * from {TABLE.lower()}"}}
        kind: people
        primary_key: id
        identify_by: {{id: id}}
        attributes:
    """
    (root / "syncs" / "people.yml").write_text(
        textwrap.dedent(body) + textwrap.indent(textwrap.dedent(attributes).strip(), "  ") + "\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = run_sync(load_project(root), "people", console=NullConsole())
    people = {p.id: dict(p.attributes) for p in emulator.people() if p.id is not None}
    return report, people


def test_number_with_a_scale_keeps_every_digit(
    snowflake: Result, sync: Callable[[str], Synced]
) -> None:
    # NUMBER(18,2) comes as int64 hundredths: the connector's default made each a float64, so
    # 1234567890123456.78 arrived as ...456.75 and 9999999999999999.99 (1e16 as a float) failed
    # the whole run, no NUMBER(18,2) holding it
    snowflake.columns = [
        Column("ID", "FIXED", pa.array([1, 2, 3, 4], pa.int8()), 38, 0),
        Column(
            "BALANCE",
            "FIXED",
            pa.array([1999, 123456789012345678, 999999999999999999, None], pa.int64()),
            18,
            2,
        ),
    ]

    report, people = sync(
        """
        balance: balance
        balance_text: {column: balance, type: string}
        """,
    )

    assert dict(report.changes.rejected_samples) == {}
    assert people == {
        "1": {"balance": 19.99, "balance_text": "19.99"},
        "2": {"balance": 1234567890123456.78, "balance_text": "1234567890123456.78"},
        "3": {"balance": 9999999999999999.99, "balance_text": "9999999999999999.99"},
        "4": {},
    }


def test_timestamps_of_every_kind_arrive_as_the_instant_they_name(
    snowflake: Result, sync: Callable[[str], Synced]
) -> None:
    # TIMESTAMP_NTZ(9) of 9999-12-31 23:59:59.999999999 overflowed the connector's nanoseconds
    # and failed the whole run; TZ and LTZ come stamped with the session's zone
    snowflake.columns = [
        Column("ID", "FIXED", pa.array([1, 2, 3], pa.int8()), 38, 0),
        Column(
            "VALID_TO",
            "TIMESTAMP_NTZ",
            timestamps([(MARCH, 0), None, (END, 999_999_999)]),
            0,
            9,
        ),
        Column(
            "SIGNED_UP_AT",
            "TIMESTAMP_TZ",
            timestamps([(MARCH, 0), None, (NEW_YEAR, 500_000_000)], tz_minutes=120),
            0,
            9,
            16,
        ),
        Column(
            "SEEN_AT",
            "TIMESTAMP_LTZ",
            timestamps([(MARCH, 0), None, (NEW_YEAR, 500_000_000)]),
            0,
            9,
        ),
        Column("OPENS_AT", "TIME", pa.array([9 * 3600 * 10**9, None, 1], pa.int64()), 0, 9),
        Column("PREFS", "VARIANT", pa.array(['{\n  "plan": "pro"\n}', None, '"free"'])),
    ]

    report, people = sync(
        """
        valid_to: valid_to
        signed_up_at: signed_up_at
        seen_at: seen_at
        opens_at: opens_at
        prefs: prefs
        """,
    )

    assert dict(report.changes.rejected_samples) == {}
    assert people == {
        "1": {
            "valid_to": MARCH,
            "signed_up_at": MARCH,
            "seen_at": MARCH,
            "opens_at": "09:00:00",
            "prefs": {"plan": "pro"},
        },
        "2": {},
        "3": {
            "valid_to": END,
            "signed_up_at": NEW_YEAR,
            "seen_at": NEW_YEAR,
            "opens_at": "00:00:00",
            "prefs": "free",
        },
    }


def _child(name: str, kind: pa.DataType, logical: str, nullable: bool = True) -> pa.Field:
    """A field inside a structured value, with the metadata Snowflake gives it."""
    return pa.field(name, kind, nullable, metadata={"logicalType": logical, "scale": "0"})


def test_vectors_and_structured_values_arrive_as_the_json_they_hold(
    snowflake: Result, sync: Callable[[str], Synced]
) -> None:
    # a VECTOR (and, with structured types on, an OBJECT(...) or MAP) comes as an Arrow list,
    # struct or map, which Lockgate's text type could not take: the whole run failed
    vector = pa.FixedSizeListArray.from_arrays(
        pa.array([1.5, 2, 3, 4, 5, 6], pa.float32()),
        type=pa.list_(_child("item", pa.float32(), "REAL"), 3),
    )
    address = pa.StructArray.from_arrays(
        [pa.array(["Oslo", "Lyon"]), pa.array([150, None], pa.int16())],
        fields=[
            _child("city", pa.string(), "TEXT"),
            _child("zip", pa.int16(), "FIXED"),
        ],
        mask=pa.array([False, True]),
    )
    counts = pa.MapArray.from_arrays(
        pa.array([0, 2, 2], pa.int32()),
        pa.array(["a", "b"]),
        pa.array([1, 2], pa.int64()),
        type=pa.map_(
            _child("key", pa.string(), "TEXT", False), _child("value", pa.int64(), "FIXED")
        ),
    )
    snowflake.columns = [
        Column("ID", "FIXED", pa.array([1, 2], pa.int8()), 38, 0),
        Column("EMBEDDING", "VECTOR", vector),
        Column("ADDRESS", "OBJECT", address),
        Column("COUNTS", "MAP", counts),
    ]

    report, people = sync(
        """
        embedding: embedding
        address: address
        counts: counts
        """,
    )

    assert dict(report.changes.rejected_samples) == {}
    assert people == {
        "1": {
            "embedding": [1.5, 2, 3],
            "address": {"city": "Oslo", "zip": 150},
            "counts": {"a": 1, "b": 2},
        },
        "2": {"embedding": [4, 5, 6], "counts": {}},
    }


def test_numbers_in_vectors_and_structured_values_arrive_as_the_same_column_alone_would(
    snowflake: Result, sync: Callable[[str], Synced], customerio_emulator: Emulator
) -> None:
    # a nested number was Python's JSON of it: a VECTOR's 32-bit 0.1 as 0.10000000149011612
    # (a single-precision float is sent as the 0.1 the warehouse prints), a whole float as `2.0`
    # (which Liquid prints as `2.0`; a whole number is sent as an integer), and a whole NUMBER
    # past JSON's integers as every digit (a double alone). A fraction of a NUMBER(38,10) is a
    # double, nested or not (docs/sync.md: send it as text to keep every digit)
    vector = pa.FixedSizeListArray.from_arrays(
        pa.array([0.1, 2, 19.99], pa.float32()),
        type=pa.list_(_child("item", pa.float32(), "REAL"), 3),
    )
    big, fraction = Decimal("1" + "0" * 25), Decimal("12345678901234567.1234567891")
    amounts = pa.array([Decimal(7), big, fraction], pa.decimal128(38, 10))
    snowflake.columns = [
        Column("ID", "FIXED", pa.array([1], pa.int8()), 38, 0),
        Column("EMBEDDING", "VECTOR", vector),
        Column(
            "TOTALS",
            "OBJECT",
            pa.StructArray.from_arrays(
                [amounts[i : i + 1] for i in range(3)],
                fields=[
                    pa.field(n, amounts.type, metadata={"logicalType": "FIXED", "scale": "10"})
                    for n in ("whole", "big", "fraction")
                ],
            ),
        ),
        Column("WHOLE", "FIXED", amounts[0:1], 38, 10),
        Column("BIG", "FIXED", amounts[1:2], 38, 10),
        Column("FRACTION", "FIXED", amounts[2:3], 38, 10),
    ]
    since = len(customerio_emulator.request_log())

    report, people = sync(
        """
        embedding: embedding
        totals: totals
        whole: whole
        big: big
        fraction: fraction
        """,
    )

    assert dict(report.changes.rejected_samples) == {}
    [batch] = [r.body for r in customerio_emulator.request_log()[since:] if r.method == "POST"]
    sent = batch["batch"][0]["attributes"]
    alone = {k: sent[k] for k in ("whole", "big", "fraction")}
    assert sent["embedding"] == [0.1, 2, 19.99]
    assert [type(v) for v in sent["embedding"]] == [float, int, float]
    assert sent["totals"] == alone and [type(v) for v in sent["totals"].values()] == [
        type(v) for v in alone.values()
    ]
    assert alone == {"whole": 7, "big": 1e25, "fraction": float(fraction)}
    assert people["1"]["totals"] == alone


def test_a_number_beyond_64_bits_stops_the_run_naming_the_column_and_the_fix(
    snowflake: Result, sync: Callable[[str], Synced], customerio_emulator: Emulator
) -> None:
    # a chunk of NUMBER(38,0) with a value past int64 comes as decimal128(38,0): the run
    # stopped with Arrow's "Integer value out of bounds", naming no column
    snowflake.columns = [
        Column("ID", "FIXED", pa.array([1, 2], pa.int8()), 38, 0),
        Column(
            "CRM_ID",
            "FIXED",
            pa.array([Decimal(2**63), Decimal(7)], pa.decimal128(38, 0)),
            38,
            0,
        ),
    ]

    with pytest.raises(StepError) as caught:
        sync("crm_id: crm_id")

    assert "column `crm_id` holds a NUMBER beyond 64-bit integers" in str(caught.value)
    assert "`to_varchar(crm_id) as crm_id`" in (caught.value.hint or "")
    assert customerio_emulator.people() == []


def test_the_other_types_arrive_as_customerio_takes_them(
    snowflake: Result, sync: Callable[[str], Synced]
) -> None:
    # what the docs' table of Snowflake types says reaches Customer.io
    point = '{\n  "coordinates": [\n    10.75,\n    59.91\n  ],\n  "type": "Point"\n}'
    snowflake.columns = [
        Column("ID", "FIXED", pa.array([1, 2, 3], pa.int8()), 38, 0),
        Column("VISITS", "FIXED", pa.array([5, 9_007_199_254_740_993, None], pa.int64()), 38, 0),
        Column("SCORE", "REAL", pa.array([2.5, None, float("nan")])),
        Column("NAME", "TEXT", pa.array(["Zoë", None, "x"])),
        Column("ACTIVE", "BOOLEAN", pa.array([True, None, False])),
        Column("BORN", "DATE", pa.array([19_000, None, 0], pa.date32())),
        Column("TOKEN", "BINARY", pa.array([b"\x01\xff", None, b""])),
        Column("HOME", "OBJECT", pa.array([point, None, None]), sql_type="GEOGRAPHY"),
        Column("TAGS", "ARRAY", pa.array(['[\n  "a",\n  "b"\n]', None, "[]"])),
    ]

    report, people = sync(
        """
        visits: visits
        score: score
        name: name
        active: active
        born: born
        token: token
        home: home
        home_json: {column: home, type: json}
        tags: tags
        """,
    )

    rejected = dict(report.changes.rejected_samples)
    assert set(rejected) == {"3"} and "column `score`" in rejected["3"]  # NaN: no JSON for it
    assert people == {
        "1": {
            "visits": 5,
            "score": 2.5,
            "name": "Zoë",
            "active": True,
            "born": 1641600000,  # 2022-01-08
            "token": "\\x01\\xFF",  # DuckDB's text for bytes, from every warehouse
            "home": point,
            "home_json": {"coordinates": [10.75, 59.91], "type": "Point"},
            "tags": ["a", "b"],
        },
        "2": {"visits": 9_007_199_254_740_993},
    }


def test_a_sync_from_before_decimals_sends_nothing_again_after(
    snowflake: Result, sync: Callable[[str], Synced], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lockgate before 20debf8 connected without `arrow_number_to_decimal`: the connector gave
    # NUMBER(p,s) as float64 (then cast to the declared decimal) and NUMBER(p,0) as integers.
    # An existing sync's next run with decimals on must find nothing changed: no type drift,
    # no `1` turned `1.0`, no re-send.
    from snowflake import connector

    snowflake.columns = [
        Column("ID", "FIXED", pa.array([1, 2, 3, 4], pa.int8()), 38, 0),
        Column("VISITS", "FIXED", pa.array([7, 300, None, 0], pa.int16()), 38, 0),
        Column("SEATS", "FIXED", pa.array([1, 2, 3, None], pa.int8()), 9, 0),
        Column("BALANCE", "FIXED", pa.array([1999, 10, 5, 123456789012], pa.int64()), 12, 2),
        Column("RATE", "FIXED", pa.array([125, 1, None, 99999], pa.int32()), 6, 4),
    ]
    attributes = """
        visits: visits
        seats: seats
        balance: balance
        rate: rate
        """
    current = connector.connect

    def as_before(**kwargs: Any) -> Any:
        return current(**{**kwargs, "arrow_number_to_decimal": False})

    with monkeypatch.context() as before:
        before.setattr(connector, "connect", as_before)
        first, people = sync(attributes)
    assert first.changes.new == 4
    assert people["1"] == {"visits": 7, "seats": 1, "balance": 19.99, "rate": 0.0125}
    assert people["4"] == {"visits": 0, "balance": 1234567890.12, "rate": 9.9999}

    report, after = sync(attributes)

    assert dict(report.changes.rejected_samples) == {}
    assert (report.changes.to_send, report.changes.unchanged) == (0, 4)
    assert after == people


def test_after_decimals_only_a_value_the_float_got_wrong_is_sent_again(
    snowflake: Result, sync: Callable[[str], Synced], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A NUMBER(18,2) past a double's 15-16 digits was sent rounded before 20debf8; the first
    # run with decimals sends that record once with its exact value (a plain change, no
    # type-drift stop), and the records whose float was exact are not sent again.
    from snowflake import connector

    snowflake.columns = [
        Column("ID", "FIXED", pa.array([1, 2], pa.int8()), 38, 0),
        Column("BALANCE", "FIXED", pa.array([1999, 123456789012345678], pa.int64()), 18, 2),
    ]
    current = connector.connect

    def as_before(**kwargs: Any) -> Any:
        return current(**{**kwargs, "arrow_number_to_decimal": False})

    with monkeypatch.context() as before:
        before.setattr(connector, "connect", as_before)
        _, people = sync("balance: balance")
    assert people["2"] == {"balance": 1234567890123456.8}

    report, after = sync("balance: balance")

    assert (report.changes.to_send, report.changes.changed, report.changes.unchanged) == (1, 1, 1)
    assert after == {"1": {"balance": 19.99}, "2": {"balance": 1234567890123456.78}}
    assert sync("balance: balance")[0].changes.to_send == 0
