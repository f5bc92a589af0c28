"""Google BigQuery through the official `google-cloud-bigquery` client.

`read` runs the query and streams its result pages with `RowIterator.to_arrow_iterable`; when
`google-cloud-bigquery-storage` is installed the BigQuery Storage Read API serves them instead
(parallel Arrow streams, much faster for large models). `schema_of` is a dry run: BigQuery
plans the query, bills nothing and reads no rows.

Credentials come from `credentials_path` (a service-account JSON file, relative to the project
folder) or else from Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`,
`gcloud auth application-default login`, or the metadata server).

Example::

    source = BigQuerySource.from_config(config, root=project.root)
    reader = source.read("select * from analytics.users")
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from lockgate.errors import MissingDependencyError, SourceError
from lockgate.project.models import key_file, resolve_env
from lockgate.sources.base import (
    DEFAULT_BATCH_ROWS,
    ColumnInfo,
    TableInfo,
    check_batch_rows,
    db_message,
    label,
    query_error,
    split_table,
    stream,
)

if TYPE_CHECKING:
    from lockgate.project.models import BigQuerySourceConfig

_SCALARS: dict[str, pa.DataType] = {
    "INTEGER": pa.int64(),
    "INT64": pa.int64(),
    "FLOAT": pa.float64(),
    "FLOAT64": pa.float64(),
    "NUMERIC": pa.decimal128(38, 9),
    # DuckDB, which maps every model, reads no `decimal256`: wider decimals become float64, as
    # Postgres numerics over 38 digits do (a `decimal256` failed the whole run)
    "BIGNUMERIC": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "BOOL": pa.bool_(),
    "STRING": pa.string(),
    "BYTES": pa.binary(),
    "DATE": pa.date32(),
    "DATETIME": pa.timestamp("us"),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "TIME": pa.time64("us"),
    "JSON": pa.json_(pa.string()),  # JSON text, staged by DuckDB as `JSON`
    "GEOGRAPHY": pa.string(),
    # the client reads `1-2 3 4:5:6.5` as a `relativedelta`, which Arrow holds as this
    "INTERVAL": pa.month_day_nano_interval(),
}


def arrow_type(field: Any) -> pa.DataType:
    """The Arrow type for a BigQuery `SchemaField` (unknown types become text).

    Parameterized `NUMERIC(p, s)` keeps its precision and scale; `RECORD`/`STRUCT` becomes a
    struct, `RANGE<T>` a struct of `start` and `end` (as the client reads it) and `REPEATED` a
    list.
    """
    kind = str(field.field_type).upper()
    if kind in ("RECORD", "STRUCT"):
        base: pa.DataType = pa.struct([pa.field(f.name, arrow_type(f)) for f in field.fields])
    elif kind == "RANGE":
        # the client reads `[start, end)` as this struct, an unbounded end as a null
        element = getattr(field.range_element_type, "element_type", None) or "DATE"
        bound = _SCALARS.get(str(element).upper(), pa.date32())
        base = pa.struct([pa.field("start", bound), pa.field("end", bound)])
    elif kind in ("NUMERIC", "BIGNUMERIC") and getattr(field, "precision", None):
        precision, scale = int(field.precision), int(field.scale or 0)
        base = pa.decimal128(precision, scale) if precision <= 38 else pa.float64()
    else:
        base = _SCALARS.get(kind, pa.string())
    return pa.list_(base) if field.mode == "REPEATED" else base


def type_name(field: Any) -> str:
    """BigQuery's own spelling of a field's type (`ARRAY<STRING>`, `NUMERIC`)."""
    kind = str(field.field_type).upper()
    if kind == "RANGE":
        element = getattr(field.range_element_type, "element_type", None)
        kind = f"RANGE<{str(element).upper()}>" if element else kind
    return f"ARRAY<{kind}>" if field.mode == "REPEATED" else kind


def arrow_schema(fields: Any) -> pa.Schema:
    """An Arrow schema for a list of BigQuery `SchemaField`s."""
    return pa.schema(pa.field(f.name, arrow_type(f), f.mode != "REQUIRED") for f in fields)


class BigQuerySource:
    """A BigQuery project, queried with the official client.

    Example::

        source = BigQuerySource(client, dataset="analytics")
        print(source.tables("analytics"))
    """

    NAME: ClassVar[str] = "bigquery"
    SUPPORTS_ARROW_NATIVE: ClassVar[bool] = True
    SUPPORTS_ROW_COUNTS: ClassVar[bool] = False

    def __init__(self, client: Any, *, dataset: str | None = None, name: str | None = None):
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import GoogleAuthError

        self.client = client
        self.dataset = dataset
        self.who = label(self.NAME, name)
        self._errors: tuple[type[BaseException], ...] = (
            GoogleAPIError,
            GoogleAuthError,
            pa.ArrowException,
        )

    @classmethod
    def from_config(
        cls, config: BigQuerySourceConfig, *, root: Path, name: str | None = None
    ) -> BigQuerySource:
        """Build the client from the config; no request is made until the first query."""
        settings = settings_for(config, root=root, name=name)
        return cls(client_for(settings, name=name), dataset=settings.dataset, name=name)

    # ------------------------------------------------------------------ reading

    def _job_config(self, **kwargs: Any) -> Any:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(**kwargs)
        if self.dataset:
            config.default_dataset = f"{self.client.project}.{self.dataset}"
        return config

    def _storage_client(self) -> Any:
        try:
            from google.cloud import bigquery_storage  # type: ignore[attr-defined,unused-ignore]
        except ImportError:
            return None  # pages come over REST instead
        return bigquery_storage.BigQueryReadClient(credentials=self.client._credentials)

    def read(self, sql: str, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> pa.RecordBatchReader:
        """Run the query and stream its result pages as Arrow."""
        check_batch_rows(batch_rows)
        try:
            rows = self.client.query(sql, job_config=self._job_config()).result(
                page_size=batch_rows
            )
            batches: Iterator[pa.RecordBatch] = rows.to_arrow_iterable(
                bqstorage_client=self._storage_client()
            )
        except self._errors as exc:
            raise query_error(self.who, sql, exc) from exc
        schema = arrow_schema(rows.schema)

        def rename(batch: pa.RecordBatch) -> pa.RecordBatch:
            return batch.rename_columns(schema.names)

        return stream(
            schema,
            batches,
            batch_rows=batch_rows,
            on_error=lambda exc: query_error(self.who, sql, exc),
            errors=self._errors,
            convert=rename,
        )

    def schema_of(self, sql: str) -> pa.Schema:
        """The result schema from a dry run (planned, not run, not billed)."""
        try:
            job = self.client.query(
                sql, job_config=self._job_config(dry_run=True, use_query_cache=False)
            )
        except self._errors as exc:
            raise query_error(self.who, sql, exc) from exc
        return arrow_schema(job.schema or [])

    # ------------------------------------------------------------------ catalog

    def schemas(self) -> list[str]:
        """Datasets of the project."""
        try:
            return sorted(d.dataset_id for d in self.client.list_datasets())
        except self._errors as exc:
            raise self._catalog_error("list datasets", exc) from exc

    def tables(self, schema: str | None = None) -> list[TableInfo]:
        """Tables and views; BigQuery needs one request per table for a row count, so none."""
        datasets = [schema] if schema else self.schemas()
        out = []
        try:
            for dataset in datasets:
                for item in self.client.list_tables(dataset):
                    kind = "view" if "VIEW" in str(item.table_type).upper() else "table"
                    out.append(TableInfo(schema=dataset, name=item.table_id, kind=kind))
        except self._errors as exc:
            raise self._catalog_error("list tables", exc) from exc
        return sorted(out, key=lambda t: (t.schema, t.name))

    def columns(self, table: str) -> list[ColumnInfo]:
        """Columns of `dataset.table` (or `table` in the configured `dataset`)."""
        dataset, name = split_table(table)
        dataset = dataset or self.dataset
        if not dataset:
            raise SourceError(
                f"{self.who}: `{table}` names no dataset",
                hint="write it as `dataset.table`, or set `dataset` in lockgate.yml",
            )
        try:
            found = self.client.get_table(f"{self.client.project}.{dataset}.{name}")
        except self._errors as exc:
            raise self._catalog_error(f"describe `{table}`", exc) from exc
        return [
            ColumnInfo(
                name=f.name,
                type=type_name(f),
                arrow_type=arrow_type(f),
                nullable=f.mode != "REQUIRED",
            )
            for f in found.schema
        ]

    def _catalog_error(self, action: str, exc: BaseException) -> SourceError:
        return SourceError(
            f"{self.who}: cannot {action}: {db_message(exc)}",
            hint="check `project` and `dataset` in lockgate.yml, and that the credentials may "
            "read them (roles/bigquery.metadataViewer)",
        )

    def close(self) -> None:
        """Close the client's HTTP session."""
        self.client.close()


@dataclass(frozen=True)
class BigQuerySettings:
    """How Lockgate logs in to a BigQuery source, for reading models and for every writer
    (webhook loads): `${ENV}` references resolved, the key file read."""

    project: str
    dataset: str | None
    location: str | None
    credentials: Any
    """`google.oauth2.service_account.Credentials` from `credentials_path`, or None for
    Application Default Credentials."""


def settings_for(
    config: BigQuerySourceConfig, *, root: Path, name: str | None = None
) -> BigQuerySettings:
    """The settings of ``config``: `project`, `dataset` and `location` may be `${ENV}`
    references (a variable not set names the source and its lockgate.yml line); the key file
    `credentials_path` is expanded (`${ENV}`, `~`) and relative to the project folder ``root``."""
    who = label(BigQuerySource.NAME, name)
    try:
        from google.oauth2 import service_account
    except ImportError:
        raise MissingDependencyError("google-cloud-bigquery", "bigquery") from None
    credentials = None
    raw_path = config.credentials_path
    if raw_path is not None:
        path = key_file(root, raw_path, field="credentials_path", who=who, at=config)
        try:
            credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                str(path)
            )
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"{who}: cannot read service-account key `{raw_path}`: {db_message(exc)}",
                hint="check `credentials_path` in lockgate.yml (relative to the project folder); "
                "it must be a service-account JSON key file",
            ) from exc
    return BigQuerySettings(
        project=resolve_env(config.project, field="project", at=config) or "",
        dataset=resolve_env(config.dataset, field="dataset", at=config),
        location=resolve_env(config.location, field="location", at=config),
        credentials=credentials,
    )


def client_for(settings: BigQuerySettings, *, name: str | None = None) -> Any:
    """A `bigquery.Client` for the settings: service-account file, else default credentials."""
    who = label(BigQuerySource.NAME, name)
    try:
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import bigquery
    except ImportError:
        raise MissingDependencyError("google-cloud-bigquery", "bigquery") from None
    try:
        return bigquery.Client(
            project=settings.project, credentials=settings.credentials, location=settings.location
        )
    except DefaultCredentialsError as exc:
        raise SourceError(
            f"{who}: no Google credentials found",
            hint="set `credentials_path` in lockgate.yml, export GOOGLE_APPLICATION_CREDENTIALS, "
            "or run `gcloud auth application-default login`",
        ) from exc
