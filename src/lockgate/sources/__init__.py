"""Warehouse connectors: the registry of source types and `connect`.

`SOURCES` maps the `type:` key of a source in lockgate.yml to the class that reads it. Importing
this package imports no warehouse driver: each module imports its own driver when a source is
opened, and raises `MissingDependencyError` with the exact `pip install "lockgate[...]"` line
when it is missing. DuckDB ships with Lockgate itself.

Example::

    from lockgate.sources import connect

    project = load_project(".")
    source = connect(project.config.sources["warehouse"], root=project.root, name="warehouse")
    print(source.schema_of("select * from users"))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockgate.sources.base import ColumnInfo, Source, TableInfo
from lockgate.sources.bigquery import BigQuerySource
from lockgate.sources.duckdb import DuckDBSource
from lockgate.sources.postgres import PostgresSource, RedshiftSource
from lockgate.sources.snowflake import SnowflakeSource

if TYPE_CHECKING:
    from lockgate.project.models import (
        BigQuerySourceConfig,
        DuckDBSourceConfig,
        PostgresSourceConfig,
        SnowflakeSourceConfig,
    )

    AnySourceConfig = (
        DuckDBSourceConfig | PostgresSourceConfig | SnowflakeSourceConfig | BigQuerySourceConfig
    )

SOURCES: dict[str, type[Source]] = {
    "duckdb": DuckDBSource,
    "postgres": PostgresSource,
    "snowflake": SnowflakeSource,
    "bigquery": BigQuerySource,
}

__all__ = [
    "SOURCES",
    "BigQuerySource",
    "ColumnInfo",
    "DuckDBSource",
    "PostgresSource",
    "RedshiftSource",
    "SnowflakeSource",
    "Source",
    "TableInfo",
    "connect",
]


def connect(config: AnySourceConfig, *, root: Path, name: str | None = None) -> Source:
    """Open the source a config describes.

    Args:
        config: one entry of `sources:` in lockgate.yml.
        root: the project folder; a relative DuckDB `path` or BigQuery `credentials_path` is
            resolved against it.
        name: the source's name in lockgate.yml, used in error messages.
    """
    # Each class builds itself from its own config type (`from_config`), like SQLMesh's
    # connection configs; the registry only picks the class.
    source_class: Any = SOURCES[config.type]
    source: Source = source_class.from_config(config, root=root, name=name)
    return source
