"""BigQuery: what can be checked offline, and live tests that need real credentials.

BigQuery cannot be reached from CI, so the offline tests cover what Lockgate decides itself:
config → client (service-account file, project, location), credential errors, and the type
mapping. The `remote` tests run only when `GOOGLE_APPLICATION_CREDENTIALS` points at a
service-account key (and `LOCKGATE_BIGQUERY_PROJECT` names a project, else the key's own).
"""

from __future__ import annotations

import json
import os
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from google.cloud.bigquery import SchemaField
from tests.sources.bigquery_api import BigQueryAPI, service_account_file

from lockgate.console import NullConsole
from lockgate.emulator import Emulator
from lockgate.errors import SourceError
from lockgate.project.loader import load_project
from lockgate.project.models import BigQuerySourceConfig
from lockgate.sources import BigQuerySource, connect
from lockgate.sources.bigquery import arrow_schema, arrow_type, type_name
from lockgate.sync.run import run_sync

# Read before the autouse `clean_environ` fixture hides GOOGLE_* and LOCKGATE_* variables.
LIVE_CREDENTIALS = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
LIVE_PROJECT = os.environ.get("LOCKGATE_BIGQUERY_PROJECT")


def test_config_builds_a_client_with_the_service_account_project_and_location(
    tmp_path: Path,
) -> None:
    (tmp_path / "keys").mkdir()
    service_account_file(tmp_path / "keys" / "sa.json")
    config = BigQuerySourceConfig(
        project="acme-analytics", dataset="crm", location="EU", credentials_path="keys/sa.json"
    )

    source = connect(config, root=tmp_path, name="bq")

    assert isinstance(source, BigQuerySource)
    assert source.client.project == "acme-analytics"
    assert source.client.location == "EU"
    assert source.client._credentials.service_account_email == (
        "lockgate@key-project.iam.gserviceaccount.com"
    )
    assert source.dataset == "crm"
    source.close()


def test_credentials_path_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = service_account_file(tmp_path / "sa.json")
    monkeypatch.setenv("BQ_KEY", str(key))

    source = connect(
        BigQuerySourceConfig(project="p", credentials_path="${BQ_KEY}"), root=Path("/")
    )

    assert isinstance(source, BigQuerySource) and source.client.project == "p"
    source.close()


def test_a_missing_key_file_names_the_path_and_the_setting(tmp_path: Path) -> None:
    config = BigQuerySourceConfig(project="p", credentials_path="missing.json")

    with pytest.raises(SourceError) as caught:
        connect(config, root=tmp_path, name="bq")

    assert "bigquery source `bq`" in caught.value.reason
    assert "`missing.json`" in caught.value.reason
    assert "`credentials_path`" in (caught.value.hint or "")


def test_no_credentials_at_all_says_how_to_provide_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no gcloud application-default file
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # offline: do not probe the metadata server

    with pytest.raises(SourceError) as caught:
        connect(BigQuerySourceConfig(project="p"), root=tmp_path)

    assert "no Google credentials" in caught.value.reason
    assert "GOOGLE_APPLICATION_CREDENTIALS" in (caught.value.hint or "")


def test_an_unqualified_table_needs_a_dataset(tmp_path: Path) -> None:
    service_account_file(tmp_path / "sa.json")
    source = connect(BigQuerySourceConfig(project="p", credentials_path="sa.json"), root=tmp_path)

    with pytest.raises(SourceError, match="names no dataset"):
        source.columns("users")
    source.close()


UTC_US = pa.timestamp("us", tz="UTC")


@pytest.mark.parametrize(
    ("field", "expected", "name"),
    [
        (SchemaField("a", "INTEGER"), pa.int64(), "INTEGER"),
        (SchemaField("a", "INT64"), pa.int64(), "INT64"),
        (SchemaField("a", "FLOAT"), pa.float64(), "FLOAT"),
        (SchemaField("a", "NUMERIC"), pa.decimal128(38, 9), "NUMERIC"),
        (SchemaField("a", "NUMERIC", precision=10, scale=2), pa.decimal128(10, 2), "NUMERIC"),
        (SchemaField("a", "BIGNUMERIC"), pa.float64(), "BIGNUMERIC"),
        (SchemaField("a", "BIGNUMERIC", precision=20, scale=2), pa.decimal128(20, 2), "BIGNUMERIC"),
        (SchemaField("a", "BIGNUMERIC", precision=50, scale=2), pa.float64(), "BIGNUMERIC"),
        (SchemaField("a", "BOOLEAN"), pa.bool_(), "BOOLEAN"),
        (SchemaField("a", "STRING"), pa.string(), "STRING"),
        (SchemaField("a", "BYTES"), pa.binary(), "BYTES"),
        (SchemaField("a", "DATE"), pa.date32(), "DATE"),
        (SchemaField("a", "DATETIME"), pa.timestamp("us"), "DATETIME"),
        (SchemaField("a", "TIMESTAMP"), pa.timestamp("us", tz="UTC"), "TIMESTAMP"),
        (SchemaField("a", "TIME"), pa.time64("us"), "TIME"),
        (SchemaField("a", "JSON"), pa.json_(pa.string()), "JSON"),
        (SchemaField("a", "GEOGRAPHY"), pa.string(), "GEOGRAPHY"),
        (SchemaField("a", "STRING", mode="REPEATED"), pa.list_(pa.string()), "ARRAY<STRING>"),
        (SchemaField("a", "INTERVAL"), pa.month_day_nano_interval(), "INTERVAL"),
        (
            SchemaField("a", "RANGE", range_element_type="TIMESTAMP"),
            pa.struct([pa.field("start", UTC_US), pa.field("end", UTC_US)]),
            "RANGE<TIMESTAMP>",
        ),
        (
            SchemaField("a", "RECORD", fields=[SchemaField("b", "INTEGER")]),
            pa.struct([pa.field("b", pa.int64())]),
            "RECORD",
        ),
    ],
)
def test_bigquery_types_map_to_arrow(field: SchemaField, expected: pa.DataType, name: str) -> None:
    assert arrow_type(field) == expected
    assert type_name(field) == name


def test_bignumeric_pages_are_read_as_float64_that_duckdb_maps() -> None:
    """The client hands `BIGNUMERIC` over as `decimal256`, which DuckDB cannot read: the
    source's reader gives float64, so the mapping works instead of failing the run."""
    import decimal

    import duckdb

    from lockgate.sources.base import stream

    schema = arrow_schema([SchemaField("amount", "BIGNUMERIC")])
    page = pa.record_batch(
        [
            pa.array(
                [decimal.Decimal("12345678901234567890123456789012345678.5"), None],
                pa.decimal256(76, 38),
            )
        ],
        names=["amount"],
    )
    reader = stream(
        schema, [page], batch_rows=10, on_error=lambda e: SourceError(str(e)), errors=()
    )
    pages = reader.read_all()
    assert pages.schema.field("amount").type == pa.float64()
    assert duckdb.connect().execute("select amount from pages").fetchall() == [
        (1.2345678901234568e37,),
        (None,),
    ]


def test_required_fields_are_not_nullable() -> None:
    schema = arrow_schema(
        [SchemaField("id", "INTEGER", mode="REQUIRED"), SchemaField("e", "STRING")]
    )

    assert [f.nullable for f in schema] == [False, True]


# --------------------------------------------------------------------------- live


@pytest.fixture
def live_source(monkeypatch: pytest.MonkeyPatch) -> BigQuerySource:
    if not LIVE_CREDENTIALS:
        pytest.skip("set GOOGLE_APPLICATION_CREDENTIALS to a service-account key to run")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", LIVE_CREDENTIALS)
    project = LIVE_PROJECT or json.loads(Path(LIVE_CREDENTIALS).read_text())["project_id"]
    source = connect(
        BigQuerySourceConfig(project=project, credentials_path=LIVE_CREDENTIALS), root=Path("/")
    )
    assert isinstance(source, BigQuerySource)
    return source


LIVE_SQL = (
    "select id, concat('Zoë-', cast(id as string)) as name, id > 1 as active, "
    "timestamp '2024-03-01 12:30:00+00' as signed_up_at, date '1990-01-15' as birthday, "
    "numeric '1234.50' as balance from unnest(generate_array(1, 2500)) as id"
)


@pytest.mark.remote
def test_live_read_streams_typed_batches(live_source: BigQuerySource) -> None:
    reader = live_source.read(LIVE_SQL, batch_rows=1_000)
    batches = list(reader)

    assert sum(b.num_rows for b in batches) == 2_500 and max(b.num_rows for b in batches) <= 1_000
    types = {f.name: f.type for f in reader.schema}
    assert types["id"] == pa.int64() and types["signed_up_at"] == pa.timestamp("us", tz="UTC")
    assert types["balance"] == pa.decimal128(38, 9)
    live_source.close()


@pytest.mark.remote
def test_live_schema_of_is_a_dry_run(live_source: BigQuerySource) -> None:
    assert live_source.schema_of(LIVE_SQL).names == [
        "id",
        "name",
        "active",
        "signed_up_at",
        "birthday",
        "balance",
    ]


@pytest.mark.remote
def test_live_bad_sql_is_a_source_error(live_source: BigQuerySource) -> None:
    with pytest.raises(SourceError, match="bigquery source: query failed"):
        live_source.read("select * from no_dataset.no_table").read_all()


# ----------------------------------------------------------------- the client over loopback


@pytest.fixture
def bigquery_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[BigQueryAPI]:
    """:class:`BigQueryAPI` on loopback, where the client sends every request."""
    api = BigQueryAPI()
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", api.url)
    yield api
    api.close()


def _field(name: str, kind: str, mode: str = "NULLABLE", **more: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, "mode": mode, **more}


def _sync_people(
    root: Path,
    api: BigQueryAPI,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    attributes: str,
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """A people sync keyed by `id` over what ``api`` answers; the rejected rows and what
    Customer.io holds."""
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    api.key_file(root / "keys" / "sa.json")
    (root / "syncs").mkdir()
    (root / "lockgate.yml").write_text(
        "name: t\nsources:\n  warehouse: {type: bigquery, project: acme, "
        "credentials_path: keys/sa.json}\ndestinations:\n  customerio:\n"
        f"    type: customerio\n    track_url: {emulator.base_url}\n"
    )
    (root / "syncs" / "people.yml").write_text(
        "name: people\nsource: warehouse\nmodel: {sql: 'select * from crm.users'}\n"
        "kind: people\nprimary_key: id\nidentify_by: {id: id}\nattributes:\n"
        + textwrap.indent(textwrap.dedent(attributes).strip(), "  ")
        + "\n"
    )
    with warnings.catch_warnings():
        # the client's own, for an INTERVAL: "Unable to determine Arrow type for field"
        warnings.simplefilter("ignore", UserWarning)
        report = run_sync(load_project(root), "people", console=NullConsole())
    people = {p.id: dict(p.attributes) for p in emulator.people() if p.id is not None}
    return dict(report.changes.rejected_samples), people


def test_every_bigquery_type_the_client_reads_reaches_customerio(
    bigquery_api: BigQueryAPI,
    tmp_path: Path,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a RANGE (a struct to the client) or an INTERVAL failed the whole run: Lockgate read
    # both as text, which Arrow cannot cast them to
    bigquery_api.fields = [
        _field("id", "INTEGER"),
        _field("amount", "NUMERIC"),
        _field("price", "NUMERIC", precision="10", scale="2"),
        _field("big", "BIGNUMERIC"),
        _field("doc", "JSON"),
        _field("place", "GEOGRAPHY"),
        _field("local", "DATETIME"),
        _field("at", "TIMESTAMP"),
        _field("opens", "TIME"),
        _field("tags", "STRING", "REPEATED"),
        _field("rec", "RECORD", fields=[_field("n", "INTEGER"), _field("j", "JSON")]),
        _field("during", "RANGE", rangeElementType={"type": "DATE"}),
        _field("span", "INTERVAL"),
    ]
    values = [
        "1",
        "12.345678901",
        "12.34",
        "123456789012345678901234567890.5",
        '{"plan":"pro","n":[1,2]}',
        "POINT(1 2)",
        "2024-03-05T08:00:00.123456",
        "1709296200000000",
        "09:00:00",
        [{"v": "a"}, {"v": "b"}],
        {"f": [{"v": "5"}, {"v": '"x"'}]},
        "[2024-01-01, UNBOUNDED)",
        "1-2 3 4:05:06.5",
    ]
    bigquery_api.rows = [
        {"f": [{"v": v} for v in values]},
        {"f": [{"v": "2"}] + [{"v": None}] * 8 + [{"v": []}] + [{"v": None}] * 3},
    ]

    rejected, people = _sync_people(
        tmp_path,
        bigquery_api,
        customerio_emulator,
        monkeypatch,
        """
        amount: amount
        price: price
        big: big
        doc: doc
        place: place
        local: local
        at: at
        opens: opens
        tags: tags
        rec: rec
        during: during
        span: span
        """,
    )

    assert rejected == {}
    assert people == {
        "1": {
            "amount": 12.345678901,
            "price": 12.34,
            "big": 1.2345678901234568e29,  # a float64: DuckDB reads no decimal256
            "doc": {"plan": "pro", "n": [1, 2]},
            "place": "POINT(1 2)",
            "local": 1709625600,  # 2024-03-05 08:00:00 read as UTC, to the second
            "at": 1709296200,
            "opens": "09:00:00",
            "tags": ["a", "b"],
            "rec": {"n": 5, "j": "x"},
            "during": {"start": "2024-01-01", "end": None},  # UNBOUNDED
            "span": "1 year 2 months 3 days 04:05:06.5",
        },
        "2": {"tags": []},  # BigQuery keeps no null array: an empty one
    }
